"""Rotating the service's own token signing key without downtime (docs/deploy.md).

TOKEN_VERIFICATION_KEYS: keys whose tokens are accepted and published next to
TOKEN_SIGNING_KEY's, and never signed with. The rotation's phases run here as instances
of the real app on one database: each must accept the tokens of the phase before and the
phase after it, since a rolling restart leaves instances of both serving side by side."""

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from app.auth import TokenVerifier
from app.config import Settings
from app.keys import SigningKey
from tests.conftest import DbUrls, http_client, make_settings, running_app
from tests.routes.test_accounts import log_in, register

OLD_PEM = SigningKey.generate_pem().decode()
NEW_PEM = SigningKey.generate_pem().decode()
OLD = SigningKey.from_pem(OLD_PEM.encode())
NEW = SigningKey.from_pem(NEW_PEM.encode())
# An Ed25519 key that no instance is given.
STRANGER = SigningKey.from_pem(SigningKey.generate_pem())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
RSA_PRIVATE_PEM = RSA_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
ENCRYPTED_PEM = NEW.private.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"a passphrase"),
).decode()

# The phases of docs/deploy.md: (TOKEN_SIGNING_KEY, TOKEN_VERIFICATION_KEYS). Phase 0 is
# before the rotation, phase 3 after it.
PHASES: dict[int, tuple[str, str | None]] = {
    0: (OLD_PEM, None),
    1: (OLD_PEM, NEW.public.public_pem()),
    2: (NEW_PEM, OLD.public.public_pem()),
    3: (NEW_PEM, None),
}
# Which keys each phase accepts tokens from.
TRUSTED = {0: {OLD.kid}, 1: {OLD.kid, NEW.kid}, 2: {NEW.kid, OLD.kid}, 3: {NEW.kid}}
NOT_KNOWN = {"detail": "token signing key is not known"}


def instance(db_url: DbUrls, signing: str, verifying: str | None = None) -> Settings:
    return make_settings(
        db_url,
        accounts_enabled=True,
        token_signing_key=signing,
        token_verification_keys=verifying,
        rate_limit_auth="",
    )


def quoted(value: str, message: str) -> bool:
    """Whether `message` repeats any line of `value` but its BEGIN and END lines."""
    return any(line in message for line in value.splitlines() if line and not line.startswith("-----"))


@asynccontextmanager
async def instances(
    db_url: DbUrls, phases: dict[int, tuple[str, str | None]]
) -> AsyncIterator[dict[int, httpx.AsyncClient]]:
    """A running instance per phase, all on the same database, each with its client."""
    async with AsyncExitStack() as stack:
        clients = {}
        for phase, (signing, verifying) in phases.items():
            app = await stack.enter_async_context(running_app(instance(db_url, signing, verifying)))
            clients[phase] = await stack.enter_async_context(http_client(app))
        yield clients


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def own_token(key: SigningKey, sub: str, **claims: Any) -> str:
    """A token as the service issues them, signed by `key`."""
    now = int(time.time())
    return key.sign(
        {"sub": sub, "iss": "todo-api", "aud": "todo-api", "iat": now, "exp": now + 300, **claims}
    )


async def test_each_phase_accepts_the_tokens_of_the_phases_next_to_it(db_url: DbUrls) -> None:
    async with instances(db_url, PHASES) as on:
        account = (await register(on[0])).json()
        user = account["user_id"]
        tokens = {phase: (await log_in(client)).json()["access_token"] for phase, client in on.items()}
        signed_by = {phase: jwt.get_unverified_header(token)["kid"] for phase, token in tokens.items()}
        # Nothing is signed with a verification key: phase 1 still signs with the old key.
        assert signed_by == {0: OLD.kid, 1: OLD.kid, 2: NEW.kid, 3: NEW.kid}

        for issued_by, token in tokens.items():
            for phase, client in on.items():
                me = await client.get("/api/auth/me", headers=bearer(token))
                if signed_by[issued_by] in TRUSTED[phase]:
                    assert me.status_code == 200, (issued_by, phase, me.text)
                    assert me.json() == account
                else:
                    assert me.status_code == 401, (issued_by, phase)
                    assert me.json() == NOT_KNOWN
        # The rolling property, said outright: neighbours accept each other, both ways.
        for phase in (0, 1, 2):
            assert signed_by[phase] in TRUSTED[phase + 1] and signed_by[phase + 1] in TRUSTED[phase]

        # Under RLS as well: a task made on phase 2 with phase 1's token, and listed on
        # phase 1 with phase 2's.
        created = await on[2].post(f"/api/{user}/tasks", json={"title": "rotated"}, headers=bearer(tokens[1]))
        assert created.status_code == 201, created.text
        listed = await on[1].get(f"/api/{user}/tasks", headers=bearer(tokens[2]))
        assert [task["title"] for task in listed.json()] == ["rotated"]


