"""The master patient index: link each source patient record to one person, as it arrives.

Order of evidence on ingest:
1. too little to say who this is (no name, no date of birth, a birth date in the future): a person of
   its own, held for review with the reason; never guessed;
2. a valid NHS number that agrees with the demographics links deterministically; a valid NHS number
   with clearly conflicting demographics (different sex *and* date of birth) starts a new person held
   for review rather than risk showing one person another's record. Given names are held to the rule
   a relink applies: a different given name links on the NHS number only when surname and date of
   birth agree too, and that link goes on the review list with the reason; otherwise it is reviewed;
3. otherwise the record is scored in real time against its blocking candidates with the saved model
   (`realtime.py`): link, review or a new person, by threshold, with the evidence kept.

A malformed identifier (NHS number failing modulus 11, a postcode that is not one) is noted on the
record and not used; it never stops the record being stored. `relink` re-matches everyone in batch
(`matching.py`) and keeps reviewers' decisions, merges and operators' separations.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable, Collection, Container, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, bindparam, func, insert, or_, select, text, update
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.governance.access_log import NUMBER_CORRECTED
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.consent import follow_number
from sharedcare.governance.review import flag_joined_registrations
from sharedcare.identity.compare import (
    NHS_NUMBER_OUTWEIGHS_GIVEN_NAME,
    PSEUDO_POSTCODE_DISTRICT,
    Features,
    MatchRecord,
    birth_dates_far_apart,
    email_key,
    family_text,
    features,
    given_names_differ,
    given_text,
    levels,
    name_text,
    nhs_number_outweighs_given_name,
    numbers_keep_apart,
    phone_key,
    postcode_parts,
    search_key,
    transposed,
)
from sharedcare.identity.links import (
    DECIDED,
    REVIEWED,
    end_bases,
    merged,
    moves_to,
    resettle_reviews,
    separations,
    settle_reviews,
)
from sharedcare.identity.model import Model
from sharedcare.identity.nhs_number import is_valid, normalise
from sharedcare.identity.realtime import SAME_NHS_NUMBER_LIMIT
from sharedcare.store.database import Database, Prepared, PreparedObjects, begin_write, run
from sharedcare.store.models import LinkEvent, LinkMove, MatchModel, MatchReview, PatientRecord, Person
from sharedcare.store.sqlite_turns import WAIT_S

if TYPE_CHECKING:
    from sharedcare.identity.realtime import Block, StoredRecord


@dataclass(frozen=True)
class Demographics:
    """What a source says about who a patient is; the fields matching uses."""

    nhs_number: str | None
    family: str | None
    given: str | None
    birth_date: date | None
    gender: str | None
    postcode: str | None
    other_given: Sequence[str] = ()  # middle names, the name they go by
    other_family: Sequence[str] = ()  # previous surnames
    postcodes: Sequence[str] = ()  # previous addresses' postcodes
    phones: Sequence[str] = ()
    email: str | None = None


@dataclass
class _Link:
    person_id: str | None
    method: str
    probability: float
    status: str
    note: str | None = None
    weight: float | None = None
    evidence: dict[str, Any] | None = None
    review_with: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)


# Ingest inserts a person and a source record for most patients it meets: prepared statements, not the
# ORM's flush (four times the cost of the INSERT itself, most of the MPI's share of a FHIR ingest).
_INSERT_PERSON = Prepared(insert(Person.__table__).values(  # type: ignore[arg-type]
    id=bindparam("id"), created_at=bindparam("created_at")))
_RECORD_COLUMNS = [column.key for column in PatientRecord.__table__.columns if column.key != "id"]
# Column defaults (`updated_at`: now), as the ORM applies them; SQLAlchemy keeps a callable's as arg(context).
_RECORD_DEFAULTS: dict[str, Callable[[], Any]] = {
    column.key: (partial(column.default.arg, None) if column.default.is_callable
                 else partial(lambda value: value, column.default.arg))
    for column in PatientRecord.__table__.columns if column.key != "id" and column.default is not None}
_INSERT_RECORD = Prepared(insert(PatientRecord.__table__).values(  # type: ignore[arg-type]
    {name: bindparam(name) for name in _RECORD_COLUMNS}).returning(PatientRecord.__table__.c.id))


def _new_person(session: Session) -> str:
    """A new person's id, inserted at once so records can point to it."""
    person_id = str(uuid.uuid4())
    _INSERT_PERSON(session, {"id": person_id, "created_at": utcnow()})
    return person_id


def _insert_record(session: Session, record: PatientRecord) -> None:
    """INSERT a new record, then give it to the session as a stored row (as if it had just been read), so
    later changes to it are UPDATEs and queries return this same object. A column left unset that has a
    default gets it here, as the ORM's flush would have given it (the statement names every column)."""
    for name, default in _RECORD_DEFAULTS.items():
        if getattr(record, name) is None:
            setattr(record, name, default())
    record.id = _INSERT_RECORD(session, {name: getattr(record, name) for name in _RECORD_COLUMNS})[0][0]
    make_transient_to_detached(record)
    session.add(record)


# What `_conflicts` reads as clearly someone else, as review notes name it.
CONFLICT = "another sex and date of birth, or a date of birth more than a keying error or a day-month swap away"


def _conflicts(a: PatientRecord | StoredRecord, b: Demographics) -> bool:
    """Clearly a different person (`CONFLICT`): sex and date of birth both known and different, or dates of
    birth further apart than one date written twice (a father's 1945 record given his son's NHS number)."""
    if not (a.birth_date and b.birth_date and a.birth_date != b.birth_date):
        return False
    sex_differs = bool(a.gender and b.gender and a.gender != b.gender and "unknown" not in (a.gender, b.gender))
    return sex_differs or birth_dates_far_apart(a.birth_date.isoformat(), b.birth_date.isoformat())


