"""HTTP behaviour of the task routes, through the app with a real database."""

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI, Request

from tests.tokens import auth

ALICE = auth("alice")
BOB = auth("bob")


async def create(
    client: httpx.AsyncClient, title: str = "Buy milk", user: str = "alice", **body: Any
) -> dict[str, Any]:
    response = await client.post(f"/api/{user}/tasks", json={"title": title, **body}, headers=auth(user))
    assert response.status_code == 201, response.text
    return response.json()


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


# --- create -------------------------------------------------------------------------


async def test_create_returns_the_task_and_its_location(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/alice/tasks", json={"title": "  Buy milk  ", "description": "2 litres"}, headers=ALICE
    )
    assert response.status_code == 201
    task = response.json()
    assert set(task) == {
        "id",
        "user_id",
        "title",
        "description",
        "completed",
        "priority",
        "due_at",
        "tags",
        "recurrence",
        "next_task_id",
        "created_at",
        "updated_at",
    }
    assert isinstance(task["id"], int)
    assert task["user_id"] == "alice"
    assert task["title"] == "Buy milk"  # trimmed
    assert task["description"] == "2 litres"
    assert task["completed"] is False
    assert parse_time(task["created_at"]) == parse_time(task["updated_at"])
    assert response.headers["Location"].endswith(f"/api/alice/tasks/{task['id']}")
    fetched = await client.get(response.headers["Location"], headers=ALICE)
    assert fetched.json() == task


async def test_location_is_what_url_for_gives_under_a_root_path(app: FastAPI) -> None:
    """The Location is built from the tasks router's own route (app/routes/tasks.py,
    _task_url): it must stay what request.url_for would give, percent-encoded user id
    and a proxy's path prefix (uvicorn --root-path) included."""
    user = "ann@example.com x+y"
    transport = httpx.ASGITransport(app=app, root_path="/todo")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        path = f"/todo/api/{quote(user, safe='')}/tasks"
        response = await client.post(path, json={"title": "Buy milk"}, headers=auth(user))
        assert response.status_code == 201, response.text
        task = response.json()
        owner = quote(user, safe="")
        assert response.headers["Location"] == f"http://test/todo/api/{owner}/tasks/{task['id']}"
        probe = {"type": "http", "router": app.router, "root_path": "/todo", "server": ("test", 80)}
        probe |= {"scheme": "http", "path": "/", "query_string": b"", "headers": [(b"host", b"test")]}
        expected = Request(probe).url_for("get_task", user_id=owner, task_id=str(task["id"]))
        assert response.headers["Location"] == str(expected)
        fetched = await client.get(response.headers["Location"], headers=auth(user))
        assert fetched.status_code == 200, fetched.text
        assert fetched.json() == task


async def test_create_without_description_stores_null(client: httpx.AsyncClient) -> None:
    task = await create(client)
    assert task["description"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"title": 5}, "title"),
        ({"title": None}, "title"),
        ({"title": "ok\u0000"}, "title"),
        ({"title": "ok", "description": "x" * 1001}, "description"),
        ({"title": "ok", "description": 7}, "description"),
        ({"title": "ok", "user_id": "bob"}, "user_id"),
        ({"title": "ok", "id": 1}, "id"),
        ({"title": "ok", "completed": True}, "completed"),
        ({"title": "ok", "colour": "red"}, "colour"),
    ],
)
async def test_create_rejects_invalid_bodies_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/alice/tasks", json=body, headers=ALICE)
    assert response.status_code == 422
    assert any(error["loc"][-1] == field for error in response.json()["detail"]), response.json()
    listed = await client.get("/api/alice/tasks", headers=ALICE)
    assert listed.json() == []  # nothing was written


async def test_title_limits_are_inclusive(client: httpx.AsyncClient) -> None:
    task = await create(client, "x" * 200, description="d" * 1000)
    assert len(task["title"]) == 200
    assert len(task["description"]) == 1000


