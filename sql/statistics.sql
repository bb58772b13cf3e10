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

alter table tasks alter column title set statistics 0;
alter table tasks alter column description set statistics 0;

-- A statistics target of 0 stops ANALYZE from gathering more, but keeps what it
-- gathered before; PostgreSQL 18 lets the table's owner clear it.
do $$
begin
  if current_setting('server_version_num')::int >= 180000 then
    perform pg_clear_attribute_stats('public', 'tasks', column_name::name, false)
    from unnest(array['title', 'description']) column_name;
  end if;
end
$$;
