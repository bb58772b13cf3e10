"""Task routes. Thin: the connection is already scoped to the caller by row-level security.

Each route sends one fixed statement, written here in SQL, with the caller's id as $1.
Every table is named with its schema (public.tasks): a name that resolved through the
session's search_path could be shadowed by an object of the caller's (docs/security.md).
The explicit owner filter in them (OWNER_FILTER, for each table a statement reads) is
defense in depth and the planner's way to the (user_id, ...) indexes; tests/test_rls.py
swaps it for one that passes every row and shows that isolation holds without it.

PostgreSQL writes the response bodies: each statement returns its task (or page of
tasks) already as JSON text in the shape of TaskPublic, which the route sends as it is.
Building ORM objects and validating and serializing them again in Python cost more than
the query itself (bench/README.md, "Optimisation log"); `response_model` still documents
the shape, and the route tests hold every field to it.
"""

import hashlib
import hmac
import re
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, cast
from urllib.parse import quote

from asyncpg import Record
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from app.auth import CurrentSubject, require_path_owner
from app.errors import NotFound
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
    fold_tag,
)
from app.session import UserConnection

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


class StatusFilter(StrEnum):
    all = "all"
    pending = "pending"
    completed = "completed"


class SortField(StrEnum):
    created = "created"
    updated = "updated"
    # The member shadows str.title, which nothing calls on a SortField; "title" is the
    # API's value.
    title = "title"  # type: ignore[assignment]
    due = "due"
    priority = "priority"
    # With q only: the best matches first.
    relevance = "relevance"


class SortOrder(StrEnum):
    asc = "asc"
    desc = "desc"


# --- the statements ------------------------------------------------------------------
# Composed from constants only (column names, the enums above), never from a request's
# values, which are all bound parameters: hence the `noqa: S608`s. Cached, so each
# variant is built once.

# {} is the table (its alias in the statement).
OWNER_FILTER = "{}.user_id = $1"


def _owner(owner_filter: str, table: str) -> str:
    return owner_filter.format(table)


_SORT_COLUMNS = {
    SortField.created: "tasks.created_at",
    SortField.updated: "tasks.updated_at",
    SortField.title: "tasks.title",
    SortField.due: "tasks.due_at",
    SortField.priority: "tasks.priority",
}
# Where `order` is not given: the newest first, titles A to Z, the soonest due first,
# the highest priority first.
_DEFAULT_ORDER = {
    SortField.created: SortOrder.desc,
    SortField.updated: SortOrder.desc,
    SortField.title: SortOrder.asc,
    SortField.due: SortOrder.asc,
    SortField.priority: SortOrder.desc,
    SortField.relevance: SortOrder.desc,
}
_STATUS_FILTERS = {
    StatusFilter.all: "",
    StatusFilter.pending: " and not tasks.completed",
    StatusFilter.completed: " and tasks.completed",
}
# ISO 8601 in UTC whatever the session's TimeZone, e.g. 2026-11-21T06:30:13.430928Z.
_UTC_TIMESTAMP = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def _tag_names(row: str) -> str:
    """The names of the tags task `row` carries, sorted as the API answers them."""
    return (
        "(select coalesce(array_agg(g.name order by g.folded, g.name), array[]::text[])"  # noqa: S608
        " from public.task_tags tt join public.tags g on g.user_id = tt.user_id and g.id = tt.tag_id"
        f" where tt.user_id = {row}.user_id and tt.task_id = {row}.id)"
    )


def _public(row: str) -> str:
    """A subquery of TaskPublic's fields of `row` (a tasks row), in TaskPublic's order:
    row_to_json writes it as the response, compact as FastAPI writes JSON."""
    fields = []
    for name in TaskPublic.model_fields:
        value = f"{row}.{name}"
        if name in ("created_at", "updated_at", "due_at"):
            value = f"to_char({value} at time zone 'UTC', '{_UTC_TIMESTAMP}')"
        elif name == "tags":
            value = _tag_names(row)
        fields.append(f"{value} as {name}")
    return "select " + ", ".join(fields)


