"""Column-level grants on tasks: the runtime role cannot choose an id or move a row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from collections.abc import Sequence

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # It applied sql/policies/tasks.sql, which now names columns of later revisions: that
    # revision applies it (see 0001). A database past this revision already has it.
    pass


def downgrade() -> None:
    pass
