"""Control 5, what a user would pick instead: PostGraphile 4 serving the same tasks.

PostGraphile (npm `postgraphile@4`) turns a PostgreSQL schema into a GraphQL API, and
leaves authorization to row-level security on the claims of a JWT it verifies, which is
the service's design too. It serves a database of its own on the benchmark's server,
`todo_postgraphile`, with a copy of the seeded tasks (the same users and ids, so the
same tokens and the same task numbers work), and is driven by wrk over those tokens:

- the tables `tasks`, `tags` and `task_tags` with the service's columns, constraints and
  indexes (read from the service's database), row-level security enabled and forced,
  and one policy per table on the JWT's `sub` claim,
  `user_id = nullif(current_setting('jwt.claims.sub', true), '')` (SUB_SETTING says why
  the nullif);
- `tasks.user_id` defaults to that claim, so that a create takes its user from the
  token, as the service's does, rather than from the request;
- a computed column `tags` (`public.tasks_tags(tasks)`, PostGraphile's way to add a
  field): a task's tag names, as the service's list answers them, read from the task's
  own copy of them (`tasks.tag_names`) as the service reads them;
- three roles: `todo_pg_owner` owns the tables (row-level security is forced, so it
  sees nothing either), `todo_pg_authenticator` is PostGraphile's login (not the owner,
  no BYPASSRLS; it can only become the next), and `todo_pg_user`, the `--default-role`
  with the grants, which every request runs as (the service's tokens carry no `role`
  claim).

PostGraphile checks a token's `aud` against 'postgraphile' unless told otherwise; the
service's tokens in the benchmark have no audience (the run sets none, so the service
checks none), and PostGraphile is started with `--jwt-verify-audience ''`: both verify
the signature (HS256 only), the expiry and nothing else, on the very same tokens.
"""

import json
import os
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import database
from bench.load import CREATE_BODY, Request
from bench.service import START_TIMEOUT, RunningService, free_port, serve

PACKAGE = "postgraphile@4"
DATABASE = "todo_postgraphile"
OWNER_ROLE = "todo_pg_owner"
LOGIN_ROLE = "todo_pg_authenticator"
USER_ROLE = "todo_pg_user"
# The claim the policies compare, as PostGraphile sets it from a verified token. A
# setting that a transaction set reads as '' (not NULL) in the connection's later
# transactions: without nullif, a request with no token would be the user '', which
# owns whatever other such requests created.
SUB_SETTING = "nullif(current_setting('jwt.claims.sub', true), '')"
# The scenarios it serves: the main suite's at the run's worker count, and those the
# service and PostGraphile are compared on at every worker count of --compare-workers.
SCENARIOS = ("list", "get", "create")
COMPARED_SCENARIOS = ("list", "create")
INSTALL_TIMEOUT = 600


