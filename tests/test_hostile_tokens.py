"""Property tests: whatever a token's header and claims hold, it is either a verified
subject or a 401, never an error of the service.

Hypothesis builds JOSE headers (any JSON for alg, kid, typ, crit, b64, jku, x5u, extra
keys; headers that are not objects at all) and claims (any JSON for sub, exp, nbf, iat,
iss, aud, jti, extra keys; claims that are not objects or not JSON), HMAC-signs them
with the test secret whatever their header says, and hands them to TokenVerifier, then a
smaller run sends them through the app over HTTP."""

import math
import time
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.auth import MAX_SUBJECT_LENGTH, InvalidToken, TokenVerifier
from app.config import Settings
from app.keys import SigningKey
from tests.tokens import TEST_SECRET, forge

NOW = int(time.time())  # the tokens below are valid for an hour from here
USER = "alice"
OWN_KEY = SigningKey.from_pem(SigningKey.generate_pem())
PROVIDER_KEY = SigningKey.from_pem(SigningKey.generate_pem())
PROVIDER_KID = "provider-1"

# Every character, lone surrogates and NUL included (Hypothesis leaves surrogates out
# unless asked), and the strings most likely to break something.
ANY_TEXT = st.text(st.characters(exclude_categories=[]), max_size=10)
HOSTILE_TEXT = st.sampled_from(
    [
        "\ud800",
        f"{USER}\udfff",
        "\udc80\ud800",  # low then high: no pair
        "",
        "\x00",
        "a" * (MAX_SUBJECT_LENGTH + 1),
        "\uff41\uff4c\uff49\uff43\uff45",  # alice in fullwidth letters
        " ",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and ±Infinity too: Python's json writes and reads them
    ANY_TEXT,
    HOSTILE_TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3),
    max_leaves=6,
)
# Raw parts that json.dumps would not write: not JSON, not UTF-8, an integer longer than
# Python will parse, nesting deeper than its recursion limit.
RAW = st.sampled_from(
    [b"", b"null", b"{", b"\xff\xfe", b'{"exp": 1' + b"0" * 5000 + b"}", b"[" * 5000 + b"]" * 5000]
)


