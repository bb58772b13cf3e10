"""Built-in accounts: register, log in with the OAuth2 password form, me; under RLS."""

import asyncio
import time

import httpx
import jwt
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.config import Settings
from app.main import create_app
from app.routes import accounts
from app.session import UserSessions
from tests.conftest import SIGNING_PEM, DbUrls, make_settings, running_app
from tests.test_limits import client_from

PASSWORD = "correct horse battery"


async def register(api: httpx.AsyncClient, email: str = "Alice@Example.com", **body: str) -> httpx.Response:
    return await api.post(
        "/api/auth/register", json={"email": email, "password": PASSWORD, "name": "Alice", **body}
    )


async def log_in(
    api: httpx.AsyncClient, email: str = "alice@example.com", password: str = PASSWORD
) -> httpx.Response:
    return await api.post("/api/auth/token", data={"username": email, "password": password})


async def test_register_returns_the_account_and_never_the_hash(api: httpx.AsyncClient) -> None:
    response = await register(api)
    assert response.status_code == 201
    account = response.json()
    assert set(account) == {"user_id", "email", "name", "created_at"}
    assert account["email"] == "alice@example.com"  # normalised
    assert account["name"] == "Alice"
    assert "argon2" not in response.text and PASSWORD not in response.text


async def test_a_refused_password_is_not_sent_back(api: httpx.AsyncClient) -> None:
    too_long = "correct horse battery staple " * 5
    response = await api.post(
        "/api/auth/register", json={"email": "alice@example.com", "password": too_long, "name": "Alice"}
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "password"] and error["type"] == "string_too_long"
    assert "input" not in error and "correct horse" not in response.text


async def test_password_is_stored_as_argon2id(api: httpx.AsyncClient, admin_conn: psycopg.Connection) -> None:
    await register(api)
    (stored,) = admin_conn.execute("select password_hash from account_passwords").fetchone()  # type: ignore[misc]
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"password": "short"}, "password"),
        ({"password": "x" * 129}, "password"),
        ({"name": ""}, "name"),
        ({"user_id": "mallory"}, "user_id"),
    ],
)
async def test_register_rejects_invalid_input_naming_the_field(
    api: httpx.AsyncClient, admin_conn: psycopg.Connection, body: dict[str, str], field: str
) -> None:
    response = await register(api, **body)
    assert response.status_code == 422
    assert any(error["loc"][-1] == field for error in response.json()["detail"]), response.json()
    assert admin_conn.execute("select count(*) from accounts").fetchone() == (0,)


async def test_registering_an_email_twice_is_409(api: httpx.AsyncClient) -> None:
    assert (await register(api)).status_code == 201
    again = await register(api, "  ALICE@example.com ")
    assert again.status_code == 409
    assert again.json() == {"detail": "an account with this email exists"}


async def test_log_in_gives_a_bearer_token_that_opens_the_api(api: httpx.AsyncClient) -> None:
    account = (await register(api)).json()
    response = await log_in(api, "ALICE@example.com")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "user_id"}
    assert body["user_id"] == account["user_id"]
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    me = await api.get("/api/auth/me", headers=headers)
    assert me.json() == account
    created = await api.post(f"/api/{account['user_id']}/tasks", json={"title": "mine"}, headers=headers)
    assert created.status_code == 201


async def test_log_in_answers_each_user_their_own_user_id(api: httpx.AsyncClient) -> None:
    """The user id a built-in account's user must type into every /api/{user_id} route."""
    alice = (await register(api)).json()
    bob = (await register(api, "bob@example.com", name="Bob")).json()
    assert alice["user_id"] != bob["user_id"]
    for account in (alice, bob):
        body = (await log_in(api, account["email"])).json()
        assert body["user_id"] == account["user_id"]
        assert jwt.decode(body["access_token"], options={"verify_signature": False})["sub"] == body["user_id"]
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        assert (await api.get("/api/auth/me", headers=headers)).json()["user_id"] == body["user_id"]
        assert (await api.get(f"/api/{body['user_id']}/tasks", headers=headers)).status_code == 200


