"""The one way tests make tokens: make_token(sub, **claims); and forge(header, claims)
for the shapes that PyJWT refuses to produce."""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
OMIT: Any = object()


def make_token(
    sub: Any = "alice",
    *,
    secret: str = TEST_SECRET,
    algorithm: str = "HS256",
    ttl: int = 3600,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A signed token. Pass a claim as OMIT to leave it out, e.g. make_token(exp=OMIT)."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl, **claims}
    payload = {key: value for key, value in payload.items() if value is not OMIT}
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def auth(sub: Any = "alice", **kwargs: Any) -> dict[str, str]:
    """Authorization header for make_token(sub, **kwargs)."""
    return {"Authorization": f"Bearer {make_token(sub, **kwargs)}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: Any,
    claims: Any,
    *,
    key: str | bytes = TEST_SECRET,
    digest: Callable[..., Any] = hashlib.sha256,
    signature: str | None = None,
) -> str:
    """A token with any header and claims (JSON, or raw bytes), HMAC-signed with `key`
    whatever its header says: for the shapes make_token cannot produce."""

    def part(value: Any) -> str:
        return _b64(value if isinstance(value, bytes) else json.dumps(value).encode())

    signing_input = f"{part(header)}.{part(claims)}"
    if signature is None:
        secret = key.encode() if isinstance(key, str) else key
        signature = _b64(hmac.new(secret, signing_input.encode(), digest).digest())
    return f"{signing_input}.{signature}"
