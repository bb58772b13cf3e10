"""Conversations with the assistant, and their messages.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

Two new tables of user data, under row-level security like tasks and tags. Both have
primary keys (user_id, id), and a message references its conversation with (user_id,
conversation_id): a message of one user in another user's conversation cannot be
stored, by any role. Existing rows are not touched.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.migrate import apply_sql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = postgresql.ENUM("user", "assistant", "tool", name="message_role", create_type=False)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("user_id", "id", name="conversations_pkey"),
        sa.CheckConstraint("length(btrim(title)) between 1 and 200", name="conversations_title_length"),
    )
    # A user's conversations, the most recently active first (the list's order).
    op.create_index(
        "conversations_user_updated_idx",
        "conversations",
        ["user_id", sa.text("updated_at desc"), sa.text("id desc")],
    )

    op.execute("create type message_role as enum ('user', 'assistant', 'tool')")
    op.create_table(
        "messages",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("conversation_id", sa.BigInteger, nullable=False),
        sa.Column("role", ROLE, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        # The assistant's tool calls, as the provider gave them: a JSON array.
        sa.Column("tool_calls", postgresql.JSONB, nullable=True),
        # Why no answer came to this user message (the provider failed); the history
        # sent to the provider leaves such messages out.
        sa.Column("failure", sa.String(40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("user_id", "id", name="messages_pkey"),
        sa.ForeignKeyConstraint(
            ["user_id", "conversation_id"],
            ["conversations.user_id", "conversations.id"],
            name="messages_conversation_fkey",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("failure is null or role = 'user'", name="messages_failure_only_user"),
        sa.CheckConstraint(
            "failure in ('provider_error', 'provider_timeout')", name="messages_failure_known"
        ),
        sa.CheckConstraint(
            "tool_calls is null or jsonb_typeof(tool_calls) = 'array'", name="messages_tool_calls_array"
        ),
    )
    # A conversation's messages in order; also what the cascade from a conversation reads.
    op.create_index("messages_user_conversation_idx", "messages", ["user_id", "conversation_id", "id"])

    # conversations.title and messages.content (and tool_calls) are free text.
    apply_sql("statistics.sql")
    apply_sql("policies/conversations.sql")
    apply_sql("policies/messages.sql")


def downgrade() -> None:
    op.drop_table("messages")
    op.drop_table("conversations")
    op.execute("drop type message_role")
