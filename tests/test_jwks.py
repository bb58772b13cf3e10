"""Tokens from identity providers: asymmetric keys from a JWKS served over HTTP.

Real keys are generated here (Ed25519, RSA, EC P-256), published by a local HTTP server
on a free loopback port, and tokens signed with them are verified by the service's
TokenVerifier, as requests would be."""

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.utils import base64url_decode

from app.auth import KEY_SOURCE_UNAVAILABLE, InvalidToken, TokenVerifier
from app.config import Settings
from app.keys import KeySourceUnavailable, RemoteKeySet
from tests.conftest import DbUrls, http_client, make_settings, running_app
from tests.tokens import TEST_SECRET, forge, make_token

ISSUER = "https://idp.test"
AUDIENCE = "todo-api"


class Key:
    """A generated signing key with its public JWK."""

    def __init__(self, kind: str, kid: str) -> None:
        self.kid = kid
        if kind == "EdDSA":
            self.private: Any = ed25519.Ed25519PrivateKey.generate()
            self.jwk = json.loads(OKPAlgorithm.to_jwk(self.private.public_key()))
        elif kind == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        self.algorithm = kind
        self.jwk |= {"kid": kid, "use": "sig"}

    def sign(
        self, sub: str = "alice", *, algorithm: str | None = None, kid: str | None = "", **claims: Any
    ) -> str:
        now = int(time.time())
        payload = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
        headers = {"kid": self.kid if kid == "" else kid} if kid is not None else {}
        return jwt.encode(payload, self.private, algorithm=algorithm or self.algorithm, headers=headers)

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


ED = Key("EdDSA", "ed-1")
RSA = Key("RS256", "rsa-1")
EC = Key("ES256", "ec-1")


class JwksServer:
    """Serves a JWKS document that the test can change, break, and count requests to.

    `down`: answers 503. `stalled`: answers 200 and then sends the body a byte at a time,
    each well within any read timeout, for as long as it stays stalled. `document` may be
    any JSON, or bytes to send as they are."""

    def __init__(self, keys: list[Key]) -> None:
        self.document: Any = {"keys": [key.jwk for key in keys]}
        self.requests = 0
        self.down = False
        self.stalled = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                if server.stalled:
                    self.send_response(200)
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    while server.stalled:
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(0.05)
                    return
                document = server.document
                body = document if isinstance(document, bytes) else json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/api/auth/jwks"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, *keys: Key) -> None:
        self.document = {"keys": [key.jwk for key in keys]}

    def close(self) -> None:
        self.stalled = False
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer([ED, RSA, EC])
    try:
        yield server
    finally:
        server.close()


def settings_for(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "postgresql://todo_app@localhost/unused",
        "rls_context_key": "k" * 40,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def refreshing_verifier(jwks_server: JwksServer) -> TokenVerifier:
    """A verifier whose keys go stale within 10 ms, and may be fetched again at once."""
    return TokenVerifier(
        settings_for(jwks_url=jwks_server.url, jwks_cache_seconds=0.01, jwks_min_refresh_seconds=0)
    )


async def outcome(verifier: TokenVerifier, token: str) -> str:
    """The subject, the reason the token was refused, or why it could not be verified."""
    try:
        return await verifier.subject(token)
    except InvalidToken as exc:
        return f"refused: {exc}"
    except KeySourceUnavailable as exc:
        return f"unavailable: {exc}"


@pytest.mark.parametrize("key", [ED, RSA, EC], ids=["EdDSA", "RS256", "ES256"])
async def test_each_algorithm_verifies_with_the_key_its_kid_names(jwks_server: JwksServer, key: Key) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url))
    assert await outcome(verifier, key.sign("alice")) == "alice"
    await verifier.aclose()


async def test_keys_are_fetched_once_and_cached(jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url))
    for key in (ED, RSA, EC, ED, RSA):
        assert await outcome(verifier, key.sign()) == "alice"
    assert jwks_server.requests == 1
    await verifier.aclose()


async def test_an_unknown_kid_refreshes_at_most_once_per_interval_then_is_401(
    jwks_server: JwksServer,
) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url, jwks_min_refresh_seconds=60))
    assert await outcome(verifier, ED.sign()) == "alice"
    for n in range(5):
        assert (
            await outcome(verifier, ED.sign(kid=f"made-up-{n}")) == "refused: token signing key is not known"
        )
    # The first fetch, then no more: made-up kids cannot make us hammer the provider.
    assert jwks_server.requests == 1
    await verifier.aclose()


