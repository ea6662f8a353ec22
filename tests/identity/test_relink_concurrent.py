"""A relink runs while ingest and reviewers go on: it reads every record and trains for seconds (minutes at
region scale). What commits while it runs stands: a source's correction, a reviewer's decision, a new record.
Until 2026-12-07 the relink wrote its moves from what it had read before training, over whatever committed
meanwhile. Real threads on a real store (SQLite and PostgreSQL), as tests/ingest/test_concurrent_matching.py."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.builders import bundle, patient, write_ndjson

import sharedcare.identity.matching as matching
from sharedcare.governance.framework import Framework
from sharedcare.identity.links import decide, separate
from sharedcare.identity.mpi import relink
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import LinkEvent, LinkMove, MatchReview, PatientRecord, Person

ANNA_NHS, PAWEL_NHS = "9434765919", "9990000018"
ANNA = ("Rossi", "Anna", "2026-01-05", "female", "RV3 1AA")
PAWEL = ("Rossi", "Pawel", "1988-07-21", "male", "RV3 1AA")
PAUSE_S = 1.5  # how long the relink waits for the other writer, which may be waiting for it


def _arrives(db: Database, fw: Framework, tmp: Path, org: str, sid: str, nhs: str | None,
             who: tuple[str, str, str, str, str]) -> None:
    """The source's message about its patient `sid`, sent an hour after the one before it."""
    family, given, born, gender, postcode = who
    feeds = tmp / "feeds"
    sent = len(list(feeds.iterdir())) if feeds.exists() else 0
    Pipeline(db, fw).ingest_paths([write_ndjson(feeds / f"{sent}.ndjson", [bundle(org, "x", [
        patient(sid, nhs, family, given, born, gender, postcode)], timestamp=f"2026-11-01T{sent:02d}:00:00Z")])])


