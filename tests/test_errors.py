"""One JSON error shape for every status, and database errors mapped in one place.

The database errors are provoked through routes that only this module's app has: they
run SQL as a user's transaction, the way the task routes do, and fail in chosen ways.
"""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import Request

from app.config import Settings
from tests.conftest import http_client, running_app
from tests.tokens import auth

ALICE = auth("alice")
MAX_BODY = 1024

# Each case: SQL run in alice's transaction, and the answer it must become.
SECRET_WORDS = "tasks_secret_constraint"
CASES: dict[str, tuple[list[str], int, str]] = {
    "policy_violation": (
        ["insert into tasks (user_id, title) values ('bob', 'not mine')"],
        403,
        "not allowed",
    ),
    "unique_violation": (
        [
            "do $$ begin raise exception using errcode = 'unique_violation', "
            f"constraint = '{SECRET_WORDS}', message = 'duplicate key violates {SECRET_WORDS}'; end $$"
        ],
        409,
        "conflicts with an existing resource",
    ),
    "serialization_failure": (
        [
            "do $$ begin raise exception using errcode = 'serialization_failure', "
            f"message = 'could not serialize access on {SECRET_WORDS}'; end $$"
        ],
        503,
        "a concurrent change conflicted, try again",
    ),
    # A statement PostgreSQL refuses for a reason no client can fix: a bug of ours.
    "undefined_column": (
        [f"select {SECRET_WORDS} from tasks"],
        500,
        "internal server error",
    ),
    "connection_loss": (
        ["select pg_terminate_backend(pg_backend_pid())"],
        503,
        "the database is unavailable, try again shortly",
    ),
    "statement_timeout": (
        ["select pg_sleep(3)"],
        503,
        "the database took too long to answer, try again",
    ),
}


async def run_case(case: str, request: Request) -> dict[str, str]:
    statements, _, _ = CASES[case]
    # The connection every request runs on (app/session.py), as the routes use it.
    async with request.app.state.user_sessions.connection("alice") as connection:
        for statement in statements:
            await connection.execute(statement)
    return {"ran": case}


async def crash(request: Request) -> None:
    raise RuntimeError(f"a bug that mentions {SECRET_WORDS}")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings.model_copy(update={"db_statement_timeout": 0.5, "max_body_size": MAX_BODY})
    async with running_app(settings) as app:
        app.add_api_route("/test/sql/{case}", run_case, methods=["POST"])
        async with http_client(app) as client:
            yield client


def assert_plain_json_error(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail"}
    for leak in (SECRET_WORDS, "Traceback", "sqlalchemy", "asyncpg", "pg_", "insert into", "select "):
        assert leak not in response.text
    return body["detail"]


@pytest.mark.parametrize("case", list(CASES))
async def test_database_errors_are_mapped_without_sql_or_names(client: httpx.AsyncClient, case: str) -> None:
    _, status, detail = CASES[case]
    response = await client.post(f"/test/sql/{case}")
    assert assert_plain_json_error(response, status) == detail
    if status == 503:
        assert response.headers["Retry-After"].isdigit()
    # The pool is fine afterwards, a lost connection included.
    assert (await client.get("/api/alice/tasks", headers=ALICE)).status_code == 200


async def test_an_unexpected_error_is_a_json_500_with_the_request_id(settings: Settings) -> None:
    async with running_app(settings) as app:
        app.add_api_route("/test/crash", crash, methods=["GET"])
        # As a server would: the answer is sent, then the error goes on to the server's log.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/test/crash", headers={"X-Request-ID": "crash-1"})
    assert assert_plain_json_error(response, 500) == "internal server error"
    assert response.headers["X-Request-ID"] == "crash-1"


async def test_unknown_route_is_a_json_404(client: httpx.AsyncClient) -> None:
    assert assert_plain_json_error(await client.get("/nowhere"), 404) == "Not Found"


async def test_wrong_method_is_a_json_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/alice/tasks", headers=ALICE)
    assert assert_plain_json_error(response, 405) == "Method Not Allowed"
    assert response.headers["Allow"] == "GET, POST"


async def test_a_body_over_the_limit_is_a_json_413_by_its_declared_length(client: httpx.AsyncClient) -> None:
    body = b'{"title": "' + b"x" * MAX_BODY + b'"}'
    response = await client.post(
        "/api/alice/tasks", content=body, headers={**ALICE, "Content-Type": "application/json"}
    )
    assert assert_plain_json_error(response, 413) == f"request body is larger than {MAX_BODY} bytes"
    # Also where no route reads a body.
    assert_plain_json_error(await client.post("/nowhere", content=body), 413)


async def test_a_streamed_body_over_the_limit_is_a_json_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"title": "'
        for _ in range(4):
            yield b"x" * (MAX_BODY // 2)
        yield b'"}'

    # No Content-Length: the limit is found while reading.
    response = await client.post(
        "/api/alice/tasks", content=chunks(), headers={**ALICE, "Content-Type": "application/json"}
    )
    assert assert_plain_json_error(response, 413) == f"request body is larger than {MAX_BODY} bytes"
    assert (await client.get("/api/alice/tasks", headers=ALICE)).json() == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"title=Buy+milk", "application/x-www-form-urlencoded"),
        (b"Buy milk", "text/plain"),
        (b'{"title": "Buy milk"', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"\x80", "application/json"),
    ],
)
async def test_a_body_that_is_not_json_is_a_422_listing_the_error(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await client.post(
        "/api/alice/tasks", content=content, headers={**ALICE, "Content-Type": content_type}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, list)
    assert detail
    assert all(error["loc"][0] == "body" for error in detail)
    assert (await client.get("/api/alice/tasks", headers=ALICE)).json() == []
