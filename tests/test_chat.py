"""POST /api/{user_id}/chat, end to end: the route, the Agents SDK's run, the app's own
MCP server in process, the task statements, the database.

Two models drive it: the offline assistant (no provider configured), on each of the
spec's commands; and a real provider path, the SDK's OpenAIChatCompletionsModel over
HTTP to a fake OpenAI-compatible server on a loopback socket (tests/fake_provider.py),
scripted with tool calls, errors and delays. What a chat changed is read back through
REST, and the rows it stored as the superuser.
"""

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.config import Settings
from tests.conftest import DbUrls, http_client, make_settings, running_app
from tests.fake_provider import API_KEY, FakeProvider, Step, call, fake_provider, say
from tests.live_server import live_server
from tests.tokens import auth

CHAT = "/api/{}/chat"


def chat_url(user: str = "alice") -> str:
    return CHAT.format(user)


async def send(client: httpx.AsyncClient, message: str, user: str = "alice", **body: Any) -> httpx.Response:
    return await client.post(chat_url(user), json={"message": message, **body}, headers=auth(user))


async def tasks_of(client: httpx.AsyncClient, user: str = "alice") -> list[dict[str, Any]]:
    response = await client.get(f"/api/{user}/tasks", params={"limit": 100}, headers=auth(user))
    assert response.status_code == 200
    return response.json()


async def add(client: httpx.AsyncClient, title: str, user: str = "alice") -> dict[str, Any]:
    response = await client.post(f"/api/{user}/tasks", json={"title": title}, headers=auth(user))
    assert response.status_code == 201
    return response.json()


def stored(admin: psycopg.Connection, conversation_id: int) -> list[tuple[str, str, Any, Any]]:
    """The conversation's messages as the superuser reads them: role, content, tool calls, failure."""
    return admin.execute(
        "select role::text, content, tool_calls, failure from messages"
        " where conversation_id = %s order by id",
        (conversation_id,),
    ).fetchall()


@pytest.fixture
def admin(db_url: DbUrls) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url.admin, autocommit=True) as connection:
        yield connection


# --- the offline assistant, on the spec's commands --------------------------------------


async def test_offline_assistant_does_each_spec_command(client: httpx.AsyncClient) -> None:
    first = await send(client, "Add a task to buy groceries")
    assert first.status_code == 200, first.text
    body = first.json()
    conversation = body["conversation_id"]
    [added] = body["tool_calls"]
    assert added["name"] == "add_task"
    assert added["arguments"] == {"title": "Buy groceries"}
    assert added["result"]["status"] == "created"
    groceries = added["result"]["task_id"]
    assert "Buy groceries" in body["response"]

    async def say_(message: str) -> dict[str, Any]:
        response = await send(client, message, conversation_id=conversation)
        assert response.status_code == 200, response.text
        assert response.json()["conversation_id"] == conversation
        return response.json()

    bills = (await say_("I need to remember to pay bills"))["tool_calls"][0]["result"]
    assert bills["title"] == "Pay bills"
    meeting = await add(client, "Team meeting notes")

    everything = await say_("Show me all my tasks")
    assert [c["name"] for c in everything["tool_calls"]] == ["list_tasks"]
    assert everything["tool_calls"][0]["arguments"]["status"] == "all"
    listed = {task["title"] for task in everything["tool_calls"][0]["result"]["tasks"]}
    assert listed == {"Buy groceries", "Pay bills", "Team meeting notes"}
    assert all(title in everything["response"] for title in listed)

    done = await say_(f"Mark task {groceries} as complete")
    assert done["tool_calls"][0]["name"] == "complete_task"
    assert done["tool_calls"][0]["result"] == {
        "task_id": groceries,
        "status": "completed",
        "title": "Buy groceries",
    }

    pending = await say_("What's pending?")
    assert pending["tool_calls"][0]["arguments"]["status"] == "pending"
    assert {t["title"] for t in pending["tool_calls"][0]["result"]["tasks"]} == {
        "Pay bills",
        "Team meeting notes",
    }
    assert "Buy groceries" not in pending["response"]

    completed = await say_("What have I completed?")
    assert completed["tool_calls"][0]["arguments"]["status"] == "completed"
    assert [t["title"] for t in completed["tool_calls"][0]["result"]["tasks"]] == ["Buy groceries"]

    renamed = await say_(f"Change task {bills['task_id']} to 'Call mom tonight'")
    assert renamed["tool_calls"][0]["arguments"] == {"task_id": bills["task_id"], "title": "Call mom tonight"}

    # By its words: the assistant lists the matches first, then deletes the one.
    deleted = await say_("Delete the meeting task")
    assert [c["name"] for c in deleted["tool_calls"]] == ["list_tasks", "delete_task"]
    assert deleted["tool_calls"][0]["arguments"]["q"] == "meeting"
    assert deleted["tool_calls"][1]["arguments"] == {"task_id": meeting["id"]}

    left = {task["title"]: task["completed"] for task in await tasks_of(client)}
    assert left == {"Buy groceries": True, "Call mom tonight": False}


