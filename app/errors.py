"""The application's errors, and the one place where they and database errors become HTTP.

Nothing raw reaches a client: no SQL text, no constraint name, no stack trace.
"""

import logging

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"


class NotFound(Exception):
    """A row that does not exist, or that row-level security hides: the same to the caller."""

    def __init__(self, detail: str = "Not found") -> None:
        super().__init__(detail)
        self.detail = detail


def _json(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def _unavailable() -> JSONResponse:
    return _json(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the database is unavailable, try again shortly",
        {"Retry-After": RETRY_AFTER_SECONDS},
    )


# SQLSTATE -> (status, detail). Classes are matched by their first two characters.
_BY_SQLSTATE: dict[str, tuple[int, str]] = {
    "42501": (status.HTTP_403_FORBIDDEN, "not allowed"),  # insufficient privilege / RLS check
    "23505": (status.HTTP_409_CONFLICT, "conflicts with an existing resource"),
    "23503": (status.HTTP_404_NOT_FOUND, "Not found"),  # a reference to a row you cannot see
    "23514": (status.HTTP_422_UNPROCESSABLE_CONTENT, "a value is out of range"),
    "40001": (status.HTTP_503_SERVICE_UNAVAILABLE, "a concurrent change conflicted, try again"),
    "40P01": (status.HTTP_503_SERVICE_UNAVAILABLE, "a concurrent change conflicted, try again"),
    "22": (status.HTTP_422_UNPROCESSABLE_CONTENT, "a value is not valid"),
    "08": (status.HTTP_503_SERVICE_UNAVAILABLE, "the database is unavailable, try again shortly"),
    "57": (status.HTTP_503_SERVICE_UNAVAILABLE, "the database is unavailable, try again shortly"),
}


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotFound)
    return _json(status.HTTP_404_NOT_FOUND, exc.detail)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated:
        log.warning("database connection lost: %s", type(exc.orig).__name__)
        return _unavailable()
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    mapped = _BY_SQLSTATE.get(sqlstate) or _BY_SQLSTATE.get(sqlstate[:2])
    if mapped is None:
        log.error("database error %s", sqlstate or "without SQLSTATE", exc_info=exc)
        return _json(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")
    status_code, detail = mapped
    log.warning("database error %s answered %d", sqlstate, status_code)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status_code == 503 else None
    return _json(status_code, detail, headers)


async def _unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unreachable: %s", type(exc).__name__)
    return _unavailable()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(DBAPIError, _database_error)
    # A pool with no free connection, or a server that refuses connections.
    app.add_exception_handler(PoolTimeoutError, _unavailable_handler)
    app.add_exception_handler(OSError, _unavailable_handler)
    app.add_exception_handler(Exception, _unexpected)
