"""The MCP server at /mcp, through the official MCP client (`mcp`'s Streamable HTTP
transport): in process (httpx2's ASGITransport, the app's real middleware and a real
database), and once against `todo-api serve` over a socket. What a tool changed is read
back through REST, and as the superuser, which row-level security does not bind."""

import asyncio
import json
import logging
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import psycopg
import pytest
from fastapi import FastAPI
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from app.models import TaskPublic
from app.tools.tasks import Task
from tests.conftest import DbUrls, http_client, make_settings, running_app
from tests.live_server import free_port
from tests.test_cli import TODO_API, cli_environment, interrupt, serving
from tests.test_jwks import AUDIENCE, ED, ISSUER
from tests.tokens import auth, forge, make_token

TOOLS = {"add_task", "list_tasks", "complete_task", "update_task", "delete_task"}
# What a client reads for another user's task id, and for one that does not exist.
NOT_FOUND = "Error executing tool {}: Task not found"
METADATA_PATH = "/.well-known/oauth-protected-resource/mcp"
OTHER_SECRET = "another-secret-that-is-long-enough-0123456789"


@asynccontextmanager
async def mcp_session(
    app: FastAPI, sub: str = "alice", *, mode: str = "auto", url: str = "http://test/mcp"
) -> AsyncIterator[Client]:
    """The official client, with `sub`'s token, talking to `app` in process."""
    headers = {"Authorization": f"Bearer {make_token(sub)}"}
    async with (
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    return result.structured_content


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    """The error text of a call that must fail."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    assert result.structured_content is None
    text = "".join(getattr(block, "text", "") for block in result.content)
    assert "Traceback" not in text
    return text


def rows(admin: psycopg.Connection, user: str | None = None) -> str:
    """The rows of `user` (everyone's if None) as the database stores them: tasks, tags
    and the links between them, as JSON text."""
    where = "user_id = %(u)s" if user is not None else "true"
    row = admin.execute(
        "select json_build_object("
        f" 'tasks', (select coalesce(json_agg(t order by t.user_id, t.id), '[]') from tasks t where {where}),"
        f" 'tags', (select coalesce(json_agg(g order by g.user_id, g.id), '[]') from tags g where {where}),"
        " 'task_tags', (select coalesce(json_agg(l order by l.user_id, l.task_id, l.tag_id), '[]')"
        f"  from task_tags l where {where}))::text",
        {"u": user},
    ).fetchone()
    assert row is not None
    return str(row[0])


async def create(client: httpx.AsyncClient, user: str, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/api/{user}/tasks", json=body, headers=auth(user))
    assert response.status_code == 201, response.text
    return dict(response.json())


def rpc(tool: str, **arguments: Any) -> dict[str, Any]:
    """A tools/call as a client with no MCP library sends it."""
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


# --- the tools' schemas ----------------------------------------------------------------


def test_a_listed_task_is_taskpublic_without_its_owner() -> None:
    assert list(Task.__annotations__) == [name for name in TaskPublic.model_fields if name != "user_id"]


async def test_no_tool_takes_or_shows_a_user_id_and_each_refuses_unknown_arguments(app: FastAPI) -> None:
    """Under the handshake protocol (2025) and the per-request one (2026) alike."""
    versions = set()
    for mode in ("legacy", "auto"):
        async with mcp_session(app, mode=mode) as client:
            versions.add(client.protocol_version)
            tools = (await client.list_tools()).tools
        assert {tool.name for tool in tools} == TOOLS
        for tool in tools:
            assert "user_id" not in tool.model_dump_json(by_alias=True), tool.name
            assert tool.input_schema["additionalProperties"] is False, tool.name
    assert len(versions) == 2


# --- each tool, for the caller only ----------------------------------------------------


async def test_each_tool_changes_the_callers_tasks_and_no_one_elses(
    app: FastAPI, client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    await create(client, "bob", title="Pay bills", tags=["Work"], due_at="2027-01-01T00:00:00Z")
    bobs = rows(admin_conn, "bob")
    alice = auth("alice")

    async with mcp_session(app, "alice") as mcp:
        added = await call(
            mcp,
            "add_task",
            title="  Pay bills ",
            description="gas",
            priority="high",
            due_at="2027-01-31T09:30:00+02:00",
            tags=["Home", "home", "work"],
            recurrence="monthly",
        )
        assert added == {"task_id": added["task_id"], "status": "created", "title": "Pay bills"}
        added_task = (await client.get(f"/api/alice/tasks/{added['task_id']}", headers=alice)).json()
        assert added_task | {"created_at": None, "updated_at": None} == {
            "id": added["task_id"],
            "user_id": "alice",
            "title": "Pay bills",
            "description": "gas",
            "completed": False,
            "priority": "high",
            "due_at": "2027-01-31T07:30:00.000000Z",
            "tags": ["Home", "work"],
            "recurrence": "monthly",
            "next_task_id": None,
            "created_at": None,
            "updated_at": None,
        }
        # A text that is JSON null is that text (the SDK would make it null); a list sent
        # as JSON text, as some clients send them, is a list.
        call_mom = await call(mcp, "add_task", title="Call mom", description="null", tags='["x", "y"]')
        task = (await client.get(f"/api/alice/tasks/{call_mom['task_id']}", headers=alice)).json()
        assert (task["description"], task["tags"]) == ("null", ["x", "y"])

        page = await call(mcp, "list_tasks", sort="title")
        assert [item["title"] for item in page["tasks"]] == ["Call mom", "Pay bills"]
        assert page["total"] == 2
        assert page["tasks"][1] == {key: value for key, value in added_task.items() if key != "user_id"}
        # Bob's tag of the same name, and his task of the same title, are his.
        assert [item["id"] for item in (await call(mcp, "list_tasks", tag=["WORK"]))["tasks"]] == [
            added["task_id"]
        ]
        assert (await call(mcp, "list_tasks", q="bills", sort="relevance"))["total"] == 1
        assert (await call(mcp, "list_tasks", limit=1, offset=1, sort="title"))["tasks"][0][
            "title"
        ] == "Pay bills"

        updated = await call(
            mcp, "update_task", task_id=call_mom["task_id"], title="Call mom tonight", tags=["x"]
        )
        assert updated == {"task_id": call_mom["task_id"], "status": "updated", "title": "Call mom tonight"}
        cleared = await call(mcp, "update_task", task_id=call_mom["task_id"], tags=[], clear=["description"])
        assert cleared["status"] == "updated"
        task = (await client.get(f"/api/alice/tasks/{call_mom['task_id']}", headers=alice)).json()
        assert (task["title"], task["description"], task["tags"]) == ("Call mom tonight", None, [])

        completed = await call(mcp, "complete_task", task_id=added["task_id"])
        next_id = completed.pop("next_task_id")
        assert completed == {"task_id": added["task_id"], "status": "completed", "title": "Pay bills"}
        following = (await client.get(f"/api/alice/tasks/{next_id}", headers=alice)).json()
        assert (following["completed"], following["due_at"]) == (False, "2027-02-28T07:30:00.000000Z")

        deleted = await call(mcp, "delete_task", task_id=call_mom["task_id"])
        assert deleted == {"task_id": call_mom["task_id"], "status": "deleted", "title": "Call mom tonight"}
        assert (await client.get(f"/api/alice/tasks/{call_mom['task_id']}", headers=alice)).status_code == 404

        pending = await call(mcp, "list_tasks", status="pending")
        assert [item["id"] for item in pending["tasks"]] == [next_id]

    listed = (await client.get("/api/alice/tasks", headers=alice)).json()
    assert sorted(item["id"] for item in listed) == sorted([added["task_id"], next_id])
    assert rows(admin_conn, "bob") == bobs


async def test_another_users_task_is_not_found_as_a_missing_one_is_and_stays_as_it_was(
    app: FastAPI, client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    secret = await create(
        client, "alice", title="Secret plan", tags=["private"], due_at="2027-01-01T00:00:00Z"
    )
    missing = secret["id"] + 1000
    before = rows(admin_conn)
    async with mcp_session(app, "bob") as mcp:
        for tool, arguments in [
            ("complete_task", {}),
            ("update_task", {"title": "mine now"}),
            ("update_task", {"tags": ["private"]}),
            ("update_task", {"clear": ["due_at"]}),
            ("delete_task", {}),
        ]:
            foreign = await refused(mcp, tool, task_id=secret["id"], **arguments)
            absent = await refused(mcp, tool, task_id=missing, **arguments)
            assert foreign == absent == NOT_FOUND.format(tool)
        assert await call(mcp, "list_tasks", q="secret") == {"tasks": [], "total": 0}
        assert await call(mcp, "list_tasks", tag=["private"]) == {"tasks": [], "total": 0}
    assert rows(admin_conn) == before


async def test_unknown_and_invalid_arguments_are_refused_and_write_nothing(
    app: FastAPI, client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    task_id = (await create(client, "alice", title="Buy milk", description="2 litres"))["id"]
    await create(client, "bob", title="Bob's")
    before = rows(admin_conn)
    cases: list[tuple[str, dict[str, Any], str]] = [
        # An owner among the arguments is refused, never ignored.
        ("add_task", {"title": "x", "user_id": "bob"}, "user_id"),
        ("list_tasks", {"user_id": "bob"}, "user_id"),
        ("complete_task", {"task_id": task_id, "user_id": "bob"}, "user_id"),
        ("update_task", {"task_id": task_id, "title": "y", "user_id": "bob"}, "user_id"),
        ("delete_task", {"task_id": task_id, "user_id": "bob"}, "user_id"),
        ("add_task", {"title": "x", "owner": "bob"}, "owner"),
        # The REST models' rules.
        ("add_task", {"title": "   "}, "title"),
        ("add_task", {"title": "x" * 201}, "title"),
        ("add_task", {"title": "x", "description": "d" * 1001}, "description"),
        ("add_task", {"title": "x", "tags": [f"tag {n}" for n in range(21)]}, "tags"),
        ("add_task", {"title": "x", "tags": ["bad\ttag"]}, "tags"),
        ("add_task", {"title": "x", "priority": "urgent"}, "priority"),
        ("add_task", {"title": "x", "due_at": "2027-03-01T09:30:00"}, "due_at"),
        ("add_task", {"title": "x", "due_at": 1_800_000_000}, "due_at"),
        ("add_task", {"title": "x", "recurrence": "daily"}, "recurrence"),
        ("update_task", {"task_id": task_id, "completed": "yes"}, "completed"),
        ("update_task", {"task_id": task_id, "recurrence": "daily", "clear": ["due_at"]}, "recurrence"),
        ("update_task", {"task_id": task_id, "description": "d", "clear": ["description"]}, "description"),
        ("update_task", {"task_id": task_id, "clear": ["title"]}, "clear"),
        ("update_task", {"task_id": task_id}, "nothing to change"),
        ("complete_task", {"task_id": str(task_id)}, "task_id"),
        ("complete_task", {"task_id": 0}, "task_id"),
        ("list_tasks", {"sort": "relevance"}, "relevance needs q"),
        ("list_tasks", {"limit": 101}, "limit"),
    ]
    async with mcp_session(app, "alice") as mcp:
        for tool, arguments, named in cases:
            message = await refused(mcp, tool, **arguments)
            assert named in message, (tool, arguments, message)
    assert rows(admin_conn) == before


# --- authentication ------------------------------------------------------------------


async def test_no_token_or_a_bad_one_is_401_with_a_bearer_challenge_and_no_token_is_logged(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = {
        "missing bearer token": None,
        "malformed authorization header": f"Basic {make_token()}",
        "token signature is invalid": f"Bearer {make_token(secret=OTHER_SECRET)}",
        "token has expired": f"Bearer {make_token(ttl=-120)}",
        "token algorithm is not accepted": "Bearer " + forge({"alg": "none"}, {"sub": "alice"}, signature=""),
        "malformed token": "Bearer not-a-jwt",
    }
    for reason, header in bad.items():
        headers = MCP_HEADERS | ({"Authorization": header} if header else {})
        response = await client.post("/mcp", json=rpc("add_task", title="sneaked in"), headers=headers)
        assert response.status_code == 401, (reason, response.text)
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer error="invalid_token"')
        assert f'resource_metadata="http://127.0.0.1:8000{METADATA_PATH}"' in challenge
        assert f"authentication failed: {reason} (client" in caplog.text
        if header:
            assert header.split()[1] not in caplog.text
    assert admin_conn.execute("select count(*) from tasks").fetchone() == (0,)

    # The same call with a good token is served; its token is not logged either.
    token = make_token("alice")
    response = await client.post(
        "/mcp",
        json=rpc("add_task", title="let in"),
        headers=MCP_HEADERS | {"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    assert response.json()["result"]["structuredContent"]["title"] == "let in"
    assert token not in caplog.text
    assert admin_conn.execute("select user_id, title from tasks").fetchall() == [("alice", "let in")]

    # Stateless, the server never sends anything on its own: no event stream to hold open.
    stream = await client.get("/mcp", headers={"Accept": "text/event-stream"} | auth("alice"))
    assert (stream.status_code, stream.headers["Allow"]) == (405, "POST")

    metadata = await client.get(METADATA_PATH)
    assert metadata.status_code == 200
    assert metadata.json() == {
        "resource": "http://127.0.0.1:8000/mcp",
        # No JWT_ISSUER: the service, which signs `todo-api token`'s tokens itself.
        "authorization_servers": ["http://127.0.0.1:8000/"],
        "bearer_methods_supported": ["header"],
    }
    # The access log names the route, as for REST.
    assert re.search(r"POST /mcp 401 ", caplog.text)
    assert re.search(f"GET {re.escape(METADATA_PATH)} 200 ", caplog.text)


async def test_a_provider_that_cannot_be_reached_is_503_with_retry_after_not_401(db_url: DbUrls) -> None:
    """As for REST: the token may be good, so the client should retry it, not drop it."""
    settings = make_settings(
        db_url,
        jwt_secret=None,
        jwks_url=f"http://127.0.0.1:{free_port()}/jwks",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    async with running_app(settings) as app, http_client(app) as client:
        response = await client.post(
            "/mcp", json=rpc("list_tasks"), headers=MCP_HEADERS | {"Authorization": f"Bearer {ED.sign()}"}
        )
        assert response.status_code == 503
        assert response.json() == {"detail": "the token key source is unavailable, try again shortly"}
        assert int(response.headers["Retry-After"]) >= 1
        assert "WWW-Authenticate" not in response.headers
        # The identity provider issues the tokens: the metadata says so.
        metadata = (await client.get(METADATA_PATH)).json()
        assert metadata["authorization_servers"] == [f"{ISSUER}/"]


# --- hosts, origins, rate limits, database errors ------------------------------------------


async def test_a_host_or_origin_not_allowed_is_refused_before_any_tool_runs(
    app: FastAPI, client: httpx.AsyncClient, db_url: DbUrls, admin_conn: psycopg.Connection
) -> None:
    headers = MCP_HEADERS | auth("alice")
    # ALLOWED_HOSTS names hosts: the app's own check answers first, in JSON.
    response = await client.post(
        "/mcp", json=rpc("add_task", title="x"), headers=headers | {"Host": "evil.example"}
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "Invalid host header"}

    # Any Host allowed (the embedded default): /mcp still answers only loopback and
    # HOST (DNS-rebinding protection), and browsers only from allowed origins.
    settings = make_settings(db_url, allowed_hosts=["*"], cors_origins=["https://app.example.com"])
    async with running_app(settings) as open_app, http_client(open_app) as open_client:
        # The SDK's refusals are in plain text: sent as JSON, as every other refusal.
        for extra, status, detail in [
            ({"Host": "evil.example"}, 421, "Invalid Host header"),
            ({"Host": "evil.example:8000"}, 421, "Invalid Host header"),
            ({"Host": "localhost:8000", "Origin": "http://evil.example"}, 403, "Invalid Origin header"),
            ({"Host": "localhost:8000", "Content-Type": "text/plain"}, 400, "Invalid Content-Type header"),
            ({"Host": "127.0.0.1:8000", "Origin": "https://app.example.com"}, 200, None),
            ({"Host": "localhost:8000", "Origin": "http://localhost:6274"}, 200, None),
        ]:
            response = await open_client.post(
                "/mcp",
                content=json.dumps(rpc("add_task", title=str(extra))),
                headers=headers | {"Content-Type": "application/json"} | extra,
            )
            assert response.status_code == status, (extra, response.text)
            assert response.headers["content-type"].startswith("application/json"), extra
            if detail is not None:
                assert response.json() == {"detail": detail}
                assert int(response.headers["content-length"]) == len(response.content)
    assert [title for (title,) in admin_conn.execute("select title from tasks order by id")] == [
        str({"Host": "127.0.0.1:8000", "Origin": "https://app.example.com"}),
        str({"Host": "localhost:8000", "Origin": "http://localhost:6274"}),
    ]


async def test_tool_writes_count_against_the_users_write_limit_with_the_rest_ones(
    db_url: DbUrls, admin_conn: psycopg.Connection
) -> None:
    settings = make_settings(db_url, rate_limit_writes="3/minute")
    async with running_app(settings) as app, http_client(app) as client:
        await create(client, "alice", title="by REST")
        async with mcp_session(app, "alice") as mcp:
            await call(mcp, "add_task", title="one")
            await call(mcp, "add_task", title="two")
            assert "too many changes, slow down" in await refused(mcp, "add_task", title="three")
            # Reads are not writes.
            assert (await call(mcp, "list_tasks"))["total"] == 3
        assert (
            await client.post("/api/alice/tasks", json={"title": "four"}, headers=auth("alice"))
        ).status_code == 429
        async with mcp_session(app, "bob") as mcp:
            await call(mcp, "add_task", title="bob's own limit")
    assert admin_conn.execute("select count(*) from tasks").fetchone() == (4,)


async def test_database_errors_in_a_tool_say_what_rest_says_without_sql(
    db_url: DbUrls, admin_conn: psycopg.Connection
) -> None:
    settings = make_settings(db_url, db_lock_timeout=0.2)
    async with running_app(settings) as app, http_client(app) as client:
        recurring = await create(
            client, "alice", title="Water plants", due_at="2027-01-01T08:00:00Z", recurrence="weekly"
        )
        before = rows(admin_conn)
        async with mcp_session(app, "alice") as mcp:
            # A check constraint: the field it is about, not its name.
            message = await refused(mcp, "update_task", task_id=recurring["id"], clear=["due_at"])
            assert message == "Error executing tool update_task: recurrence: A recurring task needs a due_at"
            # Another transaction holds the row: a lock timeout, which is worth a retry.
            with admin_conn.transaction():
                admin_conn.execute("select 1 from tasks where id = %s for update", [recurring["id"]])
                message = await refused(mcp, "complete_task", task_id=recurring["id"])
            assert message == "Error executing tool complete_task: the data is busy, try again"
            assert rows(admin_conn) == before
            assert (await call(mcp, "complete_task", task_id=recurring["id"]))["status"] == "completed"


# --- the real `todo-api serve` -----------------------------------------------------------


async def test_the_official_client_against_todo_api_serve(tmp_path: Path) -> None:
    """Over a socket, on the embedded default, with tokens from `todo-api token`."""
    data_dir = tmp_path / "data"
    env = cli_environment(data_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    async def token(user: str) -> str:
        command = [*TODO_API, "token", user]
        done = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    with serving(data_dir, port) as server:
        alice, bob = await token("alice"), await token("bob")

        @asynccontextmanager
        async def session(token: str) -> AsyncIterator[Client]:
            async with (
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
                Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
            ):
                yield client

        async with session(alice) as mcp:
            tools = (await mcp.list_tools()).tools
            assert {tool.name for tool in tools} == TOOLS
            assert "user_id" not in json.dumps([tool.model_dump(mode="json") for tool in tools])
            added = await call(mcp, "add_task", title="Buy groceries", tags=["errands"])
            doomed = await call(mcp, "add_task", title="Call the plumber")
            assert (await call(mcp, "update_task", task_id=added["task_id"], priority="high"))[
                "status"
            ] == "updated"
            assert (await call(mcp, "delete_task", task_id=doomed["task_id"]))["status"] == "deleted"
            assert (await call(mcp, "list_tasks"))["total"] == 1
        async with httpx.AsyncClient(base_url=base) as rest:
            listed = (await rest.get("/api/alice/tasks", headers={"Authorization": f"Bearer {alice}"})).json()
            assert [(task["id"], task["title"], task["tags"], task["priority"]) for task in listed] == [
                (added["task_id"], "Buy groceries", ["errands"], "high")
            ]
            unauthenticated = await rest.post("/mcp", json=rpc("list_tasks"), headers=MCP_HEADERS)
            assert unauthenticated.status_code == 401
        async with session(bob) as mcp:
            assert await call(mcp, "list_tasks") == {"tasks": [], "total": 0}
            for tool, arguments in (
                ("complete_task", {}),
                ("update_task", {"title": "pwned"}),
                ("delete_task", {}),
            ):
                assert await refused(mcp, tool, task_id=added["task_id"], **arguments) == NOT_FOUND.format(
                    tool
                )
        async with session(alice) as mcp:
            [task] = (await call(mcp, "list_tasks"))["tasks"]
            assert (task["title"], task["completed"]) == ("Buy groceries", False)
            assert (await call(mcp, "complete_task", task_id=added["task_id"]))["status"] == "completed"
        output = interrupt(server)
    assert re.search(r"POST /mcp 200 ", output)
    assert alice not in output
    assert bob not in output
