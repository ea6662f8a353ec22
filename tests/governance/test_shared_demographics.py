"""Whose address, telephone and next of kin a clinician is shown for a person (combined_patient's rule), in
the record, the patient search and the IG queue, when practices compete for the person's registration or a
practice made its record for itself.

Mrs Hughes is registered at Castle Street Surgery (P81002), which holds her current address. Riverside
Medical Centre (P81001) is where she was registered before: its feed still sends her old record, inactive.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.builders import bundle, downgrade_store, patient, write_ndjson
from tests.small_ics import Ics

from sharedcare.api.auth import mint_token
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.fhir.uk_core import ODS_SYSTEM
from sharedcare.governance.consent import set_choice
from sharedcare.governance.framework import Framework
from sharedcare.governance.review import QueueItem, queue, record_outcome
from sharedcare.identity.links import merge_persons, separate
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, ReviewItem

HUGHES_NHS = "9990000018"
CASTLE = {"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": "P81002"},
          "display": "Castle Street Surgery"}
RIVERSIDE = {"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": "P81001"},
             "display": "Riverside Medical Centre"}
MALLORY = [{"relationship": [{"text": "Son"}], "name": {"family": "Mallory", "given": ["Eve"]},
            "telecom": [{"system": "phone", "value": "07700 900666"}]}]


def _hughes(pid: str, **extra: object) -> dict:
    return patient(pid, HUGHES_NHS, "Hughes", "Margaret", "1952-06-11", gender="female", **extra)


def _feed(db: Database, framework: Framework, tmp_path: Path, org: str, system: str, resource: dict,
          at: str) -> None:
    path = write_ndjson(tmp_path / f"{org}-{resource['id']}-{at[:10]}.ndjson", [bundle(org, system, [resource], at)])
    report = Pipeline(db, framework).ingest_paths([path])
    assert report.quarantined == 0 and report.accepted == 1, report.quarantine


def _write(ics: Ics, username: str, resource: dict) -> None:
    """A practice user writes a Patient over the FHIR API (PUT by the source's id)."""
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {mint_token(load_settings(), fw, username, 'user/*.read user/*.write')}",
               "Content-Type": "application/fhir+json"}
    written = ics.client.put(f"/fhir/Patient/{resource['id']}", headers=headers, content=json.dumps(resource))
    assert written.status_code in (200, 201), written.text


