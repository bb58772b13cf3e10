"""The conversation statements, written once for every way in (see app/service/tasks.py):
a user's conversations with the assistant and their messages. The chat route starts and
continues conversations through these functions; the conversation routes list and
delete them.

As for tasks and tags, every statement is fixed SQL with the caller's id as $1, names its
tables with their schema, and carries an owner filter (OWNER_FILTER) that row-level
security makes redundant; tests/test_rls.py swaps it for one that passes every row. The
lists are written as JSON text by PostgreSQL, in the shapes of ConversationPublic and
MessagePublic, timestamps in UTC as the tasks' are.

tool_calls is jsonb. Statements take it as JSON text ($n::text::jsonb) and give it back
as text (tool_calls::text), whatever codec the connection has for jsonb. In the lists,
row_to_json writes it as jsonb prints it: the same JSON values as FastAPI would write,
but with jsonb's spacing and key order (shorter keys first), not byte for byte.
"""

import json
from typing import Any, NamedTuple, cast

from asyncpg import Connection, Record
from pydantic import BaseModel

from app.errors import NotFound
from app.models import ConversationPublic, MessagePublic
from app.service.paging import page_total
from app.service.tasks import _UTC_TIMESTAMP

CONVERSATION_NOT_FOUND = "Conversation not found"
MESSAGE_NOT_FOUND = "Message not found"
# {} is the table (its alias in the statement); tests/test_rls.py swaps it.
OWNER_FILTER = "{}.user_id = $1"


class HistoryMessage(NamedTuple):
    """A message as the provider is to be given it."""

    id: int
    role: str  # 'user' | 'assistant' | 'tool'
    content: str
    tool_calls: list[dict[str, Any]] | None  # decoded JSON


def _owner(table: str) -> str:
    return OWNER_FILTER.format(table)


def _public(model: type[BaseModel], row: str) -> str:
    """A subquery of `model`'s fields of `row`, in the model's order: row_to_json writes
    it as the response. Timestamps as app.service.tasks writes them."""
    fields = []
    for name in model.model_fields:
        value = f"{row}.{name}"
        if name in ("created_at", "updated_at"):
            value = f"to_char({value} at time zone 'UTC', '{_UTC_TIMESTAMP}')"
        fields.append(f"{value} as {name}")
    return "select " + ", ".join(fields)


def _page(rows: str, model: type[BaseModel], order: str) -> str:
    """The JSON array of `model` of the rows of CTE `rows`, in `order` (of `rows`' columns)."""
    return (
        f"(select coalesce('[' || string_agg(row_to_json(p)::text, ',' order by {order}) || ']', '[]')"  # noqa: S608
        f" from {rows}, lateral ({_public(model, rows)}) p)"
    )


# --- the statements ------------------------------------------------------------------
# Built from constants only; every value is a bound parameter (hence the `noqa: S608`s).


def _start_sql() -> str:
    return "insert into public.conversations (user_id, title) values ($1, $2) returning id"


def _touch_sql() -> str:
    """Conversation $2 is active now. The update holds its row lock until the transaction
    ends: a second chat on the same conversation waits for the first (up to the
    request's lock_timeout), and so does a delete of it."""
    return (
        "update public.conversations c set updated_at = now()"  # noqa: S608
        f" where {_owner('c')} and c.id = $2 returning c.id"
    )


def _add_sql() -> str:
    """Messages in the caller's conversation $2, in order: roles $3, contents $4, tool
    calls $5 (JSON text or null), one array element a message; nothing when the caller
    has no such conversation. Ids are drawn in the messages' order."""
    return (
        "insert into public.messages (user_id, conversation_id, role, content, tool_calls)"  # noqa: S608
        " select c.user_id, c.id, m.role::public.message_role, m.content, m.tool_calls::jsonb"
        f" from public.conversations c,"
        " unnest($3::text[], $4::text[], $5::text[]) with ordinality m(role, content, tool_calls, n)"
        f" where {_owner('c')} and c.id = $2"
        " order by m.n"
        " returning id"
    )


def _mark_failed_sql() -> str:
    return (
        "update public.messages m set failure = $3"  # noqa: S608
        f" where {_owner('m')} and m.id = $2 returning m.id"
    )


def _history_sql() -> str:
    """The last $3 messages of conversation $2 that did not fail, oldest first."""
    return (
        "select h.id, h.role::text, h.content, h.tool_calls::text from"  # noqa: S608
        " (select m.id, m.role, m.content, m.tool_calls from public.messages m"
        f" where {_owner('m')} and m.conversation_id = $2 and m.failure is null"
        " order by m.id desc limit $3) h"
        " order by h.id"
    )


def _list_sql() -> str:
    """$2 limit, $3 offset: the page of conversations as a JSON array, the most recently
    active first, and how many the caller has."""
    page = (
        f"select c.* from public.conversations c where {_owner('c')}"  # noqa: S608
        " order by c.updated_at desc, c.id desc limit $2 offset $3"
    )
    count = f"select count(*) from public.conversations c where {_owner('c')}"  # noqa: S608
    return (
        f"with page as ({page})"  # noqa: S608
        f" select {_page('page', ConversationPublic, 'page.updated_at desc, page.id desc')},"
        f" {page_total('(select count(*) from page)', count, '$2', '$3')}"
    )


