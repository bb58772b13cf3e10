"""The service refuses to start with a weak secret or a database role RLS would not bind."""

import gc
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from pydantic import ValidationError

from app.config import OWNER_ROLE, Settings
from app.database import UnsafeRuntimeRole
from tests.conftest import ROLE_PASSWORD, DbUrls, Server, make_settings, running_app


def test_a_secret_shorter_than_32_bytes_is_refused_with_a_message_saying_so() -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(_env_file=None, jwt_secret="x" * 31)  # type: ignore[call-arg]
    assert "JWT_SECRET must be at least 32 bytes long, this one has 31" in str(exc.value)
    assert "x" * 31 not in str(exc.value)  # a refused secret is not repeated, into a log
    assert Settings(_env_file=None, jwt_secret="x" * 32).jwt_secret is not None  # type: ignore[call-arg]


def test_better_auth_secret_is_accepted_as_an_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.setenv("BETTER_AUTH_SECRET", "b" * 40)
    assert Settings(_env_file=None).jwt_secret.get_secret_value() == "b" * 40  # type: ignore[call-arg, union-attr]


def test_only_hmac_algorithms_go_with_a_shared_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_ALGORITHMS", "HS256, HS512")
    assert Settings(_env_file=None).jwt_algorithms == ["HS256", "HS512"]  # type: ignore[call-arg]
    monkeypatch.setenv("JWT_ALGORITHMS", "HS256,none")
    with pytest.raises(ValidationError, match="not none"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def scratch_role(pg_server: Server, admin_conn: psycopg.Connection) -> Iterator[str]:
    """A login role made for one test and dropped after it (roles are cluster-wide)."""
    name = f"todo_test_{uuid.uuid4().hex[:8]}"
    role = sql.Identifier(name)
    admin_conn.execute(sql.SQL("create role {} login password {}").format(role, sql.Literal(ROLE_PASSWORD)))
    try:
        yield name
    finally:
        admin_conn.execute(sql.SQL("drop owned by {}").format(role))
        admin_conn.execute(sql.SQL("drop role {}").format(role))


async def refusal(settings: Settings) -> str:
    with pytest.raises(UnsafeRuntimeRole) as exc:
        async with running_app(settings):
            pass
    return str(exc.value)


async def test_refuses_a_superuser(db_url: DbUrls) -> None:
    message = await refusal(make_settings(db_url, database_url=db_url.admin))
    assert "is a superuser" in message
    assert "connect as todo_app" in message


async def test_refuses_a_role_with_bypassrls(
    db_url: DbUrls, pg_server: Server, admin_conn: psycopg.Connection, scratch_role: str
) -> None:
    admin_conn.execute(sql.SQL("alter role {} bypassrls").format(sql.Identifier(scratch_role)))
    message = await refusal(make_settings(db_url, database_url=pg_server.url("todo_test", scratch_role)))
    assert "has BYPASSRLS" in message


async def test_refuses_the_owner_of_the_tables(db_url: DbUrls) -> None:
    message = await refusal(make_settings(db_url, database_url=db_url.owner))
    assert f"the database role '{OWNER_ROLE}' owns tables of user data (" in message
    assert "public.tasks" in message


async def test_refuses_a_member_of_the_owner_role(
    db_url: DbUrls, pg_server: Server, admin_conn: psycopg.Connection, scratch_role: str
) -> None:
    admin_conn.execute(
        sql.SQL("grant {} to {}").format(sql.Identifier(OWNER_ROLE), sql.Identifier(scratch_role))
    )
    message = await refusal(make_settings(db_url, database_url=pg_server.url("todo_test", scratch_role)))
    assert "owns tables of user data (" in message
    assert "public.tasks" in message


async def test_refuses_a_role_that_may_create_temporary_objects(
    db_url: DbUrls, admin_conn: psycopg.Connection
) -> None:
    """PostgreSQL grants TEMPORARY to PUBLIC on a new database; a temporary view left on a
    pooled connection would run inside the next request's context (docs/security.md)."""
    admin_conn.execute("grant temporary on database todo_test to public")
    message = await refusal(make_settings(db_url))
    assert "may create temporary objects" in message
    assert "run it again after an upgrade" in message


async def test_refuses_a_role_with_session_defaults_it_could_have_set_itself(
    db_url: DbUrls, admin_conn: psycopg.Connection
) -> None:
    """The runtime role may ALTER ROLE itself: SQL running as it can make every later
    connection read-only. The service says so at start-up instead of failing writes."""
    with psycopg.connect(db_url.runtime, autocommit=True) as runtime:
        runtime.execute("alter role todo_app set default_transaction_read_only = on")
    try:
        message = await refusal(make_settings(db_url))
    finally:
        admin_conn.execute("alter role todo_app reset all")
    assert "has session defaults set with ALTER ROLE (default_transaction_read_only=on)" in message
    assert "ALTER ROLE todo_app RESET ALL" in message


async def test_starts_as_the_runtime_role(settings: Settings) -> None:
    async with running_app(settings) as app:
        assert app.state.user_sessions is not None


async def test_what_start_up_built_is_out_of_the_collectors_sight_while_the_app_runs(
    settings: Settings,
) -> None:
    """gc.freeze() once started (app/main.py): a full collection no longer scans the
    app's long-lived objects, which held every request in flight for ~170 ms. They are
    handed back at shutdown, so that an app that is gone (the tests make many) is freed."""
    async with running_app(settings):
        assert gc.get_freeze_count() > 50_000
    assert gc.get_freeze_count() == 0
