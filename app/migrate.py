"""Running the Alembic migrations, and the one way SQL files from sql/ reach the database."""

import hashlib
from dataclasses import dataclass
from datetime import datetime

import psycopg
from alembic import command, op
from alembic.config import Config

from app.database import libpq_url
from app.paths import MIGRATIONS_DIR, read_sql
from app.session import context_key_id

# Migrations and other owner work go through psycopg: unlike asyncpg's prepared
# statements, it sends a parameterless script in one go, so a file from sql/ runs as
# the DBA wrote it, statements and dollar-quoted bodies and all.
MIGRATION_DRIVER = "postgresql+psycopg"
HMAC_BLOCK = 64  # SHA-256's block size


def apply_sql(relative: str) -> None:
    """Run a file from sql/ (for example ``policies/tasks.sql``) inside a migration."""
    op.get_bind().exec_driver_sql(read_sql(relative))


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url  # migrations/env.py picks the driver
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` (the owner role's) to `revision`."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def install_context_key(url: str, key: bytes) -> bool:
    """Add the user-context HMAC key to app.context_keys (as the owner role), under its
    id, as the inner and outer padded keys of RFC 2104 that app.current_user_id() checks
    with. The keys already there stay: instances still signing with them keep working
    until they are retired. Whether the key was new."""
    block = (hashlib.sha256(key).digest() if len(key) > HMAC_BLOCK else key).ljust(HMAC_BLOCK, b"\0")
    inner = bytes(byte ^ 0x36 for byte in block)
    outer = bytes(byte ^ 0x5C for byte in block)
    with psycopg.connect(libpq_url(url)) as conn:
        added = conn.execute(
            "insert into app.context_keys (kid, inner_key, outer_key) values (%s, %s, %s)"
            " on conflict (kid) do nothing",
            (context_key_id(key), inner, outer),
        )
        return added.rowcount == 1


@dataclass(frozen=True)
class ContextKey:
    kid: str
    added_at: datetime


def context_keys(url: str) -> list[ContextKey]:
    """The context keys the database accepts, oldest first."""
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute("select kid, added_at from app.context_keys order by added_at, kid").fetchall()
    return [ContextKey(kid, added_at) for kid, added_at in rows]


def retire_context_keys(url: str, kids: list[str]) -> list[str]:
    """Delete these context keys: from the next statement on, no context signed with
    them verifies. The ids of those that were there."""
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "delete from app.context_keys where kid = any(%s) returning kid", (kids,)
        ).fetchall()
    return sorted(kid for (kid,) in rows)
