"""Rate limits, with the `limits` library: all requests per client address (middleware),
writes per user (a dependency, once the token has said who the user is), and sign-up and
log-in attempts (per client address, and per email: for log-in, its failures only).

Counters live in memory (one process) or in Redis (shared by every instance behind a
load balancer). If Redis cannot be reached, requests go through and the failure is
logged: the limits protect the service, they are not worth an outage of their own.
"""

import logging
import math
import time

from fastapi import HTTPException, Request, status
from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import CurrentSubject, client_address
from app.config import Settings
from app.middleware import PROBE_PATHS

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def storage_uri(settings: Settings) -> str:
    """limits' asyncio storage URI for RATE_LIMIT_STORAGE (memory://, redis://, rediss://, ...)."""
    uri = settings.rate_limit_storage
    return uri if uri.startswith("async+") else f"async+{uri}"


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.storage: Storage = storage_from_string(storage_uri(settings), wrap_exceptions=True)  # type: ignore[assignment]
        self._strategy = SlidingWindowCounterRateLimiter(self.storage)
        self._requests = self._parse(settings.rate_limit_requests)
        self._writes = self._parse(settings.rate_limit_writes)
        self._auth = self._parse(settings.rate_limit_auth)
        self._chat = self._parse(settings.rate_limit_chat)

    @staticmethod
    def _parse(value: str) -> list[RateLimitItem]:
        return parse_many(value) if value.strip() else []

    @staticmethod
    def _storage_failed(exc: StorageError) -> None:
        reason = type(exc.storage_error).__name__
        log.warning("rate limit storage unavailable, not limiting: %s", reason)

    async def _seconds_until_free(self, item: RateLimitItem, *key: str) -> int:
        stats = await self._strategy.get_window_stats(item, *key)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def _retry_after(self, items: list[RateLimitItem], *key: str) -> int | None:
        """Count one hit against every item; None if all allow it, else seconds to wait."""
        for item in items:
            try:
                if await self._strategy.hit(item, *key):
                    continue
                return await self._seconds_until_free(item, *key)
            except StorageError as exc:
                self._storage_failed(exc)
                return None
        return None

    async def client_retry_after(self, address: str) -> int | None:
        return await self._retry_after(self._requests, "client", address)

    async def writes_retry_after(self, user_id: str) -> int | None:
        return await self._retry_after(self._writes, "writes", user_id)

    async def chat_retry_after(self, user_id: str) -> int | None:
        return await self._retry_after(self._chat, "chat", user_id)

    async def register_retry_after(self, address: str, email: str) -> int | None:
        """RATE_LIMIT_AUTH for sign-up, per client address and per email."""
        by_address = await self._retry_after(self._auth, "register", "client", address)
        by_email = await self._retry_after(self._auth, "register", "email", email)
        if by_address is None and by_email is None:
            return None
        return max(by_address or 0, by_email or 0)

    # Log-in counts every attempt per client address, but per email only the failures:
    # counting the right password too let anyone lock a known email out by hammering it.
    # Once an email's failures reach RATE_LIMIT_AUTH, each address gets one try at it per
    # window: the try is marked before the password is verified (so that concurrent
    # requests cannot all slip through), a failure keeps the mark, and a success clears
    # it. So the attacker's addresses are held off while the owner, from an address of
    # their own, still logs in, as often as they like. An attacker with many addresses
    # gets one guess for the email per fresh address per window, besides each address's
    # own RATE_LIMIT_AUTH over all attempts. Nothing is verified once refused, so a 429
    # never tells a right password from a wrong one.

    @staticmethod
    def _once(item: RateLimitItem) -> RateLimitItem:
        """One hit per `item`'s window: the mark of an address that failed or is trying."""
        return type(item)(1, item.multiples, item.namespace)

    async def login_retry_after(self, address: str, email: str) -> int | None:
        """Before a log-in is verified: None to go ahead, else seconds to wait."""
        by_address = await self._retry_after(self._auth, "log-in", "client", address)
        if by_address is not None:
            return by_address
        for item in self._auth:
            once = self._once(item)
            # The keys differ in their second part, so no email spells another's key.
            failures = ("log-in", "failed", email)
            mark = ("log-in", "failed-from", address, email)
            try:
                if await self._strategy.test(item, *failures):
                    continue
                if await self._strategy.hit(once, *mark):
                    continue  # spent, but not by this address: its one try
                return min(
                    await self._seconds_until_free(item, *failures),
                    await self._seconds_until_free(once, *mark),
                )
            except StorageError as exc:
                self._storage_failed(exc)
                return None
        return None

    async def login_failed(self, address: str, email: str) -> None:
        """Count a failed log-in against the email, and mark the address for it."""
        for item in self._auth:
            try:
                await self._strategy.hit(item, "log-in", "failed", email)
                await self._strategy.hit(self._once(item), "log-in", "failed-from", address, email)
            except StorageError as exc:
                self._storage_failed(exc)
                return

    async def login_succeeded(self, address: str, email: str) -> None:
        """Clear the address's mark for the email: the owner logs in again from there."""
        for item in self._auth:
            try:
                await self._strategy.clear(self._once(item), "log-in", "failed-from", address, email)
            except StorageError as exc:
                self._storage_failed(exc)
                return