async def test_body_that_is_not_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/alice/tasks", content=b"{not json", headers={**ALICE, "Content-Type": "application/json"}
    )
    assert response.status_code == 422


# --- read ---------------------------------------------------------------------------


async def test_get_missing_and_foreign_tasks_answer_the_same_404(client: httpx.AsyncClient) -> None:
    bobs = await create(client, "Bob's secret", user="bob")
    foreign = await client.get(f"/api/alice/tasks/{bobs['id']}", headers=ALICE)
    missing = await client.get("/api/alice/tasks/999999", headers=ALICE)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json() == {"detail": "Task not found"}


@pytest.mark.parametrize("task_id", ["abc", "0", "-1", str(2**63)])
async def test_invalid_task_id_is_422(client: httpx.AsyncClient, task_id: str) -> None:
    response = await client.get(f"/api/alice/tasks/{task_id}", headers=ALICE)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "task_id"]


# --- list ---------------------------------------------------------------------------


async def test_list_shows_only_the_callers_tasks(client: httpx.AsyncClient) -> None:
    await create(client, "mine")
    await create(client, "theirs", user="bob")
    response = await client.get("/api/alice/tasks", headers=ALICE)
    assert [task["title"] for task in response.json()] == ["mine"]
    assert response.headers["X-Total-Count"] == "1"
    assert "Link" not in response.headers


async def test_list_filters_by_status(client: httpx.AsyncClient) -> None:
    done = await create(client, "done")
    await create(client, "open")
    await client.patch(f"/api/alice/tasks/{done['id']}/complete", headers=ALICE)
    for status, titles in [("completed", ["done"]), ("pending", ["open"]), ("all", ["open", "done"])]:
        response = await client.get("/api/alice/tasks", params={"status": status}, headers=ALICE)
        assert [task["title"] for task in response.json()] == titles, status
        assert response.headers["X-Total-Count"] == str(len(titles))