def _one(statement: str, *, before: str = "", more: str = "", join: str = "") -> str:
    """`statement` (which yields tasks rows and their `version`, the row's xmin) answering
    its row's id, JSON and version. `before`: CTEs the statement uses ("name as (...), ");
    `more`: columns of `t` (the row) and of what `join` names (CTEs of one row each)."""
    return (
        f"with {before}t as ({statement})"  # noqa: S608
        f" select t.id, row_to_json(p)::text, t.version{more} from t{join}, lateral ({_public('t')}) p"
    )


# The row version an ETag is made of: xmin, which every update of the row changes.
_VERSION = "tasks.xmin::text as version"


# What full-text search matches (sql/task_functions.sql), and how well.
_SEARCH_VECTOR = "app.task_search_vector(tasks.title, tasks.description)"


def _search_query(n: int) -> str:
    # A subquery: the query is made once per statement, not once per row.
    return f"(select app.task_search_query(${n}))"


# The optional filters of a list, each one condition on its own bound parameter: their
# statement has $4, $5, ... in this order, for those given. {n} is the parameter,
# {owner} the owner filter of the table the condition names.
_OPTIONAL_FILTERS = {
    "priority": "tasks.priority = any(${n}::task_priority[])",
    "due_before": "tasks.due_at < ${n}",
    "due_after": "tasks.due_at > ${n}",
    # All of the tags: of the user's links to any of them, a task needs one per tag.
    # ${n} holds each folded name once.
    "tag": (
        "tasks.id in (select tt.task_id from public.task_tags tt"
        " join public.tags g on g.user_id = tt.user_id and g.id = tt.tag_id"
        " where {owner} and g.folded = any(${n}::text[])"
        " group by tt.task_id having count(*) = cardinality(${n}::text[]))"
    ),
    # The user's tasks are read through a (user_id, ...) index and each is matched
    # here: a search reads no other user's rows or index entries (bench/README.md).
    "q": _SEARCH_VECTOR + " @@ {query}",
}


@cache
def _list_sql(
    owner_filter: str,
    status_filter: StatusFilter,
    sort: SortField,
    order: SortOrder,
    filters: tuple[str, ...] = (),
    overdue: bool = False,
) -> str:
    """$1 the user, $2 limit, $3 offset, then one parameter per name in `filters` (keys
    of _OPTIONAL_FILTERS): the page as a JSON array, and the count of all the user's
    tasks that pass the filter."""
    direction = order.value
    conditions = [f"{_owner(owner_filter, 'tasks')}{_STATUS_FILTERS[status_filter]}"]
    params = {name: n for n, name in enumerate(filters, start=4)}
    for name, n in params.items():
        condition = _OPTIONAL_FILTERS[name]
        conditions.append(condition.format(n=n, owner=_owner(owner_filter, "tt"), query=_search_query(n)))
    if overdue:
        conditions.append("tasks.due_at < statement_timestamp() and not tasks.completed")
    where = "where " + " and ".join(conditions)
    if sort is SortField.relevance:
        sort_key = f"ts_rank({_SEARCH_VECTOR}, {_search_query(params['q'])})"
    else:
        sort_key = _SORT_COLUMNS[sort]
    # Tasks with no due date come last whichever the order.
    nulls = " nulls last" if sort is SortField.due else ""

    # The page reads only its own rows, in index order; the count is a scan of its own,
    # of the index alone where the table is vacuumed, rather than of every row the user has.
    page = (
        f"select tasks.*, {sort_key} as sort_key from public.tasks tasks {where}"  # noqa: S608
        f" order by {sort_key} {direction}{nulls}, tasks.id {direction} limit $2 offset $3"
    )
    return (
        f"with page as ({page})"  # noqa: S608
        # string_agg rather than json_agg, which puts a line break between elements.
        " select coalesce('[' || string_agg(row_to_json(p)::text, ','"
        f" order by page.sort_key {direction}{nulls}, page.id {direction}) || ']', '[]'),"
        f" (select count(*) from public.tasks tasks {where})"
        f" from page, lateral ({_public('page')}) p"
    )


