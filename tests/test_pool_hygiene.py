"""Hostile SQL inside one request never reaches another request on the same pooled connection.

The threat: SQL running as the runtime role inside user M's request (an injection, a
buggy query) leaves something on its connection: a temporary view that shadows
`tasks`, a prepared statement under a name the driver will use, a session-level
setting, a lock, a LISTEN. The connection goes back to the pool, and the next request
(of user A) runs on it. Nothing M left may run inside A's signed transaction, read or
change A's rows, or break A's request.

The app here has one pooled connection, so every request runs on the same one, and one
extra route that plays the injection: it runs the attacker's SQL on the request's own
connection, inside the attacker's own signed transaction, through the same session
dependency (app.session.UserConnection) as every route.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import Body, Depends, FastAPI

from app.auth import require_path_owner
from app.config import Settings
from app.main import create_app
from app.session import UserConnection
from tests.conftest import DbUrls, http_client, make_settings, running
from tests.tokens import auth

ATTACKER = "mallory"
VICTIMS = ("alice", "bob")


def attackable_app(settings: Settings) -> FastAPI:
    """The service with a one-connection pool, plus an injection point."""
    app = create_app(settings)

    @app.post("/api/{user_id}/inject", dependencies=[Depends(require_path_owner)])
    async def inject(connection: UserConnection, sql: str = Body(embed=True)) -> Any:
        # A script (several statements, no parameters) or one query whose rows come back.
        if sql.lstrip().lower().startswith("select"):
            return [list(row.values()) for row in await connection.fetch(sql)]
        return await connection.execute(sql)

    return app


@pytest.fixture
async def client(db_url: DbUrls) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        db_url, db_pool_size=1, db_max_overflow=0, rate_limit_requests="", rate_limit_writes=""
    )
    app = attackable_app(settings)
    async with running(app), http_client(app) as client:
        yield client


async def inject(client: httpx.AsyncClient, sql: str) -> httpx.Response:
    return await client.post(f"/api/{ATTACKER}/inject", json={"sql": sql}, headers=auth(ATTACKER))


async def create(client: httpx.AsyncClient, user: str, title: str) -> dict[str, Any]:
    response = await client.post(f"/api/{user}/tasks", json={"title": title}, headers=auth(user))
    assert response.status_code == 201, response.text
    return dict(response.json())


def stored(admin_conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Every task as stored, read by the superuser that row-level security does not bind."""
    return admin_conn.execute("select id, user_id, title, completed from tasks order by id").fetchall()


# The attack of the hardening issue: a temporary view named tasks, in pg_temp (searched
# before public), whose function copies the rows and the signed context of whoever reads
# it into the attacker's temporary table, and changes their rows.
TEMP_VIEW_ATTACK = """
create temp table loot (user_id text, title text, context text);
create function pg_temp.grab() returns boolean language plpgsql as $$
begin
  insert into pg_temp.loot
    select t.user_id, t.title,
           concat_ws('|', current_setting('app.user_id', true),
                     current_setting('app.user_expires', true), current_setting('app.user_sig', true))
    from public.tasks t;
  update public.tasks set title = 'pwned';
  return true;
end $$;
create temp view tasks as select * from public.tasks where pg_temp.grab();
"""


