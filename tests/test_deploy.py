"""An instance as docs/deploy.md runs it: `todo-api serve --no-migrate` with the runtime
role's credentials only, ready at once, and stopped by SIGTERM with status 0."""

import json
import signal
import sys
from pathlib import Path

import httpx

from tests.conftest import DbUrls, make_settings
from tests.live_server import free_port, server_environment, server_process


def test_an_instance_serves_with_the_runtime_role_only(db_url: DbUrls, tmp_path: Path) -> None:
    port = free_port()
    # The owner's URL leads nowhere (nothing listens on port 9): only --no-migrate can start.
    settings = make_settings(
        db_url,
        migrations_database_url="postgresql://todo_owner:owner-password@127.0.0.1:9/todo",
        port=port,
        log_format="json",
        data_dir=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-c", "from app.cli import main; main()", "serve", "--no-migrate"]
    env = server_environment(settings)
    with server_process(command, env=env, workdir=tmp_path, base_url=base, ready_path="/healthz") as server:
        ready = httpx.get(f"{base}/readyz", headers={"X-Request-ID": "probe-1"}, timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json()["database_role"] == "todo_app"
        assert ready.headers["X-Request-ID"] == "probe-1"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0, server.output()
    output = server.output()
    assert "owner-password" not in output
    access = [json.loads(line) for line in output.splitlines() if line.startswith('{"')]
    assert {"route": "/readyz", "status": 200, "request_id": "probe-1"}.items() <= next(
        entry for entry in access if entry["logger"] == "app.access" and entry["route"] == "/readyz"
    ).items()
