"""Bearer token -> verified subject (the user id), or 401. Knows nothing about the database."""

import logging
import time
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.config import Settings

log = logging.getLogger(__name__)

MAX_SUBJECT_LENGTH = 255

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A JWT whose `sub` is your user id (`todo-api token USER_ID` prints one).",
)


class InvalidToken(Exception):
    """A token that must be refused; the message says why and is safe to show the caller."""


class TokenVerifier:
    """Verifies tokens against the configured secret, algorithms and claims."""

    def __init__(self, settings: Settings) -> None:
        if settings.jwt_secret is None:
            raise ValueError("JWT_SECRET (or BETTER_AUTH_SECRET) is not set")
        self._key = settings.jwt_secret.get_secret_value()
        self._algorithms = list(settings.jwt_algorithms)
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway

    def subject(self, token: str) -> str:
        """The token's verified `sub`; raises InvalidToken with the reason."""
        claims = self._decode(token)
        subject = claims["sub"]
        if not subject or len(subject) > MAX_SUBJECT_LENGTH or "\x00" in subject:
            raise InvalidToken(f"token 'sub' must be 1 to {MAX_SUBJECT_LENGTH} characters, without NUL")
        return subject

    def issue(self, subject: str, ttl_seconds: int, **claims: Any) -> str:
        """A token for `subject`, signed the way this verifier accepts (for the CLI and tests)."""
        now = int(time.time())
        payload = {"sub": subject, "iat": now, "exp": now + ttl_seconds, **claims}
        if self._issuer is not None:
            payload.setdefault("iss", self._issuer)
        if self._audience is not None:
            payload.setdefault("aud", self._audience)
        return jwt.encode(payload, self._key, algorithm=self._algorithms[0])

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise InvalidToken("malformed token") from exc
        # Checked before any signature work, so that `alg: none` and every algorithm not
        # configured fail the same way, whatever the rest of the token says.
        if header.get("alg") not in self._algorithms:
            raise InvalidToken("token algorithm is not accepted")
        try:
            return jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("token is not valid yet") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token has no '{exc.claim}' claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("token signature is invalid") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("token issuer is not accepted") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("token audience is not accepted") from exc
        except jwt.exceptions.InvalidSubjectError as exc:
            raise InvalidToken("token 'sub' must be a string") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise InvalidToken("token algorithm is not accepted") from exc
        except jwt.DecodeError as exc:
            raise InvalidToken("malformed token") from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken("token is invalid") from exc


def unauthorized(reason: str, request: Request) -> HTTPException:
    client = request.client.host if request.client else "unknown"
    # The reason and the address only: the token itself is never logged.
    log.warning("authentication failed: %s (client %s)", reason, client)
    challenge = (
        "Bearer"
        if reason == "missing bearer token"
        else (f'Bearer error="invalid_token", error_description="{reason}"')
    )
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=reason,
        headers={"WWW-Authenticate": challenge},
    )


async def current_subject(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> str:
    if credentials is None:
        # HTTPBearer also answers None for a scheme other than Bearer.
        has_header = "authorization" in request.headers
        raise unauthorized(
            "malformed authorization header" if has_header else "missing bearer token", request
        )
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        return verifier.subject(credentials.credentials)
    except InvalidToken as exc:
        raise unauthorized(str(exc), request) from None


CurrentSubject = Annotated[str, Depends(current_subject)]


async def require_path_owner(user_id: str, subject: CurrentSubject) -> str:
    """The path's user_id must be the token's subject: one user never addresses another's tasks."""
    if user_id != subject:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="token subject does not match the user_id in the path"
        )
    return subject
