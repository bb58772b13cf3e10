"""The application factory: assembles settings, token verification, the database and routes."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __doc__ as summary
from app.auth import TokenVerifier
from app.config import Settings, get_settings
from app.database import check_runtime_role, create_engine
from app.errors import install_error_handlers
from app.routes import tasks
from app.session import create_sessionmaker

DESCRIPTION = """
Every route under `/api/{user_id}` needs a bearer JWT whose `sub` is that `user_id`.
Press **Authorize** and paste a token (`todo-api token USER_ID` prints one).
PostgreSQL row-level security keeps each user's tasks apart.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        try:
            await check_runtime_role(engine)
            app.state.engine = engine
            app.state.sessionmaker = create_sessionmaker(engine)
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="Todo API",
        summary=summary,
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.token_verifier = TokenVerifier(settings)
    install_error_handlers(app)
    app.include_router(tasks.router)
    return app
