"""Turns released FHIR resources into what a clinician (or the patient) reads: rows, tabs, the services
involved and the trend charts, each item with its source and how fresh it is.

Display only: it receives what governance released and never fetches anything itself.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from markupsafe import Markup

from sharedcare.clock import utcnow
from sharedcare.fhir.search import FAR_PAST, SearchError, parse_instant
from sharedcare.governance.classify import masked
from sharedcare.governance.explain import CATEGORY_LABELS, KIND_LABELS
from sharedcare.governance.framework import Framework, Role
from sharedcare.governance.gateway import DemographicsSource, RecordView, ServedResource
from sharedcare.ingest.hl7v2_map import _FLAGS as HL7_FLAGS
from sharedcare.portal.charts import Point, Series, trend_chart
from sharedcare.portal.pages import nhs_spaced, uk_clock, uk_date, uk_time
from sharedcare.portal.stays import one_per_stay

log = logging.getLogger("sharedcare.portal")

# A feed whose newest item arrived longer ago than this is flagged as possibly out of date.
STALE_AFTER_DAYS = 7

# The record's tabs: (id, title, [(section title, resource types)]). Social care has a tab of its own
# (below), so its items are not repeated under their resource type.
TABS = [
    # Allergies first: the shortest list and the one no one may miss (a paramedic on a phone read eleven
    # medicines and nine problems before reaching them).
    ("summary", "Summary", [("Allergies", ["AllergyIntolerance"]), ("Medications", ["MedicationStatement"]),
                            ("Problems", ["Condition"]),
                            ("Procedures and immunisations", ["Procedure", "Immunization"])]),
    # Then who is involved, the care plan and the letters, before the timeline and the results: on a phone (and
    # without script) the panels stack, and a 57-row results table put the district nurse's Tuesday visits
    # and last month's discharge letter 31,000 px down the page (journey 1).
    ("care-team", "Care team", []),
    ("care-plans", "Care plans", [("Care plans", ["CarePlan"])]),
    ("documents", "Documents", [("Documents", ["DocumentReference"])]),
    ("encounters", "Encounters", [("Encounters", ["Encounter"])]),
    ("results", "Results", [("Results", ["Observation", "DiagnosticReport"])]),
]
SOCIAL_CARE = "social_care"
# The categories GP practices' and hospitals' items of each section fall in (governance/classify.py: a
# summary type is `summary`, a hospital's procedure, care plan or letter `hospital_detail`, an allergy from a
# specialist service `alerts`): a role whose tier is 0 in all of them sees none of that section, whoever
# recorded it, and is told so rather than "none recorded" (a receptionist must not pass on "no allergies").
SECTION_CATEGORIES = {
    "Allergies": ("summary", "alerts"), "Medications": ("summary",), "Problems": ("summary",),
    "Procedures and immunisations": ("summary", "hospital_detail"), "Encounters": ("encounters",),
    "Results": ("diagnostics",), "Care plans": ("summary", "hospital_detail"),
    "Documents": ("summary", "hospital_detail"),
}
KNOWN_TYPES = {t for _, _, sections in TABS for _, types in sections for t in types}

def concept_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if coding.get("display"):
            return str(coding["display"])
    codings = concept.get("coding") or [{}]
    return str(codings[0].get("code", ""))


# The elements that say what an item is, in the order a row names it by
NAMED_BY = ("code", "medicationCodeableConcept", "vaccineCode", "type", "serviceType", "category")


def _naming_concept(resource: dict[str, Any], names: tuple[str, ...] = NAMED_BY) -> Any:
    """The first of `names` that says something (a list's first item), else None."""
    for name in names:
        value = resource.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if concept_text(value):
            return value
    return None


def _first_concept(resource: dict[str, Any], *names: str) -> str:
    return concept_text(_naming_concept(resource, names))


def when(resource: dict[str, Any]) -> str:
    """The date that matters for this item (onset, effective, period start, issued...), as an ISO date: a
    dateTime's UK date (`local_time`), the day the table shows, so the charts and What changed agree with it
    (23:30 UTC on 31 July is 1 August)."""
    text = moment(resource)
    local = local_time(text)
    return local.date().isoformat() if local else text[:10]


def local_time(text: str) -> datetime | None:
    """A dateTime as sent, as UK clocks read it (`pages.uk_clock`); None for a date alone, or what is no
    dateTime."""
    if len(text) <= 10:
        return None
    try:
        return uk_clock(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        return None


def instant(text: str) -> datetime:
    """Where a date or dateTime as sent begins, to put items in order: the text does not sort, as sources send
    different offsets (05:40Z is after 03:10+01:00). An item without a date (or with what is no date) last."""
    try:
        return parse_instant(text) if text else FAR_PAST
    except SearchError:
        return FAR_PAST


def day_of(resource: dict[str, Any], last: bool = False) -> date | None:
    """That date as a day to compare with: a year or a month ("2019", FHIR allows it) is its first day, as FHIR
    search reads it (`parse_instant`), or with `last` its last day (31 Dec 2019); None when the item has no
    date, or what it has is no date."""
    text = when(resource)
    if not text:
        return None
    try:
        first = parse_instant(text).date()
    except SearchError:
        return None
    if not last or len(text) == 10:
        return first
    if len(text) == 4:
        return date(first.year, 12, 31)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1) - timedelta(days=1)


# A medicine's own date, in the order that says most of it, and what the page calls it: when it started (or was
# taken, or prescribed); only without one, the day the source listed it (`dateAsserted`: for a GP system's
# extract, the night it ran, which beside a hospital's stop read as a restart).
MEDICATION_DATES = (("effectivePeriod", "started"), ("effectiveDateTime", "taken"), ("authoredOn", "prescribed"),
                    ("dateAsserted", "listed"))
MEDICATION_TYPES = {"MedicationStatement", "MedicationRequest"}


def _medication_date(resource: dict[str, Any]) -> tuple[str, str]:
    """A medicine's date as sent and its label ("started"), or ("", "") when it has none."""
    for name, label in MEDICATION_DATES:
        value = resource.get(name)
        if isinstance(value, dict):
            value = value.get("start")
        if value:
            return str(value), label
    return "", ""


def date_label(resource: dict[str, Any]) -> str:
    """What a row's date is, where the date alone could mislead ("started", "listed"): a medicine's only."""
    return _medication_date(resource)[1] if resource.get("resourceType") in MEDICATION_TYPES else ""


def until(resource: dict[str, Any]) -> str:
    """When a medicine ended, as sent ("" when it has not, or the item is no medicine)."""
    if resource.get("resourceType") not in MEDICATION_TYPES:
        return ""
    return str((resource.get("effectivePeriod") or {}).get("end") or "")


def moment(resource: dict[str, Any]) -> str:
    """That date as sent (a dateTime keeps its time and offset, so a page can show it in UK time). A medicine's
    is when it started (`_medication_date`), not when its statement was made."""
    if resource.get("resourceType") in MEDICATION_TYPES:
        found, _ = _medication_date(resource)
        if found:
            return found
    for name in ("effectiveDateTime", "onsetDateTime", "recordedDate", "occurrenceDateTime", "performedDateTime",
                 "date", "issued", "dateAsserted", "authoredOn", "created"):
        if resource.get(name):
            return str(resource[name])
    for name in ("period", "effectivePeriod", "performedPeriod"):
        period = resource.get(name) or {}
        if period.get("start"):
            return str(period["start"])
    return ""


# UCUM units (and the text forms labs send for them) as a clinician writes them; any other unit is shown as
# sent. "/min" alone is said by what was counted (RATE_WORDS), else "per minute".
UNIT_WORDS = {"mm[Hg]": "mmHg", "Cel": "°C", "10*9/L": "×10⁹/L", "x10^9/L": "×10⁹/L", "10*12/L": "×10¹²/L",
              "x10^12/L": "×10¹²/L", "umol/L": "µmol/L", "ug/L": "µg/L", "/min": "per minute",
              "{beats}/min": "beats/min", "{breaths}/min": "breaths/min",
              "mL/min/{1.73_m2}": "mL/min/1.73m²", "{score}": ""}
# What a count per minute counts, by the observation's code (SNOMED CT, LOINC): heart and pulse rates in beats,
# respiratory rates in breaths.
RATE_WORDS = {"364075005": "beats/min", "78564009": "beats/min", "8867-4": "beats/min", "8893-0": "beats/min",
              "86290005": "breaths/min", "9279-1": "breaths/min"}


def quantity(q: dict[str, Any], per_minute: str = "") -> str:
    """A value with its unit: a result without one (3.0 what?) is no use to the reader. Its comparator
    first: "<5" is less than five, not five. The value as the source sent it: FHIR keeps a decimal's
    precision ("5.0" from a lab is not "5"), and the store keeps what each feed sent (a JSON 45 and 45.0
    apart, HL7 v2's "59" as 59), so nothing is trimmed here. `per_minute`: what a "/min" counts."""
    unit = str(q.get("unit") or q.get("code") or "")
    words = per_minute if per_minute and unit == "/min" else UNIT_WORDS.get(unit, unit)
    return f"{q.get('comparator') or ''}{q.get('value')} {words}".strip()


def _counted(observation: dict[str, Any]) -> str:
    """What a rate per minute counts, from the observation's codes ("" when none is known)."""
    codings = (observation.get("code") or {}).get("coding") or []
    return next((RATE_WORDS[str(c.get("code"))] for c in codings if str(c.get("code")) in RATE_WORDS), "")


def _bound(q: Any) -> dict[str, Any] | None:
    """A Quantity that holds a number (a range's bound, a ratio's term), else None."""
    return q if isinstance(q, dict) and q.get("value") is not None else None


def _unit(q: dict[str, Any], per_minute: str = "") -> str:
    unit = str(q.get("unit") or q.get("code") or "")
    return per_minute if per_minute and unit == "/min" else UNIT_WORDS.get(unit, unit)


def range_text(r: dict[str, Any], per_minute: str = "") -> str:
    """A Range (a result of 10 to 20, a reference range) in words; one bound alone is "up to" or "and above"
    (FHIR's bounds are inclusive); "" when it has neither."""
    low, high = _bound(r.get("low")), _bound(r.get("high"))
    if low and high:
        if _unit(low) == _unit(high) or not _unit(high):
            return f"{low['value']} to {high['value']} {_unit(low, per_minute)}".strip()
        return f"{quantity(low, per_minute)} to {quantity(high, per_minute)}"
    if low:
        return f"{quantity(low, per_minute)} and above"
    if high:
        return f"up to {quantity(high, per_minute)}"
    return ""


def _ratio(r: dict[str, Any]) -> str:
    numerator, denominator = _bound(r.get("numerator")), _bound(r.get("denominator"))
    return f"{quantity(numerator)}:{quantity(denominator)}" if numerator and denominator else ""


def _date_time(value: str) -> str:
    """A dateTime value: its day as pages write it, and its time in UK time when it has one."""
    if len(value) <= 10:
        return uk_date(value)
    local = local_time(value)
    return f"{uk_date(local)}, {local:%H:%M}" if local else value


# The flags a lab sends (HL7 table 0078, FHIR's v3 ObservationInterpretation) in words, for a flag sent
# without its display: HL7 v2 ingest's wording, and a few codes FHIR feeds use besides.
FLAG_WORDS = {**HL7_FLAGS, "HU": "Significantly high", "LU": "Significantly low", "POS": "Positive",
              "NEG": "Negative", "DET": "Detected", "ND": "Not detected", "IND": "Indeterminate",
              "R": "Resistant", "S": "Susceptible", "I": "Intermediate", "<": "Below the lowest value measured",
              ">": "Above the highest value measured"}


def _flag(concept: Any) -> str:
    """A flag as its text or display, else its code in words."""
    text = concept_text(concept)
    return FLAG_WORDS.get(text, text)


def _reference_range(r: dict[str, Any], per_minute: str = "") -> str:
    """One reference range, with whom it applies to when the lab says ("range 3.5 to 5.3 mmol/L")."""
    said = range_text(r, per_minute) or str(r.get("text") or "")
    if not said:
        return ""
    who = ", ".join(t for t in (concept_text(r.get("type")),
                                *(concept_text(a) for a in r.get("appliesTo") or [])) if t)
    return f"range {said}" + (f" ({who})" if who else "")


def _value_text(observation: dict[str, Any]) -> str:
    """An Observation's or a component's value, of whichever kind the source sent it; a text value withheld
    below tier 3 says it is not shown. A value of a kind not written here says so: never a blank."""
    if "valueQuantity" in observation:
        return quantity(observation["valueQuantity"], _counted(observation))
    if "valueCodeableConcept" in observation:
        return concept_text(observation["valueCodeableConcept"])
    if "valueRange" in observation:
        return range_text(observation["valueRange"], _counted(observation))
    if "valueRatio" in observation:
        return _ratio(observation["valueRatio"])
    if "valueDateTime" in observation:
        return _date_time(str(observation["valueDateTime"]))
    if "valuePeriod" in observation:
        period = observation["valuePeriod"] or {}
        return " ".join(f"{word} {_date_time(str(period[key]))}" for word, key in (("from", "start"), ("to", "end"))
                        if period.get(key))
    if isinstance(observation.get("valueBoolean"), bool):
        return "Yes" if observation["valueBoolean"] else "No"
    for name in ("valueInteger", "valueTime"):
        if observation.get(name) is not None:
            return str(observation[name])
    if observation.get("valueString") or observation.get("dataAbsentReason"):
        return str(observation.get("valueString") or concept_text(observation.get("dataAbsentReason")))
    if any(name.startswith("value") for name in observation):
        return "A value this page cannot show: see the source's record"
    return ""


def result_text(observation: dict[str, Any]) -> str:
    """A value with what the lab said of it: its flags in words and its reference range
    ("6.8 mmol/L (Critical high; range 3.5 to 5.3 mmol/L)")."""
    value = _value_text(observation)
    flags = [f for f in (_flag(c) for c in observation.get("interpretation") or []) if f]
    ranges = [r for r in (_reference_range(r, _counted(observation)) for r in observation.get("referenceRange") or []
                          if isinstance(r, dict)) if r]
    said = "; ".join([", ".join(flags)] * bool(flags) + ranges)
    return f"{value} ({said})" if value and said else value or said


def detail(resource: dict[str, Any]) -> str:
    rtype = resource.get("resourceType")
    if rtype == "Observation":
        parts = [f"{concept_text(c.get('code'))}: {result_text(c)}" for c in resource.get("component") or []
                 if isinstance(c, dict)]
        return _joined([part for part in (result_text(resource), *parts) if part])
    if rtype == "DiagnosticReport":
        count = len(resource.get("result") or [])
        panel = f"panel of {count} result{'s' if count != 1 else ''}" if count else ""
        return str(resource.get("conclusion") or "") or panel
    if rtype == "MedicationStatement":
        parts = [text for text in (dosage_text(d) for d in resource.get("dosage") or [] if isinstance(d, dict))
                 if text]
        issued = next((e.get("valueDateTime") for e in resource.get("extension", [])
                       if str(e.get("url", "")).endswith("MedicationStatementLastIssueDate")), None)
        if issued:
            parts.append(f"last issued {uk_date(issued)}")
        parts += [f"stopped: {concept_text(r)}" for r in resource.get("statusReason", []) if concept_text(r)]
        return "; ".join(parts)
    if rtype == "AllergyIntolerance":
        return "; ".join(text for text in (_reaction(r) for r in resource.get("reaction") or [] if isinstance(r, dict))
                         if text)
    if rtype == "CarePlan":
        acts = [a for a in (_activity(a.get("detail") or {}) for a in resource.get("activity", [])) if a]
        return _joined(acts) or str(resource.get("description") or resource.get("title") or "")
    if rtype == "Encounter":
        kind = str((resource.get("class") or {}).get("display") or "")
        start, end = (uk_date((resource.get("period") or {}).get(k)) for k in ("start", "end"))
        return ", ".join(part for part in (kind, f"until {end}" if end and end != start else "") if part)
    return ""


def _reaction(reaction: dict[str, Any]) -> str:
    """An allergy's reaction with how severe the source says it was: "Anaphylaxis (severe)"."""
    seen = ", ".join(text for text in (concept_text(m) for m in reaction.get("manifestation") or []) if text)
    severity = str(reaction.get("severity") or "")
    if seen and severity:
        return f"{seen} ({severity})"
    return seen or (f"{severity} reaction" if severity else "")


WEEKDAYS = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "fri": "Friday",
            "sat": "Saturday", "sun": "Sunday"}


