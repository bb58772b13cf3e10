"""The application's errors, and the one place where they and database errors become HTTP.

Nothing raw reaches a client: no SQL text, no constraint name, no stack trace.
"""

import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from app.logs import NO_REQUEST, request_id_var

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"
UNAVAILABLE = "the database is unavailable, try again shortly"


class ErrorBody(BaseModel):
    """Every error answers `{"detail": ...}`; a 422 keeps FastAPI's list of field errors."""

    detail: str


class NotFound(Exception):
    """A row that does not exist, or that row-level security hides: the same to the caller."""

    def __init__(self, detail: str = "Not found") -> None:
        super().__init__(detail)
        self.detail = detail


class Conflict(Exception):
    """The change would clash with another of the caller's own rows (409)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _json(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


@dataclass(frozen=True)
class Fault:
    """What a database error means to the caller, said alike by every way in (a REST
    answer, an MCP tool's error): no SQL text, no constraint name. For a constraint that
    a request can break while each of its fields is valid, the field it names."""

    status: int
    detail: str
    field: str | None = None
    error_type: str | None = None


# SQLSTATE -> (status, detail). Classes are matched by their first two characters.
_BY_SQLSTATE: dict[str, tuple[int, str]] = {
    "42501": (status.HTTP_403_FORBIDDEN, "not allowed"),  # insufficient privilege / RLS check
    "23505": (status.HTTP_409_CONFLICT, "conflicts with an existing resource"),
    "23503": (status.HTTP_404_NOT_FOUND, "Not found"),  # a reference to a row you cannot see
    "23514": (status.HTTP_422_UNPROCESSABLE_CONTENT, "a value is out of range"),
    # Serialization failure, deadlock: the transaction was rolled back whole, so the
    # client can send the same request again (Retry-After).
    "40001": (status.HTTP_503_SERVICE_UNAVAILABLE, "a concurrent change conflicted, try again"),
    "40P01": (status.HTTP_503_SERVICE_UNAVAILABLE, "a concurrent change conflicted, try again"),
    # lock_timeout (DB_LOCK_TIMEOUT): another transaction holds a lock this one needs.
    "55P03": (status.HTTP_503_SERVICE_UNAVAILABLE, "the data is busy, try again"),
    # A statement of the connection's driver was deallocated by SQL in an earlier
    # request; the connection is closed (app/session.py), and the next one is fresh.
    "26000": (status.HTTP_503_SERVICE_UNAVAILABLE, UNAVAILABLE),
    "22": (status.HTTP_422_UNPROCESSABLE_CONTENT, "a value is not valid"),
    "08": (status.HTTP_503_SERVICE_UNAVAILABLE, UNAVAILABLE),
    # statement_timeout (set by a DBA on the role) cancels a statement with 57014.
    "57014": (status.HTTP_503_SERVICE_UNAVAILABLE, "the database took too long to answer, try again"),
    # Shutting down, starting up, restarting (57P01..57P03): the server will be back.
    "57": (status.HTTP_503_SERVICE_UNAVAILABLE, UNAVAILABLE),
    "53": (status.HTTP_503_SERVICE_UNAVAILABLE, UNAVAILABLE),  # out of connections, memory, disk
    "3D": (status.HTTP_503_SERVICE_UNAVAILABLE, UNAVAILABLE),  # the database named does not exist (yet)
}

# Constraints a request can break while every field in it is valid on its own (a PATCH
# that clears the due date of a recurring task): the field to name, and why. The
# constraint's own name never reaches the client.
_BY_CONSTRAINT: dict[str, tuple[str, str, str]] = {
    "tasks_recurrence_needs_due_at": (
        "recurrence",
        "recurrence_without_due_at",
        "A recurring task needs a due_at",
    ),
}

# The exceptions database_fault() knows: the pool's and the driver's, raw and wrapped.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    DBAPIError,  # through SQLAlchemy (the ORM sessions of sign-up and log-in)
    PoolTimeoutError,  # a pool with no free connection
    OSError,  # a server that refuses connections; TimeoutError (DB_*_TIMEOUT) is one too
    asyncpg.PostgresError,
    AsyncAdapt_asyncpg_dbapi.Error,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def _unavailable(detail: str = UNAVAILABLE) -> Fault:
    return Fault(status.HTTP_503_SERVICE_UNAVAILABLE, detail)


def _constraint_name(exc: BaseException) -> str | None:
    # asyncpg's error, or the one SQLAlchemy (or its adapter) wraps.
    for error in (exc, getattr(exc, "orig", None), exc.__cause__):
        if name := getattr(error, "constraint_name", None):
            return str(name)
    return None


def _postgres_fault(sqlstate: str, exc: BaseException) -> Fault:
    if sqlstate == "23514" and (broken := _BY_CONSTRAINT.get(_constraint_name(exc) or "")):
        field, error_type, message = broken
        return Fault(status.HTTP_422_UNPROCESSABLE_CONTENT, message, field, error_type)
    if sqlstate.startswith("28"):
        # Wrong credentials are the operator's problem; the client can only wait.
        log.error("the database refused the service's credentials (%s)", sqlstate)
        return _unavailable()
    mapped = _BY_SQLSTATE.get(sqlstate) or _BY_SQLSTATE.get(sqlstate[:2])
    if mapped is None:
        log.error("database error %s", sqlstate or "without SQLSTATE", exc_info=exc)
        return Fault(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")
    status_code, detail = mapped
    log.warning("database error %s answered %d", sqlstate, status_code)
    return Fault(status_code, detail)


def database_fault(exc: BaseException) -> Fault | None:
    """What `exc` means to the caller, logged once here; None if it is no database error
    (not one of DATABASE_ERRORS)."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            log.warning("database connection lost: %s", type(exc.orig).__name__)
            return _unavailable()
        return _postgres_fault(getattr(exc.orig, "sqlstate", None) or "", exc)
    if isinstance(exc, asyncpg.PostgresError):
        # Errors straight from asyncpg: the requests' statements run on its connections
        # (app/session.py), and SQLAlchemy passes errors from opening one on unwrapped:
        # "the database system is shutting down" (57P03), too many clients (53300), a
        # password refused (28P01).
        return _postgres_fault(exc.sqlstate or "", exc)
    if isinstance(exc, AsyncAdapt_asyncpg_dbapi.Error):
        # An asyncpg error in the DB-API class of SQLAlchemy's adapter, without
        # SQLAlchemy's own wrapper: how opening a connection fails when the server
        # refuses it mid-way (57P03). No SQLSTATE: the connection itself failed.
        if exc.sqlstate is None:
            log.warning("database connection failed: %s", type(exc.__cause__ or exc).__name__)
            return _unavailable()
        return _postgres_fault(exc.sqlstate, exc)
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        # A connection closed under a statement, or not opened.
        log.warning("database connection failed: %s", type(exc).__name__)
        return _unavailable()
    if isinstance(exc, TimeoutError):
        # DB_CONNECT_TIMEOUT or DB_STATEMENT_TIMEOUT ran out.
        log.warning("database did not answer in time")
        return _unavailable("the database took too long to answer, try again")
    if isinstance(exc, PoolTimeoutError | OSError):
        log.warning("database unreachable: %s", type(exc).__name__)
        return _unavailable()
    return None


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    fault = database_fault(exc)
    assert fault is not None, "registered for DATABASE_ERRORS only"
    if fault.field is not None:
        error = {"type": fault.error_type, "loc": ["body", fault.field], "msg": fault.detail, "input": None}
        return JSONResponse({"detail": [error]}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    headers = (
        {"Retry-After": RETRY_AFTER_SECONDS} if fault.status == status.HTTP_503_SERVICE_UNAVAILABLE else None
    )
    return _json(fault.status, fault.detail, headers)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotFound)
    return _json(status.HTTP_404_NOT_FOUND, exc.detail)


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Conflict)
    return _json(status.HTTP_409_CONFLICT, exc.detail)


