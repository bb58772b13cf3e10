-- Functions the task statements of app/service/tasks.py call: a task's tags, the due date
-- of a recurring task's next occurrence, and full-text search. None of them is SECURITY
-- DEFINER: they run as their caller, the runtime role, under the same row-level
-- security as the statements that call them, and see only the caller's rows.
-- Names are schema-qualified: the caller's search_path is not trusted.
--
-- Safe to run again: migrations re-apply this file whenever it changes.

-- Copies the tags of the caller's tasks `task_ids` onto their rows: tasks.tag_names, the
-- names as the API answers them (sorted by their folded form, then by name), and
-- tasks.tag_keys, the folded forms in the same order. task_tags and tags are what a task's
-- tags are; the two columns are their copy, so that an answer or a tag filter reads the
-- task's row alone (bench/README.md, round 13). Every statement that changes a task's
-- links or a tag's name makes the copy again in the same transaction: the rename, merge
-- and delete of a tag call this (app/service/tags.py); app.set_task_tags below writes
-- the same arrays from the tags it has just linked. A task whose columns already hold
-- its tags is not written again.
create or replace function app.refresh_task_tags(task_ids bigint[])
returns void
language plpgsql
volatile
as $$
declare
  owner text := app.current_user_id();
begin
  update public.tasks t set tag_names = x.names, tag_keys = x.keys
  from (select t2.id,
               coalesce(array_agg(g.name::text order by g.folded, g.name) filter (where g.id is not null),
                        array[]::text[]) as names,
               coalesce(array_agg(g.folded::text order by g.folded, g.name) filter (where g.id is not null),
                        array[]::text[]) as keys
        from public.tasks t2
        left join public.task_tags tt on tt.user_id = t2.user_id and tt.task_id = t2.id
        left join public.tags g on g.user_id = tt.user_id and g.id = tt.tag_id
        where t2.user_id = owner and t2.id = any(task_ids)
        group by t2.id) x
  where t.user_id = owner and t.id = x.id
    and (t.tag_names, t.tag_keys) is distinct from (x.names, x.keys);
end
$$;

comment on function app.refresh_task_tags(bigint[]) is
  'Copies the caller''s tasks'' tags (task_tags, tags) onto their rows: tasks.tag_names and tasks.tag_keys.';

