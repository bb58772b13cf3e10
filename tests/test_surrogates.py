"""A lone UTF-16 surrogate: JSON's "\\ud800" decodes to one, and no UTF-8 text can hold it.

Wherever one can arrive (a task's text, a sign-up, a token's subject), the answer is a
4xx that names what was refused, never a 500, and nothing is written. Percent-encoded
bytes that are not UTF-8 (%ED%A0%80 would be a surrogate) never become one: the server
decodes them to U+FFFD (tests/test_attacks.py sends them to a real server)."""

import json
from typing import Any

import httpx
import psycopg

from tests.tokens import auth

ALICE = auth("alice")


def raw_json(body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The request arguments for `body` as JSON with \\u escapes, which is how a lone
    surrogate travels (httpx's json= writes UTF-8, and cannot)."""
    return {
        "content": json.dumps(body).encode(),
        "headers": {"Content-Type": "application/json", **(headers or {})},
    }


def rows(admin_conn: psycopg.Connection, table: str) -> list[str]:
    """Every row of `table` as JSON text, read as the superuser (no row-level security)."""
    return [row[0] for row in admin_conn.execute(f"select row_to_json(t)::text from {table} t order by 1")]


# --- the 422 handler ------------------------------------------------------------------


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
