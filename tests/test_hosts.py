"""ALLOWED_HOSTS: a Host header the service was not told about never reaches the URLs it
builds (Location, Link, redirects); the probes answer whatever Host a balancer sends."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from app.config import Settings
from app.main import create_app
from tests.conftest import DbUrls, make_settings, running_app
from tests.tokens import TEST_SECRET, auth

ALLOWED = ["api.example.com", "*.example.org"]
FOREIGN = "evil.example"


@asynccontextmanager
async def client_for(app: FastAPI, host: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests carry `Host: host` (nothing goes on a network)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
        yield client


@pytest.fixture
def host_settings(db_url: DbUrls) -> Settings:
    return make_settings(db_url, allowed_hosts=ALLOWED, metrics_enabled=True)


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "Invalid host header"}
    assert "location" not in response.headers
    assert "link" not in response.headers
    assert FOREIGN not in str(response.headers) + response.text


async def test_a_foreign_host_is_a_json_400_and_no_url_carries_it(host_settings: Settings) -> None:
    async with running_app(host_settings) as app:
        async with client_for(app, FOREIGN) as foreign:
            assert_refused(await foreign.post("/api/alice/tasks", json={"title": "t"}, headers=auth("alice")))
            assert_refused(await foreign.get("/api/alice/tasks", params={"limit": 1}, headers=auth("alice")))
            # A trailing slash would be a redirect to the same host.
            assert_refused(await foreign.get("/api/alice/tasks/", headers=auth("alice")))
            # With a port, and a name that merely ends like an allowed one.
            for host in (
                f"{FOREIGN}:8000",
                "evil-example.org",
                "example.org",
                "api.example.com.evil.example",
            ):
                response = await foreign.get("/api/alice/tasks", headers={**auth("alice"), "Host": host})
                assert response.status_code == 400, host
        async with client_for(app, "api.example.com") as allowed:
            listed = await allowed.get("/api/alice/tasks", headers=auth("alice"))
            assert listed.json() == []  # the refused write changed nothing


async def test_an_allowed_host_works_and_is_the_one_in_location_and_link(host_settings: Settings) -> None:
    async with running_app(host_settings) as app:
        async with client_for(app, "api.example.com") as client:
            created = await client.post("/api/alice/tasks", json={"title": "one"}, headers=auth("alice"))
            assert created.status_code == 201
            assert created.headers["Location"].startswith("http://api.example.com/api/alice/tasks/")
        # Any subdomain of a wildcard, with a port too.
        async with client_for(app, "eu.example.org:8443") as client:
            assert (
                await client.post("/api/alice/tasks", json={"title": "two"}, headers=auth("alice"))
            ).status_code == 201
            listed = await client.get("/api/alice/tasks", params={"limit": 1}, headers=auth("alice"))
            assert listed.status_code == 200
            assert "<http://eu.example.org:8443/api/alice/tasks?" in listed.headers["Link"]


async def test_the_probes_answer_any_host(host_settings: Settings) -> None:
    """Load balancers, kubelets and Prometheus call an instance by its address."""
    async with running_app(host_settings) as app, client_for(app, "10.0.3.7:8000") as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert_refused(await client.get("/openapi.json"))


def test_with_a_database_url_the_service_needs_allowed_hosts(db_url: DbUrls) -> None:
    with pytest.raises(ValueError, match="set ALLOWED_HOSTS to the host names clients use"):
        create_app(make_settings(db_url, allowed_hosts=[]))
    # `*` says so explicitly: any Host, for a proxy that checks the name itself.
    assert make_settings(db_url, allowed_hosts=["*"]).allowed_host_patterns() == ["*"]


def test_the_embedded_default_accepts_any_host() -> None:
    """The end-to-end check is tests/test_cli.py::test_serve_on_the_embedded_default_end_to_end."""
    settings = Settings(_env_file=None, jwt_secret=TEST_SECRET)  # type: ignore[call-arg]
    assert settings.embedded
    assert settings.allowed_host_patterns() == ["*"]


@pytest.mark.parametrize(
    "pattern", ["api.example.com:443", "https://api.example.com", "*example.com", "api.*.com", "::1", "*."]
)
def test_a_host_pattern_that_could_never_match_is_refused(pattern: str) -> None:
    with pytest.raises(ValidationError, match="ALLOWED_HOSTS takes host names"):
        Settings(_env_file=None, allowed_hosts=pattern)  # type: ignore[call-arg]


def test_allowed_hosts_are_comma_separated_and_case_insensitive() -> None:
    settings = Settings(_env_file=None, allowed_hosts="API.example.com, *.Example.org ,[::1]")  # type: ignore[call-arg]
    assert settings.allowed_hosts == ["api.example.com", "*.example.org", "[::1]"]
