"""Settings refuse what would make a deployment unsafe, with an error that says what to do."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sharedcare.api.app import create_app
from sharedcare.config import DEMO_SECRET, load_settings
from sharedcare.errors import ConfigError


@pytest.mark.parametrize("secret", [DEMO_SECRET, "x" * 31, "短い秘密" * 2])
def test_outside_demo_mode_a_demo_or_short_secret_is_refused(secret: str, tmp_path: Path) -> None:
    settings = replace(load_settings(), database_url=f"sqlite:///{tmp_path / 'x.db'}", secret=secret, demo=False)
    with pytest.raises(ConfigError, match="SHAREDCARE_SECRET") as refused:
        create_app(settings)
    assert "demo key" in str(refused.value) or "at least 32" in str(refused.value)


def test_a_32_byte_secret_is_accepted_and_demo_mode_accepts_any(tmp_path: Path) -> None:
    settings = replace(load_settings(), database_url=f"sqlite:///{tmp_path / 'x.db'}")
    assert create_app(replace(settings, secret="k" * 32, demo=False)).state.settings.secret == "k" * 32
    assert create_app(replace(settings, secret="short", demo=True)).state.settings.demo
