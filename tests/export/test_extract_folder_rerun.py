"""`sharedcare export --out DIR` run again into the same folder: the folder holds this run's extract, not
files of an earlier run that this one had nothing to write to (a type that now has no rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.small_ics import OKAFOR_NHS, Ics
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.governance.consent import set_choice
from sharedcare.store.database import Database


def test_a_rerun_after_an_opt_out_leaves_no_earlier_file_of_his_in_the_folder(
        ics: Ics, db: Database, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_DB", database_url)
    monkeypatch.setenv("SHAREDCARE_DEMO", "1")
    out = tmp_path / "extract"
    first = CliRunner().invoke(app, ["export", "--out", str(out), "--user", "analyst.chen", "--json"])
    assert first.exit_code == 0, first.output
    assert (out / "Condition.ndjson").exists()  # Mr Okafor's diabetes: he is the only one with a Condition
    (out / "notes.txt").write_text("the operator's own file")
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=True)
    again = CliRunner().invoke(app, ["export", "--out", str(out), "--user", "analyst.chen", "--json"])
    assert again.exit_code == 0, again.output
    assert "Condition.ndjson" not in again.output  # the re-run wrote no Condition file ...
    assert not (out / "Condition.ndjson").exists(), "... and the first run's, with his diabetes, is gone"
    assert (out / "notes.txt").read_text() == "the operator's own file"  # not an extract's: left alone
    written = {path.name for path in out.iterdir() if not path.name.startswith(".")}
    assert written - {"notes.txt"} and all(name.endswith(".ndjson") and f'"{name}"' in again.output
                                           for name in written - {"notes.txt"})
