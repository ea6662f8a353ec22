"""A citizen's "who looked at my record" is whole: every look by someone else, a page at a time, however
many times they looked themselves, and still theirs after the MPI moved their records between persons
(a merge, an unmerge, a separation, a relink)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.builders import bundle, condition, patient, write_ndjson
from tests.portal.test_patient_portal import _sign_in as _patient_sign_in
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.api.auth import mint_token
from sharedcare.api.deps import SESSION_COOKIE
from sharedcare.config import load_settings
from sharedcare.governance.access_log import JOINED_LOOK, REASON_ABOUT_ANOTHER, accesses_of, search
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.framework import Framework
from sharedcare.governance.workspace import CitizenWorkspace
from sharedcare.identity.links import merge_persons, separate, unmerge
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import LinkEvent, PatientRecord, Person, Resource


def _reads(db: Database, person_id: str, username: str, count: int) -> None:
    with db.session() as s:
        for _ in range(count):
            record_audit(s, AuditRecord(AuditAction.RECORD_READ, "permit", username, patient_id=person_id))


def _everyone_else(db: Database, framework: Framework, person_id: str) -> list[str]:
    """Every line of the citizen's log, following the pages to the end."""
    lines, before = [], None
    with db.session() as s:
        while True:
            page = CitizenWorkspace(s, framework, person_id).accesses(before)
            lines += [a.username or a.who for a in page.accesses]  # "Someone": a look while joined
            if page.older is None:
                return lines
            before = page.older


def test_the_citizens_own_reads_never_crowd_others_out_of_the_log(ics: Ics, db: Database,
                                                                  framework: Framework) -> None:
    _reads(db, ics.okafor, "para.evans", 3)
    _reads(db, ics.okafor, f"patient:{ics.okafor}", 520)  # the citizen checking their record, often
    assert _everyone_else(db, framework, ics.okafor) == ["para.evans"] * 3


def test_a_long_log_comes_a_page_at_a_time_newest_first_with_nothing_lost_or_repeated(
        ics: Ics, db: Database, framework: Framework) -> None:
    _reads(db, ics.okafor, "dr.patel", 120)
    _reads(db, ics.okafor, "dn.williams", 130)
    lines = _everyone_else(db, framework, ics.okafor)
    assert lines == ["dn.williams"] * 130 + ["dr.patel"] * 120
    with db.session() as s:
        first = accesses_of(s, framework, ics.okafor)
        assert len(first.accesses) == 100 and first.older is not None
        assert [a.when for a in first.accesses] == sorted((a.when for a in first.accesses), reverse=True)


def _community_record(db: Database) -> int:
    with db.session() as s:
        return s.scalars(select(PatientRecord.id).where(PatientRecord.source_id == "RYC-9")).one()


def _left_apart(db: Database, record_id: int) -> str:
    """Put the record in a person of its own, as matching may leave one that a relink then joins (an operator's
    separation would hold: `links.separations`); the new person's id."""
    with db.session() as s:
        person = Person(id=str(uuid.uuid4()))
        s.add(person)
        s.flush()
        s.get_one(PatientRecord, record_id).person_id = person.id
        return person.id


def _number_corrected(db: Database, record_id: int, nhs_number: str = "9990000026") -> None:
    """The record's source corrects the NHS number it carried in error to its patient's own, so that they can
    sign in to the patient portal (a number two persons' records carry signs in neither)."""
    with db.session() as s:
        s.get_one(PatientRecord, record_id).nhs_number = nhs_number


def _person_of(db: Database, record_id: int) -> str:
    with db.session() as s:
        return s.get_one(PatientRecord, record_id).person_id


