"""Reading the audit log: the IG officer's search, a citizen's "who looked at my record", and the
FHIR AuditEvent NDJSON export. All read the same hash-chained entries that `audit.py` appends."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, false, func, or_, select, true, union_all
from sqlalchemy.orm import Session

from sharedcare.governance.audit import (
    CITIZEN_PREFIX,
    AuditAction,
    chain_key,
    decision_details,
    entities_of,
    entry_is_genuine,
    expanded,
    minted_by,
)
from sharedcare.governance.audit_forward import as_audit_event
from sharedcare.governance.classify import classification_key, classify
from sharedcare.governance.framework import Framework
from sharedcare.store.models import (
    AuditEntry,
    LinkEvent,
    LinkMove,
    OAuthClient,
    PatientRecord,
    Resource,
    ResourceVersion,
)

# What a citizen sees as an access to their record: reads, emergency reads, a recorded basis, being
# found in a search, being named on the form a user records why they need the record on, an IG officer
# learning whose record an access was to, searching the audit log for the citizen (by NHS number or person id)
# or looking up their choices, a matching reviewer seeing their details on the MPI's review list, and anyone
# else changing their choices (the operator's `sharedcare preferences set`, on the patient's written request:
# the citizen's own changes are theirs, left out as their own reads are). Denied attempts are shown too: a
# refused look is still a look someone tried.
PATIENT_VISIBLE = (AuditAction.RECORD_READ, AuditAction.RECORD_EMERGENCY_READ, AuditAction.RESOURCE_READ,
                   AuditAction.RESOURCE_HISTORY, AuditAction.BASIS_RECORD, AuditAction.PATIENT_SEARCH,
                   AuditAction.PATIENT_IDENTIFY, AuditAction.DEMOGRAPHICS_READ, AuditAction.AUDIT_SEARCH,
                   AuditAction.PREFERENCE_VIEW, AuditAction.PREFERENCE_SET, AuditAction.MPI_REVIEW_VIEW)
ACTION_WORDS = {
    AuditAction.RECORD_READ: "viewed your record",
    AuditAction.RECORD_EMERGENCY_READ: "viewed your record in an emergency",
    AuditAction.RESOURCE_READ: "viewed an item in your record",
    AuditAction.RESOURCE_HISTORY: "viewed earlier versions of an item in your record",
    AuditAction.BASIS_RECORD: "recorded why they needed your record",
    AuditAction.PATIENT_SEARCH: "found you in a search",
    AuditAction.PATIENT_IDENTIFY: "saw who you are on the form to record why they needed your record",
    AuditAction.DEMOGRAPHICS_READ: "saw your name and date of birth (reviewing an access to your record)",
    AuditAction.AUDIT_SEARCH: "looked at the list of who has seen your record (an information governance check)",
    AuditAction.PREFERENCE_VIEW: "looked at your sharing choices",
    AuditAction.PREFERENCE_SET: "changed your sharing choices",
    AuditAction.MPI_REVIEW_VIEW: ("looked at your details to check whether two records are the same person (a "
                                  "data quality check)"),
}
# A basis recorded by a user who had not found the person by a search, or read their record, in the last 24
# hours (gateway.FOUND_BY, FOUND_WITHIN): the record was opened by its id alone (from a URL, a browser's
# history, a log, or computed from a hospital number). The basis's audit entry says so in its decision detail
# (`found: by-id`), the IG review queue has an item for it (review.OPENED_BY_ID), and both the IG audit search
# and the citizen's list say it in words.
FOUND_DETAIL, BY_ID = "found", "by-id"
BY_ID_WORDS = "went straight to your record, without finding you in a search first"
# Beside a look made with a token the service's operators issued in the person's name (`sharedcare token`):
# the name is the account the look was made under, not proof that person looked. The citizen is told so, in
# words, so that a question about it goes to the organisation knowing that; the operator's account on the
# server means nothing to them and is for the IG officer's search, which shows it with the token's id.
MINTED_WORDS = ("using access the shared care record's technical team set up in their name, not by signing "
                "in themselves")
# The account the server's own commands audit under (`cli.OPERATOR`; `sharedcare preferences show` looks up a
# patient's choices), named for a citizen, who knows no such account.
OPERATOR = "cli"
OPERATOR_WORDS = ("The shared care record's technical team", "using the service's own commands")
# Who a look made under a patient portal session (`patient:{person_id}`) was, for a citizen: someone else's
# portal session can name this person only while their records were joined (a false merge), and the id would
# tell the citizen who that other person is; the IG officer's search has it.
CITIZEN_WORDS = "Another person signed in to the patient portal"
# Who carries a patient's choices to the NHS number a source corrected its record to ("ORG:nhs-number-correction",
# as an item about what a feed sent names it, ORG:system; `identity.mpi`), and what the citizen is told of it: the
# account name and the audit's reason (which names the source's record id) read as if their GP overrode them.
NUMBER_CORRECTED = "nhs-number-correction"
NUMBER_CORRECTED_WORDS = ("Your NHS number was corrected", "an automatic update")
NUMBER_CORRECTED_REASON = "your choices were carried to your corrected NHS number; none was removed"
# A registered system's account (`clients.CLIENT_PREFIX`; clients imports the gateway, which imports this
# module), named for a citizen by the name it was registered under, never its client id.
SYSTEM_PREFIX = "client:"
SYSTEM_ROLE_WORDS = "a computer system"
# A resource read says what kind of item was looked at (a citizen has no use for its id).
ITEM_WORDS = {
    "Patient": "viewed your personal details",
    "Condition": "viewed a problem or diagnosis in your record",
    "MedicationStatement": "viewed a medicine in your record",
    "AllergyIntolerance": "viewed an allergy in your record",
    "Observation": "viewed a test result or measurement in your record",
    "DiagnosticReport": "viewed a test report in your record",
    "Encounter": "viewed an appointment or stay in your record",
    "Procedure": "viewed a procedure in your record",
    "Immunization": "viewed a vaccination in your record",
    "CarePlan": "viewed a care plan in your record",
    "DocumentReference": "viewed a letter or document in your record",
}
# Beside an entry whose hash is not the service's (written into the database by someone without the chain's
# key): shown, not hidden, so that the citizen knows something is wrong, but not as a fact. `audit verify`
# and the forwarder name the same entry to the operators.
UNVERIFIED_WORDS = ("This entry could not be verified: it may not have been recorded by the shared care "
                    "record, and may not be true. Please tell the information governance team.")


@dataclass(frozen=True)
class Holding:
    """A time during which audit entries about `person_id` were about a record the person now holds:
    from `start` (None: from the beginning) until `end` (None: still)."""

    person_id: str
    start: datetime | None
    end: datetime | None


def arrival_times(session: Session, records: list[int]) -> dict[int, datetime]:
    """When each source record came into the store: the earliest receipt of anything sent with it. Ingest
    writes a record with what its first message sent (a Patient, or a result whose Patient comes later),
    in one transaction, and every later version sent with the record, kept or superseded, is received
    after it; the model keeps no creation time of its own (`updated_at` moves with each update)."""
    current = select(Resource.patient_record_id.label("record"), Resource.received_at.label("at")).where(
        Resource.patient_record_id.in_(records))
    superseded = select(ResourceVersion.patient_record_id, ResourceVersion.received_at).where(
        ResourceVersion.resource_id.in_(select(Resource.id).where(Resource.patient_record_id.in_(records))),
        ResourceVersion.patient_record_id.in_(records))
    sent = union_all(current, superseded).subquery()
    return {record: at for record, at in session.execute(
        select(sent.c.record, func.min(sent.c.at)).group_by(sent.c.record))}


def holdings(session: Session, person_id: str) -> list[Holding]:
    """Every person id that one of this person's source records belonged to, and when. A merge or a relink
    moves records between persons, and the audit names the person a read was about at the time; so a
    record's moves (LinkMove) say which earlier entries were about it, from when the record arrived: a
    look at the person it was first linked to, before it existed, was not a look at it. A record with
    nothing sent with it (not one ingest made) is dated from its first move: earlier looks are not
    known to be about it.

    A record that never moved is dated only if some record ever left this person: otherwise every
    earlier look at this person id was at records it holds now, and dating them (reading every resource
    row of the person) would change nothing."""
    records = list(session.scalars(select(PatientRecord.id).where(PatientRecord.person_id == person_id)))
    moves = session.execute(
        select(LinkMove.patient_record_id, LinkMove.from_person, LinkEvent.at)
        .join(LinkEvent, LinkEvent.id == LinkMove.link_event_id)
        .where(LinkMove.patient_record_id.in_(records)).order_by(LinkEvent.at, LinkMove.id)).all()
    left = session.scalar(select(LinkMove.id).where(LinkMove.from_person == person_id).limit(1)) is not None
    dated = records if left else sorted({record for record, _, _ in moves})
    arrived = arrival_times(session, dated) if dated else {}
    start: dict[int, datetime | None] = {record: arrived.get(record) for record in records}
    found = set()
    for record, before, at in moves:
        if start[record] is not None:
            found.add(Holding(before, start[record], at))
        start[record] = at
    found.update(Holding(person_id, since, None) for since in start.values())
    return sorted(found, key=lambda h: (h.person_id, h.start or datetime.min.replace(tzinfo=UTC)))


def holders_now(session: Session, person_id: str, at: datetime) -> list[str]:
    """Who holds now the source records that `person_id` held at `at`: an access recorded then was to the
    person as they were, and a merge, relink or separation since may have moved those records on (to the
    person a merge kept, or to two people after a separation). The person who holds most of them first;
    `[person_id]` if they held none then (nothing to follow)."""
    moved = select(LinkMove.patient_record_id).where(
        or_(LinkMove.from_person == person_id, LinkMove.to_person == person_id))
    candidates = dict(session.execute(select(PatientRecord.id, PatientRecord.person_id).where(
        or_(PatientRecord.person_id == person_id, PatientRecord.id.in_(moved)))).all())
    then = dict(candidates)  # each record's person at `at`: its first move after `at` says whom it left
    later = session.execute(
        select(LinkMove.patient_record_id, LinkMove.from_person)
        .join(LinkEvent, LinkEvent.id == LinkMove.link_event_id)
        .where(LinkMove.patient_record_id.in_(candidates), LinkEvent.at > at)
        .order_by(LinkEvent.at.desc(), LinkMove.id.desc()))
    for record, before in later:  # newest first, so the earliest move after `at` is written last
        then[record] = before
    held = [candidates[record] for record, person in then.items() if person == person_id]
    counts = {holder: held.count(holder) for holder in held}
    return sorted(counts, key=lambda holder: (-counts[holder], holder != person_id, holder)) or [person_id]


def _during(span: Holding) -> ColumnElement[bool]:
    """Entries about the span's person id within its time."""
    clause = AuditEntry.patient_id == span.person_id
    if span.start is not None:
        clause &= AuditEntry.recorded_at >= span.start
    if span.end is not None:
        clause &= AuditEntry.recorded_at < span.end
    return clause


