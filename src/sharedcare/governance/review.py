"""The IG officer's review queue: break glass, implied consent and unusual access, with outcomes.

Items enter when a basis is recorded (gateway.record_basis calls `flag_access`), and when a practice
links a record of its own to someone already known to others by its own FHIR write
(`flag_new_source_record`, from ingest/contributions.py); an IG officer records an outcome, which is
audited. An item not reviewed within the framework's `review.due_hours` is shown as overdue (TRUST BG2:
the clock is passed in, so tests can freeze it).

A care relationship cannot be self-made. A practice opening the record of someone it holds no record of
is flagged ("no-relationship"). Over the FHIR write API (POST/PUT /fhir/Patient) any writing user of a
practice could otherwise give it a record of anyone, by sending a Patient with their NHS number: the MPI
links it to that person, and the flag would never fire again. So the rule is: when the first record a
GP practice holds of a person who is already in the shared record (records from other organisations)
arrives by that practice's own FHIR write, a "new-source-record" item is queued at that moment, and
until an IG officer closes it as appropriate (a genuine new registration, say) that practice's records
of the person count neither as a care relationship here nor as the registered demographics
(gateway.combined_patient). Records from the feeds the hub ingests, and a practice's writes to a person
it already held, or to a person new to the shared record, are not self-made in this sense.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, cast

from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.orm import Session

from sharedcare.errors import SharedcareError
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.framework import Framework
from sharedcare.governance.policy import Actor
from sharedcare.store.database import run
from sharedcare.store.models import AccessBasis, AuditEntry, PatientRecord, Resource, ReviewItem

Outcome = Literal["appropriate", "investigate"]
NEW_SOURCE_RECORD = "new-source-record"
_ITEMS, _AUDIT = cast(Table, ReviewItem.__table__), cast(Table, AuditEntry.__table__)
# Read on every record read (gateway.combined_patient): built once, run as Core.
_UNREVIEWED = (select(_AUDIT.c.organisation).join(_ITEMS, _ITEMS.c.audit_seq == _AUDIT.c.seq)
               .where(_ITEMS.c.person_id == bindparam("person_id"), _ITEMS.c.kind == NEW_SOURCE_RECORD,
                      _ITEMS.c.status != "closed"))


@dataclass(frozen=True)
class QueueItem:
    id: int
    kind: str
    username: str
    patient_id: str
    reason: str
    created_at: datetime
    due_at: datetime
    overdue: bool
    status: str
    outcome: str | None


def flag_access(session: Session, fw: Framework, actor: Actor, person_id: str, basis: str, reason: str,
                audit_seq: int, now: datetime) -> list[str]:
    """Queue whatever about this access an IG officer should look at; returns the kinds queued."""
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
    for kind in kinds:
        detail = reason if kind == basis else {
            "unusual-volume": f"more than {fw.review.patients_per_hour} patients' records opened in an hour",
            "no-relationship": f"{actor.organisation} holds no record of this patient",
        }[kind]
        session.add(ReviewItem(kind=kind, username=actor.username, person_id=person_id, reason=detail,
                               audit_seq=audit_seq, created_at=now, status="open"))
    return kinds


def _holds_record(session: Session, org: str, person_id: str) -> bool:
    """Whether `org` has a care relationship with the person: it holds a record of them that it did not
    make for itself (see the module docstring: a record its own FHIR write linked to a person already
    known to others counts only once IG has found it appropriate)."""
    if org in unreviewed_sources(session, person_id):
        return False
    found = session.scalar(select(Resource.id).join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
                           .where(PatientRecord.person_id == person_id, Resource.source_org == org).limit(1))
    return found is not None


def unreviewed_sources(session: Session, person_id: str) -> set[str]:
    """The organisations whose records of this person came only from their own FHIR write to someone already
    in the shared record, and which IG has not (yet) closed as appropriate: open or under investigation.
    The organisation is the writer's, as the write's audit event (the item's `audit_seq`) records it."""
    return {org for (org,) in run(session, _UNREVIEWED, {"person_id": person_id}) if org}


def flag_new_source_record(session: Session, fw: Framework, actor: Actor, person_id: str, audit_seq: int,
                           now: datetime) -> ReviewItem:
    """Queue a practice's own FHIR write that gave it its first record of a person already known to others
    (the caller has checked that); `audit_seq` is the write's audit event."""
    org = fw.organisation(actor.organisation)
    name = f"{org.name} ({actor.organisation})" if org else actor.organisation
    item = ReviewItem(kind=NEW_SOURCE_RECORD, username=actor.username, person_id=person_id, audit_seq=audit_seq,
                      reason=f"new source record for an existing person from {name}, by its own FHIR write: "
                             "until reviewed it is not counted as a care relationship or as the registered "
                             "practice's demographics",
                      created_at=now, status="open")
    session.add(item)
    return item


def queue(session: Session, fw: Framework, now: datetime, include_closed: bool = False) -> list[QueueItem]:
    stmt = select(ReviewItem).order_by(ReviewItem.created_at, ReviewItem.id)
    if not include_closed:
        stmt = stmt.where(ReviewItem.status != "closed")
    due = timedelta(hours=fw.review.due_hours)
    return [QueueItem(i.id, i.kind, i.username, i.person_id, i.reason, i.created_at, i.created_at + due,
                      i.status != "closed" and now > i.created_at + due, i.status, i.outcome)
            for i in session.scalars(stmt)]


def record_outcome(session: Session, item_id: int, outcome: Outcome, by: str, note: str = "") -> ReviewItem:
    """An IG officer's conclusion on one item, audited. 'investigate' keeps it visible as under
    investigation; 'appropriate' closes it."""
    item = session.get(ReviewItem, item_id)
    if item is None:
        raise SharedcareError(f"no review item #{item_id}", where="review")
    if item.status == "closed":
        raise SharedcareError(f"review item #{item_id} is already closed ({item.outcome})", where="review")
    item.status = "closed" if outcome == "appropriate" else "investigating"
    item.outcome = f"{outcome}: {note}".strip().rstrip(":")
    record_audit(session, AuditRecord(AuditAction.REVIEW_OUTCOME, "permit", username=by, purpose="governance",
                                      patient_id=item.person_id, reason=note,
                                      detail={"review_item": str(item_id), "outcome": outcome,
                                              "reviewed_user": item.username, "audit_seq": str(item.audit_seq)}))
    session.flush()
    return item
