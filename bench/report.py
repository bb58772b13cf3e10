"""The results: measurements, the ratios that give them meaning, the targets of issues
5, 12, 13 and 15, as JSON, a markdown table and a PNG of the growth curve."""

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import Any

TARGETS = {
    "service": "1. service as shipped",
    "no_rls": "2. same, RLS bypassed",
    "no_db": "3. no database (GET /bench/whoami)",
    "pgbench": "4. pgbench, the service's SQL",
    "postgraphile": "5. PostGraphile, the same table",
}
# Issue 5's targets.
MIN_ISOLATION_RATIO = 0.95
MIN_LIST_TO_NO_DB_RATIO = 0.40
MAX_GROWTH_RATIO = 1.2
# Issue 12's: search's p50 at the largest size at most this times that at the smallest.
MAX_SEARCH_GROWTH_RATIO = 1.5
MAX_WORKER_MB = 150.0
# Issue 13's: a chat message takes at most this many transactions besides one per tool
# call (the history's: check the conversation, read it and store the message; then store
# the tool calls and the reply).
CHAT_HISTORY_TRANSACTIONS = 2
# Issue 15's: against PostGraphile (control 5), the service's req/s at least this many
# times PostGraphile's on these scenarios, at every worker count compared; its p99 at
# most PostGraphile's on those; each round's req/s within this share of the median.
MIN_POSTGRAPHILE_RATIO = 1.5
POSTGRAPHILE_RATIO_SCENARIOS = ("list", "create")
POSTGRAPHILE_P99_SCENARIOS = ("list", "get", "create")
MAX_ROUND_SPREAD = 0.10


@dataclass
class Measurement:
    target: str  # a key of TARGETS
    scenario: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    memory_peak_mb: float | None = None  # largest RSS of one worker
    memory_mean_mb: float | None = None  # mean RSS of a worker
    connections_per_worker: list[int] | None = None  # how wrk's connections fell on the workers
    other_cpu_percent: float | None = None  # of the machine's CPU, used by anything but the benchmark
    rounds_rps: list[float] | None = None  # each round's req/s, when combined from rounds
    # The machine's speed (bench.service.SpeedProbe): CPU µs of a fixed piece of work,
    # the median over the measurement; and each round's, when combined from rounds.
    probe_us: float | None = None
    rounds_probe_us: list[float] | None = None
    workers: int | None = None  # the server's worker processes (None: pgbench)
    # What the load cost, from its start to the last request in flight answered
    # (bench.service.RequestCost): requests the service answered, commits PostgreSQL
    # counted in the database, CPU seconds of the service's processes and of PostgreSQL's.
    served: int | None = None
    commits: int | None = None
    service_cpu_s: float | None = None
    database_cpu_s: float | None = None

    @property
    def answered(self) -> int:
        """The requests the cost is shared by: those the service answered, or (no access
        log) those wrk counted."""
        return self.served if self.served is not None else self.requests

    @property
    def commits_per_request(self) -> float | None:
        if self.commits is None or not self.answered:
            return None
        return self.commits / self.answered

    def cpu_us(self, seconds: float | None) -> float | None:
        """CPU microseconds per request answered."""
        return None if seconds is None or not self.answered else seconds / self.answered * 1e6

    def per_request(self) -> dict[str, float | None]:
        return {
            "commits_per_request": self.commits_per_request,
            "service_cpu_us_per_request": self.cpu_us(self.service_cpu_s),
            "database_cpu_us_per_request": self.cpu_us(self.database_cpu_s),
        }


def round_spread(rounds_rps: list[float]) -> float:
    """How far the round furthest from the median is from it, as a share of the median."""
    middle = median(rounds_rps)
    return max(abs(rps - middle) for rps in rounds_rps) / middle if middle else 0.0


def _median_of(values: list[float | None]) -> float | None:
    """The median of the values given, None if there are none."""
    given = [value for value in values if value is not None]
    return median(given) if given else None


def scaled_rounds(rounds_rps: list[float], rounds_probe_us: list[float]) -> list[float]:
    """Each round's req/s as it would have been at the rounds' median machine speed:
    scaled by the round's probe time over the median probe time (a CPU-bound service
    answers in proportion to the machine's speed)."""
    middle = median(rounds_probe_us)
    return [rps * probe / middle for rps, probe in zip(rounds_rps, rounds_probe_us, strict=True)]


def _total(values: list[Any]) -> Any:
    """The sum of the rounds' values, None if any round has none."""
    return None if any(value is None for value in values) else sum(values)


