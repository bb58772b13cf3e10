"""Rotating the context key with no failed request, and no moment in which a forged or
stale context is accepted (docs/deploy.md, "Rotating the context key").

The database accepts contexts under every key in app.context_keys, each named by its id
(app.user_kid). A rotation: the owner adds the new key, the instances move to it one by
one, the old key is retired. These tests run it: by hand on the pieces, and under load
on two apps (old key, new key) that share one database, as two instances behind a load
balancer do (tests/test_scale_out.py rolls real instances the same way)."""

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.migrate import context_keys, downgrade, install_context_key, retire_context_keys, upgrade
from app.session import SET_CONTEXT, UserSessions, context_key_id, sign_context
from tests.conftest import TEST_CONTEXT_KEY, DbUrls, http_client, make_settings, running_app
from tests.tokens import auth

OLD_KEY = TEST_CONTEXT_KEY
NEW_KEY = "the-next-context-key-that-is-long-enough-9876543210"


def new_sessions(engine: AsyncEngine, settings: Settings, key: str) -> UserSessions:
    return UserSessions(engine, key.encode(), settings.rls_context_ttl, settings.db_lock_timeout)


async def acting_as(sessions: UserSessions, params: tuple[str, ...]) -> str | None:
    """The user a transaction whose context was set with these SET_CONTEXT parameters acts for."""
    async with sessions.connection("nobody") as connection:
        await connection.execute(SET_CONTEXT, *params)
        user: str | None = await connection.fetchval("select app.current_user_id()")
        return user


def signed(key: str, user: str, *, kid: str | None, expires: int | None = None) -> tuple[str, ...]:
    """SET_CONTEXT's parameters for `user`, signed with `key`, naming key id `kid` ('' for none)."""
    expires = expires or int(time.time()) + 60
    return user, str(expires), sign_context(key.encode(), user, expires), "2s", "" if kid is None else kid


def test_the_database_and_the_service_derive_the_same_key_id(admin_conn: psycopg.Connection) -> None:
    (kid,) = admin_conn.execute("select kid from app.context_keys").fetchone() or ("",)
    assert kid == context_key_id(OLD_KEY.encode())
    assert kid != context_key_id(NEW_KEY.encode())


async def test_a_database_of_the_previous_revision_keeps_its_key(
    db_url: DbUrls, admin_conn: psycopg.Connection
) -> None:
    """0009 held one key (app.context_key); 0010 moves it under its id, and the service
    starts on it unchanged. Going back restores the single key."""
    await asyncio.to_thread(downgrade, db_url.owner, "0009")
    assert admin_conn.execute("select count(*) from app.context_key").fetchone() == (1,)
    assert admin_conn.execute("select to_regclass('app.context_keys')").fetchone() == (None,)
    await asyncio.to_thread(upgrade, db_url.owner)
    assert [key.kid for key in context_keys(db_url.owner)] == [context_key_id(OLD_KEY.encode())]
    async with running_app(make_settings(db_url)) as app, http_client(app) as client:
        created = await client.post("/api/alice/tasks", json={"title": "kept"}, headers=auth("alice"))
        assert created.status_code == 201


async def test_both_keys_work_during_a_rotation_and_the_retired_one_stops_at_once(
    engine: AsyncEngine, settings: Settings, db_url: DbUrls
) -> None:
    old = new_sessions(engine, settings, OLD_KEY)
    new = new_sessions(engine, settings, NEW_KEY)
    assert await acting_as(new, new.context("alice")) is None  # not added yet
    assert install_context_key(db_url.owner, NEW_KEY.encode())
    assert not install_context_key(db_url.owner, NEW_KEY.encode())  # adding twice is a no-op
    assert await acting_as(old, old.context("alice")) == "alice"
    assert await acting_as(new, new.context("alice")) == "alice"
    # A context signed by an instance of the previous release names no key: any accepted key.
    assert await acting_as(old, signed(OLD_KEY, "alice", kid=None)) == "alice"

    assert retire_context_keys(db_url.owner, [old.key_id]) == [old.key_id]
    # Same pool, same connections: the next statement no longer accepts the old key.
    assert await acting_as(old, old.context("alice")) is None
    assert await acting_as(old, signed(OLD_KEY, "alice", kid=None)) is None
    assert await acting_as(new, new.context("alice")) == "alice"
    with pytest.raises(Exception, match="RLS_CONTEXT_KEY"):
        await old.check_context_key()
    await new.check_context_key()


