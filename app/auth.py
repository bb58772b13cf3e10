"""Bearer token -> verified subject (the user id), or 401 (or 503 while an identity
provider's keys cannot be fetched). Knows nothing about the database.

Three kinds of token are accepted, each only when configured:
- HS256 (or another HMAC algorithm in JWT_ALGORITHMS) signed with JWT_SECRET;
- asymmetric (EdDSA, RS256, ES256, ...) signed by an identity provider whose keys come
  from a JWKS (JWKS_URL, JWKS_FILE or JWKS), the token's `kid` choosing the key;
- EdDSA tokens this service issued itself to built-in accounts (its own key, or while
  that key is rotated one of TOKEN_VERIFICATION_KEYS).
The algorithm in the token's header must be configured and must be the algorithm of the
key it selects, so no token can make one kind of key serve as another.
"""

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any, cast

import jwt
from cachetools import TLRUCache
from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.params import Depends as Dependency
from fastapi.security import HTTPBearer, OAuth2PasswordBearer

from app.config import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, Settings
from app.keys import (
    KeySourceUnavailable,
    RemoteKeySet,
    SigningKey,
    StaticKeySet,
    VerificationKey,
    verification_keys_from_pem,
)

log = logging.getLogger(__name__)

MAX_SUBJECT_LENGTH = 255
KEY_SOURCE_UNAVAILABLE = "the token key source is unavailable, try again shortly"

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A JWT whose `sub` is your user id (`todo-api token USER_ID` prints one).",
)
# Only for the docs page: its Authorize dialog can then log a built-in account in.
password_scheme = OAuth2PasswordBearer(
    tokenUrl="/api/auth/token",
    scheme_name="password",
    auto_error=False,
    description="Built-in accounts: your email and password.",
)
# The two schemes, for the OpenAPI document and the docs page's Authorize dialog: named
# once in each route's dependencies (the routers under /api/{user_id}, and GET
# /api/auth/me), while current_subject calls bearer_scheme itself. FastAPI solves a
# dependency's own dependencies again wherever it is named, cached or not, and a route
# names current_subject three times (the owner check, the session, its own parameter):
# as its dependencies the schemes were solved three times a request (bench/README.md,
# round 10).
TOKEN_SCHEMES: list[Dependency] = [Security(bearer_scheme), Security(password_scheme)]