async def test_list_sorts(client: httpx.AsyncClient) -> None:
    first = await create(client, "banana")
    await create(client, "apple")
    await create(client, "cherry")
    await client.patch(f"/api/alice/tasks/{first['id']}", json={"description": "touched"}, headers=ALICE)

    async def titles(**params: str) -> list[str]:
        response = await client.get("/api/alice/tasks", params=params, headers=ALICE)
        assert response.status_code == 200
        return [task["title"] for task in response.json()]

    assert await titles() == ["cherry", "apple", "banana"]  # created, newest first
    assert await titles(order="asc") == ["banana", "apple", "cherry"]
    assert await titles(sort="title") == ["apple", "banana", "cherry"]  # asc by default
    assert await titles(sort="title", order="desc") == ["cherry", "banana", "apple"]
    assert await titles(sort="updated") == ["banana", "cherry", "apple"]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "done"},
        {"sort": "size"},
        {"order": "up"},
        {"limit": "0"},
        {"limit": "101"},
        {"offset": "-1"},
    ],
)
async def test_list_rejects_bad_query_parameters(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await client.get("/api/alice/tasks", params=params, headers=ALICE)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", next(iter(params))]


async def test_list_paginates_with_total_count_and_link_header(client: httpx.AsyncClient) -> None:
    for number in range(5):
        await create(client, f"task {number}")

    first = await client.get("/api/alice/tasks", params={"limit": 2, "sort": "title"}, headers=ALICE)
    assert [task["title"] for task in first.json()] == ["task 0", "task 1"]
    assert first.headers["X-Total-Count"] == "5"
    links = httpx.Response(200, headers={"Link": first.headers["Link"]}).links
    assert set(links) == {"next"}

    second = await client.get(links["next"]["url"], headers=ALICE)
    assert [task["title"] for task in second.json()] == ["task 2", "task 3"]
    links = httpx.Response(200, headers={"Link": second.headers["Link"]}).links
    assert set(links) == {"next", "prev"}
    assert "sort=title" in links["next"]["url"]

    last = await client.get(links["next"]["url"], headers=ALICE)
    assert [task["title"] for task in last.json()] == ["task 4"]
    links = httpx.Response(200, headers={"Link": last.headers["Link"]}).links
    assert set(links) == {"prev"}
    back = await client.get(links["prev"]["url"], headers=ALICE)
    assert [task["title"] for task in back.json()] == ["task 2", "task 3"]


async def test_list_past_the_end_is_empty_but_still_counts(client: httpx.AsyncClient) -> None:
    await create(client)
    response = await client.get("/api/alice/tasks", params={"offset": 10}, headers=ALICE)
    assert response.json() == []
    assert response.headers["X-Total-Count"] == "1"
    links = httpx.Response(200, headers={"Link": response.headers["Link"]}).links
    assert set(links) == {"prev"}


async def test_a_short_page_counts_the_same_as_a_full_one(client: httpx.AsyncClient) -> None:
    """A page cut short by the end of the tasks is counted from the page itself (the
    count's scan is not run); any page, full or short, first or not, gives the same
    total, with a filter and without."""
    tasks = [await create(client, f"task {number}") for number in range(5)]
    await client.patch(f"/api/alice/tasks/{tasks[0]['id']}/complete", headers=ALICE)
    for params, titles, total in [
        ({}, 5, "5"),  # short, the first
        ({"limit": 3}, 3, "5"),  # full
        ({"limit": 3, "offset": 3}, 2, "5"),  # short, not the first
        ({"limit": 2, "offset": 4}, 1, "5"),
        ({"offset": 5}, 0, "5"),  # empty past the end: counted
        ({"status": "pending", "limit": 3, "offset": 2}, 2, "4"),
        ({"status": "completed"}, 1, "1"),
        ({"status": "completed", "offset": 1}, 0, "1"),
    ]:
        response = await client.get("/api/alice/tasks", params=params, headers=ALICE)
        assert (len(response.json()), response.headers["X-Total-Count"]) == (titles, total), params
    # Someone with no tasks at all: an empty first page, and nothing to count.
    response = await client.get("/api/bob/tasks", headers=BOB)
    assert (response.json(), response.headers["X-Total-Count"]) == ([], "0")


# --- update -------------------------------------------------------------------------


async def test_put_replaces_every_field(client: httpx.AsyncClient) -> None:
    task = await create(client, "old", description="old description")
    response = await client.put(
        f"/api/alice/tasks/{task['id']}", json={"title": "new", "completed": True}, headers=ALICE
    )
    assert response.status_code == 200
    replaced = response.json()
    assert (replaced["title"], replaced["description"], replaced["completed"]) == ("new", None, True)
    assert replaced["created_at"] == task["created_at"]
    assert parse_time(replaced["updated_at"]) > parse_time(task["updated_at"])


async def test_patch_changes_only_the_given_fields(client: httpx.AsyncClient) -> None:
    task = await create(client, "title", description="keep me")
    response = await client.patch(f"/api/alice/tasks/{task['id']}", json={"completed": True}, headers=ALICE)
    assert response.status_code == 200
    patched = response.json()
    assert (patched["title"], patched["description"], patched["completed"]) == ("title", "keep me", True)
    assert parse_time(patched["updated_at"]) > parse_time(task["updated_at"])

    cleared = await client.patch(f"/api/alice/tasks/{task['id']}", json={"description": None}, headers=ALICE)
    assert cleared.json()["description"] is None
    assert parse_time(cleared.json()["updated_at"]) > parse_time(patched["updated_at"])


@pytest.mark.parametrize(
    ("method", "body", "field"),
    [
        ("put", {"completed": True}, "title"),
        ("put", {"title": "x", "completed": "yes"}, "completed"),
        ("put", {"title": "x", "user_id": "bob"}, "user_id"),
        ("patch", {"title": None}, "title"),
        ("patch", {"title": ""}, "title"),
        ("patch", {"completed": None}, "completed"),
        ("patch", {"completed": 1}, "completed"),
        ("patch", {"description": "x" * 1001}, "description"),
        ("patch", {"user_id": "bob"}, "user_id"),
        ("patch", {"id": 99}, "id"),
    ],
)
async def test_updates_reject_invalid_bodies_and_change_nothing(
    client: httpx.AsyncClient, method: str, body: dict[str, Any], field: str
) -> None:
    task = await create(client)
    response = await client.request(method, f"/api/alice/tasks/{task['id']}", json=body, headers=ALICE)
    assert response.status_code == 422
    assert any(error["loc"][-1] == field for error in response.json()["detail"]), response.json()
    unchanged = await client.get(f"/api/alice/tasks/{task['id']}", headers=ALICE)
    assert unchanged.json() == task


async def test_toggle_flips_completed_both_ways(client: httpx.AsyncClient) -> None:
    task = await create(client)
    on = await client.patch(f"/api/alice/tasks/{task['id']}/complete", headers=ALICE)
    assert on.status_code == 200
    assert on.json()["completed"] is True
    assert parse_time(on.json()["updated_at"]) > parse_time(task["updated_at"])
    off = await client.patch(f"/api/alice/tasks/{task['id']}/complete", headers=ALICE)
    assert off.json()["completed"] is False


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("put", "", {"title": "mine now"}),
        ("patch", "", {"title": "mine now"}),
        ("patch", "/complete", None),
        ("delete", "", None),
    ],
)
async def test_writes_to_missing_or_foreign_tasks_are_404_and_change_nothing(
    client: httpx.AsyncClient, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    bobs = await create(client, "Bob's", user="bob")
    for task_id in (bobs["id"], 999999):
        response = await client.request(
            method, f"/api/alice/tasks/{task_id}{suffix}", json=body, headers=ALICE
        )
        assert response.status_code == 404
        assert response.json() == {"detail": "Task not found"}
    assert (await client.get(f"/api/bob/tasks/{bobs['id']}", headers=BOB)).json() == bobs


# --- delete -------------------------------------------------------------------------


async def test_delete_removes_the_task(client: httpx.AsyncClient) -> None:
    task = await create(client)
    response = await client.delete(f"/api/alice/tasks/{task['id']}", headers=ALICE)
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"/api/alice/tasks/{task['id']}", headers=ALICE)).status_code == 404
    again = await client.delete(f"/api/alice/tasks/{task['id']}", headers=ALICE)
    assert again.status_code == 404


