-- Rule: the runtime role reads only the account whose user_id is the transaction's
-- app.user_id, and writes none; the sign-up and log-in functions of sql/accounts.sql,
-- which run as todo_owner, create accounts and look them up by email.

alter table accounts enable row level security;
alter table accounts force row level security;

revoke all on accounts from todo_app;
grant select on accounts to todo_app;

drop policy if exists accounts_select_own on accounts;
create policy accounts_select_own on accounts
  for select to todo_app
  using (user_id = (select app.current_user_id()));

-- For app.register_account and app.login_lookup only (they run as the owner).
drop policy if exists accounts_select_definer on accounts;
create policy accounts_select_definer on accounts
  for select to todo_owner
  using (true);

drop policy if exists accounts_insert_definer on accounts;
create policy accounts_insert_definer on accounts
  for insert to todo_owner
  with check (true);
