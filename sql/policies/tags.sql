-- Rule: a tag can be read, created, renamed and deleted only by the user whose id is the
-- transaction's app.user_id; with no user set, no tag matches and no write passes.
-- Tags are each user's own: another user's tag of the same name is another row, which
-- no statement of the caller's can see, match or clash with.

alter table tags enable row level security;
alter table tags force row level security;

-- id and created_at come from the database; user_id is fixed once written.
revoke all on tags from todo_app;
grant select, delete on tags to todo_app;
grant insert (user_id, name, folded) on tags to todo_app;
grant update (name, folded) on tags to todo_app;

drop policy if exists tags_select_own on tags;
create policy tags_select_own on tags
  for select to todo_app
  using (user_id = (select app.current_user_id()));

drop policy if exists tags_insert_own on tags;
create policy tags_insert_own on tags
  for insert to todo_app
  with check (user_id = (select app.current_user_id()));

drop policy if exists tags_update_own on tags;
create policy tags_update_own on tags
  for update to todo_app
  using (user_id = (select app.current_user_id()))
  with check (user_id = (select app.current_user_id()));

drop policy if exists tags_delete_own on tags;
create policy tags_delete_own on tags
  for delete to todo_app
  using (user_id = (select app.current_user_id()));