def _about(held: list[Holding], *, own_reads: bool, joined: Sequence[Holding] = ()) -> ColumnElement[bool]:
    """Entries about any of these holdings; unless `own_reads`, without the citizen's own reads: those made
    under a portal session of the person id a holding is of, except within `joined` (`_joined_spans`), when
    that id held another person's record too and whoever signed in as it may have been that other person."""
    clauses = []
    for holding in held:
        clause = _during(holding)
        if not own_reads:
            clause &= or_(AuditEntry.username.is_(None),
                          AuditEntry.username != f"{CITIZEN_PREFIX}{holding.person_id}",
                          *(_during(span) for span in joined if span.person_id == holding.person_id))
        clauses.append(clause)
    return or_(false(), *clauses)


def persons_with(session: Session, nhs_number: str) -> list[str]:
    """Every person id holding a source record with this NHS number now (the MPI's links): more than one
    while records that share it are kept apart, or after an unmerge."""
    return sorted(set(session.scalars(select(PatientRecord.person_id)
                                      .where(PatientRecord.nhs_number == nhs_number))))


def persons_now(session: Session, person_id: str) -> list[str]:
    """Who a person id is now: itself while it holds a source record (or if it never held one); once a merge or
    relink has moved every record it held away, whoever holds now the records it held just before the move
    that emptied it (`holders_now`, as the review queue follows an access). An IG officer may search by an id
    from an older entry or a complaint: the patient is the person it is now."""
    if session.scalar(select(PatientRecord.id).where(PatientRecord.person_id == person_id).limit(1)) is not None:
        return [person_id]
    emptied = session.scalar(select(func.max(LinkEvent.at)).join(LinkMove, LinkMove.link_event_id == LinkEvent.id)
                             .where(LinkMove.from_person == person_id))
    if emptied is None:
        return [person_id]
    return holders_now(session, person_id, emptied - timedelta(microseconds=1))


