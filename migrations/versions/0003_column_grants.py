"""Column-level grants on tasks: the runtime role cannot choose an id or move a row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from collections.abc import Sequence

from app.migrate import apply_sql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    apply_sql("policies/tasks.sql")


def downgrade() -> None:
    # Revision 0001 applies today's policies/tasks.sql too: nothing to undo.
    pass
