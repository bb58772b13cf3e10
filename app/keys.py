"""Keys that sign the tokens this service accepts: an identity provider's JWKS (fetched
from a URL, or given inline or in a file) and the service's own keys: the one it signs
with, and those it also accepts while the signing key is rotated."""

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt import PyJWK, PyJWKSet
from jwt.algorithms import OKPAlgorithm

from app.config import ASYMMETRIC_ALGORITHMS

log = logging.getLogger(__name__)


class KeySourceUnavailable(Exception):
    """The identity provider's keys could not be fetched, and no cached key decides the
    token: the caller did nothing wrong, and may try again in `retry_after` seconds."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def _usable_keys(document: Any) -> dict[str, PyJWK]:
    """kid -> key for the asymmetric signing keys of a JWKS document. HMAC keys ("oct")
    are left out: a shared secret comes only from JWT_SECRET, never from a key set."""
    if not isinstance(document, dict):
        raise jwt.PyJWKSetError("the JWKS is not a JSON object")
    keys: dict[str, PyJWK] = {}
    for jwk in PyJWKSet.from_dict(document).keys:
        if jwk.algorithm_name not in ASYMMETRIC_ALGORITHMS or jwk.public_key_use not in (None, "sig"):
            continue
        keys[jwk.key_id or ""] = jwk
    return keys


class StaticKeySet:
    """A JWKS given inline (JWKS) or in a file (JWKS_FILE): read once."""

    def __init__(self, document: Any) -> None:
        self._keys = _usable_keys(document)

    @classmethod
    def from_file(cls, path: Path) -> "StaticKeySet":
        return cls(json.loads(path.read_text(encoding="utf-8")))

    async def find(self, kid: str | None) -> PyJWK | None:
        return _find(self._keys, kid)


class RemoteKeySet:
    """A JWKS fetched from JWKS_URL.

    Written here rather than taken from PyJWT's PyJWKClient, which fetches synchronously
    (blocking the event loop), refetches for every unknown `kid` with no limit (so
    tokens with made-up kids would hammer the identity provider), and has no way to keep
    serving the keys it had while the provider is down. This one: fetches with httpx,
    keeps the keys for `cache_seconds`, refetches early on an unknown `kid` at most once
    per `min_refresh_seconds`, and on a failed fetch keeps the keys it has.

    A key it cannot find is not always the token's fault: when the last fetch failed,
    the key may be one the provider publishes now. Then `find` raises
    KeySourceUnavailable (a 503) rather than answering None (a 401)."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = 300,
        min_refresh_seconds: float = 30,
        timeout: float = 5,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = url
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._timeout = timeout
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = float("-inf")  # last successful fetch
        self._attempted_at = float("-inf")  # last attempt, successful or not
        # Why the last attempt failed; None once one succeeded, until one fails again.
        self._failure: str | None = "no fetch has completed yet"
        self._lock = asyncio.Lock()

    async def find(self, kid: str | None) -> PyJWK | None:
        """The key `kid` names (without `kid`: the only key); None if the provider, asked
        last time, does not publish it. Raises KeySourceUnavailable if it could not be asked."""
        now = time.monotonic()
        if now - self._fetched_at > self._cache_seconds:
            await self._refresh(now)
        key = _find(self._keys, kid)
        if key is None and kid is not None:
            await self._refresh(now)  # a rotated key, perhaps; rate-limited
            key = _find(self._keys, kid)
        if key is None and self._failure is not None:
            raise KeySourceUnavailable(self._failure, self._seconds_to_next_attempt())
        return key

    async def unavailable(self) -> str | None:
        """Why no token of the provider's can be verified (no key was ever fetched, or
        none is cached and the last fetch failed), or None. Without keys it first tries a
        fetch, as often as `min_refresh_seconds` allows."""
        if not self._keys:
            await self._refresh(time.monotonic())
        return None if self._keys else (self._failure or "no keys")

    def _seconds_to_next_attempt(self) -> int:
        remaining = self._attempted_at + self._min_refresh_seconds - time.monotonic()
        return max(1, math.ceil(remaining))

    async def _refresh(self, now: float) -> None:
        async with self._lock:
            if now - self._attempted_at < self._min_refresh_seconds:
                return
            self._attempted_at = time.monotonic()
            try:
                # A bound on the whole fetch, not only on each read: requests wait for it.
                async with asyncio.timeout(self._timeout):
                    response = await self._client.get(self._url)
                    response.raise_for_status()
                    keys = _usable_keys(response.json())
                if not keys:
                    raise jwt.PyJWKSetError("the JWKS has no asymmetric signing key")
            except (httpx.HTTPError, ValueError, TypeError, TimeoutError, jwt.PyJWTError) as exc:
                # TypeError: PyJWT on a JWK whose members are of the wrong JSON type.
                self._failure = _failure(exc)
                log.warning(
                    "JWKS fetch from %s failed (%s); keeping %d cached keys",
                    self._url,
                    self._failure,
                    len(self._keys),
                )
                return
            self._keys = keys
            self._fetched_at = time.monotonic()
            self._failure = None

    async def aclose(self) -> None:
        await self._client.aclose()