def either(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly values a real token could carry, sometimes any JSON at all."""
    return st.one_of(plausible, JSON)


ALGORITHMS = st.sampled_from(
    ["HS256", "HS384", "HS512", "none", "None", "hs256", "EdDSA", "RS256", "ES256", "PS256", ""]
)
HEADER_FIELDS = {
    "alg": either(ALGORITHMS),
    "kid": either(st.sampled_from([OWN_KEY.kid, PROVIDER_KID, "unknown", "../../dev/null"])),
    "typ": either(st.sampled_from(["JWT", "at+jwt"])),
    "crit": either(st.sampled_from([["b64"], ["exp"], [], "x", ["b64", "b64"]])),
    "b64": either(st.booleans()),
    "jku": either(st.just("http://127.0.0.1:1/jwks.json")),
    "x5u": either(st.just("http://127.0.0.1:1/cert.pem")),
    "jwk": JSON,
}
CLAIM_FIELDS = {
    "sub": either(st.sampled_from([USER, "bob"]) | HOSTILE_TEXT),
    "exp": either(st.sampled_from([NOW + 3600, NOW - 3600, 0, 2**63, -(2**63)])),
    "nbf": either(st.sampled_from([NOW - 60, NOW + 3600])),
    "iat": either(st.sampled_from([NOW, NOW + 3600])),
    "iss": JSON,
    "aud": JSON,
    "jti": JSON,
}


def objects(fields: dict[str, st.SearchStrategy[Any]], **required: st.SearchStrategy[Any]) -> Any:
    """Dicts with any of `fields` (and all of `required`), plus keys of any name."""
    optional = {name: value for name, value in fields.items() if name not in required}
    named = st.fixed_dictionaries(required, optional=optional)
    extra = st.dictionaries(ANY_TEXT, JSON, max_size=2)
    return st.builds(lambda extra, named: {**extra, **named}, extra, named)


NOT_OBJECTS = st.one_of(SCALARS, st.lists(JSON, max_size=3), RAW)
USUAL_HEADER = objects({"typ": HEADER_FIELDS["typ"]}, alg=st.just("HS256"))
HEADERS = st.one_of(
    USUAL_HEADER,
    objects(HEADER_FIELDS, alg=HEADER_FIELDS["alg"]),
    objects(HEADER_FIELDS),
    NOT_OBJECTS,
)
# The usual claims, with a subject that may be anything.
USUAL_CLAIMS = objects(
    {name: CLAIM_FIELDS[name] for name in ("iat", "nbf", "jti")},
    sub=st.one_of(HOSTILE_TEXT, st.just(USER), ANY_TEXT, JSON),
    exp=st.just(NOW + 3600),
)
CLAIMS = st.one_of(
    USUAL_CLAIMS,
    objects(CLAIM_FIELDS, sub=CLAIM_FIELDS["sub"], exp=CLAIM_FIELDS["exp"]),
    objects(CLAIM_FIELDS),
    NOT_OBJECTS,
)
# A hostile header on usual claims, usual header on hostile claims, or both hostile:
# each part gets its share of examples that the other part does not stop first.
TOKENS = st.one_of(
    st.tuples(HEADERS, USUAL_CLAIMS),
    st.tuples(USUAL_HEADER, CLAIMS),
    st.tuples(HEADERS, CLAIMS),
)
# None: the right HMAC-SHA256 signature; the others are wrong, or not base64url.
SIGNATURES = st.one_of(st.none(), st.sampled_from(["", "AAAA", "!!!!", "A" * 43]))


def verifier_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "postgresql://todo_app@localhost/unused",
        "rls_context_key": "k" * 40,
        "jwt_secret": TEST_SECRET,
        # A provider's key as well, so that asymmetric headers reach a key lookup.
        "jwks": {"keys": [{**PROVIDER_KEY.public_jwk, "kid": PROVIDER_KID}]},
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


VERIFIER = TokenVerifier(verifier_settings(), OWN_KEY)


def plainly_valid(header: Any, claims: Any, signature: str | None) -> bool:
    """A token that must be accepted: HS256, nothing in the header that asks for more,
    and claims that pass every check (an independent reading of what the verifier does)."""

    def is_int(value: Any) -> bool:
        return type(value) is int or (type(value) is float and math.isfinite(value) and value.is_integer())

    if signature is not None or not isinstance(header, dict) or not isinstance(claims, dict):
        return False
    if header.get("alg") != "HS256" or {"kid", "crit", "b64"} & set(header):
        return False
    sub = claims.get("sub")
    return (
        isinstance(sub, str)
        and 0 < len(sub) <= MAX_SUBJECT_LENGTH
        and "\x00" not in sub
        and encodable(sub)
        and is_int(claims.get("exp"))
        and claims["exp"] > NOW + 120  # well clear of the leeway, however long the run
        and all(is_int(claims[name]) and claims[name] <= NOW for name in ("iat", "nbf") if name in claims)
        and not claims.get("aud")  # no audience is configured
        and isinstance(claims.get("jti", ""), str)
    )


def encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


async def outcome(verifier: TokenVerifier, token: str) -> str | InvalidToken:
    """The subject, or the InvalidToken that refused the token; anything else escapes."""
    try:
        return await verifier.subject(token)
    except InvalidToken as exc:
        return exc


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(parts=TOKENS, signature=SIGNATURES)
async def test_any_token_is_a_verified_subject_or_invalid_token(
    parts: tuple[Any, Any], signature: Any
) -> None:
    header, claims = parts
    result = await outcome(VERIFIER, forge(header, claims, signature=signature))
    if isinstance(result, InvalidToken):
        assert not plainly_valid(header, claims, signature), f"refused: {result}"
        assert str(result)  # the reason the 401 will give
        return
    # Accepted: the subject is the token's own, and one the database can be given.
    assert isinstance(claims, dict)
    assert result == claims["sub"]
    assert 0 < len(result) <= MAX_SUBJECT_LENGTH
    assert "\x00" not in result
    assert encodable(result)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    # One app for every example: each request is answered on its own.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(parts=TOKENS, signature=SIGNATURES)
async def test_any_token_over_http_is_200_403_or_a_401_with_a_bearer_challenge(
    app: FastAPI, client: httpx.AsyncClient, parts: tuple[Any, Any], signature: Any
) -> None:
    header, claims = parts
    token = forge(header, claims, signature=signature)
    expected = await outcome(app.state.token_verifier, token)
    response = await client.get(f"/api/{USER}/tasks", headers={"Authorization": f"Bearer {token}"})
    assert response.headers["content-type"] == "application/json", response.text
    if isinstance(expected, InvalidToken):
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json() == {"detail": str(expected)}
    elif expected == USER:
        assert response.status_code == 200, response.text
        assert isinstance(response.json(), list)
    else:
        assert response.status_code == 403, response.text
        assert response.json() == {"detail": "token subject does not match the user_id in the path"}
