"""POST /api/{user_id}/chat: one message to the assistant, its reply, the tool calls it made.

Stateless: the conversation lives in the database, so any instance, before or after a
restart, carries it on. One message takes two transactions of the caller's besides the
tool calls' own (app/chat/agent.py): the first checks the conversation (or starts one),
reads its last CHAT_HISTORY_MESSAGES messages and stores the new one; the agent then
runs with no transaction open (a model call may take seconds, and holds no connection
meanwhile); the second stores the tool calls and the reply. When the model provider
fails or times out, the second marks the message failed instead (it stays in the
conversation, and is not replayed to the model), and the answer is a 502 or 504.

With `Accept: text/event-stream`, the same run streams as server-sent events; the rows
stored are the same. The run goes on to its end, and its rows are stored, even when the
client leaves before it.
"""

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.auth import TOKEN_SCHEMES, CurrentSubject, require_path_owner
from app.chat.events import Delta, ProviderFailed, Reply, ToolCall
from app.errors import ErrorBody, NotFound, database_fault
from app.models import ChatMessageText
from app.service import conversations as service
from app.service.conversations import CONVERSATION_NOT_FOUND, HistoryMessage
from app.session import UserSessions

if TYPE_CHECKING:
    from app.chat.agent import Assistant

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/api/{user_id}/chat",
    tags=["chat"],
    dependencies=[Depends(require_path_owner), *TOKEN_SCHEMES],
    responses={
        401: {"description": "Missing or invalid bearer token"},
        403: {"description": "The token's subject is not the user_id in the path"},
    },
)

# A new conversation's title: the start of its first message.
TITLE_LENGTH = 80


def _integral(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # At most 2^53 - 1: past it a JSON number is not exact in most clients (JavaScript's
    # among them), and the ids, a bigint sequence, will not get there. 3.0 is an integer
    # to JSON Schema, and taken as 3; "3" is not.
    conversation_id: Annotated[int | None, BeforeValidator(_integral)] = Field(
        default=None, ge=1, le=2**53 - 1, description="Continue this conversation; left out: start one"
    )
    message: ChatMessageText


class ToolCallPublic(BaseModel):
    name: str = Field(description="The tool (see /mcp's tools)")
    arguments: Any = Field(description="What the model passed it")
    result: Any = Field(description="What it answered: its JSON result, or an error's text")


class ChatResponse(BaseModel):
    conversation_id: int
    response: str = Field(description="The assistant's reply")
    tool_calls: list[ToolCallPublic] = Field(description="The tools it called for this reply, in order")


def _assistant(request: Request) -> "Assistant":
    """The app's assistant, made on the first chat message: the Agents SDK takes seconds
    to import, which every start of the service (and every CLI command) would pay."""
    state = request.app.state
    if state.assistant is None:
        from app.chat.agent import Assistant

        mcp = state.mcp
        state.assistant = Assistant(state.settings, mcp.endpoint, mcp.url, mcp.chat_tokens)
        # The SDK's ~80,000 objects live as long as the app, as start-up's do: out of the
        # garbage collector's sight too (app/main.py), or each full collection takes ~65 ms.
        gc.freeze()
    return cast("Assistant", state.assistant)


def _history_items(history: list[HistoryMessage]) -> list[dict[str, Any]]:
    """Stored messages as the agent's input items: a tool row becomes the model's call and
    the tool's answer, as the model saw them. A window that starts inside an exchange (a
    tool's answer without its call's message) starts at the next user message instead."""
    while history and history[0].role != "user":
        history = history[1:]
    items: list[dict[str, Any]] = []
    for message in history:
        if message.role == "tool":
            for call in message.tool_calls or []:
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": call["name"],
                        "arguments": json.dumps(call["arguments"]),
                    }
                )
                items.append(
                    {"type": "function_call_output", "call_id": call["id"], "output": message.content}
                )
        else:
            items.append({"role": message.role, "content": message.content})
    return items


class _Exchange:
    """One chat message's way through: its rows, the run, and what the client is sent."""

    def __init__(self, request: Request, subject: str, body: ChatRequest) -> None:
        self.sessions: UserSessions = request.app.state.user_sessions
        self.assistant = _assistant(request)
        self.history_size: int = request.app.state.settings.chat_history_messages
        self.subject = subject
        self.body = body
        self.conversation_id = body.conversation_id or 0
        self.message_id = 0

    async def begin(self) -> list[dict[str, Any]]:
        """The first transaction: the conversation, its history, the new message."""
        async with self.sessions.connection(self.subject) as connection:
            if self.body.conversation_id is None:
                title = " ".join(self.body.message.split())[:TITLE_LENGTH]
                self.conversation_id = await service.start_conversation(connection, self.subject, title)
                history: list[HistoryMessage] = []
            else:
                # Raises NotFound for another user's conversation, as for a missing one.
                await service.touch_conversation(connection, self.subject, self.conversation_id)
                history = await service.history(
                    connection, self.subject, self.conversation_id, self.history_size
                )
            self.message_id = await service.add_message(
                connection, self.subject, self.conversation_id, "user", self.body.message
            )
        return [*_history_items(history), {"role": "user", "content": self.body.message}]

    @staticmethod
    def _call_rows(calls: list[ToolCall]) -> list[tuple[str, str, list[dict[str, Any]] | None]]:
        """Each tool call as a `tool` message: the tool's answer, and the call it answers."""
        return [
            ("tool", call.output, [{"id": call.call_id, "name": call.name, "arguments": call.arguments}])
            for call in calls
        ]

    async def finish(self, reply: Reply) -> int:
        """The second transaction: the tool calls and the reply, in one statement; the
        reply's id."""
        rows = [*self._call_rows(reply.tool_calls), ("assistant", reply.text, None)]
        async with self.sessions.connection(self.subject) as connection:
            await service.touch_conversation(connection, self.subject, self.conversation_id)
            ids = await service.add_messages(connection, self.subject, self.conversation_id, rows)
        return ids[-1]

    async def fail(self, failure: ProviderFailed) -> None:
        """The second transaction after a failed run: its tool calls (their changes are
        made), and the message marked failed."""
        rows = self._call_rows(failure.tool_calls)
        async with self.sessions.connection(self.subject) as connection:
            await service.touch_conversation(connection, self.subject, self.conversation_id)
            if rows:
                await service.add_messages(connection, self.subject, self.conversation_id, rows)
            await service.mark_failed(connection, self.subject, self.message_id, failure.failure)

    async def run(self, items: list[dict[str, Any]], events: asyncio.Queue[Any]) -> Reply:
        """The agent's run and the second transaction; every event also on `events`."""
        try:
            async for event in self.assistant.run(self.subject, items):
                if isinstance(event, Reply):
                    reply = event
                else:
                    events.put_nowait(event)
        except ProviderFailed as failure:
            await self.fail(failure)
            raise
        answer_id = await self.finish(reply)
        events.put_nowait(("done", answer_id, reply))
        return reply