def test_looks_at_a_record_stay_in_its_owners_log_through_a_merge_and_its_undoing(
        ics: Ics, db: Database, framework: Framework) -> None:
    record = _community_record(db)
    _reads(db, ics.okafor, "dr.patel", 1)  # the GP reads Mr Okafor's record, the community record in it
    with db.session() as s:
        separate(s, record, by="test", reason="community record held apart")  # as if never linked
    apart = _person_of(db, record)
    _reads(db, apart, "dn.williams", 2)  # the district nurse reads the community record alone
    # the GP's read was of Mr Okafor's record joined to the community record: who read it is not shown
    assert _everyone_else(db, framework, ics.okafor) == ["Someone"]

    with db.session() as s:
        merged = merge_persons(s, ics.okafor, apart, by="test", reason="one person")
    assert _person_of(db, record) == ics.okafor
    _reads(db, ics.okafor, "para.evans", 1)  # a read of the merged record: every source record was in it
    assert sorted(_everyone_else(db, framework, ics.okafor)) == ["dn.williams", "dn.williams", "dr.patel",
                                                                  "para.evans"]

    with db.session() as s:
        unmerge(s, merged.id, by="test")
    assert _person_of(db, record) == apart
    # The community record's owner sees the looks at it alone, and, generalised, the paramedic's look at the
    # whole (which included it) and the GP's look from before the separation, when it was part of Mr Okafor's.
    assert sorted(_everyone_else(db, framework, apart)) == ["Someone", "Someone", "dn.williams", "dn.williams"]
    # Mr Okafor's own records never left him: the looks at the community record alone were not at them, and
    # the looks at his record while it was joined to the community record are listed without who looked.
    assert sorted(_everyone_else(db, framework, ics.okafor)) == ["Someone", "Someone"]


def test_the_ig_officers_search_by_patient_finds_looks_made_before_a_merge(ics: Ics, db: Database) -> None:
    record = _community_record(db)
    with db.session() as s:
        separate(s, record, by="test", reason="held apart")
    apart = _person_of(db, record)
    _reads(db, apart, "dn.williams", 1)
    with db.session() as s:
        merge_persons(s, ics.okafor, apart, by="test", reason="one person")
    with db.session() as s:
        found = {(e.username, e.patient_id) for e in search(s, patient_id=ics.okafor)
                 if e.action == AuditAction.RECORD_READ}
        assert found == {("dn.williams", apart)}
        assert [e.username for e in search(s, patient_id=apart) if e.action == AuditAction.RECORD_READ] \
            == ["dn.williams"]  # the absorbed id still finds what was recorded under it


def test_every_move_is_kept_by_record_with_its_event(ics: Ics, db: Database) -> None:
    record = _community_record(db)
    with db.session() as s:
        separate(s, record, by="test", reason="held apart")
    apart = _person_of(db, record)
    with db.session() as s:
        merge_persons(s, ics.okafor, apart, by="test", reason="one person")
    with db.session() as s:
        events = s.scalars(select(LinkEvent).order_by(LinkEvent.id)).all()
        assert [(e.kind, [(m.patient_record_id, m.from_person, m.to_person) for m in e.moves]) for e in events] == [
            ("separate", [(record, ics.okafor, apart)]), ("merge", [(record, apart, ics.okafor)])]


def test_a_relink_that_moves_a_record_is_a_link_event_and_the_log_follows_it(
        ics: Ics, db: Database, framework: Framework) -> None:
    from sharedcare.identity.mpi import relink

    record = _community_record(db)
    apart = _left_apart(db, record)
    _reads(db, apart, "dn.williams", 1)
    with db.session() as s:
        report, _ = relink(s, by="operator")
    assert report.records_moved >= 1 and _person_of(db, record) == ics.okafor
    with db.session() as s:
        event = s.scalars(select(LinkEvent).where(LinkEvent.kind == "relink")).one()
        assert event.by == "operator" and (record, apart, ics.okafor) in [
            (m.patient_record_id, m.from_person, m.to_person) for m in event.moves]
    assert _everyone_else(db, framework, ics.okafor) == ["dn.williams"]


