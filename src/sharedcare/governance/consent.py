"""Patient choices: object to all sharing, object to one organisation, opt out of secondary use.

Held against the NHS number (as the national data opt-out is) and read fresh on every request, so a
change takes effect at once (TRUST CO4).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.store.models import PatientRecord, Preference

_PREFS = cast(Table, Preference.__table__)
_RECORDS = cast(Table, PatientRecord.__table__)
# The choices held against any NHS number of the person `:person_id`, read on every request (built once; the
# gateway reads them in one statement with its other inputs).
OF_PERSON = _PREFS.c.nhs_number.in_(select(_RECORDS.c.nhs_number).where(_RECORDS.c.person_id == bindparam("person_id")))


@dataclass(frozen=True)
class Choices:
    """A person's combined choices (from every NHS number their record carries)."""

    object_all: bool = False
    object_orgs: frozenset[str] = frozenset()
    opt_out_secondary: bool = False


def choices_for(session: Session, nhs_numbers: Iterable[str]) -> Choices:
    rows = session.scalars(select(Preference).where(Preference.nhs_number.in_(list(nhs_numbers)))).all()
    return combined_choices((r.object_all, r.object_orgs, r.opt_out_secondary) for r in rows)


def combined_choices(rows: Iterable[tuple[bool, list[str], bool]]) -> Choices:
    """One person's choices from those held against each of their NHS numbers (object_all, object_orgs,
    opt_out_secondary): any objection or opt-out held against any of them counts."""
    held = list(rows)
    return Choices(object_all=any(r[0] for r in held), object_orgs=frozenset(org for r in held for org in r[1]),
                   opt_out_secondary=any(r[2] for r in held))


def set_choice(session: Session, nhs_number: str, *, by: str, person_id: str | None = None,
               object_all: bool | None = None,
               object_org: str | None = None, opt_out_secondary: bool | None = None,
               clear: bool = False) -> Preference:
    """Record one change to a patient's choices, audited."""
    pref = session.get(Preference, nhs_number)
    if pref is None:
        pref = Preference(nhs_number=nhs_number, object_all=False, object_orgs=[], opt_out_secondary=False)
        session.add(pref)
    if clear:
        pref.object_all, pref.object_orgs, pref.opt_out_secondary = False, [], False
    if object_all is not None:
        pref.object_all = object_all
    if object_org is not None:
        pref.object_orgs = sorted({*pref.object_orgs, object_org})
    if opt_out_secondary is not None:
        pref.opt_out_secondary = opt_out_secondary
    pref.updated_at = utcnow()
    summary = ("cleared" if clear else
               ", ".join(p for p, on in (("object-all", pref.object_all),
                                         ("opt-out-secondary", pref.opt_out_secondary)) if on)
               + (f" object-org={','.join(pref.object_orgs)}" if pref.object_orgs else ""))
    record_audit(session, AuditRecord(AuditAction.PREFERENCE_SET, "permit", username=by, purpose="governance",
                                      patient_id=person_id,
                                      detail={"nhs_number_suffix": nhs_number[-4:], "choices": summary.strip()}))
    session.flush()
    return pref
