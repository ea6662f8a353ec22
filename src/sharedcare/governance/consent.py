"""Patient choices: a FHIR R4 Consent held against the NHS number, read fresh on every request.

The base is a permit (sharing for care as the framework allows); the patient's choices are deny
provisions under it, each of which may nest permits that re-permit a subset (and denies inside those).
Three shapes have their own columns and whole-request effects, as before Consent provisions existed:
object to all sharing, object to one organisation (its users locked out and its data not shown), opt out
of secondary use. Every other provision is held as `provisions` and withholds item by item (policy.py
rule c2). Held against the NHS number (as the national data opt-out is) and read fresh on every request,
so a change takes effect at once (TRUST CO4).

A choice follows the person it was made for when a source changes the NHS number on its record
(`follow_number`): what is held against the number the record leaves is carried to its new one, audited as
the source's correction; a record sent with no usable number keeps the one it carried last, and the choices
go on applying through it. A choice left held against a number no record carries any more is put to the IG
officer's review queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.governance.access_log import persons_with
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.store.models import PatientRecord, Preference, ReviewItem

_PREFS = cast(Table, Preference.__table__)
_RECORDS = cast(Table, PatientRecord.__table__)
# The choices held against any NHS number of the person `:person_id`: one their records carry, or one a record
# carried last while its source sends none (`follow_number`). Read on every request (built once; the gateway
# reads them in one statement with its other inputs).
_OF_PERSON_ID = _RECORDS.c.person_id == bindparam("person_id")
OF_PERSON = or_(_PREFS.c.nhs_number.in_(select(_RECORDS.c.nhs_number).where(_OF_PERSON_ID)),
                _PREFS.c.nhs_number.in_(select(_RECORDS.c.last_nhs_number).where(_OF_PERSON_ID)))
# The IG review item queued when a choice is left held against an NHS number no record carries any more
CHOICES_LEFT = "choices-left-behind"

# v3 ActReason purposes of use a provision may name, and those each framework purpose acts for. ETREAT
# (emergency, break glass) is a kind of TREAT: a deny of TREAT covers it, a permit of ETREAT only it.
PURPOSES_OF_USE = ("TREAT", "ETREAT", "HOPERAT", "HRESCH")
# What every non-identifiable purpose acts for, whatever the framework names it ('secondary-use', 'research',
# 'planning'): a pseudonymised extract may serve planning or research, so a deny of either covers it, and it
# is asked once for each (policy's `_secondary_reason`): a permit of one excepts only that one. An emergency
# read's {TREAT, ETREAT} is one purpose and its broader kind, not two, so it is asked once: a deny of
# treatment covers it, and an exception for emergency treatment or for treatment both except it.
SECONDARY_USE = frozenset({"HOPERAT", "HRESCH"})


def purposes_of_use(purpose: str, emergency: bool) -> frozenset[str]:
    """The ActReason codes an identifiable request acts for: direct care, and break glass as ETREAT; self-access
    and governance act for none, so only provisions that name no purpose apply. (Secondary use: SECONDARY_USE.)"""
    if purpose == "direct-care":
        return frozenset({"TREAT", "ETREAT"}) if emergency else frozenset({"TREAT"})
    return frozenset()


@dataclass(frozen=True)
class Ask:
    """What a provision is matched against: who reads (organisation), why, and which data."""

    recipient: str
    purposes: frozenset[str]
    source: str
    resource_type: str
    category: str
    now: datetime


@dataclass(frozen=True)
class Provision:
    """One Consent provision. Each element left empty matches anything; each one given must match (any of
    its values): a provision naming readers (IRCP) and holders (CST) applies when the reader is one of the
    readers and the data's holder one of the holders; `provisions` are exceptions to this one."""

    type: str  # permit | deny
    recipients: frozenset[str] = frozenset()  # actor role IRCP: the reading user's organisation (ODS)
    sources: frozenset[str] = frozenset()  # actor role CST: the organisation that holds the data
    purposes: frozenset[str] = frozenset()
    classes: frozenset[str] = frozenset()  # resource types
    codes: frozenset[str] = frozenset()  # the framework's data categories
    start: datetime | None = None
    end: datetime | None = None
    provisions: tuple[Provision, ...] = ()

    def matches(self, ask: Ask) -> bool:
        return ((not self.recipients or ask.recipient in self.recipients)
                and (not self.sources or ask.source in self.sources)
                and (not self.purposes or bool(self.purposes & ask.purposes))
                and (not self.classes or ask.resource_type in self.classes)
                and (not self.codes or ask.category in self.codes)
                and (self.start is None or self.start <= ask.now)
                and (self.end is None or ask.now <= self.end))

    def outcome(self, ask: Ask) -> str | None:
        """permit or deny when this provision matches (the innermost matching exception decides; among
        exceptions that match, deny wins), None when it does not."""
        if not self.matches(ask):
            return None
        found = {o for p in self.provisions if (o := p.outcome(ask)) is not None}
        return "deny" if "deny" in found else ("permit" if found else self.type)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for name in ("recipients", "sources", "purposes", "classes", "codes"):
            if values := getattr(self, name):
                out[name] = sorted(values)
        if self.start is not None:
            out["start"] = self.start.isoformat()
        if self.end is not None:
            out["end"] = self.end.isoformat()
        if self.provisions:
            out["provisions"] = [p.to_json() for p in self.provisions]
        return out

    @classmethod
    def from_json(cls, held: dict[str, Any]) -> Provision:
        return cls(type=held["type"], **{name: frozenset(held.get(name, ()))
                                         for name in ("recipients", "sources", "purposes", "classes", "codes")},
                   start=datetime.fromisoformat(held["start"]) if held.get("start") else None,
                   end=datetime.fromisoformat(held["end"]) if held.get("end") else None,
                   provisions=tuple(cls.from_json(p) for p in held.get("provisions", ())))