async def test_a_rotated_key_is_picked_up_by_a_refresh(jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url, jwks_min_refresh_seconds=0))
    assert await outcome(verifier, ED.sign()) == "alice"
    rotated = Key("EdDSA", "ed-2")
    jwks_server.publish(rotated)  # the old key is withdrawn, a new one published
    assert await outcome(verifier, rotated.sign("bob")) == "bob"
    assert jwks_server.requests == 2
    # Still unknown after the refresh: 401.
    assert await outcome(verifier, Key("EdDSA", "ed-3").sign()) == "refused: token signing key is not known"
    await verifier.aclose()


async def test_cached_keys_survive_a_jwks_outage(jwks_server: JwksServer) -> None:
    verifier = refreshing_verifier(jwks_server)
    assert await outcome(verifier, ED.sign()) == "alice"
    jwks_server.down = True
    await asyncio.sleep(0.05)  # the cache is stale: each request now tries to refresh, and fails
    for key in (ED, RSA, EC):
        assert await outcome(verifier, key.sign()) == "alice"
    assert jwks_server.requests > 1
    await verifier.aclose()


async def test_an_unreachable_jwks_leaves_tokens_undecided_not_refused_until_it_answers(
    jwks_server: JwksServer,
) -> None:
    jwks_server.down = True
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url, jwks_min_refresh_seconds=0))
    # No key was ever fetched: the token may be good, so it is not refused (a 503, not a 401).
    assert await outcome(verifier, ED.sign()) == "unavailable: HTTP 503"
    assert await verifier.key_source_unavailable() == "HTTP 503"
    jwks_server.down = False
    assert await outcome(verifier, ED.sign()) == "alice"
    assert await verifier.key_source_unavailable() is None
    await verifier.aclose()


async def test_an_unknown_kid_is_401_when_the_provider_answered_and_undecided_when_it_did_not(
    jwks_server: JwksServer,
) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url, jwks_min_refresh_seconds=0))
    unknown = Key("EdDSA", "ed-unknown")
    assert await outcome(verifier, ED.sign()) == "alice"
    # Fetched, and the set simply lacks the kid: the token's fault.
    assert await outcome(verifier, unknown.sign()) == "refused: token signing key is not known"
    jwks_server.down = True
    # Cached keys still decide the tokens they can...
    assert await outcome(verifier, ED.sign()) == "alice"
    assert await verifier.key_source_unavailable() is None
    # ...but a kid they lack may be a new key the provider cannot be asked for.
    assert await outcome(verifier, unknown.sign()) == "unavailable: HTTP 503"
    jwks_server.down = False
    assert await outcome(verifier, unknown.sign()) == "refused: token signing key is not known"
    await verifier.aclose()


async def test_retry_after_is_when_the_next_fetch_may_be_made(jwks_server: JwksServer) -> None:
    jwks_server.down = True
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url, jwks_min_refresh_seconds=60))
    for _ in range(3):
        with pytest.raises(KeySourceUnavailable) as unavailable:
            await verifier.subject(ED.sign())
        assert 58 <= unavailable.value.retry_after <= 60
    assert jwks_server.requests == 1  # the rate limit holds while the provider is down
    await verifier.aclose()


NOT_KEY_SETS = {
    "not JSON": (b"<html>", "not JSON"),
    "a list": ([ED.jwk], "the JWKS is not a JSON object"),
    "keys not a list": ({"keys": "x"}, "Invalid JWK Set value"),
    "no keys": ({"keys": []}, "The JWK Set did not contain any keys"),
    "only an HMAC key": (
        {"keys": [{"kty": "oct", "kid": "oct-1", "k": "c2VjcmV0"}]},
        "the JWKS has no asymmetric signing key",
    ),
    "alg a list": ({"keys": [{**ED.jwk, "alg": ["EdDSA"]}]}, "TypeError"),
    "kid a list": ({"keys": [{**ED.jwk, "kid": ["ed-1"]}]}, "TypeError"),
}


