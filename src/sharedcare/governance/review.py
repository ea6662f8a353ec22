"""The IG officer's review queue: break glass, implied consent and unusual access, with outcomes.

Items enter when a basis is recorded (gateway.record_basis calls `flag_access`), when a user's patient
searches find unusually many people (gateway.search_patients calls `flag_searches`), when a practice
links a record of its own to someone already known to others by its own FHIR write
(`flag_new_source_record`, from ingest/contributions.py), and when a practice claims the registration of
someone another practice already claims (`flag_registration_conflict`, from ingest/pipeline.py); an IG
officer records an outcome, which is audited. An item not reviewed within the framework's
`review.due_hours` is shown as overdue (TRUST BG2: the clock is passed in, so tests can freeze it).

A care relationship cannot be self-made. A practice opening the record of someone it holds no record of
is flagged ("no-relationship"). Over the FHIR write API (POST/PUT /fhir/Patient) any writing user of a
practice could otherwise give it a record of anyone, by sending a Patient with their NHS number: the MPI
links it to that person, and the flag would never fire again. So the rule is: when the first record a
GP practice holds of a person who is already in the shared record (records from other organisations)
arrives by that practice's own FHIR write, a "new-source-record" item is queued at that moment, and
until an IG officer closes it as appropriate (a genuine new registration, say) that record counts
neither as a care relationship here nor as the registered demographics (gateway.combined_patient).
Records from the feeds the hub ingests, and a practice's writes to a person it already held, or to a
person new to the shared record, are not self-made in this sense.

A registration cannot be taken over either. When a practice's Patient starts to claim the person's
registration (active, its generalPractitioner naming the practice) while another practice's record of
the same person already claims it, by feed or by FHIR write, a "registration-conflict" item is queued
about the new claim, and until IG closes it as appropriate (the patient really moved) the new claim is
not the registered practice's for the shared demographics, unless it is the only claim left (the old
practice has since sent its record inactive). An MPI merge or relink that brings a practice's claiming
record to a person another practice's record already claims is the same thing, and queues the same item
about each claim that moved (`flag_joined_registrations`).

Both kinds are about a source record, not a person: they name the record and follow it through MPI
merges, unmerges and separations (`on_review` reads each record's person now). An access item is about
the person as they were when the access was made: the queue shows whoever holds those records now
(`access_log.holders_now`), so an IG officer still sees whose record was opened after a merge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Select, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.fhir.lifecycle import entered_in_error
from sharedcare.governance.access_log import holders_now
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.framework import Framework
from sharedcare.governance.policy import Actor
from sharedcare.store.database import run
from sharedcare.store.models import (
    IS_PATIENT,
    AccessBasis,
    AuditEntry,
    LinkMove,
    PatientRecord,
    Resource,
    ReviewItem,
)

Outcome = Literal["appropriate", "investigate"]
NEW_SOURCE_RECORD = "new-source-record"
REGISTRATION_CONFLICT = "registration-conflict"
# A basis recorded by a user who had neither found the person by a search nor read their record in the last
# FOUND_WITHIN (the audit says: gateway.FOUND_BY): the record was opened by its id alone. A record id is no
# secret (a UUIDv5 of a source's own id, which anyone who knows a hospital number can compute; URLs, browser
# histories, logs), and explicit consent is not queued for its own sake, so without this item no IG officer
# would see it. Queued once for a user and person in FOUND_WITHIN, as the window `identify` names people in.
OPENED_BY_ID = "opened-by-id"
FOUND_WITHIN = timedelta(hours=24)
OPENED_BY_ID_WORDS = (f"no search by this user found the patient, and they had not read the record, in the last "
                      f"{FOUND_WITHIN.total_seconds() / 3600:g} hours")
# A user whose patient searches (the portal's and FHIR Patient searches alike: `GovernedRecords.search_patients`)
# found more than the framework's `review.people_found_per_hour` different people in an hour: each result
# names someone (name, date of birth, NHS number; a postcode where the role sees addresses), so an insider
# could harvest a street's details without opening one record, which the basis count never saw (journey 7;
# clinical portal review: a paramedic found 40 people by name and date of birth in seconds, and the queue
# stayed empty). Queued once in an hour for a user; a backend client's look-ups are its own system's (its
# users' searches are audited there), so they are not counted.
UNUSUAL_SEARCHES = "unusual-search-volume"
_BACKEND = "client:"  # clients.CLIENT_PREFIX (clients imports the gateway, which imports this module)


@dataclass(frozen=True)
class QueueItem:
    id: int
    kind: str
    username: str
    patient_id: str  # the person the item is about now (see the module docstring)
    reason: str
    created_at: datetime
    due_at: datetime
    overdue: bool
    status: str
    outcome: str | None
    also_now: tuple[str, ...] = ()  # others now holding records of the person an access was to (a separation)
    escalated_at: datetime | None = None


def flag_access(session: Session, fw: Framework, actor: Actor, person_id: str, basis: str, reason: str,
                audit_seq: int, now: datetime, *, by_id: bool = False) -> list[str]:
    """Queue whatever about this access an IG officer should look at; returns the kinds queued. `by_id`: the
    user opened the record by its id alone (OPENED_BY_ID)."""
    kinds = []
    rule = fw.basis.get(basis)  # type: ignore[call-overload]
    if rule is not None and rule.review:
        kinds.append(basis)
    since = now - timedelta(hours=1)
    patients_this_hour = session.scalar(
        select(func.count(func.distinct(AccessBasis.person_id)))
        .where(AccessBasis.username == actor.username, AccessBasis.granted_at > since)) or 0
    if patients_this_hour == fw.review.patients_per_hour + 1:  # flag once, when the line is crossed
        kinds.append("unusual-volume")
    org = fw.organisation(actor.organisation)
    if org is not None and org.kind == "gp" and not _holds_record(session, actor.organisation, person_id):
        kinds.append("no-relationship")
    if by_id and session.scalar(select(ReviewItem.id).where(  # one item in the window, however many bases
            ReviewItem.kind == OPENED_BY_ID, ReviewItem.username == actor.username,
            ReviewItem.person_id == person_id, ReviewItem.created_at > now - FOUND_WITHIN).limit(1)) is None:
        kinds.append(OPENED_BY_ID)
    for kind in kinds:
        detail = reason if kind == basis else {
            "unusual-volume": f"more than {fw.review.patients_per_hour} patients' records opened in an hour",
            "no-relationship": f"{actor.organisation} holds no record of this patient",
            OPENED_BY_ID: f"record opened by its id alone: {OPENED_BY_ID_WORDS}. Check how they came by the id "
                          "(a link, a browser's history, a log, or worked out from a hospital number)",
        }[kind]
        session.add(ReviewItem(kind=kind, username=actor.username, person_id=person_id, reason=detail,
                               audit_seq=audit_seq, created_at=now, status="open"))
    return kinds


def people_found(username: str, since: datetime) -> Select[int]:
    """How many different people `username`'s patient searches found since `since` (read by user and time,
    `ix_audit_events_user_time`: not every entry the user ever made)."""
    return select(func.count(func.distinct(AuditEntry.patient_id))).where(
        AuditEntry.username == username, AuditEntry.action == AuditAction.PATIENT_SEARCH,
        AuditEntry.outcome == "permit", AuditEntry.patient_id.is_not(None), AuditEntry.recorded_at > since)


def flag_searches(session: Session, fw: Framework, actor: Actor, person_id: str, audit_seq: int,
                  now: datetime) -> bool:
    """After a search by `actor` found people (audited, `audit_seq` the last, naming `person_id`): queue the user
    when their searches have found more than `review.people_found_per_hour` different people in the hour to
    `now`, unless an item of the kind was queued for them within that hour; returns whether one was."""
    if actor.username.startswith(_BACKEND):
        return False
    since = now - timedelta(hours=1)
    session.flush()  # this search's own events count
    found = session.scalar(people_found(actor.username, since)) or 0
    limit = fw.review.people_found_per_hour
    if found <= limit or session.scalar(select(ReviewItem.id).where(
            ReviewItem.kind == UNUSUAL_SEARCHES, ReviewItem.username == actor.username,
            ReviewItem.created_at > since).limit(1)) is not None:
        return False
    role = actor.role
    postcode = ", postcode" if role is not None and role.tier("demographics") >= 2 else ""
    session.add(ReviewItem(kind=UNUSUAL_SEARCHES, username=actor.username, person_id=person_id, audit_seq=audit_seq,
                           reason=f"{found} different people found by patient searches in an hour (more than {limit}), "
                                  f"each result naming them (name, date of birth, NHS number{postcode})",
                           created_at=now, status="open"))
    return True


def _holds_record(session: Session, org: str, person_id: str) -> bool:
    """Whether `org` has a care relationship with the person: it holds a record of them that it did not
    make for itself (see the module docstring: a record its own FHIR write linked to a person already
    known to others counts only once IG has found it appropriate)."""
    self_made = on_review(session, person_id).self_made_records
    found = session.scalar(select(Resource.id).join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
                           .where(PatientRecord.person_id == person_id, Resource.source_org == org,
                                  PatientRecord.id.not_in(self_made)).limit(1))
    return found is not None


@dataclass(frozen=True)
class OnReview:
    """A person's source records whose standing waits on IG (open or under investigation): the records
    self-made by a practice's own FHIR write, and the Patients (server ids) of those and of the records
    whose registration claim competes with another practice's; and the Patients whose competing claim IG
    found appropriate (the patient moved there)."""

    self_made_records: frozenset[int] = frozenset()
    self_made: frozenset[str] = frozenset()
    contested: frozenset[str] = frozenset()
    confirmed: frozenset[str] = frozenset()


NOTHING_ON_REVIEW = OnReview()


def on_review(session: Session, person_id: str) -> OnReview:
    """What of this person's records waits on (or passed) IG review, by the records' person now."""
    return _on_review(session, person_id).get(person_id, NOTHING_ON_REVIEW)


def everyone_on_review(session: Session) -> dict[str, OnReview]:
    """`on_review` for everyone at once (for an export: one query, not one per person)."""
    return _on_review(session, None)


# Built once: on the read path of every record (governance/gateway.py), where building an ORM statement per
# request costs more than running it (store/database.py, `run`). The kinds are not an IN list: a list is
# expanded when run, which a `Prepared` statement (gateway._INPUTS) cannot do.
_ON_REVIEW_ALL = (select(PatientRecord.person_id, ReviewItem.kind, ReviewItem.status,
                         PatientRecord.id.label("record_id"), Resource.id.label("patient_id"))
                  .join(PatientRecord, ReviewItem.patient_record_id == PatientRecord.id)
                  .outerjoin(Resource, (Resource.patient_record_id == PatientRecord.id) & IS_PATIENT)
                  .where((ReviewItem.kind == NEW_SOURCE_RECORD) | (ReviewItem.kind == REGISTRATION_CONFLICT),
                         (ReviewItem.status != "closed") | (ReviewItem.kind == REGISTRATION_CONFLICT)))
# One person's rows (kind, status, record_id, patient_id ...): the gateway reads them with the decision's
# other inputs, in one statement (`gateway._INPUTS`), and makes them an `OnReview` with `standing`.
ON_REVIEW = _ON_REVIEW_ALL.where(PatientRecord.person_id == bindparam("person_id"))


def standing(rows: Iterable[tuple[str, str, int, str | None]]) -> OnReview:
    """One person's `OnReview` from their rows of `ON_REVIEW`: (kind, status, record id, Patient id)."""
    records: set[int] = set()
    self_made: set[str] = set()
    contested: set[str] = set()
    confirmed: set[str] = set()
    for kind, status, record_id, patient_id in rows:
        if kind == NEW_SOURCE_RECORD:
            records.add(record_id)
        if patient_id is not None:
            (self_made if kind == NEW_SOURCE_RECORD else confirmed if status == "closed" else contested).add(patient_id)
    if not records and not self_made and not contested and not confirmed:
        return NOTHING_ON_REVIEW
    return OnReview(frozenset(records), frozenset(self_made), frozenset(contested), frozenset(confirmed))