# A dose's schedule in words (FHIR Timing): the units of a period, and when in the day (the codes UK
# prescribing systems send; any other is shown as sent).
PERIOD_UNITS = {"s": ("second", "seconds"), "min": ("minute", "minutes"), "h": ("hour", "hours"),
                "d": ("day", "days"), "wk": ("week", "weeks"), "mo": ("month", "months"), "a": ("year", "years")}
WHEN_WORDS = {"MORN": "in the morning", "AFT": "in the afternoon", "EVE": "in the evening", "NIGHT": "at night",
              "NOON": "at noon", "HS": "at bedtime", "WAKE": "on waking", "C": "with meals", "CM": "with breakfast",
              "CD": "with lunch", "CV": "with the evening meal", "AC": "before meals", "ACM": "before breakfast",
              "ACD": "before lunch", "ACV": "before the evening meal", "PC": "after meals", "PCM": "after breakfast",
              "PCD": "after lunch", "PCV": "after the evening meal"}


def _number(value: Any) -> str:
    """A dose's number as a prescriber writes it: 3.0 is 3, 2.50 is 2.5 (so two sources agree on it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    try:
        return format(Decimal(str(value)).normalize(), "f")
    except InvalidOperation:
        return str(value)


def _amount(q: dict[str, Any]) -> str:
    unit = str(q.get("unit") or q.get("code") or "")
    unit = unit[1:-1] if unit.startswith("{") and unit.endswith("}") else UNIT_WORDS.get(unit, unit)
    return f"{_number(q.get('value'))} {unit}".strip()


def _span(q: dict[str, Any]) -> str:
    """A length of time: 24 hours, 1 week."""
    one, many = PERIOD_UNITS.get(str(q.get("code") or q.get("unit") or ""), ("", ""))
    value = q.get("value")
    return f"{_number(value)} {one if value == 1 else many}" if one else _amount(q)


def _amount_range(r: dict[str, Any]) -> str:
    low, high = _bound(r.get("low")), _bound(r.get("high"))
    if low and high:
        same = _amount(low).split(" ", 1)[1:] == _amount(high).split(" ", 1)[1:]
        return f"{_number(low['value'])} to {_amount(high)}" if same else f"{_amount(low)} to {_amount(high)}"
    return f"up to {_amount(high)}" if high else f"at least {_amount(low)}" if low else ""


def _times(count: Any) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{_number(count)} times")


def timing_text(timing: dict[str, Any]) -> str:
    """A Timing in words: "once a day in the evening", "every 6 hours", "once a week on Monday"."""
    repeat = timing.get("repeat") or {}
    parts = []
    frequency, most = repeat.get("frequency") or 1, repeat.get("frequencyMax")
    period, longest, unit = repeat.get("period"), repeat.get("periodMax"), repeat.get("periodUnit")
    if period and unit in PERIOD_UNITS:
        one, many = PERIOD_UNITS[unit]
        how = f"{_number(frequency)} to {_number(most)} times" if most else _times(frequency)
        if longest:
            every = f"every {_number(period)} to {_number(longest)} {many}"
            parts.append(every if frequency == 1 and not most else f"{how} {every}")
        elif period == 1:
            parts.append(f"{how} {'an' if one == 'hour' else 'a'} {one}")
        elif frequency == 1 and not most:
            parts.append(f"every {_number(period)} {many}")
        else:
            parts.append(f"{how} every {_number(period)} {many}")
    elif repeat.get("frequency"):
        parts.append(_times(repeat["frequency"]))
    days = [WEEKDAYS.get(str(d), str(d)) for d in repeat.get("dayOfWeek") or []]
    if days:
        parts.append("on " + " and ".join(days))
    hours = [str(t)[:5] for t in repeat.get("timeOfDay") or []]
    if hours:
        parts.append("at " + " and ".join(hours))
    if repeat.get("when"):
        parts.append(" and ".join(WHEN_WORDS.get(str(w), str(w)) for w in repeat["when"]))
    bounds = _bound(repeat.get("boundsDuration"))
    if bounds:
        parts.append(f"for {_span(bounds)}")
    return " ".join(parts) or concept_text(timing.get("code"))


def coded_dose(dosage: dict[str, Any]) -> bool:
    """Whether a Dosage codes how much (doseAndRate: a quantity or a range): only then is it compared on its
    coded form, since a route or a schedule alone says nothing of the dose."""
    return any(_bound(d.get("doseQuantity")) or _bound((d.get("doseRange") or {}).get("low"))
               or _bound((d.get("doseRange") or {}).get("high")) for d in dosage.get("doseAndRate") or [])


def structured_dose(dosage: dict[str, Any]) -> str:
    """A Dosage's coded parts in words: how much (and how fast), how often, when needed, at most how much,
    and by which route ("3 mg, once a day in the evening, oral")."""
    parts = []
    for given in dosage.get("doseAndRate") or []:
        dose = _bound(given.get("doseQuantity"))
        parts.append(_amount(dose) if dose else _amount_range(given.get("doseRange") or {}))
        rate = _bound(given.get("rateQuantity"))
        ratio = given.get("rateRatio") or {}
        if rate:
            parts.append(f"at {_amount(rate)}")
        elif given.get("rateRange"):
            parts.append(f"at {_amount_range(given['rateRange'])}")
        elif _bound(ratio.get("numerator")) and _bound(ratio.get("denominator")):
            parts.append(f"at {_amount(ratio['numerator'])} per {_span(ratio['denominator'])}")
    parts.append(timing_text(dosage.get("timing") or {}))
    if dosage.get("asNeededBoolean") is True:
        parts.append("when needed")
    elif concept_text(dosage.get("asNeededCodeableConcept")):
        parts.append(f"when needed for {concept_text(dosage['asNeededCodeableConcept'])}")
    limit = dosage.get("maxDosePerPeriod") or {}
    if _bound(limit.get("numerator")) and _bound(limit.get("denominator")):
        parts.append(f"at most {_amount(limit['numerator'])} in {_span(limit['denominator'])}")
    route = concept_text(dosage.get("route"))
    if route:  # "Oral" reads "oral"; an abbreviation ("PEG tube") is left as sent
        parts.append(route[:1].lower() + route[1:] if route[1:2].islower() else route)
    return ", ".join(p for p in parts if p)


def dosage_text(dosage: dict[str, Any]) -> str:
    """A Dosage as the page shows it: the prescriber's words when the source sent them, else its coded parts
    in words (a GP system or an EPR often codes the dose and writes nothing)."""
    return str(dosage.get("text") or "") or structured_dose(dosage)


def _joined(activities: list[str]) -> str:
    """Care plan activities (or a finding and its measurements) one after another, each as sent: after one
    that ends a sentence ("...in 2 weeks.") the next follows with a space, never ".;"; after any other, a
    semicolon."""
    text = ""
    for activity in activities:
        text += ("" if not text else " " if text.rstrip().endswith((".", "!", "?")) else "; ") + activity.strip()
    return text


def _activity(detail: dict[str, Any]) -> str:
    """A care plan activity in words: its description where the role sees free text, else what its codes
    and schedule say (a coded summary still tells a paramedic the district nurse comes on Tuesdays)."""
    if detail.get("description"):
        return str(detail["description"])
    what = concept_text(detail.get("code"))
    days = ((detail.get("scheduledTiming") or {}).get("repeat") or {}).get("dayOfWeek") or []
    when = " and ".join(WEEKDAYS.get(str(d), str(d)) for d in days)
    return f"{what}, every week on {when}" if what and when else what


def document_text(resource: dict[str, Any]) -> str:
    """The text of a released document (only present at tier 3)."""
    for content in resource.get("content", []):
        data = (content.get("attachment") or {}).get("data")
        if data:
            try:
                return base64.b64decode(data).decode("utf-8", errors="replace")
            except (binascii.Error, ValueError):
                return ""
    return ""


@dataclass(frozen=True)
class Row:
    what: str
    when: str
    status: str
    detail: str
    text: str
    source: str
    source_code: str
    source_kind: str
    recorded: str
    received: str
    category: str
    tier: int
    stale: bool = False
    systems: tuple[str, ...] = ()  # when more than one system of the source sent it (a stay: PAS and EPR)
    verification: str = ""  # a Condition's or an allergy's verificationStatus code, when the source sent one
    when_label: str = ""  # what `when` is, where the date alone could mislead: "started", "listed" (a medicine's)
    disagree: bool = False  # a medicine the sources disagree about (medicines.disagreements)
    text_withheld: str = ""  # a document whose text the reader's tier removed: that, and whom to ask for it
    until: str = ""  # when a medicine ended, as sent
    # on What changed, a problem or allergy with an older date that its source recorded since the date asked:
    # when it recorded it (its recordedDate, as sent), so the row says why an old onset is there
    recorded_since: str = ""
    at: str = ""  # a result's time of day in UK time ("02:10"), when its source sent one: serial results apart
    criticality: str = ""  # an allergy's criticality as sent: high, low, unable-to-assess
    intolerance: bool = False  # an allergy its source calls an intolerance (type), not an allergy

    @property
    def risk(self) -> str:
        """An allergy's criticality in words (CRITICALITY_WORDS), "" when the source sent none."""
        return CRITICALITY_WORDS.get(self.criticality, self.criticality)

    @property
    def high_risk(self) -> bool:
        return self.criticality == "high"

    @property
    def status_colour(self) -> str:
        """The nhsuk-tag colour for the status: current things blue, finished things grey; an item the source
        is not sure of orange, one it ruled out red (the status says so in words too)."""
        if self.verification == "refuted":
            return "red"
        if self.verification in NOT_CONFIRMED:
            return "orange"
        status = self.status.lower()
        if status in {"active", "current", "in-progress", "final", "confirmed", "recurrence", "relapse"}:
            return "blue"
        if status in {"entered-in-error", "refuted", "cancelled", "revoked"}:
            return "red"
        return "grey" if status else ""


