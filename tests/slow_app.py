"""`todo-api` with one more route, for tests only: GET /test/slow holds a database
connection in pg_sleep, so that a test has a request in flight when it stops the server.

Run as `python -m tests.slow_app serve ...` (with the project root on PYTHONPATH): the
CLI as users run it, its app factory wrapped to add the route. No production module
knows this route.
"""

from typing import Annotated

from fastapi import FastAPI, Query, Request
from sqlalchemy import text

import app.main
from app.config import Settings

_create_app = app.main.create_app


async def slow(request: Request, seconds: Annotated[float, Query(gt=0, le=10)] = 1.0) -> dict[str, float]:
    async with request.app.state.engine.connect() as connection:
        await connection.execute(text("select pg_sleep(:seconds)"), {"seconds": seconds})
    return {"slept": seconds}


def create_app(settings: Settings | None = None) -> FastAPI:
    application = _create_app(settings)
    application.add_api_route("/test/slow", slow, methods=["GET"])
    return application


if __name__ == "__main__":
    app.main.create_app = create_app  # the CLI looks the factory up when it serves
    from app.cli import main

    main()