def _on_review(session: Session, person_id: str | None) -> dict[str, OnReview]:
    rows = run(session, _ON_REVIEW_ALL) if person_id is None else run(session, ON_REVIEW, {"person_id": person_id})
    found: dict[str, list[tuple[str, str, int, str | None]]] = {}
    for person, kind, status, record_id, patient_id in rows:
        found.setdefault(person, []).append((kind, status, record_id, patient_id))
    return {person: standing(held) for person, held in found.items()}


def flag_new_source_record(session: Session, fw: Framework, actor: Actor, record: PatientRecord, audit_seq: int,
                           now: datetime) -> ReviewItem:
    """Queue a practice's own FHIR write that gave it its first record of a person already known to others
    (the caller has checked that); `audit_seq` is the write's audit event."""
    org = fw.organisation(actor.organisation)
    name = f"{org.name} ({actor.organisation})" if org else actor.organisation
    item = ReviewItem(kind=NEW_SOURCE_RECORD, username=actor.username, person_id=record.person_id,
                      patient_record_id=record.id, audit_seq=audit_seq,
                      reason=f"new source record for an existing person from {name}, by its own FHIR write: "
                             "until reviewed it is not counted as a care relationship or as the registered "
                             "practice's demographics",
                      created_at=now, status="open")
    session.add(item)
    return item


