"""`todo-api`: serve, migrate, and print tokens."""

import errno
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvicorn
from pydantic import SecretStr, ValidationError
from rich.console import Console
from rich.markup import escape
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app import embedded
from app.audit import audit_database, print_report
from app.auth import TokenVerifier
from app.config import HMAC_ALGORITHMS, Settings
from app.database import migrations_url
from app.keys import SigningKey, verification_keys_from_pem
from app.logs import configure_logging
from app.migrate import context_keys, install_context_key, retire_context_keys, upgrade
from app.session import context_key_id

if TYPE_CHECKING:
    from fastapi import FastAPI

# Where to reach a server that listens on every address.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 (no bind)

cli = typer.Typer(help="Todo API on PostgreSQL row-level security.", no_args_is_help=True)
# Lines unbroken at any width: messages are read in logs and copied from.
err = Console(stderr=True, soft_wrap=True)


def _load_settings(**overrides: object) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            err.print(f"[red]configuration error:[/red] {error['msg']}")
        raise typer.Exit(1) from None
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


# Secrets the embedded default makes once and keeps in data_dir: field -> (file, variable).
_SECRETS: dict[str, tuple[str, str, Callable[[], str] | None]] = {
    "jwt_secret": ("jwt_secret", "JWT_SECRET (or BETTER_AUTH_SECRET)", None),
    "rls_context_key": ("rls_context_key", "RLS_CONTEXT_KEY", None),
    "token_signing_key": (
        "token_signing_key.pem",
        "TOKEN_SIGNING_KEY (or ACCOUNTS_ENABLED=false)",
        lambda: SigningKey.generate_pem().decode(),
    ),
}


def _with_secrets(settings: Settings, *fields: str) -> Settings:
    """Fill the secrets `fields` that are not configured: on the embedded default from
    (or into) data_dir; elsewhere they are required."""
    update: dict[str, SecretStr] = {}
    for field in fields:
        if getattr(settings, field) is not None:
            continue
        file_name, variable, make = _SECRETS[field]
        if not settings.embedded:
            err.print(f"[red]configuration error:[/red] set {variable}")
            raise typer.Exit(1)
        update[field] = SecretStr(embedded.ensure_secret(settings.data_dir, file_name, make))
    return settings.model_copy(update=update)


@contextmanager
def _database(settings: Settings) -> Iterator[Settings]:
    """Settings pointing at a migrated database; on the embedded default, starts (and
    afterwards stops) the embedded server."""
    settings = _with_secrets(settings, "rls_context_key")
    assert settings.rls_context_key is not None
    context_key = settings.rls_context_key.get_secret_value().encode()
    if not settings.embedded:
        owner_url = migrations_url(settings)
        upgrade(owner_url)
        _add_context_key(owner_url, context_key)
        yield settings
        return
    with _embedded_server(settings.data_dir) as db:
        upgrade(db.owner_url)
        _add_context_key(db.owner_url, context_key)
        yield settings.model_copy(
            update={"database_url": db.runtime_url, "migrations_database_url": db.owner_url}
        )


def _add_context_key(owner_url: str, key: bytes) -> None:
    """Add RLS_CONTEXT_KEY's key to those the database accepts, saying so when it is new
    and others are still accepted (a rotation under way)."""
    if install_context_key(owner_url, key):
        others = [k.kid for k in context_keys(owner_url) if k.kid != context_key_id(key)]
        if others:
            err.print(
                f"Context key {context_key_id(key)} added; still accepted: {', '.join(others)}"
                " (`todo-api context-keys retire` once every instance signs with the new key)."
            )


