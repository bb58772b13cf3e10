"""The only module that knows how the user context reaches PostgreSQL.

One transaction per request. Its first statement sets, for that transaction only
(set_config(..., true), values bound as parameters, never formatted into SQL):

- app.user_id       the verified subject;
- app.user_expires  a Unix time shortly ahead;
- app.user_sig      HMAC-SHA256 of "user_id|expires" under the context key;
- app.user_kid      the key's id (context_key_id), which names it among the keys the
                    database accepts (more than one while the key is rotated).

app.current_user_id() (sql/functions.sql), which every policy calls, returns the user
only when the signature matches under the named key, which only the owner role can
read, and the expiry has not passed. So SQL running as the runtime role (an injection, say) cannot
make itself another user by calling set_config: it cannot sign, and a value copied from
an earlier transaction goes stale. When the transaction ends the settings are gone, so a
pooled connection (or a PgBouncer server connection) carries no user into the next one.

Requests run on the pooled connection's asyncpg driver (`connection`): the routes send
few, fixed statements, and SQLAlchemy's per-statement work cost more than PostgreSQL's
(bench/README.md, "Optimisation log"). The pool, its size and its PgBouncer settings are
still SQLAlchemy's. `transaction` gives the same context to an ORM session, for scripts
and for the tests that run unfiltered ORM queries to show that row-level security holds.
"""

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.util import greenlet_spawn

from app.auth import CurrentSubject
from app.config import Settings

