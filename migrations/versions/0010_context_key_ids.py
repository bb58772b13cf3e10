"""Context keys with ids, more than one at a time; an ETag key shared by every instance.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

functions.sql again: app.context_key (one key) becomes app.context_keys (kid -> key),
the existing key moving there under its id, so that the context key can be rotated
without stopping the service (docs/deploy.md, "Rotating the context key");
app.current_user_id() checks a signature under the key the context names, or, for
instances of the previous release that name none, under any accepted key. And
app.etag_key: the tasks' ETags no longer derive from RLS_CONTEXT_KEY, so an ETag holds
on every instance whichever key it signs with. ETags given before this revision no
longer match (a client's If-Match gets 412 once, and it reads the task again).
"""

from collections.abc import Sequence

from alembic import op

from app.migrate import apply_sql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    apply_sql("functions.sql")


# The function as revisions 0006-0009 had it, reading the one key of app.context_key.
_SINGLE_KEY_FUNCTION = """
create table app.context_key (
  singleton boolean primary key default true check (singleton),
  inner_key bytea not null check (length(inner_key) = 64),
  outer_key bytea not null check (length(outer_key) = 64)
);
revoke all on app.context_key from public;
-- The newest key: the one the instances moved to last.
insert into app.context_key (singleton, inner_key, outer_key)
select true, inner_key, outer_key from app.context_keys order by added_at desc, kid limit 1;

create or replace function app.current_user_id()
returns text
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select ctx.user_id
  from (
    select nullif(current_setting('app.user_id', true), '') as user_id,
           current_setting('app.user_expires', true) as expires,
           current_setting('app.user_sig', true) as sig
  ) ctx
  cross join app.context_key k
  where ctx.expires ~ '^[0-9]{1,12}$'
    and to_timestamp(ctx.expires::bigint) > statement_timestamp()
    and ctx.sig = encode(
          sha256(k.outer_key || sha256(k.inner_key || convert_to(ctx.user_id || '|' || ctx.expires, 'UTF8'))),
          'hex')
$$;

drop table app.context_keys;
drop table app.etag_key;
"""


def downgrade() -> None:
    op.get_bind().exec_driver_sql(_SINGLE_KEY_FUNCTION)
