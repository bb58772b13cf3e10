"""Task routes: HTTP around app.service.tasks, which holds the statements. Thin: the
connection is already scoped to the caller by row-level security. What is HTTP's alone
lives here: ETags (If-Match, If-None-Match), Location, the list's headers.

The statements return each task already as JSON text in the shape of TaskPublic, which
the routes send as they are; `response_model` still documents the shape, and the route
tests hold every field to it.
"""

import hashlib
import hmac
import re
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from app.auth import TOKEN_SCHEMES, CurrentSubject, require_path_owner
from app.models import (
    TAGS_PER_TASK,
    DueAt,
    Priority,
    SearchText,
    TagName,
    TaskCreate,
    TaskPublic,
    TaskReplace,
    TaskUpdate,
    drop_null_branch,
)
from app.service import tasks as service
from app.service.tasks import TASK_NOT_FOUND, SortField, SortOrder, StatusFilter, TaskQuery, TaskRow
from app.session import UserConnection

router = APIRouter(
    prefix="/api/{user_id}/tasks",
    tags=["tasks"],
    dependencies=[Depends(require_path_owner), *TOKEN_SCHEMES],
    responses={
        401: {"description": "Missing or invalid bearer token"},
        403: {"description": "The token's subject is not the user_id in the path"},
    },
)

TaskId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The task's id")]
_ETAG_HEADER = {"ETag": {"description": "The task's version", "schema": {"type": "string"}}}
_NOT_FOUND_RESPONSE: dict[int | str, dict[str, Any]] = {404: {"description": TASK_NOT_FOUND}}
# What a write of one task may answer besides its own success.
_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND_RESPONSE,
    412: {"description": "If-Match does not match the task's current ETag: nothing changed"},
}
# `*`, or a list of entity tags (RFC 9110, 8.8.3). A value that names no entity tag
# matches none: If-Match then fails (412, nothing changes), If-None-Match passes.
IfMatch = Annotated[
    str | None,
    Header(
        # Left out, not null: a header cannot be sent as null.
        json_schema_extra=drop_null_branch,
        description="Change the task only if its ETag is one of these (or `*`); else 412",
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(
        json_schema_extra=drop_null_branch,
        description="304 with no body if the task's ETag is one of these (or `*`)",
    ),
]


# --- versions: ETag, If-Match, If-None-Match ------------------------------------------

_TAG = re.compile(r'(W/)?"([!#-~]*)"')


def _etag(request: Request, task_id: int, version: str) -> str:
    """A strong ETag for this version of the task. Not the row version itself: xmin is a
    transaction id, a counter of every user's writes, which it would show to anyone (as
    the task ids do for creations). An HMAC of it under a key of the service's reveals
    nothing and cannot be made up."""
    key: bytes = request.app.state.etag_key
    return '"' + hmac.new(key, f"{task_id}:{version}".encode(), hashlib.sha256).hexdigest()[:32] + '"'


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    """Whether `header` (If-Match, If-None-Match) names `etag`: `*` names any; If-Match
    compares strongly (a weak tag never matches), If-None-Match weakly (RFC 9110, 8.8.3)."""
    if header.strip() == "*":
        return True
    return any(f'"{opaque}"' == etag and (weak or not is_weak) for is_weak, opaque in _TAG.findall(header))


async def _check_if_match(
    request: Request, connection: UserConnection, if_match: str | None, subject: str, task_id: int
) -> None:
    """412 unless the task's current ETag is one that If-Match names; the row stays locked
    until the request's transaction ends."""
    if if_match is None:
        return
    # NotFound: the same 404 as without If-Match.
    version = await service.lock_task(connection, subject, task_id)
    if not _matches(if_match, _etag(request, task_id, version), weak=False):
        raise HTTPException(
            status.HTTP_412_PRECONDITION_FAILED,
            detail="the task has changed since that ETag: nothing changed",
        )


# --- the routes ----------------------------------------------------------------------


def _json(content: str, status_code: int = status.HTTP_200_OK) -> Response:
    return Response(content=content, status_code=status_code, media_type="application/json")


# A page of a list: its headers.
PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            "X-Total-Count": {"schema": {"type": "integer"}},
            "Link": {"schema": {"type": "string"}},
        }
    }
}


def page_response(request: Request, body: str, total: int, limit: int, offset: int) -> Response:
    """A page (JSON text) with X-Total-Count and the Link header of its neighbours."""
    headers = {"X-Total-Count": str(total)}
    if links := page_links(request, total, limit, offset):
        headers["Link"] = links
    return Response(content=body, media_type="application/json", headers=headers)


def page_links(request: Request, total: int, limit: int, offset: int) -> str | None:
    """RFC 8288 Link header with the next and previous pages that exist."""
    links = []
    if offset + limit < total:
        url = request.url.include_query_params(offset=offset + limit, limit=limit)
        links.append(f'<{url}>; rel="next"')
    if offset > 0:
        url = request.url.include_query_params(offset=max(offset - limit, 0), limit=limit)
        links.append(f'<{url}>; rel="prev"')
    return ", ".join(links) or None


