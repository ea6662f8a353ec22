"""Merge, unmerge and separate: moving source records between persons, reversibly and audited.

Only links move (`patient_records.person_id`); clinical rows stay with the source record they came
with, so an unmerge restores each person exactly and no clinical data can cross between them (TRUST
MP2). Every change is a LinkEvent listing each move, and an audit event; a move that joins two
practices' claims of the person's registration queues the moved claim for IG (governance/review.py),
and ends the point-of-care bases given on the persons it moved records out of or into (`end_bases`).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.governance.access_log import arrival_times
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.review import NEW_SOURCE_RECORD, flag_joined_registrations
from sharedcare.identity.compare import features, levels, numbers_keep_apart
from sharedcare.store.models import (
    AccessBasis,
    LinkEvent,
    LinkMove,
    MatchReview,
    PatientRecord,
    Person,
    ReviewItem,
)

Decision = Literal["link", "separate", "defer"]
# A review item a relink closed, not a reviewer: its records are one person, or kept apart by a rule no
# reviewer can overrule (two different valid NHS numbers: `decide` refuses to link them). Reopened when a
# later relink no longer settles it; a reviewer's decision (linked, separate, deferred) is never changed.
RELINK_SAME, RELINK_APART = "relink-same", "relink-apart"
# A reviewer's decisions a relink keeps: changed only by deciding again as a change (`decide`'s `was`), or
# by an unmerge parting a link (marked separate).
REVIEWED = ("linked", "separate")
# The link events a person decides (an operator, a reviewer, a source's merge), not matching (relink, rematch):
# the last of them to move a record says where a person put it.
DECIDED = ("merge", "separate", "unmerge")


class LinkError(SharedcareError):
    """A merge, unmerge or review decision that cannot be carried out as asked."""


def moves_to(records: list[PatientRecord], to_person: str) -> list[LinkMove]:
    """The moves that taking these records to `to_person` makes (none for a record already there), each with
    the record's link status and method as they were, for an unmerge to restore."""
    return [LinkMove(patient_record_id=r.id, from_person=r.person_id, to_person=to_person,
                     from_status=r.link_status, from_method=r.link_method)
            for r in records if r.person_id != to_person]


_PERSONS_A_QUERY = 500  # persons whose bases one query looks up: far below every database's parameter limit


def end_bases(session: Session, event: LinkEvent) -> None:
    """End every active basis on a person this event moved records out of or into, audited per person.

    A basis is given for one patient's record as it was (that patient's consent, their emergency); after a
    move the same person id opens records of someone else, or fewer of the patient's own, so each user must
    give a basis again. The bases are looked up by person (`ix_access_bases_person_expires`), a chunk of
    persons a query (a relink moves thousands): until 2026-12-07 every active basis of the store was read and
    matched by person in Python, on every move (with 100,000 active bases, 3.1 s a merge on SQLite and 2.4 s
    on PostgreSQL, now 2 and 8 ms: benchmarks/end_bases.py)."""
    persons = sorted({m.from_person for m in event.moves} | {m.to_person for m in event.moves})
    ended: dict[str, list[AccessBasis]] = {}
    found: list[AccessBasis] = []
    for start in range(0, len(persons), _PERSONS_A_QUERY):
        found += session.scalars(select(AccessBasis).where(
            AccessBasis.person_id.in_(persons[start:start + _PERSONS_A_QUERY]), AccessBasis.expires_at > event.at))
    for basis in sorted(found, key=lambda b: b.id):
        basis.expires_at = event.at
        ended.setdefault(basis.person_id, []).append(basis)
    _audit_ended(session, event, ended)


def _audit_ended(session: Session, event: LinkEvent, ended: dict[str, list[AccessBasis]]) -> None:
    """One entry per person whose bases the event ended, naming each basis."""
    for person, bases in sorted(ended.items()):
        record_audit(session, AuditRecord(
            AuditAction.MPI_LINK_CHANGE, "permit", username=event.by, purpose="governance", patient_id=person,
            reason=f"access bases ended: the {event.kind} (link event #{event.id}) moved records out of or into "
                   f"this person, so each user gives a basis again for the record as it is now",
            detail={"kind": "bases-ended", "link_event": str(event.id),
                    "bases": ", ".join(f"#{b.id} {b.username} ({b.basis})" for b in bases)}))


