"""Every resource falls into exactly one data category, by its codes, the service that sent it and its
type; free text and documents need tier 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from sharedcare.governance.classify import at_tier, classify, masked
from sharedcare.governance.framework import Framework, hospital_service_system
from sharedcare.synth import generate

SCT = "http://snomed.info/sct"
TF = "https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary-treatment-function"
HIV = {"coding": [{"system": SCT, "code": "86406008", "display": "HIV infection"}]}
METFORMIN = {"system": "https://dmd.nhs.uk", "code": "109081006", "display": "Metformin 500mg tablets"}
MASKED = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "masked",
                      "display": "Masked"}], "text": "Not shown at your access level"}


def _coded(rtype: str, code: str = "44054006", field: str = "code", **extra: object) -> dict:
    return {"resourceType": rtype, "id": "x", field: {"coding": [{"system": SCT, "code": code}]}, **extra}


@pytest.mark.parametrize(("resource", "source_kind", "category"), [
    ({"resourceType": "Patient", "id": "p"}, "gp", "demographics"),
    (_coded("Condition"), "gp", "summary"),
    (_coded("MedicationStatement", field="medicationCodeableConcept"), "gp", "summary"),
    (_coded("AllergyIntolerance", "91936005"), "acute", "summary"),
    (_coded("Immunization", field="vaccineCode"), "gp", "summary"),
    (_coded("Observation", "999791000000106"), "gp", "diagnostics"),
    (_coded("DiagnosticReport"), "acute", "diagnostics"),
    (_coded("Encounter", field="serviceType"), "gp", "encounters"),
    (_coded("Encounter", field="serviceType"), "ambulance", "encounters"),
    (_coded("DocumentReference", "373942005", field="type"), "acute", "hospital_detail"),
    (_coded("Procedure"), "acute", "hospital_detail"),
    (_coded("CarePlan", field="category"), "acute", "hospital_detail"),
    (_coded("CarePlan", field="category"), "community", "community"),
    (_coded("Encounter"), "hospice", "community"),
    (_coded("Encounter"), "mental_health", "mental_health"),
    (_coded("Condition", "35489007"), "mental_health", "mental_health"),
    (_coded("Observation"), "social_care", "social_care"),
    (_coded("Condition", "105629000"), "gp", "sexual_health"),
    (_coded("Condition", "105629000"), "mental_health", "sexual_health"),  # codes come before the service
    (_coded("Condition", "870384001"), "gp", "safeguarding"),
    # a safety-critical type from a specialist service is an alert, with tiers of its own (hazard HAZ-02) ...
    (_coded("AllergyIntolerance", "91936005"), "mental_health", "alerts"),
    (_coded("AllergyIntolerance", "91936005"), "social_care", "alerts"),
    (_coded("AllergyIntolerance", "91936005"), "hospice", "alerts"),
    (_coded("AllergyIntolerance", "91936005"), "community", "alerts"),
    (_coded("AllergyIntolerance", "91936005"), "gp", "summary"),
    # ... but a sensitive code still puts it in its sensitive category
    (_coded("AllergyIntolerance", "86406008"), "mental_health", "sexual_health"),
])
def test_each_resource_falls_in_one_category(framework: Framework, resource: dict, source_kind: str,
                                             category: str) -> None:
    assert classify(resource, source_kind, framework) == category


def test_safety_critical_types_are_the_frameworks_choice(framework: Framework) -> None:
    """Without the rule, a mental health trust's allergy is mental health data, as its other records are."""
    allergy = _coded("AllergyIntolerance", "91936005")
    assert classify(allergy, "mental_health", framework) == "alerts"
    without = framework.model_copy(update={"safety_critical_types": []})
    assert classify(allergy, "mental_health", without) == "mental_health"
    assert without.classification_digest != framework.classification_digest  # stored categories go stale
    assert "safety_critical_types" not in framework.classification_digest  # (a digest, not the inputs)


