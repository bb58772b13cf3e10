"""Rate limits in memory and in Redis (shared by instances), and CORS for browsers."""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from app.config import Settings
from app.keys import SigningKey
from tests.cluster import redis_server
from tests.conftest import running_app
from tests.live_server import free_port
from tests.tokens import auth

ORIGIN = "https://app.example"


@asynccontextmanager
async def client_from(app: FastAPI, address: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """A client as seen from `address` (the ASGI scope's client; nothing goes on a network)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def create(client: httpx.AsyncClient, user: str) -> httpx.Response:
    return await client.post(f"/api/{user}/tasks", json={"title": "t"}, headers=auth(user))


# Windows of a day: the limiter's sliding-window counter weighs the previous window
# down as the current one goes on, so a test that straddled a window's end could see
# its count dip just under the limit. In a day's window that cannot happen in seconds.
def assert_429(response: httpx.Response, detail: str, window: int = 86400) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == {"detail": detail}
    assert 1 <= int(response.headers["Retry-After"]) <= window


# --- in memory ------------------------------------------------------------------------


async def test_writes_are_limited_per_user_and_reads_are_not(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limit_writes": "3/day", "rate_limit_requests": ""})
    async with running_app(settings) as app, client_from(app) as client:
        assert [(await create(client, "alice")).status_code for _ in range(3)] == [201, 201, 201]
        assert_429(await create(client, "alice"), "too many changes, slow down")
        listed = await client.get("/api/alice/tasks", headers=auth("alice"))
        assert listed.status_code == 200
        assert len(listed.json()) == 3  # the refused write changed nothing
        assert (await create(client, "bob")).status_code == 201
        # The token is checked first: a bad one is a 401 whatever the named user's count.
        forged = {"Authorization": "Bearer x.y.z"}
        assert (await client.post("/api/alice/tasks", json={"title": "t"}, headers=forged)).status_code == 401


async def test_requests_are_limited_per_client_address_and_probes_are_not(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limit_requests": "5/day"})
    async with running_app(settings) as app:
        async with client_from(app, "203.0.113.7") as client:
            statuses = [
                (await client.get("/api/alice/tasks", headers=auth("alice"))).status_code for _ in range(5)
            ]
            assert statuses == [200] * 5
            assert_429(
                await client.get("/api/alice/tasks", headers=auth("alice")), "too many requests, slow down"
            )
            assert_429(await client.get("/nowhere"), "too many requests, slow down")
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
        async with client_from(app, "203.0.113.8") as other:
            assert (await other.get("/api/alice/tasks", headers=auth("alice"))).status_code == 200


def test_a_rate_limit_that_does_not_parse_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="not a rate limit such as '600/minute'"):
        Settings(_env_file=None, rate_limit_writes="lots")  # type: ignore[call-arg]


# --- in Redis, shared by instances ----------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


async def test_instances_sharing_redis_share_the_limits(settings: Settings, redis_url: str) -> None:
    settings = settings.model_copy(
        update={"rate_limit_writes": "3/day", "rate_limit_requests": "", "rate_limit_storage": redis_url}
    )
    async with (
        running_app(settings) as first,
        running_app(settings) as second,
        client_from(first) as one,
        client_from(second) as two,
    ):
        assert (await create(one, "dave")).status_code == 201
        assert (await create(two, "dave")).status_code == 201
        assert (await create(one, "dave")).status_code == 201
        # The fourth write counts the three made through either instance.
        assert_429(await create(two, "dave"), "too many changes, slow down")
        assert_429(await create(one, "dave"), "too many changes, slow down")
        assert (await create(two, "erin")).status_code == 201


async def test_per_client_limits_in_redis_hold_across_instances(settings: Settings, redis_url: str) -> None:
    settings = settings.model_copy(update={"rate_limit_requests": "2/day", "rate_limit_storage": redis_url})
    async with (
        running_app(settings) as first,
        running_app(settings) as second,
        client_from(first, "198.51.100.1") as one,
        client_from(second, "198.51.100.1") as two,
    ):
        assert (await one.get("/nowhere")).status_code == 404
        assert (await two.get("/nowhere")).status_code == 404
        assert_429(await one.get("/nowhere"), "too many requests, slow down")


async def test_log_in_failures_in_redis_hold_off_the_attacker_and_not_the_owner(
    settings: Settings, redis_url: str
) -> None:
    """The log-in counts of tests/routes/test_accounts.py, on Redis and across instances:
    failures per email, the marks of the addresses that failed, a success clearing its own."""
    settings = settings.model_copy(
        update={
            "accounts_enabled": True,
            "token_signing_key": SecretStr(SigningKey.generate_pem().decode()),
            "rate_limit_auth": "2/day",
            "rate_limit_storage": redis_url,
        }
    )
    account = {"email": "owner@example.com", "password": "correct horse battery", "name": "Owner"}
    right = {"username": account["email"], "password": account["password"]}
    wrong = {**right, "password": "a guess"}
    async with running_app(settings) as first, running_app(settings) as second:
        async with client_from(first) as client:
            assert (await client.post("/api/auth/register", json=account)).status_code == 201
        async with client_from(first, "203.0.113.1") as one, client_from(second, "203.0.113.2") as two:
            assert (await one.post("/api/auth/token", data=wrong)).status_code == 401
            assert (await two.post("/api/auth/token", data=wrong)).status_code == 401
            assert_429(
                await one.post("/api/auth/token", data=wrong), "too many log-in attempts, try again later"
            )
        for app in (first, second):
            async with client_from(app, "198.51.100.9") as owner:
                assert (await owner.post("/api/auth/token", data=right)).status_code == 200


async def test_an_unreachable_redis_does_not_stop_the_service(settings: Settings) -> None:
    settings = settings.model_copy(
        update={"rate_limit_writes": "1/day", "rate_limit_storage": f"redis://127.0.0.1:{free_port()}"}
    )
    async with running_app(settings) as app, client_from(app) as client:
        assert [(await create(client, "frank")).status_code for _ in range(2)] == [201, 201]


# --- CORS -----------------------------------------------------------------------------


async def test_cors_preflight_allows_the_configured_origin(settings: Settings) -> None:
    settings = settings.model_copy(update={"cors_origins": [ORIGIN]})
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with running_app(settings) as app, client_from(app) as client:
        allowed = await client.options("/api/alice/tasks", headers=preflight)
        refused = await client.options(
            "/api/alice/tasks", headers={**preflight, "Origin": "https://evil.example"}
        )
        simple = await client.get("/api/alice/tasks", headers={**auth("alice"), "Origin": ORIGIN})
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    assert {"authorization", "content-type"} <= set(
        allowed.headers["Access-Control-Allow-Headers"].lower().split(", ")
    )
    assert "Access-Control-Allow-Credentials" not in allowed.headers

    assert refused.status_code == 400
    assert refused.json() == {"detail": "Disallowed CORS origin"}
    assert "Access-Control-Allow-Origin" not in refused.headers

    assert simple.status_code == 200
    assert simple.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = set(simple.headers["Access-Control-Expose-Headers"].split(", "))
    assert {"Location", "Link", "X-Total-Count", "Retry-After", "X-Request-ID"} <= exposed


async def test_without_configured_origins_no_cors_headers_are_sent(settings: Settings) -> None:
    async with running_app(settings) as app, client_from(app) as client:
        response = await client.get("/api/alice/tasks", headers={**auth("alice"), "Origin": ORIGIN})
        preflight = await client.options(
            "/api/alice/tasks", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert preflight.status_code == 405
    assert preflight.json() == {"detail": "Method Not Allowed"}


async def test_a_rate_limited_answer_reaches_a_browser_with_its_cors_headers(settings: Settings) -> None:
    settings = settings.model_copy(update={"cors_origins": [ORIGIN], "rate_limit_requests": "1/day"})
    async with running_app(settings) as app, client_from(app) as client:
        await client.get("/api/alice/tasks", headers={**auth("alice"), "Origin": ORIGIN})
        limited = await client.get("/api/alice/tasks", headers={**auth("alice"), "Origin": ORIGIN})
    assert limited.status_code == 429
    assert limited.headers["Access-Control-Allow-Origin"] == ORIGIN
