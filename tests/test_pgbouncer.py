"""The API through a real PgBouncer in transaction mode: no context ever crosses users.

PgBouncer gives each transaction whichever of its (here 2) server connections is free,
so a user context that outlived its transaction would reach another client. The control
test shows the scenario catches exactly that: with the context set at session level, in
its own statement, it leaks, and the same checks see it.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.util import greenlet_spawn

from app.config import Settings
from app.session import SET_CONTEXT, UserSessions
from tests.cluster import pgbouncer_server
from tests.conftest import TEST_DB, DbUrls, Server, http_client, make_settings, running_app
from tests.test_pool_hygiene import attackable_app, inject
from tests.tokens import auth

USERS = [f"user{n:02d}" for n in range(24)]
ROUNDS = 6
SERVER_CONNECTIONS = 2


@pytest.fixture
def pgbouncer(pg_server: Server, db_url: DbUrls) -> Iterator[str]:
    """A PgBouncer in transaction mode with 2 server connections; yields its runtime URL."""
    with pgbouncer_server(pg_server, TEST_DB, pool_size=SERVER_CONNECTIONS) as url:
        yield url


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