async def test_issued_tokens_are_eddsa_and_verify_with_the_published_jwks(api: httpx.AsyncClient) -> None:
    account = (await register(api)).json()
    token = (await log_in(api)).json()["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    keys = (await api.get("/.well-known/jwks.json")).json()
    assert len(keys["keys"]) == 1
    (key,) = keys["keys"]
    assert key["kid"] == header["kid"]
    assert "d" not in key  # the public half only
    claims = jwt.decode(
        token, jwt.PyJWK(key).key, algorithms=["EdDSA"], audience="todo-api", issuer="todo-api"
    )
    assert claims["sub"] == account["user_id"]
    assert claims["exp"] - time.time() > 3500


async def test_wrong_password_and_unknown_email_get_the_same_answer(api: httpx.AsyncClient) -> None:
    await register(api)
    wrong = await log_in(api, password="not the password")
    unknown = await log_in(api, "nobody@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "incorrect email or password"}
    assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"] == "Bearer"


async def test_wrong_password_and_unknown_email_take_the_same_time(api: httpx.AsyncClient) -> None:
    """Both verify an argon2id hash, so neither answers markedly sooner. Measured as the
    median of a few tries each, with a generous margin: this guards against the unknown
    email skipping the hash (several times faster), not against microsecond leaks."""
    await register(api)

    async def median(email: str, password: str) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            await log_in(api, email, password)
            times.append(time.perf_counter() - start)
        return sorted(times)[2]

    wrong = await median("alice@example.com", "not the password")
    unknown = await median("nobody@example.com", "not the password")
    assert 0.5 < unknown / wrong < 2.0, (unknown, wrong)


def test_the_unknown_emails_hash_costs_what_a_password_hash_costs() -> None:
    """The hash an unknown email is checked against has the parameters (algorithm,
    version, memory, time, lanes) of the hashes registration stores now."""

    def parameters(hashed: str) -> list[str]:
        return hashed.split("$")[1:4]  # algorithm, version, m/t/p; then salt and digest

    assert parameters(accounts.DUMMY_HASH) == parameters(accounts.passwords.hash("a password"))
    assert accounts.passwords.verify("not a password of anyone's", accounts.DUMMY_HASH)


async def test_me_without_an_account_is_404(api: httpx.AsyncClient) -> None:
    from tests.tokens import auth

    response = await api.get("/api/auth/me", headers=auth("idp-user"))
    assert response.status_code == 404


async def test_me_needs_a_token(api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/auth/me")).status_code == 401


async def test_select_star_from_accounts_shows_only_the_callers_row(
    api: httpx.AsyncClient, accounts_app: FastAPI
) -> None:
    alice = (await register(api)).json()
    await register(api, "bob@example.com", name="Bob")
    sessions: UserSessions = accounts_app.state.user_sessions
    async with sessions.transaction(alice["user_id"]) as session:
        rows = (await session.execute(text("select * from accounts"))).mappings().all()
    assert [row["email"] for row in rows] == ["alice@example.com"]
    assert "password_hash" not in rows[0]
    async with sessions.anonymous() as session:
        assert (await session.execute(text("select * from accounts"))).all() == []


async def test_the_runtime_role_cannot_read_password_hashes_or_write_accounts(
    api: httpx.AsyncClient, accounts_app: FastAPI
) -> None:
    from sqlalchemy.exc import DBAPIError

    alice = (await register(api)).json()
    sessions: UserSessions = accounts_app.state.user_sessions
    for statement in (
        "select * from account_passwords",
        "insert into accounts (user_id, email, name) values ('x', 'x@example.com', 'x')",
        "update accounts set name = 'x'",
        "delete from accounts",
    ):
        with pytest.raises(DBAPIError) as exc:
            async with sessions.transaction(alice["user_id"]) as session:
                await session.execute(text(statement))
        assert getattr(exc.value.orig, "sqlstate", None) == "42501", statement


def test_the_definer_functions_have_a_fixed_search_path(admin_conn: psycopg.Connection) -> None:
    rows = admin_conn.execute(
        """
        select p.proname, p.prosecdef, p.proconfig from pg_proc p
        where p.pronamespace = 'app'::regnamespace order by 1
        """
    ).fetchall()
    definers = {name: config for name, secdef, config in rows if secdef}
    assert set(definers) == {"current_user_id", "login_lookup", "register_account"}
    for name, config in definers.items():
        assert config == ["search_path=pg_catalog, pg_temp"], name


def limited_settings(db_url: DbUrls, rate_limit_auth: str = "3/day") -> Settings:
    return make_settings(
        db_url, accounts_enabled=True, token_signing_key=SIGNING_PEM, rate_limit_auth=rate_limit_auth
    )


def assert_login_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == {"detail": "too many log-in attempts, try again later"}
    assert 1 <= int(response.headers["Retry-After"]) <= 86400


async def test_log_in_is_limited_per_address_over_all_attempts(db_url: DbUrls) -> None:
    async with running_app(limited_settings(db_url)) as app:
        async with client_from(app) as client:
            assert (await register(client)).status_code == 201
        async with client_from(app, "10.0.0.1") as client:
            statuses = [(await log_in(client, f"user{n}@example.com")).status_code for n in range(3)]
            assert statuses == [401, 401, 401]
            assert_login_limited(await log_in(client, "user9@example.com"))
            # Right passwords count here too, and once over, nothing is verified.
            assert_login_limited(await log_in(client))


async def test_right_passwords_do_not_count_against_the_email(db_url: DbUrls) -> None:
    """Counting them let anyone lock a known email out by logging in as it, or by
    hammering it: here the owner logs in more often than the limit, from anywhere."""
    async with running_app(limited_settings(db_url)) as app:
        async with client_from(app) as client:
            assert (await register(client)).status_code == 201
        for n in range(5):
            async with client_from(app, f"10.0.1.{n}") as client:
                assert (await log_in(client)).status_code == 200


async def test_during_an_attack_on_an_email_its_owner_logs_in_from_another_address(db_url: DbUrls) -> None:
    async with running_app(limited_settings(db_url)) as app:
        async with client_from(app) as client:
            assert (await register(client)).status_code == 201
        # One address hammers the email, well beyond the limit.
        async with client_from(app, "203.0.113.66") as attacker:
            statuses = [(await log_in(attacker, password=f"guess {n}")).status_code for n in range(3)]
            assert statuses == [401, 401, 401]
            for n in range(5):
                assert_login_limited(await log_in(attacker, " Alice@Example.com", password=f"guess {n}"))
            # Unverified once limited: a 429 says nothing of the password.
            assert_login_limited(await log_in(attacker))
        async with client_from(app, "198.51.100.7") as owner:
            assert (await log_in(owner)).status_code == 200
            assert (await log_in(owner)).status_code == 200


async def spend_email(app: FastAPI) -> None:
    """Register alice, then fail her log-in from three addresses: her email's failures
    are spent (limited_settings allows three)."""
    async with client_from(app) as client:
        assert (await register(client)).status_code == 201
    for n in range(3):
        async with client_from(app, f"203.0.113.{n}") as attacker:
            assert (await log_in(attacker, password="guess")).status_code == 401


async def test_once_an_email_has_failed_enough_the_addresses_that_failed_are_held_off(db_url: DbUrls) -> None:
    """Failures from many addresses, each under its own limit: the email's count holds
    off every address that failed for it, gives a new address one try, and lets the
    owner in."""
    async with running_app(limited_settings(db_url)) as app:
        await spend_email(app)
        for n in range(3):
            async with client_from(app, f"203.0.113.{n}") as attacker:
                assert_login_limited(await log_in(attacker, password="another guess"))
                # Other emails from the same address are not held off.
                assert (await log_in(attacker, "nobody@example.com")).status_code == 401
        async with client_from(app, "203.0.113.50") as fresh:
            assert (await log_in(fresh, password="guess")).status_code == 401
            assert_login_limited(await log_in(fresh, password="another guess"))
        async with client_from(app, "198.51.100.7") as owner:
            assert (await log_in(owner)).status_code == 200


async def test_a_new_address_gets_one_try_at_a_spent_email_even_all_at_once(db_url: DbUrls) -> None:
    """Its try is marked before the password is verified, so concurrent guesses from it
    cannot all pass while the first is being verified."""
    async with running_app(limited_settings(db_url)) as app:
        await spend_email(app)
        async with client_from(app, "203.0.113.60") as fresh:
            guesses = await asyncio.gather(*(log_in(fresh, password=f"guess {n}") for n in range(3)))
        assert sorted(response.status_code for response in guesses) == [401, 429, 429]


async def test_register_is_rate_limited_per_address_and_per_email(db_url: DbUrls) -> None:
    async with running_app(limited_settings(db_url, "2/day")) as app:
        async with client_from(app) as client:
            statuses = [(await register(client, f"user{n}@example.com")).status_code for n in range(3)]
            assert statuses == [201, 201, 429]
            # Log-in is counted apart from sign-up.
            assert (await log_in(client, "user0@example.com")).status_code == 200
        # Every attempt at one email counts, from whatever address.
        statuses = []
        for n in range(3):
            async with client_from(app, f"10.0.2.{n}") as client:
                statuses.append((await register(client, "target@example.com")).status_code)
        assert statuses == [201, 409, 429]


async def test_the_docs_page_can_log_in_with_the_password_form(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    password = spec["components"]["securitySchemes"]["password"]
    assert password["type"] == "oauth2"
    assert password["flows"]["password"]["tokenUrl"] == "/api/auth/token"
    me = spec["paths"]["/api/auth/me"]["get"]
    assert {"password": []} in me["security"]


async def test_every_route_that_wants_a_token_documents_both_schemes(api: httpx.AsyncClient) -> None:
    """current_subject reads the header itself, and the schemes are named beside it
    (app.auth.TOKEN_SCHEMES): a route that takes a token but forgets them fails here."""
    spec = (await api.get("/openapi.json")).json()
    fill = {"{user_id}": "u1", "{task_id}": "1", "{name}": "x", "{conversation_id}": "1"}
    wanting = []
    for template, item in spec["paths"].items():
        path = template
        for placeholder, value in fill.items():
            path = path.replace(placeholder, value)
        assert "{" not in path, template
        for method, operation in item.items():
            if (await api.request(method.upper(), path)).status_code == 401:
                wanting.append((method, template))
                assert {"bearer": []} in operation["security"], (method, template)
                assert {"password": []} in operation["security"], (method, template)
    assert ("get", "/api/auth/me") in wanting
    assert len(wanting) >= 15, wanting


async def test_the_docs_say_where_a_built_in_accounts_user_id_is(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    description = spec["info"]["description"]
    assert "`user_id` of the log-in answer (`POST /api/auth/token`)" in description
    assert "`GET /api/auth/me`" in description
    assert "your user id is the `USER_ID` you named" in description
    assert "user_id" in spec["paths"]["/api/auth/me"]["get"]["description"]
    assert "user_id" in spec["paths"]["/api/auth/token"]["post"]["description"]
    schemas = spec["components"]["schemas"]
    assert "user_id" in schemas["AccessToken"]["required"]
    for model in ("AccessToken", "AccountPublic"):
        assert "/api/{user_id}" in schemas[model]["properties"]["user_id"]["description"], model


def test_without_built_in_accounts_the_docs_name_only_the_cli_token(db_url: DbUrls) -> None:
    description = create_app(make_settings(db_url, accounts_enabled=False)).openapi()["info"]["description"]
    assert "your user id is the `USER_ID` you named" in description
    assert "/api/auth" not in description