def flag_registration_conflict(session: Session, fw: Framework | None, record: PatientRecord, by: str,
                               claimed_by: list[str], now: datetime) -> ReviewItem:
    """Queue a practice's new claim of a person's registration while other practices (`claimed_by`, ODS
    codes) already claim it; `by` is who sent it (a user, the source's feed, or who merged). Organisations
    are named from the framework when there is one to hand, else by ODS code."""
    def name(code: str) -> str:
        org = fw.organisation(code) if fw else None
        return f"{org.name} ({code})" if org else code

    others = ", ".join(name(code) for code in claimed_by)
    item = ReviewItem(kind=REGISTRATION_CONFLICT, username=by, person_id=record.person_id, patient_record_id=record.id,
                      reason=f"{name(record.source_org)} says this patient is registered with it, but {others} "
                             f"already says so. Until reviewed, the shared address, telecom and next of kin are "
                             f"not taken from {name(record.source_org)}. Appropriate if the patient has moved "
                             "there: its details are then shown",
                      created_at=now, status="open")
    session.add(item)
    return item


# Each claimed registration of these people: the record, its practice and its Patient (built once)
_CLAIMS_OF = (select(PatientRecord.id, PatientRecord.person_id, Resource.source_org, Resource.content)
              .join(Resource, (Resource.patient_record_id == PatientRecord.id) & IS_PATIENT)
              .where(PatientRecord.person_id.in_(bindparam("persons", expanding=True))))