@dataclass(frozen=True)
class Choices:
    """A person's combined choices (from every NHS number their record carries)."""

    object_all: bool = False
    object_orgs: frozenset[str] = frozenset()
    opt_out_secondary: bool = False
    provisions: tuple[Provision, ...] = ()  # deny provisions under the base permit, with their exceptions

    def denies(self, ask: Ask) -> bool:
        """Whether a provision withholds what `ask` describes (deny wins among the base's provisions)."""
        return any(p.outcome(ask) == "deny" for p in self.provisions)

    def withhold_all(self, source: str, readers: Iterable[str], categories: Iterable[str], purposes: frozenset[str],
                     now: datetime) -> bool:
        """Whether the provisions keep everything `source` holds, of every category, from each other
        organisation reading it for `purposes`: what a summary of the choices may say of it ("Stop sharing,
        except in an emergency" is a provision, not `object_all`, and withholds as much outside an emergency).
        A provision naming resource types does not count: it withholds some of a category, not all of it."""
        others = [reader for reader in readers if reader != source]
        kinds = list(categories)
        return bool(others and kinds) and all(self.denies(Ask(reader, purposes, source, "", kind, now))
                                              for reader in others for kind in kinds)


NO_CHOICES = Choices()  # a person with no choices held

def except_in_emergency() -> Provision:
    """Object to all sharing (for any purpose, as an objection to all sharing is), except for emergency
    treatment."""
    return Provision("deny", provisions=(Provision("permit", purposes=frozenset({"ETREAT"})),))


def hide_category(category: str, from_org: str | None = None, except_org: str | None = None) -> Provision:
    """Hide one category of information from one organisation (or everyone), except from another."""
    return Provision("deny", recipients=frozenset({from_org}) if from_org else frozenset(), codes=frozenset({category}),
                     provisions=(Provision("permit", recipients=frozenset({except_org})),) if except_org else ())


def provisions_of(held: Sequence[dict[str, Any]] | None) -> tuple[Provision, ...]:
    return tuple(Provision.from_json(p) for p in held or ())


def choices_for(session: Session, nhs_numbers: Iterable[str]) -> Choices:
    rows = session.scalars(select(Preference).where(Preference.nhs_number.in_(list(nhs_numbers)))).all()
    return combined_choices((r.object_all, r.object_orgs, r.opt_out_secondary, r.provisions) for r in rows)


