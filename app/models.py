"""The tables of user data (tasks, tags, conversations with the assistant) and the shapes
they take on the way in and out of the API."""

import re
import unicodedata
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pydantic
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    EmailStr,
    StringConstraints,
    field_validator,
)
from pydantic_core import PydanticCustomError
from sqlalchemy import BigInteger, Column, DateTime, Enum, Identity, SmallInteger, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

if TYPE_CHECKING:
    # SQLModel types model_config as this, which it does not export (sqlmodel issue 2091).
    from sqlmodel._compat import SQLModelConfig

TITLE_MAX = 200
DESCRIPTION_MAX = 1000
TAG_MAX = 50
# What fold_tag makes of a name of TAG_MAX characters at most: NFKC makes 18 of one (U+FDFA).
TAG_FOLDED_MAX = TAG_MAX * 18
TAGS_PER_TASK = 20
CONVERSATION_TITLE_MAX = 200
CHAT_MESSAGE_MAX = 4000


def _refuse_lone_surrogates(value: object) -> object:
    # JSON's "\ud800" decodes to a lone UTF-16 surrogate, which no UTF-8 text can hold:
    # PostgreSQL could not store it, argon2 could not hash it.
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise PydanticCustomError(
                "string_unicode",
                "String should be valid Unicode, but has a lone surrogate at position {position}",
                {"position": exc.start},
            ) from None
    return value


# Every text field of a request body carries it, last in its Annotated: a before-validator
# runs ahead of the constraints to its left, whose errors and JSON schema stay as they are.
ValidUnicode = BeforeValidator(_refuse_lone_surrogates)

# PostgreSQL text cannot hold NUL, so it is refused here as invalid input, not later as an error.
_NO_NUL = r"^[^\x00]*$"
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX, pattern=_NO_NUL),
    ValidUnicode,
]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX, pattern=_NO_NUL), ValidUnicode]
# High first when sorted by priority (the database's enum orders them low < medium < high).
Priority = Annotated[Literal["low", "medium", "high"], ValidUnicode]
PRIORITIES: tuple[str, ...] = ("low", "medium", "high")


Recurrence = Annotated[Literal["daily", "weekly", "monthly"], ValidUnicode]
RECURRENCES: tuple[str, ...] = ("daily", "weekly", "monthly")

_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
# A tag's name: 1..50 characters once trimmed, no control characters (C0, DEL, C1).
TagName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TAG_MAX, pattern=_NO_CONTROL),
    ValidUnicode,
]


# What a person types to search their tasks (the list's `q`).
SearchText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=_NO_NUL), ValidUnicode
]


# What a person writes to the assistant: 1..4000 characters once trimmed, no NUL.
ChatMessageText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=CHAT_MESSAGE_MAX, pattern=_NO_NUL),
    ValidUnicode,
]

# Who wrote a message of a conversation (the database's enum message_role).
MessageRole = Literal["user", "assistant", "tool"]
MESSAGE_ROLES: tuple[str, ...] = ("user", "assistant", "tool")
# Why a user message got no answer (messages.failure; the check messages_failure_known).
MESSAGE_FAILURES: tuple[str, ...] = ("provider_error", "provider_timeout")