# The columns a request's body sets directly; tags go through app.set_task_tags.
_CREATED = ("user_id", *(name for name in TaskCreate.model_fields if name != "tags"))


@cache
def _create_sql() -> str:
    values = ", ".join(f"${i}" for i in range(1, len(_CREATED) + 1))
    return _one(
        f"insert into public.tasks as tasks ({', '.join(_CREATED)}) values ({values})"  # noqa: S608
        f" returning *, {_VERSION}"
    )


@cache
def _get_sql(owner_filter: str) -> str:
    owner = _owner(owner_filter, "tasks")
    return _one(f"select *, {_VERSION} from public.tasks tasks where tasks.id = $2 and {owner}")  # noqa: S608


def _anchor(row: str) -> str:
    """The day of the month recurring task `row`'s series started on."""
    return f"coalesce({row}.recurrence_day, extract(day from {row}.due_at at time zone 'UTC')::int)"


def _next_due(row: str) -> str:
    """When the next occurrence of recurring task `row` is due (sql/task_functions.sql)."""
    return f"app.next_due({row}.due_at, {row}.recurrence::text, {_anchor(row)})"


# Whether the write just made a recurring task completed that has no next occurrence yet:
# `old` is the row as the statement began. Under a concurrent write of the same task the
# update waits for the row and then sees its latest version, next_task_id included, so
# two requests completing it at once still make one successor (tests/routes/test_recurrence.py).
# A series ends where its next due date would be past 9999 in UTC, which no answer could
# show as a date-time (app.models.DueAt refuses it as input).
_SPAWNS = (
    ", (t.completed and not old.completed and t.recurrence is not null and t.next_task_id is null"
    f" and {_next_due('t')} < timestamptz '10000-01-01 00:00:00+00')"
)


@cache
def _update_sql(owner_filter: str, assignments: str) -> str:
    """Changes task $2 with `assignments`; answers it as _one does, and whether its next
    occurrence is due to be made (_spawn_sql)."""
    owner = _owner(owner_filter, "tasks")
    return _one(
        f"update public.tasks tasks set {assignments}updated_at = now()"  # noqa: S608
        f" where tasks.id = $2 and {owner} returning *, {_VERSION}",
        before=f"old as (select tasks.completed from public.tasks tasks where tasks.id = $2 and {owner}), ",  # noqa: S608
        more=_SPAWNS,
        join=", old",
    )


@cache
def _spawn_sql(owner_filter: str) -> str:
    """Makes the next occurrence of task $2 (completed, recurring, none made yet): the
    same title, description, priority, tags and recurrence, due a period later; records
    it as the task's next_task_id and answers the task as _one does."""
    return _one(
        f"update public.tasks tasks set next_task_id = successor.id from successor"  # noqa: S608
        f" where tasks.id = $2 and {_owner(owner_filter, 'tasks')} returning tasks.*, {_VERSION}",
        before="successor as ("  # noqa: S608
        " insert into public.tasks as tasks"
        " (user_id, title, description, priority, due_at, recurrence, recurrence_day)"
        " select p.user_id, p.title, p.description, p.priority,"
        f" {_next_due('p')}, p.recurrence, {_anchor('p')}"
        " from public.tasks p"
        f" where p.id = $2 and {_owner(owner_filter, 'p')} and p.completed"
        " and p.recurrence is not null and p.next_task_id is null"
        " returning tasks.id),"
        " tagged as (insert into public.task_tags (user_id, task_id, tag_id)"
        " select tt.user_id, successor.id, tt.tag_id from public.task_tags tt, successor"
        f" where tt.task_id = $2 and {_owner(owner_filter, 'tt')}), ",
    )


