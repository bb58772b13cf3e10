"""What row-level security the database has, and what sql/policies/ says it should have.

Both are read the same way, from the catalogs, so that the comparison is of what
PostgreSQL made of the SQL (pg_get_expr's normal form), not of how the SQL was typed.
"""

from typing import Any

import psycopg
from psycopg import sql

from app.config import RUNTIME_ROLE
from app.paths import SQL_DIR, read_sql

# One row per table in the public schema: its RLS flags, the runtime role's privileges
# on it, and its policies in a stable order.
_SNAPSHOT = """
select c.relname as table,
       c.relrowsecurity as rls_enabled,
       c.relforcerowsecurity as rls_forced,
       -- What the runtime role may do (on the table or on some of its columns), and
       -- exactly which columns, so that a changed column grant is drift too.
       array(select privilege from unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE',
                                                'TRUNCATE', 'REFERENCES', 'TRIGGER']) privilege
             where case when privilege in ('DELETE', 'TRUNCATE', 'TRIGGER')
                        then has_table_privilege(%(runtime)s, c.oid, privilege)
                        else has_any_column_privilege(%(runtime)s, c.oid, privilege) end
             order by 1) as runtime_grants,
       array(select g.privilege_type || ' (' || g.column_name || ')'
             from information_schema.column_privileges g
             where g.table_schema = 'public' and g.table_name = c.relname and g.grantee = %(runtime)s
             order by 1) as runtime_column_grants,
       coalesce(jsonb_agg(jsonb_build_object(
           'name', p.polname,
           'command', case p.polcmd when 'r' then 'SELECT' when 'a' then 'INSERT'
                        when 'w' then 'UPDATE' when 'd' then 'DELETE' else 'ALL' end,
           'permissive', p.polpermissive,
           'roles', array(select case r when 0 then 'public' else r::regrole::text end
                          from unnest(p.polroles) r order by 1),
           'using', pg_get_expr(p.polqual, p.polrelid),
           'with_check', pg_get_expr(p.polwithcheck, p.polrelid))
         order by p.polname) filter (where p.polname is not null), '[]') as policies
from pg_class c
left join pg_policy p on p.polrelid = c.oid
where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')
  and c.relname <> 'alembic_version'
group by c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity
order by c.relname
"""


def policy_files() -> dict[str, str]:
    """table name -> path under sql/ of the file with its rules."""
    return {path.stem: f"policies/{path.name}" for path in sorted((SQL_DIR / "policies").glob("*.sql"))}