async def test_a_temporary_view_cannot_shadow_tasks_for_the_next_request(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    for user in VICTIMS:
        await create(client, user, f"{user}'s secret")
    before = stored(admin_conn)

    # Refused (403: the runtime role may not create temporary objects), but what
    # matters is what follows.
    await inject(client, TEMP_VIEW_ATTACK)

    for user in VICTIMS:
        listed = await client.get(f"/api/{user}/tasks", headers=auth(user))
        assert listed.status_code == 200
        assert [task["title"] for task in listed.json()] == [f"{user}'s secret"]
        await create(client, user, f"{user}'s second")
    loot = await inject(client, "select * from pg_temp.loot")
    assert loot.status_code != 200 or loot.json() == [], loot.text
    assert [row for row in stored(admin_conn) if row[2] == "pwned"] == []
    assert stored(admin_conn)[: len(before)] == before


async def test_the_runtime_role_cannot_create_temporary_objects(admin_conn: psycopg.Connection) -> None:
    assert admin_conn.execute(
        "select has_database_privilege('todo_app', current_database(), 'TEMPORARY')"
    ).fetchone() == (False,)


# The driver's prepared statements are named per connection and listed in
# pg_prepared_statements, which the attacker can read: it replaces the list statement
# with its own, under the same name and with the same result types, which stores the
# reader's signed context and rows in a setting of the connection's session.
PREPARED_STATEMENT_HIJACK = """
do $$
declare
  target text;
begin
  select name into target from pg_prepared_statements
   where not from_sql and statement like '%with page as%' limit 1;
  execute format('deallocate %I', target);
  execute format($f$prepare %I (text, bigint, bigint) as
    select set_config('loot.rows', (select string_agg(t.title, ',') from public.tasks t), false)
        || set_config('loot.context', concat_ws('|', current_setting('app.user_id'),
             current_setting('app.user_expires'), current_setting('app.user_sig')), false)
        || '[]',
       0::bigint$f$, target);
end $$
"""


async def test_a_hijacked_prepared_statement_never_runs_in_another_request(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    await create(client, "alice", "alice's secret")
    # The attacker's own list prepares the statement on the connection.
    assert (await client.get(f"/api/{ATTACKER}/tasks", headers=auth(ATTACKER))).status_code == 200
    assert (await inject(client, PREPARED_STATEMENT_HIJACK)).status_code == 200

    listed = await client.get("/api/alice/tasks", headers=auth("alice"))
    assert listed.status_code == 200
    assert [task["title"] for task in listed.json()] == ["alice's secret"]
    assert listed.headers["X-Total-Count"] == "1"
    loot = await inject(
        client, "select current_setting('loot.rows', true), current_setting('loot.context', true)"
    )
    assert loot.status_code == 200
    assert loot.json() == [[None, None]] or "alice" not in loot.text, loot.text


async def test_deallocated_driver_statements_cost_the_next_request_nothing(
    client: httpx.AsyncClient,
) -> None:
    await create(client, "alice", "alice's task")
    assert (await client.get("/api/alice/tasks", headers=auth("alice"))).status_code == 200
    assert (await inject(client, "deallocate all")).status_code == 200
    listed = await client.get("/api/alice/tasks", headers=auth("alice"))
    assert listed.status_code == 200, listed.text
    assert [task["title"] for task in listed.json()] == ["alice's task"]


async def test_a_deallocated_statement_fails_one_request_with_a_retryable_503(
    client: httpx.AsyncClient,
) -> None:
    await create(client, "alice", "alice's task")
    assert (await client.get("/api/alice/tasks", headers=auth("alice"))).status_code == 200
    dropped = await inject(
        client,
        "do $$ declare target text; begin"
        " select name into target from pg_prepared_statements"
        "  where not from_sql and statement like '%with page as%';"
        " execute 'deallocate ' || quote_ident(target); end $$",
    )
    assert dropped.status_code == 200
    # The driver still uses the name: that request fails, retryably, and closes the connection.
    failed = await client.get("/api/alice/tasks", headers=auth("alice"))
    assert failed.status_code == 503, failed.text
    assert failed.headers["Retry-After"] == "1"
    listed = await client.get("/api/alice/tasks", headers=auth("alice"))
    assert listed.status_code == 200
    assert [task["title"] for task in listed.json()] == ["alice's task"]


# Session state a statement can leave on its connection, and what the next request on
# that connection must find instead.
@pytest.mark.parametrize(
    ("left_behind", "seen_next"),
    [
        ("set default_transaction_read_only = on", "select current_setting('default_transaction_read_only')"),
        (
            "set session characteristics as transaction read only",
            "select current_setting('transaction_read_only')",
        ),
        ("set search_path = pg_temp, public", "select current_setting('search_path')"),
        ("set statement_timeout = 1", "select current_setting('statement_timeout')"),
        (
            "select set_config('loot.data', 'alice''s rows', false)",
            "select nullif(current_setting('loot.data', true), '')",
        ),
        ("listen loot", "select array(select pg_listening_channels())::text"),
        ("declare loot cursor with hold for select 1", "select array(select name from pg_cursors)::text"),
        (
            "prepare loot as select 1",
            "select array(select name from pg_prepared_statements where from_sql)::text",
        ),
    ],
)
async def test_session_state_does_not_outlive_its_request(
    client: httpx.AsyncClient, left_behind: str, seen_next: str
) -> None:
    clean = (await inject(client, seen_next)).json()
    assert (await inject(client, left_behind)).status_code == 200
    # A victim's write on the same (only) connection still works.
    await create(client, "alice", "still writable")
    assert (await inject(client, seen_next)).json() == clean


async def test_advisory_locks_are_released_when_the_request_ends(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    assert (await inject(client, "select pg_advisory_lock(4242)")).status_code == 200
    # Another session can take it: the attacker's request no longer holds it.
    assert admin_conn.execute("select pg_try_advisory_lock(4242)").fetchone() == (True,)
    admin_conn.execute("select pg_advisory_unlock(4242)")


async def test_a_table_lock_held_by_one_request_fails_the_others_fast(db_url: DbUrls) -> None:
    """LOCK TABLE ... ACCESS EXCLUSIVE needs only DELETE, which the runtime role has: SQL in
    one request can take it. Every other request waits at most DB_LOCK_TIMEOUT for it and
    answers a retryable 503, instead of queueing until its statement times out."""
    settings = make_settings(db_url, db_lock_timeout=0.3, rate_limit_requests="", rate_limit_writes="")
    app = attackable_app(settings)
    async with app.router.lifespan_context(app), http_client(app) as client:
        await create(client, "alice", "alice's task")
        holder = asyncio.create_task(
            inject(client, "lock table public.tasks in access exclusive mode; select pg_sleep(3)")
        )
        await asyncio.sleep(0.5)  # the lock is held
        started = time.monotonic()
        waited = await client.get("/api/alice/tasks", headers=auth("alice"))
        elapsed = time.monotonic() - started
        assert waited.status_code == 503, waited.text
        assert waited.headers["Retry-After"] == "1"
        assert elapsed < 2, elapsed  # the lock timeout, not the 3 s hold or the 10 s statement timeout
        assert (await holder).status_code == 200
        assert (await client.get("/api/alice/tasks", headers=auth("alice"))).status_code == 200
