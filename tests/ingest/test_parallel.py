"""Staging in worker processes and storing many messages per transaction change nothing a user sees:
the same feeds give the same report and the same store as staging and committing one by one; a
message that fails while stored with others is quarantined alone; the progress bar ends at the total."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.builders import bundle, condition, patient, write_ndjson
from tests.ingest.test_crash_recovery import _store

from sharedcare.governance.framework import Framework
from sharedcare.ingest import pipeline as pipeline_module
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import Resource
from sharedcare.synth import generate


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ics")
    generate(out, people=60, seed=9)
    return out


def _report(report: Any) -> dict[str, Any]:
    data = report.to_json()
    for item in data["quarantine"]:
        item.pop("id")
    return data


def test_feeds_staged_by_workers_in_batches_store_what_one_by_one_does(
        db: Database, framework: Framework, feeds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parallel = Pipeline(db, framework, workers=2, parallel_from_bytes=0).ingest_paths([feeds])
    serial_db = Database(f"sqlite:///{tmp_path / 'serial.db'}")
    serial_db.migrate()
    monkeypatch.setattr(pipeline_module, "STORE_BATCH", 1)
    serial = Pipeline(serial_db, framework, workers=0).ingest_paths([feeds])
    assert parallel.accepted > 500
    assert _report(parallel) == _report(serial)
    assert _store(db) == _store(serial_db)


def test_a_message_that_fails_when_stored_among_others_is_quarantined_alone(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    good = [bundle("P81001", "emis", [patient(f"p{i}", None, "Okafor", "Emeka", "1945-03-02"),
                                      condition(f"c{i}", f"Patient/p{i}", "44054006", "Type 2 diabetes")])
            for i in range(5)]
    orphan = bundle("P81001", "emis", [condition("c-orphan", "Patient/never-sent", "44054006", "Type 2 diabetes")])
    path = write_ndjson(tmp_path / "P81001" / "gp.ndjson", [*good[:3], orphan, *good[3:]])
    report = Pipeline(db, framework, workers=0).ingest_paths([path])
    assert (report.messages, report.accepted, report.quarantined) == (6, 10, 1)
    assert report.quarantine[0]["location"] == "line 4"
    assert "never-sent" in report.quarantine[0]["reason"]
    with db.session() as s:
        assert len(s.scalars(select(Resource.id)).all()) == 10


def test_the_progress_of_a_csv_extract_ends_at_its_size(db: Database, framework: Framework, feeds: Path) -> None:
    extract = next(feeds.glob("*/csv/*.csv"))
    steps: list[int] = []
    Pipeline(db, framework).ingest_paths([extract], progress=steps.append)
    assert sum(steps) == extract.stat().st_size
    assert len(steps) > 2 and steps[0] > steps[1]  # the first row carries the header's bytes, once
