"""Which data category a stored resource falls into, and what each tier of detail lets through.

Rules, first match wins: (1) a Patient is demographics; (2) a code listed in the framework's
`sensitive_codes` (or one under a listed ICD-10 or OPCS-4 stem, "system|F32*"), in any Coding at any
depth (a report's conclusionCode, a component's value, a document's practice setting, an extension, a
contained resource), puts the resource in that category
wherever it came from; so does a source's local hospital service code (HL7 v2 PV1-10, kept in a system
naming the organisation and its sending system) that its `service_codes` map to a listed national code or
straight to a sensitive category (an acute trust's "GUM" clinic attendance is sexual health); (3) a type
the framework lists as `safety_critical_types` (an allergy), sent by a mental health, social care,
community or hospice service, is `alerts` (hazard HAZ-02: the trust's record of a penicillin allergy must
reach the paramedic, coded, not only as a headline that the trust is involved; the framework gives
`alerts` its own tiers and keeps it out of secondary use); (4) the kind of service that sent it (mental
health, social care, community and hospice); (5) its resource type.

Ingest stores each resource's category with `classification_key(fw)`; a read trusts a stored category
only under the current key (the gateway classifies afresh otherwise), so changing these rules (bump
RULES), the sensitive codes or an organisation's kind can never leave a resource in a stale, possibly
less protected category.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from sharedcare.governance.framework import STEM_PREFIXES, STEM_SYSTEMS, Framework, code_stem
from sharedcare.store.models import Resource

# change whenever the rules in this module change, so every stored category is recomputed
# (r2: the code of a contained Medication, the drug a statement's medicationReference names, counts;
# r3: every Coding at any depth counts, not only eight top-level elements;
# r4: a local hospital service code counts as what the framework's `service_codes` map it to).
# Rule 3 acts only on the framework's safety-critical types, which are in its classification digest.
RULES = "r4"
ALERTS = "alerts"  # the category rule 3 files into; the framework must define it (framework.py checks)

_SERVICE_CATEGORY = {
    "mental_health": "mental_health",
    "social_care": "social_care",
    "community": "community",
    "hospice": "community",
}
_TYPE_CATEGORY = {
    "AllergyIntolerance": "summary",
    "MedicationStatement": "summary",
    "Condition": "summary",
    "Immunization": "summary",
    "Observation": "diagnostics",
    "DiagnosticReport": "diagnostics",
    "Encounter": "encounters",
}
_HOSPITAL_TYPES = {"DocumentReference", "Procedure", "CarePlan"}

# Free text and documents: tier 3 only ("tier 2 = coded summary", framework.yaml). Below it `at_tier` takes
# out, at any depth (contained resources too), what FHIR R4 defines as text a person wrote, in the types the
# store holds and the datatypes they use (`tests/governance/test_free_text_elements.py` walks the R4 element
# definitions and holds every string element to one of these lists):
# - gone: annotations (`note`, a care plan activity's `progress`), `comment`, `description`, `title` (a care
#   plan's, an attachment's), a report's `conclusion` and `presentedForm`, a dose's `patientInstruction`, a
#   vaccine's `series` name, narratives (`text` holding a `div`), a document's content, and an extension's
#   text value;
# - said to be not shown, where an element that was there would otherwise vanish or leave its resource
#   invalid (`NOT_SHOWN`, or `_MASKED` for a coded element): a string value (an Observation's or a
#   component's `valueString`, as `dataAbsentReason` masked), a date or schedule given in words (every
#   `[x]` sent as a string: onsetString, performedString, occurrenceString, scheduledString...), a
#   Reference that was only its display (who or where, typed: "refuge, 4 Mill Lane"), and a
#   CodeableConcept with no code: its `text` is what the source typed ("Told me her partner hits her"),
#   and it becomes `_MASKED`;
# - a CodeableConcept with a code keeps its codings, each with its `display` (what the code means), and
#   loses its own `text`: the words the source typed beside the code, which need not say what it says.
# Kept, as what a coded or measured value means rather than what someone wrote: Coding.display and
# version, a quantity's unit, Identifier.value, Reference.reference, SampledData.data, a vaccine's lot
# number and information sheet id, a reference range's `text` (the laboratory's range, "<5") and
# Dosage.text (the prescription's dose, "One tablet twice daily", often the only statement of it a GP
# system sends; what is said to the patient, `patientInstruction`, goes).
_FREE_TEXT = {"note", "progress", "comment", "description", "title", "conclusion", "presentedForm",
              "patientInstruction", "series", "valueString", "valueMarkdown", "valueAnnotation", "valueAttachment"}
_FREE_TEXT_BY_TYPE = {"DocumentReference": {"content"}}
# Where a node holding only `text` is not a CodeableConcept: a Dosage ("dosage"; a contained MedicationRequest's
# "dosageInstruction"), a reference range, a contained resource's HumanName or Address.
_TEXT_NOT_A_CONCEPT = {"dosage", "dosageInstruction", "referenceRange", "name", "address", "valueHumanName",
                       "valueAddress"}
_CONCEPT_KEYS = {"id", "extension", "coding", "text"}
_EXTENSIONS = {"extension", "modifierExtension"}
NOT_SHOWN = "Not shown at your access level"
MASKED_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# FHIR's reason for a value withheld for privacy: a tier-2 reader is told a value exists, not that none does
_MASKED = {"coding": [{"system": MASKED_SYSTEM, "code": "masked", "display": "Masked"}], "text": NOT_SHOWN}
# Demographics: tier 1 is who the person is and how to reach them; tier 2 adds where they live and
# their GP; tier 3 adds contacts such as next of kin.
_DEMOGRAPHICS_TIER1 = {"resourceType", "id", "meta", "identifier", "name", "birthDate", "gender", "telecom"}
_DEMOGRAPHICS_TIER2 = _DEMOGRAPHICS_TIER1 | {"address", "generalPractitioner", "deceasedBoolean",
                                             "deceasedDateTime", "active"}


def service_category(kind: str) -> str | None:
    """The category everything a kind of service sends falls into (rule 4), if it has one of its own."""
    return _SERVICE_CATEGORY.get(kind)


def _codings(resource: dict[str, Any]) -> set[str]:
    """Every Coding's "system|code" at any depth: a sensitive code counts wherever a source put it."""
    found: set[str] = set()
    _collect(resource, found)
    return found