async def test_each_phase_publishes_the_keys_it_accepts_the_signing_key_first(db_url: DbUrls) -> None:
    async with instances(db_url, PHASES) as on:
        for phase, client in on.items():
            keys = (await client.get("/.well-known/jwks.json")).json()["keys"]
            signing = OLD if phase < 2 else NEW
            assert keys[0] == signing.public_jwk
            assert {key["kid"] for key in keys} == TRUSTED[phase]
            for key in keys:
                assert "d" not in key and key["alg"] == "EdDSA" and key["use"] == "sig"
        # What phase 1 publishes for the new key verifies the tokens phase 2 signs with it.
        published = (await on[1].get("/.well-known/jwks.json")).json()["keys"][1]
        await register(on[2])
        token = (await log_in(on[2])).json()["access_token"]
        claims = jwt.decode(token, jwt.PyJWK(published).key, algorithms=["EdDSA"], audience="todo-api")
        assert claims["iss"] == "todo-api"


async def test_a_key_not_configured_is_refused_even_under_a_trusted_kid(db_url: DbUrls) -> None:
    async with instances(db_url, {1: PHASES[1]}) as on:
        client = on[1]
        assert (
            await client.get("/api/alice/tasks", headers=bearer(own_token(NEW, "alice")))
        ).status_code == 200
        stranger = await client.get("/api/alice/tasks", headers=bearer(own_token(STRANGER, "alice")))
        assert stranger.status_code == 401
        assert stranger.json() == NOT_KNOWN
        # Signed by the stranger, naming the verification key.
        forged = jwt.encode(
            jwt.decode(own_token(STRANGER, "alice"), options={"verify_signature": False}),
            STRANGER.private,
            algorithm="EdDSA",
            headers={"kid": NEW.kid},
        )
        response = await client.get("/api/alice/tasks", headers=bearer(forged))
        assert response.status_code == 401
        assert response.json() == {"detail": "token signature is invalid"}
        # The verification key's tokens carry the service's own issuer and audience.
        other_issuer = own_token(NEW, "alice", iss="someone-else")
        response = await client.get("/api/alice/tasks", headers=bearer(other_issuer))
        assert response.json() == {"detail": "token issuer is not accepted"}
        # Its kid on an RS256 token: the algorithm must be the key's.
        rs256 = jwt.encode({"sub": "alice"}, RSA_KEY, algorithm="RS256", headers={"kid": NEW.kid})
        response = await client.get("/api/alice/tasks", headers=bearer(rs256))
        assert response.json() == {"detail": "token algorithm does not match its key"}


async def test_tokens_of_a_key_dropped_from_the_verification_keys_are_refused(db_url: DbUrls) -> None:
    async with instances(db_url, {1: PHASES[1]}) as on:
        await register(on[1])
        old_token = (await log_in(on[1])).json()["access_token"]
        assert (await on[1].get("/api/auth/me", headers=bearer(old_token))).status_code == 200
    # The same database and account, the instance restarted without the old key (phase 3).
    async with instances(db_url, {3: PHASES[3]}) as on:
        refused = await on[3].get("/api/auth/me", headers=bearer(old_token))
        assert refused.status_code == 401
        assert refused.json() == NOT_KNOWN
        assert refused.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
        assert [key["kid"] for key in (await on[3].get("/.well-known/jwks.json")).json()["keys"]] == [NEW.kid]


def settings(**values: Any) -> Settings:
    """Settings without a database: built-in accounts on, as on the embedded default."""
    return Settings(_env_file=None, rls_context_key="k" * 40, **values)  # type: ignore[call-arg]


def test_keys_given_twice_or_as_private_keys_are_published_once_and_public() -> None:
    # The signing key pasted as it is, the new one twice, once private and once public.
    given = OLD_PEM + NEW_PEM + "\n" + NEW.public.public_pem()
    verifier = TokenVerifier(settings(token_signing_key=OLD_PEM, token_verification_keys=given), OLD)
    assert verifier.own_public_keys() == [OLD.public_jwk, NEW.public_jwk]


