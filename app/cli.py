"""`todo-api`: serve, migrate, and print tokens."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
import uvicorn
from pydantic import SecretStr, ValidationError
from rich.console import Console

from app import embedded
from app.auth import TokenVerifier
from app.config import Settings
from app.database import migrations_url
from app.migrate import upgrade

cli = typer.Typer(help="Todo API on PostgreSQL row-level security.", no_args_is_help=True)
err = Console(stderr=True)


def _load_settings(**overrides: object) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            err.print(f"[red]configuration error:[/red] {error['msg']}")
        raise typer.Exit(1) from None
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _with_embedded_secret(settings: Settings) -> Settings:
    """On the embedded default with no secret configured, use (or make) the one in data_dir."""
    if settings.jwt_secret is not None:
        return settings
    if not settings.embedded:
        err.print("[red]configuration error:[/red] set JWT_SECRET (or BETTER_AUTH_SECRET)")
        raise typer.Exit(1)
    secret = embedded.ensure_secret(settings.data_dir)
    return settings.model_copy(update={"jwt_secret": SecretStr(secret)})


@contextmanager
def _database(settings: Settings) -> Iterator[Settings]:
    """Settings pointing at a migrated database; on the embedded default, starts (and
    afterwards stops) the embedded server."""
    if not settings.embedded:
        upgrade(migrations_url(settings))
        yield settings
        return
    err.print(f"Starting embedded PostgreSQL in {settings.data_dir / 'pgdata'} ...")
    db = embedded.start(settings.data_dir)
    try:
        upgrade(db.owner_url)
        yield settings.model_copy(
            update={"database_url": db.runtime_url, "migrations_database_url": db.owner_url}
        )
    finally:
        err.print("Stopping embedded PostgreSQL.")
        db.stop()


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [default: HOST or 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: PORT or 8000]")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
) -> None:
    """Run the migrations and serve the API (embedded PostgreSQL unless DATABASE_URL is set)."""
    settings = _with_embedded_secret(_load_settings(host=host, port=port))
    with _database(settings) as settings:
        base = f"http://{settings.host}:{settings.port}"
        err.print(f"[bold]Todo API[/bold] on {base}   docs: {base}/docs")
        err.print("Get a token with:  todo-api token USER_ID")
        if workers == 1:
            from app.main import create_app

            uvicorn.run(
                create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
            )
            return
        # Worker processes build their own app from the environment.
        os.environ["DATABASE_URL"] = settings.database_url or ""
        os.environ["JWT_SECRET"] = settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level=settings.log_level,
        )


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
    settings = _with_embedded_secret(_load_settings())
    print(TokenVerifier(settings).issue(user_id, ttl))


def main() -> None:
    cli()
