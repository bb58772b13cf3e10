"""Probes for a load balancer or an orchestrator: is the process up, can it serve."""

import asyncio
import logging
from functools import cache
from typing import Annotated, Any

import asyncpg
from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from app.auth import TokenVerifier
from app.paths import MIGRATIONS_DIR
from app.session import ContextKeyMismatch, UserSessions

log = logging.getLogger(__name__)

# Probes are for the load balancer and the operators (README, docs/deploy.md), not for
# API clients: they stay out of the OpenAPI document, which describes the tasks API.
router = APIRouter(tags=["health"], include_in_schema=False)


class Alive(BaseModel):
    status: Annotated[str, Field(examples=["ok"])]


class Ready(BaseModel):
    status: Annotated[str, Field(examples=["ready"])]
    database_role: Annotated[str, Field(description="The role the service connects as")]
    migration: Annotated[str, Field(description="The database's migration revision, the code's head")]


@cache
def head_revisions() -> frozenset[str]:
    """The revisions the code's migrations end at (one, unless history branches)."""
    return frozenset(ScriptDirectory(str(MIGRATIONS_DIR)).get_heads())


def _not_ready(detail: str) -> JSONResponse:
    log.warning("not ready: %s", detail)
    return JSONResponse({"detail": detail}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/healthz", response_model=Alive)
async def healthz() -> Alive:
    """The process is up (nothing else is checked)."""
    return Alive(status="ok")


# Why alembic_version could not be read, by SQLSTATE.
_VERSION_UNREADABLE = {
    "42501": "the database role {role} may not read alembic_version; `todo-api migrate` grants it",
    "42P01": "the database has no migrations; run `todo-api migrate`",
}


@router.get("/readyz", response_model=Ready)
async def readyz(request: Request) -> Any:
    """The database answers as the runtime role, its migrations are at the code's head
    and it accepts this instance's context key, and the identity provider's keys
    (JWKS_URL) are at hand."""
    settings = request.app.state.settings
    role = "?"
    try:
        async with (
            asyncio.timeout(settings.db_connect_timeout + settings.db_statement_timeout),
            request.app.state.engine.connect() as connection,
        ):
            role = await connection.scalar(text("select current_user"))
            versions = set(
                (await connection.scalars(text("select version_num from public.alembic_version"))).all()
            )
    except DBAPIError as exc:
        reason = _VERSION_UNREADABLE.get(getattr(exc.orig, "sqlstate", None) or "")
        if reason and not exc.connection_invalidated:
            return _not_ready(reason.format(role=role))
        return _not_ready(f"the database is unavailable ({type(exc.orig).__name__})")
    except (SQLAlchemyError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # TimeoutError is an OSError: a server that did not answer in time.
        return _not_ready(f"the database is unavailable ({type(exc).__name__})")
    expected = head_revisions()
    if versions != expected:
        return _not_ready(
            f"the database's migrations are at {', '.join(sorted(versions)) or 'nothing'}, "
            f"the code's at {', '.join(sorted(expected))}; run `todo-api migrate`"
        )
    # An instance whose context key was retired (or never added) would answer every
    # request as if the user had nothing: out of rotation, it serves none.
    sessions: UserSessions = request.app.state.user_sessions
    try:
        async with asyncio.timeout(settings.db_connect_timeout + settings.db_statement_timeout):
            await sessions.check_context_key()
    except ContextKeyMismatch as exc:
        return _not_ready(str(exc))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, SQLAlchemyError) as exc:
        return _not_ready(f"the database is unavailable ({type(exc).__name__})")
    # Without a single key from JWKS_URL, every token the provider signs is a 503: a load
    # balancer should send the requests to an instance that has keys. Once keys were
    # fetched, an outage of the provider is no reason: the cached keys keep serving. The
    # check may fetch (at most once per JWKS_MIN_REFRESH_SECONDS, bounded by a timeout),
    # so probing a new instance is what warms it.
    verifier: TokenVerifier = request.app.state.token_verifier
    unavailable = await verifier.key_source_unavailable()
    if unavailable is not None:
        return _not_ready(f"the token key source (JWKS_URL) is unavailable: {unavailable}")
    return Ready(status="ready", database_role=role, migration=", ".join(sorted(versions)))