def live_state(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """The row-level security each table has now."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute(_SNAPSHOT, {"runtime": RUNTIME_ROLE}).fetchall()
    return {row.pop("table"): row for row in rows}


def declared_state(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """The row-level security that sql/policies/ describes for the tables that exist,
    read by applying the files to a blank slate inside a transaction that is rolled
    back. Needs the role that owns the tables."""
    files = policy_files()
    with conn.transaction(force_rollback=True):
        for table in live_state(conn):
            name = sql.Identifier(table)
            for (policy,) in conn.execute(
                "select polname from pg_policy where polrelid = %s::regclass", (table,)
            ).fetchall():
                conn.execute(sql.SQL("drop policy {} on {}").format(sql.Identifier(policy), name))
            conn.execute(sql.SQL("alter table {} no force row level security").format(name))
            conn.execute(sql.SQL("alter table {} disable row level security").format(name))
            conn.execute(sql.SQL("revoke all on {} from {}").format(name, sql.Identifier(RUNTIME_ROLE)))
            if table in files:
                conn.execute(read_sql(files[table]))
        return live_state(conn)


def drift(conn: psycopg.Connection) -> dict[str, dict[str, tuple[Any, Any]]]:
    """table -> {aspect: (live, declared)} for every difference; empty when none."""
    live, declared = live_state(conn), declared_state(conn)
    differences: dict[str, dict[str, tuple[Any, Any]]] = {}
    for table in sorted(set(live) | set(declared)):
        have, want = live.get(table, {}), declared.get(table, {})
        changed = {
            key: (have.get(key), want.get(key))
            for key in set(have) | set(want)
            if have.get(key) != want.get(key)
        }
        if changed:
            differences[table] = changed
    return differences


# The tables of user data (those with a user_id column), with that column's number.
_USER_TABLES = """
with user_tables as (
  select c.oid, c.relname, a.attnum as user_col
  from pg_class c join pg_attribute a on a.attrelid = c.oid
  where a.attname = 'user_id' and not a.attisdropped and c.relkind in ('r', 'p')
    and c.relnamespace = 'public'::regnamespace
)
"""

# Uniqueness, exclusion and foreign-key checks see every row, whatever row-level security
# says, so their errors can tell a user that another user's row exists. On a table of
# user data, a unique index must include user_id (then it only ever compares a user's
# own rows), and an exclusion constraint must compare user_id with =, unless the runtime
# role cannot write any column the index reads (an id the database assigns): its key
# columns and those of its expressions (pg_depend). And a foreign key between such
# tables must carry user_id on both sides.
# Constants joined: no value of anyone's is formatted into them.
_EXISTENCE_LEAKS = (
    _USER_TABLES  # noqa: S608
    + """
select case when x.indisexclusion
         then format('exclusion constraint %%s on %%s does not compare user_id with =',
                     x.indexrelid::regclass, x.indrelid::regclass)
         else format('unique index %%s on %%s does not include user_id',
                     x.indexrelid::regclass, x.indrelid::regclass) end
from pg_index x join user_tables t on t.oid = x.indrelid
where (x.indisunique and not t.user_col = any(x.indkey)
       or x.indisexclusion and not exists (
         select from pg_constraint c
         cross join unnest(c.conkey, c.conexclop) as k(col, op)
         join pg_operator o on o.oid = k.op
         where c.conindid = x.indexrelid and c.contype = 'x'
           and k.col = t.user_col and o.oprname = '='))
  and exists (
    select from (
      select k as col from unnest(x.indkey) k where k > 0
      union
      -- The columns of its expressions: the index depends on them, or, where a constraint
      -- owns the index, the constraint does.
      select d.refobjsubid::smallint from pg_depend d
      where d.refclassid = 'pg_class'::regclass and d.refobjid = x.indrelid and d.refobjsubid > 0
        and (d.classid = 'pg_class'::regclass and d.objid = x.indexrelid
             or d.classid = 'pg_constraint'::regclass and d.objid in (
               select c.oid from pg_constraint c
               where c.conindid = x.indexrelid and c.conrelid = x.indrelid
                 and c.contype in ('p', 'u', 'x')))
    ) used
    where has_column_privilege(%(runtime)s, x.indrelid, used.col, 'INSERT')
       or has_column_privilege(%(runtime)s, x.indrelid, used.col, 'UPDATE'))
union all
select format('foreign key %%s on %%s does not pair user_id with user_id', f.conname, f.conrelid::regclass)
from pg_constraint f
join user_tables src on src.oid = f.conrelid
join user_tables dst on dst.oid = f.confrelid
where f.contype = 'f'
  and not exists (
    select from unnest(f.conkey, f.confkey) as k(src_col, dst_col)
    where k.src_col = src.user_col and k.dst_col = dst.user_col)
order by 1
"""
)


# What a distributed PostgreSQL (Citus) needs to shard the tables of user data by user_id
# and keep each user's rows together (docs/scale-out.md, issue 14): user_id in the primary
# key and in every unique index or exclusion constraint, whoever can write the other
# columns (a unique index on a database-assigned id alone leaks nothing, but cannot be
# enforced across shards: ErrorIfUnsupportedConstraint in Citus's commands/table.c).
# Built-in accounts are left out: log-in finds an account by its email, across users, so
# they stay whole on one node (a Citus local table); their keys are by email.
#
# And the foreign keys, by Citus's rules (ErrorIfUnsupportedForeignConstraintExists in
# its commands/foreign_constraint.c): between two sharded tables a key must pair user_id
# with user_id at the same position (then the rows it links are on the same shard); a
# sharded table may reference a table without user_id (a reference table, copied to
# every node), but not an unsharded one (accounts: a local table), and no table that is
# not sharded may reference a sharded one. existence_leaks reports an unpaired key too,
# for what its errors would tell. Nor may a key with user_id among its columns set
# anything to NULL or its default on delete, even a column list that leaves user_id out
# (ON DELETE SET NULL (next_task_id)), or set or cascade anything on update
# (EnsureSupportedFKeyOnDistKey; Citus's own test of PostgreSQL 15's column lists, in
# its regress/sql/pg15.sql, expects the refusal).
UNSHARDED_TABLES = ("accounts", "account_passwords")
_NOT_DISTRIBUTABLE = (
    _USER_TABLES  # noqa: S608
    + """,
sharded as (select oid, user_col from user_tables where relname <> all(%(unsharded)s))
select format('%%s has no primary key', t.oid::regclass)
from sharded t
where not exists (select from pg_index x where x.indrelid = t.oid and x.indisprimary)
union all
select format('%%s key %%s on %%s does not include user_id',
              case when x.indisprimary then 'primary' when x.indisunique then 'unique'
                   else 'exclusion' end,
              x.indexrelid::regclass, x.indrelid::regclass)
from pg_index x join sharded t on t.oid = x.indrelid
where (x.indisunique or x.indisexclusion) and not t.user_col = any(x.indkey)
union all
select format('foreign key %%s on %%s %%s', f.conname, f.conrelid::regclass,
              case when src.oid is null
                     then format('references the sharded %%s from a table that is not sharded',
                                 f.confrelid::regclass)
                   when dst.oid is null and f.confrelid in (select oid from user_tables)
                     then format('references %%s, which is not sharded', f.confrelid::regclass)
                   when k.paired or dst.oid is null
                     then format('has user_id among its columns and %%s',
                                 case when f.confdeltype in ('n', 'd')
                                        then 'sets columns to NULL or their default on delete'
                                      else 'sets or cascades columns on update' end)
                   else 'does not pair user_id with user_id' end)
from pg_constraint f
left join sharded src on src.oid = f.conrelid
left join sharded dst on dst.oid = f.confrelid
cross join lateral (
  select exists (select from unnest(f.conkey, f.confkey) as k(src_col, dst_col)
                 where k.src_col = src.user_col and k.dst_col = dst.user_col) as paired
) k
where f.contype = 'f'
  and (src.oid is not null or dst.oid is not null)
  and (src.oid is null
       -- A table without user_id is no user's: it would be a reference table.
       or (dst.oid is null and f.confrelid in (select oid from user_tables))
       or (dst.oid is not null and not k.paired)
       or (src.user_col = any(f.conkey)
           and (f.confdeltype in ('n', 'd') or f.confupdtype in ('n', 'd', 'c'))))
order by 1
"""
)


def not_distributable(conn: psycopg.Connection) -> list[str]:
    """Keys of user-data tables that would keep them from being sharded by user_id."""
    rows = conn.execute(_NOT_DISTRIBUTABLE, {"unsharded": list(UNSHARDED_TABLES)}).fetchall()
    return [message for (message,) in rows]


def existence_leaks(conn: psycopg.Connection) -> list[str]:
    """Constraints whose errors could reveal another user's rows; empty when none."""
    rows = conn.execute(_EXISTENCE_LEAKS, {"runtime": RUNTIME_ROLE}).fetchall()
    return [message for (message,) in rows]
