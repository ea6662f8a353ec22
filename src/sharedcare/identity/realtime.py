"""Real-time matching of one incoming record against the whole index, in milliseconds.

Blocking: one indexed query fetches the stored records that share the date of birth (or its day/month
transposition), the postcode, or the exact normalised name. Each candidate is scored in Python with the
newest saved model's m and u (`model.py`, the same arithmetic Splink runs in SQL), so no Splink linker
is built per record: Splink's own `compare_two_records` takes tens of milliseconds per call, too slow
for ingest. The best candidate decides: link, review or no link, by threshold; two different persons
both good enough to link is itself a reason for review.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any

from sqlalchemy import Row, bindparam, func, or_, select
from sqlalchemy.orm import Session

from sharedcare.identity.compare import (
    ADDRESS,
    COMPARISONS,
    DOB,
    GIVEN_NAMES_CONFLICT,
    NEITHER_NAMED,
    Features,
    MatchRecord,
    birth_and_address,
    features,
    names_keep_apart,
    neither_named,
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
from sharedcare.store.database import Prepared, run
from sharedcare.store.models import MatchModel, PatientRecord

log = logging.getLogger(__name__)
FIRST = (DOB, ADDRESS)  # compared before the rest, whose features cost more to prepare
CANDIDATE_LIMIT = 2000  # a block larger than this is a data problem (one postcode for a whole care home)
SAME_NHS_NUMBER_LIMIT = 20  # stored records with one NHS number that linking looks at
_models: dict[int, Model] = {}
SESSION_MODEL = "sharedcare.match_model"  # session.info key: the model of this transaction


@dataclass(frozen=True)
class Candidate:
    record_id: int
    person_id: str
    score: Score
    evidence: dict[str, Any]
    named: bool = True  # the stored record has a given name (`compare.given_text`)
    held: bool = False  # neither record has a given name: never linked automatically (`compare.neither_named`)

    @property
    def links(self) -> bool:
        return self.score.outcome == "link" and not self.held


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


# Read once a transaction (an MLLP message is one): prepared, as the ORM's query cost several times its work.
_NEWEST_MODEL = Prepared(select(MatchModel.id).order_by(MatchModel.id.desc()).limit(1))


def _newest_model(session: Session) -> Model:
    newest = next((model_id for (model_id,) in _NEWEST_MODEL(session)), None)
    if newest is None:
        return default_model()
    if newest not in _models:
        try:
            _models[newest] = Model(session.get_one(MatchModel, newest).model)
        except ModelError as exc:  # trained for other comparisons (an older release): the shipped model scores
            log.warning("the stored match model %s cannot be used (%s): matching uses the shipped default until "
                        "`sharedcare mpi relink` trains a new one", newest, exc)
            _models[newest] = default_model()
    return _models[newest]


# Only what scoring reads: loading whole ORM objects costs more than scoring them.
_COLUMNS = (PatientRecord.id, PatientRecord.person_id, PatientRecord.source_org, PatientRecord.nhs_number,
            PatientRecord.given, PatientRecord.family, PatientRecord.birth_date, PatientRecord.gender,
            PatientRecord.postcode, PatientRecord.other_names, PatientRecord.postcodes, PatientRecord.phones,
            PatientRecord.email)


@dataclass
class StoredRecord:
    """What matching reads of a stored source record (a row of `_COLUMNS` and what blocking filters on)."""

    id: int
    person_id: str
    source_org: str
    nhs_number: str | None
    given: str | None
    family: str | None
    birth_date: date | None
    gender: str | None
    postcode: str | None
    other_names: dict[str, Any] | None
    postcodes: list[str] | None
    phones: list[str] | None
    email: str | None
    link_method: str
    name_key: str | None

    @classmethod
    def of(cls, record: Any) -> StoredRecord:
        """From a PatientRecord or a row with the same columns."""
        return cls(*(getattr(record, name) for name in _STORED_FIELDS))


_STORED_FIELDS = tuple(f.name for f in fields(StoredRecord))
# A row of these is a StoredRecord's fields in order (`StoredRecord(*row)`: a block holds about a thousand).
_BLOCK_COLUMNS = tuple(getattr(PatientRecord, name) for name in _STORED_FIELDS)


def _keys(record: MatchRecord) -> tuple[list[date], str | None, str | None]:
    """A record's blocking keys: its birth date (and that date transposed), its postcode, its exact name."""
    from sharedcare.identity.mpi import name_key

    dates = ([date.fromisoformat(d) for d in (record.birth_date, transposed(record.birth_date)) if d]
             if record.birth_date else [])
    return dates, record.postcode, name_key(record.family, record.given)


