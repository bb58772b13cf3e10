-- The user context that every row-level security policy trusts, and why SQL running as
-- the runtime role cannot forge it.
--
-- app/session.py starts each request's transaction with
--   select set_config('app.user_id', $1, true),
--          set_config('app.user_expires', $2, true),
--          set_config('app.user_sig', $3, true)
-- where user_sig = hex(HMAC-SHA256(key, user_id || '|' || user_expires)) and
-- user_expires is a Unix time shortly ahead. The key is kept in app.context_key, which
-- only todo_owner can read; app.current_user_id() runs as its owner (SECURITY DEFINER)
-- to check the signature. So the runtime role, which can call set_config as it likes,
-- cannot name another user (it cannot sign), nor replay a value once it expired.
--
-- A setting never set reads as NULL, one set in an earlier transaction reads as '':
-- either way, and for a bad signature or a past expiry, the function returns NULL,
-- which matches no row: a missing or forged context fails closed.
-- Policies call it as (select app.current_user_id()): once per statement, and the
-- planner can use the (user_id, ...) indexes.
--
-- Safe to run again: migrations re-apply this file whenever it changes.

create schema if not exists app;

-- HMAC (RFC 2104) with SHA-256, its key stored as the inner and outer padded keys
-- ((key padded to 64 bytes) xor 0x36.., xor 0x5c..), so that checking needs no more
-- than two sha256() calls. `todo-api migrate` installs it from RLS_CONTEXT_KEY.
create table if not exists app.context_key (
  singleton boolean primary key default true check (singleton),
  inner_key bytea not null check (length(inner_key) = 64),
  outer_key bytea not null check (length(outer_key) = 64)
);
revoke all on app.context_key from public;

create or replace function app.current_user_id()
returns text
language sql
stable
security definer
-- A SECURITY DEFINER function must not resolve names through a schema its caller controls.
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
    and to_timestamp(ctx.expires::bigint) > now()
    and ctx.sig = encode(
          sha256(k.outer_key || sha256(k.inner_key || convert_to(ctx.user_id || '|' || ctx.expires, 'UTF8'))),
          'hex')
$$;

comment on function app.current_user_id() is
  'The user this transaction acts for, when its signed context verifies; else NULL.';

revoke all on function app.current_user_id() from public;
grant usage on schema app to todo_app;
grant execute on function app.current_user_id() to todo_app;