async def test_offline_assistant_asks_when_words_match_several_tasks(client: httpx.AsyncClient) -> None:
    await add(client, "Meeting with Ann")
    await add(client, "Meeting with Bob")
    response = await send(client, "Delete the meeting task")
    assert response.status_code == 200
    assert [c["name"] for c in response.json()["tool_calls"]] == ["list_tasks"]
    assert "which one" in response.json()["response"]
    assert len(await tasks_of(client)) == 2


async def test_offline_assistant_answers_help_without_tools(client: httpx.AsyncClient) -> None:
    response = await send(client, "Hello there")
    assert response.status_code == 200
    assert response.json()["tool_calls"] == []
    assert "Add a task" in response.json()["response"]


async def test_the_assistant_made_at_the_first_message_is_out_of_the_collectors_sight(
    client: httpx.AsyncClient,
) -> None:
    """Made on the first message, it lives as long as the app: frozen as start-up's
    objects are (app/routes/chat.py)."""
    before = gc.get_freeze_count()
    assert (await send(client, "Hello there")).status_code == 200
    # Thousands: ~80,000 when this process had not imported the Agents SDK yet.
    assert gc.get_freeze_count() - before > 1_000


async def test_chat_stores_the_exchange_and_a_conversation_continues(
    client: httpx.AsyncClient, admin: psycopg.Connection
) -> None:
    first = (await send(client, "Add a task to water the plants")).json()
    conversation = first["conversation_id"]
    rows = stored(admin, conversation)
    assert [row[0] for row in rows] == ["user", "tool", "assistant"]
    assert rows[0][1] == "Add a task to water the plants"
    assert rows[1][2][0]["name"] == "add_task"
    assert json.loads(rows[1][1])["status"] == "created"
    assert rows[2][1] == first["response"]

    second = await send(client, "Show me all my tasks", conversation_id=conversation)
    assert second.json()["conversation_id"] == conversation
    assert len(stored(admin, conversation)) == 6
    title = admin.execute("select title from conversations where id = %s", (conversation,)).fetchone()
    assert title == ("Add a task to water the plants",)


async def test_another_users_conversation_is_not_found_like_a_missing_one(
    client: httpx.AsyncClient, admin: psycopg.Connection
) -> None:
    alices = (await send(client, "Add a task to buy milk")).json()["conversation_id"]
    before = admin.execute("select count(*) from messages").fetchone()
    others = await send(client, "Show me all my tasks", user="bob", conversation_id=alices)
    missing = await send(client, "Show me all my tasks", user="bob", conversation_id=alices + 1000)
    assert others.status_code == missing.status_code == 404
    assert others.json() == missing.json() == {"detail": "Conversation not found"}
    assert admin.execute("select count(*) from messages").fetchone() == before


@pytest.mark.parametrize(
    "body",
    [
        {"message": ""},
        {"message": "   "},
        {"message": "x" * 4001},
        {"message": "nul \x00 inside"},
        {"message": 42},
        {},
        {"message": "hi", "conversation_id": 0},
        {"message": "hi", "conversation_id": "1"},
        {"message": "hi", "conversation_id": 1.5},
        {"message": "hi", "conversation_id": 2**53},
        {"message": "hi", "user_id": "bob"},
    ],
)
async def test_bad_chat_bodies_are_422_and_store_nothing(
    client: httpx.AsyncClient, admin: psycopg.Connection, body: dict[str, Any]
) -> None:
    response = await client.post(chat_url(), json=body, headers=auth("alice"))
    assert response.status_code == 422
    assert admin.execute("select count(*) from conversations").fetchone() == (0,)