def missing(demo: Demographics) -> str | None:
    """Why these demographics are too few to match on, or None."""
    gaps = [what for what, absent in (("no name", not (family_text(demo.family) or given_text(demo.given))),
                                      ("no date of birth", demo.birth_date is None)) if absent]
    if gaps:
        return " and ".join(gaps)
    if demo.birth_date and demo.birth_date > utcnow().date():
        return f"date of birth {demo.birth_date.isoformat()} is in the future"
    return None


def problems(demo: Demographics) -> list[str]:
    """Identifiers present but malformed: reported on the record, not used for matching."""
    found = []
    if demo.nhs_number and not is_valid(demo.nhs_number):
        found.append(f"NHS number '{demo.nhs_number[:20]}' fails the modulus 11 check: not used")
    if demo.postcode and postcode_parts(demo.postcode) is None:
        pseudo = demo.postcode.upper().startswith(PSEUDO_POSTCODE_DISTRICT)
        found.append(f"postcode '{demo.postcode[:20]}' is " + ("an NHS pseudo-postcode (address not known, no fixed "
                     "abode or abroad)" if pseudo else "not a UK postcode") + ": not used")
    found += [f"phone '{p[:30]}' is not a UK number: not used" for p in demo.phones if phone_key(p) is None]
    if demo.email and email_key(demo.email) is None:
        found.append(f"email '{demo.email[:60]}' is not an address: not used")
    return found


def usable_nhs_number(demo: Demographics) -> str | None:
    return normalise(demo.nhs_number) if demo.nhs_number and is_valid(demo.nhs_number) else None


# The stored records with an NHS number, looked up for most new records
_SAME_NHS_NUMBER = PreparedObjects(PatientRecord, PatientRecord.nhs_number == bindparam("nhs"),
                                   order_by=PatientRecord.id.asc(), limit=SAME_NHS_NUMBER_LIMIT)


def _find_person(session: Session, demo: Demographics, nhs: str | None, block: Block | None = None,
                 leave_out: Container[int] = ()) -> _Link:
    """Where a record belongs (its stored neighbours read from `block` when it has them): a new record, or
    a stored one matched again (`leave_out`: itself, and any others being matched again, by id, are then
    never candidates)."""
    from sharedcare.identity.realtime import match  # the scorer loads on first use

    reason = missing(demo)
    if reason:
        return _Link(None, "insufficient-data", 0.0, "review", f"held for review: {reason}; not matched")
    incoming = match_record(0, demo, nhs)
    if block is not None and not block.covers(incoming):
        block = None
    if nhs:
        same_number: Sequence[PatientRecord | StoredRecord] = (
            block.same_nhs_number(nhs) if block else _SAME_NHS_NUMBER(session, {"nhs": nhs}))
        same_number = [r for r in same_number if r.id not in leave_out]
        agreeing = [r for r in same_number if not _conflicts(r, demo)]
        if agreeing:
            return _nhs_number_link(session, demo, nhs, agreeing)
        if same_number:  # each on the review list with it, for a reviewer to see whose number it is
            return _Link(None, "nhs-number-conflict", 0.0, "review",
                         f"held for review: this NHS number is held for someone of {CONFLICT}",
                         review_with=_review_pairs(session, features(match_record(0, demo, nhs)), same_number[:5]))
    found = match(session, incoming, block=block, leave_out=leave_out)
    if found.outcome == "link" and found.best is not None:
        return _Link(found.best.person_id, "probabilistic", found.best.score.probability, "linked",
                     weight=found.best.evidence["match_weight"], evidence=found.best.evidence)
    if found.outcome == "review":
        return _Link(None, "probabilistic", 0.0, "review", found.note,
                     review_with=[(c.record_id, c.score.probability, c.evidence) for c in found.unsure])
    return _Link(None, "new", 1.0, "linked")


def _nhs_number_link(session: Session, demo: Demographics, nhs: str,
                     agreeing: list[PatientRecord | StoredRecord]) -> _Link:
    """The NHS number agrees with records whose sex or date of birth do too. The given names are checked
    as a relink checks them: a record whose names are compatible links; one whose given name differs links
    only when the surname and date of birth agree as well, and is then put on the review list with the
    reason; one whose given name and surname or birth date differ is held for review (a mother's NHS
    number on her baby's record), never linked."""
    incoming = features(match_record(0, demo, nhs))
    theirs = [(r, features(stored_match_record(r))) for r in agreeing]
    for record, their in theirs:
        if not given_names_differ(incoming, their):
            return _Link(record.person_id, "nhs-number", 1.0, "linked")
    for record, their in theirs:
        if nhs_number_outweighs_given_name(incoming, their):
            [item] = _review_pairs(session, incoming, [record], discrepancy=NHS_NUMBER_OUTWEIGHS_GIVEN_NAME)
            return _Link(record.person_id, "nhs-number", 1.0, "linked",
                         f"linked, on the review list: {NHS_NUMBER_OUTWEIGHS_GIVEN_NAME}", evidence=item[2],
                         review_with=[item])
    return _Link(None, "nhs-number-conflict", 0.0, "review",
                 "held for review: this NHS number is held for someone with another given name and another "
                 "surname or date of birth", review_with=_review_pairs(session, incoming, agreeing[:5]))


def _review_pairs(session: Session, incoming: Features, records: Sequence[PatientRecord | StoredRecord],
                  **extra: str) -> list[tuple[int, float, dict[str, Any]]]:
    """The incoming record's pair with each of these records as the review list shows it: score and evidence."""
    from sharedcare.identity.realtime import current_model

    model = current_model(session)
    pairs = []
    for record in records:
        found = levels(incoming, features(stored_match_record(record)))
        pairs.append((record.id, model.score_levels(found).probability,
                      model.evidence(found) | {"with_record": record.id} | extra))
    return pairs


