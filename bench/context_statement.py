"""`python -m bench.context_statement`: what a distributed PostgreSQL (Citus) would cost
the request before any network is involved (issue 14, docs/scale-out.md).

Two changes Citus asks of the database, measured on one node against what ships:

- **the context statement**: Citus forwards a transaction's SET LOCAL to its workers but
  not a set_config() call, so the signed context would be set by app.set_context()
  (sql/citus/set_context.sql: one EXECUTE of SET LOCAL per setting) instead of one
  select of set_config() calls (app/session.py's SET_CONTEXT). Both with five settings:
  the user, the expiry, the signature, the key id and lock_timeout.
- **the policies**: Citus refuses a policy with a subquery on a distributed table, so
  `user_id = (select app.current_user_id())` becomes `user_id = app.current_user_id()`:
  no InitPlan evaluated once per statement, a call wherever the qual is evaluated.

Measured three ways, on a seeded embedded PostgreSQL of its own:

1. **per call, in the server**: each context statement run 100,000 times in a PL/pgSQL
   loop in one transaction, less the empty loop: the backend's CPU time (as the
   operating system counts it) per call, no round trip. And app.current_user_id()
   itself the same way, as shipped and without its SET search_path.
2. **calls of app.current_user_id() per list**: the list request's statement run once
   as the runtime role with each form of the policies, counted by PostgreSQL
   (pg_stat_get_xact_function_calls, with track_functions = all).
3. **replayed under load**: pgbench, prepared statements with bound parameters as
   asyncpg sends them, replaying `begin`, the context, the list request's statement
   (`GET /api/{user}/tasks?limit=50`) and `commit`, with each combination of context
   statement and policies, and as the BYPASSRLS role (row-level security out of the
   way: the cost of isolation in the database). Rounds interleave the configurations;
   medians are reported with every round's figure. PostgreSQL's CPU per transaction is
   that of the postmaster and all its processes over the transactions pgbench
   completed.

The results go to bench/results/<UTC time>-context.md and .json (bench/README.md,
"The context statement for Citus").
"""

import json
import platform
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Annotated, Any

import psutil
import psycopg
import typer
from psycopg import sql
from rich.console import Console

from app.paths import read_sql
from app.policies import policy_files
from app.service.tasks import OWNER_FILTER, SortField, SortOrder, StatusFilter, _list_sql
from app.session import sign_context
from bench import database, pgbench
from bench.capture import EXPIRES, SIGNATURE, USER, Param, Statement
from bench.database import BenchDatabase, user_id
from bench.run import chosen_names
from bench.service import tree_cpu_seconds

RESULTS = Path(__file__).resolve().parent / "results"
console = Console(stderr=True, soft_wrap=True)

# The five settings, as the service will bind them (the key id is the lead's next
# setting, issue 14's key rotation: a constant here).
KEY_ID = "bench"
LOCK_TIMEOUT = "2000ms"
SET_CONFIG = (
    "select set_config('app.user_id', $1, true), set_config('app.user_expires', $2, true),"
    " set_config('app.user_sig', $3, true), set_config('app.user_kid', $4, true),"
    " set_config('lock_timeout', $5, true)"
)
SET_CONTEXT = "select app.set_context($1, $2, $3, $4, $5)"
CONTEXT_STATEMENTS = {"set_config": SET_CONFIG, "set_context": SET_CONTEXT}
# The list request's statement, the newest 50 of the user's tasks and their count, as
# app/service/tasks.py composes it for `GET /api/{user}/tasks?limit=50`.
LIST_SQL = _list_sql(OWNER_FILTER, StatusFilter.all, SortField.created, SortOrder.desc, (), False)
LIST_PARAMS = ("50", "0")

