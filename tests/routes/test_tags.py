"""Tags: each user's own, matched case-insensitively, created on first use, answered
sorted; set on POST, PUT and PATCH; listed with their counts, renamed, merged and deleted;
the list's tag filter. Another user's tags are in tests/test_rls.py (the routes without
their explicit filters) and tests/test_attacks.py (over HTTP, against a live server)."""

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest

from app.session import UserSessions
from tests.conftest import STALE_COPIES
from tests.tokens import auth

ALICE = auth("alice")
JSON_ALICE = {**ALICE, "Content-Type": "application/json"}
TASKS = "/api/alice/tasks"
TAGS = "/api/alice/tags"


async def create(client: httpx.AsyncClient, title: str, tags: list[str] | None = None, **fields: Any) -> dict:
    body = {"title": title, **fields} if tags is None else {"title": title, "tags": tags, **fields}
    response = await client.post(TASKS, json=body, headers=ALICE)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def fetch(client: httpx.AsyncClient, task_id: int) -> httpx.Response:
    response = await client.get(f"{TASKS}/{task_id}", headers=ALICE)
    assert response.status_code == 200, response.text
    return response


async def tags_of(client: httpx.AsyncClient, task_id: int) -> list[str]:
    return list((await fetch(client, task_id)).json()["tags"])


async def listed_tags(client: httpx.AsyncClient, **params: Any) -> dict[str, int]:
    """The tag list as {name: tasks}, in the order answered (dicts keep it)."""
    response = await client.get(TAGS, params=params, headers=ALICE)
    assert response.status_code == 200, response.text
    return {tag["name"]: tag["tasks"] for tag in response.json()}


