"""FHIR bundle ingest: what an integration engineer sees when feeds arrive, good and bad."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from tests.builders import bundle, condition, medication, patient, write_ndjson

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Quarantine, Resource

GOOD_NHS = "9434765919"
OTHER_NHS = "9990000018"


def _gp_bundle(nhs: str = GOOD_NHS, pid: str = "gp-1") -> dict:
    return bundle("P81001", "emis", [
        patient(pid, nhs, "Okafor", "Emeka", "1945-03-02"),
        condition(f"{pid}-c1", f"Patient/{pid}", "44054006", "Type 2 diabetes mellitus"),
        medication(f"{pid}-m1", f"Patient/{pid}", "Metformin 500mg tablets"),
    ])


def _count(db: Database, model: type) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_a_gp_bundle_is_stored_with_its_provenance(db: Database, framework: Framework, tmp_path: Path) -> None:
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [_gp_bundle()])])
    assert (report.accepted, report.quarantined) == (3, 0)
    with db.session() as s:
        sources = set(s.scalars(select(Resource.content["meta"]["source"].as_string())))
    assert sources == {"https://fhir.nhs.uk/Id/ods-organization-code|P81001#emis"}


def test_the_same_feed_twice_changes_nothing(db: Database, framework: Framework, tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "gp.ndjson", [_gp_bundle()])
    Pipeline(db, framework).ingest_paths([path])
    with db.session() as s:
        before = {r.id: (r.version, r.content_hash) for r in s.scalars(select(Resource))}
    again = Pipeline(db, framework).ingest_paths([path])
    assert (again.accepted, again.unchanged) == (0, 3)
    with db.session() as s:
        assert {r.id: (r.version, r.content_hash) for r in s.scalars(select(Resource))} == before


def test_records_from_two_organisations_with_one_nhs_number_join_one_person(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    hospital = bundle("RXR", "epr", [patient("MRN123", GOOD_NHS, "OKAFOR", "Emeka", "1945-03-02"),
                                     condition("rx-c1", "Patient/MRN123", "217082002", "Fall")], use_urns=False)
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "a.ndjson", [_gp_bundle(), hospital])])
    with db.session() as s:
        people = set(s.scalars(select(PatientRecord.person_id)))
    assert len(people) == 1


def test_a_malformed_line_is_quarantined_with_its_line_and_the_rest_is_ingested(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "gp.ndjson", [_gp_bundle(), '{"resourceType": "Bundle", "entry": [', _gp_bundle(
        OTHER_NHS, "gp-2")])
    report = Pipeline(db, framework).ingest_paths([path])
    assert report.accepted == 6
    assert report.quarantined == 1
    problem = report.quarantine[0]
    assert problem["location"] == "line 2"
    assert "invalid JSON" in problem["reason"] and "column" in problem["reason"]
    with db.session() as s:
        held = s.scalars(select(Quarantine)).one()
        assert held.payload == b'{"resourceType": "Bundle", "entry": ['


def test_an_invalid_nhs_number_quarantines_that_bundle_naming_the_entry(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "gp.ndjson", [_gp_bundle("9434765918", "bad"), _gp_bundle()])
    report = Pipeline(db, framework).ingest_paths([path])
    assert (report.accepted, report.quarantined) == (3, 1)
    reason = report.quarantine[0]
    assert "modulus 11" in reason["reason"]
    assert "line 1, entry[0]" in reason["where"] and "Patient/bad: Patient.identifier[0].value" in reason["reason"]
    assert _count(db, PatientRecord) == 1


def test_an_unreadable_file_is_quarantined_and_other_files_still_ingest(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    bad = tmp_path / "feeds" / "broken.json"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xfe\x00garbage")
    good = write_ndjson(tmp_path / "feeds" / "gp.ndjson", [_gp_bundle()])
    report = Pipeline(db, framework).ingest_paths([bad, good])
    assert (report.accepted, report.quarantined) == (3, 1)
    assert "not UTF-8" in report.quarantine[0]["reason"]
    assert report.quarantine[0]["file"].endswith("broken.json")


def test_a_structurally_invalid_resource_is_named_by_element(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    broken = _gp_bundle()
    broken["entry"][1]["resource"]["onsetDateTime"] = "2019-13-45"
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [broken])])
    assert report.quarantined == 1
    assert "Condition.onsetDateTime" in report.quarantine[0]["reason"]
    assert "entry[1]" in report.quarantine[0]["where"]
    assert _count(db, Resource) == 0  # atomic: nothing of that bundle was stored


def test_us_billing_resources_are_set_aside_and_counted_not_a_reason_to_refuse(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    with_claim = _gp_bundle()
    with_claim["entry"].append({"fullUrl": "urn:uuid:claim-1", "resource": {
        "resourceType": "Claim", "id": "claim-1", "status": "active"}})
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [with_claim])])
    assert report.accepted == 3
    assert report.set_aside == {"Claim": 1}


def test_an_older_update_does_not_overwrite_a_newer_one(db: Database, framework: Framework, tmp_path: Path) -> None:
    newer = _gp_bundle()
    newer["timestamp"] = "2026-11-02T09:00:00Z"
    older = json.loads(json.dumps(newer))
    older["timestamp"] = "2026-10-01T09:00:00Z"
    older["entry"][1]["resource"]["onsetDateTime"] = "2001-01-01"
    pipeline = Pipeline(db, framework)
    pipeline.ingest_paths([write_ndjson(tmp_path / "new.ndjson", [newer])])
    report = pipeline.ingest_paths([write_ndjson(tmp_path / "old.ndjson", [older])])
    assert report.stale == 1
    with db.session() as s:
        onsets = set(s.scalars(select(Resource.content["onsetDateTime"].as_string())
                               .where(Resource.resource_type == "Condition")))
    assert onsets == {"2019-03-01"}


def test_an_organisation_without_a_signed_agreement_cannot_contribute(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    care_home = bundle("VWC01", "csv", [patient("ch-1", GOOD_NHS, "Okafor", "Emeka", "1945-03-02")])
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "ch.ndjson", [care_home])])
    assert report.quarantined == 1
    assert "no signed agreement" in report.quarantine[0]["reason"]


def test_a_resource_for_a_patient_the_source_never_sent_is_refused(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    orphan = bundle("P81001", "emis", [condition("c9", "Patient/nobody", "44054006", "Diabetes")], use_urns=False)
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "o.ndjson", [orphan])])
    assert report.quarantined == 1
    assert "has not sent" in report.quarantine[0]["reason"]


@pytest.mark.parametrize(("line", "expected"), [
    ('{"resourceType": "Bundle", "type": "collection", "entry": [1]}', "entry has no resource"),
    ('{"resourceType": "Bundle", "type": "collection", "entry": {"a": 1}}', "must be a list"),
    ('{"resourceType": "Bundle", "type": "collection", "meta": "x", "entry": [{"resource": {}}]}',
     "entry has no resource"),
    ('{"resourceType": "Bundle", "n": ' + "9" * 5000 + "}", "invalid JSON"),
    ('{"resourceType": "Bundle", "x": ' + "[" * 100000 + "]" * 100000 + "}",
     "line 1 column 100032: nested 100001 objects and arrays deep, more than the 64 levels"),
])
def test_any_malformed_message_is_quarantined_and_the_feed_goes_on(db: Database, framework: Framework,
                                                                   tmp_path: Path, line: str, expected: str) -> None:
    path = write_ndjson(tmp_path / "P81001" / "gp.ndjson", [line, _gp_bundle()])  # the folder names the source
    report = Pipeline(db, framework).ingest_paths([path])
    assert (report.quarantined, report.accepted) == (1, 3)
    assert expected in report.quarantine[0]["reason"] and report.quarantine[0]["location"] == "line 1"


def test_a_resource_sent_twice_in_one_bundle_is_refused_by_name(db: Database, framework: Framework,
                                                                tmp_path: Path) -> None:
    twice = _gp_bundle()
    twice["entry"].append(dict(twice["entry"][1], fullUrl="urn:uuid:another-entry"))
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [twice])])
    assert report.quarantined == 1 and "sent twice" in report.quarantine[0]["reason"]


def test_a_correction_in_a_bundle_that_reuses_an_earlier_bundles_id_is_stored(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Some senders give every Bundle the same id. A message sent again changes nothing (its id and its
    content both match a version already applied); a new content under a reused id, at the same event time,
    is a correction and is stored."""
    def diabetes(text: str, bundle_id: str) -> dict:
        sent = bundle("P81001", "emis", [patient("p1", None, "Okafor", "Emeka", "1945-03-02"),
                                         condition("c1", "Patient/p1", "44054006", text)])
        return {**sent, "id": bundle_id}

    path = write_ndjson(tmp_path / "P81001" / "gp.ndjson", [
        diabetes("Type 2 diabetes", "same-id"), diabetes("Diabetes mellitus", "other-id"),
        diabetes("Type 2 diabetes mellitus", "same-id")])
    Pipeline(db, framework).ingest_paths([path])
    with db.session() as s:
        row = s.scalars(select(Resource).where(Resource.source_id == "c1")).one()
        assert (row.version, row.content["code"]["coding"][0]["display"]) == (3, "Type 2 diabetes mellitus")
    again = Pipeline(db, framework).ingest_paths([path])
    assert again.accepted == 0


