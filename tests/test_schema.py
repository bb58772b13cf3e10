"""Catalog guards: what the migrated database must look like for isolation to hold."""

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import psycopg
import pytest

from app.config import OWNER_ROLE, RUNTIME_ROLE
from app.policies import declared_state, drift, live_state, policy_files
from app.session import UserSessions
from tests.conftest import DbUrls
from tests.tokens import auth

COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE")
# The one condition a runtime policy may have, as pg_get_expr prints it.
OWN_ROW = re.compile(
    r"\(*\(?user_id\)?(::text)?\s*=\s*\( SELECT app\.current_user_id\(\) AS current_user_id\)\)*"
)


def tables_with_user_id(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        """
        select c.relname from pg_attribute a join pg_class c on c.oid = a.attrelid
        where a.attname = 'user_id' and not a.attisdropped and c.relkind in ('r', 'p')
          and c.relnamespace = 'public'::regnamespace
        order by 1
        """
    ).fetchall()
    return [name for (name,) in rows]


# Tables the SECURITY DEFINER functions of sql/accounts.sql (sign-up, log-in) reach as
# the owner role: the only ones where a policy may name todo_owner.
DEFINER_TABLES = {"accounts", "account_passwords"}


def test_there_is_user_data_to_guard(admin_conn: psycopg.Connection) -> None:
    assert tables_with_user_id(admin_conn) == [
        "account_passwords",
        "accounts",
        "conversations",
        "messages",
        "tags",
        "task_tags",
        "tasks",
    ]


def test_every_user_table_has_rls_enabled_forced_and_a_policy_for_every_command_granted(
    admin_conn: psycopg.Connection,
) -> None:
    state = live_state(admin_conn)
    for table in tables_with_user_id(admin_conn):
        assert state[table]["rls_enabled"], table
        assert state[table]["rls_forced"], table
        policies = state[table]["policies"]
        runtime = [policy for policy in policies if RUNTIME_ROLE in policy["roles"]]
        # Each command the runtime role may run has its own policy, comparing the row's
        # user_id with the verified context: `using` for the rows it may touch, `with
        # check` for the rows it may write.
        granted = {grant for grant in state[table]["runtime_grants"] if grant in COMMANDS}
        assert {policy["command"] for policy in runtime} == granted, table
        for policy in policies:
            assert policy["permissive"], policy
            assert "public" not in policy["roles"], policy
            if RUNTIME_ROLE not in policy["roles"]:
                assert table in DEFINER_TABLES and policy["roles"] == [OWNER_ROLE], policy
                continue
            assert policy["roles"] == [RUNTIME_ROLE], policy
            if policy["command"] in ("SELECT", "UPDATE", "DELETE"):
                assert OWN_ROW.fullmatch(policy["using"]), policy
            if policy["command"] in ("INSERT", "UPDATE"):
                assert OWN_ROW.fullmatch(policy["with_check"]), policy


def test_tasks_has_policies_with_using_and_with_check_for_every_command(
    admin_conn: psycopg.Connection,
) -> None:
    policies = live_state(admin_conn)["tasks"]["policies"]
    assert {policy["command"] for policy in policies} == set(COMMANDS)
    assert any(p["using"] for p in policies) and any(p["with_check"] for p in policies)


def test_every_user_table_has_a_policy_file(admin_conn: psycopg.Connection) -> None:
    assert set(tables_with_user_id(admin_conn)) <= set(policy_files())


# What the runtime role may do on each table besides select and delete: the columns it
# may write. Nothing else (an id, a created_at, a message once written).
COLUMN_WRITES = {
    "conversations": ["INSERT (title)", "INSERT (user_id)", "UPDATE (title)", "UPDATE (updated_at)"],
    "messages": [
        "INSERT (content)",
        "INSERT (conversation_id)",
        "INSERT (failure)",
        "INSERT (role)",
        "INSERT (tool_calls)",
        "INSERT (user_id)",
        "UPDATE (failure)",
    ],
}