# --- documentation ------------------------------------------------------------------


async def test_openapi_documents_every_route_with_the_bearer_scheme(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http"
    assert schemes["bearer"]["scheme"] == "bearer"
    operations = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        if path.startswith("/api/{user_id}/")
        for method in item
    }
    assert operations == {
        ("GET", "/api/{user_id}/tasks"),
        ("POST", "/api/{user_id}/tasks"),
        ("GET", "/api/{user_id}/tasks/{task_id}"),
        ("PUT", "/api/{user_id}/tasks/{task_id}"),
        ("PATCH", "/api/{user_id}/tasks/{task_id}"),
        ("DELETE", "/api/{user_id}/tasks/{task_id}"),
        ("PATCH", "/api/{user_id}/tasks/{task_id}/complete"),
        ("GET", "/api/{user_id}/tags"),
        ("PATCH", "/api/{user_id}/tags/{name}"),
        ("DELETE", "/api/{user_id}/tags/{name}"),
        ("GET", "/api/{user_id}/conversations"),
        ("GET", "/api/{user_id}/conversations/{conversation_id}/messages"),
        ("DELETE", "/api/{user_id}/conversations/{conversation_id}"),
        ("POST", "/api/{user_id}/chat"),
    }
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation["summary"], (method, path)
            if path.startswith("/api/{user_id}/"):
                # Either scheme: a pasted bearer token, or the docs page's password log-in.
                assert {"bearer": []} in operation["security"], (method, path)
                assert "401" in operation["responses"] and "403" in operation["responses"], (method, path)


async def test_docs_page_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "/openapi.json" in response.text
