"""An agreement suspended by editing the framework file is recorded, audited, when `serve` or `mllp` starts
(`agreements.note_file_agreements`): the tests of what such a suspension ends restart an app by hand
(tests/portal/test_suspended_organisation.py); these check that both commands really take that step."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.cli.starts import deployment_that_starts_and_stops
from tests.conftest import FRAMEWORK_PATH
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.governance.agreements import FRAMEWORK_FILE
from sharedcare.store.database import Database
from sharedcare.store.models import AgreementChange, AuditEntry

runner = CliRunner(env={"COLUMNS": "400"})
SIGNED_RXR = "agreement: {status: signed, signed: 2026-01-10,"


@pytest.fixture
def framework_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the example framework the deployment reads, in a new SQLite store; `serve` and `mllp`
    start but do not stay."""
    copy = tmp_path / "framework.yaml"
    copy.write_text(FRAMEWORK_PATH.read_text())
    deployment_that_starts_and_stops(monkeypatch, tmp_path, copy)
    return copy


def _file_changes(store: Path) -> list[tuple[str, str]]:
    database = Database(f"sqlite:///{store}")
    with database.session() as s:
        rows = [(c.org_code, c.status) for c in s.scalars(select(AgreementChange).where(
            AgreementChange.changed_by == FRAMEWORK_FILE,
            AgreementChange.changed_at > datetime(1970, 1, 1, tzinfo=UTC)))]  # (not a first read's, dated 1970)
        audited = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:agreement:set",
                                                     AuditEntry.username == FRAMEWORK_FILE)).all()
        assert len(audited) == len(rows)
    database.dispose()
    return rows


@pytest.mark.parametrize("command", ["serve", "mllp"])
def test_a_start_records_a_suspension_written_in_the_framework_file(framework_file: Path, command: str) -> None:
    assert runner.invoke(app, [command]).exit_code == 0  # the file as it was: nothing to record
    store = framework_file.parent / "sharedcare.db"
    assert _file_changes(store) == []
    text = framework_file.read_text()
    assert text.count(SIGNED_RXR) == 1
    framework_file.write_text(text.replace(SIGNED_RXR, SIGNED_RXR.replace("signed,", "suspended,", 1)))
    started = runner.invoke(app, [command])
    assert started.exit_code == 0, started.output
    assert "agreements changed in the framework file since it was last read: RXR" in started.output
    assert _file_changes(store) == [("RXR", "suspended")]