def test_the_conversation_tables_are_guarded_as_tasks_are(admin_conn: psycopg.Connection) -> None:
    live = live_state(admin_conn)
    for table, writes in COLUMN_WRITES.items():
        state = live[table]
        assert state["rls_enabled"] and state["rls_forced"], table
        assert [(policy["name"], policy["command"]) for policy in state["policies"]] == [
            (f"{table}_delete_own", "DELETE"),
            (f"{table}_insert_own", "INSERT"),
            (f"{table}_select_own", "SELECT"),
            (f"{table}_update_own", "UPDATE"),
        ]
        assert state["runtime_grants"] == ["DELETE", "INSERT", "SELECT", "UPDATE"], table
        granted = state["runtime_column_grants"]
        assert [grant for grant in granted if not grant.startswith(("SELECT", "REFERENCES"))] == writes
        assert policy_files()[table] == f"policies/{table}.sql"


def test_free_text_keeps_no_planner_statistics(admin_conn: psycopg.Connection) -> None:
    """sql/statistics.sql: every column of user data that holds what people wrote."""
    rows = admin_conn.execute(
        """
        select attrelid::regclass::text, attname::text from pg_attribute
        where attrelid = any(%s::regclass[]) and attnum > 0 and not attisdropped and attstattarget = 0
        order by 1, 2
        """,
        (tables_with_user_id(admin_conn),),
    ).fetchall()
    assert rows == [
        ("conversations", "title"),
        ("messages", "content"),
        ("messages", "tool_calls"),
        ("tags", "folded"),
        ("tags", "name"),
        ("tasks", "description"),
        ("tasks", "title"),
    ]


def test_runtime_role_is_not_superuser_has_no_bypassrls_owns_nothing(admin_conn: psycopg.Connection) -> None:
    row = admin_conn.execute(
        """
        select r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
               (select count(*) from pg_class c where c.relowner = r.oid),
               (select count(*) from pg_namespace n where n.nspowner = r.oid),
               (select count(*) from pg_proc p where p.proowner = r.oid),
               (select count(*) from pg_auth_members m where m.member = r.oid)
        from pg_roles r where r.rolname = %s
        """,
        (RUNTIME_ROLE,),
    ).fetchone()
    assert row == (False, False, False, False, 0, 0, 0, 0)


def test_user_tables_are_owned_by_the_owner_role(admin_conn: psycopg.Connection) -> None:
    for table in tables_with_user_id(admin_conn):
        owner = admin_conn.execute(
            "select relowner::regrole::text from pg_class where relname = %s", (table,)
        )
        assert owner.fetchone() == (OWNER_ROLE,)


def test_live_policies_are_exactly_what_sql_policies_describes(db_url: DbUrls) -> None:
    with psycopg.connect(db_url.owner) as conn:
        live, declared = live_state(conn), declared_state(conn)
        assert live == declared
        assert declared["tasks"]["policies"], "the comparison must not be of two empty sets"
        assert drift(conn) == {}


def test_a_policy_edited_live_is_seen_as_drift(db_url: DbUrls, admin_conn: psycopg.Connection) -> None:
    admin_conn.execute("alter policy tasks_select_own on tasks using (true)")
    with psycopg.connect(db_url.owner) as conn:
        found = drift(conn)
    live, declared = found["tasks"]["policies"]
    assert [p["using"] for p in live if p["name"] == "tasks_select_own"] == ["true"]
    assert [p["using"] for p in declared if p["name"] == "tasks_select_own"] != ["true"]