def combined_choices(rows: Iterable[tuple[bool, list[str], bool, list[dict[str, Any]] | None]]) -> Choices:
    """One person's choices from those held against each of their NHS numbers (object_all, object_orgs,
    opt_out_secondary, provisions): any objection, opt-out or provision held against any of them counts
    (a provision held against several of them, as the portal adds one to each, counts once)."""
    held = list(rows)
    if not held:  # nearly every read: no choices held (made once, as it is the same every time)
        return NO_CHOICES
    return Choices(object_all=any(r[0] for r in held), object_orgs=frozenset(org for r in held for org in r[1]),
                   opt_out_secondary=any(r[2] for r in held),
                   provisions=tuple(dict.fromkeys(p for r in held for p in provisions_of(r[3]))))


def _summary(pref: Preference) -> str:
    flags = [p for p, on in (("object-all", pref.object_all), ("opt-out-secondary", pref.opt_out_secondary)) if on]
    if pref.object_orgs:
        flags.append(f"object-org={','.join(pref.object_orgs)}")
    if pref.provisions:
        flags.append(f"provisions={len(pref.provisions)}")
    return ", ".join(flags) or "none"


class VersionConflict(SharedcareError):
    """The choices changed since the version the caller read: nothing was changed."""


def _held(session: Session, nhs_number: str, expected_version: int | None = None) -> Preference:
    """The choices held against `nhs_number`, locked until the transaction ends, so that two changes made
    at once are applied one after the other (neither lost, each its own version). The row is first
    inserted if absent (a no-op if it exists or another transaction inserts it first), so that two first
    choices made at once also queue on its lock. `expected_version`: the version the caller's change was
    made against; VersionConflict if the choices have changed since."""
    insert = (pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert)(_PREFS)
    session.execute(insert.values(nhs_number=nhs_number, object_all=False, object_orgs=[], opt_out_secondary=False,
                                  provisions=[], version=0, updated_at=utcnow()).on_conflict_do_nothing())
    pref = session.scalars(select(Preference).where(Preference.nhs_number == nhs_number).with_for_update()
                           .execution_options(populate_existing=True)).one()
    if expected_version is not None and pref.version != expected_version:
        raise VersionConflict(f"your choices have already changed (now version {pref.version}, not "
                              f"{expected_version}); read them again", where="If-Match")
    return pref


def _changed(session: Session, pref: Preference, by: str, person_id: str | None, summary: str,
             reason: str | None = None, organisation: str | None = None) -> Preference:
    """Stamp a change to the Consent (a new version) and audit it with that version.

    The time is stamped once the audit entry is appended, so under the audit chain's lock, which the
    transaction holds until it commits: an export kicked off before that time appends its own kick-off
    entry after this change commits, so its run reads this change; one kicked off after it finds the change
    newer than its start (`export.jobs._Changes.since`). Stamped before the append, a change waiting on the
    lock could be older than a kick-off and yet missing from its snapshot.

    The persons whose records carry the number now are noted with it: an export holding one of them is
    withdrawn by this change even after a source corrects the number on their record (`export.jobs._Changes`)."""
    pref.version = (pref.version or 0) + 1
    pref.persons = persons_with(session, pref.nhs_number)
    record_audit(session, AuditRecord(AuditAction.PREFERENCE_SET, "permit", username=by, purpose="governance",
                                      patient_id=person_id, reason=reason, organisation=organisation,
                                      detail={"nhs_number_suffix": pref.nhs_number[-4:], "choices": summary,
                                              "consent_version": str(pref.version)}))
    pref.updated_at = utcnow()
    session.flush()
    return pref