# Positional ($1), as asyncpg takes it and SQLAlchemy's asyncpg dialect passes it on.
# lock_timeout ($4) rides along, transaction-local like the context: the runtime role
# may take a table's ACCESS EXCLUSIVE lock (LOCK TABLE needs only DELETE), and every
# other request then waits at most this long for it instead of queueing until its
# statement times out. Set here rather than on the role, whose defaults it may change.
SET_CONTEXT = (
    "select set_config('app.user_id', $1, true),"
    " set_config('app.user_expires', $2, true),"
    " set_config('app.user_sig', $3, true),"
    " set_config('lock_timeout', $4, true),"
    " set_config('app.user_kid', $5, true)"
)
# How a request's transaction ends: COMMIT or ROLLBACK, and in the same message (the
# simple query protocol: no prepared statement involved, and behind PgBouncer the same
# server connection) the clean-up of whatever SQL inside the request left on the
# connection for the next request to find (app.end_request(), sql/functions.sql).
_END_REQUEST = "; select app.end_request()"
COMMIT = "commit" + _END_REQUEST
ROLLBACK = "rollback" + _END_REQUEST
# app.end_request() found a prepared statement made with SQL: the driver may use its
# name, so the connection is closed instead of pooled.
_TAMPERED = "TD001"
_PROBE_USER = "todo-api startup probe"
# Errors after which a connection may be in the middle of a statement, or gone. A
# statement over DB_STATEMENT_TIMEOUT raises TimeoutError, which is an OSError.
_CONNECTION_TROUBLE = (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


async def _end(connection: asyncpg.Connection, statement: str) -> bool:
    """Run COMMIT or ROLLBACK with the clean-up; False when the connection must not serve
    another request (app.end_request() found what it cannot undo)."""
    try:
        await connection.execute(statement)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == _TAMPERED:
            return False
        raise
    return True


async def _end_after(connection: asyncpg.Connection, error: BaseException) -> bool:
    """Roll back after `error` where the connection allows it; whether it may then serve
    another request. Not after an error that may leave it mid-statement or gone (closing
    it ends its transaction on the server too), nor after one of its driver's statements
    went missing (SQL in an earlier request deallocated it)."""
    if not _in_step(error) or isinstance(error, asyncpg.InvalidSQLStatementNameError):
        return False
    return await _end(connection, ROLLBACK)


def _in_step(error: BaseException) -> bool:
    """Whether the connection is still in step with the server after `error`: after an
    error PostgreSQL reported, or one of the route's own, it is, and a rollback ends the
    transaction; after a lost connection, a timeout or a cancellation it may be in the
    middle of a statement, and is closed instead of going back to the pool."""
    return isinstance(error, Exception) and not isinstance(error, _CONNECTION_TROUBLE)


class ContextKeyMismatch(RuntimeError):
    """The database cannot verify the contexts this service signs."""


def sign_context(key: bytes, user_id: str, expires: int) -> str:
    return hmac.new(key, f"{user_id}|{expires}".encode(), hashlib.sha256).hexdigest()


def context_key_id(key: bytes) -> str:
    """The id of a context key, as sql/functions.sql derives it from the stored key: it
    names the key among those the database accepts, and reveals nothing of it."""
    return hmac.new(key, b"todo-api context key id", hashlib.sha256).hexdigest()[:16]


class UserSessions:
    """Opens transactions that act for one user: the request path and the tests use the same."""

    def __init__(
        self,
        engine: AsyncEngine,
        context_key: bytes,
        context_ttl: int,
        lock_timeout: float,
        *,
        connections: int | None = None,
        wait: float = 5.0,
    ) -> None:
        self.engine = engine
        self.sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        self._key = context_key
        self.key_id = context_key_id(context_key)
        self._ttl = context_ttl
        self._lock_timeout = f"{max(1, round(lock_timeout * 1000))}ms"
        # Transactions take their turn for the pool's `connections` in the order they
        # asked, for up to `wait` seconds. SQLAlchemy's pool queue lets a newcomer take a
        # connection that was being handed to a waiter, which then queues again at the
        # back: under load, a few requests waited many times the others' wait (the p99
        # of bench/README.md, round 8). asyncio's Semaphore hands a released slot to the
        # first waiter, and lets no one past while anyone waits.
        self._turns = asyncio.Semaphore(connections) if connections else None
        self._wait = wait

    @classmethod
    def from_settings(cls, engine: AsyncEngine, settings: Settings) -> "UserSessions":
        """As the app makes them: signed with RLS_CONTEXT_KEY, a turn for each of the
        pool's connections, waited for up to DB_CONNECT_TIMEOUT."""
        if settings.rls_context_key is None:
            raise ValueError("RLS_CONTEXT_KEY is not set")
        return cls(
            engine,
            settings.rls_context_key.get_secret_value().encode(),
            settings.rls_context_ttl,
            settings.db_lock_timeout,
            connections=settings.db_pool_size + settings.db_max_overflow,
            wait=settings.db_connect_timeout,
        )

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Hold one of the pool's connections' turns, waiting in line for it; past `wait`
        seconds, the pool's own timeout error (a 503, as when the pool times out)."""
        if self._turns is None:
            yield
            return
        try:
            async with asyncio.timeout(self._wait):
                await self._turns.acquire()
        except TimeoutError:
            raise PoolTimeoutError(f"no connection free within {self._wait:g} s") from None
        try:
            yield
        finally:
            self._turns.release()

    def context(self, user_id: str) -> tuple[str, str, str, str, str]:
        """SET_CONTEXT's parameters that make a transaction act for `user_id`."""
        expires = int(time.time()) + self._ttl
        signature = sign_context(self._key, user_id, expires)
        return user_id, str(expires), signature, self._lock_timeout, self.key_id

    @asynccontextmanager
    async def connection(self, user_id: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection in a transaction acting for `user_id`: commits on exit,
        rolls back on error. What every request runs on."""
        async with self._turn():
            try:
                pooled, connection = await self._begin(user_id)
            except asyncpg.InvalidSQLStatementNameError:
                # SQL in an earlier request on that connection deallocated the driver's
                # statement (the connection is closed now). Nothing has happened yet in
                # this request, so another connection serves it.
                pooled, connection = await self._begin(user_id)
            # Whether the transaction ended and the clean-up ran, so that the connection
            # may serve another request.
            reusable = False
            try:
                try:
                    yield connection
                except BaseException as exc:
                    reusable = await _end_after(connection, exc)
                    raise
                reusable = await _end(connection, COMMIT)
            finally:
                await _release(pooled, reusable)

    async def _begin(self, user_id: str) -> tuple[Any, asyncpg.Connection]:
        """A pooled connection with the user's transaction begun and its context set."""
        pooled = await self.engine.raw_connection()
        # None only once the pooled connection is invalidated or detached, not at checkout.
        connection = cast(asyncpg.Connection, pooled.driver_connection)
        try:
            await connection.execute("begin")
            await connection.execute(SET_CONTEXT, *self.context(user_id))
        except BaseException as exc:
            reusable = False
            try:
                reusable = await _end_after(connection, exc)
            finally:
                await _release(pooled, reusable)
            raise
        return pooled, connection

    @asynccontextmanager
    async def transaction(self, user_id: str) -> AsyncIterator[AsyncSession]:
        """An ORM session in a transaction acting for `user_id`: commits on exit, rolls back on error."""
        async with self._turn(), self.sessionmaker() as session, session.begin():
            await (await session.connection()).exec_driver_sql(SET_CONTEXT, self.context(user_id))
            yield session

    @asynccontextmanager
    async def anonymous(self) -> AsyncIterator[AsyncSession]:
        """A transaction acting for nobody: row-level security shows it no user's rows. For
        sign-up and log-in, which reach accounts only through SECURITY DEFINER functions."""
        async with self._turn(), self.sessionmaker() as session, session.begin():
            yield session

    async def check_context_key(self) -> None:
        """Raise ContextKeyMismatch when the database does not accept this service's
        contexts (its key was never added, or was retired): every request would see
        nothing. At start-up (the service refuses to serve) and in /readyz (a balancer
        stops sending it requests)."""
        async with self.connection(_PROBE_USER) as connection:
            seen = await connection.fetchval("select app.current_user_id()")
        if seen != _PROBE_USER:
            raise ContextKeyMismatch(
                f"the database does not accept this service's user context: the key of "
                f"RLS_CONTEXT_KEY (id {self.key_id}) is not among its context keys; add it with "
                "`todo-api context-keys add` (or `todo-api migrate`) and the same RLS_CONTEXT_KEY"
            )

    async def etag_key(self) -> bytes:
        """The key of the tasks' ETags, the same for every instance (app.etag_key)."""
        async with self.anonymous() as session:
            key = await session.scalar(text("select key from app.etag_key"))
        assert isinstance(key, bytes)
        return key


async def _release(pooled: Any, reusable: bool) -> None:
    """Hand a connection back to the pool, or close it."""
    if reusable and not pooled.driver_connection.is_in_transaction():
        # Back to the pool, which may close it (overflow, recycling): I/O, done in
        # SQLAlchemy's greenlet as all its I/O is.
        await greenlet_spawn(pooled.close)
    else:
        await greenlet_spawn(pooled.invalidate)


async def _request_connection(request: Request, subject: CurrentSubject) -> AsyncIterator[asyncpg.Connection]:
    sessions: UserSessions = request.app.state.user_sessions
    async with sessions.connection(subject) as connection:
        yield connection


# The session dependency. scope="function": the transaction commits (or rolls back)
# before the response is sent, so a client never sees a success that was not committed.
UserConnection = Annotated[asyncpg.Connection, Depends(_request_connection, scope="function")]
