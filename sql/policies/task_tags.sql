-- Rule: which tags a task carries can be read, added and removed only by the user whose
-- id is the transaction's app.user_id; with no user set, no link matches and no write
-- passes. The keys add what a policy cannot: a link names its user once, in user_id,
-- and both of its foreign keys carry it, (user_id, task_id) to tasks and (user_id,
-- tag_id) to tags, so a task of one user carrying a tag of another cannot exist, even
-- for a role that row-level security does not hold.

alter table task_tags enable row level security;
alter table task_tags force row level security;

-- A link is made or removed, never changed.
revoke all on task_tags from todo_app;
grant select, delete on task_tags to todo_app;
grant insert (user_id, task_id, tag_id) on task_tags to todo_app;

drop policy if exists task_tags_select_own on task_tags;
create policy task_tags_select_own on task_tags
  for select to todo_app
  using (user_id = (select app.current_user_id()));

drop policy if exists task_tags_insert_own on task_tags;
create policy task_tags_insert_own on task_tags
  for insert to todo_app
  with check (user_id = (select app.current_user_id()));

drop policy if exists task_tags_delete_own on task_tags;
create policy task_tags_delete_own on task_tags
  for delete to todo_app
  using (user_id = (select app.current_user_id()));
