"""The public keys of the tokens this service issues, for other services to verify them."""

from typing import Any

from fastapi import APIRouter, Request

from app.keys import SigningKey

router = APIRouter(tags=["keys"])


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> dict[str, list[dict[str, Any]]]:
    """The JWKS of the service's own token signing key (empty without built-in accounts)."""
    key: SigningKey | None = request.app.state.signing_key
    return {"keys": [key.public_jwk] if key else []}
