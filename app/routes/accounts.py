"""Built-in accounts: register, log in (OAuth2 password form), and who am I.

Passwords are hashed with argon2id (pwdlib). Account rows are under row-level security
like everything else; sign-up and log-in go through the two SECURITY DEFINER functions
of sql/accounts.sql, the only doors to other users' account data.
"""

import logging
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import OAuth2PasswordRequestForm
from pwdlib import PasswordHash
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.auth import TOKEN_SCHEMES, CurrentSubject, TokenVerifier, client_address
from app.config import Settings
from app.errors import NotFound
from app.models import AccessToken, AccountCreate, AccountPublic
from app.ratelimit import count_login, limit_login, limit_register
from app.session import UserConnection, UserSessions

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/auth", tags=["accounts"])

passwords = PasswordHash.recommended()  # argon2id
# Verified against when the email is unknown, so that an unknown email and a wrong
# password take the same time and get the same answer. A constant: hashing it at import
# took 150 ms of every start-up. Made with the recommended parameters, as every stored
# hash is (tests/routes/test_accounts.py checks that they still are the same).
DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$puvsJXa42PEAo7ZmSNQ1RQ$5rjo10OWYxS/eDFW72qxyPYBSgJ1Dg1E4NGVHkN7GEk"
)
INVALID_LOGIN = "incorrect email or password"


def _normalize_email(email: str) -> str:
    return email.strip().lower()


@router.post("/register", response_model=AccountPublic, status_code=status.HTTP_201_CREATED)
async def register(body: AccountCreate, request: Request) -> AccountPublic:
    """Create an account."""
    settings: Settings = request.app.state.settings
    email = _normalize_email(body.email)
    await limit_register(request, email)
    if len(body.password) < settings.password_min_length:
        raise RequestValidationError(
            [
                {
                    "type": "string_too_short",
                    "loc": ("body", "password"),
                    "msg": f"String should have at least {settings.password_min_length} characters",
                    "input": None,
                    "ctx": {"min_length": settings.password_min_length},
                }
            ]
        )
    password_hash = await anyio.to_thread.run_sync(passwords.hash, body.password)
    sessions: UserSessions = request.app.state.user_sessions
    try:
        async with sessions.anonymous() as session:
            row = (
                await session.execute(
                    text("select * from app.register_account(:email, :name, :hash)"),
                    {"email": email, "name": body.name, "hash": password_hash},
                )
            ).one()
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) == "23505":
            raise HTTPException(
                status.HTTP_409_CONFLICT, detail="an account with this email exists"
            ) from None
        raise
    return AccountPublic.model_validate(row._mapping)


@router.post("/token", response_model=AccessToken)
async def token(form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request) -> AccessToken:
    """Log in with email (as `username`) and password; get a bearer token and your `user_id`."""
    settings: Settings = request.app.state.settings
    email = _normalize_email(form.username)
    await limit_login(request, email)
    sessions: UserSessions = request.app.state.user_sessions
    async with sessions.anonymous() as session:
        found = (
            await session.execute(text("select * from app.login_lookup(:email)"), {"email": email})
        ).one_or_none()
    password_hash = found.password_hash if found else DUMMY_HASH
    valid = await anyio.to_thread.run_sync(passwords.verify, form.password, password_hash)
    # Counted only now: a right password must not use up the email's allowance.
    await count_login(request, email, succeeded=found is not None and valid)
    if found is None or not valid:
        log.warning("log-in failed (client %s)", client_address(request))
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail=INVALID_LOGIN, headers={"WWW-Authenticate": "Bearer"}
        )
    verifier: TokenVerifier = request.app.state.token_verifier
    return AccessToken(
        access_token=verifier.issue(found.user_id, settings.token_ttl),
        expires_in=settings.token_ttl,
        user_id=found.user_id,
    )


@router.get(
    "/me",
    response_model=AccountPublic,
    responses={404: {"description": "No built-in account"}},
    dependencies=TOKEN_SCHEMES,
)
async def me(connection: UserConnection, subject: CurrentSubject) -> AccountPublic:
    """Your account, with your `user_id`: the one every route under `/api/{user_id}` takes."""
    account = await connection.fetchrow(
        "select user_id, email, name, created_at from public.accounts where user_id = $1", subject
    )
    if account is None:
        raise NotFound("no built-in account for this user")
    return AccountPublic(**account)