def cache_directory() -> Path:
    """Where the harness installs PostGraphile: kept between runs, never global."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "todo-api-bench" / "postgraphile"


# --- installing it ---------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    node: str  # the node binary
    cli: Path  # postgraphile's cli.js
    version: str  # PostGraphile's
    node_version: str


def _installed(directory: Path, node: str) -> Installed | None:
    package = directory / "node_modules" / "postgraphile"
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    if not str(version).startswith("4.") or not (package / "cli.js").is_file():
        return None
    node_version = subprocess.run(  # noqa: S603 - the node found on PATH
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    return Installed(node=node, cli=package / "cli.js", version=str(version), node_version=node_version)


def _node_and_npm(log: Callable[[str], None]) -> tuple[str | None, str | None]:
    """Node and npm from PATH; as root with apt-get, Debian's packages when missing (as
    for wrk)."""
    node, npm = shutil.which("node") or shutil.which("nodejs"), shutil.which("npm")
    if (node is None or npm is None) and os.geteuid() == 0 and shutil.which("apt-get"):
        log("node or npm is missing: apt-get install nodejs npm")
        install = ["apt-get", "install", "-y", "-qq", "nodejs", "npm"]
        if subprocess.run(install, check=False, timeout=INSTALL_TIMEOUT).returncode != 0:  # noqa: S603
            subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=INSTALL_TIMEOUT)  # noqa: S607
            subprocess.run(install, check=False, timeout=INSTALL_TIMEOUT)  # noqa: S603
        node, npm = shutil.which("node") or shutil.which("nodejs"), shutil.which("npm")
    return node, npm


def install(log: Callable[[str], None], directory: Path | None = None) -> Installed | str:
    """PostGraphile 4 in `directory` (by default the cache), installed with npm if it is
    not there yet; or why it cannot be. npm installs into a directory of its own first,
    renamed into place when complete: an interrupted install leaves nothing half-made
    that a later run would take for PostGraphile."""
    directory = directory or cache_directory()
    node, npm = _node_and_npm(log)
    if node is None:
        return "node is not installed (and the run is not root with apt-get to install it)"
    found = _installed(directory, node)
    if found is not None:
        return found
    if npm is None:
        return "npm is not installed (and the run is not root with apt-get to install it)"
    log(f"installing {PACKAGE} into {directory} (npm)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f"{directory.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    # A package.json of its own, so that npm installs here and not into a project above.
    (staging / "package.json").write_text('{"private": true}\n')
    try:
        done = subprocess.run(  # noqa: S603 - npm from PATH, a fixed package
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", PACKAGE],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        return f"npm install {PACKAGE} took more than {INSTALL_TIMEOUT} s"
    if done.returncode != 0 or _installed(staging, node) is None:
        shutil.rmtree(staging, ignore_errors=True)
        # npm's first lines say what went wrong (its code, then the message); the rest is
        # a stack and the path of its log.
        said = [line.removeprefix("npm error").strip() for line in (done.stderr or done.stdout).splitlines()]
        return f"npm install {PACKAGE} failed ({done.returncode}): {'; '.join(filter(None, said[:4]))}"
    # Another run (a parallel test) may have put its install in place meanwhile: the
    # first one stays, whichever it is, as the processes of that run may be using it.
    if _installed(directory, node) is None:
        shutil.rmtree(directory, ignore_errors=True)  # what an older, broken install left
        with suppress(OSError):
            staging.rename(directory)
    shutil.rmtree(staging, ignore_errors=True)
    return _installed(directory, node) or f"{PACKAGE} is not usable after npm installed it"


# --- its database ----------------------------------------------------------------------

# PostGraphile's schema: the service's columns (the order too), so that a row costs
# the same to read and write; the constraints and indexes are copied from the service's
# database after the rows (create_database). user_id defaults to the token's subject.
_TABLES = f"""
create table public.tags (
  user_id varchar(255) not null,
  id bigint generated always as identity,
  name varchar(50) not null,
  folded varchar(900) not null,
  created_at timestamptz not null default now()
);
create table public.tasks (
  id bigint generated always as identity,
  user_id varchar(255) not null default {SUB_SETTING},
  title varchar(200) not null,
  description varchar(1000),
  completed boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  priority public.task_priority not null default 'medium',
  due_at timestamptz,
  recurrence public.task_recurrence,
  recurrence_day smallint,
  next_task_id bigint,
  tag_names text[] not null default '{{}}',
  tag_keys text[] not null default '{{}}'
);
create table public.task_tags (
  user_id varchar(255) not null,
  task_id bigint not null,
  tag_id bigint not null
);
"""
# Copied in this order (a foreign key's table before the tables that point at it).
_COLUMNS = {
    "tags": "user_id, id, name, folded, created_at",
    "tasks": (
        "id, user_id, title, description, completed, created_at, updated_at, priority, due_at,"
        " recurrence, recurrence_day, next_task_id, tag_names, tag_keys"
    ),
    "task_tags": "user_id, task_id, tag_id",
}
# A task's tags as the service's list answers them (sorted case-insensitively): a
# computed column, `tags` in GraphQL. It reads the task's copy of its tags' names, as
# the service does (migration 0012): the same table, read the same way.
_TAGS_FUNCTION = """
create function public.tasks_tags(t public.tasks) returns text[] language sql stable as $$
  select t.tag_names