# An allergy's criticality (FHIR allergy-intolerance-criticality): how bad the next exposure could be, as
# the source judges it. A high one is tagged red and listed first: penicillin with anaphylaxis must not
# read like a codeine intolerance.
CRITICALITY_WORDS = {"high": "High risk", "low": "Low risk", "unable-to-assess": "Risk not assessed"}
# The types whose time of day is shown beside their date: results, where the same test is taken several
# times a day (potassium at 02:10 and 05:40)
TIMED_TYPES = {"Observation", "DiagnosticReport"}


# How sure the source is of a problem or an allergy (FHIR's condition-ver-status and
# allergyintolerance-verification), said beside its clinical status whenever it is not confirmed: a
# suspected pulmonary embolism is not a diagnosed one, and a refuted penicillin allergy is no allergy.
# (Entered in error is never shown: the gateway serves no withdrawn item.)
VERIFICATION_WORDS = {"unconfirmed": "unconfirmed", "provisional": "provisional (suspected)",
                      "differential": "differential (one of several possible diagnoses)",
                      "refuted": "refuted (ruled out)"}
NOT_CONFIRMED = {"unconfirmed", "provisional", "differential"}


def _verification(resource: dict[str, Any]) -> str:
    concept = resource.get("verificationStatus")
    if not isinstance(concept, dict):
        return ""
    codes = [str(c.get("code")) for c in concept.get("coding") or [] if c.get("code")]
    return codes[0] if codes else str(concept.get("text") or "").strip().lower()


