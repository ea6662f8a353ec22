"""What a clinician reads in the record: a measurement with its unit, a lab panel that says what it is, a
hospital stay named by its ward with the day it ended, times as the clock on the wall showed them (UK
time, summer time included), allergies before anything else, and when each service last saw the person."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.builders import SCT, bundle, write_ndjson
from tests.small_ics import Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

UCUM = "http://unitsofmeasure.org"


def _component(code: str, display: str, value: float, unit: str) -> dict[str, object]:
    return {"code": {"coding": [{"system": SCT, "code": code, "display": display}]},
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


@pytest.fixture(autouse=True)
def _feeds(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """Every test's store also holds a district nurse's wound measurement in July, and a hospital stay with
    its blood tests."""
    db: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    tmp = tmp_path
    community = bundle("RYC", "rio", [
        {"resourceType": "Observation", "id": "ryc-w1", "status": "final", "subject": {"reference": "Patient/RYC-9"},
         "code": {"coding": [{"system": SCT, "code": "225552003", "display": "Wound finding"}]},
         "effectiveDateTime": "2026-07-14T09:30:00+01:00",
         "component": [_component("401238003", "Length of wound", 3.0, "cm"),
                       _component("401239006", "Width of wound", 1.9, "cm")]},
    ], timestamp="2026-07-14T09:45:00Z")
    acute = bundle("RXR", "epr", [
        {"resourceType": "Encounter", "id": "rx-e1", "status": "finished", "subject": {"reference": "Patient/MRN1"},
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
                   "display": "inpatient encounter"},
         "serviceType": {"text": "Ward 12 (Care of the Elderly)"},
         "period": {"start": "2026-11-02T07:40:00Z", "end": "2026-11-07T17:00:00Z"}},
        {"resourceType": "Observation", "id": "rx-k1", "status": "final", "subject": {"reference": "Patient/MRN1"},
         "code": {"coding": [{"system": SCT, "code": "1000651000000109", "display": "Serum potassium level"}]},
         "effectiveDateTime": "2026-11-03T08:00:00Z",
         "valueQuantity": {"value": 4.2, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}},
        {"resourceType": "Observation", "id": "rx-na1", "status": "final", "subject": {"reference": "Patient/MRN1"},
         "code": {"coding": [{"system": SCT, "code": "1000661000000107", "display": "Serum sodium level"}]},
         "effectiveDateTime": "2026-11-03T08:00:00Z",
         "valueQuantity": {"value": 142, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}},
        {"resourceType": "DiagnosticReport", "id": "rx-ue1", "status": "final",
         "subject": {"reference": "Patient/MRN1"},
         "code": {"coding": [{"system": SCT, "code": "26958001", "display": "Urea and electrolytes"}]},
         "effectiveDateTime": "2026-11-03T08:00:00Z",
         "result": [{"reference": "Observation/rx-k1"}, {"reference": "Observation/rx-na1"}]},
    ], timestamp="2026-11-07T17:00:00Z")
    gp = bundle("P81001", "emis", [
        {"resourceType": "AllergyIntolerance", "id": "gp-al1", "patient": {"reference": "Patient/gp-okafor"},
         "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]}},
    ], timestamp="2026-11-01T10:00:00Z")
    paths = [write_ndjson(tmp / "rows" / f"{name}.ndjson", [b]) for name, b in (("community", community),
                                                                              ("acute", acute), ("gp", gp))]
    report = Pipeline(db, framework).ingest_paths(paths)
    assert report.quarantined == 0, report.quarantine


def _record(ics: Ics, username: str) -> str:
    done = ics.client.post("/login", data={"username": username, "password": "demo"}, follow_redirects=False)
    assert done.status_code == 303
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"})
    assert page.status_code == 200
    return page.text


def test_a_measurement_in_parts_keeps_each_parts_unit(ics: Ics) -> None:
    page = _record(ics, "dn.williams")
    assert "Length of wound: 3.0 cm; Width of wound: 1.9 cm" in page


def test_a_lab_panel_says_how_many_results_it_holds(ics: Ics) -> None:
    page = _record(ics, "dr.patel")
    assert "Urea and electrolytes" in page and "panel of 2 results" in page
    assert "4.2 mmol/L" in page and "142 mmol/L" in page


def test_a_hospital_stay_is_named_by_its_ward_and_says_when_it_ended(ics: Ics) -> None:
    page = _record(ics, "dr.patel")
    assert "Ward 12 (Care of the Elderly) (inpatient encounter, until 7 Nov 2026)" in page


def test_when_an_item_was_sent_is_said_in_uk_time(ics: Ics) -> None:
    """09:45 UTC on 14 July is 10:45 in the UK (summer time); 17:00 UTC on 7 November is 17:00."""
    page = _record(ics, "dn.williams")
    assert "sent 14 Jul 2026, 10:45" in page
    assert "sent 7 Nov 2026, 17:00" in page


def test_the_summary_starts_with_allergies(ics: Ics) -> None:
    """The shortest list, and the one no one may miss: on a phone it was below every medicine and problem."""
    page = _record(ics, "para.evans")
    summary = page.split('id="summary"', 1)[1].split('id="encounters"', 1)[0]
    sections = re.findall(r'<section id="([a-z-]+)"', summary)
    assert sections[:3] == ["allergies", "medications", "problems"]
    assert "Allergy to penicillin" in summary.split('id="medications"', 1)[0]


def _hospital_in_care_team(page: str) -> str:
    team = page.split('id="care-team"', 1)[1].split('id="care-plans"', 1)[0]
    return team.split("Riverside University Hospitals NHS Trust", 1)[1].split("</dd>", 1)[0]


def test_the_care_team_says_when_each_service_last_saw_the_person(ics: Ics) -> None:
    assert "Last contact: Ward 12 (Care of the Elderly) on 2 Nov 2026." in _hospital_in_care_team(
        _record(ics, "dr.patel"))


def test_a_ward_the_hospital_sent_as_text_is_not_named_to_a_tier_2_reader_who_is_told_the_kind_of_visit(
        ics: Ics) -> None:
    """The stay's service is text alone ("Ward 12 ..."): the district nurse sees encounters at tier 2, coded."""
    page = _record(ics, "dn.williams")
    assert "Last contact: Inpatient encounter on 2 Nov 2026." in _hospital_in_care_team(page)
    assert "Ward 12" not in page
    assert ("Not shown at your access level (inpatient encounter, until 7 Nov 2026)" in page
            and "What this is was typed rather than coded, so it is not shared with your role. Ask Riverside "
                "University Hospitals NHS Trust: 01632 960100." in page)


def test_the_pharmacist_sees_allergies_beside_the_medicines(ics: Ics) -> None:
    _record(ics, "pharm.khan")
    page = ics.client.get(f"/record/{ics.okafor}/medicines").text
    allergies = page.split("<h2>Allergies</h2>", 1)[1].split("<h2>Medicines from every source</h2>", 1)[0]
    assert "Allergy to penicillin" in allergies and "Riverside Medical Centre" in allergies
