"""The only module that knows how the user context reaches PostgreSQL.

One transaction per request. Its first statement sets, for that transaction only
(set_config(..., true), values bound as parameters, never formatted into SQL):

- app.user_id       the verified subject;
- app.user_expires  a Unix time shortly ahead;
- app.user_sig      HMAC-SHA256 of "user_id|expires" under the context key.

app.current_user_id() (sql/functions.sql), which every policy calls, returns the user
only when the signature matches under the key that only the owner role can read, and
the expiry has not passed. So SQL running as the runtime role (an injection, say) cannot
make itself another user by calling set_config: it cannot sign, and a value copied from
an earlier transaction goes stale. When the transaction ends the settings are gone, so a
pooled connection (or a PgBouncer server connection) carries no user into the next one.
"""

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth import CurrentSubject

_SET_CONTEXT = text(
    "select set_config('app.user_id', :user_id, true),"
    " set_config('app.user_expires', :expires, true),"
    " set_config('app.user_sig', :sig, true)"
)
_PROBE_USER = "todo-api startup probe"


class ContextKeyMismatch(RuntimeError):
    """The database cannot verify the contexts this service signs."""


def sign_context(key: bytes, user_id: str, expires: int) -> str:
    return hmac.new(key, f"{user_id}|{expires}".encode(), hashlib.sha256).hexdigest()


class UserSessions:
    """Opens transactions that act for one user: the request path and the tests use the same."""

    def __init__(self, engine: AsyncEngine, context_key: bytes, context_ttl: int) -> None:
        self.sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        self._key = context_key
        self._ttl = context_ttl

    def context(self, user_id: str) -> dict[str, str]:
        """The three settings that make a transaction act for `user_id`."""
        expires = int(time.time()) + self._ttl
        return {"user_id": user_id, "expires": str(expires), "sig": sign_context(self._key, user_id, expires)}

    @asynccontextmanager
    async def transaction(self, user_id: str) -> AsyncIterator[AsyncSession]:
        """A session in a transaction acting for `user_id`: commits on exit, rolls back on error."""
        async with self.sessionmaker() as session, session.begin():
            await session.execute(_SET_CONTEXT, self.context(user_id))
            yield session

    @asynccontextmanager
    async def anonymous(self) -> AsyncIterator[AsyncSession]:
        """A transaction acting for nobody: row-level security shows it no user's rows. For
        sign-up and log-in, which reach accounts only through SECURITY DEFINER functions."""
        async with self.sessionmaker() as session, session.begin():
            yield session

    async def check_context_key(self) -> None:
        """Refuse to serve when the database would not accept this service's contexts
        (no key installed, or another one): every request would see nothing."""
        async with self.transaction(_PROBE_USER) as session:
            seen = await session.scalar(text("select app.current_user_id()"))
        if seen != _PROBE_USER:
            raise ContextKeyMismatch(
                "refusing to start: the database does not accept this service's user context: "
                "its context key differs from RLS_CONTEXT_KEY, or none is installed; run "
                "`todo-api migrate` with the same RLS_CONTEXT_KEY"
            )


async def _request_session(request: Request, subject: CurrentSubject) -> AsyncIterator[AsyncSession]:
    sessions: UserSessions = request.app.state.user_sessions
    async with sessions.transaction(subject) as session:
        yield session


# scope="function": the transaction commits (or rolls back) before the response is sent,
# so a client never sees a success that was not committed.
UserSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]
