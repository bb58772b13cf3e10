"""The MCP server of an app, at /mcp in the same app: Streamable HTTP, stateless, JSON
answers, built with the official SDK (mcp.server.mcpserver.MCPServer).

- Bearer tokens are verified as the REST API verifies them (app/tools/auth.py); the
  SDK answers 401 with `WWW-Authenticate: Bearer ... resource_metadata=...`, and
  publishes the protected-resource metadata (RFC 9728) at
  /.well-known/oauth-protected-resource/mcp.
- The SDK's app is reached through plain routes for exactly those two paths (a Mount at
  /mcp would answer /mcp itself with a redirect), so the service's own middleware
  (request id and access log, rate limit, Host check, body limit, CORS) covers them.
- Its session manager runs in the app's lifespan (app/main.py).
"""

import ipaddress
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from fastapi import FastAPI
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import AnyHttpUrl, ConfigDict, create_model
from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import TokenVerifier
from app.config import Settings
from app.tools.auth import AuthGuard, BearerTokens, ChatTokens
from app.tools.tasks import TaskTools

MCP_PATH = "/mcp"
INSTRUCTIONS = (
    "The signed-in user's todo list. Every tool acts for the user of the bearer token and "
    "no other: no tool takes a user id. A task id that is not the user's is 'Task not found'."
)
# Host names by which a client on the machine itself reaches the service.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class _Strict(ArgModelBase):
    """Refuses arguments a tool does not name, and takes JSON types as they are (no
    coercion), as the REST bodies do (app.models)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Arguments(FuncMetadata):
    """The SDK's argument handling, but a string that holds JSON null, true or false
    stays a string: a description "null" is that text, not a missing description."""

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        # The SDK also unwraps lists and objects sent as JSON text (some clients send
        # tags as '["a", "b"]'): kept.
        parsed = super().pre_parse_json(data)
        return {key: value if isinstance(value, list | dict) else data[key] for key, value in parsed.items()}


def _refusing_unknown_arguments(tool: Tool) -> Tool:
    """The tool, with an argument model that forbids extra arguments, and an inputSchema
    that says so (`additionalProperties: false`).

    The SDK's argument models ignore what they do not name: a `user_id` argument would be
    dropped without a word, and the model that sent it would believe it had acted on that
    user's tasks. Refused instead, the call runs nothing and says why. Done on the Tool
    the SDK built from the function (its model and schema), as the SDK has no option."""
    base = tool.fn_metadata.arg_model
    # _Strict after the tool's own model: its config wins, the fields are the tool's.
    strict = cast(
        type[ArgModelBase], create_model(base.__name__, __base__=(base, _Strict), __module__=__name__)
    )
    metadata = tool.fn_metadata
    tool.fn_metadata = _Arguments(
        arg_model=strict,
        output_schema=metadata.output_schema,
        output_model=metadata.output_model,
        wrap_output=metadata.wrap_output,
    )
    tool.parameters = strict.model_json_schema(by_alias=True)
    return tool


# Each tool as first built, by its method's function: see _tool.
_built: dict[Callable[..., Any], Tool] = {}


def _tool(method: Callable[..., Any], annotations: ToolAnnotations) -> Tool:
    """The tool of one app's bound method. Its argument model and schema depend on the
    method's signature alone, and pydantic takes ~25 ms a tool to build them: built once
    per process, and each app gets a copy bound to its own TaskTools (every test builds
    an app, and every instance start-up waited for this)."""
    key = getattr(method, "__func__", method)
    built = _built.get(key)
    if built is None:
        built = _built[key] = _refusing_unknown_arguments(Tool.from_function(method, annotations=annotations))
    return built.model_copy(update={"fn": method, "annotations": annotations})


def _http_url(value: str | None) -> bool:
    url = urlsplit(value or "")
    return url.scheme in ("http", "https") and bool(url.hostname)


def issuer_url(settings: Settings) -> str:
    """Who issues the tokens /mcp takes, as its metadata names the authorization server:
    JWT_ISSUER (an identity provider's); else, with built-in accounts, TOKEN_ISSUER if it
    is a URL; else the service itself, which signs the tokens of `todo-api token` and of
    built-in accounts."""
    for issuer in (settings.jwt_issuer, settings.token_issuer if settings.accounts else None):
        if issuer and _http_url(issuer):
            return issuer
    return settings.public_base_url()


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def transport_security(settings: Settings, allowed_hosts: list[str]) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding protection: the Host names /mcp answers (another is a 421)
    and the browser Origins it takes (another is a 403; no Origin is fine).

    Hosts: the exact names of ALLOWED_HOSTS, which the app's own check enforces first; a
    `*.example.com` pattern cannot be said to the SDK, which matches names exactly. With
    any Host allowed (`*`, or unset on the embedded default): loopback and HOST. Either
    way PUBLIC_URL's host, with any port. Origins: CORS_ORIGINS, loopback, PUBLIC_URL."""
    public = urlsplit(settings.public_base_url())
    if "*" in allowed_hosts:
        names = list(LOOPBACK_HOSTS)
        try:
            specific = not ipaddress.ip_address(settings.host).is_unspecified
        except ValueError:
            specific = bool(settings.host)  # a name
        if specific:
            names.append(_bracketed(settings.host.lower()))
    else:
        names = [pattern for pattern in allowed_hosts if not pattern.startswith("*.")]
    names.append(_bracketed(public.hostname or ""))
    hosts = [host for name in dict.fromkeys(names) for host in (name, f"{name}:*")]
    loopback_origins = [
        origin for name in LOOPBACK_HOSTS for origin in (f"http://{name}", f"http://{name}:*")
    ]
    origins = [*settings.cors_origins, *loopback_origins, settings.public_base_url()]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=list(dict.fromkeys(origins)),
    )