def _about_person(session: Session, person_id: str) -> ColumnElement[bool]:
    """Entries recorded about this person id, and those about the records it holds now from before a merge
    or relink brought them together (or after an unmerge took them away)."""
    return or_(AuditEntry.patient_id == person_id, _about(holdings(session, person_id), own_reads=True))


def search(session: Session, *, patient_id: str | None = None, persons: Sequence[str] | None = None,
           username: str | None = None, organisation: str | None = None, since: datetime | None = None,
           until: datetime | None = None, actions: tuple[str, ...] | None = None,
           limit: int = 1000) -> list[AuditEntry]:
    """Audit entries matching every criterion given, newest first. A patient criterion (a person id, or
    `persons`: any of these, as an NHS number resolves; none matches nothing) finds the entries about each
    person and about the records it holds now (`_about_person`); a person id a merge or relink has since
    emptied, those of the persons it is now too (`persons_now`)."""
    stmt = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)
    if patient_id:
        named = dict.fromkeys([patient_id, *persons_now(session, patient_id)])
        stmt = stmt.where(or_(*(_about_person(session, person) for person in named)))
    if persons is not None:
        stmt = stmt.where(or_(false(), *(_about_person(session, person) for person in persons)))
    if username:
        stmt = stmt.where(AuditEntry.username == username)
    if organisation:
        stmt = stmt.where(AuditEntry.organisation == organisation)
    if since:
        stmt = stmt.where(AuditEntry.recorded_at >= since)
    if until:
        stmt = stmt.where(AuditEntry.recorded_at < until)
    if actions:
        stmt = stmt.where(AuditEntry.action.in_(actions))
    return list(session.scalars(stmt))


