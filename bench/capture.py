"""What the service sends PostgreSQL for one request of each kind, read from PostgreSQL's
own statement log rather than retyped: pgbench (control 4) and the plans replay it.

The app runs in-process (the same create_app, engine and pool as under uvicorn) while
the runtime role's connections to the benchmark database log every statement; a marker
statement from another connection frames each request.
"""

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from app.auth import TokenVerifier
from app.config import RUNTIME_ROLE, Settings
from app.main import create_app
from app.session import sign_context
from bench.database import BenchDatabase, filter_tag, search_term, task_id, user_id
from bench.load import REQUESTS, request_path
from bench.report import Plan, Scan

CAPTURED = ("list", "get", "create", "toggle", "search", "tag", "due")
# A parameter's part in a statement, as pgbench and EXPLAIN rebind it: the user's id, the
# task's, the context's expiry and signature, the user's search term and (folded) tag.
USER, TASK, EXPIRES, SIGNATURE, SEARCH, TAG = "user", "task", "expires", "signature", "search", "tag"

_ENTRY = re.compile(r"^\S+ \S+ \S+ \[(?P<pid>\d+)\] (?P<level>[A-Z]+):  (?P<message>.*)$")
_EXECUTE = re.compile(r"^(?:statement|execute [^:]*): (?P<sql>.*)$", re.DOTALL)
_PARAMETER = re.compile(r"\$(\d+) = (NULL|'(?:[^']|'')*')")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_MARKER = "bench capture"


@dataclass(frozen=True)
class Param:
    role: str | None  # USER, TASK, EXPIRES, SIGNATURE; None: the same constant every time
    value: str | None


@dataclass(frozen=True)
class Statement:
    sql: str
    params: tuple[Param, ...] = ()

    @property
    def sets_context(self) -> bool:
        return any(param.role == SIGNATURE for param in self.params)

    @property
    def is_query(self) -> bool:
        """The request's own work: not transaction control or the context."""
        first = self.sql.strip().split(None, 1)[0].upper().rstrip(";") if self.sql.strip(" ;") else ""
        return first not in {"", "BEGIN", "COMMIT", "ROLLBACK"} and not self.sets_context

    def to_json(self) -> dict[str, object]:
        return {
            "sql": self.sql,
            "params": [{"role": p.role, "value": p.value} for p in self.params],
        }


def tag_parameter(n: int) -> str:
    """User n's tag filter as the service binds it: a text[] of folded names (ASCII
    names fold to their lower case), in PostgreSQL's text form."""
    return "{" + filter_tag(n).lower() + "}"


def _log_entries(text: str) -> list[tuple[int, str, str]]:
    """(pid, level, message) per log entry; continuation lines start with a tab."""
    entries: list[tuple[int, str, str]] = []
    for line in text.splitlines():
        if line.startswith("\t") and entries:
            pid, level, message = entries[-1]
            entries[-1] = (pid, level, f"{message}\n{line[1:]}")
        elif match := _ENTRY.match(line):
            entries.append((int(match["pid"]), match["level"], match["message"]))
    return entries


def _parameters(detail: str) -> list[str | None]:
    values: dict[int, str | None] = {}
    for number, value in _PARAMETER.findall(detail):
        values[int(number)] = None if value == "NULL" else value[1:-1].replace("''", "'")
    return [values[i] for i in sorted(values)]


def _role(value: str | None, known: dict[str, str]) -> str | None:
    if value is None:
        return None
    for role, known_value in known.items():
        if value == known_value:
            return role
    if _SIGNATURE.match(value):
        return SIGNATURE
    # The context's expiry: a Unix time a little ahead (RLS_CONTEXT_TTL is at most an hour).
    if value.isdigit() and time.time() - 600 < int(value) < time.time() + 7200:
        return EXPIRES
    return None


