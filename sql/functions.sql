-- The user context that every row-level security policy compares against.
-- app/session.py sets app.user_id for one transaction only, with
--   select set_config('app.user_id', $1, true)
-- and this function reads it back. A setting that was never set reads as NULL, one
-- that was set in an earlier transaction reads as '' once that transaction ended:
-- both mean "no user", and NULL matches no row, so a missing context fails closed.
-- Policies call it as (select app.current_user_id()) so it runs once per statement
-- and the planner can use the (user_id, ...) indexes.

create or replace function app.current_user_id()
returns text
language sql
stable
parallel safe
as $$
  select nullif(current_setting('app.user_id', true), '')
$$;

comment on function app.current_user_id() is
  'The id of the user this transaction acts for, or NULL when none is set.';

grant usage on schema app to todo_app;
grant execute on function app.current_user_id() to todo_app;
