"""Writes from contributing systems over FHIR REST: who may write, through the one pipeline, audited.

A partner system (or a user of one) writes only with a token carrying a write scope (`system/*.write`,
`user/*.write`, or per type; SMART v2 `.c`/`.u` too), only for an organisation with a signed agreement in
force that contributes FHIR, only in a role the framework lets write (`clinical:record:write`: scopes
narrow what a role may do, they never add to it), and only as that organisation: the token's organisation
is the source stamped in `meta.source`, and a message that declares another is refused. What is allowed then
goes through the same pipeline as a file (validation, provenance, identity linking, idempotence, event-time
ordering, quarantine); nothing is written to the store here. Every write, and every refusal, is audited.

What a write does is known only as it is stored, so two rules are checked then, in its own transaction,
and a write that breaks one is undone and answered (`WriteRefused`): creating a resource needs a create
scope (`c`, or `u` by PUT: SMART lets an update create), changing a held one (a withdrawal too) an update
scope (`u`); and a version named by `If-Match` (or an entry's `request.ifMatch`) must be the one held, else
412, as FHIR's version-aware update says. Conditions that cannot be honoured are refused with a 400.

A practice's write that gives it its first record of a person already in the shared record (the MPI
linked the new Patient to someone other organisations hold) is that practice's own claim to a care
relationship, not evidence of one: it is queued for IG review at once ("new source record for an existing
person"), and until found appropriate it counts neither as a care relationship nor as the registered
demographics (governance/review.py explains the rule).

Answers carry metadata only (ids, versions, statuses, reasons), never the stored resources: patient data
leaves the store only through the read gateway.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.fhir.uk_core import RECORD_TYPES, declared_senders
from sharedcare.governance.agreements import effective_agreements
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.framework import Agreement, Framework
from sharedcare.governance.gateway import AccessDenied, InvalidRequest
from sharedcare.governance.policy import Actor
from sharedcare.governance.review import flag_new_source_record
from sharedcare.governance.scopes import write_scopes
from sharedcare.ingest.fhir_batch import entry_index, messages_of, repeated_entry
from sharedcare.ingest.fhir_bundle import etag_version, parse_message, read_messages, request_version, stage_fhir_write
from sharedcare.ingest.messages import Adapter, MessageError, RawMessage, StagedMessage, WriteRefused
from sharedcare.ingest.pipeline import IngestReport, Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Resource

STATUS_TEXT = {"created": "201 Created", "updated": "200 OK", "unchanged": "200 OK", "stale": "409 Conflict"}
REFUSED_TEXT = {403: ("403 Forbidden", "forbidden"), 412: ("412 Precondition Failed", "conflict")}
# HTTP conditions a write cannot be held to (FHIR R4's conditional create and read): refused, not ignored
UNSUPPORTED_HEADERS = ("If-None-Exist", "If-None-Match", "If-Modified-Since")
WRITE_ADAPTER = Adapter(read_messages, stage_fhir_write)  # a write as it is made: it may name versions


def writable_types(scopes: str, allows: str = "writes") -> frozenset[str] | None:
    """The resource types a token's scopes allow writing (`allows`: "writes", or only "creates" or
    "updates"): None for every type, else the named ones (maybe none). Patient-level scopes never write:
    a citizen's app reads their record, it does not feed it."""
    types: set[str] = set()
    for scope in write_scopes(scopes):
        if scope.level == "patient" or not getattr(scope, allows):
            continue
        if scope.resource_type == "*":
            return None
        types.add(scope.resource_type)
    return frozenset(types)


