-- Rule: a task can be read, created, changed and deleted only by the user whose id is
-- the transaction's app.user_id; with no user set, no task matches and no write passes.

alter table tasks enable row level security;
-- FORCE holds the table's owner to row-level security too. No policy names todo_owner,
-- so a connection as the owner (a mistaken DATABASE_URL, say) sees and changes no rows.
alter table tasks force row level security;

-- Only the columns a user may set. id and created_at come from the database, so no
-- statement can pick an id to probe whether another user's row has it (a primary key
-- check sees every row, row-level security or not); user_id is fixed once written.
revoke all on tasks from todo_app;
grant select, delete on tasks to todo_app;
-- tag_names and tag_keys are a copy of the task's tags (app.refresh_task_tags): a
-- statement that wrote other values there would only misstate the caller's own task.
grant insert (user_id, title, description, completed, priority, due_at, recurrence, recurrence_day,
              tag_names, tag_keys)
  on tasks to todo_app;
grant update (title, description, completed, priority, due_at, recurrence, recurrence_day, next_task_id,
              updated_at, tag_names, tag_keys)
  on tasks to todo_app;

drop policy if exists tasks_select_own on tasks;
create policy tasks_select_own on tasks
  for select to todo_app
  using (user_id = (select app.current_user_id()));

drop policy if exists tasks_insert_own on tasks;
create policy tasks_insert_own on tasks
  for insert to todo_app
  with check (user_id = (select app.current_user_id()));

drop policy if exists tasks_update_own on tasks;
create policy tasks_update_own on tasks
  for update to todo_app
  using (user_id = (select app.current_user_id()))
  with check (user_id = (select app.current_user_id()));

drop policy if exists tasks_delete_own on tasks;
create policy tasks_delete_own on tasks
  for delete to todo_app
  using (user_id = (select app.current_user_id()));
