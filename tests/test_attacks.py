"""Attacks on the running service over HTTP: other users' paths, ids (of tasks and of
conversations with the assistant) and tag names, forged tokens, hostile user ids in the
path, search terms. None may answer 5xx, show
another user's row, or change one.

One real server (uvicorn in a subprocess) for the module. After every test, the victim's
rows, read by a superuser that row-level security does not bind, are byte-for-byte what
they were before it.
"""

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.live_server import LiveService, live_service
from tests.tokens import OMIT, forge, make_token

# Rate limits off: a 429 would end an attack before it reached what it attacks.
service = live_service("attacks", rate_limit_requests="", rate_limit_writes="")

VICTIM = "victim"
MALLORY = "mallory"
OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256-xx"
MISSING_ID = 2**62  # a valid id that no row has
FORBIDDEN = {"detail": "token subject does not match the user_id in the path"}
NO_ROUTE = {"detail": "Not Found"}

# The victim's tags. Attackers ask for them by name on their own paths.
VICTIM_TAGS = ["Finance", "Secret", "family", "Project X"]
# (method, path under /api/{user_id}, body). {id} is a task id.
ROUTES = [
    ("GET", "/tasks", None),
    ("POST", "/tasks", {"title": "pwned"}),
    ("GET", "/tasks/{id}", None),
    ("PUT", "/tasks/{id}", {"title": "pwned", "description": "pwned", "completed": True, "tags": ["pwned"]}),
    ("PATCH", "/tasks/{id}", {"title": "pwned", "completed": True, "tags": ["Secret"]}),
    ("DELETE", "/tasks/{id}", None),
    ("PATCH", "/tasks/{id}/complete", None),
    ("GET", "/tags", None),
    ("PATCH", "/tags/secret", {"name": "pwned"}),
    ("DELETE", "/tags/secret", None),
    ("GET", "/conversations", None),
    ("GET", "/conversations/{id}/messages", None),
    ("DELETE", "/conversations/{id}", None),
    ("POST", "/chat", {"message": "Show me all my tasks, then delete every task"}),
]
TASK_ROUTES = [route for route in ROUTES if route[1].startswith("/tasks/{id}")]
# {id} is a conversation id.
CONVERSATION_ROUTES = [route for route in ROUTES if route[1].startswith("/conversations/{id}")]


def bearer(token: str | bytes) -> dict[str, Any]:
    prefix = b"Bearer " if isinstance(token, bytes) else "Bearer "
    return {"Authorization": prefix + token}  # type: ignore[operator]


def claims(sub: Any = VICTIM, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + 3600, **extra}


def task_path(user: str, route_path: str, task_id: int) -> str:
    return f"/api/{user}{route_path.format(id=task_id)}"


def snapshot(service: LiveService, user: str = VICTIM) -> str:
    """The user's rows as the database stores them (tasks, tags and the links between
    them, conversations and their messages), as JSON text."""
    row = service.admin.execute(
        "select json_build_object("
        " 'tasks', (select coalesce(json_agg(t order by t.id), '[]') from tasks t where t.user_id = %(u)s),"
        " 'tags', (select coalesce(json_agg(g order by g.id), '[]') from tags g where g.user_id = %(u)s),"
        " 'task_tags', (select coalesce(json_agg(l order by l.task_id, l.tag_id), '[]')"
        "  from task_tags l where l.user_id = %(u)s),"
        " 'conversations', (select coalesce(json_agg(c order by c.id), '[]')"
        "  from conversations c where c.user_id = %(u)s),"
        " 'messages', (select coalesce(json_agg(m order by m.id), '[]')"
        "  from messages m where m.user_id = %(u)s))::text",
        {"u": user},
    ).fetchone()
    assert row is not None
    return str(row[0])


def assert_clean(response: httpx.Response, *statuses: int) -> None:
    """One of `statuses`, with a JSON `{"detail": ...}` body (or none for 204)."""
    where = f"{response.request.method} {response.request.url.raw_path!r}"
    assert response.status_code in statuses, f"{where}: {response.status_code} {response.text[:500]}"
    if response.status_code != 204:
        assert response.headers["content-type"] == "application/json", where
        if response.status_code >= 400:
            assert isinstance(response.json().get("detail"), str | list), where


# Headers that differ on every response by design.
PER_RESPONSE_HEADERS = frozenset({"date", "x-request-id"})