def test_the_digest_is_worked_out_once_and_again_for_a_framework_with_other_inputs(framework: Framework) -> None:
    """Every governed read asks for the digest (`classification_key`): it is kept, not worked out per read, and a
    framework copied with other codes, organisations or types gets its own, whichever was asked last."""
    first = framework.classification_digest
    assert framework.classification_digest is first  # kept (worked out afresh, it was a new string each time)
    without = framework.model_copy(update={"safety_critical_types": []})
    moved = framework.model_copy(update={"organisations": {
        **framework.organisations, "P81001": framework.organisations["P81001"].model_copy(update={"kind": "acute"})}})
    more = framework.model_copy(update={"sensitive_codes": {**framework.sensitive_codes, "mental_health": [
        *framework.sensitive_codes["mental_health"], "44054006"]}})
    copied = framework.model_copy(update={"organisations": dict(framework.organisations), "name": "Another name"})
    for _ in range(2):  # alternately, so each is asked after another was kept
        assert len({first, without.classification_digest, moved.classification_digest,
                    more.classification_digest}) == 4
        assert copied.classification_digest == framework.classification_digest == first  # the same inputs


def test_only_types_filed_as_summary_by_type_can_be_safety_critical() -> None:
    from typing import get_args

    from sharedcare.governance.classify import _TYPE_CATEGORY

    (listed,) = get_args(Framework.model_fields["safety_critical_types"].annotation)
    assert set(get_args(listed)) == {t for t, category in _TYPE_CATEGORY.items() if category == "summary"}


def test_a_medication_note_is_tier_3_while_the_coded_medicine_and_dose_are_tier_2() -> None:
    med = {"resourceType": "MedicationStatement", "id": "m", "status": "active", "subject": {"reference": "Patient/1"},
           "medicationCodeableConcept": {"coding": [METFORMIN], "text": "Metformin (she hides it from him)"},
           "dosage": [{"text": "One tablet twice daily"}],
           "note": [{"text": "Stopped by hospital - check with patient"}],
           "text": {"status": "generated", "div": "<div>narrative</div>"}}
    tier2 = at_tier(med, 2)
    assert tier2["medicationCodeableConcept"] == {"coding": [METFORMIN]}  # what it is; the text typed beside it goes
    assert tier2["dosage"] == [{"text": "One tablet twice daily"}]
    assert "note" not in tier2 and "text" not in tier2
    assert at_tier(med, 3) == med


def test_a_document_at_tier_2_keeps_what_it_is_but_not_what_it_says() -> None:
    doc = _coded("DocumentReference", "373942005", field="type", status="current",
                 content=[{"attachment": {"data": "c2VjcmV0"}}], description="Discharge letter text")
    tier2 = at_tier(doc, 2)
    assert tier2["type"] == doc["type"] and "description" not in tier2
    assert tier2["content"] == [{"attachment": {"title": "Document not shown at your access level"}}]
    get_fhir_model_class("DocumentReference").model_validate(tier2)


def test_demographics_tiers_add_address_then_next_of_kin() -> None:
    patient = {"resourceType": "Patient", "id": "p", "name": [{"family": "Okafor"}], "birthDate": "1945-01-01",
               "address": [{"postalCode": "RV3 7QT"}], "contact": [{"name": {"family": "Adeyemi"}}]}
    assert set(at_tier(patient, 1)) == {"resourceType", "id", "name", "birthDate"}
    assert "address" in at_tier(patient, 2) and "contact" not in at_tier(patient, 2)
    assert "contact" in at_tier(patient, 3)


def test_every_resource_of_a_synthetic_ics_has_a_category_and_sensitive_services_are_caught(
        framework: Framework, tmp_path: Path) -> None:
    generate(tmp_path, people=200, seed=5, framework=framework)
    found: dict[tuple[str, str], set[str]] = {}
    for path in sorted(tmp_path.rglob("*.ndjson")):
        org = path.relative_to(tmp_path).parts[0]
        kind = framework.organisations[org].kind
        for line in path.read_text().splitlines():
            for entry in json.loads(line)["entry"]:
                resource = entry["resource"]
                category = classify(resource, kind, framework)
                assert category in framework.categories
                found.setdefault((org, resource["resourceType"]), set()).add(category)
    assert found[("RXM", "Encounter")] == {"mental_health"}
    assert found[("RYC", "Encounter")] == {"community", "sexual_health"}  # district nursing; the GUM clinic
    assert found[("RXR", "DocumentReference")] == {"hospital_detail"}
    assert found[("P81001", "MedicationStatement")] <= {"summary", "sexual_health"}  # the pill is sexual health


