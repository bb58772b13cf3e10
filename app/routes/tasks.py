"""Task routes. Thin: the session is already scoped to the caller by row-level security.

The explicit `user_id == subject` filters below are defense in depth and a hint to the
planner; tests/test_rls.py proves isolation holds without them.

PostgreSQL writes the response bodies: each statement returns its task (or page of
tasks) already as JSON text in the shape of TaskPublic, which the route sends as it is.
Building ORM objects and validating and serializing them again in Python cost more than
the query itself (bench/README.md has the numbers); `response_model` still documents the
shape, and the route tests hold every field to it.
"""

from enum import StrEnum
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from sqlalchemy import ColumnElement, Text, cast, delete, func, insert, not_, select, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.sql.expression import ColumnCollection

from app.auth import CurrentSubject, require_path_owner
from app.errors import NotFound
from app.models import Task, TaskCreate, TaskPublic, TaskReplace, TaskUpdate
from app.session import UserSession

router = APIRouter(
    prefix="/api/{user_id}/tasks",
    tags=["tasks"],
    dependencies=[Depends(require_path_owner)],
    responses={
        401: {"description": "Missing or invalid bearer token"},
        403: {"description": "The token's subject is not the user_id in the path"},
    },
)

TaskId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The task's id")]
TASK_NOT_FOUND = "Task not found"
_NOT_FOUND_RESPONSE = {404: {"description": TASK_NOT_FOUND}}


class StatusFilter(StrEnum):
    all = "all"
    pending = "pending"
    completed = "completed"


class SortField(StrEnum):
    created = "created"
    updated = "updated"
    title = "title"


class SortOrder(StrEnum):
    asc = "asc"
    desc = "desc"


_SORT_COLUMNS = {
    SortField.created: Task.created_at,
    SortField.updated: Task.updated_at,
    SortField.title: Task.title,
}


# ISO 8601 in UTC whatever the session's TimeZone, e.g. 2026-11-21T06:30:13.430928Z.
_UTC_TIMESTAMP = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def _task_json(columns: ColumnCollection[str, ColumnElement[object]]) -> ColumnElement[object]:
    """A task row as a JSON object of TaskPublic's fields. jsonb, because json's text form
    spaces every colon (`"id" : 1`); jsonb prints `"id": 1` (and orders keys its own way)."""
    fields: list[object] = []
    for name in TaskPublic.model_fields:
        column = columns[name]
        if name in ("created_at", "updated_at"):
            column = func.to_char(func.timezone("UTC", column), _UTC_TIMESTAMP)
        fields += [name, column]
    return func.jsonb_build_object(*fields)


_TASK_JSON = cast(_task_json(Task.__table__.c), Text)


def _json(content: str, status_code: int = status.HTTP_200_OK) -> Response:
    return Response(content=content, status_code=status_code, media_type="application/json")


def _owner_filter(subject: str) -> list[ColumnElement[bool]]:
    return [Task.user_id == subject]


def _own(subject: str, task_id: int) -> list[ColumnElement[bool]]:
    return [Task.id == task_id, *_owner_filter(subject)]


def _page_links(request: Request, total: int, limit: int, offset: int) -> str | None:
    """RFC 8288 Link header with the next and previous pages that exist."""
    links = []
    if offset + limit < total:
        url = request.url.include_query_params(offset=offset + limit, limit=limit)
        links.append(f'<{url}>; rel="next"')
    if offset > 0:
        url = request.url.include_query_params(offset=max(offset - limit, 0), limit=limit)
        links.append(f'<{url}>; rel="prev"')
    return ", ".join(links) or None