-- Sets task `task`'s tags to exactly `tag_names` (with their case-folded forms in
-- `tag_keys`, as app/models.py folds them: one folding for every way in, whatever the
-- database's locale), creating the caller's tags that do not exist yet. False when the
-- caller has no such task (another user's task is no such task). Each statement sees
-- what the ones before it wrote, and what other transactions have committed: a tag
-- another request of the same user created a moment ago is found, not made twice.
create or replace function app.set_task_tags(task bigint, tag_names text[], tag_keys text[])
returns boolean
language plpgsql
volatile
as $$
declare
  owner text := app.current_user_id();
begin
  -- The task's row lock first: two changes of one task's tags take turns, each seeing
  -- what the one before it committed, and so does a tag's rename, merge or delete,
  -- which locks the tasks that carry the tag (app/service/tags.py). Without it, two at
  -- once could leave the task with the links of both, and a copy of one.
  perform from public.tasks t where t.id = task and t.user_id = owner for update;
  if not found then
    return false;
  end if;
  insert into public.tags (user_id, name, folded)
  select owner, wanted.name, wanted.folded
  from unnest(tag_names, tag_keys) as wanted(name, folded)
  on conflict (user_id, folded) do nothing;
  delete from public.task_tags tt
  where tt.user_id = owner and tt.task_id = task
    and tt.tag_id not in (select g.id from public.tags g
                          where g.user_id = owner and g.folded = any(tag_keys));
  insert into public.task_tags (user_id, task_id, tag_id)
  select owner, task, g.id from public.tags g
  where g.user_id = owner and g.folded = any(tag_keys)
  on conflict do nothing;
  -- The task's copy of its tags (as app.refresh_task_tags makes it): its links are now
  -- exactly the caller's tags of these folded names, so they are read from tags alone,
  -- which costs a quarter less than the general refresh (bench/README.md, round 13).
  update public.tasks t set tag_names = x.names, tag_keys = x.keys
  from (select coalesce(array_agg(g.name::text order by g.folded, g.name), array[]::text[]) as names,
               coalesce(array_agg(g.folded::text order by g.folded, g.name), array[]::text[]) as keys
        from public.tags g
        where g.user_id = owner and g.folded = any(set_task_tags.tag_keys)) x
  where t.user_id = owner and t.id = task
    and (t.tag_names, t.tag_keys) is distinct from (x.names, x.keys);
  return true;
end
$$;

comment on function app.set_task_tags(bigint, text[], text[]) is
  'Sets a task''s tags (creating the caller''s missing tags); false when the caller has no such task.';

-- The due date of a recurring task's next occurrence, reckoned in UTC whatever the
-- session's time zone: a day or a week later; or the same day of the next month,
-- `anchor_day` (the day of the month the series started on), clamped to that month's
-- last day, so that a task due on the 31st recurs on Feb 28 (or 29), Mar 31, Apr 30.
create or replace function app.next_due(due timestamptz, recurrence text, anchor_day int)
returns timestamptz
language sql
immutable
parallel safe
as $$
  select case recurrence
    when 'daily' then ((due at time zone 'UTC') + interval '1 day') at time zone 'UTC'
    when 'weekly' then ((due at time zone 'UTC') + interval '7 days') at time zone 'UTC'
    when 'monthly' then (
      select (next_month
              + make_interval(days => least(anchor_day, extract(day from next_month + interval '1 month' - interval '1 day')::int) - 1)
              + (due at time zone 'UTC')::time) at time zone 'UTC'
      from (select date_trunc('month', due at time zone 'UTC') + interval '1 month' as next_month) m)
  end
$$;

comment on function app.next_due(timestamptz, text, int) is
  'The next due date of a daily, weekly or monthly task, in UTC.';

-- What full-text search matches a task by: its title and description, as English words
-- (stemmed: "grocery" finds "groceries") and as plain words (no stop words dropped,
-- no stemming: "runn" finds "running", "the" finds "the").
create or replace function app.task_search_vector(title text, description text)
returns tsvector
language sql
immutable
parallel safe
as $$
  select pg_catalog.to_tsvector('pg_catalog.english', title || ' ' || coalesce(description, ''))
         || pg_catalog.to_tsvector('pg_catalog.simple', title || ' ' || coalesce(description, ''))
$$;

-- The query for what a person typed: every word must match, as a word or the start of
-- one ("groc" finds "groceries"), in either of the vector's two forms. Built with
-- plainto_tsquery, which takes any text (no operators, no syntax errors), then each of
-- its terms made a prefix.
create or replace function app.task_search_query(typed text)
returns tsquery
language sql
immutable
parallel safe
as $$
  select pg_catalog.regexp_replace(pg_catalog.plainto_tsquery('pg_catalog.english', typed)::text,
                                   '''( |$)', ''':*\1', 'g')::tsquery
         || pg_catalog.regexp_replace(pg_catalog.plainto_tsquery('pg_catalog.simple', typed)::text,
                                      '''( |$)', ''':*\1', 'g')::tsquery
$$;

revoke all on function app.refresh_task_tags(bigint[]) from public;
revoke all on function app.set_task_tags(bigint, text[], text[]) from public;
revoke all on function app.next_due(timestamptz, text, int) from public;
revoke all on function app.task_search_vector(text, text) from public;
revoke all on function app.task_search_query(text) from public;
grant execute on function app.refresh_task_tags(bigint[]) to todo_app;
grant execute on function app.set_task_tags(bigint, text[], text[]) to todo_app;
grant execute on function app.next_due(timestamptz, text, int) to todo_app;
grant execute on function app.task_search_vector(text, text) to todo_app;
grant execute on function app.task_search_query(text) to todo_app;
