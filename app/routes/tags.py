"""Tag routes: HTTP around app.service.tags, which holds the statements. Tasks get and
lose tags through the task routes."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from app.auth import TOKEN_SCHEMES, CurrentSubject, require_path_owner
from app.models import TagName, TagPublic, TagRename
from app.routes.tasks import PAGE_RESPONSES, page_response
from app.service import tags as service
from app.service.tags import TAG_NOT_FOUND
from app.session import UserConnection

router = APIRouter(
    prefix="/api/{user_id}/tags",
    tags=["tags"],
    dependencies=[Depends(require_path_owner), *TOKEN_SCHEMES],
    responses={
        401: {"description": "Missing or invalid bearer token"},
        403: {"description": "The token's subject is not the user_id in the path"},
    },
)

# Routed as {name:path}: a tag's name may hold "/", which arrives decoded from %2F, and
# a plain {name} would match no route for it, so that such a tag could never be renamed
# or deleted (tests/routes/test_tags.py).
PathTagName = Annotated[TagName, Path(description="The tag's name (any case), percent-encoded")]
_NOT_FOUND_RESPONSE: dict[int | str, dict[str, Any]] = {404: {"description": TAG_NOT_FOUND}}


def _json(content: str) -> Response:
    return Response(content=content, media_type="application/json")


@router.get(
    "",
    response_model=list[TagPublic],
    responses=PAGE_RESPONSES,
)
async def list_tags(
    request: Request,
    connection: UserConnection,
    subject: CurrentSubject,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """List your tags, sorted by name, with how many of your tasks carry each."""
    body, total = await service.list_tags(connection, subject, limit, offset)
    return page_response(request, body, total, limit, offset)


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
    return _json(await service.rename_tag(connection, subject, name, body.name, merge=merge))


@router.delete("/{name:path}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND_RESPONSE)
async def delete_tag(name: PathTagName, connection: UserConnection, subject: CurrentSubject) -> None:
    """Delete a tag: it leaves every task that carried it."""
    await service.delete_tag(connection, subject, name)
