"""A task's tag names on its own row.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

tasks gains tag_names (the names of the tags the task carries, sorted as the API answers
them) and tag_keys (their folded forms, in the same order): a copy of task_tags and tags,
kept by app.refresh_task_tags (sql/task_functions.sql) in the same transaction as every
change of a task's links or a tag's name. An answer then reads the task's row alone, and
a tag filter matches on it, without reading task_tags and tags, whose policies would
each check the signed context once more (bench/README.md, round 13).

Existing tasks get their tags copied here. The copy reads and writes every user's rows,
which the owner role, held to row-level security like everyone else (FORCE), cannot: the
three tables are released from FORCE for this transaction only and held to it again
before it commits. No other session sees them released, since ALTER TABLE holds an
exclusive lock on each until then. On a large database the copy rewrites every tagged
task in this one transaction.

The grants of sql/policies/tasks.sql name the new columns, so this revision applies that
file now (0008 did before); and it applies sql/task_functions.sql, whose
app.set_task_tags now keeps the copy.
"""

from collections.abc import Sequence

from alembic import op

from app.migrate import apply_sql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("tasks", "task_tags", "tags")

# What app.refresh_task_tags writes, for every tagged task of every user at once.
COPY = """
update tasks t set tag_names = x.names, tag_keys = x.keys
from (select tt.user_id, tt.task_id,
             array_agg(g.name::text order by g.folded, g.name) as names,
             array_agg(g.folded::text order by g.folded, g.name) as keys
      from task_tags tt join tags g on g.user_id = tt.user_id and g.id = tt.tag_id
      group by tt.user_id, tt.task_id) x
where t.user_id = x.user_id and t.id = x.task_id
"""

# app.set_task_tags as 0008 made it, before it kept the copy: what downgrade restores.
SET_TASK_TAGS_0008 = """
create or replace function app.set_task_tags(task bigint, tag_names text[], tag_keys text[])
returns boolean
language plpgsql
volatile
as $$
declare
  owner text := app.current_user_id();
begin
  perform from public.tasks t where t.id = task and t.user_id = owner;
  if not found then
    return false;
  end if;
  insert into public.tags (user_id, name, folded)
  select owner, wanted.name, wanted.folded
  from unnest(tag_names, tag_keys) as wanted(name, folded)
  on conflict (user_id, folded) do nothing;
  delete from public.task_tags tt
  where tt.user_id = owner and tt.task_id = task
    and tt.tag_id not in (select g.id from public.tags g
                          where g.user_id = owner and g.folded = any(tag_keys));
  insert into public.task_tags (user_id, task_id, tag_id)
  select owner, task, g.id from public.tags g
  where g.user_id = owner and g.folded = any(tag_keys)
  on conflict do nothing;
  return true;
end
$$
"""


def upgrade() -> None:
    # Not null with a constant default: no table rewrite, untagged tasks are done.
    op.execute("alter table tasks add column tag_names text[] not null default '{}'")
    op.execute("alter table tasks add column tag_keys text[] not null default '{}'")
    for table in TABLES:
        op.execute(f"alter table {table} no force row level security")
    op.execute(COPY)
    for table in TABLES:
        op.execute(f"alter table {table} force row level security")
    apply_sql("task_functions.sql")
    apply_sql("policies/tasks.sql")


def downgrade() -> None:
    op.execute(SET_TASK_TAGS_0008)
    op.execute("drop function app.refresh_task_tags(bigint[])")
    op.drop_column("tasks", "tag_keys")
    op.drop_column("tasks", "tag_names")
