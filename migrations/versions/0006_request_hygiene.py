"""Nothing a request leaves on its connection reaches the next request; contexts expire
inside open transactions; no planner statistics on free text.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

functions.sql again: app.current_user_id() checks the expiry against the statement's
time, and app.end_request() cleans a connection between requests. statistics.sql: no
statistics on title and description. Revoking TEMPORARY is sql/roles.sql's (database
privileges are the database owner's, not todo_owner's): re-run it on upgrade.
"""

from collections.abc import Sequence

from alembic import op

from app.migrate import apply_sql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    apply_sql("functions.sql")
    apply_sql("statistics.sql")


def downgrade() -> None:
    op.execute("drop function if exists app.end_request()")
    op.execute("alter table tasks alter column title set statistics -1")
    op.execute("alter table tasks alter column description set statistics -1")