async def test_chat_needs_the_paths_own_token(client: httpx.AsyncClient) -> None:
    assert (await client.post(chat_url(), json={"message": "hi"})).status_code == 401
    response = await client.post(chat_url("bob"), json={"message": "hi"}, headers=auth("alice"))
    assert response.status_code == 403


async def test_chat_is_rate_limited_per_user(db_url: DbUrls) -> None:
    async with (
        running_app(make_settings(db_url, rate_limit_chat="2/minute")) as app,
        http_client(app) as client,
    ):
        for _ in range(2):
            assert (await send(client, "Hello")).status_code == 200
        limited = await send(client, "Hello")
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert (await send(client, "Hello", user="bob")).status_code == 200


async def test_the_chats_tool_writes_count_against_the_users_write_limit(db_url: DbUrls) -> None:
    settings = make_settings(db_url, rate_limit_writes="1/minute")
    async with running_app(settings) as app, http_client(app) as client:
        assert (await send(client, "Add a task to buy milk")).json()["tool_calls"][0]["result"][
            "status"
        ] == "created"
        second = (await send(client, "Add a task to buy eggs")).json()
        assert second["tool_calls"][0]["result"].startswith("Error executing tool add_task: too many changes")
        assert [task["title"] for task in await tasks_of(client)] == ["Buy milk"]


# --- streaming ------------------------------------------------------------------------


def events(text: str) -> list[tuple[str, Any]]:
    parsed = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        parsed.append((fields["event"], json.loads(fields["data"])))
    return parsed


