""".env.example says what the settings are: it names every one, and where it gives a
value for a setting that has a default, that value is the default."""

import re
import sys
from pathlib import Path

import pytest
import uvicorn

from app.config import Settings
from tests.live_server import PROJECT_ROOT, env_names

EXAMPLE = PROJECT_ROOT / ".env.example"
# A commented-out assignment: `# NAME=value`.
ASSIGNMENT = re.compile(r"# ([A-Z][A-Z0-9_]*)=(.*)")
# uvicorn's own settings, which the example documents next to ours.
UVICORN_SETTINGS = {"FORWARDED_ALLOW_IPS"}


def example() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if match := ASSIGNMENT.fullmatch(line):
            assert match[1] not in found, f"{match[1]} appears twice in .env.example"
            found[match[1]] = match[2]
    return found


def settings_by_variable() -> dict[str, str]:
    """The variable each setting is read from (the first of its aliases) -> field name."""
    return {env_names(name, field)[0].upper(): name for name, field in Settings.model_fields.items()}


def test_env_example_names_every_setting_and_nothing_else() -> None:
    assert set(example()) == set(settings_by_variable()) | UVICORN_SETTINGS


def test_env_example_gives_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each line, uncommented alone in a .env file, reads as the setting's default; a
    setting that is unset by default may show an example instead (it must be valid),
    and `NAME=` (empty) is only for those."""
    fields = settings_by_variable()
    for name, field in Settings.model_fields.items():
        for variable in env_names(name, field):
            monkeypatch.delenv(variable.upper(), raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)  # DATA_DIR's default depends on it
    for variable, value in example().items():
        if variable in UVICORN_SETTINGS:
            continue
        field = Settings.model_fields[fields[variable]]
        default = field.get_default(call_default_factory=True)
        unset_by_default = default is None or default == []
        if value == "":
            assert unset_by_default, f"{variable}= in .env.example, but its default is {default!r}"
            continue
        env_file = tmp_path / f"{variable}.env"
        env_file.write_text(f"{variable}={value}\n", encoding="utf-8")
        read = getattr(Settings(_env_file=env_file), fields[variable])  # type: ignore[call-arg]
        if unset_by_default:
            continue
        if field.default_factory is not None and sys.platform != "linux":
            continue  # the example shows Linux's per-user directory
        assert read == default, f".env.example gives {variable}={value}, the default is {default!r}"


def test_env_example_gives_uvicorns_default_for_forwarded_allow_ips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert example()["FORWARDED_ALLOW_IPS"] == uvicorn.Config(app=None).forwarded_allow_ips