def parse_requests(
    log_text: str, admin_pid: int, known: dict[str, dict[str, str]]
) -> dict[str, list[Statement]]:
    """The statements of each request framed by markers in the log; `known` maps each
    request's name to the parameter values that play a part (its user, its task)."""
    captured: dict[str, list[Statement]] = {}
    current: str | None = None
    raw: list[tuple[str, list[str | None]]] = []
    for pid, level, message in _log_entries(log_text):
        if pid == admin_pid:
            marker = re.search(rf"'{_MARKER} (begin|end) (\w+)'", message)
            if marker and marker[1] == "begin":
                current, raw = marker[2], []
            elif marker and current is not None:
                captured[current] = _statements(raw, known.get(current, {}))
                current = None
            continue
        if current is None:
            continue
        if level == "LOG" and (match := _EXECUTE.match(message)):
            raw.append((match["sql"].strip(), []))
        elif level == "DETAIL" and message.startswith("Parameters:") and raw:
            raw[-1][1].extend(_parameters(message))
    return captured


def _statements(raw: list[tuple[str, list[str | None]]], known: dict[str, str]) -> list[Statement]:
    return [Statement(text, tuple(Param(_role(v, known), v) for v in values)) for text, values in raw]


async def capture(
    db: BenchDatabase, settings: Settings, n: int, per_user: int, log_wait: float = 10.0
) -> dict[str, list[Statement]]:
    """One request of each kind in CAPTURED, as user n, with every statement logged."""
    if db.log_path is None:
        raise RuntimeError("the statement capture needs the database server's log file")
    verifier = TokenVerifier(settings)
    headers = {"Authorization": f"Bearer {verifier.issue(user_id(n), 600)}"}
    k = per_user  # the user's last seeded task
    known = {name: {USER: user_id(n)} for name in ("list", "create", "due")}
    known |= {name: {USER: user_id(n), TASK: str(task_id(n, k, per_user))} for name in ("get", "toggle")}
    known |= {"search": {USER: user_id(n), SEARCH: search_term(n)}}
    known |= {"tag": {USER: user_id(n), TAG: tag_parameter(n)}}
    with psycopg.connect(db.admin_url, autocommit=True) as admin:
        database = sql.Identifier(admin.info.dbname)
        role = sql.Identifier(RUNTIME_ROLE)
        admin.execute(
            sql.SQL("alter role {} in database {} set log_statement = 'all'").format(role, database)
        )
        try:
            admin.execute("set log_statement = 'all'")
            admin_pid = admin.info.backend_pid
            offset = db.log_path.stat().st_size
            # Made after the setting, so that every connection of its pool logs.
            app = create_app(settings)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client,
            ):

                async def send(name: str) -> None:
                    request = REQUESTS[name]
                    path = request_path(name, n, k, per_user)
                    content = request.body.encode() if request.body else None
                    extra = {"Content-Type": "application/json"} if content else {}
                    response = await client.request(
                        request.method, path, headers=headers | extra, content=content
                    )
                    if response.status_code >= 300:
                        raise RuntimeError(f"{name} answered {response.status_code}: {response.text}")

                # First the connection's own set-up (type introspection, statement preparation).
                for name in CAPTURED:
                    await send(name)
                for name in CAPTURED:
                    admin.execute(f"select '{_MARKER} begin {name}'")
                    await send(name)
                    admin.execute(f"select '{_MARKER} end {name}'")
        finally:
            admin.execute(sql.SQL("alter role {} in database {} reset log_statement").format(role, database))
    return _read_until_complete(db.log_path, offset, admin_pid, known, log_wait)


def _read_until_complete(
    path: Path, offset: int, admin_pid: int, known: dict[str, dict[str, str]], timeout: float
) -> dict[str, list[Statement]]:
    deadline = time.monotonic() + timeout
    while True:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        captured = parse_requests(text, admin_pid, known)
        if all(name in captured for name in CAPTURED) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    missing = [name for name in CAPTURED if not captured.get(name)]
    if missing:
        raise RuntimeError(f"no statements captured for {', '.join(missing)} in {path}")
    return captured


