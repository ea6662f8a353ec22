"""FHIR R4's required value sets of the elements the record keeps: one table, read by ingest and by the extract.

FHIR's structural validation (fhir.resources) takes any text in a `code` element ("seen by Jane Smith" as an
Encounter's status), and a CodeableConcept bound *required* (a Condition's or an allergy's clinical and
verification status) may carry a code of no system at all. What the decision point, the stays grouping and a
clinician read there must be one of the value set's codes, so ingest refuses anything else
(`value_set_problems`, located as a FHIR validator's `code-invalid`), and the pseudonymised extract keeps only
these codes (`governance/pseudonymise.py` reads `codes_of`). Extensible and preferred bindings are not here:
a source may send its own codes there. Codes from hl7.org/fhir/R4/valuesets.html (4.0.1).

`REQUIRED` is keyed by the element's path in the type that defines it ("Quantity.comparator",
"CarePlan.activity.detail.status"); the check finds each wherever that type stands in a resource (an Age is a
Quantity; a Timing in an extension is checked as one in a dosage), walking the fhir.resources models' fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.fhir.validate import element_fields

_HL7_VS = "http://hl7.org/fhir/ValueSet/"
_HL7_CS = "http://terminology.hl7.org/CodeSystem/"


@dataclass(frozen=True)
class ValueSet:
    """A required value set: its name and canonical URL, its codes, and for a CodeableConcept's binding the
    code system its codes are of (`system`; None for a `code` element, which carries no system)."""

    name: str
    url: str
    codes: frozenset[str]
    system: str | None = None

    def __contains__(self, code: object) -> bool:
        return code in self.codes


def _vs(name: str, slug: str, codes: str, system: str | None = None) -> ValueSet:
    return ValueSet(name, f"{_HL7_VS}{slug}", frozenset(codes.split()), system)


EVENT_STATUS = _vs("EventStatus", "event-status",
                   "preparation in-progress not-done on-hold stopped completed entered-in-error unknown")
REQUEST_STATUS = _vs("RequestStatus", "request-status",
                     "draft active on-hold revoked completed entered-in-error unknown")
UNITS_OF_TIME = _vs("UnitsOfTime", "units-of-time", "s min h d wk mo a")
COMPARATOR = _vs("QuantityComparator", "quantity-comparator", "< <= >= >")
EVENT_TIMING = _vs("EventTiming", "event-timing",
                   "MORN MORN.early MORN.late NOON AFT AFT.early AFT.late EVE EVE.early EVE.late NIGHT PHS "
                   "HS WAKE C CM CD CV AC ACM ACD ACV PC PCM PCD PCV")

# element path (in the type that defines it) -> its required value set
GENDER = _vs("AdministrativeGender", "administrative-gender", "male female other unknown")
ENCOUNTER_STATUS = _vs("EncounterStatus", "encounter-status",
                       "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown")

REQUIRED: dict[str, ValueSet] = {
    "Patient.gender": GENDER,
    "Patient.contact.gender": GENDER,
    "Patient.link.type": _vs("LinkType", "link-type", "replaced-by replaces refer seealso"),
    "Identifier.use": _vs("IdentifierUse", "identifier-use", "usual official temp secondary old"),
    "HumanName.use": _vs("NameUse", "name-use", "usual official temp nickname anonymous old maiden"),
    "ContactPoint.system": _vs("ContactPointSystem", "contact-point-system", "phone fax email pager url sms other"),
    "ContactPoint.use": _vs("ContactPointUse", "contact-point-use", "home work temp old mobile"),
    "Address.use": _vs("AddressUse", "address-use", "home work temp old billing"),
    "Address.type": _vs("AddressType", "address-type", "postal physical both"),
    "Narrative.status": _vs("NarrativeStatus", "narrative-status", "generated extensions additional empty"),
    "Quantity.comparator": COMPARATOR,
    "Timing.repeat.durationUnit": UNITS_OF_TIME,
    "Timing.repeat.periodUnit": UNITS_OF_TIME,
    "Timing.repeat.when": EVENT_TIMING,
    "Timing.repeat.dayOfWeek": _vs("DaysOfWeek", "days-of-week", "mon tue wed thu fri sat sun"),
    "Condition.clinicalStatus": _vs("ConditionClinicalStatusCodes", "condition-clinical",
                                    "active recurrence relapse inactive remission resolved",
                                    f"{_HL7_CS}condition-clinical"),
    "Condition.verificationStatus": _vs("ConditionVerificationStatus", "condition-ver-status",
                                        "unconfirmed provisional differential confirmed refuted entered-in-error",
                                        f"{_HL7_CS}condition-ver-status"),
    "AllergyIntolerance.clinicalStatus": _vs("AllergyIntoleranceClinicalStatusCodes", "allergyintolerance-clinical",
                                             "active inactive resolved", f"{_HL7_CS}allergyintolerance-clinical"),
    "AllergyIntolerance.verificationStatus": _vs("AllergyIntoleranceVerificationStatusCodes",
                                                 "allergyintolerance-verification",
                                                 "unconfirmed confirmed refuted entered-in-error",
                                                 f"{_HL7_CS}allergyintolerance-verification"),
    "AllergyIntolerance.type": _vs("AllergyIntoleranceType", "allergy-intolerance-type", "allergy intolerance"),
    "AllergyIntolerance.category": _vs("AllergyIntoleranceCategory", "allergy-intolerance-category",
                                       "food medication environment biologic"),
    "AllergyIntolerance.criticality": _vs("AllergyIntoleranceCriticality", "allergy-intolerance-criticality",
                                          "low high unable-to-assess"),
    "AllergyIntolerance.reaction.severity": _vs("AllergyIntoleranceSeverity", "reaction-event-severity",
                                                "mild moderate severe"),
    "MedicationStatement.status": _vs("MedicationStatementStatusCodes", "medication-statement-status",
                                      "active completed entered-in-error intended stopped on-hold unknown not-taken"),
    "Medication.status": _vs("MedicationStatusCodes", "medication-status", "active inactive entered-in-error"),
    "Encounter.status": ENCOUNTER_STATUS,
    "Encounter.statusHistory.status": ENCOUNTER_STATUS,
    "Encounter.location.status": _vs("EncounterLocationStatus", "encounter-location-status",
                                     "planned active reserved completed"),
    "Observation.status": _vs("ObservationStatus", "observation-status",
                              "registered preliminary final amended corrected cancelled entered-in-error unknown"),
    "Procedure.status": EVENT_STATUS,
    "Immunization.status": _vs("ImmunizationStatusCodes", "immunization-status", "completed entered-in-error not-done"),
    "CarePlan.status": REQUEST_STATUS,
    "CarePlan.intent": _vs("CarePlanIntent", "care-plan-intent", "proposal plan order option"),
    "CarePlan.activity.detail.kind": _vs("CarePlanActivityKind", "care-plan-activity-kind",
                                         "Appointment CommunicationRequest DeviceRequest MedicationRequest "
                                         "NutritionOrder Task ServiceRequest VisionPrescription"),
    "CarePlan.activity.detail.status": _vs("CarePlanActivityStatus", "care-plan-activity-status",
                                           "not-started scheduled in-progress on-hold completed cancelled stopped "
                                           "unknown entered-in-error"),
    "DocumentReference.status": _vs("DocumentReferenceStatus", "document-reference-status",
                                    "current superseded entered-in-error"),
    "DocumentReference.relatesTo.code": _vs("DocumentRelationshipType", "document-relationship-type",
                                            "replaces transforms signs appends"),
    "DocumentReference.docStatus": _vs("CompositionStatus", "composition-status",
                                       "preliminary final amended entered-in-error"),
    "DiagnosticReport.status": _vs("DiagnosticReportStatus", "diagnostic-report-status",
                                   "registered partial preliminary final amended corrected appended cancelled "
                                   "entered-in-error unknown"),
}


def codes_of(element: str) -> frozenset[str]:
    """The codes of an element's required value set (`REQUIRED`), as the extract keeps them."""
    return REQUIRED[element].codes