@contextmanager
def _embedded_server(data_dir: Path) -> Iterator[embedded.EmbeddedPostgres]:
    """The embedded server in data_dir, started or, if another `todo-api` runs it,
    attached to; saying which, and saying it stopped only if it did."""
    pgdata = escape(str(data_dir / "pgdata"))
    if embedded.is_running(data_dir):
        err.print(f"Using the embedded PostgreSQL already running in {pgdata}.")
    else:
        err.print(f"Starting embedded PostgreSQL in {pgdata} ...")
    db = embedded.start(data_dir)
    try:
        yield db
    finally:
        if db.stop():
            err.print("Stopped embedded PostgreSQL.")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Uvicorn takes SIGTERM over while it serves, lets the requests in flight finish, and
    # then raises the signal again for the handler that was there before: this one.
    # Dying of the signal would skip the `finally` that stops the embedded server; a
    # SystemExit runs it, and a stop that was asked for ends with status 0.
    raise SystemExit(0)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: HOST or 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PORT or 8000)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    migrate: Annotated[
        bool,
        typer.Option(
            "--migrate/--no-migrate",
            help="Run the migrations first, as the owner role; --no-migrate for instances that "
            "hold only the runtime role's credentials (`todo-api migrate` runs once per release)",
        ),
    ] = True,
) -> None:
    """Run the migrations and serve the API (embedded PostgreSQL unless DATABASE_URL is set)."""
    settings = _load_settings(host=host, port=port)
    try:
        allowed_hosts = settings.allowed_host_patterns()
    except ValueError as exc:
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(1) from None
    # Decided now, while "embedded" still means no DATABASE_URL: _database() fills it in.
    settings = settings.model_copy(
        update={"accounts_enabled": settings.accounts, "allowed_hosts": allowed_hosts}
    )
    needed = ["rls_context_key"]
    has_keys = settings.jwks_url or settings.jwks_file or settings.jwks or settings.accounts
    if settings.embedded or not has_keys:
        needed.append("jwt_secret")  # `todo-api token` signs with it
    if settings.accounts:
        needed.append("token_signing_key")
    settings = _with_secrets(settings, *needed)
    # Bound before the database is touched: a busy port stops `serve` here, with a message.
    listener = _listen(settings.host, settings.port)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    database = _database(settings) if migrate or settings.embedded else nullcontext(settings)
    with listener, database as settings:
        configure_logging(settings)
        server_options: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "log_level": settings.log_level,
            # Our logging (app/logs.py) and our access log, which has the request id and
            # the route template, instead of uvicorn's.
            "log_config": None,
            "access_log": False,
            # On SIGTERM, requests in flight get this long to finish.
            "timeout_graceful_shutdown": settings.shutdown_timeout,
        }
        with _announce_when_listening(listener, banner(settings)):
            if workers == 1:
                from app.main import create_app

                _serve_one(listener, uvicorn.Config(create_app(settings), **server_options))
                return
            # Worker processes build their own app from the environment.
            os.environ["DATABASE_URL"] = settings.database_url or ""
            os.environ["ACCOUNTS_ENABLED"] = "true" if settings.accounts else "false"
            os.environ["ALLOWED_HOSTS"] = ",".join(settings.allowed_hosts)
            # --host and --port too: PUBLIC_URL's default (the MCP server's address) is made of them.
            os.environ["HOST"] = settings.host
            os.environ["PORT"] = str(settings.port)
            for field in _SECRETS:
                secret = getattr(settings, field)
                if secret is not None:
                    os.environ[field.upper()] = secret.get_secret_value()
            config = uvicorn.Config("app.cli:worker_app", factory=True, workers=workers, **server_options)
            Multiprocess(config, sockets=[listener]).run()


def banner(settings: Settings) -> list[str]:
    """What `serve` prints once it listens: where, and the tokens this configuration
    accepts, with how to get one."""
    base = f"http://{settings.host}:{settings.port}"
    lines = [f"[bold]Todo API[/bold] on {escape(base)}   docs: {escape(base)}/docs   (Ctrl-C stops it)"]
    if settings.jwt_secret is not None and HMAC_ALGORITHMS & set(settings.jwt_algorithms):
        lines.append("Get a token with:  todo-api token USER_ID")
    if settings.accounts:
        lines.append(
            "Built-in accounts:  register with POST /api/auth/register, log in with POST /api/auth/token"
        )
    keys = settings.jwks_url or settings.jwks_file or ("JWKS" if settings.jwks is not None else None)
    if keys:
        line = f"Tokens from your identity provider:  signed with a key from {escape(str(keys))}"
        if settings.jwt_issuer:
            line += f", iss {escape(settings.jwt_issuer)}"
        if settings.jwt_audience:
            line += f", aud {escape(settings.jwt_audience)}"
        lines.append(line)
    return lines


