"""Tasks table, the user context function and the row-level security policies.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.migrate import apply_sql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # sql/ files hold the current definitions and are written to be re-run: this applies
    # today's functions.sql, and later revisions apply it again when it changes.
    apply_sql("functions.sql")
    op.create_table(
        "tasks",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.String(1000)),
        sa.Column("completed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("length(btrim(title)) between 1 and 200", name="tasks_title_length"),
    )
    # Every list order leads with user_id, the column the policies compare, so a user's
    # page is an index range scan whatever the table's size.
    op.create_index("tasks_user_created_idx", "tasks", ["user_id", "created_at", "id"])
    op.create_index("tasks_user_updated_idx", "tasks", ["user_id", "updated_at", "id"])
    op.create_index("tasks_user_title_idx", "tasks", ["user_id", "title", "id"])
    # sql/policies/tasks.sql is not applied here: it holds today's grants, which name
    # columns that later revisions add (priority, due_at, ...). The revision that last
    # changed the table's columns applies it (0012), inside the same transaction as this
    # one, so a new database is never seen without its policies.


def downgrade() -> None:
    op.drop_table("tasks")
    op.execute("drop schema if exists app cascade")
