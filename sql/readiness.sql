-- GET /readyz reads the migration revision as the runtime role, to tell a load balancer
-- whether this database is at the code's head. The revision says nothing about users.
-- Safe to run again: migrations re-apply this file whenever it changes.

grant select on alembic_version to todo_app;