def same_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in PER_RESPONSE_HEADERS}


def assert_only_own(response: httpx.Response, user: str) -> None:
    """Every task in a 2xx answer belongs to `user`."""
    if not response.is_success or response.status_code == 204:
        return
    body = response.json()
    for task in body if isinstance(body, list) else [body]:
        assert task["user_id"] == user, f"{response.request.url}: {task}"


@pytest.fixture(scope="module")
def http(service: LiveService) -> Iterator[httpx.Client]:
    def no_server_errors(response: httpx.Response) -> None:
        # Whatever a test expects, a 5xx fails it, with the server's log to say why.
        if response.status_code >= 500:
            response.read()
            request = f"{response.request.method} {response.request.url.raw_path!r}"
            raise AssertionError(
                f"{request} answered {response.status_code} {response.text[:300]}; "
                f"server log:\n{service.server.output()[-6000:]}"
            )

    with httpx.Client(
        base_url=service.base_url, timeout=10.0, event_hooks={"response": [no_server_errors]}
    ) as client:
        yield client


def create(http: httpx.Client, user: str, title: str, **body: Any) -> dict[str, Any]:
    response = http.post(
        f"/api/{quote(user, safe='')}/tasks", json={"title": title, **body}, headers=bearer(make_token(user))
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def victim_ids(http: httpx.Client) -> list[int]:
    tasks = [
        create(http, VICTIM, "pay rent", description="before the 5th", tags=["Finance", "Secret"]),
        create(http, VICTIM, "call mum", description="ünïcødé 🙂", tags=["family"]),
        create(http, VICTIM, "secret plan", tags=["Secret", "Project X"]),
    ]
    done = http.patch(f"/api/{VICTIM}/tasks/{tasks[1]['id']}/complete", headers=bearer(make_token(VICTIM)))
    assert done.status_code == 200
    create(http, MALLORY, "mallory's own task")
    return [task["id"] for task in tasks]


@pytest.fixture(scope="module")
def victim_conversations(service: LiveService) -> list[int]:
    """Two conversations of the victim's with the assistant, with messages of every role.
    Written by the superuser: no route starts a conversation but the chat's."""
    ids = []
    for title in ("salary negotiation", "medical question"):
        row = service.admin.execute(
            "insert into conversations (user_id, title) values (%s, %s) returning id", (VICTIM, title)
        ).fetchone()
        assert row is not None
        ids.append(row[0])
        service.admin.execute(
            "insert into messages (user_id, conversation_id, role, content, tool_calls, failure) values"
            " (%(u)s, %(c)s, 'user', %(t)s, null, null),"
            ' (%(u)s, %(c)s, \'assistant\', \'\', \'[{"id": "call_1", "type": "function"}]\', null),'
            " (%(u)s, %(c)s, 'tool', '{\"ok\": true}', null, null),"
            " (%(u)s, %(c)s, 'user', 'are you there?', null, 'provider_timeout')",
            {"u": VICTIM, "c": row[0], "t": f"about my {title}"},
        )
    return ids


@pytest.fixture(autouse=True)
def victims_rows_are_unchanged(
    service: LiveService, victim_ids: list[int], victim_conversations: list[int]
) -> Iterator[None]:
    before = snapshot(service)
    stored = json.loads(before)
    assert len(stored["tasks"]) == len(victim_ids)
    assert sorted(tag["name"] for tag in stored["tags"]) == sorted(VICTIM_TAGS)
    assert [c["id"] for c in stored["conversations"]] == victim_conversations
    assert len(stored["messages"]) == 4 * len(victim_conversations)
    yield
    assert snapshot(service) == before, "an attack changed the victim's rows"


# --- another user's path, another user's task id ---------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_another_users_token_on_the_victims_path_is_403(
    http: httpx.Client, victim_ids: list[int], method: str, path: str, body: Any
) -> None:
    for task_id in victim_ids:
        response = http.request(
            method, task_path(VICTIM, path, task_id), json=body, headers=bearer(make_token(MALLORY))
        )
        assert_clean(response, 403)
        assert response.json() == FORBIDDEN


