"""BENCHMARK CONTROL, NEVER SHIPPED: the service's own app, changed in two ways that only
a measurement may want.

1. Row-level security out of the way (control 2): the service refuses a BYPASSRLS role
   at start-up (app.database.check_runtime_role). Here that check is replaced by its
   opposite, so that this control cannot quietly run with RLS in force: it starts only
   as a role that bypasses it (bench.database.BYPASS_ROLE). Routes, queries, the signed
   context and the explicit user_id filters are the shipped ones.
2. GET /bench/whoami (control 3): an authenticated route that touches no database, behind
   the same middleware: the framework's ceiling.

Run by bench/service.py as `uvicorn bench.control_app:create_control_app --factory`.
"""

from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

import app.main
from app.auth import CurrentSubject
from app.config import Settings
from app.database import ROLE_FACTS
from app.logs import configure_logging

router = APIRouter(prefix="/bench", tags=["benchmark"], include_in_schema=False)


@router.get("/whoami")
async def whoami(subject: CurrentSubject) -> dict[str, str]:
    """The verified token's subject; no database work."""
    return {"user_id": subject}


async def require_bypassrls(engine: AsyncEngine) -> None:
    """In place of check_runtime_role: this control means nothing unless RLS is bypassed."""
    async with engine.connect() as connection:
        facts = (await connection.execute(ROLE_FACTS, {"role": None})).mappings().one()
    if not facts["bypassrls"]:
        raise RuntimeError(f"the no-RLS control must connect as a BYPASSRLS role, not {facts['name']!r}")


def create_control_app() -> FastAPI:
    """One worker's app, configured from the environment as `todo-api serve` workers are."""
    settings = Settings()
    configure_logging(settings)
    app.main.check_runtime_role = require_bypassrls  # type: ignore[assignment]
    control = app.main.create_app(settings)
    control.include_router(router)
    return control
