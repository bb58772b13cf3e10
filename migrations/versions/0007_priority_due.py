"""Tasks gain a priority (low, medium, high; medium by default) and a due date.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Existing tasks keep every value and become medium priority with no due date. Adding a
column with a constant default rewrites no row (PostgreSQL 11 and later).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRIORITY = postgresql.ENUM("low", "medium", "high", name="task_priority", create_type=False)


def upgrade() -> None:
    # An enum sorts in the order of its values: `order by priority desc` is high first.
    op.execute("create type task_priority as enum ('low', 'medium', 'high')")
    op.add_column("tasks", sa.Column("priority", PRIORITY, nullable=False, server_default="medium"))
    op.add_column("tasks", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
    # Led by user_id, as every index on tasks: a user's tasks by due date or by priority.
    op.create_index("tasks_user_due_idx", "tasks", ["user_id", "due_at", "id"])
    op.create_index("tasks_user_priority_idx", "tasks", ["user_id", "priority", "id"])
    # The grants on the new columns are today's sql/policies/tasks.sql, which names
    # columns of later revisions too: the last revision to change the table's columns
    # applies it (0012).


def downgrade() -> None:
    op.drop_index("tasks_user_priority_idx", "tasks")
    op.drop_index("tasks_user_due_idx", "tasks")
    op.drop_column("tasks", "due_at")
    op.drop_column("tasks", "priority")
    op.execute("drop type task_priority")
