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
from sharedcare.store.models import MatchReview, PatientRecord, Person


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
    if not (demo.family and demo.birth_date):
        # Too little to say who this is: a person of its own, held for review, never guessed.
        return None, "insufficient-data", 0.0, "review"
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


@dataclass
class RelinkReport:
    records: int = 0
    persons_before: int = 0
    persons_after: int = 0
    records_moved: int = 0
    persons_created: int = 0
    held_for_review: int = 0
    review_pairs: int = 0
    model_version: str = ""

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def relink(session: Session) -> tuple[RelinkReport, dict[str, object]]:
    """Re-match every source patient record with the probabilistic model and move links to fit.

    Clinical rows never move: only `patient_records.person_id` changes. Each new cluster keeps the person
    id most of its records already had, so views and bookmarks stay stable. Returns the report and the
    trained model (Splink JSON) for the caller to save."""
    from sharedcare.identity.matching import (  # Splink loads slowly; ingest never needs it
        MODEL_VERSION,
        MatchRecord,
        cluster,
    )

    rows = list(session.scalars(select(PatientRecord).order_by(PatientRecord.id)))
    report = RelinkReport(records=len(rows), persons_before=len({r.person_id for r in rows}),
                          model_version=MODEL_VERSION)
    decided = {status: {(a, b) for a, b in session.execute(
        select(MatchReview.record_a, MatchReview.record_b).where(MatchReview.status == status))}
        for status in ("linked", "separate")}
    result = cluster([MatchRecord(r.id, r.source_org, r.nhs_number, r.given, r.family,
                                  r.birth_date.isoformat() if r.birth_date else None, r.gender, r.postcode)
                      for r in rows], decided_same=decided["linked"], decided_different=decided["separate"])
    by_id = {r.id: r for r in rows}
    members: dict[int, list[PatientRecord]] = {}
    for record_id, root in result.cluster_of.items():
        members.setdefault(root, []).append(by_id[record_id])
    claimed: set[str] = set()
    for group in sorted(members.values(), key=len, reverse=True):
        votes: dict[str, int] = {}
        for record in group:
            votes[record.person_id] = votes.get(record.person_id, 0) + 1
        person_id = next((pid for pid, _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
                          if pid not in claimed), None)
        if person_id is None:
            person_id = _new_person(session).id
            report.persons_created += 1
        claimed.add(person_id)
        for record in group:
            if record.person_id != person_id:
                report.records_moved += 1
                record.person_id = person_id
            record.match_probability = result.probability.get(record.id, 1.0)
            if len(group) > 1 and record.link_method in ("new", "demographics-exact"):
                record.link_method = "probabilistic"
            still_unsure = record.id in result.held_for_review or (len(group) == 1 and record.link_status == "review")
            record.link_status = "review" if still_unsure else "linked"
            record.updated_at = utcnow()
    report.persons_after = len(claimed)
    report.held_for_review = len(result.held_for_review)
    known = {(a, b) for a, b in session.execute(select(MatchReview.record_a, MatchReview.record_b))}
    now = utcnow()
    for pair in result.review_pairs:
        if (pair.record_a, pair.record_b) not in known:
            known.add((pair.record_a, pair.record_b))
            session.add(MatchReview(record_a=pair.record_a, record_b=pair.record_b, probability=pair.probability,
                                    evidence=pair.evidence, created_at=now, status="open"))
            report.review_pairs += 1
    session.flush()
    return report, result.model
