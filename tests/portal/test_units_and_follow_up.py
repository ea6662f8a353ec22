"""Review L2 and L3: units as a clinician writes them, values with the precision their source sent, and a
care plan's follow-up instructions joined cleanly, on Results, Care plans and What changed."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sharedcare.portal import present
from sharedcare.synth import codes
from sharedcare.synth.clinical import Result
from sharedcare.synth.fhir_feeds import observation


def _obs(code: str, value: float, unit: str) -> dict[str, object]:
    return {"resourceType": "Observation", "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def test_units_read_as_a_clinician_writes_them() -> None:
    assert present.detail(_obs("1022541000000102", 10.0, "10*9/L")) == "10.0 ×10⁹/L"
    assert present.detail(_obs("1000731000000107", 103, "umol/L")) == "103 µmol/L"
    assert present.detail(_obs("364075005", 79, "/min")) == "79 beats/min"  # heart rate
    assert present.detail(_obs("86290005", 19, "/min")) == "19 breaths/min"  # not beats: a respiratory rate
    assert present.detail(_obs("12345", 3, "/min")) == "3 per minute"  # a count the page cannot name
    assert present.quantity({"value": 4, "unit": "{beats}/min"}) == "4 beats/min"
    pulse = {**_obs("364075005", 79, "/min"), "referenceRange": [{"low": {"value": 60, "unit": "/min"},
                                                                  "high": {"value": 100, "unit": "/min"}}]}
    assert present.detail(pulse) == "79 beats/min (range 60 to 100 beats/min)"  # the range in the same words


def test_a_value_keeps_the_precision_its_source_sent() -> None:
    """The store keeps what a feed sent (JSON 45 and 45.0 apart; HL7 v2 "59" as 59): a lab's "5.0" is a
    precision, so nothing is trimmed on the page."""
    assert present.quantity({"value": 5.0, "unit": "mmol/L"}) == "5.0 mmol/L"
    assert present.quantity({"value": 59, "unit": "umol/L"}) == "59 µmol/L"
    assert json.loads(json.dumps({"v": 45.0}))["v"] == 45.0 and isinstance(json.loads("45"), int)


def test_the_synthetic_gp_sends_a_whole_number_result_without_a_decimal_point() -> None:
    """The demo's GP showed "45.0" beside the hospital's "59": its feed wrote creatinine, measured to whole
    units, as 45.0. Now it sends 45, as a lab reports it, and a one-decimal test keeps its decimal."""
    at = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    creatinine = observation({"reference": "Patient/p"}, Result(codes.CREATININE, at, 45.0), "laboratory", None)
    white_cells = observation({"reference": "Patient/p"}, Result(codes.WHITE_CELLS, at, 10.0), "laboratory", None)
    assert json.dumps(creatinine["valueQuantity"]["value"]) == "45"
    assert json.dumps(white_cells["valueQuantity"]["value"]) == "10.0"
    assert present.detail(creatinine).startswith("45 µmol/L")


def _care_plan(*activities: str) -> dict[str, object]:
    return {"resourceType": "CarePlan", "activity": [{"detail": {"description": a}} for a in activities]}


def test_follow_up_instructions_are_joined_cleanly() -> None:
    said = present.detail(_care_plan("GP to review bloods in 2 weeks.", "Amlodipine 5 mg: check blood pressure"))
    assert said == "GP to review bloods in 2 weeks. Amlodipine 5 mg: check blood pressure" and ".;" not in said
    assert present.detail(_care_plan("Wound dressing", "Visits on Tuesdays")) == "Wound dressing; Visits on Tuesdays"


def test_a_finding_written_as_a_sentence_and_its_measurements_are_joined_cleanly() -> None:
    wound = {"resourceType": "Observation", "valueString": "Granulating, no signs of infection. Dressing renewed.",
             "component": [{"code": {"text": "Length of wound"}, "valueQuantity": {"value": 3.0, "unit": "cm"}},
                           {"code": {"text": "Width of wound"}, "valueQuantity": {"value": 1.9, "unit": "cm"}}]}
    assert present.detail(wound) == ("Granulating, no signs of infection. Dressing renewed. Length of wound: 3.0 cm; "
                                     "Width of wound: 1.9 cm")
