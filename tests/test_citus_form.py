"""The SQL a distributed PostgreSQL (Citus) would run, on one PostgreSQL node
(docs/scale-out.md, issue 14): the context set by app.set_context() (sql/citus/
set_context.sql), whose SET LOCALs Citus forwards to its workers, and the policies
without a subquery, the only form Citus accepts on a distributed table. Neither is what
the service runs today; Citus itself is not installed here, so what it does with them is
read from its source (docs/scale-out.md says where), not tested."""

import time
from collections.abc import Iterator

import psycopg
import pytest

from app.paths import read_sql
from app.session import context_key_id, sign_context
from bench.context_statement import PLAIN_CALL, SUBQUERY_CALL, apply_policies, policy_sql
from tests.conftest import TEST_CONTEXT_KEY, DbUrls

KEY = TEST_CONTEXT_KEY.encode()
KID = context_key_id(KEY)
SET_CONTEXT = "select app.set_context(%s, %s, %s, %s, %s)"


def context(user_id: str, expires: int | None = None) -> tuple[str, str, str, str, str]:
    expires = expires or int(time.time()) + 60
    return user_id, str(expires), sign_context(KEY, user_id, expires), KID, "1500ms"


@pytest.fixture
def runtime(db_url: DbUrls) -> Iterator[psycopg.Connection]:
    """A connection as the runtime role, app.set_context() installed by the owner."""
    with psycopg.connect(db_url.owner, autocommit=True) as owner:
        owner.execute(read_sql("citus/set_context.sql"))
    with psycopg.connect(db_url.runtime) as conn:
        yield conn


def test_set_context_sets_the_signed_context_for_the_transaction_only(runtime: psycopg.Connection) -> None:
    runtime.execute(SET_CONTEXT, context("alice"))
    settings = runtime.execute(
        "select app.current_user_id(), current_setting('app.user_kid'), current_setting('lock_timeout'),"
        " current_setting('citus.propagate_set_commands')"
    ).fetchone()
    # The last: Citus's switch for forwarding SET LOCAL, turned on first (a placeholder
    # setting here, where Citus is not loaded).
    assert settings == ("alice", KID, "1500ms", "local")
    runtime.commit()
    # SET LOCAL: gone with the transaction, as set_config(..., true) is.
    assert runtime.execute("select app.current_user_id(), current_setting('lock_timeout')").fetchone() == (
        None,
        "0",
    )


@pytest.mark.parametrize(
    "user_id",
    ["o'brien", "back\\slash", "'; reset all; set local app.user_id = 'bob", "ünï €", ""],
    ids=["quote", "backslash", "statement-in-a-value", "non-ascii", "empty"],
)
def test_every_value_arrives_as_it_was_bound(runtime: psycopg.Connection, user_id: str) -> None:
    """The values are bound to the function and quoted into each SET LOCAL (format's
    %L): whatever a value holds, it is the value, never SQL."""
    values = context(user_id)
    runtime.execute(SET_CONTEXT, values)
    stored = runtime.execute(
        "select current_setting('app.user_id'), current_setting('app.user_expires'),"
        " current_setting('app.user_sig'), app.current_user_id()"
    ).fetchone()
    # An empty user id is no user (app.current_user_id() reads '' as NULL).
    assert stored == (*values[:3], user_id or None)


def test_a_null_argument_sets_no_context(runtime: psycopg.Connection) -> None:
    """STRICT: the function does not run, nothing is set, and the transaction acts for
    nobody (fails closed)."""
    runtime.execute(SET_CONTEXT, (*context("alice")[:3], None, "1500ms"))
    assert runtime.execute(
        "select current_setting('app.user_id', true), app.current_user_id()"
    ).fetchone() == (None, None)


def test_the_policies_in_citus_form_have_no_subquery_and_still_isolate_users(
    admin_conn: psycopg.Connection, db_url: DbUrls, runtime: psycopg.Connection
) -> None:
    """Citus refuses a policy whose expression has a sublink (ErrorIfUnsupportedPolicyExpr,
    checkExprHasSubLink); `user_id = app.current_user_id()` has none, and holds users
    apart as the shipped form does, with the context set by app.set_context()."""
    admin_conn.execute(
        "insert into tasks (user_id, title) values ('alice', 'hers'), ('bob', 'his');"
        " insert into tags (user_id, name, folded) values ('alice', 'home', 'home'), ('bob', 'work', 'work');"
        " insert into conversations (user_id, title) values ('alice', 'hers'), ('bob', 'his')"
    )
    assert all(SUBQUERY_CALL in text for text in policy_sql("subquery") if PLAIN_CALL in text)
    apply_policies(db_url.owner, "plain")
    quals = admin_conn.execute(
        "select coalesce(pg_get_expr(polqual, polrelid), '') || ' '"
        " || coalesce(pg_get_expr(polwithcheck, polrelid), '')"
        " from pg_policy where polrelid in ('tasks'::regclass, 'tags'::regclass, 'task_tags'::regclass,"
        " 'conversations'::regclass, 'messages'::regclass)"
    ).fetchall()
    assert len(quals) == 19
    assert all("app.current_user_id()" in qual and "SELECT" not in qual.upper() for (qual,) in quals)

    runtime.execute(SET_CONTEXT, context("alice"))
    for table in ("tasks", "tags", "conversations"):
        assert runtime.execute(f"select user_id from {table}").fetchall() == [("alice",)], table
    assert runtime.execute("update tasks set title = 'changed' where user_id = 'bob'").rowcount == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        runtime.execute("insert into tasks (user_id, title) values ('bob', 'forged')")
    runtime.rollback()
    # No context: no row.
    assert runtime.execute("select count(*) from tasks").fetchone() == (0,)


def test_a_plain_call_in_a_policy_is_still_an_index_condition(
    admin_conn: psycopg.Connection, db_url: DbUrls, runtime: psycopg.Connection
) -> None:
    """app.current_user_id() is STABLE: without the subquery it is still a value the
    planner may look up in an index on user_id, so a statement that names no user still
    reads only the user's range of entries."""
    admin_conn.execute(
        "insert into tasks (user_id, title) select 'user' || n % 50, 't' from generate_series(1, 500) n"
    )
    admin_conn.execute("analyze tasks")
    apply_policies(db_url.owner, "plain")
    runtime.execute(SET_CONTEXT, context("user7"))
    runtime.execute("set local enable_seqscan = off")
    plan = "\n".join(
        line
        for (line,) in runtime.execute("explain select id from tasks order by created_at desc").fetchall()
    )
    assert "Index Cond: ((user_id)::text = app.current_user_id())" in plan, plan
    assert runtime.execute("select count(*) from tasks").fetchone() == (10,)
