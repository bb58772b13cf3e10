"""The service under uvicorn in its own process group, as a user starts it, and the
resident memory of its worker processes while load runs."""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx
import psutil

from bench.database import BenchDatabase, committed_transactions

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# uvicorn logs this once per worker when its lifespan (role and key checks) has passed.
STARTED = "Application startup complete."
# Inherited variables that would change how uvicorn runs behind the benchmark's back.
_UVICORN_VARIABLES = ("UVICORN_", "WEB_CONCURRENCY")
# The service's workers count as idle below this share of one core.
IDLE_CPU = 0.05
# LOG_LEVELs at which the access log is written.
ACCESS_LOG_LEVELS = frozenset({"DEBUG", "INFO", "NOTSET"})


def _log_level() -> str:
    return os.environ.get("LOG_LEVEL", "info").upper()


def _cpu_of(processes: list[psutil.Process]) -> float:
    """User and system CPU seconds of the processes, and of their children that ended."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds a process and its descendants have used, those that ended included (in
    their parent's children times); None if the process is gone."""
    try:
        top = psutil.Process(root)
        return _cpu_of([top, *top.children(recursive=True)])
    except psutil.Error:
        return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def todo_api_command() -> list[str]:
    """`todo-api`, the console script a user runs."""
    script = Path(sys.executable).with_name("todo-api")
    found = str(script) if script.exists() else shutil.which("todo-api")
    return [found] if found else [sys.executable, "-c", "from app.cli import main; main()"]


def environment(overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_UVICORN_VARIABLES)}
    # bench/ is not installed: uvicorn's workers import bench.control_app from the project.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env | overrides


@dataclass
class RunningService:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    workers: int

    def worker_processes(self) -> list[psutil.Process]:
        """The processes that serve requests: uvicorn's spawned workers, or the one process."""
        main = psutil.Process(self.process.pid)
        if self.workers == 1:
            return [main]
        workers = []
        for child in main.children(recursive=True):
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    workers.append(child)
            except psutil.Error:
                continue
        return workers

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def served_since(self, offset: int) -> int | None:
        """Requests answered since the log had `offset` bytes: the service's access log
        lines (app.access, one per request at LOG_LEVEL=info; None above that). The
        chat's calls to its own /mcp go in process, past the middleware, and log none."""
        if _log_level() not in ACCESS_LOG_LEVELS:
            return None
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return sum(1 for line in log if b"app.access" in line)

    def cpu_seconds(self) -> float | None:
        """CPU time the service's processes have used (the uvicorn supervisor and its workers)."""
        return tree_cpu_seconds(self.process.pid)

    def wait_idle(self, timeout: float = 30.0, interval: float = 0.1) -> bool:
        """Waits until the workers are idle (under IDLE_CPU of a core for `interval` s):
        the requests a stopped load generator left in flight are answered. A chat's run
        goes on after its client has left, and would otherwise take its CPU from the next
        measurement."""
        deadline = time.monotonic() + timeout
        workers = self.worker_processes()
        last = _cpu_of(workers)
        while time.monotonic() < deadline:
            time.sleep(interval)
            now = _cpu_of(workers)
            if now - last < IDLE_CPU * interval:
                return True
            last = now
        return False

    def connections_per_worker(self) -> list[int]:
        """Established client connections each worker holds now."""
        return [len(ports) for ports in self.client_ports_per_worker()]

    def client_ports_per_worker(self) -> list[set[int]]:
        """The client ports of the established connections each worker holds now."""
        port = int(self.base_url.rsplit(":", 1)[1])
        held_by = []
        for worker in self.worker_processes():
            try:
                held = worker.net_connections(kind="tcp")
            except psutil.Error:
                held = []
            held_by.append(
                {
                    c.raddr.port
                    for c in held
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port and c.raddr
                }
            )
        return held_by


def _wait_until_serving(service: RunningService) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    answered_at: float | None = None
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"the service exited while starting:\n{service.output()[-3000:]}")
        try:
            if httpx.get(f"{service.base_url}/healthz", timeout=1.0).status_code == 200:
                answered_at = answered_at or time.monotonic()
        except httpx.TransportError:
            pass
        # Every worker, not only the first: load must not land on one worker while the
        # others are still starting. Their start-up line is logged at LOG_LEVEL=info;
        # above that, a few seconds after the first answer have to do.
        if answered_at is not None and (
            service.output().count(STARTED) >= service.workers or time.monotonic() - answered_at > 5
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the service did not start within {START_TIMEOUT:.0f} s:\n{service.output()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # Its own process group (start_new_session): uvicorn's workers go with it.
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)


@contextmanager
def serve(
    command: list[str],
    env: dict[str, str],
    workdir: Path,
    workers: int,
    port: int,
    *,
    service_class: type[RunningService] = RunningService,
    wait: Callable[[RunningService], None] = _wait_until_serving,
) -> Iterator[RunningService]:
    """`command` in its own process group, logging to workdir/server.log, until `wait`
    has seen it serve; stopped on exit. The service's own servers by default; control 5
    (bench/postgraphile.py) brings its own class and wait."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    # A file, not a pipe that nobody reads while the load runs. The working directory
    # is the run's own, so no .env file is picked up.
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - the harness's own commands
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = service_class(f"http://127.0.0.1:{port}", process, log_path, workers)
    try:
        wait(service)
        yield service
    finally:
        _stop(process)


def shipped_service(
    env: dict[str, str], workdir: Path, workers: int
) -> AbstractContextManager[RunningService]:
    """Control 1, the service as shipped: `todo-api serve --workers N`."""
    port = free_port()
    command = [*todo_api_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return serve([*command, "--workers", str(workers)], env, workdir, workers, port)


def control_service(
    env: dict[str, str], workdir: Path, workers: int
) -> AbstractContextManager[RunningService]:
    """Controls 2 and 3: bench/control_app.py under uvicorn, with the options `todo-api
    serve` gives it (its own logging, no uvicorn access log)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.control_app:create_control_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
    ]
    return serve(command, env, workdir, workers, port)


