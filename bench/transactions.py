"""Database transactions per request, counted exactly.

Under load (bench.service.RequestCost) the count is PostgreSQL's own,
pg_stat_database.xact_commit, over each measurement. But a backend publishes its count
when it goes idle at most once a second, and otherwise ten seconds after its last
transaction or when it exits: a measurement of a few seconds gains or loses up to a
second of each connection's commits at its edges. Here the app runs in process (the
same create_app, settings, engine and pool as under uvicorn), one request at a time,
and its pool is disposed after each batch of requests, so that its connections close
and their backends publish everything before the count is read (from the maintenance
database, so that reading adds nothing to it).

A batch of k requests then counts k requests' commits plus what does not depend on k
(opening the pooled connection). So each scenario runs a
batch of 1 and a batch of 1 + PROBE_REQUESTS, on fresh connections both, and the
difference is PROBE_REQUESTS requests' commits, exactly.

PostgreSQL counts two commits per transaction of the service's: each ends with
`commit; select app.end_request()` in one message (app/session.py), and the clean-up
runs in a transaction of its own after the commit.
"""

import time
from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI

from app.auth import TokenVerifier
from app.config import RUNTIME_ROLE, Settings
from app.main import create_app
from app.session import COMMIT
from bench.database import BenchDatabase, backends, committed_transactions, user_id
from bench.load import REQUESTS, request_path
from bench.report import TransactionCount

# The scenarios counted: the chat, and the list, its control.
PROBED = ("list", "chat")
# Requests in the larger batch beyond the smaller one's.
PROBE_REQUESTS = 5
# Commits PostgreSQL counts per transaction of the service's: the commit, and the
# statements sent after it in the same message, each in an implicit transaction.
COMMITS_PER_TRANSACTION = len([statement for statement in COMMIT.split(";") if statement.strip()])
# How long the backends of a disposed pool may take to exit.
EXIT_TIMEOUT = 10.0


def _wait_until_gone(admin_url: str, pids: set[int]) -> None:
    """Until these backends have exited: a backend publishes its counts before it leaves
    pg_stat_activity."""
    deadline = time.monotonic() + EXIT_TIMEOUT
    while pids & backends(admin_url, RUNTIME_ROLE):
        if time.monotonic() > deadline:
            raise RuntimeError(f"backends {sorted(pids)} did not exit within {EXIT_TIMEOUT:.0f} s")
        time.sleep(0.02)


async def _batch(
    app: FastAPI, admin_url: str, send: Callable[[], Awaitable[int | None]], requests: int
) -> tuple[int, set[int | None]]:
    """The commits of `requests` requests on fresh connections, and the tool calls each made."""
    before = backends(admin_url, RUNTIME_ROLE)
    start = committed_transactions(admin_url)
    calls = {await send() for _ in range(requests)}
    ours = backends(admin_url, RUNTIME_ROLE) - before
    await app.state.engine.dispose()
    _wait_until_gone(admin_url, ours)
    return committed_transactions(admin_url) - start, calls


def _sender(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, n: int, per_user: int
) -> Callable[[], Awaitable[int | None]]:
    """Sends one request of the scenario as user n; the chat's answer gives its tool calls."""
    request = REQUESTS[name]
    path = request_path(name, n, 1, per_user)
    content = request.body.encode() if request.body else None
    extra = {"Content-Type": "application/json"} if content else {}

    async def send() -> int | None:
        response = await client.request(request.method, path, headers=headers | extra, content=content)
        if response.status_code >= 300:
            raise RuntimeError(f"{name} answered {response.status_code}: {response.text}")
        return len(response.json()["tool_calls"]) if name == "chat" else None

    return send


async def count(
    db: BenchDatabase, settings: Settings, n: int, per_user: int, scenarios: tuple[str, ...] = PROBED
) -> dict[str, TransactionCount]:
    """Each scenario's commits per request, as user n, with the app in process."""
    verifier = TokenVerifier(settings)
    headers = {"Authorization": f"Bearer {verifier.issue(user_id(n), 600)}"}
    app = create_app(settings)
    counted = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=120
        ) as client,
    ):
        for name in scenarios:
            send = _sender(client, headers, name, n, per_user)
            # The first request of the process (the chat's imports the Agents SDK), and
            # the start-up's connection, out of the way.
            await _batch(app, db.admin_url, send, 1)
            # Twice each, the fewer commits kept: an autovacuum worker that visits the
            # database meanwhile commits transactions of its own.
            fewer = min([(await _batch(app, db.admin_url, send, 1))[0] for _ in range(2)])
            batches = [await _batch(app, db.admin_url, send, 1 + PROBE_REQUESTS) for _ in range(2)]
            more = min(commits for commits, _ in batches)
            calls = batches[0][1] | batches[1][1]
            if len(calls) != 1:
                raise RuntimeError(f"{name}: the messages made different numbers of tool calls: {calls}")
            counted[name] = TransactionCount(
                name, PROBE_REQUESTS, more - fewer, COMMITS_PER_TRANSACTION, calls.pop()
            )
    return counted
