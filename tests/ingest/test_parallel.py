"""Staging in worker processes and storing many messages per transaction change nothing a user sees:
the same feeds give the same report and the same store as staging and committing one by one; a
message that fails while stored with others is quarantined alone; the progress bar ends at the total."""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from tests.builders import bundle, condition, patient, write_ndjson
from tests.ingest.test_crash_recovery import _store
from tests.ingest.test_csv_extract import _extract, _lrc, _row
from tests.ingest.test_hl7v2 import message, msh, pid, write_hl7
from tests.ingest.test_mllp import A01

from sharedcare.governance.framework import Framework
from sharedcare.ingest import pipeline as pipeline_module
from sharedcare.ingest.messages import Condition, RawMessage, StagedMessage, StagedResource, around_meta
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.ingest.staging import IN_FLIGHT_PER_WORKER, Stager
from sharedcare.store.database import Database, json_dumps
from sharedcare.store.models import MatchReview, PatientRecord, Quarantine, Resource
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


@pytest.mark.parametrize("workers", [1, 2])
def test_feeds_staged_by_workers_in_batches_store_what_one_by_one_does(
        db: Database, framework: Framework, feeds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        workers: int) -> None:
    with monkeypatch.context() as staged_by_workers:  # one worker too: never staged in the writer's process
        staged_by_workers.setattr(Stager, "inline", lambda *_: pytest.fail("staged inline"))
        parallel = Pipeline(db, framework, workers=workers, parallel_from_bytes=0).ingest_paths([feeds])
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