@pytest.mark.parametrize(("method", "path", "body"), TASK_ROUTES)
def test_the_victims_task_id_on_your_own_path_is_the_same_404_as_a_missing_id(
    http: httpx.Client, victim_ids: list[int], method: str, path: str, body: Any
) -> None:
    token = bearer(make_token(MALLORY))
    missing = http.request(method, task_path(MALLORY, path, MISSING_ID), json=body, headers=token)
    assert_clean(missing, 404)
    for task_id in victim_ids:
        foreign = http.request(method, task_path(MALLORY, path, task_id), json=body, headers=token)
        assert foreign.status_code == 404
        assert foreign.content == missing.content
        assert same_headers(foreign) == same_headers(missing)
    # Tags named in a write that found no task were made for no one.
    assert http.get(f"/api/{MALLORY}/tags", headers=token).json() == []


@pytest.mark.parametrize(("method", "path", "body"), CONVERSATION_ROUTES)
def test_the_victims_conversation_id_on_your_own_path_is_the_same_404_as_a_missing_id(
    http: httpx.Client, victim_conversations: list[int], method: str, path: str, body: Any
) -> None:
    token = bearer(make_token(MALLORY))
    missing = http.request(method, task_path(MALLORY, path, MISSING_ID), json=body, headers=token)
    assert_clean(missing, 404)
    assert missing.json() == {"detail": "Conversation not found"}
    for conversation_id in victim_conversations:
        foreign = http.request(method, task_path(MALLORY, path, conversation_id), json=body, headers=token)
        assert foreign.status_code == 404
        assert foreign.content == missing.content
        assert same_headers(foreign) == same_headers(missing)
        # On the victim's path with mallory's token: the 403 of every route.
        response = http.request(method, task_path(VICTIM, path, conversation_id), json=body, headers=token)
        assert_clean(response, 403)
        assert response.json() == FORBIDDEN
    listed = http.get(f"/api/{MALLORY}/conversations", params={"limit": 100}, headers=token)
    assert_clean(listed, 200)
    assert (listed.json(), listed.headers["X-Total-Count"]) == ([], "0")


def test_hostile_conversation_ids_and_list_parameters_are_422(http: httpx.Client) -> None:
    token = bearer(make_token(MALLORY))
    for conversation_id in HOSTILE_IDS:
        for method, path, body in CONVERSATION_ROUTES:
            response = http.request(
                method, f"/api/{MALLORY}{path.replace('{id}', conversation_id)}", json=body, headers=token
            )
            assert_clean(response, 422)
    for query in ({"limit": "1000000"}, {"limit": "0"}, {"limit": "1 OR 1=1"}, {"offset": "-1"}):
        for path in ("/conversations", f"/conversations/{MISSING_ID}/messages"):
            assert_clean(http.get(f"/api/{MALLORY}{path}", params=query, headers=token), 422)


def test_your_own_list_never_holds_the_victims_tasks(http: httpx.Client, victim_ids: list[int]) -> None:
    response = http.get(f"/api/{MALLORY}/tasks", params={"limit": 100}, headers=bearer(make_token(MALLORY)))
    assert_clean(response, 200)
    assert_only_own(response, MALLORY)
    assert response.json(), "mallory has a task of her own"
    assert not {task["id"] for task in response.json()} & set(victim_ids)


# --- forged and broken tokens, all claiming to be the victim ----------------------------

SIGNATURE_INVALID = "token signature is invalid"
ALG_REFUSED = "token algorithm is not accepted"
MALFORMED = "malformed token"
BAD_SUB = "token 'sub' must be a string"
SUB_LENGTH = "token 'sub' must be 1 to 255 characters, without NUL"
HS256 = {"alg": "HS256", "typ": "JWT"}

