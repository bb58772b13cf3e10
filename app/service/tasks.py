"""The task statements, written once: the REST routes, the MCP tools and the chat
assistant all read and change tasks through these functions, on the connection that
app/session.py opened for the caller (one transaction, the signed user context set).

Each operation sends fixed SQL, with the caller's id as $1. Every table is named with its
schema (public.tasks): a name that resolved through the session's search_path could be
shadowed by an object of the caller's (docs/security.md). The explicit owner filter in
them (OWNER_FILTER, for each table a statement reads) is defense in depth and the
planner's way to the (user_id, ...) indexes; tests/test_rls.py swaps it for one that
passes every row and shows that isolation holds without it.

PostgreSQL writes the answers: each statement returns its task (or page of tasks)
already as JSON text in the shape of TaskPublic, which the REST routes send as they are.
Building ORM objects and validating and serializing them again in Python cost more than
the query itself (bench/README.md, "Optimisation log").
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple, cast

from asyncpg import Connection, Record

from app.errors import NotFound
from app.models import TaskCreate, TaskPublic, fold_tag
from app.service.paging import page_total

TASK_NOT_FOUND = "Task not found"


class TaskRow(NamedTuple):
    """One task as a statement answers it."""

    id: int
    json: str  # TaskPublic, as JSON text
    version: str  # the row's xmin: what an ETag is made of


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


def _public(row: str) -> str:
    """A subquery of TaskPublic's fields of `row` (a tasks row), in TaskPublic's order:
    row_to_json writes it as the response, compact as FastAPI writes JSON. The tags are
    the row's own copy of them (tag_names, kept by app.set_task_tags and
    app.refresh_task_tags), so an answer reads no table but tasks."""
    fields = []
    for name in TaskPublic.model_fields:
        value = f"{row}.{name}"
        if name in ("created_at", "updated_at", "due_at"):
            value = f"to_char({value} at time zone 'UTC', '{_UTC_TIMESTAMP}')"
        elif name == "tags":
            value = f"{row}.tag_names"
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
# {query} the search's query made of it.
_OPTIONAL_FILTERS = {
    "priority": "tasks.priority = any(${n}::task_priority[])",
    "due_before": "tasks.due_at < ${n}",
    "due_after": "tasks.due_at > ${n}",
    # All of the tags (${n}, their folded names), matched on the task's own copy of its
    # tags' folded names: the user's tasks are read through a (user_id, ...) index, as
    # for a search, and task_tags and tags are not read at all.
    "tag": "tasks.tag_keys @> ${n}::text[]",
    # The user's tasks are read through a (user_id, ...) index and each is matched
    # here: a search reads no other user's rows or index entries (bench/README.md).
    "q": _SEARCH_VECTOR + " @@ {query}",
}


# The filters whose tasks a list finds once for its page and its count (_list_sql).
_FOUND_ONCE = {"q"}


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
        conditions.append(condition.format(n=n, query=_search_query(n)))
    if overdue:
        conditions.append("tasks.due_at < statement_timestamp() and not tasks.completed")
    where = "where " + " and ".join(conditions)
    if sort is SortField.relevance:
        sort_key = f"ts_rank({_SEARCH_VECTOR}, {_search_query(params['q'])})"
    else:
        sort_key = _SORT_COLUMNS[sort]
    # Tasks with no due date come last whichever the order.
    nulls = " nulls last" if sort is SortField.due else ""

    if _FOUND_ONCE & params.keys():
        # Found once, then paged and counted, rather than by a scan for the page and
        # another for the count: a search computes each of the user's tasks' text-search
        # vector, and the page read every task that matches already, to sort them.
        source = f"matched as materialized (select tasks.* from public.tasks tasks {where}), "  # noqa: S608
        rows = "matched tasks"
        count = "select count(*) from matched"
    else:
        # The page reads only its own rows, in index order; the count is a scan of its
        # own, of the index alone where the table is vacuumed, rather than of every row
        # the user has.
        source = ""
        rows = f"public.tasks tasks {where}"
        count = f"select count(*) from {rows}"  # noqa: S608
    page = (
        f"select tasks.*, {sort_key} as sort_key from {rows}"  # noqa: S608
        f" order by {sort_key} {direction}{nulls}, tasks.id {direction} limit $2 offset $3"
    )
    return (
        f"with {source}page as ({page})"  # noqa: S608
        # string_agg rather than json_agg, which puts a line break between elements.
        " select coalesce('[' || string_agg(row_to_json(p)::text, ','"
        f" order by page.sort_key {direction}{nulls}, page.id {direction}) || ']', '[]'),"
        f" {page_total('count(*)', count, '$2', '$3')}"
        f" from page, lateral ({_public('page')}) p"
    )


# The columns a request's body sets directly; tags go through app.set_task_tags.
_CREATED = ("user_id", *(name for name in TaskCreate.model_fields if name != "tags"))


@cache
def _create_sql() -> str:
    """Inserts a task, answering it as _one does. A task has no tags when it is inserted:
    create_task gives it its tags afterwards, then reads it again."""
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


def _spawns(completed: str) -> str:
    """Whether the write just made a recurring task completed (`completed`, a condition on
    `t`, the row written, and `old`) that has no next occurrence yet. Under a concurrent
    write of the same task the update waits for the row and then sees its latest version,
    next_task_id included, so two requests completing it at once still make one successor
    (tests/routes/test_recurrence.py). A series ends where its next due date would be past
    9999 in UTC, which no answer could show as a date-time (app.models.DueAt refuses it as
    input)."""
    return (
        f", ({completed} and t.recurrence is not null and t.next_task_id is null"
        f" and {_next_due('t')} < timestamptz '10000-01-01 00:00:00+00')"
    )


def _updating(owner: str, assignments: str) -> str:
    """Changes task $2 with `assignments` (each ending ", "), answering its rows as _one
    takes them."""
    return (
        f"update public.tasks tasks set {assignments}updated_at = now()"  # noqa: S608
        f" where tasks.id = $2 and {owner} returning *, {_VERSION}"
    )


@cache
def _update_sql(owner_filter: str, assignments: str) -> str:
    """Changes task $2 with `assignments`; answers it as _one does, and whether its next
    occurrence is due to be made (_spawn_sql): whether the write completed it, against
    the task as the statement began (`old`)."""
    owner = _owner(owner_filter, "tasks")
    return _one(
        _updating(owner, assignments),
        before=f"old as (select tasks.completed from public.tasks tasks where tasks.id = $2 and {owner}), ",  # noqa: S608
        more=_spawns("t.completed and not old.completed"),
        join=", old",
    )


@cache
def _toggle_sql(owner_filter: str) -> str:
    """Toggles task $2 between pending and completed, answering as _update_sql does. A
    toggle completes a task exactly when it leaves it completed, so it needs no read of
    the task as the statement began, whose policy would check the signed context once
    more (bench/README.md round 12)."""
    owner = _owner(owner_filter, "tasks")
    return _one(_updating(owner, "completed = not tasks.completed, "), more=_spawns("t.completed"))


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
        " (user_id, title, description, priority, due_at, recurrence, recurrence_day, tag_names, tag_keys)"
        " select p.user_id, p.title, p.description, p.priority,"
        f" {_next_due('p')}, p.recurrence, {_anchor('p')}, p.tag_names, p.tag_keys"
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
    link, in the same statement: a change of that task like any other, so its updated_at
    changes too. The statement clears the link rather than the foreign key (ON DELETE
    SET NULL), which a table sharded by user_id cannot have (docs/scale-out.md); the key
    is checked at the statement's end, once the link is gone."""
    owner = _owner(owner_filter, "tasks")
    return (
        "with gone as (delete from public.tasks tasks"  # noqa: S608
        f" where tasks.id = $2 and {owner} returning tasks.id),"
        " unlinked as (update public.tasks tasks set next_task_id = null, updated_at = now()"
        f" where tasks.next_task_id in (select gone.id from gone) and {owner})"
        " select gone.id from gone"
    )


