"""Tag routes: the caller's tags, with how many of the caller's tasks carry each; rename
(and merge) and delete. Tasks get and lose tags through the task routes.

As in app/routes/tasks.py, every statement is fixed SQL with the caller's id as $1 and
an owner filter (OWNER_FILTER) that row-level security makes redundant. A tag is named
in the path by its name, matched case-insensitively (app.models.fold_tag); another
user's tag of the same name is another row, which none of these statements can see.
Changing a tag changes the tasks that carry it (their answer lists it): those tasks are
touched (updated_at, and so their ETag, changes) in the same transaction.
"""

from typing import Annotated, Any, cast

from asyncpg import Record
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status

from app.auth import CurrentSubject, require_path_owner
from app.errors import NotFound
from app.models import TagName, TagPublic, TagRename, fold_tag
from app.routes.tasks import OWNER_FILTER, page_links
from app.session import UserConnection

router = APIRouter(
    prefix="/api/{user_id}/tags",
    tags=["tags"],
    dependencies=[Depends(require_path_owner)],
    responses={
        401: {"description": "Missing or invalid bearer token"},
        403: {"description": "The token's subject is not the user_id in the path"},
    },
)

TAG_NOT_FOUND = "Tag not found"
# Routed as {name:path}: a tag's name may hold "/", which arrives decoded from %2F, and
# a plain {name} would match no route for it, so that such a tag could never be renamed
# or deleted (tests/routes/test_tags.py).
PathTagName = Annotated[TagName, Path(description="The tag's name (any case), percent-encoded")]
_NOT_FOUND_RESPONSE: dict[int | str, dict[str, Any]] = {404: {"description": TAG_NOT_FOUND}}


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
    return (
        f"with page as ({page})"  # noqa: S608
        f" select coalesce('[' || string_agg({_public('page')}, ','"
        " order by page.folded, page.name, page.id) || ']', '[]'),"
        f" (select count(*) from public.tags g where {_owner('g')})"
        " from page"
    )


def _find_sql() -> str:
    """The caller's tag of folded name $2, locked until the transaction ends."""
    return f"select g.id from public.tags g where {_owner('g')} and g.folded = $2 for update"  # noqa: S608


def _touch_sql() -> str:
    """Marks the tasks that carry tag $2 as changed."""
    return (
        f"update public.tasks tasks set updated_at = now() where {_owner('tasks')}"  # noqa: S608
        " and tasks.id in (select tt.task_id from public.task_tags tt"
        f" where {_owner('tt')} and tt.tag_id = $2)"
    )


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


def _json(content: str) -> Response:
    return Response(content=content, media_type="application/json")


@router.get(
    "",
    response_model=list[TagPublic],
    responses={
        200: {
            "headers": {
                "X-Total-Count": {"schema": {"type": "integer"}},
                "Link": {"schema": {"type": "string"}},
            }
        }
    },
)
async def list_tags(
    request: Request,
    connection: UserConnection,
    subject: CurrentSubject,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """List your tags, sorted by name, with how many of your tasks carry each."""
    # An aggregate over the page: always one row.
    body, total = cast(Record, await connection.fetchrow(_list_sql(), subject, limit, offset))
    headers = {"X-Total-Count": str(total)}
    if links := page_links(request, total, limit, offset):
        headers["Link"] = links
    return Response(content=body, media_type="application/json", headers=headers)


async def _find(connection: UserConnection, subject: str, name: str) -> int:
    tag_id = await connection.fetchval(_find_sql(), subject, fold_tag(name))
    if tag_id is None:
        raise NotFound(TAG_NOT_FOUND)
    return cast(int, tag_id)


@router.patch(
    "/{name:path}",
    response_model=TagPublic,
    responses={
        **_NOT_FOUND_RESPONSE,
        409: {"description": "You have a tag of that name already (merge=true merges them)"},
    },
)
async def rename_tag(
    name: PathTagName,
    body: TagRename,
    connection: UserConnection,
    subject: CurrentSubject,
    merge: Annotated[
        bool, Query(description="If you have a tag of the new name: move this one's tasks to it")
    ] = False,
) -> Response:
    """Rename a tag, or merge it into another of yours."""
    tag_id = await _find(connection, subject, name)
    folded = fold_tag(body.name)
    target = None if folded == fold_tag(name) else await connection.fetchval(_find_sql(), subject, folded)
    await connection.execute(_touch_sql(), subject, tag_id)
    if target is None:
        # A new name, or the same in another case. Two renames to one new name at once:
        # the second breaks the (user_id, folded) key, a 409.
        return _json(cast(str, await connection.fetchval(_rename_sql(), subject, tag_id, body.name, folded)))
    if not merge:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail="you have a tag of that name already: merge=true merges them"
        )
    await connection.execute(_merge_sql(), subject, tag_id, target)
    return _json(cast(str, await connection.fetchval(_answer_sql(), subject, target)))


@router.delete("/{name:path}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND_RESPONSE)
async def delete_tag(name: PathTagName, connection: UserConnection, subject: CurrentSubject) -> None:
    """Delete a tag: it leaves every task that carried it."""
    tag_id = await _find(connection, subject, name)
    await connection.execute(_touch_sql(), subject, tag_id)
    await connection.execute(_delete_sql(), subject, tag_id)