def _move(session: Session, records: list[PatientRecord], to_person: str, kind: str, by: str,
          reason: str, deciding: int | None = None) -> LinkEvent:
    """`deciding`: the review item whose reviewer's decision this is (`LinkEvent.match_review_id`)."""
    moves = moves_to(records, to_person)
    now = utcnow()
    for record in records:
        record.person_id = to_person
        record.updated_at = now
        record.link_status = "linked"
        record.link_method = "manual" if kind != "unmerge" else record.link_method
    event = LinkEvent(at=now, kind=kind, by=by, reason=reason, moves=moves, match_review_id=deciding)
    session.add(event)
    session.flush()
    flag_joined_registrations(session, moves, by)
    record_audit(session, AuditRecord(AuditAction.MPI_LINK_CHANGE, "permit", username=by, purpose="governance",
                                      patient_id=to_person, reason=reason,
                                      detail={"kind": kind, "link_event": str(event.id), "moves": str(len(moves))}))
    end_bases(session, event)
    return event


def merge_persons(session: Session, keep: str, absorb: str, by: str, reason: str) -> LinkEvent:
    """Move every source record of `absorb` to `keep`: they are one person. Refused when a reviewer separated
    a pair with a record in each (until 2026-12-07 only a reviewer's link was checked): changing that is
    deciding the item again."""
    _hold_links(session)
    return _merge(session, keep, absorb, by, reason)


def _hold_links(session: Session) -> None:
    """A person's decision on links waits for a relink in progress, and a relink for it (`mpi.hold_every_key`):
    until 2026-12-07 a relink wrote over a decision made while it trained."""
    from sharedcare.identity.mpi import hold_every_key  # mpi imports this module

    hold_every_key(session)


def _merge(session: Session, keep: str, absorb: str, by: str, reason: str, deciding: int | None = None) -> LinkEvent:
    """`merge_persons`; `deciding`: the review item being decided, whose own separate does not count, and which
    the merge names."""
    if keep == absorb:
        raise LinkError("a person cannot be merged with themselves")
    for person in (keep, absorb):
        if session.get(Person, person) is None:
            raise LinkError(f"no person {person}")
    apart = _separated(session, keep, absorb, deciding)
    if apart is not None:
        raise LinkError(f"refused: this would put records {apart.record_a} and {apart.record_b} in one person, "
                        f"which {_separation(apart)}; change that decision first (`sharedcare mpi decide "
                        f"{apart.id} --change separate`)")
    records = list(session.scalars(select(PatientRecord).where(PatientRecord.person_id == absorb)))
    _refuse_two_numbers(session, keep, records)
    return _move(session, records, keep, "merge", by, reason, deciding)


def _refuse_two_numbers(session: Session, keep: str, records: list[PatientRecord]) -> None:
    """Two different valid NHS numbers are never one person (HAZ-01): a merge that would join them is
    refused, whoever asks (an operator, a source's A40), naming the numbers by their last four digits."""
    kept = [n for n in session.scalars(select(PatientRecord.nhs_number).where(PatientRecord.person_id == keep)) if n]
    absorbed = [r.nhs_number for r in records if r.nhs_number]
    pair = next(((mine, theirs) for mine in kept for theirs in absorbed if numbers_keep_apart(mine, theirs)), None)
    if pair is not None:
        raise LinkError(f"refused: NHS numbers ending {pair[0][-4:]} and {pair[1][-4:]} are two people; "
                        f"two different valid NHS numbers are never one person")


def merge_source_records(session: Session, org: str, prior_id: str, surviving_id: str, by: str, reason: str,
                         ask: str = "the shared care record's identity team") -> LinkEvent | MatchReview:
    """A source merged two of its own patient records (HL7 A40, FHIR Patient.link replaced-by): the prior
    record moves to the surviving record's person, or the merge is held for review (`source_merge`). Across a
    reviewer's separation it is refused (its message held), the source told the review item to quote and
    whom to ask (`ask`: a desk, never a person); not the records' ids nor the reviewer, which are not its to
    know: `mpi review` and the decision's audit entry name them."""
    def find(source_id: str) -> PatientRecord:
        record = session.scalars(select(PatientRecord).where(PatientRecord.source_org == org,
                                                             PatientRecord.source_id == source_id)).first()
        if record is None:
            raise LinkError(f"{org} has sent no patient '{source_id}'")
        return record

    prior, surviving = find(prior_id), find(surviving_id)
    if prior.person_id == surviving.person_id:
        return _move(session, [], surviving.person_id, "merge", by, reason)
    apart = _separated(session, surviving.person_id, prior.person_id)
    if apart is not None:  # the message is quarantined (MLLP AE), its merge not made
        raise LinkError(f"not merged: the merge of patient '{prior_id}' into '{surviving_id}' is held, because an "
                        f"MPI reviewer decided that these patients' records are two people (MPI review "
                        f"#{apart.id}), a safety decision a source's merge does not overrule; nothing was merged. "
                        f"Ask {ask} to look at it again, quoting MPI review #{apart.id}, then send this message "
                        "again")
    return source_merge(session, prior, surviving, by, reason)