def test_free_text_nested_anywhere_is_removed_at_tier_2_but_what_codes_mean_stays() -> None:
    plan = {"resourceType": "CarePlan", "id": "p", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/1"}, "title": "Plan after she left him",
            "category": [{"coding": [{"system": SCT, "code": "736353004", "display": "Inpatient care plan"}],
                          "text": "Hospital follow-up (son not to be told)"}],
            "activity": [{"detail": {"status": "scheduled", "description": "Neighbour says he drinks",
                                     "code": {"coding": [{"system": SCT, "code": "396550006",
                                                          "display": "Blood test"}]}},
                          "progress": [{"text": "Seen at her sister's"}]}],
            "contained": [{"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/1"},
                           "text": {"status": "generated", "div": "<div>private</div>"}}]}
    report = {"resourceType": "DiagnosticReport", "id": "r", "status": "final",
              "code": {"coding": [{"system": "http://loinc.org", "code": "24362-6", "display": "U+E"}]},
              "conclusion": "Sample haemolysed; patient distressed", "presentedForm": [{"data": "c2VjcmV0"}]}
    allergy = {"resourceType": "AllergyIntolerance", "id": "a", "patient": {"reference": "Patient/1"},
               "reaction": [{"manifestation": [{"coding": [{"system": SCT, "code": "271807003", "display": "Rash"}]}],
                             "description": "Told me about her ex"}]}
    shown = json.dumps([at_tier(plan, 2), at_tier(report, 2), at_tier(allergy, 2)])
    for secret in ("she left him", "son not", "Neighbour", "sister", "private", "haemolysed", "c2VjcmV0", "her ex"):
        assert secret not in shown
    for coded in ("Inpatient care plan", "Blood test", "U+E", "Rash"):
        assert coded in shown


def test_typed_values_names_and_instructions_are_free_text_at_tier_2_and_what_is_left_is_valid_fhir() -> None:
    """A string value, a Reference's display, a dose's instruction and a concept sent as text alone are what
    a person typed; what a tier-2 reader gets in their place says something is not shown, and still
    validates."""
    wound = {"resourceType": "Observation", "id": "o", "status": "final",
             "code": {"coding": [{"system": SCT, "code": "225552003", "display": "Wound finding"}]},
             "valueString": "Disclosed partner hit her; refuge address 4 Mill Lane",
             "performer": [{"reference": "Practitioner/1", "display": "Nurse at the refuge"}],
             "component": [{"code": {"text": "Site"}, "valueString": "Bruised left arm"}],
             "extension": [{"url": "https://example.org/said", "valueString": "She asked us not to tell him"},
                           {"url": "https://example.org/coded", "valueCodeableConcept": {"coding": [
                               {"system": SCT, "code": "52684005", "display": "Assault"}]}}]}
    visit = {"resourceType": "Encounter", "id": "e", "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "location": [{"location": {"display": "Sexual Health (GUM) Clinic"}}],
             "diagnosis": [{"condition": {"reference": "#dx", "display": "HIV infection"}}],
             "contained": [{"resourceType": "Condition", "id": "dx", "subject": {"reference": "Patient/1"},
                            "code": {"coding": [{"system": SCT, "code": "44054006", "display": "Diabetes"}]}}]}
    med = {"resourceType": "MedicationStatement", "id": "m", "status": "active", "subject": {"reference": "Patient/1"},
           "medicationCodeableConcept": {"coding": [{"system": "https://dmd.nhs.uk", "code": "323219008",
                                                     "display": "Sertraline 50mg tablets"}]},
           "dosage": [{"text": "50mg daily", "patientInstruction": "Hide the box from your husband"}]}
    shown = [at_tier(resource, 2) for resource in (wound, visit, med)]
    text = json.dumps(shown)
    for secret in ("Mill Lane", "Bruised", "refuge", "asked us", "GUM", "HIV", "husband"):
        assert secret not in text
    for coded in ("Wound finding", "Assault", "Diabetes", "Sertraline 50mg tablets", "50mg daily"):
        assert coded in text
    assert shown[0]["dataAbsentReason"] == shown[0]["component"][0]["dataAbsentReason"] == MASKED
    assert shown[0]["component"][0]["code"] == MASKED  # "Site": a concept sent as text alone
    assert shown[0]["performer"] == [{"reference": "Practitioner/1"}]
    assert shown[1]["location"] == [{"location": {"display": "Not shown at your access level"}}]
    for resource in shown:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_a_concept_sent_as_text_alone_says_it_is_not_shown_and_one_with_a_code_keeps_the_code() -> None:
    """The pharmacist's Observation whose code was only what the nurse typed: at tier 2 it says its code is not
    shown (data-absent-reason `masked`); codings without a code are text too; a coded concept keeps every
    coding that has a code, with its display, and loses the text typed beside it."""
    typed = "Told me her partner hits her; staying at refuge, 4 Mill Lane"
    obs = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": typed},
           "bodySite": {"coding": [{"display": "left arm, where he grabbed her"}]},
           "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                           "code": "H", "display": "High"}, {"display": "worse since he left"}],
                               "text": "High, after the argument"}],
           "valueQuantity": {"value": 1, "unit": "{score}"}}
    tier2 = at_tier(obs, 2)
    assert tier2["code"] == tier2["bodySite"] == MASKED
    assert tier2["interpretation"] == [{"coding": [obs["interpretation"][0]["coding"][0]]}]
    assert tier2["valueQuantity"] == obs["valueQuantity"]
    assert masked(tier2["code"]) and not masked(tier2["interpretation"][0])
    get_fhir_model_class("Observation").model_validate(tier2)
    assert at_tier(obs, 3)["code"] == {"text": typed}


