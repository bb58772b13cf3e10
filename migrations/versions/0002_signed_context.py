"""Signed user context: app.context_key and an app.current_user_id() that verifies it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from collections.abc import Sequence

from app.migrate import apply_sql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    apply_sql("functions.sql")


def downgrade() -> None:
    # Nothing to undo: revision 0001 applies today's functions.sql too, so a database at
    # 0001 has this same signed context.
    pass