def test_a_record_separated_from_a_wrong_link_shows_only_looks_made_while_it_was_there(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """A hospice record carrying Mr Okafor's NHS number in error is linked to him, then separated by IG:
    its person sees the looks at Mr Okafor's record made while it was part of it, not those from before it
    arrived, and never the reasons written about Mr Okafor; the IG officer's search by that person agrees."""
    ics.open_record("dr.patel", basis="implied-consent", reason="Okafor phoned re his chest pain results", found=False)
    path = write_ndjson(tmp_path / "hospice.ndjson", [bundle("NHR", "epr", [
        patient("NHR-77", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        condition("nhr-c1", "Patient/NHR-77", "44054006", "Type 2 diabetes mellitus")])])
    assert Pipeline(db, framework).ingest_paths([path]).quarantined == 0
    with db.session() as s:
        hospice = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "NHR-77")).one()
        assert hospice.person_id == ics.okafor
        record = hospice.id
    ics.open_record("para.evans", reason="Okafor fell at home, ambulance crew on scene", found=False)
    with db.session() as s:
        separate(s, record, by="ig.morgan", reason="another person's record, NHS number keyed in error")
    other = _person_of(db, record)
    _number_corrected(db, record)  # else the number is two persons' and signs in neither

    ics.client.cookies.set(SESSION_COOKIE, ics.citizen_token(other))
    page = ics.client.get("/patient/accesses")
    ics.client.cookies.clear()
    assert page.status_code == 200
    # the paramedic's look while the hospice record was part of his: listed, but not who looked (it says
    # what care Mr Okafor had)
    assert "Carys Evans" not in page.text and "looked at your record while it was joined" in page.text
    assert "Dr Amara Patel" not in page.text  # the GP looked before the hospice record existed
    assert "Okafor" not in page.text  # no reason written about him
    assert "recorded while your record was joined to another person" in page.text

    ics.client.cookies.set(SESSION_COOKIE, mint_token(load_settings(), framework, "ig.morgan"))
    found = ics.client.post("/ig/audit", data={"patient": other})
    ics.client.cookies.clear()
    assert found.status_code == 200
    assert "para.evans" in found.text and "dr.patel" not in found.text
    # Mr Okafor's own log still has both looks: the GP's whole, the paramedic's (made while the hospice
    # record was joined to his: she may have been looking for its patient) without who or why.
    with db.session() as s:
        own = accesses_of(s, framework, ics.okafor).accesses
    assert sorted((a.who, a.reason) for a in own) == [
        ("Dr Amara Patel", "Okafor phoned re his chest pain results"), ("Someone", REASON_ABOUT_ANOTHER)]