def _failure(exc: Exception) -> str:
    """A fetch's failure, in a few words for the log and the readiness probe."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, json.JSONDecodeError):
        return "not JSON"
    if isinstance(exc, jwt.PyJWKSetError):
        return str(exc)  # PyJWT's and ours: about the set, never quoting a key
    return type(exc).__name__


def _find(keys: dict[str, PyJWK], kid: str | None) -> PyJWK | None:
    if kid is not None:
        return keys.get(kid)
    # A token without `kid` is only unambiguous against a set of one key.
    return next(iter(keys.values())) if len(keys) == 1 else None


@dataclass(frozen=True)
class VerificationKey:
    """An Ed25519 public key whose tokens the service accepts as its own: its signing
    key's, and while that key is rotated those of TOKEN_VERIFICATION_KEYS."""

    public: Ed25519PublicKey
    kid: str
    public_jwk: dict[str, str]

    @classmethod
    def of(cls, public: Ed25519PublicKey) -> "VerificationKey":
        jwk = json.loads(OKPAlgorithm.to_jwk(public))
        kid = _thumbprint(jwk)
        return cls(public=public, kid=kid, public_jwk={**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"})

    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


@dataclass(frozen=True)
class SigningKey:
    """The service's own Ed25519 key, for the tokens it issues to built-in accounts."""

    private: Ed25519PrivateKey
    public: VerificationKey

    @property
    def kid(self) -> str:
        return self.public.kid

    @property
    def public_jwk(self) -> dict[str, str]:
        return self.public.public_jwk

    @classmethod
    def from_pem(cls, pem: bytes) -> "SigningKey":
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # Not cryptography's message: it is about OpenSSL's parsing, not the setting.
            private = None
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(
                "TOKEN_SIGNING_KEY must be an Ed25519 private key in PEM, unencrypted "
                "(make one with: openssl genpkey -algorithm ed25519)"
            )
        return cls(private=private, public=VerificationKey.of(private.public_key()))

    @staticmethod
    def generate_pem() -> bytes:
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, payload: dict[str, Any]) -> str:
        return jwt.encode(payload, self.private, algorithm="EdDSA", headers={"kid": self.kid})


# One PEM block, from BEGIN to the END of the same label, with its label. No dash in
# between (base64 has none): a block whose END line was lost must not run on to the
# next block's END and take that key in with it.
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----[^-]*-----END \1-----")


def verification_keys_from_pem(text: str, source: str = "TOKEN_VERIFICATION_KEYS") -> list[VerificationKey]:
    """The Ed25519 public keys in `text`: PEM blocks one after another, each a public key
    or an unencrypted private key (of which only the public half is kept); none if it is
    empty. Raises ValueError naming `source` and a line, never quoting the text.

    Anything else between the blocks is refused, not skipped: a block cut short (an END
    line lost in copying) would otherwise leave a key out without a word, and the tokens
    it signs would be refused in the middle of a rotation."""

    def line(position: int) -> int:
        return text.count("\n", 0, position) + 1

    def only_space(start: int, stop: int) -> None:
        stray = text[start:stop]
        if stray.strip():
            first = start + len(stray) - len(stray.lstrip())
            raise ValueError(
                f"{source} holds text that is not a PEM block, on line {line(first)} (each key "
                "runs from its -----BEGIN ...----- line to its -----END ...----- line)"
            )

    keys: list[VerificationKey] = []
    end = 0
    for block in _PEM_BLOCK.finditer(text):
        only_space(end, block.start())
        where = f"the key on line {line(block.start())} of {source}"
        keys.append(VerificationKey.of(_ed25519_public_key(block[0].encode(), block[1], where)))
        end = block.end()
    only_space(end, len(text))
    return keys


def _ed25519_public_key(pem: bytes, label: str, where: str) -> Ed25519PublicKey:
    if label not in ("PUBLIC KEY", "PRIVATE KEY"):
        # ENCRYPTED PRIVATE KEY, RSA PRIVATE KEY, CERTIFICATE, OPENSSH PRIVATE KEY, ...
        raise ValueError(
            f"{where} is labelled {label}: give Ed25519 keys as PUBLIC KEY (todo-api public-key "
            "prints one) or as unencrypted PRIVATE KEY"
        )
    try:
        if label == "PUBLIC KEY":
            key: object = serialization.load_pem_public_key(pem)
        else:
            key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{where} cannot be read as a {label} in PEM") from None
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{where} is not an Ed25519 key: the service's own tokens are signed with Ed25519")
    return key


def _thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint of an OKP key: the kid other services can look it up by."""
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
