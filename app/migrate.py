"""Running the Alembic migrations, and the one way SQL files from sql/ reach the database."""

from alembic import command, op
from alembic.config import Config
from sqlalchemy.engine import make_url

from app.paths import MIGRATIONS_DIR, read_sql

# Migrations and other owner work go through psycopg: unlike asyncpg's prepared
# statements, it sends a parameterless script in one go, so a file from sql/ runs as
# the DBA wrote it, statements and dollar-quoted bodies and all.
MIGRATION_DRIVER = "postgresql+psycopg"


def apply_sql(relative: str) -> None:
    """Run a file from sql/ (for example ``policies/tasks.sql``) inside a migration."""
    op.get_bind().exec_driver_sql(read_sql(relative))


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = make_url(url).set(drivername=MIGRATION_DRIVER)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` (the owner role's) to `revision`."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
