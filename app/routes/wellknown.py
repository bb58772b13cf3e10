"""The public keys of the tokens this service issues, for other services to verify them."""

from typing import Any

from fastapi import APIRouter, Request

from app.auth import TokenVerifier

router = APIRouter(tags=["keys"])


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> dict[str, list[dict[str, Any]]]:
    """The JWKS of the service's own token keys (empty without built-in accounts)."""
    # Every key the service accepts its own tokens from, not only the one it signs with:
    # while the signing key is rotated, other services must know both (docs/deploy.md).
    verifier: TokenVerifier = request.app.state.token_verifier
    return {"keys": verifier.own_public_keys()}
