"""Bearer tokens at /mcp, verified as the REST API verifies them (app/auth.py).

The SDK's bearer middleware asks BearerTokens.verify_token for each request: a token
that app/auth.py refuses is None, and the SDK answers 401 with a `WWW-Authenticate:
Bearer` challenge naming the protected-resource metadata. Two things it cannot do are
done around it, per request, by AuthGuard: log why a token was refused (the reason and
the client, never the token), and answer 503 with Retry-After, as REST does, when the
identity provider's keys cannot be fetched. Starlette's AuthenticationMiddleware turns
any other exception from a verifier into a 500 (or a plain-text 400), so the verifier
reports that case in the request's AuthAttempt and returns None, and AuthGuard replaces
the SDK's 401 with the 503.
"""

import logging
from contextvars import ContextVar
from dataclasses import dataclass

from fastapi import status
from mcp.server.auth.provider import AccessToken
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import KEY_SOURCE_UNAVAILABLE, InvalidToken, TokenVerifier
from app.keys import KeySourceUnavailable

log = logging.getLogger(__name__)


@dataclass
class AuthAttempt:
    """What became of one request's token: why it was refused, or that its keys could not be fetched."""

    client: str
    refused: str | None = None
    unavailable: KeySourceUnavailable | None = None


_attempt: ContextVar[AuthAttempt | None] = ContextVar("mcp_auth_attempt", default=None)


class BearerTokens:
    """The SDK's TokenVerifier (mcp.server.auth.provider) on app/auth.py's TokenVerifier."""

    def __init__(self, verifier: TokenVerifier, leeway: int) -> None:
        self._verifier = verifier
        self._leeway = leeway

    async def verify_token(self, token: str) -> AccessToken | None:
        current = _attempt.get()
        try:
            verified = await self._verifier.verify(token)
        except InvalidToken as exc:
            if current is not None:
                current.refused = str(exc)
            return None
        except KeySourceUnavailable as exc:
            if current is not None:
                current.unavailable = exc
            return None
        return AccessToken(
            token=token,
            client_id=verified.subject,
            scopes=[],
            subject=verified.subject,
            # The SDK refuses a token past expires_at, with no leeway of its own: with
            # JWT_LEEWAY added, /mcp accepts exactly the tokens that REST accepts.
            expires_at=verified.expires_at + self._leeway,
        )


class AuthGuard:
    """ASGI, around the SDK's app: logs each refused token's reason, and answers 503 (not
    the SDK's 401) when the token could not be verified for want of the provider's keys."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        current = AuthAttempt(client[0] if client else "unknown")
        replaced = False

        async def send_or_replace(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == status.HTTP_401_UNAUTHORIZED:
                if current.unavailable is not None:
                    replaced = True
                    await self._unavailable(current.unavailable)(scope, receive, send)
                    return
                # The reason and the address only: the token itself is never logged.
                sent = any(name == b"authorization" for name, _ in scope["headers"])
                reason = current.refused or (
                    "malformed authorization header" if sent else "missing bearer token"
                )
                log.warning("authentication failed: %s (client %s)", reason, current.client)
            if not replaced:
                await send(message)

        reset = _attempt.set(current)
        try:
            await self.app(scope, receive, send_or_replace)
        finally:
            _attempt.reset(reset)

    @staticmethod
    def _unavailable(exc: KeySourceUnavailable) -> JSONResponse:
        # Not a 401: the token may well be good, and the client should retry it, not drop it.
        log.warning("token not verified: key source unavailable (%s)", exc)
        return JSONResponse(
            {"detail": KEY_SOURCE_UNAVAILABLE},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(exc.retry_after)},
        )
