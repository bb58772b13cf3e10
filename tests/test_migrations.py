"""Revisions 0008 (tags, recurring tasks, search), 0009 (conversations) and 0012 (a
task's tag names on its row) on a database in use: the rows a 0007 or 0008 database
holds come through unchanged, and going back to 0007 and forward again leaves the schema
as it was."""

import asyncio
import json
from typing import Any

import psycopg

from app.migrate import downgrade, upgrade
from app.service import conversations
from app.session import UserSessions
from tests.conftest import DbUrls, http_client, make_settings, running_app
from tests.tokens import auth

# Every column tasks had at 0007.
COLUMNS_0007 = "id, user_id, title, description, completed, priority::text, due_at, created_at, updated_at"
TABLES = ("tasks", "tags", "task_tags", "conversations", "messages")
# The tables of user data a 0008 database has.
TABLES_0008 = ("tasks", "tags", "task_tags", "accounts", "account_passwords")


def fill_at_0007(admin_conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """200 tasks of 7 users with every kind of value 0007 allows, as they are stored."""
    admin_conn.execute(
        "insert into tasks (user_id, title, description, completed, priority, due_at, created_at, updated_at)"
        " select 'user' || mod(n, 7), 'task ' || n || case when mod(n, 5) = 0 then ' groceries' else '' end,"
        " case when mod(n, 3) = 0 then null else 'd' || n end, mod(n, 2) = 0,"
        " (array['low', 'medium', 'high'])[mod(n, 3) + 1]::task_priority,"
        " case when mod(n, 4) = 0 then null"
        "  else timestamptz '2027-01-31 23:30:00+14' + n * interval '1 day 1 hour 1.5 second' end,"
        " timestamptz '2026-01-01 00:00Z' + n * interval '1 minute',"
        " timestamptz '2026-06-01 00:00Z' + n * interval '1 second'"
        " from generate_series(1, 200) n"
    )
    return admin_conn.execute(f"select {COLUMNS_0007} from tasks order by id").fetchall()


async def test_tasks_of_0007_migrate_to_head_unchanged(
    admin_conn: psycopg.Connection, db_url: DbUrls
) -> None:
    """Every value of every row is kept; no task has tags, recurs or links another; and
    the API finds and changes them as any task."""
    # Alembic's env.py runs its own event loop: a thread of its own, beside the test's.
    await asyncio.to_thread(downgrade, db_url.owner, "0007")
    before = fill_at_0007(admin_conn)
    await asyncio.to_thread(upgrade, db_url.owner)
    after = admin_conn.execute(
        f"select {COLUMNS_0007}, recurrence, recurrence_day, next_task_id from tasks order by id"
    ).fetchall()
    assert [row[:-3] for row in after] == before
    assert {row[-3:] for row in after} == {(None, None, None)}
    links = admin_conn.execute("select (select count(*) from tags), (select count(*) from task_tags)")
    assert links.fetchone() == (0, 0)

    owner = before[4][1]
    headers = auth(owner)
    async with running_app(make_settings(db_url)) as app, http_client(app) as client:
        found = await client.get(f"/api/{owner}/tasks", params={"q": "groceries"}, headers=headers)
        expected = sorted(
            (row[0] for row in before if row[1] == owner and row[2].endswith("groceries")), reverse=True
        )
        assert [task["id"] for task in found.json()] == expected
        task_id = expected[0]
        listed = await client.get(f"/api/{owner}/tasks/{task_id}", headers=headers)
        assert listed.json()["tags"] == [] and listed.json()["recurrence"] is None
        changed = await client.patch(
            f"/api/{owner}/tasks/{task_id}",
            json={
                "tags": ["old"],
                "due_at": "2027-01-01T00:00:00Z",
                "recurrence": "daily",
                "completed": False,
            },
            headers=headers,
        )
        assert changed.status_code == 200
        completed = await client.patch(f"/api/{owner}/tasks/{task_id}/complete", headers=headers)
        assert completed.json()["next_task_id"] is not None


def fill_at_0008(admin_conn: psycopg.Connection) -> None:
    """fill_at_0007's tasks, with what 0008 added: tags on some, a recurring task and its
    next occurrence; and an account."""
    fill_at_0007(admin_conn)
    admin_conn.execute(
        "insert into tags (user_id, name, folded) select 'user' || mod(n, 7), 'Tag ' || n, 'tag ' || n"
        " from generate_series(1, 20) n"
    )
    admin_conn.execute(
        "insert into task_tags (user_id, task_id, tag_id) select t.user_id, t.id, g.id"
        " from tasks t join tags g on g.user_id = t.user_id where mod(t.id + g.id, 3) = 0"
    )
    admin_conn.execute(
        "update tasks set recurrence = 'monthly', recurrence_day = 31,"
        " next_task_id = (select max(id) from tasks where user_id = 'user1')"
        " where id = (select min(id) from tasks where user_id = 'user1' and due_at is not null)"
    )
    admin_conn.execute(
        "insert into accounts (user_id, email, name) values ('acct-1', 'a@example.com', 'A');"
        " insert into account_passwords (user_id, password_hash) values ('acct-1', '$argon2id$x')"
    )


def every_row(admin_conn: psycopg.Connection, tables: tuple[str, ...]) -> dict[str, list[str]]:
    """Every row of `tables`, as the superuser reads them (as JSON text, in order)."""
    return {
        table: [
            row for (row,) in admin_conn.execute(f"select row_to_json(t)::text from {table} t order by 1")
        ]
        for table in tables
    }


async def test_rows_of_0008_migrate_to_head_unchanged(
    admin_conn: psycopg.Connection, db_url: DbUrls, sessions: UserSessions
) -> None:
    """Every row of every table is kept, and each task gets its copy of its tags' names
    (0012); the conversation tables come empty, and a user can start a conversation at
    once."""
    await asyncio.to_thread(downgrade, db_url.owner, "0008")
    assert admin_conn.execute("select to_regclass('conversations')").fetchone() == (None,)
    fill_at_0008(admin_conn)
    before = every_row(admin_conn, TABLES_0008)
    assert all(before.values()) and before["task_tags"]
    await asyncio.to_thread(upgrade, db_url.owner)
    after = every_row(admin_conn, TABLES_0008)
    # Tasks keep every value, and 0012 gives each its tags' names and folded names (by
    # folded name, then name), as task_tags and tags say.
    tasks = [json.loads(row) for row in after.pop("tasks")]
    copies = {task["id"]: (task.pop("tag_names"), task.pop("tag_keys")) for task in tasks}
    assert tasks == [json.loads(row) for row in before.pop("tasks")]
    assert after == before
    tags = {tag["id"]: tag for tag in map(json.loads, before["tags"])}
    carried: dict[int, list[dict[str, Any]]] = {task["id"]: [] for task in tasks}
    for link in map(json.loads, before["task_tags"]):
        carried[link["task_id"]].append(tags[link["tag_id"]])
    expected = {
        task_id: (
            [tag["name"] for tag in sorted(its, key=lambda tag: (tag["folded"], tag["name"]))],
            [tag["folded"] for tag in sorted(its, key=lambda tag: (tag["folded"], tag["name"]))],
        )
        for task_id, its in carried.items()
    }
    assert copies == expected
    assert any(names for names, _ in copies.values()) and any(not names for names, _ in copies.values())
    # The copy released the tables from FORCE for its own transaction only.
    forced = admin_conn.execute(
        "select relname, relforcerowsecurity from pg_class where relname = any(%s)",
        (["tasks", "tags", "task_tags"],),
    ).fetchall()
    assert sorted(forced) == [("tags", True), ("task_tags", True), ("tasks", True)]
    assert every_row(admin_conn, ("conversations", "messages")) == {"conversations": [], "messages": []}

    async with sessions.connection("user1") as connection:
        conversation = await conversations.start_conversation(connection, "user1", "hello")
        await conversations.add_message(connection, "user1", conversation, "user", "hi")
    assert admin_conn.execute("select user_id, role::text, content from messages").fetchall() == [
        ("user1", "user", "hi")
    ]


def schema_of(admin_conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """What the migrations make of the tables of tasks and tags (without the order of
    columns, which a column dropped and added again changes)."""
    names = list(TABLES)
    queries = {
        "columns": "select table_name, column_name, data_type, udt_name, is_nullable, column_default,"
        " is_identity, identity_generation from information_schema.columns"
        " where table_schema = 'public' and table_name = any(%s)",
        "constraints": "select conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
        " from pg_constraint where conrelid::regclass::text = any(%s)",
        "indexes": "select tablename, indexname, indexdef from pg_indexes"
        " where schemaname = 'public' and tablename = any(%s)",
        "table grants": "select table_name, grantee, privilege_type from information_schema.table_privileges"
        " where table_schema = 'public' and table_name = any(%s)",
        "column grants": "select table_name, column_name, grantee, privilege_type"
        " from information_schema.column_privileges where table_schema = 'public' and table_name = any(%s)",
        "policies": "select tablename, policyname, cmd, roles::text, qual, with_check from pg_policies"
        " where tablename = any(%s)",
        "row security": "select relname, relrowsecurity, relforcerowsecurity from pg_class"
        " where relname = any(%s) and relkind = 'r'",
        "statistics": "select attrelid::regclass::text, attname, attstattarget from pg_attribute"
        " where attrelid::regclass::text = any(%s) and attnum > 0 and not attisdropped",
        "functions": "select p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proacl::text"
        " from pg_proc p where p.pronamespace = 'app'::regnamespace and %s::text[] is not null",
        "types": "select t.typname, array_agg(e.enumlabel order by e.enumsortorder)::text from pg_type t"
        " join pg_enum e on e.enumtypid = t.oid where %s::text[] is not null group by t.typname",
    }
    return {name: sorted(admin_conn.execute(query, (names,)).fetchall()) for name, query in queries.items()}


def test_down_to_0007_and_up_again_leaves_the_schema_and_the_tasks_as_they_were(
    admin_conn: psycopg.Connection, db_url: DbUrls
) -> None:
    head = schema_of(admin_conn)
    before = fill_at_0007(admin_conn)
    # What only head has: a tag, a recurring task and its next occurrence.
    admin_conn.execute("insert into tags (user_id, name, folded) values ('user1', 'Home', 'home')")
    admin_conn.execute(
        "insert into task_tags (user_id, task_id, tag_id) select 'user1', t.id, g.id from tasks t, tags g"
        " where t.user_id = 'user1' and mod(t.id, 2) = 0"
    )
    admin_conn.execute(
        "update tasks set recurrence = 'weekly',"
        " next_task_id = (select max(id) from tasks where user_id = 'user1')"
        " where id = (select min(id) from tasks where user_id = 'user1' and due_at is not null)"
    )

    # And a conversation of user1's, with a message of each role.
    admin_conn.execute("insert into conversations (user_id, title) values ('user1', 'chat')")
    admin_conn.execute(
        "insert into messages (user_id, conversation_id, role, content, tool_calls)"
        " select 'user1', c.id, r.role, 'x', case when r.role = 'assistant' then '[]'::jsonb end"
        " from conversations c, unnest(enum_range(null::message_role)) r(role)"
    )

    downgrade(db_url.owner, "0007")
    at_0007 = schema_of(admin_conn)
    assert {row[1] for row in at_0007["columns"] if row[0] == "tasks"} == {
        name.split("::")[0] for name in COLUMNS_0007.split(", ")
    }
    assert ("tasks", "tasks_pkey", "PRIMARY KEY (id)") in at_0007["constraints"]
    assert not [row for row in at_0007["columns"] if row[0] != "tasks"]
    assert not [row for row in at_0007["types"] if row[0] in ("task_recurrence", "message_role")]
    assert admin_conn.execute(f"select {COLUMNS_0007} from tasks order by id").fetchall() == before

    upgrade(db_url.owner)
    assert schema_of(admin_conn) == head
    assert admin_conn.execute(f"select {COLUMNS_0007} from tasks order by id").fetchall() == before
    assert admin_conn.execute(
        "select count(*) from tasks where recurrence is not null or next_task_id is not null"
    ).fetchone() == (0,)