def source_merge(session: Session, retired: PatientRecord, surviving: PatientRecord, by: str,
                 reason: str) -> LinkEvent | MatchReview:
    """A source speaks for its own records only: the retired record alone moves to the surviving record's
    person, and the person it leaves keeps every other record. Until 2026-12-07 the retired record's whole
    person moved, other organisations' records with it: a practice writing a copy of a hospital patient's
    demographics, then marking it replaced-by a Patient with another person's NHS number, moved his hospital
    record into hers. So the merge waits for an MPI reviewer (an `mpi review` pair of the two records, the
    reasons in its evidence) when the retired record's person holds another organisation's record (joining
    them is a claim about others' data), when either record awaits IG review as a practice's self-made record
    (merged, it would count as a care relationship), or when the retired record's NHS number differs from one
    the surviving person holds. Two records of the source with different valid NHS numbers are refused
    (HAZ-01). What the source is told names neither another record nor any number (`LinkError`'s text)."""
    if numbers_keep_apart(retired.nhs_number, surviving.nhs_number):
        raise LinkError(f"refused: {retired.source_org}'s patients '{retired.source_id}' and "
                        f"'{surviving.source_id}' carry different valid NHS numbers, and two different valid NHS "
                        "numbers are never one person")
    why = _merge_needs_review(session, retired, surviving)
    if why:
        return _hold_source_merge(session, retired, surviving, by, reason, why)
    return _move(session, [retired], surviving.person_id, "merge", by, reason)


def _merge_needs_review(session: Session, retired: PatientRecord, surviving: PatientRecord) -> list[str]:
    """Why a source's merge of these records needs a reviewer (`source_merge`), for the reviewer: nothing
    when the source may make it on its own."""
    why = []
    others = sorted(set(session.scalars(select(PatientRecord.source_org).where(
        PatientRecord.person_id == retired.person_id, PatientRecord.source_org != retired.source_org))))
    if others:
        why.append(f"record {retired.id}'s person holds records of {', '.join(others)} too, which a source's "
                   "merge does not move")
    for item, record_id in session.execute(select(ReviewItem.id, ReviewItem.patient_record_id).where(
            ReviewItem.kind == NEW_SOURCE_RECORD, ReviewItem.status != "closed",
            ReviewItem.patient_record_id.in_((retired.id, surviving.id))).order_by(ReviewItem.id)):
        why.append(f"record {record_id} awaits IG review as a practice's self-made record (item #{item})")
    joining = list(session.scalars(select(PatientRecord).where(PatientRecord.person_id == surviving.person_id)
                                   .order_by(PatientRecord.id)))
    for kept in joining:
        if numbers_keep_apart(retired.nhs_number, kept.nhs_number):
            why.append(f"record {retired.id}'s NHS number (ending {str(retired.nhs_number)[-4:]}) differs from "
                       f"record {kept.id}'s ({kept.source_org}, ending {str(kept.nhs_number)[-4:]})")
    return why + _kept_apart(session, retired, [r.id for r in joining])


def _kept_apart(session: Session, retired: PatientRecord, joining: list[int]) -> list[str]:
    """The operators' separations (`separations`) that moving the retired record to these records would undo:
    a person decided they are two people, which a source does not overrule (a reviewer's "separate" is refused
    before: `_separated`). Until 2026-12-07 an A40 or a replaced-by link joined them again silently."""
    why = []
    apart = separations(session, [retired.id, *joining])
    for other in joining:
        event_id = apart.get((min(retired.id, other), max(retired.id, other)))
        if event_id is not None:
            event = session.get_one(LinkEvent, event_id)
            why.append(f"record {retired.id} was kept apart from record {other} by the {event.kind} #{event.id} of "
                       f"{event.by} ({event.at:%Y-%m-%d %H:%M} UTC: {event.reason}), a person's decision that they "
                       "are two people, which a source's merge does not overrule")
    return why


