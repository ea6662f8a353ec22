"""One organisation's stale CSV mapping (`text_only`, renamed `local` on 2026-12-07) in the shared mappings folder
(review, 2026-12-07): it held every file of no named organisation, of every organisation, as "the mapping
RXR-pas.yaml is invalid". Now it is passed over, with a warning, when it could not read the file anyway; a file
it might read (its columns are the header's, or cannot be told) is still held naming its problem, since storing
RXR's extract as LRC's (their Mosaic headers alike) would be worse than holding it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tests.ingest.test_csv_extract import MOSAIC, _extract, _row

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.synth.csv_feeds import HEADER

GOOD = MOSAIC.read_text(encoding="utf-8")
WARD_HEADER = tuple("ward" if column == "team" else column for column in HEADER)


def stale_mapping_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ward: bool = True) -> tuple[Path, int]:
    """LRC's good mapping and RXR's old one, still saying `text_only`, in the mappings folder: RXR's extract has
    a `ward` column where LRC's has `team`, or (`ward=False`) the same columns. The RXR file, and the line of
    the concept that says `text_only` (`assessment.type`)."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "LRC-mosaic.yaml").write_text(GOOD, encoding="utf-8")
    old = mappings / "RXR-pas.yaml"
    stale = GOOD.replace("organisation: LRC", "organisation: RXR").replace("    local: [", "    text_only: [")
    old.write_text(stale.replace(" team, ", " ward, ").replace("team: team", "team: ward") if ward else stale,
                   encoding="utf-8")
    monkeypatch.setenv("SHAREDCARE_MAPPINGS", str(mappings))
    return old, GOOD[:GOOD.index("\n  type:\n")].count("\n") + 2


def _unlabelled(tmp_path: Path, header: tuple[str, ...] = HEADER) -> Path:
    """An extract dropped in a folder naming no organisation: read by the one mapping, of all, that fits it."""
    rows = [{name: row[name if name != "ward" else "team"] for name in header}
            for row in (_row(), _row(client_id="C2", assessment_id="A2"))]
    return _extract(tmp_path / "inbox" / "extract-0001.csv", list(rows), header)


def test_a_stale_mapping_of_another_system_does_not_hold_an_unlabelled_file_it_cannot_read(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    old, line = stale_mapping_folder(tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="sharedcare.ingest"):
        report = Pipeline(db, framework).ingest_paths([_unlabelled(tmp_path)])
    assert (report.accepted, report.quarantined) == (6, 0), report.quarantine  # Patient, Encounter, CarePlan each
    warned = [r.getMessage() for r in caplog.records if str(old.resolve()) in r.getMessage()]
    assert len(warned) == 1, warned  # once, not once a row
    assert f"(line {line}, assessment.type: `text_only` is now `local`" in warned[0]
    assert "read by LRC-mosaic" in warned[0]


@pytest.mark.parametrize("stale", ["the file's own columns", "columns like LRC's", "no columns to read"])
def test_a_file_the_stale_mapping_might_read_is_held_naming_its_problem(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stale: str) -> None:
    """Held, not read by LRC's mapping: RXR's Mosaic extract under LRC's mapping would be stored as LRC's."""
    old, line = stale_mapping_folder(tmp_path, monkeypatch, ward=stale == "the file's own columns")
    problem = f"line {line}, assessment.type: `text_only` is now `local`"
    if stale == "no columns to read":
        old.write_text("organisation: RXR\ncolumns: [client_id\n", encoding="utf-8")
        problem = "line 3: not valid YAML"
    path = _unlabelled(tmp_path, WARD_HEADER if stale == "the file's own columns" else HEADER)
    report = Pipeline(db, framework).ingest_paths([path])
    assert (report.accepted, report.quarantined) == (0, 2)
    assert {held["reason"][:len(f"the mapping {old.resolve()} is invalid: {problem}")]
            for held in report.quarantine} == {f"the mapping {old.resolve()} is invalid: {problem}"}
