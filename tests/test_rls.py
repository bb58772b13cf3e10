"""Row-level security proof: unfiltered queries, run as the runtime role through the
same session code the app uses (app.session.UserSessions: `transaction` gives the
request's signed context to an ORM session, `connection` is what the routes run on),
see and change only the current user's rows; with no user set they see and change nothing."""

import re

import asyncpg
import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from app.config import Settings
from app.database import create_engine
from app.errors import NotFound
from app.models import Conversation, Message, Tag, Task, TaskTag
from app.session import UserSessions
from tests.conftest import DbUrls
from tests.tokens import auth


async def seed(sessions: UserSessions) -> dict[str, list[int]]:
    """alice: 2 tasks, bob: 1 task; each inserted under its owner's own context."""
    ids: dict[str, list[int]] = {}
    for user, titles in {"alice": ["a1", "a2"], "bob": ["b1"]}.items():
        async with sessions.transaction(user) as session:
            rows = await session.scalars(
                insert(Task).returning(Task.id), [{"user_id": user, "title": t} for t in titles]
            )
            ids[user] = list(rows)
    return ids


async def titles_seen_by(sessions: UserSessions, user: str) -> list[str]:
    async with sessions.transaction(user) as session:
        return sorted(await session.scalars(select(Task.title)))


async def all_titles(admin_conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Every row, read by the superuser (to whom RLS does not apply)."""
    return sorted(admin_conn.execute("select user_id, title from tasks").fetchall())


def assert_rls_violation(exc: pytest.ExceptionInfo[DBAPIError]) -> None:
    assert exc.value.orig is not None
    assert getattr(exc.value.orig, "sqlstate", None) == "42501"
    assert "row-level security" in str(exc.value.orig)


# --- select -------------------------------------------------------------------------


async def test_unfiltered_select_returns_only_the_current_users_rows(sessions: UserSessions) -> None:
    await seed(sessions)
    async with sessions.transaction("alice") as session:
        rows = (await session.scalars(select(Task))).all()
    assert sorted((row.user_id, row.title) for row in rows) == [("alice", "a1"), ("alice", "a2")]
    assert await titles_seen_by(sessions, "bob") == ["b1"]


async def test_select_by_another_users_id_finds_nothing(sessions: UserSessions) -> None:
    ids = await seed(sessions)
    async with sessions.transaction("alice") as session:
        assert await session.scalar(select(Task).where(Task.id == ids["bob"][0])) is None
        assert await session.scalar(select(func.count()).select_from(Task).where(Task.user_id == "bob")) == 0


@pytest.mark.parametrize("context", [None, ""])
async def test_without_a_user_nothing_is_visible(sessions: UserSessions, context: str | None) -> None:
    await seed(sessions)
    async with sessions.sessionmaker() as session, session.begin():
        if context is not None:
            await session.execute(text("select set_config('app.user_id', :v, true)"), {"v": context})
        assert (await session.scalars(select(Task))).all() == []


# --- insert -------------------------------------------------------------------------


async def test_insert_of_another_users_row_is_a_policy_violation(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    await seed(sessions)
    with pytest.raises(DBAPIError) as exc:
        async with sessions.transaction("alice") as session:
            await session.execute(insert(Task).values(user_id="bob", title="forged"))
    assert_rls_violation(exc)
    assert ("bob", "forged") not in await all_titles(admin_conn)


async def test_insert_without_a_user_is_a_policy_violation(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    with pytest.raises(DBAPIError) as exc:
        async with sessions.sessionmaker() as session, session.begin():
            await session.execute(insert(Task).values(user_id="alice", title="orphan"))
    assert_rls_violation(exc)
    assert await all_titles(admin_conn) == []


async def test_insert_of_own_row_succeeds(sessions: UserSessions) -> None:
    async with sessions.transaction("alice") as session:
        await session.execute(insert(Task).values(user_id="alice", title="mine"))
    assert await titles_seen_by(sessions, "alice") == ["mine"]


# --- update -------------------------------------------------------------------------


async def test_unfiltered_update_touches_only_the_current_users_rows(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    await seed(sessions)
    async with sessions.transaction("alice") as session:
        result = await session.execute(update(Task).values(title="changed"))
    assert result.rowcount == 2  # type: ignore[attr-defined]
    assert await all_titles(admin_conn) == [("alice", "changed"), ("alice", "changed"), ("bob", "b1")]


async def test_update_of_another_users_row_by_id_touches_nothing(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    ids = await seed(sessions)
    async with sessions.transaction("alice") as session:
        result = await session.execute(update(Task).where(Task.id == ids["bob"][0]).values(title="x"))
    assert result.rowcount == 0  # type: ignore[attr-defined]
    assert ("bob", "b1") in await all_titles(admin_conn)


async def test_update_that_gives_a_row_away_is_refused(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    await seed(sessions)
    with pytest.raises(DBAPIError) as exc:
        async with sessions.transaction("alice") as session:
            await session.execute(update(Task).values(user_id="bob"))
    # Refused twice over: todo_app may not update user_id at all (column grants), and
    # the update policy's WITH CHECK would refuse a row that is not the user's.
    assert getattr(exc.value.orig, "sqlstate", None) == "42501"
    assert await all_titles(admin_conn) == [("alice", "a1"), ("alice", "a2"), ("bob", "b1")]


async def test_update_policy_refuses_a_row_that_leaves_the_user(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    """The update policy's WITH CHECK on its own: with the column grant that normally
    stops this lifted (in this test's own database), the policy still refuses."""
    await seed(sessions)
    admin_conn.execute("grant update (user_id) on tasks to todo_app")
    with pytest.raises(DBAPIError) as exc:
        async with sessions.transaction("alice") as session:
            await session.execute(update(Task).values(user_id="bob"))
    assert_rls_violation(exc)
    assert await all_titles(admin_conn) == [("alice", "a1"), ("alice", "a2"), ("bob", "b1")]


# --- delete -------------------------------------------------------------------------


async def test_unfiltered_delete_removes_only_the_current_users_rows(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    await seed(sessions)
    async with sessions.transaction("alice") as session:
        result = await session.execute(delete(Task))
    assert result.rowcount == 2  # type: ignore[attr-defined]
    assert await all_titles(admin_conn) == [("bob", "b1")]


async def test_delete_without_a_user_removes_nothing(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    await seed(sessions)
    async with sessions.sessionmaker() as session, session.begin():
        result = await session.execute(delete(Task))
    assert result.rowcount == 0  # type: ignore[attr-defined]
    assert len(await all_titles(admin_conn)) == 3


# --- the tag tables: the same matrix for tags and task_tags ---------------------------


async def seed_tags(sessions: UserSessions) -> dict[str, dict[str, dict[str, int]]]:
    """On top of seed(): alice's tags work and home, work on both her tasks and home on
    a1; bob's tags work and home (the same names, his own rows), work on b1. Each written
    under its owner's context. Answers {user: {"tasks": {title: id}, "tags": {name: id}}}."""
    task_ids = await seed(sessions)
    titles = {"alice": ["a1", "a2"], "bob": ["b1"]}
    links = {"alice": [("a1", "work"), ("a2", "work"), ("a1", "home")], "bob": [("b1", "work")]}
    made: dict[str, dict[str, dict[str, int]]] = {}
    for user, tag_names in {"alice": ["work", "home"], "bob": ["work", "home"]}.items():
        async with sessions.transaction(user) as session:
            rows = await session.scalars(
                insert(Tag).returning(Tag.id),
                [{"user_id": user, "name": name, "folded": name} for name in tag_names],
            )
            tags = dict(zip(tag_names, rows, strict=True))
            tasks = dict(zip(titles[user], task_ids[user], strict=True))
            await session.execute(
                insert(TaskTag),
                [{"user_id": user, "task_id": tasks[task], "tag_id": tags[tag]} for task, tag in links[user]],
            )
        made[user] = {"tasks": tasks, "tags": tags}
    return made


# The rows of each table, by whom they belong to and what they are, as the superuser reads them.
ROWS_OF = {
    "tags": "select user_id, name from tags order by 1, 2",
    "task_tags": (
        "select tt.user_id, t.title || ':' || g.name from task_tags tt"
        " join tasks t on t.user_id = tt.user_id and t.id = tt.task_id"
        " join tags g on g.user_id = tt.user_id and g.id = tt.tag_id order by 1, 2"
    ),
}
SEEDED = {
    "tags": [("alice", "home"), ("alice", "work"), ("bob", "home"), ("bob", "work")],
    "task_tags": [("alice", "a1:home"), ("alice", "a1:work"), ("alice", "a2:work"), ("bob", "b1:work")],
}
TAG_TABLES = [pytest.param(Tag, id="tags"), pytest.param(TaskTag, id="task_tags")]
TagTable = type[Tag] | type[TaskTag]


def stored_rows(admin_conn: psycopg.Connection, model: TagTable) -> list[tuple[str, str]]:
    return [tuple(row) for row in admin_conn.execute(ROWS_OF[model.__tablename__]).fetchall()]  # type: ignore[misc]


def own_row(model: TagTable, user: str, made: dict[str, dict[str, dict[str, int]]]) -> dict[str, object]:
    """A row of `user`'s that seed_tags did not write: a new tag, or a link of their own
    task to their own tag (alice: a2 to home, bob: b1 to home)."""
    if model is Tag:
        return {"user_id": user, "name": "new", "folded": "new"}
    task, tag = ("a2", "home") if user == "alice" else ("b1", "home")
    return {"user_id": user, "task_id": made[user]["tasks"][task], "tag_id": made[user]["tags"][tag]}


@pytest.mark.parametrize("model", TAG_TABLES)
async def test_unfiltered_select_of_a_tag_table_returns_only_the_current_users_rows(
    sessions: UserSessions, admin_conn: psycopg.Connection, model: TagTable
) -> None:
    await seed_tags(sessions)
    assert stored_rows(admin_conn, model) == SEEDED[model.__tablename__]
    for user in ("alice", "bob"):
        async with sessions.transaction(user) as session:
            rows = (await session.scalars(select(model))).all()
            count = await session.scalar(select(func.count()).select_from(model))
        expected = [row for row in SEEDED[model.__tablename__] if row[0] == user]
        assert {row.user_id for row in rows} == {user}
        assert len(rows) == count == len(expected)


@pytest.mark.parametrize("model", TAG_TABLES)
async def test_a_tag_table_row_of_another_user_is_not_found_by_its_key(
    sessions: UserSessions, model: TagTable
) -> None:
    made = await seed_tags(sessions)
    bobs_tag = made["bob"]["tags"]["work"]
    column = Tag.id if model is Tag else TaskTag.tag_id
    async with sessions.transaction("alice") as session:
        assert (await session.scalars(select(model).where(column == bobs_tag))).all() == []
        bobs_rows = select(func.count()).select_from(model).where(model.user_id == "bob")
        assert await session.scalar(bobs_rows) == 0


@pytest.mark.parametrize("context", [None, ""])
@pytest.mark.parametrize("model", TAG_TABLES)
async def test_without_a_user_no_tag_table_row_is_visible(
    sessions: UserSessions, model: TagTable, context: str | None
) -> None:
    await seed_tags(sessions)
    async with sessions.sessionmaker() as session, session.begin():
        if context is not None:
            await session.execute(text("select set_config('app.user_id', :v, true)"), {"v": context})
        assert (await session.scalars(select(model))).all() == []


@pytest.mark.parametrize("model", TAG_TABLES)
async def test_insert_into_a_tag_table_of_another_users_row_is_a_policy_violation(
    sessions: UserSessions, admin_conn: psycopg.Connection, model: TagTable
) -> None:
    made = await seed_tags(sessions)
    # For task_tags, a link between two of bob's own rows: only its user_id makes it bob's.
    with pytest.raises(DBAPIError) as exc:
        async with sessions.transaction("alice") as session:
            await session.execute(insert(model).values(own_row(model, "bob", made)))
    assert_rls_violation(exc)
    assert stored_rows(admin_conn, model) == SEEDED[model.__tablename__]


@pytest.mark.parametrize("model", TAG_TABLES)
async def test_insert_into_a_tag_table_without_a_user_is_a_policy_violation(
    sessions: UserSessions, admin_conn: psycopg.Connection, model: TagTable
) -> None:
    made = await seed_tags(sessions)
    with pytest.raises(DBAPIError) as exc:
        async with sessions.sessionmaker() as session, session.begin():
            await session.execute(insert(model).values(own_row(model, "alice", made)))
    assert_rls_violation(exc)
    assert stored_rows(admin_conn, model) == SEEDED[model.__tablename__]


@pytest.mark.parametrize("model", TAG_TABLES)
async def test_insert_into_a_tag_table_of_own_row_succeeds(
    sessions: UserSessions, admin_conn: psycopg.Connection, model: TagTable
) -> None:
    made = await seed_tags(sessions)
    async with sessions.transaction("alice") as session:
        await session.execute(insert(model).values(own_row(model, "alice", made)))
    added = {"tags": ("alice", "new"), "task_tags": ("alice", "a2:home")}[model.__tablename__]
    assert stored_rows(admin_conn, model) == sorted([*SEEDED[model.__tablename__], added])


async def test_unfiltered_update_of_tags_touches_only_the_current_users_rows(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    await seed_tags(sessions)
    async with sessions.transaction("alice") as session:
        result = await session.execute(update(Tag).values(name=func.upper(Tag.name)))
    assert result.rowcount == 2  # type: ignore[attr-defined]
    assert stored_rows(admin_conn, Tag) == [("alice", "HOME"), ("alice", "WORK"), *SEEDED["tags"][2:]]


@pytest.mark.parametrize("user", [None, "alice"], ids=["no user", "another user"])
async def test_update_of_bobs_tag_by_id_touches_nothing(
    sessions: UserSessions, admin_conn: psycopg.Connection, user: str | None
) -> None:
    made = await seed_tags(sessions)
    acting = sessions.anonymous() if user is None else sessions.transaction(user)
    async with acting as session:
        result = await session.execute(
            update(Tag).where(Tag.id == made["bob"]["tags"]["work"]).values(name="x", folded="x")
        )
    assert result.rowcount == 0  # type: ignore[attr-defined]
    assert stored_rows(admin_conn, Tag) == SEEDED["tags"]


async def test_an_update_that_gives_a_tag_away_is_refused_by_grant_and_by_policy(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    await seed_tags(sessions)
    # No grant on user_id; then, with the grant lifted in this test's database, the
    # update policy's WITH CHECK.
    for grant in (None, "grant update (user_id) on tags to todo_app"):
        if grant:
            admin_conn.execute(grant)
        with pytest.raises(DBAPIError) as exc:
            async with sessions.transaction("alice") as session:
                await session.execute(update(Tag).where(Tag.name == "home").values(user_id="bob"))
        assert getattr(exc.value.orig, "sqlstate", None) == "42501"
        if grant:
            assert_rls_violation(exc)
    assert stored_rows(admin_conn, Tag) == SEEDED["tags"]


async def test_a_link_can_be_made_and_removed_but_never_changed(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    """task_tags grants no update, and with that grant lifted no policy lets one through."""
    made = await seed_tags(sessions)
    with pytest.raises(DBAPIError) as exc:
        async with sessions.transaction("alice") as session:
            await session.execute(update(TaskTag).values(tag_id=made["alice"]["tags"]["home"]))
    assert getattr(exc.value.orig, "sqlstate", None) == "42501"
    assert "permission denied" in str(exc.value.orig)
    admin_conn.execute("grant update on task_tags to todo_app")
    async with sessions.transaction("alice") as session:
        result = await session.execute(update(TaskTag).values(user_id="bob"))
    assert result.rowcount == 0  # type: ignore[attr-defined]
    assert stored_rows(admin_conn, TaskTag) == SEEDED["task_tags"]


@pytest.mark.parametrize("model", TAG_TABLES)
async def test_unfiltered_delete_from_a_tag_table_removes_only_the_current_users_rows(
    sessions: UserSessions, admin_conn: psycopg.Connection, model: TagTable
) -> None:
    await seed_tags(sessions)
    async with sessions.transaction("alice") as session:
        result = await session.execute(delete(model))
    seeded = SEEDED[model.__tablename__]
    assert result.rowcount == len([row for row in seeded if row[0] == "alice"])  # type: ignore[attr-defined]
    assert stored_rows(admin_conn, model) == [row for row in seeded if row[0] == "bob"]
    # Deleting alice's tags takes their links with them (on delete cascade): hers only.
    assert stored_rows(admin_conn, TaskTag) == [("bob", "b1:work")]


@pytest.mark.parametrize("model", TAG_TABLES)
async def test_delete_from_a_tag_table_without_a_user_removes_nothing(
    sessions: UserSessions, admin_conn: psycopg.Connection, model: TagTable
) -> None:
    await seed_tags(sessions)
    async with sessions.sessionmaker() as session, session.begin():
        result = await session.execute(delete(model))
    assert result.rowcount == 0  # type: ignore[attr-defined]
    assert stored_rows(admin_conn, model) == SEEDED[model.__tablename__]


# --- the keys: no link across users, whatever role writes it ---------------------------

# (user_id, whose task, whose tag, the key that refuses it): links naming rows of two users.
CROSS_LINKS = [
    ("alice", "alice", "bob", "task_tags_tag_fkey"),  # alice's task, bob's tag
    ("alice", "bob", "alice", "task_tags_task_fkey"),  # bob's task, alice's tag
    ("bob", "alice", "bob", "task_tags_task_fkey"),  # in bob's name, alice's task, bob's tag
]


def link_values(
    made: dict[str, dict[str, dict[str, int]]], user: str, task_of: str, tag_of: str
) -> tuple[str, int, int]:
    task = made[task_of]["tasks"]["a2" if task_of == "alice" else "b1"]
    return (user, task, made[tag_of]["tags"]["home"])


@pytest.mark.parametrize("role", ["owner", "superuser"])
async def test_a_link_across_users_is_refused_by_the_keys_even_where_rls_does_not_hold(
    sessions: UserSessions, admin_conn: psycopg.Connection, db_url: DbUrls, role: str
) -> None:
    """A task can never carry another user's tag: the foreign keys of task_tags carry
    user_id to both tasks and tags. Shown where row-level security stops nothing: as the
    superuser, and as the owner with FORCE switched off (in a transaction rolled back),
    both of whom can write a link of one user's own rows."""
    made = await seed_tags(sessions)
    insert_link = "insert into task_tags (user_id, task_id, tag_id) values (%s, %s, %s)"
    with psycopg.connect(db_url.owner if role == "owner" else db_url.admin) as conn:
        if role == "owner":
            conn.execute("alter table task_tags no force row level security")
        # The control: a link of alice's own task to her own tag goes through.
        conn.execute(insert_link, link_values(made, "alice", "alice", "alice"))
        for user, task_of, tag_of, constraint in CROSS_LINKS:
            with pytest.raises(psycopg.errors.ForeignKeyViolation) as exc, conn.transaction():
                conn.execute(insert_link, link_values(made, user, task_of, tag_of))
            assert exc.value.diag.constraint_name == constraint, (user, task_of, tag_of)
        conn.rollback()
    assert stored_rows(admin_conn, TaskTag) == SEEDED["task_tags"]
    forced = "select relforcerowsecurity from pg_class where oid = 'task_tags'::regclass"
    assert admin_conn.execute(forced).fetchone() == (True,)


async def test_a_link_across_users_is_refused_to_the_runtime_role(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    """As alice, with the ids of bob's rows in hand: a link in alice's name fails its
    foreign key (which the API answers as a 404), one in bob's name the insert policy."""
    made = await seed_tags(sessions)
    for user, task_of, tag_of, constraint in CROSS_LINKS:
        user_id, task_id, tag_id = link_values(made, user, task_of, tag_of)
        with pytest.raises(DBAPIError) as exc:
            async with sessions.transaction("alice") as session:
                await session.execute(insert(TaskTag).values(user_id=user_id, task_id=task_id, tag_id=tag_id))
        if user == "alice":
            assert getattr(exc.value.orig, "sqlstate", None) == "23503", (task_of, tag_of)
            assert constraint in str(exc.value.orig)
        else:
            assert_rls_violation(exc)
    assert stored_rows(admin_conn, TaskTag) == SEEDED["task_tags"]


async def test_a_task_cannot_name_another_users_task_as_its_next_occurrence(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    ids = await seed(sessions)
    with pytest.raises(DBAPIError) as exc:
        async with sessions.transaction("alice") as session:
            await session.execute(
                update(Task).where(Task.id == ids["alice"][0]).values(next_task_id=ids["bob"][0])
            )
    assert getattr(exc.value.orig, "sqlstate", None) == "23503"
    assert admin_conn.execute("select count(*) from tasks where next_task_id is not null").fetchone() == (0,)


# --- the conversation tables: the same matrix for conversations and messages -----------

CHATS = {
    "alice": {"plans": [("user", "hi"), ("assistant", "hello")], "ideas": [("user", "idea")]},
    "bob": {"bob chat": [("user", "yo")]},
}
CALLS = [{"id": "call_1", "type": "function", "function": {"name": "list_tasks", "arguments": "{}"}}]


async def seed_conversations(sessions: UserSessions) -> dict[str, dict[str, int]]:
    """alice: conversations plans (hi, hello) and ideas (idea); bob: bob chat (yo); each
    written under its owner's context. Answers {user: {title: id}}."""
    made: dict[str, dict[str, int]] = {}
    for user, chats in CHATS.items():
        made[user] = {}
        async with sessions.transaction(user) as session:
            for title, messages in chats.items():
                conversation = await session.scalar(
                    insert(Conversation).values(user_id=user, title=title).returning(Conversation.id)
                )
                assert conversation is not None
                made[user][title] = conversation
                await session.execute(
                    insert(Message),
                    [
                        {
                            "user_id": user,
                            "conversation_id": conversation,
                            "role": role,
                            "content": content,
                            "tool_calls": CALLS if role == "assistant" else None,
                        }
                        for role, content in messages
                    ],
                )
    return made


# As the superuser reads them. A message is shown with the title of the conversation its
# conversation_id names, whoever that belongs to.
ROWS_OF["conversations"] = "select user_id, title from conversations order by 1, 2"
ROWS_OF["messages"] = (
    "select m.user_id, coalesce(c.title, '?') || ':' || m.content from messages m"
    " left join conversations c on c.id = m.conversation_id order by 1, 2"
)
SEEDED["conversations"] = [("alice", "ideas"), ("alice", "plans"), ("bob", "bob chat")]
SEEDED["messages"] = [
    ("alice", "ideas:idea"),
    ("alice", "plans:hello"),
    ("alice", "plans:hi"),
    ("bob", "bob chat:yo"),
]
ChatTable = type[Conversation] | type[Message]
# Messages first: deleting conversations takes messages with them.
CHAT_TABLES: list[ChatTable] = [Message, Conversation]


def chat_rows(admin_conn: psycopg.Connection, model: ChatTable) -> list[tuple[str, str]]:
    return [tuple(row) for row in admin_conn.execute(ROWS_OF[model.__tablename__]).fetchall()]  # type: ignore[misc]


def all_chat_rows_are_as_seeded(admin_conn: psycopg.Connection) -> bool:
    return all(chat_rows(admin_conn, model) == SEEDED[model.__tablename__] for model in CHAT_TABLES)


def new_chat_row(model: ChatTable, user: str, made: dict[str, dict[str, int]]) -> dict[str, object]:
    """A row of `user`'s that seed_conversations did not write: a new conversation, or a
    new message in their own first conversation (alice: plans, bob: bob chat)."""
    if model is Conversation:
        return {"user_id": user, "title": "new"}
    return {"user_id": user, "conversation_id": conversation_of(made, user), "role": "user", "content": "new"}


def conversation_of(made: dict[str, dict[str, int]], user: str) -> int:
    return next(iter(made[user].values()))


async def test_unfiltered_selects_of_the_conversation_tables_return_only_the_current_users_rows(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    made = await seed_conversations(sessions)
    assert all_chat_rows_are_as_seeded(admin_conn)
    for model in CHAT_TABLES:
        for user in ("alice", "bob"):
            async with sessions.transaction(user) as session:
                rows = (await session.scalars(select(model))).all()
                count = await session.scalar(select(func.count()).select_from(model))
                # Named by the other user's conversation ids: nothing.
                other = made["bob" if user == "alice" else "alice"].values()
                column = Conversation.id if model is Conversation else Message.conversation_id
                assert (await session.scalars(select(model).where(column.in_(other)))).all() == []
            expected = [row for row in SEEDED[model.__tablename__] if row[0] == user]
            assert {row.user_id for row in rows} == {user}, model
            assert len(rows) == count == len(expected), model
        # With no user, or an empty one: nothing.
        for context in (None, ""):
            async with sessions.anonymous() as session:
                if context is not None:
                    await session.execute(text("select set_config('app.user_id', :v, true)"), {"v": context})
                assert (await session.scalars(select(model))).all() == [], (model, context)


async def test_an_insert_into_the_conversation_tables_for_another_user_or_none_is_a_policy_violation(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    made = await seed_conversations(sessions)
    for model in CHAT_TABLES:
        # For messages, a message in bob's own conversation: only its user_id makes it bob's.
        with pytest.raises(DBAPIError) as exc:
            async with sessions.transaction("alice") as session:
                await session.execute(insert(model).values(new_chat_row(model, "bob", made)))
        assert_rls_violation(exc)
        with pytest.raises(DBAPIError) as exc:
            async with sessions.anonymous() as session:
                await session.execute(insert(model).values(new_chat_row(model, "alice", made)))
        assert_rls_violation(exc)
    assert all_chat_rows_are_as_seeded(admin_conn)
    # The control: alice's own rows go in.
    async with sessions.transaction("alice") as session:
        for model in CHAT_TABLES:
            await session.execute(insert(model).values(new_chat_row(model, "alice", made)))
    assert chat_rows(admin_conn, Conversation) == sorted([*SEEDED["conversations"], ("alice", "new")])
    assert chat_rows(admin_conn, Message) == sorted([*SEEDED["messages"], ("alice", "plans:new")])


async def test_unfiltered_updates_of_the_conversation_tables_touch_only_the_current_users_rows(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    made = await seed_conversations(sessions)
    bobs = made["bob"]["bob chat"]
    # bob's rows by their ids, as another user and as no one: nothing.
    for acting in (sessions.transaction("alice"), sessions.anonymous()):
        async with acting as session:
            renamed = await session.execute(
                update(Conversation).where(Conversation.id == bobs).values(title="x")
            )
            failed = await session.execute(
                update(Message).where(Message.conversation_id == bobs).values(failure="provider_error")
            )
        assert renamed.rowcount == failed.rowcount == 0  # type: ignore[attr-defined]
    assert all_chat_rows_are_as_seeded(admin_conn)

    async with sessions.transaction("alice") as session:
        renamed = await session.execute(update(Conversation).values(title=func.upper(Conversation.title)))
        failed = await session.execute(
            update(Message).where(Message.role == "user").values(failure="provider_error")
        )
    assert renamed.rowcount == 2  # type: ignore[attr-defined]
    assert failed.rowcount == 2  # type: ignore[attr-defined]
    assert chat_rows(admin_conn, Conversation) == [
        ("alice", "IDEAS"),
        ("alice", "PLANS"),
        ("bob", "bob chat"),
    ]
    failures = "select user_id, content, failure from messages where role = 'user' order by 1, 2"
    assert admin_conn.execute(failures).fetchall() == [
        ("alice", "hi", "provider_error"),
        ("alice", "idea", "provider_error"),
        ("bob", "yo", None),
    ]


async def test_an_update_that_gives_a_conversation_or_message_away_is_refused_by_grant_and_by_policy(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    await seed_conversations(sessions)
    for model in CHAT_TABLES:
        # No grant on user_id; then, with the grant lifted in this test's database, the
        # update policy's WITH CHECK.
        for grant in (None, f"grant update (user_id) on {model.__tablename__} to todo_app"):
            if grant:
                admin_conn.execute(grant)
            with pytest.raises(DBAPIError) as exc:
                async with sessions.transaction("alice") as session:
                    await session.execute(update(model).values(user_id="bob"))
            assert getattr(exc.value.orig, "sqlstate", None) == "42501", (model, grant)
            if grant:
                assert_rls_violation(exc)
    assert all_chat_rows_are_as_seeded(admin_conn)


async def test_a_message_is_written_once_and_only_its_failure_changes(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    made = await seed_conversations(sessions)
    for values in (
        {"content": "rewritten"},
        {"role": "assistant"},
        {"conversation_id": made["alice"]["ideas"]},
    ):
        with pytest.raises(DBAPIError) as exc:
            async with sessions.transaction("alice") as session:
                await session.execute(update(Message).where(Message.content == "hi").values(**values))
        assert getattr(exc.value.orig, "sqlstate", None) == "42501", values
        assert "permission denied" in str(exc.value.orig)
    assert all_chat_rows_are_as_seeded(admin_conn)


async def test_unfiltered_deletes_from_the_conversation_tables_remove_only_the_current_users_rows(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    await seed_conversations(sessions)
    for model in CHAT_TABLES:
        async with sessions.anonymous() as session:
            nothing = await session.execute(delete(model))
        assert nothing.rowcount == 0  # type: ignore[attr-defined]
    assert all_chat_rows_are_as_seeded(admin_conn)
    # alice's messages, then her conversations.
    for model in CHAT_TABLES:
        async with sessions.transaction("alice") as session:
            result = await session.execute(delete(model))
        seeded = SEEDED[model.__tablename__]
        assert result.rowcount == len([row for row in seeded if row[0] == "alice"])  # type: ignore[attr-defined]
        assert chat_rows(admin_conn, model) == [row for row in seeded if row[0] == "bob"]
    assert chat_rows(admin_conn, Message) == [("bob", "bob chat:yo")]


async def test_deleting_a_conversation_takes_its_messages_and_no_one_elses(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    made = await seed_conversations(sessions)
    async with sessions.transaction("alice") as session:
        await session.execute(delete(Conversation).where(Conversation.id == made["alice"]["plans"]))
    assert chat_rows(admin_conn, Message) == [("alice", "ideas:idea"), ("bob", "bob chat:yo")]
    async with sessions.transaction("alice") as session:
        result = await session.execute(delete(Conversation))
    assert result.rowcount == 1  # type: ignore[attr-defined]
    assert chat_rows(admin_conn, Message) == [("bob", "bob chat:yo")]


# --- the keys: no message in another user's conversation, whatever role writes it --------

# (user_id, whose conversation): messages naming a conversation of another user.
CROSS_MESSAGES = [("alice", "bob"), ("bob", "alice")]


async def test_a_message_in_another_users_conversation_is_refused_by_the_key_even_where_rls_does_not_hold(
    sessions: UserSessions, admin_conn: psycopg.Connection, db_url: DbUrls
) -> None:
    """No message of one user can be in another user's conversation: its foreign key
    carries user_id. Shown where row-level security stops nothing: as the superuser, and
    as the owner with FORCE switched off (in a transaction rolled back)."""
    made = await seed_conversations(sessions)
    insert_message = (
        "insert into messages (user_id, conversation_id, role, content) values (%s, %s, 'user', 'x')"
    )
    for url in (db_url.owner, db_url.admin):
        with psycopg.connect(url) as conn:
            if url == db_url.owner:
                conn.execute("alter table messages no force row level security")
            # The control: a message of alice's in her own conversation goes in.
            conn.execute(insert_message, ("alice", conversation_of(made, "alice")))
            for user, owner in CROSS_MESSAGES:
                with pytest.raises(psycopg.errors.ForeignKeyViolation) as exc, conn.transaction():
                    conn.execute(insert_message, (user, conversation_of(made, owner)))
                assert exc.value.diag.constraint_name == "messages_conversation_fkey", (url, user, owner)
                # Nor can a message be moved into one.
                with pytest.raises(psycopg.errors.ForeignKeyViolation), conn.transaction():
                    conn.execute(
                        "update messages set conversation_id = %s where user_id = %s",
                        (conversation_of(made, owner), user),
                    )
            conn.rollback()
    assert all_chat_rows_are_as_seeded(admin_conn)
    forced = "select relforcerowsecurity from pg_class where oid = 'messages'::regclass"
    assert admin_conn.execute(forced).fetchone() == (True,)


async def test_a_message_in_another_users_conversation_is_refused_to_the_runtime_role(
    sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    """As alice, with the id of bob's conversation in hand: a message in alice's name fails
    its foreign key (which the API answers as a 404), one in bob's name the insert policy."""
    made = await seed_conversations(sessions)
    for user, owner in CROSS_MESSAGES:
        with pytest.raises(DBAPIError) as exc:
            async with sessions.transaction("alice") as session:
                await session.execute(
                    insert(Message).values(
                        user_id=user, conversation_id=conversation_of(made, owner), role="user", content="x"
                    )
                )
        if user == "alice":
            assert getattr(exc.value.orig, "sqlstate", None) == "23503"
            assert "messages_conversation_fkey" in str(exc.value.orig)
        else:
            assert_rls_violation(exc)
    assert all_chat_rows_are_as_seeded(admin_conn)


# --- pooled connections -------------------------------------------------------------


def one_connection_sessions(settings: Settings) -> UserSessions:
    one = settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})
    return UserSessions.from_settings(create_engine(one), one)


async def left_behind(sessions: UserSessions) -> tuple[int, str | None, int]:
    """On the pool's connection outside any user's transaction: its backend, the user
    setting it carries, and the tasks it sees."""
    pooled = await sessions.engine.raw_connection()
    try:
        return tuple(
            await pooled.driver_connection.fetchrow(
                "select pg_backend_pid(), current_setting('app.user_id', true), (select count(*) from tasks)"
            )
        )  # type: ignore[return-value]
    finally:
        await greenlet_spawn(pooled.close)


async def test_users_in_turn_on_one_pooled_connection_never_see_each_other(settings: Settings) -> None:
    sessions = one_connection_sessions(settings)
    try:
        await seed(sessions)
        pids = set()
        for user, expected in [("alice", ["a1", "a2"]), ("bob", ["b1"]), ("alice", ["a1", "a2"])]:
            # The request path, then the ORM path: both end their context with the transaction.
            async with sessions.connection(user) as connection:
                pids.add(await connection.fetchval("select pg_backend_pid()"))
                assert sorted(await connection.fetchval("select array_agg(title) from tasks")) == expected
            async with sessions.transaction(user) as session:
                pids.add(await session.scalar(text("select pg_backend_pid()")))
                assert sorted(await session.scalars(select(Task.title))) == expected
            # Back in the pool, the connection carries no user.
            pid, setting, visible = await left_behind(sessions)
            pids.add(pid)
            assert (setting or "", visible) == ("", 0)
        assert len(pids) == 1, "the test must reuse a single connection"
    finally:
        await sessions.engine.dispose()


@pytest.mark.parametrize("failure", ["the route's own error", "a statement PostgreSQL refused"])
async def test_context_does_not_survive_a_rolled_back_request(settings: Settings, failure: str) -> None:
    sessions = one_connection_sessions(settings)
    try:
        await seed(sessions)
        before, _, _ = await left_behind(sessions)
        with pytest.raises((RuntimeError, asyncpg.PostgresError)):
            async with sessions.connection("alice") as connection:
                await connection.execute("insert into tasks (user_id, title) values ('alice', 'a3')")
                if failure == "the route's own error":
                    raise RuntimeError("the request failed")
                await connection.execute("insert into tasks (user_id, title) values ('bob', 'not mine')")
        # The same connection, in step and rolled back: no user, and a3 was never written.
        assert await left_behind(sessions) == (before, "", 0)
        assert await titles_seen_by(sessions, "alice") == ["a1", "a2"]
    finally:
        await sessions.engine.dispose()


async def test_a_connection_interrupted_mid_statement_is_closed_not_reused(settings: Settings) -> None:
    """A timeout (or a cancelled request) can leave a connection in the middle of a
    statement and of alice's transaction: it must not serve the next request."""
    sessions = one_connection_sessions(settings)
    try:
        await seed(sessions)
        before, _, _ = await left_behind(sessions)
        with pytest.raises(TimeoutError):
            async with sessions.connection("alice") as connection:
                await connection.execute("select pg_sleep(5)", timeout=0.2)
        after, setting, visible = await left_behind(sessions)
        assert after != before and (setting or "", visible) == ("", 0)
        assert await titles_seen_by(sessions, "bob") == ["b1"]
    finally:
        await sessions.engine.dispose()


# --- other roles --------------------------------------------------------------------


async def test_the_owner_role_is_held_to_rls_too(db_url: DbUrls, sessions: UserSessions) -> None:
    await seed_tags(sessions)
    await seed_conversations(sessions)
    for table in ("tasks", "tags", "task_tags", "conversations", "messages"):
        with psycopg.connect(db_url.owner) as conn:
            assert conn.execute(f"select count(*) from {table}").fetchone() == (0,), table
            conn.execute("select set_config('app.user_id', 'alice', true)")
            # FORCE ROW LEVEL SECURITY with no policy naming the owner: nothing, even with a user.
            assert conn.execute(f"select count(*) from {table}").fetchone() == (0,), table


# --- through HTTP, with the routes' own filters removed ---------------------------


# Every owner filter the routes send: the caller's id, $1, compared with a user_id.
OWNER_FILTERED = re.compile(r"user_id\s*=\s*\$1\b")


def route_statements() -> list[str]:
    """Every statement of the task, tag and conversation routes (and of the chat's
    statements), built with the modules' OWNER_FILTER as it stands, the list with every
    optional filter at once. Not the inserts of a new task or conversation, which read
    nothing: the insert policy alone decides whose row they may write."""
    import app.service.conversations as conversations
    import app.service.tags as tags
    import app.service.tasks as tasks

    every_filter = ("priority", "due_before", "due_after", "tag", "q")
    return [
        tasks._get_sql(tasks.OWNER_FILTER),
        tasks._delete_sql(tasks.OWNER_FILTER),
        tasks._update_sql(tasks.OWNER_FILTER, ""),
        tasks._toggle_sql(tasks.OWNER_FILTER),
        tasks._lock_sql(tasks.OWNER_FILTER),
        tasks._spawn_sql(tasks.OWNER_FILTER),
        tasks._list_sql(
            tasks.OWNER_FILTER, tasks.StatusFilter.all, tasks.SortField.created, tasks.SortOrder.desc
        ),
        tasks._list_sql(
            tasks.OWNER_FILTER,
            tasks.StatusFilter.pending,
            tasks.SortField.relevance,
            tasks.SortOrder.desc,
            every_filter,
            overdue=True,
        ),
        tags._list_sql(),
        tags._find_sql(),
        tags._touch_sql(),
        tags._rename_sql(),
        tags._merge_sql(),
        tags._answer_sql(),
        tags._delete_sql(),
        conversations._touch_sql(),
        conversations._add_sql(),
        conversations._mark_failed_sql(),
        conversations._history_sql(),
        conversations._list_sql(),
        conversations._messages_sql(),
        conversations._delete_sql(),
    ]


@pytest.fixture
def without_owner_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task, tag and conversation statements with their explicit owner filters
    swapped for one that passes every row (it still names $1, the caller, as every
    statement binds it)."""
    import app.service.conversations as conversations
    import app.service.tags as tags
    import app.service.tasks as tasks

    assert all(OWNER_FILTERED.search(statement) for statement in route_statements())
    passes_all = "$1::text is not null"
    monkeypatch.setattr(tasks, "OWNER_FILTER", passes_all)
    monkeypatch.setattr(tags, "OWNER_FILTER", passes_all)
    monkeypatch.setattr(conversations, "OWNER_FILTER", passes_all)
    unfiltered = route_statements()
    assert not any(OWNER_FILTERED.search(statement) for statement in unfiltered), unfiltered


@pytest.mark.usefixtures("without_owner_filters")
async def test_routes_stay_isolated_without_their_explicit_filters(client: httpx.AsyncClient) -> None:
    bobs = (await client.post("/api/bob/tasks", json={"title": "bob's"}, headers=auth("bob"))).json()
    await client.post("/api/alice/tasks", json={"title": "alice's"}, headers=auth("alice"))
    alice = auth("alice")

    listed = await client.get("/api/alice/tasks", headers=alice)
    assert [task["title"] for task in listed.json()] == ["alice's"]
    assert listed.headers["X-Total-Count"] == "1"
    url = f"/api/alice/tasks/{bobs['id']}"
    assert (await client.get(url, headers=alice)).status_code == 404
    assert (await client.put(url, json={"title": "x"}, headers=alice)).status_code == 404
    assert (await client.patch(url, json={"title": "x"}, headers=alice)).status_code == 404
    assert (await client.patch(f"{url}/complete", headers=alice)).status_code == 404
    assert (await client.patch(url, json={"tags": ["x"]}, headers=alice)).status_code == 404
    assert (await client.delete(url, headers=alice)).status_code == 404
    assert (await client.get(f"/api/bob/tasks/{bobs['id']}", headers=auth("bob"))).json() == bobs


@pytest.mark.usefixtures("without_owner_filters")
async def test_tag_routes_the_tag_filter_and_search_stay_isolated_without_their_explicit_filters(
    client: httpx.AsyncClient,
) -> None:
    alice, bob = auth("alice"), auth("bob")
    for title, tags in [("bob's groceries", ["Shared", "BobOnly"]), ("bob's second", ["shared"])]:
        made = await client.post("/api/bob/tasks", json={"title": title, "tags": tags}, headers=bob)
        assert made.status_code == 201
    for title, tags in [("alice's", ["shared"]), ("alice's other", ["mine"])]:
        made = await client.post("/api/alice/tasks", json={"title": title, "tags": tags}, headers=alice)
        assert made.status_code == 201

    async def bobs_view() -> tuple[str, str]:
        bobs_tags = await client.get("/api/bob/tags", headers=bob)
        bobs_tasks = await client.get("/api/bob/tasks", headers=bob)
        return bobs_tags.text, bobs_tasks.text

    before = await bobs_view()

    async def listed(path: str, **params: object) -> tuple[list[object], str]:
        response = await client.get(path, params=params, headers=alice)
        assert response.status_code == 200, response.text
        return response.json(), response.headers["X-Total-Count"]

    assert await listed("/api/alice/tags") == (
        [{"name": "mine", "tasks": 1}, {"name": "shared", "tasks": 1}],
        "2",
    )

    async def titles(**params: object) -> tuple[list[object], str]:
        tasks, total = await listed("/api/alice/tasks", **params)
        return [task["title"] for task in tasks], total  # type: ignore[index]

    assert await titles(tag="shared") == (["alice's"], "1")
    assert await titles(tag="bobonly") == ([], "0")
    assert await titles(tag=["shared", "bobonly"]) == ([], "0")
    assert await titles(q="groceries") == ([], "0")
    assert await titles(q="second", tag="shared") == ([], "0")

    missing = {"detail": "Tag not found"}
    renamed = await client.patch("/api/alice/tags/bobonly", json={"name": "x"}, headers=alice)
    assert (renamed.status_code, renamed.json()) == (404, missing)
    deleted = await client.delete("/api/alice/tags/bobonly", headers=alice)
    assert (deleted.status_code, deleted.json()) == (404, missing)
    # bob's tag of the new name is no clash; alice's own is, until she merges.
    renamed = await client.patch("/api/alice/tags/mine", json={"name": "BobOnly"}, headers=alice)
    assert (renamed.status_code, renamed.json()) == (200, {"name": "BobOnly", "tasks": 1})
    clash = await client.patch("/api/alice/tags/bobonly", json={"name": "SHARED"}, headers=alice)
    assert clash.status_code == 409
    merged = await client.patch("/api/alice/tags/bobonly?merge=true", json={"name": "SHARED"}, headers=alice)
    assert (merged.status_code, merged.json()) == (200, {"name": "shared", "tasks": 2})
    assert (await client.delete("/api/alice/tags/shared", headers=alice)).status_code == 204
    assert await listed("/api/alice/tags") == ([], "0")
    assert await titles() == (["alice's other", "alice's"], "2")

    # Not a row of bob's changed: his tags, their counts, his tasks and their updated_at.
    assert await bobs_view() == before


def bobs_chat(admin_conn: psycopg.Connection) -> list[tuple[str]]:
    """bob's conversations and messages as the superuser reads them."""
    return admin_conn.execute(
        "select row_to_json(c)::text from conversations c where c.user_id = 'bob'"
        " union all select row_to_json(m)::text from messages m where m.user_id = 'bob' order by 1"
    ).fetchall()


@pytest.mark.usefixtures("without_owner_filters")
async def test_conversation_routes_and_statements_stay_isolated_without_their_explicit_filters(
    app: FastAPI, client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    import app.service.conversations as conversations

    sessions: UserSessions = app.state.user_sessions
    made: dict[str, int] = {}
    for user in ("bob", "alice"):
        async with sessions.connection(user) as connection:
            made[user] = await conversations.start_conversation(connection, user, f"{user}'s chat")
            await conversations.add_message(connection, user, made[user], "user", f"{user} asks")
            await conversations.add_message(connection, user, made[user], "assistant", "answer", CALLS)
    before = bobs_chat(admin_conn)
    bobs_message = next(row[0] for row in admin_conn.execute("select id from messages where user_id = 'bob'"))

    alice = auth("alice")
    listed = await client.get("/api/alice/conversations", headers=alice)
    assert ([c["title"] for c in listed.json()], listed.headers["X-Total-Count"]) == (["alice's chat"], "1")
    messages = await client.get(f"/api/alice/conversations/{made['alice']}/messages", headers=alice)
    assert [m["content"] for m in messages.json()] == ["alice asks", "answer"]
    assert messages.headers["X-Total-Count"] == "2"
    for method, path in (("GET", "/{}/messages"), ("DELETE", "/{}")):
        url = f"/api/alice/conversations{path.format(made['bob'])}"
        response = await client.request(method, url, headers=alice)
        assert (response.status_code, response.json()) == (404, {"detail": "Conversation not found"})

    async with sessions.connection("alice") as connection:
        assert await conversations.history(connection, "alice", made["bob"], 10) == []
        own = await conversations.history(connection, "alice", made["alice"], 10)
        assert [m.content for m in own] == ["alice asks", "answer"]
        with pytest.raises(NotFound):
            await conversations.touch_conversation(connection, "alice", made["bob"])
        with pytest.raises(NotFound):
            await conversations.add_message(connection, "alice", made["bob"], "user", "pwned")
        with pytest.raises(NotFound):
            await conversations.mark_failed(connection, "alice", bobs_message, "provider_error")
        with pytest.raises(NotFound):
            await conversations.delete_conversation(connection, "alice", made["bob"])
    # Not a row of bob's changed, not even when his conversation was last active.
    assert bobs_chat(admin_conn) == before


async def test_engine_fixture_connects_as_the_runtime_role(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.scalar(text("select current_user")) == "todo_app"
