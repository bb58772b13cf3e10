"""`todo-api` as a newcomer uses it: token, migrate, and serve on the embedded default."""

import os
import signal
import stat
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import jwt
import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.live_server import LiveServer, free_port, server_process
from tests.tokens import TEST_SECRET

CONFIG_VARIABLES = (
    "DATABASE_URL",
    "MIGRATIONS_DATABASE_URL",
    "JWT_SECRET",
    "BETTER_AUTH_SECRET",
    "RLS_CONTEXT_KEY",
    "DATA_DIR",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No configuration from the developer's environment or .env; returns a data dir."""
    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    return data_dir


def test_token_is_signed_with_the_configured_secret(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", TEST_SECRET)
    result = CliRunner().invoke(cli, ["token", "alice", "--ttl", "120"])
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.stdout.strip(), TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 120


def test_embedded_default_makes_one_secret_kept_with_mode_0600(clean_env: Path) -> None:
    first = CliRunner().invoke(cli, ["token", "alice"])
    second = CliRunner().invoke(cli, ["token", "bob"])
    assert first.exit_code == second.exit_code == 0
    secret_file = clean_env / "jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret.encode()) >= 32
    assert jwt.decode(first.stdout.strip(), secret, algorithms=["HS256"])["sub"] == "alice"
    assert jwt.decode(second.stdout.strip(), secret, algorithms=["HS256"])["sub"] == "bob"


def test_a_short_secret_stops_the_cli_with_a_message(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_SECRET", "too-short")
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 1
    assert "JWT_SECRET must be at least 32 bytes long" in result.output


def test_an_external_database_needs_a_secret(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://todo_app@db.invalid/todo")
    result = CliRunner().invoke(cli, ["token", "alice"])
    assert result.exit_code == 1
    assert "set JWT_SECRET (or BETTER_AUTH_SECRET)" in result.output


def test_serve_on_the_embedded_default_end_to_end(clean_env: Path) -> None:
    """Start as a newcomer would, use the API, stop with Ctrl-C, start again: data survives."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES} | {"DATA_DIR": str(clean_env)}
    todo_api = [sys.executable, "-c", "from app.cli import main; main()"]
    base = f"http://127.0.0.1:{port}"

    def serve(*options: str) -> AbstractContextManager[LiveServer]:
        command = [*todo_api, "serve", "--port", str(port), *options]
        return server_process(command, env=env, workdir=clean_env.parent, base_url=base, timeout=60)

    def interrupt(server: LiveServer) -> str:
        """Ctrl-C, as a person at the terminal would."""
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(30) == 0, server.output()
        return server.output()

    with serve() as server:
        token = subprocess.run(
            [*todo_api, "token", "alice"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(f"{base}/api/alice/tasks", json={"title": "survive a restart"}, headers=headers)
        assert created.status_code == 201
        # Built-in accounts are on by default here.
        account = {"email": "carol@example.com", "password": "correct horse battery", "name": "Carol"}
        assert httpx.post(f"{base}/api/auth/register", json=account).status_code == 201
        login = httpx.post(
            f"{base}/api/auth/token", data={"username": account["email"], "password": account["password"]}
        )
        assert login.status_code == 200
        own_token = login.json()["access_token"]
        me = httpx.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {own_token}"})
        assert me.json()["email"] == "carol@example.com"
        output = interrupt(server)
    assert_only_our_access_log(output)
    assert f"on {base}" in output
    assert f"docs: {base}/docs" in output
    assert "todo-api token USER_ID" in output
    assert "Stopped embedded PostgreSQL." in output
    assert not (clean_env / "pgdata" / "postmaster.pid").exists(), "the embedded server was left running"

    with serve("--workers", "2") as server:  # workers build their app from the environment
        listed = httpx.get(f"{base}/api/alice/tasks", headers=headers)
        assert [task["title"] for task in listed.json()] == ["survive a restart"]
        # The same signing key and accounts in every worker: the earlier token still opens /me.
        for _ in range(4):
            me = httpx.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {own_token}"})
            assert me.status_code == 200
        assert_only_our_access_log(interrupt(server))


def assert_only_our_access_log(output: str) -> None:
    """One access line per request, ours, with the route template: uvicorn's own line
    (the request line, user id and all) stays off, in worker processes too."""
    assert "app.access" in output
    assert " /api/{user_id}/tasks 20" in output
    assert "uvicorn.access" not in output
    assert "HTTP/1.1" not in output
    assert "/api/alice" not in output