def _set(fields: tuple[str, ...]) -> str:
    """Assignments of `fields` (model field names) to $3, $4, ... ."""
    numbers = {name: i for i, name in enumerate(fields, start=3)}
    assignments = "".join(f"{name} = ${i}, " for name, i in numbers.items())
    # A due date or a recurrence that the write changes starts a monthly series afresh,
    # on the due date's own day. Not the same values sent again, as a PUT of the task as
    # read sends them: that keeps the series' day (the 31st, now due on Feb 28).
    changed = [
        f"tasks.{name} is distinct from ${numbers[name]}"
        for name in ("due_at", "recurrence")
        if name in numbers
    ]
    if changed:
        assignments += (
            f"recurrence_day = case when {' or '.join(changed)} then null else tasks.recurrence_day end, "
        )
    return assignments


@cache
def _lock_sql(owner_filter: str) -> str:
    """The task's version, its row locked until the transaction ends: what If-Match is
    checked against, so that no other request changes it between the check and the write."""
    return (
        f"select {_VERSION} from public.tasks tasks"  # noqa: S608
        f" where tasks.id = $2 and {_owner(owner_filter, 'tasks')} for update"
    )


@cache
def _delete_sql(owner_filter: str) -> str:
    """Deletes task $2, answering its id. A task whose next occurrence it was loses the
    link (the foreign key sets next_task_id to null): a change of that task like any
    other, so its updated_at changes too, in the same statement."""
    owner = _owner(owner_filter, "tasks")
    return (
        "with gone as (delete from public.tasks tasks"  # noqa: S608
        f" where tasks.id = $2 and {owner} returning tasks.id),"
        " unlinked as (update public.tasks tasks set updated_at = now()"
        f" where tasks.next_task_id in (select gone.id from gone) and {owner})"
        " select gone.id from gone"
    )


# $1 the task, $2 the tags' names, $3 their folded forms. No user: the function reads
# the verified context, as the policies do.
_SET_TAGS = "select app.set_task_tags($1, $2, $3)"


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
    version = await connection.fetchval(_lock_sql(OWNER_FILTER), subject, task_id)
    if version is None:
        raise NotFound(TASK_NOT_FOUND)  # the same 404 as without If-Match
    if not _matches(if_match, _etag(request, task_id, version), weak=False):
        raise HTTPException(
            status.HTTP_412_PRECONDITION_FAILED,
            detail="the task has changed since that ETag: nothing changed",
        )


# --- the routes ----------------------------------------------------------------------