def _hold_source_merge(session: Session, retired: PatientRecord, surviving: PatientRecord, by: str, reason: str,
                       why: list[str]) -> MatchReview:
    """The source's merge as an MPI review pair (its waterfall, and the merge and why it waits, as
    `source_merge` in its evidence), audited; a pair already listed is reopened if only a relink closed it
    (a reviewer's decision stands)."""
    from sharedcare.identity.mpi import stored_match_record  # mpi imports this module
    from sharedcare.identity.realtime import current_model

    now = utcnow()
    note = (f"{now:%Y-%m-%d %H:%M} UTC, {by}: {reason}: record {retired.id} retired into record {surviving.id}; "
            f"held for a reviewer: {'; '.join(why)}")
    a, b = sorted((retired.id, surviving.id))
    item = session.scalars(select(MatchReview).where(MatchReview.record_a == a, MatchReview.record_b == b)).first()
    if item is None:
        model = current_model(session)
        found = levels(features(stored_match_record(retired)), features(stored_match_record(surviving)))
        item = MatchReview(record_a=a, record_b=b, probability=model.score_levels(found).probability,
                           evidence=model.evidence(found) | {"source_merge": note}, created_at=now, status="open")
        session.add(item)
    else:
        item.evidence = {**item.evidence, "source_merge": note}
        if item.status in (RELINK_SAME, RELINK_APART):
            item.status = "open"
    session.flush()
    record_audit(session, AuditRecord(AuditAction.MPI_LINK_CHANGE, "permit", username=by, purpose="governance",
                                      patient_id=retired.person_id, reason=f"{reason}: held for review",
                                      detail={"kind": "merge-held", "review_item": str(item.id),
                                              "records": f"{retired.id} {surviving.id}"}))
    return item


@dataclass
class Unmerged:
    """What an unmerge did, for the operator to check: `event` moved each record the merge moved back to the
    person it came from; `matched_again` are the records that came to the kept person (`kept`) during the
    merge, each now where matching again put it."""

    event: LinkEvent
    kept: str
    matched_again: list[PatientRecord]
    separated: list[MatchReview] = field(default_factory=list)  # reviewers' links the unmerge overruled


def unmerge(session: Session, event_id: int, by: str, reason: str = "") -> Unmerged:
    """Undo one merge exactly: each moved record goes back to the person it came from. A record that came to
    the kept person since the merge is matched again (`mpi.rematch`): it goes where it belongs, or is held
    for review with a note when it conflicts.

    A reviewer's link whose records the unmerge parts (the merge was that link, or joined its records) is
    marked separate, by `by` for `reason` (required then): whoever undoes a link says the records are not
    one person, and a relink keeps a reviewer's link, so left "linked" it would join them again."""
    _hold_links(session)
    event = session.get(LinkEvent, event_id)
    if event is None or event.kind != "merge":
        raise LinkError(f"no merge #{event_id}")
    if event.undone_by is not None:
        raise LinkError(f"merge #{event_id} was already undone by #{event.undone_by}")
    moves = []
    for move in event.moves:
        record = session.get_one(PatientRecord, move.patient_record_id)
        if record.person_id != move.to_person:
            raise LinkError(f"record {record.id} has moved again since merge #{event_id}; undo that first")
        moves.append((record, move))
    parted = _links_parted(session, {record.id: move.from_person for record, move in moves})
    if parted and not reason.strip():
        raise LinkError(f"say why (--reason): undoing merge #{event_id} parts records that review "
                        f"#{parted[0].id} linked ({parted[0].decided_by}), which is then marked separate")
    undo = LinkEvent(at=utcnow(), kind="unmerge", by=by, reason=reason or f"undo merge #{event_id}",
                     moves=[m for record, move in moves for m in moves_to([record], move.from_person)])
    for record, move in moves:
        if session.get(Person, move.from_person) is None:
            session.add(Person(id=move.from_person))
        record.person_id = move.from_person
        record.updated_at = undo.at
        if move.from_status and move.from_method and (record.link_status, record.link_method) == ("linked", "manual"):
            # as the merge found it (a record held for review is held again), unless changed since; not kept
            # before migration 0028
            record.link_status, record.link_method = move.from_status, move.from_method
    session.add(undo)
    session.flush()
    event.undone_by = undo.id
    record_audit(session, AuditRecord(AuditAction.MPI_LINK_CHANGE, "permit", username=by, purpose="governance",
                                      reason=undo.reason, detail={"kind": "unmerge", "link_event": str(undo.id),
                                                                  "undoes": str(event_id)}))
    end_bases(session, undo)
    for item in parted:
        _record_decision(session, item, "separate", by, f"unmerge #{undo.id} of merge #{event_id}: {reason}",
                         undo.at)
    from sharedcare.identity.mpi import hold_matching, match_again, stored_demographics  # mpi imports this module

    joined = _joined_since(session, event)  # matched again in the order they came, as if arriving again
    hold_matching(session, [stored_demographics(r) for r in joined])  # every key at once, as ingest holds them
    for at, record in enumerate(joined):
        match_again(session, record, f"merge #{event_id} was undone", {r.id for r in joined[at + 1:]})
    return Unmerged(undo, event.moves[0].to_person if event.moves else "", joined, parted)