_EXECUTION_TIME = re.compile(r"Execution Time: ([\d.]+) ms")
# The plan nodes that read a table or an index; a Bitmap Heap Scan reads what its Bitmap
# Index Scan found, which counts them.
_SCAN_NODES = ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan", "Tid Scan")
# An equality on the index's own user_id in an Index Cond: `(user_id = $1)`, or with the
# column cast, `((user_id)::text = $1)`.
_USER_KEY = re.compile(r"\((?:user_id|\(user_id\)::[a-z ]+) = ")


def _scans(node: dict[str, Any], indexes: dict[str, tuple[str, str]]) -> list[Scan]:
    """Every scan in an EXPLAIN (ANALYZE, FORMAT JSON) plan, its subplans included;
    `indexes` gives each index's table and first column. A scan is keyed by the user
    when it reads an index led by user_id with an equality on it: a range of one user's
    entries, whatever the other users have."""
    found = []
    if node.get("Node Type") in _SCAN_NODES:
        index = node.get("Index Name")
        table, first = indexes.get(index or "", (node.get("Relation Name", "?"), None))
        condition = node.get("Index Cond")
        loops = node.get("Actual Loops", 1)
        per_loop = (
            node.get("Actual Rows", 0)
            + node.get("Rows Removed by Filter", 0)
            + node.get("Rows Removed by Index Recheck", 0)
        )
        found.append(
            Scan(
                node=node["Node Type"],
                table=node.get("Relation Name") or table,
                index=index,
                condition=condition,
                rows_read=round(per_loop * loops),
                loops=loops,
                keyed_by_user=first == "user_id" and _USER_KEY.search(condition or "") is not None,
            )
        )
    for child in node.get("Plans", []):
        found += _scans(child, indexes)
    return found


def explain(
    db: BenchDatabase, statements: list[Statement], scenario: str, context_key: bytes, n: int, per_user: int
) -> Plan:
    """The plan PostgreSQL runs the request's query with, as the runtime role with user
    n's signed context (RLS in force): prepared and executed a few times first, as the
    service's cached statements are, so that the plan is the one it settles on. With the
    plan's scans (what each read, by which index and key) and its buffers."""
    expires = int(time.time()) + 600
    values = {
        USER: user_id(n),
        TASK: str(task_id(n, per_user, per_user)),
        EXPIRES: str(expires),
        SIGNATURE: sign_context(context_key, user_id(n), expires),
        SEARCH: search_term(n),
        TAG: tag_parameter(n),
    }

    def prepared(conn: psycopg.Connection, name: str, statement: Statement) -> sql.Composed:
        conn.execute(sql.SQL("prepare {} as ").format(sql.Identifier(name)) + sql.SQL(statement.sql))
        arguments = [sql.Literal(values[p.role] if p.role else p.value) for p in statement.params]
        call = sql.SQL("execute {}").format(sql.Identifier(name))
        return call + sql.SQL("(") + sql.SQL(", ").join(arguments) + sql.SQL(")") if arguments else call

    context = next(s for s in statements if s.sets_context)
    query = next(s for s in statements if s.is_query)
    with psycopg.connect(db.runtime_url) as conn, conn.transaction(force_rollback=True):
        # Each index's table and first column.
        indexes = {
            name: (table, first)
            for name, table, first in conn.execute(
                "select i.indexrelid::regclass::text, i.indrelid::regclass::text, a.attname::text"
                " from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]"
                " where i.indrelid in ('public.tasks'::regclass, 'public.tags'::regclass,"
                " 'public.task_tags'::regclass)"
            ).fetchall()
        }
        conn.execute(prepared(conn, "bench_context", context))
        run = prepared(conn, "bench_query", query)
        for _ in range(6):  # PostgreSQL weighs a generic plan after five custom ones
            conn.execute(run)
        rows = conn.execute(sql.SQL("explain (analyze, buffers) ") + run).fetchall()
        tree = conn.execute(sql.SQL("explain (analyze, buffers, format json) ") + run).fetchone()
    text = "\n".join(row[0] for row in rows)
    execution = _EXECUTION_TIME.search(text)
    top = tree[0][0]["Plan"] if tree else {}
    return Plan(
        scenario,
        text,
        float(execution[1]) if execution else None,
        buffers=top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
        scans=_scans(top, indexes),
    )
