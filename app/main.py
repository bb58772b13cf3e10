"""The application factory: assembles settings, token verification, the database and routes."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from app import __doc__ as summary
from app import metrics
from app.auth import TokenVerifier
from app.config import Settings, get_settings
from app.database import check_runtime_role, create_engine
from app.errors import ErrorBody, install_error_handlers
from app.keys import SigningKey
from app.logs import install_request_id_factory
from app.middleware import (
    REQUEST_ID_HEADER,
    AllowedHostsMiddleware,
    BodySizeLimitMiddleware,
    JsonCORSMiddleware,
    RequestContextMiddleware,
)
from app.ratelimit import ClientRateLimitMiddleware, RateLimiter, limit_chat, limit_writes
from app.routes import accounts, chat, conversations, docs, health, tags, tasks, wellknown
from app.session import UserSessions
from app.tools.server import build_mcp

DESCRIPTION = """
Every route under `/api/{user_id}` needs a bearer JWT whose `sub` is that `user_id`:
type your user id into each route's `user_id`.

**A token from `todo-api token USER_ID`**: your user id is the `USER_ID` you named. Press
**Authorize** and paste the token under *bearer*.
"""
# Added to DESCRIPTION when built-in accounts are on.
ACCOUNTS_DESCRIPTION = """
**A built-in account**: register with `POST /api/auth/register`, then press **Authorize**
and log in under *password* with your email (as `username`) and password. Your user id is
the `user_id` of the log-in answer (`POST /api/auth/token`), and of `GET /api/auth/me`:
after logging in, open it, press *Try it out*, then *Execute*.
"""

# What any route under /api may answer besides its own responses.
OPERATIONAL_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "The request body is larger than MAX_BODY_SIZE"},
    429: {"model": ErrorBody, "description": "Rate limited; `Retry-After` says when to try again"},
    503: {
        "model": ErrorBody,
        "description": "The database, or the token key source, is unavailable; try again after `Retry-After`",
    },
}


def _add_middleware(app: FastAPI, settings: Settings, allowed_hosts: list[str]) -> None:
    """Outermost first: the request context sees every request and every answer, CORS
    headers reach the 429s, 400s and 413s too, requests with a refused Host count against
    their client's limit, and the body limit sits next to the routes."""
    middleware: list[tuple[Any, dict[str, Any]]] = [
        (RequestContextMiddleware, {"metrics": getattr(app.state, "metrics", None)}),
    ]
    if settings.cors_origins:
        middleware.append(
            (
                JsonCORSMiddleware,
                {
                    "allow_origins": settings.cors_origins,
                    "allow_methods": ["GET", "POST", "PUT", "PATCH", "DELETE"],
                    # The MCP clients' headers too (/mcp; Streamable HTTP, stateless).
                    "allow_headers": [
                        "Authorization",
                        "Content-Type",
                        REQUEST_ID_HEADER,
                        "Mcp-Protocol-Version",
                        "Mcp-Method",
                        "Mcp-Name",
                    ],
                    "expose_headers": [
                        "Location",
                        "Link",
                        "X-Total-Count",
                        "Retry-After",
                        REQUEST_ID_HEADER,
                        "WWW-Authenticate",
                    ],
                    # Bearer tokens, not cookies: a browser sends no credentials of its own.
                    "allow_credentials": False,
                    "max_age": 600,
                },
            )
        )
    if settings.rate_limit_requests.strip():
        middleware.append((ClientRateLimitMiddleware, {}))
    if "*" not in allowed_hosts:
        middleware.append((AllowedHostsMiddleware, {"allowed_hosts": allowed_hosts}))
    middleware.append((BodySizeLimitMiddleware, {"max_body_size": settings.max_body_size}))
    # add_middleware puts each one outside those added before it.
    for cls, options in reversed(middleware):
        app.add_middleware(cls, **options)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if settings.rls_context_key is None:
        raise ValueError("RLS_CONTEXT_KEY is not set")
    allowed_hosts = settings.allowed_host_patterns()
    signing_key = None
    if settings.accounts:
        if settings.token_signing_key is None:
            raise ValueError("built-in accounts need TOKEN_SIGNING_KEY (an Ed25519 private key, PEM)")
        signing_key = SigningKey.from_pem(settings.token_signing_key.get_secret_value().encode())
    token_verifier = TokenVerifier(settings, signing_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        try:
            await check_runtime_role(engine)
            sessions = UserSessions.from_settings(engine, settings)
            await sessions.check_context_key()
            # The key of the tasks' ETags (app/routes/tasks.py): the database's, the same
            # for every instance whichever context key it signs with.
            app.state.etag_key = await sessions.etag_key()
            app.state.engine = engine
            app.state.user_sessions = sessions
            # Made here, not at import: a Redis client belongs to the serving event loop.
            app.state.rate_limiter = RateLimiter(settings)
            # The chat's agent, made on the first chat message (app/routes/chat.py).
            app.state.assistant = None
            # The MCP server's tasks (one per call, stateless) run in its session manager.
            try:
                async with mcp.server.session_manager.run():
                    # What start-up built lives as long as the app: out of the garbage
                    # collector's sight. A full collection scanned its ~180,000 objects
                    # for ~170 ms, every request in flight waiting, which was the p99 of
                    # every scenario (bench/README.md, round 8).
                    gc.freeze()
                    yield
            finally:
                # Back in view, to be collected once the app is gone (the tests make many).
                gc.unfreeze()
                if app.state.assistant is not None:
                    await app.state.assistant.aclose()
        finally:
            await engine.dispose()
            await token_verifier.aclose()

    app = FastAPI(
        title="Todo API",
        summary=summary,
        description=DESCRIPTION + (ACCOUNTS_DESCRIPTION if settings.accounts else ""),
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's own pages load their scripts from a CDN; app/routes/docs.py serves them.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.token_verifier = token_verifier
    install_error_handlers(app)
    install_request_id_factory()
    app.include_router(health.router)
    app.include_router(docs.router)
    app.include_router(wellknown.router)
    if settings.accounts:
        app.include_router(accounts.router, responses=OPERATIONAL_RESPONSES)
    write_limits = [Depends(limit_writes)] if settings.rate_limit_writes.strip() else []
    app.include_router(tasks.router, dependencies=write_limits, responses=OPERATIONAL_RESPONSES)
    app.include_router(tags.router, dependencies=write_limits, responses=OPERATIONAL_RESPONSES)
    app.include_router(conversations.router, dependencies=write_limits, responses=OPERATIONAL_RESPONSES)
    chat_limits = [Depends(limit_chat)] if settings.rate_limit_chat.strip() else []
    app.include_router(chat.router, dependencies=chat_limits, responses=OPERATIONAL_RESPONSES)
    if settings.metrics_enabled:
        app.state.metrics = metrics.Metrics(app)
        app.include_router(metrics.router)
    mcp = build_mcp(app, settings, token_verifier, allowed_hosts)
    app.state.mcp = mcp
    _add_middleware(app, settings, allowed_hosts)
    return app
