"""`todo-api audit`: the row-level security a live database has, and what is wrong with it.

A report covers the tables of the public schema (where the app's tables live, as
app/policies.py reads them): their RLS flags, policies and the runtime role's grants;
the runtime role's attributes; and any drift from sql/policies/. Every problem has a
short code for scripts and a sentence for people.
"""

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from app.config import OWNER_ROLE, RUNTIME_ROLE
from app.database import ROLE_FACTS, Problem, libpq_url, unsafe_role_problems
from app.policies import drift, existence_leaks, live_state, not_distributable, policy_files

# ROLE_FACTS is written for SQLAlchemy (the start-up check runs it on asyncpg); compiled
# for psycopg it takes %(role)s, with the % in its format() strings escaped.
# SQLAlchemy leaves the dialect's __init__ unannotated.
_ROLE_FACTS = str(ROLE_FACTS.compile(dialect=psycopg_dialect.dialect()))  # type: ignore[no-untyped-call]

# Tables holding user data: any with a user_id column, in the schema live_state reads.
_USER_TABLES = """
select c.relname from pg_class c
join pg_attribute a on a.attrelid = c.oid
where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')
  and a.attname = 'user_id' and not a.attisdropped
"""

# The drift check briefly takes each table's exclusive lock (app.policies.declared_state);
# on a busy database, give up soon rather than queue every query behind it.
LOCK_TIMEOUT = "2s"


@dataclass
class Report:
    database: dict[str, Any] | None = None
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    runtime_role: dict[str, Any] | None = None
    # None: not checked (see the drift_unchecked problem); {}: no drift.
    drift: dict[str, dict[str, dict[str, Any]]] | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "database": self.database,
            "tables": self.tables,
            "runtime_role": self.runtime_role,
            "drift": {"checked": self.drift is not None, "tables": self.drift or {}},
            "problems": [asdict(problem) for problem in self.problems],
        }


