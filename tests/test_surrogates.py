"""A lone UTF-16 surrogate: JSON's "\\ud800" decodes to one, and no UTF-8 text can hold it.

Wherever one can arrive (a task's text, a sign-up, a token's subject), the answer is a
4xx that names what was refused, never a 500, and nothing is written. Percent-encoded
bytes that are not UTF-8 (%ED%A0%80 would be a surrogate) never become one: the server
decodes them to U+FFFD (tests/test_attacks.py sends them to a real server)."""

import json
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import ValidationError
from sqlmodel import SQLModel

from app.models import AccountCreate, TaskCreate, TaskReplace, TaskUpdate
from tests.tokens import auth, forge

ALICE = auth("alice")
PASSWORD = "correct horse battery"
REQUEST_MODELS: list[type[SQLModel]] = [TaskCreate, TaskReplace, TaskUpdate, AccountCreate]


def raw_json(body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The request arguments for `body` as JSON with \\u escapes, which is how a lone
    surrogate travels (httpx's json= writes UTF-8, and cannot)."""
    return {
        "content": json.dumps(body).encode(),
        "headers": {"Content-Type": "application/json", **(headers or {})},
    }


def surrogate_error(field: str, sent: str) -> dict[str, Any]:
    """The 422 for `sent` in `field`: the field named, the input echoed with U+FFFD (but
    never a password)."""
    position = sent.index("\ud800")
    error = {
        "type": "string_unicode",
        "loc": ["body", field],
        "msg": f"String should be valid Unicode, but has a lone surrogate at position {position}",
        "input": sent.replace("\ud800", "\ufffd"),
        "ctx": {"position": position},
    }
    if field == "password":
        del error["input"]
    return {"detail": [error]}


def rows(admin_conn: psycopg.Connection, table: str) -> list[str]:
    """Every row of `table` as JSON text, read as the superuser (no row-level security)."""
    return [row[0] for row in admin_conn.execute(f"select row_to_json(t)::text from {table} t order by 1")]


# --- request bodies --------------------------------------------------------------------


def text_fields(model: type[SQLModel]) -> list[str]:
    """The fields of `model` that its JSON schema says take a string."""
    properties = model.model_json_schema()["properties"]
    return [
        name
        for name, schema in properties.items()
        if "string" in [schema.get("type"), *(branch.get("type") for branch in schema.get("anyOf", []))]
    ]


@pytest.mark.parametrize("model", REQUEST_MODELS, ids=[model.__name__ for model in REQUEST_MODELS])
def test_every_text_field_of_a_request_body_refuses_a_lone_surrogate(model: type[SQLModel]) -> None:
    """A guard for fields added later: each one that takes text refuses a surrogate with
    the error the route tests below expect."""
    assert text_fields(model)
    for field in text_fields(model):
        with pytest.raises(ValidationError) as refused:
            model.model_validate({field: "x\ud800"})
        errors = [error for error in refused.value.errors() if error["loc"] == (field,)]
        assert [(error["type"], error["ctx"]) for error in errors] == [("string_unicode", {"position": 1})], (
            field
        )


# --- task bodies -----------------------------------------------------------------------

TASK_WRITES = [
    ("POST", "title", {}),
    ("POST", "description", {"title": "ok"}),
    ("PUT", "title", {}),
    ("PUT", "description", {"title": "ok"}),
    ("PATCH", "title", {}),
    ("PATCH", "description", {}),
]


@pytest.mark.parametrize(
    ("method", "field", "rest"), TASK_WRITES, ids=[f"{m} {f}" for m, f, _ in TASK_WRITES]
)
async def test_a_lone_surrogate_in_a_task_field_is_422_naming_it_and_writes_nothing(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection, method: str, field: str, rest: dict[str, Any]
) -> None:
    existing = await client.post(
        "/api/alice/tasks", json={"title": "Buy milk", "description": "2 litres"}, headers=ALICE
    )
    path = "/api/alice/tasks" + ("" if method == "POST" else f"/{existing.json()['id']}")
    before = rows(admin_conn, "tasks")
    sent = "to do \ud800 soon"
    response = await client.request(method, path, **raw_json({**rest, field: sent}, ALICE))
    assert response.status_code == 422
    assert response.json() == surrogate_error(field, sent)
    assert rows(admin_conn, "tasks") == before


async def test_a_422_echoes_any_input_even_one_no_validator_of_ours_looked_at(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """The 422 handler itself makes every error writable: here a field name and a boolean
    that hold surrogates, which pydantic refuses before any text field is looked at."""
    response = await client.post("/api/alice/tasks", **raw_json({"title": "ok", "\ud800x": 1}, ALICE))
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "string_unicode",
                "loc": ["body"],
                "msg": "Input should be a valid string, unable to parse raw data as a unicode string",
                "input": "\ufffdx",  # the field's name
            }
        ]
    }
    created = await client.post("/api/alice/tasks", json={"title": "Buy milk"}, headers=ALICE)
    response = await client.put(
        f"/api/alice/tasks/{created.json()['id']}",
        **raw_json({"title": "ok", "completed": "\ud800"}, ALICE),
    )
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "bool_type",
                "loc": ["body", "completed"],
                "msg": "Input should be a valid boolean",
                "input": "\ufffd",
            }
        ]
    }
    assert [json.loads(row)["title"] for row in rows(admin_conn, "tasks")] == ["Buy milk"]


