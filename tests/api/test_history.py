"""Corrections and withdrawals as a partner EPR sees them: the record shows the latest word of the
source, and vread/_history show every version, through the same decision as a read."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from tests.builders import bundle, condition, document, patient, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, Resource

WITHDRAWN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                         "code": "entered-in-error"}]}


def _resend(db: Database, framework: Framework, tmp_path: Path, name: str, timestamp: str, **changes: object) -> None:
    """The GP system sends Mr Okafor's diabetes again, changed."""
    gp = bundle("P81001", "emis", [
        patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        condition("gp-c1", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus", **changes),
    ], timestamp=timestamp)
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / f"{name}.ndjson", [gp])])
    assert report.quarantined == 0, report.quarantine


def _diabetes_id(db: Database) -> str:
    with db.session() as s:
        return s.scalars(select(Resource.id).where(Resource.source_id == "gp-c1")).one()


def _conditions(ics: Ics, headers: dict[str, str]) -> list[dict]:
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition", headers=headers).json()
    return [e["resource"] for e in bundle["entry"]]


def test_a_correction_replaces_what_is_shown_and_history_keeps_both_versions(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    cid = _diabetes_id(db)
    _resend(db, framework, tmp_path, "fix", "2026-11-05T09:00:00Z", onsetDateTime="2018-07-01")
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
    _resend(db, framework, tmp_path, "withdraw", "2026-11-05T09:00:00Z", verificationStatus=WITHDRAWN)
    assert cid not in {c["id"] for c in _conditions(ics, headers)}
    found = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&code=http://snomed.info/sct|44054006",
                           headers=headers).json()
    assert found.get("entry", []) == []
    assert ics.client.get(f"/fhir/Condition/{cid}", headers=headers).status_code == 404
    entries = ics.client.get(f"/fhir/Condition/{cid}/_history", headers=headers).json()["entry"]
    assert [e["resource"]["meta"]["versionId"] for e in entries] == ["2", "1"]
    assert entries[0]["resource"]["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "verificationStatus" not in entries[1]["resource"]


def test_a_late_older_update_is_reported_stale_and_history_does_not_grow(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    cid = _diabetes_id(db)
    _resend(db, framework, tmp_path, "new", "2026-11-05T09:00:00Z", onsetDateTime="2018-07-01")
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
    restricted = next(r for r in ics.client.get(
        f"/fhir/Patient/{ics.okafor}/$everything?_type=DocumentReference", headers=ics.open_record("dr.oconnor")
    ).json()["entry"] if "security" in r["resource"].get("meta", {}))["resource"]["id"]
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
