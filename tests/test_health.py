"""GET /healthz and GET /readyz. (A database that is down: tests/test_outage.py.)"""

import httpx
import psycopg

from app.config import RUNTIME_ROLE
from app.routes.health import head_revisions


async def test_healthz_says_the_process_is_up(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_the_runtime_role_and_the_migrations(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    (head,) = head_revisions()
    assert response.json() == {"status": "ready", "database_role": RUNTIME_ROLE, "migration": head}


async def test_readyz_is_503_while_the_migrations_are_behind_the_code(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    (head,) = head_revisions()
    admin_conn.execute("update alembic_version set version_num = '0001'")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "detail": f"the database's migrations are at 0001, the code's at {head}; run `todo-api migrate`"
    }


async def test_readyz_is_503_when_the_runtime_role_cannot_read_the_revision(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    admin_conn.execute(f"revoke select on alembic_version from {RUNTIME_ROLE}")
    response = await client.get("/readyz")
    assert response.status_code == 503
    detail = f"the database role {RUNTIME_ROLE} may not read alembic_version; `todo-api migrate` grants it"
    assert response.json() == {"detail": detail}
    # Liveness does not depend on the database.
    assert (await client.get("/healthz")).status_code == 200