# The same context statements inside a PL/pgSQL loop (measurement 1), their values as
# literals; {calls} and the values are filled in by _loop_sql. Besides the two above: the
# five SET LOCALs as one EXECUTE of five statements (what sql/citus/set_context.sql
# avoids, as Citus would forward the whole string once per SET in it), inline.
_LOOP_BODIES = {
    "empty loop": "perform i",
    "set_config": (
        "perform pg_catalog.set_config('app.user_id', {user}, true),"
        " pg_catalog.set_config('app.user_expires', {expires}, true),"
        " pg_catalog.set_config('app.user_sig', {sig}, true),"
        " pg_catalog.set_config('app.user_kid', {kid}, true),"
        " pg_catalog.set_config('lock_timeout', {lock_timeout}, true)"
    ),
    "set_context": "perform app.set_context({user}, {expires}, {sig}, {kid}, {lock_timeout})",
    "one EXECUTE of five SET LOCALs": (
        "execute pg_catalog.format('set local app.user_id = %L; set local app.user_expires = %L;"
        " set local app.user_sig = %L; set local app.user_kid = %L; set local lock_timeout = %L',"
        " {user}, {expires}, {sig}, {kid}, {lock_timeout})"
    ),
}
# The operating system counts a process's CPU time in ticks (10 ms): a loop of ~1 s
# keeps that to about 1%.
LOOP_CALLS = 100_000
LOOP_REPEATS = 5
# The context statements in the loop need no valid signature: they only set it.
_NO_KEY = b"any"

# What the Citus form of a policy changes in sql/policies/: the subquery goes.
SUBQUERY_CALL = "(select app.current_user_id())"
PLAIN_CALL = "app.current_user_id()"
POLICY_FORMS = ("subquery", "plain")
# app.current_user_id() as shipped, or without its SET search_path (the same body): a
# call that changes search_path costs about twice one that does not, which matters once
# the function is called per row (bench/README.md, "The context statement for Citus").
# Without the clause the body would have to name everything with its schema (sql/citus/
# in docs/scale-out.md); for its cost, removing the clause is enough.
FUNCTION_FORMS = {
    # sql/functions.sql applied again (it is safe to run again): as the migrations leave it.
    "shipped": "functions.sql",
    "no search_path": "alter function app.current_user_id() reset search_path",
}


def apply_function_form(conn: psycopg.Connection, form: str) -> None:
    statement = FUNCTION_FORMS[form]
    conn.execute(read_sql(statement) if statement.endswith(".sql") else statement)


@dataclass(frozen=True)
class Configuration:
    context: str  # a key of CONTEXT_STATEMENTS
    policies: str = "subquery"  # of POLICY_FORMS
    function: str = "shipped"  # a key of FUNCTION_FORMS
    role: str = "runtime"  # or "bypass": BYPASSRLS, row-level security out of the way


# The replays (measurement 3), by the name --configurations takes, with their labels.
CONFIGURATIONS = {
    "shipped": Configuration("set_config"),
    "set_context": Configuration("set_context"),
    "plain": Configuration("set_config", "plain"),
    "citus": Configuration("set_context", "plain"),
    "citus-no-search-path": Configuration("set_context", "plain", "no search_path"),
    "no-search-path": Configuration("set_config", function="no search_path"),
    "bypass": Configuration("set_config", role="bypass"),
}
LABELS = {
    "shipped": "as shipped (set_config, subquery policies)",
    "set_context": "set_context, subquery policies",
    "plain": "set_config, plain policies",
    "citus": "Citus form (set_context, plain policies)",
    "citus-no-search-path": "Citus form, function without SET search_path",
    "no-search-path": "as shipped, function without SET search_path",
    "bypass": "RLS bypassed (set_config, the BYPASSRLS role)",
}


@dataclass
class Options:
    users: int = 1_000
    tasks_per_user: int = 100
    duration: int = 10
    rounds: int = 3
    clients: int = 4
    loop_calls: int = LOOP_CALLS
    loop_repeats: int = LOOP_REPEATS
    configurations: tuple[str, ...] = tuple(CONFIGURATIONS)


QUICK = Options(users=100, duration=2, rounds=1, loop_calls=10_000, loop_repeats=2)


