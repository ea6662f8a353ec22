"""The way out for secondary use: pseudonymised extracts of many people, decided person by person.

The counterpart of `gateway.GovernedRecords` for planning and research. `SecondaryUse` is bound to one
actor and one non-identifiable purpose; it checks the request (`policy.check_secondary_request`),
streams the store person by person, asks `policy.decide_secondary` what of each person may go (the
national data opt-out, objections, agreements, always-withheld labels, sensitive categories, tiers),
and hands out only what was released, pseudonymised (`pseudonymise.py`). Kick-off, completion, each
download and each refusal are audited; the audit holds counts, never people or content.

The inputs of the decision (agreements, everybody's choices) are read once when the stream starts, so
one extract is one consistent snapshot. The stream also notes which persons it included and whose data it
released (`ExportCounts.persons`, `source_orgs`: internal ids, recorded by the run, never in the files or
the audit). A choice that restricts (an opt-out, an objection) made after an export's kick-off by a person
it included, or by a person on the other side of a pair waiting on MPI review from one (`pairs_on_review`),
or an agreement stopped after it of an organisation whose data it holds (or the exporter's), withdraws that
export, before its files are published or at the next poll or download
(`export.jobs._Changes`); the next export follows the change.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Text, and_, bindparam, case, cast, distinct, func, or_, select
from sqlalchemy.orm import Session, aliased

from sharedcare.clock import utcnow
from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.governance.agreements import effective_agreements
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.classify import classification_key, classify
from sharedcare.governance.consent import Choices, combined_choices
from sharedcare.governance.framework import Agreement, Framework
from sharedcare.governance.gateway import (
    AccessDenied,
    DemographicsRule,
    NotFound,
    carrying_death,
    demographics_rule,
)
from sharedcare.governance.policy import Actor, Decision, Item, Request, check_secondary_request, decide_secondary
from sharedcare.governance.pseudonymise import Pseudonymiser, Shaped, Unreadable
from sharedcare.governance.review import NOTHING_ON_REVIEW, OnReview, everyone_on_review
from sharedcare.governance.small_cells import SmallCells
from sharedcare.identity.review_list import WAITING
from sharedcare.store.database import Database
from sharedcare.store.models import MatchReview, PatientRecord, Preference, Resource

NO_CHOICES = Choices()
# withheld-count key of a released resource left without an element FHIR requires once shaped (e.g. a
# MedicationStatement whose drug is neither coded nor a contained, coded Medication): it is not exported
INCOMPLETE = "required-element-uncoded"
CODING_NOT_KEPT = "code-system-not-kept"  # pseudonymise.CODE_SYSTEMS
# codings-withheld key of a reference by ODS code, or a `meta.source`, naming an organisation whose records the
# export may not hold (`pseudonymise.hidden_organisations`: the mental health trust an ambulance conveyed to)
SERVICE_NOT_KEPT = "organisation-of-a-withheld-service"
# the "type" of a person's Patient the export was not asked for: written beside the others for the small-cell
# check, then deleted (`export/jobs.py`), never published
UNPUBLISHED_PATIENT = "Patient.unpublished"


def pairs_on_review(session: Session, among: list[str] | None = None) -> list[tuple[str, str]]:
    """The persons on the two sides of each pair of records the MPI holds apart awaiting review (open or
    deferred); with `among`, only the pairs with one of these persons on a side. In an extract each takes the
    choices of the other (`SecondaryUse._choices`), so a choice of one made after an export's kick-off
    withdraws an export holding the other (`export.jobs._holding`)."""
    a, b = aliased(PatientRecord), aliased(PatientRecord)
    stmt = (select(a.person_id, b.person_id).select_from(MatchReview)
            .join(a, a.id == MatchReview.record_a).join(b, b.id == MatchReview.record_b)
            .where(MatchReview.status.in_(WAITING), a.person_id != b.person_id))
    if among is not None:
        stmt = stmt.where(or_(a.person_id.in_(among), b.person_id.in_(among)))
    return [(one, other) for one, other in session.execute(stmt)]


@dataclass(frozen=True)
class ExportScope:
    """Whose data and which of it: everyone (system or Patient level) or one Group, some types, since when.

    A Group is the registered population of one GP practice, named by its ODS code: the people of whom
    the practice holds a patient record."""

    kind: str  # system | patient | group
    group: str | None = None
    types: frozenset[str] | None = None  # None: every type
    since: datetime | None = None

    def wants(self, resource_type: str) -> bool:
        return self.types is None or resource_type in self.types


@dataclass
class ExportCounts:
    """What an export held and left out: people and resources, by reason (for the audit and manifest)."""

    people_seen: int = 0
    people_included: int = 0
    excluded: Counter[str] = field(default_factory=Counter)  # people, by rule (opt-out, objection)
    withheld: Counter[str] = field(default_factory=Counter)  # resources, by rule
    resources: Counter[str] = field(default_factory=Counter)  # by type
    codings_withheld: int = 0  # codings left out of exported resources: not of a kept code system
    organisations_withheld: int = 0  # ODS codes left out: organisations of a withheld service (SERVICE_NOT_KEPT)
    small_cells: SmallCells | None = None  # what the small-cell check did to the Patients (the whole export's)
    # Who and whose data the files hold, for the run to record (`export.jobs._Changes`: what later changes
    # withdraw it). Person ids are the store's internal ones: never in `as_dict`, the audit or the files
    persons: list[str] = field(default_factory=list)  # every person included
    source_orgs: set[str] = field(default_factory=set)  # every organisation whose resources were released

    def add(self, other: ExportCounts) -> None:
        self.people_seen += other.people_seen
        self.persons += other.persons
        self.source_orgs |= other.source_orgs
        self.people_included += other.people_included
        self.excluded.update(other.excluded)
        self.withheld.update(other.withheld)
        self.resources.update(other.resources)
        self.codings_withheld += other.codings_withheld
        self.organisations_withheld += other.organisations_withheld

    def as_dict(self) -> dict[str, Any]:
        return {"people_seen": self.people_seen, "people_included": self.people_included,
                "people_excluded": dict(sorted(self.excluded.items())),
                "resources_withheld": dict(sorted(self.withheld.items())),
                "resources": dict(sorted(self.resources.items())),
                "codings_withheld": {key: n for key, n in ((CODING_NOT_KEPT, self.codings_withheld),
                                                           (SERVICE_NOT_KEPT, self.organisations_withheld)) if n},
                **({"small_cells": self.small_cells.as_dict()} if self.small_cells else {})}


def export_purpose(actor: Actor, fw: Framework) -> str:
    """The purpose an actor exports for: their role's first non-identifiable purpose ('secondary-use'
    when there is none, which the decision point then refuses)."""
    for purpose in actor.role.purposes if actor.role else []:
        rule = fw.purposes.get(purpose)
        if rule is not None and not rule.identifiable:
            return purpose
    return "secondary-use"


class SecondaryUse:
    """Pseudonymised extracts on behalf of one actor, for one secondary purpose."""

    def __init__(self, db: Database, fw: Framework, secret: str, actor: Actor, purpose: str,
                 request_id: str | None = None, source_address: str | None = None,
                 minted_by: str | None = None, token_id: str | None = None) -> None:
        """`minted_by`/`token_id`: the operator account and token id of a `sharedcare token` the request
        came with, so that its audits are marked as `GovernedRecords`' are."""
        self.db = db
        self.fw = fw
        self.actor = actor
        self.purpose = purpose
        self.request_id = request_id
        self.source_address = source_address
        self.minted_by, self.token_id = minted_by, token_id
        self._secret = secret

    # -- audit -----------------------------------------------------------------------------------
    def audit(self, session: Session, action: AuditAction, outcome: str, *, rule_id: str | None = None,
              reason: str | None = None, withheld: dict[str, int] | None = None, **detail: Any) -> int:
        role = self.actor.role.name if self.actor.role else None
        return record_audit(session, AuditRecord(
            action=action, outcome=outcome, username=self.actor.username, role=role,
            organisation=self.actor.organisation or None, purpose=self.purpose, rule_id=rule_id, reason=reason,
            request_id=self.request_id, source_address=self.source_address, withheld=withheld or {},
            minted_by=self.minted_by, token_id=self.token_id,
            detail={key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                    for key, value in detail.items() if value is not None}))

    def refuse(self, action: AuditAction, decision: Decision, **detail: Any) -> AccessDenied:
        """Audit a refusal in its own transaction (it must survive the error response) and return it."""
        with self.db.session() as session:
            self.audit(session, action, "deny", rule_id=decision.rule_id, reason=decision.reason, **detail)
        return AccessDenied(decision.rule_id, decision.reason)

    # -- checks ----------------------------------------------------------------------------------
    def check(self, action: AuditAction, scope: ExportScope | None = None, **detail: Any) -> None:
        """Whether this actor may export (or go on polling and downloading) now; refusals are audited.

        A Group must be a GP practice in the framework (else NotFound) whose agreement is in force."""
        with self.db.session() as session:
            agreements = effective_agreements(session, self.fw)
        now = utcnow()
        denied = check_secondary_request(self.actor, self.purpose, agreements, now, self.fw)
        if denied is None and scope is not None and scope.group is not None:
            org = self.fw.organisation(scope.group)
            if org is None or org.kind != "gp":
                raise NotFound(f"no Group {scope.group}: a Group is a GP practice's registered population, "
                               f"named by the practice's ODS code")
            agreement = agreements.get(scope.group)
            if agreement is None or not agreement.in_force(now.date()):
                denied = Decision("deny", "source-agreement",
                                  f"{scope.group} has no signed information-sharing agreement in force")
        if denied is not None:
            raise self.refuse(action, denied, **detail)

    # -- the stream ------------------------------------------------------------------------------
    def people_in_scope(self, scope: ExportScope) -> int:
        with self.db.session() as session:
            stmt = select(func.count(distinct(PatientRecord.person_id)))
            if scope.group:
                stmt = stmt.where(PatientRecord.person_id.in_(self._group_members(scope.group)))
            return int(session.scalar(stmt) or 0)

    @staticmethod
    def _group_members(group: str) -> Any:
        registered = aliased(PatientRecord)
        return select(registered.person_id).where(registered.source_org == group)

    def _choices(self, session: Session) -> dict[str, Choices]:
        """Every person who has made a choice, with their choices combined over all their NHS numbers (those their
        records carry, and the last one a record carried while its source sends none: `consent.follow_number`).
        A person one of whose records the MPI holds apart as possibly another person's, awaiting review (an open
        or deferred pair: a newborn's hospital record without a number, against her GP record), gets the
        choices of the person on the pair's other side too: they may be one person, and excluding too many
        from an extract is the safe error (privacy review 2026-12-07). Not for direct care, where hiding a
        record on a guess would withhold care."""
        held: dict[str, dict[str, Preference]] = {}
        for number in (PatientRecord.nhs_number, PatientRecord.last_nhs_number):
            for person_id, pref in session.execute(select(PatientRecord.person_id, Preference)
                                                   .join(Preference, Preference.nhs_number == number)):
                held.setdefault(person_id, {})[pref.nhs_number] = pref
        own = {person_id: dict(prefs) for person_id, prefs in held.items()}
        for one, other in pairs_on_review(session):
            for person_id, them in ((one, other), (other, one)):
                if them in own:
                    held.setdefault(person_id, {}).update(own[them])
        return {person_id: combined_choices((p.object_all, p.object_orgs, p.opt_out_secondary, p.provisions)
                                            for p in prefs.values())
                for person_id, prefs in held.items()}

    def stream(self, scope: ExportScope, counts: ExportCounts, progress: Callable[[int], None] | None = None,
               shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[str, bytes]]:
        """(resource type, pseudonymised resource as one JSON line) for everything released, person by person,
        in the order of the people's pseudonyms (`_people`).

        The rows of `_PEOPLE_PER_STATEMENT` people are read at a time, but the people's ids are listed first
        (`_people`), and an export run's small-cell check keeps short digests of each person's Patient
        (`small_cells.decide`): memory grows with the population (docs/architecture.md, "Small cells").
        `progress(people_done)` is called every few hundred people (it may raise to stop).
        `shard=(i, n)`: only the i-th of n runs of the people's pseudonyms, so that n processes can share one
        export and their files, joined in shard order, are in the order one process writes."""
        with self.db.session() as session:
            snap = _Snapshot(scope, counts, effective_agreements(session, self.fw), self._choices(session), utcnow(),
                             {code: org.kind for code, org in self.fw.organisations.items()},
                             Pseudonymiser(self._secret, self.purpose, self.fw, self.actor.role),
                             everyone_on_review(session),
                             self.fw.gp_practices)
            # received_at and recorded_at only for Patient rows: turning stored timestamps into datetimes
            # costs more per row than anything else here, and only the choice of a person's Patient needs them
            received = case((Resource.resource_type == "Patient", Resource.received_at), else_=None)
            recorded = case((Resource.resource_type == "Patient", Resource.recorded_at), else_=None)
            # the category ingest stored, only if stored under the current rules and framework (else None:
            # the row is classified afresh, as the gateway does)
            category = case((Resource.category_key == classification_key(self.fw), Resource.category), else_=None)
            stmt = (select(PatientRecord.person_id, Resource.id.label("server_id"), Resource.resource_type,
                           Resource.source_org, received.label("received_at"), recorded.label("recorded_at"),
                           category.label("category"),
                           cast(Resource.content, Text).label("text"))
                    .join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
                    .where(PatientRecord.person_id.in_(bindparam("people", expanding=True))))
            # Patient rows always come: they hold the dates of birth that other dates are checked against
            wanted = frozenset(t for t in RECORD_TYPES if t == "Patient" or scope.wants(t))
            clinical: ColumnElement[bool] | None = None
            if wanted != RECORD_TYPES:
                # some types only. (For every type the rows are checked against `wanted` below instead: a
                # filter naming every type has SQLite read the rows by the type index and sort them all,
                # documents included, rather than look each person's rows up by the person index.)
                clinical = Resource.resource_type.in_(sorted(wanted - {"Patient"}))
            if scope.since is not None:
                since = Resource.received_at >= scope.since
                clinical = since if clinical is None else and_(clinical, since)
            if clinical is not None:
                stmt = stmt.where(or_(Resource.resource_type == "Patient", clinical))
            people = self._people(session, scope, snap.pseudonymiser, shard)
            for start in range(0, len(people), _PEOPLE_PER_STATEMENT):
                batch = people[start:start + _PEOPLE_PER_STATEMENT]
                # each person's rows: person_id, server_id, type, source_org, received_at, recorded_at,
                # category, text. Core rows (no ORM loading step), read by position: a Row's attribute
                # access costs several times its indexing, and each row is read ten times
                held: dict[str, list[Any]] = {}
                for row in session.connection().execute(stmt, {"people": batch}):
                    if row[2] in wanted:
                        held.setdefault(row[0], []).append(row)
                for person in batch:
                    if person in held:
                        yield from self._person(person, held.pop(person), snap)
                        if progress is not None and counts.people_seen % 500 == 0:
                            progress(counts.people_seen)
            counts.organisations_withheld += snap.pseudonymiser.organisations_withheld
        if progress is not None:
            progress(counts.people_seen)

    def _people(self, session: Session, scope: ExportScope, pseudonymiser: Pseudonymiser,
                shard: tuple[int, int]) -> list[str]:
        """The ids of the people in scope (of this shard), in the order of their pseudonyms. Listed by their
        server ids, the extracts of two purposes would put each person on the same line (and that line
        would be their place among the ids `sharedcare mpi export` and the FHIR API show): the files would
        join up, and back to the people, by position (sixth security review, 2026-12-06). Shard i of n takes
        the i-th of n runs of the pseudonyms' first 32 bits."""
        stmt = select(PatientRecord.person_id).distinct()
        if scope.group:
            stmt = stmt.where(PatientRecord.person_id.in_(self._group_members(scope.group)))
        index, count = shard
        keyed = sorted((pseudonymiser.pseudonym("Patient", person_id), person_id)
                       for person_id in session.scalars(stmt))
        return [person_id for pseudonym, person_id in keyed if int(pseudonym[:8], 16) * count >> 32 == index]

    def _person(self, person_id: str, held: list[Any], snap: _Snapshot) -> Iterator[tuple[str, bytes]]:
        counts, scope, pseudonymiser = snap.counts, snap.scope, snap.pseudonymiser
        counts.people_seen += 1
        patient_rows = [row for row in held if row[2] == "Patient"]
        patients = {id(row): orjson.loads(row[7]) for row in patient_rows}
        patient_items = {id(row): Item(patients[id(row)], "Patient", row[3], "demographics",
                                       _labels((patients[id(row)].get("meta") or {}).get("security")))
                         for row in patient_rows}
        # one Patient per person: the one their combined Patient's demographics come from (its rule); its
        # date of birth anchors their date shift (`Pseudonymiser.for_person`). The one chosen of them all
        # first: of those released, if the decision withholds it, below
        rule = demographics_rule(patient_items.values(), snap.gp_orgs,
                                 snap.on_review.get(person_id, NOTHING_ON_REVIEW))
        anchor = _birth(patients, _chosen(rule, patient_rows))
        pseudonymiser.for_person(person_id, anchor)
        items: list[Item] = []
        shaped: dict[int, tuple[Any, Shaped | None]] = {}
        unreadable = 0
        decode, kinds = pseudonymiser.decode, snap.kinds
        for row in held:
            _, _, resource_type, source_org, _, _, category, text = row
            if resource_type == "Patient":
                item = patient_items[id(row)]
                shaped[id(item)] = (row, None)
            else:
                try:
                    resource = decode(resource_type, text)
                except Unreadable:
                    unreadable += 1
                    continue
                # the shape holds the stored status, verificationStatus and security labels as they are
                if resource.withdrawn():  # withdrawn by its source: no longer part of the record
                    continue
                # the category stored by ingest, when under the current classification key; else
                # classified on what was stored, not on what may leave
                if category is None:
                    category = classify(orjson.loads(text), kinds.get(source_org, "unknown"), self.fw)
                item = Item(_NOT_READ, resource_type, source_org, category, resource.security())
                shaped[id(item)] = (row, resource)
            items.append(item)
        request = Request(actor=self.actor, purpose=self.purpose, patient_id=person_id, basis=None,
                          agreements=snap.agreements, choices=snap.choices.get(person_id, NO_CHOICES), now=snap.now)
        decision = decide_secondary(request, items, self.fw)
        if not decision.permitted:
            counts.excluded[decision.rule_id] += 1
            return
        counts.people_included += 1
        counts.persons.append(person_id)
        # every released resource's source, one left out below as incomplete too: more withdraws more, never less
        counts.source_orgs.update(released.item.source_org for released in decision.released)
        counts.withheld.update(decision.withheld)
        if unreadable:
            counts.withheld["unreadable"] += unreadable
        released_patients = [shaped[id(r.item)][0] for r in decision.released if shaped[id(r.item)][1] is None]
        ordered = _ordered(rule, released_patients)
        chosen = ordered[0] if ordered else None
        birth = _birth(patients, chosen)
        if birth != anchor:  # the Patient chosen of them all is withheld: dates decoded again, shifted by this one
            pseudonymiser.for_person(person_id, birth)
        clinical: list[tuple[str, str, Shaped]] = []  # type, server id, shape
        for released in decision.released:
            row, maybe = shaped[id(released.item)]
            if maybe is None:
                continue
            if birth != anchor:
                maybe = decode(row[2], row[7])
            if maybe.incomplete():  # e.g. a statement whose drug cannot leave coded: invalid FHIR without it
                counts.withheld[INCOMPLETE] += 1
            else:
                clinical.append((row[2], row[1], maybe))
        # what this export holds of the person: references to anything else are removed
        exported = {f"{resource_type}/{server_id}" for resource_type, server_id, _ in clinical}
        resources, encode = counts.resources, pseudonymiser.encode
        for resource_type, server_id, resource in clinical:
            resources[resource_type] += 1
            line = encode(resource, server_id, exported)
            counts.codings_withheld += resource.codings_withheld
            yield resource_type, line
        if chosen is None:
            return
        # Every included person's Patient is made, asked for or not: the small-cell check decides on them all,
        # and the clinical lines of those it leaves without a practice lose their organisations whatever types
        # and dates were asked for (an extract of Conditions alone gave back the practices the whole extract
        # left out, by pseudonym). One not asked for (`_type`, the token's scopes, `_since`) is yielded as
        # UNPUBLISHED_PATIENT, which the run deletes after the check (`jobs._patients`).
        published = scope.wants("Patient") and (
            scope.since is None or any(row[4] and row[4] >= scope.since for row in released_patients))
        if published:
            counts.resources["Patient"] += 1
        yield ("Patient" if published else UNPUBLISHED_PATIENT,
               pseudonymiser.patient(carrying_death([patients[i] for i in ordered]), person_id))


