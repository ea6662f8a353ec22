"""Codes outside their required value sets are refused at ingest, in every way in: what a feed's engineer and an
API writer notice is a refusal naming the resource, the element, the value and the value set (a FHIR
validator's `code-invalid`), and nothing else of the batch lost. FHIR's structural validation takes any text
there ("seen by Jane Smith" as an Encounter's status), which direct care would then show as sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.builders import SCT, condition, medication, patient, write_ndjson
from tests.ingest.test_csv_extract import MOSAIC, _extract, _lrc, _row
from tests.ingest.test_fhir_xml_and_batch import GOOD_NHS, _gp, _stored
from tests.ingest.test_hl7v2 import admission, results, write_hl7
from tests.small_ics import Ics

from sharedcare.fhir.value_sets import REQUIRED, value_set_problems
from sharedcare.governance.framework import Framework
from sharedcare.ingest import hl7v2_map
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import Quarantine, Resource

HL7 = "http://terminology.hl7.org/CodeSystem/"
WHO = "Patient/gp-1"
XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">Seen in clinic</div>'


def _status(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{HL7}{system}", "code": code}]}


def _patient(**changes: Any) -> dict[str, Any]:
    """Another person than the batch's own (so the batch's other entries still have their patient)."""
    return {**patient("gp-2", None, "Hughes", "Margaret", "1950-01-01"), **changes}


def _allergy(**changes: Any) -> dict[str, Any]:
    return {"resourceType": "AllergyIntolerance", "id": "gp-a1", "patient": {"reference": WHO},
            "clinicalStatus": _status("allergyintolerance-clinical", "active"),
            "verificationStatus": _status("allergyintolerance-verification", "confirmed"),
            "type": "allergy", "category": ["medication"], "criticality": "high",
            "code": {"coding": [{"system": SCT, "code": "91936005"}]},
            "reaction": [{"manifestation": [{"coding": [{"system": SCT, "code": "271807003"}]}],
                          "severity": "severe"}], **changes}


def _dosed(**repeat: Any) -> dict[str, Any]:
    timing = {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["MORN"], "dayOfWeek": ["mon"], **repeat}
    return {**medication("gp-m1", WHO, "Metformin 500mg tablets"), "dosage": [{"timing": {"repeat": timing}}]}


def _contained(**drug: Any) -> dict[str, Any]:
    """A statement naming its drug as a contained Medication (as sources send it)."""
    statement = {k: v for k, v in medication("gp-m1", WHO, "Metformin").items() if k != "medicationCodeableConcept"}
    return {**statement, "medicationReference": {"reference": "#med"},
            "contained": [{"resourceType": "Medication", "id": "med", "code": {"text": "Metformin"}, **drug}]}


def _encounter(**changes: Any) -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": "gp-e1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": WHO}, "location": [{"location": {"display": "Surgery"}, "status": "completed"}],
            **changes}


def _observation(**changes: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "gp-o1", "status": "final",
            "code": {"coding": [{"system": SCT, "code": "271649006"}]}, "subject": {"reference": WHO},
            "valueQuantity": {"value": 150, "comparator": "<", "unit": "mmHg"}, **changes}


def _plan(**detail: Any) -> dict[str, Any]:
    return {"resourceType": "CarePlan", "id": "gp-p1", "status": "active", "intent": "plan",
            "subject": {"reference": WHO},
            "activity": [{"detail": {"kind": "Appointment", "status": "scheduled", **detail}}]}


def _document(**changes: Any) -> dict[str, Any]:
    return {"resourceType": "DocumentReference", "id": "gp-d1", "status": "current", "docStatus": "final",
            "subject": {"reference": WHO}, "content": [{"attachment": {"contentType": "text/plain"}}], **changes}


# element: (a resource holding a code outside that element's value set, the located path, the value named)
OUTSIDE: dict[str, tuple[dict[str, Any], str, str]] = {
    "Patient.gender": (_patient(gender="F"), "Patient.gender", "'F'"),
    "Patient.contact.gender": (_patient(contact=[{"name": {"family": "Adeyemi"}, "gender": "woman"}]),
                               "Patient.contact[0].gender", "'woman'"),
    "Patient.link.type": (_patient(link=[{"other": {"reference": "Patient/gp-9"}, "type": "same-as"}]),
                          "Patient.link[0].type", "'same-as'"),
    "Identifier.use": (_patient(identifier=[{"system": "https://local.example/mrn", "value": "1", "use": "main"}]),
                       "Patient.identifier[0].use", "'main'"),
    "HumanName.use": (_patient(name=[{"family": "Hughes", "use": "Official"}]), "Patient.name[0].use", "'Official'"),
    "ContactPoint.system": (_patient(telecom=[{"system": "mobile", "value": "07700 900456"}]),
                            "Patient.telecom[0].system", "'mobile'"),
    "ContactPoint.use": (_patient(telecom=[{"system": "phone", "value": "07700 900456", "use": "evenings"}]),
                         "Patient.telecom[0].use", "'evenings'"),
    "Address.use": (_patient(address=[{"use": "current", "postalCode": "RV3 7QT"}]), "Patient.address[0].use",
                    "'current'"),
    "Address.type": (_patient(address=[{"type": "residential", "postalCode": "RV3 7QT"}]),
                     "Patient.address[0].type", "'residential'"),
    "Narrative.status": (_encounter(text={"status": "draft", "div": XHTML}), "Encounter.text.status", "'draft'"),
    "Encounter.statusHistory.status": (
        _encounter(statusHistory=[{"status": "seen", "period": {"start": "2026-10-01"}}]),
        "Encounter.statusHistory[0].status", "'seen'"),
    "DocumentReference.relatesTo.code": (_document(relatesTo=[{"code": "corrects",
                                                               "target": {"reference": "DocumentReference/x"}}]),
                                         "DocumentReference.relatesTo[0].code", "'corrects'"),
    "Quantity.comparator": (_observation(valueQuantity={"value": 150, "comparator": "about"}),
                            "Observation.valueQuantity.comparator", "'about'"),
    "Timing.repeat.durationUnit": (_dosed(duration=1, durationUnit="days"),
                                   "MedicationStatement.dosage[0].timing.repeat.durationUnit", "'days'"),
    "Timing.repeat.periodUnit": (_dosed(periodUnit="day"), "MedicationStatement.dosage[0].timing.repeat.periodUnit",
                                 "'day'"),
    "Timing.repeat.when": (_dosed(when=["MORN", "with breakfast"]),
                           "MedicationStatement.dosage[0].timing.repeat.when[1]", "'with breakfast'"),
    "Timing.repeat.dayOfWeek": (_dosed(dayOfWeek=["Monday"]),
                                "MedicationStatement.dosage[0].timing.repeat.dayOfWeek[0]", "'Monday'"),
    "Condition.clinicalStatus": (condition("gp-c9", WHO, "38341003", "Hypertension",
                                           clinicalStatus={"coding": [{"code": "active"}]}),
                                 "Condition.clinicalStatus", "'active' (no system)"),
    "Condition.verificationStatus": (condition("gp-c9", WHO, "38341003", "Hypertension",
                                               verificationStatus={"text": "refuted"}),
                                     "Condition.verificationStatus", "'refuted' is text, not a coding"),
    "AllergyIntolerance.clinicalStatus": (_allergy(clinicalStatus=_status("condition-clinical", "active")),
                                          "AllergyIntolerance.clinicalStatus",
                                          f"'active' (system {HL7}condition-clinical)"),
    "AllergyIntolerance.verificationStatus": (
        _allergy(verificationStatus=_status("allergyintolerance-verification", "maybe")),
        "AllergyIntolerance.verificationStatus", "'maybe'"),
    "AllergyIntolerance.type": (_allergy(type="allergic"), "AllergyIntolerance.type", "'allergic'"),
    "AllergyIntolerance.category": (_allergy(category=["drug"]), "AllergyIntolerance.category[0]", "'drug'"),
    "AllergyIntolerance.criticality": (_allergy(criticality="maybe"), "AllergyIntolerance.criticality", "'maybe'"),
    "AllergyIntolerance.reaction.severity": (
        _allergy(reaction=[{"manifestation": [{"coding": [{"system": SCT, "code": "271807003"}]}],
                            "severity": "very bad"}]), "AllergyIntolerance.reaction[0].severity", "'very bad'"),
    "MedicationStatement.status": ({**medication("gp-m1", WHO, "Metformin"), "status": "taking"},
                                   "MedicationStatement.status", "'taking'"),
    "Medication.status": (_contained(status="withdrawn"), "MedicationStatement.contained[0].status", "'withdrawn'"),
    "Encounter.status": (_encounter(status="seen by Jane Smith"), "Encounter.status", "'seen by Jane Smith'"),
    "Encounter.location.status": (_encounter(location=[{"location": {"display": "Surgery"}, "status": "here"}]),
                                  "Encounter.location[0].status", "'here'"),
    "Observation.status": (_observation(status="done"), "Observation.status", "'done'"),
    "Procedure.status": ({"resourceType": "Procedure", "id": "gp-x1", "status": "done",
                          "subject": {"reference": WHO}}, "Procedure.status", "'done'"),
    "Immunization.status": ({"resourceType": "Immunization", "id": "gp-i1", "status": "given",
                             "vaccineCode": {"coding": [{"system": SCT, "code": "1119349007"}]},
                             "patient": {"reference": WHO}, "occurrenceDateTime": "2026-10-01"},
                            "Immunization.status", "'given'"),
    "CarePlan.status": ({**_plan(), "status": "current"}, "CarePlan.status", "'current'"),
    "CarePlan.intent": ({**_plan(), "intent": "proposed"}, "CarePlan.intent", "'proposed'"),
    "CarePlan.activity.detail.kind": (_plan(kind="Visit"), "CarePlan.activity[0].detail.kind", "'Visit'"),
    "CarePlan.activity.detail.status": (_plan(status="booked"), "CarePlan.activity[0].detail.status", "'booked'"),
    "DocumentReference.status": (_document(status="final"), "DocumentReference.status", "'final'"),
    "DocumentReference.docStatus": (_document(docStatus="signed"), "DocumentReference.docStatus", "'signed'"),
    "DiagnosticReport.status": ({"resourceType": "DiagnosticReport", "id": "gp-r1", "status": "done",
                                 "code": {"coding": [{"system": SCT, "code": "271649006"}]},
                                 "subject": {"reference": WHO}}, "DiagnosticReport.status", "'done'"),
}
# Bindings that are extensible or preferred, and codes a sender may add beside the required one: accepted.
SOUND: dict[str, dict[str, Any]] = {
    "every element above holding a code of its value set": _allergy(),
    "a dosage's timing in the value sets": _dosed(duration=1, durationUnit="d"),
    "a quantity, an encounter and its location": _encounter(length={"value": 20, "comparator": "<", "unit": "min"}),
    "a clinical status with a SNOMED CT coding beside FHIR's": condition(
        "gp-c9", WHO, "38341003", "Hypertension", clinicalStatus={"coding": [
            {"system": f"{HL7}condition-clinical", "code": "active"}, {"system": SCT, "code": "55561003"}]}),
    "a local category (extensible) and interpretation (extensible)": _observation(
        category=[{"coding": [{"system": "https://local.example/cat", "code": "gp-bp"}]}],
        interpretation=[{"text": "raised, says the nurse"}]),
    "an encounter's local class and type (extensible, example)": _encounter(
        **{"class": {"system": "https://local.example/class", "code": "phone"}},
        type=[{"text": "telephone consultation"}]),
    "a condition with no statuses (0..1)": {k: v for k, v in condition("gp-c9", WHO, "38341003", "Hypertension")
                                            .items() if k != "clinicalStatus"},
}


def test_every_element_of_the_table_is_tested() -> None:
    assert set(OUTSIDE) == set(REQUIRED)


@pytest.mark.parametrize("element", OUTSIDE)
def test_each_code_outside_its_value_set_is_named_with_the_element_the_value_and_the_value_set(element: str) -> None:
    resource, path, value = OUTSIDE[element]
    (problem,) = value_set_problems(resource)
    assert problem.startswith(f"{path}: code-invalid: ") and value in problem, problem
    assert REQUIRED[element].url in problem


@pytest.mark.parametrize("case", SOUND)
def test_extensible_preferred_and_valid_codes_pass(case: str) -> None:
    assert value_set_problems(SOUND[case]) == []


# --- through the real pipeline --------------------------------------------------------------------------------


@pytest.mark.parametrize("element", OUTSIDE)
def test_a_file_feed_batch_entry_outside_a_value_set_is_held_and_the_rest_stored(
        element: str, db: Database, framework: Framework, tmp_path: Path) -> None:
    bad, path, value = OUTSIDE[element]
    message = _gp("batch", patient("gp-1", GOOD_NHS, "Okafor", "Emeka", "1945-03-02"),
                  condition("gp-c1", WHO, "44054006", "Type 2 diabetes mellitus"), bad)
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [message])])
    assert (report.accepted, report.quarantined) == (2, 1), report.quarantine
    (held,) = report.quarantine
    assert held["location"] == "line 1, entry[2]" and held["issue"] == "code-invalid"
    assert held["reason"].startswith(f"{bad['resourceType']}/{bad['id']}: {path}: code-invalid: {value}")
    assert REQUIRED[element].url in held["reason"]
    assert set(_stored(db)) == {"gp-1", "gp-c1"}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_refusal_staged_by_a_worker_process_is_still_code_invalid(
        workers: int, db: Database, framework: Framework, tmp_path: Path) -> None:
    message = _gp("batch", patient("gp-1", GOOD_NHS, "Okafor", "Emeka", "1945-03-02"), _encounter(status="seen"))
    path = write_ndjson(tmp_path / "P81001" / "fhir" / "gp.ndjson", [message])
    report = Pipeline(db, framework, workers=workers, parallel_from_bytes=0).ingest_paths([path])
    refused = [(error.issue, error.where) for error in report.errors]
    assert refused == [("code-invalid", f"{path}, line 1, entry[1], resource")]


@pytest.mark.parametrize("element", OUTSIDE)
def test_an_api_write_outside_a_value_set_is_refused_422_code_invalid(element: str, ics: Ics, db: Database) -> None:
    headers = ics.token("dr.patel", "user/*.read user/*.write") | {"Content-Type": "application/fhir+json"}
    bad, path, value = OUTSIDE[element]
    sent = {**json.loads(json.dumps(bad).replace(f'"{WHO}"', '"Patient/gp-okafor"')), "id": f"vs-{bad['id']}"}
    response = ics.client.put(f"/fhir/{sent['resourceType']}/{sent['id']}", headers=headers, content=json.dumps(sent))
    assert response.status_code == 422, response.text
    (issue,) = response.json()["issue"]
    assert issue["code"] == "code-invalid" and issue["severity"] == "error"
    assert f"{path}: code-invalid: {value}" in issue["diagnostics"] and REQUIRED[element].url in issue["diagnostics"]
    with db.session() as s:
        assert s.scalars(select(Resource).where(Resource.source_id == sent["id"])).first() is None


def test_an_api_batch_stores_the_good_entries_and_answers_the_bad_one_code_invalid(ics: Ics) -> None:
    headers = ics.token("dr.patel", "user/*.read user/*.write") | {"Content-Type": "application/fhir+json"}
    good = condition("gp-n1", "Patient/gp-okafor", "195967001", "Asthma")
    refuted = condition("gp-n2", "Patient/gp-okafor", "38341003", "Hypertension",
                        verificationStatus={"text": "refuted"})
    batch = {"resourceType": "Bundle", "type": "batch",
             "entry": [{"resource": r, "request": {"method": "PUT", "url": f"Condition/{r['id']}"}}
                       for r in (good, refuted)]}
    answered = ics.client.post("/fhir", headers=headers, content=json.dumps(batch))
    assert answered.status_code == 200, answered.text
    first, second = (e["response"] for e in answered.json()["entry"])
    assert first["status"] == "201 Created"
    assert second["status"] == "422 Unprocessable Entity"
    assert second["outcome"]["issue"][0]["code"] == "code-invalid"
    assert "Condition.verificationStatus: code-invalid" in second["outcome"]["issue"][0]["diagnostics"]


def test_a_csv_mapping_that_maps_a_status_outside_the_value_set_is_refused_naming_the_value_set(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSV feed's codes come from its mapping's code maps, checked against the same table when the mapping
    is loaded: a wrong target is named at the header, before any row is mapped with it, and each row is held
    under that reason (to be replayed once the mapping is fixed)."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "LRC-mosaic.yaml").write_text(MOSAIC.read_text().replace(
        "status: {column: status, codes: {Completed: finished, In progress: in-progress}}",
        "status: {column: status, codes: {Completed: finished, In progress: ongoing}}"))
    monkeypatch.setenv("SHAREDCARE_MAPPINGS", str(mappings))
    rows: list[dict[str, str] | str] = [_row(), _row(client_id="C2", assessment_id="A2", status="In progress")]
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), rows)])
    assert [held["location"] for held in report.quarantine] == ["line 2", "line 3"]
    for held in report.quarantine:
        assert held["where"].endswith("mosaic-0001.csv, header")
        assert "'ongoing' is not a code of Encounter.status's value set EncounterStatus" in held["reason"], held
    with db.session() as s:
        assert s.scalars(select(Resource)).first() is None


def test_what_the_hl7_v2_mapping_makes_is_in_the_value_sets(db: Database, framework: Framework,
                                                             tmp_path: Path) -> None:
    """Every code the mapping's tables give (gender, report and result statuses), and an admission and a
    laboratory report as the synthetic feeds send them, pass."""
    assert set(hl7v2_map._GENDER.values()) <= REQUIRED["Patient.gender"].codes
    assert set(hl7v2_map._REPORT_STATUS.values()) <= REQUIRED["DiagnosticReport.status"].codes
    assert set(hl7v2_map._RESULT_STATUS.values()) <= REQUIRED["Observation.status"].codes
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "feed.hl7", [admission(), results()])])
    assert report.quarantined == 0, report.quarantine
    with db.session() as s:
        assert s.scalars(select(Quarantine)).first() is None