def combine(rounds: list[Measurement]) -> Measurement:
    """Rounds of one measurement as one: medians of the rates and latencies, the worst
    of memory and disturbance, the sums of counts."""
    if len(rounds) == 1:
        return rounds[0]
    middle = sorted(rounds, key=lambda m: m.rps)[len(rounds) // 2]
    peaks = [m.memory_peak_mb for m in rounds if m.memory_peak_mb is not None]
    means = [m.memory_mean_mb for m in rounds if m.memory_mean_mb is not None]
    others = [m.other_cpu_percent for m in rounds if m.other_cpu_percent is not None]
    return replace(
        middle,
        requests=sum(m.requests for m in rounds),
        errors=sum(m.errors for m in rounds),
        seconds=round(sum(m.seconds for m in rounds), 2),
        rps=median(m.rps for m in rounds),
        p50_ms=median(m.p50_ms for m in rounds),
        p99_ms=median(m.p99_ms for m in rounds),
        memory_peak_mb=max(peaks) if peaks else None,
        memory_mean_mb=sum(means) / len(means) if means else None,
        other_cpu_percent=max(others) if others else None,
        rounds_rps=[round(m.rps, 1) for m in rounds],
        probe_us=_median_of([m.probe_us for m in rounds]),
        rounds_probe_us=(
            None if any(m.probe_us is None for m in rounds) else [round(m.probe_us or 0) for m in rounds]
        ),
        served=_total([m.served for m in rounds]),
        commits=_total([m.commits for m in rounds]),
        service_cpu_s=_total([m.service_cpu_s for m in rounds]),
        database_cpu_s=_total([m.database_cpu_s for m in rounds]),
    )


@dataclass
class Scan:
    """One scan of a plan (bench/capture.py reads them from EXPLAIN's JSON)."""

    node: str  # Index Scan, Index Only Scan, Bitmap Index Scan, Seq Scan, ...
    table: str
    index: str | None
    condition: str | None  # its Index Cond
    rows_read: int  # rows or index entries it read, those its filter dropped included, all loops
    loops: int
    keyed_by_user: bool  # an index led by user_id, with an equality on it: one user's range


@dataclass
class Plan:
    scenario: str
    text: str
    execution_ms: float | None
    buffers: int | None = None  # shared buffers hit or read by the whole statement
    scans: list[Scan] = field(default_factory=list)

    @property
    def seq_scan(self) -> bool:
        return "Seq Scan" in self.text

    @property
    def unkeyed(self) -> list[Scan]:
        """The scans that could read other users' rows or index entries."""
        return [scan for scan in self.scans if not scan.keyed_by_user]

    def rows_read(self, table: str) -> int:
        return sum(scan.rows_read for scan in self.scans if scan.table == table)


@dataclass
class GrowthPoint:
    tasks: int
    users: int
    seed_seconds: float
    measured: dict[str, Measurement]  # scenario -> its latency at this size
    plans: list[Plan]

    def plan(self, scenario: str) -> Plan | None:
        return next((plan for plan in self.plans if plan.scenario == scenario), None)


@dataclass
class TransactionCount:
    """A scenario's commits per request, counted exactly (bench/transactions.py)."""

    scenario: str
    requests: int  # requests counted
    commits: int  # the commits PostgreSQL counted for them
    commits_per_transaction: int  # per transaction of the service's: its commit and the clean-up's
    tool_calls: int | None = None  # per message, for the chat (every message made as many)

    @property
    def commits_per_request(self) -> float:
        return self.commits / self.requests

    @property
    def transactions_per_request(self) -> float:
        """Transactions of the service's (begin ... commit) per request."""
        return self.commits_per_request / self.commits_per_transaction

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "commits_per_request": self.commits_per_request,
            "transactions_per_request": self.transactions_per_request,
        }


@dataclass
class Target:
    name: str
    measured: float | None
    limit: str
    met: bool | None  # None: not measured in this run, or not judged
    detail: str = ""
    judged: bool = True  # False: a figure to read the others against, with no pass or fail


def isolation_target(scenario: str, ratio: float | None) -> Target:
    """Issue 5's: a scenario's req/s with RLS over without, `ratio` (None: not measured)."""
    return Target(
        f"isolation cost: {scenario} with RLS / without (req/s)",
        ratio,
        f">= {MIN_ISOLATION_RATIO}",
        None if ratio is None else ratio >= MIN_ISOLATION_RATIO,
    )


