"""Tier 2 is "coded summary, no free text": every string element FHIR R4 defines in the clinical types the
store holds is either taken out below tier 3 (each tested here with a resource carrying a disclosure there)
or kept on purpose, as what a code or a measured value means (classify.py says why). The list is checked
against the R4 element definitions themselves (fhir.resources' R4B models, alike for these types), so a type
stored later, or an element missed, fails here rather than reaching a tier-2 reader."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.governance.classify import at_tier

SECRET = "Told me her partner hits her; staying at refuge, 4 Mill Lane"
SCT = "http://snomed.info/sct"
SUBJECT = {"reference": "Patient/1"}
CODED = {"coding": [{"system": SCT, "code": "44054006", "display": "Type 2 diabetes mellitus"}]}
# The datatypes whose string elements are named by the datatype, wherever it is used
DATATYPES = {"CodeableConcept", "Coding", "Reference", "Identifier", "Quantity", "Age", "Duration", "Annotation",
             "Attachment", "Dosage", "SampledData"}


def _base(rtype: str) -> dict[str, Any]:
    """The least a resource of the type needs to be valid R4."""
    return {"resourceType": rtype, "id": "x", **{
        "Condition": {"subject": SUBJECT, "code": CODED},
        "Observation": {"status": "final", "code": CODED},
        "AllergyIntolerance": {"patient": SUBJECT, "code": CODED},
        "MedicationStatement": {"status": "active", "subject": SUBJECT, "medicationCodeableConcept": CODED},
        "Encounter": {"status": "finished", "class": {"code": "AMB"}},
        "Procedure": {"status": "completed", "subject": SUBJECT, "code": CODED},
        "Immunization": {"status": "completed", "patient": SUBJECT, "vaccineCode": CODED,
                         "occurrenceDateTime": "2026-01-01"},
        "CarePlan": {"status": "active", "intent": "plan", "subject": SUBJECT},
        "DocumentReference": {"status": "current", "content": [{"attachment": {"contentType": "text/plain"}}]},
        "DiagnosticReport": {"status": "final", "code": CODED},
    }[rtype]}


def _with(rtype: str, **elements: Any) -> dict[str, Any]:
    return {**_base(rtype), **elements}


# Taken out below tier 3: the element (as the walk below names it), and resources carrying SECRET there.
REMOVED: dict[str, list[dict[str, Any]]] = {
    "Annotation.text": [_with("Condition", note=[{"text": SECRET}]),
                        _with("CarePlan", activity=[{"progress": [{"text": SECRET}]}]),
                        _with("AllergyIntolerance", reaction=[{"manifestation": [CODED], "note": [{"text": SECRET}]}])],
    "Annotation.authorString": [_with("Observation", note=[{"authorString": SECRET, "text": "seen"}])],
    "Attachment.title": [_with("DiagnosticReport", presentedForm=[{"contentType": "text/plain", "title": SECRET}]),
                         _with("DocumentReference", content=[{"attachment": {"title": SECRET}}])],
    "CodeableConcept.text": [
        _with("Observation", code={"text": SECRET}),  # a text-only code
        _with("Condition", code={**CODED, "text": SECRET}),  # typed beside a code
        _with("Encounter", serviceType={"text": SECRET}),
        _with("CarePlan", category=[{"text": SECRET}]),
        _with("MedicationStatement", statusReason=[{"text": SECRET}]),
        _with("MedicationStatement", dosage=[{"text": "One daily", "additionalInstruction": [{"text": SECRET}]}]),
        _with("Observation", bodySite={"coding": [{"display": SECRET}]}),  # a coding without a code is text too
        _with("Procedure", identifier=[{"type": {"text": SECRET}, "value": "P1"}]),
        _with("Condition", extension=[{"url": "https://example.org/x", "valueCodeableConcept": {"text": SECRET}}]),
    ],
    "Reference.display": [_with("Encounter", location=[{"location": {"display": SECRET}}]),
                          _with("Observation", performer=[{"reference": "Practitioner/1", "display": SECRET}])],
    "AllergyIntolerance.onsetString": [_with("AllergyIntolerance", onsetString=SECRET)],
    "AllergyIntolerance.reaction.description": [
        _with("AllergyIntolerance", reaction=[{"manifestation": [CODED], "description": SECRET}])],
    "CarePlan.activity.detail.description": [
        _with("CarePlan", activity=[{"detail": {"status": "scheduled", "description": SECRET}}])],
    "CarePlan.activity.detail.scheduledString": [
        _with("CarePlan", activity=[{"detail": {"status": "scheduled", "code": CODED, "scheduledString": SECRET}}])],
    "CarePlan.description": [_with("CarePlan", description=SECRET)],
    "CarePlan.title": [_with("CarePlan", title=SECRET)],
    "Condition.abatementString": [_with("Condition", abatementString=SECRET)],
    "Condition.onsetString": [_with("Condition", onsetString=SECRET)],
    "DiagnosticReport.conclusion": [_with("DiagnosticReport", conclusion=SECRET)],
    "DiagnosticReport.media.comment": [_with("DiagnosticReport", media=[{"link": {"reference": "Media/1"},
                                                                         "comment": SECRET}])],
    "DocumentReference.description": [_with("DocumentReference", description=SECRET)],
    "Dosage.patientInstruction": [_with("MedicationStatement", dosage=[{"patientInstruction": SECRET}])],
    "Immunization.occurrenceString": [{**_with("Immunization", occurrenceString=SECRET),
                                       "occurrenceDateTime": None}],
    "Immunization.protocolApplied.doseNumberString": [
        _with("Immunization", protocolApplied=[{"doseNumberString": SECRET}])],
    "Immunization.protocolApplied.series": [_with("Immunization", protocolApplied=[{"doseNumberPositiveInt": 1,
                                                                                     "series": SECRET}])],
    "Immunization.protocolApplied.seriesDosesString": [
        _with("Immunization", protocolApplied=[{"doseNumberPositiveInt": 1, "seriesDosesString": SECRET}])],
    "Observation.component.valueString": [_with("Observation", component=[{"code": CODED, "valueString": SECRET}])],
    "Observation.valueString": [_with("Observation", valueString=SECRET)],
    "Procedure.performedString": [_with("Procedure", performedString=SECRET)],
    # not element definitions of the types, but free text in any of them
    "Narrative.div": [_with("Condition", text={"status": "generated", "div": f"<div>{SECRET}</div>"})],
    "Extension.value[x]": [_with("Condition", extension=[{"url": "https://example.org/x", "valueString": SECRET}]),
                           _with("Condition", extension=[{"url": "https://example.org/x", "valueMarkdown": SECRET}]),
                           _with("Condition", modifierExtension=[{"url": "https://example.org/x",
                                                                  "valueAnnotation": {"text": SECRET}}])],
    "contained": [_with("Encounter", contained=[_with("Condition", note=[{"text": SECRET}])])],
}
# Kept at tier 2: what a code, an identifier or a measured value means, not what someone wrote (classify.py).
KEPT = {"Coding.display", "Coding.version", "Quantity.unit", "Age.unit", "Duration.unit", "Identifier.value",
        "Reference.reference", "SampledData.data", "Immunization.lotNumber", "Immunization.education.documentType",
        "Observation.referenceRange.text", "Observation.component.referenceRange.text", "Dosage.text"}
NOT_DEFINITIONS = {"Narrative.div", "Extension.value[x]", "contained"}


def _kind(annotation: Any) -> str:
    found = re.search(r"Annotated\[str, (\w+)\(\)\]", str(annotation)) or re.search(r"abc\.(\w+)Type", str(annotation))
    return found.group(1) if found else ""


def _string_elements(model: Any, owner: str, found: set[str], depth: int = 0) -> None:
    """Every string and markdown element under `model`, named by the datatype holding it or by its path in
    the resource (a backbone element's)."""
    for name, field in model.model_fields.items():
        if name in ("id", "extension", "modifierExtension", "contained", "meta") or (name == "text" and depth == 0):
            continue  # a resource's own narrative, extensions and contained resources: tested above
        if not (field.json_schema_extra or {}).get("element_property"):
            continue
        kind = _kind(field.annotation)
        if kind in ("String", "Markdown"):
            found.add(f"{owner}.{name}")
            continue
        try:
            child = get_fhir_model_class(kind)
        except (KeyError, ValueError, AttributeError):
            continue  # a primitive type
        if depth < 8:
            _string_elements(child, kind if kind in DATATYPES else f"{owner}.{name}", found, depth + 1)


def test_every_string_element_r4_defines_in_the_stored_types_is_taken_out_or_kept_on_purpose() -> None:
    found: set[str] = set()
    for rtype in sorted(RECORD_TYPES - {"Patient"}):  # a Patient's tiers keep named elements (test_classify)
        _string_elements(get_fhir_model_class(rtype), rtype, found)
    assert found == (set(REMOVED) - NOT_DEFINITIONS) | KEPT


@pytest.mark.parametrize("resource", [r for examples in REMOVED.values() for r in examples],
                         ids=[f"{name}-{i}" for name, examples in REMOVED.items() for i in range(len(examples))])
def test_a_tier_2_reader_gets_no_free_text_and_valid_fhir_and_a_tier_3_reader_gets_it(resource: dict) -> None:
    resource = {key: value for key, value in resource.items() if value is not None}
    model = get_fhir_model_class(resource["resourceType"])
    model.model_validate(resource)
    tier2 = at_tier(resource, 2)
    assert SECRET not in json.dumps(tier2)
    model.model_validate(tier2)
    assert SECRET in json.dumps(at_tier(resource, 3))


@pytest.mark.parametrize("element", sorted(KEPT - {"Coding.display", "Coding.version", "Reference.reference"}))
def test_what_a_value_means_is_kept_at_tier_2(element: str) -> None:
    """The kept elements, each in a resource: the same at tier 2 (the display, version and reference are held
    by every other test)."""
    kept = "KEPT-VALUE"
    quantity = {"value": 5, "unit": kept, "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    resource = {
        "Quantity.unit": _with("Observation", valueQuantity=quantity),
        "Age.unit": _with("Condition", onsetAge={"value": 5, "unit": kept}),
        "Duration.unit": _with("MedicationStatement", dosage=[{"timing": {"repeat": {"boundsDuration": {
            "value": 5, "unit": kept}}}}]),
        "Identifier.value": _with("Procedure", identifier=[{"value": kept}]),
        "SampledData.data": _with("Observation", valueSampledData={"origin": {"value": 0}, "period": 1,
                                                                   "dimensions": 1, "data": kept}),
        "Immunization.lotNumber": _with("Immunization", lotNumber=kept),
        "Immunization.education.documentType": _with("Immunization", education=[{"documentType": kept,
                                                                                   "presentationDate": "2026-01-01"}]),
        "Observation.referenceRange.text": _with("Observation", referenceRange=[{"text": kept}]),
        "Observation.component.referenceRange.text": _with("Observation", component=[
            {"code": CODED, "valueQuantity": {"value": 1}, "referenceRange": [{"text": kept}]}]),
        "Dosage.text": _with("MedicationStatement", dosage=[{"text": kept}]),
    }[element]
    assert at_tier(resource, 2) == resource