@dataclass(frozen=True)
class Found:
    """A page of an audit search: the entries shown, newest first, and whether more matched."""

    entries: list[AuditEntry]
    more: bool
    unverified: frozenset[int]  # the entries shown (by seq) whose hash is not the service's
    persons: tuple[str, ...] = ()  # the person ids an NHS number given as a criterion resolved to
    now: tuple[str, ...] = ()  # who a person id given as a criterion is now (`persons_now`: itself, unless emptied)

    def audit_detail(self, criteria: Mapping[str, object]) -> dict[str, str]:
        """What the search's own audit entry records: the criteria given, who a person id given is now if that
        is someone else (a merge moved its records), and what was shown (how many entries, their span of the
        chain, whether more matched), so that it can be found again."""
        shown = {"entries": str(len(self.entries))}
        named = criteria.get("patient_id")
        if named and self.now != (named,):
            shown["person_now"] = " ".join(self.now)
        if self.entries:
            shown |= {"newest_seq": str(self.entries[0].seq), "oldest_seq": str(self.entries[-1].seq)}
        if self.more:
            shown["more"] = "true"
        return {name: str(value) for name, value in criteria.items() if value} | shown


def search_page(session: Session, limit: int, **criteria: Any) -> Found:
    """Up to `limit` entries of `search`, and whether more matched (one more is read to tell); who a person id
    searched by is now, for the search's own audit entry."""
    entries = search(session, limit=limit + 1, **criteria)
    key = chain_key(session)
    named = criteria.get("patient_id")
    return Found(entries[:limit], len(entries) > limit,
                 frozenset(entry.seq for entry in entries[:limit] if not entry_is_genuine(entry, key)),
                 now=tuple(persons_now(session, named)) if named else ())


def requested_resource(entry: AuditEntry) -> str | None:
    """The resource a resource read asked for (`Condition/{id}`): the entity in the role of a domain
    resource (audit.py), whether it was released or refused. A history released before 2026-12-07 named
    only its versions (`Condition/{id}/_history/2`): the resource is read from them. None for an event not
    of that shape."""
    for entity in entities_of(entry.event):
        role, what = entity.get("role"), entity.get("what")
        if isinstance(role, dict) and role.get("code") == "4" and isinstance(what, dict):
            reference = what.get("reference")
            return reference if isinstance(reference, str) else None
    if entry.action != AuditAction.RESOURCE_HISTORY.value:
        return None
    versions = [str(entity["what"].get("reference", "")) for entity in expanded(entry.event).get("entity", [])
                if isinstance(entity.get("what"), dict)]
    versions += details(entry).get("versions", "").split(", ")
    return next((version.partition("/_history/")[0] for version in versions if "/_history/" in version), None)


def describe(entry: AuditEntry) -> str:
    """What someone did, in a citizen's words."""
    action = AuditAction(entry.action)
    if action == AuditAction.RESOURCE_READ:
        resource = requested_resource(entry) or ""
        return ITEM_WORDS.get(resource.partition("/")[0], ACTION_WORDS[action])
    if action == AuditAction.BASIS_RECORD and details(entry).get(FOUND_DETAIL) == BY_ID:
        return f"{ACTION_WORDS[action]} ({BY_ID_WORDS})"
    return ACTION_WORDS.get(action, entry.action)


def details(entry: AuditEntry) -> dict[str, str]:
    """The decision details (basis, reason, rule...) recorded in the event; none for an event not of that
    shape (`audit.decision_details`)."""
    return decision_details(entry.event)