# --- where each element stands in the models -----------------------------------------------------------
Model = type[FHIRAbstractModel]


def _resolve(path: str) -> tuple[Model, str]:
    """The model class that holds the path's last element, and that element's JSON name."""
    head, *steps = path.split(".")
    cls: Model = get_fhir_model_class(head)
    for step in steps[:-1]:
        cls = element_fields(cls)[step][1]  # type: ignore[assignment]
    if steps[-1] not in element_fields(cls):
        raise KeyError(f"{path}: no such element in {cls.__name__}")
    return cls, steps[-1]


# For each model class met: the fields to follow, each with its value set (if bound) and its element class (if
# one reaches a bound element). Only fields that hold a bound element, or lead to one, are walked.
_Step = tuple[ValueSet | None, Model | None]


@cache
def _plans() -> tuple[dict[str, dict[str, _Step]], dict[Model, dict[str, _Step]]]:
    """The plans of the record's types (and Medication, which a statement contains), built on first use (it
    loads some 80 models: half a second)."""
    roots = {name: get_fhir_model_class(name) for name in sorted(RECORD_TYPES | {"Medication"})}
    bound_at = [(*_resolve(path), vs) for path, vs in REQUIRED.items()]
    graph: dict[Model, dict[str, Model]] = {}
    todo = list(roots.values())
    while todo:
        cls = todo.pop()
        if cls in graph:
            continue
        graph[cls] = {name: element for name, (_, element) in element_fields(cls).items()
                      if element is not None and not name.startswith("_")}
        todo.extend(graph[cls].values())
    bound = {cls: {name: vs for holder, name, vs in bound_at if issubclass(cls, holder)} for cls in graph}
    reaches = {cls for cls, names in bound.items() if names}
    grown = True
    while grown:  # classes that lead to a bound element, through any of their fields (types nest in cycles)
        grown = False
        for cls, children in graph.items():
            if cls not in reaches and any(child in reaches for child in children.values()):
                reaches.add(cls)
                grown = True
    plans: dict[Model, dict[str, _Step]] = {}
    for cls in reaches:
        plan: dict[str, _Step] = {name: (vs, None) for name, vs in bound[cls].items()}
        for name, child in graph[cls].items():
            if child in reaches:
                plan[name] = (plan.get(name, (None, None))[0], child)
        plans[cls] = plan
    return {name: plans[cls] for name, cls in roots.items() if cls in plans}, plans


