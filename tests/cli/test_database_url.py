"""The database URL as an operator writes it in SHAREDCARE_DB."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import FRAMEWORK_PATH
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.store.database import Database

runner = CliRunner()


def test_a_store_whose_url_holds_a_percent_sign_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL is handed to Alembic's ConfigParser, which read '%' as its own syntax: every command
    stopped with "invalid interpolation syntax", printing the URL."""
    folder = tmp_path / "care%40home"
    folder.mkdir()
    monkeypatch.setenv("SHAREDCARE_DB", f"sqlite:///{folder / 'store.db'}")
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0, result.exception
    assert "audit chain whole: 1 entry verified" in result.stderr  # the entry a new store's log begins with


def test_a_url_escaped_password_reaches_the_migrations_as_written() -> None:
    """A password holding '@' is written p%40ss; it stopped the migrations, and the error named it."""
    url = "postgresql+psycopg://ops:p%40ss@127.0.0.1/care"
    assert Database(url).alembic_config().get_main_option("sqlalchemy.url") == url
