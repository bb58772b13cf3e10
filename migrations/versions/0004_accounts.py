"""Built-in accounts: accounts, account_passwords, their policies and functions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.migrate import apply_sql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("user_id", sa.String(255), primary_key=True),
        # Stored lower-cased and trimmed by the API, so one address is one account.
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "account_passwords",
        sa.Column(
            "user_id",
            sa.String(255),
            sa.ForeignKey("accounts.user_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("password_hash", sa.Text, nullable=False),
    )
    apply_sql("policies/accounts.sql")
    apply_sql("policies/account_passwords.sql")
    apply_sql("accounts.sql")


def downgrade() -> None:
    op.execute("drop function if exists app.register_account(text, text, text)")
    op.execute("drop function if exists app.login_lookup(text)")
    op.drop_table("account_passwords")
    op.drop_table("accounts")