@dataclass
class EntryOutcome:
    """What happened to one resource (or one bundle entry), as a FHIR `Bundle.entry.response` says it."""

    status: str  # "201 Created", "200 OK", "409 Conflict", "422 Unprocessable Entity", "400 Bad Request"
    resource_type: str | None = None
    resource_id: str | None = None  # the server id, as served at /fhir/{type}/{id}
    version: int | None = None
    last_modified: datetime | None = None
    severity: str = "information"
    code: str = "informational"
    text: str = ""
    where: str | None = None

    @property
    def http_status(self) -> int:
        return int(self.status.split()[0])

    @property
    def location(self) -> str | None:
        if self.resource_id is None or self.version is None:
            return None
        return f"{self.resource_type}/{self.resource_id}/_history/{self.version}"


@dataclass(frozen=True)
class Asked:
    """What one resource's write asked for: its method (a PUT may create: SMART's upsert), the version it
    must replace (If-Match, None for any), and where the request says so (the element a refusal names)."""

    method: str
    version: int | None = None
    where: str | None = None


@dataclass
class WriteResult:
    bundle_type: str | None  # batch | transaction, or None for a single resource
    entries: list[EntryOutcome] = field(default_factory=list)
    refused: EntryOutcome | None = None  # the whole message was quarantined (a transaction, a single resource)


