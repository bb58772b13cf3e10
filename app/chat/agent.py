"""The chat's agent: the OpenAI Agents SDK, its only tools the app's own MCP server.

One run per chat message. The agent reaches the tools at /mcp through an in-process
transport (httpx2's ASGITransport on the SDK's MCP app: no socket), authenticated with a
token minted for the caller for this run alone (app/tools/auth.py, ChatTokens): its
audience is the MCP server, it lives as long as one run, and the caller's own token is
never passed on. Each tool call is then an MCP request like any client's, which opens
its own transaction for the token's subject (app/session.py) and runs the REST routes'
statements (app/service/tasks.py). So a model that is talked into anything still acts
as the caller and no one else: the tools take no user id, and row-level security holds
under every statement they run.

The model: with CHAT_MODEL set, that model at any OpenAI-compatible Chat Completions
endpoint (OPENAI_BASE_URL, OPENAI_API_KEY); else the offline assistant
(app/chat/offline.py). A run takes at most CHAT_MAX_TURNS model calls and CHAT_TIMEOUT
seconds; tracing to the vendor is off unless CHAT_TRACING is on.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
from agents import Agent, RunConfig, Runner, set_tracing_disabled
from agents.exceptions import AgentsException, MaxTurnsExceeded
from agents.mcp import MCPServerStreamableHttp
from agents.models.interface import Model
from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
from agents.stream_events import RawResponsesStreamEvent, RunItemStreamEvent
from starlette.types import ASGIApp

from app.chat.events import DEFAULT_RETRY_AFTER, Delta, Failure, ProviderFailed, Reply, ToolCall
from app.chat.offline import offline_model
from app.config import Settings
from app.tools.auth import ChatTokens

log = logging.getLogger(__name__)

INSTRUCTIONS = """You manage the user's todo list, with the tools and nothing else.
- Act only through the tools; never say you did something that no tool call did.
- Task ids come from list_tasks; when the user names a task by its words, list the tasks
  that match (list_tasks with q) first, and act only on a single clear match.
- Due dates are ISO 8601 date-times with an offset. Now is {now} (UTC).
- Answer briefly, in the user's language, and say what changed."""


def _retry_after(exc: openai.APIStatusError) -> int | None:
    """When to try again: the provider's own Retry-After (seconds, bounded) for a 429 or
    503, a default for its other 5xx; none for its other 4xx (a key refused, a model
    unknown), which a retry does not mend."""
    if exc.status_code < 500 and exc.status_code != 429:
        return None
    if exc.status_code not in (429, 503):
        return DEFAULT_RETRY_AFTER
    try:
        seconds = int(float(exc.response.headers.get("retry-after", "")))
    except ValueError:
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 1), 600)


def _failure(exc: BaseException, max_turns: int) -> tuple[Failure, str, int | None] | None:
    """How a run's error is answered, or None for an error that is the service's own. The
    provider's text never reaches the client: it may name the key, the account or the model."""
    if isinstance(exc, TimeoutError | openai.APITimeoutError):
        return "provider_timeout", "The assistant took too long to answer; try again", DEFAULT_RETRY_AFTER
    if isinstance(exc, openai.APIStatusError):
        log.warning("chat model provider answered %s", exc.status_code)
        return "provider_error", "The assistant's model provider failed; try again later", _retry_after(exc)
    if isinstance(exc, openai.APIError):  # connection refused, reset, a bad answer
        log.warning("chat model provider failed: %s", type(exc).__name__)
        return "provider_error", "The assistant's model provider failed; try again later", DEFAULT_RETRY_AFTER
    if isinstance(exc, MaxTurnsExceeded):
        log.warning("chat run stopped after %s model calls", max_turns)
        return "provider_error", f"The assistant did not finish within {max_turns} steps", None
    if isinstance(exc, AgentsException):  # a model that broke the protocol
        log.warning("chat model misbehaved: %s", type(exc).__name__)
        return "provider_error", "The assistant's model answered with something it cannot use", None
    return None