def match_record(record_id: int, demo: Demographics, nhs: str | None) -> MatchRecord:
    return MatchRecord(record_id, "", nhs, demo.given, demo.family,
                       demo.birth_date.isoformat() if demo.birth_date else None, demo.gender, demo.postcode,
                       tuple(demo.other_given), tuple(demo.other_family), tuple(demo.postcodes), tuple(demo.phones),
                       demo.email)


def stored_match_record(r: PatientRecord | StoredRecord | Row[Any]) -> MatchRecord:
    """What matching knows of a stored source record (an ORM row or the same columns selected)."""
    other = r.other_names or {}
    return MatchRecord(r.id, r.source_org, r.nhs_number, r.given, r.family,
                       r.birth_date.isoformat() if r.birth_date else None, r.gender, r.postcode,
                       tuple(other.get("given", ())), tuple(other.get("family", ())), tuple(r.postcodes or ()),
                       tuple(r.phones or ()), r.email)


def name_key(family: str | None, given: str | None) -> str | None:
    """The blocking key for an exact (normalised) name."""
    f, g = name_text(family), name_text(given)
    return f"{f} {g}"[:201] if f and g else None


def _demographic_columns(demo: Demographics, nhs: str | None) -> dict[str, Any]:
    """What a record stores of these demographics, by column."""
    parts = postcode_parts(demo.postcode)
    postcode = parts[0] if parts else None
    history = sorted({p[0] for p in (postcode_parts(x) for x in demo.postcodes) if p} - {postcode})
    other = {k: list(v) for k, v in (("given", demo.other_given), ("family", demo.other_family)) if v}
    family, given = (demo.family or "")[:100] or None, (demo.given or "")[:100] or None
    return {"nhs_number": nhs, "family": family, "family_key": search_key(family),
            "given": given, "given_key": search_key(given),
            "birth_date": demo.birth_date, "gender": demo.gender, "postcode": postcode, "postcodes": history or None,
            "other_names": other or None, "phones": sorted({p for p in map(phone_key, demo.phones) if p}) or None,
            "email": email_key(demo.email), "name_key": name_key(demo.family, demo.given)}


def _store_demographics(record: PatientRecord, demo: Demographics, nhs: str | None) -> None:
    for column, value in _demographic_columns(demo, nhs).items():
        setattr(record, column, value)


# A known patient's record is rewritten by most messages about them (HL7 v2: nearly every one): a prepared
# UPDATE of the columns that change, not the ORM's flush of the object (about 100 us more each).
_UPDATES: dict[frozenset[str], Prepared] = {}


def _update_statement(columns: frozenset[str]) -> Prepared:
    """The UPDATE of these columns of one record, built once per set of columns."""
    if columns not in _UPDATES:
        _UPDATES[columns] = Prepared(update(PatientRecord.__table__).where(  # type: ignore[arg-type]
            PatientRecord.__table__.c.id == bindparam("record_id")).values(
            {name: bindparam(f"new_{name}") for name in sorted(columns)}))
    return _UPDATES[columns]


def _update_record(session: Session, record: PatientRecord, demo: Demographics, nhs: str | None,
                   notes: list[str]) -> bool:
    """Write a stored record's new demographics, notes and time, as the ORM's flush wrote them (only the
    columns whose values differ from the object's, compared as it compares them), and give the object the
    same values as stored ones, so no flush writes them again. `Prepared` flushes whatever else is pending
    first, as the flush here did. Returns whether anything matching uses changed (every demographic column
    does; the notes and the time do not)."""
    values = _demographic_columns(demo, nhs) | ({"link_note": "; ".join(notes)} if notes else {})
    changed = {name: value for name, value in values.items() if value != getattr(record, name)}
    changed["updated_at"] = utcnow()
    _update_statement(frozenset(changed))(session, {"record_id": record.id} | {
        f"new_{name}": value for name, value in changed.items()})
    for name, value in changed.items():
        set_committed_value(record, name, value)
    return not changed.keys() <= {"link_note", "updated_at"}


# PostgreSQL's advisory locks of `hold_matching`: one per blocking key; more keys than this in one transaction
# (a Bundle of many patients) take the lock on every key instead, as each of the lock table's entries is shared
# memory. A transaction holding keys one by one holds that lock shared, so the two exclude each other.
_KEYS_HELD_ONE_BY_ONE = 512
_EVERY_KEY = 0x4D5049  # "MPI"
_LOCK_KEYS = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")  # in the order given
_LOCK_EVERY_KEY = text("SELECT pg_advisory_xact_lock(:key)")
_SHARE_EVERY_KEY = text("SELECT pg_advisory_xact_lock_shared(:key)")


def _lock_key(kind: str, value: object) -> int:
    return int.from_bytes(hashlib.blake2b(f"{kind} {value}".encode(), digest_size=8).digest(), "big", signed=True)


def hold_matching(session: Session, demos: Sequence[Demographics]) -> None:
    """Make matching these new records and inserting their persons one writer's at a time, to the commit: two
    processes that each matched one person's records against a store holding neither, then inserted, made two
    persons of one (HAZ-06). Called before their candidates are read. PostgreSQL: an advisory lock on each
    blocking key they have (NHS number, birth date and its transposition, postcode, exact name: two records
    that could be each other's candidates share one), taken in one order, so no two writers wait on each other
    crosswise. SQLite: the transaction begins as a write transaction (writers take turns:
    `store/sqlite_turns.py`), so what it reads next holds every commit before it."""
    keys: set[int] = set()
    for demo in demos:
        if missing(demo):  # never matched
            continue
        columns = _demographic_columns(demo, usable_nhs_number(demo))
        born = columns["birth_date"].isoformat()
        keys.update(_lock_key(kind, value) for kind, value in (
            ("nhs", columns["nhs_number"]), ("born", born), ("born", transposed(born)),
            ("postcode", columns["postcode"]), ("name", columns["name_key"])) if value)
    if not keys:
        return
    if session.connection().dialect.name == "sqlite":
        begin_write(session)
        return
    if len(keys) > _KEYS_HELD_ONE_BY_ONE:
        run(session, _LOCK_EVERY_KEY, {"key": _EVERY_KEY})
        return
    run(session, _SHARE_EVERY_KEY, {"key": _EVERY_KEY})
    run(session, _LOCK_KEYS, {"keys": sorted(keys)})