def flag_joined_registrations(session: Session, moves: list[LinkMove], by: str) -> list[ReviewItem]:
    """After an MPI merge or relink (`moves`, already applied): each moved record whose Patient claims the
    registration of a person that another practice's record, there before the move, already claims is a
    competing claim, queued like one a feed sends (`flag_registration_conflict`). A claim is a Patient
    naming its own sender as the GP (`claims_registration`), so no framework is needed to find one."""
    # Imported here, not at the top: fhir.uk_core imports identity.mpi, which calls this.
    from sharedcare.fhir.uk_core import claims_registration

    moved_in: dict[str, set[int]] = {}
    for move in moves:
        moved_in.setdefault(move.to_person, set()).add(move.patient_record_id)
    persons = sorted(moved_in)
    claims: dict[str, list[tuple[int, str]]] = {}
    for start in range(0, len(persons), 500):  # bounded IN lists: a relink may move many thousands
        for record_id, person_id, org, content in run(session, _CLAIMS_OF, {"persons": persons[start:start + 500]}):
            if claims_registration(content, org) and not entered_in_error(content):
                claims.setdefault(person_id, []).append((record_id, org))
    moved_claims = sorted({record_id for person_id, claimed in claims.items() for record_id, _ in claimed
                           if record_id in moved_in[person_id]})
    already_queued: set[int | None] = set()
    for start in range(0, len(moved_claims), 500):
        already_queued.update(session.scalars(select(ReviewItem.patient_record_id).where(
            ReviewItem.kind == REGISTRATION_CONFLICT, ReviewItem.status != "closed",
            ReviewItem.patient_record_id.in_(moved_claims[start:start + 500]))))
    queued = []
    now = utcnow()
    for person_id, claimed in sorted(claims.items()):
        already = sorted({org for record_id, org in claimed if record_id not in moved_in[person_id]})
        for record_id, org in claimed:
            others = [code for code in already if code != org]
            if record_id in moved_in[person_id] and others and record_id not in already_queued:
                record = session.get_one(PatientRecord, record_id)
                queued.append(flag_registration_conflict(session, None, record, by, others, now))
    return queued