async def test_list_query_uses_the_user_index_on_a_large_table(
    admin_conn: psycopg.Connection,
    client: httpx.AsyncClient,
    sessions: UserSessions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin_conn.execute(
        """
        insert into tasks (user_id, title, completed)
        select 'user' || (n % 1000), 'task ' || n, n % 3 = 0 from generate_series(1, 100000) n
        """
    )
    admin_conn.execute("analyze tasks")

    captured: list[tuple[str, tuple[object, ...]]] = []

    def capture(query: asyncpg.connection.LoggedQuery) -> None:
        if "from public.tasks" in query.query:
            captured.append((query.query, query.args))

    # The exact SQL the list route sends, captured from real requests.
    serve = UserSessions.connection

    @asynccontextmanager
    async def logged(self: UserSessions, user_id: str) -> AsyncIterator[asyncpg.Connection]:
        async with serve(self, user_id) as connection:
            connection.add_query_logger(capture)
            try:
                yield connection
            finally:
                connection.remove_query_logger(capture)

    monkeypatch.setattr(UserSessions, "connection", logged)
    for params in ({}, {"status": "pending", "sort": "title"}, {"sort": "updated", "order": "asc"}):
        response = await client.get("/api/user7/tasks", params=params, headers=auth("user7"))
        assert response.status_code == 200
        assert response.headers["X-Total-Count"] in ("100", "67")
    monkeypatch.undo()
    assert len(captured) == 3

    async with sessions.connection("user7") as connection:
        for statement, parameters in captured:
            plan = "\n".join(row[0] for row in await connection.fetch(f"explain {statement}", *parameters))
            assert "Seq Scan" not in plan, plan
            assert "Index" in plan, plan


def test_the_database_refuses_the_tag_names_the_api_refuses(admin_conn: psycopg.Connection) -> None:
    # The check names code points (C0, DEL, C1), not a locale's [[:cntrl:]]: the same
    # characters app.models refuses, on a database of any locale.
    for bad in ["a\x07b", "a\x7fb", "a\x85b", " padded", ""]:
        with pytest.raises(psycopg.errors.CheckViolation), admin_conn.transaction():
            admin_conn.execute("insert into tags (user_id, name, folded) values ('u', %s, 'x')", (bad,))
    admin_conn.execute("insert into tags (user_id, name, folded) values ('u', %s, 'x')", ("a\u2028b é",))


def test_the_database_refuses_messages_the_service_never_writes(admin_conn: psycopg.Connection) -> None:
    """A failure only on a user message, and only one of the two known; tool calls only
    as a JSON array; a conversation's title not blank."""
    admin_conn.execute("insert into conversations (user_id, title) values ('u', 'chat')")
    insert = (
        "insert into messages (user_id, conversation_id, role, content, tool_calls, failure)"
        " select 'u', id, %s, 'x', %s, %s from conversations"
    )
    refused = {
        ("assistant", None, "provider_error"): "messages_failure_only_user",
        ("tool", None, "provider_timeout"): "messages_failure_only_user",
        ("user", None, "boom"): "messages_failure_known",
        ("user", None, ""): "messages_failure_known",
        ("assistant", '{"name": "f"}', None): "messages_tool_calls_array",
        ("assistant", '"calls"', None): "messages_tool_calls_array",
        ("assistant", "null", None): "messages_tool_calls_array",
    }
    for values, constraint in refused.items():
        with pytest.raises(psycopg.errors.CheckViolation) as exc, admin_conn.transaction():
            admin_conn.execute(insert, values)
        assert exc.value.diag.constraint_name == constraint, values
    with pytest.raises(psycopg.errors.InvalidTextRepresentation), admin_conn.transaction():
        admin_conn.execute(insert, ("system", None, None))
    for values in [
        ("user", None, "provider_error"),
        ("user", None, "provider_timeout"),
        ("assistant", "[]", None),
        ("assistant", '[{"id": "call_1", "function": {"name": "list_tasks"}}]', None),
        ("tool", None, None),
    ]:
        admin_conn.execute(insert, values)
    for title in ["", "   "]:
        with pytest.raises(psycopg.errors.CheckViolation), admin_conn.transaction():
            admin_conn.execute("insert into conversations (user_id, title) values ('u', %s)", (title,))
