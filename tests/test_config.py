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


def test_outside_demo_mode_a_short_pseudonym_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_PSEUDONYM_KEY", "p" * 31)
    settings = replace(load_settings(), database_url=f"sqlite:///{tmp_path / 'x.db'}", secret="k" * 32, demo=False)
    with pytest.raises(ConfigError, match="SHAREDCARE_PSEUDONYM_KEY is 31 bytes"):
        create_app(settings)
    assert create_app(replace(settings, pseudonym_key="p" * 32)).state.settings.pseudonym_secret == "p" * 32


def test_the_server_runs_request_work_on_the_configured_number_of_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two a process by default (request work is CPU: more threads fight the event loop for the GIL and
    the latency tail explodes); SHAREDCARE_SERVER_THREADS changes it, and nonsense is refused by name."""
    import anyio.to_thread
    from fastapi.testclient import TestClient

    def tokens() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    for value, expected in ((None, 2), ("6", 6)):
        if value is None:
            monkeypatch.delenv("SHAREDCARE_SERVER_THREADS", raising=False)
        else:
            monkeypatch.setenv("SHAREDCARE_SERVER_THREADS", value)
        settings = replace(load_settings(), database_url=f"sqlite:///{tmp_path / 'x.db'}", demo=True)
        with TestClient(create_app(settings)) as client:
            assert client.portal.call(tokens) == expected  # type: ignore[union-attr]
    monkeypatch.setenv("SHAREDCARE_SERVER_THREADS", "0")
    with pytest.raises(ConfigError, match="SHAREDCARE_SERVER_THREADS"):
        load_settings()


@pytest.mark.parametrize(("cores", "setting", "workers"), [(1, None, 0), (2, None, 2), (8, None, 8), (2, "1", 1),
                                                           (8, "0", 0)])
def test_ingest_stages_beside_the_writer_on_every_core_unless_there_is_only_one(
        monkeypatch: pytest.MonkeyPatch, cores: int, setting: str | None, workers: int) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    if setting is None:
        monkeypatch.delenv("SHAREDCARE_INGEST_WORKERS", raising=False)
    else:
        monkeypatch.setenv("SHAREDCARE_INGEST_WORKERS", setting)
    assert load_settings().ingest_workers == workers