@dataclass
class Replay:
    rounds_tps: list[float] = field(default_factory=list)
    rounds_database_cpu_us: list[float] = field(default_factory=list)
    rounds_statement_ms: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        statements = {
            name: median(r[name] for r in self.rounds_statement_ms) for name in self.rounds_statement_ms[0]
        }
        return {
            "tps": median(self.rounds_tps),
            "rounds_tps": self.rounds_tps,
            "database_cpu_us_per_transaction": median(self.rounds_database_cpu_us),
            "rounds_database_cpu_us": self.rounds_database_cpu_us,
            "statement_ms": statements,
        }


def policy_sql(form: str) -> list[str]:
    """sql/policies/ as shipped ("subquery") or in the form Citus accepts ("plain"):
    every `(select app.current_user_id())` a plain call."""
    texts = [read_sql(path) for path in policy_files().values()]
    return texts if form == "subquery" else [text.replace(SUBQUERY_CALL, PLAIN_CALL) for text in texts]


def apply_policies(owner_url: str, form: str, function: str = "shipped") -> None:
    """sql/policies/ in `form`, and app.current_user_id() in `function` form."""
    with psycopg.connect(owner_url) as conn:
        for text in policy_sql(form):
            conn.execute(text)
        apply_function_form(conn, function)


def install_set_context(owner_url: str) -> None:
    with psycopg.connect(owner_url) as conn:
        conn.execute(read_sql("citus/set_context.sql"))


def _context_values(key: bytes, n: int) -> tuple[str, str, str, str, str]:
    expires = int(time.time()) + 3600
    return user_id(n), str(expires), sign_context(key, user_id(n), expires), KEY_ID, LOCK_TIMEOUT


def _loop_sql(body: str, calls: int, values: tuple[str, ...]) -> str:
    names = ("user", "expires", "sig", "kid", "lock_timeout")
    literals = {name: "'" + value.replace("'", "''") + "'" for name, value in zip(names, values, strict=True)}
    return f"do $loop$ begin for i in 1..{calls} loop {body.format(**literals)}; end loop; end $loop$"


def _loop_cpu_us(conn: psycopg.Connection, setup: Callable[[], None], body: str, calls: int) -> float:
    """The CPU time (µs) the connection's backend spends on `calls` runs of `body` in a
    PL/pgSQL loop, in a transaction block of its own (rolled back) after `setup`. CPU
    time, read from the operating system, rather than the time it took: on a machine
    that other work shares, the second would count their turns too."""
    backend = psutil.Process(int(conn.execute("select pg_backend_pid()").fetchone()[0]))  # type: ignore[index]
    setup()
    values = _context_values(_NO_KEY, 1)
    before = backend.cpu_times()
    conn.execute(_loop_sql(body, calls, values))
    after = backend.cpu_times()
    conn.rollback()
    return float(after.user + after.system - before.user - before.system) * 1e6


def _per_call(
    conn: psycopg.Connection, setups: dict[str, tuple[Callable[[], None], str]], calls: int, repeats: int
) -> dict[str, float]:
    """µs per call of each (setup, loop body), less the empty loop's; the median of
    `repeats`, the bodies interleaved."""
    taken: dict[str, list[float]] = {name: [] for name in ("empty loop", *setups)}
    for _ in range(repeats):
        for name in taken:
            setup, body = setups.get(name, (lambda: None, _LOOP_BODIES["empty loop"]))
            taken[name].append(_loop_cpu_us(conn, setup, body, calls))
    empty = median(taken.pop("empty loop"))
    return {name: round((median(us) - empty) / calls, 2) for name, us in taken.items()}


def per_call_us(owner_url: str, calls: int, repeats: int) -> dict[str, float]:
    """Measurement 1: each context statement's CPU in the backend, in microseconds per
    call. In a transaction block, as the service runs it: outside one, SET LOCAL only
    warns."""
    with psycopg.connect(owner_url) as conn:
        return _per_call(
            conn,
            {name: (lambda: None, body) for name, body in _LOOP_BODIES.items() if name != "empty loop"},
            calls,
            repeats,
        )


