"""Tags, recurring tasks and full-text search.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

Existing tasks keep every value: they carry no tags, do not recur, and are found by
search through their title and description as they are.

tasks' primary key becomes (user_id, id): the foreign keys of task_tags (and of a task
to its next occurrence) name user_id on both sides, so that no row of one user can ever
reference a row of another, which needs a key on (user_id, id) to reference. It
replaces the key on id alone rather than adding a second index to every insert; every
statement of the service names the user with the id.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.migrate import apply_sql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECURRENCE = postgresql.ENUM("daily", "weekly", "monthly", name="task_recurrence", create_type=False)


def upgrade() -> None:
    op.execute("create unique index tasks_user_id_id_key on tasks (user_id, id)")
    op.execute("alter table tasks drop constraint tasks_pkey")
    op.execute("alter table tasks add constraint tasks_pkey primary key using index tasks_user_id_id_key")

    op.execute("create type task_recurrence as enum ('daily', 'weekly', 'monthly')")
    op.add_column("tasks", sa.Column("recurrence", RECURRENCE, nullable=True))
    # The day of the month a monthly series started on, carried from one occurrence to
    # the next (the 31st stays the 31st after February's 28th); null: due_at's own day.
    op.add_column("tasks", sa.Column("recurrence_day", sa.SmallInteger, nullable=True))
    # The occurrence that completing this one created: set once, so that completing it
    # again makes no second one.
    op.add_column("tasks", sa.Column("next_task_id", sa.BigInteger, nullable=True))
    op.create_check_constraint(
        "tasks_recurrence_needs_due_at", "tasks", "recurrence is null or due_at is not null"
    )
    op.create_check_constraint("tasks_recurrence_day_range", "tasks", "recurrence_day between 1 and 31")
    op.execute(
        "alter table tasks add constraint tasks_next_task_fkey foreign key (user_id, next_task_id)"
        " references tasks (user_id, id) on delete set null (next_task_id)"
    )

    op.create_table(
        "tags",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), nullable=False),
        # As the user first wrote it; `folded` is what names are matched by (NFKC case
        # folding, app.models.fold_tag), the same for every way in and every locale.
        # NFKC makes up to 18 characters of one (U+FDFA): 50 fold to at most 900.
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("folded", sa.String(900), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("user_id", "id", name="tags_pkey"),
        sa.CheckConstraint(
            # The control characters app.models refuses (C0, DEL, C1), as code points: a
            # class such as [[:cntrl:]] would depend on the database's locale.
            "char_length(name) between 1 and 50 and name = btrim(name)"
            " and name !~ '[\\x01-\\x1f\\x7f-\\x9f]'",
            name="tags_name_valid",
        ),
        sa.CheckConstraint("char_length(folded) >= 1", name="tags_folded_valid"),
    )
    # Per user: another user's tag of the same name never clashes.
    op.create_index("tags_user_folded_key", "tags", ["user_id", "folded"], unique=True)

    op.create_table(
        "task_tags",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("task_id", sa.BigInteger, nullable=False),
        sa.Column("tag_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "task_id", "tag_id", name="task_tags_pkey"),
        sa.ForeignKeyConstraint(
            ["user_id", "task_id"],
            ["tasks.user_id", "tasks.id"],
            name="task_tags_task_fkey",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id", "tag_id"], ["tags.user_id", "tags.id"], name="task_tags_tag_fkey", ondelete="CASCADE"
        ),
    )
    # A user's tasks with a given tag, for the tag filter and the counts.
    op.create_index("task_tags_user_tag_idx", "task_tags", ["user_id", "tag_id", "task_id"])

    apply_sql("task_functions.sql")
    apply_sql("statistics.sql")
    # Today's grants and policies: the runtime role may set the new columns. Those of
    # tasks (sql/policies/tasks.sql) name columns of 0012 too, which applies them (0001).
    apply_sql("policies/tags.sql")
    apply_sql("policies/task_tags.sql")


def downgrade() -> None:
    op.drop_table("task_tags")
    op.drop_table("tags")
    for function in (
        # Made by this revision's sql/task_functions.sql, which is today's (0012 drops it
        # on its way down).
        "app.refresh_task_tags(bigint[])",
        "app.set_task_tags(bigint, text[], text[])",
        "app.next_due(timestamptz, text, int)",
        "app.task_search_vector(text, text)",
        "app.task_search_query(text)",
    ):
        op.execute(f"drop function if exists {function}")
    op.drop_constraint("tasks_next_task_fkey", "tasks")
    op.drop_column("tasks", "next_task_id")
    op.drop_column("tasks", "recurrence_day")
    op.drop_column("tasks", "recurrence")
    op.execute("drop type task_recurrence")
    op.execute("create unique index tasks_id_key on tasks (id)")
    op.execute("alter table tasks drop constraint tasks_pkey")
    op.execute("alter table tasks add constraint tasks_pkey primary key using index tasks_id_key")
