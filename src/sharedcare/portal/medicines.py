"""Medicines reconciliation (journey 6): every medicine from every source in one table, grouped by
medicine, with what each source says and where they disagree.

Display only, like `present`: it receives what governance released and fetches nothing.

Grouping. The proper key is the dm+d VTM (the medicine whatever its strength or form), but feeds send
the product (VMP or AMP) without it and no dm+d release ships here, so two statements are one medicine
when they share a code or the name before the strength ("Ramipril 5mg capsules" and "Ramipril 2.5mg
capsules" are both Ramipril). No library does this for free text; it is a flag for a pharmacist, who
reads every source's own wording beside it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sharedcare.governance.classify import masked
from sharedcare.governance.explain import KIND_LABELS
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import ServedResource
from sharedcare.portal.pages import UK, uk_date
from sharedcare.portal.present import coded_dose, concept_text, dosage_text, structured_dose

TAKING = {"active", "intended"}  # the source says the person takes it now
STOPPED = {"stopped"}  # the source says it was stopped (a finished course or closed record is "completed")
LAST_ISSUE = "MedicationStatementLastIssueDate"
# Doses written differently that mean the same (a few common ones; anything else is compared as written).
SAME_DOSE = [(re.compile(r"\b(once daily|daily|once a day|od)\b"), "once a day"),
             (re.compile(r"\b(twice daily|twice a day|bd)\b"), "twice a day"),
             (re.compile(r"\b(at night|at bedtime|nocte)\b"), "at night")]
# GP first: the practice holds the list that repeat prescriptions are issued from.
KIND_ORDER = {"gp": 0, "acute": 1, "community": 2, "pharmacy": 3}


@dataclass(frozen=True)
class Statement:
    """What one source says about one medicine."""

    product: str  # as the source names it
    code: str
    dose: str
    status: str
    reason: str  # why it was stopped or started (free text: tier 3 only)
    started: str
    ended: str
    last_issued: str
    asserted: str
    source: str
    source_code: str
    source_kind: str
    recorded: str
    recorded_on: date
    coded: str = ""  # the dose as coded (doseAndRate, timing, route) in words, when every dosage codes one
    reference: str = field(default="", compare=False)  # the served statement's `Type/id`, for the record's rows
    # a medicine its source typed rather than coded, not shown at the reader's tier (classify.masked): grouped
    # with no other, as its placeholder name and code are no medicine's
    not_shown: bool = False

    @property
    def taking(self) -> bool:
        return self.status in TAKING

    @property
    def status_words(self) -> str:
        return {"active": "taking", "intended": "to start", "stopped": "stopped", "completed": "finished",
                "on-hold": "on hold", "not-taken": "not taken",
                "entered-in-error": "entered in error"}.get(self.status, self.status or "not stated")

    @property
    def status_colour(self) -> str:
        return "blue" if self.taking else "red" if self.status in STOPPED else "grey"


@dataclass(frozen=True)
class Medicine:
    name: str
    statements: list[Statement]
    problems: list[str]  # discrepancies between sources, in words

    @property
    def flagged(self) -> bool:
        return bool(self.problems)

    def from_source(self, code: str) -> list[Statement]:
        return [s for s in self.statements if s.source_code == code]


def medicine_name(product: str) -> str:
    """The medicine without its strength and form: the words before the first number."""
    head = re.split(r"\s\d", product.strip(), maxsplit=1)[0].strip()
    return head[:1].upper() + head[1:] if head else product.strip()


def dose_key(statement: Statement, coded: bool = False) -> str:
    """What two sources' statements are compared on: the product and the dose, as written or (`coded`) as
    coded."""
    dose = statement.coded if coded else statement.dose
    text = " ".join(f"{statement.product} {dose}".lower().replace(",", " ").split())
    for pattern, words in SAME_DOSE:
        text = pattern.sub(words, text)
    return text


def on_coded_doses(statements: Iterable[Statement]) -> bool:
    """Whether statements are compared on their coded doses: when every one of them codes its dose. The words
    a prescriber wrote ("as directed") may hide different coded doses; and where one source only wrote words,
    those words are what there is to compare."""
    found = list(statements)
    return bool(found) and all(s.coded for s in found)


def said(statement: Statement, coded: bool = False) -> str:
    """A statement in a discrepancy's words: the product and the dose shown, with the coded dose compared
    when that is not what is shown."""
    dose = statement.dose + (f" (coded dose: {statement.coded})" if coded and statement.coded != statement.dose
                             else "")
    return f"{statement.product}, {dose}" if dose else statement.product


def statement(served: ServedResource, fw: Framework) -> Statement:
    r: dict[str, Any] = served.content
    product = concept_text(r.get("medicationCodeableConcept")) or "Medicine not named"
    codes = (r.get("medicationCodeableConcept") or {}).get("coding") or [{}]
    period = r.get("effectivePeriod") or {}
    issued = next((e.get("valueDateTime") for e in r.get("extension", [])
                   if str(e.get("url", "")).endswith(LAST_ISSUE)), None)
    reasons = [concept_text(c) for c in r.get("statusReason", [])] + \
        [str(n.get("text")) for n in r.get("note", []) if n.get("text")]
    dosages = [d for d in r.get("dosage") or [] if isinstance(d, dict)]
    org = fw.organisation(served.source_org)
    recorded = served.recorded_at.astimezone(UK)  # the day as people in the ICS say it
    return Statement(
        product=product, code=str(codes[0].get("code") or ""),
        dose="; ".join(text for text in (dosage_text(d) for d in dosages) if text),
        coded="; ".join(structured_dose(d) for d in dosages) if dosages and all(map(coded_dose, dosages)) else "",
        status=str(r.get("status", "")), reason="; ".join(x for x in reasons if x),
        started=str(period.get("start") or r.get("effectiveDateTime") or "")[:10],
        ended=str(period.get("end") or "")[:10],
        last_issued=str(issued or "")[:10], asserted=str(r.get("dateAsserted") or "")[:10],
        source=served.source_name, source_code=served.source_org,
        source_kind=KIND_LABELS.get(org.kind, "") if org else "",
        recorded=f"{recorded.day} {recorded:%b %Y}", recorded_on=recorded.date(), reference=served.reference,
        not_shown=masked(r.get("medicationCodeableConcept")))


def _problems(statements: list[Statement]) -> list[str]:
    """Where the sources disagree about one medicine (each source judged on what it says now)."""
    by_source: dict[str, list[Statement]] = {}
    for s in statements:
        by_source.setdefault(s.source, []).append(s)
    taking = {src: [s for s in found if s.taking] for src, found in by_source.items()}
    taking = {src: found for src, found in taking.items() if found}
    stopped = {src: [s for s in found if s.status in STOPPED] for src, found in by_source.items() if src not in taking}
    stopped = {src: found for src, found in stopped.items() if found}
    out = []
    if taking and stopped:
        for src, found in sorted(stopped.items()):
            latest = max(found, key=lambda s: (s.ended, s.recorded_on))
            why = f" ({latest.reason})" if latest.reason else ""
            stop = latest.ended or latest.asserted
            after = sorted((s.source, s.last_issued) for found in taking.values() for s in found
                           if stop and s.last_issued > stop)  # issued after the stop: a safety signal
            since = ", ".join(f"{who} on {uk_date(day)}" for who, day in after)
            issued = f", and issued since by {since}" if after else ""
            out.append(f"Stopped by {src}{' on ' + uk_date(latest.ended) if latest.ended else ''}{why}, "
                       f"but still current at {', '.join(sorted(taking))}{issued}.")
    coded = on_coded_doses(s for found in taking.values() for s in found)
    doses = {src: {dose_key(s, coded) for s in found} for src, found in taking.items()}
    if len({frozenset(d) for d in doses.values()}) > 1:
        out.append("Different product or dose: " + "; ".join(
            f"{src} says {' / '.join(said(s, coded) for s in found)}" for src, found in sorted(taking.items())) + ".")
    return out


def reconcile(resources: list[ServedResource], fw: Framework) -> list[Medicine]:
    """Every released MedicationStatement, grouped by medicine; discrepancies first, then by name.

    Besides disagreements within a group, a medicine that only one source lists as current is flagged
    when other sources keep a current list of their own that leaves it out (a hospital start the
    practice has not added, or a practice medicine the discharge list dropped)."""
    statements = [statement(s, fw) for s in resources if s.resource_type == "MedicationStatement"]
    groups: list[list[Statement]] = []
    index: dict[str, int] = {}
    for s in statements:
        keys = [f"item:{s.reference}"] if s.not_shown else \
            [f"name:{medicine_name(s.product).lower()}"] + ([f"code:{s.code}"] if s.code else [])
        found = next((index[k] for k in keys if k in index), None)
        if found is None:
            found = len(groups)
            groups.append([])
        groups[found].append(s)
        for k in keys:
            index.setdefault(k, found)
    listing = {s.source for s in statements if s.taking}  # sources keeping a current list
    out = []
    for group in groups:
        problems = _problems(group)
        current = {s.source for s in group if s.taking}
        mentioned = {s.source for s in group}
        left_out = sorted(listing - mentioned)
        if len(current) == 1 and left_out and not group[0].not_shown:  # (what is not shown cannot be compared)
            problems.append(f"Only {next(iter(current))} lists this as current; not on the list from "
                            f"{', '.join(left_out)}.")
        ordered = sorted(group, key=lambda s: (KIND_ORDER.get(_kind(fw, s.source_code), 9), s.source,
                                               not s.taking, s.product))
        out.append(Medicine(medicine_name(ordered[0].product), ordered, problems))
    return sorted(out, key=lambda m: (not m.flagged, m.name.lower()))


def _kind(fw: Framework, code: str) -> str:
    org = fw.organisation(code)
    return org.kind if org else ""


def disagreements(resources: list[ServedResource], fw: Framework) -> tuple[list[Medicine], dict[str, int]]:
    """The medicines whose sources disagree (`reconcile`'s discrepancies, in its words), and the reference of
    every statement about them with its medicine's place in that list: the record's summary warns of these
    and lists their rows first, together and tagged, so that a reader of the summary alone (a paramedic) is
    not shown the practice's "active" with a hospital's stop far below it, unflagged."""
    flagged = [m for m in reconcile(resources, fw) if m.flagged]
    return flagged, {s.reference: place for place, m in enumerate(flagged) for s in m.statements}
