"""Merge, unmerge and review decisions: reversible, audited, and never moving clinical data between
people."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update
from tests.builders import bundle, condition, patient, write_ndjson
from tests.conftest import FRAMEWORK_PATH
from tests.ingest.test_hl7v2 import GOOD_NHS, OTHER_NHS, admission, adt, pid, pv1, write_hl7
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.governance.access_log import search
from sharedcare.governance.framework import Framework
from sharedcare.identity.links import LinkError, decide, merge_persons, unmerge
from sharedcare.identity.mpi import relink
from sharedcare.ingest.mllp import MllpServer
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import LinkEvent, MatchReview, PatientRecord, Resource


def _people(db: Database) -> dict[str, str]:
    with db.session() as s:
        return {f"{r.source_org}/{r.source_id}": r.person_id for r in s.scalars(select(PatientRecord))}


def _clinical_of(db: Database, person: str) -> set[str]:
    with db.session() as s:
        linked = select(Resource.source_id).join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
        return set(s.scalars(linked.where(PatientRecord.person_id == person)))


def _two_strangers(db: Database, framework: Framework, tmp_path: Path) -> tuple[str, str]:
    feed = write_ndjson(tmp_path / "gp.ndjson", [
        bundle("P81001", "emis", [patient("a", None, "Hughes", "Margaret", "1952-06-11", gender="female"),
                                  condition("a-c", "Patient/a", "44054006", "Diabetes")]),
        bundle("P81002", "systmone", [patient("b", None, "Hughes", "Peggy", "1953-02-17", gender="female"),
                                      condition("b-c", "Patient/b", "195967001", "Asthma")])])
    Pipeline(db, framework).ingest_paths([feed])
    people = _people(db)
    return people["P81001/a"], people["P81002/b"]


def test_a_merge_is_undone_exactly_and_no_clinical_data_crosses(db: Database, framework: Framework,
                                                                  tmp_path: Path) -> None:
    first, second = _two_strangers(db, framework, tmp_path)
    before = {first: _clinical_of(db, first), second: _clinical_of(db, second)}
    with db.session() as s:
        event = merge_persons(s, first, second, by="mpi.reviewer", reason="same person: Peggy is Margaret")
    assert _clinical_of(db, first) == before[first] | before[second]
    with db.session() as s:
        unmerge(s, event.id, by="mpi.reviewer", reason="different people after all")
    assert {first: _clinical_of(db, first), second: _clinical_of(db, second)} == before
    assert _people(db) == {"P81001/a": first, "P81002/b": second}
    with db.session() as s:
        kinds = [e.event["entity"][-1]["detail"] for e in search(s, username="mpi.reviewer")]
    assert len(kinds) == 2
    with db.session() as s, pytest.raises(LinkError, match="already undone"):
        unmerge(s, event.id, by="mpi.reviewer")


def test_an_unmerge_sends_the_absorbed_persons_records_that_arrived_meanwhile_back_to_them(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    gps = write_ndjson(tmp_path / "gp.ndjson", [
        bundle("P81001", "emis", [patient("m", None, "Hughes", "Margaret", "1952-06-11", "female", "RV1 2AB")]),
        bundle("P81002", "systmone", [patient("p", None, "Hughes", "Patricia", "1955-02-17", "female", "RV4 4BB")])])
    Pipeline(db, framework).ingest_paths([gps])
    margaret, patricia = _people(db)["P81001/m"], _people(db)["P81002/p"]
    with db.session() as s:
        merge = merge_persons(s, margaret, patricia, by="mpi.operator", reason="wrongly thought one person").id
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "amb.ndjson", [bundle("RYA", "epcr", [
        patient("call-7", None, "Hughes", "Patricia", "1955-02-17", "female", "RV4 4BB")])]), write_hl7(
        tmp_path / "pas.hl7", [adt("A01", "PAS9", "20260201090000", pid(
            mrn="H300", nhs=OTHER_NHS, name="HUGHES^Patricia^^^Mrs", born="19550217", sex="F",
            address="4 Bank Street^^Riverside^^RV4 4BB^GBR^H"), pv1("V300", admitted="20260201090000"))])])
    assert _people(db)["RYA/call-7"] == _people(db)["RXR/H300"] == margaret  # linked through Patricia's record
    with db.session() as s:
        unmerge(s, merge, by="mpi.operator", reason="different people")
    people = _people(db)
    assert people["P81001/m"] == margaret
    assert people["P81002/p"] == people["RYA/call-7"] == people["RXR/H300"] == patricia


def test_an_a40_merges_the_hospitals_two_numbers_for_one_patient(db: Database, framework: Framework,
                                                                  tmp_path: Path) -> None:
    registrations = write_hl7(tmp_path / "pas-1.hl7", [
        admission("M1", mrn="H100", nhs=None),
        admission("M2", visit="V200", mrn="T555", nhs=None, born="19540302",
                  address="2 Old Road^^Dalesby^^DL21 4AB^GBR^H")])
    Pipeline(db, framework).ingest_paths([registrations])
    before = _people(db)
    assert before["RXR/H100"] != before["RXR/T555"]  # a second number, old address, mistyped birth year: not linked
    merge = write_hl7(tmp_path / "pas-2.hl7", [
        adt("A40", "M3", "20260112090000", pid(mrn="H100", nhs=None), "MRG|T555^^^RXR^MR")])
    report = Pipeline(db, framework).ingest_paths([merge])
    assert report.quarantined == 0, report.quarantine
    after = _people(db)
    assert after["RXR/H100"] == after["RXR/T555"] == before["RXR/H100"]


def test_an_a40_joining_two_valid_nhs_numbers_is_quarantined_and_merges_no_one(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A PAS clerk merges Mr Okafor's hospital record into Mrs Adeyemi's: their GP records must not follow."""
    gps = write_ndjson(tmp_path / "gp.ndjson", [
        bundle("P81001", "emis", [patient("okafor", GOOD_NHS, "Okafor", "Emeka", "1945-03-02", "male", "RV3 7QT"),
                                  condition("okc", "Patient/okafor", "44054006", "Diabetes")]),
        bundle("P81002", "systmone", [patient("adeyemi", OTHER_NHS, "Adeyemi", "Grace", "1980-05-12", "female",
                                              "RV9 9ZZ")])])
    adeyemi = pid(mrn="H200", nhs=OTHER_NHS, name="ADEYEMI^Grace^^^Mrs", born="19800512", sex="F",
                  address="2 Park Road^^Riverside^^RV9 9ZZ^GBR^H")
    Pipeline(db, framework).ingest_paths([gps, write_hl7(tmp_path / "pas-1.hl7", [
        admission("M1"), adt("A01", "M2", "20260110090000", adeyemi, pv1("V200", admitted="20260110090000"))])])
    before = _people(db)
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "pas-2.hl7", [
        adt("A40", "M4", "20260112100000", adeyemi, "MRG|H100^^^RXR^MR")])])
    assert report.quarantined == 1
    reason = report.quarantine[0]["reason"]  # what the PAS is answered: its own two records, no number's digits
    assert "'H100' and 'H200' carry different valid NHS numbers" in reason
    assert "5919" not in reason and "0018" not in reason
    assert _people(db) == before
    assert "okc" not in _clinical_of(db, before["P81002/adeyemi"])