def _persons_now(session: Session, item: ReviewItem) -> list[str]:
    """Who an item is about now: its record's person, for an item about a source record; for an access,
    whoever holds now the records the person held then (the one holding most of them first)."""
    if item.patient_record_id is None:
        return holders_now(session, item.person_id, item.created_at)
    return [session.get_one(PatientRecord, item.patient_record_id).person_id]


@dataclass(frozen=True)
class QueuePage:
    """One page of the queue, oldest first, with the counts of the whole queue."""
    items: list[QueueItem]
    waiting: int  # items in the queue (not closed; all items with `include_closed`)
    overdue: int  # open items past their due time, in the whole queue
    later: int | None  # the id the next page starts after, if there is one


def queue(session: Session, fw: Framework, now: datetime, include_closed: bool = False) -> list[QueueItem]:
    """The whole queue, oldest first (the command line's table and JSON)."""
    return queue_page(session, fw, now, include_closed).items


def queue_page(session: Session, fw: Framework, now: datetime, include_closed: bool = False, *,
               after: int | None = None, limit: int | None = None) -> QueuePage:
    """Up to `limit` items, oldest first, starting after the item `after` (keyset paging: recording an
    outcome takes an item out without moving the next page's start). Only the page's items are followed
    to whoever holds their records now; a busy region's queue is worked a page at a time."""
    due = timedelta(hours=fw.review.due_hours)
    waiting = select(func.count()).select_from(ReviewItem)
    stmt = select(ReviewItem).order_by(ReviewItem.created_at, ReviewItem.id)
    if not include_closed:
        waiting = waiting.where(ReviewItem.status != "closed")
        stmt = stmt.where(ReviewItem.status != "closed")
    if after is not None:
        start = session.get(ReviewItem, after)
        if start is None:
            raise SharedcareError(f"no review item #{after} to start the page after", where="after")
        stmt = stmt.where(or_(ReviewItem.created_at > start.created_at,
                              (ReviewItem.created_at == start.created_at) & (ReviewItem.id > start.id)))
    rows = list(session.scalars(stmt if limit is None else stmt.limit(limit + 1)))
    later = rows[limit - 1].id if limit is not None and len(rows) > limit else None
    items = []
    for i in rows[:limit]:
        person_id, *also_now = _persons_now(session, i)
        items.append(QueueItem(i.id, i.kind, i.username, person_id, i.reason, i.created_at, i.created_at + due,
                               i.status == "open" and now > i.created_at + due, i.status, i.outcome,
                               tuple(also_now), i.escalated_at))
    overdue = session.scalar(select(func.count()).select_from(ReviewItem).where(
        ReviewItem.status == "open", ReviewItem.created_at < now - due)) or 0
    return QueuePage(items, session.scalar(waiting) or 0, overdue, later)


