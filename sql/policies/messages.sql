-- Rule: the messages of a conversation can be read, written and deleted only by the
-- user whose id is the transaction's app.user_id; with no user set, no message matches
-- and no write passes. The keys add what a policy cannot: a message names its user
-- once, in user_id, and its foreign key carries it, (user_id, conversation_id) to
-- conversations, so a message of one user in another user's conversation cannot
-- exist, even for a role that row-level security does not hold.

alter table messages enable row level security;
alter table messages force row level security;

-- A message is written once; afterwards only its failure can be recorded (a user
-- message the provider did not answer). id and created_at come from the database.
revoke all on messages from todo_app;
grant select, delete on messages to todo_app;
grant insert (user_id, conversation_id, role, content, tool_calls, failure) on messages to todo_app;
grant update (failure) on messages to todo_app;

drop policy if exists messages_select_own on messages;
create policy messages_select_own on messages
  for select to todo_app
  using (user_id = (select app.current_user_id()));

drop policy if exists messages_insert_own on messages;
create policy messages_insert_own on messages
  for insert to todo_app
  with check (user_id = (select app.current_user_id()));

drop policy if exists messages_update_own on messages;
create policy messages_update_own on messages
  for update to todo_app
  using (user_id = (select app.current_user_id()))
  with check (user_id = (select app.current_user_id()));

drop policy if exists messages_delete_own on messages;
create policy messages_delete_own on messages
  for delete to todo_app
  using (user_id = (select app.current_user_id()));