def _ack(db: Database, framework: Framework, message: str) -> dict[str, list[str]]:
    """A message sent to the MLLP listener (`MllpServer.handle`, as a connection's worker runs it): its ACK's
    segments by name."""
    ack = MllpServer(Pipeline(db, framework)).handle(message.encode("latin-1"), "127.0.0.1:5000").decode("latin-1")
    return {segment.split("|")[0]: segment.split("|") for segment in ack.strip("\r").split("\r")}


def _records_of(db: Database, person: str) -> set[str]:
    with db.session() as s:
        return {f"{r.source_org}/{r.source_id}" for r in s.scalars(select(PatientRecord).where(
            PatientRecord.person_id == person))}


def _nowak_at_his_gp_and_mrs_adeyemi_at_hers_and_both_in_hospital(db: Database, framework: Framework,
                                                                 tmp_path: Path, nowak_nhs: str | None) -> None:
    """Mr Nowak's GP record (with his HIV diagnosis; his NHS number or none) and his hospital record H300 without
    a number, linked by his details; Mrs Adeyemi's GP record and her hospital record H200, by her number."""
    gps = write_ndjson(tmp_path / "gp.ndjson", [
        bundle("P81001", "emis", [patient("nowak", nowak_nhs, "Nowak", "Tomasz", "1961-04-04", "male", "RV3 7QT"),
                                  condition("nowak-hiv", "Patient/nowak", "86406008", "HIV infection")]),
        bundle("P81002", "systmone", [patient("adeyemi", OTHER_NHS, "Adeyemi", "Grace", "1980-05-12", "female",
                                              "RV9 9ZZ")])])
    Pipeline(db, framework).ingest_paths([gps, write_hl7(tmp_path / "pas-1.hl7", [
        admission("M1", mrn="H300", nhs=None, name="NOWAK^Tomasz^^^Mr", born="19610404"),
        adt("A01", "M2", "20260110090000", ADEYEMI, pv1("V200", admitted="20260110090000"))])])
    people = _people(db)
    assert people["RXR/H300"] == people["P81001/nowak"] != people["RXR/H200"] == people["P81002/adeyemi"]