class Assistant:
    """Runs the chat's agent for one caller at a time; one per app."""

    def __init__(self, settings: Settings, mcp_app: ASGIApp, mcp_url: str, tokens: ChatTokens) -> None:
        self._settings = settings
        self._mcp_app = mcp_app
        self._mcp_url = mcp_url
        self._tokens = tokens
        self._client: openai.AsyncOpenAI | None = None
        if settings.chat_model:
            api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
            self._client = openai.AsyncOpenAI(
                # A local server (Ollama, vLLM) wants no key, but the client insists on one.
                api_key=api_key or "unused",
                base_url=settings.openai_base_url,
                timeout=settings.chat_timeout,
                # No retries here: a retry after the provider's Retry-After would outlast
                # CHAT_TIMEOUT. The client retries, told when by the 502's Retry-After.
                max_retries=0,
            )
        set_tracing_disabled(not settings.chat_tracing)

    @property
    def offline(self) -> bool:
        return self._client is None

    def _model(self) -> Model:
        if self._client is None:
            return offline_model(self._settings.chat_max_turns)
        return OpenAIChatCompletionsModel(model=self._settings.chat_model or "", openai_client=self._client)

    def _mcp_client(
        self, headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None
    ) -> httpx2.AsyncClient:
        """The MCP client's HTTP client: to the MCP app in this process, no socket."""
        transport = httpx2.ASGITransport(app=self._mcp_app)
        return httpx2.AsyncClient(transport=transport, headers=headers, timeout=timeout, auth=auth)

    async def run(self, subject: str, items: list[dict[str, Any]]) -> AsyncIterator[Delta | ToolCall | Reply]:
        """The run for `subject` on the conversation `items` (the last one the new
        message): the reply's text as it comes, each tool call once answered, then the
        Reply. Raises ProviderFailed when the model fails or the run times out."""
        settings = self._settings
        token = self._tokens.mint(subject, ttl=int(settings.chat_timeout) + 30)
        server = MCPServerStreamableHttp(
            {
                "url": self._mcp_url,
                "headers": {"Authorization": f"Bearer {token}"},
                "timeout": settings.chat_timeout,
                "httpx_client_factory": self._mcp_client,
            },
            name="todo",
            cache_tools_list=True,
            use_structured_content=True,
            client_session_timeout_seconds=settings.chat_timeout,
        )
        agent = Agent(
            name="Todo assistant",
            instructions=INSTRUCTIONS.format(now=_now()),
            mcp_servers=[server],
            model=self._model(),
        )
        calls: dict[str, ToolCall] = {}
        text: list[str] = []
        try:
            async with asyncio.timeout(settings.chat_timeout), server:
                result = Runner.run_streamed(
                    agent,
                    input=items,  # type: ignore[arg-type]
                    max_turns=settings.chat_max_turns,
                    run_config=RunConfig(tracing_disabled=not settings.chat_tracing),
                )
                async for event in result.stream_events():
                    for out in _translate(event, calls):
                        if isinstance(out, Delta):
                            text.append(out.text)
                        yield out
                final = result.final_output
        except Exception as exc:
            failure = _failure(exc, settings.chat_max_turns)
            if failure is None:
                raise
            answered = [call for call in calls.values() if call.output]
            raise ProviderFailed(*failure, answered) from None
        yield Reply(final if isinstance(final, str) else "".join(text), list(calls.values()))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


def _translate(event: Any, calls: dict[str, ToolCall]) -> list[Delta | ToolCall]:
    """What of an SDK stream event the chat passes on."""
    if isinstance(event, RawResponsesStreamEvent):
        if event.data.type == "response.output_text.delta" and event.data.delta:
            return [Delta(event.data.delta)]
        return []
    if not isinstance(event, RunItemStreamEvent):
        return []
    raw = event.item.raw_item
    if event.name == "tool_called":
        call_id = getattr(raw, "call_id", None) or ""
        arguments: Any = getattr(raw, "arguments", "")
        with contextlib.suppress(TypeError, ValueError):
            arguments = json.loads(arguments)
        calls[call_id] = ToolCall(call_id, getattr(raw, "name", ""), arguments)
        return []
    if event.name == "tool_output" and isinstance(raw, dict):
        call = calls.get(str(raw.get("call_id", "")))
        if call is None:
            return []
        call.output = _output_text(raw.get("output"))
        return [call]
    return []


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, dict):
        return str(output.get("text", ""))
    if isinstance(output, list):
        return "".join(str(part.get("text", "")) for part in output if isinstance(part, dict))
    return str(output)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