async def titles(client: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await client.get(TASKS, params=params, headers=ALICE)
    assert response.status_code == 200, response.text
    listed = [task["title"] for task in response.json()]
    assert response.headers["X-Total-Count"] == str(len(listed)), params
    return listed


def tag_path(name: str) -> str:
    return f"{TAGS}/{quote(name, safe='')}"


# --- on a task: POST, PUT, PATCH ---------------------------------------------------------


async def test_tags_are_answered_sorted_once_each_in_their_first_spelling(client: httpx.AsyncClient) -> None:
    first = await create(client, "first", ["work", "Home", "WORK", "  errands  ", "home"])
    assert first["tags"] == ["errands", "Home", "work"]
    assert (await fetch(client, first["id"])).json() == first
    # A tag that exists keeps the spelling it was made with, whatever a later task says.
    second = await create(client, "second", ["HOME", "Work", "zebra", "Apple"])
    assert second["tags"] == ["Apple", "Home", "work", "zebra"]
    assert await listed_tags(client) == {"Apple": 1, "errands": 1, "Home": 2, "work": 2, "zebra": 1}
    assert (await create(client, "untagged"))["tags"] == []


async def test_patch_with_tags_replaces_them_and_without_leaves_them(client: httpx.AsyncClient) -> None:
    task = await create(client, "task", ["a", "b"])
    url = f"{TASKS}/{task['id']}"
    patched = await client.patch(url, json={"tags": ["B", "c"]}, headers=ALICE)
    assert patched.status_code == 200
    assert patched.json()["tags"] == ["b", "c"]
    untouched = await client.patch(url, json={"title": "renamed"}, headers=ALICE)
    assert untouched.json()["tags"] == ["b", "c"]
    emptied = await client.patch(url, json={"tags": []}, headers=ALICE)
    assert emptied.json()["tags"] == []
    assert await tags_of(client, task["id"]) == []
    # A tag no task carries any more is still yours, with a count of 0.
    assert await listed_tags(client) == {"a": 0, "b": 0, "c": 0}


async def test_put_sets_the_tags_it_is_given_and_clears_them_without(client: httpx.AsyncClient) -> None:
    task = await create(client, "task", ["a"])
    url = f"{TASKS}/{task['id']}"
    replaced = await client.put(url, json={"title": "task", "tags": ["x", "A"]}, headers=ALICE)
    assert replaced.status_code == 200
    assert replaced.json()["tags"] == ["a", "x"]
    cleared = await client.put(url, json={"title": "task"}, headers=ALICE)
    assert cleared.status_code == 200
    assert cleared.json()["tags"] == []
    assert await tags_of(client, task["id"]) == []


async def test_changing_a_tasks_tags_changes_its_etag_and_a_stale_if_match_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    task = await create(client, "task", ["a"])
    url = f"{TASKS}/{task['id']}"
    before = (await fetch(client, task["id"])).headers["ETag"]
    tagged = await client.patch(url, json={"tags": ["b"]}, headers={**ALICE, "If-Match": before})
    assert tagged.status_code == 200
    assert tagged.headers["ETag"] != before
    assert tagged.json()["updated_at"] > task["updated_at"]
    stale = await client.patch(url, json={"tags": ["c"]}, headers={**ALICE, "If-Match": before})
    assert stale.status_code == 412
    assert (await fetch(client, task["id"])).json() == tagged.json()
    assert await listed_tags(client) == {"a": 0, "b": 1}


async def test_a_write_that_fails_sets_no_tags(client: httpx.AsyncClient) -> None:
    task = await create(client, "water plants", ["a"], due_at="2027-03-01T09:00:00Z", recurrence="weekly")
    url = f"{TASKS}/{task['id']}"
    # Valid tags, and a due date the recurring task cannot lose: the whole write is refused.
    refused = await client.patch(url, json={"tags": ["b"], "due_at": None}, headers=ALICE)
    assert refused.status_code == 422
    assert (await fetch(client, task["id"])).json() == task
    for method in ("PUT", "PATCH"):
        missing = await client.request(
            method, f"{TASKS}/999999", json={"title": "t", "tags": ["c"]}, headers=ALICE
        )
        assert missing.status_code == 404
    assert await listed_tags(client) == {"a": 1}


async def test_deleting_a_task_takes_it_out_of_its_tags_counts(client: httpx.AsyncClient) -> None:
    kept = await create(client, "kept", ["a"])
    gone = await create(client, "gone", ["a", "b"])
    assert (await client.delete(f"{TASKS}/{gone['id']}", headers=ALICE)).status_code == 204
    assert await listed_tags(client) == {"a": 1, "b": 0}
    assert await tags_of(client, kept["id"]) == ["a"]


async def test_the_next_occurrence_of_a_recurring_task_carries_its_tags(client: httpx.AsyncClient) -> None:
    task = await create(client, "water plants", ["Home"], due_at="2027-03-01T09:00:00Z", recurrence="weekly")
    done = await client.patch(f"{TASKS}/{task['id']}/complete", headers=ALICE)
    assert done.status_code == 200
    successor = done.json()["next_task_id"]
    assert await tags_of(client, successor) == ["Home"]
    assert await listed_tags(client) == {"Home": 2}


async def test_requests_that_make_the_same_new_tag_at_once_make_one(client: httpx.AsyncClient) -> None:
    made = await asyncio.gather(
        *(client.post(TASKS, json={"title": f"t{n}", "tags": ["New"]}, headers=ALICE) for n in range(6))
    )
    assert [response.status_code for response in made] == [201] * 6
    assert await listed_tags(client) == {"New": 6}


# --- case-insensitive matching, Unicode ---------------------------------------------------


@pytest.mark.parametrize(
    "spellings",
    [
        ["Straße", "STRASSE", "strasse"],
        ["ÄRGER", "ärger", "a\u0308rger"],  # the last in NFD: a and a combining diaeresis
        ["ΟΔΟΣ", "οδος", "οδοσ"],  # final and medial sigma
        ["ﬁle", "FILE"],  # the fi ligature
        ["\uff37\uff2f\uff32\uff2b", "work"],  # WORK in fullwidth letters
    ],
    ids=["sharp s", "umlaut", "sigma", "ligature", "fullwidth"],
)
async def test_spellings_that_differ_in_case_or_unicode_form_are_one_tag(
    client: httpx.AsyncClient, spellings: list[str]
) -> None:
    tasks = [await create(client, f"task {n}", [spelling]) for n, spelling in enumerate(spellings)]
    assert [task["tags"] for task in tasks] == [[spellings[0]]] * len(spellings)
    assert await listed_tags(client) == {spellings[0]: len(spellings)}
    for spelling in spellings:
        assert await titles(client, tag=spelling, sort="title") == [task["title"] for task in tasks]
    # Named in the path in its last spelling, renamed to it: the same tag, a new spelling.
    renamed = await client.patch(tag_path(spellings[-1]), json={"name": spellings[-1]}, headers=ALICE)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json() == {"name": spellings[-1], "tasks": len(spellings)}
    assert await tags_of(client, tasks[0]["id"]) == [spellings[-1]]


async def test_accented_and_unaccented_names_are_different_tags(client: httpx.AsyncClient) -> None:
    await create(client, "task", ["cafe", "café", "Café"])
    assert await listed_tags(client) == {"cafe": 1, "café": 1}


# --- the tag list -------------------------------------------------------------------------


async def test_the_tag_list_is_sorted_counts_tasks_and_paginates_with_links(
    client: httpx.AsyncClient,
) -> None:
    await create(client, "one", ["delta", "Bravo", "alpha"])
    await create(client, "two", ["ALPHA", "echo"])
    await create(client, "three", ["alpha", "charlie"])
    assert await listed_tags(client) == {"alpha": 3, "Bravo": 1, "charlie": 1, "delta": 1, "echo": 1}

    first = await client.get(TAGS, params={"limit": 2}, headers=ALICE)
    assert first.json() == [{"name": "alpha", "tasks": 3}, {"name": "Bravo", "tasks": 1}]
    assert first.headers["X-Total-Count"] == "5"
    assert set(first.links) == {"next"}
    second = await client.get(first.links["next"]["url"], headers=ALICE)
    assert [tag["name"] for tag in second.json()] == ["charlie", "delta"]
    assert set(second.links) == {"next", "prev"}
    last = await client.get(second.links["next"]["url"], headers=ALICE)
    assert [tag["name"] for tag in last.json()] == ["echo"]
    assert last.headers["X-Total-Count"] == "5"
    assert set(last.links) == {"prev"}
    past = await client.get(TAGS, params={"offset": 10}, headers=ALICE)
    assert (past.json(), past.headers["X-Total-Count"]) == ([], "5")
    assert "Link" not in (await client.get(TAGS, headers=ALICE)).headers


# --- rename, merge, delete ----------------------------------------------------------------


async def etags(client: httpx.AsyncClient, *tasks: dict) -> list[str]:
    return [(await fetch(client, task["id"])).headers["ETag"] for task in tasks]


async def test_a_rename_renames_the_tag_on_every_task_and_touches_those_tasks(
    client: httpx.AsyncClient,
) -> None:
    both = await create(client, "both", ["work", "home"])
    work = await create(client, "work", ["work"])
    home = await create(client, "home", ["home"])
    before = await etags(client, both, work, home)

    renamed = await client.patch(tag_path("WORK"), json={"name": "  Job  "}, headers=ALICE)
    assert renamed.status_code == 200
    assert renamed.json() == {"name": "Job", "tasks": 2}
    assert await tags_of(client, both["id"]) == ["home", "Job"]
    assert await tags_of(client, work["id"]) == ["Job"]
    after = await etags(client, both, work, home)
    assert after[0] != before[0] and after[1] != before[1]
    assert after[2] == before[2]  # home's tags did not change
    assert (await fetch(client, work["id"])).json()["updated_at"] > work["updated_at"]
    assert await listed_tags(client) == {"home": 2, "Job": 2}
    assert await titles(client, tag="job", sort="title") == ["both", "work"]
    assert await titles(client, tag="work") == []
    gone = await client.patch(tag_path("work"), json={"name": "x"}, headers=ALICE)
    assert (gone.status_code, gone.json()) == (404, {"detail": "Tag not found"})


async def test_a_rename_that_changes_only_the_case_keeps_the_tag(client: httpx.AsyncClient) -> None:
    task = await create(client, "task", ["work"])
    before = await etags(client, task)
    renamed = await client.patch(tag_path("work"), json={"name": "Work"}, headers=ALICE)
    assert (renamed.status_code, renamed.json()) == (200, {"name": "Work", "tasks": 1})
    assert await tags_of(client, task["id"]) == ["Work"]
    assert await etags(client, task) != before


async def test_a_rename_onto_another_of_your_tags_is_409_unless_merge_and_the_409_changes_nothing(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    both = await create(client, "both", ["a", "b"])
    only_a = await create(client, "only a", ["a"])
    only_b = await create(client, "only b", ["b"])
    tasks = (both, only_a, only_b)
    before = await etags(client, *tasks)
    stored = admin_conn.execute("select * from tags order by id").fetchall()

    for merge in ({}, {"merge": "false"}):
        clash = await client.patch(tag_path("a"), params=merge, json={"name": "B"}, headers=ALICE)
        assert clash.status_code == 409
        assert clash.json() == {"detail": "you have a tag of that name already: merge=true merges them"}
    assert await etags(client, *tasks) == before
    assert admin_conn.execute("select * from tags order by id").fetchall() == stored

    merged = await client.patch(tag_path("A"), params={"merge": "true"}, json={"name": "B"}, headers=ALICE)
    assert merged.status_code == 200
    # The tag merged into keeps its own spelling; a task that had both has it once.
    assert merged.json() == {"name": "b", "tasks": 3}
    assert [await tags_of(client, task["id"]) for task in tasks] == [["b"], ["b"], ["b"]]
    assert await listed_tags(client) == {"b": 3}
    after = await etags(client, *tasks)
    assert after[0] != before[0] and after[1] != before[1]
    assert after[2] == before[2]  # it carried b all along
    assert await titles(client, tag="a") == []


async def test_delete_takes_the_tag_off_every_task_and_touches_them(client: httpx.AsyncClient) -> None:
    both = await create(client, "both", ["a", "b"])
    only_a = await create(client, "only a", ["a"])
    only_b = await create(client, "only b", ["b"])
    before = await etags(client, both, only_a, only_b)

    deleted = await client.delete(tag_path("A"), headers=ALICE)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert [await tags_of(client, task["id"]) for task in (both, only_a, only_b)] == [["b"], [], ["b"]]
    after = await etags(client, both, only_a, only_b)
    assert after[0] != before[0] and after[1] != before[1] and after[2] == before[2]
    assert await listed_tags(client) == {"b": 2}
    again = await client.delete(tag_path("a"), headers=ALICE)
    assert (again.status_code, again.json()) == (404, {"detail": "Tag not found"})
    # The tasks themselves stay.
    assert await titles(client, sort="title") == ["both", "only a", "only b"]
    # A new tag of the old name is a new tag, on no task.
    await client.patch(f"{TASKS}/{only_a['id']}", json={"tags": ["a"]}, headers=ALICE)
    assert await listed_tags(client) == {"a": 1, "b": 2}


async def test_renaming_or_deleting_a_tag_you_do_not_have_is_404_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    task = await create(client, "task", ["a"])
    before = await etags(client, task)
    missing = {"detail": "Tag not found"}
    for merge in ("false", "true"):
        renamed = await client.patch(
            tag_path("nope"), params={"merge": merge}, json={"name": "a"}, headers=ALICE
        )
        assert (renamed.status_code, renamed.json()) == (404, missing)
    deleted = await client.delete(tag_path("nope"), headers=ALICE)
    assert (deleted.status_code, deleted.json()) == (404, missing)
    assert await etags(client, task) == before
    assert await listed_tags(client) == {"a": 1}


# --- the tag filter ----------------------------------------------------------------------


async def seed_tagged(client: httpx.AsyncClient) -> None:
    await create(client, "A", ["work", "urgent"], priority="high")
    await create(client, "B", ["Work"], priority="low")
    await create(client, "C", ["urgent"], priority="high")
    done = await create(client, "D", ["WORK", "Urgent", "home"], priority="high")
    await create(client, "E")
    assert (await client.patch(f"{TASKS}/{done['id']}/complete", headers=ALICE)).status_code == 200


async def test_the_tag_filter_lists_tasks_with_all_the_tags_and_combines_with_the_others(
    client: httpx.AsyncClient,
) -> None:
    await seed_tagged(client)
    assert await titles(client, tag="work", sort="title") == ["A", "B", "D"]
    assert await titles(client, tag=["work", "urgent"], sort="title") == ["A", "D"]
    # Named twice, in two spellings: still one tag to have.
    assert await titles(client, tag=["WORK", "urgent", "work"], sort="title") == ["A", "D"]
    assert await titles(client, tag=["work", "urgent", "home"]) == ["D"]
    assert await titles(client, tag=["work", "nothing"]) == []
    assert await titles(client, tag="nothing") == []
    assert await titles(client, tag="work", status="pending", sort="title") == ["A", "B"]
    assert await titles(client, tag="urgent", priority="high", status="completed") == ["D"]
    assert await titles(client, tag="urgent", priority=["high", "low"], sort="title", order="desc") == [
        "D",
        "C",
        "A",
    ]
    # Low first, then the high ones in the order they were made.
    assert await titles(client, tag="work", sort="priority", order="asc") == ["B", "A", "D"]


async def test_the_tag_filter_counts_and_links_what_it_lets_through(client: httpx.AsyncClient) -> None:
    await seed_tagged(client)
    first = await client.get(TASKS, params={"tag": ["work"], "sort": "title", "limit": 2}, headers=ALICE)
    assert [task["title"] for task in first.json()] == ["A", "B"]
    assert first.headers["X-Total-Count"] == "3"
    assert set(first.links) == {"next"}
    assert "tag=work" in first.links["next"]["url"]
    last = await client.get(first.links["next"]["url"], headers=ALICE)
    assert [task["title"] for task in last.json()] == ["D"]
    assert last.headers["X-Total-Count"] == "3"
    assert set(last.links) == {"prev"}


# --- each task's copy of its tags ------------------------------------------------------


async def test_every_change_of_tags_keeps_each_tasks_copy_of_them(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """Answers and the tag filter read a task's copy of its tags' names, on its own row.
    Each way a task's tags or a tag's name changes (create, PATCH, PUT, a recurring
    task's next occurrence, rename, merge, delete) leaves every copy as task_tags and
    tags say, the other user's included."""
    bob = auth("bob")
    response = await client.post("/api/bob/tasks", json={"title": "bob's", "tags": ["work"]}, headers=bob)
    assert response.status_code == 201

    async def step(name: str, response: httpx.Response, status: int = 200) -> None:
        assert response.status_code == status, (name, response.text)
        assert admin_conn.execute(STALE_COPIES).fetchall() == [], name

    one = await create(client, "one", ["Work", "home", "Ärger"])
    await step("create", await fetch(client, one["id"]))
    assert one["tags"] == ["home", "Work", "Ärger"]
    recurring = await create(client, "two", ["work"], due_at="2027-03-01T09:00:00Z", recurrence="daily")
    await step(
        "PATCH",
        await client.patch(f"{TASKS}/{one['id']}", json={"tags": ["zeta", "ALPHA", "home"]}, headers=ALICE),
    )
    await step(
        "PUT", await client.put(f"{TASKS}/{one['id']}", json={"title": "one", "tags": []}, headers=ALICE)
    )
    await step("next occurrence", await client.patch(f"{TASKS}/{recurring['id']}/complete", headers=ALICE))
    assert await titles(client, tag="work") == ["two", "two"]
    await step("rename", await client.patch(tag_path("WORK"), json={"name": "Job"}, headers=ALICE))
    await step("rename, case only", await client.patch(tag_path("job"), json={"name": "JOB"}, headers=ALICE))
    three = await create(client, "three", ["x", "JOB", "y"])
    merged = await client.patch(tag_path("x"), params={"merge": "true"}, json={"name": "job"}, headers=ALICE)
    await step("merge", merged)
    assert await tags_of(client, three["id"]) == ["JOB", "y"]
    await step("delete a tag", await client.delete(tag_path("job"), headers=ALICE), 204)
    assert [await tags_of(client, task["id"]) for task in (recurring, three)] == [[], ["y"]]
    await step("delete a task", await client.delete(f"{TASKS}/{three['id']}", headers=ALICE), 204)
    # What the filter matches is the copy: a name no task carries any more finds nothing.
    assert await titles(client, tag="job") == []
    assert admin_conn.execute("select tag_names from tasks where user_id = 'bob'").fetchall() == [(["work"],)]


async def test_two_changes_of_one_tasks_tags_take_turns(
    client: httpx.AsyncClient, sessions: UserSessions, admin_conn: psycopg.Connection
) -> None:
    """app.set_task_tags locks the task first: a second change of the same task's tags
    waits for the first to commit, then replaces its tags whole. Without the lock it
    would not see the first one's new link, and the task would keep the links of both
    with a copy of the second's."""
    task = await create(client, "contested", ["old"])
    set_tags = "select app.set_task_tags($1, $2, $3)"
    async with sessions.connection("alice") as first:
        assert await first.fetchval(set_tags, task["id"], ["A"], ["a"])

        async def second() -> None:
            async with sessions.connection("alice") as connection:
                assert await connection.fetchval(set_tags, task["id"], ["B"], ["b"])

        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.5)
        assert not waiting.done()  # it waits for the first's lock on the task
    await asyncio.wait_for(waiting, 10)
    assert await tags_of(client, task["id"]) == ["B"]
    links = admin_conn.execute(
        "select g.name from task_tags tt join tags g on g.id = tt.tag_id where tt.task_id = %s", (task["id"],)
    ).fetchall()
    assert links == [("B",)]
    assert admin_conn.execute(STALE_COPIES).fetchall() == []


# --- bad input ---------------------------------------------------------------------------

CONTROL_CHARACTERS = ["a\x00b", "a\x07b", "a\nb", "a\tb", "a\x1bb", "a\x7fb", "a\x85b", "a\x9fb"]

# (label, tags as sent, the error's location after "body").
BAD_TAGS = [
    ("21 tags", [f"t{n}" for n in range(21)], ["tags"]),
    ("51 characters", ["x" * 51], ["tags", 0]),
    ("51 characters after good ones", ["ok", "y" * 51], ["tags", 1]),
    ("empty", [""], ["tags", 0]),
    ("whitespace only", ["  \t "], ["tags", 0]),
    *((f"control character {c!r}", ["fine", c], ["tags", 1]) for c in CONTROL_CHARACTERS),
    ("a lone surrogate", ["\ud800"], ["tags", 0]),
    ("a number", [5], ["tags", 0]),
    ("a string, not a list", "work", ["tags"]),
    ("null", None, ["tags"]),
]


async def test_bad_tags_are_422_naming_tags_and_change_nothing(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    task = await create(client, "task", ["kept"])
    url = f"{TASKS}/{task['id']}"
    before = await fetch(client, task["id"])
    for label, tags, where in BAD_TAGS:
        for method, path, body in (
            ("POST", TASKS, {"title": "new", "tags": tags}),
            ("PUT", url, {"title": "replaced", "tags": tags}),
            ("PATCH", url, {"title": "patched", "tags": tags}),
        ):
            # As JSON escapes: a lone surrogate cannot be written as UTF-8.
            content = json.dumps(body).encode()
            response = await client.request(method, path, content=content, headers=JSON_ALICE)
            assert response.status_code == 422, (label, method, response.text)
            locations = [error["loc"] for error in response.json()["detail"]]
            assert ["body", *where] in locations, (label, method, locations)
    after = await fetch(client, task["id"])
    assert (after.json(), after.headers["ETag"]) == (before.json(), before.headers["ETag"])
    assert admin_conn.execute("select title from tasks").fetchall() == [("task",)]
    assert admin_conn.execute("select name from tags").fetchall() == [("kept",)]


async def test_the_limits_on_tags_are_inclusive(client: httpx.AsyncClient) -> None:
    names = [f"{n:02d}" + "x" * 48 for n in range(20)]
    task = await create(client, "task", [f"  {name}  " for name in names])
    assert task["tags"] == names
    assert len(await listed_tags(client)) == 20


async def test_bad_tag_filters_are_422_naming_tag(client: httpx.AsyncClient) -> None:
    for label, value in [
        ("empty", ""),
        ("whitespace", "   "),
        ("51 characters", "x" * 51),
        ("control character", "a\x07b"),
        ("21 tags", [f"t{n}" for n in range(21)]),
    ]:
        response = await client.get(TASKS, params={"tag": value}, headers=ALICE)
        assert response.status_code == 422, (label, response.text)
        assert response.json()["detail"][0]["loc"][:2] == ["query", "tag"], label


async def test_bad_renames_and_bad_names_in_the_path_are_422_and_change_nothing(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    task = await create(client, "task", ["work"])
    before = await etags(client, task)
    stored = admin_conn.execute("select * from tags").fetchall()
    bad_bodies = [
        ({}, ["body", "name"]),
        ({"name": None}, ["body", "name"]),
        ({"name": ""}, ["body", "name"]),
        ({"name": "   "}, ["body", "name"]),
        ({"name": "x" * 51}, ["body", "name"]),
        ({"name": "a\nb"}, ["body", "name"]),
        ({"name": 5}, ["body", "name"]),
        ({"name": "ok", "user_id": "bob"}, ["body", "user_id"]),
    ]
    for body, where in bad_bodies:
        response = await client.patch(tag_path("work"), json=body, headers=ALICE)
        assert response.status_code == 422, (body, response.text)
        assert where in [error["loc"] for error in response.json()["detail"]], body
    for name in ("x" * 51, "a\x07b", " "):
        for method in ("PATCH", "DELETE"):
            response = await client.request(method, tag_path(name), json={"name": "ok"}, headers=ALICE)
            assert response.status_code == 422, (method, name, response.text)
            assert response.json()["detail"][0]["loc"] == ["path", "name"]
    assert await etags(client, task) == before
    assert admin_conn.execute("select * from tags").fetchall() == stored


async def test_a_tag_of_any_valid_name_can_be_renamed_and_deleted_by_it(client: httpx.AsyncClient) -> None:
    for name in ["a/b", "/", "a/", "50%", "what?", "#1", "a+b", "x&y=z", "..", "."]:
        task = await create(client, f"task {name}", [name])
        assert task["tags"] == [name]
        assert await titles(client, tag=name) == [task["title"]]
        # Percent-encoded, dots too: a client would otherwise resolve "." and ".." as path steps.
        path = f"{TAGS}/{quote(name, safe='').replace('.', '%2E')}"
        renamed = await client.patch(path, json={"name": name + "!"}, headers=ALICE)
        assert (renamed.status_code, renamed.json()) == (200, {"name": name + "!", "tasks": 1}), name
        assert await tags_of(client, task["id"]) == [name + "!"]
        deleted = await client.delete(f"{path}%21", headers=ALICE)
        assert deleted.status_code == 204, (name, deleted.text)
        assert await tags_of(client, task["id"]) == []
        assert await listed_tags(client) == {}


def test_folding_a_name_makes_at_most_what_the_database_keeps(admin_conn: psycopg.Connection) -> None:
    """NFKC makes 18 characters of one (U+FDFA), in composed or decomposed form: a name of
    50 folds to at most 900, which tags.folded must hold."""
    import sys
    import unicodedata

    from app.models import TAG_FOLDED_MAX, TAG_MAX, fold_tag

    def decomposed(c: str) -> str:
        return unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", c).casefold())

    characters = (chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    longest = max(max(len(fold_tag(c)), len(decomposed(c))) for c in characters)
    assert longest == 18
    row = admin_conn.execute(
        "select character_maximum_length from information_schema.columns"
        " where table_name = 'tags' and column_name = 'folded'"
    ).fetchone()
    assert TAG_MAX * longest <= TAG_FOLDED_MAX == (row[0] if row else None)


async def test_a_name_of_50_characters_that_folds_to_900_is_a_tag(client: httpx.AsyncClient) -> None:
    name = "\ufdfa" * 50  # each folds to 18 characters
    task = await create(client, "task", [name])
    assert task["tags"] == [name]
    assert await titles(client, tag=name) == ["task"]
    other = "\ufdfb" * 50
    renamed = await client.patch(tag_path(name), json={"name": other}, headers=ALICE)
    assert (renamed.status_code, renamed.json()) == (200, {"name": other, "tasks": 1})
    assert (await client.delete(tag_path(other), headers=ALICE)).status_code == 204