ADEYEMI = pid(mrn="H200", nhs=OTHER_NHS, name="ADEYEMI^Grace^^^Mrs", born="19800512", sex="F",
              address="2 Park Road^^Riverside^^RV9 9ZZ^GBR^H")


def test_a_hospitals_merge_of_its_record_of_one_patient_into_anothers_never_shows_his_gp_record_in_hers(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Security review of 2026-12-07 (HIGH): a PAS merges Mr Nowak's hospital record (no NHS number, linked to
    his GP record by his details) into Mrs Adeyemi's. Before, his whole person moved into hers, his GP record
    and its HIV diagnosis with it. Now the A40 is stored and answered AA saying the merge waits for review,
    naming only the PAS's own two records, and an MPI reviewer sees the pair and why."""
    _nowak_at_his_gp_and_mrs_adeyemi_at_hers_and_both_in_hospital(db, framework, tmp_path, nowak_nhs=None)
    before = _people(db)

    ack = _ack(db, framework, adt("A40", "M4", "20260112100000", ADEYEMI, "MRG|H300^^^RXR^MR"))

    assert _people(db) == before
    assert "nowak-hiv" not in _clinical_of(db, before["P81002/adeyemi"])
    assert _records_of(db, before["RXR/H200"]) == {"RXR/H200", "P81002/adeyemi"}
    assert ack["MSA"][1] == "AA" and "ERR" not in ack
    assert "the merge of patient 'H300' into 'H200' is held for review (MPI review #" in ack["MSA"][3]
    assert not any(told in ack["MSA"][3] for told in ("Nowak", "NOWAK", "P81001", "nowak"))
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    shown = CliRunner().invoke(app, ["mpi", "review"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    assert "RXR/H300: NOWAK" in shown.output and "RXR/H200: ADEYEMI" in shown.output
    assert "source merge:" in shown.output and "holds records of P81001 too" in shown.output
    with db.session() as s:  # the reviewer: two people
        [item] = s.scalars(select(MatchReview))
        decide(s, item.id, "separate", by="mpi.reviewer", reason="Mr Nowak is not Mrs Adeyemi")
    assert _people(db) == before


def test_a_hospitals_held_merge_names_no_nhs_number_it_did_not_send(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """The same merge where Mr Nowak's GP sent his NHS number: before, the A40 was refused AE "NHS numbers
    ending 0018 and 5919", telling the PAS the end of a number it never sent for H300."""
    _nowak_at_his_gp_and_mrs_adeyemi_at_hers_and_both_in_hospital(db, framework, tmp_path, nowak_nhs=GOOD_NHS)
    before = _people(db)

    ack = _ack(db, framework, adt("A40", "M4", "20260112100000", ADEYEMI, "MRG|H300^^^RXR^MR"))

    assert GOOD_NHS[-4:] not in "|".join(ack["MSA"] + ack.get("ERR", []))
    assert ack["MSA"][1] == "AA" and "held for review" in ack["MSA"][3]
    assert _people(db) == before


def _okafor_and_a_temporary_record(db: Database, framework: Framework, tmp_path: Path) -> dict[str, str]:
    """Mr Okafor at his GP and the hospital (H100, linked), and a temporary hospital record T555 (another
    address, a mistyped birth year) linked to no one; each record's person."""
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [bundle("P81001", "emis", [
        patient("okafor", GOOD_NHS, "Okafor", "Emeka", "1945-03-02", "male", "RV3 7QT")])]), write_hl7(
        tmp_path / "pas-1.hl7", [admission("M1"), admission("M2", visit="V200", mrn="T555", nhs=None,
                                                             born="19540302",
                                                             address="2 Old Road^^Dalesby^^DL21 4AB^GBR^H")])])
    return _people(db)