@pytest.mark.parametrize("case", list(NOT_KEY_SETS))
async def test_a_document_that_is_no_key_set_is_a_failed_fetch(jwks_server: JwksServer, case: str) -> None:
    document, reason = NOT_KEY_SETS[case]
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url, jwks_min_refresh_seconds=0))
    jwks_server.document = document
    assert await outcome(verifier, ED.sign()) == f"unavailable: {reason}"
    assert await verifier.key_source_unavailable() == reason
    # After a good fetch, such a document keeps the keys that were fetched.
    jwks_server.publish(ED)
    assert await outcome(verifier, ED.sign()) == "alice"
    jwks_server.document = document
    assert await outcome(verifier, Key("EdDSA", "ed-new").sign()) == f"unavailable: {reason}"
    assert await outcome(verifier, ED.sign()) == "alice"
    await verifier.aclose()


async def test_a_fetch_that_never_finishes_is_cut_off_by_the_timeout(jwks_server: JwksServer) -> None:
    """httpx's timeout bounds each read; a server that sends a byte now and then would keep
    a fetch (and every request waiting on it) going for ever without a bound on the whole."""
    jwks_server.stalled = True
    keys = RemoteKeySet(jwks_server.url, min_refresh_seconds=0, timeout=0.5)
    started = time.monotonic()
    assert await keys.unavailable() == "timed out"
    assert time.monotonic() - started < 2
    await keys.aclose()


async def test_a_token_without_kid_is_accepted_only_against_a_single_key(jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url))
    assert await outcome(verifier, ED.sign(kid=None)) == "refused: token signing key is not known"
    single = TokenVerifier(settings_for(jwks={"keys": [ED.jwk]}))
    assert await outcome(single, ED.sign(kid=None)) == "alice"
    await verifier.aclose()


# --- algorithm confusion ------------------------------------------------------------


def claims(sub: str = "alice") -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}


@pytest.mark.parametrize("key", [ED, RSA, EC], ids=["EdDSA", "RS256", "ES256"])
async def test_hs256_signed_with_the_public_key_is_refused(jwks_server: JwksServer, key: Key) -> None:
    # Forged by hand: PyJWT itself refuses to use a public key as an HMAC secret.
    as_secret = [key.public_pem, json.dumps(key.jwk).encode()]
    # Without a shared secret configured, HS256 is not accepted at all...
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url))
    for secret in as_secret:
        token = forge({"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims(), key=secret)
        assert await outcome(verifier, token) == "refused: token algorithm is not accepted"
    # ...and with one, it is checked against that secret, never against a JWKS key.
    both = TokenVerifier(settings_for(jwks_url=jwks_server.url, jwt_secret="s" * 40))
    for secret in as_secret:
        token = forge({"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims(), key=secret)
        assert await outcome(both, token) == "refused: token signature is invalid"
    await verifier.aclose()
    await both.aclose()


async def test_an_algorithm_that_is_not_the_keys_is_refused(jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url))
    # Signed by the RSA key but naming the Ed25519 key, and the other way round.
    assert await outcome(verifier, RSA.sign(kid=ED.kid)) == "refused: token algorithm does not match its key"
    assert await outcome(verifier, EC.sign(kid=RSA.kid)) == "refused: token algorithm does not match its key"
    # PS256 with an RSA key whose JWK does not say PS256.
    assert await outcome(verifier, RSA.sign(algorithm="PS256")) == "refused: token algorithm is not accepted"
    await verifier.aclose()


async def test_only_configured_algorithms_are_accepted(jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url, jwt_algorithms="EdDSA"))
    assert await outcome(verifier, ED.sign()) == "alice"
    assert await outcome(verifier, RSA.sign()) == "refused: token algorithm is not accepted"
    assert await outcome(verifier, EC.sign()) == "refused: token algorithm is not accepted"
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": ED.kid})
    assert await outcome(verifier, unsigned) == "refused: token algorithm is not accepted"
    await verifier.aclose()


async def test_an_hmac_key_in_the_jwks_is_never_used() -> None:
    secret = b"shared-secret-that-is-long-enough-0123456789"
    oct_key = {"kty": "oct", "kid": "oct-1", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()}
    verifier = TokenVerifier(settings_for(jwks={"keys": [oct_key, ED.jwk]}))
    token = forge({"alg": "HS256", "typ": "JWT", "kid": "oct-1"}, claims(), key=secret)
    assert await outcome(verifier, token) == "refused: token algorithm is not accepted"


async def test_issuer_audience_and_expiry_are_enforced(jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url))
    assert (
        await outcome(verifier, ED.sign(iss="https://evil.test")) == "refused: token issuer is not accepted"
    )
    assert await outcome(verifier, ED.sign(aud="other")) == "refused: token audience is not accepted"
    expired = ED.sign(exp=int(time.time()) - 120)
    assert await outcome(verifier, expired) == "refused: token has expired"
    within_leeway = ED.sign(exp=int(time.time()) - 5)
    assert await outcome(verifier, within_leeway) == "alice"
    await verifier.aclose()


async def test_the_user_id_claim_is_configurable(jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url, jwt_user_claim="uid"))
    assert await outcome(verifier, ED.sign("ignored", uid="carol")) == "carol"
    assert await outcome(verifier, ED.sign("alice")) == "refused: token has no 'uid' claim"
    assert await outcome(verifier, ED.sign("x", uid=7)) == "refused: token 'uid' must be a string"
    await verifier.aclose()


