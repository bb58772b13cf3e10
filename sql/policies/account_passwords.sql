-- Rule: password hashes are never visible to the runtime role, not even the caller's
-- own; only the sign-up and log-in functions of sql/accounts.sql, which run as
-- todo_owner, write and read them.

alter table account_passwords enable row level security;
alter table account_passwords force row level security;

revoke all on account_passwords from todo_app;

-- For app.register_account and app.login_lookup only (they run as the owner).
drop policy if exists account_passwords_select_definer on account_passwords;
create policy account_passwords_select_definer on account_passwords
  for select to todo_owner
  using (true);

drop policy if exists account_passwords_insert_definer on account_passwords;
create policy account_passwords_insert_definer on account_passwords
  for insert to todo_owner
  with check (true);