def status_words(resource: dict[str, Any]) -> str:
    """The status as a row shows it: "active", "active, provisional (suspected)", "refuted (ruled out)"."""
    clinical = concept_text(resource.get("clinicalStatus")) or str(resource.get("status", ""))
    verification = _verification(resource)
    if verification == "refuted":
        return VERIFICATION_WORDS[verification]  # not "active, refuted": it is not there
    said = VERIFICATION_WORDS.get(verification, "")
    return ", ".join(part for part in (clinical, said) if part)


def text_withheld(served: ServedResource, fw: Framework) -> str:
    """Below tier 3 a document's text and attachment are removed, and so is what an item is when its source
    typed it rather than coded it (classify.at_tier: a problem, a result or a care plan named by text alone):
    the row says so, and whom to ask (the source's telephone, when the framework has one), instead of
    silently showing a letter with nothing to read or a row that names nothing. Other free text (a note, a
    description) leaves no trace to tell."""
    if served.tier >= 3:
        return ""
    if served.resource_type == "DocumentReference":
        said = "Full text not shared with your role."
    elif masked(_naming_concept(served.content)):
        said = "What this is was typed rather than coded, so it is not shared with your role."
    else:
        return ""
    org = fw.organisation(served.source_org) if served.source_org else None
    ask = f" Ask {org.name}{': ' + org.phone if org.phone else ''}." if org else ""
    return f"{said}{ask}"