@dataclass(frozen=True)
class IngestRun:
    """An operator's ingest or replay run as the log holds it: the entry of its start and, once it ended, of its
    end (its `cli` write, which names the same run); None for a run killed part-way, or still running."""

    run: str
    start: AuditEntry
    end: AuditEntry | None
    unverified: bool  # an entry of it whose hash is not the service's (`audit verify` names it)


def ingest_runs(session: Session) -> list[IngestRun]:
    """Every run whose start the log holds, newest first, each paired with its end by the run id both name. A
    run's data is committed as it goes, so one with no end may have written records no other entry names."""
    key = chain_key(session)
    ends: dict[str, AuditEntry] = {}
    runs: list[IngestRun] = []
    ours = select(AuditEntry).where(AuditEntry.username == OPERATOR,
                                    AuditEntry.action.in_((AuditAction.INGEST_START, AuditAction.RECORD_WRITE)))
    for entry in session.scalars(ours.order_by(AuditEntry.seq.desc())):  # newest first: a run's end before its start
        run = details(entry).get("run")
        if run and entry.action == AuditAction.RECORD_WRITE:
            ends[run] = entry
        elif run:
            end = ends.pop(run, None)
            runs.append(IngestRun(run, entry, end, not all(entry_is_genuine(e, key) for e in (entry, end) if e)))
    return runs


@dataclass(frozen=True)
class Access:
    """One line of a citizen's access log, in words."""

    when: datetime
    username: str
    who: str
    role: str
    organisation: str
    what: str
    basis: str
    reason: str
    outcome: str
    how: str = ""  # MINTED_WORDS for a look made with a token an operator minted
    unverified: str = ""  # UNVERIFIED_WORDS for an entry whose hash is not the service's
    seq: int = 0  # the audit entry's sequence number (where a page of the list starts)


@dataclass(frozen=True)
class AccessPage:
    """A page of a citizen's access log, newest first; `older` is where the next page starts, if any."""

    accesses: list[Access]
    older: int | None


# In place of a reason written while the record was joined to another person's (a link later separated or
# undone): the reason may be about them alone.
REASON_ABOUT_ANOTHER = "not shown: recorded while your record was joined to another person's"
# A look at the record while it was joined to another person's, generalised (see accesses_of).
JOINED_LOOK = "looked at your record while it was joined to another person's"
NOT_SHOWN = "not shown"
_ITEM_READS = (AuditAction.RESOURCE_READ.value, AuditAction.RESOURCE_HISTORY.value)
# A look at an item the person may not see in their own record (a category the patient role sees nothing of,
# tier 0: safeguarding, which can put them at risk if someone with them reads it) is listed as a look at
# their record, and the reason the user gave (an S42 enquiry, naming who is suspected) is held back, there and
# wherever else the same user gave the same reason about this person, on any page (the basis it was read under:
# `_held_back_reasons`): who, when, from
# where and on what basis are still shown, and the organisation named can give the reason after its
# safeguarding lead has weighed the risk (docs/architecture.md, on what "Who has looked" says of a look at
# what the patient may not see; hazard HAZ-15).
HELD_BACK_WHAT = ACTION_WORDS[AuditAction.RECORD_READ]
HELD_BACK_REASON = "not shown here: the organisation named can tell you"