# Built once and run on the session's connection (`store.database.run`): through `Session.execute`, the
# ORM's handling of each statement cost as much as the database's work. A key the record lacks is NULL,
# which equals nothing. Candidates come with what the screen reads (birth date, address, NHS number); the
# other columns are fetched for the few the screen leaves (about 1 in 10): decoding every candidate's
# names, phones and email cost a quarter of a match, and its garbage brought on full collections.
_SCREENED = (PatientRecord.id, PatientRecord.nhs_number, PatientRecord.birth_date, PatientRecord.postcode,
             PatientRecord.postcodes)
_CANDIDATES = (select(*_SCREENED).where(
    or_(PatientRecord.birth_date.in_(bindparam("dates", expanding=True)),
        PatientRecord.postcode == bindparam("postcode"), PatientRecord.name_key == bindparam("key")),
    PatientRecord.link_method != "insufficient-data").order_by(PatientRecord.id).limit(CANDIDATE_LIMIT))
_BY_ID = select(*_COLUMNS).where(PatientRecord.id.in_(bindparam("ids", expanding=True))).order_by(PatientRecord.id)
_INDEX_SIZE = select(func.max(PatientRecord.id))
_RECORDS_OF_PERSON = select(*_COLUMNS).where(PatientRecord.person_id == bindparam("person"))
_NUMBERS_OF_PERSONS = select(PatientRecord.person_id, PatientRecord.nhs_number).where(
    PatientRecord.person_id.in_(bindparam("persons", expanding=True)), PatientRecord.nhs_number.is_not(None))


def candidates(session: Session, record: MatchRecord) -> list[Row[Any]]:
    """The stored records sharing a blocking key with `record` (the `_SCREENED` columns); never one held
    for too little data."""
    dates, postcode, key = _keys(record)
    if not (dates or postcode or key):
        return []
    return list(run(session, _CANDIDATES, {"dates": dates or [None], "postcode": postcode, "key": key}).all())


def index_size(session: Session) -> int:
    """The index's size, from its primary key (the prior shrinks as it grows)."""
    return run(session, _INDEX_SIZE).scalar() or 0


def held_apart(session: Session, persons: Iterable[str], nhs: str | None) -> set[str]:
    """The persons among these who hold a valid NHS number other than `nhs`: never the same person as a
    record with `nhs` (`numbers_keep_apart` across a person's records, as a relink splits such a person).
    A candidate record without a number may belong to someone whose other records carry one."""
    wanted = sorted(set(persons))
    if not nhs or not wanted:
        return set()
    return {person for person, number in run(session, _NUMBERS_OF_PERSONS, {"persons": wanted})
            if numbers_keep_apart(nhs, number)}


def _some(value: str | None) -> list[str]:
    return [value] if value else []


