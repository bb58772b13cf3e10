"""Alembic environment: async, connecting as the owner role."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers the tables for autogenerate)
from app.config import get_settings
from app.database import migrations_url
from app.migrate import MIGRATION_DRIVER

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    # `todo-api migrate` and the tests pass the URL; plain `alembic` reads the settings.
    url = config.attributes.get("url") or migrations_url(get_settings())
    return make_url(url).set(drivername=MIGRATION_DRIVER).render_as_string(hide_password=False)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