def _links_parted(session: Session, going: dict[int, str]) -> list[MatchReview]:
    """The reviewers' links ("linked") that sending these records (by id) to these persons would part."""
    items = list(session.scalars(select(MatchReview).where(
        MatchReview.status == "linked", or_(MatchReview.record_a.in_(going), MatchReview.record_b.in_(going)))
        .order_by(MatchReview.id)))

    def person(record_id: int) -> str:
        return going.get(record_id) or session.get_one(PatientRecord, record_id).person_id

    return [item for item in items if person(item.record_a) != person(item.record_b)]


def _joined_since(session: Session, merge: LinkEvent) -> list[PatientRecord]:
    """The records that came to the merged person after the merge (new, or moved in), in id order: one of
    the absorbed person's may have linked through the records the merge brought, and belongs with them."""
    if not merge.moves:
        return []
    keep, moved = merge.moves[0].to_person, {m.patient_record_id for m in merge.moves}
    records = [r for r in session.scalars(select(PatientRecord).where(PatientRecord.person_id == keep)
                                          .order_by(PatientRecord.id)) if r.id not in moved]
    moved_in: dict[int, int] = {record: last for record, last in session.execute(
        select(LinkMove.patient_record_id, func.max(LinkEvent.id)).join(LinkEvent)
        .where(LinkMove.to_person == keep, LinkMove.patient_record_id.in_([r.id for r in records]))
        .group_by(LinkMove.patient_record_id))}
    arrived = arrival_times(session, [r.id for r in records if r.id not in moved_in])
    return [r for r in records if (moved_in[r.id] > merge.id if r.id in moved_in
                                   else r.id in arrived and arrived[r.id] > merge.at)]


def separate(session: Session, record_id: int, by: str, reason: str, deciding: int | None = None) -> LinkEvent:
    """Take one source record out of its person into a person of its own (a link that was wrong); relinks keep
    it apart from the records it left (`separations`). A reviewer's link it parts is marked separate, by `by`
    for `reason`, as an unmerge marks one: left "linked", a relink would join the pair again. `deciding`: the
    review item `decide` is deciding, which it marks itself."""
    _hold_links(session)
    record = session.get(PatientRecord, record_id)
    if record is None:
        raise LinkError(f"no source record {record_id}")
    person = Person(id=str(uuid.uuid4()))
    session.add(person)
    session.flush()
    parted = [item for item in _links_parted(session, {record.id: person.id}) if item.id != deciding]
    event = _move(session, [record], person.id, "separate", by, reason, deciding)
    for item in parted:
        _record_decision(session, item, "separate", by, f"separate #{event.id} of record {record.id}: {reason}",
                         event.at)
    return event


def _record_decision(session: Session, item: MatchReview, status: str, by: str, reason: str,
                     at: datetime) -> None:
    """Give a review item the status a person decided, audited. Every decision is kept in the item's
    evidence (`decisions`: when, by whom, the status, the one before, why), as `decided_by` names only the
    latest."""
    was = item.status
    step = {"at": at.isoformat(), "by": by, "status": status, "was": was, "reason": reason}
    item.evidence = {**(item.evidence or {}), "decisions": [*(item.evidence or {}).get("decisions", ()), step]}
    item.status, item.decided_by, item.decided_at = status, by, at
    session.flush()
    record_audit(session, AuditRecord(
        AuditAction.MPI_REVIEW_DECIDED, "permit", username=by, purpose="governance", reason=reason,
        detail={"review": str(item.id), "status": status, "was": was,
                "records": f"{item.record_a} {item.record_b}"}))


