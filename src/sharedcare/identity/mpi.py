"""The master patient index (foundation): link each source patient record to one person.

Order of evidence: a valid NHS number that agrees with the demographics links deterministically; a
valid NHS number with clearly conflicting demographics (different sex *and* date of birth) starts a
new person held for review rather than risk showing one person another's record; with no NHS number,
an exact match on family name, given name, date of birth and postcode links. Everything else starts a
new person. Probabilistic matching (Splink) replaces the last two steps in the identity issue.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.store.models import PatientRecord, Person


@dataclass(frozen=True)
class Demographics:
    """What a source says about who a patient is; the fields matching uses."""

    nhs_number: str | None
    family: str | None
    given: str | None
    birth_date: date | None
    gender: str | None
    postcode: str | None


def _new_person(session: Session) -> Person:
    person = Person(id=str(uuid.uuid4()))
    session.add(person)
    session.flush()
    return person


def _conflicts(a: PatientRecord, b: Demographics) -> bool:
    """Clearly a different person: both sex and date of birth known and different."""
    sex_differs = bool(a.gender and b.gender and a.gender != b.gender and "unknown" not in (a.gender, b.gender))
    dob_differs = bool(a.birth_date and b.birth_date and a.birth_date != b.birth_date)
    return sex_differs and dob_differs


def _find_person(session: Session, demo: Demographics) -> tuple[str | None, str, float, str]:
    """Return (person id or None, method, probability, status) for a record not yet linked."""
    if demo.nhs_number:
        same_number = session.scalars(
            select(PatientRecord).where(PatientRecord.nhs_number == demo.nhs_number).limit(20)
        ).all()
        agreeing = [r for r in same_number if not _conflicts(r, demo)]
        if agreeing:
            return agreeing[0].person_id, "nhs-number", 1.0, "linked"
        if same_number:
            return None, "nhs-number-conflict", 0.0, "review"
        return None, "new", 1.0, "linked"
    if demo.family and demo.given and demo.birth_date and demo.postcode:
        match = session.scalars(
            select(PatientRecord).where(
                func.lower(PatientRecord.family) == demo.family.lower(),
                func.lower(PatientRecord.given) == demo.given.lower(),
                PatientRecord.birth_date == demo.birth_date,
                PatientRecord.postcode == demo.postcode,
            ).limit(1)
        ).first()
        if match:
            return match.person_id, "demographics-exact", 0.95, "linked"
    return None, "new", 1.0, "linked"


def link_patient_record(session: Session, source_org: str, source_id: str, demo: Demographics,
                        update: bool = True) -> PatientRecord:
    """Create the source patient record linked to a person, or find it; `update` says whether these
    demographics are current enough to replace what the record holds."""
    record = session.scalars(
        select(PatientRecord).where(PatientRecord.source_org == source_org, PatientRecord.source_id == source_id)
    ).first()
    if record is None:
        person_id, method, probability, status = _find_person(session, demo)
        record = PatientRecord(
            source_org=source_org, source_id=source_id,
            person_id=person_id or _new_person(session).id,
            link_method=method, match_probability=probability, link_status=status,
        )
        session.add(record)
    elif not update:
        return record
    record.nhs_number = demo.nhs_number
    record.family, record.given = demo.family, demo.given
    record.birth_date, record.gender, record.postcode = demo.birth_date, demo.gender, demo.postcode
    record.updated_at = utcnow()
    session.flush()
    return record