def hold_every_key(session: Session, alone: bool = False) -> None:
    """Hold the matching lock on every key to the commit: `alone`, exclusively (a relink, which may move any
    record: no ingest matches and no reviewer decides until it commits, and it waits for those under way),
    else shared (a reviewer's decision, a merge, an unmerge: it waits for a relink, and a relink for it; ingest
    holding keys one by one holds it shared too, so these two do not wait on each other). Taken before the
    rows it changes are read or locked. SQLite: the write transaction from here on (`begin_write`)."""
    if session.connection().dialect.name == "sqlite":
        begin_write(session)
        return
    run(session, _LOCK_EVERY_KEY if alone else _SHARE_EVERY_KEY, {"key": _EVERY_KEY})


def block_for(session: Session, demos: Sequence[Demographics], known: Sequence[Demographics] = ()) -> Block | None:
    """The stored records these new records may match, in one query (None when none can match), read once no
    other writer can be matching records that share a key with them (`hold_matching`). The keys of `known`,
    stored records' new demographics, are held with theirs: a record they change is matched again (`rematch`,
    which holds its keys too), and keys taken all at once, in one order, are never waited on crosswise."""
    from sharedcare.identity.realtime import Block

    hold_matching(session, [*demos, *known])
    wanted = [match_record(0, demo, usable_nhs_number(demo)) for demo in demos if not missing(demo)]
    return Block(session, wanted) if wanted else None


# Prepared: ingest looks one up a message, and the ORM's query cost several times the database's work.
_SOURCE_RECORD = PreparedObjects(PatientRecord, PatientRecord.source_org == bindparam("org"),
                                 PatientRecord.source_id == bindparam("id"))


def source_record(session: Session, source_org: str, source_id: str) -> PatientRecord | None:
    """The stored patient record of (source organisation, source id), if there is one (one at most)."""
    return next(iter(_SOURCE_RECORD(session, {"org": source_org, "id": source_id})), None)


def link_patient_record(session: Session, source_org: str, source_id: str, demo: Demographics,
                        update: bool = True) -> PatientRecord:
    """Create the source patient record linked to a person, or find it; `update` says whether these
    demographics are current enough to replace what the record holds."""
    return link_found_record(session, source_record(session, source_org, source_id), source_org, source_id, demo,
                             update)


def link_found_record(session: Session, record: PatientRecord | None, source_org: str, source_id: str,
                      demo: Demographics, update: bool = True, block: Block | None = None) -> PatientRecord:
    """`link_patient_record` for a caller that has looked the source record up already (ingest does, for a
    run of messages in one query): `record` is the stored record of (source_org, source_id), or None;
    `block` holds the stored records the run's new records may match (each record created or changed
    here is noted in it)."""
    nhs = usable_nhs_number(demo)
    notes = problems(demo)
    if record is None:
        link = _find_person(session, demo, nhs, block)
        now = utcnow()
        record = PatientRecord(
            source_org=source_org, source_id=source_id,
            person_id=link.person_id or _new_person(session),
            link_method=link.method, match_probability=link.probability, link_status=link.status,
            match_weight=link.weight, match_evidence=link.evidence, updated_at=now,
        )
        notes = ([link.note] if link.note else []) + notes
        _store_demographics(record, demo, nhs)
        record.link_note = "; ".join(notes) or None
        _insert_record(session, record)  # at once: its id is needed by the review items and the resources
        if block is not None:
            block.note(record)
        for other, probability, evidence in link.review_with:
            a, b = sorted((record.id, other))
            session.add(MatchReview(record_a=a, record_b=b, probability=probability, evidence=evidence,
                                    created_at=now, status="open"))
        if link.review_with:
            session.flush()
        return record
    if not update:
        return record
    before = record.nhs_number
    if _update_record(session, record, demo, nhs, notes):
        rematch(session, record, demo, nhs, notes, block)
    if record.nhs_number != before:  # the patient's choices follow them to the record's new number
        follow_number(session, record, before, f"{source_org}:{NUMBER_CORRECTED}")
    if block is not None:
        block.note(record)
    return record


REMATCH = "mpi re-match"  # who moves a record whose demographics changed (LinkEvent.by, the audit's user)


