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
       array(select privilege_type::text from information_schema.role_table_grants g
             where g.table_schema = 'public' and g.table_name = c.relname and g.grantee = %(runtime)s
             order by 1) as runtime_grants,
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
