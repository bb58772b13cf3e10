"""The runtime role may read the migration revision (for GET /readyz).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from collections.abc import Sequence

from alembic import op

from app.migrate import apply_sql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Alembic has made alembic_version by the time any revision runs.
    apply_sql("readiness.sql")


def downgrade() -> None:
    op.execute("revoke select on alembic_version from todo_app")
