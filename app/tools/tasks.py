"""The task tools. Each call takes its caller from the verified bearer token (never from
an argument), opens a transaction acting for them (app/session.py) and runs the
statements of app/service/tasks.py, the very ones the REST routes run: no SQL here.

Failures are ToolErrors, which the client's model reads: a task of another user is
"Task not found", as a missing one is; a database error says what REST would say
(app.errors.database_fault), with no SQL, constraint name or trace.
"""

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, NotRequired, TypeVar, cast

from asyncpg import Connection
from fastapi import FastAPI
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

# pydantic takes a TypedDict of typing's only from Python 3.12.
from typing_extensions import TypedDict

from app.errors import DATABASE_ERRORS, NotFound, database_fault
from app.models import (
    TAGS_PER_TASK,
    Description,
    DueAt,
    Priority,
    Recurrence,
    SearchText,
    TagName,
    Tags,
    TaskCreate,
    TaskUpdate,
    Title,
)
from app.ratelimit import RateLimiter
from app.service import tasks as service
from app.service.tasks import SortField, SortOrder, StatusFilter, TaskQuery, TaskRow
from app.session import UserSessions

log = logging.getLogger(__name__)

TaskId = Annotated[int, Field(ge=1, le=2**63 - 1, description="The task's id (`id` in list_tasks)")]
# Literals rather than the service's enums: the tools' arguments are validated strictly,
# and a strict enum takes only its own members, not their JSON strings.
StatusName = Literal["all", "pending", "completed"]
SortName = Literal["created", "updated", "title", "due", "priority", "relevance"]
OrderName = Literal["asc", "desc"]
Clearable = Literal["description", "due_at", "recurrence"]


class TaskChange(TypedDict):
    """What a write did, and to which task."""

    task_id: int
    status: Literal["created", "completed", "updated", "deleted"]
    title: str
    # Completing a recurring task made this one, its next occurrence.
    next_task_id: NotRequired[int]


# A date-time as the database writes it for REST too (ISO 8601, UTC), passed on as text:
# parsed and written again, it would lose its zero microseconds and differ from REST's.
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Task(TypedDict):
    """A task, as TaskPublic (app.models) has it but for its owner: the caller, always,
    and a user id is nothing a tool takes or shows."""

    id: int
    title: str
    description: str | None
    completed: bool
    priority: Priority
    due_at: Timestamp | None
    tags: list[str]
    recurrence: Recurrence | None
    next_task_id: int | None
    created_at: Timestamp
    updated_at: Timestamp


class TaskPage(TypedDict):
    """A page of the caller's tasks, and how many pass the filters in all."""

    tasks: list[Task]
    total: int


_Model = TypeVar("_Model", bound=BaseModel)