@pytest.mark.parametrize("value", ["", "  \n", None])
def test_an_empty_value_is_no_keys(value: str | None) -> None:
    assert settings(token_verification_keys=value).token_verification_keys is None
    # And so it is allowed without built-in accounts, as a platform may leave it.
    assert (
        Settings(  # type: ignore[call-arg]
            _env_file=None, database_url="postgresql://todo_app@db/todo", token_verification_keys=value
        ).token_verification_keys
        is None
    )


BAD_VERIFICATION_KEYS = {
    "an RSA public key": (
        RSA_PUBLIC_PEM,
        "the key on line 1 of TOKEN_VERIFICATION_KEYS is not an Ed25519 key",
    ),
    "an RSA private key": (
        RSA_PRIVATE_PEM,
        "the key on line 1 of TOKEN_VERIFICATION_KEYS is not an Ed25519 key",
    ),
    "the second key an RSA key": (
        NEW.public.public_pem() + RSA_PUBLIC_PEM,
        "the key on line 4 of TOKEN_VERIFICATION_KEYS is not an Ed25519 key",
    ),
    "an encrypted key": (
        ENCRYPTED_PEM,
        "the key on line 1 of TOKEN_VERIFICATION_KEYS is labelled ENCRYPTED PRIVATE KEY",
    ),
    "not PEM": ("ed25519:abc", "TOKEN_VERIFICATION_KEYS holds text that is not a PEM block, on line 1"),
    "a key without its END line, before another": (
        NEW.public.public_pem().replace("-----END PUBLIC KEY-----\n", "") + OLD.public.public_pem(),
        "TOKEN_VERIFICATION_KEYS holds text that is not a PEM block, on line 1",
    ),
    "a key without its END line, after another": (
        OLD_PEM + NEW.public.public_pem().replace("-----END PUBLIC KEY-----", ""),
        "TOKEN_VERIFICATION_KEYS holds text that is not a PEM block, on line 4",
    ),
    "base64 that is no key": (
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
        "the key on line 1 of TOKEN_VERIFICATION_KEYS cannot be read as a PUBLIC KEY in PEM",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VERIFICATION_KEYS))
def test_a_bad_verification_key_stops_the_start_with_a_message_that_does_not_quote_it(case: str) -> None:
    value, message = BAD_VERIFICATION_KEYS[case]
    with pytest.raises(ValidationError) as refused:
        settings(token_verification_keys=value)
    assert message in str(refused.value)
    assert not quoted(value, str(refused.value))


@pytest.mark.parametrize(
    "value",
    [RSA_PRIVATE_PEM, ENCRYPTED_PEM, NEW.public.public_pem(), "not a key"],
    # Fixed ids: the keys are made at import, differently in each xdist worker.
    ids=["an RSA key", "an encrypted key", "a public key", "not a key"],
)
def test_a_bad_signing_key_stops_the_start_with_a_message_that_does_not_quote_it(value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(token_signing_key=value)
    assert "TOKEN_SIGNING_KEY must be an Ed25519 private key in PEM" in str(refused.value)
    assert not quoted(value, str(refused.value))


def test_verification_keys_need_built_in_accounts() -> None:
    with pytest.raises(ValidationError, match="built-in accounts are off"):
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url="postgresql://todo_app@db/todo",
            token_verification_keys=NEW.public.public_pem(),
        )


# --- a rotation under load ------------------------------------------------------------

# The instances behind the balancer at each step of the three rolling restarts: two
# slots, one instance restarted at a time, each new instance in the phase it is rolled to.
ROLLING = [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3)]
# The key each phase signs with.
SIGNED_BY = {0: OLD.kid, 1: OLD.kid, 2: NEW.kid, 3: NEW.kid}
LOAD_USERS = 6