@dataclass
class Report:
    meta: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)
    growth: list[GrowthPoint] = field(default_factory=list)
    # scenario -> the statements of one request, as bench.capture.Statement.to_json()
    captured: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # scenario -> (pgbench command, mean ms) for each command of its script
    statement_latencies: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    # scenario -> its commits per request, counted exactly (list and chat)
    transactions: dict[str, TransactionCount] = field(default_factory=dict)

    def at_main_workers(self, m: Measurement) -> bool:
        """Whether the measurement is of the main suite's servers (the run's --workers), not
        of the comparison with PostGraphile at another worker count."""
        return m.workers is None or m.workers == self.meta.get("workers")

    def find(self, target: str, scenario: str, workers: int | None = None) -> Measurement | None:
        """The measurement of `target` on `scenario`: of the main suite, or at `workers`."""
        return next(
            (
                m
                for m in self.measurements
                if m.target == target
                and m.scenario == scenario
                and (self.at_main_workers(m) if workers is None else m.workers in (None, workers))
            ),
            None,
        )

    def ratio(self, scenario: str, control: str, workers: int | None = None) -> float | None:
        service = self.find("service", scenario, workers)
        other = self.find(control, "whoami" if control == "no_db" else scenario, workers)
        if service is None or other is None or not other.rps:
            return None
        return service.rps / other.rps

    def chat_to_list(self) -> float | None:
        """The chat's req/s over its control's, the list's, both as the service as shipped."""
        chat, listed = self.find("service", "chat"), self.find("service", "list")
        if chat is None or listed is None or not listed.rps:
            return None
        return chat.rps / listed.rps

    def ratios(self) -> dict[str, dict[str, float | None]]:
        scenarios = [
            m.scenario for m in self.measurements if m.target == "service" and self.at_main_workers(m)
        ]
        return {
            s: {
                "1/2": self.ratio(s, "no_rls"),
                "1/3": self.ratio(s, "no_db"),
                "1/4": self.ratio(s, "pgbench"),
                "1/5": self.ratio(s, "postgraphile"),
                "chat/list": self.chat_to_list() if s == "chat" else None,
            }
            for s in scenarios
        }

    def compared_workers(self) -> list[int]:
        """The worker counts at which the service is compared with PostGraphile: those the
        run was asked for, and any it has measurements at."""
        asked = set(self.meta.get("compare_workers") or ())
        measured = {m.workers for m in self.measurements if m.target == "postgraphile" and m.workers}
        return sorted(asked | measured)

    def compared(self) -> list[tuple[str, int]]:
        """(scenario, workers) of the comparison with PostGraphile: list, get and create at
        the run's worker count, list and create at the others."""
        main = self.meta.get("workers")
        return [
            (scenario, workers)
            for workers in self.compared_workers()
            for scenario in POSTGRAPHILE_P99_SCENARIOS
            if workers == main or scenario in POSTGRAPHILE_RATIO_SCENARIOS
        ]

    def machine_speed_targets(self) -> list[Target]:
        """Whether the machine was quiet enough for the spread target to mean anything:
        how far its own speed (the probe) moved across the rounds of the service's
        measurements, and the service's spread with each round scaled by that speed. Not
        targets of their own (no pass or fail): what to read the spread against."""
        probed = [
            m
            for m in self.measurements
            if m.target == "service" and m.rounds_rps and m.rounds_probe_us and len(m.rounds_rps) >= 2
        ]
        if not probed:
            return []
        speed = max(probed, key=lambda m: round_spread(m.rounds_probe_us or []))

        def scaled(m: Measurement) -> float:
            return round_spread(scaled_rounds(m.rounds_rps or [], m.rounds_probe_us or []))

        worst = max(probed, key=scaled)

        def name(m: Measurement) -> str:
            return f"{m.scenario} at {m.workers} worker(s)" if m.workers else m.scenario

        return [
            Target(
                "the machine's own speed across the same rounds (CPU time of a fixed piece of work; "
                "largest distance of a round from the median)",
                round_spread(speed.rounds_probe_us or []),
                f"quiet: <= {MAX_ROUND_SPREAD:.2f}",
                None,
                f"the largest: {name(speed)}",
                judged=False,
            ),
            Target(
                "round-to-round spread of the service's req/s, each round scaled by the machine's speed",
                scaled(worst),
                f"<= {MAX_ROUND_SPREAD:.2f} of the median",
                None,
                f"the largest: {name(worst)}",
                judged=False,
            ),
        ]

    def issue_15_targets(self) -> list[Target]:
        """Issue 15's: against PostGraphile, the spread of the rounds, isolation on every
        scenario, and the CPU per request of each."""
        targets = []
        for workers in self.compared_workers():
            for scenario in POSTGRAPHILE_RATIO_SCENARIOS:
                value = self.ratio(scenario, "postgraphile", workers)
                service, other = (
                    self.find("service", scenario, workers),
                    self.find("postgraphile", scenario, workers),
                )
                targets.append(
                    Target(
                        f"against PostGraphile: {scenario} at {workers} worker(s), "
                        "service / PostGraphile (req/s)",
                        value,
                        f">= {MIN_POSTGRAPHILE_RATIO}",
                        None if value is None else value >= MIN_POSTGRAPHILE_RATIO,
                        f"{service.rps:,.0f} / {other.rps:,.0f} req/s" if service and other else "",
                    )
                )
        for scenario, workers in self.compared():
            service, other = (
                self.find("service", scenario, workers),
                self.find("postgraphile", scenario, workers),
            )
            targets.append(
                Target(
                    f"p99 latency: {scenario} at {workers} worker(s), service (ms)",
                    service.p99_ms if service else None,
                    f"<= PostGraphile's ({other.p99_ms:.2f} ms)" if other else "<= PostGraphile's",
                    None if service is None or other is None else service.p99_ms <= other.p99_ms,
                )
            )
        spreads = {
            f"{m.scenario} at {m.workers} worker(s)" if m.workers else m.scenario: round_spread(m.rounds_rps)
            for m in self.measurements
            if m.target == "service" and m.rounds_rps and len(m.rounds_rps) >= 2
        }
        worst = max(spreads.items(), key=lambda item: item[1], default=None)
        over = [f"{name} {spread:.0%}" for name, spread in spreads.items() if spread > MAX_ROUND_SPREAD]
        targets.append(
            Target(
                "round-to-round spread of the service's req/s (largest distance of a round from the median)",
                worst[1] if worst else None,
                f"<= {MAX_ROUND_SPREAD:.2f} of the median",
                None if worst is None else not over,
                ("over: " + ", ".join(over)) if over else (f"the largest: {worst[0]}" if worst else ""),
            )
        )
        targets += self.machine_speed_targets()
        # Issue 5's, on every scenario now, each request's hardening included.
        for scenario, ratios in self.ratios().items():
            targets.append(isolation_target(scenario, ratios["1/2"]))
        served = [m for m in self.measurements if m.target == "service" and self.at_main_workers(m)]
        missing = [
            m.scenario
            for m in served
            if m.cpu_us(m.service_cpu_s) is None or m.cpu_us(m.database_cpu_s) is None
        ]
        targets.append(
            Target(
                "CPU per request given for every scenario, service and PostgreSQL (µs)",
                float(len(served) - len(missing)),
                f"all {len(served)} scenarios",
                None if not served else not missing,
                ("missing: " + ", ".join(missing)) if missing else "",
            )
        )
        return targets

    def chat_transactions_target(self) -> Target:
        """Issue 13's: the transactions of one chat message, counted exactly, at most two
        (the history's) plus one per tool call."""
        chat = self.transactions.get("chat")
        if chat is None or chat.tool_calls is None:
            return Target(
                "chat: database transactions per message (exact count)",
                None,
                f"<= {CHAT_HISTORY_TRANSACTIONS} + tool calls",
                None,
            )
        limit = CHAT_HISTORY_TRANSACTIONS + chat.tool_calls
        under_load = self.find("service", "chat")
        loaded = under_load.commits_per_request if under_load else None
        detail = f"{chat.commits_per_request:g} commits per message"
        if loaded is not None:
            detail += f"; under load {loaded:.2f}"
        return Target(
            "chat: database transactions per message (exact count)",
            chat.transactions_per_request,
            f"<= {limit} ({CHAT_HISTORY_TRANSACTIONS} + {chat.tool_calls} tool call"
            f"{'s' if chat.tool_calls != 1 else ''})",
            chat.transactions_per_request <= limit,
            detail,
        )

    def targets(self) -> list[Target]:
        targets = []
        for scenario in ("list", "get"):
            targets.append(isolation_target(scenario, self.ratio(scenario, "no_rls")))
        value = self.ratio("list", "no_db")
        targets.append(
            Target(
                "list of 50 / no-database route (req/s)",
                value,
                f">= {MIN_LIST_TO_NO_DB_RATIO}",
                None if value is None else value >= MIN_LIST_TO_NO_DB_RATIO,
            )
        )
        for scenario, limit in (("list", MAX_GROWTH_RATIO), ("search", MAX_SEARCH_GROWTH_RATIO)):
            points = [point for point in self.growth if scenario in point.measured]
            if len(points) >= 2:
                first, last = points[0].measured[scenario], points[-1].measured[scenario]
                value = last.p50_ms / first.p50_ms if first.p50_ms else None
                targets.append(
                    Target(
                        f"growth: {scenario} p50 at {points[-1].tasks:,} tasks / at {points[0].tasks:,}",
                        value,
                        f"<= {limit}",
                        None if value is None else value <= limit,
                        f"{last.p50_ms:.2f} ms / {first.p50_ms:.2f} ms",
                    )
                )
            else:
                targets.append(
                    Target(f"growth: {scenario} p50, largest / smallest size", None, f"<= {limit}", None)
                )
        plans = [plan for point in self.growth for plan in point.plans]
        seq_scans = [f"{p.scenario} at {pt.tasks:,}" for pt in self.growth for p in pt.plans if p.seq_scan]
        targets.append(
            Target(
                "plans: index scans only, no sequential scan",
                float(len(seq_scans)),
                "0 sequential scans",
                None if not plans else not seq_scans,
                ", ".join(seq_scans) or f"{len(plans)} plans checked",
            )
        )
        scans = [scan for plan in plans for scan in plan.scans]
        unkeyed = [
            f"{scan.node} on {scan.table} in {p.scenario} at {pt.tasks:,}"
            for pt in self.growth
            for p in pt.plans
            for scan in p.unkeyed
        ]
        targets.append(
            Target(
                "plans: every scan reads one user's range of a (user_id, ...) index",
                float(len(unkeyed)),
                "0 other scans",
                None if not scans else not unkeyed,
                ", ".join(unkeyed) or f"{len(scans)} scans checked",
            )
        )
        targets.append(self.chat_transactions_target())
        served = [m for m in self.measurements if m.target == "service" and m.memory_peak_mb]
        value = max((m.memory_peak_mb or 0.0 for m in served), default=None)
        # A worker that has answered a chat message holds the Agents SDK: said apart.
        rest = [m.memory_peak_mb or 0.0 for m in served if m.scenario != "chat"]
        detail = f"{max(rest):.0f} without the chat" if rest and len(rest) < len(served) else ""
        targets.append(
            Target(
                "server memory under load, per worker (peak RSS, MB)",
                value,
                f"<= {MAX_WORKER_MB:.0f}",
                None if value is None else value <= MAX_WORKER_MB,
                detail,
            )
        )
        return targets

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "measurements": [{**asdict(m), **m.per_request()} for m in self.measurements],
            "ratios": self.ratios(),
            "targets": [asdict(t) for t in [*self.targets(), *self.issue_15_targets()]],
            "growth": [
                {
                    **{k: v for k, v in asdict(point).items() if k != "plans"},
                    "plans": [{**asdict(p), "seq_scan": p.seq_scan} for p in point.plans],
                }
                for point in self.growth
            ],
            "captured": self.captured,
            "statement_latencies": {k: [list(x) for x in v] for k, v in self.statement_latencies.items()},
            "transactions": {k: v.to_json() for k, v in self.transactions.items()},
        }


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _p50(point: GrowthPoint, scenario: str) -> float | None:
    m = point.measured.get(scenario)
    return m.p50_ms if m else None