$$
"""
# What todo_pg_user may do: as the service's runtime role (sql/policies/tasks.sql), the
# tasks' columns a user may set and no others; tags are read only.
_GRANTS = """
grant usage on schema public to todo_pg_user;
grant select, delete on public.tasks to todo_pg_user;
grant insert (user_id, title, description, completed, priority, due_at, recurrence, recurrence_day)
  on public.tasks to todo_pg_user;
grant update (title, description, completed, priority, due_at, recurrence, recurrence_day, updated_at)
  on public.tasks to todo_pg_user;
grant select on public.tags, public.task_tags to todo_pg_user;
grant execute on function public.tasks_tags(public.tasks) to todo_pg_user;
"""


def admin_url(admin: str) -> str:
    """The superuser's connection to PostGraphile's database."""
    return make_conninfo(admin, dbname=DATABASE)


def node_url(admin: str, role: str, password: str) -> str:
    """A connection URL for node-postgres to PostGraphile's database as `role`, on the
    benchmark's server (a Unix socket directory as `host`, as libpq takes it)."""
    params = conninfo_to_dict(admin)
    host, port = str(params.get("host") or "localhost"), params.get("port")
    auth = f"{quote(role, safe='')}:{quote(password, safe='')}"
    if host.startswith("/"):
        query = {"host": host, **({"port": str(port)} if port else {})}
        return f"postgres://{auth}@/{DATABASE}?{urlencode(query)}"
    return f"postgres://{auth}@{host}{f':{port}' if port else ''}/{DATABASE}"


def _create_roles(conn: psycopg.Connection, password: str) -> None:
    for role, options in (
        (OWNER_ROLE, "nologin"),
        (USER_ROLE, "nologin"),
        # noinherit: it holds todo_pg_user's grants only once it has become it.
        (LOGIN_ROLE, "login noinherit nobypassrls"),
    ):
        exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
        verb = "alter" if exists else "create"
        conn.execute(sql.SQL(f"{verb} role {{}} {options}").format(sql.Identifier(role)))
    conn.execute(
        sql.SQL("alter role {} password {}").format(sql.Identifier(LOGIN_ROLE), sql.Literal(password))
    )
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(USER_ROLE), sql.Identifier(LOGIN_ROLE)))


def _copy(source: psycopg.Connection, target: psycopg.Connection, table: str) -> None:
    columns = _COLUMNS[table]
    # In the source's physical order: the users' tasks stay interleaved in the heap.
    with (
        source.cursor().copy(f"copy public.{table} ({columns}) to stdout (format binary)") as out,
        target.cursor().copy(f"copy public.{table} ({columns}) from stdin (format binary)") as into,
    ):
        for block in out:
            into.write(block)


def _definitions(source: psycopg.Connection, table: str) -> list[str]:
    """The table's constraints (primary key first, foreign keys last) and the indexes
    that no constraint makes, as statements that recreate them."""
    constraints = source.execute(
        "select format('alter table public.%%I add constraint %%I %%s', %s::text, conname,"
        " pg_get_constraintdef(oid))"
        " from pg_constraint where conrelid = ('public.' || %s)::regclass"
        " order by case contype when 'p' then 0 when 'f' then 2 else 1 end, conname",
        (table, table),
    ).fetchall()
    indexes = source.execute(
        "select pg_get_indexdef(i.indexrelid) from pg_index i"
        " where i.indrelid = ('public.' || %s)::regclass"
        " and not exists (select from pg_constraint c where c.conindid = i.indexrelid)"
        " order by 1",
        (table,),
    ).fetchall()
    return [row[0] for row in constraints + indexes]


