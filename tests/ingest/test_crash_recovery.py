"""A kill -9 in the middle of an ingest loses nothing: ingesting the same input again afterwards leaves
the store exactly as one clean run would (resources, patient records, who is linked with whom,
quarantine), on SQLite and PostgreSQL. The ingest is the real `sharedcare ingest` in a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from tests.builders import bundle, condition, patient, write_ndjson

import sharedcare
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Quarantine, Resource
from sharedcare.synth import generate

SRC = Path(sharedcare.__file__).resolve().parents[1]


def _ingest(url: str, feeds: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SHAREDCARE_DB": url, "PYTHONPATH": str(SRC), "SHAREDCARE_INGEST_WORKERS": "2"}
    return subprocess.Popen([sys.executable, "-c", "from sharedcare.cli import app; app()", "ingest", str(feeds),  # noqa: S603
                             "--json"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _resources(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Resource)) or 0


def _store(db: Database) -> dict[str, Any]:
    """Everything a run leaves that a user could notice, free of ids and times that differ run to run."""
    with db.session() as s:
        records = {r.id: r for r in s.scalars(select(PatientRecord))}
        people: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for r in records.values():
            people[r.person_id].add((r.source_org, r.source_id))
        resources = {}
        for row in s.scalars(select(Resource)):
            content = dict(row.content)
            content["meta"] = {k: v for k, v in content["meta"].items() if k != "lastUpdated"}
            owner = records[row.patient_record_id] if row.patient_record_id else None
            resources[row.id] = (row.resource_type, row.source_org, row.source_id, row.version, row.content_hash,
                                 row.recorded_at, row.message_id, content,
                                 (owner.source_org, owner.source_id) if owner else None)
        return {
            "resources": resources,
            "patient_records": {(r.source_org, r.source_id): (r.nhs_number, r.family, r.given, r.birth_date, r.gender,
                                                              r.postcode, r.link_method, r.link_status)
                                for r in records.values()},
            "people": sorted(sorted(group) for group in people.values()),
            "quarantine": sorted((q.filename, q.location, q.reason, q.payload, q.status)
                                 for q in s.scalars(select(Quarantine))),
        }


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ics")
    generate(out, people=250, seed=5)
    # a message that cannot be accepted, so quarantine is compared too
    with (out / "P81001" / "fhir" / "emis-0000.ndjson").open("a", encoding="utf-8") as handle:
        handle.write('{"resourceType": "Bundle", "entry": [\n')
    return out


@pytest.fixture(scope="module")
def clean_run(feeds: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The store after one uninterrupted run (SQLite; the stores hold the same on PostgreSQL)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('clean') / 'clean.db'}"
    clean = Database(url)
    clean.migrate()
    assert _ingest(url, feeds).wait(timeout=600) == 1  # 1: something was quarantined
    store = _store(clean)
    clean.dispose()
    return store


def test_an_ingest_killed_part_way_and_run_again_equals_one_clean_run(
        db: Database, database_url: str, feeds: Path, clean_run: dict[str, Any]) -> None:
    killed = _ingest(database_url, feeds)
    deadline = time.monotonic() + 120
    while _resources(db) == 0 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get well into the feed, with workers staging ahead of what is committed
    assert killed.poll() is None, "the ingest ended before it could be killed: give it more to do"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    part = _resources(db)
    assert part > 0, "nothing was committed before the kill"
    assert _ingest(database_url, feeds).wait(timeout=600) == 1

    expected, after_crash = clean_run, _store(db)
    assert part < len(expected["resources"]), "the kill came after everything was stored"
    assert len(expected["quarantine"]) == 1
    for part_name in ("resources", "patient_records", "people", "quarantine"):
        assert after_crash[part_name] == expected[part_name], part_name


def test_the_same_bad_message_ingested_twice_is_held_once(db: Database, framework: Framework, tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "P81001" / "gp.ndjson", [
        bundle("P81001", "emis", [patient("p1", "9434765919", "Okafor", "Emeka", "1945-03-02"),
                                  condition("c1", "Patient/nobody", "44054006", "Type 2 diabetes mellitus")])])
    first = Pipeline(db, framework).ingest_paths([path])
    second = Pipeline(db, framework).ingest_paths([path])
    assert first.quarantined == second.quarantined == 1
    assert first.quarantine[0]["id"] == second.quarantine[0]["id"]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Quarantine)) == 1