class _Sampler:
    """Calls `_sample` every `interval` seconds in a thread, from entry to exit."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class MemorySampler(_Sampler):
    """Resident set size of each worker, sampled every `interval` seconds in a thread."""

    def __init__(self, service: RunningService, interval: float = 0.25) -> None:
        super().__init__(interval)
        self._samples: list[list[int]] = []
        self._workers = service.worker_processes()

    def _sample(self) -> None:
        sample = []
        for worker in self._workers:
            try:
                sample.append(worker.memory_info().rss)
            except psutil.Error:
                continue
        if sample:
            self._samples.append(sample)

    @property
    def peak_mb(self) -> float | None:
        """The largest RSS any one worker reached."""
        return max((max(s) for s in self._samples), default=0) / 2**20 if self._samples else None

    @property
    def mean_mb(self) -> float | None:
        """The mean RSS of a worker over the run."""
        if not self._samples:
            return None
        values = [value for sample in self._samples for value in sample]
        return sum(values) / len(values) / 2**20


def _fixed_work(rounds: int = 20_000) -> int:
    """A fixed piece of pure-Python work (integer arithmetic, a dict, a list): what the
    speed probe times."""
    seen: dict[int, int] = {}
    total = 0
    for n in range(rounds):
        total += (n * n) % 7
        seen[n % 97] = total
    return total + len(seen) + len(sorted(seen.values()))


class SpeedProbe(_Sampler):
    """The machine's own speed while a measurement runs: every `interval` seconds a
    thread times the CPU it takes to do `_fixed_work` (its thread time, which waiting
    for a core does not count). On a virtual machine the same work took from 117 to
    188 ms of CPU within seconds, the machine otherwise idle (bench/README.md, round
    9): rounds of a measurement can differ by as much without the service changing.
    Costs ~0.15% of one core (~1.5 ms a second)."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(interval)
        self.samples: list[float] = []  # CPU µs of each run of the work

    def _sample(self) -> None:
        started = time.thread_time()
        _fixed_work()
        self.samples.append((time.thread_time() - started) * 1e6)

    @property
    def median_us(self) -> float | None:
        """The probe's median CPU time (µs): higher is a slower machine."""
        return statistics.median(self.samples) if self.samples else None


class CpuAccount:
    """How much of the machine's CPU went to anything but the benchmark while a
    measurement ran: the load of other people's work, or time the hypervisor stole.
    Ours is this process and its children (servers, wrk, pgbench) and the database
    server's processes; those that ended count through their parent's children times."""

    def __init__(self, roots: list[int]) -> None:
        self._roots = roots
        self.other_percent: float | None = None

    def _ours(self) -> float:
        return sum(tree_cpu_seconds(root) or 0.0 for root in self._roots)

    @staticmethod
    def _busy() -> float:
        times = psutil.cpu_times()
        return sum(
            getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal")
        )

    def __enter__(self) -> "CpuAccount":
        self._started = time.monotonic()
        self._busy_at_start, self._ours_at_start = self._busy(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self._started
        busy, ours = self._busy() - self._busy_at_start, self._ours() - self._ours_at_start
        if elapsed > 0:
            self.other_percent = max(0.0, busy - ours) / (elapsed * (os.cpu_count() or 1)) * 100


class RequestCost:
    """What a measurement cost the service and the database, from just before its load
    starts to when the service has answered the requests left in flight: the requests
    answered (its access log), the commits in the benchmark's database
    (pg_stat_database.xact_commit), and the CPU time of the service's processes and of
    PostgreSQL's (the postmaster and every backend)."""

    def __init__(self, service: RunningService, db: BenchDatabase) -> None:
        self._service = service
        self._db = db
        self.served: int | None = None
        self.commits: int | None = None
        self.service_cpu_s: float | None = None
        self.database_cpu_s: float | None = None

    def _database_cpu(self) -> float | None:
        return tree_cpu_seconds(self._db.pid) if self._db.pid else None

    def __enter__(self) -> "RequestCost":
        self._offset = self._service.log_size()
        self._service_cpu = self._service.cpu_seconds()
        self._database_cpu_at_start = self._database_cpu()
        self._commits = committed_transactions(self._db.admin_url)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        self._service.wait_idle()
        self.served = self._service.served_since(self._offset)
        self.commits = committed_transactions(self._db.admin_url) - self._commits
        service_cpu, database_cpu = self._service.cpu_seconds(), self._database_cpu()
        if service_cpu is not None and self._service_cpu is not None:
            self.service_cpu_s = service_cpu - self._service_cpu
        if database_cpu is not None and self._database_cpu_at_start is not None:
            self.database_cpu_s = database_cpu - self._database_cpu_at_start