def create_database(admin: str) -> str:
    """PostGraphile's database, made afresh from the benchmark database's seeded rows;
    the password of its login role (made for the run)."""
    password = secrets.token_urlsafe(24)
    with psycopg.connect(admin, dbname="postgres", autocommit=True) as conn:
        _create_roles(conn, password)
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
    with (
        psycopg.connect(admin, autocommit=True) as source,
        psycopg.connect(admin_url(admin), autocommit=True) as target,
    ):
        target.execute("set synchronous_commit = off")
        target.execute("set maintenance_work_mem = '512MB'")
        # The rows are the service's, consistent already: no foreign-key checks per row.
        target.execute("set session_replication_role = replica")
        for enum in ("task_priority", "task_recurrence"):
            row = source.execute(f"select enum_range(null::public.{enum})::text[]").fetchone()
            labels = sql.SQL(", ").join(map(sql.Literal, row[0] if row else []))
            target.execute(sql.SQL("create type public.{} as enum ({})").format(sql.Identifier(enum), labels))
        target.execute(_TABLES)
        for table in _COLUMNS:
            _copy(source, target, table)
        for table in _COLUMNS:
            for statement in _definitions(source, table):
                target.execute(statement)
            target.execute(
                sql.SQL("alter table public.{} owner to {}").format(
                    sql.Identifier(table), sql.Identifier(OWNER_ROLE)
                )
            )
            for verb in ("enable", "force"):
                target.execute(
                    sql.SQL(f"alter table public.{{}} {verb} row level security").format(
                        sql.Identifier(table)
                    )
                )
            target.execute(
                sql.SQL(
                    "create policy {} on public.{} to {} using (user_id = {sub}) with check (user_id = {sub})"
                ).format(
                    sql.Identifier(f"{table}_own"),
                    sql.Identifier(table),
                    sql.Identifier(USER_ROLE),
                    sub=sql.SQL(SUB_SETTING),
                )
            )
        for enum in ("task_priority", "task_recurrence"):
            target.execute(
                sql.SQL("alter type public.{} owner to {}").format(
                    sql.Identifier(enum), sql.Identifier(OWNER_ROLE)
                )
            )
        target.execute(_TAGS_FUNCTION)
        target.execute(
            sql.SQL("alter function public.tasks_tags(public.tasks) owner to {}").format(
                sql.Identifier(OWNER_ROLE)
            )
        )
        target.execute(_GRANTS)
        target.execute("reset session_replication_role")
        _settle(target)
    return password


def _settle(conn: psycopg.Connection) -> None:
    """As seeding leaves the service's tables (bench/database.py): the sequences past the
    given ids, every page flushed and all-visible (index-only scans, the count's), fresh
    statistics."""
    for table in ("tasks", "tags"):
        conn.execute(
            sql.SQL(
                "select setval(pg_get_serial_sequence({0}, 'id'), (select max(id) from public.{1}))"
            ).format(sql.Literal(f"public.{table}"), sql.Identifier(table))
        )
    conn.execute("checkpoint")
    conn.execute("vacuum analyze public.tasks, public.tags, public.task_tags")
    conn.execute("checkpoint")


def restore(admin: str, seeded_rows: int) -> None:
    """Back to the copied rows: delete the tasks that the create scenario added."""
    with psycopg.connect(admin_url(admin), autocommit=True) as conn:
        conn.execute("delete from public.tasks where id > %s", (seeded_rows,))
        conn.execute(
            "select setval(pg_get_serial_sequence('public.tasks', 'id'), (select max(id) from public.tasks))"
        )
        conn.execute("vacuum analyze public.tasks")


def drop_database(admin: str) -> None:
    with psycopg.connect(admin, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DATABASE)))


# --- the requests ----------------------------------------------------------------------

# The fields of the service's TaskPublic, in its order: what its list, get and create answer.
TASK_FIELDS = (
    "id userId title description completed priority dueAt tags recurrence nextTaskId createdAt updatedAt"
)


def _graphql(query: str, variables: dict[str, object] | None = None) -> str:
    body: dict[str, object] = {"query": " ".join(query.split())}
    if variables:
        body["variables"] = variables
    return json.dumps(body, separators=(",", ":"))