def rematch(session: Session, record: PatientRecord, demo: Demographics, nhs: str | None, notes: list[str],
            block: Block | None, cause: str = "its demographics changed", later: Collection[int] = ()) -> None:
    """Match a stored record again, in real time, once a source changed what matching uses (already written):
    a PAS correcting a wrong-patient registration, an unknown patient identified. The same rules as a new
    record (`_find_person`, against every record but itself) decide where it belongs, so a false link is not
    kept until the next relink, nor a missed one. What follows:
    - it moves to the person it now links to, or to a person of its own when it links to no one (a person
      it leaves with no record keeps none, as after a merge): a `rematch` LinkEvent with the move, audited;
    - it never stays with, nor goes to, a person one of whose records it clearly conflicts with (another
      valid NHS number, or `CONFLICT`): it gets a person of its own, held for review;
    - a record a person placed (a reviewer's link or separation, a source's merge) is not moved: it is held
      for review with the earlier decision named, unless it now conflicts with its person's other records;
      then it leaves them, and the decisions on its pairs are reopened, naming what they were;
    - its open review items are scored again against its new demographics; new ones are added.
    `cause` (a source's change, a merge undone) is named in its note and the move's reason; `later` are
    records to be matched again after this one, not yet candidates."""
    from sharedcare.identity.realtime import current_model

    hold_matching(session, [demo])  # as a new record's match: else a writer inserting its person meanwhile makes two
    link = _find_person(session, demo, nhs, block, leave_out={record.id, *later})
    mine = _person_records(session, record.person_id, record.id)
    clash = _clash(mine, demo, nhs)
    if link.person_id is not None:
        theirs = mine if link.person_id == record.person_id else _person_records(session, link.person_id, record.id)
        conflict = _clash(theirs, demo, nhs)
        if conflict is not None:
            link = _Link(None, "nhs-number-conflict" if nhs and conflict.nhs_number else "probabilistic", 0.0,
                         "review", f"held for review: matched again after {cause}, it conflicts "
                         f"with record {conflict.id} of the person it matches ({_why_apart(conflict, nhs)})")
    to = link.person_id or (record.person_id if not mine else None)  # None: a person of its own
    moves = to != record.person_id
    earlier = _decisions(session, record, mine)
    model = current_model(session)
    incoming = features(match_record(record.id, demo, nhs))
    if moves and earlier and clash is None:
        where = f"person {to}" if to else "a person of its own"
        record.link_status = "review"
        record.link_note = "; ".join([f"held for review: {cause} after {', '.join(earlier)}; "
                                      f"matched again it would go to {where}; left where that decision put it"]
                                     + notes)
        _review(session, record, incoming, model, link.review_with + _pair_with(link))
        return
    now = utcnow()
    reason = (f"{cause}: matched again ({link.method}, {link.status})"
              + (f"; after {', '.join(earlier)}, which a reviewer decides again" if earlier else ""))
    if moves:
        person_id = to or _new_person(session)
        move = moves_to([record], person_id)
        record.person_id = person_id
        if len(mine) == 1:
            _left_alone(mine[0], now)
        event = LinkEvent(at=now, kind="rematch", by=REMATCH, reason=reason, moves=move)
        session.add(event)
        session.flush()
        flag_joined_registrations(session, move, REMATCH)
        record_audit(session, AuditRecord(AuditAction.MPI_LINK_CHANGE, "permit", username=REMATCH,
                                          purpose="governance", patient_id=person_id, reason=reason,
                                          detail={"kind": "rematch", "link_event": str(event.id), "moves": "1"}))
        end_bases(session, event)
    placed = record.link_method == "manual" and not moves  # still where a person put it: so it stays marked
    record.link_method = "manual" if placed else link.method
    record.match_probability, record.link_status = link.probability, link.status
    record.match_weight, record.match_evidence, record.updated_at = link.weight, link.evidence, now
    record.link_note = "; ".join(([link.note] if link.note else []) + notes) or None
    _review(session, record, incoming, model, link.review_with)
    if moves and earlier:
        _reopen(session, record, reason)


def match_again(session: Session, record: PatientRecord, cause: str, later: Collection[int]) -> None:
    """`rematch` on what the record holds, when something other than its demographics puts its link in doubt
    (a merge undone: it may have joined the merged person through the other side's records); `later`, the
    records to be matched again after it, are not its candidates yet, as if they had not arrived."""
    rematch(session, record, stored_demographics(record), record.nhs_number, [], None, cause, later)


def stored_demographics(record: PatientRecord) -> Demographics:
    """What a stored record holds, as a source's demographics."""
    other = record.other_names or {}
    return Demographics(record.nhs_number, record.family, record.given, record.birth_date, record.gender,
                        record.postcode, other.get("given", ()), other.get("family", ()), record.postcodes or (),
                        record.phones or (), record.email)


REPREPARED = "its values for matching were prepared anew (sharedcare mpi reprepare)"
REPREPARE = "mpi reprepare"  # who carries a patient's choices to a number reprepare rewrote (the audit's user)
_REPREPARE_PAGE = 1000  # records read in one query to find those due


def reprepared(record: PatientRecord) -> dict[str, Any]:
    """The values matching prepares from a record that the current code prepares otherwise than they are stored,
    by column. Since 2026-12-07 a name is folded by its accents, its letters of any script kept, and an NHS
    number's digits of another script are read as ASCII; a record stored before keeps the name's blocking key
    and the number it was given then (a key missing or stripped; a full-width number, valid to the old check)."""
    current = {"nhs_number": usable_nhs_number(stored_demographics(record)),
               "name_key": name_key(record.family, record.given)}
    return {column: value for column, value in current.items() if value != getattr(record, column)}


# How the releases before 2026-12-07 read a name (lower-cased, every character outside a-z, hyphen and space
# deleted: "Hương" -> "hng"), kept here as it was: `reprepare` needs it to find the records they read otherwise.
_BEFORE_NOT_NAME = re.compile(r"[^a-z\- ]")


def _read_before(value: str) -> str | None:
    return " ".join(_BEFORE_NOT_NAME.sub("", value.strip().lower().replace("'", "")).split()) or None


def _read_otherwise_before(record: PatientRecord) -> bool:
    """Whether the earlier release read one of its names otherwise than this one where no stored value shows it:
    a record with a given name or a surname only has no name key either way (nor do its other names), so an
    accented name stripped but not emptied ("Hương" read as "hng", nearer Hằng than Hương) left nothing to
    compare, while its link was decided on what was left."""
    if record.name_key is not None:  # a key stripped shows it (`reprepared`)
        return False
    other = record.other_names or {}
    names = [record.given, record.family, *other.get("given", ()), *other.get("family", ())]
    return any(not name.isascii() and _read_before(name) != name_text(name) for name in names if name)


def _held_but_matchable(record: PatientRecord) -> bool:
    """Held as too little to match on, which it is not now (a Greek or Cyrillic name read as none before)."""
    return record.link_method == "insufficient-data" and missing(stored_demographics(record)) is None


