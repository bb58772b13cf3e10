"""No constraint error tells a user about another user's rows.

Unique, primary-key and foreign-key checks see every row, row-level security or not."""

import httpx
import psycopg
import pytest
from fastapi import status
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.errors import NotFound, install_error_handlers
from app.policies import existence_leaks
from app.service import conversations
from app.session import UserSessions
from tests.tokens import auth


def test_the_schema_has_no_constraint_that_leaks_existence(admin_conn: psycopg.Connection) -> None:
    assert existence_leaks(admin_conn) == []


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("tasks", "title"),
        ("tags", "folded"),
        ("tags", "name"),
        ("task_tags", "task_id, tag_id"),
        ("conversations", "title"),
        ("messages", "conversation_id, content"),
    ],
)
def test_a_unique_index_without_user_id_is_caught(
    admin_conn: psycopg.Connection, table: str, columns: str
) -> None:
    # tags(folded) alone would make a tag name one per database: creating a tag another
    # user has would be a 409, telling that someone has it.
    admin_conn.execute(f"create unique index leaky_key on {table} ({columns})")
    assert existence_leaks(admin_conn) == [f"unique index leaky_key on {table} does not include user_id"]


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        # An index on an expression has no key column of its own: the columns it reads
        # are what the runtime role writes.
        (
            "create unique index leaky_key on tasks (lower(title))",
            "unique index leaky_key on tasks does not include user_id",
        ),
        ("create unique index leaky_key on tasks (user_id, lower(title))", None),
        # An exclusion constraint refuses a row that conflicts with anyone's.
        (
            "alter table tasks add constraint leaky_key exclude using btree (title with =)",
            "exclusion constraint leaky_key on tasks does not compare user_id with =",
        ),
        (
            "alter table tags add constraint leaky_key exclude using btree (lower(name) with =)",
            "exclusion constraint leaky_key on tags does not compare user_id with =",
        ),
        # With user_id compared with =, it compares a user's own rows only.
        (
            "alter table tasks add constraint leaky_key exclude using btree (user_id with =, title with =)",
            None,
        ),
        # The database assigns ids: the runtime role cannot choose one to probe with.
        ("alter table tasks add constraint leaky_key exclude using btree (id with =)", None),
    ],
)
def test_expression_indexes_and_exclusion_constraints_are_checked(
    admin_conn: psycopg.Connection, ddl: str, expected: str | None
) -> None:
    admin_conn.execute(ddl)
    assert existence_leaks(admin_conn) == ([expected] if expected else [])


@pytest.mark.parametrize("target", ["tasks", "tags", "conversations"])
def test_a_foreign_key_without_user_id_is_caught(admin_conn: psycopg.Connection, target: str) -> None:
    # A key on the id alone, to reference: the runtime role cannot write ids, so the key
    # itself tells nothing; the reference without user_id does.
    admin_conn.execute(f"create unique index {target}_id_key on {target} (id)")
    assert existence_leaks(admin_conn) == []
    admin_conn.execute(
        "create table notes (id bigint generated always as identity primary key,"
        f" user_id varchar(255) not null, ref_id bigint references {target} (id))"
    )
    assert existence_leaks(admin_conn) == [
        "foreign key notes_ref_id_fkey on notes does not pair user_id with user_id"
    ]
    admin_conn.execute("alter table notes drop constraint notes_ref_id_fkey")
    # (user_id, id) is the primary key of each: a reference through it is sound.
    admin_conn.execute(
        f"alter table notes add foreign key (user_id, ref_id) references {target} (user_id, id)"
    )
    assert existence_leaks(admin_conn) == []


def test_the_keys_of_the_tag_tables_are_checked(admin_conn: psycopg.Connection) -> None:
    """The leak check sees the tag tables' own keys: each unique index names user_id, and
    both foreign keys of task_tags pair it."""
    rows = admin_conn.execute(
        """
        select conrelid::regclass::text, conname, contype,
               array(select attname from unnest(conkey) k join pg_attribute a
                     on a.attrelid = conrelid and a.attnum = k order by attname)
        from pg_constraint where conrelid in ('tags'::regclass, 'task_tags'::regclass)
          and contype in ('p', 'u', 'f')
        order by 1, 2
        """
    ).fetchall()
    assert rows == [
        ("tags", "tags_pkey", "p", ["id", "user_id"]),
        ("task_tags", "task_tags_pkey", "p", ["tag_id", "task_id", "user_id"]),
        ("task_tags", "task_tags_tag_fkey", "f", ["tag_id", "user_id"]),
        ("task_tags", "task_tags_task_fkey", "f", ["task_id", "user_id"]),
    ]
    unique = admin_conn.execute(
        """
        select x.indexrelid::regclass::text, a.attname from pg_index x
        join pg_attribute a on a.attrelid = x.indrelid and a.attnum = x.indkey[0]
        where x.indisunique and x.indrelid in ('tags'::regclass, 'task_tags'::regclass)
        order by 1
        """
    ).fetchall()
    # user_id leads each: a user's rows are one range of the index.
    assert unique == [
        ("tags_pkey", "user_id"),
        ("tags_user_folded_key", "user_id"),
        ("task_tags_pkey", "user_id"),
    ]
    assert existence_leaks(admin_conn) == []


