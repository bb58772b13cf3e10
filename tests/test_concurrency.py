"""Many users at once against one running server whose pool is smaller than the crowd.

Each user runs a random but seeded sequence of creates, lists, reads, updates, toggles,
deletes and probes of other users' task ids, interleaved with everyone else's on five
pooled connections (a pool of five, otherwise as configured by default: no overflow).
Every answer must carry only the caller's rows and agree with the model the client keeps
of that user's tasks; at the end the API and the database (read as a superuser, past
row-level security) hold exactly what each user's requests made.
"""

import asyncio
import contextlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.live_server import LiveService, live_service, server_environment
from tests.tokens import TEST_SECRET, make_token

POOL_SIZE = 5
USERS = 60
OPERATIONS_PER_USER = 35  # 60 x 35 = 2,100 requests, plus the final reads
# Requests in flight at once, over CLIENTS HTTP clients that users share, so that one
# keep-alive connection carries several users' requests in turn. (One client with this
# many connections spends more CPU in httpcore's pool bookkeeping than the server does.)
CLIENTS = 8
CONNECTIONS_PER_CLIENT = 4
IN_FLIGHT = CLIENTS * CONNECTIONS_PER_CLIENT
TIME_LIMIT = 60.0
NOT_FOUND = {"detail": "Task not found"}

# Rate limits off: every client here is 127.0.0.1, and this test is about isolation
# under load, not about throttling (tests of their own cover that).
service = live_service(
    "concurrency",
    db_pool_size=POOL_SIZE,
    rate_limit_requests="",
    rate_limit_writes="",
)

# Operation -> weight. Operations on a task fall back to "create" while the user has none.
OPERATIONS = {
    "create": 30,
    "list": 12,
    "get": 10,
    "patch": 14,
    "put": 6,
    "toggle": 14,
    "delete": 9,
    "foreign": 5,
}


@dataclass
class Crowd:
    """What the client side knows: every task id ever created and its owner, and each
    user's expected tasks (id -> the fields the API shows)."""

    owners: dict[int, str] = field(default_factory=dict)
    models: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    requests: int = 0


def assert_only_own(response: httpx.Response, user: str) -> Any:
    body = response.json()
    for task in body if isinstance(body, list) else [body]:
        assert task["user_id"] == user, (
            f"{user} got {task} from {response.request.method} {response.request.url}"
        )
    return body


def visible(task: dict[str, Any]) -> dict[str, Any]:
    return {key: task[key] for key in ("id", "user_id", "title", "description", "completed")}


class User:
    def __init__(self, name: str, client: httpx.AsyncClient, gate: asyncio.Semaphore, crowd: Crowd) -> None:
        self.name = name
        self.client = client
        self.gate = gate
        self.crowd = crowd
        self.model = crowd.models.setdefault(name, {})
        self.headers = {"Authorization": f"Bearer {make_token(name)}"}
        self.base = f"/api/{name}/tasks"
        self.rng = random.Random(name)  # noqa: S311 - reproducible choices, not secrets
        self.counter = 0

    async def request(self, method: str, path: str, expected: int, **kwargs: Any) -> httpx.Response:
        async with self.gate:
            response = await self.client.request(method, self.base + path, headers=self.headers, **kwargs)
        self.crowd.requests += 1
        assert response.status_code == expected, (
            f"{self.name}: {method} {path} {kwargs} -> {response.status_code} {response.text[:300]}"
        )
        return response

    def expect(self, task: dict[str, Any]) -> None:
        """`task` as answered equals the model's version of it."""
        assert task["user_id"] == self.name
        assert visible(task) == {"id": task["id"], "user_id": self.name, **self.model[task["id"]]}, self.name

    async def run(self) -> None:
        names, weights = list(OPERATIONS), list(OPERATIONS.values())
        for _ in range(OPERATIONS_PER_USER):
            operation = self.rng.choices(names, weights)[0]
            if operation not in ("create", "list", "foreign") and not self.model:
                operation = "create"
            await getattr(self, operation)()

    def _title(self) -> str:
        self.counter += 1
        return f"{self.name} task {self.counter} ✓"

    def _pick(self) -> int:
        return self.rng.choice(sorted(self.model))

    async def create(self) -> None:
        description = self.rng.choice([None, f"made by {self.name}"])
        body = {"title": self._title(), "description": description}
        task = assert_only_own(await self.request("POST", "", 201, json=body), self.name)
        self.model[task["id"]] = {**body, "completed": False}
        self.crowd.owners[task["id"]] = self.name
        self.expect(task)

    async def list(self) -> None:
        response = await self.request("GET", "", 200, params={"limit": 100})
        tasks = assert_only_own(response, self.name)
        assert response.headers["x-total-count"] == str(len(self.model))
        assert sorted(task["id"] for task in tasks) == sorted(self.model)
        for task in tasks:
            self.expect(task)

    async def get(self) -> None:
        task_id = self._pick()
        self.expect(assert_only_own(await self.request("GET", f"/{task_id}", 200), self.name))

    async def patch(self) -> None:
        task_id = self._pick()
        change: dict[str, Any] = self.rng.choice(
            [{"title": self._title()}, {"description": None}, {"completed": self.rng.random() < 0.5}]
        )
        response = await self.request("PATCH", f"/{task_id}", 200, json=change)
        self.model[task_id].update(change)
        self.expect(assert_only_own(response, self.name))

    async def put(self) -> None:
        task_id = self._pick()
        body = {"title": self._title()}  # description and completed go back to their defaults
        response = await self.request("PUT", f"/{task_id}", 200, json=body)
        self.model[task_id] = {"title": body["title"], "description": None, "completed": False}
        self.expect(assert_only_own(response, self.name))

    async def toggle(self) -> None:
        task_id = self._pick()
        response = await self.request("PATCH", f"/{task_id}/complete", 200)
        self.model[task_id]["completed"] = not self.model[task_id]["completed"]
        self.expect(assert_only_own(response, self.name))

    async def delete(self) -> None:
        task_id = self._pick()
        await self.request("DELETE", f"/{task_id}", 204)
        del self.model[task_id]

    async def foreign(self) -> None:
        """Another user's task id (live or deleted) on one's own path: always 404."""
        others = [task_id for task_id, owner in self.crowd.owners.items() if owner != self.name]
        if not others:
            await self.create()
            return
        task_id = self.rng.choice(others)
        method, path, body = self.rng.choice(
            [
                ("GET", f"/{task_id}", None),
                ("PATCH", f"/{task_id}", {"title": f"taken by {self.name}"}),
                ("PATCH", f"/{task_id}/complete", None),
                ("DELETE", f"/{task_id}", None),
            ]
        )
        response = await self.request(method, path, 404, json=body)
        assert response.json() == NOT_FOUND