# --- built-in accounts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "sent"),
    [("name", "Alice \ud800"), ("email", "alice\ud800@example.com"), ("password", PASSWORD + "\ud800")],
    ids=["name", "email", "password"],
)
async def test_register_refuses_a_lone_surrogate_naming_the_field_and_writes_nothing(
    api: httpx.AsyncClient, admin_conn: psycopg.Connection, field: str, sent: str
) -> None:
    body = {"email": "alice@example.com", "password": PASSWORD, "name": "Alice", field: sent}
    response = await api.post("/api/auth/register", **raw_json(body))
    assert response.status_code == 422
    assert response.json() == surrogate_error(field, sent)
    assert rows(admin_conn, "accounts") == rows(admin_conn, "account_passwords") == []


@pytest.mark.parametrize(
    "request_args",
    [
        {
            "content": b"username=alice%ED%A0%80%40example.com&password=correct+horse+battery",
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        },
        {
            "files": {
                "username": (None, b"alice\xed\xa0\x80@example.com"),
                "password": (None, PASSWORD.encode()),
            }
        },
    ],
    ids=["urlencoded", "multipart"],
)
async def test_log_in_with_surrogate_bytes_in_the_email_is_an_ordinary_401(
    api: httpx.AsyncClient, admin_conn: psycopg.Connection, request_args: dict[str, Any]
) -> None:
    """A form carries bytes, not JSON escapes: bytes that would encode a surrogate are not
    UTF-8, and the form parser decodes them to something else, an email no one has."""
    account = {"email": "alice@example.com", "password": PASSWORD, "name": "Alice"}
    assert (await api.post("/api/auth/register", json=account)).status_code == 201
    before = rows(admin_conn, "accounts"), rows(admin_conn, "account_passwords")
    response = await api.post("/api/auth/token", **request_args)
    assert response.status_code == 401
    assert response.json() == {"detail": "incorrect email or password"}
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (rows(admin_conn, "accounts"), rows(admin_conn, "account_passwords")) == before


# --- tokens ----------------------------------------------------------------------------

SURROGATE_SUBJECT = forge({"alg": "HS256", "typ": "JWT"}, {"sub": "alice\ud800", "exp": 9999999999})
NOT_UNICODE = "token 'sub' is not valid Unicode text"


async def test_a_token_whose_subject_has_a_lone_surrogate_is_401_and_writes_nothing(
    api: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    headers = {"Authorization": f"Bearer {SURROGATE_SUBJECT}"}
    for method, path in [("POST", "/api/alice/tasks"), ("GET", "/api/alice/tasks"), ("GET", "/api/auth/me")]:
        response = await api.request(method, path, json={"title": "x"}, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json() == {"detail": NOT_UNICODE}
        assert (
            response.headers["WWW-Authenticate"]
            == f'Bearer error="invalid_token", error_description="{NOT_UNICODE}"'
        )
    assert rows(admin_conn, "tasks") == []