def test_the_keys_of_the_conversation_tables_are_checked(admin_conn: psycopg.Connection) -> None:
    """Each unique index of conversations and messages leads with user_id, and the
    foreign key of a message to its conversation pairs it."""
    rows = admin_conn.execute(
        """
        select conrelid::regclass::text, conname, contype,
               array(select attname from unnest(conkey) k join pg_attribute a
                     on a.attrelid = conrelid and a.attnum = k order by attname),
               confrelid::regclass::text
        from pg_constraint where conrelid in ('conversations'::regclass, 'messages'::regclass)
          and contype in ('p', 'u', 'f')
        order by 1, 2
        """
    ).fetchall()
    assert rows == [
        ("conversations", "conversations_pkey", "p", ["id", "user_id"], "-"),
        ("messages", "messages_conversation_fkey", "f", ["conversation_id", "user_id"], "conversations"),
        ("messages", "messages_pkey", "p", ["id", "user_id"], "-"),
    ]
    unique = admin_conn.execute(
        """
        select x.indexrelid::regclass::text, a.attname from pg_index x
        join pg_attribute a on a.attrelid = x.indrelid and a.attnum = x.indkey[0]
        where x.indisunique and x.indrelid in ('conversations'::regclass, 'messages'::regclass)
        order by 1
        """
    ).fetchall()
    assert unique == [("conversations_pkey", "user_id"), ("messages_pkey", "user_id")]
    assert existence_leaks(admin_conn) == []


async def test_another_users_conversation_is_not_found_as_a_missing_one_is(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    """Every statement on a conversation answers the same NotFound for bob's and for one
    that does not exist; a message is never sent to the foreign key to find out."""
    async with sessions.connection("bob") as connection:
        bobs = await conversations.start_conversation(connection, "bob", "bob's")
    for conversation in (bobs, 2**62):
        async with sessions.connection("alice") as connection:
            answers = []
            for statement in (
                conversations.touch_conversation(connection, "alice", conversation),
                conversations.add_message(connection, "alice", conversation, "user", "x"),
                conversations.list_messages(connection, "alice", conversation, 10, 0),
                conversations.delete_conversation(connection, "alice", conversation),
            ):
                with pytest.raises(NotFound) as exc:
                    await statement
                answers.append(exc.value.detail)
            assert answers == [conversations.CONVERSATION_NOT_FOUND] * 4
            # The transaction is still good: no statement failed in PostgreSQL.
            assert await connection.fetchval("select count(*) from public.messages") == 0
    assert admin_conn.execute("select count(*) from conversations").fetchone() == (1,)


async def test_the_runtime_role_cannot_choose_an_id_to_probe_with(sessions: UserSessions) -> None:
    async with sessions.transaction("bob") as session:
        bobs = await session.scalar(
            text("insert into tasks (user_id, title) values ('bob', 'x') returning id")
        )
    with pytest.raises(DBAPIError) as exc:
        async with sessions.transaction("alice") as session:
            await session.execute(
                text(
                    "insert into tasks (id, user_id, title) overriding system value"
                    " values (:id, 'alice', 'probe')"
                ),
                {"id": bobs},
            )
    # Refused for lack of privilege on the column, before any uniqueness check could run.
    assert getattr(exc.value.orig, "sqlstate", None) == "42501"
    assert "permission denied" in str(exc.value.orig)


async def test_a_per_user_unique_constraint_answers_409_to_its_user_only(
    admin_conn: psycopg.Connection, client: httpx.AsyncClient
) -> None:
    admin_conn.execute("create unique index tasks_user_title_key on tasks (user_id, title)")
    first = await client.post("/api/alice/tasks", json={"title": "same"}, headers=auth("alice"))
    assert first.status_code == 201
    duplicate = await client.post("/api/alice/tasks", json={"title": "same"}, headers=auth("alice"))
    assert duplicate.status_code == status.HTTP_409_CONFLICT
    assert duplicate.json() == {"detail": "conflicts with an existing resource"}
    assert "tasks_user_title_key" not in duplicate.text
    # Another user's equal title is no conflict, and nothing hints that alice has one.
    other = await client.post("/api/bob/tasks", json={"title": "same"}, headers=auth("bob"))
    assert other.status_code == 201


async def test_a_reference_to_another_users_row_answers_404(
    admin_conn: psycopg.Connection, sessions: UserSessions
) -> None:
    admin_conn.execute(
        "create table notes (user_id varchar(255) not null, task_id bigint not null,"
        " foreign key (user_id, task_id) references tasks (user_id, id))"
    )
    admin_conn.execute("grant insert, select on notes to todo_app")
    async with sessions.transaction("bob") as session:
        bobs = await session.scalar(
            text("insert into tasks (user_id, title) values ('bob', 'x') returning id")
        )
    with pytest.raises(DBAPIError) as exc:
        async with sessions.transaction("alice") as session:
            await session.execute(
                text("insert into notes (user_id, task_id) values ('alice', :id)"), {"id": bobs}
            )
    assert getattr(exc.value.orig, "sqlstate", None) == "23503"

    # What a client would get from that error: the same 404 as a missing row.
    from fastapi import FastAPI

    app = FastAPI()
    install_error_handlers(app)
    handler = app.exception_handlers[DBAPIError]
    response = await handler(None, exc.value)  # type: ignore[arg-type]
    assert response.status_code == 404
    assert response.body == b'{"detail":"Not found"}'
