"""The pseudonymiser keeps only what it declares: identifying values hidden in unexpected places of a
resource (a note, a display, an extension, a contained Patient, an identifier, a practitioner) never
come out, and the keys make pseudonyms that only this deployment and purpose can reproduce."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import FRAMEWORK_PATH

from sharedcare.governance.framework import Role, load_framework
from sharedcare.governance.pseudonymise import Pseudonymiser, Unreadable, birth_shift, postcode_district

SECRET = "a-test-secret-of-some-length"
FRAMEWORK = load_framework(FRAMEWORK_PATH)  # for module-level helpers, which cannot take function fixtures
ANALYST = FRAMEWORK.roles["analyst"]
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
PERSON = "person-1"
DOB = "1945-03-02"
NAME = "Okafor"
ETHNIC = "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland"

SNEAKY_OBSERVATION = {
    "resourceType": "Observation", "id": "obs-1", "status": "final",
    "meta": {"source": "https://fhir.nhs.uk/Id/ods-organization-code|RXR#lab", "lastUpdated": "2026-11-01T09:00:00Z",
             "security": [{"system": "x", "code": "y"}], "tag": [{"display": NAME}]},
    "text": {"status": "generated", "div": f"<div>{NAME}</div>"},
    "identifier": [{"system": "https://fhir.rxr.nhs.uk/Id/accession", "value": "ACC-123456"}],
    "contained": [{"resourceType": "Patient", "id": "p", "name": [{"family": NAME}]}],
    "extension": [{"url": "https://example.org/next-of-kin", "valueString": f"Ada {NAME}"}],
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "271649006", "display": f"BP of {NAME}"}],
             "text": f"Mr {NAME}'s blood pressure"},
    "subject": {"reference": "Patient/source-patient-9", "display": f"Emeka {NAME}",
                "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
    "encounter": {"reference": "Encounter/enc-1"},
    "effectiveDateTime": f"{DOB}T10:00:00Z",
    "issued": "2026-11-01T09:00:00Z",
    "performer": [{"reference": "Practitioner/dr-1", "display": "Dr Paul Stenson"},
                  {"type": "Organization", "display": "Riverside University Hospitals",
                   "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RXR"}}],
    "valueQuantity": {"value": 149, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
    "valueString": f"{NAME} refused",
    "note": [{"authorString": "Nurse Jones", "text": f"{NAME}'s daughter says he lives alone"}],
    "component": [{"code": {"coding": [{"system": "http://snomed.info/sct", "code": "72313002"}]},
                   "valueQuantity": {"value": 149}, "extension": [{"url": "x", "valueString": NAME}]}],
}


def _out(resource: dict[str, object], secret: str = SECRET, purpose: str = "secondary-use",
         exported: frozenset[str] = frozenset({"Encounter/enc-1"}), role: Role = ANALYST) -> dict[str, object]:
    """The resource pseudonymised in an export that holds `exported` too, made by someone in `role`."""
    pseudonymiser = Pseudonymiser(secret, purpose, FRAMEWORK, role)
    pseudonymiser.for_person(PERSON, DOB)
    shaped = pseudonymiser.decode(str(resource["resourceType"]), json.dumps(resource))
    result: dict[str, object] = json.loads(pseudonymiser.encode(shaped, str(resource["id"]), exported))
    return result


def test_only_declared_elements_leave_and_nothing_that_names_anyone() -> None:
    out = _out(SNEAKY_OBSERVATION)
    text = json.dumps(out)
    for secret in (NAME, "9434765919", "ACC-123456", "Stenson", "Jones", "source-patient-9", "obs-1", "dr-1",
                   "Riverside", "refused", "lives alone"):
        assert secret not in text
    assert set(out) == {"resourceType", "id", "meta", "status", "code", "subject", "encounter", "effectiveDateTime",
                        "performer", "valueQuantity", "component"}
    assert out["code"] == {"coding": [{"system": "http://snomed.info/sct", "code": "271649006"}]}
    assert out["performer"] == [{"type": "Organization", "identifier": {  # the practitioner left nothing
        "system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RXR"}}]
    assert out["meta"] == {"source": "https://fhir.nhs.uk/Id/ods-organization-code|RXR#lab",
                           "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                                         "code": "PSEUDED"}]}


def test_organisations_of_a_service_the_role_may_not_receive_are_not_named() -> None:
    """Which organisations an extract names follows the framework and the exporter's role: the mental health
    trust (sensitive) never; the council's social care (the analyst's tier 2) only for a role given it."""
    def ods(code: str) -> dict[str, object]:
        return {"type": "Organization", "identifier": {"system": ODS, "value": code}}

    visit = {"resourceType": "Encounter", "id": "e", "status": "finished", "class": {"code": "EMER"},
             "meta": {"source": f"{ODS}|RYA#epcr"}, "serviceProvider": ods("RYA"),
             "hospitalization": {"origin": ods("LRC"), "destination": ods("RXM")}}
    assert _out(visit)["hospitalization"] == {"origin": ods("LRC")}
    no_social_care = ANALYST.model_copy(update={"tiers": {**ANALYST.tiers, "social_care": 1}})
    out = _out(visit, role=no_social_care)
    assert "hospitalization" not in out and out["serviceProvider"] == ods("RYA")
    assert out["meta"]["source"] == f"{ODS}|RYA#epcr"  # type: ignore[index]
    assert "source" not in _out({**visit, "meta": {"source": f"{ODS}|RXM#rio"}})["meta"]  # type: ignore[operator]


def test_elements_left_empty_are_dropped_not_written_as_empty_objects() -> None:
    statement = {"resourceType": "MedicationStatement", "id": "m", "status": "active",
                 "subject": {"reference": "Patient/x"}, "dosage": [{"text": f"{NAME} takes one daily"}],
                 "statusReason": [{"text": "stopped"}], "medicationCodeableConcept": {"text": "Metformin"}}
    assert _out(statement) == {"resourceType": "MedicationStatement", "id": _out(statement)["id"],
                               "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                                "v3-ObservationValue", "code": "PSEUDED"}]},
                               "status": "active", "subject": _out(statement)["subject"]}


def _shift(resource: dict[str, object], person: str = PERSON, purpose: str = "secondary-use",
           dob: str = DOB) -> dict[str, object]:
    pseudonymiser = Pseudonymiser(SECRET, purpose)
    pseudonymiser.for_person(person, dob)
    shaped = pseudonymiser.decode(str(resource["resourceType"]), json.dumps(resource))
    result: dict[str, object] = json.loads(pseudonymiser.encode(shaped, str(resource["id"]), frozenset()))
    return result


def _day(text: object) -> date:
    return date.fromisoformat(str(text))


def test_every_date_of_a_person_moves_by_one_shift_to_the_day_and_instants_do_not_leave() -> None:
    """A birth-day event leaves as another day of the birth month; every other date of the person moves
    by the same number of days, so intervals within the person are exact."""
    born = _out(SNEAKY_OBSERVATION)["effectiveDateTime"]
    later = _out({**SNEAKY_OBSERVATION, "effectiveDateTime": "2026-03-04T10:22:31+00:00"})["effectiveDateTime"]
    instant = _out({**SNEAKY_OBSERVATION, "effectiveDateTime": None, "effectiveInstant": "2026-03-04T10:22:31Z"})
    assert str(born)[:7] == DOB[:7] and born != DOB and "issued" not in _out(SNEAKY_OBSERVATION)
    assert _day(later) - _day(born) == date(2026, 3, 4) - date.fromisoformat(DOB)
    assert instant["effectiveDateTime"] == later and "effectiveInstant" not in instant
    stay = {"resourceType": "Encounter", "id": "e", "status": "finished", "class": {"code": "IMP"},
            "period": {"start": "2026-01-30T23:10:00Z", "end": "2026-02-02T09:00:00Z"}}
    period = _out(stay)["period"]
    assert _day(period["end"]) - _day(period["start"]) == timedelta(days=3)  # type: ignore[index]
    assert _day(period["start"]) - _day(later) == date(2026, 1, 30) - date(2026, 3, 4)  # type: ignore[index]
    assert _out({**SNEAKY_OBSERVATION, "effectiveDateTime": "2026-03"})["effectiveDateTime"] == "2026-03"


def test_the_shifted_day_of_birth_says_nothing_of_the_true_day() -> None:
    """Over many people born on the 1st, and many born on the 28th, of February 2025, the shifted day of
    birth an age-tied event gives back is spread over the whole month alike."""
    vaccine = {"resourceType": "Immunization", "id": "i", "status": "completed",
               "vaccineCode": {"coding": [{"system": "http://snomed.info/sct", "code": "61153008"}]}}
    spread = {}
    for dob in ("2025-02-01", "2025-02-28"):
        given = (date.fromisoformat(dob) + timedelta(days=400)).isoformat()
        days = [_day(_shift({**vaccine, "occurrenceDateTime": given}, person=f"p{n}", dob=dob)["occurrenceDateTime"])
                - timedelta(days=400) for n in range(2800)]
        assert {d.strftime("%Y-%m") for d in days} == {"2025-02"}
        spread[dob] = Counter(d.day for d in days)
    for counts in spread.values():
        assert set(counts) == set(range(1, 29)) and max(counts.values()) < 2 * min(counts.values())


def test_a_person_s_shift_is_the_same_for_a_purpose_and_differs_across_purposes() -> None:
    event = {**SNEAKY_OBSERVATION, "effectiveDateTime": "2026-03-04"}
    first, again = _shift(event), _shift(event)
    research = [_shift(event, person=f"p{n}", purpose="research")["effectiveDateTime"] for n in range(50)]
    ours = [_shift(event, person=f"p{n}")["effectiveDateTime"] for n in range(50)]
    assert first["effectiveDateTime"] == again["effectiveDateTime"]
    assert sum(a != b for a, b in zip(research, ours, strict=True)) > 40
    assert len(set(ours)) > 20  # people's shifts differ: a calendar day is not kept across people


@given(st.dates(date(1900, 1, 1), date(2030, 12, 31)), st.integers(0, 2**48))
def test_the_shift_keeps_the_month_of_birth(born: date, draw: int) -> None:
    assert (born + birth_shift(draw, born)).strftime("%Y-%m") == born.strftime("%Y-%m")
    assert abs(birth_shift(draw, None).days) <= 30


def test_references_are_keyed_pseudonyms_the_same_for_a_purpose_and_different_across_purposes() -> None:
    first, again = _out(SNEAKY_OBSERVATION), _out(SNEAKY_OBSERVATION)
    research, other_key = _out(SNEAKY_OBSERVATION, purpose="research"), _out(SNEAKY_OBSERVATION, secret="another")
    pseudonym = Pseudonymiser(SECRET, "secondary-use").pseudonym("Patient", PERSON)
    assert first["subject"] == {"reference": f"Patient/{pseudonym}"} == again["subject"]
    assert first["id"] == again["id"] and first["encounter"] == again["encounter"]
    for different in (research, other_key):
        assert different["id"] != first["id"] and different["subject"] != first["subject"]
        assert different["encounter"] != first["encounter"]


def test_a_reference_to_a_resource_the_export_does_not_hold_is_removed() -> None:
    encounter = {"resourceType": "Encounter", "id": "enc-2", "status": "finished",
                 "subject": {"reference": "Patient/x"}, "class": {"code": "IMP"},
                 "partOf": {"reference": "Encounter/enc-1"},
                 "reasonReference": [{"reference": "Condition/c-1"}, {"reference": "Condition/c-2"}],
                 "diagnosis": [{"condition": {"reference": "Condition/c-1"}, "rank": 1},
                               {"condition": {"reference": "Condition/c-2"}, "rank": 2}]}
    out = _out(encounter, exported=frozenset({"Condition/c-2"}))
    c2 = _out(encounter, exported=frozenset({"Condition/c-1", "Condition/c-2"}))["reasonReference"][1]  # type: ignore[index]
    assert "partOf" not in out and out["reasonReference"] == [c2]
    assert out["diagnosis"] == [{"condition": c2, "rank": 2}]  # a diagnosis needs its condition: none is left empty


def test_a_quantity_keeps_its_ucum_code_as_its_unit_and_no_free_text() -> None:
    observation = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"coding": [{"code": "x"}]},
                   "valueQuantity": {"value": 5.1, "unit": "mmol/L (fasting, per Mrs Okafor)",
                                     "system": "http://unitsofmeasure.org", "code": "mmol/L"},
                   "referenceRange": [{"low": {"value": 3, "unit": "Okafor"}}]}
    out = _out(observation)
    assert out["valueQuantity"] == {"value": 5.1, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                                    "code": "mmol/L"}
    assert out["referenceRange"] == [{"low": {"value": 3}}]


def test_the_patient_keeps_month_of_birth_district_practice_and_ethnicity_only() -> None:
    patient = {
        "resourceType": "Patient", "id": "gp-okafor",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
        "name": [{"family": NAME, "given": ["Emeka"]}], "gender": "male", "birthDate": DOB,
        "telecom": [{"system": "phone", "value": "07700 900123"}],
        "address": [{"use": "home", "line": ["1 High Street"], "postalCode": "RV3 7QT"},
                    {"use": "home", "postalCode": "ZZ9 9ZZ", "period": {"end": "2001-01-01"}}],
        "contact": [{"name": {"family": NAME, "given": ["Ada"]}}],
        "generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code",
                                                "value": "P81001"}, "display": "Riverside Medical Centre"},
                                {"reference": "Practitioner/dr-1", "display": "Dr Amara Patel"}],
        "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
                       "valueCodeableConcept": {"coding": [{"system": ETHNIC, "code": "N", "display": "African"}]}},
                      {"url": "https://example.org/religion", "valueString": "x"}],
        "deceasedDateTime": "2026-10-01T03:00:00Z",
    }
    pseudonymiser = Pseudonymiser(SECRET, "secondary-use")
    pseudonymiser.for_person(PERSON, DOB)
    out = json.loads(pseudonymiser.patient(patient, PERSON))
    assert out["id"] == pseudonymiser.pseudonym("Patient", PERSON)
    died = (date(2026, 10, 1) + pseudonymiser.date_shift(PERSON, DOB)).strftime("%Y-%m")  # as their other dates
    assert (out["birthDate"], out["deceasedDateTime"], out["gender"]) == ("1945-03", died, "male")
    with pytest.raises(ValueError, match="another person"):
        pseudonymiser.patient(patient, "someone-else")
    assert out["address"] == [{"use": "home", "postalCode": "RV3"}]
    assert out["generalPractitioner"] == [{"type": "Organization", "identifier": {
        "system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "P81001"}}]
    assert out["extension"] == [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
                                 "valueCodeableConcept": {"coding": [{"system": ETHNIC, "code": "N"}]}}]
    assert set(out) == {"resourceType", "id", "meta", "gender", "birthDate", "deceasedDateTime", "address",
                        "generalPractitioner", "extension"}


@pytest.mark.parametrize(("postcode", "district"), [("RV3 7QT", "RV3"), ("rv37qt", "RV3"), ("SW1A 1AA", "SW1A"),
                                                    ("M1 1AE", "M1"), ("nonsense", None), ("ABCDEF", None), ("", None)])
def test_postcodes_become_their_district(postcode: str, district: str | None) -> None:
    assert postcode_district(postcode) == district


def test_a_resource_that_does_not_fit_its_shape_is_refused_not_passed_on() -> None:
    pseudonymiser = Pseudonymiser(SECRET, "secondary-use")
    pseudonymiser.for_person(PERSON, None)
    with pytest.raises(Unreadable):
        pseudonymiser.decode("Observation", json.dumps({"resourceType": "Observation", "status": {"x": 1}}))
    with pytest.raises(Unreadable):
        pseudonymiser.decode("Practitioner", json.dumps({"resourceType": "Practitioner"}))


def _pruned(node: object) -> object:
    """What `_without_empties` must do, written the slow, obvious way."""
    if isinstance(node, dict):
        kept = {k: _pruned(v) for k, v in node.items()}
        return {k: v for k, v in kept.items() if v not in ({}, [])}
    if isinstance(node, list):
        return [item for item in (_pruned(v) for v in node) if item not in ({}, [])]
    return node


# FHIR JSON: objects whose values are scalars, objects or arrays of scalars or objects (never of arrays)
_json = st.recursive(st.integers(0, 9) | st.sampled_from(["a", "{beats}/min", "x]"]),
                     lambda inner: st.dictionaries(st.sampled_from(["code", "type", "coding", "value"]),
                                                   inner | st.lists(inner, max_size=3), max_size=3),
                     max_leaves=12)


@given(st.dictionaries(st.sampled_from(["status", "code", "dosage", "performer"]), _json | st.lists(_json, max_size=3),
                       max_size=4))
def test_pruning_empty_elements_keeps_valid_json_and_everything_else(resource: dict[str, object]) -> None:
    from sharedcare.governance.pseudonymise import _without_empties

    line = msgspec.json.encode(resource)
    assert json.loads(_without_empties(line)) == _pruned(resource)


def test_empties_left_inside_empties_are_all_removed() -> None:
    from sharedcare.governance.pseudonymise import _without_empties

    line = b'{"resourceType":"X","a":{"b":{"c":[{}]}},"d":[{},{"e":1},{}],"f":[{"g":{}}],"h":2}'
    assert _without_empties(line) == b'{"resourceType":"X","d":[{"e":1}],"h":2}'
