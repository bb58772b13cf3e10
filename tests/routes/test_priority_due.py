"""Priorities and due dates: the fields, their bad inputs, the filters and sorts that
use them, and the migration that added them to existing tasks."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from app.migrate import downgrade, upgrade
from tests.conftest import DbUrls
from tests.tokens import auth

ALICE = auth("alice")
PATH = "/api/alice/tasks"


async def create(client: httpx.AsyncClient, title: str, **fields: Any) -> dict[str, Any]:
    response = await client.post(PATH, json={"title": title, **fields}, headers=ALICE)
    assert response.status_code == 201, response.text
    return dict(response.json())


def iso(moment: datetime) -> str:
    return moment.isoformat()


NOW = datetime.now(UTC)


async def test_a_task_has_a_priority_and_a_due_date_answered_in_utc(client: httpx.AsyncClient) -> None:
    plain = await create(client, "plain")
    assert plain["priority"] == "medium" and plain["due_at"] is None
    due = await create(client, "due", priority="high", due_at="2027-03-01T09:30:00+02:00")
    assert due["priority"] == "high"
    assert due["due_at"] == "2027-03-01T07:30:00.000000Z"
    fetched = await client.get(f"{PATH}/{due['id']}", headers=ALICE)
    assert fetched.json() == due


async def test_patch_changes_or_clears_them_and_put_resets_them(client: httpx.AsyncClient) -> None:
    task = await create(client, "task", priority="low", due_at=iso(NOW))
    patched = await client.patch(f"{PATH}/{task['id']}", json={"priority": "high"}, headers=ALICE)
    assert patched.json()["priority"] == "high" and patched.json()["due_at"] is not None
    cleared = await client.patch(f"{PATH}/{task['id']}", json={"due_at": None}, headers=ALICE)
    assert cleared.json()["due_at"] is None and cleared.json()["priority"] == "high"
    replaced = await client.put(f"{PATH}/{task['id']}", json={"title": "again"}, headers=ALICE)
    assert replaced.json()["priority"] == "medium" and replaced.json()["due_at"] is None


@pytest.mark.parametrize(
    ("body", "field", "error_type"),
    [
        ({"priority": "urgent"}, "priority", "literal_error"),
        ({"priority": None}, "priority", "literal_error"),
        ({"due_at": "2027-03-01T09:30:00"}, "due_at", "timezone_aware"),
        ({"due_at": 0}, "due_at", "datetime_type"),
        ({"due_at": "1700000000"}, "due_at", "datetime_from_date_parsing"),
        ({"due_at": "next tuesday"}, "due_at", "datetime_from_date_parsing"),
        # In UTC, as due dates are stored and answered: year 10000, and 1 BC.
        ({"due_at": "9999-12-31T23:00:00-05:00"}, "due_at", "datetime_out_of_range"),
        ({"due_at": "0001-01-01T00:00:00+14:00"}, "due_at", "datetime_out_of_range"),
    ],
    ids=[
        "unknown priority",
        "null priority",
        "naive date-time",
        "a number",
        "a numeric string",
        "prose",
        "after 9999 in UTC",
        "before year 1 in UTC",
    ],
)
async def test_bad_values_are_422_naming_the_field_and_write_nothing(
    client: httpx.AsyncClient,
    admin_conn: psycopg.Connection,
    body: dict[str, Any],
    field: str,
    error_type: str,
) -> None:
    for method, path in (("POST", PATH), ("PUT", f"{PATH}/1")):
        response = await client.request(method, path, json={"title": "t", **body}, headers=ALICE)
        assert response.status_code == 422, response.text
        errors = response.json()["detail"]
        assert next(e["type"] for e in errors if e["loc"][-1] == field) == error_type
    assert admin_conn.execute("select count(*) from tasks").fetchone() == (0,)


async def seed(client: httpx.AsyncClient) -> dict[str, int]:
    ids = {}
    for title, fields in {
        "overdue high": {"priority": "high", "due_at": iso(NOW - timedelta(days=2))},
        "overdue but done": {"priority": "low", "due_at": iso(NOW - timedelta(days=1))},
        "tomorrow low": {"priority": "low", "due_at": iso(NOW + timedelta(days=1))},
        "next week medium": {"due_at": iso(NOW + timedelta(days=7))},
        "undated high": {"priority": "high"},
    }.items():
        ids[title] = (await create(client, title, **fields))["id"]
    await client.patch(f"{PATH}/{ids['overdue but done']}/complete", headers=ALICE)
    return ids


async def titles(client: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await client.get(PATH, params=params, headers=ALICE)
    assert response.status_code == 200, response.text
    listed = [task["title"] for task in response.json()]
    assert response.headers["X-Total-Count"] == str(len(listed))
    return listed


async def test_filters_by_priority_and_due_date_combine(client: httpx.AsyncClient) -> None:
    await seed(client)
    # Bob's tasks match the same filters and never appear.
    await client.post(
        "/api/bob/tasks", json={"title": "bob's", "priority": "high", "due_at": iso(NOW)}, headers=auth("bob")
    )
    assert await titles(client, priority="high", sort="title") == ["overdue high", "undated high"]
    assert await titles(client, priority=["high", "low"], sort="title") == [
        "overdue but done",
        "overdue high",
        "tomorrow low",
        "undated high",
    ]
    assert await titles(client, overdue="true") == ["overdue high"]
    assert await titles(client, due_before=iso(NOW), sort="title") == ["overdue but done", "overdue high"]
    assert await titles(client, due_after=iso(NOW), due_before=iso(NOW + timedelta(days=3))) == [
        "tomorrow low"
    ]
    assert await titles(client, priority="low", status="pending") == ["tomorrow low"]


async def test_sorts_by_due_date_nulls_last_and_by_priority_high_first(client: httpx.AsyncClient) -> None:
    await seed(client)
    by_due = await titles(client, sort="due")
    assert by_due == ["overdue high", "overdue but done", "tomorrow low", "next week medium", "undated high"]
    by_due_desc = await titles(client, sort="due", order="desc")
    assert by_due_desc == [
        "next week medium",
        "tomorrow low",
        "overdue but done",
        "overdue high",
        "undated high",
    ]
    # High first; within a priority, as the order says (desc: the newest first).
    assert await titles(client, sort="priority") == [
        "undated high",
        "overdue high",
        "next week medium",
        "tomorrow low",
        "overdue but done",
    ]


@pytest.mark.parametrize(
    "params",
    [
        {"priority": "urgent"},
        {"due_before": "2027-01-01T00:00:00"},
        {"due_after": "1700000000"},
        {"overdue": "maybe"},
        {"sort": "due_at"},
    ],
)
async def test_bad_list_parameters_are_422(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await client.get(PATH, params=params, headers=ALICE)
    assert response.status_code == 422, response.text
    assert next(iter(params)) in response.json()["detail"][0]["loc"]


def test_existing_tasks_migrate_forward_unchanged(admin_conn: psycopg.Connection, db_url: DbUrls) -> None:
    """A database filled at the previous head: every row keeps every value, and gains
    medium priority and no due date."""
    downgrade(db_url.owner, "0006")
    admin_conn.execute(
        "insert into tasks (user_id, title, description, completed)"
        " select 'user' || (n % 7), 'task ' || n, case when n % 3 = 0 then null else 'd' || n end, n % 2 = 0"
        " from generate_series(1, 200) n"
    )
    columns = "id, user_id, title, description, completed, created_at, updated_at"
    before = admin_conn.execute(f"select {columns} from tasks order by id").fetchall()
    upgrade(db_url.owner)
    after = admin_conn.execute(f"select {columns}, priority::text, due_at from tasks order by id").fetchall()
    assert [row[:-2] for row in after] == before
    assert {row[-2:] for row in after} == {("medium", None)}