class Block:
    """The stored records a run of new records may match, fetched in one query for the whole run (ingest
    stores up to a batch of messages per transaction) instead of two or three per record: the same NHS
    number, the same blocking keys, the index size. Each record the run creates or changes is noted as it
    goes, so every record is matched against exactly what the per-record queries would find then."""

    CHUNK = 200  # records whose keys go into one query: far below every database's parameter limit

    def __init__(self, session: Session, records: Iterable[MatchRecord]) -> None:
        self.rows: dict[int, StoredRecord] = {}
        # per key the queries filter on (birth date, postcode, name key, NHS number): the values fetched,
        # and value -> ids of the rows that have it
        self.fetched: tuple[set[Any], ...] = (set(), set(), set(), set())
        self.index: tuple[dict[Any, set[int]], ...] = ({}, {}, {}, {})
        wanted = list(records)
        for start in range(0, len(wanted), self.CHUNK):
            keys: tuple[set[Any], ...] = (set(), set(), set(), set())
            for record in wanted[start:start + self.CHUNK]:
                for found, values in zip(self._keys(record), keys, strict=True):
                    values.update(found)
            conditions = [column.in_(sorted(values)) for column, values in zip(
                (PatientRecord.birth_date, PatientRecord.postcode, PatientRecord.name_key, PatientRecord.nhs_number),
                keys, strict=True) if values]
            if conditions:
                for row in run(session, select(*_BLOCK_COLUMNS).where(or_(*conditions))):
                    self._add(StoredRecord(*row))
            for fetched, values in zip(self.fetched, keys, strict=True):
                fetched.update(values)
        self.size = index_size(session)

    @staticmethod
    def _keys(record: MatchRecord) -> tuple[list[Any], ...]:
        """Each key the queries filter on: birth dates, postcode, name key, NHS number."""
        dates, postcode, key = _keys(record)
        return dates, _some(postcode), _some(key), _some(record.nhs_number)

    @staticmethod
    def _stored_keys(row: StoredRecord) -> tuple[Any, Any, Any, Any]:
        """`_keys` of a stored row, each its one value (None or empty when it has none): cheaper, per row."""
        return row.birth_date, row.postcode, row.name_key, row.nhs_number

    def _add(self, row: StoredRecord) -> None:
        old = self.rows.get(row.id)
        if old is not None:
            for index, value in zip(self.index, self._stored_keys(old), strict=True):
                if value:
                    index[value].discard(row.id)
        self.rows[row.id] = row
        for index, value in zip(self.index, self._stored_keys(row), strict=True):
            if value:
                index.setdefault(value, set()).add(row.id)

    def covers(self, record: MatchRecord) -> bool:
        """Whether every key of `record` was fetched (else its queries must run)."""
        return all(fetched.issuperset(values) for fetched, values in zip(self.fetched, self._keys(record), strict=True))

    def same_nhs_number(self, nhs: str) -> list[StoredRecord]:
        """The stored records with this NHS number (any link method), as `mpi` queries them."""
        return [self.rows[i] for i in sorted(self.index[3].get(nhs, ()))][:SAME_NHS_NUMBER_LIMIT]

    def candidates(self, record: MatchRecord) -> list[StoredRecord]:
        """`candidates(session, record)`, from the rows fetched and noted."""
        dates, postcodes, names, _ = self._keys(record)
        ids: set[int] = set()
        for index, values in zip(self.index, (dates, postcodes, names), strict=False):
            for value in values:
                ids |= index.get(value, set())
        found = (self.rows[i] for i in sorted(ids))
        return [r for r in found if r.link_method != "insufficient-data"][:CANDIDATE_LIMIT]

    def note(self, record: PatientRecord) -> None:
        """A record the run has just created or changed (flushed, so it has its id)."""
        self._add(StoredRecord.of(record))
        self.size = max(self.size, record.id)


# Why real time holds a record that would link to a person only through a record without a given name.
BRIDGE = ("it matches this person only through a record without a given name, and another of the person's "
          "records is kept apart from it by the given-name rules (twins, or two records without a given name)")


# Why real time holds a record that would link to a person one of whose records its given names differ from
# element by element ("Thị Hương" to Thị Hằng's person through a record with "Thị" alone): as a relink holds it.
ELEMENTS_BRIDGE = ("it matches this person through one record, and another of the person's records has given "
                   "names that differ from its own (each has one the other lacks: twins named alike)")


# Why real time holds a link made without given-name evidence (the safety decision "placeholders as data",
# docs/architecture.md): on arrival a newborn twin's record before naming matches whichever twin is in the
# index yet; a relink, which sees both, decides. No NHS number agrees here: a record whose valid NHS number
# a stored record holds is linked, or held, by that number before it is scored (`mpi._find_person`).
UNNAMED_LINK = ("it would link only through a record without a given name (a newborn's before naming, an "
                "unknown patient's) and no NHS number agrees: a twin's such record matches either twin")


def _kept_apart(session: Session, person_id: str, incoming: Features) -> bool:
    """Whether the given-name rules keep any of this person's records apart from the incoming record.

    Asked only of a link made without given-name evidence (the incoming record or every record it links
    to has none, `compare.given_text`): such a record links to either twin on surname, birth date and
    address, and a person is one whole, so linking it would put it with a twin's record it is kept apart
    from, as a relink's persons would (`matching._components`)."""
    from sharedcare.identity.mpi import stored_match_record

    return any(names_keep_apart(incoming, features(stored_match_record(row)))
               for row in run(session, _RECORDS_OF_PERSON, {"person": person_id}))


