"""Safe concurrent edits: every answer that returns a task carries its ETag; writes with
an If-Match that no longer matches answer 412 and change nothing; a GET with a matching
If-None-Match answers 304."""

import asyncio
import re
from typing import Any

import httpx
import psycopg
import pytest

from tests.tokens import auth

ALICE = auth("alice")
PATH = "/api/alice/tasks"
STRONG_ETAG = re.compile(r'"[0-9a-f]{32}"')


async def create(client: httpx.AsyncClient, title: str = "Buy milk") -> tuple[int, str]:
    response = await client.post(PATH, json={"title": title}, headers=ALICE)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.headers["ETag"]


async def etag_of(client: httpx.AsyncClient, task_id: int) -> str:
    response = await client.get(f"{PATH}/{task_id}", headers=ALICE)
    assert response.status_code == 200
    return response.headers["ETag"]


def stored(admin_conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return admin_conn.execute("select id, title, completed, updated_at from tasks order by id").fetchall()


# (method, path under the task, body): every write of one task.
WRITES = [
    ("PUT", "", {"title": "replaced", "completed": True}),
    ("PATCH", "", {"title": "patched"}),
    ("PATCH", "/complete", None),
    ("DELETE", "", None),
]


async def test_every_answer_with_a_task_carries_its_current_etag(client: httpx.AsyncClient) -> None:
    task_id, created = await create(client)
    assert STRONG_ETAG.fullmatch(created)
    assert await etag_of(client, task_id) == created == await etag_of(client, task_id)
    for method, suffix, body in WRITES[:3]:
        response = await client.request(method, f"{PATH}/{task_id}{suffix}", json=body, headers=ALICE)
        assert response.status_code == 200
        assert response.headers["ETag"] != created  # every change is a new version
        assert response.headers["ETag"] == await etag_of(client, task_id)
        created = response.headers["ETag"]


async def test_etags_differ_between_tasks_and_tell_nothing_of_the_row_version(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    first, first_etag = await create(client, "one")
    second, second_etag = await create(client, "two")
    assert first_etag != second_etag
    # The row versions (transaction ids, a counter of every user's writes) do not appear.
    for task_id, etag in ((first, first_etag), (second, second_etag)):
        row = admin_conn.execute("select xmin::text from tasks where id = %s", (task_id,)).fetchone()
        assert row is not None and row[0] not in etag


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES, ids=["PUT", "PATCH", "toggle", "DELETE"])
async def test_a_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection, method: str, suffix: str, body: Any
) -> None:
    task_id, stale = await create(client)
    changed = await client.patch(f"{PATH}/{task_id}", json={"title": "changed elsewhere"}, headers=ALICE)
    current = changed.headers["ETag"]
    before = stored(admin_conn)
    for if_match in (stale, f"W/{current}", "garbage", '"not-a-tag-of-ours"', f"{stale}, W/{current}"):
        response = await client.request(
            method, f"{PATH}/{task_id}{suffix}", json=body, headers={**ALICE, "If-Match": if_match}
        )
        assert response.status_code == 412, (if_match, response.text)
        assert response.json() == {"detail": "the task has changed since that ETag: nothing changed"}
        assert stored(admin_conn) == before
    # The current ETag, alone or in a list, or `*`: the write goes through (each success
    # makes a new version, so each form is built from the latest one).
    for form in ("{}", '"0", {}', "*") if method != "DELETE" else ('"0", {}',):
        if_match = form.format(current)
        response = await client.request(
            method, f"{PATH}/{task_id}{suffix}", json=body, headers={**ALICE, "If-Match": if_match}
        )
        assert response.status_code in (200, 204), (if_match, response.text)
        if response.status_code == 200:
            current = response.headers["ETag"]
            assert current == await etag_of(client, task_id)


async def test_if_match_on_a_missing_or_foreign_task_is_the_same_404(client: httpx.AsyncClient) -> None:
    bobs = await client.post("/api/bob/tasks", json={"title": "bob's"}, headers=auth("bob"))
    bob_task, bob_etag = bobs.json()["id"], bobs.headers["ETag"]
    for task_id in (bob_task, 2**62):
        for if_match in (bob_etag, "*"):
            response = await client.patch(
                f"{PATH}/{task_id}", json={"title": "x"}, headers={**ALICE, "If-Match": if_match}
            )
            assert response.status_code == 404
            assert response.json() == {"detail": "Task not found"}


async def test_if_none_match_answers_304_while_the_task_is_unchanged(client: httpx.AsyncClient) -> None:
    task_id, etag = await create(client)
    for if_none_match in (etag, f"W/{etag}", f'"0", {etag}', "*"):
        response = await client.get(f"{PATH}/{task_id}", headers={**ALICE, "If-None-Match": if_none_match})
        assert response.status_code == 304, if_none_match
        assert response.content == b""
        assert response.headers["ETag"] == etag
    await client.patch(f"{PATH}/{task_id}/complete", headers=ALICE)
    for if_none_match in (etag, "garbage", ""):
        response = await client.get(f"{PATH}/{task_id}", headers={**ALICE, "If-None-Match": if_none_match})
        assert response.status_code == 200
        assert response.json()["completed"] is True


async def test_two_clients_editing_with_if_match_cannot_overwrite_each_other(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """Both read the same version, both write at once: exactly one wins, the other is told
    (412), and the task holds the winner's change. Repeated, so that the writes really
    overlap in some rounds."""
    for round_ in range(10):
        task_id, etag = await create(client, f"round {round_}")
        first, second = await asyncio.gather(
            *(
                client.patch(
                    f"{PATH}/{task_id}", json={"title": f"by {writer}"}, headers={**ALICE, "If-Match": etag}
                )
                for writer in ("first", "second")
            )
        )
        statuses = sorted((first.status_code, second.status_code))
        assert statuses == [200, 412], (first.text, second.text)
        winner = first if first.status_code == 200 else second
        row = admin_conn.execute("select title from tasks where id = %s", (task_id,)).fetchone()
        assert row == (winner.json()["title"],)
