"""Logging: the request id on every record, text or JSON lines, and no secrets in either.

Every record gets a `request_id` attribute when it is created (a log record factory
reads the id of the request being served from a context variable), so a line from
uvicorn, SQLAlchemy or app.auth carries the id as much as our own access log does,
whichever handler formats it.
"""

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from app.config import Settings

NO_REQUEST = "-"
request_id_var: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST)

# What a secret looks like if it ever reaches a message by mistake: a bearer
# credential, a JWT (three base64url parts, the first a JSON header), a password in a URL
# or in key=value form. The code never logs these; this is the net under it.
_SECRETS = (
    (re.compile(r"(?i)\b(bearer)\s+[^\s,;\"']+"), r"\1 [redacted]"),
    (re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*"), "[redacted token]"),
    (re.compile(r"(://[^:/@\s\"']+:)[^@\s\"']+@"), r"\1[redacted]@"),
    (re.compile(r"(?i)\b(password|passwd|pwd|secret)(\s*[=:]\s*)[^\s,;&\"']+"), r"\1\2[redacted]"),
)

# Attributes every LogRecord has; anything else on a record came from `extra=`, except
# uvicorn's terminal-colour copy of its message.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def install_request_id_factory() -> None:
    """Give every record created from now on the current request id. Idempotent."""
    current = logging.getLogRecordFactory()
    if getattr(current, "adds_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        record.request_id = request_id_var.get()
        return record

    factory.adds_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and key != "request_id"}


class TextFormatter(logging.Formatter):
    """`time level logger [request id] message key=value ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = NO_REQUEST
        line = super().format(record)
        extras = " ".join(f"{key}={value}" for key, value in _extras(record).items())
        return redact(f"{line} {extras}" if extras else line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the `extra=` fields as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", NO_REQUEST),
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Each value on its own, so that a pattern cannot reach across JSON's quotes.
        return json.dumps({k: redact(v) if isinstance(v, str) else v for k, v in entry.items()}, default=str)


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Send every logger's records to one stream handler in LOG_FORMAT at LOG_LEVEL,
    uvicorn's included (it is run with log_config=None), except uvicorn's access log:
    ours (app.middleware) has the request's route template where uvicorn's has its path,
    user id and all."""
    install_request_id_factory()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # uvicorn's access_log=False is this very setting, which `serve --workers N` workers
    # would otherwise undo when they configure logging after uvicorn has.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    # At INFO and below SQLAlchemy echoes every statement, and its parameters with it.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    # The MCP SDK says at INFO that each stateless /mcp request ends its session: the
    # access log has the request already.
    logging.getLogger("mcp").setLevel(logging.WARNING)
    # httpx2 says at INFO each request it sends: for a chat message, the agent's
    # in-process calls to /mcp and the model provider's, which the chat's access log line
    # stands for.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
