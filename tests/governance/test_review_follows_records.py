"""An access in the IG review queue names whose record was opened, even after the MPI moves records on.

An access is to the person as they were then; a merge, unmerge or separation since does not change
whose record it was. The queue shows whoever holds those records now (TRUST: an IG officer must be able
to tell whose record a break glass opened, and the patient must be findable from it)."""

from __future__ import annotations

from sqlalchemy import select
from tests.small_ics import Ics, without_nhs_number

from sharedcare.clock import utcnow
from sharedcare.governance.access_log import search
from sharedcare.governance.framework import Framework
from sharedcare.governance.review import QueueItem, queue, record_outcome
from sharedcare.identity.links import merge_persons, separate, unmerge
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord

REASON = "unconscious in resus, no history available"


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


def _item(ics: Ics, framework: Framework) -> QueueItem:
    with _db(ics).session() as s:
        (item,) = queue(s, framework, utcnow())
    return item


def test_after_a_merge_the_break_glass_names_the_person_who_holds_the_record_now(
        ics: Ics, framework: Framework) -> None:
    ics.open_record("dr.oconnor", basis="emergency", reason=REASON)
    with _db(ics).session() as s:
        without_nhs_number(s, ics.okafor)
        merge = merge_persons(s, ics.stranger, ics.okafor, by="mpi.admin", reason="test: one person")
        s.commit()
    item = _item(ics, framework)
    assert (item.patient_id, item.also_now) == (ics.stranger, ())  # not the emptied person id

    with _db(ics).session() as s:
        unmerge(s, merge.id, by="mpi.admin")
        s.commit()
    assert _item(ics, framework).patient_id == ics.okafor


def test_after_a_separation_the_item_names_both_people_who_hold_its_records(
        ics: Ics, framework: Framework) -> None:
    ics.open_record("dr.oconnor", basis="emergency", reason=REASON)
    with _db(ics).session() as s:
        mental = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "RXM-4")).one()
        moved_to = separate(s, mental.id, by="mpi.admin", reason="test: a different person").moves[0].to_person
        s.commit()
    item = _item(ics, framework)
    assert (item.patient_id, item.also_now) == (ics.okafor, (moved_to,))


def test_an_access_made_after_a_merge_is_about_the_merged_person(ics: Ics, framework: Framework) -> None:
    with _db(ics).session() as s:
        without_nhs_number(s, ics.okafor)
        merge_persons(s, ics.stranger, ics.okafor, by="mpi.admin", reason="test: one person")
        s.commit()
    ics.open_record("dr.oconnor", person=ics.stranger, basis="emergency", reason=REASON)
    assert _item(ics, framework).patient_id == ics.stranger


def test_the_outcome_is_audited_against_the_person_now_and_found_by_their_search(
        ics: Ics, framework: Framework) -> None:
    ics.open_record("dr.oconnor", basis="emergency", reason=REASON)
    with _db(ics).session() as s:
        without_nhs_number(s, ics.okafor)
        merge_persons(s, ics.stranger, ics.okafor, by="mpi.admin", reason="test: one person")
        record_outcome(s, _item(ics, framework).id, "appropriate", by="ig.morgan", note="resus notes agree")
        s.commit()
    with _db(ics).session() as s:
        outcome = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:review:outcome")).one()
        assert outcome.patient_id == ics.stranger
        found = {(e.username, e.action) for e in search(s, patient_id=ics.stranger)}
    assert ("dr.oconnor", "access:basis:record") in found  # the break glass itself, from before the merge


def test_the_ig_page_shows_the_name_of_the_person_whose_record_was_opened_after_a_merge(
        ics: Ics, framework: Framework) -> None:
    ics.open_record("dr.oconnor", basis="emergency", reason=REASON)
    with _db(ics).session() as s:
        without_nhs_number(s, ics.okafor)
        merge_persons(s, ics.stranger, ics.okafor, by="mpi.admin", reason="test: one person")
        s.commit()
    done = ics.client.post("/login", data={"username": "ig.morgan", "password": "demo", "target": "/ig"},
                           follow_redirects=False)
    assert done.status_code == 303
    page = ics.client.get("/ig").text
    assert "Name not available" not in page
    assert "NHS number 943 476 5919" in page or "NHS number 999 000 0018" in page
