-- Rule: a conversation with the assistant can be read, started, renamed, marked active
-- and deleted only by the user whose id is the transaction's app.user_id; with no user
-- set, no conversation matches and no write passes.

alter table conversations enable row level security;
alter table conversations force row level security;

-- id and created_at come from the database; user_id is fixed once written.
revoke all on conversations from todo_app;
grant select, delete on conversations to todo_app;
grant insert (user_id, title) on conversations to todo_app;
grant update (title, updated_at) on conversations to todo_app;

drop policy if exists conversations_select_own on conversations;
create policy conversations_select_own on conversations
  for select to todo_app
  using (user_id = (select app.current_user_id()));

drop policy if exists conversations_insert_own on conversations;
create policy conversations_insert_own on conversations
  for insert to todo_app
  with check (user_id = (select app.current_user_id()));

drop policy if exists conversations_update_own on conversations;
create policy conversations_update_own on conversations
  for update to todo_app
  using (user_id = (select app.current_user_id()))
  with check (user_id = (select app.current_user_id()));

drop policy if exists conversations_delete_own on conversations;
create policy conversations_delete_own on conversations
  for delete to todo_app
  using (user_id = (select app.current_user_id()));
