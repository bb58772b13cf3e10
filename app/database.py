"""Connections: the runtime engine, the owner's URL, and the refusal to run as a role RLS does not bind."""

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.config import OWNER_ROLE, RUNTIME_ROLE, Settings

RUNTIME_DRIVER = "postgresql+asyncpg"


class UnsafeRuntimeRole(RuntimeError):
    """The service's database role is one that row-level security would not hold."""


def runtime_url(settings: Settings) -> URL:
    if settings.database_url is None:
        raise ValueError("DATABASE_URL is not set")
    return make_url(settings.database_url).set(drivername=RUNTIME_DRIVER)


def migrations_url(settings: Settings) -> str:
    """The owner role's URL: MIGRATIONS_DATABASE_URL, else DATABASE_URL's server as todo_owner."""
    if settings.migrations_database_url:
        return settings.migrations_database_url
    if settings.database_url is None:
        raise ValueError("set MIGRATIONS_DATABASE_URL or DATABASE_URL")
    url = make_url(settings.database_url).set(username=OWNER_ROLE, password=None)
    return url.render_as_string(hide_password=False)


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        runtime_url(settings),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )


_ROLE_CHECK = text(
    """
    select r.rolname, r.rolsuper, r.rolbypassrls,
           coalesce((
             select array_agg(format('%I.%I', n.nspname, c.relname) order by 1)
             from pg_class c
             join pg_namespace n on n.oid = c.relnamespace
             where c.relkind in ('r', 'p')
               and pg_has_role(r.oid, c.relowner, 'MEMBER')
               and (c.relrowsecurity or exists (
                     select from pg_attribute a
                     where a.attrelid = c.oid and a.attname = 'user_id' and not a.attisdropped))
           ), '{}') as owned
    from pg_roles r
    where r.rolname = current_user
    """
)


async def check_runtime_role(engine: AsyncEngine) -> None:
    """Refuse a runtime role that is superuser, has BYPASSRLS, or owns (or is a member
    of the owner of) a table of user data: each of those can read every user's rows."""
    async with engine.connect() as connection:
        row = (await connection.execute(_ROLE_CHECK)).one()
    hint = f"connect as {RUNTIME_ROLE} (created by sql/roles.sql) instead"
    if row.rolsuper:
        raise UnsafeRuntimeRole(
            f"refusing to start: the database role {row.rolname!r} is a superuser, and "
            f"row-level security does not apply to superusers; {hint}"
        )
    if row.rolbypassrls:
        raise UnsafeRuntimeRole(f"refusing to start: the database role {row.rolname!r} has BYPASSRLS; {hint}")
    if row.owned:
        raise UnsafeRuntimeRole(
            f"refusing to start: the database role {row.rolname!r} owns tables of user data "
            f"({', '.join(row.owned)}), and an owner can switch row-level security off; {hint}"
        )