def _collect(node: dict[str, Any], found: set[str]) -> None:
    # recursive, with exact type checks: ingest classifies every resource (FHIR JSON has no list of lists)
    for value in node.values():
        kind = type(value)
        if kind is dict:
            children: Any = (value,)
        elif kind is list:
            children = value
        else:
            continue
        for child in children:
            if type(child) is dict:
                code = child.get("code")
                if type(code) is str:
                    found.add(f"{child.get('system')}|{code}")
                _collect(child, found)


def classify(resource: dict[str, Any], source_kind: str, fw: Framework) -> str:
    """The one data category of a resource."""
    resource_type = resource.get("resourceType", "")
    if resource_type == "Patient":
        return "demographics"
    codes = _codings(resource)
    local = fw.local_service_codes
    if local and not codes.isdisjoint(local):  # (a dict of a few codes: isdisjoint walks it, not the codes)
        found = _local_category(codes, local, fw)
        if found is not None:
            return found
    found = _sensitive_category(codes, fw)
    if found is not None:
        return found
    if source_kind in _SERVICE_CATEGORY and resource_type in fw.safety_critical_types:
        return ALERTS
    if source_kind in _SERVICE_CATEGORY:
        return _SERVICE_CATEGORY[source_kind]
    if resource_type in _HOSPITAL_TYPES:
        return "hospital_detail" if source_kind == "acute" else "summary"
    return _TYPE_CATEGORY.get(resource_type, "hospital_detail")


def _local_category(codes: set[str], local: dict[str, str], fw: Framework) -> str | None:
    """Rule 2 for a resource holding local hospital service codes: each counts as the national code or
    the sensitive category the framework maps it to (first in `sensitive_codes` order, then in
    `sensitive_categories` order, as rule 2 would take them)."""
    targets = {local[code] for code in codes if code in local}
    found = _sensitive_category(codes | targets, fw, targets)
    if found is not None:
        return found
    return next((category for category in fw.sensitive_categories if category in targets), None)


def _sensitive_category(codes: set[str], fw: Framework, targets: set[str] | None = None) -> str | None:
    """The first category in `sensitive_codes` order listing one of the codes, or a stem one of them begins
    with ("http://hl7.org/fhir/sid/icd-10|B20*" holds B20.0 and B209), or among `targets` (the categories
    local service codes map to straight)."""
    stemmed = [(STEM_SYSTEMS[system], code_stem(code)) for system, _, code in
               (c.rpartition("|") for c in codes if c.startswith(STEM_PREFIXES))]
    for category, listed in fw.sensitive_matchers.items():
        if (targets and category in targets) or not listed.codes.isdisjoint(codes):
            return category
        if stemmed and listed.stems and any(code.startswith(listed.stems.get(family, ())) for family, code in stemmed):
            return category
    return None