def _shown(ics: Ics, person: str, username: str = "dr.oconnor") -> dict:
    """The person's Patient as a hospital clinician reads it."""
    headers = ics.open_record(username, person=person)
    response = ics.client.get(f"/fhir/Patient/{person}", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _postcode(resource: dict) -> str:
    return str(resource["address"][0]["postalCode"])


def _found_postcode(ics: Ics, username: str = "dr.oconnor") -> str:
    """The postcode the patient search shows a hospital clinician for Mrs Hughes."""
    found = ics.client.post("/fhir/Patient/_search", data={"identifier": HUGHES_NHS},
                            headers=ics.token(username)).json()
    (entry,) = found["entry"]
    return _postcode(entry["resource"])


def _open_items(db: Database, framework: Framework) -> list[QueueItem]:
    with db.session() as s:
        return queue(s, framework, utcnow())


@pytest.fixture
def registered(ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> Ics:
    """Castle Street's record names it as her GP; Riverside's, later, says she has left (inactive)."""
    _feed(db, framework, tmp_path, "P81002", "systmone",
          _hughes("gp-other", active=True, generalPractitioner=[CASTLE], postcode="RV2 4NW",
                  contact=[{"relationship": [{"text": "Daughter"}], "name": {"family": "Hughes", "given": ["Ann"]}}]),
          "2026-11-10T09:00:00Z")
    _feed(db, framework, tmp_path, "P81001", "emis",
          _hughes("rv-hughes", active=False, generalPractitioner=[RIVERSIDE], postcode="RV9 9QD"),
          "2026-11-20T09:00:00Z")
    assert _postcode(_shown(ics, ics.stranger)) == "RV2 4NW"
    return ics


# -- 1. two practices claiming the registration --------------------------------------------------------------
def test_a_practice_she_left_cannot_take_her_registration_back_by_sending_her_record_active(
        registered: Ics, db: Database, framework: Framework) -> None:
    """Riverside still holds her old record, so its write is not a new source record; sent active and naming
    itself as her GP, it used to tie with Castle Street's claim and win as the newer: a hospital clinician got
    Riverside's address and next of kin. A new claim competing with an existing one is not trusted until IG
    has reviewed it; the IG officer sees why, and the clinician sees whose details these are."""
    ics = registered
    _write(ics, "dr.patel", _hughes("rv-hughes", active=True, generalPractitioner=[RIVERSIDE], postcode="ZZ9 9ZZ",
                                    contact=MALLORY))
    shown = _shown(ics, ics.stranger)
    assert _postcode(shown) == "RV2 4NW" and "Mallory" not in json.dumps(shown)
    assert shown["contact"][0]["name"]["given"] == ["Ann"]
    assert _found_postcode(ics) == "RV2 4NW"  # the search shows who the record will show

    (item,) = _open_items(db, framework)
    assert (item.kind, item.username, item.patient_id) == ("registration-conflict", "dr.patel", ics.stranger)
    assert "Riverside Medical Centre (P81001) says this patient is registered with it" in item.reason
    assert "Castle Street Surgery (P81002) already says so" in item.reason

    ics.client.post("/login", data={"username": "dr.oconnor", "password": "demo"})
    page = ics.client.get(f"/record/{ics.stranger}").text
    assert "Contact details from" in page
    assert "Castle Street Surgery (P81002), the GP practice the patient is registered with" in page
    assert "Riverside Medical Centre (P81001) also says this patient is registered with it" in page
    assert "ZZ9 9ZZ" not in page and "Mallory" not in page

    ics.client.post("/login", data={"username": "ig.morgan", "password": "demo"})
    queue_page = ics.client.get("/ig").text
    assert "Competing GP registration" in queue_page and "HUGHES, Margaret" in queue_page


def test_once_ig_finds_the_move_genuine_the_new_practices_details_are_shown(
        registered: Ics, db: Database, framework: Framework) -> None:
    ics = registered
    _write(ics, "dr.patel", _hughes("rv-hughes", active=True, generalPractitioner=[RIVERSIDE], postcode="RV3 7QT"))
    (item,) = _open_items(db, framework)
    with db.session() as s:
        record_outcome(s, item.id, "appropriate", by="ig.morgan", note="re-registered at Riverside on 1 December")
    assert _postcode(_shown(ics, ics.stranger)) == "RV3 7QT"
    assert _found_postcode(ics) == "RV3 7QT"


def test_under_investigation_the_new_claim_is_still_not_used(
        registered: Ics, db: Database, framework: Framework) -> None:
    ics = registered
    _write(ics, "dr.patel", _hughes("rv-hughes", active=True, generalPractitioner=[RIVERSIDE], postcode="ZZ9 9ZZ"))
    (item,) = _open_items(db, framework)
    with db.session() as s:
        record_outcome(s, item.id, "investigate", by="ig.morgan", note="no registration found")
    assert _postcode(_shown(ics, ics.stranger)) == "RV2 4NW"


def test_when_the_old_practice_lets_her_go_the_only_claim_left_is_used_without_review(
        registered: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """A real move: Riverside registers her again and Castle Street's feed then sends its record inactive."""
    ics = registered
    _feed(db, framework, tmp_path, "P81001", "emis",
          _hughes("rv-hughes", active=True, generalPractitioner=[RIVERSIDE], postcode="RV3 7QT"),
          "2026-12-01T09:00:00Z")
    (item,) = _open_items(db, framework)  # a feed's claim competes like a write's
    assert (item.kind, item.username) == ("registration-conflict", "P81001:emis")
    assert _postcode(_shown(ics, ics.stranger)) == "RV2 4NW"
    _feed(db, framework, tmp_path, "P81002", "systmone",
          _hughes("gp-other", active=False, generalPractitioner=[CASTLE], postcode="RV2 4NW"), "2026-12-02T09:00:00Z")
    assert _postcode(_shown(ics, ics.stranger)) == "RV3 7QT"


def test_a_practice_updating_its_own_registered_patient_queues_nothing(
        registered: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    _feed(db, framework, tmp_path, "P81002", "systmone",
          _hughes("gp-other", active=True, generalPractitioner=[CASTLE], postcode="RV2 5AA"), "2026-12-01T09:00:00Z")
    assert _open_items(db, framework) == []
    assert _postcode(_shown(registered, registered.stranger)) == "RV2 5AA"


def test_the_page_does_not_name_a_competing_practice_whose_data_the_patient_withholds(
        registered: Ics, db: Database, framework: Framework) -> None:
    """Naming Riverside would tell the reader that a practice she objected to holds a record of her."""
    ics = registered
    _write(ics, "dr.patel", _hughes("rv-hughes", active=True, generalPractitioner=[RIVERSIDE], postcode="ZZ9 9ZZ"))
    with db.session() as s:
        set_choice(s, HUGHES_NHS, by="patient", object_org="P81001")
    ics.client.post("/login", data={"username": "dr.oconnor", "password": "demo"})
    page = ics.client.get(f"/record/{ics.stranger}").text
    assert "Castle Street Surgery (P81002), the GP practice the patient is registered with" in page
    assert "Riverside Medical Centre" not in page and "Registration not agreed" not in page


# -- 2. the search shows the record the record page will show ------------------------------------------------
def test_the_search_does_not_show_a_self_made_records_name_and_postcode(ics: Ics) -> None:
    """Riverside never held Mrs Hughes; its user writes a Patient for her, the newest record. The search
    results showed its postcode (the newest record's) where the record shows Castle Street's."""
    _write(ics, "dr.patel", _hughes("made-up", postcode="ZZ9 9ZZ"))
    assert _found_postcode(ics) == "RV1 2AB" == _postcode(_shown(ics, ics.stranger))


# -- 3. a review item about a source record follows it through the MPI ---------------------------------------
def test_a_self_made_record_stays_held_back_when_the_mpi_moves_it_to_another_person(
        ics: Ics, db: Database, framework: Framework) -> None:
    """An MPI reviewer separates Castle Street's record of Mrs Hughes from the person the self-made record is
    linked to, then links them again the other way. The review item used to stay on the old person id: the
    self-made record then counted as Riverside's care relationship and gave her shared demographics."""
    _write(ics, "dr.patel", _hughes("made-up", postcode="ZZ9 9ZZ"))
    with db.session() as s:
        castle = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "gp-other")).one()
        moved_to = separate(s, castle.id, by="mpi.reviewer", reason="thought to be two people").moves[0].to_person
        merge_persons(s, keep=moved_to, absorb=ics.stranger, by="mpi.reviewer", reason="the same person after all")
    (item,) = _open_items(db, framework)
    assert (item.kind, item.patient_id) == ("new-source-record", moved_to)
    assert _postcode(_shown(ics, moved_to)) == "RV1 2AB"
    ics.open_record("dr.patel", person=moved_to)
    with db.session() as s:
        kinds = set(s.scalars(select(ReviewItem.kind).where(ReviewItem.person_id == moved_to)))
    assert kinds == {"no-relationship"}, "the self-made record counted as a care relationship after the merge"


def test_migration_0015_gives_items_queued_before_it_the_writers_record(
        ics: Ics, db: Database, framework: Framework) -> None:
    _write(ics, "dr.patel", _hughes("made-up", postcode="ZZ9 9ZZ"))
    downgrade_store(db, "0014")
    db.migrate()
    with db.session() as s:
        item = s.scalars(select(ReviewItem)).one()
        record = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "made-up")).one()
        assert item.patient_record_id == record.id