def match(session: Session, record: MatchRecord, model: Model | None = None, block: Block | None = None,
          leave_out: Container[int] = ()) -> Found:
    """Score `record` against its candidates (from `block` when it has them); decide by the best. A stored
    record matched again is never its own candidate, nor are the records still to be matched again with
    it (`leave_out`, by id: those a merge undone had brought to the person)."""
    from sharedcare.identity.mpi import stored_match_record

    model = model or current_model(session)
    shift = model.prior_shift(block.size if block else index_size(session))
    incoming = features(record)
    # Most candidates share one blocking key by chance: a birth date or a common name. The birth date and
    # address, compared first, rule out most of them: with the best the other comparisons could add, they
    # still fall short of review, so their names are never prepared. The outcome is what scoring all gives.
    best_rest = model.prior_weight + shift + model.ceiling(incoming, (c for c in COMPARISONS if c not in FIRST))
    scored: list[Candidate] = []
    rows: list[Row[Any]] | list[StoredRecord] = block.candidates(record) if block else candidates(session, record)
    kept: list[Any] = []  # rows of `candidates` or the block's StoredRecords
    for row in rows:
        if row.id in leave_out:
            continue
        if numbers_keep_apart(record.nhs_number, row.nhs_number):
            continue  # different valid NHS numbers: never one person
        first = birth_and_address(row.birth_date.isoformat() if row.birth_date else None, row.postcode,
                                  row.postcodes or ())
        if best_rest + sum(model.weight(c, incoming, first) for c in FIRST) >= REVIEW_WEIGHT - 1e-9:
            kept.append(row)
    if block is None and kept:
        kept = list(run(session, _BY_ID, {"ids": [row.id for row in kept]}).all())
    for row in kept:
        stored = features(stored_match_record(row))
        score = model.score(incoming, stored, shift)
        if score.probability >= REVIEW_THRESHOLD:
            nameless = score.probability >= LINK_THRESHOLD and neither_named(incoming, stored)
            evidence = model.evidence(score.levels, shift) | {"with_record": row.id}
            if nameless:
                evidence["held"] = NEITHER_NAMED
            elif "name" in score.never_link and "name" not in evidence["never_link"]:
                evidence["held"] = GIVEN_NAMES_CONFLICT  # held by the given names element by element
            scored.append(Candidate(row.id, row.person_id, score, evidence, stored["given"] is not None, nameless))
    apart = held_apart(session, (c.person_id for c in scored), record.nhs_number)
    held = sorted((c for c in scored if c.person_id in apart), key=lambda c: -c.score.probability)
    scored = sorted((c for c in scored if c.person_id not in apart), key=lambda c: -c.score.probability)
    if not scored and held:  # as a relink does: not linked, but the pair is put in front of a reviewer
        return Found("review", held[0], held[:5], "held for review: matches a record of a person who holds "
                     "another NHS number", len(rows))
    if not scored:
        return Found("no-link", candidates=len(rows))
    best = scored[0]
    linkable = {c.person_id for c in scored if c.score.outcome == "link"}
    if len(linkable) > 1:
        return Found("review", best, [c for c in scored if c.score.outcome == "link"][:5],
                     f"held for review: matches {len(linkable)} different people equally well", len(rows))
    if best.score.outcome == "link":
        through = [c for c in scored if c.person_id == best.person_id and c.links]
        if not through:
            return Found("review", best, scored[:5], f"held for review: safety rule: {NEITHER_NAMED}", len(rows))
        if any(c.person_id == best.person_id and c.evidence.get("held") == GIVEN_NAMES_CONFLICT for c in scored):
            return Found("review", through[0], scored[:5], f"held for review: safety rule: {ELEMENTS_BRIDGE}",
                         len(rows))
        if incoming["given"] is None or not any(c.named for c in through):
            if _kept_apart(session, best.person_id, incoming):
                return Found("review", through[0], scored[:5], f"held for review: safety rule: {BRIDGE}", len(rows))
            return Found("review", through[0], scored[:5], f"held for review: safety rule: {UNNAMED_LINK}",
                         len(rows))
        return Found("link", through[0], candidates=len(rows))
    why = (f"safety rule: {', '.join(best.score.never_link)} disagree" if best.score.never_link
           and best.score.probability >= LINK_THRESHOLD else
           f"match probability {best.score.probability:.4f} is below the link threshold {LINK_THRESHOLD}")
    return Found("review", best, scored[:5], f"held for review: {why}", len(rows))
