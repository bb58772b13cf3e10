"""The real service in a subprocess, for tests that talk to it the way clients do.

`python -m uvicorn app.main:create_app --factory` on a free loopback port, configured
only through its environment (built from a `Settings`, so that settings added later
carry through), on a database of its own cloned from the migrated template. One server
per test module: `service = live_service("name", **setting_overrides)` at module level
makes a module-scoped fixture.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import NoDecode
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from app.config import Settings
from tests.conftest import TEST_DB, DbUrls, Server, make_settings, prepare_clone

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Inherited variables that would reach the server behind the test's back: libpq's and
# asyncpg's connection defaults (PGOPTIONS could even preset app.* settings), and
# uvicorn's own options.
CONFLICTING_PREFIXES = ("PG", "UVICORN_")
CONFLICTING_NAMES = frozenset({"WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"})


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The environment variables pydantic-settings reads for a field, preferred first."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, str):
        return [alias]
    return [f"{Settings.model_config.get('env_prefix', '')}{name}"]


def _env_value(field: FieldInfo, value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | set):
        # NoDecode fields split a comma-separated string themselves; others decode JSON.
        if NoDecode in field.metadata or not Settings.model_config.get("enable_decoding", True):
            return ",".join(str(item) for item in value)
        return json.dumps(list(value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def server_environment(settings: Settings, inherited: dict[str, str] | None = None) -> dict[str, str]:
    """The inherited environment without anything that could override `settings`, plus
    every field of `settings` that is set, under the name Settings reads it from."""
    inherited = dict(os.environ if inherited is None else inherited)
    settings_names = {
        env.upper() for name, field in Settings.model_fields.items() for env in env_names(name, field)
    }
    env = {
        key: value
        for key, value in inherited.items()
        if key.upper() not in settings_names
        and key.upper() not in CONFLICTING_NAMES
        and not key.upper().startswith(CONFLICTING_PREFIXES)
    }
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is not None:
            env[env_names(name, field)[0].upper()] = _env_value(field, value)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        """What the server printed so far (its log), for failure messages."""
        return self.log_path.read_text(errors="replace")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def wait_until_answering(server: LiveServer, ready_path: str, timeout: float = STARTUP_TIMEOUT) -> None:
    """Until `ready_path` answers 200; a failure, with the server's output, if it exits or
    does not answer within `timeout` (it is then stopped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"the server exited with {server.process.returncode} while starting; its output:\n"
                f"{server.output()}",
                pytrace=False,
            )
        try:
            # Uvicorn listens only once the lifespan (role and context checks) has passed.
            if httpx.get(f"{server.base_url}{ready_path}", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(server.process)
    pytest.fail(
        f"the server did not answer within {timeout:.0f} s; its output:\n{server.output()}",
        pytrace=False,
    )


@contextmanager
def live_server(settings: Settings, workdir: Path, *, access_log: bool = False) -> Iterator[LiveServer]:
    """The service under uvicorn in a subprocess; stopped with SIGTERM on exit."""
    port = free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": port, "data_dir": workdir})
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_app",
        "--factory",
        "--host",
        settings.host,
        "--port",
        str(port),
        "--app-dir",
        str(PROJECT_ROOT),
        "--log-level",
        settings.log_level,
        "--timeout-graceful-shutdown",
        "5",
        *([] if access_log else ["--no-access-log"]),
    ]
    with server_process(
        command, env=server_environment(settings), workdir=workdir, base_url=f"http://127.0.0.1:{port}"
    ) as server:
        yield server


@contextmanager
def server_process(
    command: list[str],
    *,
    env: dict[str, str],
    workdir: Path,
    base_url: str,
    ready_path: str = "/openapi.json",
    timeout: float = STARTUP_TIMEOUT,
) -> Iterator[LiveServer]:
    """Run `command` in `workdir` until `ready_path` answers 200; yield; stop it (SIGTERM,
    then kill) on exit if it is still running. Its output goes to workdir/server.log."""
    server = launch(command, env=env, workdir=workdir, base_url=base_url)
    try:
        wait_until_answering(server, ready_path, timeout)
        yield server
    finally:
        stop_server(server.process)
        assert server.process.poll() is not None, f"the server (pid {server.process.pid}) is still running"


def launch(command: list[str], *, env: dict[str, str], workdir: Path, base_url: str) -> LiveServer:
    """Start `command` in `workdir`, its output appended to workdir/server.log (a server
    started again in the same directory adds to the same log)."""
    log_path = workdir / "server.log"
    # A file, not a pipe: nobody reads while the tests run, and a full pipe would block
    # the server. The working directory is empty, so no .env file is picked up.
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    return LiveServer(base_url, process, log_path)


@contextmanager
def module_database(pg_server: Server, template: NoopExecutor, name: str) -> Iterator[DbUrls]:
    """A database of its own, cloned from the migrated template and dropped afterwards."""
    janitor = DatabaseJanitor(
        user=pg_server.user,
        password=pg_server.password,
        host=pg_server.host,
        port=pg_server.port,
        dbname=name,
        template_dbname=template.template_dbname,
    )
    janitor.drop()  # left over from an interrupted run
    with janitor:
        prepare_clone(pg_server, name)
        yield pg_server.urls(name)


@dataclass(frozen=True)
class LiveService:
    """A running server, and a superuser connection (autocommit) to its database."""

    server: LiveServer
    admin: psycopg.Connection
    settings: Settings

    @property
    def base_url(self) -> str:
        return self.server.base_url


def live_service(name: str, **overrides: object) -> Callable[..., Iterator[LiveService]]:
    """A module-scoped fixture: database `todo_test_live_<name>` and a server on it."""

    @pytest.fixture(scope="module")
    def fixture(
        pg_server: Server, pg_template: NoopExecutor, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[LiveService]:
        workdir = tmp_path_factory.mktemp(f"live_{name}")
        with module_database(pg_server, pg_template, f"{TEST_DB}_live_{name}") as db:
            settings = make_settings(db, **overrides)
            with (
                psycopg.connect(db.admin, autocommit=True) as admin,
                live_server(settings, workdir) as server,
            ):
                yield LiveService(server, admin, settings)

    return fixture