@dataclass
class ReprepareReport:
    records: int = 0
    nhs_numbers_rewritten: int = 0
    name_keys_rewritten: int = 0
    names_read_anew: int = 0  # matched again for a name read otherwise that no key shows (`_read_otherwise_before`)
    matched_again: int = 0
    moved: int = 0  # matched again into another person
    held_for_review: int = 0  # matched again and held for review

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def reprepare(db: Database, progress: Callable[[int], None]) -> ReprepareReport:
    """Prepare every stored record's values for matching as the current code does, and match again each record
    they change, that was held as too little to match on and is not now, or whose name without a key the earlier
    release read otherwise (`_read_otherwise_before`: every run) (`rematch`: moves audited, a person's
    decision held for review, never undone silently); `progress` is told how many records were read. A relink
    cannot do this: it takes the stored NHS numbers as they are and skips records held as too little. Each
    record matched again is a transaction of its own, holding its own keys only (`hold_matching`), so ingest
    goes on beside it."""
    report, after = ReprepareReport(), 0
    while True:
        with db.session() as session:
            page = list(session.scalars(select(PatientRecord).where(PatientRecord.id > after)
                                        .order_by(PatientRecord.id).limit(_REPREPARE_PAGE)))
            due = [r.id for r in page if reprepared(r) or _held_but_matchable(r) or _read_otherwise_before(r)]
        for record_id in due:
            with db.session() as session:
                record = session.get_one(PatientRecord, record_id)
                changed, read_anew = reprepared(record), _read_otherwise_before(record)
                if not changed and not read_anew and not _held_but_matchable(record):  # (matched again
                    continue  # meanwhile by a source)
                before, number = record.person_id, record.nhs_number
                for column, value in changed.items():
                    setattr(record, column, value)
                demo = stored_demographics(record)
                rematch(session, record, demo, record.nhs_number, [], None, REPREPARED)
                if record.nhs_number != number:
                    follow_number(session, record, number, REPREPARE)
                report.nhs_numbers_rewritten += "nhs_number" in changed
                report.name_keys_rewritten += "name_key" in changed
                report.names_read_anew += read_anew
                report.matched_again += 1
                report.moved += record.person_id != before
                report.held_for_review += record.link_status == "review"
        if not page:
            return report
        report.records += len(page)
        after = page[-1].id
        progress(len(page))


def _left_alone(record: PatientRecord, now: datetime) -> None:
    """A record the re-match left alone in its person links to no one now: what it said about its link (how,
    how likely, with which record) is cleared, as for a new record of its own; a placed record stays manual, and
    one held for another reason (too little to match on, an NHS number conflict) keeps that method."""
    if record.link_method in ("probabilistic", "nhs-number"):
        record.link_method = "new"
    record.match_probability, record.match_weight, record.match_evidence, record.updated_at = 1.0, None, None, now


def _person_records(session: Session, person_id: str, but: int) -> list[PatientRecord]:
    return list(session.scalars(select(PatientRecord).where(PatientRecord.person_id == person_id,
                                                            PatientRecord.id != but)))


def _why_apart(other: PatientRecord, nhs: str | None) -> str:
    return "another NHS number" if numbers_keep_apart(nhs, other.nhs_number) else CONFLICT


def _clash(records: list[PatientRecord], demo: Demographics, nhs: str | None) -> PatientRecord | None:
    """The first of these records that is clearly someone else than `demo`: never one person with it."""
    return next((r for r in records if numbers_keep_apart(nhs, r.nhs_number) or _conflicts(r, demo)), None)


def _decisions(session: Session, record: PatientRecord, mine: list[PatientRecord]) -> list[str]:
    """What people decided about where this record belongs: reviewers' decisions on its pairs, the merge,
    separation or review that last moved it (`link_method` manual), and a merge not undone that brought
    records still with it (`mine`) to its person: the kept side of a merge is as placed as the side moved."""
    found = [f"review #{item.id} ({item.status} by {item.decided_by})" for item in session.scalars(
        select(MatchReview).where(or_(MatchReview.record_a == record.id, MatchReview.record_b == record.id),
                                  MatchReview.status.in_(REVIEWED)).order_by(MatchReview.id))]
    if record.link_method == "manual":  # the person's, not a relink's or a re-match's since
        event = session.scalars(select(LinkEvent).join(LinkMove).where(LinkMove.patient_record_id == record.id,
                                                                       LinkEvent.kind.in_(DECIDED))
                                .order_by(LinkEvent.id.desc()).limit(1)).first()
        if event is not None:
            found.append(f"{event.kind} #{event.id} by {event.by}")
    placed = [r.id for r in mine if r.link_method == "manual"]  # a merge marks the records it moves so
    if placed:
        merge = session.scalars(select(LinkEvent).join(LinkMove).where(
            LinkEvent.kind == "merge", LinkEvent.undone_by.is_(None), LinkMove.to_person == record.person_id,
            LinkMove.patient_record_id.in_(placed)).order_by(LinkEvent.id.desc()).limit(1)).first()
        if merge is not None and f"{merge.kind} #{merge.id} by {merge.by}" not in found:
            found.append(f"{merge.kind} #{merge.id} by {merge.by}")
    return found


def _reopen(session: Session, record: PatientRecord, why: str) -> None:
    """Put a reviewer's decisions on this record's pairs back on the review list, saying what they were and why
    they are asked again (a relink holds a decided pair together or apart; these no longer fit)."""
    mine = or_(MatchReview.record_a == record.id, MatchReview.record_b == record.id)
    for item in session.scalars(select(MatchReview).where(mine, MatchReview.status.in_(REVIEWED))):
        item.evidence = (item.evidence or {}) | {"reopened": f"was '{item.status}' by {item.decided_by} at "
                                                              f"{item.decided_at}; {why}"}
        item.status = "open"


