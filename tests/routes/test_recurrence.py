"""Recurring tasks: completing one makes its next occurrence, once, in the same
transaction, due one period later in UTC; the rules that keep a recurring task dated;
and what the next occurrence's link does when either task changes."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from tests.conftest import DbUrls, http_client, make_settings, running_app
from tests.tokens import auth

ALICE = auth("alice")
PATH = "/api/alice/tasks"


async def create(client: httpx.AsyncClient, title: str = "water the plants", **fields: Any) -> dict[str, Any]:
    response = await client.post(PATH, json={"title": title, **fields}, headers=ALICE)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def toggle(client: httpx.AsyncClient, task_id: int) -> dict[str, Any]:
    response = await client.patch(f"{PATH}/{task_id}/complete", headers=ALICE)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def fetch(client: httpx.AsyncClient, task_id: int) -> dict[str, Any]:
    response = await client.get(f"{PATH}/{task_id}", headers=ALICE)
    assert response.status_code == 200, response.text
    return dict(response.json())


def stored(admin_conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Every row of every user, every column (the hidden ones too), as the superuser sees them."""
    return admin_conn.execute("select * from tasks order by id").fetchall()


def count(admin_conn: psycopg.Connection) -> int:
    row = admin_conn.execute("select count(*) from tasks").fetchone()
    assert row is not None
    return int(row[0])


async def series(client: httpx.AsyncClient, due_at: str, recurrence: str, length: int) -> list[str]:
    """The due dates of the first `length` occurrences of a series, each made by completing
    the one before it."""
    task = await create(client, due_at=due_at, recurrence=recurrence)
    dues = [task["due_at"]]
    while len(dues) < length:
        completed = await toggle(client, task["id"])
        assert completed["completed"] is True and completed["next_task_id"] is not None
        task = await fetch(client, completed["next_task_id"])
        dues.append(task["due_at"])
    return dues


@pytest.mark.parametrize(
    ("recurrence", "due_at", "next_due"),
    [
        ("daily", "2027-12-31T23:30:00Z", "2028-01-01T23:30:00.000000Z"),
        ("daily", "2028-02-28T08:00:00+00:00", "2028-02-29T08:00:00.000000Z"),
        ("weekly", "2028-02-26T08:00:00Z", "2028-03-04T08:00:00.000000Z"),
        ("monthly", "2027-12-15T08:15:30.5Z", "2028-01-15T08:15:30.500000Z"),
    ],
)
async def test_completing_a_recurring_task_makes_its_next_occurrence(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection, recurrence: str, due_at: str, next_due: str
) -> None:
    task = await create(
        client,
        "Pay rent",
        description="to the landlord",
        priority="high",
        tags=["home", "Money"],
        due_at=due_at,
        recurrence=recurrence,
    )
    assert task["recurrence"] == recurrence and task["next_task_id"] is None
    response = await client.patch(f"{PATH}/{task['id']}/complete", headers=ALICE)
    assert response.status_code == 200
    completed = response.json()
    # The answer is the completed task itself, linked to its next occurrence, and its
    # ETag is that of the task as stored (the link included).
    assert completed["completed"] is True
    kept = {
        name: value for name, value in task.items() if name not in ("completed", "next_task_id", "updated_at")
    }
    assert {name: completed[name] for name in kept} == kept
    stored_etag = (await client.get(f"{PATH}/{task['id']}", headers=ALICE)).headers["ETag"]
    assert response.headers["ETag"] == stored_etag

    following = await fetch(client, completed["next_task_id"])
    assert following["id"] not in (None, task["id"])
    same = ("user_id", "title", "description", "priority", "tags", "recurrence")
    assert {name: following[name] for name in same} == {name: task[name] for name in same}
    assert following["completed"] is False and following["next_task_id"] is None
    assert following["due_at"] == next_due
    assert count(admin_conn) == 2
    listed = await client.get(PATH, params={"status": "pending"}, headers=ALICE)
    assert [listed_task["id"] for listed_task in listed.json()] == [following["id"]]


