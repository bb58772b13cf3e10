"""Full-text search, the list's `q`: what it matches, how it combines with the other
parameters and pages, the texts it refuses, and that no text makes it fail."""

from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tokens import auth

ALICE = auth("alice")
PATH = "/api/alice/tasks"

TASKS = {
    "Buy groceries": "milk, eggs and bread",
    "Grocery list for the party": None,
    "Call the plumber": "about the kitchen sink, it is LEAKING",
    "Write the report": "the quarterly groceries budget",
    "Running shoes": "buy new ones",
    "Crème brûlée": "für die ÄRZTE, Привет МИР",
}


async def seed(client: httpx.AsyncClient) -> dict[str, int]:
    ids = {}
    for title, description in TASKS.items():
        response = await client.post(PATH, json={"title": title, "description": description}, headers=ALICE)
        assert response.status_code == 201, response.text
        ids[title] = response.json()["id"]
    return ids


async def search(client: httpx.AsyncClient, q: str, **params: Any) -> list[str]:
    """The titles `q` finds (with `params`), in the answer's order; the count must agree."""
    response = await client.get(PATH, params={"q": q, **params}, headers=ALICE)
    assert response.status_code == 200, response.text
    titles = [task["title"] for task in response.json()]
    assert response.headers["X-Total-Count"] == str(len(titles))
    return titles


FINDS = [
    # A word, or the start of one, in the title or the description.
    ("groc", {"Buy groceries", "Grocery list for the party", "Write the report"}),
    ("plumb", {"Call the plumber"}),
    ("kitchen", {"Call the plumber"}),
    # English word forms.
    ("grocery", {"Buy groceries", "Grocery list for the party", "Write the report"}),
    ("groceries", {"Buy groceries", "Grocery list for the party", "Write the report"}),
    ("leaks", {"Call the plumber"}),
    ("run", {"Running shoes"}),
    ("runn", {"Running shoes"}),
    # Every word must match, each anywhere in title or description.
    ("buy groc", {"Buy groceries"}),
    ("buy shoes", {"Running shoes"}),
    ("buy plumber", set()),
    # Whatever the case.
    ("BUY GROCERIES", {"Buy groceries"}),
    ("leaking", {"Call the plumber"}),
    # Beyond ASCII, in either case.
    ("brûlée", {"Crème brûlée"}),
    ("CRÈME", {"Crème brûlée"}),
    ("ärzte", {"Crème brûlée"}),
    ("мир привет", {"Crème brûlée"}),
    ("прив", {"Crème brûlée"}),
    # A stop word with other words need not match: "Buy groceries" has no "the".
    ("the milk", {"Buy groceries"}),
    ("xylophone", set()),
    # A stop word alone is still a word: it finds the tasks that have it.
    ("the", {"Grocery list for the party", "Call the plumber", "Write the report"}),
]


async def test_what_a_search_finds(client: httpx.AsyncClient) -> None:
    await seed(client)
    for q, found in FINDS:
        assert set(await search(client, q)) == found, q


async def test_only_the_callers_tasks_are_searched(client: httpx.AsyncClient) -> None:
    await seed(client)
    bob = auth("bob")
    await client.post(
        "/api/bob/tasks", json={"title": "Zanzibar groceries", "description": "quokka"}, headers=bob
    )
    for q in ("zanzibar", "quokka", "zanz"):
        assert await search(client, q) == []
    # Bob's own search finds his, and none of alice's.
    response = await client.get("/api/bob/tasks", params={"q": "groc"}, headers=bob)
    assert [task["title"] for task in response.json()] == ["Zanzibar groceries"]
    assert response.headers["X-Total-Count"] == "1"


async def test_relevance_orders_the_better_matches_first(client: httpx.AsyncClient) -> None:
    # The best match is made first, so that the default order (the newest first) puts it last.
    ids = []
    for title, description in (
        ("groceries", "groceries, groceries and more groceries"),
        ("groceries", "the groceries list"),
        ("report", "about groceries"),
    ):
        response = await client.post(PATH, json={"title": title, "description": description}, headers=ALICE)
        ids.append(response.json()["id"])

    async def order_of(**params: str) -> list[int]:
        response = await client.get(PATH, params={"q": "groceries", **params}, headers=ALICE)
        return [task["id"] for task in response.json()]

    assert await order_of(sort="relevance") == ids
    assert await order_of(sort="relevance", order="asc") == ids[::-1]
    assert await order_of() == ids[::-1]