def test_a_competing_claim_is_found_when_both_practices_records_come_in_one_file(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Ingest stores a file's messages together (one INSERT for a run of them): the second practice's claim
    must still see the first's, sent earlier in the same file."""
    path = write_ndjson(tmp_path / "both.ndjson", [
        bundle("P81001", "emis", [_hughes("rv-new", active=True, generalPractitioner=[RIVERSIDE],
                                          postcode="RV3 7QT")], "2026-11-10T09:00:00Z"),
        bundle("P81003", "emis", [_hughes("hb-new", active=True,
                                          generalPractitioner=[{"type": "Organization", "identifier": {
                                              "system": ODS_SYSTEM, "value": "P81003"}}],
                                          postcode="RV4 1AA")], "2026-11-20T09:00:00Z")])
    report = Pipeline(db, framework).ingest_paths([path])
    assert report.quarantined == 0, report.quarantine
    kinds = [(i.kind, i.patient_id) for i in _open_items(db, framework)]
    assert ("registration-conflict", ics.stranger) in kinds


def test_a_merge_that_joins_two_practices_claims_queues_the_moved_claim(
        registered: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Riverside's record of Mrs Hughes, held apart as another person, claims her registration (its own
    person had no other claim, so nothing was queued). An MPI reviewer then merges the two persons. The
    merge used to queue nothing: Riverside's newer claim tied with Castle Street's and won, and a clinician
    got Riverside's address and next of kin, with no IG officer told. Now the moved claim is a competing
    one like any other, until IG finds it appropriate."""
    ics = registered
    with db.session() as s:
        riverside = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "rv-hughes")).one()
        apart = separate(s, riverside.id, by="mpi.reviewer", reason="thought to be two people").moves[0].to_person
    _feed(db, framework, tmp_path, "P81001", "emis",
          _hughes("rv-hughes", active=True, generalPractitioner=[RIVERSIDE], postcode="ZZ9 9ZZ", contact=MALLORY),
          "2026-11-25T09:00:00Z")
    with db.session() as s:
        assert s.get_one(PatientRecord, riverside.id).person_id == apart
    assert _open_items(db, framework) == []

    with db.session() as s:
        merge_persons(s, keep=ics.stranger, absorb=apart, by="mpi.reviewer", reason="the same person after all")
    (item,) = _open_items(db, framework)
    assert (item.kind, item.username, item.patient_id) == ("registration-conflict", "mpi.reviewer", ics.stranger)
    assert "P81001 says this patient is registered with it, but P81002 already says so" in item.reason
    shown = _shown(ics, ics.stranger)
    assert _postcode(shown) == "RV2 4NW" and "Mallory" not in json.dumps(shown)

    with db.session() as s:
        record_outcome(s, item.id, "appropriate", by="ig.morgan", note="she moved to Riverside")
    assert _postcode(_shown(ics, ics.stranger)) == "ZZ9 9ZZ"


def test_a_source_merging_two_of_its_own_records_queues_nothing(
        registered: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Castle Street merging its own duplicate (both claims its own) is not a competing claim."""
    ics = registered
    _feed(db, framework, tmp_path, "P81002", "systmone",
          _hughes("gp-dup", active=True, generalPractitioner=[CASTLE], postcode="RV2 4NW"), "2026-11-26T09:00:00Z")
    with db.session() as s:
        dup = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "gp-dup")).one()
        assert dup.person_id == ics.stranger  # linked on her NHS number; held apart, then merged back
        apart = separate(s, dup.id, by="mpi.reviewer", reason="test: apart first").moves[0].to_person
        merge_persons(s, keep=ics.stranger, absorb=apart, by="mpi.reviewer", reason="duplicate registration")
    assert [i.kind for i in _open_items(db, framework)] == []