def _met(target: Target) -> str:
    if not target.judged:
        return "to read the others by"
    return "not measured" if target.met is None else ("**met**" if target.met else "**missed**")


def _targets_table(title: str, targets: list[Target]) -> list[str]:
    return ["", f"## {title}", "", "| target | measured | limit | |", "|---|---:|---|---|"] + [
        _target_row(target) for target in targets
    ]


def _target_row(target: Target) -> str:
    measured = _num(target.measured, 2) + (f" ({target.detail})" if target.detail else "")
    return f"| {target.name} | {measured} | {target.limit} | {_met(target)} |"


def _postgraphile_section(report: Report) -> list[str]:
    """Control 5 beside the service at each worker count compared: what a user would
    pick instead, on the same table, the same users' tokens, the same load."""
    about = report.meta.get("postgraphile_details") or {}
    lines = ["", "## Against PostGraphile (control 5, issue 15)", ""]
    if about.get("unavailable"):
        return [*lines, f"PostGraphile was not measured: {about['unavailable']}."]
    if not report.compared_workers():
        return []
    if about.get("version"):
        lines += [
            f"PostGraphile {about['version']} on Node {about.get('node', '?')}: "
            f"`postgraphile {about.get('options', '')}`, with as many cluster workers as the service "
            "has workers (one process at 1), serving a copy of the seeded tables in a database of "
            f"its own (`{about.get('database', '?')}`) on the same server: row-level security "
            f"forced, the policy `user_id = {about.get('policy', '?')}`, connected as a role that "
            "is neither the owner nor BYPASSRLS; every request runs as `--default-role` with the "
            "JWT's claims set. The same users' tokens as the service's. An answer with GraphQL "
            "`errors` counts as an error. CPU per request: PostGraphile's node processes, and "
            "PostgreSQL's (as for the service).",
            "",
        ]
    lines += [
        "| scenario | workers | service req/s (rounds) | PostGraphile req/s (rounds) "
        "| service / PostGraphile | p50 ms, service / PostGraphile | p99 ms, service / PostGraphile "
        "| CPU µs per request, service + PostgreSQL | PostGraphile + PostgreSQL "
        "| errors, service / PostGraphile |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def rate(m: Measurement | None) -> str:
        if m is None:
            return "-"
        each = ", ".join(f"{rps:,.0f}" for rps in m.rounds_rps) if m.rounds_rps else ""
        return _num(m.rps, 0) + (f" ({each})" if each else "")

    def cpu(m: Measurement | None) -> str:
        if m is None:
            return "-"
        return f"{_num(m.cpu_us(m.service_cpu_s), 0)} + {_num(m.cpu_us(m.database_cpu_s), 0)}"

    for scenario, workers in report.compared():
        service, other = (
            report.find("service", scenario, workers),
            report.find("postgraphile", scenario, workers),
        )
        pair = (service, other)
        p50 = " / ".join(_num(m.p50_ms if m else None, 2) for m in pair)
        p99 = " / ".join(_num(m.p99_ms if m else None, 2) for m in pair)
        errors = " / ".join("-" if m is None else str(m.errors) for m in pair)
        lines.append(
            f"| {scenario} | {workers} | {rate(service)} | {rate(other)} "
            f"| {_num(report.ratio(scenario, 'postgraphile', workers), 2)} | {p50} | {p99} "
            f"| {cpu(service)} | {cpu(other)} | {errors} |"
        )
    return lines


def _chat_section(report: Report) -> list[str]:
    """The chat beside its control, the list: what a message costs against a request."""
    chat, listed = report.find("service", "chat"), report.find("service", "list")
    if chat is None:
        return []
    counted = {name: report.transactions.get(name) for name in ("chat", "list")}

    def row(name: str, value: Callable[[Any], float | None], digits: int, source: dict[str, Any]) -> str:
        values = [None if source[key] is None else value(source[key]) for key in ("chat", "list")]
        ratio = values[0] / values[1] if None not in values and values[1] else None
        return f"| {name} | {_num(values[0], digits)} | {_num(values[1], digits)} | {_num(ratio, 2)} |"

    loads = {"chat": chat, "list": listed}
    calls = counted["chat"].tool_calls if counted["chat"] else None
    return [
        "",
        "## The chat and its control (issue 13)",
        "",
        "`POST /api/{user}/chat` on the offline assistant, a message that makes "
        f"{_num(calls, 0)} tool call(s), beside the list (`GET /api/{{user}}/tasks?limit=50`): "
        "the service as shipped, in the same run. Transactions counted exactly: one request at a "
        "time on the app in process, its connections closed before the count is read "
        "(bench/transactions.py); under load: over the measurement above.",
        "",
        "| per request | chat | list | chat / list |",
        "|---|---:|---:|---:|",
        row("req/s", lambda m: m.rps, 0, loads),
        row("p50 ms", lambda m: m.p50_ms, 2, loads),
        row("transactions of the service's, exact count", lambda c: c.transactions_per_request, 2, counted),
        row("commits PostgreSQL counts, exact count", lambda c: c.commits_per_request, 2, counted),
        row("commits PostgreSQL counts, under load", lambda m: m.commits_per_request, 2, loads),
        row("service CPU µs", lambda m: m.cpu_us(m.service_cpu_s), 0, loads),
        row("PostgreSQL CPU µs", lambda m: m.cpu_us(m.database_cpu_s), 0, loads),
        row(
            "service and PostgreSQL CPU µs",
            lambda m: (
                None
                if m.service_cpu_s is None or m.database_cpu_s is None
                else m.cpu_us(m.service_cpu_s + m.database_cpu_s)
            ),
            0,
            loads,
        ),
    ]


def to_markdown(report: Report, chart: str | None) -> str:
    meta = report.meta
    lines = [
        f"# Benchmark {meta['started']}",
        "",
        f"{meta['machine']}. {meta['users']:,} users x {meta['tasks_per_user']} tasks = "
        f"{meta['users'] * meta['tasks_per_user']:,} tasks; {meta['workers']} uvicorn worker(s); "
        f"wrk with {meta['connections']} connections ({meta['threads']} thread(s)) for "
        f"{meta['duration']} s per scenario and round after {meta['warmup']} s of warm-up, "
        f"{meta['rounds']} round(s) interleaving the configurations, medians shown; pgbench with as "
        f"many clients. Run took {meta.get('total_seconds', 0):.0f} s.",
        *(f"\n**Warning**: {warning}." for warning in meta.get("warnings", [])),
        "",
        "## Requests per second and latency",
        "",
        "Per request (answered, in-flight ones included): the commits PostgreSQL counted in the "
        "database (pg_stat_database.xact_commit; two per transaction of the service's, its "
        "commit and the clean-up after it), and the CPU time of the service's processes and of "
        "PostgreSQL's. The commits are approximate: PostgreSQL publishes each connection's count at "
        "most once a second (bench/README.md).",
        "",
        "| scenario | configuration | req/s | req/s of each round | p50 ms | p99 ms | errors "
        "| worker RSS peak / mean MB | connections per worker | other CPU % | speed probe µs of each round "
        "| commits / request | service CPU µs / request | PostgreSQL CPU µs / request |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    listed = ("list", "get", "search", "tag", "due", "create", "toggle", "mix", "chat", "whoami")
    order = {name: i for i, name in enumerate(listed)}
    for m in sorted(
        filter(report.at_main_workers, report.measurements),
        key=lambda m: (order.get(m.scenario, len(listed)), list(TARGETS).index(m.target)),
    ):
        memory = "-" if m.memory_peak_mb is None else f"{m.memory_peak_mb:.0f} / {m.memory_mean_mb:.0f}"
        spread = " + ".join(map(str, m.connections_per_worker)) if m.connections_per_worker else "-"
        each = ", ".join(f"{rps:,.0f}" for rps in m.rounds_rps) if m.rounds_rps else "-"
        probes = m.rounds_probe_us or ([m.probe_us] if m.probe_us is not None else [])
        probe = ", ".join(f"{us:,.0f}" for us in probes) or "-"
        cost = m.per_request()
        lines.append(
            f"| {m.scenario} | {TARGETS[m.target]} | {_num(m.rps, 0)} | {each} | {_num(m.p50_ms, 2)} | "
            f"{_num(m.p99_ms, 2)} | {m.errors} | {memory} | {spread} | {_num(m.other_cpu_percent, 0)} | "
            f"{probe} | "
            f"{_num(cost['commits_per_request'], 2)} | {_num(cost['service_cpu_us_per_request'], 0)} | "
            f"{_num(cost['database_cpu_us_per_request'], 0)} |"
        )
    lines += [
        "",
        "## Ratios (req/s of the service / req/s of the control)",
        "",
        "| scenario | 1/2 cost of isolation | 1/3 of the framework's ceiling "
        "| 1/4 of the database's ceiling | 1/5 against PostGraphile | chat / list (the chat's control) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for scenario, ratios in report.ratios().items():
        lines.append(
            f"| {scenario} | {_num(ratios['1/2'], 2)} | {_num(ratios['1/3'], 2)} | {_num(ratios['1/4'], 2)} "
            f"| {_num(ratios['1/5'], 2)} | {_num(ratios['chat/list'], 2)} |"
        )
    lines += _postgraphile_section(report)
    lines += _chat_section(report)
    lines += _targets_table("Targets (issues 5, 12 and 13)", report.targets())
    lines += _targets_table("Targets (issue 15)", report.issue_15_targets())
    if report.growth:
        scenarios = list(dict.fromkeys(name for point in report.growth for name in point.measured))
        lines += [
            "",
            "## Growth: latency against table size",
            "",
            f"The service as shipped, {meta['growth_connections']} connection(s), "
            f"{meta['growth_duration']} s per point and scenario: p50 latency in ms.",
            "",
            "| tasks | users | " + " | ".join(f"{name} p50" for name in scenarios) + " | seeding s |",
            "|---:|---:|" + "---:|" * len(scenarios) + "---:|",
        ]
        for point in report.growth:
            cells = [f"{point.tasks:,}", f"{point.users:,}"]
            cells += [_num(_p50(point, name), 2) for name in scenarios]
            lines.append("| " + " | ".join([*cells, f"{point.seed_seconds:.0f}"]) + " |")
        if chart:
            lines += ["", f"![p50 latency against table size]({chart})"]
        lines += [
            "",
            "Each scenario at each size: `execution ms` is PostgreSQL's own time for the query "
            "(EXPLAIN (ANALYZE, BUFFERS) as the runtime role with the user's signed context, RLS in "
            "force), `buffers` the shared buffers it touched, `rows read` the rows and index entries "
            "its scans read (those a filter dropped included) per table, and `keyed scans` how many "
            "of its scans read one user's range of a (user_id, ...) index, out of all.",
            "",
            "| tasks | scenario | p50 ms | p99 ms | req/s | execution ms | buffers "
            "| rows read: tasks, task_tags, tags | keyed scans |",
            "|---:|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        for point in report.growth:
            names = list(dict.fromkeys([*point.measured, *(plan.scenario for plan in point.plans)]))
            for name in names:
                taken, plan = point.measured.get(name), point.plan(name)
                read = (
                    ", ".join(str(plan.rows_read(table)) for table in ("tasks", "task_tags", "tags"))
                    if plan
                    else "-"
                )
                keyed = f"{len(plan.scans) - len(plan.unkeyed)} / {len(plan.scans)}" if plan else "-"
                cells = [
                    f"{point.tasks:,}",
                    name,
                    _num(taken.p50_ms if taken else None, 2),
                    _num(taken.p99_ms if taken else None, 2),
                    _num(taken.rps if taken else None, 0),
                    _num(plan.execution_ms if plan else None, 3),
                    _num(plan.buffers if plan else None, 0),
                    read,
                    keyed,
                ]
                lines.append("| " + " | ".join(cells) + " |")
        largest = report.growth[-1]
        for plan in largest.plans:
            lines += ["", f"**Plan of {plan.scenario} at {largest.tasks:,} tasks**", ""]
            if plan.scans:
                lines += [
                    "| scan | table | index | index condition | rows read | loops |",
                    "|---|---|---|---|---:|---:|",
                ]
                for scan in plan.scans:
                    condition = f"`{scan.condition}`" if scan.condition else "-"
                    lines.append(
                        f"| {scan.node} | {scan.table} | {scan.index or '-'} | {condition} "
                        f"| {scan.rows_read} | {scan.loops} |"
                    )
                lines.append("")
            lines += ["```", plan.text, "```"]
        for point in report.growth[:-1]:
            for plan in point.plans:
                lines += [
                    "",
                    f"<details><summary>Plan of {plan.scenario} at {point.tasks:,} tasks</summary>",
                    "",
                    "```",
                    plan.text,
                    "```",
                    "</details>",
                ]
    if report.captured:
        lines += [
            "",
            "## Where the time goes: the statements of one request",
            "",
            "Read from PostgreSQL's statement log while the service answered one request of each "
            "kind; each statement is one round trip. pgbench's mean time per statement is from "
            "control 4 (its whole run, warm-up included, under its full load).",
        ]
        for scenario, statements in report.captured.items():
            latencies = report.statement_latencies.get(scenario, [])
            commands = [(cmd, ms) for cmd, ms in latencies if not cmd.startswith("\\")]
            lines += [
                "",
                f"**{scenario}**: {len(statements)} round trips",
                "",
                "| # | statement | pgbench mean ms |",
                "|---:|---|---:|",
            ]
            for i, statement in enumerate(statements):
                text = " ".join(statement["sql"].split())
                text = text if len(text) <= 110 else text[:107] + "..."
                ms = _num(commands[i][1], 3) if i < len(commands) else "-"
                lines.append(f"| {i + 1} | `{text}` | {ms} |")
    lines.append("")
    return "\n".join(lines)


def growth_chart(report: Report, path: Path) -> bool:
    """The p50 latency of each growth scenario against table size; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = [point.tasks for point in report.growth]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    markers = "os^vD*"
    scenarios = list(dict.fromkeys(name for point in report.growth for name in point.measured))
    for scenario, marker in zip(scenarios, markers * len(scenarios), strict=False):
        values = [_p50(point, scenario) for point in report.growth]
        shown = [value if value is not None else float("nan") for value in values]
        axes.plot(sizes, shown, marker=marker, label=f"{scenario} p50")
    axes.set_xscale("log")
    axes.set_xticks(sizes, [f"{size:,}" for size in sizes])
    axes.set_ylim(bottom=0)
    axes.set_xlabel("tasks in the table")
    axes.set_ylabel("latency, ms")
    axes.set_title(f"Latency against table size ({report.meta['growth_connections']} connection(s))")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def write(report: Report, directory: Path, stamp: str) -> list[Path]:
    """<stamp>.md, .json (and -growth.png), copied to latest.*; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    chart = None
    if report.growth and growth_chart(report, directory / f"{stamp}-growth.png"):
        chart = f"{stamp}-growth.png"
        shutil.copyfile(directory / chart, directory / "latest-growth.png")
        written.append(directory / chart)
    (directory / f"{stamp}.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (directory / f"{stamp}.md").write_text(to_markdown(report, chart))
    (directory / "latest.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (directory / "latest.md").write_text(to_markdown(report, "latest-growth.png" if chart else None))
    written += [directory / f"{stamp}.md", directory / f"{stamp}.json"]
    return written