def function_call_us(owner_url: str, key: bytes, calls: int, repeats: int) -> dict[str, float]:
    """app.current_user_id()'s CPU per call in each of FUNCTION_FORMS, in microseconds,
    with a context that verifies."""
    values = _context_values(key, 1)
    body = "if app.current_user_id() is null then raise 'no user'; end if"
    try:
        with psycopg.connect(owner_url) as conn:

            def setup(form: str) -> Callable[[], None]:
                def run() -> None:
                    apply_function_form(conn, form)
                    conn.execute(
                        "select set_config('app.user_id', %s, true),"
                        " set_config('app.user_expires', %s, true), set_config('app.user_sig', %s, true)",
                        values[:3],
                    )

                return run

            return _per_call(conn, {form: (setup(form), body) for form in FUNCTION_FORMS}, calls, repeats)
    finally:
        apply_policies(owner_url, "subquery")


def calls_per_list(admin_url: str, key: bytes) -> int:
    """Measurement 2: how many times the list request's statement calls
    app.current_user_id() with the policies as they are (the caller applies a form)."""
    values = _context_values(key, 1)
    calls = "select pg_catalog.pg_stat_get_xact_function_calls('app.current_user_id()'::regprocedure)"
    with psycopg.connect(admin_url) as conn:
        # track_functions is the superuser's to set; set role then runs the list as the
        # runtime role, its row-level security in force.
        conn.execute("set track_functions = 'all'")
        conn.execute("set role todo_app")
        conn.execute(f"prepare bench_list as {LIST_SQL}")
        conn.execute(
            "select set_config('app.user_id', %s, true), set_config('app.user_expires', %s, true),"
            " set_config('app.user_sig', %s, true)",
            values[:3],
        )
        before = conn.execute(calls).fetchone()
        # EXECUTE, a utility statement, takes no bind parameters: literals.
        arguments = [sql.Literal(value) for value in (values[0], *LIST_PARAMS)]
        row = conn.execute(sql.SQL("execute bench_list({}, {}, {})").format(*arguments)).fetchone()
        after = conn.execute(calls).fetchone()
        conn.rollback()
    if row is None or not row[1]:
        raise RuntimeError("the list found no task: the context did not verify")
    # NULL until the transaction's first call.
    return int((after or (0,))[0] or 0) - int((before or (0,))[0] or 0)


def _statements(context: str) -> list[Statement]:
    """One request as pgbench replays it: begin, the context, the list, commit."""
    context_params = (
        Param(USER, None),
        Param(EXPIRES, None),
        Param(SIGNATURE, None),
        Param(None, KEY_ID),
        Param(None, LOCK_TIMEOUT),
    )
    list_params = (Param(USER, None), *(Param(None, value) for value in LIST_PARAMS))
    return [
        Statement("begin"),
        Statement(CONTEXT_STATEMENTS[context], context_params),
        Statement(LIST_SQL, list_params),
        Statement("commit"),
    ]


def replay_once(
    db: BenchDatabase, workdir: Path, options: Options, key: bytes, name: str
) -> tuple[float, float, dict[str, float]]:
    """Measurement 3, one configuration once: transactions per second, PostgreSQL's CPU
    per transaction in microseconds, and each statement's mean latency (ms) by kind."""
    configuration = CONFIGURATIONS[name]
    context = configuration.context
    scenario = "list"
    scripts = pgbench.write_scripts(
        workdir / "pgbench" / context,
        {scenario: _statements(context)},
        scenario,
        options.users,
        options.tasks_per_user,
        key,
        int(time.time()) + 3600,
    )
    cpu_before = tree_cpu_seconds(db.pid) if db.pid else None
    measured, latencies = pgbench.run_pgbench(
        db.runtime_url if configuration.role == "runtime" else db.bypass_url,
        scripts,
        scenario,
        seconds=options.duration,
        # Counted from the start, so that PostgreSQL's CPU and the transactions cover the
        # same time; the five custom plans before a generic one are a few ms of it.
        warmup=0,
        clients=options.clients,
        threads=1,
        log_dir=workdir / "pgbench" / "log",
    )
    cpu_after = tree_cpu_seconds(db.pid) if db.pid else None
    if measured.errors or not measured.requests:
        raise RuntimeError(f"{name}: {measured.errors} failed transactions of {measured.requests}")
    cpu_us = (
        (cpu_after - cpu_before) / measured.requests * 1e6
        if cpu_before is not None and cpu_after is not None
        else float("nan")
    )
    return measured.rps, cpu_us, {kind: round(ms, 4) for kind, ms in _by_kind(latencies)}


