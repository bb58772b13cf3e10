"""All configuration, read from the environment (and a .env file) in one place."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import limits
import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_BYTES = 32
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# Verified only with keys from a JWKS or the service's own key, never with JWT_SECRET.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
# The roles created by sql/roles.sql; the policies in sql/policies/ name todo_app.
OWNER_ROLE = "todo_owner"
RUNTIME_ROLE = "todo_app"
ALLOWED_HOSTS_REQUIRED = (
    "set ALLOWED_HOSTS to the host names clients use to reach the service, comma-separated "
    "(e.g. api.example.com or localhost,127.0.0.1), or to * to accept any Host header; "
    "it is required with DATABASE_URL"
)


# Addresses that bind every interface, and the address a client on the machine uses.
_WILDCARD_ADDRESSES = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def default_data_dir() -> Path:
    return platformdirs.user_data_path("todo-api")


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value is not repeated in the error, which would
    # put a secret or a private key that was refused into a log's traceback.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    # Runtime role's connection. Unset: an embedded PostgreSQL in data_dir.
    database_url: str | None = None
    # Owner role's connection, for migrations. Unset: DATABASE_URL's server as todo_owner.
    migrations_database_url: str | None = None

    jwt_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("JWT_SECRET", "BETTER_AUTH_SECRET", "jwt_secret")
    )
    # Each is accepted only where a key for it is configured: HMAC with JWT_SECRET, the
    # others with a JWKS (or, EdDSA, the service's own key).
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256", "EdDSA", "RS256", "ES256"]
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway: int = Field(default=30, ge=0, le=300)
    # The claim that holds the user id.
    jwt_user_claim: str = Field(default="sub", min_length=1)
    # An identity provider's public keys: a URL (fetched, cached, refreshed on an unknown
    # kid), a file, or the JWKS document itself. One of them at most.
    jwks_url: str | None = None
    jwks_file: Path | None = None
    jwks: dict[str, Any] | None = None
    jwks_cache_seconds: float = Field(default=300, gt=0)
    jwks_min_refresh_seconds: float = Field(default=30, ge=0)
    # Tokens remembered as verified, per process (app/auth.py); 0: every request verifies.
    token_cache_size: int = Field(default=10_000, ge=0, le=1_000_000)

    # Built-in accounts (register, log in). Unset: on for the embedded default, else off.
    accounts_enabled: bool | None = None
    # Ed25519 private key (PEM) that signs the tokens the service issues; unset on the
    # embedded default: generated once into data_dir.
    token_signing_key: SecretStr | None = None
    # Ed25519 keys in PEM (public, or private of which only the public half is used), one
    # after another, whose tokens are accepted as the service's own and which
    # /.well-known/jwks.json publishes; nothing is signed with them. For rotating
    # TOKEN_SIGNING_KEY without downtime (docs/deploy.md). A secret only if it holds a
    # private key, but it may.
    token_verification_keys: SecretStr | None = None
    # `iss` and `aud` of the tokens the service issues.
    token_issuer: str = "todo-api"  # noqa: S105 (a name, not a secret)
    token_ttl: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    password_min_length: int = Field(default=10, ge=8, le=128)
    # Rate limits of register and token, per client address and per email (`limits` notation).
    rate_limit_auth: str = "10/minute"

    # Key of the HMAC that signs the user context for row-level security (app/session.py,
    # sql/functions.sql). Unset on the embedded default: generated once into data_dir.
    rls_context_key: SecretStr | None = None
    # Seconds a signed context stays valid: long enough for one transaction.
    rls_context_ttl: int = Field(default=60, ge=5, le=3600)

    data_dir: Path = Field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    db_pool_size: int = Field(default=10, ge=1)
    # A fixed pool by default: SQLAlchemy closes an overflow connection as soon as it is
    # returned, so under sustained load past the pool every few requests paid for a new
    # server process and its authentication (bench/README.md, round 3). Requests past the
    # pool wait for a connection instead, up to DB_CONNECT_TIMEOUT.
    db_max_overflow: int = Field(default=0, ge=0)
    # Behind PgBouncer in transaction mode: no client-side pool, no prepared-statement
    # caches, unique statement names (see app/database.py).
    db_pgbouncer: bool = False
    log_level: str = "info"

    # Running in production: timeouts, limits, logs, metrics, browsers (docs/deploy.md).
    # Seconds to open a connection (or wait for a free one in the pool), and for one statement.
    db_connect_timeout: float = Field(default=5.0, gt=0)
    db_statement_timeout: float = Field(default=10.0, gt=0)
    # Seconds a request's statement waits for a lock (lock_timeout, set per transaction
    # with the user context): SQL in one request may lock a whole table, and the others
    # then fail fast with a 503 instead of queueing (docs/security.md).
    db_lock_timeout: float = Field(default=2.0, gt=0, le=600)
    max_body_size: int = Field(default=64 * 1024, ge=1)
    log_format: Literal["text", "json"] = "text"
    metrics_enabled: bool = False
    # `limits` notation, e.g. "600/minute" or "20/second;600/minute"; empty: no limit.
    rate_limit_requests: str = "1200/minute"
    rate_limit_writes: str = "300/minute"
    # memory:// (one process) or redis://host:6379 (shared by every instance).
    rate_limit_storage: str = "memory://"
    cors_origins: Annotated[list[str], NoDecode] = []
    # Host names clients reach the service by (the Host header), comma-separated:
    # `api.example.com`, `*.example.com` for its subdomains, `[::1]` for an IPv6 address,
    # `*` for any. Unset: see allowed_host_patterns().
    allowed_hosts: Annotated[list[str], NoDecode] = []
    shutdown_timeout: int = Field(default=30, ge=1)
    # The chat (POST /api/{user_id}/chat). CHAT_MODEL names a model at an OpenAI-compatible
    # Chat Completions endpoint (OPENAI_BASE_URL, unset: OpenAI's; OPENAI_API_KEY); unset:
    # the built-in offline assistant, which needs no provider (app/chat/offline.py).
    chat_model: str | None = None
    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    # Seconds one chat message may take, model calls and tool calls together.
    chat_timeout: float = Field(default=60.0, gt=0, le=600)
    # Model calls per chat message at most (each may ask for tool calls).
    chat_max_turns: int = Field(default=8, ge=2, le=50)
    # How many earlier messages of the conversation the model is given.
    chat_history_messages: int = Field(default=20, ge=0, le=500)
    # Send the Agents SDK's traces to the vendor (OpenAI): off unless asked for.
    chat_tracing: bool = False
    rate_limit_chat: str = "20/minute"
    # The service's origin as clients reach it (https://api.example.com behind a proxy):
    # the MCP server names itself by it. Unset: http://HOST:PORT (see public_base_url()).
    public_url: str | None = None

    @field_validator("jwt_secret", "rls_context_key")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        length = len(value.get_secret_value().encode())
        if length < MIN_SECRET_BYTES:
            name = str(info.field_name).upper()
            raise ValueError(
                f"{name} must be at least {MIN_SECRET_BYTES} bytes long, this one has "
                f"{length}; make one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return value

    @field_validator("token_signing_key")
    @classmethod
    def _a_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        # Read here, as TOKEN_VERIFICATION_KEYS is, so that a bad key stops the service
        # with the configuration errors, not with a traceback from create_app.
        if value is not None:
            from app.keys import SigningKey  # app.keys imports this module

            SigningKey.from_pem(value.get_secret_value().encode())
        return value

    @field_validator("token_verification_keys")
    @classmethod
    def _verification_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # set but empty, as a platform may leave it after a rotation: none
        from app.keys import verification_keys_from_pem  # app.keys imports this module

        verification_keys_from_pem(value.get_secret_value())
        return value

    @field_validator("data_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        # DATA_DIR=~/... as .env.example shows it, not a directory named "~".
        return value.expanduser()

    @field_validator("jwt_algorithms", "cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        known = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
        unknown = sorted(set(value) - known)
        if unknown or not value:
            raise ValueError(
                f"JWT_ALGORITHMS accepts {', '.join(sorted(known))}; "
                f"not {', '.join(unknown) or 'an empty list'}"
            )
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: list[str]) -> list[str]:
        # Checked here, with a message, rather than by Starlette's assertions at the
        # first request; and a port or a scheme, which can never match, is refused.
        for pattern in value:
            name = pattern.removeprefix("*.")
            bracketed = name.startswith("[") and name.endswith("]")
            if pattern != "*" and (not name or "*" in name or "/" in name or (":" in name and not bracketed)):
                raise ValueError(
                    "ALLOWED_HOSTS takes host names without scheme or port (api.example.com), "
                    f"'*.' before a domain for its subdomains, [..] around IPv6, or '*'; not {pattern!r}"
                )
        return [pattern.lower() for pattern in value]

    @field_validator("public_url")
    @classmethod
    def _an_origin(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value.strip())
        if (
            url.scheme not in ("http", "https")
            or not url.hostname
            or "@" in url.netloc
            or url.path not in ("", "/")
            or url.query
            or url.fragment
        ):
            raise ValueError(
                "PUBLIC_URL takes an origin, http(s)://host[:port] with no path, such as "
                f"https://api.example.com; not {value!r}"
            )
        _ = url.port  # a ValueError for a port that is not a number, or out of range
        return f"{url.scheme}://{url.netloc.lower()}"

    @model_validator(mode="after")
    def _one_jwks(self) -> "Settings":
        given = [name for name in ("jwks_url", "jwks_file", "jwks") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"set only one of {', '.join(n.upper() for n in given)}")
        return self

    @model_validator(mode="after")
    def _verification_keys_need_accounts(self) -> "Settings":
        # Without built-in accounts the service issues no tokens of its own, so it has no
        # key to rotate, and keys given here would go unused without a word.
        if self.token_verification_keys is not None and not self.accounts:
            raise ValueError(
                "TOKEN_VERIFICATION_KEYS is for rotating the built-in accounts' TOKEN_SIGNING_KEY, "
                "and built-in accounts are off (ACCOUNTS_ENABLED); an identity provider's keys "
                "go in JWKS_URL, JWKS_FILE or JWKS"
            )
        return self

    @property
    def accounts(self) -> bool:
        """Whether built-in accounts are on: ACCOUNTS_ENABLED, else on for the embedded default."""
        return self.embedded if self.accounts_enabled is None else self.accounts_enabled

    @field_validator("rate_limit_requests", "rate_limit_writes", "rate_limit_auth", "rate_limit_chat")
    @classmethod
    def _rate_limits_parse(cls, value: str) -> str:
        if value.strip():
            try:
                limits.parse_many(value)
            except ValueError as exc:
                raise ValueError(f"not a rate limit such as '600/minute': {value!r}") from exc
        return value

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    def public_base_url(self) -> str:
        """Where clients reach the service: PUBLIC_URL; unset, http://HOST:PORT, with a
        wildcard address (0.0.0.0, ::) named by its loopback address."""
        if self.public_url:
            return self.public_url
        host = _WILDCARD_ADDRESSES.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def allowed_host_patterns(self) -> list[str]:
        """The Host names the service answers to: ALLOWED_HOSTS; unset, any on the
        embedded default (a laptop, on 127.0.0.1); raises ValueError if unset otherwise.

        With DATABASE_URL set and ALLOWED_HOSTS unset the service refuses to start rather
        than guess. Any Host would put a forged name into the Location and Link headers
        and the redirects it builds. HOST plus localhost would refuse every request a
        load balancer forwards (Host: api.example.com to HOST 0.0.0.0) while /healthz,
        which answers any Host, kept the instance in rotation. Only the operator knows
        the names, and `*` remains for a proxy that checks them itself."""
        if self.allowed_hosts:
            return self.allowed_hosts
        if self.embedded:
            return ["*"]
        raise ValueError(ALLOWED_HOSTS_REQUIRED)


@lru_cache
def get_settings() -> Settings:
    return Settings()