def set_choice(session: Session, nhs_number: str, *, by: str, person_id: str | None = None,
               object_all: bool | None = None,
               object_org: str | None = None, allow_org: str | None = None, opt_out_secondary: bool | None = None,
               provision: Provision | None = None, withdraw: Provision | None = None,
               clear: bool = False, expected_version: int | None = None) -> Preference:
    """Record one change to a patient's choices, audited. `allow_org`: withdraw the objection to one
    organisation; `provision`: a further deny provision to add; `withdraw`: one to remove (as held, not by
    position, so a page drawn earlier cannot remove another); `expected_version`: refused with
    VersionConflict unless that is the version held."""
    pref = _held(session, nhs_number, expected_version)
    if clear:
        pref.object_all, pref.object_orgs, pref.opt_out_secondary, pref.provisions = False, [], False, []
    if object_all is not None:
        pref.object_all = object_all
    if object_org is not None:
        pref.object_orgs = sorted({*pref.object_orgs, object_org})
    if allow_org is not None:
        pref.object_orgs = sorted(set(pref.object_orgs) - {allow_org})
    if opt_out_secondary is not None:
        pref.opt_out_secondary = opt_out_secondary
    if provision is not None:
        pref.provisions = [*(pref.provisions or []), provision.to_json()]
    if withdraw is not None:
        pref.provisions = [p for p in pref.provisions or [] if p != withdraw.to_json()]
    return _changed(session, pref, by, person_id, "cleared" if clear else _summary(pref))


def replace_choices(session: Session, nhs_numbers: Iterable[str], named: str, choices: Choices, *, by: str,
                    person_id: str | None = None, expected_version: int | None = None) -> None:
    """Hold `choices` (a whole Consent, as the patient sent it for `named`) in place of what was held
    against each of the person's NHS numbers, audited per number. Every number's row is locked first, in
    sorted order as every change to several numbers takes them (so two cannot deadlock), before any is
    written. `expected_version`: the version of `named` the Consent was drawn from; VersionConflict,
    nothing changed, unless that is the version held and every other number holds the same choices as
    `named` (the sender saw only `named`'s, so replacing others' would undo a change they never saw)."""
    held = [_held(session, n, expected_version if n == named else None) for n in sorted({*nhs_numbers, named})]
    if expected_version is not None:
        seen = next(_as_held(p) for p in held if p.nhs_number == named)
        if any(_as_held(p) != seen for p in held):
            raise VersionConflict("the choices held against your other NHS numbers differ from this Consent's: "
                                  "read each (GET /fhir/Consent?patient=), then send the Consent again without "
                                  "If-Match to replace them all", where="If-Match")
    for pref in held:
        pref.object_all, pref.object_orgs = choices.object_all, sorted(choices.object_orgs)
        pref.opt_out_secondary = choices.opt_out_secondary
        pref.provisions = [p.to_json() for p in choices.provisions]
        _changed(session, pref, by, person_id, _summary(pref))


def numbers_of_person(session: Session, nhs_number: str) -> tuple[str | None, list[str]]:
    """The person whose records carry `nhs_number` (or carried it last: `follow_number`), and every NHS number
    that is theirs (`own_numbers`: choices held against any of them apply together). A number no record carries,
    or one carried by two persons' records (a conflict the MPI has put to review), is that number alone, with
    no person."""
    persons = set(session.scalars(select(PatientRecord.person_id).where(
        or_(PatientRecord.nhs_number == nhs_number, PatientRecord.last_nhs_number == nhs_number))))
    if len(persons) != 1:
        return None, [nhs_number]
    (person_id,) = persons
    return person_id, sorted({nhs_number, *own_numbers(session, person_id)})


def _numbers(session: Session, person_id: str) -> tuple[set[str], set[str]]:
    """The NHS numbers the person's records carry (or carried last, while their sources send none), and those
    of them another person's records carry (or carried last) too."""
    mine = {n for row in session.execute(select(_RECORDS.c.nhs_number, _RECORDS.c.last_nhs_number).where(
        _RECORDS.c.person_id == person_id)) for n in row if n}
    if not mine:
        return mine, set()
    numbers = sorted(mine)
    theirs = session.execute(select(_RECORDS.c.nhs_number, _RECORDS.c.last_nhs_number).where(
        or_(_RECORDS.c.nhs_number.in_(numbers), _RECORDS.c.last_nhs_number.in_(numbers)),
        _RECORDS.c.person_id != person_id))
    return mine, {n for row in theirs for n in row if n in mine}