# $1 the task, $2 the tags' names, $3 their folded forms. No user: the function reads
# the verified context, as the policies do.
_SET_TAGS = "select app.set_task_tags($1, $2, $3)"


# --- the operations ------------------------------------------------------------------


@dataclass(frozen=True)
class TaskQuery:
    """What a list asks for. Values as validated by the caller (app.models' types)."""

    status: StatusFilter = StatusFilter.all
    priority: Sequence[str] | None = None
    tag: Sequence[str] | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    overdue: bool = False
    q: str | None = None
    sort: SortField = SortField.created
    order: SortOrder | None = None  # the sort's default
    limit: int = 50
    offset: int = 0


async def list_tasks(connection: Connection, subject: str, query: TaskQuery) -> tuple[str, int]:
    """The page (a JSON array of TaskPublic) and how many tasks pass the filters.
    `sort=relevance` needs `q` (ValueError without it)."""
    if query.sort is SortField.relevance and query.q is None:
        raise ValueError("sort=relevance needs q")
    order = query.order or _DEFAULT_ORDER[query.sort]
    folded = list(dict.fromkeys(fold_tag(name) for name in query.tag)) if query.tag else None
    given = {
        "priority": query.priority,
        "due_before": query.due_before,
        "due_after": query.due_after,
        "tag": folded,
        "q": query.q,
    }
    filters = tuple(name for name, value in given.items() if value is not None)
    statement = _list_sql(OWNER_FILTER, query.status, query.sort, order, filters, query.overdue)
    values = [given[name] for name in filters]
    # An aggregate over the page: always one row.
    body, total = cast(
        Record, await connection.fetchrow(statement, subject, query.limit, query.offset, *values)
    )
    return body, total


