"""The offline assistant: a model for the Agents SDK that needs no provider and no
network, and answers the same messages the same way every time.

It is a model, not a shortcut around one: the agent runtime (app/chat/agent.py) asks it
for its next step exactly as it asks a real model, it answers with tool calls, and the
runtime sends them to the app's own MCP server, whose tools run the REST routes'
statements in the caller's row-level-security transaction. So the chat, out of the box,
goes through the same agent, MCP and database path as with a real model; and the
benchmark's `chat` scenario measures that path.

Built on the SDK's ScriptedModel (agents.testing), whose steps may be computed from the
call: each step reads the conversation so far and decides. Writing a Model of our own
would repeat its response and stream-event plumbing, which the SDK keeps in step with
its runtime.

What it understands (a few patterns, in English; anything else gets a short help text):
add ("Add a task to buy groceries", "I need to remember to pay bills"), list ("Show me
all my tasks", "What's pending?", "What have I completed?"), complete ("Mark task 3 as
complete"), delete ("Delete task 2", or by words: "Delete the meeting task" lists the
tasks that match first, then deletes the one match), rename ("Change task 1 to 'Call
mom tonight'").
"""

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agents.items import TResponseOutputItem
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call

# The start of a message that asks to add a task, and what to drop from the title's start.
_ADD = re.compile(
    r"^(?:please\s+)?(?:(?:can you\s+|could you\s+)?(?:add|create|new)\b(?:\s+(?:a|an|the|new|my))*"
    r"(?:\s+(?:task|todo|to-do|item|reminder))?(?:\s*(?::|to|called|named|saying))?"
    r"|i\s+(?:need|have|want|must)\s+to(?:\s+remember\s+to)?"
    r"|remind\s+me\s+to|remember\s+to|don'?t\s+let\s+me\s+forget\s+to)\s+(?P<title>.+)$",
    re.IGNORECASE,
)


def _task_id(group: str) -> str:
    """A task named by its id: "task 3", "task #3", "#3"."""
    return rf"(?:task\s*(?:number\s*|no\.?\s*|#\s*)?|#)(?P<{group}>\d{{1,18}})"


_TASK_ID = _task_id("id")
_COMPLETE = re.compile(
    rf"\b(?:mark|set|check(?:\s+off)?|complete|finish|close|tick(?:\s+off)?)\b.*?{_TASK_ID}"
    rf"|{_task_id('done_id')}\s+(?:is\s+)?(?:done|complete|completed|finished)\b",
    re.IGNORECASE,
)
_DELETE_BY_ID = re.compile(rf"\b(?:delete|remove|drop|cancel|erase)\b.*?{_TASK_ID}", re.IGNORECASE)
_DELETE_BY_WORDS = re.compile(
    r"\b(?:delete|remove|drop|cancel|erase)\s+(?:the\s+|my\s+|a\s+)?(?P<words>.+?)"
    r"(?:\s+(?:task|todo|to-do|item))?\s*[.!]?$",
    re.IGNORECASE,
)
_RENAME = re.compile(
    rf"\b(?:change|rename|update|edit|retitle)\s+{_TASK_ID}\s+(?:to|into|as)\s+(?P<title>.+)$",
    re.IGNORECASE,
)
_COMPLETED = re.compile(r"\b(?:completed|finished|done)\b", re.IGNORECASE)
_PENDING = re.compile(
    r"\b(?:pending|open|left|remaining|to\s+do|todo|unfinished|outstanding)\b", re.IGNORECASE
)
_LIST = re.compile(r"\b(?:show|list|see|what|which|display|tasks|todos)\b", re.IGNORECASE)
# Straight, typographic and back quotes around a title.
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"

HELP = (
    'I can manage your tasks. Try: "Add a task to buy groceries", "Show me all my tasks", '
    '"What\'s pending?", "Mark task 3 as complete", "Delete the meeting task", '
    "\"Change task 1 to 'Call mom tonight'\"."
)
# Tasks shown in a list answer; the rest are counted.
SHOWN = 20


@dataclass(frozen=True)
class _Call:
    """A tool call the model made earlier in this turn, and what the tool answered."""

    name: str
    arguments: dict[str, Any]
    output: Any  # the tool's JSON answer, or its error text


def _title(text: str) -> str:
    """A title as said: quotes and the closing full stop removed, the first letter capitalized."""
    text = text.strip().rstrip(".!").strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text[:1].upper() + text[1:200]


def _text(item: Any) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _output(raw: Any) -> Any:
    """A tool's output as the runtime passes it back: JSON text, or a text item."""
    if isinstance(raw, dict):
        raw = raw.get("text", "")
    elif isinstance(raw, list):
        raw = "".join(part.get("text", "") for part in raw if isinstance(part, dict))
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return str(raw)