def _listen(host: str, port: int) -> socket.socket:
    """The socket uvicorn will serve on, bound now (as uvicorn binds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        reason = f"port {port} is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        err.print(f"[red]error:[/red] cannot listen on {escape(host)}:{port}: {reason}")
        raise typer.Exit(1) from None
    listener.set_inheritable(True)  # for the worker processes of --workers N
    return listener


@contextmanager
def _announce_when_listening(listener: socket.socket, lines: list[str]) -> Iterator[None]:
    """Print `lines` once the server accepts connections: uvicorn listens only after the
    app's start-up (role and key checks) has passed, in one process or in N workers, so
    a thread tries to connect, as a client would, until it can."""
    host, port = listener.getsockname()[:2]
    address = (_LOOPBACK.get(host, host), port)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.1):
            try:
                socket.create_connection(address, timeout=1).close()
            except OSError:
                continue
            for line in lines:
                err.print(line)
            return

    watcher = threading.Thread(target=watch, name="announce", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


def _serve_one(listener: socket.socket, config: uvicorn.Config) -> None:
    """One process, as uvicorn.run() serves it, on our socket."""
    server = uvicorn.Server(config)
    # Ctrl-C: uvicorn has finished when it raises this; the embedded server is stopped next.
    with suppress(KeyboardInterrupt):
        server.run(sockets=[listener])
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def worker_app() -> "FastAPI":
    """The app of one worker process of `serve --workers N`, configured from the environment."""
    from app.main import create_app

    settings = Settings()
    configure_logging(settings)
    return create_app(settings)


@cli.command()
def migrate() -> None:
    """Run the migrations only (as the owner role), then exit."""
    with _database(_load_settings()):
        err.print("Migrations are at head.")


@cli.command()
def token(
    user_id: Annotated[str, typer.Argument(help="The user id, which becomes the token's `sub`")],
    ttl: Annotated[int, typer.Option(min=1, help="Seconds until the token expires")] = 3600,
) -> None:
    """Print a signed token for USER_ID."""
    settings = _with_secrets(_load_settings(), "jwt_secret")
    print(TokenVerifier(settings).issue(user_id, ttl))


@cli.command("public-key")
def public_key(
    pem_file: Annotated[
        str | None,
        typer.Argument(
            help="A PEM file of Ed25519 keys, private or public; - for standard input "
            "(default: TOKEN_SIGNING_KEY, as `serve` reads it)"
        ),
    ] = None,
) -> None:
    """Print the public keys (PEM) of Ed25519 keys, for TOKEN_VERIFICATION_KEYS; their kids go to stderr."""
    if pem_file is None:
        settings = _load_settings()
        if settings.token_signing_key is None and not settings.embedded:
            err.print("[red]error:[/red] set TOKEN_SIGNING_KEY, or name a PEM file (- for standard input)")
            raise typer.Exit(1)
        # On the embedded default: the key `serve` made in DATA_DIR, made now if it has not.
        settings = _with_secrets(settings, "token_signing_key")
        assert settings.token_signing_key is not None
        source, text = "TOKEN_SIGNING_KEY", settings.token_signing_key.get_secret_value()
    elif pem_file == "-":
        source, text = "standard input", sys.stdin.read()
    else:
        source = pem_file
        try:
            text = Path(pem_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            err.print(f"[red]error:[/red] cannot read {escape(pem_file)}: {escape(str(exc))}")
            raise typer.Exit(1) from None
    try:
        keys = verification_keys_from_pem(text, escape(source))
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if not keys:
        err.print(f"[red]error:[/red] no key in {escape(source)}")
        raise typer.Exit(1)
    for key in keys:
        # The kid is what /.well-known/jwks.json lists: how to tell which keys an
        # instance has taken up. Not on stdout, which is the PEM alone.
        err.print(f"kid {key.kid}")
        print(key.public_pem(), end="")


@cli.command()
def audit(
    database_url: Annotated[
        str | None,
        typer.Option(
            # Parentheses, not brackets: Rich would take [default: ...] for markup and drop it.
            help="Database to audit (default: the owner's, as `migrate` uses: MIGRATIONS_DATABASE_URL, "
            "or DATABASE_URL's server as todo_owner; neither set: the embedded one)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document, not tables")] = False,
) -> None:
    """Report the row-level security of a live database and any drift from sql/; exit 1 on a problem."""
    settings = _load_settings()
    if database_url is None and settings.embedded:
        # Unlike `migrate`, no upgrade: an audit reports the database as it is.
        with _embedded_server(settings.data_dir) as db:
            report = audit_database(db.owner_url)
    else:
        report = audit_database(database_url or migrations_url(settings))
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_report(report, Console())
    raise typer.Exit(0 if report.ok else 1)


context_keys_cli = typer.Typer(
    help="The keys the database accepts the user context under: list, add, retire "
    '(docs/deploy.md, "Rotating the context key").',
    no_args_is_help=True,
)
cli.add_typer(context_keys_cli, name="context-keys")


@contextmanager
def _owner_url(settings: Settings) -> Iterator[str]:
    """The owner's URL, as `migrate` and `audit` use it (the embedded server's, started
    for the command, when DATABASE_URL is unset)."""
    if settings.embedded:
        with _embedded_server(settings.data_dir) as db:
            yield db.owner_url
    else:
        yield migrations_url(settings)


def _current_key_id(settings: Settings) -> str:
    settings = _with_secrets(settings, "rls_context_key")
    assert settings.rls_context_key is not None
    return context_key_id(settings.rls_context_key.get_secret_value().encode())


@context_keys_cli.command("list")
def list_context_keys() -> None:
    """Print the ids of the keys the database accepts, oldest first; `*` marks RLS_CONTEXT_KEY's."""
    settings = _load_settings()
    current = _current_key_id(settings)
    with _owner_url(settings) as url:
        keys = context_keys(url)
    for key in keys:
        mark = "*" if key.kid == current else " "
        print(f"{mark} {key.kid}  added {key.added_at.isoformat(timespec='seconds')}")
    if current not in {key.kid for key in keys}:
        err.print(f"RLS_CONTEXT_KEY's key ({current}) is not among them: `todo-api context-keys add`.")