class InvalidToken(Exception):
    """A token that must be refused; the message says why and is safe to show the caller."""


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed every check: whose it is, and its `exp` (JWT_LEEWAY not added)."""

    subject: str
    expires_at: int


@dataclass(frozen=True)
class _Trust:
    """One source of tokens: its key, and the claims its tokens must carry."""

    key: Any
    issuer: str | None
    audience: str | None


@dataclass(frozen=True)
class _Verified:
    """A token that passed verification, remembered: what it proved, the header fields
    that chose its key, the key, and when it stops being good (its `exp` plus JWT_LEEWAY,
    as PyJWT counts it)."""

    token: VerifiedToken
    algorithm: str
    kid: str | None
    key: Any
    good_until: float


def _good_until(_digest: bytes, entry: _Verified, _now: float) -> float:
    return entry.good_until


class TokenVerifier:
    """Verifies tokens against the configured keys, algorithms and claims."""

    def __init__(self, settings: Settings, signing_key: SigningKey | None = None) -> None:
        self._algorithms = frozenset(settings.jwt_algorithms)
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._keys: StaticKeySet | RemoteKeySet | None = None
        if settings.jwks_url:
            self._keys = RemoteKeySet(
                settings.jwks_url,
                cache_seconds=settings.jwks_cache_seconds,
                min_refresh_seconds=settings.jwks_min_refresh_seconds,
            )
        elif settings.jwks_file:
            self._keys = StaticKeySet.from_file(settings.jwks_file)
        elif settings.jwks:
            self._keys = StaticKeySet(settings.jwks)
        self._signing_key = signing_key
        # The keys of the service's own tokens, by kid: the one it signs with first, then
        # those of TOKEN_VERIFICATION_KEYS (the next key, or the last one, while the
        # signing key is rotated; docs/deploy.md). Without a signing key the service
        # issues no tokens, and trusts none as its own.
        self._own_keys: dict[str, VerificationKey] = {}
        if signing_key is not None:
            given = settings.token_verification_keys
            also = verification_keys_from_pem(given.get_secret_value()) if given else []
            for key in [signing_key.public, *also]:
                self._own_keys.setdefault(key.kid, key)  # the signing key may be listed too
            if len(self._own_keys) > 1:
                log.info(
                    "own tokens signed with key %s; also accepted: %s (TOKEN_VERIFICATION_KEYS)",
                    signing_key.kid,
                    ", ".join(kid for kid in self._own_keys if kid != signing_key.kid),
                )
        if self._secret is None and self._keys is None and signing_key is None:
            raise ValueError("configure JWT_SECRET (or BETTER_AUTH_SECRET), a JWKS, or built-in accounts")
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._own_issuer = settings.token_issuer
        self._leeway = settings.jwt_leeway
        self._user_claim = settings.jwt_user_claim
        # Verifying a token is most of the CPU an authenticated request without a database
        # costs (~85 µs of PyJWT for HS256, more for RSA), and a client sends the same
        # token for as long as it lasts. Kept by the token's SHA-256 (the tokens, which are
        # credentials, are not kept), each until its own token's `good_until`.
        self._verified: TLRUCache[bytes, _Verified] = TLRUCache(
            maxsize=settings.token_cache_size, ttu=_good_until, timer=time.time
        )

    async def subject(self, token: str) -> str:
        """The token's verified user id; raises InvalidToken with the reason, or
        KeySourceUnavailable when only keys that could not be fetched could decide."""
        return (await self.verify(token)).subject

    async def verify(self, token: str) -> VerifiedToken:
        """subject(), with the token's expiry: for the MCP server's access tokens.

        A token verified before (TOKEN_CACHE_SIZE) is good again without its signature
        and claims being checked again, while it has not expired and while its header
        still chooses the very key that verified it: the key is looked up as for a new
        token, so a key withdrawn from the JWKS (at the next refresh) or no longer
        configured ends its tokens' acceptance exactly as it would without the cache."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        remembered = self._verified.get(digest)
        if remembered is not None:
            trust = await self._trust(remembered.algorithm, remembered.kid)
            if trust.key is remembered.key:
                return remembered.token
            self._verified.pop(digest, None)
        verified, algorithm, kid, key = await self._verify(token)
        if self._verified.maxsize:  # 0: TOKEN_CACHE_SIZE turned it off
            good_until = verified.expires_at + self._leeway
            self._verified[digest] = _Verified(verified, algorithm, kid, key, good_until)
        return verified

    async def _verify(self, token: str) -> tuple[VerifiedToken, str, str | None, Any]:
        """The full check: the token's subject and expiry, with the algorithm, `kid` and
        key that verified it."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            # Not only DecodeError: PyJWT checks `kid` and `crit` here too, raising
            # InvalidTokenError for a `kid` that is not a string or a `crit` it does not
            # support. (Its other errors, PyJWKError and InvalidKeyError, are about keys,
            # which are ours, not the token's: a fault to see, not a 401.)
            raise InvalidToken("malformed token") from exc
        algorithm = header.get("alg")
        kid = header.get("kid")
        trust = await self._trust(algorithm, kid)
        # _trust has refused any algorithm that is not one of the configured strings.
        claims = self._decode(token, cast(str, algorithm), trust)
        subject = claims[self._user_claim]
        if not isinstance(subject, str):
            raise InvalidToken(f"token '{self._user_claim}' must be a string")
        if not subject or len(subject) > MAX_SUBJECT_LENGTH or "\x00" in subject:
            raise InvalidToken(
                f"token '{self._user_claim}' must be 1 to {MAX_SUBJECT_LENGTH} characters, without NUL"
            )
        try:
            # JSON's "\ud800" decodes to a lone surrogate, which no UTF-8 text holds:
            # neither the database nor the signed user context could take it.
            subject.encode()
        except UnicodeEncodeError:
            raise InvalidToken(f"token '{self._user_claim}' is not valid Unicode text") from None
        # PyJWT has checked `exp` (required) as a number, or a numeric string; _trust
        # has checked `alg` and `kid`.
        verified = VerifiedToken(subject, int(claims["exp"]))
        return verified, cast(str, algorithm), cast(str | None, kid), trust.key

    async def _trust(self, algorithm: object, kid: object) -> _Trust:
        # Settled before any signature work, so that `alg: none` and every algorithm not
        # configured fail the same way, whatever the rest of the token says.
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise InvalidToken("token algorithm is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed token")
        if algorithm in HMAC_ALGORITHMS:
            if self._secret is None:
                raise InvalidToken("token algorithm is not accepted")
            return _Trust(self._secret, self._issuer, self._audience)
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise InvalidToken("token algorithm is not accepted")
        own_key = self._own_keys.get(kid) if isinstance(kid, str) else None
        if own_key is not None:
            if algorithm != "EdDSA":
                raise InvalidToken("token algorithm does not match its key")
            return _Trust(own_key.public, self._own_issuer, self._own_issuer)
        if self._keys is None:
            if self._own_keys and algorithm == "EdDSA":
                # Most likely one of ours from a key no longer (or not yet) configured:
                # say so, as a JWKS would, for whoever is looking into a rotation.
                raise InvalidToken("token signing key is not known")
            raise InvalidToken("token algorithm is not accepted")
        jwk = await self._keys.find(kid)
        if jwk is None:
            raise InvalidToken("token signing key is not known")
        if jwk.algorithm_name != algorithm:
            raise InvalidToken("token algorithm does not match its key")
        return _Trust(jwk.key, self._issuer, self._audience)

    def _decode(self, token: str, algorithm: str, trust: _Trust) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                trust.key,
                algorithms=[algorithm],
                issuer=trust.issuer,
                audience=trust.audience,
                leeway=self._leeway,
                options={
                    "require": ["exp", self._user_claim],
                    "verify_aud": trust.audience is not None,
                },
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

    def issue(self, subject: str, ttl_seconds: int, **claims: Any) -> str:
        """A token for `subject`: with the service's own key when it has one (as for
        built-in accounts), else with JWT_SECRET (for `todo-api token` and tests)."""
        now = int(time.time())
        payload: dict[str, Any] = {self._user_claim: subject, "iat": now, "exp": now + ttl_seconds}
        if self._signing_key is not None:
            payload |= {"iss": self._own_issuer, "aud": self._own_issuer, **claims}
            return self._signing_key.sign(payload)
        if self._secret is None:
            raise ValueError("no key to sign with: set JWT_SECRET or enable built-in accounts")
        if self._issuer is not None:
            payload["iss"] = self._issuer
        if self._audience is not None:
            payload["aud"] = self._audience
        hmac = sorted(self._algorithms & HMAC_ALGORITHMS)
        return jwt.encode(payload | claims, self._secret, algorithm=hmac[0] if hmac else "HS256")

    def own_public_keys(self) -> list[dict[str, str]]:
        """The public JWKs of the keys whose tokens are accepted as the service's own, the
        signing key's first: what /.well-known/jwks.json publishes."""
        return [key.public_jwk for key in self._own_keys.values()]

    async def key_source_unavailable(self) -> str | None:
        """Why tokens signed by the identity provider cannot be verified now (no key
        fetched from JWKS_URL, and the last attempt failed), or None. May try a fetch."""
        if isinstance(self._keys, RemoteKeySet):
            return await self._keys.unavailable()
        return None

    async def aclose(self) -> None:
        if isinstance(self._keys, RemoteKeySet):
            await self._keys.aclose()


