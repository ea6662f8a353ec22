"""Corrections and withdrawals as a partner EPR sees them: the record shows the latest word of the
source, and vread/_history show every version, through the same decision as a read."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from tests.builders import bundle, condition, document, patient, write_ndjson
from tests.fhir_bundles import entries, resources
from tests.small_ics import OKAFOR_NHS, WITHDRAWN, Ics, resend_diabetes, without_nhs_number

from sharedcare.governance.framework import Framework
from sharedcare.identity.links import merge_persons, unmerge
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, Resource, ResourceVersion


def _diabetes_id(db: Database) -> str:
    with db.session() as s:
        return s.scalars(select(Resource.id).where(Resource.source_id == "gp-c1")).one()


def _conditions(ics: Ics, headers: dict[str, str]) -> list[dict]:
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition", headers=headers).json()
    return [e["resource"] for e in entries(bundle)]


def test_a_correction_replaces_what_is_shown_and_history_keeps_both_versions(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    cid = _diabetes_id(db)
    resend_diabetes(db, framework, tmp_path, "fix", "2026-11-05T09:00:00Z", onsetDateTime="2018-07-01")
    headers = ics.open_record("dr.patel")
    current = ics.client.get(f"/fhir/Condition/{cid}", headers=headers).json()
    assert current["onsetDateTime"] == "2018-07-01" and current["meta"]["versionId"] == "2"
    history = ics.client.get(f"/fhir/Condition/{cid}/_history", headers=headers)
    assert history.status_code == 200 and history.headers["content-type"].startswith("application/fhir+json")
    entries = history.json()["entry"]
    assert [e["resource"]["meta"]["versionId"] for e in entries] == ["2", "1"]
    assert [e["resource"]["onsetDateTime"] for e in entries] == ["2018-07-01", "2019-03-01"]
    assert entries[0]["resource"]["meta"]["lastUpdated"] > entries[1]["resource"]["meta"]["lastUpdated"]
    first = ics.client.get(f"/fhir/Condition/{cid}/_history/1", headers=headers)
    assert first.status_code == 200 and first.headers["etag"] == 'W/"1"'
    assert first.json()["onsetDateTime"] == "2019-03-01"
    assert first.json()["subject"]["reference"] == f"Patient/{ics.okafor}"
    assert ics.client.get(f"/fhir/Condition/{cid}/_history/3", headers=headers).status_code == 404


def test_entered_in_error_disappears_from_the_record_and_search_but_history_shows_both(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    cid = _diabetes_id(db)
    headers = ics.open_record("dr.patel")
    assert cid in {c["id"] for c in _conditions(ics, headers)}
    resend_diabetes(db, framework, tmp_path, "withdraw", "2026-11-05T09:00:00Z", verificationStatus=WITHDRAWN)
    assert cid not in {c["id"] for c in _conditions(ics, headers)}
    found = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&code=http://snomed.info/sct|44054006",
                           headers=headers).json()
    assert resources(found) == []
    assert ics.client.get(f"/fhir/Condition/{cid}", headers=headers).status_code == 404
    entries = ics.client.get(f"/fhir/Condition/{cid}/_history", headers=headers).json()["entry"]
    assert [e["resource"]["meta"]["versionId"] for e in entries] == ["2", "1"]
    assert entries[0]["resource"]["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "verificationStatus" not in entries[1]["resource"]


def test_a_late_older_update_is_reported_stale_and_history_does_not_grow(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    cid = _diabetes_id(db)
    resend_diabetes(db, framework, tmp_path, "new", "2026-11-05T09:00:00Z", onsetDateTime="2018-07-01")
    late = bundle("P81001", "emis", [
        patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        condition("gp-c1", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus", onsetDateTime="2001-01-01"),
    ], timestamp="2026-10-01T09:00:00Z")
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "late.ndjson", [late])])
    assert (report.stale, report.unchanged, report.accepted) == (1, 1, 0)  # the patient is as held already
    headers = ics.open_record("dr.patel")
    entries = ics.client.get(f"/fhir/Condition/{cid}/_history", headers=headers).json()["entry"]
    assert [e["resource"]["onsetDateTime"] for e in entries] == ["2018-07-01", "2019-03-01"]


def test_history_follows_the_read_rules_and_is_audited(ics: Ics, db: Database) -> None:
    cid = _diabetes_id(db)
    assert ics.client.get(f"/fhir/Condition/{cid}/_history", headers=ics.token("dr.patel")).status_code == 404
    with db.session() as s:  # refused without a basis: audited, and indistinguishable from missing
        denied = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:resource:history")).all()
        assert [e.outcome for e in denied] == ["deny"]
    restricted = next(r for r in entries(ics.client.get(
        f"/fhir/Patient/{ics.okafor}/$everything?_type=DocumentReference", headers=ics.open_record("dr.oconnor")
    ).json()) if "security" in r["resource"].get("meta", {}))["resource"]["id"]
    gp = ics.open_record("dr.patel")
    assert ics.client.get(f"/fhir/DocumentReference/{restricted}/_history", headers=gp).status_code == 404
    assert ics.client.get(f"/fhir/DocumentReference/{restricted}/_history/1", headers=gp).status_code == 404
    assert ics.client.get(f"/fhir/Condition/{cid}/_history", headers=gp).status_code == 200
    with db.session() as s:
        event = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:resource:history",
                                                   AuditEntry.outcome == "permit")
                          .order_by(AuditEntry.seq.desc())).first()
        assert event is not None and event.patient_id == ics.okafor
        assert f"Condition/{cid}/_history/1" in json.dumps(event.event)


def test_the_capability_statement_offers_vread_and_history_on_clinical_types(ics: Ics) -> None:
    statement = ics.client.get("/fhir/metadata").json()
    condition = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Condition")
    assert {"vread", "history-instance"} <= {i["code"] for i in condition["interaction"]}
    patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert "vread" not in {i["code"] for i in patient_entry["interaction"]}


def test_a_letter_marked_confidential_later_hides_its_earlier_versions_too(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    letter = "Discharged after a fall. GP to review bloods in 2 weeks."
    acute = bundle("RXR", "epr", [patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"),
                                  document("rx-d1", "Patient/MRN1", letter, restricted=True)],
                   timestamp="2026-11-05T09:00:00Z")
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "acute.ndjson", [acute])]).accepted == 1
    with db.session() as s:
        did = s.scalars(select(Resource.id).where(Resource.source_id == "rx-d1")).one()
    gp = ics.open_record("dr.patel")
    assert ics.client.get(f"/fhir/DocumentReference/{did}/_history", headers=gp).status_code == 404
    assert ics.client.get(f"/fhir/DocumentReference/{did}/_history/1", headers=gp).status_code == 404
    own = ics.client.get(f"/fhir/DocumentReference/{did}/_history", headers=ics.open_record("dr.oconnor"))
    assert [e["resource"]["meta"]["versionId"] for e in own.json()["entry"]] == ["2", "1"]


def _moved_to_okafor(db: Database, framework: Framework, tmp_path: Path) -> tuple[str, str]:
    """The GP system sends a condition for Mrs Vine, then the same condition (its own id) for Mr Okafor:
    it was filed against the wrong patient. Returns the resource's id and Mrs Vine's person id."""
    vine = patient("gp-vine", "9990000026", "Vine", "Vera", "1960-01-01", gender="female")
    first = bundle("P81001", "emis", [vine, condition("gp-x", "Patient/gp-vine", "38341003", "Vine's hypertension")],
                   timestamp="2026-11-02T09:00:00Z")
    moved = bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
                                      condition("gp-x", "Patient/gp-okafor", "38341003", "Okafor's hypertension")],
                   timestamp="2026-11-03T09:00:00Z")
    for name, message in (("first", first), ("moved", moved)):
        report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / f"{name}.ndjson", [message])])
        assert report.quarantined == 0, report.quarantine
    with db.session() as s:
        rid = s.scalars(select(Resource.id).where(Resource.source_id == "gp-x")).one()
        vine_person = s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id == "gp-vine")).one()
    return rid, vine_person


def _shown(ics: Ics, rid: str, headers: dict[str, str]) -> list[tuple[str, str, str]]:
    response = ics.client.get(f"/fhir/Condition/{rid}/_history", headers=headers)
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    return [(e["resource"]["meta"]["versionId"], e["resource"]["code"]["coding"][0]["display"],
             e["resource"]["subject"]["reference"]) for e in response.json()["entry"]]


def _history_events(db: Database, since: int = 0) -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:resource:history",
                                                       AuditEntry.seq > since).order_by(AuditEntry.seq)))


def _last_seq(db: Database) -> int:
    with db.session() as s:
        return s.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1)).one()


def test_a_resource_moved_to_another_patient_shows_its_new_patient_only_their_versions(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    rid, vine = _moved_to_okafor(db, framework, tmp_path)
    okafors_doctor = ics.open_record("dr.oconnor")
    since = _last_seq(db)
    assert _shown(ics, rid, okafors_doctor) == [("2", "Okafor's hypertension", f"Patient/{ics.okafor}")]
    events = _history_events(db, since)  # each version decided against its own patient, both audited
    assert [(e.patient_id, e.outcome) for e in events] == [(ics.okafor, "permit"), (vine, "deny")]
    assert f"Condition/{rid}/_history/2" in json.dumps(events[0].event)
    assert f"Condition/{rid}/_history/1" not in json.dumps(events[0].event)
    assert f"Condition/{rid}/_history/1" in json.dumps(events[1].event)


def test_a_vread_of_the_previous_patients_version_is_missing_and_audited(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    rid, vine = _moved_to_okafor(db, framework, tmp_path)
    okafors_doctor = ics.open_record("dr.oconnor")
    since = _last_seq(db)
    response = ics.client.get(f"/fhir/Condition/{rid}/_history/1", headers=okafors_doctor)
    assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"
    assert "Vine" not in response.text
    refused = [e for e in _history_events(db, since) if e.outcome == "deny"]
    assert [e.patient_id for e in refused] == [vine]
    assert f"Condition/{rid}/_history/1" in json.dumps(refused[0].event)
    current = ics.client.get(f"/fhir/Condition/{rid}/_history/2", headers=okafors_doctor)
    assert current.status_code == 200 and current.json()["code"]["coding"][0]["display"] == "Okafor's hypertension"


def test_the_previous_patients_clinician_sees_no_history_of_a_resource_now_someone_elses(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    rid, vine = _moved_to_okafor(db, framework, tmp_path)
    vines_doctor = ics.open_record("dr.oconnor", person=vine)
    assert ics.client.get(f"/fhir/Condition/{rid}", headers=vines_doctor).status_code == 404
    assert _shown(ics, rid, vines_doctor) == []  # the source says it is Mr Okafor's now (it may always have been)
    assert ics.client.get(f"/fhir/Condition/{rid}/_history/1", headers=vines_doctor).status_code == 404
    refused = [e for e in _history_events(db) if e.outcome == "deny"]
    assert refused and {e.patient_id for e in refused} == {ics.okafor}


def test_someone_who_may_see_both_patients_sees_each_version_as_its_own_patients(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    rid, vine = _moved_to_okafor(db, framework, tmp_path)
    headers = ics.open_record("dr.oconnor")
    ics.open_record("dr.oconnor", person=vine)
    assert _shown(ics, rid, headers) == [("2", "Okafor's hypertension", f"Patient/{ics.okafor}"),
                                         ("1", "Vine's hypertension", f"Patient/{vine}")]


def test_after_a_merge_the_merged_records_versions_are_in_the_history_and_after_unmerge_they_are_not(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    rid, vine = _moved_to_okafor(db, framework, tmp_path)
    with db.session() as s:
        without_nhs_number(s, vine)
        merge = merge_persons(s, ics.okafor, vine, by="mpi.reviewer", reason="one person after all")
    headers = ics.open_record("dr.oconnor")  # on the merged person: a basis given before it ends with the merge
    assert _shown(ics, rid, headers) == [("2", "Okafor's hypertension", f"Patient/{ics.okafor}"),
                                         ("1", "Vine's hypertension", f"Patient/{ics.okafor}")]
    first = ics.client.get(f"/fhir/Condition/{rid}/_history/1", headers=headers)
    assert first.status_code == 200 and first.json()["subject"]["reference"] == f"Patient/{ics.okafor}"
    with db.session() as s:
        unmerge(s, merge.id, by="mpi.reviewer", reason="two people after all")
    ics.open_record("dr.oconnor")
    assert _shown(ics, rid, headers) == [("2", "Okafor's hypertension", f"Patient/{ics.okafor}")]
    assert ics.client.get(f"/fhir/Condition/{rid}/_history/1", headers=headers).status_code == 404


def test_each_superseded_version_keeps_the_patient_record_it_was_sent_with(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    rid, _ = _moved_to_okafor(db, framework, tmp_path)
    with db.session() as s:
        vine_record = s.scalars(select(PatientRecord.id).where(PatientRecord.source_id == "gp-vine")).one()
        okafor_record = s.scalars(select(PatientRecord.id).where(PatientRecord.source_id == "gp-okafor")).one()
        assert s.get_one(ResourceVersion, (rid, 1)).patient_record_id == vine_record
        assert s.get_one(Resource, rid).patient_record_id == okafor_record


def test_a_history_read_and_a_vread_show_in_the_citizens_who_read_my_record(ics: Ics, db: Database,
                                                                             framework: Framework) -> None:
    from sharedcare.governance.workspace import CitizenWorkspace

    with db.session() as session:
        condition_id = session.scalars(select(Resource.id).where(Resource.source_id == "gp-c1")).one()
    headers = ics.open_record("dr.patel")
    assert ics.client.get(f"/fhir/Condition/{condition_id}/_history", headers=headers).status_code == 200
    assert ics.client.get(f"/fhir/Condition/{condition_id}/_history/1", headers=headers).status_code == 200
    with db.session() as session:
        seen = [(a.username, a.what) for a in CitizenWorkspace(session, framework, ics.okafor).accesses().accesses]
    assert seen.count(("dr.patel", "viewed earlier versions of an item in your record")) == 2