def connect(url: str) -> psycopg.Connection:
    """A connection for auditing: autocommit, so that the drift check's transaction is
    its own and reads see the current state, with a short lock timeout."""
    conn = psycopg.connect(libpq_url(url), autocommit=True)
    conn.execute(sql.SQL("set lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
    return conn


def audit_database(url: str) -> Report:
    """Audit the database at `url`; a connection failure is a problem too."""
    try:
        conn = connect(url)
    except psycopg.Error as exc:
        return Report(problems=[Problem("cannot_connect", f"cannot connect to the database: {exc}".strip())])
    with conn:
        return gather(conn)


def gather(conn: psycopg.Connection) -> Report:
    """Read everything the report shows and list the problems found."""
    name, user, version = conn.execute(
        "select current_database(), current_user, current_setting('server_version')"
    ).fetchone()  # type: ignore[misc]  # a select without from returns one row
    report = Report(database={"name": name, "connected_as": user, "server_version": version})

    files = policy_files()
    user_tables = {table for (table,) in conn.execute(_USER_TABLES).fetchall()}
    for table, state in live_state(conn).items():
        report.tables[table] = {
            "holds_user_data": table in user_tables,
            "policy_file": files.get(table),
            **state,
        }
        if table in user_tables:
            report.problems += _user_table_problems(table, state, table in files)

    report.problems += [
        Problem("existence_leak", f"{leak}: its errors can reveal other users' rows")
        for leak in existence_leaks(conn)
    ]
    report.problems += [
        Problem("not_distributable", f"{key}: the table cannot be sharded by user_id")
        for key in not_distributable(conn)
    ]

    report.runtime_role, role_problems = _runtime_role(conn)
    report.problems += role_problems

    report.drift, drift_problems = _drift(conn, user, already=report.problems)
    report.problems += drift_problems
    return report


def _user_table_problems(table: str, state: dict[str, Any], has_file: bool) -> list[Problem]:
    problems = []
    if not state["rls_enabled"]:
        problems.append(
            Problem(
                "rls_disabled",
                f"{table} holds user data (it has a user_id column) but row-level security is "
                "disabled on it: a role with a grant on it reads every user's rows",
                table,
            )
        )
    if not state["rls_forced"]:
        problems.append(
            Problem(
                "rls_not_forced",
                f"row-level security on {table} is not forced: the table's owner is not held by it",
                table,
            )
        )
    if not state["policies"]:
        problems.append(
            Problem(
                "no_policies",
                f"{table} holds user data but has no row-level security policies",
                table,
            )
        )
    if not has_file:
        problems.append(
            Problem(
                "no_policy_file",
                f"{table} holds user data but sql/policies/ has no {table}.sql stating its rules",
                table,
            )
        )
    return problems


def _runtime_role(conn: psycopg.Connection) -> tuple[dict[str, Any] | None, list[Problem]]:
    """RUNTIME_ROLE's attributes: what the service refuses to start with
    (database.unsafe_role_problems), and what sql/roles.sql says it must not have."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        facts = cur.execute(_ROLE_FACTS, {"role": RUNTIME_ROLE}).fetchone()
    if facts is None:
        return None, [
            Problem(
                "runtime_role_missing",
                f"the runtime role {RUNTIME_ROLE!r} does not exist; create it with sql/roles.sql",
                RUNTIME_ROLE,
            )
        ]
    problems = unsafe_role_problems(facts)
    # Neither lets the role read other users' rows today, but each is a way to gain a
    # role that can (CREATEROLE) or a place to own objects (CREATEDB).
    for attribute in ("createrole", "createdb"):
        if facts[attribute]:
            problems.append(
                Problem(
                    f"runtime_role_{attribute}",
                    f"the runtime role {RUNTIME_ROLE!r} has {attribute.upper()}; sql/roles.sql creates "
                    f"it NO{attribute.upper()}",
                    RUNTIME_ROLE,
                )
            )
    if facts["memberships"]:
        problems.append(
            Problem(
                "runtime_role_member_of_roles",
                f"the runtime role {RUNTIME_ROLE!r} is a member of {', '.join(facts['memberships'])}, "
                "and gets what they may do; it should be a member of no role",
                RUNTIME_ROLE,
            )
        )
    if facts["owned_objects"]:
        problems.append(
            Problem(
                "runtime_role_owns_objects",
                f"the runtime role {RUNTIME_ROLE!r} owns {', '.join(facts['owned_objects'])}; "
                "it should own nothing",
                RUNTIME_ROLE,
            )
        )
    return facts, problems


def _drift(
    conn: psycopg.Connection, user: str, already: list[Problem]
) -> tuple[dict[str, dict[str, dict[str, Any]]] | None, list[Problem]]:
    """Differences between the live state and sql/policies/, as problems. A flag already
    reported on a table of user data (rls_disabled, rls_not_forced) is not repeated."""
    try:
        found = drift(conn)
    except psycopg.Error as exc:
        reason = exc.diag.message_primary or str(exc)
        return None, [
            Problem(
                "drift_unchecked",
                f"could not compare the live policies with sql/policies/ as {user!r} ({reason}); "
                "the check applies the files in a rolled-back transaction, which needs a role that "
                f"owns every table in public ({OWNER_ROLE}) or a superuser",
            )
        ]
    reported = {(problem.subject, problem.code) for problem in already}
    problems = []
    for table, aspects in found.items():
        for aspect, (live, declared) in sorted(aspects.items()):
            if aspect == "policies":
                problems += _policy_problems(table, live or [], declared or [])
            elif aspect in ("runtime_grants", "runtime_column_grants"):
                # What it may do on the table, or on which of its columns ("UPDATE (title)").
                problems.append(
                    Problem(
                        "grants_drift",
                        f"{RUNTIME_ROLE} may {_listed(live)} on {table}; sql/policies/ grants "
                        f"{_listed(declared)}",
                        table,
                    )
                )
            elif aspect in _FLAG_PROBLEM:
                if (table, _FLAG_PROBLEM[aspect]) not in reported:
                    problems.append(
                        Problem(
                            "rls_drift",
                            f"{aspect} is {live} on {table}; sql/policies/ makes it {declared}",
                            table,
                        )
                    )
            else:
                problems.append(
                    Problem("drift", f"{aspect} on {table}: {live!r}; sql/policies/ has {declared!r}", table)
                )
    as_json = {
        table: {aspect: {"live": live, "declared": declared} for aspect, (live, declared) in aspects.items()}
        for table, aspects in found.items()
    }
    return as_json, problems


_FLAG_PROBLEM = {"rls_enabled": "rls_disabled", "rls_forced": "rls_not_forced"}


def _policy_problems(table: str, live: list[dict[str, Any]], declared: list[dict[str, Any]]) -> list[Problem]:
    have = {policy["name"]: policy for policy in live}
    want = {policy["name"]: policy for policy in declared}
    problems = []
    for name in sorted(set(want) - set(have)):
        problems.append(
            Problem(
                "policy_missing",
                f"policy {name} on {table} is in sql/policies/ but not in the database",
                table,
            )
        )
    for name in sorted(set(have) - set(want)):
        problems.append(
            Problem(
                "policy_unexpected",
                f"policy {name} on {table} is in the database but not in sql/policies/",
                table,
            )
        )
    for name in sorted(set(have) & set(want)):
        changes = [
            f"{key} is {have[name][key]!r} where sql/policies/ says {want[name][key]!r}"
            for key in sorted(set(have[name]) | set(want[name]))
            if have[name].get(key) != want[name].get(key)
        ]
        if changes:
            problems.append(
                Problem(
                    "policy_changed",
                    f"policy {name} on {table} was changed in the database: {'; '.join(changes)}",
                    table,
                )
            )
    return problems


def _listed(values: list[str] | None) -> str:
    return ", ".join(values) if values else "nothing"


def print_report(report: Report, console: Console) -> None:
    """The report for people: a table per database table, the runtime role, then problems."""
    if report.database is not None:
        db = report.database
        console.print(
            f"Database [bold]{escape(db['name'])}[/bold] as {escape(db['connected_as'])} "
            f"(PostgreSQL {escape(db['server_version'])})"
        )
    for name, state in report.tables.items():
        flags = ", ".join(
            f"RLS {word}" if on else f"[red]RLS not {word}[/red]"
            for word, on in (("enabled", state["rls_enabled"]), ("forced", state["rls_forced"]))
        )
        table = Table(
            title=f"[bold]{escape(name)}[/bold]{' (user data)' if state['holds_user_data'] else ''}: {flags}",
            title_justify="left",
            caption=f"{RUNTIME_ROLE} may: {escape(_listed(state['runtime_grants']))}",
            caption_justify="left",
        )
        for column in ("policy", "command", "roles", "using", "with check"):
            table.add_column(column, overflow="fold")
        for policy in state["policies"]:
            table.add_row(
                *(
                    escape(value or "")
                    for value in (
                        policy["name"] + ("" if policy["permissive"] else " (restrictive)"),
                        policy["command"],
                        ", ".join(policy["roles"]),
                        policy["using"],
                        policy["with_check"],
                    )
                )
            )
        console.print(table)
    if report.runtime_role is not None:
        role = report.runtime_role
        table = Table(title=f"runtime role [bold]{escape(role['name'])}[/bold]", title_justify="left")
        table.add_column("attribute")
        table.add_column("value", overflow="fold")
        for attribute in ("superuser", "bypassrls", "createrole", "createdb", "temporary"):
            table.add_row(attribute, "[red]yes[/red]" if role[attribute] else "no")
        for label, key in (
            ("session defaults (ALTER ROLE)", "settings"),
            ("member of", "memberships"),
            ("owns", "owned_objects"),
            ("owns user data (also via roles)", "owned_user_tables"),
        ):
            table.add_row(label, escape(", ".join(role[key])) or "nothing")
        console.print(table)
    if report.drift == {}:
        console.print("Policies, RLS flags and grants match sql/policies/.")
    for problem in report.problems:
        console.print(f"[red]{escape(problem.code)}[/red]: {escape(problem.message)}")
    if report.ok:
        console.print("[green]no problems[/green]")
    else:
        console.print(f"[red]{len(report.problems)} problem(s)[/red]")