def test_a_hospitals_merge_of_its_temporary_record_into_the_registered_one_joins_it_to_the_gp_record(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """The merge a source makes alone: a temporary registration linked to no one (another address, a mistyped
    birth year) retired into the hospital record of Mr Okafor, whom his GP knows too. Only it moves."""
    before = _okafor_and_a_temporary_record(db, framework, tmp_path)
    assert before["RXR/H100"] == before["P81001/okafor"] != before["RXR/T555"]

    ack = _ack(db, framework, adt("A40", "M3", "20260112090000", pid(), "MRG|T555^^^RXR^MR"))

    assert ack["MSA"][1:] == ["AA", "M3"]
    assert _people(db) == {**before, "RXR/T555": before["P81001/okafor"]}


def test_a_hospitals_merge_of_its_registered_record_into_a_temporary_one_waits_for_a_reviewer_whose_link_joins_all(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """The other way round: the PAS keeps the temporary number and retires the registered record, which is
    linked to the GP's. Which of the GP's records go with it is not the hospital's to say: held; the
    reviewer's link joins the persons."""
    before = _okafor_and_a_temporary_record(db, framework, tmp_path)
    temporary = pid(mrn="T555", nhs=None, born="19540302", address="2 Old Road^^Dalesby^^DL21 4AB^GBR^H")
    merge = write_hl7(tmp_path / "pas-2.hl7", [adt("A40", "M3", "20260112090000", temporary, "MRG|H100^^^RXR^MR")])

    report = Pipeline(db, framework).ingest_paths([merge])

    assert _people(db) == before
    assert report.quarantined == 0
    assert [held["where"] for held in report.merges_held] == [f"{merge}, message 1 (MSH-10 M3), MRG-1"]
    with db.session() as s:
        [item] = s.scalars(select(MatchReview))
        decide(s, item.id, "link", by="mpi.reviewer", reason="the PAS merged its own duplicate")
    people = _people(db)
    assert people["RXR/H100"] == people["RXR/T555"] == people["P81001/okafor"]


def test_a_gps_patient_replaced_by_another_of_its_patients_is_merged_into_it_and_never_into_another_orgs(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """FHIR's A40: a practice retires a duplicate registration (Patient.link replaced-by its other Patient)."""
    first, second = _two_strangers(db, framework, tmp_path)
    dup = patient("a-dup", None, "Hughes", "Margaret", "1953-06-11", gender="female", postcode="LS1 4AP")
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "dup.ndjson", [bundle("P81001", "emis", [dup])])])
    assert _people(db)["P81001/a-dup"] not in (first, second)  # another birth year and address: not linked
    retired = {**dup, "active": False, "link": [{"other": {"reference": "Patient/a"}, "type": "replaced-by"}]}
    merge = write_ndjson(tmp_path / "merge.ndjson", [
        bundle("P81001", "emis", [retired], timestamp="2026-11-02T09:00:00Z", use_urns=False)])
    report = Pipeline(db, framework).ingest_paths([merge])
    assert report.quarantined == 0, report.quarantine
    assert _people(db)["P81001/a-dup"] == first
    Pipeline(db, framework).ingest_paths([merge])  # sent again unchanged: no second merge
    with db.session() as s:
        assert [e.kind for e in s.scalars(select(LinkEvent))] == ["merge"]
        theirs = s.scalars(select(Resource.id).where(Resource.source_org == "P81002",
                                                     Resource.resource_type == "Patient")).one()
    elsewhere = {**retired, "link": [{"other": {"reference": f"Patient/{theirs}"}, "type": "replaced-by"}]}
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "theirs.ndjson", [
        bundle("P81001", "emis", [elsewhere], timestamp="2026-11-03T09:00:00Z", use_urns=False)])])
    assert report.quarantined == 1 and "Patient.link[0].other" in report.quarantine[0]["where"]
    assert _people(db) == {"P81001/a": first, "P81001/a-dup": first, "P81002/b": second}