def test_messages_that_update_what_earlier_ones_of_their_run_inserted_share_its_transaction(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    first = bundle("P81001", "emis", [patient("p1", None, "Okafor", "Emeka", "1945-03-02"),
                                      condition("c1", "Patient/p1", "44054006", "Type 2 diabetes")])
    second = bundle("P81001", "emis", [patient("p1", None, "Okafor", "Emeka", "1945-03-02"),
                                       condition("c1", "Patient/p1", "73211009", "Diabetes mellitus")])
    again = bundle("P81001", "emis", [patient("p1", None, "Okafor", "Emeka", "1945-03-02"),  # a new message
                                      condition("c1", "Patient/p1", "44054006", "Type 2 diabetes")])
    path = write_ndjson(tmp_path / "P81001" / "gp.ndjson", [first, second, again])
    commits: list[object] = []
    event.listen(db.engine, "commit", commits.append)
    report = Pipeline(db, framework, workers=0).ingest_paths([path])
    assert (report.messages, report.accepted, report.unchanged, report.quarantined) == (3, 4, 2, 0)
    # one commit reading the agreements, one for the file's run: not rolled back and stored message by message
    assert len(commits) == 2
    with db.session() as s:
        assert s.scalars(select(Resource.version).where(Resource.source_id == "c1")).one() == 3


def _links(db: Database) -> dict[str, Any]:
    """Who each source record was linked to, how and how surely, and what was put up for review."""
    with db.session() as s:
        records = {r.id: r for r in s.scalars(select(PatientRecord))}
        people: dict[str, set[str]] = defaultdict(set)
        for r in records.values():
            people[r.person_id].add(r.source_id)
        return {"people": sorted(sorted(group) for group in people.values()),
                "records": {r.source_id: (r.link_method, r.link_status, r.match_probability, r.link_note)
                            for r in records.values()},
                "reviews": sorted((records[m.record_a].source_id, records[m.record_b].source_id, m.probability)
                                  for m in s.scalars(select(MatchReview)))}


def test_new_patients_of_one_run_are_matched_against_each_other_as_one_by_one(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's new records are matched against candidates fetched once for the run, plus the records the
    run itself adds: a second registration of a person earlier in the same file still finds them."""
    people = [patient("a1", None, "Okafor", "Emeka", "1945-03-02"),
              patient("a2", None, "Okafor", "Emeka", "1945-03-02"),  # the same man again, no NHS number
              patient("b1", "9434765919", "Lee", "Ann", "1970-01-01", "female", "RV3 7QT"),
              patient("b2", "9434765919", "Lee", "Ann", "1970-01-01", "female", "RV9 1ZZ"),
              patient("c1", "9434765919", "Shah", "Ravi", "2001-06-05", "male", "RV4 4AA")]  # her number, not her
    path = write_ndjson(tmp_path / "P81001" / "gp.ndjson", [bundle("P81001", "emis", [p]) for p in people])
    Pipeline(db, framework, workers=0).ingest_paths([path])
    serial_db = Database(f"sqlite:///{tmp_path / 'serial.db'}")
    serial_db.migrate()
    monkeypatch.setattr(pipeline_module, "STORE_BATCH", 1)
    Pipeline(serial_db, framework, workers=0).ingest_paths([path])
    batched = _links(db)
    assert batched == _links(serial_db)
    assert ["a1", "a2"] in batched["people"] and ["b1", "b2"] in batched["people"]
    assert batched["records"]["a2"][0] == "probabilistic"
    assert batched["records"]["c1"][:2] == ("nhs-number-conflict", "review")


def test_workers_read_on_across_files_but_only_a_few_batches_ahead(framework: Framework) -> None:
    """A feed of many small files streams through in bounded memory: the workers may start on the next
    files while the last ones are stored, but never more than a few batches ahead of what was stored."""
    line = json.dumps(bundle("P81001", "emis", [patient("p1", None, "Okafor", "Emeka", "1945-03-02")])).encode()
    opened: list[int] = []

    def files() -> Iterator[tuple[int, Any, Iterator[RawMessage]]]:
        for number in range(40):
            opened.append(number)
            raw = RawMessage(f"f{number}.ndjson", "line 1", line, "fhir")
            yield number, pipeline_module.ADAPTERS["fhir"], iter([raw])

    stager = Stager(framework, workers=2)
    ended: list[int] = []
    ahead = 0
    try:
        for number, raw, outcome in stager.parallel(files(), None):
            if raw is None:
                ended.append(number)
            else:
                assert isinstance(outcome, StagedMessage) and outcome.resources[0].source_id == "p1"
            ahead = max(ahead, len(opened) - len(ended))
    finally:
        stager.close()
    assert ended == list(range(40))  # every file's end, in order
    assert 2 <= ahead <= 2 * IN_FLIGHT_PER_WORKER + 1  # the next files opened before one ends, but only a few


def test_a_file_that_cannot_be_read_is_quarantined_and_the_next_files_still_stored(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    good = [bundle("P81001", "emis", [patient(f"p{i}", None, "Okafor", "Emeka", "1945-03-02")]) for i in range(3)]
    first = write_ndjson(tmp_path / "P81001" / "a.ndjson", good[:2])
    last = write_ndjson(tmp_path / "P81001" / "c.ndjson", good[2:])
    missing = tmp_path / "P81001" / "b.ndjson"
    for workers in (0, 2):
        report = Pipeline(db, framework, workers=workers, parallel_from_bytes=0).ingest_paths([first, missing, last])
        assert report.files == 3
        assert [(q["file"], q["location"]) for q in report.quarantine] == [(str(missing), "whole file")]
        assert report.quarantine[0]["reason"].startswith("cannot read file")
        assert report.messages == 3 and report.accepted + report.unchanged == 3  # c.ndjson read either way
    with db.session() as s:
        assert len(s.scalars(select(PatientRecord.id)).all()) == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_a_quarantined_message_is_counted_against_the_organisation_that_sent_it(
        db: Database, framework: Framework, tmp_path: Path, workers: int) -> None:
    """An operator watching quarantine by source (`sharedcare quarantine check`) sees who sent what is held,
    when the message got far enough to say (MSH-4, meta.source, the feed's folder), with or without --source;
    staged inline or by the workers."""
    drop = tmp_path / "drop"  # a folder that names no organisation
    hl7 = write_hl7(drop / "pas.hl7", [
        message(msh("ADT^A99^ADT_A01", "C1", facility="RXR"), pid()),  # a message type not handled
        message(msh("ADT^A08^ADT_A01", "C2", facility="XYZ"), pid()),  # a sender the framework does not know
        message(msh("ADT^A08^ADT_A01", "C3", facility="RXR"), pid(born="19451302"))])  # no 13th month
    fhir = write_ndjson(drop / "emis.ndjson", [bundle("P81001", "emis", [
        patient("gp-2", "1234567890", "Hughes", "Margaret", "1952-06-11")])])  # fails modulus 11 when linked
    short = ",".join(list(_row(client_id="C2", assessment_id="A2").values())[:-1])
    extract = _extract(_lrc(tmp_path), [_row(), short])
    Pipeline(db, framework, workers=workers, parallel_from_bytes=0).ingest_paths([hl7, fhir, extract])
    with db.session() as s:
        held = sorted((q.format, q.location.split(" (")[0], q.source_org) for q in s.scalars(select(Quarantine)))
    assert held == [("csv", "line 3", "LRC"), ("fhir", "line 1", "P81001"),
                    ("hl7v2", "message 1", "RXR"), ("hl7v2", "message 2", None), ("hl7v2", "message 3", "RXR")]


@pytest.mark.parametrize("content", [
    {"resourceType": "Condition", "id": "c1", "meta": {"profile": ["p"], "source": "s"}, "note": [{"text": "é ✓"}],
     "onsetAge": {"value": 1.5e-7}, "extension": [{"valueInteger": -(2**63)}]},
    {"meta": {}, "resourceType": "Observation", "id": "o1", "valueQuantity": {"value": 0.1}},
    {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "sent", "tag": [{"code": "x"}]}},
])
def test_a_resource_handed_over_by_a_worker_is_stored_as_the_writer_would_encode_it(content: dict[str, Any]) -> None:
    """The writer stores a worker's text with its meta stamped: exactly the text it would have made of the
    dict (key order, numbers, escapes, the stamp replacing a versionId sent), and the dict read back equal."""
    item = _handed_over(content)
    stamp = {"versionId": "2", "lastUpdated": "2026-12-06T05:00:00+00:00"}
    stamped = {**content, "meta": {**content["meta"], **stamp}}
    assert item.stamped_text(stamp) == json_dumps(stamped)
    assert "content" not in item.__dict__  # handed over as text only
    assert item.sent_content() == content


@pytest.mark.parametrize("odd", [float("nan"), float("inf"), 2**64, "null", "\x00meta\x00"])
def test_what_text_cannot_carry_exactly_is_handed_over_as_the_content_itself(odd: Any) -> None:
    content = {"resourceType": "Observation", "id": "o1", "meta": {}, "valueString": odd}
    item = _handed_over(content)
    assert item.stamped_text({"versionId": "1"}) is None
    assert repr(item.content) == repr(content)  # (NaN is not equal to itself)


def _handed_over(content: dict[str, Any]) -> StagedResource:
    """A staged resource as the writer gets it from a worker (pickled there, unpickled here)."""
    item = StagedResource(content["resourceType"], content["id"], content["id"], content, datetime.now(UTC), "p")
    item.around_meta = around_meta(content)
    handed: StagedResource = pickle.loads(pickle.dumps(item))  # noqa: S301 - our own bytes, as the pool's
    return handed


def test_a_refusal_keeps_its_hl7_error_code_whether_staged_inline_or_by_the_workers(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Every refusal carries the table 0357 condition an ACK would give (`MessageError.condition`): one staged
    by a worker process says the same as one staged inline, not the default 207 of "application error"."""
    path = tmp_path / "RXR" / "pas.hl7"
    path.parent.mkdir()
    path.write_bytes(A01.format(dob="19450302").replace("ADT^A01^ADT_A01", "SIU^S12").encode("latin-1"))
    answers = []
    for workers in (0, 2):
        report = Pipeline(db, framework, workers=workers, parallel_from_bytes=0).ingest_paths([path])
        answers.append([(error.condition, error.rejected) for error in report.errors])
    assert answers == [[(Condition.MESSAGE_TYPE, True)]] * 2