class ListParameters(BaseModel):
    """The list's query parameters, validated as one model: FastAPI's validation of each
    of them on its own was a tenth of a list request's CPU (bench/README.md, round 8).
    Parameters it does not name are ignored, as before."""

    status: StatusFilter = StatusFilter.all
    priority: list[Priority] | None = Field(
        None, description="Any of these priorities (repeat the parameter)"
    )
    due_before: DueAt | None = Field(None, description="Due before this date-time (with an offset)")
    due_after: DueAt | None = Field(None, description="Due after this date-time (with an offset)")
    overdue: bool = Field(False, description="Only tasks due in the past and not completed")
    tag: list[TagName] | None = Field(
        None,
        max_length=TAGS_PER_TASK,
        description="Tasks that carry all these tags (repeat the parameter)",
    )
    q: SearchText | None = Field(
        None, description="Words the title or description has, or starts with (`groc` finds groceries)"
    )
    sort: SortField = Field(SortField.created, description="`relevance` needs `q`")
    order: SortOrder | None = Field(
        None,
        description="Default: desc for created, updated, priority (high first) and relevance;"
        " asc for title and due",
    )
    limit: int = Field(50, ge=1, le=100)
    offset: int = Field(0, ge=0, le=2**31 - 1)


@router.get(
    "",
    response_model=list[TaskPublic],
    responses=PAGE_RESPONSES,
)
async def list_tasks(
    request: Request,
    connection: UserConnection,
    subject: CurrentSubject,
    params: Annotated[ListParameters, Query()],
) -> Response:
    """List your tasks."""
    query = TaskQuery(**dict(params))  # the same names, the values as validated
    try:
        body, total = await service.list_tasks(connection, subject, query)
    except ValueError as exc:  # sort=relevance without q
        raise RequestValidationError(
            [{"type": "missing", "loc": ("query", "q"), "msg": str(exc), "input": None}]
        ) from None
    return page_response(request, body, total, params.limit, params.offset)


@router.post(
    "",
    response_model=TaskPublic,
    status_code=status.HTTP_201_CREATED,
    responses={201: {"headers": _ETAG_HEADER}},
)
async def create_task(
    body: TaskCreate, request: Request, connection: UserConnection, subject: CurrentSubject
) -> Response:
    """Create a task."""
    task = await service.create_task(connection, subject, body)
    response = _task_response(request, task, status.HTTP_201_CREATED)
    response.headers["Location"] = _task_url(request, subject, task.id)
    return response


def _task_url(request: Request, subject: str, task_id: int) -> str:
    """The absolute URL of the task, as request.url_for("get_task") gives it, from this
    router's own route: url_for asks every route of the app in turn (~70-85 us here,
    some 7% of a create's Python time), the route itself answers in ~5 us. The app
    includes this router without a prefix of its own (tests/routes/test_tasks.py checks
    the URL against url_for's)."""
    # Percent-encoded: a user id may hold any character, and a header only Latin-1.
    owner = quote(subject, safe="")
    path = _GET_TASK_ROUTE.url_path_for("get_task", user_id=owner, task_id=str(task_id))
    return str(path.make_absolute_url(request.base_url))


@router.get(
    "/{task_id}",
    response_model=TaskPublic,
    responses={
        **_NOT_FOUND_RESPONSE,
        200: {"headers": _ETAG_HEADER},
        304: {"description": "If-None-Match names the task's current ETag"},
    },
)
async def get_task(
    task_id: TaskId,
    request: Request,
    connection: UserConnection,
    subject: CurrentSubject,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Get one task."""
    response = _task_response(request, await service.get_task(connection, subject, task_id))
    etag = response.headers["ETag"]
    if if_none_match is not None and _matches(if_none_match, etag, weak=True):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    return response


_GET_TASK_ROUTE = next(route for route in router.routes if getattr(route, "name", None) == "get_task")


def _task_response(request: Request, task: TaskRow, status_code: int = status.HTTP_200_OK) -> Response:
    response = _json(task.json, status_code)
    response.headers["ETag"] = _etag(request, task.id, task.version)
    return response


_WRITTEN: dict[int | str, dict[str, Any]] = {**_WRITE_RESPONSES, 200: {"headers": _ETAG_HEADER}}


async def _write(
    request: Request,
    connection: UserConnection,
    subject: str,
    task_id: int,
    if_match: str | None,
    values: dict[str, Any],
) -> Response:
    """PUT and PATCH: set `values` (model field names) on the task, after If-Match."""
    await _check_if_match(request, connection, if_match, subject, task_id)
    return _task_response(request, await service.update_task(connection, subject, task_id, values))


@router.put("/{task_id}", response_model=TaskPublic, responses=_WRITTEN)
async def replace_task(
    task_id: TaskId,
    body: TaskReplace,
    request: Request,
    connection: UserConnection,
    subject: CurrentSubject,
    if_match: IfMatch = None,
) -> Response:
    """Replace a task's fields (those left out take their defaults)."""
    return await _write(request, connection, subject, task_id, if_match, body.model_dump())


@router.patch("/{task_id}", response_model=TaskPublic, responses=_WRITTEN)
async def update_task(
    task_id: TaskId,
    body: TaskUpdate,
    request: Request,
    connection: UserConnection,
    subject: CurrentSubject,
    if_match: IfMatch = None,
) -> Response:
    """Change some of a task's fields."""
    return await _write(request, connection, subject, task_id, if_match, body.model_dump(exclude_unset=True))


@router.patch("/{task_id}/complete", response_model=TaskPublic, responses=_WRITTEN)
async def toggle_task(
    task_id: TaskId,
    request: Request,
    connection: UserConnection,
    subject: CurrentSubject,
    if_match: IfMatch = None,
) -> Response:
    """Toggle a task between pending and completed."""
    await _check_if_match(request, connection, if_match, subject, task_id)
    return _task_response(request, await service.toggle_task(connection, subject, task_id))


@router.delete("/{task_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_WRITE_RESPONSES)
async def delete_task(
    task_id: TaskId,
    request: Request,
    connection: UserConnection,
    subject: CurrentSubject,
    if_match: IfMatch = None,
) -> None:
    """Delete a task."""
    await _check_if_match(request, connection, if_match, subject, task_id)
    await service.delete_task(connection, subject, task_id)
