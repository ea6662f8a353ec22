"""Two writers ingest one person's records at the same moment (a file ingest beside the MLLP listener or a
FHIR write): one person, never two, however their matching and inserting interleave."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.builders import bundle, patient, write_ndjson
from tests.ingest.test_hl7v2 import GOOD_NHS

import sharedcare.identity.mpi as mpi
from sharedcare.governance.framework import Framework
from sharedcare.ingest.messages import RawMessage
from sharedcare.ingest.pipeline import ADAPTERS, IngestReport, Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord


def _pause_after_matching(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each writer pauses after matching, until the other has matched too (or for at most a second: the other
    is waiting its turn)."""
    both_matched = threading.Barrier(2, timeout=1)
    find_person = mpi._find_person

    def then_pause(*args: Any, **kwargs: Any) -> Any:
        link = find_person(*args, **kwargs)
        try:
            both_matched.wait()
        except threading.BrokenBarrierError:  # the other writer is waiting for this one to commit
            pass
        return link

    monkeypatch.setattr(mpi, "_find_person", then_pause)


def _at_once(db: Database, framework: Framework, gp: Path, crew: RawMessage) -> None:
    """The GP's file and the crew's one message (as MLLP and FHIR writes store one) ingested at the same moment."""
    reports = [IngestReport()]
    writers = [threading.Thread(target=lambda: reports.append(Pipeline(db, framework).ingest_paths([gp]))),
               threading.Thread(target=lambda: Pipeline(db, framework).ingest_message(
                   ADAPTERS["fhir"], crew, None, reports[0], None))]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert [report.quarantined for report in reports] == [0, 0]


def _persons(db: Database) -> dict[tuple[str, str], str]:
    with db.session() as s:
        return {(r.source_org, r.source_id): r.person_id for r in s.scalars(select(PatientRecord))}


EMEKA = ("Okafor", "Emeka", "1945-03-02")


def test_a_persons_gp_and_ambulance_records_sent_at_once_are_one_person(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a turn, both writers matched an empty store and each inserted a person of its own: the ambulance
    crew's record hid the GP's allergies."""
    _pause_after_matching(monkeypatch)
    gp = write_ndjson(tmp_path / "gp.ndjson", [bundle("P81001", "emis", [patient("g", GOOD_NHS, *EMEKA)])])
    crew = RawMessage("feeds/RYA/epcr.ndjson", "line 1", json.dumps(
        bundle("RYA", "epcr", [patient("a", GOOD_NHS, *EMEKA)])).encode(), "fhir")
    _at_once(db, framework, gp, crew)
    persons = _persons(db)
    assert persons[("P81001", "g")] == persons[("RYA", "a")]


def test_an_unknown_patient_identified_as_his_gp_record_arrives_is_one_person(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crew's record of a man who could not say who he was is sent again with his details as his GP's record
    first arrives. Matched again without a turn, the crew's record found no GP record (not yet committed) and
    the GP's found no Emeka Okafor (not yet changed): two persons, each with half his record."""
    unknown = bundle("RYA", "epcr", [patient("a", None, "UNKNOWN", "Unknown Male", "1945-01-01", "male", "ZZ99 3WZ")],
                     timestamp="2026-11-02T03:00:00Z")
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "call.ndjson", [unknown])])
    _pause_after_matching(monkeypatch)
    gp = write_ndjson(tmp_path / "gp.ndjson", [bundle("P81001", "emis", [patient("g", GOOD_NHS, *EMEKA)])])
    crew = RawMessage("feeds/RYA/epcr.ndjson", "line 2", json.dumps(bundle(
        "RYA", "epcr", [patient("a", GOOD_NHS, *EMEKA)], timestamp="2026-11-02T09:00:00Z")).encode(), "fhir")
    _at_once(db, framework, gp, crew)
    persons = _persons(db)
    assert persons[("P81001", "g")] == persons[("RYA", "a")]
