"""Running the Alembic migrations, and the one way SQL files from sql/ reach the database."""

import hashlib

import psycopg
from alembic import command, op
from alembic.config import Config

from app.database import libpq_url
from app.paths import MIGRATIONS_DIR, read_sql

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


def install_context_key(url: str, key: bytes) -> None:
    """Store the user-context HMAC key in app.context_key (as the owner role), as the
    inner and outer padded keys of RFC 2104 that app.current_user_id() checks with."""
    block = (hashlib.sha256(key).digest() if len(key) > HMAC_BLOCK else key).ljust(HMAC_BLOCK, b"\0")
    inner = bytes(byte ^ 0x36 for byte in block)
    outer = bytes(byte ^ 0x5C for byte in block)
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute(
            "insert into app.context_key (singleton, inner_key, outer_key) values (true, %s, %s)"
            " on conflict (singleton) do update set inner_key = excluded.inner_key,"
            " outer_key = excluded.outer_key",
            (inner, outer),
        )