def _ordered(rule: DemographicsRule, rows: list[Any]) -> list[int]:
    """These Patient rows (their `id`s) in `rule`'s order: the first is the person's one exported Patient."""
    return [id(row) for row in rule.order(rows, lambda row: (row[1], row[3], row[5]))]


def _chosen(rule: DemographicsRule, rows: list[Any]) -> int | None:
    """Which of these Patient rows (its `id`) the person's one exported Patient is, by `rule`; None if none."""
    return next(iter(_ordered(rule, rows)), None)


def _birth(patients: dict[int, dict[str, Any]], chosen: int | None) -> str | None:
    """The date of birth the chosen Patient gives, if any."""
    birth = patients[chosen].get("birthDate") if chosen is not None else None
    return birth if isinstance(birth, str) else None


_NOT_READ: dict[str, Any] = {}  # an Item's content the decision does not read (secondary use decides on the rest)

# people whose rows one statement reads: a few hundred records' rows in memory, not one statement a person
_PEOPLE_PER_STATEMENT = 200


def _labels(security: Any) -> frozenset[str]:
    return frozenset(f"{s.get('system')}|{s.get('code')}" for s in security or ())


@dataclass(frozen=True)
class _Snapshot:
    """The inputs one export decides every person with, read once when it starts."""

    scope: ExportScope
    counts: ExportCounts
    agreements: dict[str, Agreement]
    choices: dict[str, Choices]
    now: datetime
    kinds: dict[str, str]
    pseudonymiser: Pseudonymiser
    on_review: dict[str, OnReview]  # whose records wait on IG review (review.py), by person
    gp_orgs: frozenset[str]