BAD_TOKENS: dict[str, tuple[str | bytes, str]] = {
    "signed with another key": (make_token(VICTIM, secret=OTHER_SECRET), SIGNATURE_INVALID),
    "signed with an empty key": (forge(HS256, claims(), key=""), SIGNATURE_INVALID),
    "alg none, no signature": (forge({"alg": "none"}, claims(), signature=""), ALG_REFUSED),
    "alg None, no signature": (forge({"alg": "None"}, claims(), signature=""), ALG_REFUSED),
    "alg none with a valid HS256 signature": (forge({"alg": "none"}, claims()), ALG_REFUSED),
    "no alg": (forge({"typ": "JWT"}, claims()), ALG_REFUSED),
    "alg hs256 in lower case": (forge({"alg": "hs256"}, claims()), ALG_REFUSED),
    "HS384 with the right key": (forge({"alg": "HS384"}, claims(), digest=hashlib.sha384), ALG_REFUSED),
    "HS512 with the right key": (forge({"alg": "HS512"}, claims(), digest=hashlib.sha512), ALG_REFUSED),
    "RS256 header, HMAC signature": (forge({"alg": "RS256"}, claims()), ALG_REFUSED),
    "kid path traversal, another key": (
        forge({**HS256, "kid": "../../../../dev/null"}, claims(), key=OTHER_SECRET),
        SIGNATURE_INVALID,
    ),
    "jku to an attacker's keys": (
        forge({**HS256, "jku": "http://127.0.0.1:1/jwks.json"}, claims(), key=OTHER_SECRET),
        SIGNATURE_INVALID,
    ),
    "expired an hour ago": (make_token(VICTIM, ttl=-3600), "token has expired"),
    "not valid for an hour (nbf)": (
        make_token(VICTIM, nbf=int(time.time()) + 3600),
        "token is not valid yet",
    ),
    "issued in an hour (iat)": (make_token(VICTIM, iat=int(time.time()) + 3600), "token is not valid yet"),
    "no sub": (make_token(OMIT), "token has no 'sub' claim"),
    "sub null": (make_token(None), "token has no 'sub' claim"),
    "no exp": (make_token(VICTIM, exp=OMIT), "token has no 'exp' claim"),
    "sub a number": (make_token(42), BAD_SUB),
    "sub a list": (make_token([VICTIM]), BAD_SUB),
    "sub an object": (make_token({"id": VICTIM}), BAD_SUB),
    "sub a boolean": (make_token(True), BAD_SUB),
    "sub empty": (make_token(""), SUB_LENGTH),
    "sub victim + NUL": (make_token(VICTIM + "\x00"), SUB_LENGTH),
    "sub victim + a lone surrogate": (
        forge(HS256, claims(VICTIM + "\ud800")),
        "token 'sub' is not valid Unicode text",
    ),
    "not a JWT": ("not-a-jwt", MALFORMED),
    "three garbage parts": ("abc.def.ghi", MALFORMED),
    "empty parts": ("..", MALFORMED),
    "four parts": (make_token(VICTIM) + ".x", MALFORMED),
    "signature cut short": (make_token(VICTIM, secret=OTHER_SECRET)[:-10], MALFORMED),
    "header not JSON": (forge(b"hello", claims()), MALFORMED),
    "header a JSON list": (forge(["HS256"], claims()), MALFORMED),
    "claims not JSON": (forge(HS256, b"{sub: victim"), MALFORMED),
    "claims a JSON list": (forge(HS256, [VICTIM]), MALFORMED),
    "non-ASCII bytes": (b"\xc3\xa9\xff.\xfe.\x80", MALFORMED),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_forged_and_broken_tokens_are_401_on_every_route(
    http: httpx.Client, victim_ids: list[int], case: str
) -> None:
    token, reason = BAD_TOKENS[case]
    for method, path, body in ROUTES:
        response = http.request(
            method, task_path(VICTIM, path, victim_ids[0]), json=body, headers=bearer(token)
        )
        assert_clean(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["detail"] == reason, case


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(
            "Bearer " + make_token(VICTIM, secret=OTHER_SECRET, padding="x" * 20_000), id="20kB token"
        ),
        pytest.param("Bearer " + "A" * 20_000, id="20kB garbage"),
        pytest.param("Bearer " + "A" * 200_000, id="200kB garbage"),
        pytest.param("Basic " + base64.b64encode(b"victim:" + b"p" * 20_000).decode(), id="20kB basic"),
    ],
)
def test_oversized_authorization_headers_are_refused_cleanly(
    http: httpx.Client, victim_ids: list[int], header: str
) -> None:
    for method, path, body in ROUTES:
        response = http.request(
            method, task_path(VICTIM, path, victim_ids[0]), json=body, headers={"Authorization": header}
        )
        # The server may refuse the header before the app sees it; then it must still
        # be a 4xx, with JSON or nothing in the body.
        assert 400 <= response.status_code < 500, (method, path, response.status_code, response.text[:300])
        if response.content:
            assert isinstance(response.json(), dict)


# --- hostile user ids in the path -------------------------------------------------------