@context_keys_cli.command("add")
def add_context_key() -> None:
    """Add RLS_CONTEXT_KEY's key to those the database accepts; the others stay."""
    settings = _with_secrets(_load_settings(), "rls_context_key")
    assert settings.rls_context_key is not None
    key = settings.rls_context_key.get_secret_value().encode()
    with _owner_url(settings) as url:
        added = install_context_key(url, key)
    err.print(f"Context key {context_key_id(key)} {'added' if added else 'was already accepted'}.")


@context_keys_cli.command("retire")
def retire(
    kids: Annotated[
        list[str] | None,
        typer.Argument(help="Ids of the keys to retire (default: every key but RLS_CONTEXT_KEY's)"),
    ] = None,
) -> None:
    """Delete keys: contexts signed with them verify no more, from the next statement on.
    Every instance must sign with RLS_CONTEXT_KEY's key first (its /readyz says so)."""
    settings = _load_settings()
    current = _current_key_id(settings)
    if kids and current in kids:
        err.print(f"[red]error:[/red] {current} is RLS_CONTEXT_KEY's key, the one to sign with; not retired")
        raise typer.Exit(1)
    with _owner_url(settings) as url:
        accepted = [key.kid for key in context_keys(url)]
        if current not in accepted:
            err.print(
                f"[red]error:[/red] RLS_CONTEXT_KEY's key ({current}) is not accepted yet: "
                "retiring the others would leave none; `todo-api context-keys add` first"
            )
            raise typer.Exit(1)
        unknown = sorted(set(kids or []) - set(accepted))
        if unknown:
            err.print(f"[red]error:[/red] no such context key: {', '.join(unknown)}")
            raise typer.Exit(1)
        retired = retire_context_keys(url, kids or [kid for kid in accepted if kid != current])
    err.print(f"Retired: {', '.join(retired) or 'none'}.")


def main() -> None:
    cli()