def fold_tag(name: str) -> str:
    """What tag names are matched by: "Work", "WORK" and "work" are one tag. Folded here
    rather than with the database's lower(), which on a database of the C locale (the
    embedded server's) folds ASCII letters only; every way in folds through this."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def _one_spelling_each(names: list[str]) -> list[str]:
    # Case-insensitively one of each, the first spelling kept.
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(fold_tag(name), name)
    return list(seen.values())


Tags = Annotated[
    list[TagName],
    pydantic.Field(max_length=TAGS_PER_TASK, description="Tag names; at most 20, matched case-insensitively"),
    AfterValidator(_one_spelling_each),
]


def _iso_text(value: object) -> object:
    # Pydantic's lax mode would also take a number, or a numeric string, as a Unix time.
    if isinstance(value, str) and not _ISO_DATE_TIME.match(value):
        raise PydanticCustomError("datetime_from_date_parsing", "Input should be an ISO 8601 date-time")
    if not isinstance(value, str | datetime):
        raise PydanticCustomError("datetime_type", "Input should be an ISO 8601 date-time string")
    return value


_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T")


def _within_years_1_to_9999_in_utc(value: datetime) -> datetime:
    # Due dates are stored and answered in UTC. 9999-12-31T23:00:00-05:00 is in year
    # 10000 there, answered with a five-digit year that no date-time parser (this API's
    # own included) takes back; 0001-01-01T00:00:00+14:00 is in 1 BC, answered as 1 AD.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "datetime_out_of_range", "Input should be in the years 1 to 9999 in UTC"
        ) from None
    return value


# An ISO 8601 date-time with an offset (a naive one is a 422 naming the field). Not
# strict, unlike the rest of a body (JSON has no date-time type, only its text), but
# text only.
DueAt = Annotated[
    AwareDatetime,
    pydantic.Field(strict=False),
    AfterValidator(_within_years_1_to_9999_in_utc),
    BeforeValidator(_iso_text),
    ValidUnicode,
]


# Columns every table of user data has, each model its own Column (SQLAlchemy binds a
# Column to one table).
def _owner_column() -> Any:
    """user_id, first in the primary key: every foreign key to the row names it too."""
    return Field(sa_column=Column(String(255), primary_key=True))


def _identity_column() -> Any:
    """id, from the database (generated always), second in the primary key."""
    return Field(default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True))


def _timestamp_column() -> Any:
    """created_at or updated_at: now() when the row is written."""
    return Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


class Task(SQLModel, table=True):
    __tablename__ = "tasks"

    # The owner. Row-level security compares it with app.current_user_id(); the API fills
    # it from the token, never from a request body. First in the primary key, which every
    # foreign key to a task names, so that no row of one user can point at another's.
    user_id: str = _owner_column()
    id: int | None = _identity_column()
    title: str = Field(sa_column=Column(String(TITLE_MAX), nullable=False))
    description: str | None = Field(default=None, sa_column=Column(String(DESCRIPTION_MAX)))
    completed: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    priority: str = Field(
        default="medium",
        sa_column=Column(
            Enum(*PRIORITIES, name="task_priority", create_type=False),
            nullable=False,
            server_default="medium",
        ),
    )
    due_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    recurrence: str | None = Field(
        default=None, sa_column=Column(Enum(*RECURRENCES, name="task_recurrence", create_type=False))
    )
    recurrence_day: int | None = Field(default=None, sa_column=Column(SmallInteger))
    next_task_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    created_at: datetime | None = _timestamp_column()
    updated_at: datetime | None = _timestamp_column()


class Tag(SQLModel, table=True):
    """A user's tag (sql/policies/tags.sql). Tasks carry it through task_tags."""

    __tablename__ = "tags"

    user_id: str = _owner_column()
    id: int | None = _identity_column()
    name: str = Field(sa_column=Column(String(TAG_MAX), nullable=False))
    folded: str = Field(sa_column=Column(String(TAG_FOLDED_MAX), nullable=False))
    created_at: datetime | None = _timestamp_column()


class TaskTag(SQLModel, table=True):
    """Task task_id of user user_id carries tag tag_id of the same user."""

    __tablename__ = "task_tags"

    user_id: str = _owner_column()
    task_id: int = Field(sa_column=Column(BigInteger, primary_key=True))
    tag_id: int = Field(sa_column=Column(BigInteger, primary_key=True))


class Conversation(SQLModel, table=True):
    """A user's conversation with the assistant (sql/policies/conversations.sql)."""

    __tablename__ = "conversations"

    user_id: str = _owner_column()
    id: int | None = _identity_column()
    title: str = Field(sa_column=Column(String(CONVERSATION_TITLE_MAX), nullable=False))
    created_at: datetime | None = _timestamp_column()
    # When the conversation was last active (the chat touches it): the list shows the most
    # recently active first.
    updated_at: datetime | None = _timestamp_column()


class Message(SQLModel, table=True):
    """A message of conversation conversation_id of the same user (sql/policies/messages.sql)."""

    __tablename__ = "messages"

    user_id: str = _owner_column()
    id: int | None = _identity_column()
    conversation_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    role: str = Field(
        sa_column=Column(Enum(*MESSAGE_ROLES, name="message_role", create_type=False), nullable=False)
    )
    content: str = Field(sa_column=Column(Text, nullable=False))
    # None is SQL NULL, not JSON null (which the messages_tool_calls_array check refuses).
    tool_calls: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSONB(none_as_null=True)))
    failure: str | None = Field(default=None, sa_column=Column(String(40)))
    created_at: datetime | None = _timestamp_column()


# Request bodies refuse fields they do not name (so `user_id` and `id` in a body are a
# 422 naming the field) and take JSON types as they are, with no coercion.
# A dict of SQLModel's config type: a pydantic ConfigDict is, for mypy, not one.
_REQUEST: "SQLModelConfig" = {"extra": "forbid", "strict": True}


def _recurrence_needs_due_at(recurrence: str | None, info: pydantic.ValidationInfo) -> str | None:
    # due_at comes before recurrence, so it is validated first (absent from info.data if it
    # was invalid: that error is reported on its own).
    if recurrence is not None and "due_at" in info.data and info.data["due_at"] is None:
        raise PydanticCustomError("recurrence_without_due_at", "A recurring task needs a due_at")
    return recurrence


# The rule of _recurrence_needs_due_at in the OpenAPI document (JSON Schema's if/then):
# a body with a recurrence also has a due_at that is not null.
_RECURRENCE_NEEDS_DUE_AT: dict[str, Any] = {
    "if": {"required": ["recurrence"], "properties": {"recurrence": {"type": "string"}}},
    "then": {"required": ["due_at"], "properties": {"due_at": {"type": "string"}}},
}
_CREATE_OR_REPLACE: "SQLModelConfig" = {**_REQUEST, "json_schema_extra": _RECURRENCE_NEEDS_DUE_AT}