async def sample_runtime_connections(service: LiveService, stop: asyncio.Event) -> tuple[int, set[int]]:
    """The most connections the runtime role held at once while `stop` was not set, and
    the server processes that served them."""
    query = "select pid from pg_stat_activity where datname = current_database() and usename = 'todo_app'"
    peak, pids = 0, set()
    while not stop.is_set():
        rows = await asyncio.to_thread(lambda: service.admin.execute(query).fetchall())
        peak = max(peak, len(rows))
        pids.update(pid for (pid,) in rows)
        await asyncio.sleep(0.05)
    return peak, pids


async def test_a_crowd_on_a_small_pool_sees_and_changes_only_its_own_rows(service: LiveService) -> None:
    crowd = Crowd()
    gate = asyncio.Semaphore(IN_FLIGHT)
    limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=service.base_url, timeout=20.0, limits=limits)
            )
            for _ in range(CLIENTS)
        ]
        users = [
            User(f"user-{number:02d}", clients[number % CLIENTS], gate, crowd) for number in range(USERS)
        ]
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_runtime_connections(service, stop))
        try:
            async with asyncio.timeout(TIME_LIMIT), asyncio.TaskGroup() as group:
                for user in users:
                    group.create_task(user.run())
        finally:
            stop.set()
            peak_connections, server_processes = await sampler

        assert crowd.requests >= 2000
        # The pool was the bottleneck, and never exceeded: 32 requests in flight on 5 connections.
        assert peak_connections == POOL_SIZE
        # Nor churned: the same five connections served every request. (An overflow
        # connection is opened for a request and closed after it, a new server process each
        # time; the benchmark lost an eighth of its throughput to them.)
        assert len(server_processes) == POOL_SIZE

        for user in users:
            await user.list()  # through the API: exactly the model, nothing else

    rows = service.admin.execute(
        "select id, user_id, title, description, completed from tasks order by id"
    ).fetchall()
    stored: dict[str, dict[int, dict[str, Any]]] = {}
    for task_id, user_id, title, description, completed in rows:
        stored.setdefault(user_id, {})[task_id] = {
            "title": title,
            "description": description,
            "completed": completed,
        }
    expected = {name: model for name, model in crowd.models.items() if model}
    assert stored == expected


def test_the_servers_environment_carries_every_setting_and_nothing_that_conflicts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url="postgresql://todo_app:pw@db.example/todo",
        jwt_secret=TEST_SECRET,
        jwt_algorithms=["HS256", "HS384"],
        jwt_issuer="https://id.example",
        db_pool_size=POOL_SIZE,
        data_dir=tmp_path,
    )
    inherited = {
        "PATH": "/usr/bin",
        "PGOPTIONS": "-c app.user_id=victim",
        "PGHOST": "elsewhere.example",
        "jwt_audience": "set in the shell",
        "BETTER_AUTH_SECRET": "another-secret-from-the-shell-0123456789",
        "UVICORN_PORT": "1",
    }
    env = server_environment(settings, inherited)
    assert env["PATH"] == "/usr/bin"
    assert not {"PGOPTIONS", "PGHOST", "jwt_audience", "BETTER_AUTH_SECRET", "UVICORN_PORT"} & set(env)
    assert env["JWT_ALGORITHMS"] == "HS256,HS384"
    assert env["JWT_SECRET"] == TEST_SECRET

    # What the server process reads back is exactly what the test configured.
    for name in os.environ:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == settings  # type: ignore[call-arg]