@router.get(
    "",
    response_model=list[TaskPublic],
    responses={
        200: {
            "headers": {
                "X-Total-Count": {"schema": {"type": "integer"}},
                "Link": {"schema": {"type": "string"}},
            }
        }
    },
)
async def list_tasks(
    request: Request,
    session: UserSession,
    subject: CurrentSubject,
    status_filter: Annotated[StatusFilter, Query(alias="status")] = StatusFilter.all,
    sort: SortField = SortField.created,
    order: Annotated[SortOrder | None, Query(description="Default: desc for dates, asc for title")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """List your tasks."""
    conditions = _owner_filter(subject)
    if status_filter is not StatusFilter.all:
        conditions.append(Task.completed.is_(status_filter is StatusFilter.completed))
    if order is None:
        order = SortOrder.asc if sort is SortField.title else SortOrder.desc
    column = _SORT_COLUMNS[sort]
    direction = (lambda c: c.asc()) if order is SortOrder.asc else (lambda c: c.desc())

    page = (
        select(Task.__table__, func.count().over().label("total"))
        .where(*conditions)
        .order_by(direction(column), direction(Task.id))
        .limit(limit)
        .offset(offset)
        .subquery("page")
    )
    ordering = [direction(page.c[column.key]), direction(page.c.id)]
    body, total = (
        await session.execute(
            select(
                cast(func.jsonb_agg(aggregate_order_by(_task_json(page.c), *ordering)), Text),
                func.max(page.c.total),
            )
        )
    ).one()
    if body is None:
        body = "[]"
        # Past the last page the window count has no row to ride on.
        total = offset and await session.scalar(select(func.count()).select_from(Task).where(*conditions))
    headers = {"X-Total-Count": str(total or 0)}
    if links := _page_links(request, total or 0, limit, offset):
        headers["Link"] = links
    return Response(content=body, media_type="application/json", headers=headers)


@router.post("", response_model=TaskPublic, status_code=status.HTTP_201_CREATED)
async def create_task(
    body: TaskCreate, request: Request, session: UserSession, subject: CurrentSubject
) -> Response:
    """Create a task."""
    task_id, task = (
        await session.execute(
            insert(Task).values(user_id=subject, **body.model_dump()).returning(Task.id, _TASK_JSON)
        )
    ).one()
    # Percent-encoded: a user id may hold any character, and a header only Latin-1.
    owner = quote(subject, safe="")
    response = _json(task, status.HTTP_201_CREATED)
    response.headers["Location"] = str(request.url_for("get_task", user_id=owner, task_id=str(task_id)))
    return response


@router.get("/{task_id}", response_model=TaskPublic, responses=_NOT_FOUND_RESPONSE)
async def get_task(task_id: TaskId, session: UserSession, subject: CurrentSubject) -> Response:
    """Get one task."""
    task = await session.scalar(select(_TASK_JSON).where(*_own(subject, task_id)))
    if task is None:
        raise NotFound(TASK_NOT_FOUND)
    return _json(task)


async def _update(session: UserSession, subject: str, task_id: int, **values: object) -> Response:
    task = await session.scalar(
        update(Task)
        .where(*_own(subject, task_id))
        .values(**values, updated_at=func.now())
        .returning(_TASK_JSON)
    )
    if task is None:
        raise NotFound(TASK_NOT_FOUND)
    return _json(task)


@router.put("/{task_id}", response_model=TaskPublic, responses=_NOT_FOUND_RESPONSE)
async def replace_task(
    task_id: TaskId, body: TaskReplace, session: UserSession, subject: CurrentSubject
) -> Response:
    """Replace a task's title, description and completed flag."""
    return await _update(session, subject, task_id, **body.model_dump())


@router.patch("/{task_id}", response_model=TaskPublic, responses=_NOT_FOUND_RESPONSE)
async def update_task(
    task_id: TaskId, body: TaskUpdate, session: UserSession, subject: CurrentSubject
) -> Response:
    """Change some of a task's fields."""
    return await _update(session, subject, task_id, **body.model_dump(exclude_unset=True))


@router.patch("/{task_id}/complete", response_model=TaskPublic, responses=_NOT_FOUND_RESPONSE)
async def toggle_task(task_id: TaskId, session: UserSession, subject: CurrentSubject) -> Response:
    """Toggle a task between pending and completed."""
    return await _update(session, subject, task_id, completed=not_(Task.completed))


@router.delete("/{task_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND_RESPONSE)
async def delete_task(task_id: TaskId, session: UserSession, subject: CurrentSubject) -> None:
    """Delete a task."""
    deleted = await session.scalar(delete(Task).where(*_own(subject, task_id)).returning(Task.id))
    if deleted is None:
        raise NotFound(TASK_NOT_FOUND)