async def test_streamed_chat_sends_deltas_tool_calls_and_the_ids(
    client: httpx.AsyncClient, admin: psycopg.Connection
) -> None:
    headers = {**auth("alice"), "Accept": "text/event-stream"}
    response = await client.post(chat_url(), json={"message": "Add a task to buy bread"}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    stream = events(response.text)
    names = [name for name, _ in stream]
    assert names[0] == "tool_call" and names[-1] == "done" and "delta" in names
    assert stream[0][1]["name"] == "add_task"
    done = stream[-1][1]
    text = "".join(data["text"] for name, data in stream if name == "delta")
    assert done["response"] == text
    assert done["tool_calls"] == [stream[0][1]]
    rows = admin.execute(
        "select id, role::text from messages where conversation_id = %s order by id",
        (done["conversation_id"],),
    ).fetchall()
    assert [role for _, role in rows] == ["user", "tool", "assistant"]
    assert (rows[0][0], rows[-1][0]) == (done["user_message_id"], done["message_id"])


# --- the real provider path, against a fake OpenAI-compatible server --------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with fake_provider() as provider:
        yield provider


def provider_settings(db_url: DbUrls, provider: FakeProvider, **overrides: object) -> Settings:
    return make_settings(
        db_url,
        chat_model="fake-model",
        openai_base_url=provider.url,
        openai_api_key=API_KEY,
        **overrides,
    )


@pytest.fixture
async def provider_app(db_url: DbUrls, provider: FakeProvider) -> AsyncIterator[FastAPI]:
    async with running_app(provider_settings(db_url, provider, chat_timeout=5)) as app:
        yield app


@pytest.fixture
async def provider_client(provider_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(provider_app) as client:
        yield client


def conversation_text(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What the model was given of the conversation in words: its users' and its own."""
    return [
        (m["role"], m["content"]) for m in messages if m["role"] in ("user", "assistant") and m.get("content")
    ]


def tool_names(request: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in request.get("tools", [])}


async def test_provider_model_calls_the_tools_through_mcp(
    provider_client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    provider.script(
        call("add_task", {"title": "Buy oat milk", "priority": "high", "tags": ["shopping"]}),
        say("Added it."),
    )
    response = await send(provider_client, "Please add oat milk, it's urgent")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == "Added it."
    [added] = body["tool_calls"]
    assert added["result"]["status"] == "created"
    [task] = await tasks_of(provider_client)
    assert (task["title"], task["priority"], task["tags"]) == ("Buy oat milk", "high", ["shopping"])

    first, second = provider.requests
    assert first["model"] == "fake-model"
    assert tool_names(first) == {"add_task", "list_tasks", "complete_task", "update_task", "delete_task"}
    # No tool takes a user id: the caller is the token's subject.
    assert "user_id" not in json.dumps(first["tools"])
    assert first["messages"][-1] == {"role": "user", "content": "Please add oat milk, it's urgent"}
    # The second call carries the tool's answer back to the model.
    assert second["messages"][-1]["role"] == "tool"
    assert json.loads(second["messages"][-1]["content"])["task_id"] == task["id"]
    # The provider gets its own key, never the caller's token.
    caller_token = auth("alice")["Authorization"].split()[1]
    for headers in provider.headers:
        assert headers["authorization"] == f"Bearer {API_KEY}"
        assert caller_token not in json.dumps(headers)


async def test_model_asking_for_another_users_task_gets_not_found(
    provider_client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    bobs = await add(provider_client, "Bob's secret plan", user="bob")
    provider.script(
        call("complete_task", {"task_id": bobs["id"]}),
        call("delete_task", {"task_id": bobs["id"]}),
        call("update_task", {"task_id": bobs["id"], "title": "pwned"}),
        say("Done."),
    )
    response = await send(provider_client, "complete, delete and rename task 1")
    assert response.status_code == 200
    results = [tool_call["result"] for tool_call in response.json()["tool_calls"]]
    assert results == [
        f"Error executing tool {name}: Task not found"
        for name in ("complete_task", "delete_task", "update_task")
    ]
    # What the model read is the same words: nothing of bob's task.
    assert "secret" not in json.dumps(provider.requests)
    [task] = await tasks_of(provider_client, user="bob")
    assert (task["title"], task["completed"]) == ("Bob's secret plan", False)


async def test_model_sending_a_user_id_is_refused_by_the_tools_schema(
    provider_client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    provider.script(
        call("add_task", {"title": "Planted task", "user_id": "bob"}),
        call("list_tasks", {"user_id": "bob"}),
        say("I could not."),
    )
    response = await send(provider_client, "add a task for bob")
    assert response.status_code == 200
    for tool_call in response.json()["tool_calls"]:
        assert isinstance(tool_call["result"], str)
        assert "user_id" in tool_call["result"]
    assert await tasks_of(provider_client, user="bob") == []
    assert await tasks_of(provider_client, user="alice") == []


async def test_history_is_given_to_the_model_bounded(db_url: DbUrls, provider: FakeProvider) -> None:
    settings = provider_settings(db_url, provider, chat_history_messages=3)
    async with running_app(settings) as app, http_client(app) as client:
        provider.script(call("add_task", {"title": "One"}), say("Added One."))
        conversation = (await send(client, "add One")).json()["conversation_id"]
        provider.script(say("Hello again."))
        await send(client, "hi", conversation_id=conversation)
        provider.script(say("Fine."))
        await send(client, "and now?", conversation_id=conversation)
        messages = provider.requests[0]["messages"]
    # The last 3 stored messages were: the tool's answer, "Added One.", "hi",
    # "Hello again." (4) -> the window starts at a user message: "hi", "Hello again.".
    said = [(m["role"], m.get("content")) for m in messages if m["role"] != "system"]
    assert said == [("user", "hi"), ("assistant", "Hello again."), ("user", "and now?")]


@pytest.mark.parametrize(
    ("step", "status", "retry_after"),
    [
        (Step(status=500, error_body={"error": {"message": "internal secret detail sk-leak"}}), 502, "10"),
        (Step(status=429, headers={"retry-after": "7"}), 502, "7"),
        (
            Step(status=401, error_body={"error": {"message": "Incorrect API key provided: sk-fake..."}}),
            502,
            None,
        ),
        (Step(text="late", delay=3), 504, "10"),
    ],
)
async def test_provider_failure_is_a_clean_502_or_504_and_the_message_is_kept(
    db_url: DbUrls,
    provider: FakeProvider,
    admin: psycopg.Connection,
    step: Step,
    status: int,
    retry_after: str | None,
) -> None:
    settings = provider_settings(db_url, provider, chat_timeout=1.5)
    async with running_app(settings) as app, http_client(app) as client:
        provider.script(call("add_task", {"title": "Before the failure"}), step)
        response = await send(client, "add something")
        assert response.status_code == status
        assert response.headers.get("Retry-After") == retry_after
        assert set(response.json()) == {"detail"}
        for secret in ("secret", "sk-", "Incorrect", "fake"):
            assert secret not in response.text
        [conversation] = admin.execute("select id from conversations").fetchone() or [None]
        rows = stored(admin, conversation)
        # The message, marked; the tool call that was made before the failure, kept.
        assert rows[0][0] == "user" and rows[0][3] == (
            "provider_timeout" if status == 504 else "provider_error"
        )
        assert [row[0] for row in rows[1:]] == ["tool"]
        assert [task["title"] for task in await tasks_of(client)] == ["Before the failure"]

        # The conversation still works, and the failed message is not replayed.
        await asyncio.sleep(0.1)
        provider.script(say("Back."))
        again = await send(client, "hello?", conversation_id=conversation)
        assert again.status_code == 200 and again.json()["response"] == "Back."
        said = [m.get("content") for m in provider.requests[-1]["messages"] if m["role"] == "user"]
        assert said == ["hello?"]


async def test_a_model_that_never_stops_calling_tools_is_cut_off(
    db_url: DbUrls, provider: FakeProvider
) -> None:
    settings = provider_settings(db_url, provider, chat_max_turns=3)
    async with running_app(settings) as app, http_client(app) as client:
        provider.script(*[call("list_tasks", {}) for _ in range(3)])
        response = await send(client, "loop")
        assert response.status_code == 502
        assert response.json() == {"detail": "The assistant did not finish within 3 steps"}


async def test_streamed_provider_reply_comes_in_deltas(
    provider_client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    provider.script(say("Here are three words"))
    headers = {**auth("alice"), "Accept": "text/event-stream"}
    response = await provider_client.post(chat_url(), json={"message": "talk"}, headers=headers)
    stream = events(response.text)
    deltas = [data["text"] for name, data in stream if name == "delta"]
    assert len(deltas) == 4
    assert "".join(deltas) == stream[-1][1]["response"] == "Here are three words"


async def test_streamed_provider_failure_ends_with_an_error_event(
    provider_client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    provider.script(Step(status=500))
    headers = {**auth("alice"), "Accept": "text/event-stream"}
    response = await provider_client.post(chat_url(), json={"message": "talk"}, headers=headers)
    assert response.status_code == 200
    assert events(response.text)[-1] == (
        "error",
        {"status": 502, "detail": "The assistant's model provider failed; try again later"},
    )


# --- the chat's own token for /mcp --------------------------------------------------------


async def test_chat_tokens_open_mcp_only_for_their_user_and_not_rest(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    tokens = app.state.mcp.chat_tokens
    token = tokens.mint("alice", ttl=60)
    rest = await client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})
    assert rest.status_code == 401
    other_app_token = type(tokens)(tokens._audience).mint("alice", ttl=60)
    expired = tokens.mint("alice", ttl=-1)
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    mcp_headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    for refused in (other_app_token, expired):
        answer = await client.post(
            "/mcp", json=initialize, headers={**mcp_headers, "Authorization": f"Bearer {refused}"}
        )
        assert answer.status_code == 401
    accepted = await client.post(
        "/mcp", json=initialize, headers={**mcp_headers, "Authorization": f"Bearer {token}"}
    )
    assert accepted.status_code == 200


# --- a conversation outlives the instance that began it ---------------------------------


async def test_a_conversation_continues_on_another_instance_and_after_a_restart(
    db_url: DbUrls, provider: FakeProvider
) -> None:
    """Two instances of the service on one database, and a third started after the first
    stopped: each is a new app (its own pool, its own chat-token key, nothing in memory
    from the others), so what carries the conversation is the database alone."""
    settings = provider_settings(db_url, provider)
    async with running_app(settings) as first_app, http_client(first_app) as first:
        provider.script(call("add_task", {"title": "Survive the restart"}), say("Added."))
        response = await send(first, "add it")
        assert response.status_code == 200, response.text
        conversation = response.json()["conversation_id"]
        async with running_app(settings) as second_app, http_client(second_app) as second:
            provider.script(say("Still here."))
            response = await send(second, "still there?", conversation_id=conversation)
            assert response.status_code == 200, response.text
    async with running_app(settings) as restarted, http_client(restarted) as client:
        provider.script(say("It is there."))
        response = await send(client, "is it there?", conversation_id=conversation)
        assert response.status_code == 200, response.text
    messages = provider.requests[0]["messages"]
    said = conversation_text(messages)
    assert said == [
        ("user", "add it"),
        ("assistant", "Added."),
        ("user", "still there?"),
        ("assistant", "Still here."),
        ("user", "is it there?"),
    ]
    # The tool call the first instance made is in the restarted one's history.
    assert any(m["role"] == "tool" and "Survive the restart" in m["content"] for m in messages)


# --- tracing, and a streaming client that leaves --------------------------------------


class _Recorder:
    """An Agents SDK trace processor that keeps the names of the traces it is given."""

    def __init__(self) -> None:
        self.traces: list[str] = []

    def on_trace_start(self, trace: Any) -> None:
        self.traces.append(trace.name)

    def on_trace_end(self, trace: Any) -> None: ...
    def on_span_start(self, span: Any) -> None: ...
    def on_span_end(self, span: Any) -> None: ...
    def shutdown(self) -> None: ...
    def force_flush(self) -> None: ...


@pytest.mark.parametrize("tracing", [False, True])
async def test_traces_go_to_the_vendor_only_when_asked_for(db_url: DbUrls, tracing: bool) -> None:
    from agents.tracing import get_trace_provider, set_trace_processors

    recorder = _Recorder()
    # In place of the SDK's exporter to OpenAI: what it would have been given.
    set_trace_processors([recorder])  # type: ignore[list-item]
    try:
        async with (
            running_app(make_settings(db_url, chat_tracing=tracing)) as app,
            http_client(app) as client,
        ):
            assert (await send(client, "Show me all my tasks")).status_code == 200
    finally:
        get_trace_provider().set_processors([])
    assert bool(recorder.traces) is tracing


async def test_a_streaming_client_that_leaves_still_gets_its_exchange_stored(
    db_url: DbUrls, provider: FakeProvider, admin: psycopg.Connection
) -> None:
    """The client hangs up after the first event; the run goes on, and its rows are the
    JSON answer's."""
    settings = provider_settings(db_url, provider, chat_timeout=10)
    provider.script(call("add_task", {"title": "Finished without me"}), Step(text="Done.", delay=0.5))
    body = json.dumps({"message": "add it"}).encode()
    headers = [
        (b"host", b"test"),
        (b"content-type", b"application/json"),
        (b"accept", b"text/event-stream"),
        (b"authorization", auth("alice")["Authorization"].encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": chat_url(),
        "raw_path": chat_url().encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }
    first_event = asyncio.Event()
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await first_event.wait()
        return {"type": "http.disconnect"}

    async def send_(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_event.set()

    async with running_app(settings) as app:
        await app(scope, receive, send_)
        chunks = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert b"event: done" not in chunks
        for _ in range(100):
            rows = admin.execute("select role::text from messages order by id").fetchall()
            if len(rows) == 3:
                break
            await asyncio.sleep(0.05)
    assert rows == [("user",), ("tool",), ("assistant",)]
    assert admin.execute("select content from messages where role = 'assistant'").fetchone() == ("Done.",)


def test_a_conversation_continues_after_the_process_restarts(
    db_url: DbUrls, provider: FakeProvider, tmp_path: Path
) -> None:
    """The same, with `uvicorn` processes: one serves the first message and is stopped
    (SIGTERM), a new one serves the next."""
    settings = provider_settings(db_url, provider)
    headers = auth("alice")
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    with live_server(settings, tmp_path / "first") as server:
        provider.script(call("add_task", {"title": "Outlive the process"}), say("Added."))
        first = httpx.post(
            f"{server.base_url}{chat_url()}", json={"message": "add it"}, headers=headers, timeout=30
        )
        assert first.status_code == 200, first.text
    conversation = first.json()["conversation_id"]
    with live_server(settings, tmp_path / "second") as server:
        provider.script(say("It is there."))
        body = {"message": "is it there?", "conversation_id": conversation}
        second = httpx.post(f"{server.base_url}{chat_url()}", json=body, headers=headers, timeout=30)
        assert second.status_code == 200, second.text
    messages = provider.requests[0]["messages"]
    said = conversation_text(messages)
    assert said == [("user", "add it"), ("assistant", "Added."), ("user", "is it there?")]
    assert any(m["role"] == "tool" and "Outlive the process" in m["content"] for m in messages)