def row(served: ServedResource, fw: Framework, stale: frozenset[str] = frozenset(),
        also: tuple[ServedResource, ...] = ()) -> Row:
    """An item as the pages show it; `also`: the same item as other systems of its source sent it."""
    r = served.content
    org = fw.organisation(served.source_org)
    what = _first_concept(r, *NAMED_BY) or str(r.get("title") or r.get("description") or r.get("resourceType"))
    local = local_time(moment(r)) if r.get("resourceType") in TIMED_TYPES else None
    return Row(what=what, when=moment(r), status=status_words(r), detail=detail(r),
               text=document_text(r) if r.get("resourceType") == "DocumentReference" else "",
               source=served.source_name, source_code=served.source_org,
               source_kind=KIND_LABELS.get(org.kind, "") if org else "",
               recorded=uk_time(served.recorded_at), received=uk_time(served.received_at),
               category=CATEGORY_LABELS.get(served.category, served.category), tier=served.tier,
               stale=served.source_name in stale,
               systems=tuple(sorted({s.source_system.upper() for s in (served, *also)})) if also else (),
               verification=_verification(r), when_label=date_label(r), until=until(r),
               text_withheld=text_withheld(served, fw), at=f"{local:%H:%M}" if local else "",
               criticality=str(r.get("criticality") or "") if r.get("resourceType") == "AllergyIntolerance" else "",
               intolerance=r.get("type") == "intolerance")