def decide(session: Session, review_id: int, decision: Decision, by: str, reason: str = "",
           was: str | None = None) -> MatchReview:
    """A reviewer's decision on a pair; relinking respects it from then on. Audited, with `reason`, which a
    link or a separate (a safety decision) must give.

    An item a reviewer linked or separated (`REVIEWED`) is decided again only as a change: `was` names its
    status as the reviewer read it, with a reason. `was`, whenever given, must still be its status. The item
    is read locked (PostgreSQL's row lock, SQLite's write transaction), so two reviewers deciding one pair
    at once decide one after the other and the second is refused: until 2026-12-07 both went through, the
    pair left joined by one and marked separate by the other. A relink in progress is waited for (`_hold_links`)."""
    _hold_links(session)
    review = session.scalars(select(MatchReview).where(MatchReview.id == review_id).with_for_update()
                             .execution_options(populate_existing=True)).first()
    if review is None:
        raise LinkError(f"no review item #{review_id}")
    _may_decide(review, decision, reason, was)
    a = session.get_one(PatientRecord, review.record_a)
    b = session.get_one(PatientRecord, review.record_b)
    if decision == "link" and a.person_id != b.person_id:
        if numbers_keep_apart(a.nhs_number, b.nhs_number):
            raise LinkError("these records carry different NHS numbers: they cannot be one person")
        _merge(session, a.person_id, b.person_id, by, f"review #{review_id}: same person: {reason}", review.id)
    elif decision == "separate" and a.person_id == b.person_id:
        separate(session, b.id, by, f"review #{review_id}: different people: {reason}", review.id)
    status = {"link": "linked", "separate": "separate", "defer": "deferred"}[decision]
    _record_decision(session, review, status, by, reason, utcnow())
    return review


def _may_decide(review: MatchReview, decision: Decision, reason: str, was: str | None) -> None:
    """Refuse a decision on an item whose status changed since the reviewer read it (`was`), a change of a
    reviewer's link or separate not asked for as one, and a safety decision without a reason."""
    by = f" ({review.decided_by}, {review.decided_at:%Y-%m-%d %H:%M} UTC)" if review.decided_at else ""
    if was is not None and review.status != was:
        raise LinkError(f"review #{review.id} is now '{review.status}'{by}, not '{was}' as read: read it again "
                        f"(`sharedcare mpi review --all`) before deciding")
    if review.status in REVIEWED and was is None:
        raise LinkError(f"review #{review.id} was decided '{review.status}'{by}: to change that decision, "
                        f"decide again with --change {review.status} and a --reason")
    if not reason.strip() and (decision != "defer" or review.status in REVIEWED):
        what = "changing a reviewer's decision" if review.status in REVIEWED else f"a decision to {decision}"
        raise LinkError(f"say why (--reason): {what} is a safety decision, kept with the item and audited")


def _separation(item: MatchReview) -> str:
    """A reviewer's separate, in words: which item, by whom, when."""
    return f"review #{item.id} separated ({item.decided_by}, {item.decided_at:%Y-%m-%d %H:%M} UTC)"


def _separated(session: Session, one: str, other: str, deciding: int | None = None) -> MatchReview | None:
    """A reviewer's "separate" of a pair with a record in each of these persons, other than the item being
    decided again (`deciding`): a merge joining them would undo it silently (and a relink keep the merge)."""
    person_of: dict[int, str] = {record: person for record, person in session.execute(
        select(PatientRecord.id, PatientRecord.person_id).where(PatientRecord.person_id.in_((one, other))))}
    found = select(MatchReview).where(MatchReview.status == "separate", MatchReview.record_a.in_(person_of),
                                      MatchReview.record_b.in_(person_of))
    if deciding is not None:
        found = found.where(MatchReview.id != deciding)
    return next((item for item in session.scalars(found.order_by(MatchReview.id))
                 if person_of[item.record_a] != person_of[item.record_b]), None)


@dataclass
class Merged:
    """What the merges not undone (an operator's, a source's A40, a reviewer's link) still hold, for a
    relink to keep as it keeps a reviewer's link."""

    pairs: set[tuple[int, int]] = field(default_factory=set)  # each record moved with one the person held
    came_from: dict[int, str] = field(default_factory=dict)  # each record moved: the person it left


