"""The one way tests make tokens: make_token(sub, **claims)."""

import time
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
