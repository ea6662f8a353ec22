"""A patient's choices keep applying when a source corrects or removes the NHS number on its record (privacy
review of 2026-12-07). Choices are held against NHS numbers and read through the numbers a person's records
carry, so a correction left an opt-out behind: the next extract held the person again, and under an objection
to all sharing a hospital clinician was served the GP practice's diagnosis, while the patient's pages still
showed the choice as made. Now the choices held against the old number are carried to the new one (audited as
the source's correction), a record sent without a number keeps the one it carried last, and a choice left held
against a number no record carries is put to the IG officer.

Also (F2): a newborn's hospital record held apart by the MPI as an uncertain match to her GP record is a person
of its own; an extract now applies the choices of the person on the other side of the pair to it too."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from tests.builders import bundle, condition, patient, write_ndjson
from tests.export.conftest import export
from tests.identity.test_journeys import _ingest
from tests.identity.test_reprepare import HOSPITAL, _as_stored_before, _reprepare
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.clock import utcnow
from sharedcare.governance.access_log import details
from sharedcare.governance.consent import set_choice
from sharedcare.governance.framework import Framework
from sharedcare.governance.review import queue
from sharedcare.governance.workspace import CitizenWorkspace
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, MatchReview, PatientRecord

DIABETES = "44054006"  # held only by his GP practice's (P81001) feed
NEW_NHS = "9434765900"  # valid (modulus 11): the number his sources correct his records to
# each source's record of Mr Okafor: (organisation, system, its Patient's id)
SOURCES = (("P81001", "emis", "gp-okafor"), ("RXR", "epr", "MRN1"), ("RYC", "rio", "RYC-9"), ("RXM", "rio", "RXM-4"))


def _corrects(db: Database, fw: Framework, folder: Path, sources: tuple[tuple[str, str, str], ...],
              number: str | None) -> None:
    """These sources send Mr Okafor's Patient again, a month on, with `number` (None: with no NHS number)."""
    for org, system, pid in sources:
        sent = bundle(org, system, [patient(pid, number, "Okafor", "Emeka", "1945-03-02")],
                      timestamp="2026-12-01T09:00:00Z")
        report = Pipeline(db, fw).ingest_paths([write_ndjson(folder / f"{org}-{number}.ndjson", [sent])])
        assert report.quarantined == 0, report.quarantine


def _person_of(db: Database, source_id: str) -> str:
    with db.session() as s:
        person: str = s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id == source_id)).one()
    return person


def _exported_codes(ics: Ics) -> set[str]:
    _, files = export(ics.client, ics.token("analyst.chen"))
    return {c["code"]["coding"][0]["code"] for c in files.get("Condition", [])}


def _left_behind(db: Database, fw: Framework) -> list[str]:
    with db.session() as s:
        return [item.reason for item in queue(s, fw, utcnow()) if item.kind == "choices-left-behind"]


def test_his_opt_out_still_keeps_him_out_after_his_practice_corrects_his_nhs_number(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=True)
    assert DIABETES not in _exported_codes(ics)
    _corrects(db, framework, tmp_path, SOURCES[:1], NEW_NHS)
    gp_person = _person_of(db, "gp-okafor")
    assert gp_person != ics.okafor  # his other records still carry the old number: the MPI holds them apart
    assert DIABETES not in _exported_codes(ics), "his GP record exported after the practice corrected his number"
    with db.session() as s:  # his pages show the choice held against the number his GP record carries now
        assert CitizenWorkspace(s, framework, gp_person).choices().opt_out_secondary
        [carried] = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:preference:set",
                                                       AuditEntry.username == "P81001:nhs-number-correction")).all()
    said = details(carried)
    assert carried.patient_id == gp_person and said["nhs_number_suffix"] == NEW_NHS[-4:]
    assert said["choices"] == "opt-out-secondary"
    assert f"carried from NHS number ending {OKAFOR_NHS[-4:]}" in said["reason"]
    assert _left_behind(db, framework) == []  # his other records still carry the old number


def test_once_every_source_corrected_it_the_ig_officer_is_told_and_he_can_still_opt_back_in(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=True)
    _corrects(db, framework, tmp_path, SOURCES, NEW_NHS)
    person = _person_of(db, "gp-okafor")
    assert DIABETES not in _exported_codes(ics)
    [said] = _left_behind(db, framework)  # once, when the last record left the number
    assert f"ending {OKAFOR_NHS[-4:]}" in said and "no record carries" in said and f"ending {NEW_NHS[-4:]}" in said
    with db.session() as s:  # the choice is his, under his number now: he can change it
        workspace = CitizenWorkspace(s, framework, person)
        assert workspace.nhs_numbers() == [NEW_NHS] and workspace.choices().opt_out_secondary
        workspace.set_choice("opt-in-secondary")
        s.commit()
    assert DIABETES in _exported_codes(ics)