def in_order(rows: Iterable[Row]) -> list[Row]:
    """Rows as every list shows them: newest first by when each happened (not by its text: offsets differ),
    and a high-risk allergy before any other, whatever its date."""
    return sorted(sorted(rows, key=lambda r: instant(r.when), reverse=True), key=lambda r: not r.high_risk)


@dataclass(frozen=True)
class Section:
    title: str
    rows: list[Row]
    id: str = ""  # set when a tab holds more than one section
    not_for_role: bool = False  # the reader's role sees nothing of this section's categories (SECTION_CATEGORIES)


@dataclass(frozen=True)
class Tab:
    id: str
    title: str
    sections: list[Section]

    @property
    def count(self) -> int:
        return sum(len(s.rows) for s in self.sections)


def _slug(title: str) -> str:
    return title.lower().replace(" ", "-")


def shows_social_care(view: RecordView, role: Role | None) -> bool:
    """A social care tab for roles whose tier includes social care, and whenever anything is released
    or headlined from it."""
    return (role is not None and role.tier(SOCIAL_CARE) > 0) \
        or any(s.category == SOCIAL_CARE for s in view.resources) \
        or any(h.category == SOCIAL_CARE for h in view.headlines)


def not_for_role(section: str, role: Role | None) -> bool:
    """Whether the role's tiers leave out everything of this section's kind (a tier of 0 in each of its
    categories): never a patient's own record, nor a section not listed."""
    categories = SECTION_CATEGORIES.get(section)
    return bool(categories) and role is not None and not role.citizen \
        and all(role.tier(category) <= 0 for category in categories or ())


