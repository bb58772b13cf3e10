-- Built-in accounts: the two narrow doors through which the runtime role reaches account
-- data beyond the caller's own row. Both run as their owner (todo_owner, SECURITY
-- DEFINER) with a fixed search_path, so a caller cannot slip its own objects in.
--
--   app.register_account  creates an account and its password hash; returns the account.
--   app.login_lookup      the user id and password hash for one email, for log-in to
--                         verify (argon2id, in the application); nothing else.
--
-- The runtime role has no privilege on account_passwords at all, and reads accounts only
-- through the policy in sql/policies/accounts.sql: its own row.
-- Safe to run again: migrations re-apply this file whenever it changes.

create or replace function app.register_account(p_email text, p_name text, p_password_hash text)
returns table (user_id text, email text, name text, created_at timestamptz)
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  new_id text := gen_random_uuid()::text;
begin
  insert into public.accounts (user_id, email, name) values (new_id, p_email, p_name);
  insert into public.account_passwords (user_id, password_hash) values (new_id, p_password_hash);
  return query
    select a.user_id::text, a.email::text, a.name::text, a.created_at
    from public.accounts a where a.user_id = new_id;
end
$$;

create or replace function app.login_lookup(p_email text)
returns table (user_id text, password_hash text)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select a.user_id::text, p.password_hash
  from public.accounts a
  join public.account_passwords p on p.user_id = a.user_id
  where a.email = p_email
$$;

revoke all on function app.register_account(text, text, text) from public;
revoke all on function app.login_lookup(text) from public;
grant execute on function app.register_account(text, text, text) to todo_app;
grant execute on function app.login_lookup(text) to todo_app;