def _by_kind(latencies: list[tuple[str, float]]) -> Iterator[tuple[str, float]]:
    """pgbench's mean latency per command, named by what the command is (its \\set lines
    left out)."""
    for command, ms in latencies:
        text = command.lower()
        if text.startswith("\\"):
            continue
        if text.startswith(("begin", "commit")):
            yield text.rstrip(";"), ms
        elif "set_config" in text or "app.set_context" in text:
            yield "context", ms
        else:
            yield "list", ms


def measure(
    db: BenchDatabase, workdir: Path, options: Options, key: bytes, log: Callable[[str], None]
) -> dict[str, Any]:
    """All three measurements on a migrated, seeded database; the shipped policies are
    in place again at the end."""
    install_set_context(db.owner_url)
    log("per call, in the server ...")
    loop = per_call_us(db.owner_url, options.loop_calls, options.loop_repeats)
    function_us = function_call_us(db.owner_url, key, options.loop_calls, options.loop_repeats)
    calls: dict[str, int] = {}
    replays = {name: Replay() for name in options.configurations}
    # The configurations that need the same policies and function, one after the other.
    groups: dict[tuple[str, str], list[str]] = {}
    for name in options.configurations:
        configuration = CONFIGURATIONS[name]
        groups.setdefault((configuration.policies, configuration.function), []).append(name)
    try:
        for form in POLICY_FORMS:
            apply_policies(db.owner_url, form)
            calls[form] = calls_per_list(db.admin_url, key)
        for round_number in range(1, options.rounds + 1):
            for (policies, function), names in groups.items():
                apply_policies(db.owner_url, policies, function)
                for name in names:
                    tps, cpu_us, statements = replay_once(db, workdir, options, key, name)
                    replays[name].rounds_tps.append(round(tps, 1))
                    replays[name].rounds_database_cpu_us.append(round(cpu_us, 1))
                    replays[name].rounds_statement_ms.append(statements)
                    log(
                        f"  round {round_number} {LABELS[name]:<47} {tps:>8,.0f} tx/s,"
                        f" PostgreSQL {cpu_us:>6,.0f} µs per tx"
                    )
    finally:
        apply_policies(db.owner_url, "subquery")
    return {
        "per_call_us": loop,
        "current_user_id_per_call_us": function_us,
        "current_user_id_calls_per_list": calls,
        "replays": {name: replay.summary() for name, replay in replays.items()},
    }


