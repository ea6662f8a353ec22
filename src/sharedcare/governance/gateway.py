"""The only way patient data leaves the store: a repository bound to one actor and one purpose.

API routes and portal pages receive a `GovernedRecords` (never a raw session). Every method gathers
the decision's inputs, calls `policy.decide`, writes the audit event in the same transaction (no audit,
no data: TRUST AU4) and returns only what the decision released.
"""

from __future__ import annotations

import base64
import secrets
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar, cast
from urllib.parse import urlencode

import orjson
from sqlalchemy import (
    Boolean,
    Integer,
    Row,
    String,
    Table,
    Text,
    bindparam,
    delete,
    false,
    literal,
    null,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.fhir.lifecycle import entered_in_error
from sharedcare.fhir.uk_core import PATIENT_FIELDS, claims_registration
from sharedcare.fhir.uk_core import demographics as patient_demographics
from sharedcare.governance.access_log import BY_ID, FOUND_DETAIL
from sharedcare.governance.agreements import FRAMEWORK_FILE, agreements_after, effective_agreements
from sharedcare.governance.audit import CITIZEN_PREFIX, AuditAction, AuditRecord, record_audit
from sharedcare.governance.classify import at_tier, classification_key, classify
from sharedcare.governance.consent import OF_PERSON, Choices, choices_for, combined_choices
from sharedcare.governance.content_cache import ContentCache, Stamp, content_cache
from sharedcare.governance.framework import Agreement, Framework
from sharedcare.governance.policy import (
    UNNAMED_SERVICE,
    ActiveBasis,
    Actor,
    Alike,
    Decision,
    Headline,
    Item,
    Request,
    check_request,
    count_alike,
    decide,
)
from sharedcare.governance.review import (
    FOUND_WITHIN,
    ON_REVIEW,
    OnReview,
    flag_access,
    flag_searches,
    on_review,
    standing,
)
from sharedcare.governance.unnamed import Unknown, unknown_services, unnamed
from sharedcare.identity.compare import search_key
from sharedcare.store.database import Prepared, json_loads, run
from sharedcare.store.models import (
    IS_PATIENT,
    AccessBasis,
    AgreementChange,
    AuditEntry,
    JsonType,
    KeptSearch,
    PatientRecord,
    Person,
    Preference,
    Resource,
    ResourceVersion,
    UTCDateTime,
)

StoredRow = Row[*tuple[Any, ...]] | tuple[Any, ...]  # one of _ROW_COLUMNS, in that order
# The read path's statements, built once (building them per request cost more than running them).
_RES = cast(Table, Resource.__table__)
_REC = cast(Table, PatientRecord.__table__)
_BASES = cast(Table, AccessBasis.__table__)
_PERSONS = cast(Table, Person.__table__)
_ROW_COLUMNS = (_RES.c.id, _RES.c.resource_type, _RES.c.source_org, _RES.c.source_system, _RES.c.content,
                _RES.c.category, _RES.c.category_key, _RES.c.recorded_at, _RES.c.received_at, _REC.c.person_id)
_PERSON_ROWS = (select(*_ROW_COLUMNS).join(_REC, _RES.c.patient_record_id == _REC.c.id)
                .where(_REC.c.person_id == bindparam("person_id"))
                .order_by(_RES.c.recorded_at.desc(), _RES.c.id.desc()))  # ties in one order, on any store
_PERSON_PATIENTS = _PERSON_ROWS.where(IS_PATIENT)
# The same rows without their content, with each one's stamp: the content comes from the cache when its
# stamp is the stored one (governance/content_cache.py), else from `_CONTENTS`. Their times are read raw
# (`_instant` parses them when a shape is made): parsing two per row was a quarter of reading a large
# record's rows, and a cached shape needs neither.
_RECORDED, _RECEIVED = type_coerce(_RES.c.recorded_at, String), type_coerce(_RES.c.received_at, String)
_STAMP_COLUMNS = (_RES.c.version, _RES.c.content_hash, _RECEIVED)
_PERSON_STAMPS = (select(_RES.c.id, _RES.c.resource_type, _RES.c.source_org, _RES.c.source_system, _RES.c.category,
                         _RES.c.category_key, _RECORDED, _RECEIVED, _REC.c.person_id,
                         _RES.c.version, _RES.c.content_hash)
                  .join(_REC, _RES.c.patient_record_id == _REC.c.id)
                  .where(_REC.c.person_id == bindparam("person_id"))
                .order_by(_RES.c.recorded_at.desc(), _RES.c.id.desc()))  # ties in one order, on any store
_PERSON_PATIENT_STAMPS = _PERSON_STAMPS.where(IS_PATIENT)
# Which source record each of a person's Patients was sent with (a patient search matches on the record's columns)
_PATIENT_RECORD_OF = (select(_RES.c.id, _RES.c.patient_record_id).join(_REC, _RES.c.patient_record_id == _REC.c.id)
                      .where(_REC.c.person_id == bindparam("person_id"), IS_PATIENT))
# The stored JSON as text, decoded here (as the engine would): its length is what the cache counts.
_CONTENTS = (select(_RES.c.id, *_STAMP_COLUMNS, sql_cast(_RES.c.content, Text))
             .where(_RES.c.id.in_(bindparam("ids", expanding=True))))
_CONTENTS_PER_STATEMENT = 500  # well under SQLite's limit on bound parameters
_ONE_ROW = select(*_ROW_COLUMNS).join(_REC, _RES.c.patient_record_id == _REC.c.id).where(_RES.c.id == bindparam("id"))
_VER = cast(Table, ResourceVersion.__table__)
_VERSIONS = (select(_VER.c.version, _VER.c.source_system, _VER.c.content, _VER.c.recorded_at, _VER.c.received_at,
                    _REC.c.person_id)
             .outerjoin(_REC, _VER.c.patient_record_id == _REC.c.id)
             .where(_VER.c.resource_id == bindparam("id")).order_by(_VER.c.version.desc()))
_ONE_VERSION = _VERSIONS.where(_VER.c.version == bindparam("version"))
_PERSON_EXISTS = select(_PERSONS.c.id).where(_PERSONS.c.id == bindparam("person_id"))
_ACTIVE_BASIS = (select(_BASES.c.basis, _BASES.c.reason, _BASES.c.expires_at)
                 .where(_BASES.c.username == bindparam("username"), _BASES.c.person_id == bindparam("person_id"),
                        _BASES.c.expires_at > bindparam("now"))
                 .order_by(_BASES.c.granted_at.desc()).limit(1))
# The decision's inputs in one statement (four cost a small read more than its decision): the agreement
# changes (kind "agreement": organisation, status or None for the file's own, in the order made), this
# user's active basis for the person ("basis": basis, reason, expiry), the choices held against the person's
# NHS numbers ("choices": object_all, opt_out_secondary, object_orgs, and the Consent's other provisions) and
# what of the person's records waits on IG review ("review": review kind, status, record id, Patient id;
# review.py). Typed NULLs, so that PostgreSQL can match the branches' columns.
_CHANGES = cast(Table, AgreementChange.__table__)
_PREFS = cast(Table, Preference.__table__)
_NO_TEXT, _NO_TIME = sql_cast(null(), String), sql_cast(null(), UTCDateTime())
_NO_FLAG, _NO_ORGS = sql_cast(null(), Boolean), sql_cast(null(), JsonType)
_BASIS_NOW = _ACTIVE_BASIS.subquery()
_REVIEW_NOW = ON_REVIEW.subquery()
_INPUTS = Prepared(union_all(
    select(literal("agreement", String).label("kind"), _CHANGES.c.org_code.label("a"), _CHANGES.c.status.label("b"),
           _CHANGES.c.changed_at.label("at"), _NO_FLAG.label("object_all"), _NO_FLAG.label("opt_out"),
           _NO_ORGS.label("orgs"), _CHANGES.c.id.label("seq"), _CHANGES.c.changed_by.label("c"),
           _NO_ORGS.label("provisions")),
    select(literal("basis", String), _BASIS_NOW.c.basis, sql_cast(_BASIS_NOW.c.reason, String), _BASIS_NOW.c.expires_at,
           _NO_FLAG, _NO_FLAG, _NO_ORGS, literal(0, Integer), _NO_TEXT, _NO_ORGS),
    select(literal("choices", String), _NO_TEXT, _NO_TEXT, _NO_TIME, _PREFS.c.object_all, _PREFS.c.opt_out_secondary,
           _PREFS.c.object_orgs, literal(0, Integer), _NO_TEXT, _PREFS.c.provisions).where(OF_PERSON),
    select(literal("review", String), _REVIEW_NOW.c.kind, _REVIEW_NOW.c.status, _NO_TIME, _NO_FLAG, _NO_FLAG,
           _NO_ORGS, _REVIEW_NOW.c.record_id, _REVIEW_NOW.c.patient_id, _NO_ORGS),
))


def _instant(value: datetime | str) -> datetime:
    """A stored time as `UTCDateTime` reads it, from the value read raw (`_RECORDED`, `_RECEIVED`): SQLite's
    stored text, or the driver's datetime on PostgreSQL."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _visible(reason: str) -> str:
    """A reason as its reader sees it: without control or format characters (ten U+200B draw nothing and
    passed as ten characters), each run of spaces as one."""
    return " ".join("".join(ch for ch in reason if unicodedata.category(ch) not in ("Cc", "Cf")).split())


def _encoded_size(served: ServedResource) -> int:
    return len(served.encoded or b"")


# No person's id (person ids are UUIDs): what a patient search that matched no record asks after.
NO_PERSON = ""
# Refusals answered as a missing record (`GovernedRecords._refuse`): a citizen's read of anyone else is too,
# or a 403 for a stored id against a 404 for a made-up one would tell them which ids are people.
REFUSED_AS_MISSING = frozenset({"deny-objection-all", "deny-objection-org", "deny-patient-scope",
                                "deny-not-own-record"})


class AccessDenied(SharedcareError):
    """The decision point said no; `rule_id` says which rule."""

    def __init__(self, rule_id: str, message: str) -> None:
        self.rule_id = rule_id
        super().__init__(message)


class InvalidRequest(SharedcareError):
    """The request itself is wrong (an unknown basis, a reason too short, a search with no criteria)."""


class NotFound(SharedcareError):
    """No such record (or none this actor may know exists)."""


@dataclass(frozen=True)
class ServedResource:
    """A released resource with where it came from and how fresh it is, for display; `encoded` is its
    content's JSON when the read kept it (a document from the content cache), else None."""

    content: dict[str, Any]
    resource_type: str
    category: str
    tier: int
    source_org: str  # "" when served from UNNAMED_SERVICE (a service the reader's role may not know of)
    source_name: str
    source_system: str
    recorded_at: datetime
    received_at: datetime
    encoded: bytes | None = field(default=None, compare=False, repr=False)
    # released exactly as stored (tier 3, nothing unnamed): the copy a plain `W/"<versionId>"` and a date
    # stand for (api/history.py `etag`); any other is told by what was shown
    as_stored: bool = False

    @cached_property
    def reference(self) -> str:
        """`Type/id`, as the audit names it (made once per served shape: a kept shape is served again)."""
        return f"{self.resource_type}/{self.content['id']}"


@dataclass(frozen=True)
class _View:
    """What the gateway makes of a person's rows for the decision, kept between requests while the rows
    are the same (`GovernedRecords._view`): the decision's view of each row not withdrawn, their count by
    `alike`, and per row whether it is withdrawn (empty when none is)."""

    # Shared by every request for this person (kept between reads), so nothing here can be changed in place.
    items: tuple[Item, ...]
    groups: Mapping[Alike, int]  # a read-only view of the count
    withdrawn: tuple[bool, ...]
    keys: tuple[tuple[Alike, str, str], ...]  # per item: what serving it reads (alike, category, resource type)


class RecordItems(NamedTuple):
    """A person's resources as the decision sees them (`items`, their count by `alike`, and per item what
    serving it reads), with their rows as read now."""

    items: tuple[Item, ...]
    rows: list[StoredRow]
    groups: Mapping[Alike, int]
    keys: tuple[tuple[Alike, str, str], ...]

    @property
    def pairs(self) -> list[tuple[Item, StoredRow]]:
        return list(zip(self.items, self.rows, strict=True))


@dataclass
class RecordView:
    person_id: str
    patient: dict[str, Any] | None
    resources: list[ServedResource]
    withheld: Counter[str]
    headlines: list[Headline]
    basis: str
    sources: list[str] = field(default_factory=list)
    demographics_from: DemographicsSource | None = None

    def of_type(self, resource_type: str) -> list[ServedResource]:
        return [r for r in self.resources if r.resource_type == resource_type]


@dataclass(frozen=True)
class PatientRead:
    """The person's combined Patient as a read by id releases it, with what it leaves out: the rules that
    withheld any of their source Patient records (`withheld`, counted as a decision counts them), and whether
    the record its demographics are taken from is shown below full detail by the reader's tier (`masked`:
    the role's, whatever that record holds)."""

    patient: dict[str, Any]
    withheld: Counter[str]
    masked: bool


@dataclass(frozen=True)
class PatientMatch:
    """A search result: enough to pick the right person, nothing clinical."""

    person_id: str
    name: str
    birth_date: date | None
    gender: str | None
    nhs_number: str | None
    postcode: str | None
    sources: int
    died: bool = False  # a released source Patient says the person has died


def actor_for(fw: Framework, username: str) -> Actor:
    """The actor for a configured user; an unknown user becomes an actor with no role (denied)."""
    user = fw.users.get(username)
    if user is None:
        return Actor(username=username, role=None, organisation="")
    return Actor(username=username, role=fw.roles.get(user.role), organisation=user.organisation)


def citizen_actor(fw: Framework, person_id: str) -> Actor:
    """A citizen signed in to the patient portal, who may read only their own record."""
    return Actor(username=f"{CITIZEN_PREFIX}{person_id}", role=fw.roles.get("patient"), organisation="",
                 person_id=person_id)


class GovernedRecords:
    """Reads of patient data on behalf of one actor, for one purpose, in one request."""

    def __init__(self, session: Session, fw: Framework, actor: Actor, purpose: str = "direct-care",
                 request_id: str | None = None, source_address: str | None = None,
                 resource_types: frozenset[str] | None = None, client_id: str | None = None,
                 minted_by: str | None = None, token_id: str | None = None) -> None:
        """`resource_types`: what the caller's token scopes allow (None: every type). The decision point
        still decides; scopes only narrow what a client asked to receive. `client_id`: the SMART app the
        user reads through; `minted_by`: the operator account whose `sharedcare token` (`token_id`) the
        caller holds; each named in every audit event."""
        self.resource_types = resource_types
        self.client_id = client_id
        self.minted_by, self.token_id = minted_by, token_id
        self.session = session
        self.fw = fw
        self.actor = actor
        self.purpose = purpose
        self.request_id = request_id or str(uuid.uuid4())
        self.source_address = source_address
        self.now = utcnow()
        self._agreements_read: dict[str, Agreement] | None = None  # request-scoped: changes apply next request
        self._on_review_read: dict[str, OnReview] = {}  # read with the decision's inputs, by person
        self._classification_key = classification_key(fw)

    @cached_property
    def _unknown(self) -> Unknown | None:
        """What names the services this reader may not know of (`governance/unnamed.py`)."""
        return unknown_services(self.fw, self.actor.role, self.actor.organisation)

    def _unknown_in(self, decision: Decision) -> Unknown | None:
        """`_unknown`, and the services the patient's Consent hides from this reader (`Decision.unnamed`)."""
        if not decision.unnamed:
            return self._unknown
        return unknown_services(self.fw, self.actor.role, self.actor.organisation, decision.unnamed)

    # -- audit -----------------------------------------------------------------------------------
    def _audit(self, action: AuditAction, outcome: str, patient_id: str | None, **extra: Any) -> int:
        role = self.actor.role.name if self.actor.role else None
        return record_audit(self.session, AuditRecord(
            action=action, outcome=outcome, username=self.actor.username, role=role,
            organisation=self.actor.organisation or None, purpose=self.purpose, patient_id=patient_id,
            request_id=self.request_id, source_address=self.source_address, client_id=self.client_id,
            minted_by=self.minted_by, token_id=self.token_id, **extra))

    def _released(self, action: AuditAction, patient_id: str | None, **extra: Any) -> None:
        """Audit a permitted read and commit it at once, before the caller builds its answer: the entry is
        durable before any data leaves (TRUST AU4), and the chain's write lock (SQLite's one writer,
        PostgreSQL's lock on the head row) is held for the append alone. Committed at the end of the
        request instead, the lock was held while the answer was built (a large Bundle: milliseconds),
        and every other reader's append waited, on SQLite in the busy handler's sleeps. The commit is the
        session's: a caller must hold no other change in it when it reads (none does; refusals commit
        the same way)."""
        if self.session.new or self.session.dirty or self.session.deleted:
            raise RuntimeError("a governed read would commit changes the caller has pending")
        self._audit(action, "permit", patient_id, **extra)
        self.session.commit()

    @property
    def _agreements(self) -> dict[str, Agreement]:
        """Every organisation's agreement as it stood at this request's first read of it."""
        if self._agreements_read is None:
            self._agreements_read = effective_agreements(self.session, self.fw)
        return self._agreements_read

    def _request(self, person_id: str) -> tuple[ActiveBasis | None, Request]:
        """The decision's inputs about this person, read now in one statement: this user's basis, their
        choices (from every NHS number their source records carry), the agreements (the first time), and
        what of their records waits on IG review (kept for `_demographics_rule`)."""
        changes, basis, held, review = [], None, [], []
        for kind, a, b, at, object_all, opt_out, orgs, seq, c, provisions in _INPUTS(
                self.session, {"username": self.actor.username, "person_id": person_id, "now": self.now}):
            if kind == "agreement":
                changes.append((seq, a, b, c == FRAMEWORK_FILE, at))
            elif kind == "basis":
                basis = ActiveBasis(a, b, at)
            elif kind == "choices":
                held.append((object_all, orgs, opt_out, provisions))
            else:
                review.append((a, b, seq, c))
        self._on_review_read[person_id] = standing(review)
        if self._agreements_read is None:
            self._agreements_read = agreements_after(self.fw, (change[1:] for change in sorted(changes)))
        return basis, Request(actor=self.actor, purpose=self.purpose, patient_id=person_id, basis=basis,
                              agreements=self._agreements_read, choices=combined_choices(held), now=self.now)

    def _out_of_scope(self, person_id: str) -> Decision | None:
        """A refusal made by a grant narrower than the actor's role, before the decision point is asked
        (a SMART patient-level token: `PatientScopedRecords`); None when there is none."""
        return None

    def _decide(self, request: Request, items: Sequence[Item], groups: Mapping[Alike, int] | None = None) -> Decision:
        """Every read's decision: the narrower grant first, then the sharing framework's policy (`groups`:
        `items` counted by `alike`, when kept with them)."""
        return self._out_of_scope(request.patient_id) or decide(request, items, self.fw, groups)

    def _check(self, request: Request) -> Decision | None:
        """The request-level part of the decision, for pages asked before any data is read."""
        return self._out_of_scope(request.patient_id) or check_request(request, self.fw, require_basis=False)

    def _refuse(self, action: AuditAction, person_id: str | None, decision: Decision,
                **extra: Any) -> AccessDenied | NotFound:
        """Audit a refusal and make its error. A refusal that turns on the patient (their objections) or
        on a patient other than a patient-scoped token's or a citizen's own is answered as an id that does
        not exist (TRUST AC3), on every path (the API, the portal, recording a basis): the caller learns
        neither that the person is stored nor what they chose. Refusals about the caller (no basis yet, a role
        or agreement that does not allow it) keep their reason, which says what to do."""
        self._audit(action, "deny", person_id, rule_id=decision.rule_id, reason=decision.reason, **extra)
        self.session.commit()  # the denial's audit event must survive the error response
        if decision.rule_id in REFUSED_AS_MISSING:
            return NotFound(f"no patient {person_id}")
        return AccessDenied(decision.rule_id, decision.reason)

    def _missing(self, action: AuditAction, asked: str, message: str, **extra: Any) -> NotFound:
        """Audit an id stored nowhere as a refusal is audited (one `deny` entry of the same action, rule
        `not-found`, naming the reference `asked` for) and make its error. The log's size is public
        (`/audit/checkpoint`): were only refusals written, it would tell "stored, but not for you" from
        "missing", which the 404 hides (TRUST AC3); and a probe of made-up ids is on record (AU3). The entry
        names no patient, as there is none: a citizen's "who looked" and a search by patient are unchanged."""
        self._audit(action, "deny", None, rule_id="not-found", resource=asked, **extra)
        self.session.commit()  # the audit event must survive the error response, as a refusal's does
        return NotFound(message)

    def _person_exists(self, person_id: str) -> bool:
        return run(self.session, _PERSON_EXISTS, {"person_id": person_id}).first() is not None

    # -- point-of-care basis ---------------------------------------------------------------------
    def active_basis(self, person_id: str) -> ActiveBasis | None:
        row = run(self.session, _ACTIVE_BASIS,
                  {"username": self.actor.username, "person_id": person_id, "now": self.now}).first()
        return ActiveBasis(row.basis, row.reason, row.expires_at) if row else None

    def needs_basis(self, person_id: str) -> bool:
        """Whether a basis must be recorded before this record opens. Someone who may not open it at all
        (suspended organisation, objection, wrong purpose, a citizen) is refused here, audited, rather
        than shown a form whose answer would be refused."""
        if not self._person_exists(person_id):
            raise self._missing(AuditAction.RECORD_READ, f"Patient/{person_id}", f"no patient {person_id}")
        basis, request = self._request(person_id)
        denied = self._check(request)
        if denied is not None:
            raise self._refuse(AuditAction.RECORD_READ, person_id, denied)
        purpose = self.fw.purposes.get(self.purpose)
        return purpose is not None and purpose.needs_basis and basis is None

    def record_basis(self, person_id: str, basis: str, reason: str) -> AccessBasis:
        """Record why this user is opening this person's record; non-explicit bases go to IG review.

        A patient the caller may not know of (an objection to their organisation, outside a patient-scoped
        token) is answered as missing before the form is looked at, whatever it holds (TRUST AC3). A
        user-facing app (a token with `client_id` naming a user) may not record one: its scopes grant reads,
        and a basis (break glass above all) is the user's own declaration, made in the portal before the app
        is launched. A backend client (a partner's system, registered by IG for its organisation and role,
        with no portal) records its own."""
        from sharedcare.governance.clients import CLIENT_PREFIX  # here: clients imports this module

        if self.session.get(Person, person_id) is None:
            raise self._missing(AuditAction.BASIS_RECORD, f"Patient/{person_id}", f"no patient {person_id}")
        denied = self._check(self._request(person_id)[1])  # the request-level rules: a basis is not asked
        if denied is not None and denied.rule_id in REFUSED_AS_MISSING:
            raise self._refuse(AuditAction.BASIS_RECORD, person_id, denied)
        if self.client_id is not None and not self.actor.username.startswith(CLIENT_PREFIX):
            self._audit(AuditAction.BASIS_RECORD, "deny", person_id, basis=basis, reason=(reason or "").strip(),
                        rule_id="deny-basis-app")
            self.session.commit()
            raise AccessDenied("deny-basis-app", "an app may not record why you are opening a record: record it in "
                                                 "the portal, then open the app")
        rule = self.fw.basis.get(basis)  # type: ignore[call-overload]
        reason = (reason or "").strip()
        problem = None
        if rule is None:
            problem = f"basis must be one of {', '.join(self.fw.basis)}"
        elif rule.needs_reason and (len(_visible(reason)) < self.fw.min_reason_chars
                                    or not any(ch.isalpha() for ch in reason)):
            problem = f"a {basis} basis needs a reason of at least {self.fw.min_reason_chars} characters"
        if problem:
            self._audit(AuditAction.BASIS_RECORD, "deny", person_id, basis=basis, reason=reason,
                        rule_id="deny-basis-invalid")
            self.session.commit()
            raise InvalidRequest(problem)
        assert rule is not None  # noqa: S101 - problem was set otherwise
        role = self.actor.role
        if rule.permission is not None and (role is None or rule.permission not in role.permissions):
            self._audit(AuditAction.BASIS_RECORD, "deny", person_id, basis=basis, reason=reason,
                        rule_id="deny-basis-permission")
            self.session.commit()
            label = role.label if role else "your role"
            raise AccessDenied("deny-basis-permission", f"{label} staff may not use {basis} access: ask a "
                                                         "clinician who may, or record another reason")
        if denied is not None:  # about the caller (an agreement, a purpose): said once the form is right
            raise self._refuse(AuditAction.BASIS_RECORD, person_id, denied)
        # Opened by its id alone: no search that found the person, no read of their record, by this user in
        # the last FOUND_WITHIN. A record id is no secret (UUIDv5 of a source's own id: anyone who knows a
        # hospital number can compute one; URLs, browser histories, logs), so it is allowed (care is not
        # blocked) but said in the audit and queued for IG (`review.OPENED_BY_ID`). An EHR launch is no
        # exception to make: an app may not record a basis (above), the user records it in the portal before
        # the launch, and the app's reads count as the user's reads afterwards. A backend client is not
        # exempt either: it finds a patient as a user does, by a search (FHIR `Patient?identifier=`, audited
        # under its own name), from the NHS number its own system holds; one that computes ids is this pattern.
        by_id = not self._found_before(person_id)
        row = AccessBasis(username=self.actor.username, person_id=person_id, basis=basis, reason=reason,
                          granted_at=self.now, expires_at=self.now + timedelta(hours=rule.hours))
        self.session.add(row)
        seq = self._audit(AuditAction.BASIS_RECORD, "permit", person_id, basis=basis, reason=reason,
                          rule_id="permit-basis", detail={FOUND_DETAIL: BY_ID} if by_id else {})
        self.session.flush()
        flag_access(self.session, self.fw, self.actor, person_id, basis, reason, seq, self.now, by_id=by_id)
        self.session.flush()
        return row

    # -- reads -----------------------------------------------------------------------------------
    def _item(self, row: StoredRow) -> Item:
        # Unpacked by position: a Row's attributes by name cost a microsecond each, per resource.
        _, resource_type, source_org, _, content, category, key, _, _, _ = row
        labels = (content.get("meta") or {}).get("security")
        security = frozenset(f"{s.get('system')}|{s.get('code')}" for s in labels) if labels else frozenset()
        if category is None or key != self._classification_key:  # not classified under this framework
            org = self.fw.organisation(source_org)
            category = classify(content, org.kind if org else "unknown", self.fw)
        return Item(content, resource_type, source_org, category, security)

    def _rows(self, person_id: str, patients_only: bool) -> list[StoredRow]:
        """The person's stored rows, newest first: which rows, their columns and stamps read now, each
        content decoded once per stamp (governance/content_cache.py) rather than on every request."""
        stamped = list(run(self.session, _PERSON_PATIENT_STAMPS if patients_only else _PERSON_STAMPS,
                           {"person_id": person_id}))
        wanted: dict[str, Stamp] = {row[0]: (row[9], row[10], row[7]) for row in stamped}
        cache = content_cache(self.session)
        contents = cache.get_many(wanted.items())
        if len(contents) < len(wanted):
            missing = [rid for rid in wanted if rid not in contents]
            fresh: list[tuple[str, Stamp, dict[str, Any], int]] = []
            for start in range(0, len(missing), _CONTENTS_PER_STATEMENT):
                chunk = missing[start:start + _CONTENTS_PER_STATEMENT]
                fresh += [(rid, (version, digest, received), json_loads(text), len(text))
                          for rid, version, digest, received, text in run(self.session, _CONTENTS, {"ids": chunk})]
            cache.put_many(fresh)
            contents.update((rid, content) for rid, _, content, _ in fresh)
            if len(contents) < len(wanted) or any(wanted.get(rid) != stamp for rid, stamp, _, _ in fresh):
                # Written or moved between the two statements (each sees what is committed when it runs,
                # on SQLite as on PostgreSQL): read the rows whole, in one statement.
                whole = _PERSON_PATIENTS if patients_only else _PERSON_ROWS
                return list(run(self.session, whole, {"person_id": person_id}))
        return [(rid, rtype, org, system, contents[rid], category, key, recorded, received, pid)
                for rid, rtype, org, system, category, key, recorded, received, pid, _, _ in stamped]

    def _items(self, person_id: str, patients_only: bool = False) -> list[tuple[Item, StoredRow]]:
        """The person's resources through their linked source records, newest first, as the decision sees them
        (each made once per cached document and stored category, not on every request)."""
        return self._view(person_id, patients_only).pairs

    def _view(self, person_id: str, patients_only: bool = False) -> RecordItems:
        """`_items` with the decision's items alone and their count by `alike`. What is made of the rows
        (`_View`) is kept while the rows read now equal the rows it was made from (ContentCache.view): a
        large record's items were looked up one by one and grouped again on every read (0.5 ms of 1,100)."""
        current, rows = self._classification_key, self._rows(person_id, patients_only)
        cache = content_cache(self.session)
        key = ("view", person_id, patients_only, current)
        view: _View | None = cache.view(key, rows)
        if view is None:
            view = self._make_view(rows, current)
            cache.keep_view(key, rows, view, ((row[0], row[4]) for row in rows))
        if view.withdrawn:  # a resource withdrawn by its source (entered-in-error) is kept in its history, not read
            rows = [row for row, gone in zip(rows, view.withdrawn, strict=True) if not gone]
        return RecordItems(view.items, rows, view.groups, view.keys)

    def _make_view(self, rows: list[StoredRow], current: str) -> _View:
        def make(i: int) -> tuple[Item, bool]:
            return self._item(rows[i]), entered_in_error(rows[i][4])

        # The view is kept under its stored category and classification key and the current key, as one
        # string made once per category a request rather than a tuple per resource (a tuple's hash is not
        # cached): about 50 of the 500 us this look-up took on a 1,100-resource record.
        keys: dict[str | None, tuple[str | None, str]] = {}  # stored category -> (stored key, view's key)
        wanted: list[tuple[str, dict[str, Any], Hashable]] = []
        for row in rows:
            held = keys.get(row[5])
            if held is None or held[0] != row[6]:
                held = keys[row[5]] = (row[6], repr(("item", row[5], row[6], current)))
            wanted.append((row[0], row[4], held[1]))
        views = content_cache(self.session).kept_each(wanted, make)
        items = tuple(item for item, withdrawn in views if not withdrawn)
        withdrawn = tuple(gone for _, gone in views) if any(gone for _, gone in views) else ()
        return _View(items, MappingProxyType(count_alike(items)), withdrawn,
                     tuple((i.alike, i.category, i.resource_type) for i in items))

    def everything(self, person_id: str, query: str | None = None, asked: Iterable[str] = ()) -> RecordView:
        """The combined record of one person, as this actor may see it (audited). A search of the record
        passes its raw `query`, audited base64-encoded with the read, allowed or not (TRUST AU2), and the
        resource types it `asked` for: one the token's scopes leave out refuses the read (`deny-scope`), as
        a read by id does, so that an empty answer is never mistaken for a complete one."""
        searched = ({"detail": {"query": base64.b64encode(query.encode()).decode()}, "fhir_action": "E"}  # BALP query
                    if query is not None else {})
        view = self._view(person_id)
        if not view.items and not self._person_exists(person_id):
            raise self._missing(AuditAction.RECORD_READ, f"Patient/{person_id}", f"no patient {person_id}", **searched)
        basis, request = self._request(person_id)
        action = AuditAction.RECORD_EMERGENCY_READ if basis and basis.basis == "emergency" else AuditAction.RECORD_READ
        decision = self._decide(request, view.items, view.groups)
        outside = sorted(set(asked) - self.resource_types) if self.resource_types is not None else []
        if decision.permitted and outside:
            decision = Decision("deny", "deny-scope", f"the access token's scopes do not include {', '.join(outside)}")
        if not decision.permitted:
            raise self._refuse(action, person_id, decision, **searched)
        # `decision.tier_of` inline, from the view's keys: this runs once per resource of the record
        cache, verdicts, types = content_cache(self.session), decision.verdicts, self.resource_types
        unknown = self._unknown_in(decision)
        served = [self._serve(person_id, row, tier, category, unknown, cache)
                  for (alike, category, resource_type), row in zip(view.keys, view.rows, strict=True)
                  if type(tier := verdicts.get(alike)) is int and (types is None or resource_type in types)]
        patients = [s for s in served if s.resource_type == "Patient"]
        rule = self._demographics_rule(person_id, view.items)
        patient = combined_patient(person_id, patients, rule)
        clinical = [s for s in served if s.resource_type != "Patient"]
        self._released(action, person_id, basis=basis.basis if basis else None,
                       reason=basis.reason if basis else None, rule_id=decision.rule_id,  # the why, for the patient
                       released=[s.reference for s in clinical], withheld=dict(decision.withheld), **searched)
        return RecordView(person_id=person_id, patient=patient, resources=clinical, withheld=decision.withheld,
                          headlines=sorted(decision.headlines, key=lambda h: (h.category, h.organisation)),
                          basis=basis.basis if basis else "",
                          sources=sorted({s.source_org for s in served}), demographics_from=rule.source_of(patients))

    def patient(self, person_id: str) -> PatientRead:
        """The person's combined Patient resource alone (FHIR `Patient/{id}`), decided like `everything`
        but over their source Patient records only, and audited as a read of that resource, with what the
        decision withheld of them counted as `everything` counts it.

        Refused and missing look the same (404), as for any read by id (TRUST AC3): a refusal, audited,
        must not tell the caller that the person exists."""
        view = self._view(person_id, patients_only=True)
        if not view.items:  # a person always has a source Patient record unless there is no such person
            raise self._missing(AuditAction.RESOURCE_READ, f"Patient/{person_id}", f"no Patient {person_id}")
        basis, request = self._request(person_id)
        reference = f"Patient/{person_id}"
        decision = self._decide(request, view.items, view.groups)
        if not decision.permitted:
            self._refuse(AuditAction.RESOURCE_READ, person_id, decision, resource=reference,
                         basis=basis.basis if basis else None)
            raise NotFound(f"no Patient {person_id}")
        served, patient, rule = self._combined_patient(person_id, decision, view.pairs)
        if patient is None or (self.resource_types is not None and "Patient" not in self.resource_types):
            why = "deny-scope" if patient is not None else f"withheld-{next(iter(decision.withheld), 'tier')}"
            self._audit(AuditAction.RESOURCE_READ, "deny", person_id, rule_id=why, resource=reference,
                        basis=basis.basis if basis else None)
            self.session.commit()
            raise NotFound(f"no Patient {person_id}")
        self._released(AuditAction.RESOURCE_READ, person_id, basis=basis.basis if basis else None,
                       reason=basis.reason if basis else None, rule_id=decision.rule_id, resource=reference,
                       withheld=dict(decision.withheld))
        return PatientRead(patient, decision.withheld, rule.order(served, _served_key)[0].tier < 3)

    def _combined_patient(self, person_id: str, decision: Decision, pairs: list[tuple[Item, StoredRow]]
                          ) -> tuple[list[ServedResource], dict[str, Any] | None, DemographicsRule]:
        """The released source Patient records, the one combined Patient made of them, and the rule it chose
        their demographics by."""
        cache, tier_of = content_cache(self.session), decision.tier_of
        unknown = self._unknown_in(decision)
        served = [self._serve(person_id, row, tier, item.category, unknown, cache) for item, row in pairs
                  if (tier := tier_of(item)) is not None]
        rule = self._demographics_rule(person_id, (item for item, _ in pairs))
        return served, combined_patient(person_id, served, rule), rule

    def _demographics_rule(self, person_id: str, items: Iterable[Item]) -> DemographicsRule:
        """How combined_patient chooses the person's demographics: from the stored records' registration
        claims (whatever the role's tier shows) and what of their records waits on IG review."""
        patients = [item for item in items if item.resource_type == "Patient"]
        review = self._on_review_read.get(person_id)
        return demographics_rule(patients, self.fw.gp_practices,
                                 review if review is not None else on_review(self.session, person_id))

    def demographics(self, person_id: str) -> dict[str, Any] | None:
        """Who the person is (their combined Patient at the role's demographics tier) and nothing clinical:
        how an IG officer learns whose record an access was to. Decided and audited like any read (one
        event per person); None when the decision withholds every Patient record."""
        if not self._person_exists(person_id):
            raise self._missing(AuditAction.DEMOGRAPHICS_READ, f"Patient/{person_id}", f"no patient {person_id}")
        view = self._view(person_id, patients_only=True)
        pairs = view.pairs
        decision = self._decide(self._request(person_id)[1], view.items, view.groups)
        if not decision.permitted:
            raise self._refuse(AuditAction.DEMOGRAPHICS_READ, person_id, decision)
        served, patient, _ = self._combined_patient(person_id, decision, pairs)
        self._released(AuditAction.DEMOGRAPHICS_READ, person_id, rule_id=decision.rule_id,
                       released=[s.reference for s in served], withheld=dict(decision.withheld))
        return patient

    def read(self, resource_type: str, resource_id: str) -> ServedResource:
        """One resource by its server id, if the decision for its patient releases it; audited as a read of
        that resource (not of the whole record), naming it. The tier it was released at comes with it: what
        the read's ETag names (api/history.py `etag`).

        Refused and missing look the same (404), so ids cannot be probed for what exists (TRUST AC3);
        the refusal is still audited. The decision is the one `everything` makes for this item: every
        per-item rule depends only on the item and the request."""
        row = run(self.session, _ONE_ROW, {"id": resource_id}).first()
        if row is None or row.resource_type != resource_type or entered_in_error(row.content):
            raise self._missing(AuditAction.RESOURCE_READ, f"{resource_type}/{resource_id}",
                                f"no {resource_type} {resource_id}")
        person_id, reference = row.person_id, f"{resource_type}/{resource_id}"
        basis, request = self._request(person_id)
        decision = self._decide(request, [self._item(row)])
        why = None
        if decision.permitted and not decision.released:
            why = Decision("deny", f"withheld-{next(iter(decision.withheld))}", "withheld from this role")
        elif decision.permitted and self.resource_types is not None and resource_type not in self.resource_types:
            why = Decision("deny", "deny-scope", f"the access token's scopes do not include {resource_type}")
        if not decision.permitted or why is not None:
            self._refuse(AuditAction.RESOURCE_READ, person_id, why or decision, basis=basis.basis if basis else None,
                         resource=reference)
            raise NotFound(f"no {resource_type} {resource_id}")
        released = decision.released[0]
        self._released(AuditAction.RESOURCE_READ, person_id, basis=basis.basis if basis else None,
                       reason=basis.reason if basis else None, rule_id=decision.rule_id, resource=reference)
        return self._serve(person_id, row, released.tier, released.item.category, self._unknown_in(decision))

    def history(self, resource_type: str, resource_id: str, version: int | None = None) -> list[ServedResource]:
        """Every version of one resource this actor may see, newest first (FHIR `_history`), or just
        `version` (vread). Withdrawn (entered-in-error) versions are included: history is where a
        correction can be seen. Each version goes through the decision point as a read would (tier
        redaction, withheld labels, agreements, objections), and so does the current one: a label the
        source has since added (confidential) hides the older versions too. Refused looks like missing
        (TRUST AC3).

        A version is the record of the person it was sent for (its source patient record, followed
        through merges and unmerges to whoever that record belongs to now), which may not be the current
        version's: a source can re-attribute a resource to another patient. Such versions are decided and
        audited against their own person, and left out unless that decision releases them; a refused
        one answers like a missing one. Nothing is shown unless the current version is released."""
        # one answer for every 404 here, missing, refused or withheld: a vread that named the version only for
        # a resource that exists told the reader of a record withheld from them (API security review 2026-12-07)
        unseen = f"no {resource_type} {resource_id}" + (f" version {version}" if version is not None else "")
        current = run(self.session, _ONE_ROW, {"id": resource_id}).first()
        if current is None or current.resource_type != resource_type:
            raise self._missing(AuditAction.RESOURCE_HISTORY, f"{resource_type}/{resource_id}", unseen)
        person_id = current.person_id
        stmt, params = (_VERSIONS, {"id": resource_id}) if version is None else \
            (_ONE_VERSION, {"id": resource_id, "version": version})
        # Older versions in the current row's shape (unclassified: classified now, under this framework),
        # each with the person it belongs to now (None: a version whose patient is not known, never shown).
        current_version = self.session.scalars(select(Resource.version).where(Resource.id == resource_id)).one()
        rows: list[tuple[int, StoredRow]] = [(current_version, current)]
        rows += [(number, (resource_id, resource_type, current.source_org, source_system, content, None, None,
                           recorded_at, received_at, owner))
                 for number, source_system, content, recorded_at, received_at, owner
                 in run(self.session, stmt, params)]
        own = [(number, row) for number, row in rows if row[9] == person_id]
        current_released, served = self._history_of(person_id, resource_type, resource_id, own, version, current,
                                                    unseen)
        if current_released:
            others = sorted({row[9] for _, row in rows if row[9] not in (person_id, None)})
            for other in others:
                theirs = [(number, row) for number, row in rows if row[9] == other]
                served += self._history_of(other, resource_type, resource_id, theirs, version, None, unseen)[1]
        if not served:
            self.session.commit()  # the decisions' audit events must survive the error response
            raise NotFound(unseen)
        return [s for _, s in sorted(served, key=lambda pair: pair[0], reverse=True)]

    def _history_of(self, person_id: str, resource_type: str, resource_id: str, rows: list[tuple[int, StoredRow]],
                    version: int | None, current: StoredRow | None,
                    unseen: str) -> tuple[bool, list[tuple[int, ServedResource]]]:
        """One person's versions of a resource, decided and audited against that person: whether `current`
        (the resource's current row, when it is among them) was released, and the versions served. A
        refusal is audited and committed; when `current` is given it is also raised (as NotFound(`unseen`))."""
        basis, request = self._request(person_id)
        pairs = [(self._item(row), number) for number, row in rows]
        by_item = {id(item): (number, row) for (item, number), (_, row) in zip(pairs, rows, strict=True)}
        decision = self._decide(request, [item for item, _ in pairs])
        asked = [f"{resource_type}/{resource_id}/_history/{number}" for number, _ in rows
                 if version in (None, number)]
        if not decision.permitted:
            self._refuse(AuditAction.RESOURCE_HISTORY, person_id, decision, basis=basis.basis if basis else None,
                         resource=f"{resource_type}/{resource_id}", detail={"versions": ", ".join(asked)})
            if current is not None:
                raise NotFound(unseen)
            return False, []
        current_released = current is None or any(by_item[id(rel.item)][1] is current for rel in decision.released)
        unknown = self._unknown_in(decision)
        served = [(by_item[id(rel.item)][0], self._serve(person_id, by_item[id(rel.item)][1], rel.tier,
                                                              rel.item.category, unknown))
                  for rel in decision.released
                  if current_released and version in (None, by_item[id(rel.item)][0])
                  and (self.resource_types is None or rel.item.resource_type in self.resource_types)]
        # the resource asked for named as a refusal names it (a domain resource): what "who has looked" holds
        # back by (`access_log.requested_resource`), beside the versions released
        self._released(AuditAction.RESOURCE_HISTORY, person_id, basis=basis.basis if basis else None,
                       reason=basis.reason if basis else None, rule_id=decision.rule_id,
                       resource=f"{resource_type}/{resource_id}",
                       released=[f"{resource_type}/{resource_id}/_history/{number}" for number, _ in served],
                       withheld=dict(decision.withheld))
        return current_released, served

    def _serve(self, person_id: str, row: StoredRow, tier: int, category: str, unknown: Unknown | None,
               cache: ContentCache | None = None) -> ServedResource:
        """The stored `row`, released at `tier` in `category`, as served in this person's record. With
        `cache`, what was served before from the same cached document in the same shape (tier, person,
        category, provenance) is served again, with its JSON, rather than redacted, copied and encoded again.
        What a role sees of a service it may not know of (a mental health trust's allergy, to a pharmacist)
        is served from `UNNAMED_SERVICE`, at tier 2 at most (free text may name the service), without the
        identifiers and meta.source that name the service (meta.tag and meta.security lose any coding with its
        ODS code, as every Coding does); in every resource served to such a role, what names the service (a
        recorder, an author, an informationSource, a Coding or Identifier with its ODS code...) says only
        `UNNAMED_SERVICE` or goes (`governance/unnamed.py`). `unknown`: those services (`_unknown_in`), the
        ones the patient's Consent hides from this reader among them."""
        resource_id, resource_type, source_org, source_system, content, _, _, recorded_at, received_at, _ = row
        whole = unknown is not None and source_org in unknown.codes
        if whole:
            source_org, source_name, source_system = "", UNNAMED_SERVICE, ""
            tier = min(tier, 2)
        else:
            org = self.fw.organisation(source_org)
            source_name = org.name if org else source_org

        def make() -> ServedResource:
            out = dict(at_tier(content, tier))
            if whole:
                out = unnamed(out, cast(Unknown, unknown), whole=True)
                meta = {key: value for key, value in out.pop("meta", {}).items() if key != "source"}
                if meta:
                    out["meta"] = meta
            for name in PATIENT_FIELDS:
                if name in out:
                    out[name] = {**out[name], "reference": f"Patient/{person_id}"}
            encoded = orjson.dumps(out) if cache or unknown is not None else None
            named = unknown is not None and not whole and unknown.mentions(cast(bytes, encoded))
            if named:
                # another organisation's record naming the service (only these are walked: the JSON
                # encoded anyway tells which)
                out = unnamed(out, cast(Unknown, unknown), whole=False, checked=True)
                encoded = orjson.dumps(out)
            return ServedResource(out, resource_type, category, tier, source_org, source_name,
                                  source_system, _instant(recorded_at), _instant(received_at),
                                  encoded if cache else None, as_stored=tier >= 3 and not whole and not named)

        if cache is None:
            return make()
        shape = ("served", tier, person_id, category, source_name, source_system, recorded_at, received_at,
                 unknown.codes if unknown is not None else None)
        return cache.kept(resource_id, content, shape, make, _encoded_size)

    # -- search ----------------------------------------------------------------------------------
    def search_patients(self, *, nhs_number: str | None = None, family: str | None = None,
                        given: str | None = None, birth_date: date | None = None,
                        postcode: str | None = None, named: Mapping[str, str] | None = None) -> list[PatientMatch]:
        """Find people by NHS number, or by family name and date of birth (given name optional).

        Audited as IHE BALP asks: one event per patient found, and one when none is found. A user whose
        searches have found unusually many people in an hour is queued for IG (`review.flag_searches`).
        `named`: what the caller calls a criterion, for a refusal (FHIR's `identifier` for `nhs_number`)."""
        _within_limits({"nhs_number": nhs_number, "family": family, "given": given, "postcode": postcode}, named)
        query = urlencode({"nhs_number": nhs_number or "", "family": family or "", "given": given or "",
                           "birthdate": birth_date or "", "postcode": postcode or ""})
        query_b64 = base64.b64encode(query.encode()).decode()
        denied = self._search_refused(query_b64)
        if denied is not None:
            raise AccessDenied(denied.rule_id, denied.reason)
        stmt = select(PatientRecord)
        if nhs_number:
            stmt = stmt.where(PatientRecord.nhs_number == nhs_number)
        elif family and birth_date:
            # the surname as stored for search (`compare.search_key`), an index lookup with the birth date
            stmt = stmt.where(PatientRecord.family_key == _family_key(family), PatientRecord.birth_date == birth_date)
            given_key = _given_key(given)
            if given_key is not None:
                # the given name as stored for search (`compare.search_key`), from its start ("Moh" finds
                # Mohammed, "cagla" ÇAĞLA, "Mary Jane" Mary-Jane); one typed with no letter finds no one
                stmt = stmt.where(PatientRecord.given_key.startswith(given_key, autoescape=True) if given_key
                                  else false())
            if postcode:
                stmt = stmt.where(PatientRecord.postcode == " ".join(postcode.upper().split()))
        else:
            raise InvalidRequest("search by NHS number, or by family name and date of birth")
        wanted = _Criteria(nhs_number, family, given, birth_date, postcode)
        candidates = sorted({r.person_id for r in self.session.scalars(stmt.limit(200))})
        # A search that matched no record asks after no one as it would after a person it may not see: a
        # person matched but hidden (an objection to the reader's organisation, a suspended partner's records
        # alone) took `_visible_match`'s statements more, and a median of the times told them apart
        # (sixth security review, 2026-12-06). Two such people still take longer than one.
        matches = [m for m in (self._visible_match(pid, wanted) for pid in candidates or [NO_PERSON]) if m is not None]
        for match in matches:
            seq = self._audit(AuditAction.PATIENT_SEARCH, "permit", match.person_id, detail={"query": query_b64})
        if matches:  # more people found this hour than the framework expects: the IG review queue (review.py)
            flag_searches(self.session, self.fw, self.actor, matches[-1].person_id, seq, self.now)
        else:
            self._audit(AuditAction.PATIENT_SEARCH, "permit", None, detail={"query": query_b64, "results": "0"})
        self.session.commit()  # as `_released`: durable before the results leave, the lock held no longer
        return sorted(matches, key=lambda m: (m.name, m.birth_date or date.min))

    def keep_search(self, form: dict[str, str]) -> str:
        """Keep a portal search's criteria (`form`, as typed) for its results page, bound to this user and
        session (the token's `jti`) for KEPT_SEARCH_FOR; returns the page's id, random. Nothing is searched
        here (a user who may not search is refused, audited): the page searches, through `search_patients`,
        each time it is shown. Expired searches
        are deleted as a new one is kept (a session's own at its sign-out: `OAuthStore.revoke`)."""
        _within_limits(form)
        if not self.token_id:
            raise InvalidRequest("a search's results page needs a session: sign in to the portal")
        denied = self._search_refused(base64.b64encode(urlencode(form).encode()).decode())
        if denied is not None:  # one who may not look anyone up is refused now, audited, with nothing kept
            raise AccessDenied(denied.rule_id, denied.reason)
        self.session.execute(delete(KeptSearch).where(KeptSearch.expires_at < self.now))
        kept = KeptSearch(id=secrets.token_urlsafe(24), username=self.actor.username, session_id=self.token_id,
                          criteria=dict(form), created_at=self.now, expires_at=self.now + KEPT_SEARCH_FOR)
        self.session.add(kept)
        return kept.id

    def kept_search(self, search_id: str) -> dict[str, str] | None:
        """The criteria kept as `search_id` by this user in this session, unexpired; None otherwise (another
        user's or session's, expired, made up: told apart to no one), audited as a search refused."""
        kept = self.session.get(KeptSearch, search_id) if len(search_id) <= KEPT_FIELD_MAX else None
        if kept is not None and kept.username == self.actor.username and kept.session_id == self.token_id \
                and kept.expires_at > self.now:
            return {str(name): str(value) for name, value in kept.criteria.items()}
        self._audit(AuditAction.PATIENT_SEARCH, "deny", None, rule_id="deny-search-not-kept",
                    reason="no search of this user's session is kept as this results page (another user's or "
                           "session's, expired, or made up)", detail={"kept_search": search_id[:KEPT_FIELD_MAX]})
        self.session.commit()
        return None

    def _search_refused(self, query_b64: str, action: AuditAction = AuditAction.PATIENT_SEARCH) -> Decision | None:
        """Why this actor may not look anyone up (audited as `action` refused: a search, or the basis form's
        look-up), or None when they may."""
        denied = check_request(self._request("")[1], self.fw, require_basis=False)
        if denied is None and self.resource_types is not None and "Patient" not in self.resource_types:
            denied = Decision("deny", "deny-scope", "the access token's scopes do not include Patient")
        if denied is None and self.actor.role and self.actor.role.tier("demographics") < 1:
            denied = Decision("deny", "deny-tier", "your role may not look up patients")
        if denied is not None:
            self._audit(action, "deny", None, rule_id=denied.rule_id, reason=denied.reason,
                        detail={"query": query_b64})
            self.session.commit()
        return denied

    def identify(self, person_id: str) -> PatientMatch | None:
        """Who a person is, exactly as a search that found them would show this actor (`_visible_match`: name,
        born, NHS number, postcode where the role sees addresses; nothing clinical), for the basis form to name
        the patient it records a basis against (twins found by one search, one mis-tap). Audited as
        `PATIENT_IDENTIFY` (the query the person's id), one event naming them; None, audited as one that named
        no one, when no search by this actor could find them (or they may not look anyone up). Not audited as
        a search: each render of the form would read as another "found you in a search" to the citizen, and
        would count as having found them (privacy review of 2026-12-07, D3 and D4).

        Only for someone this actor found, or whose record they read, in the last FOUND_WITHIN (the audit says
        so): whom they have already seen named. A record's id (in a URL, a browser's history, a log) is not a
        way to learn who someone is without knowing their name and date of birth or NHS number. The form's own
        look-ups do not count, or viewing it once a day would name the person for ever with no search again."""
        query_b64 = base64.b64encode(urlencode({"person_id": person_id}).encode()).decode()
        if self._search_refused(query_b64, AuditAction.PATIENT_IDENTIFY) is not None:
            return None
        match = self._visible_match(person_id, _ANYONE) if self._found_before(person_id) else None
        if match is not None:
            self._audit(AuditAction.PATIENT_IDENTIFY, "permit", person_id, detail={"query": query_b64})
        else:
            self._audit(AuditAction.PATIENT_IDENTIFY, "permit", None, detail={"query": query_b64, "results": "0"})
        self.session.commit()
        return match

    def _found_before(self, person_id: str) -> bool:
        """Whether the audit shows this actor found this person by a search, or read their record, in the last
        FOUND_WITHIN: whether they know who the person is other than by the record's id."""
        return self.session.execute(select(AuditEntry.seq).where(
            AuditEntry.patient_id == person_id, AuditEntry.username == self.actor.username,
            AuditEntry.outcome == "permit", AuditEntry.action.in_(FOUND_BY), AuditEntry.recorded_at
            >= self.now - FOUND_WITHIN).limit(1)).first() is not None

    def _visible_match(self, person_id: str, wanted: _Criteria) -> PatientMatch | None:
        """The person as this actor may find them: only through source records whose record of who the person
        is a read would release (the decision point asked for each Patient, with any basis this actor could
        give), never if they objected to the actor's organisation, and with their postcode only where the
        role sees addresses (demographics tier 2). A source record's own columns are its Patient's, so one
        whose Patient is withheld (restricted by its source, a service the role may not know of, an
        objection, a suspended agreement) neither matches nor names anyone. Name, birth date, gender and
        postcode are those of the released source Patient the combined Patient is made of (combined_patient's
        rule), so a result shows who the record will show; a source that sent no Patient (a laboratory's
        patient alone) is asked about as a Patient of its own without labels, and shows as the record."""
        records = list(self.session.scalars(select(PatientRecord).where(PatientRecord.person_id == person_id)))
        # one statement of one shape, whether or not the person has a number (or exists: `search_patients`)
        choices = choices_for(self.session, sorted({n for r in records for n in (r.nhs_number, r.last_nhs_number)
                                                    if n}) or [""])
        # A person hidden by an objection or a suspended agreement is left before their Patients are read,
        # as one who matched nothing is (the same statements: sixth security review). One hidden only by
        # what the Patients say (a restriction, a service the role may not know of) costs those reads more.
        own, today = self.actor.organisation, self.now.date()
        if own in choices.object_orgs or not any(
                wanted.matches(r) for r in records
                if (agreement := self._agreements.get(r.source_org)) is not None and agreement.in_force(today)
                and not (choices.object_all and r.source_org != own) and r.source_org not in choices.object_orgs):
            return None
        pairs = self._items(person_id, patients_only=True)
        record_of = dict(self.session.execute(_PATIENT_RECORD_OF, {"person_id": person_id}).all())
        sent = {record_of.get(row[0]) for _, row in pairs}
        unsent = {r.id: Item({"resourceType": "Patient"}, "Patient", r.source_org, "demographics")
                  for r in records if r.id not in sent}
        items = [item for item, _ in pairs] + list(unsent.values())
        released = self._released_to_find(person_id, choices, items)
        shown_records = {record_of.get(row[0]) for item, row in pairs if id(item) in released}
        visible = [r for r in records if r.id in shown_records or (r.id in unsent and id(unsent[r.id]) in released)]
        matched = next((r for r in visible if wanted.matches(r)), None)
        if matched is None:
            return None
        patients = [item for item, _ in pairs]
        shown = self._demographics_rule(person_id, patients).order(
            [(item, row) for item, row in pairs if id(item) in released],
            lambda pair: (str(pair[0].resource.get("id")), pair[0].source_org, pair[1][7]))
        died = any(death_of(item.resource) for item, _ in shown)
        if shown:
            item = shown[0][0]
            found, source_org = patient_demographics(item.resource, None), item.source_org
            family, given, born, gender, postcode = found.family, found.given, found.birth_date, found.gender, \
                found.postcode
        else:
            source_org = matched.source_org
            family, given, born, gender, postcode = matched.family, matched.given, matched.birth_date, \
                matched.gender, matched.postcode
        role = self.actor.role
        sees_address = role is not None and (role.tier("demographics") >= 2 or source_org == own)
        return PatientMatch(person_id=person_id, name=f"{(family or '').upper()}, {given or ''}",
                            birth_date=born, gender=gender,
                            nhs_number=next((r.nhs_number for r in visible if r.nhs_number), None),
                            postcode=postcode if sees_address else None, sources=len(visible), died=died)

    def _released_to_find(self, person_id: str, choices: Choices, items: list[Item]) -> set[int]:
        """The items (by `id`) the decision point releases to this actor under some basis they could give: no
        basis is recorded before a patient is found, so one whose role may break glass finds a patient who
        shares only in an emergency (the record itself stays behind the basis given when it is opened)."""
        role, rule = self.actor.role, self.fw.basis.get("emergency")  # as record_basis judges break glass
        breaks_glass = role is not None and rule is not None and (rule.permission is None
                                                                  or rule.permission in role.permissions)
        released: set[int] = set()
        for basis in ("explicit-consent", "emergency") if breaks_glass else ("explicit-consent",):
            request = Request(self.actor, self.purpose, person_id, ActiveBasis(basis, "finding the patient",
                                                                               self.now + timedelta(hours=1)),
                              self._agreements, choices, self.now)
            decision = self._decide(request, items)
            if decision.permitted:
                released.update(id(item) for item in items if isinstance(decision.verdicts[item.alike], int))
        return released


# The longest each typed criterion may be, about what `PatientRecord` holds (a name of 100 characters, a
# postcode of 10, spaced or not), so the query each search's audit entries keep stays small: a family name
# padded with 60,000 spaces still folded to the patient's key and wrote an 81 kB entry per person found.
SEARCH_FIELD_MAX = {"nhs_number": 20, "family": 100, "given": 100, "postcode": 20}
KEPT_FIELD_MAX = 64  # any other field of a kept search (the date's parts), and a results page's id


def _within_limits(fields: Mapping[str, str | None], named: Mapping[str, str] | None = None) -> None:
    """Refuse, before anything is searched or audited, a criterion longer than anything stored
    (SEARCH_FIELD_MAX; KEPT_FIELD_MAX for any other field), naming it as the caller does (`named`)."""
    for name, value in fields.items():
        limit = SEARCH_FIELD_MAX.get(name, KEPT_FIELD_MAX)
        if value and len(value) > limit:
            raise InvalidRequest(f"{(named or {}).get(name, name)}: at most {limit} characters (nothing stored is "
                                 "longer), not searched")
# How long a portal search's results page works (`keep_search`): Back from the record just opened, not later
KEPT_SEARCH_FOR = timedelta(minutes=30)


@dataclass(frozen=True)
class _Criteria:
    """A patient search, checked again against each source record a person's match may be built from."""

    nhs_number: str | None
    family: str | None
    given: str | None
    birth_date: date | None
    postcode: str | None

    def matches(self, record: PatientRecord) -> bool:
        if self.nhs_number:
            return record.nhs_number == self.nhs_number
        given_key = _given_key(self.given)
        return (record.family_key == _family_key(self.family or "")
                and record.birth_date == self.birth_date
                and (given_key is None or given_key != "" and (record.given_key or "").startswith(given_key))
                and (not self.postcode or record.postcode == " ".join(self.postcode.upper().split())))


# What shows a user who someone is: a search that found them, a read of their record (its banner). `identify`
# names a person only to a user the audit shows one of these for, this recently; its own entries
# (PATIENT_IDENTIFY) are not among them, so the form cannot keep the window open by itself.
# (FOUND_WITHIN is review.py's: a basis recorded with neither queues an "opened-by-id" item, once in it.)
FOUND_BY = (AuditAction.PATIENT_SEARCH, AuditAction.RECORD_READ, AuditAction.RECORD_EMERGENCY_READ)


def _family_key(typed: str) -> str:
    """The surname typed as the search compares it with each record's `family_key`; "" (no record's key) when
    it holds no letter, so it finds no one rather than every record without a surname."""
    return search_key(typed) or ""


def _given_key(typed: str | None) -> str | None:
    """The given name typed as the search compares it with the start of each record's `given_key`: None when
    none was typed (or only spaces), "" when it holds no letter ("%", "'"), which finds no one rather than every
    record with a given name (`%` and `_` were LIKE's wildcards once, and let any name fill the candidates)."""
    return None if typed is None or not typed.strip() else search_key(typed) or ""


@dataclass(frozen=True)
class _Anyone(_Criteria):
    """Every source record of one person: who they are, as a search that found them shows them (`identify`)."""

    def matches(self, record: PatientRecord) -> bool:
        return True


_ANYONE = _Anyone(None, None, None, None, None)

T = TypeVar("T")


@dataclass(frozen=True)
class DemographicsSource:
    """Whose record a person's shared demographics are, for the page to say: the organisation, whether it
    is the practice the person is registered with, and the other practices that also claim the person's
    registration (a competing claim awaiting IG review, a practice that has not yet let the person go)."""

    org: str
    registered: bool
    also_claimed_by: tuple[str, ...]
    death_recorded_by: tuple[str, ...] = ()  # the organisations whose released Patient says the person died


@dataclass(frozen=True)
class DemographicsRule:
    """The order in which a person's source Patients give their shared demographics (combined_patient's
    docstring says it in words). Ids are the Patients' server ids."""

    gp_orgs: frozenset[str]
    registered: frozenset[str]  # GP practices' Patients whose registration claim is trusted
    confirmed: frozenset[str]  # ... of which IG found a competing claim appropriate (the patient moved there)
    self_made: frozenset[str]  # Patients of records self-made by a practice's FHIR write, awaiting IG
    claimants: dict[str, str]  # every registration claim: Patient id -> practice

    def order(self, patients: list[T], key: Callable[[T], tuple[str, str, datetime]]) -> list[T]:
        """`patients` best first; `key` gives each one's (server id, source organisation, recorded time)."""
        def rank(patient: T) -> tuple[bool, bool, bool, bool, datetime]:
            patient_id, source_org, recorded_at = key(patient)
            registered = patient_id in self.registered
            return (patient_id not in self.self_made, registered, registered and patient_id in self.confirmed,
                    source_org in self.gp_orgs, recorded_at)
        return sorted(patients, key=rank, reverse=True)

    def source_of(self, patients: list[ServedResource]) -> DemographicsSource | None:
        """Whose record combined_patient takes the demographics from, for the page to say; the other claims
        named are only among the released `patients` (a practice whose data is withheld is not named)."""
        chosen = self.order(patients, _served_key)
        if not chosen:
            return None
        org = chosen[0].source_org
        others = {self.claimants[pid] for pid in (str(p.content.get("id")) for p in patients) if pid in self.claimants}
        return DemographicsSource(org, str(chosen[0].content.get("id")) in self.registered,
                                  tuple(sorted(others - {org})),
                                  tuple(sorted({p.source_org for p in patients if death_of(p.content)})))


def demographics_rule(patients: Iterable[Item], gp_orgs: frozenset[str], review: OnReview) -> DemographicsRule:
    """combined_patient's rule for one person, from their stored source Patients (all of them, whatever a
    role's tier shows, so every reader gets the same choice), the GP practices (`Framework.gp_practices`)
    and what of their records waits on IG."""
    claimants = {str(item.resource.get("id")): item.source_org for item in patients
                 if item.resource_type == "Patient" and item.source_org in gp_orgs
                 and claims_registration(item.resource, item.source_org)}
    claims = frozenset(claimants) - review.self_made
    return DemographicsRule(gp_orgs, (claims - review.contested) or claims, review.confirmed, review.self_made,
                            claimants)


def _served_key(served: ServedResource) -> tuple[str, str, datetime]:
    return str(served.content.get("id")), served.source_org, served.recorded_at


def combined_patient(person_id: str, patients: list[ServedResource], rule: DemographicsRule) -> dict[str, Any] | None:
    """One Patient for the person, with every source's identifiers. Its demographics (address, telecom,
    next of kin: what a clinician calls on) are one source record's, the first of (`DemographicsRule`):
    1. not a record self-made by a practice's own FHIR write still awaiting IG review (governance/review.py):
       anyone who may write could otherwise replace them;
    2. the registered practice's: a GP practice's active Patient naming that practice as the person's GP,
       unless its claim is a competing one (made while another practice already claimed the person),
       which waits on IG review and counts only once IG finds it appropriate or no other claim is left;
       a claim IG found appropriate (the patient moved there) before one never questioned;
    3. a GP practice's record, else any;
    the most recently recorded first within each. The patient search (`GovernedRecords.search_patients`)
    and the pseudonymised export (governance/secondary.py) choose by the same rule; `DemographicsSource`
    says whose record it was, for the page."""
    if not patients:
        return None
    preferred = rule.order(patients, _served_key)
    combined = carrying_death([served.content for served in preferred])
    combined["id"] = person_id
    seen, identifiers = set(), []
    for served in preferred:
        for identifier in served.content.get("identifier", []):
            key = (identifier.get("system"), identifier.get("value"))
            if key not in seen:
                seen.add(key)
                identifiers.append(identifier)
    combined["identifier"] = identifiers
    return combined


def carrying_death(ordered: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of the first of a person's source Patients (`ordered` best first), carrying the first record of
    a death among them all: a hospital that recorded a death (PID-29/30) must not be hidden behind a GP
    record that has not caught up, and a `deceasedBoolean` false from one source says less than a death
    recorded by another. The page and the export then say the person died, whoever's contact details show."""
    combined = {key: value for key, value in ordered[0].items()
                if key not in ("deceasedBoolean", "deceasedDateTime")}
    combined.update(next((death for patient in ordered if (death := death_of(patient))), {}))
    return combined


def death_of(patient: dict[str, Any]) -> dict[str, Any]:
    """The Patient's record of a death (`deceasedDateTime`, or `deceasedBoolean` true), or nothing."""
    if patient.get("deceasedDateTime"):
        return {"deceasedDateTime": patient["deceasedDateTime"]}
    return {"deceasedBoolean": True} if patient.get("deceasedBoolean") is True else {}
