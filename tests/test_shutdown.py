"""SIGTERM: requests in flight finish, the pool closes, the embedded server stops, exit 0."""

import json
import signal
import sys
import threading
import time
from pathlib import Path

import httpx

from app.config import Settings
from app.main import create_app
from tests import slow_app
from tests.conftest import TEST_CONTEXT_KEY
from tests.live_server import free_port, server_environment, server_process
from tests.tokens import TEST_SECRET

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
SLOW_SECONDS = 2.0


def test_sigterm_lets_a_request_in_flight_finish_and_stops_the_embedded_server(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    # The embedded default (no DATABASE_URL), configured by the environment only, none of
    # it inherited from the developer's; no .env in tmp_path.
    settings = Settings.model_construct(data_dir=data_dir, log_format="json")
    env = server_environment(settings) | {"PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "tests.slow_app", "serve", "--port", str(port)]
    with server_process(
        command, env=env, workdir=tmp_path, base_url=base, ready_path="/readyz", timeout=START_TIMEOUT
    ) as server:
        process = server.process
        outcome: dict[str, httpx.Response] = {}

        def slow_request() -> None:
            outcome["response"] = httpx.get(
                f"{base}/test/slow",
                params={"seconds": SLOW_SECONDS},
                headers={"X-Request-ID": "in-flight"},
                timeout=30,
            )

        in_flight = threading.Thread(target=slow_request)
        in_flight.start()
        time.sleep(0.5)  # the request has reached the server and sits in pg_sleep
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)

        # New connections are refused at once while the one in flight goes on.
        refused = False
        while not refused and time.monotonic() - signalled < SLOW_SECONDS - 0.5:
            try:
                httpx.get(f"{base}/healthz", timeout=0.5)
                time.sleep(0.05)
            except httpx.TransportError:
                refused = True
        in_flight.join(30)
        assert refused, "the server kept accepting connections after SIGTERM"

        response = outcome["response"]
        assert response.status_code == 200
        assert response.json() == {"slept": SLOW_SECONDS}
        assert process.wait(30) == 0, server.output()

    output = server.output()
    assert "Stopped embedded PostgreSQL." in output
    assert not (data_dir / "pgdata" / "postmaster.pid").exists(), "the embedded server was left running"
    # The request finished before the application shut down and closed the pool.
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    finished = next(i for i, e in enumerate(events) if e.get("route") == "/test/slow")
    assert events[finished]["status"] == 200
    assert events[finished]["request_id"] == "in-flight"
    shutdown = next(i for i, e in enumerate(events) if e["message"] == "Application shutdown complete.")
    assert finished < shutdown
    # Our access log only: uvicorn's own is off.
    assert "GET /test/slow HTTP/1.1" not in output


def test_the_slow_route_exists_only_in_the_test_wrapper() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url="postgresql://todo_app@/todo",
        jwt_secret=TEST_SECRET,
        rls_context_key=TEST_CONTEXT_KEY,
        allowed_hosts=["test"],
    )
    paths = {getattr(route, "path", None) for route in create_app(settings).routes}
    assert "/test/slow" not in paths
    assert "/test/slow" in {getattr(route, "path", None) for route in slow_app.create_app(settings).routes}