def accesses_of(session: Session, fw: Framework, person_id: str, before: int | None = None,
                limit: int = 100) -> AccessPage:
    """Everyone else's looks at the records this person holds, including those made while a record
    belonged to another person id (before a merge or a relink), the citizen's own reads left out.

    A look made while the record was joined to another person's (a link since separated or undone, whichever
    person's id the look was recorded under: a merge keeps either) was a look at that person as much as at
    this one, and who looked, in what role, at which organisation, says
    what care they had (a mental health clinician, a sexual health clinic). So:
    - a read of one item is listed only if the item is in one of this person's own source records (their
      own data was released to that person, whom they have a right to know); the other person's items are
      not listed at all, and the reason, written about the joined record, is not shown;
    - a look at the whole joined record (a record read, a search, a basis, an IG officer's check) is listed
      generalised, with when and whether it was refused but no name, role, organisation or reason: the
      citizen keeps the right to know their record was looked at, and the IG officer's audit search has
      the whole entry if they ask who.
    A look under a person id wholly merged into this one, made when that id held only records this person
    holds now, was at these records alone, and is shown whole.
    An entry whose hash is not the service's (`entry_is_genuine`) is shown with UNVERIFIED_WORDS: it may
    name a look that never happened, and hiding it would hide that someone wrote into the log.

    The page's entries are chosen before items of other people are left out, so a page may hold fewer than
    `limit`; `older` still says where the next one starts."""
    held = holdings(session, person_id)
    own = set(session.scalars(select(PatientRecord.id).where(PatientRecord.person_id == person_id)))
    joined = _joined_spans(session, {h.person_id for h in held}, own)
    stmt = (select(AuditEntry).where(_about(held, own_reads=False, joined=joined),
                                     AuditEntry.action.in_([a.value for a in PATIENT_VISIBLE]))
            .order_by(AuditEntry.seq.desc()).limit(limit + 1))
    if before is not None:
        stmt = stmt.where(AuditEntry.seq < before)
    entries = list(session.scalars(stmt))
    older = entries[limit - 1].seq if len(entries) > limit else None
    entries = entries[:limit]
    key = chain_key(session)
    genuine = {entry.seq for entry in entries if entry_is_genuine(entry, key)}
    item_reads = [entry for entry in entries if entry.action in _ITEM_READS and entry.seq in genuine]
    mine = _own_items(session, item_reads, own)
    held_back = _held_back(session, fw, item_reads)
    secret = _held_back_reasons(session, fw, held, joined)
    systems = {cid: name for cid, name in session.execute(select(OAuthClient.client_id, OAuthClient.name))} if any(
        (entry.username or "").startswith(SYSTEM_PREFIX) for entry in entries) else {}
    page = []
    for entry in entries:
        was_joined = any(_covers(span, entry) for span in joined)
        # an entry that is not the service's is read from its columns alone: its event may hold anything
        item = requested_resource(entry) if entry.action in _ITEM_READS and entry.seq in genuine else None
        whole_record = item is None or item == f"Patient/{entry.patient_id}"
        if not whole_record and entry.seq not in mine:
            continue  # an item of another person's record
        if was_joined and whole_record:
            access = _joined_look(entry)
        else:
            access = _access(fw, entry, hide_reason=was_joined, genuine=entry.seq in genuine, systems=systems)
            if entry.seq in held_back:
                access = replace(access, what=HELD_BACK_WHAT)
            if access.reason and entry.seq in genuine and (entry.username, details(entry).get("reason")) in secret:
                access = replace(access, reason=HELD_BACK_REASON)
        page.append(access if entry.seq in genuine else replace(access, unverified=UNVERIFIED_WORDS))
    return AccessPage(page, older)


def _joined_spans(session: Session, person_ids: set[str], own: set[int]) -> list[Holding]:
    """When each of these person ids held a source record that is not one of `own` (this person's records
    now): an entry about that id then was about a record joined to another person's. Each record's span
    under an id runs from its arrival (or the move that brought it) to the move that took it away."""
    moved = select(LinkMove.patient_record_id).where(
        or_(LinkMove.from_person.in_(person_ids), LinkMove.to_person.in_(person_ids)))
    foreign = dict(session.execute(select(PatientRecord.id, PatientRecord.person_id).where(
        or_(PatientRecord.person_id.in_(person_ids), PatientRecord.id.in_(moved)),
        PatientRecord.id.not_in(own) if own else true())).all())
    if not foreign:
        return []
    moves = session.execute(
        select(LinkMove.patient_record_id, LinkMove.from_person, LinkMove.to_person, LinkEvent.at)
        .join(LinkEvent, LinkEvent.id == LinkMove.link_event_id)
        .where(LinkMove.patient_record_id.in_(foreign)).order_by(LinkEvent.at, LinkMove.id)).all()
    arrived = arrival_times(session, list(foreign))
    spans, holder, since = [], {}, {}
    for record, before, after, at in moves:
        if record not in holder:
            holder[record], since[record] = before, arrived.get(record)
        spans.append(Holding(holder[record], since[record], at))
        holder[record], since[record] = after, at
    for record, now in foreign.items():
        spans.append(Holding(now, since[record] if record in holder else arrived.get(record), None))
    return [span for span in spans if span.person_id in person_ids]


def _covers(span: Holding, entry: AuditEntry) -> bool:
    return (span.person_id == entry.patient_id and (span.start is None or span.start <= entry.recorded_at)
            and (span.end is None or entry.recorded_at < span.end))


def _own_items(session: Session, entries: list[AuditEntry], own: set[int]) -> set[int]:
    """The entries (by seq) among these item reads whose item is, or was in some version, in one of `own`."""
    asked = {entry.seq: (requested_resource(entry) or "").partition("/")[2] for entry in entries}
    ids = {resource for resource in asked.values() if resource}
    if not ids or not own:
        return set()
    found = set(session.scalars(select(Resource.id).where(Resource.id.in_(ids),
                                                         Resource.patient_record_id.in_(own))))
    found.update(session.scalars(select(ResourceVersion.resource_id).where(
        ResourceVersion.resource_id.in_(ids), ResourceVersion.patient_record_id.in_(own))))
    return {seq for seq, resource in asked.items() if resource in found}