def client_address(request: Request) -> str:
    """The caller's address, as uvicorn reports it (behind a trusted proxy, the client's)."""
    return request.client.host if request.client else "unknown"


def unauthorized(reason: str, request: Request) -> HTTPException:
    # The reason and the address only: the token itself is never logged.
    log.warning("authentication failed: %s (client %s)", reason, client_address(request))
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


async def current_subject(request: Request) -> str:
    credentials = await bearer_scheme(request)
    if credentials is None:
        # HTTPBearer also answers None for a scheme other than Bearer.
        has_header = "authorization" in request.headers
        raise unauthorized(
            "malformed authorization header" if has_header else "missing bearer token", request
        )
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        return await verifier.subject(credentials.credentials)
    except InvalidToken as exc:
        raise unauthorized(str(exc), request) from None
    except KeySourceUnavailable as exc:
        # Not a 401: the token may well be good, and the client should retry it, not
        # drop it. Retry-After is when the service will next try the provider.
        log.warning("token not verified: key source unavailable (%s)", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=KEY_SOURCE_UNAVAILABLE,
            headers={"Retry-After": str(exc.retry_after)},
        ) from None


CurrentSubject = Annotated[str, Depends(current_subject)]


async def require_path_owner(user_id: str, subject: CurrentSubject) -> str:
    """The path's user_id must be the token's subject: one user never addresses another's tasks."""
    if user_id != subject:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="token subject does not match the user_id in the path"
        )
    return subject