async def test_a_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [RSA.jwk]}))
    verifier = TokenVerifier(settings_for(jwks_file=path))
    assert await outcome(verifier, RSA.sign()) == "alice"
    assert await outcome(verifier, ED.sign()) == "refused: token signing key is not known"


def test_only_one_jwks_source_may_be_set(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set only one of"):
        settings_for(jwks_url="http://127.0.0.1/jwks", jwks={"keys": []})


# --- end to end: a Better Auth deployment ------------------------------------------


async def test_better_auth_jwt_plugin_tokens_open_the_api(db_url: DbUrls) -> None:
    """Better Auth's JWT plugin: EdDSA, keys at <base>/api/auth/jwks, iss = aud = base URL."""
    key = Key("EdDSA", "better-auth-key")
    server = JwksServer([key])
    base = server.url.removesuffix("/api/auth/jwks")
    try:
        settings = make_settings(
            db_url, jwt_secret=None, jwks_url=server.url, jwt_issuer=base, jwt_audience=base
        )
        async with running_app(settings) as app, http_client(app) as client:
            now = int(time.time())
            token = jwt.encode(
                {"sub": "ba-user-1", "iss": base, "aud": base, "iat": now, "exp": now + 900},
                key.private,
                algorithm="EdDSA",
                headers={"kid": key.kid},
            )
            headers = {"Authorization": f"Bearer {token}"}
            created = await client.post(
                "/api/ba-user-1/tasks", json={"title": "from Better Auth"}, headers=headers
            )
            assert created.status_code == 201
            listed = await client.get("/api/ba-user-1/tasks", headers=headers)
            assert [task["title"] for task in listed.json()] == ["from Better Auth"]
            # An HS256 token is refused: no shared secret is configured.
            hs256 = forge({"alg": "HS256", "typ": "JWT"}, claims("ba-user-1"), key=b"x" * 40)
            hs = httpx.Headers({"Authorization": f"Bearer {hs256}"})
            assert (await client.get("/api/ba-user-1/tasks", headers=hs)).status_code == 401
    finally:
        server.close()


# --- end to end: the provider down ---------------------------------------------------


def provider_settings(db_url: DbUrls, url: str, **overrides: Any) -> Settings:
    return make_settings(
        db_url, jwt_secret=None, jwks_url=url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, **overrides
    )


async def test_a_provider_down_from_the_start_is_503_and_not_ready_until_it_answers(
    db_url: DbUrls, jwks_server: JwksServer
) -> None:
    # A cache that goes stale at once: every request after the first fetch tries another.
    settings = provider_settings(db_url, jwks_server.url, jwks_cache_seconds=0.01, jwks_min_refresh_seconds=0)
    headers = {"Authorization": f"Bearer {ED.sign()}"}
    jwks_server.down = True
    async with running_app(settings) as app, http_client(app) as client:
        response = await client.get("/api/alice/tasks", headers=headers)
        assert response.status_code == 503
        assert response.json() == {"detail": KEY_SOURCE_UNAVAILABLE}
        assert response.headers["Retry-After"] == "1"
        assert "WWW-Authenticate" not in response.headers  # the token was not refused
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"detail": "the token key source (JWKS_URL) is unavailable: HTTP 503"}

        jwks_server.down = False
        assert (await client.get("/readyz")).json()["status"] == "ready"
        assert (await client.get("/api/alice/tasks", headers=headers)).status_code == 200

        # Down again, after a fetch: the cached keys keep serving, and the instance stays
        # ready, although every request now tries the provider and fails.
        jwks_server.down = True
        requests = jwks_server.requests
        # Past the cache's 10 ms for certain: the requests below may all take less.
        await asyncio.sleep(0.05)
        for key in (ED, RSA, EC):
            response = await client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {key.sign()}"})
            assert response.status_code == 200, response.text
        assert (await client.get("/readyz")).json()["status"] == "ready"
        assert jwks_server.requests > requests