def to_markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    per_call = result["per_call_us"]
    function = result["current_user_id_per_call_us"]
    calls = result["current_user_id_calls_per_list"]
    replays = result["replays"]
    lines = [
        "# The context statement and the policies in the form Citus accepts",
        "",
        f"{meta['tasks']:,} tasks of {meta['users']:,} users, {meta['clients']} pgbench clients,"
        f" {meta['duration']} s per replay, {meta['rounds']} round(s); PostgreSQL {meta['postgresql']},"
        f" {meta['machine']}. `python -m bench.context_statement` (bench/README.md).",
        "",
        "## 1. The context statement, per call in the server",
        "",
        f"{meta['loop_calls']:,} calls in a PL/pgSQL loop in one transaction, the backend's CPU time, median"
        f" of {meta['loop_repeats']}, the empty loop"
        " subtracted.",
        "",
        "| statement | µs per call |",
        "|---|---:|",
        *(f"| {name} | {us:.2f} |" for name, us in per_call.items()),
        "",
        "And app.current_user_id() itself, its context set and verifying, the same way:",
        "",
        "| app.current_user_id() | µs per call |",
        "|---|---:|",
        *(f"| {name} | {us:.2f} |" for name, us in function.items()),
        "",
        "## 2. app.current_user_id() calls per list statement",
        "",
        "| policies | calls |",
        "|---|---:|",
        f"| `user_id = (select app.current_user_id())` (as shipped) | {calls['subquery']} |",
        f"| `user_id = app.current_user_id()` (the form Citus accepts) | {calls['plain']} |",
        "",
        "## 3. The list request's transaction replayed (begin, context, list, commit)",
        "",
        "| configuration | tx/s (rounds) | PostgreSQL µs per tx (rounds) | context ms | list ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, summary in replays.items():
        statements = summary["statement_ms"]
        rounds_tps = ", ".join(f"{tps:,.0f}" for tps in summary["rounds_tps"])
        rounds_cpu = ", ".join(f"{cpu:,.0f}" for cpu in summary["rounds_database_cpu_us"])
        lines.append(
            f"| {LABELS[name]} (`{name}`) | {summary['tps']:,.0f} ({rounds_tps}) |"
            f" {summary['database_cpu_us_per_transaction']:,.0f} ({rounds_cpu}) |"
            f" {statements.get('context', float('nan')):.3f} | {statements.get('list', float('nan')):.3f} |"
        )
    return "\n".join(lines) + "\n"


def run(options: Options, output: Path) -> list[Path]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    context_key = secrets.token_urlsafe(48)
    with tempfile.TemporaryDirectory(prefix="todo-bench-context-") as tmp:
        workdir = Path(tmp)
        console.print(f"Seeding {options.users * options.tasks_per_user:,} tasks in {workdir} ...")
        with database.seeded_database(workdir, context_key, options.users, options.tasks_per_user) as db:
            with psycopg.connect(db.admin_url) as conn:
                version_row = conn.execute("show server_version").fetchone()
            result = measure(db, workdir, options, context_key.encode(), console.print)
    meta = {
        **asdict(options),
        "tasks": options.users * options.tasks_per_user,
        "postgresql": version_row[0] if version_row else "?",
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    output.mkdir(parents=True, exist_ok=True)
    markdown = output / f"{stamp}-context.md"
    data = output / f"{stamp}-context.json"
    markdown.write_text(to_markdown(result, meta))
    data.write_text(json.dumps({"meta": meta, **result}, indent=2) + "\n")
    console.print(markdown.read_text())
    return [markdown, data]


cli = typer.Typer(add_completion=False, help=__doc__)


@cli.command()
def main(
    users: Annotated[int | None, typer.Option(min=1, help="Users to seed [default: 1000]")] = None,
    duration: Annotated[int | None, typer.Option(min=1, help="Seconds per replay [default: 10]")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Rounds of the replays [default: 3]")] = None,
    clients: Annotated[int | None, typer.Option(min=1, help="pgbench clients [default: 4]")] = None,
    configurations: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated, of {','.join(CONFIGURATIONS)} [default: all]"),
    ] = None,
    quick: Annotated[bool, typer.Option(help="A smoke run: 100 users, 2 s per replay, 1 round")] = False,
    output: Annotated[Path, typer.Option(help="Where the results go")] = RESULTS,
) -> None:
    """Measure the context statement and the policies in the form Citus accepts."""
    base = QUICK if quick else Options()
    chosen = {"users": users, "duration": duration, "rounds": rounds, "clients": clients}
    options = Options(**(vars(base) | {k: v for k, v in chosen.items() if v is not None}))
    if configurations is not None:
        options.configurations = chosen_names(configurations, CONFIGURATIONS, "configurations")
    run(options, output)


if __name__ == "__main__":
    cli(prog_name="python -m bench.context_statement")