# User ids that a token can carry and the database must take literally: SQL, LIKE
# wildcards, escapes, Unicode. (label, user id)
LITERAL_USERS = [
    ("sql or", "' OR '1'='1"),
    ("sql comment", "victim'--"),
    ("sql drop", '"; drop table tasks; --'),
    ("like percent", "%"),
    ("like percent victim", "vic%"),
    ("like underscore", "victi_"),
    ("percent 25", "%25"),
    ("backslash", "victim\\"),
    ("query and fragment", "victim?user_id=victim#x"),
    ("unicode", "ünïcødé"),
    ("emoji", "🙂👩‍💻"),
    ("rtl override", "\u202emitciv"),
    ("arabic", "مستخدم"),
    ("case twin", "VICTIM"),
    ("trailing space", "victim "),
    ("zero width", "victim\u200b"),
    ("fullwidth", "\uff56\uff49\uff43\uff54\uff49\uff4d"),
    ("nfd twin", "cafe\u0301"),
    ("nfc twin", "caf\u00e9"),
    ("255 chars", "u" * 255),
]


@pytest.mark.parametrize(
    "user", [user for _, user in LITERAL_USERS], ids=[label for label, _ in LITERAL_USERS]
)
def test_hostile_user_ids_reach_the_database_as_themselves_and_see_only_their_own_rows(
    http: httpx.Client, victim_ids: list[int], user: str
) -> None:
    token = bearer(make_token(user))
    base = f"/api/{quote(user, safe='')}/tasks"

    def call(method: str, path: str = "", body: Any = None, *statuses: int) -> httpx.Response:
        response = http.request(method, base + path, json=body, headers=token)
        assert_clean(response, *statuses)
        assert_only_own(response, user)
        return response

    assert call("GET", "", None, 200).json() == []
    response = call("POST", "", {"title": "mine"}, 201)
    created = response.json()
    assert created["user_id"] == user
    assert response.headers["location"].isascii()
    assert http.get(response.headers["location"], headers=token).json() == created
    own = created["id"]
    assert call("GET", f"/{own}", None, 200).json() == created
    listed = call("GET", "?limit=100", None, 200).json()
    assert [task["id"] for task in listed] == [own]
    for victim_id in victim_ids:
        for method, path, body in TASK_ROUTES:
            call(method, path.format(id=victim_id), body, 404)
    assert call("PATCH", f"/{own}/complete", None, 200).json()["completed"] is True
    assert call("PUT", f"/{own}", {"title": "renamed"}, 200).json()["title"] == "renamed"
    # One task stays, so that a later look-alike id that the database confused with this
    # one (case, normalisation, trailing space) would find it in its first, empty list.
    kept = call("POST", "", {"title": "kept"}, 201).json()
    call("DELETE", f"/{own}", None, 204)
    assert call("GET", "", None, 200).json() == [kept]


# Paths whose user id no token may act for: (label, path segment as sent, the token's sub,
# what the owner's own token gets). The server decodes %2F and %2E before routing.
UNREACHABLE_USERS = [
    ("nul", "victim%00", VICTIM + "\x00", 401),
    ("nul only", "%00", "\x00", 401),
    ("256 chars", "u" * 256, "u" * 256, 401),
    ("300 chars", "v" * 300, "v" * 300, 401),
    ("5000 chars", "w" * 5000, "w" * 5000, 401),
    ("encoded slash", "alice%2Fbob", "alice/bob", 404),
    ("encoded slash to victim", "mallory%2F..%2Fvictim", "mallory/../victim", 404),
    ("dot segments to victim", "mallory/%2E%2E/victim", "mallory/../victim", 404),
    ("victim and encoded slash", "victim%2F", "victim/", 404),
]


@pytest.mark.parametrize(
    ("segment", "sub", "own_status"),
    [case[1:] for case in UNREACHABLE_USERS],
    ids=[case[0] for case in UNREACHABLE_USERS],
)
def test_hostile_user_ids_that_no_token_may_carry_are_refused_on_every_route(
    http: httpx.Client, victim_ids: list[int], segment: str, sub: str, own_status: int
) -> None:
    for method, path, body in ROUTES:
        target = f"/api/{segment}{path.format(id=victim_ids[0])}"
        own = http.request(method, target, json=body, headers=bearer(make_token(sub)))
        assert_clean(own, own_status)
        for other in (MALLORY, VICTIM):
            response = http.request(method, target, json=body, headers=bearer(make_token(other)))
            # 403 when the route matched (the ids differ), 404 when no route did.
            assert_clean(response, 404 if own_status == 404 else 403)
            assert response.json() == (NO_ROUTE if own_status == 404 else FORBIDDEN)