async def create_task(connection: Connection, subject: str, body: TaskCreate) -> TaskRow:
    values = body.model_dump()
    tags = values.pop("tags")
    # An insert ... returning of one row: a row, or an error.
    row = TaskRow(*cast(Record, await connection.fetchrow(_create_sql(), subject, *values.values())))
    if tags:
        await _set_tags(connection, row.id, tags)
        row = await get_task(connection, subject, row.id)
    return row


async def get_task(connection: Connection, subject: str, task_id: int) -> TaskRow:
    row = await connection.fetchrow(_get_sql(OWNER_FILTER), subject, task_id)
    if row is None:
        raise NotFound(TASK_NOT_FOUND)
    return TaskRow(*row)


async def lock_task(connection: Connection, subject: str, task_id: int) -> str:
    """The task's version, its row locked until the transaction ends, so that no other
    request changes it between a check of the version (If-Match) and the write."""
    version = await connection.fetchval(_lock_sql(OWNER_FILTER), subject, task_id)
    if version is None:
        raise NotFound(TASK_NOT_FOUND)
    return cast(str, version)


async def update_task(connection: Connection, subject: str, task_id: int, values: dict[str, Any]) -> TaskRow:
    """Sets `values` (fields of TaskReplace or TaskUpdate, tags included) on the task."""
    values = dict(values)
    tags = values.pop("tags", None)
    if tags is not None:
        await _set_tags(connection, task_id, tags)
    statement = _update_sql(OWNER_FILTER, _set(tuple(values)))
    return await _update(connection, statement, subject, task_id, *values.values())


async def toggle_task(connection: Connection, subject: str, task_id: int) -> TaskRow:
    """Between pending and completed."""
    return await _update(connection, _toggle_sql(OWNER_FILTER), subject, task_id)


async def delete_task(connection: Connection, subject: str, task_id: int) -> None:
    if await connection.fetchval(_delete_sql(OWNER_FILTER), subject, task_id) is None:
        raise NotFound(TASK_NOT_FOUND)


async def _set_tags(connection: Connection, task_id: int, names: list[str]) -> None:
    """Gives the task exactly these tags (names once each, case-insensitively); NotFound
    when the caller has no such task."""
    keys = [fold_tag(name) for name in names]
    if not await connection.fetchval(_SET_TAGS, task_id, names, keys):
        raise NotFound(TASK_NOT_FOUND)


async def _update(
    connection: Connection, statement: str, subject: str, task_id: int, *values: object
) -> TaskRow:
    """Runs an update of the task (_update_sql or _toggle_sql); if it completed a
    recurring task, makes the next occurrence, in the same transaction."""
    row = await connection.fetchrow(statement, subject, task_id, *values)
    if row is None:
        raise NotFound(TASK_NOT_FOUND)
    if row[3]:
        # The row is locked by the update: no other request can complete it meanwhile.
        row = cast(Record, await connection.fetchrow(_spawn_sql(OWNER_FILTER), subject, task_id))
    return TaskRow(*row[:3])
