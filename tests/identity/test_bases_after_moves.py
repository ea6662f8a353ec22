"""A point-of-care basis is given for one patient's record as it was: when the MPI moves records out of or
into the person it was given on, it ends, and the user is asked why they are opening the record again."""

from __future__ import annotations

from sqlalchemy import select, update
from tests.small_ics import Ics, without_nhs_number

from sharedcare.governance.access_log import details, search
from sharedcare.identity.links import merge_persons, separate, unmerge
from sharedcare.identity.mpi import relink
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


def _reads(ics: Ics, person: str, headers: dict[str, str]) -> int:
    return ics.client.get(f"/fhir/Patient/{person}/$everything", headers=headers).status_code


def _bases_ended(ics: Ics, person: str) -> list[dict[str, str]]:
    with _db(ics).session() as s:
        return [details(e) for e in search(s, patient_id=person)
                if e.action == "identity:mpi:link-change" and details(e).get("kind") == "bases-ended"]


def test_after_a_wrong_merge_is_undone_the_consent_given_on_the_merged_person_no_longer_opens_his_record(
        ics: Ics) -> None:
    """Mrs Hughes' record wrongly merged into Mr Okafor's person; she consents to the paramedic, who opens the
    merged record. Once the merge is undone, her consent must not open Mr Okafor's record."""
    with _db(ics).session() as s:
        without_nhs_number(s, ics.stranger)  # a temporary resident's record: no number to keep them apart
        merge = merge_persons(s, ics.okafor, ics.stranger, by="mpi.operator", reason="wrongly thought one person")
        s.commit()
    paramedic = ics.open_record("para.evans")
    assert "Allergy to penicillin" in ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything",
                                                     headers=paramedic).text
    with _db(ics).session() as s:
        unmerge(s, merge.id, by="mpi.operator", reason="two people")
        s.commit()

    refused = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=paramedic)
    assert refused.status_code == 403 and "record why you are opening this record" in refused.text
    (ended,) = _bases_ended(ics, ics.okafor)
    assert "para.evans (explicit-consent)" in ended["bases"] and "the unmerge" in ended["reason"]
    assert _bases_ended(ics, ics.stranger) == []  # no basis was given on her own person id
    ics.open_record("para.evans")  # asked again, the paramedic may give one
    assert _reads(ics, ics.okafor, paramedic) == 200


def test_a_separation_ends_the_bases_on_the_person_it_took_a_record_from_and_no_others(ics: Ics) -> None:
    paramedic = ics.open_record("para.evans")
    doctor = ics.open_record("dr.oconnor", person=ics.stranger)
    with _db(ics).session() as s:
        mental = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "RXM-4")).one()
        separate(s, mental.id, by="mpi.operator", reason="a different person")
        s.commit()
    assert _reads(ics, ics.okafor, paramedic) == 403
    assert [e["bases"].split(" ", 1)[1] for e in _bases_ended(ics, ics.okafor)] == ["para.evans (explicit-consent)"]
    assert _reads(ics, ics.stranger, doctor) == 200  # Mrs Hughes' record did not move


def test_a_relink_that_parts_a_wrongly_merged_person_ends_the_basis_given_while_they_were_one(ics: Ics) -> None:
    with _db(ics).session() as s:
        without_nhs_number(s, ics.stranger)
        merge_persons(s, ics.okafor, ics.stranger, by="mpi.operator", reason="wrongly thought one person")
        s.execute(update(PatientRecord).where(PatientRecord.source_id == "gp-other").values(nhs_number="9990000018"))
        s.commit()
    paramedic = ics.open_record("para.evans")
    with _db(ics).session() as s:
        relink(s, by="mpi.operator")
        s.commit()
        assert s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id == "gp-other")).one() \
            == ics.stranger
    assert _reads(ics, ics.okafor, paramedic) == 403
    (ended,) = _bases_ended(ics, ics.okafor)
    assert "the relink" in ended["reason"]