def test_a_record_sent_without_a_number_keeps_his_choices_through_the_one_it_carried_last(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=True)
    _corrects(db, framework, tmp_path, SOURCES, None)
    person = _person_of(db, "gp-okafor")
    with db.session() as s:
        assert s.scalars(select(PatientRecord.nhs_number).where(PatientRecord.person_id == person)).all() == [None] * 4
    assert DIABETES not in _exported_codes(ics), "exported once his sources sent no NHS number"
    [said] = _left_behind(db, framework)
    assert "carries no NHS number now" in said and "do not clear them" in said
    with db.session() as s:  # his pages show the choice, and he can change it
        workspace = CitizenWorkspace(s, framework, person)
        assert workspace.nhs_numbers() == [OKAFOR_NHS] and workspace.choices().opt_out_secondary
    _corrects(db, framework, tmp_path, SOURCES[:1], NEW_NHS)  # the practice sends a number again
    assert DIABETES not in _exported_codes(ics)


def _conditions_for_oconnor(ics: Ics, person: str) -> set[str]:
    headers = ics.open_record("dr.oconnor", person)
    served = ics.client.get(f"/fhir/Condition?patient={person}", headers=headers)
    assert served.status_code == 200, served.text
    return {e["resource"]["code"]["coding"][0]["code"] for e in served.json().get("entry", [])
            if e["resource"]["resourceType"] == "Condition"}


def test_his_objection_to_all_sharing_still_hides_his_gp_record_from_the_hospital_after_the_correction(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    assert DIABETES in _conditions_for_oconnor(ics, ics.okafor)  # served before he objects
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", object_all=True)
    assert DIABETES not in _conditions_for_oconnor(ics, ics.okafor)
    _corrects(db, framework, tmp_path, SOURCES, NEW_NHS)
    person = _person_of(db, "MRN1")
    assert DIABETES not in _conditions_for_oconnor(ics, person), "the GP's diagnosis served despite his objection"


def test_his_objection_still_applies_when_his_sources_send_no_number(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    assert DIABETES in _conditions_for_oconnor(ics, ics.okafor)  # served before he objects
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", object_all=True)
    _corrects(db, framework, tmp_path, SOURCES, None)
    assert DIABETES not in _conditions_for_oconnor(ics, _person_of(db, "MRN1"))


def test_his_objection_held_against_a_number_stored_in_full_width_digits_follows_the_number_reprepared(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier release stored a hospital's full-width NHS number as typed, and his choices were recorded
    against the number as stored; `sharedcare mpi reprepare` rewrites it in ASCII digits."""
    _ingest(db, framework, tmp_path / "f.ndjson", (HOSPITAL, patient("h-emeka", NEW_NHS, "Okafor", "Emeka",
                                                                     "1945-03-02", "male")))
    typed = "".join(chr(ord(d) + 0xFEE0) for d in NEW_NHS)
    _as_stored_before(db, "h-emeka", nhs_number=typed)
    person = _person_of(db, "h-emeka")
    with db.session() as s:
        assert CitizenWorkspace(s, framework, person).nhs_numbers() == [typed]
        CitizenWorkspace(s, framework, person).set_choice("object-all")
        s.commit()
    _reprepare(db, monkeypatch)
    with db.session() as s:
        workspace = CitizenWorkspace(s, framework, person)
        assert workspace.nhs_numbers() == [NEW_NHS] and workspace.choices().object_all
    [said] = _left_behind(db, framework)
    assert "object-all" in said


BABY_NHS = "9990000026"  # valid (modulus 11): the baby's NHS number
BIRTH_CONDITION = "387712008"  # recorded by the hospital on the birth record only


def test_a_babys_birth_record_held_for_review_is_left_out_with_her_opt_out(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """The maternity unit's record of a baby before naming (no NHS number) and her GP record: the MPI is unsure
    they are one baby (a twin's record would match either), so holds them apart, one pair open for review."""
    phone = [{"system": "phone", "value": "07700 900456"}]
    feeds = [bundle("RXR", "epr", [patient("baby", None, "Rowe", "Baby", "2026-10-16", "female", telecom=phone),
                                   condition("baby-c1", "Patient/baby", BIRTH_CONDITION, "Neonatal jaundice")]),
             bundle("P81001", "emis", [patient("ada", BABY_NHS, "Rowe", "Ada", "2026-10-16", "female", telecom=phone)])]
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "baby.ndjson", feeds)])
    assert report.quarantined == 0, report.quarantine
    assert _person_of(db, "baby") != _person_of(db, "ada")
    with db.session() as s:
        assert s.scalars(select(MatchReview.status)).all() == ["open"]
    assert BIRTH_CONDITION in _exported_codes(ics)  # exported before the opt-out
    with db.session() as s:
        set_choice(s, BABY_NHS, by="patient", opt_out_secondary=True)
    assert BIRTH_CONDITION not in _exported_codes(ics), "her birth record exported after her parent opted her out"
    assert DIABETES in _exported_codes(ics)  # no one else is left out
