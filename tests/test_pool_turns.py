"""Transactions wait for the pool's connections in turn (UserSessions._turn in
app/session.py): first come, first served, a newcomer never takes a connection from one
already waiting, a waiter that gives up costs no one a turn, and a wait past
DB_CONNECT_TIMEOUT is the pool's 503."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from app.config import Settings
from app.database import create_engine
from app.errors import RETRY_AFTER_SECONDS, UNAVAILABLE
from app.session import UserSessions
from tests.conftest import http_client, running_app
from tests.tokens import auth

WAIT = 0.5  # DB_CONNECT_TIMEOUT here: how long a transaction waits for its turn


@pytest.fixture
def one_connection(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "db_pool_size": 1,
            "db_max_overflow": 0,
            "db_connect_timeout": WAIT,
            "rate_limit_requests": "",
            "rate_limit_writes": "",
        }
    )


@pytest.fixture
async def sessions(one_connection: Settings) -> AsyncIterator[UserSessions]:
    engine = create_engine(one_connection)
    try:
        yield UserSessions.from_settings(engine, one_connection)
    finally:
        await engine.dispose()


async def test_waiters_are_served_in_the_order_they_asked(sessions: UserSessions) -> None:
    """The holder ends its transaction and at once asks again, as a new request does
    while others wait: SQLAlchemy's pool queue gave it the connection just handed to the
    first waiter, who queued again at the back. The newcomer now waits its turn."""
    served: list[str | None] = []
    holding = asyncio.Event()
    release = asyncio.Event()

    async def use(user: str) -> None:
        async with sessions.connection(user) as connection:
            served.append(await connection.fetchval("select app.current_user_id()"))

    async def holder() -> None:
        async with sessions.connection("holder"):
            holding.set()
            await release.wait()
        await use("newcomer")  # no await between the release and this request

    held = asyncio.create_task(holder())
    await holding.wait()
    waiters = []
    for user in ("first", "second", "third"):
        waiters.append(asyncio.create_task(use(user)))
        await asyncio.sleep(0.02)  # each one waiting before the next asks
    release.set()
    await asyncio.gather(held, *waiters)
    assert served == ["first", "second", "third", "newcomer"]


async def test_a_waiter_that_gives_up_costs_no_one_a_turn(sessions: UserSessions) -> None:
    """A request cancelled while it waits (its client went away) leaves the turns as they
    were: the connection serves the next one, and still only one at a time."""
    async with sessions.connection("holder"):
        gives_up = asyncio.create_task(use_once(sessions, "gives up"))
        await asyncio.sleep(0.05)
        gives_up.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gives_up
    async with sessions.connection("next") as connection:
        assert await connection.fetchval("select app.current_user_id()") == "next"
        # One turn, held here: another transaction waits, and gives up after WAIT.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(WAIT / 2):
                await use_once(sessions, "second at once")
    assert await use_once(sessions, "after") == "after"


async def use_once(sessions: UserSessions, user: str) -> str | None:
    async with sessions.connection(user) as connection:
        seen: str | None = await connection.fetchval("select app.current_user_id()")
        return seen


async def test_a_wait_past_the_connect_timeout_is_a_503_and_changes_nothing(
    one_connection: Settings,
) -> None:
    async with running_app(one_connection) as app, http_client(app) as client:
        sessions: UserSessions = app.state.user_sessions
        async with sessions.connection("holder"):
            began = time.monotonic()
            response = await client.post("/api/alice/tasks", json={"title": "late"}, headers=auth("alice"))
            waited = time.monotonic() - began
        assert response.status_code == 503, response.text
        assert response.json() == {"detail": UNAVAILABLE}
        assert response.headers["Retry-After"] == RETRY_AFTER_SECONDS
        assert waited >= WAIT  # it did wait its turn, for DB_CONNECT_TIMEOUT
        # The turn it gave up is back: the next request is served, and the create never ran.
        listed = await client.get("/api/alice/tasks", headers=auth("alice"))
        assert listed.status_code == 200 and listed.json() == []