def _this_turn(items: Sequence[Any]) -> tuple[str, list[_Call]]:
    """The user's last message, and the tool calls (with their answers) made since."""
    message = ""
    calls: list[_Call] = []
    pending: dict[str, tuple[str, dict[str, Any]]] = {}
    for item in items:
        if not isinstance(item, dict):
            item = item.model_dump(exclude_unset=True) if hasattr(item, "model_dump") else {}
        kind = item.get("type")
        if item.get("role") == "user" and kind in (None, "message"):
            message, calls, pending = _text(item), [], {}
        elif kind == "function_call":
            try:
                arguments = json.loads(item.get("arguments") or "{}")
            except ValueError:
                arguments = {}
            pending[item.get("call_id")] = (item.get("name", ""), arguments)
        elif kind == "function_call_output" and item.get("call_id") in pending:
            name, arguments = pending.pop(item["call_id"])
            calls.append(_Call(name, arguments, _output(item.get("output"))))
    return message, calls


class _Steps:
    """Decides one step: a tool call, or the answer in words."""

    def __call__(self, call: ModelCall) -> Sequence[TResponseOutputItem]:
        items = call.input if isinstance(call.input, list) else []
        message, done = _this_turn(items)
        if done:
            return self._after(message, done)
        return self._first(" ".join(message.split()))

    @staticmethod
    def _tool(name: str, arguments: dict[str, Any]) -> Sequence[TResponseOutputItem]:
        # Unique in the conversation, as a provider's are: the runtime takes a call whose
        # id is already in the history it was given for an earlier one, and drops it.
        return [function_call(name, arguments, call_id=f"offline-{uuid.uuid4().hex}")]

    @staticmethod
    def _say(text: str) -> Sequence[TResponseOutputItem]:
        return [assistant_message(text, item_id="offline-message")]

    def _first(self, message: str) -> Sequence[TResponseOutputItem]:
        """The step for a new message: the tool call it asks for, or help."""
        if match := _RENAME.search(message):
            return self._tool("update_task", {"task_id": int(match["id"]), "title": _title(match["title"])})
        if match := _COMPLETE.search(message):
            return self._tool("complete_task", {"task_id": int(match["id"] or match["done_id"])})
        if match := _DELETE_BY_ID.search(message):
            return self._tool("delete_task", {"task_id": int(match["id"])})
        if match := _DELETE_BY_WORDS.search(message):
            return self._tool("list_tasks", {"q": _title(match["words"]).lower(), "limit": 10})
        if match := _ADD.match(message):
            title = _title(match["title"])
            if title:
                return self._tool("add_task", {"title": title})
        if _LIST.search(message):
            if _COMPLETED.search(message):
                return self._tool("list_tasks", {"status": "completed", "limit": 100})
            if _PENDING.search(message):
                return self._tool("list_tasks", {"status": "pending", "limit": 100})
            return self._tool("list_tasks", {"status": "all", "limit": 100})
        return self._say(HELP)

    def _after(self, message: str, done: list[_Call]) -> Sequence[TResponseOutputItem]:
        """The step after a tool answered: another call (a delete by words), or the answer."""
        last = done[-1]
        if isinstance(last.output, str):
            return self._say(f"I couldn't do that: {_error(last.output)}")
        if last.name == "list_tasks" and last.arguments.get("q") is not None:
            tasks = last.output.get("tasks", [])
            words = last.arguments["q"]
            if not tasks:
                return self._say(f'No task matches "{words}".')
            if len(tasks) > 1:
                return self._say(f'{len(tasks)} tasks match "{words}"; which one?\n{_lines(tasks)}')
            return self._tool("delete_task", {"task_id": tasks[0]["id"]})
        return self._say(_ANSWERS.get(last.name, _done)(last))


_ERROR_PREAMBLE = re.compile(r"^(?:.*?Error: )?(?:Error executing tool \w+: )?", re.DOTALL)


def _error(text: str) -> str:
    """The tool's own words, without the MCP SDK's and the runtime's preambles."""
    return _ERROR_PREAMBLE.sub("", text, count=1).strip() or "the tool failed"


def _lines(tasks: list[dict[str, Any]]) -> str:
    shown = [
        f"- [{'x' if task['completed'] else ' '}] #{task['id']} {task['title']}" for task in tasks[:SHOWN]
    ]
    if len(tasks) > SHOWN:
        shown.append(f"... and {len(tasks) - SHOWN} more")
    return "\n".join(shown)


def _listed(call: _Call) -> str:
    tasks, total = call.output.get("tasks", []), call.output.get("total", 0)
    which = {"completed": "completed ", "pending": "pending "}.get(call.arguments.get("status", "all"), "")
    if not tasks:
        return f"You have no {which}tasks."
    return f"You have {total} {which}task{'s' if total != 1 else ''}:\n{_lines(tasks)}"


def _done(call: _Call) -> str:
    change = call.output
    verb = {"created": "Added", "completed": "Completed", "updated": "Updated", "deleted": "Deleted"}
    text = (
        f"{verb.get(change.get('status', ''), 'Done')} task #{change.get('task_id')}: {change.get('title')}."
    )
    if "next_task_id" in change:
        text += f" Its next occurrence is task #{change['next_task_id']}."
    return text


_ANSWERS: dict[str, Callable[[_Call], str]] = {"list_tasks": _listed}


def offline_model(max_turns: int) -> ScriptedModel:
    """A model for one chat request: as many steps as the run may take turns."""
    steps = _Steps()
    return ScriptedModel([ModelStep.respond(steps) for _ in range(max_turns)])
