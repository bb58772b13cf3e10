-- The signed user context, set so that a distributed PostgreSQL (Citus) carries it to
-- its worker nodes. A prototype for docs/scale-out.md: nothing applies this file yet
-- (the service sets the context with set_config, app/session.py's SET_CONTEXT), and
-- bench/context_statement.py measures what it would cost.
--
-- Why a function of SET LOCALs. With citus.propagate_set_commands = local, Citus sends
-- a SET LOCAL that runs inside a transaction block to every worker connection the
-- transaction has open, and appends it to the BEGIN of every connection it opens later
-- (its utility hook, citus_ProcessUtilityInternal, calls PostprocessVariableSetStmt in
-- commands/variableset.c; StartRemoteTransactionBegin in transaction/remote_transaction.c
-- appends activeSetStmts). It does so for a SET LOCAL run through SPI too, as EXECUTE
-- runs it here: the hook checks IsMultiStatementTransaction() and the kind of
-- statement, not that it came from the client (Citus's own regression test
-- multi_rls_join_distribution_key runs its tenant's SET LOCAL in a DO block's EXECUTE).
-- set_config() is a function call: no utility statement, nothing sent, and the policies
-- on the workers would see no user. SET itself takes no bind parameters, so the values
-- come in as this function's arguments, bound by the caller exactly as set_config's
-- are, and are quoted into the statements with format's %L.
--
-- One EXECUTE per setting, not one EXECUTE of five statements: Citus forwards the text
-- of the whole query string for each SET it sees, and a string of five SETs would be
-- sent (and remembered for later connections) five times over.
--
-- The first SET LOCAL turns the forwarding on for the rest of the transaction, so that
-- it depends on no server or role setting (the audit and the service refuse settings on
-- the runtime role: docs/security.md). citus.propagate_set_commands is Citus's, PGC_USERSET
-- (shared_library_init.c), and is itself never forwarded (IsSettingSafeToPropagate in
-- connection/remote_commands.c); where Citus is not loaded it is a placeholder setting
-- like app.user_id, and changes nothing.
--
-- The caller: select app.set_context($1, $2, $3, $4, $5) as the transaction's first
-- statement, after BEGIN (SET LOCAL outside a transaction block only warns, and Citus
-- forwards only inside one). STRICT: a NULL argument sets nothing, and a transaction
-- without a context sees no user's rows, as app.current_user_id() fails closed.
-- Not SECURITY DEFINER: it sets the caller's own settings, which the caller could set
-- anyway; what makes the context trustworthy is the signature that
-- app.current_user_id() checks (sql/functions.sql).
--
-- Safe to run again.

create or replace function app.set_context(
  user_id text, expires text, sig text, kid text, lock_timeout text)
returns void
language plpgsql
volatile
strict
as $$
begin
  set local citus.propagate_set_commands = 'local';
  execute pg_catalog.format('set local app.user_id = %L', user_id);
  execute pg_catalog.format('set local app.user_expires = %L', expires);
  execute pg_catalog.format('set local app.user_sig = %L', sig);
  execute pg_catalog.format('set local app.user_kid = %L', kid);
  execute pg_catalog.format('set local lock_timeout = %L', lock_timeout);
end
$$;

comment on function app.set_context(text, text, text, text, text) is
  'Sets the signed user context with SET LOCAL, which Citus forwards to its workers.';

revoke all on function app.set_context(text, text, text, text, text) from public;
grant execute on function app.set_context(text, text, text, text, text) to todo_app;
