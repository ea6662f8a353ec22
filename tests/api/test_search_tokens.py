"""Token search as FHIR R4 defines it, on what each type carries: a CodeableConcept, a bare Coding (an
Encounter's class), a plain code (an allergy's category, a status) and a medicine named in a contained
Medication; refusals that name the parameter and say whether it is not done or not readable.

Review (FHIR API, 2026-12-07): HIGH, `AllergyIntolerance?patient=X&category=medication` answered 200 with no
entries for a patient with a high-criticality penicillin allergy. MEDIUM, `code=system|` and `code=|code` found
nothing, nor did `status=<system>|active`; an empty `code=` found nothing while an empty `status=` found
everything; a MedicationStatement naming its medicine in a contained Medication was not found by its code.
LOW, an allergy's `date` searched its onset, not when it was recorded (R4); every refusal was `invalid`,
naming no parameter; `_count=1_0` and Arabic-Indic digits were taken as numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.builders import SCT, bundle, condition, patient, write_ndjson
from tests.fhir_bundles import resources
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline

DMD = "https://dmd.nhs.uk"
WARFARIN = "319733000"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def _gp_sends(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """His GP adds a penicillin allergy, a clinic visit, warfarin (named in a contained Medication) and a
    problem coded in a local scheme without a system."""
    gp = bundle("P81001", "emis", [
        patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        {"resourceType": "AllergyIntolerance", "id": "gp-al1", "patient": {"reference": "Patient/gp-okafor"},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                        "code": "active"}]},
         "category": ["medication"], "criticality": "high", "type": "allergy",
         "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]},
         "onsetDateTime": "1990-05-01", "recordedDate": "2010-05-01"},
        {"resourceType": "Encounter", "id": "gp-e1", "status": "finished",
         "subject": {"reference": "Patient/gp-okafor"}, "class": {"system": ACT, "code": "AMB"},
         "period": {"start": "2026-01-05T09:00:00Z", "end": "2026-01-05T09:10:00Z"}},
        {"resourceType": "MedicationStatement", "id": "gp-m9", "status": "active",
         "contained": [{"resourceType": "Medication", "id": "med1",
                        "code": {"coding": [{"system": DMD, "code": WARFARIN, "display": "Warfarin 1mg tablets"}]}}],
         "medicationReference": {"reference": "#med1"}, "subject": {"reference": "Patient/gp-okafor"},
         "effectiveDateTime": "2026-01-01"},
        {**condition("gp-c9", "Patient/gp-okafor", "LOCAL-DM", "Diabetes (practice code)"),
         "code": {"coding": [{"code": "LOCAL-DM", "display": "Diabetes (practice code)"}]}},
    ], timestamp="2026-11-02T09:00:00Z")
    report = Pipeline(ics.database, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [gp])])
    assert report.quarantined == 0, report.quarantine


def _found(ics: Ics, headers: dict[str, str], rtype: str, **params: str) -> list[dict]:
    response = ics.client.get(f"/fhir/{rtype}", params={"patient": ics.okafor, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return [r for r in resources(response.json()) if r["resourceType"] == rtype]


def _refused(ics: Ics, headers: dict[str, str], rtype: str, query: str) -> dict:
    response = ics.client.get(f"/fhir/{rtype}?patient={ics.okafor}&{query}", headers=headers)
    assert response.status_code == 400, response.text
    issue: dict = response.json()["issue"][0]
    return issue


def test_a_prescribing_system_asking_for_medication_allergies_is_given_the_penicillin_allergy(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    _gp_sends(ics, framework, tmp_path)
    headers = ics.open_record("dr.patel")
    for category in ("medication", "http://hl7.org/fhir/allergy-intolerance-category|medication",
                     "food,medication"):
        (allergy,) = _found(ics, headers, "AllergyIntolerance", category=category)
        assert allergy["criticality"] == "high" and allergy["code"]["coding"][0]["code"] == "91936005"
    assert _found(ics, headers, "AllergyIntolerance", category="food") == []
    assert _found(ics, headers, "AllergyIntolerance", category="http://other.example/cs|medication") == []


def test_a_visit_is_found_by_its_class(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    _gp_sends(ics, framework, tmp_path)
    headers = ics.open_record("dr.patel")
    for category in ("AMB", f"{ACT}|AMB"):
        assert [e["class"]["code"] for e in _found(ics, headers, "Encounter", category=category)] == ["AMB"]
    assert _found(ics, headers, "Encounter", category="IMP") == []


def test_each_r4_token_form_matches_as_defined(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    _gp_sends(ics, framework, tmp_path)
    headers = ics.open_record("dr.patel")

    def codes(**params: str) -> list[str]:
        return sorted(c["code"]["coding"][0]["code"] for c in _found(ics, headers, "Condition", **params))

    assert codes(code=f"{SCT}|") == ["105629000", "35489007", "44054006"]  # any code of the system
    assert codes(code="|LOCAL-DM") == ["LOCAL-DM"]  # a code of no system
    assert codes(code="|44054006") == []  # the diabetes has a system
    assert codes(code="LOCAL-DM") == ["LOCAL-DM"] and codes(code=f"{SCT}|LOCAL-DM") == []
    assert codes(code=f"{SCT}|44054006") == ["44054006"]
    assert len(codes(status=f"{CLINICAL}|active")) == 4 and codes(status="http://other.example/cs|active") == []
    (visit,) = _found(ics, headers, "Encounter", status="http://hl7.org/fhir/encounter-status|finished")
    assert visit["status"] == "finished"
    assert _found(ics, headers, "Encounter", status="|finished") == []  # a status has its system, R4's


@pytest.mark.parametrize(("rtype", "query"), [
    ("Condition", "code="), ("Condition", "category="), ("Condition", "status="), ("Condition", "code=|"),
    ("Condition", "code=44054006,"), ("MedicationStatement", "status=,active")])
def test_an_empty_token_is_refused_naming_it(ics: Ics, rtype: str, query: str) -> None:
    issue = _refused(ics, ics.open_record("dr.patel"), rtype, query)
    name = query.split("=")[0]
    assert issue["code"] == "invalid" and issue["expression"] == [name] and "empty" in issue["diagnostics"]


def test_a_medicine_named_in_a_contained_medication_is_found_by_its_code(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    _gp_sends(ics, framework, tmp_path)
    headers = ics.open_record("dr.patel")
    for code in (WARFARIN, f"{DMD}|{WARFARIN}"):
        (warfarin,) = _found(ics, headers, "MedicationStatement", code=code)
        assert warfarin["medicationReference"] == {"reference": "#med1"}
    metformin = _found(ics, headers, "MedicationStatement", code="39720311000001101")
    assert [m["medicationCodeableConcept"]["coding"][0]["display"] for m in metformin] == ["Metformin 500mg tablets"]


def test_a_parameter_nothing_of_the_type_can_match_is_neither_listed_nor_taken(ics: Ics) -> None:
    listed = {r["type"]: {p["name"] for p in r.get("searchParam", [])}
              for r in ics.client.get("/fhir/metadata").json()["rest"][0]["resource"]}
    assert "code" not in listed["CarePlan"] and "category" not in listed["Immunization"]
    assert "category" in listed["CarePlan"] and "code" in listed["Immunization"]
    headers = ics.open_record("dr.patel")
    for rtype, query in (("CarePlan", "code=734163000"), ("Immunization", "category=x")):
        issue = _refused(ics, headers, rtype, query)
        assert issue["code"] == "not-supported" and issue["expression"] == [query.split("=")[0]]


@pytest.mark.parametrize(("query", "code", "named"), [
    ("colour=blue", "not-supported", "colour"), ("code:text=diabetes", "not-supported", "code:text"),
    ("_total=accurate", "not-supported", "_total"), ("_sort=_id", "not-supported", "_sort"),
    ("_include=Condition:encounter", "not-supported", "_include"),
    ("date=yesterday", "invalid", "date"), ("_lastUpdated=soon", "invalid", "_lastUpdated"),
    ("_count=1_0", "invalid", "_count"), ("_count=%D9%A1", "invalid", "_count"),  # Arabic-Indic one
    ("_count=%202%20", "invalid", "_count"), ("_count=0", "invalid", "_count"),
    ("_offset=%EF%BC%91", "invalid", "_offset"),  # a fullwidth one
])
def test_a_refusal_names_the_parameter_and_says_whether_it_is_not_done_or_not_readable(
        ics: Ics, query: str, code: str, named: str) -> None:
    issue = _refused(ics, ics.open_record("dr.patel"), "Condition", query)
    assert (issue["code"], issue["expression"]) == (code, [named]), issue


def test_a_count_in_plain_digits_is_taken(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    assert len(_found(ics, headers, "Condition", _count="2")) == 2
    assert len(_found(ics, headers, "Condition", _count="0002")) == 2


def test_an_allergy_is_dated_by_when_it_was_recorded(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """R4's AllergyIntolerance `date` is its recordedDate: 'allergies recorded since' is what a system
    keeping its own list up to date asks."""
    _gp_sends(ics, framework, tmp_path)
    headers = ics.open_record("dr.patel")
    assert [a["recordedDate"] for a in _found(ics, headers, "AllergyIntolerance", date="2010")] == ["2010-05-01"]
    assert len(_found(ics, headers, "AllergyIntolerance", date="ge2010-01-01")) == 1
    assert _found(ics, headers, "AllergyIntolerance", date="1990") == []  # its onset