def test_when_the_wrong_record_came_first_the_person_who_stays_does_not_see_looks_at_it(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """The other way round: a hospice record keyed with Mrs Adeyemi's NHS number in error arrives first and
    is looked at; her GP record then links to it; IG separates the hospice record. Her person id stays
    with her GP record, which never moved: she must not see the look made before it arrived."""
    nhs = "9434765927"

    def ingest(name: str, org: str, system: str, source_id: str) -> int:
        path = write_ndjson(tmp_path / f"{name}.ndjson", [bundle(org, system, [
            patient(source_id, nhs, "Adeyemi", "Grace", "1950-07-14", gender="female")])])
        assert Pipeline(db, framework).ingest_paths([path]).quarantined == 0
        with db.session() as s:
            return s.scalars(select(PatientRecord.id).where(PatientRecord.source_id == source_id)).one()

    hospice = ingest("hospice", "NHR", "epr", "NHR-12")
    person = _person_of(db, hospice)
    ics.open_record("hospice.ward", person=person, reason="admitted for respite care this week", found=False)
    gp = ingest("gp", "P81001", "emis", "gp-adeyemi")
    assert _person_of(db, gp) == person
    ics.open_record("dr.patel", person=person, reason="medication review before the clinic", found=False)
    with db.session() as s:
        separate(s, hospice, by="ig.morgan", reason="another person's record, NHS number keyed in error")
    assert _person_of(db, gp) == person
    assert _everyone_else(db, framework, person) == ["Someone"]  # her GP's look, at her record joined to it
    # the hospice record's person: the look at it alone whole, the GP's look at the joined record generalised
    assert sorted(_everyone_else(db, framework, _person_of(db, hospice))) == ["Someone", "hospice.ward"]


def _falsely_merged(ics: Ics, db: Database, keep_son: bool) -> tuple[str, str, str]:
    """Mr Okafor's community record turns out to be his son's; a false merge joins them again, a mental
    health clinician reads Mr Okafor's depression diagnosis by id, the son's care plan by id, and the whole
    joined record; the merge is undone. The son's person id, the diagnosis and the care plan."""
    record = _community_record(db)
    with db.session() as s:
        separate(s, record, by="test", reason="the community record is his son's")
    son = _person_of(db, record)
    with db.session() as s:
        depression = s.scalars(select(Resource.id).where(Resource.source_id == "rxm-c1")).one()
        plan = s.scalars(select(Resource.id).where(Resource.source_id == "ryc-cp1")).one()
        keep, absorb = (son, ics.okafor) if keep_son else (ics.okafor, son)
        merged = merge_persons(s, keep, absorb, by="test", reason="looked like one person")
    with db.session() as s:
        for action, resource in ((AuditAction.RESOURCE_READ, f"Condition/{depression}"),
                                 (AuditAction.RESOURCE_READ, f"CarePlan/{plan}"), (AuditAction.RECORD_READ, None)):
            record_audit(s, AuditRecord(action, "permit", "dr.singh", role="mental_health_clinician",
                                        organisation="RXM", patient_id=keep, resource=resource,
                                        released=[resource] if resource else [], reason="clinic follow-up"))
    with db.session() as s:
        unmerge(s, merged.id, by="test", reason="two people")
    return son, depression, plan


@pytest.mark.parametrize("keep_son", [False, True], ids=["merged-into-father", "merged-into-son"])
def test_after_a_false_merge_is_undone_nobody_learns_the_other_persons_care_from_who_looked(
        ics: Ics, db: Database, framework: Framework, keep_son: bool) -> None:
    """The son's "who looked" does not show that a mental health clinician read his father's diagnosis,
    nor who read the joined record; it shows the clinician's read of his own care plan (his data went to
    them), and that the joined record was looked at. Mr Okafor's own log keeps the read of his diagnosis."""
    son, _, _ = _falsely_merged(ics, db, keep_son)
    _number_corrected(db, _community_record(db))  # else the number is two persons' and signs in neither
    ics.client.cookies.set(SESSION_COOKIE, ics.citizen_token(son))
    page = ics.client.get("/patient/accesses")
    ics.client.cookies.clear()
    assert page.status_code == 200
    assert "problem or diagnosis" not in page.text
    with db.session() as s:
        lines = [(a.who, a.role, a.organisation, a.what, a.reason) for a in accesses_of(s, framework, son).accesses]
    singh = [line for line in lines if line[0] == "Dr Harjit Singh"]
    assert [line[3] for line in singh] == ["viewed a care plan in your record"]
    assert singh[0][4] != "clinic follow-up"  # written while joined: not shown
    joined = [line for line in lines if line[3] == "looked at your record while it was joined to another person's"]
    assert len(joined) == 1 and "Riverside" not in repr(joined) and "Mental health" not in repr(joined)
    with db.session() as s:
        father = [(a.who, a.what) for a in accesses_of(s, framework, ics.okafor).accesses]
    assert ("Dr Harjit Singh", "viewed a problem or diagnosis in your record") in father


@pytest.mark.parametrize("keep_son", [False, True], ids=["merged-into-father", "merged-into-son"])
def test_the_other_persons_portal_read_during_a_false_merge_is_in_the_sons_log(
        ics: Ics, db: Database, framework: Framework, keep_son: bool) -> None:
    """TRUST AU8: while a false merge joins the son's community record to his father's, Mr Okafor signs in to
    the patient portal and reads the joined record, the son's care plan in it. Made under the person id the
    son's record had then, it is no read of the son's own: after the unmerge his "who looked" lists it, as
    any look at the joined record (no name: whoever signed in then may have been either of them)."""
    record = _community_record(db)
    with db.session() as s:
        separate(s, record, by="test", reason="the community record is his son's")
    son = _person_of(db, record)
    with db.session() as s:
        keep, absorb = (son, ics.okafor) if keep_son else (ics.okafor, son)
        merged = merge_persons(s, keep, absorb, by="test", reason="looked like one person")
    _patient_sign_in(ics.client)  # Mr Okafor: NHS number, date of birth and the one-time code
    assert "Visits on Tuesdays" in ics.client.get("/patient/record").text  # the son's care plan
    ics.client.post("/logout", data={"target": "/patient"})
    with db.session() as s:
        unmerge(s, merged.id, by="test", reason="two people")
    with db.session() as s:
        son_told = [(a.who, a.what) for a in accesses_of(s, framework, son).accesses]
    assert son_told == [("Someone", JOINED_LOOK)]