def _encodable(value: Any) -> Any:
    """`value` (JSON-ready) with each lone UTF-16 surrogate in its strings replaced by
    U+FFFD. JSON's "\\ud800" decodes to one, which UTF-8 cannot encode, and a 422 echoes
    the input it refuses (and, for an unknown field, names it in `loc`)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    return value


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, `{"detail": [field errors]}`, written whatever the input held."""
    assert isinstance(exc, RequestValidationError)
    errors = _encodable(jsonable_encoder(exc.errors()))
    for error in errors:
        # A password is not sent back, not even to whoever sent it: responses end up in
        # proxies' and browsers' logs and caches.
        if isinstance(error, dict) and "password" in error.get("loc", ()):
            error.pop("input", None)
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _methods_allowed(request: Request) -> list[str]:
    """The methods some route of the app answers at this request's path."""
    # A fresh scope: the request's own carries what routing has already put in it.
    scope = request.scope
    probe = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", ""), "headers": []}
    return [
        method
        for method in _METHODS
        if any(route.matches({**probe, "method": method})[0] is Match.FULL for route in request.app.routes)
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's JSON answer, but a 405's Allow lists every method of the path (Starlette
    names only those of the first route that matches it)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_400_BAD_REQUEST and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's own 400 for a body that is not even UTF-8: like any other body that
        # is not JSON, a 422 naming the body.
        error = {"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": {}}
        return await _validation_error(request, RequestValidationError([error]))
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = ", ".join(_methods_allowed(request))
        exc = StarletteHTTPException(exc.status_code, exc.detail, {**(exc.headers or {}), "Allow": allowed})
    return await http_exception_handler(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    # This handler runs outside the request-id middleware, so it sets the header itself.
    request_id = request_id_var.get()
    headers = None if request_id == NO_REQUEST else {"X-Request-ID": request_id}
    return _json(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error", headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    for database_error in DATABASE_ERRORS:
        app.add_exception_handler(database_error, _database_error)
    app.add_exception_handler(Exception, _unexpected)
