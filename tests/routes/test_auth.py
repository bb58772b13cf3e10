"""Who may call the task, tag and conversation routes: every 401 variant, and 403 on
another user's path."""

import logging

import httpx
import jwt
import pytest

from tests.conftest import DbUrls, http_client, make_settings, running_app
from tests.tokens import OMIT, TEST_SECRET, auth, forge, make_token

ROUTES = [
    ("GET", "/api/alice/tasks"),
    ("POST", "/api/alice/tasks"),
    ("GET", "/api/alice/tasks/1"),
    ("PUT", "/api/alice/tasks/1"),
    ("PATCH", "/api/alice/tasks/1"),
    ("DELETE", "/api/alice/tasks/1"),
    ("PATCH", "/api/alice/tasks/1/complete"),
    ("GET", "/api/alice/tags"),
    ("PATCH", "/api/alice/tags/work"),
    ("DELETE", "/api/alice/tags/work"),
    ("GET", "/api/alice/conversations"),
    ("GET", "/api/alice/conversations/1/messages"),
    ("DELETE", "/api/alice/conversations/1"),
    ("POST", "/api/alice/chat"),
]


# Valid claims for alice: each token below is refused for its header alone.
CLAIMS = {"sub": "alice", "exp": 9999999999}

BAD_TOKENS = {
    "malformed": ("not-a-jwt", "malformed token"),
    "three garbage parts": ("abc.def.ghi", "malformed token"),
    "bad signature": (
        make_token(secret="another-secret-that-is-also-long-enough-xx"),
        "token signature is invalid",
    ),
    "expired": (make_token(ttl=-120), "token has expired"),
    "alg none": (
        forge({"alg": "none", "typ": "JWT"}, CLAIMS, signature=""),
        "token algorithm is not accepted",
    ),
    "wrong algorithm": (
        make_token(secret=TEST_SECRET * 2, algorithm="HS512"),
        "token algorithm is not accepted",
    ),
    "no sub": (make_token(sub=OMIT), "token has no 'sub' claim"),
    "no exp": (make_token(exp=OMIT), "token has no 'exp' claim"),
    "empty sub": (make_token(sub=""), "token 'sub' must be 1 to 255 characters, without NUL"),
    "numeric sub": (make_token(sub=42), "token 'sub' must be a string"),
    "not yet valid": (make_token(nbf=9999999999), "token is not valid yet"),
    # Headers that PyJWT refuses while reading them, not only when it decodes.
    "kid a number": (forge({"alg": "HS256", "kid": 5}, CLAIMS), "malformed token"),
    "kid a list": (forge({"alg": "HS256", "kid": ["a"]}, CLAIMS), "malformed token"),
    "crit naming a claim": (forge({"alg": "HS256", "crit": ["exp"]}, CLAIMS), "malformed token"),
    "crit empty": (forge({"alg": "HS256", "crit": []}, CLAIMS), "malformed token"),
    "crit not a list": (forge({"alg": "HS256", "crit": "x"}, CLAIMS), "malformed token"),
    "crit b64 without b64": (forge({"alg": "HS256", "crit": ["b64"]}, CLAIMS), "malformed token"),
    "b64 false": (forge({"alg": "HS256", "crit": ["b64"], "b64": False}, CLAIMS), "malformed token"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_401_with_a_bearer_challenge_on_every_route(
    client: httpx.AsyncClient, case: str
) -> None:
    token, reason = BAD_TOKENS[case]
    for method, path in ROUTES:
        response = await client.request(
            method, path, headers={"Authorization": f"Bearer {token}"}, json={"title": "x"}
        )
        assert response.status_code == 401, (method, path)
        assert response.json() == {"detail": reason}
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


async def test_missing_token_is_401_on_every_route(client: httpx.AsyncClient) -> None:
    for method, path in ROUTES:
        response = await client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.json() == {"detail": "missing bearer token"}
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header",
    ["Basic YWxpY2U6cHc=", "Bearer", "Token abc", make_token()],
    # Named, not shown: a token's text changes with the clock, and the workers of a
    # parallel run must collect the same test names.
    ids=["basic", "bearer-alone", "other-scheme", "token-without-scheme"],
)
async def test_malformed_authorization_header_is_401(client: httpx.AsyncClient, header: str) -> None:
    response = await client.get("/api/alice/tasks", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_another_users_path_is_403_on_every_route(client: httpx.AsyncClient) -> None:
    for method, path in ROUTES:
        response = await client.request(method, path, headers=auth("bob"), json={"title": "x"})
        assert response.status_code == 403, (method, path)
        assert response.json() == {"detail": "token subject does not match the user_id in the path"}


async def test_403_changes_nothing(client: httpx.AsyncClient) -> None:
    await client.post("/api/bob/tasks", json={"title": "x"}, headers=auth("alice"))
    listed = await client.get("/api/bob/tasks", headers=auth("bob"))
    assert listed.json() == []


async def test_leeway_accepts_a_token_just_expired(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/alice/tasks", headers=auth(ttl=-5))
    assert response.status_code == 200


async def test_issuer_and_audience_are_checked_when_configured(db_url: DbUrls) -> None:
    settings = make_settings(db_url, jwt_issuer="https://id.example", jwt_audience="todo-api")
    async with running_app(settings) as app, http_client(app) as client:

        async def outcome(**claims: object) -> tuple[int, object]:
            response = await client.get("/api/alice/tasks", headers=auth(**claims))
            return response.status_code, response.json()

        assert await outcome(iss="https://id.example", aud="todo-api") == (200, [])
        assert await outcome(iss="https://evil.example", aud="todo-api") == (
            401,
            {"detail": "token issuer is not accepted"},
        )
        assert await outcome(iss="https://id.example", aud="other") == (
            401,
            {"detail": "token audience is not accepted"},
        )
        assert await outcome(aud="todo-api") == (401, {"detail": "token has no 'iss' claim"})
        assert await outcome(iss="https://id.example") == (401, {"detail": "token has no 'aud' claim"})


async def test_auth_failures_are_logged_with_reason_and_client_but_not_the_token(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = make_token(ttl=-120)
    with caplog.at_level(logging.WARNING, logger="app.auth"):
        await client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {token}"})
    messages = [record.getMessage() for record in caplog.records if record.name == "app.auth"]
    assert messages == ["authentication failed: token has expired (client 127.0.0.1)"]
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


def test_make_token_signs_with_the_test_secret() -> None:
    claims = jwt.decode(make_token("carol"), TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "carol"