async def test_monthly_keeps_the_day_the_series_started_on_clamped_to_the_months_end(
    client: httpx.AsyncClient,
) -> None:
    assert await series(client, "2027-01-31T09:00:00Z", "monthly", 6) == [
        "2027-01-31T09:00:00.000000Z",
        "2027-02-28T09:00:00.000000Z",
        "2027-03-31T09:00:00.000000Z",
        "2027-04-30T09:00:00.000000Z",
        "2027-05-31T09:00:00.000000Z",
        "2027-06-30T09:00:00.000000Z",
    ]
    # A leap year's February, and the year's end.
    assert await series(client, "2027-12-31T23:59:59Z", "monthly", 4) == [
        "2027-12-31T23:59:59.000000Z",
        "2028-01-31T23:59:59.000000Z",
        "2028-02-29T23:59:59.000000Z",
        "2028-03-31T23:59:59.000000Z",
    ]
    # A series that starts on February 29th keeps the 29th, and is clamped a year later.
    leap = await series(client, "2028-02-29T12:00:00Z", "monthly", 14)
    assert leap[1:3] == ["2028-03-29T12:00:00.000000Z", "2028-04-29T12:00:00.000000Z"]
    assert leap[-3:] == [
        "2029-01-29T12:00:00.000000Z",
        "2029-02-28T12:00:00.000000Z",
        "2029-03-29T12:00:00.000000Z",
    ]


async def next_due_after(client: httpx.AsyncClient, method: str, task_id: int, body: dict[str, Any]) -> str:
    """The due date of the occurrence that `body`, then completing the task, makes."""
    response = await client.request(method, f"{PATH}/{task_id}", json=body, headers=ALICE)
    assert response.status_code == 200, response.text
    return str((await fetch(client, (await toggle(client, task_id))["next_task_id"]))["due_at"])


async def test_a_due_date_or_recurrence_the_user_changes_starts_the_series_afresh(
    client: httpx.AsyncClient,
) -> None:
    async def february_of_a_series_from_january_31st(recurrence: str = "monthly") -> dict[str, Any]:
        task = await create(client, due_at="2027-01-31T09:00:00Z", recurrence=recurrence)
        return await fetch(client, (await toggle(client, task["id"]))["next_task_id"])

    # A new due date: the series goes on from its day.
    february = await february_of_a_series_from_january_31st()
    moved = await next_due_after(client, "PATCH", february["id"], {"due_at": "2027-02-15T09:00:00Z"})
    assert moved == "2027-03-15T09:00:00.000000Z"
    # The same due date sent again, by PATCH or by a PUT of the task as read: unchanged,
    # the series keeps its 31st.
    february = await february_of_a_series_from_january_31st()
    assert await next_due_after(client, "PATCH", february["id"], {"due_at": february["due_at"]}) == (
        "2027-03-31T09:00:00.000000Z"
    )
    february = await february_of_a_series_from_january_31st()
    as_read = {
        name: february[name] for name in ("title", "description", "priority", "due_at", "tags", "recurrence")
    }
    assert await next_due_after(client, "PUT", february["id"], as_read) == "2027-03-31T09:00:00.000000Z"
    # A daily series that started on the 31st, made monthly on February 1st: monthly
    # from the 1st, not from the day the daily series began.
    first = await february_of_a_series_from_january_31st("daily")
    assert first["due_at"] == "2027-02-01T09:00:00.000000Z"
    assert await next_due_after(client, "PATCH", first["id"], {"recurrence": "monthly"}) == (
        "2027-03-01T09:00:00.000000Z"
    )