async def test_readyz_tries_the_provider_no_more_often_than_the_refresh_limit(
    db_url: DbUrls, jwks_server: JwksServer
) -> None:
    jwks_server.down = True
    settings = provider_settings(db_url, jwks_server.url, jwks_min_refresh_seconds=60)
    async with running_app(settings) as app, http_client(app) as client:
        for _ in range(3):
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"detail": "the token key source (JWKS_URL) is unavailable: HTTP 503"}
        response = await client.get("/api/alice/tasks", headers={"Authorization": f"Bearer {ED.sign()}"})
        assert response.status_code == 503
        assert 58 <= int(response.headers["Retry-After"]) <= 60
    assert jwks_server.requests == 1


async def test_readyz_names_a_provider_that_refuses_connections(db_url: DbUrls) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now.
    settings = provider_settings(db_url, f"http://127.0.0.1:{port}/jwks")
    async with running_app(settings) as app, http_client(app) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"detail": "the token key source (JWKS_URL) is unavailable: ConnectError"}


# --- verified tokens remembered (TOKEN_CACHE_SIZE) ---------------------------------------
# A token verified once is good again without its signature being checked, so each of
# these would fail if the cache let a token outlive what verifying it again would allow.


async def test_a_remembered_token_still_expires(jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings_for(jwks_url=jwks_server.url, jwt_leeway=0))
    expires = int(time.time()) + 1
    token = ED.sign(exp=expires)
    assert await outcome(verifier, token) == "alice"
    assert await outcome(verifier, token) == "alice"  # remembered
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
    assert await outcome(verifier, token) == "refused: token has expired"
    await verifier.aclose()


async def test_a_key_withdrawn_from_the_jwks_ends_its_remembered_tokens_at_the_refresh(
    jwks_server: JwksServer,
) -> None:
    verifier = refreshing_verifier(jwks_server)
    token = ED.sign()
    assert await outcome(verifier, token) == "alice"
    jwks_server.publish(RSA, EC)
    await asyncio.sleep(0.05)  # the keys are stale: the next lookup refetches them
    assert await outcome(verifier, token) == "refused: token signing key is not known"
    await verifier.aclose()


async def test_a_kid_that_names_another_key_after_a_refresh_verifies_remembered_tokens_again(
    jwks_server: JwksServer,
) -> None:
    verifier = refreshing_verifier(jwks_server)
    token = ED.sign()
    assert await outcome(verifier, token) == "alice"
    impostor = Key("EdDSA", ED.kid)  # the same kid, another key
    jwks_server.publish(impostor)
    await asyncio.sleep(0.05)
    assert await outcome(verifier, token) == "refused: token signature is invalid"
    # The provider puts the key back: the token verifies again, from scratch.
    jwks_server.publish(ED)
    await asyncio.sleep(0.05)
    assert await outcome(verifier, token) == "alice"
    await verifier.aclose()


async def test_the_cache_is_keyed_by_the_whole_token() -> None:
    """A token with the genuine one's header and claims but another signature is refused,
    however often the genuine one was accepted."""
    verifier = TokenVerifier(settings_for(jwt_secret=TEST_SECRET, jwt_issuer=None, jwt_audience=None))
    genuine = make_token("alice")
    header, payload, _ = genuine.split(".")
    forged = forge(
        base64url_decode(header), base64url_decode(payload), key=b"another secret key, as long as the other"
    )
    assert forged.split(".")[:2] == [header, payload]
    for _ in range(3):
        assert await outcome(verifier, genuine) == "alice"
        assert await outcome(verifier, forged) == "refused: token signature is invalid"


async def test_the_cache_holds_at_most_token_cache_size_tokens_and_none_at_zero() -> None:
    for size in (3, 0):
        verifier = TokenVerifier(
            settings_for(jwt_secret=TEST_SECRET, jwt_issuer=None, jwt_audience=None, token_cache_size=size)
        )
        tokens = [make_token(f"user-{n}") for n in range(10)]
        for n, token in enumerate(tokens):
            assert await outcome(verifier, token) == f"user-{n}"
        assert len(verifier._verified) == size
        # Evicted ones are verified again, not refused.
        assert await outcome(verifier, tokens[0]) == "user-0"