def test_an_unforeseen_store_failure_tells_the_sender_its_kind_not_the_databases_words(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """TRUST DP3: what a sender reads (a FHIR write's answer, an ACK, the quarantine reason) never quotes SQL
    or stored values; the server log keeps the whole exception for the operator."""
    def failing(*_: object, **__: object) -> None:
        raise RuntimeError("UNIQUE constraint failed: INSERT INTO resources VALUES ('OKAFOR', '9434765919')")

    monkeypatch.setattr(Pipeline, "_store", failing)
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [_gp_bundle()])])
    (held,) = report.quarantine
    assert held["reason"].startswith("could not be stored: an unexpected RuntimeError")
    assert "INSERT" not in held["reason"] and "9434765919" not in held["reason"]
    with db.session() as s:
        assert "INSERT" not in s.scalars(select(Quarantine.reason)).one()
    assert any("INSERT INTO resources" in (r.exc_text or "") for r in caplog.records)


@pytest.mark.parametrize("kind", ["collection", "transaction", "batch"])
def test_a_bundle_whose_entries_share_a_fullurl_is_held_whole_naming_both(
        db: Database, framework: Framework, tmp_path: Path, kind: str) -> None:
    """Two patients under one fullUrl: the Condition that points at it would be filed under whichever entry
    came last (Ann's diabetes on Bob's record). FHIR's bdl-7 forbids it, so none of the Bundle is stored."""
    message = bundle("P81001", "emis", [patient("pA", GOOD_NHS, "Alpha", "Ann", "1950-01-01"),
                                        patient("pB", OTHER_NHS, "Beta", "Bob", "1960-01-01"),
                                        condition("c1", "Patient/pA", "44054006", "Type 2 diabetes mellitus")])
    message["type"] = kind
    message["entry"][1]["fullUrl"] = message["entry"][0]["fullUrl"]
    if kind != "collection":
        for entry in message["entry"]:
            resource = entry["resource"]
            entry["request"] = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [message])])
    assert (report.accepted, report.quarantined) == (0, 1)
    (problem,) = report.quarantine
    assert problem["location"] == "line 1"
    assert "entry[0] and entry[1] have the same fullUrl" in problem["reason"] and "bdl-7" in problem["reason"]
    assert _count(db, Resource) == 0


