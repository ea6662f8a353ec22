"""Pseudonymised copies of released resources, for secondary use (planning, research).

Keyed pseudonyms: HMAC-SHA256 under a key derived from the deployment's pseudonym key
(`Settings.pseudonym_secret`) and the purpose, so the same person has the same pseudonym in every
extract for one purpose, a different one for another purpose, and nobody without the key can recompute
them (a plain hash of a UUIDv5 server id could be recomputed from a hospital number). Every id and every
reference between exported resources is rewritten the same way, so files join up without any real id.

What is kept is declared, not what is removed (deny by default). Each exported type is a msgspec
`Struct` listing the elements an analysis needs, down to each datatype (`Coding` is system and code; a
`Reference` is a rewritten reference or an organisation's ODS code). Decoding a stored resource
into its Struct drops everything undeclared, in C: names, addresses, telecom, other systems' identifiers,
displays, free text (`text`, `note`, `description`, narratives), document bodies, extensions not listed,
and any element a source adds that is not listed here. Then:
- a reference survives only to a resource the same export holds (rewritten to its pseudonym): one to
  something withheld, left out or of another type would say that it exists; a Patient reference
  becomes the person's pseudonym; organisations survive only as ODS codes, and not those of a service whose
  records the export may not hold (`hidden_organisations`: an ambulance's conveyance to the mental health trust
  would say the person was in its care; counted); an element that a reference is required in (an encounter's
  diagnosis, a performer) goes with it;
- a statement's drug named by `medicationReference` to a Medication it contains leaves as that
  Medication's coded `code` (`medicationCodeableConcept`); a resource left without an element FHIR
  requires (a statement with no coded drug, an observation whose code was only text: `Shaped.incomplete`)
  is not exported at all, and is counted as withheld;
- a coding survives only from a code system of `CODE_SYSTEMS` (SNOMED CT, dm+d, LOINC, ICD-10, OPCS-4,
  UCUM, HL7's and the NHS's), and only a code with no space in it: a local system's code, and
  `Coding.version`, are whatever a source's staff typed ("seen with Jane Smith"), and never leave; each
  coding left out is counted (`Shaped.codings_withheld`); a status a decision reads keeps its code;
- an element of FHIR's `code` type bound to a fixed value set (a status, an intent, an allergy's
  criticality, a timing's units, a comparator) leaves only holding one of that set's codes
  (`fhir/value_sets.py`, the table ingest refuses other codes by since 2026-12-06; a resource stored before
  may hold any text there, "seen by Jane Smith", as FHIR's own validation takes it). What is left
  out is counted with the codings; a resource left without a status FHIR requires is not exported. A
  document's `contentType` leaves as its media type alone (its parameters can name a file), `meta.source`
  as the ODS code, with the source system's name only if the framework declares it for that organisation
  (a sender writes what it likes after the `#`), and nothing for a hidden organisation; an ODS identifier
  only when shaped as an ODS code, and a reference's `type` only when it names a type the extract can hold;
- a quantity keeps its value and coded unit; `unit`, free text, survives only as its UCUM code;
- every date and time is cut to the day (an event's time of day, with a few other facts, can pick one
  person out: a 999 call in the news); instants that must carry a time (`issued`, `meta.lastUpdated`)
  do not leave, and an observation's `effectiveInstant` leaves as its day;
- every full date of a person is then moved by the same number of days, their date shift (below);
- the Patient keeps gender, year and month of birth (and of death, shifted), postcode district,
  registered GP practice and ethnic category.

Date shift. An event tied to age (the 8-week immunisation, the first MMR at one year, a newborn check,
a birth encounter) gives the day of birth back, and with month of birth, sex and postcode district that
picks out most young children (measured on the synthetic ICS: docs/architecture.md). So each person's
dates are shifted by their own number of days, the approach of i2b2's and Stanford's STARR-OMOP
de-identified data, REDCap and MIMIC (rather than generalised to the week or month, which would lose
the intervals analysts need: length of stay, readmission within 30 days, referral to treatment). The
shift moves the person's date of birth to a pseudo-random day of the same month (`birth_shift`): so the
published year and month of birth stay true, an age computed from shifted dates is exact, and the day
of birth recovered from an age-tied event is a day drawn uniformly from the month, whatever the true
day (a shift drawn from a fixed range instead would be narrowed by the month it must stay in). A person
without a date of birth is shifted by -30 to +30 days. The date of birth anchoring the shift is the one
the extract publishes the month of: that of the person's one exported Patient (`patient()`, the source
record `secondary.py` chooses by the demographics rule), not the earliest any source gives, so that
sources disagreeing (a day and month transposed) cannot publish one month with events measured from a
shifted birth in another. So a corrected date of birth on that record, or another source's record
becoming the one chosen, changes the person's shift, and every one of their dates in the next extract:
extracts either side of the correction do not join up date for date. The draw is an HMAC of the person's id under the
purpose's key: stable across extracts for one purpose (they join up, `_since` extracts included),
different across purposes, and not computable without the key. Intervals within a person are kept
exactly; between people and to the calendar (seasons, a bank holiday, a dated incident) dates are off by
up to a month. The day of the week is not kept: a shift in whole weeks would keep it, but would tell the
day of birth to within 4 or 5 days of its month. A limit (review of 2026-12-06): in real records, where a
person's visits keep to weekdays, the weekdays their shifted dates avoid give the shift modulo 7 back, and
with it the day of birth to about the same 4 or 5 days; the synthetic records spread events over the week,
so this is not measured. Young children's extracts may still need a small-cell check on birth month, sex
and district; not done. Partial dates (a year, a year and month) leave as they are.

The shapes are written here because no library pseudonymises FHIR to a policy; msgspec does the
decoding and encoding, fast enough for tens of thousands of resources a second.
"""

from __future__ import annotations

import calendar
import hmac
import re
import threading
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, ClassVar

import msgspec
from msgspec import Struct, field
from stdnum import luhn  # python-stdnum: LOINC's mod-10 check digit is Luhn's