class TaskCreate(SQLModel):
    model_config = _CREATE_OR_REPLACE

    title: Title
    description: Description | None = None
    priority: Priority = "medium"
    due_at: DueAt | None = None
    tags: Tags = []
    # Needs a due_at: completing the task makes the next one, due a period later.
    recurrence: Recurrence | None = None

    _check_recurrence = field_validator("recurrence")(_recurrence_needs_due_at)


class TaskReplace(SQLModel):
    """PUT: the whole task; a field left out takes its default."""

    model_config = _CREATE_OR_REPLACE

    title: Title
    description: Description | None = None
    completed: bool = False
    priority: Priority = "medium"
    due_at: DueAt | None = None
    tags: Tags = []
    recurrence: Recurrence | None = None

    _check_recurrence = field_validator("recurrence")(_recurrence_needs_due_at)


def drop_null_branch(schema: dict[str, Any]) -> None:
    """For a JSON schema of `X | None` whose None only means "not sent": the schema of X."""
    schema.update(next(branch for branch in schema.pop("anyOf") if branch.get("type") != "null"))


# For a PATCH field that may be left out (None is only its default) but not sent as null:
# the OpenAPI document then says what the validator enforces.
_NEVER_NULL = pydantic.Field(json_schema_extra=drop_null_branch)


class TaskUpdate(SQLModel):
    """PATCH: only the fields given change."""

    # A recurrence and a null due_at in one body is a 422 (so is a recurrence for a task
    # with no due date, or a null due_at for a recurring one: the database's check).
    model_config = {
        **_REQUEST,
        "json_schema_extra": {
            "if": {"required": ["recurrence", "due_at"], "properties": {"recurrence": {"type": "string"}}},
            "then": {"properties": {"due_at": {"type": "string"}}},
        },
    }

    title: Annotated[Title | None, _NEVER_NULL] = None
    description: Description | None = None
    completed: Annotated[bool | None, _NEVER_NULL] = None
    priority: Annotated[Priority | None, _NEVER_NULL] = None
    # null: no due date any more.
    due_at: DueAt | None = None
    # The whole list: it replaces the task's tags ([] removes them all).
    tags: Annotated[Tags | None, _NEVER_NULL] = None
    # null: the task no longer recurs.
    recurrence: Recurrence | None = None

    @field_validator("title", "completed", "priority", "tags", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Left out means "unchanged"; an explicit null would mean "no title", which no task has.
        if value is None:
            raise ValueError("may not be null")
        return value


class TaskPublic(SQLModel):
    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    priority: Priority
    due_at: datetime | None
    tags: list[str] = pydantic.Field(description="Sorted case-insensitively")
    recurrence: Recurrence | None
    next_task_id: int | None = pydantic.Field(
        description="The task that completing this recurring one created: the next occurrence"
    )
    created_at: datetime
    updated_at: datetime


class TagPublic(SQLModel):
    name: str
    tasks: int = pydantic.Field(description="How many of your tasks carry it")


class TagRename(SQLModel):
    model_config = _REQUEST

    name: TagName


class ConversationPublic(SQLModel):
    id: int
    title: str
    created_at: datetime
    updated_at: datetime = pydantic.Field(description="When the conversation was last active")


class MessagePublic(SQLModel):
    id: int
    conversation_id: int
    role: MessageRole
    content: str
    tool_calls: list[dict[str, Any]] | None = pydantic.Field(
        description="The tools the assistant called (assistant messages), as the model gave them"
    )
    failure: str | None = pydantic.Field(
        description="Why this message of yours got no answer: provider_error or provider_timeout"
    )
    created_at: datetime


class Account(SQLModel, table=True):
    """A built-in account. Its password hash lives in account_passwords, out of reach."""

    __tablename__ = "accounts"

    user_id: str = _owner_column()
    email: str = Field(sa_column=Column(String(320), nullable=False))
    name: str = Field(sa_column=Column(String(200), nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class AccountCreate(SQLModel):
    model_config = _REQUEST

    email: Annotated[EmailStr, ValidUnicode]
    # The minimum length is a setting (PASSWORD_MIN_LENGTH), checked by the route; the
    # maximum keeps argon2's input, and so its cost, bounded.
    password: Annotated[str, StringConstraints(max_length=128), ValidUnicode]
    name: Title


# What a built-in account's user types as `user_id` in every /api/{user_id} route.
YOUR_USER_ID = "Your user id: the `user_id` of every route under `/api/{user_id}`"


class AccountPublic(SQLModel):
    user_id: str = Field(description=YOUR_USER_ID)
    email: str
    name: str
    created_at: datetime


class AccessToken(SQLModel):
    """The OAuth2 token answer (access_token, token_type, expires_in), and whose it is."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the scheme name)
    expires_in: int
    user_id: str = Field(description=YOUR_USER_ID)
