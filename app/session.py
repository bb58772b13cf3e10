"""The only module that knows how the user context reaches PostgreSQL.

One transaction per request. Its first statement sets app.user_id for that transaction
only (set_config(..., true), value bound as a parameter, never formatted into SQL), so
when the transaction ends the connection goes back to the pool with no user on it. The
row-level security policies in sql/policies/ compare every row with that setting.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth import CurrentSubject

_SET_USER = text("select set_config('app.user_id', :user_id, true)")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@asynccontextmanager
async def user_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: str
) -> AsyncIterator[AsyncSession]:
    """A session in a transaction acting for `user_id`: commits on exit, rolls back on error."""
    async with sessionmaker() as session, session.begin():
        await session.execute(_SET_USER, {"user_id": user_id})
        yield session


async def _request_session(request: Request, subject: CurrentSubject) -> AsyncIterator[AsyncSession]:
    async with user_transaction(request.app.state.sessionmaker, subject) as session:
        yield session


# scope="function": the transaction commits (or rolls back) before the response is sent,
# so a client never sees a success that was not committed.
UserSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]
