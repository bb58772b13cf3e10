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

The chat's agent calls these tools too (app/chat/agent.py), with a token of ChatTokens:
minted by this process for one caller and one run, its audience this MCP server.
"""

import logging
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass

import jwt
from fastapi import status
from mcp.server.auth.provider import AccessToken
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import KEY_SOURCE_UNAVAILABLE, InvalidToken, TokenVerifier, VerifiedToken
from app.keys import KeySourceUnavailable

log = logging.getLogger(__name__)


@dataclass
class AuthAttempt:
    """What became of one request's token: why it was refused, or that its keys could not be fetched."""

    client: str
    refused: str | None = None
    unavailable: KeySourceUnavailable | None = None


_attempt: ContextVar[AuthAttempt | None] = ContextVar("mcp_auth_attempt", default=None)


class ChatTokens:
    """Tokens that let the chat's agent call /mcp for the user it answers, and no one else.

    HS256 under a key drawn at random when the app starts and never stored or shown: the
    agent reaches /mcp in this same process, so no other party ever needs to verify one,
    and a token leaked from a run is worthless to another instance and after a restart.
    Its `kid` tells them apart from the identity provider's tokens; its audience is the
    MCP server (RFC 8707's resource), so that nothing that checks audiences takes it for
    a REST token, and REST, which knows no such key, refuses it anyway."""

    KID = "todo-api-chat"
    ISSUER = "todo-api chat"

    def __init__(self, audience: str) -> None:
        self._key = secrets.token_bytes(32)
        self._audience = audience

    def mint(self, subject: str, ttl: int) -> str:
        now = int(time.time())
        claims = {"sub": subject, "iss": self.ISSUER, "aud": self._audience, "iat": now, "exp": now + ttl}
        return jwt.encode(claims, self._key, algorithm="HS256", headers={"kid": self.KID})

    def verify(self, token: str) -> VerifiedToken | None:
        """The token's subject and expiry if it is one of ours and still valid; None if it
        claims to be ours and is not; NotOurs if it does not claim to be."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise NotOurs from None
        if kid != self.KID:
            raise NotOurs
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=self._audience,
                issuer=self.ISSUER,
                options={"require": ["exp", "sub", "aud", "iss"]},
            )
        except jwt.InvalidTokenError:
            return None
        return VerifiedToken(claims["sub"], int(claims["exp"]))


class NotOurs(Exception):
    """A token that does not claim to be a ChatTokens token."""


class BearerTokens:
    """The SDK's TokenVerifier (mcp.server.auth.provider) on app/auth.py's TokenVerifier,
    and on the chat's own tokens."""

    def __init__(self, verifier: TokenVerifier, leeway: int, chat_tokens: ChatTokens) -> None:
        self._verifier = verifier
        self._leeway = leeway
        self._chat_tokens = chat_tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        current = _attempt.get()
        try:
            verified = self._chat_tokens.verify(token)
        except NotOurs:
            pass
        else:
            if verified is None and current is not None:
                current.refused = "chat token is invalid or expired"
            return None if verified is None else self._access(token, verified, leeway=0)
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
        # The SDK refuses a token past expires_at, with no leeway of its own: with
        # JWT_LEEWAY added, /mcp accepts exactly the tokens that REST accepts.
        return self._access(token, verified, leeway=self._leeway)

    @staticmethod
    def _access(token: str, verified: VerifiedToken, *, leeway: int) -> AccessToken:
        return AccessToken(
            token=token,
            client_id=verified.subject,
            scopes=[],
            subject=verified.subject,
            expires_at=verified.expires_at + leeway,
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
