-- Planner statistics that would describe other users' rows.
--
-- The planner estimates with a column's statistics (most common values, histograms)
-- whatever row-level security hides, whenever the operator is leakproof (text equality
-- is). So EXPLAIN, which the runtime role may run, turns them into answers:
-- `explain select * from tasks where title = 'Payroll 2027'` estimates more than one
-- row exactly when some user has a task of that title. Free text is where that tells
-- most, and no plan needs it: title and description keep no statistics.
-- user_id, completed and the timestamps keep theirs, which the plans rely on; what
-- they still reveal is in docs/security.md ("The planner's statistics").
--
-- Safe to run again: migrations re-apply this file whenever it changes.

-- Tags' names are free text too, and so are the conversations with the assistant: their
-- titles, the messages' content, and the tool calls (which carry what the user wrote
-- into the tools' arguments). The list is of the columns of every revision: this file
-- is applied by revisions older than some of them, so a missing table is skipped.
do $$
declare
  target record;
begin
  for target in
    select t.table_name, t.column_name
    from (values ('tasks', 'title'), ('tasks', 'description'), ('tags', 'name'), ('tags', 'folded'),
                 ('conversations', 'title'), ('messages', 'content'), ('messages', 'tool_calls'))
           as t(table_name, column_name)
    where to_regclass('public.' || t.table_name) is not null
  loop
    execute 'alter table public.' || quote_ident(target.table_name)
            || ' alter column ' || quote_ident(target.column_name) || ' set statistics 0';
    -- A statistics target of 0 stops ANALYZE from gathering more, but keeps what it
    -- gathered before; PostgreSQL 18 lets the table's owner clear it.
    if current_setting('server_version_num')::int >= 180000 then
      perform pg_clear_attribute_stats('public', target.table_name::name, target.column_name::name, false);
    end if;
  end loop;
end
$$;