def own_numbers(session: Session, person_id: str) -> list[str]:
    """The NHS numbers the person's source records carry (or carried last, while their sources send none:
    `follow_number`) and no other person's do: the numbers by which their choices are read and changed (the
    citizen's pages, their FHIR Consent, the operator's command). A number another person's records carry too
    (the MPI keeps them apart for review: a mother's number on her baby's record) is no one's, as in
    `numbers_of_person`: either holder could otherwise read and withdraw the other's choices. The decision point
    still applies the choices held against it to both (`OF_PERSON`: an objection is never dropped for a
    conflict)."""
    mine, shared = _numbers(session, person_id)
    return sorted(mine - shared)


def shared_numbers(session: Session, person_id: str) -> list[str]:
    """The NHS numbers the person's records carry that another person's records carry too (not `own_numbers`)."""
    return sorted(_numbers(session, person_id)[1])


def _restricts(pref: Preference | None) -> bool:
    return pref is not None and bool(pref.object_all or pref.object_orgs or pref.opt_out_secondary or pref.provisions)


def follow_number(session: Session, record: PatientRecord, before: str | None, by: str) -> None:
    """Keep the patient's choices applying to this record's person once its NHS number changed (`before`: the
    number it carried; the record is matched again already). Choices are held against numbers and read through
    the numbers a person's records carry, so a source correcting or replacing the number on its record left an
    opt-out or objection behind, applying to no one (privacy review 2026-12-07). Now:
    - the choices held against the number the record leaves are added to those held against its new one
      (never less: deny-safe), audited as a change by `by`, the source's correction;
    - a record left with no usable number keeps the one it leaves as its last (`last_nhs_number`) until it
      carries one again; its person's choices are read through it (`OF_PERSON`, `own_numbers`);
    - when no record carries the number left any longer, an IG review item (`CHOICES_LEFT`) says so: the
      patient should be told, and the IG officer may clear what is held against it."""
    left = before or record.last_nhs_number
    now = record.nhs_number
    record.last_nhs_number = left if now is None else None
    if left is None or left == now or not _restricts(session.get(Preference, left)):
        return
    if now is not None:
        held = {n: _held(session, n) if n == now else _locked(session, n) for n in sorted({left, now})}
        source, target = held[left], held[now]
        before_carry = _as_held(target)
        target.object_all = target.object_all or source.object_all
        target.object_orgs = sorted({*target.object_orgs, *source.object_orgs})
        target.opt_out_secondary = target.opt_out_secondary or source.opt_out_secondary
        target.provisions = [*(target.provisions or []),
                             *(p for p in source.provisions or [] if p not in (target.provisions or []))]
        if _as_held(target) != before_carry:
            _changed(session, target, by, record.person_id, _summary(target),
                     reason=f"carried from NHS number ending {left[-4:]}: the NHS number on {record.source_org}'s "
                            f"record {record.id} changed from it to this one", organisation=record.source_org)
    carried = session.scalar(select(PatientRecord.id).where(PatientRecord.nhs_number == left).limit(1))
    if carried is None:
        _left_behind(session, record, left, now, by)


def _locked(session: Session, nhs_number: str) -> Preference:
    """The choices held against `nhs_number` (known to be held), locked until the transaction ends."""
    return session.scalars(select(Preference).where(Preference.nhs_number == nhs_number).with_for_update()
                           .execution_options(populate_existing=True)).one()


def _left_behind(session: Session, record: PatientRecord, left: str, now: str | None, by: str) -> None:
    """Queue the IG review item saying that choices are held against a number no record carries any longer."""
    pref = session.get_one(Preference, left)
    where = (f"they were carried to the number it carries now (ending {now[-4:]}) and apply there. Tell the "
             "patient; once sure the number was theirs, clear those held against the old number" if now else
             "it carries no NHS number now: they go on applying to its person through the number it carried last "
             "(do not clear them). Tell the patient, and ask the source for the number")
    session.add(ReviewItem(
        kind=CHOICES_LEFT, username=by, person_id=record.person_id, patient_record_id=record.id,
        reason=f"the patient's choices ({_summary(pref)}) are held against NHS number ending {left[-4:]}, which no "
               f"record carries any longer: {record.source_org}'s record changed it; {where}",
        created_at=utcnow(), status="open"))


def _as_held(pref: Preference) -> tuple[Any, ...]:
    return pref.object_all, sorted(pref.object_orgs or []), pref.opt_out_secondary, pref.provisions or []