# --- the check --------------------------------------------------------------------------------------------
def value_set_problems(resource: dict[str, Any]) -> list[str]:
    """Each required-bound element of the resource (and of the resources it contains) that holds a code
    outside its value set, located: `Encounter.status: code-invalid: ...`. Runs after the structural check."""
    roots, plans = _plans()
    resource_type = str(resource.get("resourceType"))
    contained = resource.get("contained")
    parts = [(resource, roots.get(resource_type), resource_type)] + [
        (inner, roots.get(str(inner.get("resourceType"))), f"{resource_type}.contained[{index}]")
        for index, inner in enumerate(contained if type(contained) is list else ()) if type(inner) is dict]
    problems: list[str] = []
    for node, plan, where in parts:
        # nearly every resource holds only valid codes: only one that does not is walked again, naming paths
        if plan is not None and _breaks(node, plan, plans, 0):
            _walk(node, plan, plans, where, problems, 0)
    return problems


_MAX_DEPTH = 64  # the invariants refuse a resource nested deeper


def _breaks(node: dict[str, Any], plan: dict[str, _Step], plans: dict[Model, dict[str, _Step]], depth: int) -> bool:
    """Whether an element in the node holds a code outside its value set (`_walk` without the paths)."""
    if depth > _MAX_DEPTH:
        return False
    for name, value in node.items():
        step = plan.get(name)
        if step is None:
            continue
        vs, child = step
        for item in value if type(value) is list else (value,):
            if vs is not None and (_concept_problem(item, vs) is not None if vs.system
                                   else type(item) is not str or item not in vs.codes):
                return True
            if child is not None and type(item) is dict and _breaks(item, plans[child], plans, depth + 1):
                return True
    return False


def _walk(node: dict[str, Any], plan: dict[str, _Step], plans: dict[Model, dict[str, _Step]], where: str,
          problems: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    for name, (vs, child) in plan.items():
        value = node.get(name)
        if value is None:
            continue
        many = type(value) is list
        for index, item in enumerate(value if many else (value,)):
            at = f"{where}.{name}[{index}]" if many else f"{where}.{name}"
            if vs is not None:
                problem = _concept_problem(item, vs) if vs.system else _code_problem(item, vs)
                if problem:
                    problems.append(f"{at}: code-invalid: {problem}")
            if child is not None and type(item) is dict:
                _walk(item, plans[child], plans, at, problems, depth + 1)


def _named(vs: ValueSet) -> str:
    return f"{vs.name} ({vs.url}, a required binding: {', '.join(sorted(vs.codes))})"


def _code_problem(code: Any, vs: ValueSet) -> str | None:
    if type(code) is str and code in vs.codes:
        return None
    return f"'{str(code)[:60]}' is not a code of the value set {_named(vs)}"


def _concept_problem(concept: Any, vs: ValueSet) -> str | None:
    """A CodeableConcept bound required holds at least one coding of the value set (its system and one of its
    codes), and no coding of that system with any other code."""
    codings = concept.get("coding") if type(concept) is dict else None
    codings = [c for c in codings if type(c) is dict] if type(codings) is list else []
    found = [(c.get("system"), c.get("code")) for c in codings]
    if any(system == vs.system and code in vs.codes for system, code in found) and not any(
            system == vs.system and code not in vs.codes for system, code in found):
        return None
    if not found:
        text = concept.get("text") if type(concept) is dict else None
        sent = f"'{str(text)[:60]}' is text, not a coding" if text else "no coding"
        return f"{sent} of the value set {_named(vs)}, system {vs.system}"
    given = ", ".join(f"'{str(code)[:60]}' ({f'system {system}' if system else 'no system'})" for system, code in found)
    return f"{given}: not a code of the value set {_named(vs)}, system {vs.system}"