def too_many(retry_after: int, detail: str) -> JSONResponse:
    return JSONResponse(
        {"detail": detail},
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(retry_after)},
    )


class ClientRateLimitMiddleware:
    """RATE_LIMIT_REQUESTS per client address. Behind a proxy the address is the one the
    proxy reports, when uvicorn trusts it (FORWARDED_ALLOW_IPS)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Probes and scrapes must keep answering when clients are being throttled.
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        limiter: RateLimiter = scope["app"].state.rate_limiter
        retry_after = await limiter.client_retry_after(address)
        if retry_after is None:
            await self.app(scope, receive, send)
            return
        log.warning("rate limited client %s", address)
        await too_many(retry_after, "too many requests, slow down")(scope, receive, send)


def _rate_limited(retry_after: int, detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS, detail=detail, headers={"Retry-After": str(retry_after)}
    )


async def limit_writes(request: Request, subject: CurrentSubject) -> None:
    """RATE_LIMIT_WRITES per user, for the methods that change something."""
    if request.method in READ_METHODS:
        return
    retry_after = await request.app.state.rate_limiter.writes_retry_after(subject)
    if retry_after is not None:
        log.warning("rate limited writes of a user")
        raise _rate_limited(retry_after, "too many changes, slow down")


async def limit_chat(request: Request, subject: CurrentSubject) -> None:
    """RATE_LIMIT_CHAT per user, for chat messages (each may run several model calls;
    the tool calls they make count against RATE_LIMIT_WRITES too)."""
    retry_after = await request.app.state.rate_limiter.chat_retry_after(subject)
    if retry_after is not None:
        log.warning("rate limited chat messages of a user")
        raise _rate_limited(retry_after, "too many chat messages, slow down")


async def limit_register(request: Request, email: str) -> None:
    """RATE_LIMIT_AUTH per client address and per email, for sign-up."""
    limiter: RateLimiter = request.app.state.rate_limiter
    retry_after = await limiter.register_retry_after(client_address(request), email)
    _refuse_auth_attempt(request, "register", retry_after)


async def limit_login(request: Request, email: str) -> None:
    """Before a log-in is verified: RATE_LIMIT_AUTH per client address, and the email's
    failures (RateLimiter.login_retry_after)."""
    limiter: RateLimiter = request.app.state.rate_limiter
    retry_after = await limiter.login_retry_after(client_address(request), email)
    _refuse_auth_attempt(request, "log-in", retry_after)


async def count_login(request: Request, email: str, succeeded: bool) -> None:
    """After a log-in was verified (RateLimiter.login_failed, login_succeeded)."""
    limiter: RateLimiter = request.app.state.rate_limiter
    count = limiter.login_succeeded if succeeded else limiter.login_failed
    await count(client_address(request), email)


def _refuse_auth_attempt(request: Request, action: str, retry_after: int | None) -> None:
    if retry_after is not None:
        log.warning("rate limited %s attempts (client %s)", action, client_address(request))
        raise _rate_limited(retry_after, f"too many {action} attempts, try again later")