from sharedcare.fhir.lifecycle import ENTERED_IN_ERROR
from sharedcare.fhir.uk_core import DMD, ODS_SYSTEM, SNOMED
from sharedcare.fhir.uk_core_rules import code_problem
from sharedcare.fhir.value_sets import REQUIRED, codes_of
from sharedcare.governance.classify import service_category
from sharedcare.governance.framework import ICD_10_SYSTEMS, OPCS_4_SYSTEMS, Framework, Role

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
# The code systems whose codes leave in an extract: national and international terminologies, whose codes
# are drawn from a published list (SNOMED CT's are checked at ingest). A local system's are not.
CODE_SYSTEMS = frozenset({
    SNOMED, DMD, LOINC, UCUM,
    *ICD_10_SYSTEMS, *OPCS_4_SYSTEMS,
})
CODE_SYSTEM_PREFIXES = ("http://terminology.hl7.org/CodeSystem/", "https://fhir.nhs.uk/CodeSystem/",
                        "https://fhir.hl7.org.uk/CodeSystem/")
PSEUDONYMISED_LABEL = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "PSEUDED"}
KEPT_EXTENSIONS = frozenset({
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-MedicationStatementLastIssueDate",
})


class _State(threading.local):
    """The person being pseudonymised, for the Structs' post-decode hooks (one export per thread)."""

    patient_ref: str = ""
    shift: int = 0  # the person's date shift in days (`birth_shift`)
    codings_withheld: int = 0  # codings left out of the resource being decoded
    hidden: frozenset[str] = frozenset()  # the ODS codes the export names nowhere (`hidden_organisations`)
    organisations_withheld: int = 0  # references by ODS code left out of the resource being decoded
    links: list[Reference]  # the references to other resources met while decoding one resource


_state = _State()


class _E(Struct, omit_defaults=True, gc=False):
    """An element (not tracked by the garbage collector: these trees have no cycles)."""