def merged(session: Session) -> Merged:
    """Each merge not undone, as record pairs: every record it moved that is still where it put it, and that no
    later decision by a person moved (a separation: `DECIDED`), with a record the kept person held before the
    merge (or, with none, with the first record moved)."""
    found = Merged()
    merges = list(session.scalars(select(LinkEvent).where(LinkEvent.kind == "merge", LinkEvent.undone_by.is_(None))
                                  .order_by(LinkEvent.id)))
    last = _last_decided(session, {m.patient_record_id for merge in merges for m in merge.moves})
    for merge in merges:
        if not merge.moves:
            continue
        keep = merge.moves[0].to_person
        here = set(session.scalars(select(PatientRecord.id).where(PatientRecord.person_id == keep)))
        moved = [m for m in merge.moves if m.patient_record_id in here and last.get(m.patient_record_id) == merge.id]
        if not moved:
            continue
        held = sorted(here - {m.patient_record_id for m in merge.moves}
                      - {r.id for r in _joined_since(session, merge)})
        anchor = held[0] if held else moved[0].patient_record_id
        found.pairs |= {(anchor, m.patient_record_id) for m in moved if m.patient_record_id != anchor}
        found.came_from |= {m.patient_record_id: m.from_person for m in moved}
    return found


def separations(session: Session, moving: Collection[int] | None = None) -> dict[tuple[int, int], int]:
    """What operators' separations still hold, for a relink to keep as it keeps a reviewer's "separate" (and a
    source's merge not to undo: `_merge_needs_review`): record pairs, each with the link event that parted it.
    A separation is a `separate` other than a reviewer's (`decide`'s, `LinkEvent.match_review_id`, whose
    review item holds it) or an unmerge: each record it moved, while no later decision by a person moved it
    (`DECIDED`), with each record the person it left held just before (an unmerge's: just before the merge it
    undid). `moving`: only the separations that moved one of these records. Until 2026-12-07 a relink kept
    neither: it joined the records again, and the next correction of the separated record held it for review
    "where that decision put it"; and a reviewer's was told by its reason's text, which an operator could
    write too."""
    found_events = select(LinkEvent).where(LinkEvent.kind.in_(("separate", "unmerge")))
    if moving is not None:
        found_events = found_events.where(LinkEvent.id.in_(select(LinkMove.link_event_id).where(
            LinkMove.patient_record_id.in_(sorted(moving)))))
    events = list(session.scalars(found_events.order_by(LinkEvent.id)))
    last = _last_decided(session, {m.patient_record_id for event in events for m in event.moves})
    found: dict[tuple[int, int], int] = {}
    for event in events:
        moved = [m.patient_record_id for m in event.moves if last.get(m.patient_record_id) == event.id]
        if not moved or event.match_review_id is not None:
            continue
        if event.kind == "unmerge":
            merge = session.scalars(select(LinkEvent).where(LinkEvent.undone_by == event.id)).first()
            if merge is None or not merge.moves:
                continue
            left = _held_before(session, merge.moves[0].to_person, merge)
        else:
            left = _held_before(session, event.moves[0].from_person, event)
        found |= {(min(record, other), max(record, other)): event.id for record in moved for other in left}
    return found


def _last_decided(session: Session, records: Collection[int]) -> dict[int, int]:
    """The last link event a person decided (`DECIDED`) that moved each of these records, by record id."""
    ids, found = sorted(records), {}
    for start in range(0, len(ids), _PERSONS_A_QUERY):
        found.update({record: event for record, event in session.execute(
            select(LinkMove.patient_record_id, func.max(LinkEvent.id)).join(LinkEvent).where(
                LinkEvent.kind.in_(DECIDED), LinkMove.patient_record_id.in_(ids[start:start + _PERSONS_A_QUERY]))
            .group_by(LinkMove.patient_record_id))})
    return found


def _held_before(session: Session, person: str, event: LinkEvent) -> set[int]:
    """The records `person` held just before `event`, but those it moved: a record was where its last earlier
    move took it or, with none, where its first move since took it from, or else it is where it is now; a
    record that arrived after the event (`arrival_times`) was not there."""
    ids = set(session.scalars(select(PatientRecord.id).where(PatientRecord.person_id == person))) | set(
        session.scalars(select(LinkMove.patient_record_id).where(
            or_(LinkMove.from_person == person, LinkMove.to_person == person))))
    ids -= {m.patient_record_id for m in event.moves}
    before: dict[int, str] = {}
    since: dict[int, str] = {}
    for record, at, from_person, to_person in session.execute(
            select(LinkMove.patient_record_id, LinkMove.link_event_id, LinkMove.from_person, LinkMove.to_person)
            .where(LinkMove.patient_record_id.in_(ids)).order_by(LinkMove.link_event_id, LinkMove.id)):
        if at < event.id:
            before[record] = to_person
        else:
            since.setdefault(record, from_person)
    now: dict[int, str] = {record: person_id for record, person_id in session.execute(
        select(PatientRecord.id, PatientRecord.person_id).where(PatientRecord.id.in_(ids)))}
    there = [r for r in ids if before.get(r) == person or (r not in before and since.get(r, now[r]) == person)]
    arrived = arrival_times(session, [r for r in there if r not in before])
    return {r for r in there if r in before or not (r in arrived and arrived[r] > event.at)}