def classification_key(fw: Framework) -> str:
    """What a stored category was computed under: these rules and the framework's inputs to them."""
    return f"{RULES}-{fw.classification_digest}"


def reclassify(session: Session, fw: Framework, batch: int = 1000) -> int:
    """Store the current category of every resource whose stored one is missing or stale (after a
    framework or rules change); returns how many were updated. Reads are correct without this; it
    makes them fast again.

    Each category is written only onto the version it was worked out from: a feed's correction committed
    between a batch's read and its write has been classified by its writer, and is left as stored (the
    next pass takes it if its key is stale). Until 2026-12-07 the write overwrote it: an ambulance
    Condition corrected from pneumonia to HIV infection during a reclassify was stored as summary under the
    current key, which every read then trusts, and the paramedic read it (concurrency review)."""
    key = classification_key(fw)
    updated = 0
    while True:
        rows = session.execute(select(Resource.id, Resource.version, Resource.content, Resource.source_org).where(
            (Resource.category_key != key) | Resource.category_key.is_(None)).limit(batch)).all()
        if not rows:
            return updated
        for resource_id, version, content, source_org in rows:
            org = fw.organisation(source_org)
            written = session.execute(update(Resource).where(Resource.id == resource_id, Resource.version == version)
                                      .values(category=classify(content, org.kind if org else "unknown", fw),
                                              category_key=key))
            updated += written.rowcount  # type: ignore[attr-defined]
        session.commit()


def at_tier(resource: dict[str, Any], tier: int) -> dict[str, Any]:
    """The resource as a role with this tier may see it (tier 2 or 3; tier 1 releases no resource)."""
    if tier >= 3:
        return resource
    if resource.get("resourceType") == "Patient":
        keep = _DEMOGRAPHICS_TIER1 if tier == 1 else _DEMOGRAPHICS_TIER2
        return {key: value for key, value in resource.items() if key in keep}
    summary = _without(resource, _FREE_TEXT | _FREE_TEXT_BY_TYPE.get(resource.get("resourceType", ""), set()))
    if resource.get("resourceType") == "DocumentReference":
        # content is required (1..*): say that the document exists without what it says
        summary["content"] = [{"attachment": {"title": f"Document {NOT_SHOWN.lower()}"}}]
    return summary


def masked(concept: Any) -> bool:
    """Whether a CodeableConcept is `_MASKED`: what the source sent there was text alone, not shown at this
    tier (a page says so, and never groups or charts it as a code)."""
    return isinstance(concept, dict) and any(
        isinstance(c, dict) and c.get("system") == MASKED_SYSTEM and c.get("code") == "masked"
        for c in concept.get("coding") or ())


def _without(node: dict[str, Any], drop: set[str], parent: str = "") -> dict[str, Any]:
    """`node` (the element `parent` names) without the named elements and the free text the module's list
    names, at any depth, still valid FHIR: what is said to be not shown says so, and an extension left with
    no value goes."""
    if parent not in _TEXT_NOT_A_CONCEPT and node.keys() <= _CONCEPT_KEYS and (
            "coding" in node or isinstance(node.get("text"), str)):  # a CodeableConcept
        codings = [c for c in node.get("coding") or () if isinstance(c, dict) and c.get("code")]
        if not codings:
            return _MASKED
        node = {key: codings if key == "coding" else value for key, value in node.items() if key != "text"}
    coding = "code" in node or "system" in node  # a Coding's display is what its code means
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in drop or (key == "display" and not coding) or (
                key == "text" and isinstance(value, dict) and "div" in value):
            continue
        if isinstance(value, str) and key.endswith("String"):  # an [x] given in words: a date, a schedule
            value = NOT_SHOWN
        elif isinstance(value, dict):
            value = _without(value, _FREE_TEXT, key)
        elif isinstance(value, list):
            value = [_without(item, _FREE_TEXT, key) if isinstance(item, dict) else item for item in value]
            if key in _EXTENSIONS:
                value = [ext for ext in value if any(name.startswith("value") or name == "extension" for name in ext)]
                if not value:
                    continue
        out[key] = value
    if "valueString" in node and "url" not in node:  # an Observation's or a component's (an extension has a url)
        out["dataAbsentReason"] = _MASKED
    if "display" in node and not coding and "reference" not in out and "identifier" not in out:
        out["display"] = NOT_SHOWN  # a Reference that was only its display (a ward, a doctor): one was named
    return out
