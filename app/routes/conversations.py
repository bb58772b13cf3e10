"""Conversation routes: HTTP around app.service.conversations, which holds the statements.
Conversations are started and continued by the chat route; here they are listed, read
and deleted. Another user's conversation and one that does not exist answer the same 404.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from app.auth import TOKEN_SCHEMES, CurrentSubject, require_path_owner
from app.models import ConversationPublic, MessagePublic
from app.routes.tasks import PAGE_RESPONSES, page_response
from app.service import conversations as service
from app.service.conversations import CONVERSATION_NOT_FOUND
from app.session import UserConnection

router = APIRouter(
    prefix="/api/{user_id}/conversations",
    tags=["conversations"],
    dependencies=[Depends(require_path_owner), *TOKEN_SCHEMES],
    responses={
        401: {"description": "Missing or invalid bearer token"},
        403: {"description": "The token's subject is not the user_id in the path"},
    },
)

ConversationId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The conversation's id")]
_NOT_FOUND_RESPONSE: dict[int | str, dict[str, Any]] = {404: {"description": CONVERSATION_NOT_FOUND}}
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]


@router.get("", response_model=list[ConversationPublic], responses=PAGE_RESPONSES)
async def list_conversations(
    request: Request,
    connection: UserConnection,
    subject: CurrentSubject,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Response:
    """List your conversations with the assistant, the most recently active first."""
    body, total = await service.list_conversations(connection, subject, limit, offset)
    return page_response(request, body, total, limit, offset)


@router.get(
    "/{conversation_id}/messages",
    response_model=list[MessagePublic],
    responses={**PAGE_RESPONSES, **_NOT_FOUND_RESPONSE},
)
async def list_messages(
    conversation_id: ConversationId,
    request: Request,
    connection: UserConnection,
    subject: CurrentSubject,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Response:
    """List a conversation's messages, oldest first: yours, the assistant's and its tools'."""
    body, total = await service.list_messages(connection, subject, conversation_id, limit, offset)
    return page_response(request, body, total, limit, offset)


@router.delete("/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND_RESPONSE)
async def delete_conversation(
    conversation_id: ConversationId, connection: UserConnection, subject: CurrentSubject
) -> None:
    """Delete a conversation and all its messages."""
    await service.delete_conversation(connection, subject, conversation_id)