@dataclass
class Settled:
    """The review items one relink closed or reopened, by id."""

    same: list[int] = field(default_factory=list)  # its records now one person
    apart: list[int] = field(default_factory=list)  # its records carry different valid NHS numbers
    reopened: list[int] = field(default_factory=list)  # closed by an earlier relink, now in doubt again


def _relink_links(record: PatientRecord) -> dict[str, Any]:
    """What linked a record in a relink: the record its strongest link joined it to and that link's weight."""
    evidence = record.match_evidence or {}
    return {"record": record.id, "with_record": evidence.get("with_record"),
            "match_weight": evidence.get("match_weight"), "probability": round(record.match_probability, 6)}


def settle_reviews(session: Session, records: Mapping[int, PatientRecord], listed: Container[tuple[int, int]],
                   by: str, at: datetime) -> Settled:
    """After a relink has placed every record (`records`, by id, as it left them), close each open item it
    settled and reopen each it no longer settles; `listed` are the pairs the relink itself put on the list
    (still in doubt, or linked with a discrepancy), which stay open.

    Settled: both records are now in one person (RELINK_SAME), or they carry two different valid NHS
    numbers, which never link (RELINK_APART). Each change is added to the item's evidence (`relinks`: when,
    by whom, the new status, why, and for a link each record's strongest link), and the whole is one audit
    entry naming the items by id. A reviewer's decision is not touched: only open and relink-closed items
    are read."""
    items = session.scalars(select(MatchReview).where(MatchReview.status.in_(("open", RELINK_SAME, RELINK_APART)))
                            .order_by(MatchReview.id))
    return _settle(session, items, records, listed, by, at, "the relink")


def resettle_reviews(session: Session, mine: list[MatchReview], listed: Container[tuple[int, int]], by: str,
                     at: datetime) -> Settled:
    """After a re-match moved or changed one record: the relink's rule applied again to the items of its pairs
    (`mine`) a relink closed, so a pair it no longer settles (the records now in two persons, or a pair the
    re-match puts in doubt, `listed`) is back on the review list at once, not at the next relink. Open items
    are left to the relink and the reviewers."""
    items = sorted((i for i in mine if i.status in (RELINK_SAME, RELINK_APART)), key=lambda i: i.id)
    records = {i: session.get_one(PatientRecord, i) for item in items for i in (item.record_a, item.record_b)}
    return _settle(session, items, records, listed, by, at, "the re-match")


def _settle(session: Session, items: Iterable[MatchReview], records: Mapping[int, PatientRecord],
            listed: Container[tuple[int, int]], by: str, at: datetime, actor: str) -> Settled:
    """`settle_reviews`'s rule on these items; `actor` (the relink, the re-match) is named in each reason."""
    settled = Settled()
    for item in items:
        a, b = records[item.record_a], records[item.record_b]
        if (item.record_a, item.record_b) in listed:
            status, why = "open", f"reopened: {actor} lists the pair again"
        elif a.person_id == b.person_id:
            status, why = RELINK_SAME, f"closed: {actor} put both records in one person"
        elif numbers_keep_apart(a.nhs_number, b.nhs_number):
            status, why = RELINK_APART, "closed: the records carry different valid NHS numbers, never one person"
        else:
            status, why = "open", f"reopened: {actor} put the records in two persons"
        if status == item.status:
            continue
        step: dict[str, Any] = {"at": at.isoformat(), "by": by, "status": status, "reason": why}
        if status == RELINK_SAME:
            step["links"] = [_relink_links(a), _relink_links(b)]
        item.evidence = {**item.evidence, "relinks": [*item.evidence.get("relinks", ()), step]}
        {"open": settled.reopened, RELINK_SAME: settled.same, RELINK_APART: settled.apart}[status].append(item.id)
        item.status = status
    if settled.same or settled.apart or settled.reopened:
        session.flush()
        record_audit(session, AuditRecord(
            AuditAction.MPI_REVIEW_SETTLED, "permit", username=by, purpose="governance",
            reason=f"review items {actor} settled or reopened",
            detail={"one_person": " ".join(map(str, settled.same)),
                    "nhs_numbers_differ": " ".join(map(str, settled.apart)),
                    "reopened": " ".join(map(str, settled.reopened))}))
    return settled