def _failed(failure: ProviderFailed) -> HTTPException:
    """The error answer (app/errors.py writes it) for a run the provider failed."""
    headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after else None
    return HTTPException(failure.status_code, failure.detail, headers=headers)


def _event(name: str, data: object) -> str:
    return format_sse_event(event=name, data_str=json.dumps(data, separators=(",", ":"))).decode()


_STREAM_DESCRIPTION = """With `Accept: text/event-stream`: server-sent events. `delta` events carry
the reply's text as it comes (`{"text"}`), `tool_call` events each tool call once answered
(`{"name", "arguments", "result"}`), and the last event is `done`
(`{"conversation_id", "message_id", "user_message_id", "response", "tool_calls"}`), or
`error` (`{"status", "detail"}`) when the model provider failed or timed out."""


@router.post(
    "",
    response_model=ChatResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": _STREAM_DESCRIPTION,
        },
        404: {"model": ErrorBody, "description": CONVERSATION_NOT_FOUND},
        502: {
            "model": ErrorBody,
            "description": "The model provider failed; `Retry-After` when it said when",
        },
        504: {"model": ErrorBody, "description": "The model provider took longer than CHAT_TIMEOUT"},
    },
)
async def chat(
    request: Request,
    subject: CurrentSubject,
    body: ChatRequest,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Send the assistant a message; it manages your tasks with its tools and answers."""
    exchange = _Exchange(request, subject, body)
    items = await exchange.begin()
    events: asyncio.Queue[Any] = asyncio.Queue()
    # A task of its own: the run and its rows complete even if a streaming client leaves.
    run = asyncio.ensure_future(exchange.run(items, events))
    run.add_done_callback(_retrieved)
    if "text/event-stream" not in (accept or ""):
        try:
            reply = await asyncio.shield(run)
        except ProviderFailed as failure:
            raise _failed(failure) from None
        return JSONResponse(
            {
                "conversation_id": exchange.conversation_id,
                "response": reply.text,
                "tool_calls": [call.public() for call in reply.tool_calls],
            }
        )
    return EventSourceResponse(_stream(exchange, run, events))


async def _stream(
    exchange: _Exchange, run: "asyncio.Future[Reply]", events: asyncio.Queue[Any]
) -> AsyncIterator[str]:
    """The run's events as server-sent events, until `done`, or `error` when it failed."""
    while True:
        getter = asyncio.ensure_future(events.get())
        await asyncio.wait({getter, run}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            event = getter.result()
        elif (error := run.exception()) is not None:
            getter.cancel()
            yield _event("error", _stream_error(error))
            return
        else:
            getter.cancel()
            continue
        if isinstance(event, Delta):
            yield _event("delta", {"text": event.text})
        elif isinstance(event, ToolCall):
            yield _event("tool_call", event.public())
        else:
            _, answer_id, reply = event
            yield _event(
                "done",
                {
                    "conversation_id": exchange.conversation_id,
                    "message_id": answer_id,
                    "user_message_id": exchange.message_id,
                    "response": reply.text,
                    "tool_calls": [call.public() for call in reply.tool_calls],
                },
            )
            return


def _stream_error(error: BaseException) -> dict[str, Any]:
    """What a stream says of a run that failed after its 200 was sent: what the JSON
    answer's status and detail would have been."""
    if isinstance(error, ProviderFailed):
        return {"status": error.status_code, "detail": error.detail}
    if isinstance(error, NotFound):  # the conversation was deleted meanwhile
        return {"status": status.HTTP_404_NOT_FOUND, "detail": error.detail}
    fault = database_fault(error)
    if fault is not None:
        return {"status": fault.status, "detail": fault.detail}
    log.error("chat run failed", exc_info=error)
    return {"status": status.HTTP_500_INTERNAL_SERVER_ERROR, "detail": "Internal server error"}


def _retrieved(run: "asyncio.Future[Reply]") -> None:
    """Marks a run's error as seen when no one waits for it any more (a streaming client
    that left): it is logged where it is answered, or here."""
    if (
        not run.cancelled()
        and (error := run.exception()) is not None
        and not isinstance(error, ProviderFailed)
    ):
        log.debug("chat run ended with %s", type(error).__name__)