# POST /graphql bodies; {user} and {task} are filled per request, as in bench/load.py.
REQUESTS = {
    # The service's list: the 50 newest (created_at, then id, descending), and the count
    # of all the user's tasks.
    "list": Request(
        "POST",
        "/graphql",
        _graphql(
            f"{{ allTasks(first: 50, orderBy: [CREATED_AT_DESC, ID_DESC])"
            f" {{ totalCount nodes {{ {TASK_FIELDS} }} }} }}"
        ),
    ),
    # tasks' primary key is (user_id, id): PostGraphile's lookup by it.
    "get": Request(
        "POST",
        "/graphql",
        _graphql(
            "query($user: String!, $id: BigInt!)"
            f" {{ taskByUserIdAndId(userId: $user, id: $id) {{ {TASK_FIELDS} }} }}",
            {"user": "{user}", "id": "{task}"},
        ),
    ),
    # The service's create body (bench/load.py) as the new task, and the whole task back.
    "create": Request(
        "POST",
        "/graphql",
        _graphql(
            "mutation($task: TaskInput!)"
            f" {{ createTask(input: {{task: $task}}) {{ task {{ {TASK_FIELDS} }} }} }}",
            {"task": json.loads(CREATE_BODY)},
        ),
    ),
}
# A request that only needs the schema: every worker has built its own once it answers.
TYPENAME = Request("POST", "/graphql", _graphql("{ __typename }"))

# wrk's script for GraphQL: the same data file as bench/load.py's (users, tokens, the
# requests), a POST per request with {user} and {task} filled in the body. GraphQL
# answers an error with HTTP 200 and an `errors` member: those count as errors (with
# the status errors, in status_errors), so an answer that failed is not a fast success.
WRK_SCRIPT = r"""
-- Written by bench/postgraphile.py. args: the data file (users, tokens, requests), the scenario.
local data, scenario
local threads = {}
failed = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  data = dofile(args[1])
  scenario = args[2]
  math.randomseed(os.time() * 100 + thread_number)
end

function request()
  local i = math.random(#data.users)
  local kind = data.requests[scenario]
  local task = (data.numbers[i] - 1) * data.per_user + math.random(data.per_user)
  local body = kind.body:gsub("{user}", data.users[i]):gsub("{task}", string.format("%d", task))
  local headers = {Authorization = "Bearer " .. data.tokens[i], ["Content-Type"] = "application/json"}
  return wrk.format(kind.method, kind.path, headers, body)
end

function response(status, headers, body)
  if status < 400 and body and body:find('"errors":', 1, true) then failed = failed + 1 end
end

function done(summary, latency, requests)
  local e = summary.errors
  local graphql = 0
  for _, thread in ipairs(threads) do graphql = graphql + thread:get("failed") end
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status + graphql, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


# --- the server ------------------------------------------------------------------------


@dataclass
class PostGraphileService(RunningService):
    """PostGraphile's node process, and with --cluster-workers its forked workers."""

    def worker_processes(self) -> list[psutil.Process]:
        main = psutil.Process(self.process.pid)
        return [main] if self.workers == 1 else main.children()

    def served_since(self, offset: int) -> int | None:
        # No access log (--disable-query-log): the cost is shared by wrk's count.
        return None


# Its options besides the connection, the address, the secret, the pool and the
# workers: as production would run it (PostGraphile's documentation recommends the last
# four), and the JWT checked as the service checks it.
OPTIONS = (
    "--schema",
    "public",
    "--default-role",
    USER_ROLE,
    "--jwt-verify-algorithms",
    "HS256",
    # The service's tokens name no audience; PostGraphile's default is 'postgraphile'.
    "--jwt-verify-audience",
    "",
    "--disable-graphiql",
    "--disable-query-log",
    "--no-setof-functions-contain-nulls",
    "--no-ignore-rbac",
    "--dynamic-json",
)