async def test_a_series_ends_where_its_next_due_date_would_be_past_9999(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """No answer could show a due date in year 10000 as a date-time, nor take it back."""
    last_ones = [
        ("daily", "9999-12-31T00:00:00Z"),
        ("weekly", "9999-12-25T00:00:00Z"),
        ("monthly", "9999-12-01T00:00:00Z"),
    ]
    for recurrence, due_at in last_ones:
        task = await create(client, due_at=due_at, recurrence=recurrence)
        completed = await toggle(client, task["id"])
        assert completed["completed"] is True and completed["next_task_id"] is None, recurrence
    assert count(admin_conn) == len(last_ones)
    # The day before, a series still makes its occurrence, up to the last moment of 9999.
    assert await series(client, "9999-12-30T23:59:59.999999Z", "daily", 2) == [
        "9999-12-30T23:59:59.999999Z",
        "9999-12-31T23:59:59.999999Z",
    ]


@pytest.mark.parametrize("zone", ["America/New_York", "Pacific/Kiritimati"])
async def test_the_period_is_reckoned_in_utc_whatever_the_time_zone(
    db_url: DbUrls, admin_conn: psycopg.Connection, zone: str
) -> None:
    """In the session's time zone a day would be 23 hours across New York's change to
    summer time, and a month from March 1st in Kiritimati (UTC+14, still February 28th in
    UTC) would end on March 31st; in UTC neither is."""
    cases = [
        # New York moves its clocks on 2027-03-14 and 2027-11-07.
        ("daily", "2027-03-13T12:00:00Z", "2027-03-14T12:00:00.000000Z"),
        ("weekly", "2027-11-01T12:00:00Z", "2027-11-08T12:00:00.000000Z"),
        ("monthly", "2027-03-01T05:00:00+14:00", "2027-03-28T15:00:00.000000Z"),
    ]
    # Every new connection to the database starts in `zone` (a database default, which
    # the runtime role's start-up checks allow), the app's included.
    admin_conn.execute(f"alter database {admin_conn.info.dbname} set timezone to '{zone}'")
    with psycopg.connect(db_url.runtime) as runtime:
        assert runtime.execute("show timezone").fetchone() == (zone,)
        # The session's own arithmetic gets at least one of them wrong in this zone.
        naive = [
            runtime.execute(
                "select to_char((%s::timestamptz + %s::interval) at time zone 'UTC',"
                ' \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')',
                (due_at, {"daily": "1 day", "weekly": "7 days", "monthly": "1 month"}[recurrence]),
            ).fetchone()
            for recurrence, due_at, _ in cases
        ]
    assert naive != [(next_due,) for _, _, next_due in cases]
    async with running_app(make_settings(db_url)) as app, http_client(app) as client:
        for recurrence, due_at, next_due in cases:
            task = await create(client, due_at=due_at, recurrence=recurrence)
            following = await fetch(client, (await toggle(client, task["id"]))["next_task_id"])
            assert following["due_at"] == next_due, (recurrence, zone)


async def test_put_and_patch_that_complete_it_make_the_next_occurrence_of_what_they_wrote(
    client: httpx.AsyncClient,
) -> None:
    task = await create(client, tags=["home"], due_at="2027-05-01T07:00:00Z", recurrence="weekly")
    patched = await client.patch(
        f"{PATH}/{task['id']}", json={"completed": True, "priority": "low", "tags": ["garden"]}, headers=ALICE
    )
    assert patched.status_code == 200
    following = await fetch(client, patched.json()["next_task_id"])
    assert (following["priority"], following["tags"], following["due_at"]) == (
        "low",
        ["garden"],
        "2027-05-08T07:00:00.000000Z",
    )

    body = {
        "title": "water the roses",
        "description": "both beds",
        "completed": True,
        "due_at": "2027-06-30T18:00:00+02:00",
        "recurrence": "monthly",
    }
    replaced = await client.put(f"{PATH}/{following['id']}", json=body, headers=ALICE)
    assert replaced.status_code == 200
    after = await fetch(client, replaced.json()["next_task_id"])
    assert {name: after[name] for name in ("title", "description", "priority", "tags", "recurrence")} == {
        "title": "water the roses",
        "description": "both beds",
        "priority": "medium",
        "tags": [],
        "recurrence": "monthly",
    }
    assert after["due_at"] == "2027-07-30T16:00:00.000000Z"


