"""What the service writes to disk holding patients' data (a SQLite store and its journals, an extract's
files) is readable by the account that runs it alone, whatever umask the operator left: on a shared host
every other account could otherwise read every record (a careless operator, an insider)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.export.conftest import export
from tests.small_ics import Ics
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The umask most hosts start with: files readable by everyone, unless the program says otherwise."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def _shared_with_others(path: Path) -> bool:
    return bool(stat.S_IMODE(path.stat().st_mode) & 0o077)


def test_a_new_sqlite_store_and_its_journals_are_its_owners_alone(tmp_path: Path, open_umask: None) -> None:
    store = tmp_path / "var" / "sharedcare.db"
    db = Database(f"sqlite:///{store}")
    db.migrate()
    with db.session() as s:  # a read's audit append: the journals exist and hold data
        s.scalars(select(AuditEntry)).all()
        written = {p.name: _shared_with_others(p) for p in store.parent.iterdir() if p.name.startswith("sharedcare")}
    db.dispose()
    assert {"sharedcare.db", "sharedcare.db-wal", "sharedcare.db-shm"} <= set(written)
    assert [name for name, shared in written.items() if shared] == []
    assert not _shared_with_others(store.parent)


def test_an_extracts_files_are_its_owners_alone(ics: Ics, open_umask: None) -> None:
    _, files = export(ics.client, ics.token("analyst.chen"))
    assert files
    exports = ics.client.app.state.settings.data_path / "exports"  # type: ignore[attr-defined]
    (job,) = exports.iterdir()
    assert not _shared_with_others(job)
    assert sorted(p.name for p in job.iterdir() if _shared_with_others(p)) == []


def test_an_exported_audit_log_is_its_owners_alone(env: Database, tmp_path: Path, open_umask: None) -> None:  # noqa: F811
    out = tmp_path / "audit.ndjson"
    assert CliRunner().invoke(app, ["audit", "export", "--out", str(out)]).exit_code == 0
    assert out.exists() and not _shared_with_others(out)
