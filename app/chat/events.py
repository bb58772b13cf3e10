"""What a chat run produces, as the route reads it: kept apart from app/chat/agent.py,
which imports the Agents SDK (seconds of start-up that only the first chat pays)."""

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Failure = Literal["provider_error", "provider_timeout"]
# Retry-After when the provider gave none: long enough for a brief outage to pass.
DEFAULT_RETRY_AFTER = 10


@dataclass
class ToolCall:
    """One tool call of a run, and its answer: what the chat stores and shows."""

    call_id: str
    name: str
    arguments: Any  # the model's arguments, decoded when they are JSON
    output: str = ""  # the tool's answer as the model read it

    @property
    def result(self) -> Any:
        """The answer, decoded when it is JSON (a tool's result), else its text (an error)."""
        try:
            return json.loads(self.output)
        except ValueError:
            return self.output

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments, "result": self.result}


@dataclass
class Delta:
    """A piece of the reply's text, as the model streams it."""

    text: str


@dataclass
class Reply:
    """What a finished run said, and the tool calls it made on the way."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)


class ProviderFailed(Exception):
    """The model provider failed or timed out: what the client is told, and what is stored.
    `tool_calls` are those the run made before it failed: their changes are committed."""

    def __init__(
        self, failure: Failure, detail: str, retry_after: int | None, tool_calls: list[ToolCall]
    ) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail
        self.retry_after = retry_after
        self.tool_calls = tool_calls

    @property
    def status_code(self) -> int:
        return 504 if self.failure == "provider_timeout" else 502
