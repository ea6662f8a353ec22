"""Every search parameter the CapabilityStatement lists finds the resource it was built from.

Review (FHIR API, 2026-12-07, HIGH): `AllergyIntolerance?patient=X&category=medication` answered 200 with no
entries for a patient with a high-criticality penicillin allergy, so a prescribing system was told there were
none: an allergy's category is a list of plain codes, and the search read CodeableConcepts only; an
Encounter's class (a bare Coding) was never matched either. `status=<system>|active` found nothing, an
allergy's `date` searched its onset, and `code` was listed on CarePlan and `category` on Immunization, where
nothing could match.

One resource of each clinical type for Mr Okafor, carrying the element FHIR R4 defines each parameter on (or,
where R4 has no such parameter on the type, the element docs/api.md says is searched instead). Each parameter
the CapabilityStatement lists for a type is searched with values read from that resource, in each R4 token
form, and must find it; a value it does not carry must not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.builders import bundle, patient, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.fhir.uk_core import server_id
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline

SCT = "http://snomed.info/sct"
OKAFOR = {"reference": "Patient/gp-okafor"}


def cc(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


HL7 = "http://terminology.hl7.org/CodeSystem/"
RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Condition", "id": "cc-1", "subject": OKAFOR, "code": cc(SCT, "38341003"),
     "category": [cc(f"{HL7}condition-category", "problem-list-item")],
     "clinicalStatus": cc(f"{HL7}condition-clinical", "active"), "onsetDateTime": "2015-06-01",
     "recordedDate": "2015-06-02"},
    {"resourceType": "AllergyIntolerance", "id": "cc-2", "patient": OKAFOR, "code": cc(SCT, "91936005"),
     "category": ["medication"], "type": "allergy", "criticality": "high",
     "clinicalStatus": cc(f"{HL7}allergyintolerance-clinical", "active"), "onsetDateTime": "1990-01-01",
     "recordedDate": "2015-06-01"},
    {"resourceType": "Observation", "id": "cc-3", "subject": OKAFOR, "status": "final",
     "code": cc("http://loinc.org", "8867-4"), "category": [cc(f"{HL7}observation-category", "vital-signs")],
     "effectiveDateTime": "2015-06-01T10:00:00Z",
     "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
    {"resourceType": "Procedure", "id": "cc-4", "subject": OKAFOR, "status": "completed", "code": cc(SCT, "80146002"),
     "category": cc(SCT, "387713003"), "performedDateTime": "2015-06-01"},
    {"resourceType": "MedicationStatement", "id": "cc-5", "subject": OKAFOR, "status": "active",
     "medicationCodeableConcept": cc("https://dmd.nhs.uk", "39720311000001101"),
     "category": cc(f"{HL7}medication-statement-category", "community"), "effectiveDateTime": "2015-06-01"},
    {"resourceType": "Immunization", "id": "cc-6", "patient": OKAFOR, "status": "completed",
     "vaccineCode": cc(SCT, "1119349007"), "occurrenceDateTime": "2015-06-01"},
    {"resourceType": "Encounter", "id": "cc-7", "subject": OKAFOR, "status": "finished",
     "class": {"system": f"{HL7}v3-ActCode", "code": "AMB"}, "type": [cc(SCT, "11429006")],
     "period": {"start": "2015-06-01T09:00:00Z", "end": "2015-06-01T09:20:00Z"}},
    {"resourceType": "CarePlan", "id": "cc-8", "subject": OKAFOR, "status": "active", "intent": "plan",
     "category": [cc(SCT, "734163000")], "period": {"start": "2015-06-01", "end": "2015-12-31"}},
    {"resourceType": "DocumentReference", "id": "cc-9", "subject": OKAFOR, "status": "current",
     "type": cc(SCT, "373942005"), "category": [cc(SCT, "734163000")], "date": "2015-06-01T10:00:00Z",
     "content": [{"attachment": {"contentType": "text/plain", "data": "aGVsbG8="}}]},
    {"resourceType": "DiagnosticReport", "id": "cc-10", "subject": OKAFOR, "status": "final",
     "code": cc("http://loinc.org", "58410-2"), "category": [cc(f"{HL7}v2-0074", "HM")],
     "effectiveDateTime": "2015-06-01T10:00:00Z"},
]

# The element each parameter searches, per type: R4's, else the server's stand-in (docs/api.md). A parameter
# listed on a type missing here (R4 defines none there, and none is said to stand in) fails the test.
ELEMENTS: dict[str, dict[str, str]] = {
    "code": {"Condition": "code", "AllergyIntolerance": "code", "Observation": "code", "Procedure": "code",
             "MedicationStatement": "medicationCodeableConcept", "DiagnosticReport": "code",
             "Immunization": "vaccineCode", "Encounter": "type", "DocumentReference": "type"},
    "category": {"Condition": "category", "AllergyIntolerance": "category", "Observation": "category",
                 "Procedure": "category", "MedicationStatement": "category", "DiagnosticReport": "category",
                 "CarePlan": "category", "DocumentReference": "category", "Encounter": "class"},
    "status": {"Condition": "clinicalStatus", "AllergyIntolerance": "clinicalStatus"}
              | {t: "status" for t in ("Observation", "Procedure", "MedicationStatement", "Immunization", "Encounter",
                                        "CarePlan", "DocumentReference", "DiagnosticReport")},
    "date": {"Condition": "onsetDateTime", "AllergyIntolerance": "recordedDate", "Observation": "effectiveDateTime",
             "Procedure": "performedDateTime", "MedicationStatement": "effectiveDateTime",
             "Immunization": "occurrenceDateTime", "Encounter": "period", "CarePlan": "period",
             "DocumentReference": "date", "DiagnosticReport": "effectiveDateTime"},
}
# The code system R4 binds each plain `code` element above to (hl7.org/fhir/R4, each resource's bindings).
IMPLIED = {"AllergyIntolerance.category": "http://hl7.org/fhir/allergy-intolerance-category",
           "Observation.status": "http://hl7.org/fhir/observation-status",
           "Procedure.status": "http://hl7.org/fhir/event-status",
           "MedicationStatement.status": "http://hl7.org/fhir/CodeSystem/medication-statement-status",
           "Immunization.status": "http://hl7.org/fhir/event-status",
           "Encounter.status": "http://hl7.org/fhir/encounter-status",
           "CarePlan.status": "http://hl7.org/fhir/request-status",
           "DocumentReference.status": "http://hl7.org/fhir/document-reference-status",
           "DiagnosticReport.status": "http://hl7.org/fhir/diagnostic-report-status"}


def _values(resource: dict[str, Any], name: str, kind: str) -> tuple[list[str], list[str]]:
    """Values of the parameter that must find the resource, and values that must not."""
    if name == "_lastUpdated":
        return ["ge2020", "le2999"], ["ge2999"]
    element = ELEMENTS[name][resource["resourceType"]]
    value = resource[element]
    if kind == "date":
        start = value["start"] if isinstance(value, dict) else value
        return [start[:4], ("ge" if isinstance(value, dict) else "") + start[:10]], ["2014", "gt2016"]
    value = value[0] if isinstance(value, list) else value
    coding = ({"system": IMPLIED[f"{resource['resourceType']}.{element}"], "code": value} if isinstance(value, str)
              else value["coding"][0] if "coding" in value else value)
    system, code = coding["system"], coding["code"]
    return [code, f"{system}|{code}", f"{system}|", f"other,{code}"], [f"{system}|x{code}", f"|{code}", f"x{code}"]


def test_every_listed_search_parameter_finds_the_resource_it_was_built_from(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    gp = bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), *RESOURCES],
                timestamp="2026-11-03T09:00:00Z")
    report = Pipeline(ics.database, framework).ingest_paths([write_ndjson(tmp_path / "claims.ndjson", [gp])])
    assert report.quarantined == 0, report.quarantine
    headers = ics.open_record("dr.patel")
    statement = ics.client.get("/fhir/metadata").json()
    listed = {r["type"]: r for r in statement["rest"][0]["resource"]}
    problems = []
    for resource in RESOURCES:
        rtype, wanted = resource["resourceType"], server_id("P81001", resource["resourceType"], resource["id"])

        def found(name: str, value: str, rtype: str = rtype, wanted: str = wanted) -> bool | str:
            response = ics.client.get(f"/fhir/{rtype}", params={"patient": ics.okafor, name: value}, headers=headers)
            if response.status_code != 200:
                return f"{response.status_code} {response.json()['issue'][0]['diagnostics']}"
            return any(e["resource"]["id"] == wanted for e in response.json()["entry"])

        for param in listed[rtype]["searchParam"]:
            name, kind = param["name"], param["type"]
            if name == "patient":
                continue
            if name != "_lastUpdated" and rtype not in ELEMENTS.get(name, {}):
                problems.append(f"{rtype}?{name} is listed, but R4 defines no such parameter there")
                continue
            finding, missing = _values(resource, name, kind)
            problems += [f"{rtype}?{name}={v} answered {answer}" for v in finding
                         if (answer := found(name, v)) is not True]
            problems += [f"{rtype}?{name}={v} found it" for v in missing if found(name, v) is not False]
        for include in listed[rtype]["searchInclude"]:
            searched = ics.client.get(f"/fhir/{rtype}", params={"patient": ics.okafor, "_include": include},
                                      headers=headers).json()
            modes = [e["search"]["mode"] for e in searched["entry"] if e["resource"]["resourceType"] == "Patient"]
            if modes != ["include"]:
                problems.append(f"{rtype}?_include={include}: the Patient's search modes are {modes}")
    assert not problems, "\n".join(problems)