def escalate(session: Session, fw: Framework, now: datetime) -> list[QueueItem]:
    """Escalate each item still open past its due time, once (TRUST BG2): a high-priority audit event
    (`governance:review:escalated`, outcome 'error': a control that was not worked in time), which the
    audit log's forwarding takes to the Audit Record Repository and its alerting, and the queue marks it.
    Run from a timer (`sharedcare audit escalate`); returns the items escalated now."""
    due = timedelta(hours=fw.review.due_hours)
    late = list(session.scalars(select(ReviewItem.id).where(
        ReviewItem.status == "open", ReviewItem.escalated_at.is_(None), ReviewItem.created_at < now - due)
        .order_by(ReviewItem.id)))
    escalated = []
    for item_id in late:
        # claimed by a conditional update: of two runs at once (two timers, two hosts), one escalates it
        claimed = session.execute(update(ReviewItem).where(ReviewItem.id == item_id, ReviewItem.escalated_at.is_(None))
                                  .values(escalated_at=now).execution_options(synchronize_session=False))
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            continue
        item = session.get_one(ReviewItem, item_id, populate_existing=True)
        person_id = _persons_now(session, item)[0]
        record_audit(session, AuditRecord(
            AuditAction.REVIEW_ESCALATED, "error", username="system", purpose="governance", patient_id=person_id,
            reason=f"not reviewed within {fw.review.due_hours:g} hours",
            detail={"review_item": str(item.id), "kind": item.kind, "reviewed_user": item.username,
                    "due_at": (item.created_at + due).isoformat()}))
        escalated.append(QueueItem(item.id, item.kind, item.username, person_id, item.reason, item.created_at,
                                   item.created_at + due, True, item.status, item.outcome, (), now))
    session.flush()
    return escalated


def record_outcome(session: Session, item_id: int, outcome: Outcome, by: str, note: str = "",
                   operator: str | None = None) -> ReviewItem:
    """An IG officer's conclusion on one item, audited. 'investigate' keeps it visible as under
    investigation; 'appropriate' closes it. `operator` is the operating-system account that entered it for
    `by` from the command line (the audit names both). No one concludes on their own access: the refusal
    is audited, as a user clearing their own break glass is what the review is there to catch."""
    item = session.get(ReviewItem, item_id)
    if item is None:
        raise SharedcareError(f"no review item #{item_id}", where="review")
    if item.status == "closed":
        raise SharedcareError(f"review item #{item_id} is already closed ({item.outcome})", where="review")
    entered = {"operator_account": operator} if operator else {}
    if item.username == by:
        record_audit(session, AuditRecord(AuditAction.GOVERNANCE_DENIED, "deny", username=by, purpose="governance",
                                          patient_id=_persons_now(session, item)[0], rule_id="deny-own-review",
                                          detail={"review_item": str(item_id), **entered}))
        session.commit()
        raise SharedcareError(f"review item #{item_id} is about {by}'s own access: another IG officer must "
                              "record its outcome", where="review")
    item.status = "closed" if outcome == "appropriate" else "investigating"
    item.outcome = f"{outcome}: {note}".strip().rstrip(":")
    record_audit(session, AuditRecord(AuditAction.REVIEW_OUTCOME, "permit", username=by, purpose="governance",
                                      patient_id=_persons_now(session, item)[0], reason=note,
                                      detail={"review_item": str(item_id), "outcome": outcome,
                                              "reviewed_user": item.username,
                                              **({"audit_seq": str(item.audit_seq)} if item.audit_seq else {}),
                                              **entered}))
    session.flush()
    return item