def _while_relinking(db: Database, monkeypatch: pytest.MonkeyPatch, other: Callable[[], None]) -> None:
    """Relink while `other` runs: `other` starts once the relink is clustering the records it read; the
    relink goes on once `other` has committed, or after PAUSE_S (`other` is waiting for the relink)."""
    clustering, committed = threading.Event(), threading.Event()
    cluster = matching.cluster
    failed: list[BaseException] = []

    def paused(*args: Any, **kwargs: Any) -> Any:
        clustering.set()
        committed.wait(PAUSE_S)
        return cluster(*args, **kwargs)

    def relinking() -> None:
        try:
            with db.session() as s:
                relink(s)
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            failed.append(exc)

    def meanwhile() -> None:
        try:
            assert clustering.wait(60), "the relink never clustered"
            other()
            committed.set()
        except BaseException as exc:  # noqa: BLE001
            failed.append(exc)

    monkeypatch.setattr(matching, "cluster", paused)
    threads = [threading.Thread(target=relinking), threading.Thread(target=meanwhile)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed, failed


def _records(db: Database) -> dict[tuple[str, str], PatientRecord]:
    with db.session() as s:
        found = {(r.source_org, r.source_id): r for r in s.scalars(select(PatientRecord))}
        s.expunge_all()
        return found


def _chains(db: Database, record_id: int) -> bool:
    """Each move of the record starts from the person the one before it ended in, and the last ends in its
    person: its link history says whose record it was at every time."""
    with db.session() as s:
        moves = list(s.execute(select(LinkMove.from_person, LinkMove.to_person).join(LinkEvent)
                               .where(LinkMove.patient_record_id == record_id).order_by(LinkEvent.id)))
        person = s.get_one(PatientRecord, record_id).person_id
    return all(a.to_person == b.from_person for a, b in zip(moves, moves[1:], strict=False)) and (
        not moves or moves[-1].to_person == person)


def _separated(db: Database, record: PatientRecord, why: str) -> None:
    with db.session() as s:
        separate(s, record.id, "mpi.operator", why)


def _left_apart(db: Database, record: PatientRecord) -> None:
    """The record in a person of its own, as matching may leave one that a relink then joins (an operator's
    separation would hold: `links.separations`)."""
    with db.session() as s:
        person = Person(id=str(uuid.uuid4()))
        s.add(person)
        s.flush()
        s.get_one(PatientRecord, record.id).person_id = person.id


def test_a_registration_the_gp_corrects_during_a_relink_is_with_the_person_whose_nhs_number_it_carries(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GP registration with baby Anna Rossi's details at her new address, and no NHS number, is held for
    review beside her hospital record; a relink would link them. The GP corrects it while the relink runs:
    it was her father's, Pawel's, with his NHS number. Until 2026-12-07 the relink, which had read it as
    Anna's, moved it into her person after ingest had moved it to his: her record showed her father's
    registration, the pair's review item was closed as one person, and its link history did not chain."""
    moved = ("Rossi", "Anna", "2026-01-05", "female", "RV9 9ZZ")
    _arrives(db, framework, tmp_path, "RXR", "anna", ANNA_NHS, ANNA)
    _arrives(db, framework, tmp_path, "P81001", "reg", None, moved)
    _arrives(db, framework, tmp_path, "RYC", "anna", ANNA_NHS, moved)
    _arrives(db, framework, tmp_path, "RXR", "pawel", PAWEL_NHS, PAWEL)
    assert _records(db)[("P81001", "reg")].link_status == "review"

    _while_relinking(db, monkeypatch, lambda: _arrives(db, framework, tmp_path, "P81001", "reg", PAWEL_NHS, PAWEL))
    r = _records(db)
    reg = r[("P81001", "reg")]
    assert (reg.nhs_number, reg.link_status) == (PAWEL_NHS, "linked")
    assert reg.person_id == r[("RXR", "pawel")].person_id != r[("RXR", "anna")].person_id
    assert _chains(db, reg.id)
    with db.session() as s:  # closed as two NHS numbers, not as one person
        assert [i.status for i in s.scalars(select(MatchReview).where(MatchReview.record_b == reg.id))] == [
            "relink-apart"]


def test_a_reviewers_separate_made_during_a_relink_keeps_the_two_women_apart(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two records with Margaret Hughes's details, taken apart by an operator and on the review list. A
    reviewer decides they are two women while a relink runs: until 2026-12-07 the decision reported success
    and the relink, which had read the pair as undecided, joined them; the item said separate."""
    margaret = ("Hughes", "Margaret", "1952-06-11", "female", "RV1 2AB")
    _arrives(db, framework, tmp_path, "P81001", "a", None, margaret)
    _arrives(db, framework, tmp_path, "P81002", "b", None, margaret)
    r = _records(db)
    _separated(db, r[("P81002", "b")], "two women? asked the review team")
    with db.session() as s:
        item = MatchReview(record_a=r[("P81001", "a")].id, record_b=r[("P81002", "b")].id, probability=0.99,
                           evidence={}, created_at=r[("P81001", "a")].updated_at, status="open")
        s.add(item)
        s.flush()
        item_id = item.id

    def reviewer() -> None:
        with db.session() as s:
            decide(s, item_id, "separate", by="reviewer1", reason="two women: different mothers' names")

    _while_relinking(db, monkeypatch, reviewer)
    r = _records(db)
    assert r[("P81001", "a")].person_id != r[("P81002", "b")].person_id
    with db.session() as s:
        assert s.get_one(MatchReview, item_id).status == "separate"


def test_an_ambulance_record_arriving_during_a_relink_is_in_the_one_person_holding_its_nhs_number(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anna's GP record (her NHS number) is a person of its own, her two hospital records (no number) another,
    which a relink joins. An ambulance record with her NHS number arrives meanwhile and links to her GP
    record's person: until 2026-12-07 the relink then moved the GP record away, leaving two persons with one
    NHS number, both linked, and nothing on the review list; the crew's record missed her GP's."""
    _arrives(db, framework, tmp_path, "P81001", "anna", ANNA_NHS, ANNA)
    _arrives(db, framework, tmp_path, "RXR", "anna", None, ANNA)
    _arrives(db, framework, tmp_path, "RYC", "anna", None, ANNA)
    _left_apart(db, _records(db)[("P81001", "anna")])

    _while_relinking(db, monkeypatch, lambda: _arrives(db, framework, tmp_path, "RYA", "anna", ANNA_NHS, ANNA))
    r = _records(db)
    assert len({r[(org, "anna")].person_id for org in ("P81001", "RXR", "RYC", "RYA")}) == 1
