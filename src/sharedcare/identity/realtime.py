"""Real-time matching of one incoming record against the whole index, in milliseconds.

Blocking: one indexed query fetches the stored records that share the date of birth (or its day/month
transposition), the postcode, or the exact normalised name. Each candidate is scored in Python with the
newest saved model's m and u (`model.py`, the same arithmetic Splink runs in SQL), so no Splink linker
is built per record: Splink's own `compare_two_records` takes tens of milliseconds per call, too slow
for ingest. The best candidate decides: link, review or no link, by threshold; two different persons
both good enough to link is itself a reason for review.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, Row, func, or_, select
from sqlalchemy.orm import Session

from sharedcare.identity.compare import (
    ADDRESS,
    COMPARISONS,
    DOB,
    MatchRecord,
    birth_and_address,
    features,
    numbers_keep_apart,
    transposed,
)
from sharedcare.identity.model import (
    LINK_THRESHOLD,
    REVIEW_THRESHOLD,
    REVIEW_WEIGHT,
    Model,
    ModelError,
    Score,
    default_model,
)
from sharedcare.store.models import MatchModel, PatientRecord

FIRST = (DOB, ADDRESS)  # compared before the rest, whose features cost more to prepare
CANDIDATE_LIMIT = 2000  # a block larger than this is a data problem (one postcode for a whole care home)
_models: dict[int, Model] = {}
SESSION_MODEL = "sharedcare.match_model"  # session.info key: the model of this transaction


@dataclass(frozen=True)
class Candidate:
    record_id: int
    person_id: str
    score: Score
    evidence: dict[str, Any]


@dataclass
class Found:
    outcome: str  # link | review | no-link
    best: Candidate | None = None
    unsure: list[Candidate] = field(default_factory=list)
    note: str | None = None
    candidates: int = 0


def current_model(session: Session) -> Model:
    """The newest model saved by a relink, or the shipped default until there is one; looked up once per
    transaction (ingest matches up to a batch of messages in one), not once per record."""
    if SESSION_MODEL in session.info:
        return session.info[SESSION_MODEL]
    model = _newest_model(session)
    session.info[SESSION_MODEL] = model
    return model


def _newest_model(session: Session) -> Model:
    newest = session.scalars(select(MatchModel.id).order_by(MatchModel.id.desc()).limit(1)).first()
    if newest is None:
        return default_model()
    if newest not in _models:
        try:
            _models[newest] = Model(session.get_one(MatchModel, newest).model)
        except ModelError:  # trained for other comparisons (an older release): the shipped model scores
            _models[newest] = default_model()
    return _models[newest]


# Only what scoring reads: loading whole ORM objects costs more than scoring them.
_COLUMNS = (PatientRecord.id, PatientRecord.person_id, PatientRecord.source_org, PatientRecord.nhs_number,
            PatientRecord.given, PatientRecord.family, PatientRecord.birth_date, PatientRecord.gender,
            PatientRecord.postcode, PatientRecord.other_names, PatientRecord.postcodes, PatientRecord.phones,
            PatientRecord.email)


def candidates(session: Session, record: MatchRecord) -> list[Row[Any]]:
    """The stored records sharing a blocking key with `record`; never one held for too little data."""
    from sharedcare.identity.mpi import name_key

    conditions: list[ColumnElement[bool]] = []
    if record.birth_date:
        dates = [date.fromisoformat(d) for d in (record.birth_date, transposed(record.birth_date)) if d]
        conditions.append(PatientRecord.birth_date.in_(dates))
    if record.postcode:
        conditions.append(PatientRecord.postcode == record.postcode)
    key = name_key(record.family, record.given)
    if key:
        conditions.append(PatientRecord.name_key == key)
    if not conditions:
        return []
    query = (select(*_COLUMNS).where(or_(*conditions), PatientRecord.link_method != "insufficient-data")
             .limit(CANDIDATE_LIMIT))
    return list(session.execute(query).all())


def match(session: Session, record: MatchRecord, model: Model | None = None) -> Found:
    """Score `record` against its candidates; decide by the best."""
    from sharedcare.identity.mpi import stored_match_record

    model = model or current_model(session)
    size = session.scalar(select(func.max(PatientRecord.id))) or 0  # the index's size, from its primary key
    shift = model.prior_shift(size)
    incoming = features(record)
    # Most candidates share one blocking key by chance: a birth date or a common name. The birth date and
    # address, compared first, rule out most of them: with the best the other comparisons could add, they
    # still fall short of review, so their names are never prepared. The outcome is what scoring all gives.
    best_rest = model.prior_weight + shift + model.ceiling(incoming, (c for c in COMPARISONS if c not in FIRST))
    scored: list[Candidate] = []
    rows = candidates(session, record)
    for row in rows:
        if numbers_keep_apart(record.nhs_number, row.nhs_number):
            continue  # different valid NHS numbers: never one person
        first = birth_and_address(row.birth_date.isoformat() if row.birth_date else None, row.postcode,
                                  row.postcodes or ())
        if best_rest + sum(model.weight(c, incoming, first) for c in FIRST) < REVIEW_WEIGHT - 1e-9:
            continue
        score = model.score(incoming, features(stored_match_record(row)), shift)
        if score.probability >= REVIEW_THRESHOLD:
            scored.append(Candidate(row.id, row.person_id, score,
                                    model.evidence(score.levels, shift) | {"with_record": row.id}))
    scored.sort(key=lambda c: -c.score.probability)
    if not scored:
        return Found("no-link", candidates=len(rows))
    best = scored[0]
    linkable = {c.person_id for c in scored if c.score.outcome == "link"}
    if len(linkable) > 1:
        return Found("review", best, [c for c in scored if c.score.outcome == "link"][:5],
                     f"held for review: matches {len(linkable)} different people equally well", len(rows))
    if best.score.outcome == "link":
        return Found("link", best, candidates=len(rows))
    why = (f"safety rule: {', '.join(best.score.never_link)} disagree" if best.score.never_link
           and best.score.probability >= LINK_THRESHOLD else
           f"match probability {best.score.probability:.4f} is below the link threshold {LINK_THRESHOLD}")
    return Found("review", best, scored[:5], f"held for review: {why}", len(rows))