def _held_back_reasons(session: Session, fw: Framework, held: list[Holding],
                       joined: Sequence[Holding]) -> set[tuple[str | None, str | None]]:
    """(user, reason) of every read about this person, on any page, of an item the patient role sees nothing
    of: the reason given with it is held back wherever else the same user gave it. Read from all of the
    person's item reads, not the page's: a page drawn from the newest entries showed an S42 reason given with
    a social worker's later reads while the safeguarding read itself had moved to the next page (review of
    2026-12-07)."""
    reads = list(session.scalars(select(AuditEntry).where(_about(held, own_reads=False, joined=joined),
                                                          AuditEntry.action.in_(_ITEM_READS))))
    hidden = _held_back(session, fw, reads)
    return {(entry.username, details(entry).get("reason")) for entry in reads if entry.seq in hidden}


def _held_back(session: Session, fw: Framework, entries: list[AuditEntry]) -> set[int]:
    """The entries (by seq) among these item reads whose item is in a category the patient role sees nothing
    of (its category now, classified afresh if stored under another framework, as the gateway reads it)."""
    asked = {entry.seq: (requested_resource(entry) or "").partition("/")[2] for entry in entries}
    ids = {resource for resource in asked.values() if resource}
    if not ids:
        return set()
    citizen, current = fw.roles.get("patient"), classification_key(fw)
    hidden = set()
    for resource_id, source_org, category, key in session.execute(
            select(Resource.id, Resource.source_org, Resource.category, Resource.category_key)
            .where(Resource.id.in_(ids))):
        if category is None or key != current:
            org = fw.organisation(source_org)
            content = session.scalars(select(Resource.content).where(Resource.id == resource_id)).one()
            category = classify(content, org.kind if org else "unknown", fw)
        if citizen is None or citizen.tier(category) <= 0:
            hidden.add(resource_id)
    return {seq for seq, resource in asked.items() if resource in hidden}


def _joined_look(entry: AuditEntry) -> Access:
    """A look at the whole record while it was joined to another person's: when, and whether refused."""
    return Access(when=entry.recorded_at, username="", who="Someone", role=NOT_SHOWN, organisation=NOT_SHOWN,
                  what=JOINED_LOOK, basis="", reason=REASON_ABOUT_ANOTHER,
                  outcome="refused" if entry.outcome == "deny" else "allowed", seq=entry.seq)


def _access(fw: Framework, entry: AuditEntry, *, hide_reason: bool, genuine: bool = True,
            systems: Mapping[str, str] | None = None) -> Access:
    """One entry in a citizen's words; one the service did not write (`genuine` False) from its columns alone:
    who, when, what kind of look and whether refused, none of its event's details (a reason, an item).
    `systems` names registered systems by client id. No account name or record id reaches the citizen."""
    user = fw.users.get(entry.username or "")
    org = fw.organisation(entry.organisation or "")
    role = fw.roles.get(user.role) if user else None
    info = details(entry) if genuine else {}
    reason = info.get("reason", "")
    if reason and hide_reason:
        reason = REASON_ABOUT_ANOTHER
    if user:
        who, role_label = user.name, role.label if role else "unknown role"
    elif entry.username == OPERATOR:
        who, role_label = OPERATOR_WORDS
    elif (entry.username or "").startswith(CITIZEN_PREFIX):
        citizen = fw.roles.get("patient")  # the role a portal session has (`gateway.citizen_actor`)
        who, role_label = CITIZEN_WORDS, citizen.label if citizen else "unknown role"
    elif (entry.username or "").endswith(f":{NUMBER_CORRECTED}"):
        (who, role_label), reason = NUMBER_CORRECTED_WORDS, NUMBER_CORRECTED_REASON if reason else ""
    elif (entry.username or "").startswith(SYSTEM_PREFIX):
        who = (systems or {}).get((entry.username or "").removeprefix(SYSTEM_PREFIX)) or "A computer system"
        role_label = SYSTEM_ROLE_WORDS
    else:
        who, role_label = entry.username or "unknown", "unknown role"  # a user the framework no longer lists
    return Access(
        when=entry.recorded_at, username=entry.username or "", who=who, role=role_label,
        organisation=org.name if org else (entry.organisation or ""),
        what=describe(entry) if genuine else ACTION_WORDS.get(AuditAction(entry.action), entry.action),
        basis=(info.get("basis") or "").replace("-", " "), reason=reason,
        outcome="refused" if entry.outcome == "deny" else "allowed",
        how=MINTED_WORDS if genuine and minted_by(entry.event) else "", seq=entry.seq)


