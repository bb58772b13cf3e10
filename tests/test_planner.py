"""The planner's statistics describe every user's rows, whatever row-level security hides,
and EXPLAIN (which the runtime role may run) shows its estimates. What must not leak
through them: whether any user has a task of a given title or description, a tag of a
given name, or a conversation of a given title or message.

See sql/statistics.sql, and docs/security.md ("The planner's statistics") for what the
remaining statistics (user_id, completed, the timestamps) still tell."""

import psycopg
import pytest

from app.migrate import downgrade, upgrade
from tests.conftest import DbUrls

SECRET_TITLE = "Payroll 2027"
SECRET_DESCRIPTION = "the merger with Initech"
SECRET_TAG = "Project Falcon"
SECRET_QUESTION = "Is the merger with Initech still on?"


def seed(admin_conn: psycopg.Connection, *, tags: bool = True) -> None:
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
    if not tags:  # a schema from before tags
        return
    # 300 users have a tag of the secret name (tags are unique per user, not across users).
    admin_conn.execute(
        "insert into tags (user_id, name, folded)"
        " select 'team' || n, %s, lower(%s) from generate_series(1, 300) n",
        (SECRET_TAG, SECRET_TAG),
    )
    admin_conn.execute(
        "insert into tags (user_id, name, folded) select 'user' || (n % 20), 'tag ' || n, 'tag ' || n"
        " from generate_series(1, 1000) n"
    )
    admin_conn.execute("analyze tags")


def seed_conversations(admin_conn: psycopg.Connection) -> None:
    """The same for conversations with the assistant and their messages."""
    # bob asked the assistant the secret question 300 times, in conversations of the secret title.
    admin_conn.execute(
        "insert into conversations (user_id, title) select 'bob', %s from generate_series(1, 300)",
        (SECRET_TITLE,),
    )
    admin_conn.execute(
        "insert into conversations (user_id, title) select 'user' || (n % 20), 'chat ' || n"
        " from generate_series(1, 1000) n"
    )
    admin_conn.execute(
        "insert into messages (user_id, conversation_id, role, content)"
        " select c.user_id, c.id, 'user', case when c.title = %s then %s else 'hello ' || c.id end"
        " from conversations c",
        (SECRET_TITLE, SECRET_QUESTION),
    )
    admin_conn.execute("analyze conversations, messages")


def estimate(conn: psycopg.Connection, column: str, value: str, table: str = "tasks") -> int:
    """The planner's row estimate for `select * from <table> where <column> = value`."""
    row = conn.execute(
        f"explain (format json) select * from {table} where {column} = %s",
        (value,),
    ).fetchone()
    assert row is not None
    return int(row[0][0]["Plan"]["Plan Rows"])


@pytest.mark.parametrize(
    ("table", "column", "secret"),
    [
        ("tasks", "title", SECRET_TITLE),
        ("tasks", "description", SECRET_DESCRIPTION),
        ("tags", "name", SECRET_TAG),
        ("tags", "folded", SECRET_TAG.lower()),
        ("conversations", "title", SECRET_TITLE),
        ("messages", "content", SECRET_QUESTION),
    ],
)
def test_explain_does_not_tell_whether_any_user_has_a_text(
    admin_conn: psycopg.Connection, db_url: DbUrls, table: str, column: str, secret: str
) -> None:
    if table in ("conversations", "messages"):
        seed_conversations(admin_conn)
    else:
        seed(admin_conn)
    with psycopg.connect(db_url.runtime, autocommit=True) as runtime:
        # With no user context the runtime role sees no row at all...
        assert runtime.execute(f"select count(*) from {table}").fetchone() == (0,)
        # ...and the estimate for 300 rows is the estimate for a text nobody has.
        nobody = estimate(runtime, column, "nobody wrote this", table)
        assert estimate(runtime, column, secret, table) == nobody
    assert admin_conn.execute(
        "select count(*) from pg_stats where tablename = %s and attname = %s", (table, column)
    ).fetchone() == (0,)


def test_the_migration_clears_statistics_gathered_before_it(
    admin_conn: psycopg.Connection, db_url: DbUrls
) -> None:
    downgrade(db_url.owner, "0005")
    seed(admin_conn, tags=False)
    columns = "select array_agg(attname::text order by attname) from pg_stats where tablename = 'tasks'"
    gathered = admin_conn.execute(columns).fetchone()
    assert gathered is not None and {"title", "description"} <= set(gathered[0])
    upgrade(db_url.owner)
    kept = admin_conn.execute(columns).fetchone()
    assert kept is not None and not {"title", "description"} & set(kept[0])
    # The statistics the plans need stay.
    assert {"user_id", "created_at"} <= set(kept[0])