# --- hostile task ids and query parameters on your own path -----------------------------


HOSTILE_IDS = [
    "0",
    "-1",
    "1.5",
    "1e3",
    "0x10",
    "9223372036854775808",
    "9" * 40,
    "1%20OR%201=1",
    "1;delete",
    "%00",
    "%20",
    "%ED%A0%80",  # U+D800 as UTF-8 would have it, which is not UTF-8
]


@pytest.mark.parametrize("task_id", HOSTILE_IDS)
def test_hostile_task_ids_are_422_on_every_task_route(http: httpx.Client, task_id: str) -> None:
    for method, path, body in TASK_ROUTES:
        response = http.request(
            method,
            f"/api/{MALLORY}{path.replace('{id}', task_id)}",
            json=body,
            headers=bearer(make_token(MALLORY)),
        )
        assert_clean(response, 422)


def test_the_victims_ids_in_other_spellings_are_still_404(http: httpx.Client, victim_ids: list[int]) -> None:
    token = bearer(make_token(MALLORY))
    for victim_id in victim_ids:
        for spelling in (f"0{victim_id}", f"00{victim_id}", f"+{victim_id}"):
            for method, path, body in TASK_ROUTES:
                response = http.request(
                    method, f"/api/{MALLORY}{path.replace('{id}', spelling)}", json=body, headers=token
                )
                assert_clean(response, 404, 422)


@pytest.mark.parametrize(
    "query",
    [
        {"status": "' OR 1=1 --"},
        {"sort": "title; drop table tasks"},
        {"sort": "user_id"},
        {"order": "asc, user_id"},
        {"limit": "1 OR 1=1"},
        {"limit": "1000000"},
        {"limit": "-1"},
        {"offset": "-1"},
        {"offset": "99999999999999999999"},
    ],
)
def test_hostile_list_parameters_are_422(http: httpx.Client, query: dict[str, str]) -> None:
    response = http.get(f"/api/{MALLORY}/tasks", params=query, headers=bearer(make_token(MALLORY)))
    assert_clean(response, 422)


@pytest.mark.parametrize(
    "query", [{"user_id": VICTIM}, {"user_id": "%"}, {"sub": VICTIM}, {"offset": "0", "limit": "100"}]
)
def test_unknown_list_parameters_change_nothing_about_whose_rows_you_see(
    http: httpx.Client, victim_ids: list[int], query: dict[str, str]
) -> None:
    response = http.get(f"/api/{MALLORY}/tasks", params=query, headers=bearer(make_token(MALLORY)))
    assert_clean(response, 200)
    assert_only_own(response, MALLORY)
    assert not {task["id"] for task in response.json()} & set(victim_ids)


def test_surrogates_in_the_path_query_and_body_are_never_a_5xx(http: httpx.Client) -> None:
    """%ED%A0%80 would be U+D800 in UTF-8, which is not UTF-8: the server decodes the path
    and the query with U+FFFD in its place. Only JSON's "\\ud800" can carry a surrogate."""
    token = bearer(make_token(MALLORY))
    replaced = "\ufffd" * 3
    # In the path, an ordinary user id of three U+FFFD: not mallory's, but its own token's.
    response = http.get("/api/%ED%A0%80/tasks", headers=token)
    assert_clean(response, 403)
    assert response.json() == FORBIDDEN
    response = http.get("/api/%ED%A0%80/tasks", headers=bearer(make_token(replaced)))
    assert_clean(response, 200)
    assert response.json() == []
    # In a query value (refused, and echoed as replaced) and a query name (ignored).
    response = http.get(f"/api/{MALLORY}/tasks?status=%ED%A0%80", headers=token)
    assert_clean(response, 422)
    assert response.json()["detail"][0]["input"] == replaced
    assert_clean(http.get(f"/api/{MALLORY}/tasks?%ED%A0%80=1", headers=token), 200)
    # In JSON, a real surrogate: a 422 naming the field.
    response = http.post(
        f"/api/{MALLORY}/tasks",
        content=json.dumps({"title": "\ud800"}).encode(),
        headers={**token, "Content-Type": "application/json"},
    )
    assert_clean(response, 422)
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "title"]]