def _bound(element: str, *names: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """The `code` elements `names` of `element` with their required value sets' codes (fhir/value_sets.py,
    the table ingest refuses by: a stored resource holds none other unless it was stored before that check)."""
    return tuple((name, codes_of(f"{element}.{name}")) for name in names)


_COMPARATORS = codes_of("Quantity.comparator")
_MEDIA_TYPE = re.compile(r"[a-z]+/[a-z0-9][a-z0-9.+-]{0,63}")
_ODS_CODE = re.compile(r"[A-Z0-9]{3,8}")  # as ingest checks them (fhir/uk_core_rules.py)


def _keep_fixed_codes(element: Any) -> None:
    """Leave out of `element` each value of its `_fixed` elements that its value set does not hold (counted)."""
    for name, allowed in element._fixed:
        value = getattr(element, name)
        if value is None or (type(value) is str and value in allowed):  # nearly always
            continue
        if isinstance(value, list):
            kept = [v for v in value if v in allowed]
            if len(kept) != len(value):
                _state.codings_withheld += len(value) - len(kept)
                setattr(element, name, kept or None)
        else:
            _state.codings_withheld += 1
            setattr(element, name, None)


def _shifted_day(day: str) -> str | None:
    """A day (YYYY-MM-DD) moved by the person's shift; a year or a year and month as it is (coarser than
    the shift); None for what is not a date (it does not leave unshifted)."""
    ordinal = _ORDINALS.get(day)
    if ordinal is None:
        if len(day) < 10:
            return day if _PARTIAL_DATE.fullmatch(day) else None
        try:
            ordinal = date.fromisoformat(day).toordinal()
        except ValueError:
            return None
        if len(_ORDINALS) < _CACHED_DAYS:
            _ORDINALS[day] = ordinal
    moved = ordinal + _state.shift
    text = _DAYS.get(moved)
    if text is None:
        try:
            text = date.fromordinal(moved).isoformat()
        except (ValueError, OverflowError):  # moved out of the calendar (year 1 or 9999)
            return None
        if len(_DAYS) < _CACHED_DAYS:
            _DAYS[moved] = text
    return text


# Days as text and as ordinals, both ways, for the days met (shared by every person and thread: they are
# facts of the calendar). Parsing and formatting a date cost several times two look-ups, per date.
_ORDINALS: dict[str, int] = {}
_DAYS: dict[int, str] = {}
_CACHED_DAYS = 200_000  # more than five centuries of days; a store's dates fill a few tens of thousands
_PARTIAL_DATE = re.compile(r"[0-9]{4}(-[0-9]{2})?")


class _Dated(_E):
    """An element whose fields named in `_dates` are dates: each is cut to the day and moved by the
    person's date shift after decoding."""

    _dates: ClassVar[tuple[str, ...]] = ()
    _fixed: ClassVar[tuple[tuple[str, frozenset[str]], ...]] = ()  # `code` elements and their value sets

    def __post_init__(self) -> None:
        shift = _state.shift  # `_shifted_day` inlined: this runs for most elements of every resource
        for name in self._dates:
            value = getattr(self, name)
            if value is not None:
                day = value[:10]
                ordinal = _ORDINALS.get(day)
                moved = _DAYS.get(ordinal + shift) if ordinal is not None else None
                setattr(self, name, moved if moved is not None else _shifted_day(day))
        if self._fixed:
            _keep_fixed_codes(self)


def kept_system(system: str | None) -> bool:
    """Whether a code of this system may leave (CODE_SYSTEMS)."""
    return system is not None and (system in CODE_SYSTEMS or system.startswith(CODE_SYSTEM_PREFIXES))


# What each kept system's codes look like (fourth review of the extract, 2026-12-07): the allow-list names
# systems, but a source's staff can type anything in a code ("SeenByJane.Smith-mob07700900456" as a LOINC
# code, a condition's category, an ICD-10 value). A code leaves only shaped as its system's codes are.
_LOINC_CODE = re.compile(r"(\d{1,7})-(\d)")  # with its mod-10 check digit (Luhn's)
_ICD_10_CODE = re.compile(r"[A-Z]\d{2}(?:\.?[0-9A-Z]{1,4})?")
_OPCS_4_CODE = re.compile(r"[A-Z]\d{2}(?:\.?\d)?")
_SCT_SYNTAX = re.compile(r"[0-9:+=,{}()]+")  # a concept id or an expression of them: no |terms| nor "strings"
_UCUM_CODE = re.compile(r"[!-~]{1,30}")  # printable ASCII, short
_SHORT_CODE = re.compile(r"[A-Za-z0-9.-]{1,20}")  # an HL7, HL7 UK or NHS England code not in a value set shipped
_DIGIT_RUN = re.compile(r"\d{6}")  # a phone number, an NHS number, a date: no code of those systems holds one


def _shipped_code_systems() -> dict[str, frozenset[str]]:
    """The codes of each code system a value set shipped draws on (fhir/value_sets.py), by system."""
    systems: dict[str, set[str]] = {}
    for value_set in REQUIRED.values():
        if value_set.system is not None:
            systems.setdefault(value_set.system, set()).update(value_set.codes)
    return {system: frozenset(codes) for system, codes in systems.items()}


_SHIPPED = _shipped_code_systems()


@lru_cache(maxsize=1 << 16)  # a store holds the same few thousand codes again and again
def kept_code(system: str | None, code: str) -> bool:
    """Whether a code may leave: of a kept system (`kept_system`) and shaped as that system's codes are (a
    SNOMED CT or dm+d concept id or expression of them, as ingest checks them; a LOINC code with its check
    digit; an ICD-10 or OPCS-4 code; a UCUM unit of printable characters; for HL7's, HL7 UK's and NHS
    England's code systems, one of the codes of a value set shipped that draws on the system, else a short
    code of letters, digits, dots and hyphens; neither a unit nor such a code with a run of six digits)."""
    if system is None or not kept_system(system) or " " in code:
        return False
    if system in (SNOMED, DMD):
        return _SCT_SYNTAX.fullmatch(code) is not None and code_problem(code) is None
    if system == LOINC:
        found = _LOINC_CODE.fullmatch(code)
        return found is not None and luhn.is_valid(found[1] + found[2])
    if system in ICD_10_SYSTEMS:
        return _ICD_10_CODE.fullmatch(code) is not None
    if system in OPCS_4_SYSTEMS:
        return _OPCS_4_CODE.fullmatch(code) is not None
    if _DIGIT_RUN.search(code):
        return False
    if system == UCUM:
        return _UCUM_CODE.fullmatch(code) is not None
    shipped = _SHIPPED.get(system)
    return code in shipped if shipped is not None else _SHORT_CODE.fullmatch(code) is not None


def _kept_coding(system: str | None, code: str | None) -> bool:
    """Whether a coding may leave as it is: empty, or of a kept system with no space in its code. A system
    alone is checked too: it is a URI anyone can type ("urn:seen-by:Jane.Smith:07700900456")."""
    return (system is None and code is None) or kept_code(system, code or "")


class Coding(_E):
    """A code of a kept system (`kept_system`), without a space in it, or nothing: what is left out is
    counted. `version` is never read (it is free text as often as not)."""

    system: str | None = None
    code: str | None = None

    def __post_init__(self) -> None:
        if not _kept_coding(self.system, self.code):
            _state.codings_withheld += 1
            self.system = self.code = None


class Concept(_E):
    coding: list[Coding] | None = None


class _StoredCoding(_E):
    """A coding the decision reads as stored (a status, a security label): shaped, if it leaves at all,
    only when encoded (`Pseudonymiser.encode`)."""

    system: str | None = None
    code: str | None = None


class Status(_E):
    """A clinical or verification status, read as stored (`Shaped.withdrawn`)."""

    coding: list[_StoredCoding] | None = None


class Quantity(_E):
    value: float | None = None
    comparator: str | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None

    def __post_init__(self) -> None:
        # `unit` is the source's free text ("tablets from Mrs H's blister pack"): only a UCUM code leaves as
        # the unit; the coded unit leaves as a `Coding` would
        if self.code is not None and not kept_code(self.system, self.code):
            _state.codings_withheld += 1
            self.code = None
        if self.code is None:
            self.system = None
        self.unit = self.code if self.system == UCUM else None
        if self.comparator is not None and self.comparator not in _COMPARATORS:
            _state.codings_withheld += 1
            self.comparator = None


class Range(_E):
    low: Quantity | None = None
    high: Quantity | None = None


class Ratio(_E):
    numerator: Quantity | None = None
    denominator: Quantity | None = None


class Period(_Dated):
    _dates = ("start", "end")
    start: str | None = None
    end: str | None = None


class OdsIdentifier(_E):
    system: str | None = None
    value: str | None = None


class Reference(_E):
    reference: str | None = None
    type: str | None = None
    identifier: OdsIdentifier | None = None

    def __post_init__(self) -> None:
        if self.reference is not None:
            resource_type, _, server_id = self.reference.partition("/")
            if resource_type == "Patient":
                self.reference = _state.patient_ref
            elif resource_type in SHAPES and server_id and "/" not in server_id:
                _state.links.append(self)  # kept only if the export holds its target (`Pseudonymiser.encode`)
            else:
                self.reference = None
        if self.identifier is not None:
            code = self.identifier.value or ""
            if self.identifier.system != ODS_SYSTEM or not _ODS_CODE.fullmatch(code):
                self.identifier = None
            elif code in _state.hidden:  # a service whose records the export may not hold (counted)
                self.identifier = None
                _state.organisations_withheld += 1
        if self.reference is None and self.identifier is None:
            self.type = None  # a practitioner or a location: nothing of it leaves
        elif self.type is not None and self.type not in _REFERENCE_TYPES:
            self.type = None


class Meta(_E):
    source: str | None = None
    security: list[_StoredCoding] | None = None  # read by the decision as stored; replaced when encoded


class Extension(_Dated):
    url: str | None = None
    valueCodeableConcept: Concept | None = None
    valueCoding: Coding | None = None
    valueDateTime: str | None = None

    _dates = ("valueDateTime",)


class TimingRepeat(_E):
    _fixed: ClassVar[tuple[tuple[str, frozenset[str]], ...]] = _bound("Timing.repeat", "durationUnit", "periodUnit",
                                                                      "when", "dayOfWeek")
    boundsPeriod: Period | None = None
    count: int | None = None
    duration: float | None = None
    durationUnit: str | None = None
    frequency: int | None = None
    frequencyMax: int | None = None
    period: float | None = None
    periodMax: float | None = None
    periodUnit: str | None = None
    dayOfWeek: list[str] | None = None
    timeOfDay: list[str] | None = None
    when: list[str] | None = None
    offset: int | None = None

    def __post_init__(self) -> None:
        _keep_fixed_codes(self)


class Timing(_E):
    repeat: TimingRepeat | None = None
    code: Concept | None = None


class DoseAndRate(_E):
    type: Concept | None = None
    doseQuantity: Quantity | None = None
    doseRange: Range | None = None
    rateQuantity: Quantity | None = None


class Dosage(_E):
    sequence: int | None = None
    timing: Timing | None = None
    asNeededBoolean: bool | None = None
    asNeededCodeableConcept: Concept | None = None
    site: Concept | None = None
    route: Concept | None = None
    method: Concept | None = None
    doseAndRate: list[DoseAndRate] | None = None


class Reaction(_Dated):
    _dates = ("onset",)
    _fixed = _bound("AllergyIntolerance.reaction", "severity")
    substance: Concept | None = None
    manifestation: list[Concept] | None = None
    onset: str | None = None
    severity: str | None = None
    exposureRoute: Concept | None = None


class ReferenceRange(_E):
    low: Quantity | None = None
    high: Quantity | None = None
    type: Concept | None = None
    appliesTo: list[Concept] | None = None
    age: Range | None = None


class Component(_E):
    code: Concept | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: Concept | None = None
    valueBoolean: bool | None = None
    valueInteger: int | None = None
    dataAbsentReason: Concept | None = None
    interpretation: list[Concept] | None = None


class Hospitalization(_E):
    origin: Reference | None = None
    admitSource: Concept | None = None
    reAdmission: Concept | None = None
    destination: Reference | None = None
    dischargeDisposition: Concept | None = None


class Diagnosis(_E):
    condition: Reference | None = None
    use: Concept | None = None
    rank: int | None = None


class Stage(_E):
    summary: Concept | None = None
    type: Concept | None = None


class Evidence(_E):
    code: list[Concept] | None = None


class Performer(_E):
    function: Concept | None = None
    actor: Reference | None = None


class ProtocolApplied(_E):
    targetDisease: list[Concept] | None = None
    doseNumberPositiveInt: int | None = None
    seriesDosesPositiveInt: int | None = None


class ActivityDetail(_E):
    _fixed: ClassVar[tuple[tuple[str, frozenset[str]], ...]] = _bound("CarePlan.activity.detail", "kind", "status")
    kind: str | None = None
    code: Concept | None = None
    reasonCode: list[Concept] | None = None
    status: str | None = None
    statusReason: Concept | None = None
    doNotPerform: bool | None = None
    scheduledTiming: Timing | None = None
    scheduledPeriod: Period | None = None
    performer: list[Reference] | None = None
    productCodeableConcept: Concept | None = None
    dailyAmount: Quantity | None = None
    quantity: Quantity | None = None

    def __post_init__(self) -> None:
        _keep_fixed_codes(self)


class Activity(_E):
    outcomeCodeableConcept: list[Concept] | None = None
    detail: ActivityDetail | None = None

    def __post_init__(self) -> None:
        if self.detail is not None and self.detail.status is None:  # required (1..1): the detail goes with it
            self.detail = None


class DocumentContext(_E):
    encounter: list[Reference] | None = None
    period: Period | None = None
    facilityType: Concept | None = None
    practiceSetting: Concept | None = None


class Attachment(_E):
    contentType: str | None = None  # that a document exists and its kind; never its data, title or url

    def __post_init__(self) -> None:
        if self.contentType is not None:  # the media type alone: a parameter can name the file
            media = self.contentType.partition(";")[0].strip().lower()
            self.contentType = media if _MEDIA_TYPE.fullmatch(media) else None


class Content(_E):
    attachment: Attachment | None = None
    format: Coding | None = None


class _Resource(_Dated):
    """Common head: the id and meta are replaced after decoding; `subject`/`patient` become the person."""

    _required: ClassVar[tuple[str, ...]] = ()  # `_fixed` elements FHIR requires (1..1)
    resourceType: str
    id: str | None = None
    meta: Meta | None = None


class Condition(_Resource):
    _dates = ("onsetDateTime", "abatementDateTime", "recordedDate")
    clinicalStatus: Status | None = None
    verificationStatus: Status | None = None
    category: list[Concept] | None = None
    severity: Concept | None = None
    code: Concept | None = None
    bodySite: list[Concept] | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    onsetDateTime: str | None = None
    onsetPeriod: Period | None = None
    onsetAge: Quantity | None = None
    abatementDateTime: str | None = None
    abatementPeriod: Period | None = None
    abatementAge: Quantity | None = None
    recordedDate: str | None = None
    stage: list[Stage] | None = None
    evidence: list[Evidence] | None = None


class _LocalReference(_E):
    """A reference read as stored, left to the resource that holds it to resolve (never encoded)."""

    reference: str | None = None


_NO_CODE = msgspec.Raw(b"null")


class _Contained(_E):
    """A contained resource: of it only a Medication's status and coded `code` are read (the drug a
    statement's `medicationReference` names); never encoded."""

    resourceType: str | None = None
    id: str | None = None
    status: str | None = None
    code: msgspec.Raw = _NO_CODE  # read as a Concept only for the Medication a statement names


_CONCEPT = msgspec.json.Decoder(Concept)


def _coded(concept: Concept | None) -> bool:
    """Whether a concept keeps a code once shaped (a display or text alone does not leave)."""
    return concept is not None and any(c.code for c in concept.coding or ())


def _medication_code(contained: list[_Contained] | None, reference: str | None) -> Concept | None:
    """The coded `code` of the Medication a `medicationReference` names, if the statement contains it
    (sources send the drug as a contained Medication; a standalone Medication is never stored: it has no
    patient), and it is neither withdrawn nor uncoded. Codings only: system and code (`Coding`)."""
    if not reference or not reference.startswith("#"):
        return None
    for resource in contained or ():
        if resource.resourceType == "Medication" and resource.id == reference[1:]:
            if resource.status == ENTERED_IN_ERROR:
                return None
            try:
                concept = _CONCEPT.decode(resource.code) if resource.code else None
            except msgspec.ValidationError:
                return None
            if concept is None:
                return None
            concept.coding = [c for c in concept.coding or () if c.code] or None
            return concept if concept.coding else None
    return None


class MedicationStatement(_Resource):
    """`medication[x]` is required (1..1): a `medicationReference` becomes a `medicationCodeableConcept`
    holding the code of the Medication it names, when the statement contains that Medication (so it was
    released with it, under the same decision); otherwise the statement names no drug that can leave, and
    `Shaped.incomplete` has it left out of the export."""

    _dates = ("effectiveDateTime", "dateAsserted")
    _fixed = _bound("MedicationStatement", "status")
    _required = ("status",)
    extension: list[Extension] | None = None
    status: str | None = None
    statusReason: list[Concept] | None = None
    category: Concept | None = None
    contained: list[_Contained] | None = None
    medicationCodeableConcept: Concept | None = None
    medicationReference: _LocalReference | None = None
    subject: Reference | None = None
    context: Reference | None = None
    effectiveDateTime: str | None = None
    effectivePeriod: Period | None = None
    dateAsserted: str | None = None
    reasonCode: list[Concept] | None = None
    reasonReference: list[Reference] | None = None
    dosage: list[Dosage] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.medicationReference is not None:
            if self.medicationCodeableConcept is None:
                self.medicationCodeableConcept = _medication_code(self.contained, self.medicationReference.reference)
            self.medicationReference = None
        self.contained = None


class AllergyIntolerance(_Resource):
    _dates = ("onsetDateTime", "recordedDate", "lastOccurrence")
    _fixed = _bound("AllergyIntolerance", "type", "category", "criticality")
    clinicalStatus: Status | None = None
    verificationStatus: Status | None = None
    type: str | None = None
    category: list[str] | None = None
    criticality: str | None = None
    code: Concept | None = None
    patient: Reference | None = None
    encounter: Reference | None = None
    onsetDateTime: str | None = None
    onsetPeriod: Period | None = None
    onsetAge: Quantity | None = None
    recordedDate: str | None = None
    lastOccurrence: str | None = None
    reaction: list[Reaction] | None = None


class Encounter(_Resource):
    _fixed = _bound("Encounter", "status")
    _required = ("status",)
    status: str | None = None
    class_: Coding | None = field(default=None, name="class")
    type: list[Concept] | None = None
    serviceType: Concept | None = None
    priority: Concept | None = None
    subject: Reference | None = None
    period: Period | None = None
    length: Quantity | None = None
    reasonCode: list[Concept] | None = None
    reasonReference: list[Reference] | None = None
    diagnosis: list[Diagnosis] | None = None
    hospitalization: Hospitalization | None = None
    serviceProvider: Reference | None = None
    partOf: Reference | None = None


class Observation(_Resource):
    """`effectiveInstant` must carry a time of day: it leaves as `effectiveDateTime`, the day. `issued`
    (an instant too, and no more than when the result was released) is not read."""

    _dates = ("effectiveDateTime", "valueDateTime")
    _fixed = _bound("Observation", "status")
    _required = ("status",)
    status: str | None = None
    category: list[Concept] | None = None
    code: Concept | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    effectiveDateTime: str | None = None
    effectivePeriod: Period | None = None
    effectiveInstant: str | None = None
    performer: list[Reference] | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: Concept | None = None
    valueBoolean: bool | None = None
    valueInteger: int | None = None
    valueRange: Range | None = None
    valueRatio: Ratio | None = None
    valuePeriod: Period | None = None
    valueDateTime: str | None = None
    dataAbsentReason: Concept | None = None
    interpretation: list[Concept] | None = None
    bodySite: Concept | None = None
    method: Concept | None = None
    referenceRange: list[ReferenceRange] | None = None
    hasMember: list[Reference] | None = None
    derivedFrom: list[Reference] | None = None
    component: list[Component] | None = None

    def __post_init__(self) -> None:
        if self.effectiveInstant is not None:
            if self.effectiveDateTime is None:
                self.effectiveDateTime = self.effectiveInstant
            self.effectiveInstant = None
        super().__post_init__()


class Procedure(_Resource):
    _dates = ("performedDateTime",)
    _fixed = _bound("Procedure", "status")
    _required = ("status",)
    status: str | None = None
    statusReason: Concept | None = None
    category: Concept | None = None
    code: Concept | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    performedDateTime: str | None = None
    performedPeriod: Period | None = None
    performer: list[Performer] | None = None
    reasonCode: list[Concept] | None = None
    reasonReference: list[Reference] | None = None
    bodySite: list[Concept] | None = None
    outcome: Concept | None = None
    complication: list[Concept] | None = None
    usedCode: list[Concept] | None = None


class Immunization(_Resource):
    _dates = ("occurrenceDateTime", "recorded")
    _fixed = _bound("Immunization", "status")
    _required = ("status",)
    status: str | None = None
    statusReason: Concept | None = None
    vaccineCode: Concept | None = None
    patient: Reference | None = None
    encounter: Reference | None = None
    occurrenceDateTime: str | None = None
    recorded: str | None = None
    primarySource: bool | None = None
    reportOrigin: Concept | None = None
    site: Concept | None = None
    route: Concept | None = None
    doseQuantity: Quantity | None = None
    performer: list[Performer] | None = None
    reasonCode: list[Concept] | None = None
    isSubpotent: bool | None = None
    protocolApplied: list[ProtocolApplied] | None = None


class CarePlan(_Resource):
    _dates = ("created",)
    _fixed = _bound("CarePlan", "status", "intent")
    _required = ("status", "intent")
    status: str | None = None
    intent: str | None = None
    category: list[Concept] | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    period: Period | None = None
    created: str | None = None
    author: Reference | None = None
    addresses: list[Reference] | None = None
    activity: list[Activity] | None = None


class DocumentReference(_Resource):
    """`date` (when the reference was made, an instant: it must carry a time of day) is not read; the
    period of care it is about (`context.period`) leaves, to the day."""

    _fixed = _bound("DocumentReference", "status", "docStatus")
    _required = ("status",)
    status: str | None = None
    docStatus: str | None = None
    type: Concept | None = None
    category: list[Concept] | None = None
    subject: Reference | None = None
    author: list[Reference] | None = None
    custodian: Reference | None = None
    content: list[Content] | None = None
    context: DocumentContext | None = None


class DiagnosticReport(_Resource):
    _dates = ("effectiveDateTime",)  # `issued`, an instant, is not read (see Observation)
    _fixed = _bound("DiagnosticReport", "status")
    _required = ("status",)
    status: str | None = None
    category: list[Concept] | None = None
    code: Concept | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    effectiveDateTime: str | None = None
    effectivePeriod: Period | None = None
    performer: list[Reference] | None = None
    result: list[Reference] | None = None
    conclusionCode: list[Concept] | None = None


SHAPES: dict[str, type[_Resource]] = {shape.__name__: shape for shape in (
    Condition, MedicationStatement, AllergyIntolerance, Encounter, Observation, Procedure, Immunization,
    CarePlan, DocumentReference, DiagnosticReport)}
_DECODERS = {name: msgspec.json.Decoder(shape) for name, shape in SHAPES.items()}
_REFERENCE_TYPES = frozenset(SHAPES) | {"Patient", "Organization"}  # what a kept reference can point at
_ENCODER = msgspec.json.Encoder()
_LABEL = _StoredCoding(system=PSEUDONYMISED_LABEL["system"], code=PSEUDONYMISED_LABEL["code"])


def birth_shift(draw: int, born: date | None) -> timedelta:
    """A person's date shift from a keyed pseudo-random `draw`: the one that moves their date of birth to
    day 1 + draw mod (days in its month) of the same month, so the shifted day of birth is uniform over
    the month whatever the true day, and the month stays; without a date of birth, -30 to +30 days."""
    if born is None:
        return timedelta(days=draw % 61 - 30)
    return timedelta(days=1 + draw % calendar.monthrange(born.year, born.month)[1] - born.day)


def _birth_date(text: str | None) -> date | None:
    """A date of birth as a date, if it is a full valid one (a year, or a year and month, is not)."""
    try:
        return date.fromisoformat(text[:10]) if text else None
    except ValueError:
        return None


def purpose_key(secret: str, purpose: str) -> bytes:
    """The pseudonymisation key of one purpose: HMAC of the purpose under the deployment's secret."""
    return hmac.digest(secret.encode(), f"sharedcare pseudonym key|{purpose}".encode(), "sha256")


_POSTCODE = re.compile(r"[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}")


def postcode_district(postcode: str | None) -> str | None:
    """The outward code ('RV3 7QT' -> 'RV3'): a district of some thousands of households."""
    if not postcode:
        return None
    compact = "".join(postcode.upper().split())
    return compact[:-3] if _POSTCODE.fullmatch(compact) else None


def hidden_organisations(fw: Framework, role: Role | None) -> frozenset[str]:
    """The ODS codes an extract for this role names nowhere: those of the organisations whose kind of service
    files all they send in a category of its own (`classify.service_category`: a mental health trust's is
    mental health) that the extract may not hold, being sensitive or below tier 2 for the role, as
    `policy.decide_secondary` withholds it. Their own records are withheld; a reference to them by ODS code
    elsewhere (an ambulance's conveyance to the mental health trust) would say the person was in their care."""
    sensitive = set(fw.sensitive_categories)
    return frozenset(code for code, org in fw.organisations.items()
                     if (category := service_category(org.kind)) is not None
                     and (category in sensitive or role is None or role.tier(category) < 2))


def _source_parts(source: Any) -> tuple[str, str] | None:
    """The ODS code and system (maybe empty) a `meta.source` names, written as ingest writes it
    (`uk_core.meta_source`: `...|RXR#epr`), the code shaped as an ODS code; None otherwise."""
    if not isinstance(source, str) or not source.startswith(f"{ODS_SYSTEM}|"):
        return None
    org, _, system = source[len(ODS_SYSTEM) + 1:].partition("#")
    return (org, system) if _ODS_CODE.fullmatch(org) else None


def _kept(reference: Reference | None) -> bool:
    return reference is not None and (reference.reference is not None or reference.identifier is not None)


def _without_dangling(resource: _Resource) -> None:
    """Remove the elements whose required reference was removed: an encounter's diagnosis without its
    condition, a performer without its actor (FHIR requires both: 1..1)."""
    if isinstance(resource, Encounter) and resource.diagnosis:
        resource.diagnosis = [d for d in resource.diagnosis if _kept(d.condition)] or None
    elif isinstance(resource, Procedure | Immunization) and resource.performer:
        resource.performer = [p for p in resource.performer if _kept(p.actor)] or None


def _without_empties(line: bytes) -> bytes:
    """Remove elements left empty once their free text is gone (`"dosage":[{}]`), and arrays left empty
    by that: FHIR JSON has no empty objects or arrays. Works on the encoded bytes, which is safe here:
    keys are plain names, no array holds an array, and the strings that survive (codes, units, systems,
    dates) never hold an empty pair of braces or brackets. Most lines have none and cost one search;
    after a removal the search goes on from just before it (the only place a new empty can appear)."""
    at = _next_empty(line, 0)
    while at > 0:  # (at 0 the resource itself would be empty: it never is, it has a resourceType)
        if line[at - 1] == 0x3A:  # ':' -> a member `"key":{}`; its key starts at the quote before the colon's
            start = line.rfind(b'"', 0, at - 2)
        else:  # '[' or ',' -> an item of an array
            start = at
        end = at + 2
        if line[start - 1] == 0x2C:  # take one separating comma with it: the one before, else the one after
            start -= 1
        elif line[end:end + 1] == b",":
            end += 1
        line = line[:start] + line[end:]
        at = _next_empty(line, max(start - 1, 0))
    return line


def _next_empty(line: bytes, offset: int) -> int:
    braces, brackets = line.find(b"{}", offset), line.find(b"[]", offset)
    return braces if brackets == -1 else brackets if braces == -1 else min(braces, brackets)


class Unreadable(Exception):
    """A stored resource does not fit its declared shape (it is withheld, never passed on unchecked)."""


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs several times more, per resource
class Shaped:
    """A stored resource decoded into its shape, with the references to other resources found in it
    (still naming server ids: `Pseudonymiser.encode` rewrites or removes each)."""

    resource: _Resource
    links: list[Reference]
    codings_withheld: int = 0  # codings left out (`Coding`); a status's are counted when encoded
    organisations_withheld: int = 0  # references by ODS code to a hidden organisation left out

    def withdrawn(self) -> bool:
        """`lifecycle.entered_in_error` of what was stored: its status, or a Condition's or an allergy's
        verificationStatus (the shapes keep both as stored)."""
        if getattr(self.resource, "status", None) == ENTERED_IN_ERROR:
            return True
        verification = getattr(self.resource, "verificationStatus", None)
        return verification is not None and any(c.code == ENTERED_IN_ERROR for c in verification.coding or ())

    def incomplete(self) -> bool:
        """Whether shaping left it without an element FHIR requires (1..1), so it cannot be exported as
        valid FHIR: a required status that held none of its value set's codes, a required concept or coding
        that held only a display or text, which do not leave (a MedicationStatement's drug, see
        `MedicationStatement`; an Observation's, a DiagnosticReport's or an Immunization's code; an
        Encounter's class), or a document whose attachments say nothing that may leave
        (DocumentReference.content.attachment keeps only its contentType, as a media type)."""
        resource = self.resource
        if any(getattr(resource, name) is None for name in resource._required):  # a status not of its value set
            return True
        if isinstance(resource, MedicationStatement):
            return not _coded(resource.medicationCodeableConcept)
        if isinstance(resource, Observation | DiagnosticReport):
            return not _coded(resource.code)
        if isinstance(resource, Immunization):
            return not _coded(resource.vaccineCode)
        if isinstance(resource, Encounter):
            return resource.class_ is None or not resource.class_.code
        if isinstance(resource, DocumentReference):
            return not resource.content or not all(c.attachment is not None and c.attachment.contentType
                                                   for c in resource.content)
        return False

    def security(self) -> frozenset[str]:
        """Its security labels as stored ("system|code"), which the decision reads."""
        meta = self.resource.meta
        return frozenset(f"{c.system}|{c.code}" for c in meta.security) if meta and meta.security else frozenset()


class Pseudonymiser:
    """Rewrites released resources for one purpose (one instance per export, used by one thread)."""

    def __init__(self, secret: str, purpose: str, fw: Framework | None = None, role: Role | None = None) -> None:
        """`fw` and `role`: the framework and the exporting actor's role, which say what of organisations may
        leave (`hidden_organisations`, and each organisation's declared `systems` for `meta.source`). Without
        them (pseudonyms only, as tools compute them) no organisation is hidden and no system kept."""
        self._mac = hmac.new(purpose_key(secret, purpose), digestmod="sha256")  # keyed once, copied per id
        self._known: dict[str, str] = {}  # this person's "Type/server id" -> pseudonym
        self._hidden = hidden_organisations(fw, role) if fw is not None else frozenset()
        self._systems = {code: frozenset(org.systems) for code, org in fw.organisations.items()} if fw else {}
        self._sources: dict[str, tuple[str | None, int]] = {}  # `meta.source` -> as it leaves, and hidden or not
        # references by ODS code to a hidden organisation, and `meta.source`s naming one, left out of what this
        # pseudonymiser encoded (a Patient too, published or not: `patient`)
        self.organisations_withheld = 0

    def _hmac(self, reference: str) -> str:
        """HMAC-SHA256 of "Type/server id" under the purpose's key, in hex, cut to 128 bits."""
        mac = self._mac.copy()
        mac.update(reference.encode())
        return mac.hexdigest()[:32]

    def pseudonym(self, resource_type: str, server_id: str) -> str:
        """The pseudonymous id of a resource (for a person: `pseudonym("Patient", person_id)`)."""
        return self._hmac(f"{resource_type}/{server_id}")

    def for_person(self, person_id: str, birth: str | None) -> None:
        """Set the person whose resources `decode` reads next. `birth`: the date of birth (YYYY-MM-DD) of the
        Patient `patient` will write for them, which sets their date shift (module docstring)."""
        self._known = {}
        _state.patient_ref = f"Patient/{self._id(f'Patient/{person_id}')}"
        _state.shift = self.date_shift(person_id, birth).days
        _state.hidden = self._hidden

    def date_shift(self, person_id: str, birth: str | None) -> timedelta:
        """How far every date of this person moves in this purpose's extracts (`birth_shift`), anchored on
        `birth`, the date of birth their exported Patient gives."""
        return birth_shift(int(self._hmac(f"date shift|Patient/{person_id}")[:12], 16), _birth_date(birth))

    @staticmethod
    def decode(resource_type: str, text: str | bytes) -> Shaped:
        """A stored clinical resource in its declared shape (only what the shape lists); Unreadable if it
        does not fit, or its type has no shape (such types are never exported)."""
        decoder = _DECODERS.get(resource_type)
        if decoder is None:
            raise Unreadable(f"{resource_type} is not exported")
        links: list[Reference] = []
        state = _state
        state.links = links
        state.codings_withheld = state.organisations_withheld = 0
        try:
            return Shaped(decoder.decode(text), links, state.codings_withheld, state.organisations_withheld)
        except msgspec.ValidationError as exc:
            raise Unreadable(f"{resource_type}: {exc}") from exc

    def _id(self, reference: str) -> str:
        """The pseudonym of "Type/server id", computed once per person."""
        known = self._known.get(reference)
        if known is None:
            known = self._known[reference] = self._hmac(reference)
        return known

    def encode(self, shaped: Shaped, server_id: str, exported: AbstractSet[str]) -> bytes:
        """The NDJSON line of a decoded resource: pseudonymous id, provenance, the pseudonymised label, and
        references only to the resources in `exported` ("Type/server id": what this export holds)."""
        resource = shaped.resource
        for link in shaped.links:
            target = link.reference
            if target is not None and target in exported:
                link.reference = f"{target.partition('/')[0]}/{self._id(target)}"
            else:
                link.reference = None
                if link.identifier is None:
                    link.type = None
        _without_dangling(resource)
        if isinstance(resource, Condition | AllergyIntolerance):
            for status in (resource.clinicalStatus, resource.verificationStatus):
                if status is not None and status.coding:
                    kept = [c for c in status.coding if _kept_coding(c.system, c.code)]
                    shaped.codings_withheld += len(status.coding) - len(kept)
                    status.coding = kept or None
        meta = resource.meta
        resource.meta = Meta(source=self.kept_source(meta.source if meta is not None else None), security=[_LABEL])
        if shaped.organisations_withheld:
            self.organisations_withheld += shaped.organisations_withheld
        resource.id = self._id(f"{resource.resourceType}/{server_id}")
        if isinstance(resource, MedicationStatement) and resource.extension:
            resource.extension = [e for e in resource.extension if e.url in KEPT_EXTENSIONS] or None
        return _without_empties(_ENCODER.encode(resource))

    def kept_source(self, source: Any) -> str | None:
        """`meta.source` as it may leave: the ODS code of the organisation, with the source system's name
        (`...|RXR#epr`) only when it is one of the systems the framework declares for that organisation (a
        sender writes what it likes after the `#`: "PC-Jane.Smith.07700900456"); nothing when it names a
        hidden organisation (`hidden_organisations`: counted) or is not written as ingest writes it."""
        if not isinstance(source, str):
            return None
        kept = self._sources.get(source)
        if kept is None:
            parts = _source_parts(source)
            if parts is None:
                kept = (None, 0)
            elif parts[0] in self._hidden:
                kept = (None, 1)
            elif parts[1] in self._systems.get(parts[0], ()):
                kept = (f"{ODS_SYSTEM}|{parts[0]}#{parts[1]}", 0)
            else:
                kept = (f"{ODS_SYSTEM}|{parts[0]}", 0)
            if len(self._sources) < 1024:  # a store holds a few sources' values, met on every resource
                self._sources[source] = kept
        if kept[1]:
            self.organisations_withheld += 1
        return kept[0]

    def patient(self, content: dict[str, Any], person_id: str) -> bytes:
        """The person's one Patient: gender, birth and (shifted) death to the month, postcode district, GP
        practice, ethnic category. Called after `for_person` of the same person: their date shift moves the
        date of death."""
        out: dict[str, Any] = {"resourceType": "Patient", "id": self._id(f"Patient/{person_id}")}
        if _state.patient_ref != f"Patient/{out['id']}":
            raise ValueError(f"Patient/{person_id} is pseudonymised after for_person of another person")
        source = self.kept_source((content.get("meta") or {}).get("source"))
        out["meta"] = {"source": source} if source else {}
        out["meta"]["security"] = [PSEUDONYMISED_LABEL]
        if content.get("gender") in ("male", "female", "other", "unknown"):
            out["gender"] = content["gender"]
        birth = content.get("birthDate")
        if isinstance(birth, str) and len(birth) >= 7:
            out["birthDate"] = birth[:7]
        if content.get("deceasedBoolean") is True:
            out["deceasedBoolean"] = True
        elif isinstance(content.get("deceasedDateTime"), str):
            died = _shifted_day(content["deceasedDateTime"][:10])  # as the person's other dates, so the
            if died is not None:  # month of death does not narrow their shift
                out["deceasedDateTime"] = died[:7]
        home = [a for a in content.get("address") or []
                if a.get("use", "home") == "home" and not (a.get("period") or {}).get("end")]
        district = postcode_district((home[0] if home else {}).get("postalCode"))
        if district:
            out["address"] = [{"use": "home", "postalCode": district}]
        codes = [ref["identifier"]["value"] for ref in content.get("generalPractitioner") or []
                 if (ref.get("identifier") or {}).get("system") == ODS_SYSTEM
                 and isinstance(ref["identifier"].get("value"), str)
                 and _ODS_CODE.fullmatch(ref["identifier"]["value"])]
        kept = [code for code in codes if code not in self._hidden]
        self.organisations_withheld += len(codes) - len(kept)
        practices = [{"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": code}} for code in kept]
        if practices:
            out["generalPractitioner"] = practices
        ethnicity = [msgspec.to_builtins(_ETHNICITY.decode(msgspec.json.encode(e)))
                     for e in content.get("extension") or [] if e.get("url") == _ETHNIC_URL]
        ethnicity = [e for e in ethnicity if any(c for c in (e.get("valueCodeableConcept") or {}).get("coding", []))]
        if ethnicity:
            out["extension"] = ethnicity[:1]
        return _ENCODER.encode(out)


_ETHNIC_URL = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"
_ETHNICITY = msgspec.json.Decoder(Extension)