async def test_search_combines_with_filters_sorts_and_pages(client: httpx.AsyncClient) -> None:
    ids = await seed(client)
    await client.patch(f"{PATH}/{ids['Buy groceries']}/complete", headers=ALICE)
    await client.patch(
        f"{PATH}/{ids['Write the report']}",
        json={"priority": "high", "tags": ["work"], "due_at": "2027-01-01T00:00:00Z"},
        headers=ALICE,
    )
    await client.patch(
        f"{PATH}/{ids['Grocery list for the party']}", json={"due_at": "2027-06-01T00:00:00Z"}, headers=ALICE
    )
    assert await search(client, "groc", status="pending", sort="title") == [
        "Grocery list for the party",
        "Write the report",
    ]
    assert await search(client, "groc", status="completed") == ["Buy groceries"]
    assert await search(client, "groc", priority="high") == ["Write the report"]
    assert await search(client, "groc", tag="WORK") == ["Write the report"]
    assert await search(client, "groc", due_before="2027-03-01T00:00:00Z") == ["Write the report"]
    assert await search(client, "groc", sort="due") == [
        "Write the report",
        "Grocery list for the party",
        "Buy groceries",
    ]
    assert await search(client, "groc", sort="relevance", status="pending", priority="medium") == [
        "Grocery list for the party"
    ]

    # Pages: the count is of every match, and the links keep the search.
    first = await client.get(PATH, params={"q": "buy groc", "limit": 1}, headers=ALICE)
    assert (first.headers["X-Total-Count"], len(first.json())) == ("1", 1)
    assert "Link" not in first.headers
    page = await client.get(PATH, params={"q": "groc", "sort": "title", "limit": 2}, headers=ALICE)
    assert page.headers["X-Total-Count"] == "3"
    assert [task["title"] for task in page.json()] == ["Buy groceries", "Grocery list for the party"]
    link, rel = page.headers["Link"].split("; ")
    assert rel == 'rel="next"'
    following = await client.get(link.strip("<>"), headers=ALICE)
    assert [task["title"] for task in following.json()] == ["Write the report"]
    assert following.headers["X-Total-Count"] == "3"
    assert 'rel="prev"' in following.headers["Link"] and 'rel="next"' not in following.headers["Link"]


@pytest.mark.parametrize(
    "q",
    [
        "",
        " ",
        "\t\n",
        "a" * 201,
        "groceries\x00",
    ],
    ids=["empty", "a space", "whitespace", "201 characters", "a NUL"],
)
async def test_a_search_text_that_is_no_search_is_422_naming_q(client: httpx.AsyncClient, q: str) -> None:
    response = await client.get(PATH, params={"q": q}, headers=ALICE)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["query", "q"]]


async def test_200_characters_is_a_search(client: httpx.AsyncClient) -> None:
    await client.post(PATH, json={"title": "a" * 200}, headers=ALICE)
    assert await search(client, " " + "a" * 200 + " ") == ["a" * 200]


async def test_sort_by_relevance_needs_q(client: httpx.AsyncClient) -> None:
    response = await client.get(PATH, params={"sort": "relevance"}, headers=ALICE)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", "q"]]


PLAIN_TEXT = [
    # Operators and punctuation are plain text: the words around them count.
    ("buy & groceries", {"Buy groceries"}),
    ("buy | plumber", set()),
    ("!buy groceries", {"Buy groceries"}),
    ("groc:*", {"Buy groceries", "Grocery list for the party", "Write the report"}),
    ("buy <-> groceries", {"Buy groceries"}),
    # A number is a word like any other: no task has "2".
    ("buy <2> groceries", set()),
    ("(buy) groceries", {"Buy groceries"}),
    ("'buy' 'groceries'", {"Buy groceries"}),
    ("buy' groceries''", {"Buy groceries"}),
    ("\\buy\\ groceries\\", {"Buy groceries"}),
    ("buy:A groceries:*B", {"Buy groceries"}),
    ("plumber's", {"Call the plumber"}),
    # Nothing searchable at all: nothing found, not an error.
    ("!!! ... ???", set()),
    ("& | ! <-> ( ) :* ' \\", set()),
    ("'", set()),
    ("''", set()),
    # Only stop words, which no task has as (the start of) a word.
    ("were we", set()),
]


async def test_query_syntax_is_plain_text(client: httpx.AsyncClient) -> None:
    await seed(client)
    for q, found in PLAIN_TEXT:
        assert set(await search(client, q)) == found, q
        assert set(await search(client, q, sort="relevance")) == found, q


async def test_text_that_is_not_utf_8_is_searched_as_replacement_characters(
    client: httpx.AsyncClient,
) -> None:
    await seed(client)
    # A lone surrogate (as UTF-8 would have it), bytes that are no UTF-8, a cut sequence:
    # each becomes U+FFFD, which separates words as punctuation does.
    groc = {"Buy groceries", "Grocery list for the party", "Write the report"}
    for raw, found in (("%ED%A0%80", set()), ("%FF%FE", set()), ("groc%C3", groc), ("%F0%9F%98%80", set())):
        response = await client.get(f"{PATH}?q={raw}", headers=ALICE)
        assert response.status_code == 200, (raw, response.text)
        assert {task["title"] for task in response.json()} == found, raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Any text but NUL (a 422) and lone surrogates (which UTF-8, and so a URL, cannot carry).
@given(
    typed=st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=200
    )
)
def test_any_text_makes_a_query(admin_conn: psycopg.Connection, typed: str) -> None:
    """The database's half of a search, for any text a request may carry: it builds a
    query and matches with it, never a syntax error (which would be a 5xx)."""
    row = admin_conn.execute(
        "select app.task_search_vector(%s, null) @@ app.task_search_query(%s)", (typed, typed)
    ).fetchone()
    assert row is not None and isinstance(row[0], bool)