def test_a_urn_reference_that_names_no_entry_is_held_naming_the_element(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A urn:uuid resolves only within its Bundle: one naming no entry points nowhere, and was stored as if it
    pointed somewhere (an encounter, an asserter no one can find)."""
    message = bundle("P81001", "emis", [
        patient("pA", GOOD_NHS, "Alpha", "Ann", "1950-01-01"),
        condition("c1", "Patient/pA", "44054006", "Type 2 diabetes mellitus",
                  evidence=[{"detail": [{"reference": "urn:uuid:0000-not-in-bundle"}]}])])
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [message])])
    assert (report.accepted, report.quarantined) == (0, 1)
    (problem,) = report.quarantine
    assert problem["where"].endswith("entry[1] Condition/c1")
    assert problem["reason"].startswith("Condition.evidence[0].detail[0].reference 'urn:uuid:0000-not-in-bundle' "
                                        "names no entry of this message")
    assert _count(db, Resource) == 0


def test_a_folder_file_of_no_known_suffix_is_listed_as_skipped_or_read_in_the_format_given(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A drop folder's `gp-0002.txt` and `gp-0003` were passed over unseen: not read, not reported."""
    folder = tmp_path / "drop"
    write_ndjson(folder / "gp-0001.ndjson", [_gp_bundle(pid="gp-1")])
    write_ndjson(folder / "gp-0002.txt", [_gp_bundle(OTHER_NHS, pid="gp-2")])
    write_ndjson(folder / "gp-0003", [_gp_bundle("9990000026", pid="gp-3")])
    report = Pipeline(db, framework).ingest_paths([folder])
    assert (report.files, report.accepted) == (1, 3)
    assert [item["file"] for item in report.skipped_files] == [str(folder / "gp-0002.txt"), str(folder / "gp-0003")]
    assert "unknown format" in report.skipped_files[0]["reason"]
    again = Pipeline(db, framework).ingest_paths([folder], fmt="fhir")
    assert (again.files, again.accepted, again.unchanged, again.skipped_files) == (3, 6, 3, [])


@pytest.mark.parametrize(("change", "element", "why"), [
    (lambda p, o: p.update(active="true"), "Patient.active", 'a string ("true") where FHIR JSON has a boolean'),
    (lambda p, o: o["valueQuantity"].update(value="5.9"), "Observation.valueQuantity.value",
     'a string ("5.9") where FHIR JSON has a number'),
    (lambda p, o: p["name"][0].update(text="x" * (1024 * 1024 + 1)), "Patient.name[0].text",
     "a string of 1,048,577 bytes, more than FHIR's limit of 1 MB (1,048,576 bytes)"),
])
def test_a_value_fhir_json_does_not_allow_is_held_naming_the_element(
        db: Database, framework: Framework, tmp_path: Path, change: Any, element: str, why: str) -> None:
    """The model reads "5.9" as a decimal and "true" as a boolean, and they were stored and served back as
    strings (not FHIR); a 50 MB name was stored whole. Each is held, naming the element."""
    person = patient("p1", GOOD_NHS, "Okafor", "Emeka", "1945-03-02")
    potassium = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "Potassium"},
                 "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 5.9, "unit": "mmol/L"}}
    change(person, potassium)
    message = bundle("P81001", "emis", [person, potassium])
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [message])])
    assert (report.accepted, report.quarantined) == (0, 1)
    assert report.quarantine[0]["reason"].startswith(f"{element.split('.')[0]}/")
    assert f"{element}: {why}" in report.quarantine[0]["reason"]
    assert _count(db, Resource) == 0
