"""ASGI middleware of our own: the request context (id, access log, metrics), the Host
check, the body size limit, and CORS in the JSON error shape."""

import logging
import re
import time
import uuid

from fastapi import HTTPException, status
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import request_id_var
from app.metrics import Metrics

access_log = logging.getLogger("app.access")

REQUEST_ID_HEADER = "X-Request-ID"
# An id from the caller is kept only if it is short and plain, so that it cannot forge
# log lines or carry anything else into them.
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED_ROUTE = "(unmatched)"
# Probes and scrapes: the load balancer, the orchestrator and the monitoring call them,
# often from one address and by the instance's own address rather than a public name.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
INVALID_HOST = "Invalid host header"  # Starlette's words


def route_template(scope: Scope) -> str:
    """The matched route's path template, e.g. /api/{user_id}/tasks: a bounded set, unlike paths."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str) and template:
        return template
    # A mounted app (the docs assets) gets no route from FastAPI; the mount, which alone
    # sets app_root_path, appends its prefix to root_path.
    if "app_root_path" in scope:
        prefix = str(scope.get("root_path", ""))[len(str(scope["app_root_path"])) :]
        return f"{prefix}/{{path}}"
    return UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Gives each request an id (the caller's X-Request-ID or a new one) that every log
    line of the request carries and the response returns; writes the access log line
    and, when enabled, the request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = Headers(scope=scope).get(REQUEST_ID_HEADER)
        request_id = offered if offered and _ACCEPTABLE_ID.fullmatch(offered) else uuid.uuid4().hex
        # Not reset afterwards: the server error handler, outside this middleware, logs
        # with it too. Each request runs in a context of its own, so it goes no further.
        request_id_var.set(request_id)
        status_code = 500  # if the app raises before it answers, the server answers 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        if self.metrics:
            self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            client = scope.get("client")
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                route,
                status_code,
                seconds * 1000,
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status_code,
                    "duration_ms": round(seconds * 1000, 1),
                    "client": client[0] if client else None,
                },
            )
            if self.metrics:
                self.metrics.in_progress.dec()
                self.metrics.observe(scope["method"], route, status_code, seconds)


_HOST_ACCEPTED = "todo.host_accepted"


async def _host_accepted(scope: Scope, receive: Receive, send: Send) -> None:
    scope[_HOST_ACCEPTED] = True


async def _discard(message: Message) -> None:
    pass


class AllowedHostsMiddleware:
    """ALLOWED_HOSTS, checked by Starlette's TrustedHostMiddleware, with a refused Host
    answered in the JSON error shape (Starlette answers plain text) and the probes exempt.

    The check keeps a forged Host out of the URLs the service builds (Location, Link,
    redirects). It is no access control, since any client may send an allowed name, so
    exempting the probes gives nothing away: they build no URL, and load balancers,
    kubelets and Prometheus call them by the instance's address, which clients never use."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        # Starlette's matching (wildcards, IPv6 literals, ports), run in front of an app
        # that only marks the scope; its own plain-text refusal is discarded.
        self._check = TrustedHostMiddleware(_host_accepted, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        await self._check(scope, receive, _discard)
        if scope.pop(_HOST_ACCEPTED, False):
            await self.app(scope, receive, send)
            return
        await JSONResponse({"detail": INVALID_HOST}, status_code=status.HTTP_400_BAD_REQUEST)(
            scope, receive, send
        )


class BodySizeLimitMiddleware:
    """Refuses a request body over MAX_BODY_SIZE bytes with a JSON 413: at once when
    Content-Length says so, else as soon as the streamed body passes the limit.

    FastAPI's own max_body_size answers in plain text when a route never reads the body
    (a 404, a 405), and every error here is JSON."""

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_size:
            await self._too_large()(scope, receive, send)
            return
        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_size:
                    # FastAPI passes an HTTPException raised while reading the body on
                    # to the exception handlers, which answer it as JSON.
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=self._detail())
            return message

        await self.app(scope, receive_with_limit, send)

    def _detail(self) -> str:
        return f"request body is larger than {self.max_body_size} bytes"

    def _too_large(self) -> JSONResponse:
        return JSONResponse({"detail": self._detail()}, status_code=status.HTTP_413_CONTENT_TOO_LARGE)


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the JSON error shape."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {k: v for k, v in response.headers.items() if k not in {"content-length", "content-type"}}
        return JSONResponse(
            {"detail": bytes(response.body).decode()}, status_code=response.status_code, headers=headers
        )
