"""`.env.example` lists every setting of app/config.py, each with its real default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import Settings

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"
_LINE = re.compile(r"^#\s?([A-Z][A-Z0-9_]*)=(.*)$")


def settings_listed() -> list[tuple[str, str]]:
    return [
        (match.group(1), match.group(2))
        for match in map(_LINE.match, ENV_EXAMPLE.read_text().splitlines())
        if match
    ]


def example_lines() -> dict[str, str]:
    return dict(settings_listed())


def test_every_setting_is_listed_once_and_nothing_else() -> None:
    names = [name for name, _ in settings_listed()]
    assert sorted(names) == sorted(name.upper() for name in Settings.model_fields)


def test_the_listed_values_are_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    uncommented = tmp_path / ".env"
    uncommented.write_text(
        "\n".join(f"{name}='{value}'" for name, value in example_lines().items()) + "\n"
    )
    from_example = Settings(_env_file=uncommented)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_example.model_dump() == defaults.model_dump()