def _json(content: str, status_code: int = status.HTTP_200_OK) -> Response:
    return Response(content=content, status_code=status_code, media_type="application/json")


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
    connection: UserConnection,
    subject: CurrentSubject,
    status_filter: Annotated[StatusFilter, Query(alias="status")] = StatusFilter.all,
    priority: Annotated[
        list[Priority] | None, Query(description="Any of these priorities (repeat the parameter)")
    ] = None,
    due_before: Annotated[
        DueAt | None, Query(description="Due before this date-time (with an offset)")
    ] = None,
    due_after: Annotated[DueAt | None, Query(description="Due after this date-time (with an offset)")] = None,
    overdue: Annotated[bool, Query(description="Only tasks due in the past and not completed")] = False,
    tag: Annotated[
        list[TagName] | None,
        Query(max_length=TAGS_PER_TASK, description="Tasks that carry all these tags (repeat the parameter)"),
    ] = None,
    q: Annotated[
        SearchText | None,
        Query(description="Words the title or description has, or starts with (`groc` finds groceries)"),
    ] = None,
    sort: Annotated[SortField, Query(description="`relevance` needs `q`")] = SortField.created,
    order: Annotated[
        SortOrder | None,
        Query(
            description="Default: desc for created, updated, priority (high first) and relevance;"
            " asc for title and due"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """List your tasks."""
    if sort is SortField.relevance and q is None:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("query", "q"), "msg": "sort=relevance needs q", "input": None}]
        )
    if order is None:
        order = _DEFAULT_ORDER[sort]
    folded = list(dict.fromkeys(fold_tag(name) for name in tag)) if tag else None
    given = {"priority": priority, "due_before": due_before, "due_after": due_after, "tag": folded, "q": q}
    filters = tuple(name for name, value in given.items() if value is not None)
    statement = _list_sql(OWNER_FILTER, status_filter, sort, order, filters, overdue)
    values = [given[name] for name in filters]
    # An aggregate over the page: always one row.
    body, total = cast(Record, await connection.fetchrow(statement, subject, limit, offset, *values))
    headers = {"X-Total-Count": str(total)}
    if links := page_links(request, total, limit, offset):
        headers["Link"] = links
    return Response(content=body, media_type="application/json", headers=headers)


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
    values = body.model_dump()
    tags = values.pop("tags")
    row = await connection.fetchrow(_create_sql(), subject, *values.values())
    # An insert ... returning of one row: a row, or an error.
    task_id, task, version = cast(Record, row)
    if tags:
        await _set_tags(connection, task_id, tags)
        row = await connection.fetchrow(_get_sql(OWNER_FILTER), subject, task_id)
        task_id, task, version = cast(Record, row)
    # Percent-encoded: a user id may hold any character, and a header only Latin-1.
    owner = quote(subject, safe="")
    response = _json(task, status.HTTP_201_CREATED)
    response.headers["Location"] = str(request.url_for("get_task", user_id=owner, task_id=str(task_id)))
    response.headers["ETag"] = _etag(request, task_id, version)
    return response


async def _set_tags(connection: UserConnection, task_id: int, names: list[str]) -> None:
    """Gives the task exactly these tags (names once each, case-insensitively); 404 when
    the caller has no such task."""
    keys = [fold_tag(name) for name in names]
    if not await connection.fetchval(_SET_TAGS, task_id, names, keys):
        raise NotFound(TASK_NOT_FOUND)


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
    response = await _one_task(request, connection, _get_sql(OWNER_FILTER), subject, task_id)
    etag = response.headers["ETag"]
    if if_none_match is not None and _matches(if_none_match, etag, weak=True):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    return response


async def _one_task(
    request: Request, connection: UserConnection, statement: str, *values: object
) -> Response:
    row = await connection.fetchrow(statement, *values)
    if row is None:
        raise NotFound(TASK_NOT_FOUND)
    return _task_response(request, row)


def _task_response(request: Request, row: Record) -> Response:
    task_id, task, version = row[:3]
    response = _json(task)
    response.headers["ETag"] = _etag(request, task_id, version)
    return response


async def _update(
    request: Request,
    connection: UserConnection,
    subject: str,
    task_id: int,
    assignments: str,
    *values: object,
) -> Response:
    """Runs an update of the task (_update_sql); if it completed a recurring task, makes
    the next occurrence, in the same transaction."""
    row = await connection.fetchrow(_update_sql(OWNER_FILTER, assignments), subject, task_id, *values)
    if row is None:
        raise NotFound(TASK_NOT_FOUND)
    if row[3]:
        # The row is locked by the update: no other request can complete it meanwhile.
        row = cast(Record, await connection.fetchrow(_spawn_sql(OWNER_FILTER), subject, task_id))
    return _task_response(request, row)


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
    tags = values.pop("tags", None)
    if tags is not None:
        await _set_tags(connection, task_id, tags)
    return await _update(request, connection, subject, task_id, _set(tuple(values)), *values.values())


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
    return await _update(request, connection, subject, task_id, "completed = not tasks.completed, ")


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
    if await connection.fetchval(_delete_sql(OWNER_FILTER), subject, task_id) is None:
        raise NotFound(TASK_NOT_FOUND)
