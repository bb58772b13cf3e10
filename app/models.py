"""The tasks table and the shapes a task takes on the way in and out of the API."""

import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pydantic
from pydantic import AwareDatetime, BeforeValidator, EmailStr, StringConstraints, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import BigInteger, Column, DateTime, Enum, Identity, String, func, text
from sqlmodel import Field, SQLModel

if TYPE_CHECKING:
    # SQLModel types model_config as this, which it does not export (sqlmodel issue 2091).
    from sqlmodel._compat import SQLModelConfig

TITLE_MAX = 200
DESCRIPTION_MAX = 1000


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


def _iso_text(value: object) -> object:
    # Pydantic's lax mode would also take a number, or a numeric string, as a Unix time.
    if isinstance(value, str) and not _ISO_DATE_TIME.match(value):
        raise PydanticCustomError("datetime_from_date_parsing", "Input should be an ISO 8601 date-time")
    if not isinstance(value, str | datetime):
        raise PydanticCustomError("datetime_type", "Input should be an ISO 8601 date-time string")
    return value


_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T")
# An ISO 8601 date-time with an offset (a naive one is a 422 naming the field). Not
# strict, unlike the rest of a body (JSON has no date-time type, only its text), but
# text only.
DueAt = Annotated[AwareDatetime, pydantic.Field(strict=False), BeforeValidator(_iso_text), ValidUnicode]


class Task(SQLModel, table=True):
    __tablename__ = "tasks"

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True)
    )
    # The owner. Row-level security compares it with app.current_user_id(); the API fills
    # it from the token, never from a request body.
    user_id: str = Field(sa_column=Column(String(255), nullable=False))
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
    created_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    updated_at: datetime | None = Field(
        default=None,
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


# Request bodies refuse fields they do not name (so `user_id` and `id` in a body are a
# 422 naming the field) and take JSON types as they are, with no coercion.
# A dict of SQLModel's config type: a pydantic ConfigDict is, for mypy, not one.
_REQUEST: "SQLModelConfig" = {"extra": "forbid", "strict": True}


class TaskCreate(SQLModel):
    model_config = _REQUEST

    title: Title
    description: Description | None = None
    priority: Priority = "medium"
    due_at: DueAt | None = None


class TaskReplace(SQLModel):
    """PUT: the whole task; a field left out takes its default."""

    model_config = _REQUEST

    title: Title
    description: Description | None = None
    completed: bool = False
    priority: Priority = "medium"
    due_at: DueAt | None = None


def drop_null_branch(schema: dict[str, Any]) -> None:
    """For a JSON schema of `X | None` whose None only means "not sent": the schema of X."""
    schema.update(next(branch for branch in schema.pop("anyOf") if branch.get("type") != "null"))


# For a PATCH field that may be left out (None is only its default) but not sent as null:
# the OpenAPI document then says what the validator enforces.
_NEVER_NULL = pydantic.Field(json_schema_extra=drop_null_branch)


class TaskUpdate(SQLModel):
    """PATCH: only the fields given change."""

    model_config = _REQUEST

    title: Annotated[Title | None, _NEVER_NULL] = None
    description: Description | None = None
    completed: Annotated[bool | None, _NEVER_NULL] = None
    priority: Annotated[Priority | None, _NEVER_NULL] = None
    # null: no due date any more.
    due_at: DueAt | None = None

    @field_validator("title", "completed", "priority", mode="before")
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
    created_at: datetime
    updated_at: datetime


class Account(SQLModel, table=True):
    """A built-in account. Its password hash lives in account_passwords, out of reach."""

    __tablename__ = "accounts"

    user_id: str = Field(sa_column=Column(String(255), primary_key=True))
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
