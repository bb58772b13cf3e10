"""The tag statements, written once for every way in (see app/service/tasks.py): the
caller's tags with how many of the caller's tasks carry each; rename (and merge) and
delete. Tasks get and lose tags through the task operations.

As for tasks, every statement is fixed SQL with the caller's id as $1 and an owner filter
(OWNER_FILTER) that row-level security makes redundant. A tag is named by its name,
matched case-insensitively (app.models.fold_tag); another user's tag of the same name is
another row, which none of these statements can see. Changing a tag changes the tasks
that carry it (their answer lists it): in the same transaction, those tasks are touched
(updated_at, and so their ETag, changes), and their copy of their tags' names
(tasks.tag_names and tag_keys) is made again by app.refresh_task_tags, which takes the
tasks' ids and reads the caller from the signed context, as app.set_task_tags does.
"""

from typing import cast

from asyncpg import Connection, Record

from app.errors import Conflict, NotFound
from app.models import fold_tag
from app.service.paging import page_total

TAG_NOT_FOUND = "Tag not found"
# {} is the table (its alias in the statement); tests/test_rls.py swaps it.
OWNER_FILTER = "{}.user_id = $1"


def _owner(table: str) -> str:
    return OWNER_FILTER.format(table)


def _public(row: str) -> str:
    """TagPublic of tags row `row` as JSON text (compact, as FastAPI writes it): its
    name, and the count of the tasks with it."""
    return (
        f"(select row_to_json(x)::text from (select {row}.name,"  # noqa: S608
        " (select count(*) from public.task_tags tt"
        f" where tt.user_id = {row}.user_id and tt.tag_id = {row}.id) as tasks) x)"
    )


def _list_sql() -> str:
    """$1 the user, $2 limit, $3 offset: the page as a JSON array, and the count."""
    page = (
        f"select * from public.tags g where {_owner('g')}"  # noqa: S608
        " order by g.folded, g.name, g.id limit $2 offset $3"
    )
    count = f"select count(*) from public.tags g where {_owner('g')}"  # noqa: S608
    return (
        f"with page as ({page})"  # noqa: S608
        f" select coalesce('[' || string_agg({_public('page')}, ','"
        " order by page.folded, page.name, page.id) || ']', '[]'),"
        f" {page_total('count(*)', count, '$2', '$3')}"
        " from page"
    )


def _find_sql() -> str:
    """The caller's tag of folded name $2, locked until the transaction ends."""
    return f"select g.id from public.tags g where {_owner('g')} and g.folded = $2 for update"  # noqa: S608


def _touch_sql() -> str:
    """Marks the tasks that carry tag $2 as changed; answers their ids."""
    return (
        f"update public.tasks tasks set updated_at = now() where {_owner('tasks')}"  # noqa: S608
        " and tasks.id in (select tt.task_id from public.task_tags tt"
        f" where {_owner('tt')} and tt.tag_id = $2) returning tasks.id"
    )


# Copies the tags of tasks $1 onto their rows (sql/task_functions.sql): after a tag's
# rename, merge or delete, for the tasks that carried it.
_REFRESH = "select app.refresh_task_tags($1::bigint[])"


def _rename_sql() -> str:
    """Renames tag $2 to $3 (folded: $4); answers it as TagPublic."""
    return (
        "with g as (update public.tags g set name = $3, folded = $4"  # noqa: S608
        f" where {_owner('g')} and g.id = $2 returning g.*)"
        f" select {_public('g')} from g"
    )


def _merge_sql() -> str:
    """Moves tag $2's tasks to tag $3 (the tasks that have both keep one), then deletes $2."""
    return (
        "with moved as (insert into public.task_tags (user_id, task_id, tag_id)"  # noqa: S608
        f" select tt.user_id, tt.task_id, $3 from public.task_tags tt where {_owner('tt')} and tt.tag_id = $2"
        " on conflict do nothing)"
        f" delete from public.tags g where {_owner('g')} and g.id = $2"
    )


def _answer_sql() -> str:
    return f"select {_public('g')} from public.tags g where {_owner('g')} and g.id = $2"  # noqa: S608


def _delete_sql() -> str:
    return f"delete from public.tags g where {_owner('g')} and g.id = $2"  # noqa: S608


async def list_tags(connection: Connection, subject: str, limit: int, offset: int) -> tuple[str, int]:
    """The page (a JSON array of TagPublic, sorted by name) and how many tags there are."""
    # An aggregate over the page: always one row.
    body, total = cast(Record, await connection.fetchrow(_list_sql(), subject, limit, offset))
    return body, total


async def _find(connection: Connection, subject: str, name: str) -> int:
    tag_id = await connection.fetchval(_find_sql(), subject, fold_tag(name))
    if tag_id is None:
        raise NotFound(TAG_NOT_FOUND)
    return cast(int, tag_id)


async def rename_tag(connection: Connection, subject: str, name: str, new_name: str, *, merge: bool) -> str:
    """Renames tag `name` to `new_name`; into a tag of the caller's that already has that
    name, Conflict unless `merge` (then its tasks move to that tag). The tag as TagPublic
    JSON."""
    tag_id = await _find(connection, subject, name)
    folded = fold_tag(new_name)
    target = None if folded == fold_tag(name) else await connection.fetchval(_find_sql(), subject, folded)
    if target is not None and not merge:
        raise Conflict("you have a tag of that name already: merge=true merges them")
    tasks = await _touch(connection, subject, tag_id)
    if target is None:
        # A new name, or the same in another case. Two renames to one new name at once:
        # the second breaks the (user_id, folded) key, a 409.
        answer = await connection.fetchval(_rename_sql(), subject, tag_id, new_name, folded)
    else:
        await connection.execute(_merge_sql(), subject, tag_id, target)
        answer = await connection.fetchval(_answer_sql(), subject, target)
    await connection.execute(_REFRESH, tasks)
    return cast(str, answer)


async def delete_tag(connection: Connection, subject: str, name: str) -> None:
    """Deletes the tag: it leaves every task that carried it."""
    tag_id = await _find(connection, subject, name)
    tasks = await _touch(connection, subject, tag_id)
    await connection.execute(_delete_sql(), subject, tag_id)
    await connection.execute(_REFRESH, tasks)


async def _touch(connection: Connection, subject: str, tag_id: int) -> list[int]:
    """Marks the tasks that carry the tag as changed; their ids."""
    return [row[0] for row in await connection.fetch(_touch_sql(), subject, tag_id)]