def _pair_with(link: _Link) -> list[tuple[int, float, dict[str, Any]]]:
    """The pair a held-back link would have been made through, for the reviewer."""
    other = (link.evidence or {}).get("with_record")
    return [(other, link.probability, link.evidence or {})] if other is not None else []


def _review(session: Session, record: PatientRecord, incoming: Features, model: Model,
            new: list[tuple[int, float, dict[str, Any]]]) -> None:
    """The record's items a relink closed that no longer hold (or that `new` puts in doubt again) reopened,
    its open review items scored again on its new demographics (what else their evidence said is kept), and
    `new` pairs added."""
    items = {(i.record_a, i.record_b): i for i in session.scalars(select(MatchReview).where(
        or_(MatchReview.record_a == record.id, MatchReview.record_b == record.id)))}
    resettle_reviews(session, list(items.values()), {(min(record.id, other), max(record.id, other))
                                                     for other, _, _ in new}, REMATCH, utcnow())
    for item in items.values():
        if item.status in ("open", "deferred"):
            them = session.get_one(PatientRecord, item.record_b if item.record_a == record.id else item.record_a)
            found = levels(incoming, features(stored_match_record(them)))
            item.probability = model.score_levels(found).probability
            item.evidence = (item.evidence or {}) | model.evidence(found) | {
                "with_record": them.id, "rescored": "scored again: a source changed the record's demographics"}
    now = utcnow()
    for other, probability, evidence in new:
        pair = (min(record.id, other), max(record.id, other))
        if pair not in items:
            items[pair] = MatchReview(record_a=pair[0], record_b=pair[1], probability=probability,
                                      evidence=evidence, created_at=now, status="open")
            session.add(items[pair])
    session.flush()


@dataclass
class RelinkReport:
    records: int = 0
    persons_before: int = 0
    persons_after: int = 0
    records_moved: int = 0
    persons_created: int = 0
    held_for_review: int = 0
    review_pairs: int = 0  # pairs this relink added to the review list
    review_closed_one_person: int = 0  # open items closed: the relink put both records in one person
    review_closed_nhs_numbers_differ: int = 0  # open items closed: two different valid NHS numbers
    review_reopened: int = 0  # items an earlier relink closed that this one no longer settles
    review_open: int = 0  # open items after this relink (deferred ones not counted)
    operator_separations_kept: int = 0  # separates and unmerges whose records it kept apart (`links.separations`)
    locked_seconds: float = 0.0  # holding the matching lock, to the commit's start (SQLite: every writer waited)
    not_matched_too_little_data: int = 0
    model_version: str = ""

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


# What training needs of each record matched (`stored_match_record`).
_MATCHED = select(PatientRecord.id, PatientRecord.source_org, PatientRecord.nhs_number, PatientRecord.given,
                  PatientRecord.family, PatientRecord.birth_date, PatientRecord.gender, PatientRecord.postcode,
                  PatientRecord.other_names, PatientRecord.postcodes, PatientRecord.phones, PatientRecord.email
                  ).where(PatientRecord.link_method != "insufficient-data").order_by(PatientRecord.id)


# On SQLite a relink's locked phase (from `hold_every_key`: reading again, scoring, clustering and writing) holds
# every other writer: ingest, decisions, and the audit entry of every read. A writer waits `sqlite_turns.WAIT_S`
# for its turn and as long again in SQLite's busy handler, then is refused (`database.busy`: MLLP AE, HTTP 503).
# 13,954 records held it 13-19 s at load 7-9 on two cores (2.2-3.8 s at load 0.7-5: docs/architecture.md, Identity):
# a larger store is relinked on SQLite only with its writers stopped (`writers_stopped`), or on PostgreSQL.
SQLITE_RELINK_LIMIT = 20_000


class RelinkRefused(SharedcareError):
    """A relink that would hold the store's other writers longer than they wait."""


def _may_relink(session: Session) -> None:
    """Refuse a relink of an SQLite store beyond `SQLITE_RELINK_LIMIT` records, before training (minutes)."""
    if session.connection().dialect.name != "sqlite":
        return
    records = session.scalar(select(func.count()).select_from(PatientRecord)) or 0
    if records > SQLITE_RELINK_LIMIT:
        raise RelinkRefused(
            f"refused: this SQLite store holds {records:,} source records, more than {SQLITE_RELINK_LIMIT:,}. On "
            "SQLite a relink holds every other writer (ingest, reviewers' decisions, the audit entry of every read) "
            f"while it clusters, which at this size may take longer than they wait (about {2 * WAIT_S:g} s): they "
            "would be refused meanwhile (MLLP AE, HTTP 503). Move the store to PostgreSQL, where only matching "
            "waits for a relink (README, \"PostgreSQL\"), or stop ingest and the portal and run `sharedcare mpi "
            "relink --writers-stopped`")