def command(
    installed: Installed, connection: str, port: int, workers: int, jwt_secret: str, pool: int
) -> list[str]:
    """`postgraphile` with OPTIONS, `pool` connections per process, and from 2 workers a
    cluster: a master that forks them and hands them the connections in turn (at 1, one
    process serves alone, as `todo-api serve --workers 1` does)."""
    return [
        installed.node,
        str(installed.cli),
        "--connection",
        connection,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--jwt-secret",
        jwt_secret,
        "--max-pool-size",
        str(pool),
        *OPTIONS,
        *(["--cluster-workers", str(workers)] if workers >= 2 else []),
    ]


def shown_command(pool: int) -> str:
    """The command line as the report shows it (no secret, no address)."""
    return shlex.join(
        [
            "--connection",
            f"postgres://{LOGIN_ROLE}@.../{DATABASE}",
            "--jwt-secret",
            "$JWT_SECRET",
            "--max-pool-size",
            str(pool),
            *OPTIONS,
            "--cluster-workers",
            "N",
        ]
    )


def _wait_until_serving(service: RunningService) -> None:
    """Until it answers GraphQL and all its workers are running (each then builds its
    schema on its first request: the harness primes every worker before measuring)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"PostGraphile exited while starting:\n{service.output()[-3000:]}")
        try:
            answer = httpx.post(
                f"{service.base_url}{TYPENAME.path}",
                content=TYPENAME.body,
                headers={"Content-Type": "application/json"},
                timeout=5.0,
            )
            if answer.status_code == 200 and len(service.worker_processes()) == service.workers:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"PostGraphile did not start within {START_TIMEOUT:.0f} s:\n{service.output()[-3000:]}"
    )


@contextmanager
def postgraphile_service(
    installed: Installed, connection: str, workdir: Path, workers: int, jwt_secret: str, pool: int
) -> Iterator[RunningService]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DEBUG", "NODE_"))}
    # graphql-js and the libraries under it skip their development checks.
    env["NODE_ENV"] = "production"
    with serve(
        command(installed, connection, port, workers, jwt_secret, pool),
        env,
        workdir,
        workers,
        port,
        service_class=PostGraphileService,
        wait=_wait_until_serving,
    ) as service:
        yield service


def query(
    base_url: str, request: Request, token: str | None, user: str = "", task: int = 0
) -> dict[str, Any]:
    """One GraphQL request, its JSON answer (for checks, not for load)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = (request.body or "").replace("{user}", user).replace("{task}", str(task))
    answer = httpx.post(f"{base_url}{request.path}", content=body, headers=headers, timeout=30.0)
    result: dict[str, Any] = answer.json()
    result["status"] = answer.status_code
    return result


def _data(answer: dict[str, Any], field: str) -> Any:
    data = answer.get("data")
    if answer["status"] != 200 or "errors" in answer or not isinstance(data, dict):
        raise RuntimeError(f"PostGraphile answered {answer}")
    return data[field]


def check_isolation(base_url: str, token: str, n: int, other: int, tasks_per_user: int) -> None:
    """User n's token sees exactly user n's seeded tasks, its own task by its key, and
    not user `other`'s: the policies hold as PostGraphile runs them. Raises if not."""
    user = database.user_id(n)
    page = _data(query(base_url, REQUESTS["list"], token), "allTasks")
    assert isinstance(page, dict)
    owners = {node["userId"] for node in page["nodes"]}
    if page["totalCount"] != tasks_per_user or owners != {user}:
        raise RuntimeError(
            f"PostGraphile's list is not user {n}'s own: {page['totalCount']} tasks of {owners}"
        )
    own = _data(
        query(base_url, REQUESTS["get"], token, user, database.task_id(n, 1, tasks_per_user)),
        "taskByUserIdAndId",
    )
    if not isinstance(own, dict) or own["userId"] != user:
        raise RuntimeError(f"PostGraphile's get does not find user {n}'s own task: {own}")
    if other != n:
        theirs = query(
            base_url,
            REQUESTS["get"],
            token,
            database.user_id(other),
            database.task_id(other, 1, tasks_per_user),
        )
        if _data(theirs, "taskByUserIdAndId") is not None:
            raise RuntimeError(f"PostGraphile's get shows user {other}'s task to user {n}")