@contextmanager
def _sdk_logging_left_alone() -> Iterator[None]:
    """MCPServer() calls logging.basicConfig(), which, on a root logger with no handler
    yet (uvicorn --factory, before app/logs.py has run), installs a Rich handler at INFO.
    basicConfig does nothing to a root logger that has a handler: it gets one meanwhile."""
    root = logging.getLogger()
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeHandler(placeholder)


class _Route(Route):
    """A route that names itself in the scope, as FastAPI's do: the access log and the
    metrics then say /mcp (app.middleware.route_template)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def _plain_text_refusal(message: Message) -> bool:
    if message["status"] < 400:
        return False
    content_type = Headers(raw=message["headers"]).get("content-type")
    return content_type is None or content_type.startswith("text/plain")


def _json_refusals(send: Send) -> Send:
    """`send`, but a refusal in plain text goes out as `{"detail": its text}`.

    The SDK's transport checks answer in plain text (a Host not allowed 421 "Invalid Host
    header", a browser Origin 403, a Content-Type 400, a body too large 413), where every
    other refusal of this service is JSON. The status, the text and the other headers are
    kept. The SDK has no option for it; its JSON answers (JSON-RPC errors, OAuth's 401)
    pass as they are."""
    held: Message | None = None
    body = bytearray()

    async def send_json_refusal(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and _plain_text_refusal(message):
            held = message
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        detail = json.dumps({"detail": body.decode("utf-8", "replace")}).encode()
        headers = MutableHeaders(raw=list(held["headers"]))
        headers["content-type"] = "application/json"
        headers["content-length"] = str(len(detail))
        await send({**held, "headers": headers.raw})
        await send({"type": "http.response.body", "body": detail})

    return send_json_refusal


class _Endpoint:
    """The SDK's app as a route's endpoint, on a copy of the scope: the SDK's Starlette
    app writes its own `app`, `router` and `route` into the scope it is given, where this
    app's access log and error handlers read this app's. Its refusals in plain text are
    sent as JSON (_json_refusals)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(dict(scope), receive, _json_refusals(send))


@dataclass(frozen=True)
class Mcp:
    """An app's MCP server, and how the app itself reaches it (the chat's agent)."""

    server: MCPServer
    # The SDK's app behind /mcp, and its URL: the chat's in-process transport.
    endpoint: ASGIApp
    url: str
    chat_tokens: ChatTokens


def build_mcp(
    app: FastAPI, settings: Settings, token_verifier: TokenVerifier, allowed_hosts: list[str]
) -> Mcp:
    """The app's MCP server, its routes added to `app`. Its session manager must run in
    the app's lifespan: `async with mcp.server.session_manager.run(): ...`."""
    url = settings.public_base_url() + MCP_PATH
    resource = AnyHttpUrl(url)
    chat_tokens = ChatTokens(url)
    auth = AuthSettings(
        issuer_url=AnyHttpUrl(issuer_url(settings)),
        resource_server_url=resource,
        # Which tokens are for this service is app/auth.py's to say (JWT_AUDIENCE), as
        # for REST: the SDK's own check compares a resource indicator that no token here
        # carries.
        validate_token_resource=False,
    )
    tools = [_tool(method, annotations) for method, annotations in TaskTools(app).tools()]
    with _sdk_logging_left_alone():
        server: MCPServer = MCPServer(
            name="todo-api",
            title="Todo API",
            instructions=INSTRUCTIONS,
            version=app.version,
            token_verifier=BearerTokens(token_verifier, settings.jwt_leeway, chat_tokens),
            auth=auth,
            tools=tools,
        )
    sdk_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        max_request_body_size=settings.max_body_size,
        transport_security=transport_security(settings, allowed_hosts),
    )
    endpoint = _Endpoint(AuthGuard(sdk_app))
    metadata_path = urlsplit(str(build_resource_metadata_url(resource))).path
    app.router.routes.extend(
        [
            # POST only. Stateless, the server never sends anything on its own, yet the
            # SDK would hold a GET (an event stream for it) open until the client leaves:
            # a 405, as the transport allows, frees it.
            _Route(MCP_PATH, endpoint, methods=["POST"], include_in_schema=False),
            _Route(metadata_path, endpoint, methods=["GET", "OPTIONS"], include_in_schema=False),
        ]
    )
    return Mcp(server, endpoint, url, chat_tokens)