def relink(session: Session, by: str = "mpi relink",
           writers_stopped: bool = False) -> tuple[RelinkReport, dict[str, object]]:
    """Re-match every source patient record with the probabilistic model and move links to fit.

    Clinical rows never move: only `patient_records.person_id` changes. Each new cluster keeps the person
    id most of its records already had, so views and bookmarks stay stable. Records with too little
    to match on keep their own person, under review. The trained model is saved with the index (the
    one real-time matching uses from then on) and returned for the caller to write out. Every record that
    changes person is one move of a `relink` LinkEvent, so whose record past reads were about stays known.
    Clustering and moving hold the matching lock on every key, to the commit (`hold_every_key`); on SQLite that
    holds every writer, so a store beyond `SQLITE_RELINK_LIMIT` records is refused unless `writers_stopped`."""
    from sharedcare.identity.matching import BRIDGE, MIN_TRAINING_RECORDS, cluster, trained_model  # loads slowly
    from sharedcare.identity.model import MODEL_VERSION

    # Training only reads, and is the slow part: it runs on the records as they are now, with no lock, while
    # ingest and reviewers go on. Clustering and every move are then made under the matching lock from what is
    # committed by then: until 2026-12-07 they were made from the records and decisions read before training,
    # and overwrote what committed meanwhile (a corrected record moved back, a reviewer's separate undone).
    if not writers_stopped:
        _may_relink(session)
    snapshot = [stored_match_record(r) for r in session.execute(_MATCHED)]
    trained = trained_model(snapshot) if len(snapshot) >= MIN_TRAINING_RECORDS else None
    del snapshot
    hold_every_key(session, alone=True)
    locked = time.monotonic()
    every = list(session.scalars(select(PatientRecord).order_by(PatientRecord.id)
                                 .execution_options(populate_existing=True)))
    rows = [r for r in every if r.link_method != "insufficient-data"]
    report = RelinkReport(records=len(every), persons_before=len({r.person_id for r in every}),
                          not_matched_too_little_data=len(every) - len(rows), model_version=MODEL_VERSION)
    decided = {status: {(a, b) for a, b in session.execute(
        select(MatchReview.record_a, MatchReview.record_b).where(MatchReview.status == status))}
        for status in ("linked", "separate")}
    from sharedcare.identity.realtime import SESSION_MODEL, current_model

    kept = merged(session)  # merges not undone hold as reviewers' links do
    matched = {r.id for r in rows}
    apart = {pair: event for pair, event in separations(session).items() if set(pair) <= matched}  # and separations
    report.operator_separations_kept = len(set(apart.values()))  # as reviewers' separates
    result = cluster([stored_match_record(r) for r in rows],
                     decided_same=decided["linked"] | {p for p in kept.pairs if set(p) <= matched},
                     decided_different=decided["separate"] | apart.keys(), fallback=current_model(session).json,
                     trained_on=trained)
    by_id = {r.id: r for r in rows}
    members: dict[int, list[PatientRecord]] = {}
    for record_id, root in result.cluster_of.items():
        members.setdefault(root, []).append(by_id[record_id])
    claimed = {r.person_id for r in every if r.link_method == "insufficient-data"}
    now = utcnow()
    moves: list[LinkMove] = []
    for group in sorted(members.values(), key=len, reverse=True):
        # a record a merge brought votes for the person it came from when none of its person's own records
        # is in the cluster: a wrongly merged person split keeps each id with the records it held before the
        # merge (any access basis given on either is ended: `end_bases`)
        own = {r.person_id for r in group if r.id not in kept.came_from}
        votes: dict[str, int] = {}
        for record in group:
            vote = record.person_id if record.person_id in own else kept.came_from[record.id]
            votes[vote] = votes.get(vote, 0) + 1
        person_id = next((pid for pid, _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
                          if pid not in claimed), None)
        if person_id is None:
            person_id = _new_person(session)
            report.persons_created += 1
        claimed.add(person_id)
        moves += moves_to(group, person_id)
        for record in group:
            if record.person_id != person_id:
                report.records_moved += 1
                record.person_id = person_id
            record.match_probability = result.probability.get(record.id, 1.0)
            evidence = result.evidence.get(record.id) if len(group) > 1 else None
            record.match_evidence = evidence
            record.match_weight = evidence["match_weight"] if evidence else None
            if len(group) > 1 and record.link_method in ("new", "probabilistic"):
                record.link_method = "probabilistic"
            if record.id in result.held_for_review:
                record.link_status = "review"
                record.link_note = (f"held for review: {BRIDGE}" if record.id in
                                    result.torn else "held for review: its cluster joined two NHS numbers")
            elif len(group) == 1 and record.link_status == "review":
                record.link_status = "review"
            else:
                record.link_status = "linked"
            record.updated_at = now
    if moves:
        event = LinkEvent(at=now, kind="relink", by=by, reason="batch relink", moves=moves)
        session.add(event)
        session.flush()
        flag_joined_registrations(session, moves, by)
        end_bases(session, event)
    report.persons_after = len({r.person_id for r in every})
    report.held_for_review = len(result.held_for_review)
    settled = settle_reviews(session, {r.id: r for r in every},
                             {(pair.record_a, pair.record_b) for pair in result.review_pairs}, by, now)
    report.review_closed_one_person, report.review_closed_nhs_numbers_differ, report.review_reopened = (
        len(settled.same), len(settled.apart), len(settled.reopened))
    known = {(a, b) for a, b in session.execute(select(MatchReview.record_a, MatchReview.record_b))}
    for pair in result.review_pairs:
        if pair.linked and (pair.record_a, pair.record_b) in known:  # an open item now linked: say why
            item = session.scalars(select(MatchReview).where(MatchReview.record_a == pair.record_a,
                                                             MatchReview.record_b == pair.record_b)).one()
            if item.status == "open":
                history = {key: item.evidence[key] for key in ("relinks", "reopened", "rescored")
                           if key in item.evidence}
                item.evidence, item.probability = pair.evidence | history, pair.probability
        elif (pair.record_a, pair.record_b) not in known:
            known.add((pair.record_a, pair.record_b))
            session.add(MatchReview(record_a=pair.record_a, record_b=pair.record_b, probability=pair.probability,
                                    evidence=pair.evidence, created_at=now, status="open"))
            report.review_pairs += 1
    report.review_open = session.scalar(select(func.count()).select_from(MatchReview).where(
        MatchReview.status == "open")) or 0
    if result.trained:
        session.add(MatchModel(version=MODEL_VERSION, trained_at=now, trained_on=len(rows), model=result.model))
        session.info.pop(SESSION_MODEL, None)  # matching in this session from now on uses the new model
    session.flush()
    report.locked_seconds = round(time.monotonic() - locked, 1)
    return report, result.model
