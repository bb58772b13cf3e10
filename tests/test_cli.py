"""`todo-api` as a newcomer uses it: token, migrate, and serve on the embedded default."""

import os
import signal
import stat
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from app.cli import banner, cli
from app.config import Settings
from app.keys import SigningKey
from tests.live_server import LiveServer, free_port, server_process
from tests.tokens import TEST_SECRET

CONFIG_VARIABLES = (
    "DATABASE_URL",
    "MIGRATIONS_DATABASE_URL",
    "JWT_SECRET",
    "BETTER_AUTH_SECRET",
    "JWT_ALGORITHMS",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWKS_URL",
    "JWKS_FILE",
    "JWKS",
    "ACCOUNTS_ENABLED",
    "TOKEN_SIGNING_KEY",
    "TOKEN_VERIFICATION_KEYS",
    "RLS_CONTEXT_KEY",
    "ALLOWED_HOSTS",
    "HOST",
    "PORT",
    "DATA_DIR",
)
TODO_API = [sys.executable, "-c", "from app.cli import main; main()"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No configuration from the developer's environment or .env; returns a data dir."""
    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    return data_dir


def test_token_is_signed_with_the_configured_secret(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", TEST_SECRET)
    result = CliRunner().invoke(cli, ["token", "alice", "--ttl", "120"])
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.stdout.strip(), TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 120


def test_embedded_default_makes_one_secret_kept_with_mode_0600(clean_env: Path) -> None:
    first = CliRunner().invoke(cli, ["token", "alice"])
    second = CliRunner().invoke(cli, ["token", "bob"])
    assert first.exit_code == second.exit_code == 0
    secret_file = clean_env / "jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret.encode()) >= 32
    assert jwt.decode(first.stdout.strip(), secret, algorithms=["HS256"])["sub"] == "alice"
    assert jwt.decode(second.stdout.strip(), secret, algorithms=["HS256"])["sub"] == "bob"


def test_a_short_secret_stops_the_cli_with_a_message(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_SECRET", "too-short")
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 1
    assert "JWT_SECRET must be at least 32 bytes long" in result.output


def test_an_external_database_needs_a_secret(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://todo_app@db.invalid/todo")
    result = CliRunner().invoke(cli, ["token", "alice"])
    assert result.exit_code == 1
    assert "set JWT_SECRET (or BETTER_AUTH_SECRET)" in result.output


def test_serve_with_a_database_url_needs_allowed_hosts(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://todo_app@db.invalid/todo")
    monkeypatch.setenv("JWT_SECRET", TEST_SECRET)
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 1
    assert "set ALLOWED_HOSTS to the host names clients use" in result.output
    assert "Traceback" not in result.output


def test_a_bad_verification_key_stops_serve_with_a_message_that_does_not_quote_it(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The private key of the wrong kind (RSA), where an Ed25519 key belongs.
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    value = SigningKey.generate_pem().decode() + pem
    monkeypatch.setenv("TOKEN_VERIFICATION_KEYS", value)
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 1
    assert (
        "configuration error: Value error, the key on line 4 of TOKEN_VERIFICATION_KEYS is not an Ed25519 key"
        in result.output
    )
    assert "Traceback" not in result.output
    assert not any(line in result.output for line in value.splitlines() if not line.startswith("-----"))


def test_public_key_prints_what_token_verification_keys_takes(clean_env: Path, tmp_path: Path) -> None:
    """From a file of private keys (as openssl genpkey makes them), or standard input; the
    kids, as /.well-known/jwks.json will list them, on stderr."""
    first, second = SigningKey.generate_pem().decode(), SigningKey.generate_pem().decode()
    keys = [SigningKey.from_pem(pem.encode()) for pem in (first, second)]
    key_file = tmp_path / "new.pem"
    key_file.write_text(first)
    from_file = CliRunner().invoke(cli, ["public-key", str(key_file)])
    assert from_file.exit_code == 0, from_file.output
    assert from_file.stdout == keys[0].public.public_pem()
    assert from_file.stderr == f"kid {keys[0].kid}\n"

    from_stdin = CliRunner().invoke(cli, ["public-key", "-"], input=first + second)
    assert from_stdin.exit_code == 0, from_stdin.output
    assert from_stdin.stdout == keys[0].public.public_pem() + keys[1].public.public_pem()
    assert "PRIVATE" not in from_stdin.output
    # What it prints is a value TOKEN_VERIFICATION_KEYS takes.
    settings = Settings(_env_file=None, token_verification_keys=from_stdin.stdout)  # type: ignore[call-arg]
    assert settings.token_verification_keys is not None


def test_public_key_without_a_file_is_that_of_the_signing_key_serve_uses(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The embedded default: the key in DATA_DIR, made now as `serve` would make it.
    generated = CliRunner().invoke(cli, ["public-key"])
    assert generated.exit_code == 0, generated.output
    made = SigningKey.from_pem((clean_env / "token_signing_key.pem").read_bytes())
    assert generated.stdout == made.public.public_pem()
    # TOKEN_SIGNING_KEY when it is set.
    pem = SigningKey.generate_pem().decode()
    monkeypatch.setenv("TOKEN_SIGNING_KEY", pem)
    configured = CliRunner().invoke(cli, ["public-key"])
    assert configured.exit_code == 0, configured.output
    assert configured.stdout == SigningKey.from_pem(pem.encode()).public.public_pem()


def test_public_key_says_what_it_could_not_read(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refusal(*args: str, input: str | None = None) -> str:
        result = CliRunner().invoke(cli, ["public-key", *args], input=input)
        assert result.exit_code == 1
        assert "Traceback" not in result.output and result.stdout == ""
        return result.output

    assert "cannot read missing.pem: [Errno 2] No such file or directory" in refusal("missing.pem")
    assert "no key in standard input" in refusal("-", input="\n")
    assert "the key on line 1 of standard input is labelled CERTIFICATE" in refusal(
        "-", input="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    monkeypatch.setenv("DATABASE_URL", "postgresql://todo_app@db.invalid/todo")
    assert "set TOKEN_SIGNING_KEY, or name a PEM file (- for standard input)" in refusal()


def cli_environment(data_dir: Path) -> dict[str, str]:
    """The developer's environment without any of the service's configuration."""
    return {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES} | {"DATA_DIR": str(data_dir)}


def serving(data_dir: Path, port: int, *options: str) -> AbstractContextManager[LiveServer]:
    """`todo-api serve` on the embedded default in data_dir, until it answers."""
    command = [*TODO_API, "serve", "--port", str(port), *options]
    base = f"http://127.0.0.1:{port}"
    env = cli_environment(data_dir)
    return server_process(command, env=env, workdir=data_dir.parent, base_url=base, timeout=60)


def interrupt(server: LiveServer) -> str:
    """Ctrl-C, as a person at the terminal would; returns what the server printed."""
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(30) == 0, server.output()
    return server.output()


def test_serve_on_the_embedded_default_end_to_end(clean_env: Path) -> None:
    """Start as a newcomer would, use the API, stop with Ctrl-C, start again: data survives."""
    port = free_port()
    env = cli_environment(clean_env)
    base = f"http://127.0.0.1:{port}"

    def serve(*options: str) -> AbstractContextManager[LiveServer]:
        return serving(clean_env, port, *options)

    with serve() as server:
        token = subprocess.run(
            [*TODO_API, "token", "alice"], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        created = httpx.post(f"{base}/api/alice/tasks", json={"title": "survive a restart"}, headers=headers)
        assert created.status_code == 201
        # Built-in accounts are on by default here.
        account = {"email": "carol@example.com", "password": "correct horse battery", "name": "Carol"}
        assert httpx.post(f"{base}/api/auth/register", json=account).status_code == 201
        login = httpx.post(
            f"{base}/api/auth/token", data={"username": account["email"], "password": account["password"]}
        )
        assert login.status_code == 200
        own_token = login.json()["access_token"]
        me = httpx.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {own_token}"})
        assert me.json()["email"] == "carol@example.com"
        # On the embedded default no Host is refused (ALLOWED_HOSTS is for deployments).
        anywhere = httpx.get(f"{base}/api/alice/tasks", headers={**headers, "Host": "anything.example"})
        assert anywhere.status_code == 200
        output = interrupt(server)
    assert_only_our_access_log(output)
    assert output.count(f"Todo API on {base}   docs: {base}/docs") == 1
    assert "todo-api token USER_ID" in output
    assert "register with POST /api/auth/register, log in with POST /api/auth/token" in output
    assert "Stopped embedded PostgreSQL." in output
    assert not (clean_env / "pgdata" / "postmaster.pid").exists(), "the embedded server was left running"

    with serve("--workers", "2") as server:  # workers build their app from the environment
        listed = httpx.get(f"{base}/api/alice/tasks", headers=headers)
        assert [task["title"] for task in listed.json()] == ["survive a restart"]
        # The same signing key and accounts in every worker: the earlier token still opens /me.
        for _ in range(4):
            me = httpx.get(f"{base}/api/auth/me", headers={"Authorization": f"Bearer {own_token}"})
            assert me.status_code == 200
        assert_only_our_access_log(interrupt(server))


def assert_only_our_access_log(output: str) -> None:
    """One access line per request, ours, with the route template: uvicorn's own line
    (the request line, user id and all) stays off, in worker processes too."""
    assert "app.access" in output
    assert " /api/{user_id}/tasks 20" in output
    assert "uvicorn.access" not in output
    assert "HTTP/1.1" not in output
    assert "/api/alice" not in output


def test_a_second_serve_on_a_busy_port_says_so_and_leaves_the_first_serving(clean_env: Path) -> None:
    """The second exits at once, before the database: no banner, no claim that it
    stopped anything. `todo-api audit` attaches to the first's embedded server and
    leaves it running, saying nothing of stopping it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = cli_environment(clean_env)
    with serving(clean_env, port) as first:
        second = subprocess.run(
            [*TODO_API, "serve", "--port", str(port)],
            env=env,
            cwd=clean_env.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = second.stdout + second.stderr
        assert second.returncode == 1, output
        assert f"port {port} is in use" in output
        assert "Traceback" not in output
        assert "Todo API on" not in output
        assert "embedded PostgreSQL" not in output  # neither started, nor used, nor stopped
        assert httpx.get(f"{base}/readyz").status_code == 200

        audit = subprocess.run(
            [*TODO_API, "audit"], env=env, cwd=clean_env.parent, capture_output=True, text=True, timeout=120
        )
        output = audit.stdout + audit.stderr
        assert audit.returncode == 0, output
        assert "Using the embedded PostgreSQL already running in" in output
        assert "Stopped embedded PostgreSQL" not in output
        assert "Stopping embedded PostgreSQL" not in output
        assert (clean_env / "pgdata" / "postmaster.pid").exists()
        assert httpx.get(f"{base}/readyz").status_code == 200
        output = interrupt(first)
    assert output.count("Todo API on") == 1
    assert "Stopped embedded PostgreSQL." in output
    assert not (clean_env / "pgdata" / "postmaster.pid").exists(), "the embedded server was left running"


def test_the_banner_offers_only_tokens_the_configuration_accepts(clean_env: Path) -> None:
    def lines(**values: object) -> str:
        return "\n".join(banner(Settings(_env_file=None, **values)))  # type: ignore[call-arg]

    deployed = {"database_url": "postgresql://todo_app@db.example/todo", "port": 8080}
    shared_secret = lines(**deployed, jwt_secret=TEST_SECRET)
    assert "Todo API[/bold] on http://127.0.0.1:8080   docs: http://127.0.0.1:8080/docs" in shared_secret
    assert "Get a token with:  todo-api token USER_ID" in shared_secret
    assert "/api/auth/register" not in shared_secret
    assert "identity provider" not in shared_secret

    provider = lines(
        **deployed, jwks_url="https://id.example/jwks", jwt_issuer="https://id.example", jwt_audience="todo"
    )
    assert "todo-api token" not in provider
    assert "/api/auth/register" not in provider
    assert (
        "Tokens from your identity provider:  signed with a key from https://id.example/jwks, "
        "iss https://id.example, aud todo"
    ) in provider

    # A secret, but no HMAC algorithm to verify its tokens with: `todo-api token` would not do.
    no_hmac = lines(
        **deployed, jwt_secret=TEST_SECRET, jwt_algorithms="EdDSA", jwks_file="/etc/todo/jwks.json"
    )
    assert "todo-api token" not in no_hmac
    assert "signed with a key from /etc/todo/jwks.json" in no_hmac

    accounts = lines(**deployed, accounts_enabled=True)
    assert "todo-api token" not in accounts
    assert (
        "Built-in accounts:  register with POST /api/auth/register, log in with POST /api/auth/token"
        in accounts
    )

    embedded_default = lines(jwt_secret=TEST_SECRET)
    assert "todo-api token USER_ID" in embedded_default
    assert "/api/auth/register" in embedded_default
