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


def test_a_persons_gp_and_ambulance_records_sent_at_once_are_one_person(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each writer pauses after matching found no one, until the other has matched too (or for at most a
    second: the other is waiting its turn). Without a turn, both matched an empty store and each inserted a
    person of its own: the ambulance crew's record hid the GP's allergies."""
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
    emeka = ("Okafor", "Emeka", "1945-03-02")
    gp = write_ndjson(tmp_path / "gp.ndjson", [bundle("P81001", "emis", [patient("g", GOOD_NHS, *emeka)])])
    crew = RawMessage("feeds/RYA/epcr.ndjson", "line 1", json.dumps(
        bundle("RYA", "epcr", [patient("a", GOOD_NHS, *emeka)])).encode(), "fhir")
    reports = [IngestReport()]
    writers = [threading.Thread(target=lambda: reports.append(Pipeline(db, framework).ingest_paths([gp]))),
               threading.Thread(target=lambda: Pipeline(db, framework).ingest_message(
                   ADAPTERS["fhir"], crew, None, reports[0], None))]  # one message, as MLLP and FHIR writes store
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert [report.quarantined for report in reports] == [0, 0]
    with db.session() as s:
        persons = {(r.source_org, r.source_id): r.person_id for r in s.scalars(select(PatientRecord))}
    assert persons[("P81001", "g")] == persons[("RYA", "a")]
