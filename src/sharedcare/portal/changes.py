"""What changed (journey 2): what other organisations recorded about the person since a date, grouped
by organisation, set beside the viewer's own organisation's record: new problems, medicines started,
stopped or changed (with the viewer's own list alongside), new results (with the viewer's own last
value of the same test), discharge summaries and other documents, follow-up asked for, and admissions.

The default date is the person's last encounter with the viewer's own organisation ("since I last saw
them"; a last encounter dated only to the month counts from its first day). An item counts from its own
clinical date (onset, result, period start or end; one dated only to the year or month counts when any of
it is on or after the date); an item with no date of its own counts from when its source recorded it. A
problem or allergy counts too when its source recorded it since the date (its `recordedDate`), whatever its
onset: a hospital's record of epilepsy since 2015, written at this admission, is news to the GP (HAZ-14;
it was left out until 2026-12-07). Not when it reached the shared record: a source's first load would
list its whole history as new.

Display only, like `present`: it receives what governance released and fetches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, timedelta

from sharedcare.governance.explain import KIND_LABELS
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import RecordView, ServedResource
from sharedcare.portal import medicines
from sharedcare.portal.pages import uk_clock, uk_date
from sharedcare.portal.present import Row, day_of, in_order, instant, moment, row, stale_sources, when
from sharedcare.portal.stays import one_per_stay

# Organisations in the order a GP after a hospital stay reads them: the hospital first.
KIND_ORDER = {"acute": 0, "ambulance": 1, "community": 2, "mental_health": 3, "hospice": 4, "social_care": 5}
WITHOUT_ENCOUNTER_DAYS = 90  # how far back to look when the viewer's organisation never saw the person
# The blocks each organisation's changes fall into, in the order a GP reads them (medicines and results
# have blocks of their own, set beside the viewer's own list and values).
SECTIONS = [("problems", "New problems", {"Condition"}), ("allergies", "New allergies", {"AllergyIntolerance"}),
            ("documents", "Letters and discharge summaries", {"DocumentReference"}),
            ("follow-up", "Care plans and follow-up asked for", {"CarePlan"}),
            ("encounters", "Admissions, appointments and visits", {"Encounter"}),
            ("other", "Procedures and immunisations", {"Procedure", "Immunization"})]


@dataclass(frozen=True)
class Since:
    day: date
    why: str  # in words: "your last encounter (Consultation, 2026-09-01)", "the date you chose"...


@dataclass(frozen=True)
class Compared:
    """A result beside the viewer's own last value of the same test."""

    row: Row
    previous: str  # "58 mmol/mol on 2026-05-14", or "" when the viewer's organisation has none


@dataclass(frozen=True)
class MedicineChange:
    name: str
    change: str  # Started, Stopped, Course finished, Dose or product changed, Continued (not on your list)
    theirs: list[medicines.Statement]
    yours: list[medicines.Statement]


@dataclass
class OrganisationChanges:
    code: str
    name: str
    kind: str
    medicines: list[MedicineChange] = field(default_factory=list)
    unchanged_medicines: int = 0
    results: list[Compared] = field(default_factory=list)
    sections: dict[str, list[Row]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.medicines or self.results or any(self.sections.values()))


@dataclass(frozen=True)
class Changes:
    since: Since
    own_name: str
    organisations: list[OrganisationChanges]


def default_since(view: RecordView, fw: Framework, own: str, today: date) -> Since:
    """The person's last encounter with the viewer's organisation, else WITHOUT_ENCOUNTER_DAYS ago."""
    dated = ((day_of(s.content), s) for s in view.of_type("Encounter") if s.source_org == own)
    mine = [(day, s) for day, s in dated if day]
    if mine:
        day, last = max(mine, key=lambda pair: pair[0])
        return Since(day, f"your organisation's last encounter with this person "
                          f"({row(last, fw).what}, {uk_date(when(last.content))})")
    start = today - timedelta(days=WITHOUT_ENCOUNTER_DAYS)
    return Since(start, f"{WITHOUT_ENCOUNTER_DAYS} days ago: your organisation has no encounter with this person "
                        "on record")


def _new(served: ServedResource, since: date) -> bool:
    """Whether an item counts as new: its own date, else when its source recorded it; a problem or allergy
    also when its source recorded it since (`_recorded_since`). A date given only to the year or month counts
    when any of it is on or after `since` (an onset "2026-11" may be 30 November): a reader is shown what may
    be new rather than not shown it."""
    return _dated_since(served, since) or bool(_recorded_since(served, since))


def _dated_since(served: ServedResource, since: date) -> bool:
    """Whether the item's own date (else the UK day it reached the record) is on or after `since`."""
    return (day_of(served.content, last=True) or uk_clock(served.recorded_at).date()) >= since