# A citizen's list shows one visit as one line: a clinician finding the person, recording why and opening the
# record are three entries in the log, and one look to the person whose record it is. A visit is one
# person's looks, from one organisation in one role (and the same way of signing in), each within
# VISIT_MINUTES of the visit's first, with no one else's look between them. Every entry is still listed,
# inside the visit; a refused one is said so on the visit's line; an entry that could not be verified, and a
# look at the record while it was joined to another person's (which names no one), is never grouped.
VISIT_MINUTES = 10


@dataclass(frozen=True)
class Visit:
    """One line of a citizen's "who has looked": a visit's entries, oldest first."""

    accesses: tuple[Access, ...]

    @property
    def first(self) -> Access:
        return self.accesses[0]

    @property
    def last(self) -> Access:
        return self.accesses[-1]

    @property
    def refused(self) -> int:
        return sum(1 for a in self.accesses if a.outcome == "refused")

    @property
    def what(self) -> str:
        """What they did, in the order they did it, each once ("found you in a search, recorded why they needed
        your record, then viewed your record"); a repeated step says how often ("viewed your record 3 times"),
        and a refused one says so."""
        done: dict[tuple[str, str], int] = {}
        for access in self.accesses:
            key = (access.what, access.outcome)
            done[key] = done.get(key, 0) + 1
        steps = [what + (f" {n} times" if n > 1 else "") + (" (refused)" if outcome == "refused" else "")
                 for (what, outcome), n in done.items()]
        return steps[0] if len(steps) == 1 else ", ".join(steps[:-1]) + ", then " + steps[-1]

    @property
    def why(self) -> list[str]:
        """Each reason the visit recorded, once ("explicit consent: review of care after discharge")."""
        said = [": ".join(part for part in (a.basis, a.reason) if part) for a in self.accesses]
        return list(dict.fromkeys(why for why in said if why))


def _same_visit(visit: list[Access], access: Access) -> bool:
    first = visit[0]
    return (bool(access.username) and not access.unverified and not first.unverified
            and (access.username, access.organisation, access.role, access.how)
            == (first.username, first.organisation, first.role, first.how)
            and access.when - first.when <= timedelta(minutes=VISIT_MINUTES))


def visits(accesses: Sequence[Access]) -> list[Visit]:
    """A page's accesses (newest first) as visits, newest first (see VISIT_MINUTES)."""
    found: list[list[Access]] = []
    for access in reversed(accesses):  # oldest first, so that a visit runs from its first look
        if found and _same_visit(found[-1], access):
            found[-1].append(access)
        else:
            found.append([access])
    return [Visit(tuple(visit)) for visit in reversed(found)]


@dataclass(frozen=True)
class VisitPage:
    """A page of a citizen's "who has looked", as visits; `older` is where the next page starts, if any."""

    visits: list[Visit]
    older: int | None

    @property
    def entries(self) -> int:
        return sum(len(visit.accesses) for visit in self.visits)


def visit_page(page: AccessPage) -> VisitPage:
    """The page's accesses as visits. When there are earlier entries, the page's oldest visit may go on
    among them: it is left to the next page, which then starts at it (unless it is the page's only one)."""
    found = visits(page.accesses)
    if page.older is None or len(found) < 2:
        return VisitPage(found, page.older)
    kept = found[:-1]
    return VisitPage(kept, min(access.seq for access in kept[-1].accesses))


def export_ndjson(session: Session, through: int | None = None, unverified: list[int] | None = None) -> Iterator[str]:
    """Every audit entry in chain order (up to `through`) as one FHIR AuditEvent per line (id = sequence number),
    each carrying its place in the chain as the forwarder's copy does (`audit_forward.as_audit_event`) and whether
    it verified (`entry_is_genuine`). One that did not is written from its columns alone (`audit.columns_event`:
    its event may hold anything, and is not presented as fact), and its seq added to `unverified`."""
    key = chain_key(session)
    stmt = select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=1000)
    for entry in session.scalars(stmt if through is None else stmt.where(AuditEntry.seq <= through)):
        genuine = entry_is_genuine(entry, key)
        if not genuine and unverified is not None:
            unverified.append(entry.seq)
        event: dict[str, Any] = {"id": str(entry.seq), **as_audit_event(entry, verified=genuine)}
        yield json.dumps(event, separators=(",", ":"), sort_keys=True)