def _messages_sql() -> str:
    """Conversation $2's messages, $3 limit, $4 offset, oldest first: whether the caller
    has the conversation (null if not), the page as a JSON array, and the count."""
    page = (
        f"select m.* from public.messages m where {_owner('m')} and m.conversation_id = $2"  # noqa: S608
        " order by m.id limit $3 offset $4"
    )
    count = f"select count(*) from public.messages m where {_owner('m')} and m.conversation_id = $2"  # noqa: S608
    return (
        f"with page as ({page})"  # noqa: S608
        f" select (select true from public.conversations c where {_owner('c')} and c.id = $2),"
        f" {_page('page', MessagePublic, 'page.id')},"
        f" {page_total('(select count(*) from page)', count, '$3', '$4')}"
    )


def _delete_sql() -> str:
    """Deletes conversation $2; its messages go with it (on delete cascade)."""
    return f"delete from public.conversations c where {_owner('c')} and c.id = $2 returning c.id"  # noqa: S608


# --- the operations ------------------------------------------------------------------


async def start_conversation(connection: Connection, subject: str, title: str) -> int:
    """A new conversation of the caller's; its id. `title`: 1..200 characters, not blank
    (the caller cuts it)."""
    return cast(int, await connection.fetchval(_start_sql(), subject, title))


async def touch_conversation(connection: Connection, subject: str, conversation_id: int) -> None:
    """Marks the caller's conversation active now and locks it until the transaction
    ends; NotFound if the caller has no such conversation."""
    if await connection.fetchval(_touch_sql(), subject, conversation_id) is None:
        raise NotFound(CONVERSATION_NOT_FOUND)


async def add_message(
    connection: Connection,
    subject: str,
    conversation_id: int,
    role: str,
    content: str,
    tool_calls: list[dict[str, Any]] | None = None,
) -> int:
    """Adds a message to the caller's conversation; its id. NotFound if the caller has no
    such conversation. `role`: user, assistant or tool (the database refuses others)."""
    return (await add_messages(connection, subject, conversation_id, [(role, content, tool_calls)]))[-1]


async def add_messages(
    connection: Connection,
    subject: str,
    conversation_id: int,
    messages: list[tuple[str, str, list[dict[str, Any]] | None]],
) -> list[int]:
    """Adds messages (role, content, tool calls) to the caller's conversation in one
    statement, in order; their ids, ascending. NotFound if the caller has no such
    conversation."""
    roles = [role for role, _, _ in messages]
    contents = [content for _, content, _ in messages]
    calls = [
        None if tool_calls is None else json.dumps(tool_calls, ensure_ascii=False, separators=(",", ":"))
        for _, _, tool_calls in messages
    ]
    rows = await connection.fetch(_add_sql(), subject, conversation_id, roles, contents, calls)
    if not rows:
        raise NotFound(CONVERSATION_NOT_FOUND)
    return sorted(cast(int, row[0]) for row in rows)


async def mark_failed(connection: Connection, subject: str, message_id: int, failure: str) -> None:
    """Records why the caller's user message got no answer: provider_error or
    provider_timeout (the database refuses other values, and other roles' messages).
    NotFound if the caller has no such message."""
    if await connection.fetchval(_mark_failed_sql(), subject, message_id, failure) is None:
        raise NotFound(MESSAGE_NOT_FOUND)


async def history(
    connection: Connection, subject: str, conversation_id: int, limit: int
) -> list[HistoryMessage]:
    """The last `limit` messages of the caller's conversation that did not fail, oldest
    first; none for a conversation the caller does not have."""
    rows = await connection.fetch(_history_sql(), subject, conversation_id, limit)
    return [
        HistoryMessage(message_id, role, content, None if calls is None else json.loads(calls))
        for message_id, role, content, calls in rows
    ]


async def list_conversations(
    connection: Connection, subject: str, limit: int, offset: int
) -> tuple[str, int]:
    """The page (a JSON array of ConversationPublic, the most recently active first, then
    the newest) and how many conversations the caller has."""
    # Aggregates: always one row.
    body, total = cast(Record, await connection.fetchrow(_list_sql(), subject, limit, offset))
    return body, total


async def list_messages(
    connection: Connection, subject: str, conversation_id: int, limit: int, offset: int
) -> tuple[str, int]:
    """The page (a JSON array of MessagePublic, oldest first) and how many messages the
    conversation has; NotFound if the caller has no such conversation."""
    found, body, total = cast(
        Record, await connection.fetchrow(_messages_sql(), subject, conversation_id, limit, offset)
    )
    if found is None:
        raise NotFound(CONVERSATION_NOT_FOUND)
    return body, total


async def delete_conversation(connection: Connection, subject: str, conversation_id: int) -> None:
    """Deletes the caller's conversation and its messages; NotFound if there is none."""
    if await connection.fetchval(_delete_sql(), subject, conversation_id) is None:
        raise NotFound(CONVERSATION_NOT_FOUND)
