"""Conversations with the assistant: the statements of app.service.conversations (what the
chat route calls), run on the request's own kind of connection, and the routes that list
and delete conversations. Another user's conversations are also in tests/test_rls.py
(unfiltered queries, the keys) and tests/test_attacks.py (over HTTP, a live server)."""

import asyncio
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.errors import NotFound
from app.models import ConversationPublic, MessagePublic
from app.service import conversations as service
from app.session import UserSessions
from tests.conftest import http_client, running_app
from tests.routes.test_tasks import parse_time
from tests.tokens import auth

ALICE = auth("alice")
BOB = auth("bob")
MISSING_ID = 2**62
NOT_FOUND = {"detail": "Conversation not found"}
TOOL_CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "add_task", "arguments": '{"title": "Buy milk ünï 🙂"}'},
    }
]


def user_sessions(app: FastAPI) -> UserSessions:
    """The app's own: connections made exactly as a request's are."""
    sessions: UserSessions = app.state.user_sessions
    return sessions


async def chat(app: FastAPI, user: str, title: str, *turns: tuple[str, str]) -> int:
    """A conversation of `user`'s with these (role, content) messages, as the chat route
    would write it: started, then touched and written to."""
    async with user_sessions(app).connection(user) as connection:
        conversation = await service.start_conversation(connection, user, title)
        await service.touch_conversation(connection, user, conversation)
        for role, content in turns:
            calls = TOOL_CALLS if role == "assistant" else None
            await service.add_message(connection, user, conversation, role, content, calls)
    return conversation


async def get(client: httpx.AsyncClient, path: str, user: str = "alice", **params: Any) -> httpx.Response:
    response = await client.get(f"/api/{user}{path}", params=params, headers=auth(user))
    assert response.status_code == 200, response.text
    return response


def links(response: httpx.Response) -> set[str]:
    return set(httpx.Response(200, headers={"Link": response.headers.get("Link", "")}).links)


# --- the statements ----------------------------------------------------------------------