async def test_a_rotation_under_load_fails_no_request(db_url: DbUrls) -> None:
    """Users log in again and again, each time on one instance in rotation, and use the
    token on every instance in rotation, while the instances roll through the three
    phases one at a time: not one request fails. (Phase 3 comes after TOKEN_TTL in a real
    rotation; here no token outlives the step it was issued in, as none would have.)"""
    failures: list[str] = []
    statuses: dict[str, int] = {}
    stop = False
    in_rotation: list[httpx.AsyncClient] = []
    phase_of: dict[httpx.AsyncClient, int] = {}
    # (the key that signed a token, the phase of an instance that accepted it)
    crossings: set[tuple[str, int]] = set()
    seen: set[tuple[str, int]] = set()
    crossed = asyncio.Event()
    # The rolling step in force, and how many of the users' rounds (a log-in and its
    # token's uses) begun at each step are still going.
    step = 0
    going: dict[int, int] = {}
    round_ended = asyncio.Event()

    def count(response: httpx.Response, expected: int, what: str) -> None:
        key = f"{what} {response.status_code}"
        statuses[key] = statuses.get(key, 0) + 1
        if response.status_code != expected:
            failures.append(f"{what}: {response.status_code} {response.text}")

    async def user(n: int) -> None:
        email = f"rotating{n}@example.com"
        turn = n
        while not stop:
            turn += 1
            began = step
            going[began] = going.get(began, 0) + 1
            try:
                await use_a_new_token(email, in_rotation[turn % len(in_rotation)])
            finally:
                going[began] -= 1
                round_ended.set()

    async def use_a_new_token(email: str, issuer: httpx.AsyncClient) -> None:
        token_response = await log_in(issuer, email)
        count(token_response, 200, "log in")
        if token_response.status_code != 200:
            return
        token = token_response.json()["access_token"]
        kid = jwt.get_unverified_header(token)["kid"]
        for client in list(in_rotation):
            me_response = await client.get("/api/auth/me", headers=bearer(token))
            count(me_response, 200, "me")
            if me_response.status_code == 200:
                crossings.add((kid, phase_of[client]))
                crossed.set()
            me = f"/api/{token_response.json()['user_id']}/tasks"
            count(await client.post(me, json={"title": "t"}, headers=bearer(token)), 201, "create")

    async with AsyncExitStack() as outer:
        slots: list[AsyncExitStack] = []
        for phase in ROLLING[0]:
            stack = await outer.enter_async_context(AsyncExitStack())
            signing, verifying = PHASES[phase]
            app = await stack.enter_async_context(running_app(instance(db_url, signing, verifying)))
            in_rotation.append(await stack.enter_async_context(http_client(app)))
            phase_of[in_rotation[-1]] = phase
            slots.append(stack)
        for n in range(LOAD_USERS):
            assert (await register(in_rotation[0], f"rotating{n}@example.com")).status_code == 201
        users = [asyncio.create_task(user(n)) for n in range(LOAD_USERS)]
        await asyncio.sleep(0.3)
        for before, after in itertools.pairwise(ROLLING):
            # No token outlives the step after the one it was issued in: the rounds begun
            # before this step end first. (A slow log-in at a phase-1 instance could
            # otherwise carry its token past phase 2 to phase 3, which a real rotation
            # reaches only after TOKEN_TTL.)
            async with asyncio.timeout(30):
                while any(going.get(earlier) for earlier in range(step)):
                    round_ended.clear()
                    await round_ended.wait()
            slot = next(i for i in (0, 1) if before[i] != after[i])
            # Start the new instance, put it in rotation, take the old one out (drained:
            # its requests in flight finish), then stop it.
            stack = AsyncExitStack()
            outer.push_async_callback(stack.aclose)
            signing, verifying = PHASES[after[slot]]
            app = await stack.enter_async_context(running_app(instance(db_url, signing, verifying)))
            client = await stack.enter_async_context(http_client(app))
            phase_of[client] = after[slot]
            old_stack = slots[slot]
            in_rotation[slot], slots[slot] = client, stack
            # Only now: a round begun while the new instance started met the old rotation,
            # and may hold a token of the old step's issuer.
            step += 1
            await asyncio.sleep(0.3)  # drained: the requests in flight at the old one finish
            await old_stack.aclose()
            # Stay at this step until each instance has served a token the other issued.
            crossings.clear()
            wanted = {(SIGNED_BY[after[0]], after[1]), (SIGNED_BY[after[1]], after[0])}
            async with asyncio.timeout(30):
                while not wanted <= crossings:
                    crossed.clear()
                    await crossed.wait()
            seen |= wanted
        stop = True
        await asyncio.gather(*users)
    print(f"token key rotation under load: {statuses}")
    assert failures == [], failures[:10]
    # The overlaps happened: the new key's tokens at instances still signing with the old
    # key (phase 1), the old key's at instances signing with the new one (phase 2).
    assert {(NEW.kid, 1), (OLD.kid, 2)} <= seen, seen
