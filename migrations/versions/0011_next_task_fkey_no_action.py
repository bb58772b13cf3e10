"""A task's link to its next occurrence no longer sets itself to null on delete.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

tasks_next_task_fkey, (user_id, next_task_id) -> tasks (user_id, id), was ON DELETE SET
NULL (next_task_id). Citus refuses SET NULL on a foreign key that has the distribution
column among its columns, column list or not (EnsureSupportedFKeyOnDistKey in its
commands/foreign_constraint.c), so tasks could not be sharded by user_id (issue 14,
docs/scale-out.md). The key is now NO ACTION, and the statement that deletes a task
clears the link itself (app/service/tasks.py, _delete_sql), in the same statement: the
key is checked at its end, after the link is gone. No row changes.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _replace(action: str) -> None:
    op.execute("alter table tasks drop constraint tasks_next_task_fkey")
    # NOT VALID, then VALIDATE: the check of the existing rows takes a lock that lets
    # reads and writes go on, where ADD CONSTRAINT alone would hold them off throughout.
    op.execute(
        "alter table tasks add constraint tasks_next_task_fkey foreign key (user_id, next_task_id)"
        f" references tasks (user_id, id){action} not valid"
    )
    op.execute("alter table tasks validate constraint tasks_next_task_fkey")


def upgrade() -> None:
    _replace("")


def downgrade() -> None:
    _replace(" on delete set null (next_task_id)")