async def test_a_conversation_is_written_and_read_back_as_the_chat_route_does(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    conversation = await chat(
        app,
        "alice",
        "Groceries",
        ("user", "add milk"),
        ("assistant", ""),
        ("tool", '{"id": 1}'),
        ("assistant", "Done."),
        ("user", "and bread"),
    )
    async with user_sessions(app).connection("alice") as connection:
        failed = await service.add_message(connection, "alice", conversation, "user", "and eggs")
        await service.mark_failed(connection, "alice", failed, "provider_timeout")
        history = await service.history(connection, "alice", conversation, 10)
        last_three = await service.history(connection, "alice", conversation, 3)

    # The provider's history: oldest first, the failed message left out, tool calls decoded.
    assert [(m.role, m.content, m.tool_calls) for m in history] == [
        ("user", "add milk", None),
        ("assistant", "", TOOL_CALLS),
        ("tool", '{"id": 1}', None),
        ("assistant", "Done.", TOOL_CALLS),
        ("user", "and bread", None),
    ]
    assert last_three == history[-3:]
    assert [m.id for m in history] == sorted(m.id for m in history)

    # The routes answer what PostgreSQL wrote, in the models' shapes, field for field.
    messages = await get(client, f"/conversations/{conversation}/messages")
    assert messages.headers["X-Total-Count"] == "6"
    body = messages.json()
    for item in body:
        assert list(item) == list(MessagePublic.model_fields)
        assert MessagePublic.model_validate(item).model_dump(mode="json") == item
        assert parse_time(item["created_at"]) and item["created_at"].endswith("Z")
        assert item["conversation_id"] == conversation
    assert [(m["role"], m["content"], m["tool_calls"], m["failure"]) for m in body] == [
        *[(m.role, m.content, m.tool_calls, None) for m in history],
        ("user", "and eggs", None, "provider_timeout"),
    ]
    [listed] = (await get(client, "/conversations")).json()
    assert list(listed) == list(ConversationPublic.model_fields)
    assert ConversationPublic.model_validate(listed).model_dump(mode="json") == listed
    assert (listed["id"], listed["title"]) == (conversation, "Groceries")
    assert parse_time(listed["created_at"]) <= parse_time(listed["updated_at"])


async def test_the_statements_find_no_conversation_or_message_of_another_user(app: FastAPI) -> None:
    alices = await chat(app, "alice", "mine", ("user", "hello"))
    async with user_sessions(app).connection("alice") as connection:
        [message] = await service.history(connection, "alice", alices, 10)
    sessions = user_sessions(app)
    for conversation in (alices, MISSING_ID):
        async with sessions.connection("bob") as connection:
            with pytest.raises(NotFound) as touched:
                await service.touch_conversation(connection, "bob", conversation)
            with pytest.raises(NotFound) as added:
                await service.add_message(connection, "bob", conversation, "user", "pwned")
            with pytest.raises(NotFound) as listed:
                await service.list_messages(connection, "bob", conversation, 10, 0)
            with pytest.raises(NotFound) as deleted:
                await service.delete_conversation(connection, "bob", conversation)
            assert await service.history(connection, "bob", conversation, 10) == []
        assert {exc.value.detail for exc in (touched, added, listed, deleted)} == {"Conversation not found"}
    async with sessions.connection("bob") as connection:
        with pytest.raises(NotFound):
            await service.mark_failed(connection, "bob", message.id, "provider_error")
        assert await service.list_conversations(connection, "bob", 10, 0) == ("[]", 0)
    async with sessions.connection("alice") as connection:
        assert await service.history(connection, "alice", alices, 10) == [message]


async def test_touching_a_conversation_holds_off_a_second_chat_on_it_until_the_first_ends(
    app: FastAPI,
) -> None:
    conversation = await chat(app, "alice", "one at a time")
    sessions = user_sessions(app)
    first_in = asyncio.Event()
    first_may_end = asyncio.Event()

    async def first() -> None:
        async with sessions.connection("alice") as connection:
            await service.touch_conversation(connection, "alice", conversation)
            first_in.set()
            await first_may_end.wait()
            await service.add_message(connection, "alice", conversation, "user", "first")

    async def second() -> None:
        async with sessions.connection("alice") as connection:
            await service.touch_conversation(connection, "alice", conversation)
            await service.add_message(connection, "alice", conversation, "user", "second")

    one = asyncio.create_task(first())
    await first_in.wait()
    two = asyncio.create_task(second())
    # The second waits for the first's lock (DB_LOCK_TIMEOUT is 2 s): not done meanwhile.
    done, _ = await asyncio.wait({two}, timeout=0.3)
    assert not done
    first_may_end.set()
    await asyncio.gather(one, two)
    async with sessions.connection("alice") as connection:
        history = await service.history(connection, "alice", conversation, 10)
    assert [m.content for m in history] == ["first", "second"]


# --- GET /conversations ------------------------------------------------------------------


async def test_conversations_are_listed_most_recently_active_first_in_pages(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ids = [await chat(app, "alice", f"chat {n}") for n in range(4)]
    await chat(app, "bob", "bob's")

    async def titles(**params: Any) -> tuple[list[str], httpx.Response]:
        response = await get(client, "/conversations", **params)
        assert response.headers["X-Total-Count"] == "4"
        return [c["title"] for c in response.json()], response

    assert (await titles())[0] == ["chat 3", "chat 2", "chat 1", "chat 0"]
    # A message in chat 1 makes it the most recently active.
    async with user_sessions(app).connection("alice") as connection:
        await service.touch_conversation(connection, "alice", ids[1])
        await service.add_message(connection, "alice", ids[1], "user", "again")
    first, response = await titles(limit=3)
    assert first == ["chat 1", "chat 3", "chat 2"]
    assert links(response) == {"next"}
    second, response = await titles(limit=3, offset=3)
    assert second == ["chat 0"]
    assert links(response) == {"prev"}
    past, response = await titles(offset=10)
    assert past == []
    # Equal times (one transaction): the newest first.
    async with user_sessions(app).connection("bob") as connection:
        made = [await service.start_conversation(connection, "bob", f"same {n}") for n in range(2)]
    listed = (await get(client, "/conversations", user="bob")).json()
    assert [c["id"] for c in listed][:2] == made[::-1]


# --- GET /conversations/{id}/messages ----------------------------------------------------


async def test_messages_are_listed_oldest_first_in_pages(app: FastAPI, client: httpx.AsyncClient) -> None:
    conversation = await chat(app, "alice", "long", *[("user", f"m{n}") for n in range(5)])
    other = await chat(app, "alice", "other", ("user", "elsewhere"))
    path = f"/conversations/{conversation}/messages"

    page = await get(client, path, limit=2)
    assert [m["content"] for m in page.json()] == ["m0", "m1"]
    assert page.headers["X-Total-Count"] == "5"
    assert links(page) == {"next"}
    page = await client.get(page.links["next"]["url"], headers=ALICE)
    assert [m["content"] for m in page.json()] == ["m2", "m3"]
    assert links(page) == {"next", "prev"}
    assert page.headers["X-Total-Count"] == "5"
    page = await client.get(page.links["next"]["url"], headers=ALICE)
    assert [m["content"] for m in page.json()] == ["m4"]
    assert links(page) == {"prev"}
    # A short page is counted from itself, a page past the end by the count: the same total.
    assert page.headers["X-Total-Count"] == "5"
    past = await get(client, path, offset=5)
    assert (past.json(), past.headers["X-Total-Count"]) == ([], "5")
    assert [m["content"] for m in (await get(client, f"/conversations/{other}/messages")).json()] == [
        "elsewhere"
    ]
    # A conversation with no message yet is an empty page, not a 404.
    empty = await chat(app, "alice", "empty")
    response = await get(client, f"/conversations/{empty}/messages")
    assert (response.json(), response.headers["X-Total-Count"]) == ([], "0")


# --- DELETE /conversations/{id} ----------------------------------------------------------


async def test_delete_removes_the_conversation_and_its_messages_only(
    app: FastAPI, client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    gone = await chat(app, "alice", "gone", ("user", "a"), ("assistant", "b"))
    kept = await chat(app, "alice", "kept", ("user", "c"))
    bobs = await chat(app, "bob", "bob's", ("user", "d"))

    response = await client.delete(f"/api/alice/conversations/{gone}", headers=ALICE)
    assert (response.status_code, response.content) == (204, b"")
    stored = admin_conn.execute("select conversation_id, content from messages order by id").fetchall()
    assert stored == [(kept, "c"), (bobs, "d")]
    assert [c["id"] for c in (await get(client, "/conversations")).json()] == [kept]
    for method, path in (("DELETE", f"/conversations/{gone}"), ("GET", f"/conversations/{gone}/messages")):
        again = await client.request(method, f"/api/alice{path}", headers=ALICE)
        assert (again.status_code, again.json()) == (404, NOT_FOUND)


# --- another user's conversation, bad ids, tokens and paths --------------------------------


async def test_another_users_conversation_is_the_same_404_as_a_missing_one(
    app: FastAPI, client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    alices = await chat(app, "alice", "private", ("user", "secret"), ("assistant", "noted"))
    before = admin_conn.execute("select row_to_json(m)::text from messages m order by id").fetchall()
    for method, path in (("GET", "/conversations/{}/messages"), ("DELETE", "/conversations/{}")):
        missing = await client.request(method, f"/api/bob{path.format(MISSING_ID)}", headers=BOB)
        foreign = await client.request(method, f"/api/bob{path.format(alices)}", headers=BOB)
        assert (missing.status_code, missing.json()) == (404, NOT_FOUND)
        assert (foreign.status_code, foreign.content) == (missing.status_code, missing.content)
        assert foreign.headers["content-length"] == missing.headers["content-length"]
    listed = await get(client, "/conversations", user="bob")
    assert (listed.json(), listed.headers["X-Total-Count"]) == ([], "0")
    assert admin_conn.execute("select row_to_json(m)::text from messages m order by id").fetchall() == before
    assert len((await get(client, f"/conversations/{alices}/messages")).json()) == 2


ID_ROUTES = [("GET", "/api/alice/conversations/{}/messages"), ("DELETE", "/api/alice/conversations/{}")]
ROUTES = [("GET", "/api/alice/conversations"), *ID_ROUTES]


async def test_a_bad_conversation_id_or_list_parameter_is_422(client: httpx.AsyncClient) -> None:
    for conversation_id in ("abc", "0", "-1", "1.5", "1e3", str(2**63), "%00"):
        for method, path in ID_ROUTES:
            response = await client.request(method, path.format(conversation_id), headers=ALICE)
            assert response.status_code == 422, (method, path, conversation_id)
            assert response.json()["detail"][0]["loc"] == ["path", "conversation_id"]
    for params in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"offset": 2**31}, {"limit": "x"}):
        for path in ("/api/alice/conversations", f"/api/alice/conversations/{MISSING_ID}/messages"):
            response = await client.get(path, params=params, headers=ALICE)
            assert response.status_code == 422, (path, params)
            assert response.json()["detail"][0]["loc"] == ["query", next(iter(params))]


async def test_no_token_is_401_and_another_users_path_is_403(client: httpx.AsyncClient) -> None:
    for method, path in ROUTES:
        url = path.format(1)
        missing = await client.request(method, url)
        assert (missing.status_code, missing.json()) == (401, {"detail": "missing bearer token"})
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        other = await client.request(method, url, headers=BOB)
        assert other.status_code == 403, (method, path)
        assert other.json() == {"detail": "token subject does not match the user_id in the path"}


async def test_a_delete_counts_against_the_write_limit_and_the_lists_do_not(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limit_writes": "2/day", "rate_limit_requests": ""})
    async with running_app(settings) as app, http_client(app) as client:
        conversation = await chat(app, "alice", "limited")
        deleted = await client.delete(f"/api/alice/conversations/{conversation}", headers=ALICE)
        assert deleted.status_code == 204
        missing = await client.delete(f"/api/alice/conversations/{conversation}", headers=ALICE)
        assert missing.status_code == 404
        for _ in range(3):
            assert (await client.get("/api/alice/conversations", headers=ALICE)).status_code == 200
            messages = await client.get(f"/api/alice/conversations/{MISSING_ID}/messages", headers=ALICE)
            assert messages.status_code == 404
        refused = await client.delete(f"/api/alice/conversations/{MISSING_ID}", headers=ALICE)
        assert (refused.status_code, refused.json()) == (429, {"detail": "too many changes, slow down"})
        # The same limit as the tasks' writes.
        assert (await client.post("/api/alice/tasks", json={"title": "t"}, headers=ALICE)).status_code == 429