def test_a_reviewer_links_or_separates_an_uncertain_pair_and_different_nhs_numbers_never_link(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    first, second = _two_strangers(db, framework, tmp_path)
    with db.session() as s:
        ids = {f"{r.source_org}/{r.source_id}": r.id for r in s.scalars(select(PatientRecord))}
        review = MatchReview(record_a=ids["P81001/a"], record_b=ids["P81002/b"], probability=0.95,
                             evidence={"first_name_surname": {"level": 1, "match_weight": -2.1}},
                             created_at=utcnow(), status="open")
        s.add(review)
        s.flush()
        decide(s, review.id, "link", by="mpi.reviewer", reason="Peggy is Margaret")
    people = _people(db)
    assert people["P81001/a"] == people["P81002/b"]
    with db.session() as s:
        decide(s, review.id, "separate", by="mpi.reviewer", reason="two sisters", was="linked")
    people = _people(db)
    assert people["P81001/a"] != people["P81002/b"]
    with db.session() as s:
        for record in s.scalars(select(PatientRecord)):
            record.nhs_number = "9434765919" if record.source_id == "a" else "9990000018"
    with db.session() as s, pytest.raises(LinkError, match="different NHS numbers"):
        decide(s, review.id, "link", by="mpi.reviewer", reason="one woman", was="separate")


def test_a_reviewers_link_that_would_join_a_pair_another_reviewer_separated_is_refused_naming_that_decision(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    def arrives(org: str, source_id: str) -> None:
        Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / f"{source_id}.ndjson", [bundle(org, "x", [
            patient(source_id, None, "Hughes", "Margaret", "1952-06-11", "female", "RV1 2AB")])])])

    arrives("P81001", "a")
    arrives("RYC", "b")
    with db.session() as s:
        ids = {r.source_id: r.id for r in s.scalars(select(PatientRecord))}
        item = MatchReview(record_a=ids["a"], record_b=ids["b"], probability=0.9995, evidence={},
                           created_at=utcnow(), status="open")
        s.add(item)
        s.flush()
        separated = decide(s, item.id, "separate", by="reviewer1", reason="two women").id
    arrives("RYA", "c")  # the same details again: it matches both, so both pairs are listed
    with db.session() as s:
        ids = {r.source_id: r.id for r in s.scalars(select(PatientRecord))}
        pairs = {(i.record_a, i.record_b): i.id for i in s.scalars(select(MatchReview))}
        decide(s, pairs[ids["a"], ids["c"]], "link", by="reviewer2", reason="one woman")
    with db.session() as s, pytest.raises(LinkError, match=f"review #{separated} separated \\(reviewer1, "):
        decide(s, pairs[ids["b"], ids["c"]], "link", by="reviewer2", reason="one woman")
    people = _people(db)
    assert people["P81001/a"] == people["RYA/c"] != people["RYC/b"]


def test_a_relink_keeps_a_sources_merge_and_the_merge_can_still_be_undone(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "pas-1.hl7", [
        admission("M1", mrn="H100", nhs=None),
        admission("M2", visit="V200", mrn="T555", nhs=None, born="19540302",
                  address="2 Old Road^^Dalesby^^DL21 4AB^GBR^H")])])
    before = _people(db)
    Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "pas-2.hl7", [
        adt("A40", "M3", "20260112090000", pid(mrn="H100", nhs=None), "MRG|T555^^^RXR^MR")])])
    with db.session() as s:
        relink(s)
    assert _people(db)["RXR/T555"] == _people(db)["RXR/H100"] == before["RXR/H100"]
    with db.session() as s:
        merge = s.scalars(select(LinkEvent).where(LinkEvent.kind == "merge")).one().id
        unmerge(s, merge, by="mpi.operator", reason="two patients after all")
    assert _people(db) == before


def test_a_relink_that_parts_a_wrongly_merged_person_gives_each_their_own_person_id_back(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A merge of two NHS numbers made before merges refused them: the relink parts them, and each person's
    records keep the id their access bases and consents were kept by."""
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [
        bundle("P81001", "emis", [patient("okafor", GOOD_NHS, "Okafor", "Emeka", "1945-03-02", "male", "RV3 7QT")]),
        bundle("P81002", "systmone", [patient("adeyemi", OTHER_NHS, "Adeyemi", "Grace", "1980-05-12", "female",
                                              "RV9 9ZZ")])])])
    before = _people(db)
    with db.session() as s:
        s.execute(update(PatientRecord).where(PatientRecord.source_id == "okafor").values(nhs_number=None))
        merge_persons(s, before["P81002/adeyemi"], before["P81001/okafor"], by="mpi.operator", reason="mistake")
        s.execute(update(PatientRecord).where(PatientRecord.source_id == "okafor").values(nhs_number=GOOD_NHS))
    with db.session() as s:
        relink(s)
    assert _people(db) == before


def test_a_record_with_no_name_or_birth_date_is_held_for_review_not_guessed(db: Database, framework: Framework,
                                                                            tmp_path: Path) -> None:
    anonymous = {"resourceType": "Patient", "id": "unknown-1", "gender": "male"}
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "rya.ndjson", [
        bundle("RYA", "epcr", [anonymous, condition("c", "Patient/unknown-1", "217082002", "Fall")])])])
    with db.session() as s:
        record = s.scalars(select(PatientRecord)).one()
    assert (record.link_status, record.link_method) == ("review", "insufficient-data")
