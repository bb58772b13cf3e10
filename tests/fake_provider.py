"""A fake OpenAI-compatible Chat Completions server on a real loopback socket, for the
chat's real provider path (app/chat/agent.py: the Agents SDK's
OpenAIChatCompletionsModel and the openai client, over HTTP).

Scripted: each POST /v1/chat/completions takes the next step of the script, which says
what the model answers (text, tool calls, an HTTP error, or nothing for a while). It
answers as the API does, streamed (server-sent chunks, then `[DONE]`) when the request
asks for a stream, else one JSON completion. Every request is kept, so that a test can
read what the model was given: its messages, its tools, its headers.
"""

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.live_server import free_port

API_KEY = "sk-fake-provider-key-0123456789"


@dataclass
class Step:
    """One model answer: text, tool calls (name and arguments), or an HTTP error; after
    `delay` seconds."""

    text: str | None = None
    tool_calls: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    status: int = 200
    error_body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def say(text: str) -> Step:
    return Step(text=text)


def call(name: str, arguments: dict[str, Any] | str, *more: tuple[str, dict[str, Any] | str]) -> Step:
    return Step(tool_calls=[(name, arguments), *more])


class FakeProvider:
    """The server's script and what it was asked."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""
        self._calls = 0

    def script(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests.clear()
        self.headers.clear()

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if not self.steps:
            return JSONResponse({"error": {"message": "the test's script has no step left"}}, status_code=500)
        step = self.steps.pop(0)
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.status != 200:
            body = step.error_body or {
                "error": {"message": f"fake provider error {step.status}", "type": "x"}
            }
            return JSONResponse(body, status_code=step.status, headers=step.headers)
        if body.get("stream"):
            return StreamingResponse(self._chunks(body, step), media_type="text/event-stream")
        return JSONResponse(self._completion(body, step))

    def _tool_calls(self, step: Step) -> list[dict[str, Any]]:
        calls = []
        for index, (name, arguments) in enumerate(step.tool_calls):
            self._calls += 1
            calls.append(
                {
                    "index": index,
                    "id": f"call_{self._calls}",
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
            )
        return calls

    def _completion(self, body: dict[str, Any], step: Step) -> dict[str, Any]:
        calls = self._tool_calls(step)
        message: dict[str, Any] = {"role": "assistant", "content": step.text}
        if calls:
            message["tool_calls"] = [
                {key: value for key, value in c.items() if key != "index"} for c in calls
            ]
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    async def _chunks(self, body: dict[str, Any], step: Step) -> Any:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(data)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        if step.text:
            # In pieces, as a model streams: the chat passes each on as a delta.
            words = step.text.split(" ")
            for index, word in enumerate(words):
                yield chunk({"content": word + (" " if index < len(words) - 1 else "")})
        calls = self._tool_calls(step)
        for tool_call in calls:
            yield chunk({"tool_calls": [tool_call]})
        yield chunk({}, "tool_calls" if calls else "stop")
        yield "data: [DONE]\n\n"


@contextmanager
def fake_provider() -> Iterator[FakeProvider]:
    """A FakeProvider served on a free loopback port in a thread; `url` is its base URL."""
    provider = FakeProvider()
    app = Starlette(routes=[Route("/v1/chat/completions", provider.completions, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the fake provider did not start")
        time.sleep(0.01)
    provider.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield provider
    finally:
        server.should_exit = True
        thread.join(timeout=10)
