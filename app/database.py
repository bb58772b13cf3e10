"""Connections: the runtime engine, the owner's URL, and the refusal to run as a role RLS does not bind."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

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


def libpq_url(url: str) -> str:
    """`url` for libpq (psycopg): the app's URLs may name a SQLAlchemy driver, libpq takes none."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def migrations_url(settings: Settings) -> str:
    """The owner role's URL: MIGRATIONS_DATABASE_URL, else DATABASE_URL's server as todo_owner."""
    if settings.migrations_database_url:
        return settings.migrations_database_url
    if settings.database_url is None:
        raise ValueError("set MIGRATIONS_DATABASE_URL or DATABASE_URL")
    url = make_url(settings.database_url).set(username=OWNER_ROLE, password=None)
    return url.render_as_string(hide_password=False)


def create_engine(settings: Settings) -> AsyncEngine:
    # asyncpg's own timeouts, so that a server that is down or stuck costs a request a
    # bounded wait (then a 503), never a hang: `timeout` to connect, `command_timeout`
    # for each statement (on expiry asyncpg also cancels the statement on the server).
    connect_args: dict[str, Any] = {
        "timeout": settings.db_connect_timeout,
        "command_timeout": settings.db_statement_timeout,
    }
    if settings.db_pgbouncer:
        # PgBouncer in transaction mode hands each transaction whichever server connection
        # is free. Our user context is transaction-local, so it never outlives that; what
        # would is asyncpg's and SQLAlchemy's prepared-statement caches, so they are off,
        # and the statements asyncpg still prepares get names that cannot clash across
        # clients (SQLAlchemy's asyncpg documentation, "Prepared Statement Name with
        # PGBouncer"). The client-side pool stays: a connection per request (NullPool)
        # stalled here under load, each new one's type introspection queueing for the
        # same few server connections as the transactions it waited on.
        connect_args |= {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid4()}__",
        }
    return create_async_engine(
        runtime_url(settings),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_connect_timeout,
        connect_args=connect_args,
        # Bound parameters (user ids, the signed context) stay out of errors and logs.
        hide_parameters=True,
    )


@dataclass(frozen=True)
class Problem:
    """A finding about the database: a short machine-readable code and a sentence for people."""

    code: str
    message: str
    subject: str | None = None  # the table or role it is about


# What the catalogs say about one role (`role`; NULL: the connected one). The start-up
# check and `todo-api audit` (app/audit.py) both read it, so that "a role row-level
# security does not bind" has one definition.
ROLE_FACTS = text(
    """
    select r.rolname as name, r.rolsuper as superuser, r.rolbypassrls as bypassrls,
           r.rolcreaterole as createrole, r.rolcreatedb as createdb,
           has_database_privilege(r.oid, current_database(), 'TEMPORARY') as temporary,
           -- Session defaults set with ALTER ROLE (everywhere, or in this database) that
           -- the role could have set on itself: of parameters any user may set, or custom
           -- ones. Those of superuser-only parameters (log_statement, say) only a
           -- superuser set.
           array(select c.setting
                 from pg_db_role_setting s, unnest(s.setconfig) c(setting)
                 where s.setrole = r.oid
                   and s.setdatabase in (0, (select oid from pg_database where datname = current_database()))
                   and not exists (select from pg_settings p
                                   where p.name = lower(split_part(c.setting, '=', 1))
                                     and p.context <> 'user')
                 order by 1) as settings,
           array(select m.roleid::regrole::text from pg_auth_members m
                 where m.member = r.oid order by 1) as memberships,
           -- Whatever it owns in this database, and databases or tablespaces it owns.
           array(select pg_describe_object(d.classid, d.objid, d.objsubid) from pg_shdepend d
                 where d.refclassid = 'pg_authid'::regclass and d.refobjid = r.oid and d.deptype = 'o'
                   and d.dbid in (0, (select oid from pg_database where datname = current_database()))
                 order by 1) as owned_objects,
           -- Tables of user data owned by it or by a role it is a member of.
           array(select format('%I.%I', n.nspname, c.relname)
                 from pg_class c
                 join pg_namespace n on n.oid = c.relnamespace
                 where c.relkind in ('r', 'p')
                   and pg_has_role(r.oid, c.relowner, 'MEMBER')
                   and (c.relrowsecurity or exists (
                         select from pg_attribute a
                         where a.attrelid = c.oid and a.attname = 'user_id' and not a.attisdropped))
                 order by 1) as owned_user_tables
    from pg_roles r
    where r.rolname = coalesce(:role, current_user)
    """
)


def unsafe_role_problems(facts: Mapping[Any, Any]) -> list[Problem]:
    """Why row-level security would not hold the role `facts` describes (a ROLE_FACTS
    row): it is superuser, has BYPASSRLS, or owns (or is a member of the owner of) a
    table of user data, each of which can read every user's rows; or it may create
    temporary objects, which one request can leave on a pooled connection for the next
    to run; or it has session defaults, which SQL running as it may have set to break
    every later connection. Empty: it holds."""
    role = facts["name"]
    problems = []
    if facts["superuser"]:
        problems.append(
            Problem(
                "runtime_role_superuser",
                f"the database role {role!r} is a superuser, and row-level security does not apply "
                "to superusers",
                role,
            )
        )
    if facts["bypassrls"]:
        problems.append(
            Problem(
                "runtime_role_bypassrls",
                f"the database role {role!r} has BYPASSRLS, which exempts it from row-level security",
                role,
            )
        )
    if facts["temporary"]:
        problems.append(
            Problem(
                "runtime_role_temporary",
                f"the database role {role!r} may create temporary objects (TEMPORARY on the database, "
                "granted to PUBLIC by default): a temporary view or function left on a pooled connection "
                "would run inside the next request's context; sql/roles.sql revokes it",
                role,
            )
        )
    if facts["settings"]:
        problems.append(
            Problem(
                "runtime_role_settings",
                f"the database role {role!r} has session defaults set with ALTER ROLE "
                f"({', '.join(facts['settings'])}): a role may set its own, so SQL running as it "
                "(an injection) can, and they reach every new connection, where they can break "
                f"requests (default_transaction_read_only, say); remove them with ALTER ROLE {role} "
                "RESET ALL (DB_STATEMENT_TIMEOUT and DB_LOCK_TIMEOUT are the service's own)",
                role,
            )
        )
    if facts["owned_user_tables"]:
        problems.append(
            Problem(
                "runtime_role_owns_user_tables",
                f"the database role {role!r} owns tables of user data "
                f"({', '.join(facts['owned_user_tables'])}), and an owner can switch row-level security off",
                role,
            )
        )
    return problems


async def check_runtime_role(engine: AsyncEngine) -> None:
    """Refuse to start as a role that row-level security would not hold (unsafe_role_problems)."""
    async with engine.connect() as connection:
        facts = (await connection.execute(ROLE_FACTS, {"role": None})).mappings().one()
    problems = unsafe_role_problems(facts)
    if problems:
        raise UnsafeRuntimeRole(
            f"refusing to start: {problems[0].message}; "
            f"connect as {RUNTIME_ROLE}, created by sql/roles.sql (run it again after an upgrade)"
        )
