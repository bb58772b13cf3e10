"""Request ids, access logs, JSON logs, no secrets in any log line, and /metrics."""

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.config import Settings
from app.logs import JsonFormatter, TextFormatter, configure_logging
from tests.conftest import ROLE_PASSWORD, TEST_CONTEXT_KEY, http_client, running_app
from tests.tokens import TEST_SECRET, auth, make_token

ALICE = auth("alice")


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """The root logger's output, as `todo-api serve` configures it, at DEBUG; restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    sqlalchemy_level = logging.getLogger("sqlalchemy").level
    stream = io.StringIO()
    yield stream
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)
    logging.getLogger("sqlalchemy").setLevel(sqlalchemy_level)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as app, http_client(app) as client:
        yield client


# --- request ids --------------------------------------------------------------------


async def test_a_request_id_is_generated_returned_and_a_callers_one_kept(client: httpx.AsyncClient) -> None:
    generated = await client.get("/api/alice/tasks", headers=ALICE)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    other = await client.get("/api/alice/tasks", headers=ALICE)
    assert other.headers["X-Request-ID"] != generated.headers["X-Request-ID"]

    kept = await client.get("/nowhere", headers={"X-Request-ID": "lb-7f3a.2"})
    assert kept.status_code == 404
    assert kept.headers["X-Request-ID"] == "lb-7f3a.2"


@pytest.mark.parametrize("offered", [b"x" * 129, b"two words", "caf\u00e9".encode(), b"id;drop", b'"} {"'])
async def test_an_unsafe_request_id_is_replaced(client: httpx.AsyncClient, offered: bytes) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": offered})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


async def test_every_log_line_of_a_request_carries_its_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await client.get("/api/alice/tasks", headers={**auth("alice", ttl=-120), "X-Request-ID": "req-1"})
        await client.get("/api/alice/tasks/1", headers={**ALICE, "X-Request-ID": "req-2"})
    by_logger: dict[str, set[str]] = {}
    for record in caplog.records:
        by_logger.setdefault(record.name, set()).add(record.request_id)  # type: ignore[attr-defined]
    assert by_logger["app.auth"] == {"req-1"}
    assert by_logger["app.access"] == {"req-1", "req-2"}
    assert all(record.request_id in {"req-1", "req-2"} for record in caplog.records)  # type: ignore[attr-defined]


# --- access and JSON logs -----------------------------------------------------------


async def test_the_access_log_has_method_route_template_status_and_duration(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        await client.get("/api/alice/tasks/42", headers=ALICE)
        await client.get("/no/such/route")
    found, unmatched = [record for record in caplog.records if record.name == "app.access"]
    assert (found.method, found.route, found.status) == ("GET", "/api/{user_id}/tasks/{task_id}", 404)  # type: ignore[attr-defined]
    assert isinstance(found.duration_ms, float)  # type: ignore[attr-defined]
    assert found.getMessage().startswith("GET /api/{user_id}/tasks/{task_id} 404 ")
    # The template, not the path: no user id, and a bounded set of values.
    assert "alice" not in found.getMessage()
    assert (unmatched.route, unmatched.status) == ("(unmatched)", 404)  # type: ignore[attr-defined]


async def test_the_access_log_names_a_docs_asset_by_its_mount(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        await client.get("/docs/assets/swagger-ui.css")
        await client.get("/docs/assets/no-such-file.js")
    found, missing = [record for record in caplog.records if record.name == "app.access"]
    assert (found.route, found.status) == ("/docs/assets/{path}", 200)  # type: ignore[attr-defined]
    assert (missing.route, missing.status) == ("/docs/assets/{path}", 404)  # type: ignore[attr-defined]


async def test_json_logs_are_one_object_per_line_with_the_request_fields(
    settings: Settings, captured_logs: io.StringIO
) -> None:
    configure_logging(settings.model_copy(update={"log_format": "json"}), stream=captured_logs)
    async with running_app(settings) as app, http_client(app) as client:
        await client.post(
            "/api/alice/tasks", json={"title": "a"}, headers={**ALICE, "X-Request-ID": "json-1"}
        )
        await client.get(
            "/api/alice/tasks", headers={"Authorization": "Bearer nonsense", "X-Request-ID": "json-2"}
        )
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "app.access"]
    assert [(a["request_id"], a["method"], a["route"], a["status"]) for a in access] == [
        ("json-1", "POST", "/api/{user_id}/tasks", 201),
        ("json-2", "GET", "/api/{user_id}/tasks", 401),
    ]
    assert all(isinstance(a["duration_ms"], float) and a["level"] == "INFO" for a in access)
    (failure,) = [line for line in lines if line["logger"] == "app.auth"]
    assert failure["request_id"] == "json-2"
    assert failure["message"] == "authentication failed: malformed token (client 127.0.0.1)"
    assert failure["level"] == "WARNING"


async def test_tokens_and_passwords_are_never_logged(settings: Settings, captured_logs: io.StringIO) -> None:
    # Everything a server would write, at the most talkative level.
    configure_logging(settings.model_copy(update={"log_level": "debug"}), stream=captured_logs)
    valid = make_token("alice")
    expired = make_token("alice", ttl=-120)
    forged = make_token("alice", secret="another-secret-that-is-long-enough-0123456789")
    assert ROLE_PASSWORD in (settings.database_url or "")  # the URL the app connects with has one
    async with running_app(settings) as app, http_client(app) as client:
        for token in (valid, expired, forged):
            headers = {"Authorization": f"Bearer {token}"}
            await client.post("/api/alice/tasks", json={"title": "secret work"}, headers=headers)
            await client.get("/api/alice/tasks", headers=headers)
            await client.get(f"/api/alice/tasks?token={token}", headers=headers)
            await client.get("/api/bob/tasks", headers=headers)
    logs = captured_logs.getvalue()
    assert "authentication failed: token has expired" in logs
    assert "authentication failed: token signature is invalid" in logs
    for secret in (valid, expired, forged, TEST_SECRET, TEST_CONTEXT_KEY, ROLE_PASSWORD):
        assert secret not in logs
    for token in (valid, expired, forged):
        assert token.split(".")[2] not in logs  # not even the signature alone


def test_the_formatters_scrub_anything_that_looks_like_a_secret() -> None:
    """The net under the rule: should a message ever carry a secret, the line does not."""
    token = make_token("alice")
    message = 'to "postgresql://todo_app:%s@db/todo" with Authorization: Bearer %s, then %s; password=%s'
    arguments = (ROLE_PASSWORD, token, token, ROLE_PASSWORD)
    record = logging.LogRecord("app.example", logging.WARNING, __file__, 1, message, arguments, None)
    record.request_id = "r-1"
    text_line = TextFormatter().format(record)
    json_line = JsonFormatter().format(record)
    for line in (text_line, json_line):
        assert token not in line
        assert ROLE_PASSWORD not in line
        assert "postgresql://todo_app:[redacted]@db/todo" in line
    assert json.loads(json_line)["message"].endswith("password=[redacted]")


# --- metrics --------------------------------------------------------------------------


async def test_metrics_are_off_unless_enabled(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


async def test_metrics_count_requests_by_route_and_status_with_latency_and_pool(settings: Settings) -> None:
    async with (
        running_app(settings.model_copy(update={"metrics_enabled": True})) as app,
        http_client(app) as client,
    ):
        await client.post("/api/alice/tasks", json={"title": "a"}, headers=ALICE)
        await client.get("/api/alice/tasks", headers=ALICE)
        await client.get("/api/alice/tasks", headers=ALICE)
        await client.get("/api/alice/tasks/999", headers=ALICE)
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = response.text
    assert 'http_requests_total{method="GET",route="/api/{user_id}/tasks",status="200"} 2.0' in samples
    assert 'http_requests_total{method="POST",route="/api/{user_id}/tasks",status="201"} 1.0' in samples
    assert (
        'http_requests_total{method="GET",route="/api/{user_id}/tasks/{task_id}",status="404"} 1.0' in samples
    )
    assert (
        'http_request_duration_seconds_count{method="GET",route="/api/{user_id}/tasks",status="200"} 2.0'
        in samples
    )
    assert (
        'http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/api/{user_id}/tasks",status="200"}'
        in samples
    )
    # The scrape itself is in flight while it is being counted.
    assert "http_requests_in_progress 1.0" in samples
    idle = re.search(r'^db_pool_connections\{state="idle"\} (\d+)\.0$', samples, re.MULTILINE)
    assert idle and int(idle.group(1)) >= 1
    assert f"db_pool_size {settings.db_pool_size}.0" in samples