def tabs(view: RecordView, fw: Framework, role: Role | None, disagree: Mapping[str, int] | None = None
         ) -> list[Tab]:
    """The record's tabs in order, each item in exactly one of them, newest first; an item named in `disagree`
    (by `Type/id`: medicines the sources disagree about, with their medicine's place among them) is tagged so,
    and listed first with the other sources' statements of the same medicine."""
    disagree = disagree or {}
    stale = frozenset(stale_sources(view))
    told_again = {id(s): tuple(others) for s, others in one_per_stay(view.of_type("Encounter"))}
    items = [(s, row(s, fw, stale, told_again[id(s)]) if s.resource_type == "Encounter" else row(s, fw, stale))
             for s in view.resources if s.resource_type != "Encounter" or id(s) in told_again]
    if disagree:
        items = [(s, replace(r, disagree=True) if s.reference in disagree else r) for s, r in items]
    social = shows_social_care(view, role)

    def pick(types: list[str] | None) -> list[Row]:
        chosen = [(s, r) for s, r in items if (types is None or s.resource_type in types)
                  and not (social and s.category == SOCIAL_CARE)]
        reference = {id(r): s.reference for s, r in chosen}
        return sorted(in_order(r for _, r in chosen), key=lambda r: disagree.get(reference[id(r)], len(disagree)))

    out = []
    for tab_id, title, section_defs in TABS:
        sections = [Section(name, rows, _slug(name) if len(section_defs) > 1 else "",
                            not rows and not_for_role(name, role))
                    for name, types in section_defs for rows in (pick(types),)]
        if tab_id == "summary":
            other = [r for s, r in items if s.resource_type not in KNOWN_TYPES
                     and not (social and s.category == SOCIAL_CARE)]
            if other:
                sections.append(Section("Other information", other, "other-information"))
        out.append(Tab(tab_id, title, sections))
    if social:
        rows = in_order(r for s, r in items if s.category == SOCIAL_CARE)
        out.append(Tab("social-care", "Social care", [Section("Social care", rows)]))
    return out


# Trend charts: which observations are which (SNOMED CT as the feeds send them, LOINC as others do).
HBA1C = ({"999791000000106", "1003671000000109", "4548-4", "59261-8"}, ("hba1c", "haemoglobin a1c"))
EGFR = ({"1011481000000105", "1020291000000106", "33914-3", "62238-1", "98979-8"},
        ("egfr", "glomerular filtration"))
BLOOD_PRESSURE = ({"75367002", "163020007", "85354-9"}, ("blood pressure",))
SYSTOLIC = ({"72313002", "271649006", "8480-6"}, ("systolic",))
DIASTOLIC = ({"1091811000000102", "271650006", "8462-4"}, ("diastolic",))


def _is(concept: Any, kind: tuple[set[str], tuple[str, ...]]) -> bool:
    codes, words = kind
    if not isinstance(concept, dict):
        return False
    if any(str(c.get("code")) in codes for c in concept.get("coding") or []):
        return True
    text = concept_text(concept).lower()
    return any(word in text for word in words)


def _value(resource: dict[str, Any]) -> tuple[float, str] | None:
    """A result's number, and its comparator when the lab gave a limit (">90"): the chart leaves that out."""
    quantity = resource.get("valueQuantity") or {}
    value = quantity.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    comparator = str(quantity.get("comparator") or "")
    try:
        return float(value), comparator
    except OverflowError:  # an integer too big for a float: not drawn (charts.DRAWN)
        return math.inf, comparator


def _point(served: ServedResource, value: tuple[float, str] | None) -> Point | None:
    day = when(served.content)
    if value is None or not day:
        return None
    try:  # a partial date (FHIR allows "2026-03") has no day to plot at: the results table still lists it
        on = date.fromisoformat(day)
    except ValueError:
        return None
    return Point(on, value[0], served.source_name, value[1])


# The range each chart draws: beyond these a result is not physiological (a unit error, a slip).
HBA1C_RANGE, EGFR_RANGE, BLOOD_PRESSURE_RANGE = (0.0, 300.0), (0.0, 300.0), (0.0, 400.0)
CHARTS_FAILED = Markup('<p class="sc-chart__left-out">The trend charts could not be drawn. The results are '
                       'listed below.</p>')


def trend_charts(view: RecordView) -> list[Markup]:
    """HbA1c, eGFR and blood pressure over time, one chart each, for those with any results. A fault in
    drawing them is logged and shows a note in their place: the charts are a view of the results table,
    and must never take the record page (and the rest of the record) down with them."""
    try:
        return _trend_charts(view)
    except Exception as exc:  # any fault: the record page must still render
        # the exception's type and where it was raised, not its message (which may quote a value of the
        # record) and no person id: the log holds no patient data (docs/operations/log-inventory.md)
        log.error("trend charts could not be drawn: %s\n%s", type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)))
        return [CHARTS_FAILED]


