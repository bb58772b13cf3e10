"""Two instances behind HAProxy, on PgBouncer and Redis (tests/cluster.py), under a steady
load of many users: a crash of one loses no acknowledged write, a rolling restart loses no
request at all, and the write limit is one limit across the instances.

The load: WORKERS clients (as many requests in flight at most), each driving
USERS_PER_WORKER users of its own in turn, so that a user's tasks change only as the load
itself changes them and it knows what every answer must be: create, list, get, toggle or
rename with If-Match from a GET, an If-Match that must fail (412), delete, and a get of
the deleted task (404). Titles carry the user's id, so that a row of another user is
recognised wherever it shows up.

The figures (requests, failures by status, acknowledged writes checked, per phase) are
printed, and recorded with record_property: tests/conftest.py shows them at the end of the
run, passed or failed, where pytest would keep a passing test's output to itself.
"""

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
from pytest_postgresql.executors import NoopExecutor

from app.migrate import install_context_key, retire_context_keys
from app.session import SET_CONTEXT, context_key_id, sign_context
from tests.cluster import Cluster, cluster
from tests.conftest import Server
from tests.tokens import auth

INSTANCES = 2
WORKERS = 12
USERS_PER_WORKER = 6
# Per user and per day, in Redis. The load's users stay well under it (the test checks
# the margin); the shared-limit check reaches it in a second or two. A day, so that the
# check cannot straddle the end of a window, where the sliding-window counter would let
# a write or two more through.
WRITE_LIMIT = 150
STEADY_SECONDS = 3.0
# How long the load goes on with one instance killed, before it is started again.
CRASH_SECONDS = 2.0
# How long an instance back in rotation may take to answer its first request: on a busy
# machine a started instance answers slowly at first.
BACK_TIMEOUT = 30.0
TASKS_PER_USER = 6
# The key the rolling restart moves the instances to.
NEW_CONTEXT_KEY = "scale-out-next-context-key-that-is-long-enough-0123"
# Seconds a worker waits between two steps, at random in this range.
PAUSE = (0.05, 0.15)


