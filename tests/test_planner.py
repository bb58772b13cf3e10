"""The planner's statistics describe every user's rows, whatever row-level security hides,
and EXPLAIN (which the runtime role may run) shows its estimates. What must not leak
through them: whether any user has a task of a given title or description.

See sql/statistics.sql, and docs/security.md ("The planner's statistics") for what the
remaining statistics (user_id, completed, the timestamps) still tell."""

import psycopg
import pytest

from app.migrate import downgrade, upgrade
from tests.conftest import DbUrls

SECRET_TITLE = "Payroll 2027"
SECRET_DESCRIPTION = "the merger with Initech"


def seed(admin_conn: psycopg.Connection) -> None:
    """bob has 300 tasks of one title and description; 20 other users have 1,000 tasks of
    other titles. Inserted by the superuser, whom row-level security does not bind."""
    admin_conn.execute(
        "insert into tasks (user_id, title, description) select 'bob', %s, %s from generate_series(1, 300)",
        (SECRET_TITLE, SECRET_DESCRIPTION),
    )
    admin_conn.execute(
        "insert into tasks (user_id, title, description)"
        " select 'user' || (n % 20), 'task ' || n, 'notes ' || n from generate_series(1, 1000) n"
    )
    admin_conn.execute("analyze tasks")


def estimate(conn: psycopg.Connection, column: str, value: str) -> int:
    """The planner's row estimate for `select * from tasks where <column> = value`."""
    row = conn.execute(
        f"explain (format json) select * from tasks where {column} = %s",
        (value,),
    ).fetchone()
    assert row is not None
    return int(row[0][0]["Plan"]["Plan Rows"])


@pytest.mark.parametrize(("column", "secret"), [("title", SECRET_TITLE), ("description", SECRET_DESCRIPTION)])
def test_explain_does_not_tell_whether_any_user_has_a_text(
    admin_conn: psycopg.Connection, db_url: DbUrls, column: str, secret: str
) -> None:
    seed(admin_conn)
    with psycopg.connect(db_url.runtime, autocommit=True) as runtime:
        # With no user context the runtime role sees no row at all...
        assert runtime.execute("select count(*) from tasks").fetchone() == (0,)
        # ...and the estimate for bob's 300 rows is the estimate for a text nobody has.
        assert estimate(runtime, column, secret) == estimate(runtime, column, "nobody wrote this")
    assert admin_conn.execute(
        "select count(*) from pg_stats where tablename = 'tasks' and attname = %s", (column,)
    ).fetchone() == (0,)


def test_the_migration_clears_statistics_gathered_before_it(
    admin_conn: psycopg.Connection, db_url: DbUrls
) -> None:
    downgrade(db_url.owner, "0005")
    seed(admin_conn)
    columns = "select array_agg(attname::text order by attname) from pg_stats where tablename = 'tasks'"
    gathered = admin_conn.execute(columns).fetchone()
    assert gathered is not None and {"title", "description"} <= set(gathered[0])
    upgrade(db_url.owner)
    kept = admin_conn.execute(columns).fetchone()
    assert kept is not None and not {"title", "description"} & set(kept[0])
    # The statistics the plans need stay.
    assert {"user_id", "created_at"} <= set(kept[0])