def test_a_body_naming_the_victim_is_refused_and_writes_nothing(
    http: httpx.Client, victim_ids: list[int]
) -> None:
    token = bearer(make_token(MALLORY))
    for body in ({"title": "x", "user_id": VICTIM}, {"title": "x", "id": victim_ids[0]}):
        assert_clean(http.post(f"/api/{MALLORY}/tasks", json=body, headers=token), 422)
        for method, path, _ in TASK_ROUTES:
            if method in ("PUT", "PATCH") and not path.endswith("complete"):
                response = http.request(
                    method, f"/api/{MALLORY}{path.format(id=victim_ids[0])}", json=body, headers=token
                )
                assert_clean(response, 404, 422)


# --- another user's tags and words -----------------------------------------------------


def same_answer(response: httpx.Response, other: httpx.Response) -> bool:
    return (response.status_code, response.content, same_headers(response)) == (
        other.status_code,
        other.content,
        same_headers(other),
    )


@pytest.mark.parametrize(
    "tags",
    [["Secret"], ["secret"], ["SECRET", "family"], ["Project X"], ["finance", "no such tag"]],
    ids=lambda tags: "+".join(tags),
)
def test_the_victims_tag_names_in_the_filter_are_the_same_answer_as_a_missing_tag(
    http: httpx.Client, victim_ids: list[int], tags: list[str]
) -> None:
    token = bearer(make_token(MALLORY))
    path = f"/api/{MALLORY}/tasks"
    missing = http.get(path, params={"tag": "no such tag"}, headers=token)
    assert_clean(missing, 200)
    assert (missing.json(), missing.headers["X-Total-Count"]) == ([], "0")
    for extra in ({}, {"status": "all", "sort": "title"}, {"q": "rent"}):
        foreign = http.get(path, params={"tag": tags, **extra}, headers=token)
        assert_clean(foreign, 200)
        assert same_answer(foreign, http.get(path, params={"tag": "no such tag", **extra}, headers=token))
        assert foreign.json() == [], (tags, extra)


def test_the_victims_tag_names_are_the_same_404_as_a_missing_tag_to_rename_and_delete(
    http: httpx.Client, victim_ids: list[int]
) -> None:
    token = bearer(make_token(MALLORY))
    for method, body, params in [
        ("PATCH", {"name": "pwned"}, {}),
        ("PATCH", {"name": "pwned"}, {"merge": "true"}),
        ("PATCH", {"name": "Finance"}, {"merge": "true"}),
        ("DELETE", None, {}),
    ]:

        def ask(name: str) -> httpx.Response:
            path = f"/api/{MALLORY}/tags/{quote(name, safe='')}"
            return http.request(method, path, json=body, params=params, headers=token)  # noqa: B023

        missing = ask("no such tag")
        assert_clean(missing, 404)
        assert missing.json() == {"detail": "Tag not found"}
        for name in [*VICTIM_TAGS, "secret", "SECRET", "project x"]:
            assert same_answer(ask(name), missing), (method, params, name)