@pytest.fixture(scope="module")
def scale_out(
    pg_server: Server, pg_template: NoopExecutor, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with cluster(
        pg_server,
        pg_template,
        tmp_path_factory.mktemp("scale_out"),
        name="scale_out",
        instances=INSTANCES,
        # All the load comes from one address: the per-client limit is off.
        rate_limit_requests="",
        rate_limit_writes=f"{WRITE_LIMIT}/day",
        # A drained instance has nothing in flight: a stop that takes longer is stuck.
        shutdown_timeout=10,
    ) as running:
        yield running


# --- the load -------------------------------------------------------------------------


@dataclass
class Record:
    phase: str
    op: str
    started: float
    ended: float
    outcome: str  # the status code, or the transport error's name
    served_by: str  # the instance, from HAProxy's X-Served-By
    failed: bool  # not an answer this request expects


@dataclass
class Known:
    """A task as its last acknowledged answer showed it."""

    title: str
    completed: bool
    etag: str | None
    older_etag: str | None = None  # of an earlier version: an If-Match with it must fail
    # A write to it got no answer it expects: it may or may not have happened.
    uncertain: bool = False


@dataclass
class User:
    name: str
    headers: dict[str, str]
    tasks: dict[int, Known] = field(default_factory=dict)
    created: set[int] = field(default_factory=set)  # 201
    deleted: set[int] = field(default_factory=set)  # 204
    changed: int = 0  # toggles and renames answered 200
    # Found gone after a delete that went unanswered.
    vanished: set[int] = field(default_factory=set)
    # Creations that went unanswered and no list has looked for since; once there was one,
    # a list may show a task the load does not know (its commit may come late).
    unanswered_creates: int = 0
    unknown_allowed: bool = False
    adopted: set[int] = field(default_factory=set)  # such tasks, found by a list
    writes: int = 0
    titles: int = 0

    def title(self) -> str:
        self.titles += 1
        return f"{self.name}/{self.titles}"


class Load:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.phase = "steady"
        self.stop = False
        self.records: list[Record] = []
        self.foreign: list[str] = []  # rows of another user, wherever seen
        self.inconsistent: list[str] = []  # an answer that contradicts an acknowledged write
        self.users = [
            User(f"scale-u{n:02d}", auth(f"scale-u{n:02d}")) for n in range(WORKERS * USERS_PER_WORKER)
        ]

    async def call(
        self, user: User, op: str, method: str, path: str, expected: set[int], **kwargs: Any
    ) -> httpx.Response | None:
        """The request, recorded in the phase it ends in (one that a kill cuts short
        belongs to the crash); its response if it is one of `expected`, else None."""
        if method != "GET":
            user.writes += 1
        headers = user.headers | kwargs.pop("headers", {})
        started = time.monotonic()
        try:
            response = await self.client.request(
                method, f"/api/{user.name}/tasks{path}", headers=headers, **kwargs
            )
        except httpx.TransportError as exc:
            self.records.append(
                Record(self.phase, op, started, time.monotonic(), type(exc).__name__, "?", True)
            )
            return None
        ended = time.monotonic()
        failed = response.status_code not in expected
        served_by = response.headers.get("X-Served-By", "?")
        self.records.append(
            Record(self.phase, op, started, ended, str(response.status_code), served_by, failed)
        )
        if response.content and response.headers.get("content-type") == "application/json":
            body = response.json()
            rows = [row for row in (body if isinstance(body, list) else [body]) if "user_id" in row]
            for row in rows:
                if row["user_id"] != user.name or not str(row["title"]).startswith(f"{user.name}/"):
                    self.foreign.append(f"{op} by {user.name} via {served_by}: {row}")
        return None if failed else response

    def inconsistency(self, user: User, what: str) -> None:
        self.inconsistent.append(f"[{self.phase}] {user.name}: {what}")

    # Each step is one operation of one user; a write that goes unanswered leaves its
    # task uncertain, and the next step for that user finds out what happened.

    async def step(self, user: User, rng: random.Random) -> None:
        uncertain = [task_id for task_id, task in user.tasks.items() if task.uncertain]
        if uncertain:
            await self.resolve(user, uncertain[0])
        elif user.unanswered_creates:
            await self.list_tasks(user)
        elif len(user.tasks) < 2:
            await self.create(user)
        else:
            task_id = rng.choice(list(user.tasks))
            roll = rng.random()
            if roll < 0.2 and len(user.tasks) < TASKS_PER_USER:
                await self.create(user)
            elif roll < 0.4:
                await self.list_tasks(user)
            elif roll < 0.55:
                await self.change(user, task_id, "toggle")
            elif roll < 0.7:
                await self.change(user, task_id, "rename")
            elif roll < 0.8 and user.tasks[task_id].older_etag:
                await self.stale_write(user, task_id)
            elif roll < 0.92 or len(user.tasks) >= TASKS_PER_USER:
                await self.delete(user, task_id)
            else:
                await self.get(user, task_id)

    async def create(self, user: User) -> None:
        title = user.title()
        response = await self.call(user, "create", "POST", "", {201}, json={"title": title})
        if response is None:
            user.unanswered_creates += 1
            user.unknown_allowed = True
            return
        task = response.json()
        user.tasks[task["id"]] = Known(title, False, response.headers["ETag"])
        user.created.add(task["id"])

    async def list_tasks(self, user: User) -> None:
        response = await self.call(user, "list", "GET", "", {200}, params={"limit": 100})
        if response is None:
            return
        rows = {row["id"]: row for row in response.json()}
        for task_id, task in user.tasks.items():
            if task.uncertain:
                continue
            row = rows.get(task_id)
            if row is None:
                self.inconsistency(user, f"acknowledged task {task_id} missing from the list")
            elif (row["title"], row["completed"]) != (task.title, task.completed):
                self.inconsistency(user, f"task {task_id} listed as {row}, acknowledged as {task}")
        for task_id in rows.keys() & user.deleted:
            self.inconsistency(user, f"deleted task {task_id} listed")
        unknown = rows.keys() - user.tasks.keys() - user.deleted
        if unknown and not user.unknown_allowed:
            self.inconsistency(user, f"unknown tasks listed: {sorted(unknown)}")
        for task_id in unknown:  # created by a request that went unanswered
            row = rows[task_id]
            user.tasks[task_id] = Known(row["title"], row["completed"], None, uncertain=True)
            user.adopted.add(task_id)
        user.unanswered_creates = 0

    async def get(self, user: User, task_id: int) -> httpx.Response | None:
        """GET; the ETag must be the one the last acknowledged write gave, whichever
        instance made it."""
        task = user.tasks[task_id]
        response = await self.call(user, "get", "GET", f"/{task_id}", {200})
        if response is not None:
            row = response.json()
            if (row["title"], row["completed"], response.headers["ETag"]) != (
                task.title,
                task.completed,
                task.etag,
            ):
                self.inconsistency(user, f"task {task_id} read as {row}, acknowledged as {task}")
        return response

    async def resolve(self, user: User, task_id: int) -> None:
        response = await self.call(user, "get", "GET", f"/{task_id}", {200, 404})
        if response is None:
            return
        if response.status_code == 404:
            del user.tasks[task_id]
            user.vanished.add(task_id)
            return
        row = response.json()
        user.tasks[task_id] = Known(row["title"], row["completed"], response.headers["ETag"])

    async def change(self, user: User, task_id: int, how: str) -> None:
        """Toggle or rename, with If-Match from a GET."""
        got = await self.get(user, task_id)
        if got is None:
            return
        task = user.tasks[task_id]
        etag = got.headers["ETag"]
        if how == "toggle":
            path, body, expected = f"/{task_id}/complete", None, (task.title, not task.completed)
        else:
            title = user.title()
            path, body, expected = f"/{task_id}", {"title": title}, (title, task.completed)
        response = await self.call(user, how, "PATCH", path, {200}, json=body, headers={"If-Match": etag})
        if response is None:
            task.uncertain = True
            return
        row = response.json()
        if (row["title"], row["completed"]) != expected:
            self.inconsistency(user, f"{how} of {task_id} answered {row}, expected {expected}")
        user.tasks[task_id] = Known(row["title"], row["completed"], response.headers["ETag"], etag)
        user.changed += 1

    async def stale_write(self, user: User, task_id: int) -> None:
        """A rename with the ETag of an earlier version: 412, and nothing changes."""
        task = user.tasks[task_id]
        assert task.older_etag is not None
        response = await self.call(
            user, "stale", "PATCH", f"/{task_id}", {412}, json={"title": user.title()},
            headers={"If-Match": task.older_etag},
        )  # fmt: skip
        if response is None:
            task.uncertain = True

    async def delete(self, user: User, task_id: int) -> None:
        task = user.tasks[task_id]
        headers = {"If-Match": task.etag} if task.etag else {}
        response = await self.call(user, "delete", "DELETE", f"/{task_id}", {204}, headers=headers)
        if response is None:
            task.uncertain = True
            return
        del user.tasks[task_id]
        user.deleted.add(task_id)
        await self.call(user, "get deleted", "GET", f"/{task_id}", {404})

    async def worker(self, number: int) -> None:
        rng = random.Random(number)  # noqa: S311 - reproducible choices, not secrets
        mine = self.users[number * USERS_PER_WORKER : (number + 1) * USERS_PER_WORKER]
        while not self.stop:
            for user in mine:
                await self.step(user, rng)
                if self.stop:
                    return
                # A pause, as clients make: the load leaves the machine (2 cores, shared
                # by everything here) room to start an instance meanwhile.
                await asyncio.sleep(rng.uniform(*PAUSE))

    # --- figures ----------------------------------------------------------------------

    def of(self, phase: str) -> list[Record]:
        return [record for record in self.records if record.phase == phase]

    async def answered_by(self, instances: set[str], since: float) -> None:
        """Until each of `instances` has answered a request sent after `since`."""
        deadline = time.monotonic() + BACK_TIMEOUT
        while missing := instances - {r.served_by for r in self.records if r.started > since}:
            assert time.monotonic() < deadline, f"{sorted(missing)} answered no request in {BACK_TIMEOUT} s"
            await asyncio.sleep(0.05)

    def summary(self, phase: str, seconds: float) -> str:
        records = self.of(phase)
        if not records:
            return f"{phase}: no requests"
        statuses = Counter(record.outcome for record in records)
        failures = Counter(f"{record.op} {record.outcome}" for record in records if record.failed)
        instances = Counter(record.served_by for record in records)
        latencies = sorted(record.ended - record.started for record in records)
        p99 = latencies[int(len(latencies) * 0.99)]
        failed = f"failed {sum(failures.values())}" + (f" {dict(failures)}" if failures else "")
        rate = len(records) / seconds
        return (
            f"{phase}: {len(records)} requests in {seconds:.1f} s ({rate:.0f}/s), {failed}\n"
            f"  statuses {dict(sorted(statuses.items()))}, by instance {dict(sorted(instances.items()))}, "
            f"latency median {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        )


def failures(records: list[Record]) -> list[str]:
    return [f"{r.op} -> {r.outcome} via {r.served_by} at {r.started:.2f}" for r in records if r.failed][:20]


def database_check(load: Load, cluster: Cluster) -> tuple[list[str], str]:
    """Every acknowledged write against the database (as the superuser, past row-level
    security): created tasks are there with their last acknowledged title and state,
    deleted ones are not. Returns what contradicts it, and the figures."""
    with psycopg.connect(cluster.db.admin) as conn:
        rows = conn.execute(
            "select user_id, id, title, completed from tasks where user_id like 'scale-u%'"
        ).fetchall()
    stored: dict[str, dict[int, tuple[str, bool]]] = {}
    for user_id, task_id, title, completed in rows:
        stored.setdefault(user_id, {})[task_id] = (title, completed)
    problems = []
    present = absent = 0
    for user in load.users:
        mine = stored.get(user.name, {})
        for task_id, task in user.tasks.items():
            if task.uncertain:
                continue
            if mine.get(task_id) != (task.title, task.completed):
                problems.append(
                    f"{user.name} task {task_id}: stored {mine.get(task_id)}, acknowledged {task}"
                )
            present += 1
        for task_id in user.created - user.tasks.keys() - user.deleted - user.vanished:
            problems.append(f"{user.name} task {task_id}: acknowledged (201), gone from the load's view")
        for task_id in user.deleted & mine.keys():
            problems.append(f"{user.name} task {task_id}: deleted (204) but stored")
        absent += len(user.deleted)
        for title, _ in mine.values():
            if not title.startswith(f"{user.name}/"):
                problems.append(f"{user.name} holds a task titled {title!r}")
        unknown = mine.keys() - user.tasks.keys() - user.vanished
        if unknown and not user.unknown_allowed:
            problems.append(f"{user.name} holds tasks that no write of the load created: {sorted(unknown)}")
    stored_users = stored.keys() - {user.name for user in load.users}
    assert not stored_users, stored_users
    creates = sum(len(user.created) for user in load.users)
    changes = sum(user.changed for user in load.users)
    deletes = sum(len(user.deleted) for user in load.users)
    unanswered = sum(len(user.adopted) + len(user.vanished) for user in load.users)
    figures = (
        f"acknowledged writes: {creates} creates, {changes} toggles/renames, {deletes} deletes; "
        f"checked in the database: {present} tasks with their last acknowledged title and state, "
        f"{absent} deleted tasks absent; unanswered writes found to have happened: {unanswered}"
    )
    return problems, figures


# --- the test --------------------------------------------------------------------------


async def test_instances_behind_haproxy_crash_and_roll_without_losing_writes(
    scale_out: Cluster, record_property: Callable[[str, object], None]
) -> None:
    figures: list[str] = [
        f"{INSTANCES} instances behind HAProxy, PgBouncer (transaction mode), Redis; "
        f"{WORKERS} requests in flight from {WORKERS * USERS_PER_WORKER} users"
    ]
    try:
        await run_phases(scale_out, figures)
    finally:
        text = "\n".join(figures)
        print(text)
        record_property("figures", text)


async def run_phases(cluster: Cluster, figures: list[str]) -> None:
    limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
    async with httpx.AsyncClient(base_url=cluster.base_url, limits=limits, timeout=20) as client:
        load = Load(client)
        workers = [asyncio.create_task(load.worker(n)) for n in range(WORKERS)]
        try:
            # 1. Steady state through the balancer.
            began = time.monotonic()
            await asyncio.sleep(STEADY_SECONDS)
            figures.append(load.summary("steady", time.monotonic() - began))
            steady = load.of("steady")
            assert not failures(steady), failures(steady)
            assert {r.served_by for r in steady} == {i.name for i in cluster.instances}

            # 2. A crash: SIGKILL one instance, load on, start it again.
            load.phase = "crash"
            began = time.monotonic()
            retried = await asyncio.to_thread(cluster.haproxy.retried)
            victim = cluster.instances[0]
            await asyncio.to_thread(cluster.kill, victim)
            killed = time.monotonic()
            await asyncio.to_thread(cluster.wait_down, victim)
            down = time.monotonic()
            await asyncio.sleep(CRASH_SECONDS)
            restarting = time.monotonic()
            await asyncio.to_thread(cluster.start, victim)
            up = time.monotonic()
            await load.answered_by({victim.name}, up)  # back in rotation
            crash = load.of("crash")
            figures.append(
                load.summary("crash", time.monotonic() - began)
                + f"; HAProxy saw it down {down - killed:.2f} s after the kill, up {up - restarting:.1f} s"
                f" after the start; {await retries_since(cluster, retried)}"
            )
            # Routed around: once HAProxy had marked it down, every request went to the
            # others and got its answer.
            while_down = [r for r in crash if down <= r.started and r.ended <= restarting]
            assert while_down, "no request while the instance was down"
            assert not failures(while_down), failures(while_down)
            assert victim.name not in {r.served_by for r in while_down}

            # 3. A rolling restart that rotates the context key (docs/deploy.md, "Rotating
            # the context key"): the owner adds the new key, the instances move to it one
            # by one, the old key is retired. Not one request may fail.
            load.phase = "rolling"
            began = time.monotonic()
            retried = await asyncio.to_thread(cluster.haproxy.retried)
            old_key = cluster.settings.rls_context_key
            assert old_key is not None
            await asyncio.to_thread(install_context_key, cluster.db.owner, NEW_CONTEXT_KEY.encode())
            await asyncio.to_thread(cluster.roll, {"RLS_CONTEXT_KEY": NEW_CONTEXT_KEY})
            old_kid = context_key_id(old_key.get_secret_value().encode())
            assert await asyncio.to_thread(retire_context_keys, cluster.db.owner, [old_kid]) == [old_kid]
            retired = time.monotonic()
            # From the next statement on, a context under the retired key verifies no more.
            assert await signed_with(cluster.db.runtime, old_key.get_secret_value()) is None
            assert await signed_with(cluster.db.runtime, NEW_CONTEXT_KEY) == "probe"
            # Every instance serves again, on the new key alone; the requests of this tail
            # count too.
            await load.answered_by({i.name for i in cluster.instances}, retired)
            rolling = load.of("rolling")
            figures.append(
                load.summary("rolling", time.monotonic() - began)
                + f"; restarting {INSTANCES} instances one by one onto a new context key took"
                f" {retired - began:.1f} s, the old key retired after;"
                f" {await retries_since(cluster, retried)}"
            )
            assert not failures(rolling), failures(rolling)
        finally:
            load.stop = True
            await asyncio.gather(*workers)

    assert not load.foreign, load.foreign[:10]
    assert not load.inconsistent, load.inconsistent[:10]
    # No 429 could have been expected in the load: every user stayed well under the limit.
    busiest = max(user.writes for user in load.users)
    assert busiest < WRITE_LIMIT * 0.8, f"a user of the load made {busiest} writes; raise WRITE_LIMIT"
    problems, checked = await asyncio.to_thread(database_check, load, cluster)
    figures.append(checked + f"; most writes by one user: {busiest} of {WRITE_LIMIT}")
    assert not problems, problems[:20]
    figures.append(
        "timings: "
        + ", ".join(
            f"{what} {max(seconds):.2f} s (max of {len(seconds)})"
            for what, seconds in cluster.timings.items()
        )
    )

    # 4. One write limit across the instances: a fresh user writes to each in turn.
    figures.append(await shared_limit(cluster))


async def signed_with(runtime_url: str, key: str) -> str | None:
    """The user a transaction acts for, as the runtime role, with a context for "probe"
    signed with `key` under its id: None unless the database accepts that key."""
    connection = await asyncpg.connect(runtime_url)
    try:
        async with connection.transaction():
            expires = int(time.time()) + 60
            signature = sign_context(key.encode(), "probe", expires)
            await connection.execute(
                SET_CONTEXT, "probe", str(expires), signature, "2s", context_key_id(key.encode())
            )
            user: str | None = await connection.fetchval("select app.current_user_id()")
            return user
    finally:
        await connection.close()


async def retries_since(cluster: Cluster, before: tuple[int, int]) -> str:
    retries, redispatches = await asyncio.to_thread(cluster.haproxy.retried)
    return f"HAProxy retried {retries - before[0]} ({redispatches - before[1]} on another instance)"


async def shared_limit(cluster: Cluster) -> str:
    user = "scale-limit"
    headers = auth(user)
    accepted: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=10) as client:

        async def write(base_url: str) -> int:
            response = await client.post(
                f"{base_url}/api/{user}/tasks", json={"title": f"{user}/t"}, headers=headers
            )
            return response.status_code

        refused = None
        for attempt in range(3 * WRITE_LIMIT):
            instance = cluster.instances[attempt % INSTANCES]
            status = await write(instance.base_url)
            if status != 201:
                refused = (instance.name, status)
                break
            accepted[instance.name] += 1
        # Refused everywhere from now on: at the other instances, and through HAProxy.
        others = [await write(instance.base_url) for instance in cluster.instances]
        balanced = await write(cluster.base_url)
    assert refused is not None and refused[1] == 429, (refused, accepted)
    assert sum(accepted.values()) == WRITE_LIMIT, accepted
    assert others == [429] * INSTANCES
    assert balanced == 429
    return (
        f"shared write limit ({WRITE_LIMIT}/day in Redis): {sum(accepted.values())} writes accepted "
        f"across the instances {dict(sorted(accepted.items()))}, then 429 from every instance and "
        "through HAProxy"
    )