def _validated(model: type[_Model], values: dict[str, Any]) -> _Model:
    """`values` as the REST body `model`, with its rules across fields (a recurring task
    needs a due date); a ToolError naming each field that breaks one."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(map(str, error['loc'])) or 'arguments'}: {error['msg']}" for error in exc.errors()
        ]
        raise ToolError("; ".join(problems)) from None


def _change(row: TaskRow, status: Literal["created", "completed", "updated", "deleted"]) -> TaskChange:
    task = json.loads(row.json)
    change = TaskChange(task_id=row.id, status=status, title=task["title"])
    if status != "deleted" and task["next_task_id"] is not None:
        change["next_task_id"] = task["next_task_id"]
    return change


class TaskTools:
    """The tools of one app: they reach its database through app.state.user_sessions."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def tools(self) -> list[tuple[Callable[..., Awaitable[Any]], ToolAnnotations]]:
        """Each tool, with what it tells a client about its effects."""

        def effects(
            *, read_only: bool = False, destructive: bool = False, idempotent: bool = False
        ) -> ToolAnnotations:
            return ToolAnnotations(
                read_only_hint=read_only,
                destructive_hint=destructive,
                idempotent_hint=idempotent,
                # The user's own task list, nothing outside it.
                open_world_hint=False,
            )

        return [
            (self.add_task, effects()),
            (self.list_tasks, effects(read_only=True, idempotent=True)),
            (self.complete_task, effects(idempotent=True)),
            (self.update_task, effects(destructive=True, idempotent=True)),
            (self.delete_task, effects(destructive=True, idempotent=True)),
        ]

    @asynccontextmanager
    async def _as_caller(self, *, writes: bool) -> AsyncIterator[tuple[str, Connection]]:
        """The caller (the token's subject) and a transaction acting for them, which
        commits on exit; errors become ToolErrors."""
        token = get_access_token()
        if token is None or not token.subject:
            # Not reached: the SDK's bearer middleware refuses /mcp requests without a token.
            raise ToolError("authentication required")
        subject = token.subject
        if writes:
            await self._limit_writes(subject)
        sessions: UserSessions = self._app.state.user_sessions
        try:
            async with sessions.connection(subject) as connection:
                yield subject, connection
        except NotFound as exc:
            raise ToolError(exc.detail) from None
        except DATABASE_ERRORS as exc:
            fault = database_fault(exc)
            if fault is None:
                raise
            raise ToolError(f"{fault.field}: {fault.detail}" if fault.field else fault.detail) from None

    async def _limit_writes(self, subject: str) -> None:
        """RATE_LIMIT_WRITES per user, counted together with the user's REST writes."""
        limiter: RateLimiter = self._app.state.rate_limiter
        retry_after = await limiter.writes_retry_after(subject)
        if retry_after is not None:
            log.warning("rate limited writes of a user")
            raise ToolError(f"too many changes, slow down: try again in {retry_after} s")

    async def add_task(
        self,
        title: Annotated[Title, Field(description="1 to 200 characters")],
        description: Annotated[Description | None, Field(description="Up to 1000 characters")] = None,
        priority: Priority = "medium",
        due_at: Annotated[
            DueAt | None,
            Field(description="ISO 8601 date-time with an offset, e.g. 2027-03-01T09:30:00+02:00"),
        ] = None,
        tags: Tags | None = None,
        recurrence: Annotated[
            Recurrence | None,
            Field(description="Needs due_at; completing the task then makes the next one, a period later"),
        ] = None,
    ) -> TaskChange:
        """Add a task to your list."""
        values = {
            "title": title,
            "description": description,
            "priority": priority,
            "due_at": due_at,
            "tags": tags or [],
            "recurrence": recurrence,
        }
        body = _validated(TaskCreate, values)
        async with self._as_caller(writes=True) as (subject, connection):
            row = await service.create_task(connection, subject, body)
        return _change(row, "created")

    async def list_tasks(
        self,
        status: StatusName = "all",
        priority: Annotated[list[Priority] | None, Field(description="Any of these priorities")] = None,
        tag: Annotated[
            list[TagName] | None,
            Field(max_length=TAGS_PER_TASK, description="Tasks that carry all these tags"),
        ] = None,
        q: Annotated[
            SearchText | None,
            Field(description="Words the title or description has, or starts with (`groc` finds groceries)"),
        ] = None,
        due_before: Annotated[
            DueAt | None, Field(description="Due before this date-time (with an offset)")
        ] = None,
        due_after: Annotated[
            DueAt | None, Field(description="Due after this date-time (with an offset)")
        ] = None,
        overdue: Annotated[bool, Field(description="Only tasks due in the past and not completed")] = False,
        sort: Annotated[SortName, Field(description="`relevance` needs `q`")] = "created",
        order: Annotated[
            OrderName | None,
            Field(description="Default: desc for created, updated, priority, relevance; asc for title, due"),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=100)] = 50,
        offset: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0,
    ) -> TaskPage:
        """List your tasks, newest first unless sorted otherwise; `total` counts all that pass the filters."""
        query = TaskQuery(
            StatusFilter(status),
            priority,
            tag,
            due_before,
            due_after,
            overdue,
            q,
            SortField(sort),
            SortOrder(order) if order else None,
            limit,
            offset,
        )
        async with self._as_caller(writes=False) as (subject, connection):
            try:
                body, total = await service.list_tasks(connection, subject, query)
            except ValueError as exc:  # sort=relevance without q
                raise ToolError(str(exc)) from None
        tasks = [
            {name: value for name, value in task.items() if name != "user_id"} for task in json.loads(body)
        ]
        # The SDK validates the answer against TaskPage (the tool's outputSchema).
        return TaskPage(tasks=cast(list[Task], tasks), total=total)

    async def complete_task(self, task_id: TaskId) -> TaskChange:
        """Mark one of your tasks completed. For a recurring task, the answer's
        next_task_id is its next occurrence, made in the same step."""
        async with self._as_caller(writes=True) as (subject, connection):
            row = await service.update_task(connection, subject, task_id, {"completed": True})
        return _change(row, "completed")

    async def update_task(
        self,
        task_id: TaskId,
        title: Annotated[Title | None, Field(description="1 to 200 characters")] = None,
        description: Annotated[Description | None, Field(description="Up to 1000 characters")] = None,
        completed: bool | None = None,
        priority: Priority | None = None,
        due_at: Annotated[DueAt | None, Field(description="ISO 8601 date-time with an offset")] = None,
        tags: Annotated[
            Tags | None, Field(description="The whole list, replacing the task's tags; [] removes them")
        ] = None,
        recurrence: Annotated[Recurrence | None, Field(description="Needs a due date")] = None,
        clear: Annotated[
            list[Clearable] | None,
            Field(description="Fields to remove: the description, the due date, the recurrence"),
        ] = None,
    ) -> TaskChange:
        """Change some of a task's fields: those given change, those left out or null stay as they are."""
        given: dict[str, object] = {
            name: value
            for name, value in {
                "title": title,
                "description": description,
                "completed": completed,
                "priority": priority,
                "due_at": due_at,
                "tags": tags,
                "recurrence": recurrence,
            }.items()
            if value is not None
        }
        for name in clear or []:
            if name in given:
                raise ToolError(f"{name}: given and cleared at once")
            given[name] = None
        if not given:
            raise ToolError("nothing to change: give a field, or clear one")
        body = _validated(TaskUpdate, given)
        async with self._as_caller(writes=True) as (subject, connection):
            row = await service.update_task(connection, subject, task_id, body.model_dump(exclude_unset=True))
        return _change(row, "updated")

    async def delete_task(self, task_id: TaskId) -> TaskChange:
        """Delete one of your tasks."""
        async with self._as_caller(writes=True) as (subject, connection):
            row = await service.get_task(connection, subject, task_id)
            await service.delete_task(connection, subject, task_id)
        return _change(row, "deleted")