class Contributions:
    """FHIR writes on behalf of one actor (a contributing system or its user), for one request."""

    def __init__(self, db: Database, fw: Framework, actor: Actor, scopes: str, request_id: str,
                 source_address: str | None = None, method: str = "POST") -> None:
        self.db = db
        self.asked = "U" if method == "PUT" else "C"  # what a refused write asked for, as AuditEvent.action
        self.fw = fw
        self.actor = actor
        self.scopes = scopes
        self.request_id = request_id
        self.source_address = source_address
        self._new_patients: set[str] = set()  # source ids of the Patients this request created
        self._refused = False  # a refusal of (part of) this request was audited already
        with db.session() as session:
            self.agreements: dict[str, Agreement] = effective_agreements(session, fw)

    # -- who may write -----------------------------------------------------------------------------
    def _refuse(self, rule_id: str, reason: str) -> AccessDenied:
        self._audit("deny", None, rule_id=rule_id, reason=reason)
        return AccessDenied(rule_id, reason)

    def _invalid(self, reason: str) -> InvalidRequest:
        """A write refused for its shape (not a Bundle, a body that is not what the URL names): audited like
        any refused write, answered 400."""
        self._audit("deny", None, rule_id="deny-write-invalid", reason=reason)
        return InvalidRequest(reason)

    def _authorise(self, data: dict[str, Any] | None) -> None:
        """Raise AccessDenied (audited) unless this actor may write what `data` holds as its organisation."""
        actor, org_code = self.actor, self.actor.organisation
        if actor.role is None or actor.role.citizen or not org_code:
            raise self._refuse("deny-write-actor", "only a contributing organisation's system or staff may write")
        allowed = writable_types(self.scopes)
        if allowed is not None and not allowed:
            raise self._refuse("deny-write-scope", "the access token has no write scope "
                                                   "(ask for system/*.write or user/*.write)")
        agreement = self.agreements.get(org_code)
        if agreement is None or not agreement.in_force(utcnow().date()):
            raise self._refuse("deny-write-agreement", f"your organisation ({org_code}) has no signed "
                                                       "information-sharing agreement in force")
        organisation = self.fw.organisation(org_code)
        if organisation is None or "fhir" not in organisation.systems.values():
            raise self._refuse("deny-write-not-contributor", f"{org_code} is not set up in the sharing framework "
                                                             "to contribute FHIR data")
        if not actor.role.writes:
            raise self._refuse("deny-write-role", f"your role ({actor.role.label}) may not write to the shared "
                                                  "record: the sharing framework gives that to clinical roles only")
        if data is None:
            return
        resources: list[dict[str, Any]] = [data]
        if data.get("resourceType") == "Bundle" and isinstance(data.get("entry"), list):
            resources += [e["resource"] for e in data["entry"]
                          if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
        other = next((named for _, named in declared_senders(data) if named != org_code), None)
        if other is not None:
            raise self._refuse("deny-write-other-org", f"meta.source names {other}, but you write as "
                                                       f"{org_code}: no one writes as another organisation")
        types = {str(r.get("resourceType")) for r in resources if r.get("resourceType") in RECORD_TYPES}
        if allowed is not None and not types <= allowed:
            missing = ", ".join(sorted(types - allowed))
            raise self._refuse("deny-write-scope", f"the access token's scopes do not allow writing {missing}")

    # -- writes --------------------------------------------------------------------------------------
    def write_bundle(self, payload: bytes, what: str, headers: Mapping[str, str]) -> WriteResult:
        """A batch (each entry on its own) or transaction (all or nothing) Bundle."""
        raw = RawMessage(what, f"request {self.request_id}", payload, "fhir")
        data = self._parsed(raw)
        self._authorise(data)
        self._header_version(headers, None)  # conditions are named per entry (`request.ifMatch`), not here
        if data is None:
            return self._store_single(raw, None)  # quarantined with the parse error, answered 400
        kind = data.get("type")
        if data.get("resourceType") != "Bundle" or kind not in ("batch", "transaction"):
            raise self._invalid("POST /fhir takes a Bundle of type batch or transaction "
                                f"(got {data.get('resourceType')} {kind or ''})".strip())
        listed = data.get("entry") or []
        if not isinstance(listed, list):
            raise self._invalid("Bundle.entry must be a list of entries")
        repeated = repeated_entry(listed)
        if repeated:
            raise self._invalid(f"Bundle.{repeated}")
        if kind == "transaction":
            asked: dict[tuple[str, str], Asked] = {}
            for number, entry in enumerate(listed):
                try:
                    asked.update(self._entry_asked(entry, number))
                except MessageError as exc:
                    raise self._invalid(f"{exc.where}: {exc.message}") from exc
                kind_sent = _not_kept(entry)
                if kind_sent is not None:
                    raise self._invalid(f"Bundle.entry[{number}]: the shared record does not keep {kind_sent} "
                                        "resources, and a transaction is stored whole or not at all: send it "
                                        "without that entry (nothing of it was stored)")
            result = self._store_single(raw, listed, asked)
            result.bundle_type = "transaction"
            return result
        result = WriteResult("batch", [EntryOutcome("400 Bad Request", severity="error", code="required",
                                                    text="entry has no resource") for _ in listed])
        pipeline, report_all = Pipeline(self.db, self.fw, sender=self.actor.username), IngestReport()
        for part in messages_of(raw, parse_message):
            index = entry_index(part)
            if index is None:  # an empty batch is not split: nothing to answer for
                continue
            try:
                asked = self._entry_asked(listed[index], index)
            except MessageError as exc:
                self._invalid(f"{exc.where}: {exc.message}")  # audited; answered as this entry's status
                self._refused = True
                result.entries[index] = EntryOutcome("400 Bad Request", severity="error", code="not-supported",
                                                     text=exc.message, where=exc.where)
                continue
            outcomes, _ = self._ingest(pipeline, part, [listed[index]], report_all, asked)
            result.entries[index] = outcomes[0]
        self._audit_written(result.entries, report_all)
        return result

    def write_resource(self, payload: bytes, what: str, resource_type: str, resource_id: str | None,
                       headers: Mapping[str, str]) -> WriteResult:
        """PUT (create or update; `resource_id` the source's id, or the server id of a resource this
        organisation sent; `If-Match` the version it replaces) or POST (create; the body's id is the
        source's, or one is given)."""
        raw = RawMessage(what, f"request {self.request_id}", payload, "fhir")
        data = self._parsed(raw)
        self._authorise(data)
        if data is None:
            return self._store_single(raw, None)
        version = self._header_version(headers, resource_id)
        if data.get("resourceType") != resource_type:
            raise self._invalid(f"the body is a {data.get('resourceType')}, but the URL names {resource_type}")
        if resource_id is not None:
            source_id = self._source_id(resource_type, resource_id)
            if data.get("id") != resource_id and data.get("id") != source_id:
                raise self._invalid(f"the body's id '{data.get('id')}' is not the id in the URL ('{resource_id}')")
            if data.get("id") != source_id:
                data["id"] = source_id
                raw = RawMessage(raw.filename, raw.location, json.dumps(data).encode(), raw.format)
        elif not data.get("id"):
            data["id"] = str(uuid.uuid4())
            raw = RawMessage(raw.filename, raw.location, json.dumps(data).encode(), raw.format)
        asked = Asked("PUT" if resource_id is not None else "POST", version,
                      "If-Match" if version is not None else None)
        return self._store_single(raw, [{"resource": data}], {(resource_type, str(data["id"])): asked})

    def _header_version(self, headers: Mapping[str, str], resource_id: str | None) -> int | None:
        """The version a PUT's `If-Match` names; a 400 (audited) for a condition that cannot be honoured:
        If-Match anywhere but on a PUT, or not naming a version; conditional create or read headers."""
        for name in UNSUPPORTED_HEADERS:
            if name in headers:
                raise self._invalid(f"the {name} header (a conditional create or read) is not supported: send the "
                                    "write without it")
        if "If-Match" not in headers:
            return None
        version = etag_version(headers["If-Match"])
        if resource_id is None or version is None:
            raise self._invalid(f"If-Match '{headers['If-Match']}' is not supported: it names the version an update "
                                'replaces, as W/"<versionId>", on a PUT to the resource (or on each entry of a '
                                "Bundle, as request.ifMatch)")
        return version

    @staticmethod
    def _entry_asked(entry: Any, index: int) -> dict[tuple[str, str], Asked]:
        """What a Bundle entry's request asks for, by its resource; MessageError for what cannot be honoured."""
        request = entry.get("request") if isinstance(entry, dict) else None
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or not isinstance(resource, dict):
            return {}
        where = f"Bundle.entry[{index}]"
        version = request_version(request, where)
        return {(str(resource.get("resourceType")), str(resource.get("id"))): Asked(
            str(request.get("method")), version, f"{where}.request.ifMatch" if version is not None else where)}

    def _source_id(self, resource_type: str, resource_id: str) -> str:
        """A PUT to a server id this organisation's resource is served at updates that resource."""
        with self.db.session() as session:
            row = session.get(Resource, resource_id)
            if row is not None and row.resource_type == resource_type and row.source_org == self.actor.organisation:
                return row.source_id
        return resource_id

    def _parsed(self, raw: RawMessage) -> dict[str, Any] | None:
        try:
            return parse_message(raw)
        except MessageError:
            return None

    def _store_single(self, raw: RawMessage, listed: list[Any] | None,
                      asked: dict[tuple[str, str], Asked] | None = None) -> WriteResult:
        """One message, stored whole or quarantined (or refused) whole."""
        report = IngestReport()
        pipeline = Pipeline(self.db, self.fw, sender=self.actor.username)
        outcomes, staged = self._ingest(pipeline, raw, listed or [], report, asked or {})
        result = WriteResult(None)
        if staged is None:
            result.refused = outcomes[0]
            if listed is None:  # it could not even be parsed
                result.refused.status = "400 Bad Request"
        else:
            result.entries = outcomes
        self._audit_written(result.entries if staged else [], report)
        return result

    def _ingest(self, pipeline: Pipeline, raw: RawMessage, listed: list[Any], report: IngestReport,
                asked: dict[tuple[str, str], Asked]) -> tuple[list[EntryOutcome], StagedMessage | None]:
        """Run one message through the pipeline; one outcome per entry of `listed` (or one for a refusal)."""
        held = len(report.quarantine)
        try:
            staged = pipeline.ingest_message(WRITE_ADAPTER, raw, self.actor.organisation, report, self.agreements,
                                             then=self._as_asked(asked))
        except WriteRefused as refused:  # undone: audited, and answered with its own status
            self._refused = True
            self._audit("deny", None, rule_id=refused.rule_id, reason=refused.message)
            status, code = REFUSED_TEXT[refused.status]
            return [EntryOutcome(status, severity="error", code=code, text=refused.message,
                                 where=refused.where)], None
        if staged is None:
            problem = report.quarantine[held]
            return [EntryOutcome("422 Unprocessable Entity", severity="error", code=problem["issue"],
                                 text=f"{problem['reason']} (held in quarantine as #{problem['id']})",
                                 where=problem["where"])], None
        by_key = {(r.resource_type, r.source_id): r for r in staged.resources}
        held_merges = {held["retired"]: held for held in staged.merges_held}
        self._new_patients.update(r.source_id for r in staged.resources
                                  if r.resource_type == "Patient" and r.outcome == "created")
        rows = self._versions([r.server_id for r in staged.resources])
        outcomes = []
        for entry in listed:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            resource = resource if isinstance(resource, dict) else {}
            item = by_key.get((str(resource.get("resourceType")), str(resource.get("id"))))
            if item is None:  # a batch's entry of a type not kept: answered as a PUT of it would be
                outcomes.append(EntryOutcome("404 Not Found", resource.get("resourceType"), severity="error",
                                             code="not-supported", text=f"not stored: the shared record does not "
                                             f"keep {resource.get('resourceType')} resources"))
                continue
            version, modified = rows.get(item.server_id, (None, None))
            texts = {"created": "created", "updated": f"updated to version {version}",
                     "unchanged": "unchanged: this content is already held",
                     "stale": "not applied: a newer version of this resource (by event time) is already held"}
            outcomes.append(EntryOutcome(STATUS_TEXT[item.outcome], item.resource_type, item.server_id, version,
                                         modified, "warning" if item.outcome == "stale" else "information",
                                         "conflict" if item.outcome == "stale" else "informational",
                                         texts[item.outcome]))
            merge = held_merges.get(item.source_id) if item.resource_type == "Patient" else None
            if merge is not None:  # stored, but its replaced-by merge waits for a reviewer
                outcomes[-1].severity, outcomes[-1].where = "warning", merge["where"]
                outcomes[-1].text += f"; {merge['reason']}"
        return outcomes, staged

    def _as_asked(self, asked: dict[tuple[str, str], Asked]) -> Callable[[Session, StagedMessage], None]:
        """The check of what a write did, before it is committed (see the module's docstring)."""
        creatable, updatable = writable_types(self.scopes, "creates"), writable_types(self.scopes, "updates")
        level = next((s.level for s in write_scopes(self.scopes) if s.level != "patient"), "user")

        def check(_: Session, staged: StagedMessage) -> None:
            for item in staged.resources:
                kind, named = item.resource_type, f"{item.resource_type}/{item.source_id}"
                wanted = asked.get((kind, item.source_id), Asked("POST"))
                if item.outcome == "created" and not (_among(creatable, kind) or (
                        wanted.method == "PUT" and _among(updatable, kind))):
                    raise WriteRefused(403, "deny-write-scope", f"{named} is not held yet, and creating it needs "
                                       f"the scope {level}/{kind}.c (or .write), which the access token has not",
                                       wanted.where)
                if item.outcome in ("updated", "stale") and not _among(updatable, kind):
                    raise WriteRefused(403, "deny-write-scope", f"{named} is held already, and changing it (an "
                                       f"update, or a withdrawal as entered-in-error) needs the scope "
                                       f"{level}/{kind}.u (or .write), which the access token has not: it may only "
                                       f"create {kind}", wanted.where)
                if wanted.version is not None and item.held_version != wanted.version:
                    held = f"version {item.held_version} is held" if item.held_version else "none is held"
                    raise WriteRefused(412, "deny-write-version", f"{named}: If-Match names version "
                                       f"{wanted.version}, but {held}; read it again and make the change to the "
                                       "version held", wanted.where)
        return check

    def _versions(self, ids: list[str]) -> dict[str, tuple[int, datetime]]:
        with self.db.session() as session:
            return {row.id: (row.version, row.received_at)
                    for row in session.scalars(select(Resource).where(Resource.id.in_(ids)))}

    # -- audit -----------------------------------------------------------------------------------------
    def _audit(self, outcome: str, patient_id: str | None, then: Callable[[Session, int], None] | None = None,
               **extra: Any) -> None:
        """Audit; `then` runs in the same transaction with the event's sequence number."""
        with self.db.session() as session:
            extra.setdefault("fhir_action", self.asked)
            seq = record_audit(session, AuditRecord(
                action=AuditAction.RECORD_WRITE, outcome=outcome, username=self.actor.username,
                role=self.actor.role.name if self.actor.role else None,
                organisation=self.actor.organisation or None, purpose="direct-care", patient_id=patient_id,
                request_id=self.request_id, source_address=self.source_address, **extra))
            if then is not None:
                then(session, seq)

    def _self_made_relationship(self, person_id: str) -> Callable[[Session, int], None]:
        """Queue this write for IG review if it gave a practice its first record of a person other
        organisations already hold (a record created by this request, none of the practice's from before)."""
        def check(session: Session, seq: int) -> None:
            org = self.fw.organisation(self.actor.organisation)
            if org is None or org.kind != "gp" or not self._new_patients:
                return
            records = list(session.scalars(select(PatientRecord).where(PatientRecord.person_id == person_id)))
            mine = [r for r in records if r.source_org == self.actor.organisation]
            made_now = [r for r in mine if r.source_id in self._new_patients]
            if made_now and len(made_now) == len(mine) and len(records) > len(mine):
                for record in made_now:
                    flag_new_source_record(session, self.fw, self.actor, record, seq, utcnow())
        return check

    def _audit_written(self, outcomes: list[EntryOutcome], report: IngestReport) -> None:
        """One event per person whose record was written to (as IHE BALP does for reads), and one for a
        write that stored nothing, naming what was quarantined."""
        detail = {"accepted": str(report.accepted), "unchanged": str(report.unchanged), "stale": str(report.stale),
                  "quarantined": ",".join(f"#{q['id']}" for q in report.quarantine)}
        written = [o for o in outcomes if o.location is not None]
        if not written and not report.quarantine and self._refused:
            return  # its refusal is audited already
        with self.db.session() as session:
            persons: dict[str, list[EntryOutcome]] = {}
            for outcome in written:
                row = session.get(Resource, outcome.resource_id)
                record = session.get(PatientRecord, row.patient_record_id) if row and row.patient_record_id else None
                persons.setdefault(record.person_id if record else "", []).append(outcome)
        for person_id, theirs in sorted(persons.items()) or [("", [])]:
            created = bool(theirs) and all(o.status == STATUS_TEXT["created"] for o in theirs)
            self._audit("permit" if written else "deny", person_id or None,
                        self._self_made_relationship(person_id) if written and person_id else None,
                        released=[str(o.location) for o in theirs],
                        rule_id="permit-write" if written else "deny-write-quarantined", detail=detail,
                        fhir_action="C" if created else "U" if theirs else self.asked)


def _not_kept(entry: Any) -> str | None:
    """The resource type of a Bundle entry that the shared record does not keep; None for one it does."""
    resource = entry.get("resource") if isinstance(entry, dict) else None
    kind = resource.get("resourceType") if isinstance(resource, dict) else None
    return kind if isinstance(kind, str) and kind not in RECORD_TYPES else None


def _among(types: frozenset[str] | None, resource_type: str) -> bool:
    return types is None or resource_type in types