def _trend_charts(view: RecordView) -> list[Markup]:
    series: dict[str, list[Point]] = {"hba1c": [], "egfr": [], "systolic": [], "diastolic": []}
    for served in view.of_type("Observation"):
        r = served.content
        code = r.get("code")
        found: list[tuple[str, tuple[float, str] | None]] = []
        if _is(code, HBA1C):
            found.append(("hba1c", _value(r)))
        elif _is(code, EGFR):
            found.append(("egfr", _value(r)))
        elif _is(code, SYSTOLIC):
            found.append(("systolic", _value(r)))
        elif _is(code, DIASTOLIC):
            found.append(("diastolic", _value(r)))
        elif _is(code, BLOOD_PRESSURE):
            for component in r.get("component") or []:
                part = "systolic" if _is(component.get("code"), SYSTOLIC) else \
                    "diastolic" if _is(component.get("code"), DIASTOLIC) else None
                if part:
                    found.append((part, _value(component)))
        for name, value in found:
            point = _point(served, value)
            if point:
                series[name].append(point)
    return [chart for chart in (
        trend_chart("chart-hba1c", "HbA1c", "mmol/mol", [Series("HbA1c", series["hba1c"])], HBA1C_RANGE),
        trend_chart("chart-egfr", "eGFR", "mL/min/1.73m²", [Series("eGFR", series["egfr"])], EGFR_RANGE),
        trend_chart("chart-bp", "Blood pressure", "mmHg",
                    [s for s in (Series("Systolic", series["systolic"]),
                                 Series("Diastolic", series["diastolic"], dashed=True)) if s.points],
                    BLOOD_PRESSURE_RANGE),
    ) if chart]


def last_contacts(view: RecordView, fw: Framework) -> dict[str, str]:
    """Each service's newest encounter in this view, in words, by organisation code: the care team then says
    who saw the person this week, not only who is involved."""
    newest: dict[str, tuple[str, ServedResource]] = {}
    for served in view.of_type("Encounter"):
        day = when(served.content)
        if day and (served.source_org not in newest or day > newest[served.source_org][0]):
            newest[served.source_org] = (day, served)
    return {org: f"{_contact(served, fw)} on {uk_date(moment(served.content))}" for org, (_, served) in newest.items()}


def _contact(served: ServedResource, fw: Framework) -> str:
    """An encounter in the care team's words: what it was, or, where its source typed that and the reader's tier
    does not show it (a ward given as text), its class ("Inpatient encounter")."""
    if not masked(_naming_concept(served.content)):
        return row(served, fw).what
    kind = str((served.content.get("class") or {}).get("display") or "a contact")
    return kind[:1].upper() + kind[1:]


def stale_sources(view: RecordView, now: datetime | None = None) -> list[str]:
    """Sources whose newest item in this record arrived more than STALE_AFTER_DAYS ago."""
    now = now or utcnow()
    newest: dict[str, datetime] = {}
    for served in view.resources:
        if served.source_name not in newest or served.received_at > newest[served.source_name]:
            newest[served.source_name] = served.received_at
    return sorted(name for name, at in newest.items() if (now - at).days > STALE_AFTER_DAYS)


def record_banner(view: RecordView, fw: Framework) -> dict[str, str]:
    """The banner of a record page: the person, and whose record their contact details are."""
    return patient_banner(view.patient, view.demographics_from, fw)


def _org_name(code: str, fw: Framework) -> str:
    org = fw.organisation(code)
    return f"{org.name} ({code})" if org else code


def patient_banner(patient: dict[str, Any] | None, source: DemographicsSource | None = None,
                   fw: Framework | None = None) -> dict[str, str]:
    """The person in words. With `source` and `fw`, also whose record the address, telephone and next of kin
    are (`from`), and which other practices say the person is registered with them (`disputed`): a
    clinician checks those details with the patient."""
    if not patient:
        return {"name": "Details withheld", "born": "", "nhs": "", "gender": "", "address": "", "kin": "",
                "from": "", "disputed": "", "died": ""}
    whose = disputed = died_per = ""
    if source is not None and fw is not None:
        whose = _org_name(source.org, fw) + (", the GP practice the patient is registered with" if source.registered
                                             else "")
        disputed = ", ".join(_org_name(code, fw) for code in source.also_claimed_by)
        died_per = ", ".join(_org_name(code, fw) for code in source.death_recorded_by)
    died = ""
    if patient.get("deceasedDateTime") or patient.get("deceasedBoolean") is True:
        died = (uk_date(str(patient["deceasedDateTime"])) if patient.get("deceasedDateTime") else "date not recorded") \
            + (f", recorded by {died_per}" if died_per else "")
    name = (patient.get("name") or [{}])[0]
    nhs = next((i.get("value", "") for i in patient.get("identifier", [])
                if i.get("system") == "https://fhir.nhs.uk/Id/nhs-number"), "")
    address = next((a for a in patient.get("address", []) if not (a.get("period") or {}).get("end")), None)
    kin = [f"{' '.join((c.get('name') or {}).get('given', []))} {(c.get('name') or {}).get('family', '')}"
           f" ({', '.join(concept_text(r) for r in c.get('relationship', []) if concept_text(r)) or 'contact'})"
           f"{' ' + c['telecom'][0].get('value', '') if c.get('telecom') else ''}"
           for c in patient.get("contact", [])]
    return {
        "name": f"{(name.get('family') or '').upper()}, {' '.join(name.get('given', []))}"
                + (f" ({name['prefix'][0]})" if name.get("prefix") else ""),
        "born": str(patient.get("birthDate", "")),
        "nhs": nhs_spaced(nhs),
        "gender": str(patient.get("gender", "")),
        "address": ", ".join([*(address or {}).get("line", []), (address or {}).get("city", ""),
                              (address or {}).get("postalCode", "")]).strip(", ") if address else "",
        "kin": "; ".join(kin),
        "from": whose,
        "disputed": disputed,
        "died": died,
    }
