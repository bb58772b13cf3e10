-- The two roles of the Todo API, and what they may do in this database.
-- Run by a superuser or a role with CREATEROLE (on Neon, RDS: the database's admin role),
-- connected to the application's database:  psql "$ADMIN_URL" -f sql/roles.sql
-- Safe to run again. Passwords are the DBA's business: ALTER ROLE ... PASSWORD '...'.
--
--   todo_owner  owns the schema and runs the migrations; the service never connects as it.
--   todo_app    the runtime role the service connects as. Not superuser, no BYPASSRLS,
--               owns nothing, member of no role, creates nothing (not even temporary
--               objects): row-level security applies to every statement it runs, and
--               it cannot switch that off nor leave anything behind for the next request.

do $$
begin
  if not exists (select from pg_roles where rolname = 'todo_owner') then
    create role todo_owner login;
  end if;
  if not exists (select from pg_roles where rolname = 'todo_app') then
    create role todo_app login nosuperuser nobypassrls nocreatedb nocreaterole noinherit;
  end if;
end
$$;

-- The owner creates the schema objects; the runtime role may only connect.
-- TEMPORARY is granted to PUBLIC on every database by default, and a temporary object
-- outlives its transaction on a pooled connection: a temporary view named tasks, say,
-- would be read (pg_temp is searched first) by the next request on that connection,
-- inside that request's signed context. So nobody here may create one.
do $$
begin
  execute format('grant connect, create on database %I to todo_owner', current_database());
  execute format('grant connect on database %I to todo_app', current_database());
  execute format('revoke temporary on database %I from public, todo_owner, todo_app', current_database());
end
$$;

grant usage, create on schema public to todo_owner;
-- PostgreSQL 15 and later already deny CREATE on public to everyone else; older ones do
-- not, and a table the runtime role could create would be a table it owns.
revoke create on schema public from public;