RECORDED_DATE_TYPES = {"Condition", "AllergyIntolerance"}  # the types whose `recordedDate` says when first recorded


def _recorded_since(served: ServedResource, since: date) -> str:
    """A problem's or allergy's `recordedDate` as sent, when it is on or after `since` ("" otherwise)."""
    if served.resource_type not in RECORDED_DATE_TYPES:
        return ""
    recorded = served.content.get("recordedDate")
    if not isinstance(recorded, str):
        return ""
    day = day_of({"recordedDate": recorded}, last=True)
    return recorded if day and day >= since else ""


def _test_key(served: ServedResource) -> str:
    code = served.content.get("code") or {}
    coding = (code.get("coding") or [{}])[0]
    return str(coding.get("code") or code.get("text") or "")


def _medicine_changes(group: medicines.Medicine, org: str, own: str, since: date) -> MedicineChange | None:
    theirs = [s for s in group.from_source(org) if _med_new(s, since)]
    if not theirs:
        return None
    yours = group.from_source(own)
    your_current = [s for s in yours if s.taking]
    coded = medicines.on_coded_doses([*(s for s in theirs if s.taking), *your_current])
    if any(s.status in medicines.STOPPED for s in theirs) and not any(s.taking for s in theirs):
        change = "Stopped"
    elif not any(s.taking for s in theirs) and any(s.status == "completed" for s in theirs):
        change = "Course finished"
    elif any(s.taking and s.started and s.started >= since.isoformat() for s in theirs) and not your_current:
        change = "Started"
    elif your_current and {medicines.dose_key(s, coded) for s in theirs if s.taking} - \
            {medicines.dose_key(s, coded) for s in your_current}:
        change = "Dose or product changed"
    elif not your_current and any(s.taking for s in theirs):
        change = "Continued (not on your list)"
    else:
        return None  # the same as the viewer's own list
    return MedicineChange(group.name, change, theirs, yours)


def _med_new(s: medicines.Statement, since: date) -> bool:
    stamp = since.isoformat()
    return any(d and d >= stamp for d in (s.started, s.ended, s.asserted)) or (
        not (s.started or s.ended or s.asserted) and s.recorded_on >= since)


def what_changed(view: RecordView, fw: Framework, own: str, since: Since) -> Changes:
    """Everything other organisations recorded since `since`, one block per organisation, newest first."""
    stale = frozenset(stale_sources(view))
    others = sorted({s.source_org for s in view.resources if s.source_org != own},
                    key=lambda c: (KIND_ORDER.get(_kind(fw, c), 9), _name(fw, c)))
    own_results: dict[str, list[ServedResource]] = {}
    for served in view.of_type("Observation"):
        if served.source_org == own and when(served.content):
            own_results.setdefault(_test_key(served), []).append(served)
    groups = medicines.reconcile(view.resources, fw)
    told_again = {id(s): tuple(others) for s, others in one_per_stay(view.of_type("Encounter"))}
    blocks = []
    for code in others:
        org = fw.organisation(code)
        block = OrganisationChanges(code, _name(fw, code), KIND_LABELS.get(org.kind, "") if org else "")
        for group in groups:
            if not group.from_source(code):
                continue
            change = _medicine_changes(group, code, own, since.day)
            if change:
                block.medicines.append(change)
            elif any(_med_new(s, since.day) for s in group.from_source(code)):
                block.unchanged_medicines += 1
        mine = [s for s in view.resources if s.source_org == code and _new(s, since.day)
                and (s.resource_type != "Encounter" or id(s) in told_again)]  # a stay once, not per system
        for served in sorted(mine, key=lambda s: instant(moment(s.content)), reverse=True):
            if served.resource_type in {"Observation", "DiagnosticReport"}:
                taken = instant(moment(served.content))
                earlier = [o for o in own_results.get(_test_key(served), []) if instant(moment(o.content)) < taken]
                last = max(earlier, key=lambda o: instant(moment(o.content))) if earlier else None
                earlier_value = f"{row(last, fw).detail} on {uk_date(when(last.content))}" if last else ""
                block.results.append(Compared(row(served, fw, stale), earlier_value))
                continue
            for key, _title, types in SECTIONS:
                if served.resource_type in types:
                    shown = row(served, fw, stale, told_again.get(id(served), ()))
                    if not _dated_since(served, since.day):
                        shown = replace(shown, recorded_since=_recorded_since(served, since.day))
                    block.sections.setdefault(key, []).append(shown)
        block.sections = {key: in_order(rows) for key, rows in block.sections.items()}  # high-risk allergies first
        if not block.empty:
            blocks.append(block)
    return Changes(since, _name(fw, own), blocks)


def _kind(fw: Framework, code: str) -> str:
    org = fw.organisation(code)
    return org.kind if org else ""


def _name(fw: Framework, code: str) -> str:
    org = fw.organisation(code)
    return org.name if org else code