def test_a_coded_value_can_make_a_result_sensitive(framework: Framework) -> None:
    hiv = {"resourceType": "Observation", "id": "o", "code": {"text": "Finding"},
           "valueCodeableConcept": {"coding": [{"system": SCT, "code": "86406008"}]}}
    assert classify(hiv, "gp", framework) == "sexual_health"


@pytest.mark.parametrize("resource", [
    {"resourceType": "DocumentReference", "id": "d", "status": "current",  # a GUM clinic's letter
     "context": {"practiceSetting": {"coding": [{"system": TF, "code": "360"}]}},
     "content": [{"attachment": {"data": "c2VjcmV0"}}]},
    {"resourceType": "DiagnosticReport", "id": "r", "status": "final", "code": {"text": "C trachomatis DNA"},
     "conclusionCode": [{"coding": [{"system": SCT, "code": "105629000"}]}]},
    {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "Histopathology"},
     "component": [{"code": {"text": "Finding"}, "valueCodeableConcept": HIV}]},
    {"resourceType": "Encounter", "id": "e", "status": "finished",
     "contained": [{"resourceType": "Condition", "id": "dx", "code": HIV}],
     "diagnosis": [{"condition": {"reference": "#dx"}}]},
    {"resourceType": "Condition", "id": "c", "code": {"text": "Infection"},
     "extension": [{"url": "https://example.org/underlying", "valueCodeableConcept": HIV}]},
], ids=["practice-setting", "conclusion-code", "component-value", "contained-condition", "extension"])
def test_a_sensitive_code_anywhere_in_a_resource_makes_it_sensitive(framework: Framework, resource: dict) -> None:
    assert classify(resource, "acute", framework) == "sexual_health"


def _visit(org: str, system: str, code: str) -> dict:
    return {"resourceType": "Encounter", "id": "e", "status": "finished", "class": {"code": "AMB"},
            "serviceType": {"coding": [{"system": hospital_service_system(org, system), "code": code}]}}


@pytest.mark.parametrize(("visit", "category"), [
    (_visit("RXR", "pas", "GUM"), "sexual_health"),  # to the national 360, which sensitive_codes list
    (_visit("RXR", "pas", "SHC"), "sexual_health"),  # straight to the category
    (_visit("RXR", "pas", "MED"), "encounters"),  # to general medicine, 300: not sensitive
    (_visit("RXR", "pas", "XYZ"), "encounters"),  # not listed (ingest holds it from a PAS with a table)
    (_visit("RXR", "lab", "GUM"), "encounters"),  # another system's GUM means what that system says: nothing here
    (_visit("RYC", "pas", "GUM"), "encounters"),  # another organisation's likewise
], ids=["to-national", "to-category", "to-ordinary", "unlisted", "other-system", "other-organisation"])
def test_a_local_hospital_service_code_counts_as_what_the_framework_maps_it_to(framework: Framework, visit: dict,
                                                                             category: str) -> None:
    assert classify(visit, "acute", framework) == category


def test_a_local_code_never_makes_a_specialist_service_s_visit_less_protected(framework: Framework) -> None:
    """Rule 2 may only move a record into a sensitive category: a local code mapped to a national code no
    category lists leaves the mental health trust's visit in mental health (rule 4), not ordinary."""
    assert classify(_visit("RXR", "pas", "MED"), "mental_health", framework) == "mental_health"