def test_names_the_victim_has_are_yours_to_make_rename_and_merge_apart_from_theirs(
    http: httpx.Client, victim_ids: list[int]
) -> None:
    user = "eve-names"
    token = bearer(make_token(user))
    base = f"/api/{user}"

    def call(method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
        response = http.request(method, base + path, json=body, params=params, headers=token)
        if path.startswith("/tasks"):
            assert_only_own(response, user)
        return response

    # Making a tag of a name the victim has: your own, in your own spelling.
    assert create(http, user, "mine", tags=["secret"])["tags"] == ["secret"]
    assert create(http, user, "other", tags=["mine"])["tags"] == ["mine"]
    # Renaming to a name only the victim has is no clash.
    renamed = call("PATCH", "/tags/mine", {"name": "Finance"})
    assert (renamed.status_code, renamed.json()) == (200, {"name": "Finance", "tasks": 1})
    # Onto a name of your own it is, and a merge merges into yours.
    assert_clean(call("PATCH", "/tags/finance", {"name": "SECRET"}), 409)
    merged = call("PATCH", "/tags/finance", {"name": "SECRET"}, merge="true")
    assert (merged.status_code, merged.json()) == (200, {"name": "secret", "tasks": 2})
    listed = call("GET", "/tags")
    assert (listed.json(), listed.headers["X-Total-Count"]) == ([{"name": "secret", "tasks": 2}], "1")
    # A name with a slash, as the real server decodes %2F.
    slashed = create(http, user, "slashed", tags=["a/b"])
    renamed = call("PATCH", "/tags/a%2Fb", {"name": "family"})
    assert (renamed.status_code, renamed.json()) == (200, {"name": "family", "tasks": 1})
    for name in ("secret", "family"):
        assert_clean(call("DELETE", f"/tags/{name}"), 204)
    assert call("GET", "/tags").json() == []
    assert call("GET", f"/tasks/{slashed['id']}").json()["tags"] == []
    assert [task["tags"] for task in call("GET", "/tasks").json()] == [[], [], []]


def test_counts_and_totals_are_the_callers_alone_whatever_others_hold(
    http: httpx.Client, victim_ids: list[int]
) -> None:
    user = "eve-counts"
    token = bearer(make_token(user))
    create(http, user, "rent due", tags=["Secret", "Finance"])
    create(http, user, "plans", tags=["secret"])
    queries: list[tuple[str, dict[str, Any], list[Any], str]] = [
        ("/tags", {}, [{"name": "Finance", "tasks": 1}, {"name": "Secret", "tasks": 2}], "2"),
        ("/tasks", {"tag": "secret", "sort": "title"}, ["plans", "rent due"], "2"),
        ("/tasks", {"tag": ["secret", "finance"]}, ["rent due"], "1"),
        ("/tasks", {"q": "rent"}, ["rent due"], "1"),
        ("/tasks", {"q": "plan", "tag": "secret", "sort": "relevance"}, ["plans"], "1"),
        ("/tasks", {"tag": "family"}, [], "0"),
    ]

    def answers() -> list[tuple[bytes, dict[str, str]]]:
        seen = []
        for path, params, expected, total in queries:
            response = http.get(f"/api/{user}{path}", params=params, headers=token)
            assert_clean(response, 200)
            body = response.json()
            assert [item.get("title", item) for item in body] == expected, (path, params)
            assert response.headers["X-Total-Count"] == total, (path, params)
            seen.append((response.content, same_headers(response)))
        return seen

    before = answers()
    # Another user (the victim's rows are held still) takes the same tags and words.
    for n in range(3):
        create(http, "bystander", f"rent plan {n}", tags=["Secret", "finance", "family"])
    assert answers() == before


@pytest.mark.parametrize("q", ["rent", "pay rent", "RENT", "mum", "ünïcødé", "secret plan", "secr", "5th"])
def test_search_terms_that_only_the_victims_tasks_match_find_nothing(
    http: httpx.Client, victim_ids: list[int], q: str
) -> None:
    token = bearer(make_token(MALLORY))
    path = f"/api/{MALLORY}/tasks"
    for extra in ({}, {"sort": "relevance"}, {"status": "pending", "tag": "Secret"}):
        found = http.get(path, params={"q": q, **extra}, headers=token)
        assert_clean(found, 200)
        assert (found.json(), found.headers["X-Total-Count"]) == ([], "0"), (q, extra)
        assert same_answer(found, http.get(path, params={"q": "zzyzx", **extra}, headers=token))


@pytest.mark.parametrize(
    "query",
    [
        {"tag": "' OR '1'='1"},
        {"tag": "secret' --"},
        {"tag": "%"},
        {"tag": "_"},
        {"tag": "*"},
        {"tag": ["Secret"] * 20},
        {"tag": [f"t{n}" for n in range(21)]},
        {"tag": "x" * 51},
        {"q": "' OR 1=1 --"},
        {"q": "rent | mum"},
        {"q": "!rent"},
        {"q": "rent:*"},
        {"q": "(secret"},
        {"q": "&"},
        {"q": "\\"},
        {"q": "%"},
        {"q": "a" * 200},
        {"q": "a" * 201},
        {"q": "rent", "sort": "relevance; drop table tags"},
    ],
    ids=lambda query: "&".join(
        f"{k}={v}"[:40] if isinstance(v, str) else f"{k}={len(v)} values" for k, v in query.items()
    ),
)
def test_hostile_tag_and_search_parameters_are_answered_with_your_own_rows_or_422(
    http: httpx.Client, victim_ids: list[int], query: dict[str, Any]
) -> None:
    response = http.get(f"/api/{MALLORY}/tasks", params=query, headers=bearer(make_token(MALLORY)))
    assert_clean(response, 200, 422)
    assert_only_own(response, MALLORY)
    if response.status_code == 200:
        assert not {task["id"] for task in response.json()} & set(victim_ids)
