-- The user context that every row-level security policy trusts, and why SQL running as
-- the runtime role cannot forge it.
--
-- app/session.py starts each request's transaction with
--   select set_config('app.user_id', $1, true),
--          set_config('app.user_expires', $2, true),
--          set_config('app.user_sig', $3, true),
--          set_config('lock_timeout', $4, true),
--          set_config('app.user_kid', $5, true)
-- where user_sig = hex(HMAC-SHA256(key, user_id || '|' || user_expires)), user_expires
-- is a Unix time shortly ahead, and user_kid names the key. The keys are kept in
-- app.context_keys, which only todo_owner can read; app.current_user_id() runs as its
-- owner (SECURITY DEFINER) to check the signature. So the runtime role, which can call
-- set_config as it likes, cannot name another user (it cannot sign), nor replay a value
-- once it expired, even inside a transaction that began before the expiry.
--
-- More than one key is accepted while the key is rotated (docs/deploy.md, "Rotating the
-- context key"): the owner adds the new key, the instances move to it one by one, and
-- the old key is deleted; from the next statement on, contexts signed with it verify
-- no more.
--
-- A setting never set reads as NULL, one set in an earlier transaction reads as '':
-- either way, and for a bad signature, an unknown key id or a past expiry, the function
-- returns NULL, which matches no row: a missing or forged context fails closed.
-- Policies call it as (select app.current_user_id()): once per statement, and the
-- planner can use the (user_id, ...) indexes.
--
-- Safe to run again: migrations re-apply this file whenever it changes.

create schema if not exists app;

-- HMAC (RFC 2104) with SHA-256, each key stored as the inner and outer padded keys
-- ((key padded to 64 bytes) xor 0x36.., xor 0x5c..), so that checking needs no more
-- than two sha256() calls. `todo-api migrate` and `todo-api context-keys add` install
-- the key of RLS_CONTEXT_KEY; `todo-api context-keys retire` deletes the others. A key's
-- id is the first 16 hex digits of HMAC-SHA256(key, 'todo-api context key id'): the
-- service and this file derive the same id from the same key, and it says nothing of it.
create table if not exists app.context_keys (
  kid text primary key check (kid ~ '^[0-9a-f]{16}$'),
  inner_key bytea not null check (length(inner_key) = 64),
  outer_key bytea not null check (length(outer_key) = 64),
  added_at timestamptz not null default now()
);
revoke all on app.context_keys from public;

-- Before key ids (revision 0010) the one key was in app.context_key: it moves here,
-- under its id, and instances that still sign without an id keep working (below).
do $$
begin
  if to_regclass('app.context_key') is not null then
    insert into app.context_keys (kid, inner_key, outer_key)
    select left(encode(sha256(outer_key || sha256(inner_key || convert_to('todo-api context key id', 'UTF8'))), 'hex'), 16),
           inner_key, outer_key
    from app.context_key
    on conflict (kid) do nothing;
    drop table app.context_key;
  end if;
end
$$;

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
           current_setting('app.user_sig', true) as sig,
           nullif(current_setting('app.user_kid', true), '') as kid
  ) ctx
  -- The key the context names. A context without a key id (signed by a release before
  -- key ids, during the upgrade) is checked against each accepted key: it still needs
  -- a signature one of them made.
  join app.context_keys k on k.kid = ctx.kid or ctx.kid is null
  where ctx.expires ~ '^[0-9]{1,12}$'
    -- The statement's start, not the transaction's (now()): a context expires inside a
    -- transaction that is kept open past its expiry too.
    and to_timestamp(ctx.expires::bigint) > statement_timestamp()
    and ctx.sig = encode(
          sha256(k.outer_key || sha256(k.inner_key || convert_to(ctx.user_id || '|' || ctx.expires, 'UTF8'))),
          'hex')
  limit 1
$$;

comment on function app.current_user_id() is
  'The user this transaction acts for, when its signed context verifies; else NULL.';

revoke all on function app.current_user_id() from public;
grant usage on schema app to todo_app;
grant execute on function app.current_user_id() to todo_app;

-- The end of every request's use of its connection. app/session.py sends
--   commit; select app.end_request()        (or rollback; ...)
-- as one message (so that, behind PgBouncer too, it runs on the server connection the
-- request used), and this undoes what SQL inside the request may have left on the
-- connection for the next request to find: session-level settings (a `set` of
-- search_path or default_transaction_read_only, a custom setting holding data), LISTEN,
-- cursors WITH HOLD and advisory locks. A prepared statement made with SQL (PREPARE;
-- the service's driver prepares through the protocol, never with SQL) could stand
-- under a name the driver will use and run inside the next request's signed
-- transaction: it is deallocated, and the error TD001 tells the service to close the
-- connection rather than pool it. Temporary objects cannot exist: the runtime role may
-- not create them (sql/roles.sql). Names are schema-qualified: the caller's
-- search_path is not trusted.
create or replace function app.end_request()
returns void
language plpgsql
volatile
as $$
declare
  leftover record;
  prepared_with_sql boolean := false;
begin
  reset all;
  unlisten *;
  perform pg_catalog.pg_advisory_unlock_all();
  -- Cursors WITH HOLD (the portal running this statement is active, and stays open).
  execute 'close all';
  for leftover in select s.name from pg_catalog.pg_prepared_statements s where s.from_sql loop
    execute 'deallocate ' || pg_catalog.quote_ident(leftover.name);
    prepared_with_sql := true;
  end loop;
  if prepared_with_sql then
    raise exception 'a prepared statement was made with SQL on this connection; closing it'
      using errcode = 'TD001';
  end if;
end
$$;

comment on function app.end_request() is
  'Undoes the session state a request left behind; TD001: close the connection.';

revoke all on function app.end_request() from public;
grant execute on function app.end_request() to todo_app;

-- The key of the tasks' ETags (app/routes/tasks.py), made once here so that every
-- instance has the same one, whatever its RLS_CONTEXT_KEY: an ETag one instance gave
-- matches on every other, during a rotation of the context key too. It hides the row
-- version (xmin, a counter of every user's transactions) from HTTP clients; the
-- runtime role may read it, as it may read xmin itself.
create table if not exists app.etag_key (
  singleton boolean primary key default true check (singleton),
  key bytea not null check (length(key) = 32)
);
-- 244 random bits (two version-4 UUIDs, from the server's strong random source).
insert into app.etag_key (key)
values (sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())))
on conflict (singleton) do nothing;
revoke all on app.etag_key from public;
grant select on app.etag_key to todo_app;
