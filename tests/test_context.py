"""The user context cannot be forged from SQL running as the runtime role.

Any statement the runtime role runs (an injection, say) can call set_config. These
tests play that attacker: with alice's rows and bob's in the table, they set contexts by
hand and check that each forged or stale one sees no row and can write nothing."""

import asyncio
import time

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.models import Task
from app.session import ContextKeyMismatch, UserSessions, sign_context
from tests.conftest import TEST_CONTEXT_KEY, DbUrls, make_settings, running_app

KEY = TEST_CONTEXT_KEY.encode()
SET = text(
    "select set_config('app.user_id', :user_id, true), set_config('app.user_expires', :expires, true),"
    " set_config('app.user_sig', :sig, true)"
)


async def seed(sessions: UserSessions) -> None:
    for user in ("alice", "bob"):
        async with sessions.transaction(user) as session:
            await session.execute(insert(Task).values(user_id=user, title=f"{user}'s"))


def context(user_id: str, expires: int, key: bytes = KEY, signed_for: str | None = None) -> dict[str, str]:
    signature = sign_context(key, signed_for or user_id, expires)
    return {"user_id": user_id, "expires": str(expires), "sig": signature}


async def assert_powerless(session: AsyncSession) -> None:
    """Under the session's current context: nothing visible, nothing changes, no insert."""
    assert (await session.scalars(select(Task))).all() == []
    assert (await session.execute(update(Task).values(title="pwned"))).rowcount == 0  # type: ignore[attr-defined]
    assert (await session.execute(delete(Task))).rowcount == 0  # type: ignore[attr-defined]
    with pytest.raises(DBAPIError) as exc:
        async with session.begin_nested():
            await session.execute(insert(Task).values(user_id="bob", title="forged"))
    assert getattr(exc.value.orig, "sqlstate", None) == "42501"


NOW = int(time.time())
FORGERIES = {
    "another user's id set by hand, no signature": {"user_id": "bob", "expires": "", "sig": ""},
    "another user's id with a made-up signature": {
        "user_id": "bob",
        "expires": str(NOW + 60),
        "sig": "0" * 64,
    },
    "another user's id under alice's signature": context("bob", NOW + 60, signed_for="alice"),
    "bob's stale context, replayed after it expired": context("bob", NOW - 1),
    "bob's context signed with another key": context("bob", NOW + 60, key=b"k" * 48),
    "an expiry that is not a number": {**context("bob", NOW + 60), "expires": "9999999999999999999"},
    "nothing set": {"user_id": "", "expires": "", "sig": ""},
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
async def test_forged_contexts_see_nothing_and_write_nothing(sessions: UserSessions, case: str) -> None:
    await seed(sessions)
    async with sessions.sessionmaker() as session, session.begin():
        await session.execute(SET, FORGERIES[case])
        await assert_powerless(session)
    async with sessions.transaction("bob") as session:
        assert [t.title for t in (await session.scalars(select(Task))).all()] == ["bob's"]


async def test_switching_user_inside_a_valid_transaction_loses_all_access(sessions: UserSessions) -> None:
    await seed(sessions)
    async with sessions.transaction("alice") as session:
        assert len((await session.scalars(select(Task))).all()) == 1
        await session.execute(text("select set_config('app.user_id', 'bob', true)"))
        await assert_powerless(session)


async def test_a_context_expires_inside_a_transaction_kept_open(
    engine: AsyncEngine, settings: Settings, sessions: UserSessions
) -> None:
    """The expiry is checked against each statement's time, not the transaction's start:
    holding a transaction open does not stretch a context's life."""
    await seed(sessions)
    # A whole second, the expiry being whole seconds: it lives for 1 to 2 s from here.
    short_lived = UserSessions(engine, KEY, 2, settings.db_lock_timeout)
    async with short_lived.connection("alice") as connection:
        assert await connection.fetchval("select count(*) from public.tasks") == 1
        await asyncio.sleep(2.1)  # past the expiry, 2 s from the second's start at most
        assert await connection.fetchval("select app.current_user_id()") is None
        assert await connection.fetchval("select count(*) from public.tasks") == 0
        assert await connection.execute("update public.tasks set title = 'late'") == "UPDATE 0"


async def test_a_fresh_context_signed_with_the_real_key_works(sessions: UserSessions) -> None:
    """The control: the same statements with a properly signed context do see bob's row."""
    await seed(sessions)
    async with sessions.sessionmaker() as session, session.begin():
        await session.execute(SET, context("bob", int(time.time()) + 60))
        assert [t.title for t in (await session.scalars(select(Task))).all()] == ["bob's"]


@pytest.mark.parametrize(
    "statement",
    [
        "select * from app.context_keys",
        "select kid from app.context_keys",
        "update app.context_keys set inner_key = inner_key",
        "delete from app.context_keys",
        "insert into app.context_keys (kid, inner_key, outer_key) values ('0000000000000000', '', '')",
        "update app.etag_key set key = key",
        "create or replace function app.current_user_id() returns text language sql as $$ select 'bob' $$",
        "alter table tasks disable row level security",
        "drop policy tasks_select_own on tasks",
        "set role todo_owner",
    ],
)
async def test_the_runtime_role_cannot_read_the_key_or_change_the_rules(
    sessions: UserSessions, statement: str
) -> None:
    with pytest.raises(DBAPIError) as exc:
        async with sessions.transaction("alice") as session:
            await session.execute(text(statement))
    assert getattr(exc.value.orig, "sqlstate", None) == "42501", exc.value.orig


async def test_the_service_refuses_to_start_with_a_key_the_database_does_not_hold(db_url: DbUrls) -> None:
    settings = make_settings(db_url, rls_context_key="another-key-that-is-long-enough-0123456789")
    with pytest.raises(ContextKeyMismatch, match="RLS_CONTEXT_KEY"):
        async with running_app(settings):
            pass