FORGERIES = {
    "the new key's id on a signature made with the old key": lambda old, new: signed(
        OLD_KEY, "bob", kid=new.key_id
    ),
    "the old key's id on a signature made with the new key": lambda old, new: signed(
        NEW_KEY, "bob", kid=old.key_id
    ),
    "an unknown key id": lambda old, new: signed(OLD_KEY, "bob", kid="0123456789abcdef"),
    "a key that was never added, under its own id": lambda old, new: signed(
        "k" * 48, "bob", kid=context_key_id(b"k" * 48)
    ),
    "no key id, signed with a key that was never added": lambda old, new: signed("k" * 48, "bob", kid=None),
    "alice's signature on bob's id": lambda old, new: (
        "bob",
        *signed(NEW_KEY, "alice", kid=new.key_id)[1:],
    ),
    "an expired context under the new key": lambda old, new: signed(
        NEW_KEY, "bob", kid=new.key_id, expires=int(time.time()) - 1
    ),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
async def test_with_two_keys_accepted_a_forged_context_is_still_refused(
    engine: AsyncEngine, settings: Settings, db_url: DbUrls, case: str
) -> None:
    install_context_key(db_url.owner, NEW_KEY.encode())
    old = new_sessions(engine, settings, OLD_KEY)
    new = new_sessions(engine, settings, NEW_KEY)
    assert await acting_as(new, FORGERIES[case](old, new)) is None


# --- a rotation under load ------------------------------------------------------------

USERS = [f"rotation-user-{n}" for n in range(12)]


class Load:
    """Each user's requests, round-robin over the instances in rotation: create, list,
    read and update with the ETag one instance gave through another, delete."""

    def __init__(self) -> None:
        self.clients: list[httpx.AsyncClient] = []
        self.statuses: Counter[str] = Counter()
        self.failures: list[str] = []
        self.requests = 0
        self.stop = asyncio.Event()

    def client(self) -> httpx.AsyncClient:
        self.requests += 1
        return self.clients[self.requests % len(self.clients)]

    def check(self, response: httpx.Response, expected: int) -> httpx.Response:
        self.statuses[f"{response.request.method} {response.status_code}"] += 1
        if response.status_code != expected:
            self.failures.append(
                f"{response.request.method} {response.url.path}: {response.status_code} {response.text}"
            )
        return response

    async def user(self, user: str) -> None:
        headers = auth(user)
        n = 0
        while not self.stop.is_set():
            n += 1
            base = f"/api/{user}/tasks"
            created = self.check(
                await self.client().post(base, json={"title": f"{user} {n}"}, headers=headers), 201
            )
            if created.status_code != 201:
                continue
            task = created.json()["id"]
            listed = self.check(await self.client().get(base, headers=headers), 200)
            if listed.status_code == 200 and any(t["user_id"] != user for t in listed.json()):
                self.failures.append(f"{user} saw another user's task")
            read = self.check(await self.client().get(f"{base}/{task}", headers=headers), 200)
            etag = read.headers.get("ETag", '"none"')
            self.check(
                await self.client().patch(
                    f"{base}/{task}", json={"completed": True}, headers={**headers, "If-Match": etag}
                ),
                200,
            )
            self.check(await self.client().delete(f"{base}/{task}", headers=headers), 204)


async def test_a_rotation_under_load_fails_no_request_and_never_accepts_a_stale_context(
    db_url: DbUrls, engine: AsyncEngine, settings: Settings
) -> None:
    """Instance A signs with the old key. The owner adds the new key; instance B starts on
    it and joins; A leaves; the old key is retired. Requests run all along, round-robin
    over the instances in rotation, with ETags crossing instances: none fails. A watcher
    checks, as often as it can, that a context under a key never added is refused
    throughout, and one under the old key from the moment it is retired."""
    load = Load()
    old = new_sessions(engine, settings, OLD_KEY)
    retired = asyncio.Event()
    accepted_wrongly: list[str] = []
    checks = Counter[str]()

    async def watch() -> None:
        while not load.stop.is_set():
            if await acting_as(old, signed("k" * 48, "bob", kid=context_key_id(b"k" * 48))) is not None:
                accepted_wrongly.append("a context under a key never added")
            checks["forged"] += 1
            if retired.is_set():
                if await acting_as(old, old.context("bob")) is not None:
                    accepted_wrongly.append("a context under the retired key")
                checks["stale"] += 1
            await asyncio.sleep(0)

    async with running_app(make_settings(db_url)) as app_a, http_client(app_a) as a:
        load.clients = [a]
        workers = [asyncio.create_task(load.user(user)) for user in USERS]
        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        await asyncio.to_thread(install_context_key, db_url.owner, NEW_KEY.encode())
        async with (
            running_app(make_settings(db_url, rls_context_key=NEW_KEY)) as app_b,
            http_client(app_b) as b,
        ):
            assert (await b.get("/readyz")).status_code == 200
            load.clients = [a, b]
            await asyncio.sleep(1.0)
            load.clients = [b]  # A leaves the rotation (drained), then stops
            await asyncio.sleep(0.3)
            await asyncio.to_thread(retire_context_keys, db_url.owner, [context_key_id(OLD_KEY.encode())])
            retired.set()
            # The old instance, if it were still running, is out: its readiness says why.
            not_ready = await a.get("/readyz")
            assert not_ready.status_code == 503
            assert "RLS_CONTEXT_KEY" in not_ready.json()["detail"]
            await asyncio.sleep(0.7)
            load.stop.set()
            await asyncio.gather(*workers, watcher)
    print(
        f"rotation under load: {load.requests} requests, {dict(load.statuses)}, watcher checks {dict(checks)}"
    )
    assert load.failures == []
    assert accepted_wrongly == []
    assert load.statuses["PATCH 200"] > 20
    assert checks["stale"] > 0 and checks["forged"] > checks["stale"]


# --- the commands ---------------------------------------------------------------------


@pytest.fixture
def owner_env(db_url: DbUrls, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("DATABASE_URL", db_url.runtime)
    monkeypatch.setenv("MIGRATIONS_DATABASE_URL", db_url.owner)


def todo_api(*args: str, key: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env={"RLS_CONTEXT_KEY": key})
    return result.exit_code, result.stdout, result.stderr


def test_the_commands_add_list_and_retire_keys(owner_env: None, db_url: DbUrls) -> None:
    old, new = context_key_id(OLD_KEY.encode()), context_key_id(NEW_KEY.encode())
    code, out, _ = todo_api("context-keys", "list", key=OLD_KEY)
    assert code == 0 and out.split()[:2] == ["*", old]

    # Retiring the others before the new key is in would leave no key.
    code, _, error = todo_api("context-keys", "retire", key=NEW_KEY)
    assert code == 1 and "not accepted yet" in error
    code, _, error = todo_api("context-keys", "add", key=NEW_KEY)
    assert code == 0 and f"{new} added" in error
    code, out, _ = todo_api("context-keys", "list", key=NEW_KEY)
    lines = [line.split() for line in out.splitlines()]
    assert [lines[0][0], lines[1][:2]] == [old, ["*", new]], out
    # The key instances sign with is never retired by name.
    code, _, error = todo_api("context-keys", "retire", new, key=NEW_KEY)
    assert code == 1 and "not retired" in error
    code, _, error = todo_api("context-keys", "retire", "ffffffffffffffff", key=NEW_KEY)
    assert code == 1 and "no such context key" in error

    code, _, error = todo_api("context-keys", "retire", key=NEW_KEY)
    assert code == 0 and f"Retired: {old}" in error
    assert [key.kid for key in context_keys(db_url.owner)] == [new]


def test_migrate_adds_the_key_and_keeps_the_others(owner_env: None, db_url: DbUrls) -> None:
    code, _, error = todo_api("migrate", key=NEW_KEY)
    assert code == 0, error
    assert "still accepted" in error and "context-keys retire" in error
    assert {key.kid for key in context_keys(db_url.owner)} == {
        context_key_id(OLD_KEY.encode()),
        context_key_id(NEW_KEY.encode()),
    }