async def test_only_becoming_completed_makes_an_occurrence_and_only_once(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    plain = await create(client, "not recurring", due_at="2027-05-01T07:00:00Z")
    assert (await toggle(client, plain["id"]))["next_task_id"] is None
    assert count(admin_conn) == 1

    task = await create(client, due_at="2027-05-01T07:00:00Z", recurrence="daily")
    following = (await toggle(client, task["id"]))["next_task_id"]
    assert count(admin_conn) == 3
    # Edits of the completed task, completed=true again among them, make nothing.
    for method, body in (
        ("PATCH", {"completed": True}),
        ("PATCH", {"title": "renamed", "recurrence": "weekly"}),
        (
            "PUT",
            {"title": "replaced", "completed": True, "due_at": "2027-05-02T07:00:00Z", "recurrence": "daily"},
        ),
    ):
        response = await client.request(method, f"{PATH}/{task['id']}", json=body, headers=ALICE)
        assert response.status_code == 200
        assert response.json()["next_task_id"] == following
    # Back to pending (it keeps its link) and completed again: still the one occurrence.
    pending = await toggle(client, task["id"])
    assert pending["completed"] is False and pending["next_task_id"] == following
    assert (await toggle(client, task["id"]))["next_task_id"] == following
    assert count(admin_conn) == 3
    # A completed task made recurring is not becoming completed: nothing either.
    made_recurring = await client.patch(f"{PATH}/{plain['id']}", json={"recurrence": "daily"}, headers=ALICE)
    assert made_recurring.json()["next_task_id"] is None
    assert count(admin_conn) == 3
    # The occurrence is a task like any other: completing it makes the next one.
    assert (await toggle(client, following))["next_task_id"] not in (None, following, task["id"])
    assert count(admin_conn) == 4


async def test_recurrence_null_stops_the_series(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    task = await create(client, due_at="2027-05-01T07:00:00Z", recurrence="monthly")
    stopped = await client.patch(f"{PATH}/{task['id']}", json={"recurrence": None}, headers=ALICE)
    assert stopped.json()["recurrence"] is None and stopped.json()["due_at"] == task["due_at"]
    assert (await toggle(client, task["id"]))["next_task_id"] is None
    assert count(admin_conn) == 1
    # PATCH may drop the recurrence and the due date together.
    other = await create(client, due_at="2027-05-01T07:00:00Z", recurrence="daily")
    both = await client.patch(
        f"{PATH}/{other['id']}", json={"recurrence": None, "due_at": None}, headers=ALICE
    )
    assert both.status_code == 200
    assert (both.json()["recurrence"], both.json()["due_at"]) == (None, None)


def error_fields(response: httpx.Response) -> list[tuple[str, ...]]:
    return [tuple(error["loc"]) for error in response.json()["detail"]]


async def test_a_recurring_task_needs_a_due_date(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    undated = await create(client, "undated")
    dated = await create(client, "dated", tags=["home"], due_at="2027-05-01T07:00:00Z", recurrence="daily")
    before = stored(admin_conn)
    tags_before = admin_conn.execute("select * from task_tags order by task_id, tag_id").fetchall()
    refused = [
        ("POST", PATH, {"title": "t", "recurrence": "daily"}),
        ("POST", PATH, {"title": "t", "recurrence": "weekly", "due_at": None}),
        ("PUT", f"{PATH}/{undated['id']}", {"title": "t", "recurrence": "monthly"}),
        ("PUT", f"{PATH}/{dated['id']}", {"title": "t", "recurrence": "daily", "due_at": None}),
        # PATCH: what the task would become is checked, its stored due date included.
        ("PATCH", f"{PATH}/{undated['id']}", {"recurrence": "daily"}),
        ("PATCH", f"{PATH}/{dated['id']}", {"due_at": None}),
        ("PATCH", f"{PATH}/{dated['id']}", {"due_at": None, "completed": True, "tags": ["other"]}),
        ("PATCH", f"{PATH}/{undated['id']}", {"recurrence": "daily", "due_at": None}),
    ]
    for method, path, body in refused:
        response = await client.request(method, path, json=body, headers=ALICE)
        assert response.status_code == 422, (method, body, response.text)
        assert response.json()["detail"] == [
            {
                "type": "recurrence_without_due_at",
                "loc": ["body", "recurrence"],
                "msg": "A recurring task needs a due_at",
                "input": body["recurrence"] if method != "PATCH" else None,
            }
        ], (method, body)
    # Nothing changed: no row, no tag, no occurrence.
    assert stored(admin_conn) == before
    assert admin_conn.execute("select * from task_tags order by task_id, tag_id").fetchall() == tags_before


@pytest.mark.parametrize("value", ["yearly", "Daily", "", " daily", 1, True, ["daily"], {"every": "day"}])
async def test_an_unknown_recurrence_is_422_naming_it(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection, value: Any
) -> None:
    task = await create(client, due_at="2027-05-01T07:00:00Z")
    for method, path in (("POST", PATH), ("PUT", f"{PATH}/{task['id']}"), ("PATCH", f"{PATH}/{task['id']}")):
        body = {"title": "t", "due_at": "2027-05-01T07:00:00Z", "recurrence": value}
        response = await client.request(method, path, json=body, headers=ALICE)
        assert response.status_code == 422, (method, response.text)
        assert error_fields(response) == [("body", "recurrence")]
    assert count(admin_conn) == 1
    assert admin_conn.execute("select recurrence from tasks").fetchone() == (None,)


async def test_a_stale_if_match_completes_nothing_and_makes_nothing(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    created = await client.post(
        PATH, json={"title": "t", "due_at": "2027-05-01T07:00:00Z", "recurrence": "daily"}, headers=ALICE
    )
    task_id, stale = created.json()["id"], created.headers["ETag"]
    current = (await client.patch(f"{PATH}/{task_id}", json={"title": "changed"}, headers=ALICE)).headers[
        "ETag"
    ]
    before = stored(admin_conn)
    for method, suffix, body in (("PATCH", "/complete", None), ("PATCH", "", {"completed": True})):
        response = await client.request(
            method, f"{PATH}/{task_id}{suffix}", json=body, headers={**ALICE, "If-Match": stale}
        )
        assert response.status_code == 412
    assert stored(admin_conn) == before
    response = await client.patch(f"{PATH}/{task_id}/complete", headers={**ALICE, "If-Match": current})
    assert response.status_code == 200 and response.json()["next_task_id"] is not None
    # The ETag answered is the task's as stored, its link included: it serves as If-Match.
    again = await client.patch(
        f"{PATH}/{task_id}", json={"title": "again"}, headers={**ALICE, "If-Match": response.headers["ETag"]}
    )
    assert again.status_code == 200
    assert count(admin_conn) == 2


async def test_deleting_the_next_occurrence_unlinks_it_and_completing_again_makes_another(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    task = await create(client, due_at="2027-05-01T07:00:00Z", recurrence="weekly")
    completed = await client.patch(f"{PATH}/{task['id']}/complete", headers=ALICE)
    following = completed.json()["next_task_id"]
    assert (await client.delete(f"{PATH}/{following}", headers=ALICE)).status_code == 204

    unlinked = await client.get(f"{PATH}/{task['id']}", headers=ALICE)
    assert unlinked.json() == {
        **completed.json(),
        "next_task_id": None,
        "updated_at": unlinked.json()["updated_at"],
    }
    # A change of the task like any other: a new ETag and a new updated_at.
    assert unlinked.headers["ETag"] != completed.headers["ETag"]
    assert unlinked.json()["updated_at"] > completed.json()["updated_at"]
    # Completed already: completed=true again makes nothing.
    again = await client.patch(f"{PATH}/{task['id']}", json={"completed": True}, headers=ALICE)
    assert again.json()["next_task_id"] is None
    assert count(admin_conn) == 1
    # Back to pending and completed again: it has no occurrence, so one is made anew.
    await toggle(client, task["id"])
    remade = (await toggle(client, task["id"]))["next_task_id"]
    assert remade not in (None, following)
    assert (await fetch(client, remade))["due_at"] == "2027-05-08T07:00:00.000000Z"
    assert count(admin_conn) == 2

    # Deleting the completed task leaves its occurrence as it is.
    assert (await client.delete(f"{PATH}/{task['id']}", headers=ALICE)).status_code == 204
    assert (await fetch(client, remade))["completed"] is False


async def test_another_users_recurring_task_is_not_found_and_never_completed(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    task = await create(client, due_at="2027-05-01T07:00:00Z", recurrence="daily")
    bob = auth("bob")
    before = stored(admin_conn)
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "/complete", None),
        ("PATCH", "", {"completed": True}),
        (
            "PUT",
            "",
            {"title": "t", "completed": True, "due_at": "2027-05-01T07:00:00Z", "recurrence": "daily"},
        ),
    ):
        response = await client.request(
            method, f"/api/bob/tasks/{task['id']}{suffix}", json=body, headers=bob
        )
        assert response.status_code == 404, (method, suffix)
        assert response.json() == {"detail": "Task not found"}
    forbidden = await client.patch(f"{PATH}/{task['id']}/complete", headers=bob)
    assert forbidden.status_code == 403
    assert stored(admin_conn) == before

    # Bob's own series stays his: his occurrence is his, and only his list shows it.
    bobs = await client.post(
        "/api/bob/tasks",
        json={"title": "bob's", "due_at": "2027-05-01T07:00:00Z", "recurrence": "daily"},
        headers=bob,
    )
    bobs_next = (await client.patch(f"/api/bob/tasks/{bobs.json()['id']}/complete", headers=bob)).json()[
        "next_task_id"
    ]
    assert admin_conn.execute("select user_id from tasks where id = %s", (bobs_next,)).fetchone() == ("bob",)
    assert (await client.get(f"{PATH}/{bobs_next}", headers=ALICE)).status_code == 404
    alices = await client.get(PATH, headers=ALICE)
    assert [listed["id"] for listed in alices.json()] == [task["id"]]


RACERS = 8  # within the pool (DB_POOL_SIZE, 10 by default): each holds a connection


async def all_waiting_for_a_lock(admin_conn: psycopg.Connection, racers: int) -> None:
    """Until `racers` of the app's transactions wait for a lock (the row's)."""
    for _ in range(1000):
        row = admin_conn.execute(
            "select count(*) from pg_stat_activity"
            " where datname = current_database() and usename = 'todo_app' and wait_event_type = 'Lock'"
        ).fetchone()
        if row == (racers,):
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the {racers} requests did not all come to wait for the row")


@pytest.fixture
async def patient_app(db_url: DbUrls) -> AsyncIterator[FastAPI]:
    """The app, with a lock wait long enough for a loaded machine."""
    async with running_app(make_settings(db_url, db_lock_timeout=60)) as app:
        yield app


@pytest.mark.parametrize(
    ("method", "suffix", "body", "if_match"),
    [
        ("PATCH", "/complete", None, False),
        ("PATCH", "", {"completed": True}, False),
        (
            "PUT",
            "",
            {"title": "t", "completed": True, "due_at": "2027-05-01T07:00:00Z", "recurrence": "daily"},
            False,
        ),
        ("PATCH", "/complete", None, True),
    ],
    ids=["toggles", "PATCH completed", "PUT completed", "toggles with one If-Match"],
)
async def test_concurrent_completions_make_exactly_one_occurrence(
    patient_app: FastAPI,
    admin_conn: psycopg.Connection,
    db_url: DbUrls,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
    if_match: bool,
) -> None:
    """RACERS requests complete the same pending task at once: the row is held locked
    (by a transaction of the superuser's) until every one of them waits for it, each
    having read it pending, then released."""
    async with http_client(patient_app) as client:
        created = await client.post(
            PATH, json={"title": "t", "due_at": "2027-05-01T07:00:00Z", "recurrence": "daily"}, headers=ALICE
        )
        task_id = created.json()["id"]
        headers = {**ALICE, "If-Match": created.headers["ETag"]} if if_match else ALICE
        with psycopg.connect(db_url.admin) as holder:
            holder.execute("select from tasks where id = %s for update", (task_id,))
            racing = asyncio.gather(
                *(
                    client.request(method, f"{PATH}/{task_id}{suffix}", json=body, headers=headers)
                    for _ in range(RACERS)
                )
            )
            waited = asyncio.ensure_future(all_waiting_for_a_lock(admin_conn, RACERS))
            done, _ = await asyncio.wait({racing, waited}, return_when=asyncio.FIRST_COMPLETED)
            assert waited in done, "a request finished while the row was held"
            holder.rollback()
        responses = await racing

    successors = admin_conn.execute("select id from tasks where id <> %s", (task_id,)).fetchall()
    assert len(successors) == 1, successors
    (successor,) = successors[0]
    assert admin_conn.execute("select next_task_id from tasks where id = %s", (task_id,)).fetchone() == (
        successor,
    )
    statuses = sorted(response.status_code for response in responses)
    # With one If-Match, the first write changes the ETag: every other one is refused.
    assert statuses == ([200] + [412] * (RACERS - 1) if if_match else [200] * RACERS)
    # Every answer shows the one occurrence (after the first, the task already links it).
    assert {response.json()["next_task_id"] for response in responses if response.status_code == 200} == {
        successor
    }
