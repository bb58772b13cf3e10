"""All configuration, read from the environment (and a .env file) in one place."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_BYTES = 32
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# The roles created by sql/roles.sql; the policies in sql/policies/ name todo_app.
OWNER_ROLE = "todo_owner"
RUNTIME_ROLE = "todo_app"


def default_data_dir() -> Path:
    return platformdirs.user_data_path("todo-api")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # Runtime role's connection. Unset: an embedded PostgreSQL in data_dir.
    database_url: str | None = None
    # Owner role's connection, for migrations. Unset: DATABASE_URL's server as todo_owner.
    migrations_database_url: str | None = None

    jwt_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("JWT_SECRET", "BETTER_AUTH_SECRET", "jwt_secret")
    )
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256"]
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: int = Field(default=30, ge=0, le=300)

    data_dir: Path = Field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    log_level: str = "info"

    @field_validator("jwt_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        length = len(value.get_secret_value().encode())
        if length < MIN_SECRET_BYTES:
            raise ValueError(
                f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long, this one has "
                f"{length}; make one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return value

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _only_hmac(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - HMAC_ALGORITHMS)
        if unknown or not value:
            raise ValueError(
                f"JWT_ALGORITHMS accepts {', '.join(sorted(HMAC_ALGORITHMS))} with a shared "
                f"secret; not {', '.join(unknown) or 'an empty list'}"
            )
        return value

    @property
    def embedded(self) -> bool:
        return self.database_url is None


@lru_cache
def get_settings() -> Settings:
    return Settings()
