"""The audit log: every decision, permit or deny, appended as a FHIR-shaped AuditEvent to a hash chain.

Each entry's hash covers its content and the previous entry's hash, so `verify` finds any entry that
was edited, removed or reordered. The hash is an HMAC under the chain's key (`Settings.audit_chain_key`),
which the database does not hold: the application's own role may INSERT, and the triggers accept any entry
that follows the head, but without the key no one can write an entry that `verify` accepts. Entries written
before the chain had a key (up to migration 0024's `CHAIN_KEYED` entry) keep their plain SHA-256, and the
checkpoints witnesses took of them (governance/checkpoints.py) are what fixes them. The key can be rotated
(`rekey`): a marker written under the old key names the new one, and the entries after it are keyed by that;
each epoch is checked under its own key (`chain_key`), the retired ones given as SHAREDCARE_AUDIT_KEYS_RETIRED.

Entries hold references and counts, never clinical content or tokens (TRUST AU5). Appending locks the one-row
head table (created with the schema), so concurrent writers stay in one chain.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import threading
import time
import uuid
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, cast

import orjson
from sqlalchemy import ColumnElement, String, Table, bindparam, func, insert, literal_column, select, update
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.store.database import AUDIT_EPOCHS, AUDIT_KEY, AUDIT_RETIRED, AuditEpochs, Database, Prepared
from sharedcare.store.models import CHAIN_KEYED, AuditEntry, AuditHead

GENESIS = "0" * 64
SEQ_MOST = 2**31 - 1  # the largest sequence number: audit_events.seq is an INTEGER (4 bytes on PostgreSQL)
# What a read released is stored as one entity of this name holding every reference, space-separated
# (FHIR ids and `Type/id/_history/n` have no spaces), in the order served: exact, and written, hashed and
# stored in a fraction of the time one entity per reference took on a large record (1,100 entities were
# most of governance's cost of a `$everything`). `expanded` gives the one-entity-each form back.
RELEASED = "released"
USER_SYSTEM = "https://sharedcare.example/Id/user"
ACTION_SYSTEM = "https://sharedcare.example/CodeSystem/audit-action"  # AuditEvent.type: an AuditAction
# A username (and token subject) so prefixed names a person signed in to the patient portal, `patient:{person_id}`,
# not a configured user: what a citizen acts and is audited as
CITIZEN_PREFIX = "patient:"
ON_BEHALF_OF = "http://hl7.org/fhir/StructureDefinition/auditevent-OnBehalfOf"
OPERATOR_SYSTEM = "https://sharedcare.example/Id/operator"  # an account on the server (`sharedcare token`)
JTI_PREFIX = "urn:ietf:params:oauth:jti:"  # IHE BALP: a token's id, as AuditEvent.agent.policy carries it
AUTHORISATION_SERVER = {"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                        "code": "authserver", "display": "authorization server"}
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"  # fhir.uk_core's, which imports identity, which audits


class AuditAction(StrEnum):
    """What happened, named `area:subject:action` so that a reader can filter by prefix."""

    RECORD_READ = "clinical:record:read"
    RECORD_EMERGENCY_READ = "clinical:record:emergency-read"
    RESOURCE_READ = "clinical:resource:read"
    RESOURCE_HISTORY = "clinical:resource:history"
    RECORD_WRITE = "clinical:record:write"
    # an operator's file ingest or replay began (cli.py `_audited_run`): committed before it writes anything, so a run
    # killed part-way is in the log; its end is the `cli` write naming the same run
    INGEST_START = "clinical:ingest:start"
    PATIENT_SEARCH = "clinical:patient:search"
    # the basis form named the person to the user (`GovernedRecords.identify`): not a search, and not a way to
    # find them again (gateway.FOUND_BY)
    PATIENT_IDENTIFY = "clinical:patient:identify"
    DEMOGRAPHICS_READ = "clinical:demographics:read"
    BASIS_RECORD = "access:basis:record"
    LOGIN = "auth:session:login"
    CREDENTIALS_REFUSED = "auth:token:refused"
    TLS_REFUSED = "auth:tls:refused"  # a feed's connection refused at the TLS handshake (sharedcare/tls.py)
    CLOCK_CHECK = "system:clock:check"  # the start-up check that the clock is synchronised (sharedcare/clock_sync.py)
    DEMO_START = "system:demo:start"  # `serve` started in demo mode: the demo sign-in password works (cli.py)
    # a process started and found, at the end of the log, entries that do not verify under its key (`check_key`)
    UNVERIFIED_END = "system:audit:unverified-end"
    CHAIN_KEYED = CHAIN_KEYED  # migration 0024, and `rekey`: the entries after this one are keyed (ChainKey)
    AGREEMENT_SET = "governance:agreement:set"
    PREFERENCE_SET = "governance:preference:set"
    REVIEW_OUTCOME = "governance:review:outcome"
    REVIEW_ESCALATED = "governance:review:escalated"  # an item not worked within its due time (review.escalate)
    MPI_RELINK = "identity:mpi:relink"
    MPI_LINK_CHANGE = "identity:mpi:link-change"
    MPI_REVIEW_VIEW = "identity:mpi:review-view"  # the records in the MPI review queue shown to an operator
    # review items a relink closed (their records now one person, or two valid NHS numbers) or reopened, by id
    MPI_REVIEW_SETTLED = "identity:mpi:review-settled"
    # a person's decision on an MPI review item (link, separate, defer, a change of one, an unmerge's separate)
    MPI_REVIEW_DECIDED = "identity:mpi:review-decided"
    AUDIT_SEARCH = "governance:audit:search"
    AUDIT_EXPORT = "governance:audit:export"  # the whole log written out (`sharedcare audit export`)
    REVIEW_VIEW = "governance:review:view"  # the IG review queue shown at the command line (`sharedcare audit review`)
    # a held quarantine item its source's corrected copy replaced (ingest/pipeline.py `_supersede`)
    QUARANTINE_SUPERSEDED = "governance:quarantine:superseded"
    QUARANTINE_PURGE = "governance:quarantine:purge"  # bodies erased after the retention period (ingest/retention.py)
    CLIENT_ADD = "governance:client:add"  # an app or partner system registered (`sharedcare clients add`)
    CLIENT_REMOVE = "governance:client:remove"  # an app or partner system cut off (`sharedcare clients remove`)
    PREFERENCE_VIEW = "governance:preference:view"
    GOVERNANCE_DENIED = "governance:function:denied"
    EXPORT_KICK_OFF = "secondary:export:kick-off"
    EXPORT_COMPLETE = "secondary:export:complete"
    EXPORT_DOWNLOAD = "secondary:export:download"
    EXPORT_CANCEL = "secondary:export:cancel"
    EXPORT_WITHDRAWN = "secondary:export:withdrawn"  # files deleted at the organisation's suspension (export/jobs.py)


# FHIR AuditEvent.action where it is not R (read) or E (execute, the governance functions).
ACTION_CODES = {AuditAction.RECORD_WRITE: "C", AuditAction.INGEST_START: "E", AuditAction.TLS_REFUSED: "E",
                AuditAction.CLOCK_CHECK: "E", AuditAction.DEMO_START: "E", AuditAction.CHAIN_KEYED: "E",
                AuditAction.MPI_REVIEW_SETTLED: "U", AuditAction.MPI_REVIEW_DECIDED: "U",
                # a relink is run; a merge, unmerge, decision or re-match changes which person a record is in
                AuditAction.MPI_RELINK: "E", AuditAction.MPI_LINK_CHANGE: "U",
                # IHE BALP: a query, and an operation such as $export, are executed
                AuditAction.PATIENT_SEARCH: "E", AuditAction.EXPORT_KICK_OFF: "E",
                AuditAction.EXPORT_COMPLETE: "E", AuditAction.EXPORT_CANCEL: "E",
                AuditAction.UNVERIFIED_END: "E",  # a start-up's check, as the clock's
                AuditAction.EXPORT_WITHDRAWN: "D", AuditAction.QUARANTINE_PURGE: "D"}  # files, bodies erased
# FHIR AuditEvent.outcome: 0 success, 4 minor failure (refused), 8 serious failure.
OUTCOME_CODES = {"permit": "0", "deny": "4", "error": "8"}
PURPOSE_CODES = {  # v3 ActReason codes for AuditEvent.purposeOfEvent
    "direct-care": "TREAT",
    "emergency": "ETREAT",
    "secondary-use": "HOPERAT",
    "governance": "HOPERAT",
}


@dataclass
class AuditRecord:
    """What one decision or change was, before it is written."""

    action: AuditAction
    outcome: str  # permit | deny | error
    username: str | None
    role: str | None = None
    organisation: str | None = None
    purpose: str | None = None
    patient_id: str | None = None
    basis: str | None = None
    reason: str | None = None
    rule_id: str | None = None
    request_id: str | None = None
    source_address: str | None = None
    client_id: str | None = None  # the SMART app the user acted through (None: the portal or a tool)
    minted_by: str | None = None  # the operator account whose `sharedcare token` the user's token is
    token_id: str | None = None  # that token's id (jti), named with `minted_by`
    resource: str | None = None  # the one resource a resource read asked for (`Condition/{id}`)
    fhir_action: str | None = None  # AuditEvent.action where the action alone does not say: a write's C or U
    released: list[str] = field(default_factory=list)
    withheld: dict[str, int] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)


def _clean(text: str | None) -> str | None:
    """Encode CR/LF and other control characters so a log line cannot be forged (TRUST AU5)."""
    if text is None or (text.isprintable() and "\\" not in text):  # nearly always: nothing to encode
        return text
    return "".join(_escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    """One character as stored. The backslash is escaped too, and each escape has one width for its range,
    so no two texts are stored (and hashed) alike: a control character is told from its escape typed."""
    if ch == "\\":
        return "\\\\"
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def to_audit_event(record: AuditRecord, recorded: datetime, stamp: str | None = None) -> dict[str, Any]:
    """Shape the record as a FHIR R4 AuditEvent (IHE BALP where it fits). The fields `record_audit` cleans
    are not cleaned again: a backslash would be doubled twice, and the event would not say what the
    columns say. `stamp` is `recorded.isoformat()` when the caller has made it already (the append hashes it too)."""
    purpose = "emergency" if record.basis == "emergency" else (record.purpose or "governance")
    entities: list[dict[str, Any]] = []
    if record.patient_id:
        entities.append(_patient_entity(record.patient_id))
    if record.resource:  # IHE BALP: the resource read, as a domain resource of the patient
        entities.append({"what": {"reference": record.resource},
                         "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                  "code": "2", "display": "System Object"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                                  "code": "4", "display": "Domain Resource"}})
    if record.released:  # one string, not an entity each: see RELEASED
        entities.append({"name": RELEASED,
                         "detail": [{"type": "references", "valueString": " ".join(record.released)}]})
    details = {
        "basis": record.basis, "reason": _clean(record.reason), "rule": record.rule_id,
        **{f"withheld:{why}": str(n) for why, n in sorted(record.withheld.items())},
        **{key: _clean(value) for key, value in record.detail.items()},
    }
    decided = [{"type": key, "valueString": value} for key, value in details.items() if value]  # strings never empty
    if decided:  # nor arrays: an Audit Record Repository that validates refuses `"detail": []` (TRUST AU7)
        entities.append({"name": "decision", "detail": decided})
    return {
        "resourceType": "AuditEvent",
        "type": {"system": ACTION_SYSTEM, "code": record.action.value},
        "action": record.fhir_action or ACTION_CODES.get(record.action,
                                                         "E" if record.action.startswith("governance:") else "R"),
        "recorded": stamp or recorded.isoformat(),
        "outcome": OUTCOME_CODES[record.outcome],
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                        "code": PURPOSE_CODES.get(purpose, "HOPERAT")}]}],
        "agent": [{
            "who": {"identifier": {"system": USER_SYSTEM,
                                   "value": record.username or "anonymous"}},
            "role": [{"text": record.role or "none"}],
            **_on_behalf_of(ODS_SYSTEM, record.organisation),
            "requestor": True,
            "network": {"address": record.source_address or "local", "type": "2"},
            **_token_policy(record),
        }, *_app_agent(record.client_id, record.username), *_minter_agent(record)],
        "source": {"observer": {"display": "sharedcare"}, "site": record.request_id or str(uuid.uuid4())},
        **({"entity": entities} if entities else {}),
    }


def _patient_entity(patient_id: str) -> dict[str, Any]:
    return {"what": {"reference": f"Patient/{patient_id}"},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1",
                     "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}}


def columns_event(entry: AuditEntry) -> dict[str, Any]:
    """The AuditEvent of what an entry's columns say (action, time, outcome, user, organisation, patient), for
    an entry the service did not write (`entry_is_genuine`): its stored event may hold anything, and an export
    repeating it would present it as fact."""
    event: dict[str, Any] = {
        "resourceType": "AuditEvent", "type": {"system": ACTION_SYSTEM, "code": entry.action},
        "recorded": entry.recorded_at.isoformat(),
        "agent": [{"who": {"identifier": {"system": USER_SYSTEM, "value": entry.username or "anonymous"}},
                   **_on_behalf_of(ODS_SYSTEM, entry.organisation), "requestor": True}],
        "source": {"observer": {"display": "sharedcare"}},
    }
    if entry.outcome in OUTCOME_CODES:
        event["outcome"] = OUTCOME_CODES[entry.outcome]
    if entry.patient_id:
        event["entity"] = [_patient_entity(entry.patient_id)]
    return event


def expanded(event: Any) -> dict[str, Any]:
    """`event` with each released reference as an entity of its own (`{"what": {"reference": ...}}`), as
    FHIR readers expect: the AuditEvent NDJSON export and the IG officer's count read this. Entries
    written before the compact form are returned as they are, but for a decision entity without details
    (`"detail": []`, written before 2026-12, which FHIR forbids: an empty array), left out. Whatever is not
    of that shape (a row someone without the key appended) is left out, never a failure."""
    entities: list[dict[str, Any]] = []
    for entity in entities_of(event):
        detail = entity.get("detail")
        if entity.get("name") == RELEASED:
            entities.extend({"what": {"reference": ref}} for d in (detail if isinstance(detail, list) else [])
                            for ref in _string(d, "valueString").split(" ") if ref)
        elif detail != []:
            entities.append(entity)
    shaped = dict(event) if isinstance(event, Mapping) else {}
    shaped.pop("entity", None)
    return {**shaped, "entity": entities} if entities else shaped


def entities_of(event: Any) -> list[dict[str, Any]]:
    """An event's entities that are objects: none for an event not of AuditEvent's shape."""
    entities = event.get("entity") if isinstance(event, Mapping) else None
    return [entity for entity in entities if isinstance(entity, dict)] if isinstance(entities, list) else []


def _string(found: Any, name: str) -> str:
    """`found[name]` where `found` is an object and that a string; else "" (a hostile row's event)."""
    value = found.get(name) if isinstance(found, dict) else None
    return value if isinstance(value, str) else ""


def _on_behalf_of(system: str, value: str | None) -> dict[str, Any]:
    """The agent acts on behalf of `value` (TRUST AU1): a user for their organisation (ODS code), an app
    for its user. FHIR R4's AuditEvent has no element for it; HL7's extension says it."""
    if not value:
        return {}
    return {"extension": [{"url": ON_BEHALF_OF,
                           "valueReference": {"identifier": {"system": system, "value": value}}}]}


def _app_agent(client_id: str | None, username: str | None) -> list[dict[str, Any]]:
    """The SMART app a user read through, as a second agent acting for that user (TRUST AU1: who is the
    user and the client app): IG and the citizen can tell an app's read from the clinician's own."""
    if not client_id:
        return []
    return [{"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150",
                                  "display": "Application"}]},
             "who": {"identifier": {"system": "https://sharedcare.example/Id/client", "value": _clean(client_id)}},
             **_on_behalf_of(USER_SYSTEM, username),
             "requestor": False}]


def _token_policy(record: AuditRecord) -> dict[str, Any]:
    """IHE BALP (OAUTHaccessTokenUse): the id of the token the user acted with, on the user's agent. Only
    for a token an operator minted (`_minter_agent`), which is what a reader needs it for."""
    if not (record.minted_by and record.token_id):
        return {}
    return {"policy": [f"{JTI_PREFIX}{_clean(record.token_id)}"]}


def _minter_agent(record: AuditRecord) -> list[dict[str, Any]]:
    """The operator account that minted the token the user acted with (`sharedcare token`), as a second
    agent in the role of the authorisation server, naming the token: the read was made in the user's name,
    but not necessarily by them, and the IG officer and the citizen can tell (TRUST AU1)."""
    if not record.minted_by:
        return []
    return [{"type": {"coding": [AUTHORISATION_SERVER]},
             "who": {"identifier": {"system": OPERATOR_SYSTEM, "value": _clean(record.minted_by)}},
             "requestor": False, **_token_policy(record)}]


def minted_by(event: Any) -> tuple[str, str] | None:
    """The operator account that minted the token an audited action was taken with, and the token's id;
    None for a user's own session, an app's or a system's token (`_minter_agent`)."""
    agents = event.get("agent") if isinstance(event, Mapping) else None
    for agent in agents if isinstance(agents, list) else []:
        kind = agent.get("type") if isinstance(agent, dict) else None
        coding = kind.get("coding") if isinstance(kind, dict) else None
        if isinstance(coding, list) and AUTHORISATION_SERVER in coding:
            who = agent.get("who")
            policy = agent.get("policy")
            token = policy[0] if isinstance(policy, list) and policy else ""
            return (_string(who.get("identifier") if isinstance(who, dict) else None, "value"),
                    str(token).removeprefix(JTI_PREFIX))
    return None


_HASHED = ("seq", "recorded_at", "action", "outcome", "username", "organisation", "patient_id", "event")


def _canonical(fields: dict[str, Any]) -> bytes:
    """The entry as hashed: JSON with sorted keys, no spaces, ASCII only. orjson writes exactly that for
    an ASCII-only entry (most of them) several times faster; the standard library writes the rest."""
    body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    if body.isascii() and b"\x7f" not in body:  # the standard library escapes DEL, orjson does not
        return body
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(prev_hash: str, row: Mapping[str, Any], key: bytes | None, stamp: str | None = None) -> str:
    """The entry's chain hash: of the previous hash and every column of the entry (the searchable columns
    included), an HMAC-SHA256 under `key`, or for an entry from before the chain had a key (None) a SHA-256.
    `stamp` is the entry's time as hashed (`isoformat`), when the caller has made it already."""
    fields = {name: row[name] for name in _HASHED}
    fields["recorded_at"] = stamp or fields["recorded_at"].isoformat()
    message = prev_hash.encode() + _canonical(fields)
    if key is None:
        return hashlib.sha256(message).hexdigest()
    keyed = _keyed(key).copy()
    keyed.update(message)
    return keyed.hexdigest()


@lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with `key`, to be copied for each entry: keying a one-shot HMAC (`hmac.digest`)
    on every append cost about a sixth of the hash (callgrind, 2026-12-07)."""
    return hmac.new(key, digestmod="sha256")


# Statements built once: this runs on every read, and building ORM statements per call cost more than
# the database work in the governance benchmark.
_HEAD = cast(Table, AuditHead.__table__)
_ENTRIES = cast(Table, AuditEntry.__table__)
# A no-op UPDATE takes the write lock on the head row (a row lock on PostgreSQL; on SQLite it opens the
# write transaction) and RETURNING reads it in the same statement, so no two writers chain to one parent.
# The head also holds the newest epoch marker's position (CHAIN_KEYED, set by the chain's step: migration 0031),
# so an append notices an epoch another process began (`_check_epoch`). It must be the head's column, not a
# subquery: on PostgreSQL a subquery runs in the snapshot taken before the statement waited for the lock, and an
# append that waited on `audit rekey` missed its marker and wrote under the retired key (review of 2026-12-07);
# the locked row itself is read again after the wait, as committed. `chain_key` finds the marker by the partial
# index of migration 0024; the action is written as it stands, not bound: only then do the planners use it.
_MARKED = _ENTRIES.c.action == literal_column(f"'{CHAIN_KEYED}'")
_NEWEST_MARK = select(func.max(_ENTRIES.c.seq)).where(_MARKED)
_LOCK_AND_READ_HEAD = Prepared(update(_HEAD).where(_HEAD.c.id == 1).values(seq=_HEAD.c.seq)
                               .returning(_HEAD.c.seq, _HEAD.c.hash, _HEAD.c.newest_mark))
# On PostgreSQL a SELECT ... FOR UPDATE takes the same row lock and, after a wait, reads the row as committed too,
# but leaves no old version of the row behind: the UPDATE left one an append beside the chain step's, and while a
# long transaction is open none can be pruned and each append's read of the head walks them all (2026-12-07,
# `benchmarks/audit_head.py`). SQLite has no FOR UPDATE: the UPDATE is what opens its write transaction.
_LOCK_AND_READ_HEAD_PG = Prepared(select(_HEAD.c.seq, _HEAD.c.hash, _HEAD.c.newest_mark).where(_HEAD.c.id == 1)
                                  .with_for_update())


def _lock_head(session: Session) -> tuple[int, str, int | None]:
    """Lock the head; return its position and hash and the newest epoch marker's position, in one statement."""
    lock = _LOCK_AND_READ_HEAD_PG if session.get_bind().dialect.name == "postgresql" else _LOCK_AND_READ_HEAD
    ((seq, prev_hash, newest_mark),) = lock(session)
    return seq, prev_hash, newest_mark


# A trigger (migration 0006) advances the head, refusing an entry that does not follow it.
# Only the columns an append writes are named, so a column added later (with its default) breaks nothing.
_APPEND = Prepared(insert(_ENTRIES).values({name: bindparam(name) for name in (*_HASHED, "prev_hash", "hash")}))


class RefusalLimiter:
    """How many refusals at the door (forged or expired tokens, failed TLS handshakes and sign-ins, MLLP
    messages and connections refused) may be written to the audit log a minute, in this process:
    `per_minute` from one address (an IPv6 address counts by its /64, which one client holds whole) and
    `per_minute_all` from all addresses together.

    Anyone can send a forged token or a bad handshake, and each would otherwise append an entry that can
    never be deleted and take the chain's write lock every patient read needs: a flood of them would fill
    the log and slow care. Refusals over either limit are only counted; the count goes on the address's
    next audited refusal (`not_audited_before`), with the counts of addresses forgotten meanwhile (at most
    `addresses` are remembered, the oldest forgotten first)."""

    def __init__(self, per_minute: int = 20, per_minute_all: int = 200, addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.per_minute_all, self.addresses, self.clock = per_minute, per_minute_all, addresses, clock
        self._windows: OrderedDict[str | None, list[float]] = OrderedDict()  # [start, audited, not audited]
        self._everyone = [float("-inf"), 0.0]  # [start, audited]
        self._forgotten = 0  # not audited, of addresses no longer remembered
        self._lock = threading.Lock()

    def admit(self, address: str | None) -> int | None:
        """None when this refusal is only counted; else how many went unaudited before it (see above)."""
        key, now = network_of(address), self.clock()
        with self._lock:
            if now - self._everyone[0] >= 60:
                self._everyone = [now, 0.0]
            window = self._windows.get(key)
            if window is None or now - window[0] >= 60:
                carried = window[2] if window else 0.0
                window = self._windows[key] = [now, 0.0, carried]
                self._windows.move_to_end(key)
                while len(self._windows) > self.addresses:
                    self._forgotten += int(self._windows.popitem(last=False)[1][2])
            if window[1] >= self.per_minute or self._everyone[1] >= self.per_minute_all:
                window[2] += 1
                return None
            window[1] += 1
            self._everyone[1] += 1
            carried = int(window[2]) + self._forgotten
            window[2], self._forgotten = 0.0, 0
            return carried

    def put_back(self, address: str | None, unaudited: int) -> None:
        """Count `unaudited` refusals as not audited again: the entry that was to tell them was not written."""
        key = network_of(address)
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                self._forgotten += unaudited
            else:
                window[2] += unaudited


def network_of(address: str | None) -> str | None:
    """The key an address is limited by (here, and in the MLLP listener's connections): an IPv6 address's /64,
    which one client holds whole, any other address itself. An IPv4 client of a dual-stack listener arrives
    as `::ffff:a.b.c.d`, and is its IPv4 address: else every IPv4 client shared the one /64 `::`."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else address


REFUSALS = RefusalLimiter()


def _telling(record: AuditRecord, unaudited: int) -> AuditRecord:
    return replace(record, detail={**record.detail, "not_audited_before": str(unaudited)}) if unaudited else record


def record_refusal(database: Database, record: AuditRecord) -> None:
    """Audit a refusal at the door in a transaction of its own, within its address's limit (REFUSALS)."""
    unaudited = REFUSALS.admit(record.source_address)
    if unaudited is None:
        return
    try:
        with database.session() as session:
            record_audit(session, _telling(record, unaudited))
            session.commit()
    except Exception:
        REFUSALS.put_back(record.source_address, unaudited + 1)  # this refusal and those it was to tell
        raise


def record_refusal_in(session: Session, record: AuditRecord) -> None:
    """As `record_refusal`, in the caller's transaction: for a refusal whose request has already written
    (a one-time code's tries counted), which on SQLite holds the write lock a transaction of its own would
    wait for. Should that transaction fail, the refusals it was to tell are not counted again."""
    unaudited = REFUSALS.admit(record.source_address)
    if unaudited is not None:
        record_audit(session, _telling(record, unaudited))


def record_refused_credentials(database: Database, reason: str, subject: str | None, request_id: str | None,
                               source_address: str | None) -> None:
    """A token or session refused at the door (expired, forged, revoked, its client removed), audited like a
    failed sign-in (TRUST AU3), in a transaction of its own: nothing else of the request is written.
    `subject` only where the token's signature was checked; a forged token's claims name no one."""
    record_refusal(database, AuditRecord(AuditAction.CREDENTIALS_REFUSED, "deny", username=subject, reason=reason,
                                         request_id=request_id, source_address=source_address))


def _fitted(text: str | None, column: str) -> str | None:
    """`text` cleaned, then cut to its column's length: cleaning makes a control character four characters
    (a character beyond U+FFFF ten), and PostgreSQL refuses a text too long, losing the event."""
    cleaned = _clean(text)
    return cleaned[:_LENGTHS[column]] if cleaned else cleaned


_LENGTHS = {column: cast(String, _ENTRIES.c[column].type).length or 0
            for column in ("username", "organisation", "patient_id")}


def record_audit(session: Session, record: AuditRecord) -> int:
    """Append one event to the chain, in the caller's transaction (so no audit, no effect), keyed with the
    session's key (`Database.audit_key`); return its sequence number."""
    seq, prev_hash, newest_mark = _lock_head(session)
    epochs = session.info.get(AUDIT_EPOCHS)
    found = epochs.found if epochs is not None else None
    if epochs is not None and (found is None or found[0] != newest_mark or not found[2]):  # rarely: a new marker
        _check_epoch(session, newest_mark)
    return append_after(session, record, seq, prev_hash)


def append_after(session: Session, record: AuditRecord, seq: int, prev_hash: str) -> int:
    """Write `record` as the entry after entry `seq` (whose hash is `prev_hash`), the head held: `record_audit`'s
    append. Migration 0024 calls it alone, on a schema that has not the head's marker column (0031) yet."""
    # What a caller typed (a sign-in name, an id in a URL) is cleaned like free text: PostgreSQL refuses a
    # NUL in text, which would lose the event and fail the request.
    typed = (record.username, record.organisation, record.patient_id, record.resource)
    cleaned = (_fitted(record.username, "username"), _fitted(record.organisation, "organisation"),
               _fitted(record.patient_id, "patient_id"), _clean(record.resource))
    if cleaned != typed:  # rarely: copying the record costs more than the rest of the event
        record = replace(record, username=cleaned[0], organisation=cleaned[1], patient_id=cleaned[2],
                         resource=cleaned[3])
    recorded = utcnow()
    stamp = recorded.isoformat()  # once, for the event and the hash: formatting a time costs as much as a hash's setup
    row: dict[str, Any] = {
        "seq": seq + 1, "recorded_at": recorded, "action": record.action.value, "outcome": record.outcome,
        "username": record.username, "organisation": record.organisation, "patient_id": record.patient_id,
        "event": to_audit_event(record, recorded, stamp), "prev_hash": prev_hash,
    }
    row["hash"] = _digest(prev_hash, row, session.info[AUDIT_KEY], stamp)
    _APPEND(session, row)
    return int(row["seq"])


def record_sign_in(db: Database, username: str, ok: bool, role: str | None, organisation: str | None,
                   request_id: str | None, source_address: str | None) -> None:
    """Audit a sign-in attempt (TRUST AU3) in its own transaction: each successful one; failed ones, which
    anyone can make, within the limits of refusals at the door (REFUSALS)."""
    record = AuditRecord(AuditAction.LOGIN, "permit" if ok else "deny", username=username, role=role,
                         organisation=organisation, request_id=request_id, source_address=source_address)
    if not ok:
        record_refusal(db, record)
        return
    with db.session() as session:
        record_audit(session, record)


class AuditKeyProblem(SharedcareError):
    """This process must not append to the log: the chain was rekeyed to a key it was not given as its own."""


# What a rekey marker says of the key after it: a fingerprint that names it (for people: `audit rekey` prints the
# fingerprints) and a proof bound to the marker's place, which only a holder of the new key can make.
FINGERPRINT_LABEL = b"sharedcare audit chain key fingerprint"
PROOF_LABEL = b"sharedcare audit chain rekey"
RETIRED_SETTING = "SHAREDCARE_AUDIT_KEYS_RETIRED"


def key_fingerprint(key: bytes) -> str:
    """A chain key's name, which tells nothing of it: an HMAC of a fixed label under it."""
    return hmac.digest(key, FINGERPRINT_LABEL, "sha256").hex()


def _rekey_proof(key: bytes, seq: int, prev_hash: str) -> str:
    return hmac.digest(key, PROOF_LABEL + f"\n{seq}\n{prev_hash}".encode(), "sha256").hex()


def decision_details(event: Any) -> dict[str, str]:
    """An event's decision details (`to_audit_event`), by type; nothing for an event not of that shape (a row
    someone without the key appended may hold any JSON: reading it must not fail every later append)."""
    for entity in entities_of(event):
        if entity.get("name") == "decision":
            details = entity.get("detail")
            return {d["type"]: d["valueString"] for d in details if isinstance(d, dict)
                    and isinstance(d.get("type"), str) and isinstance(d.get("valueString"), str)} \
                if isinstance(details, list) else {}
    return {}


_PROOF = re.compile("[0-9a-f]{64}")  # a rekey proof as `_rekey_proof` writes it


@dataclass(frozen=True)
class Epoch:
    """The entries from `first` on (to the next epoch's marker) keyed by `key`; None: a key this process was
    not given (an earlier epoch's, SHAREDCARE_AUDIT_KEYS_RETIRED), so they cannot be checked here."""

    first: int
    key: bytes | None
    fingerprint: str | None = None  # of its key, as a marker names it (the first keyed epoch's is never written)
    marker: int | None = None  # the rekey marker that began it; None for the first keyed epoch
    # its marker names a held key (`key`), but the proof of it no longer matches the marker's place: the marker, or
    # entries before it, were rewritten and re-hashed since (with the retired key): `chain_problem` names the marker
    proof_broken: bool = False


@dataclass(frozen=True)
class ChainKey:
    """What each entry's hash is checked with: a plain SHA-256 for the entries up to `unkeyed_through`, written
    before the chain had a key; then each keyed epoch's key (`epochs`, in order; none given: one, under `key`).
    `key` is this process's own, the one it appends with."""

    key: bytes
    unkeyed_through: int
    epochs: tuple[Epoch, ...] = ()
    retired: tuple[bytes, ...] = ()  # the retired keys given: what a check that fails may name as the writer
    _firsts: list[int] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.epochs:
            object.__setattr__(self, "epochs", (Epoch(self.unkeyed_through + 1, self.key),))
        self._firsts.extend(epoch.first for epoch in self.epochs)

    @property
    def current(self) -> Epoch:
        """The newest epoch: the key appends must be written with."""
        return self.epochs[-1]

    def epoch(self, seq: int) -> Epoch | None:
        """The epoch entry `seq` is in; None for an entry from before the chain had a key."""
        if seq <= self.unkeyed_through:
            return None
        epochs = self.epochs
        if seq >= epochs[-1].first:  # nearly always
            return epochs[-1]
        return epochs[max(bisect_right(self._firsts, seq) - 1, 0)]

    def for_entry(self, seq: int) -> bytes | None:
        """Entry `seq`'s key (None: a plain SHA-256); LookupError if its epoch's key was not given."""
        epoch = self.epoch(seq)
        if epoch is None:
            return None
        if epoch.key is None:
            raise LookupError(f"entry {seq} {unheld_words(epoch, current=epoch is self.current)}")
        return epoch.key


def unheld_words(epoch: Epoch, first: int | None = None, last: int | None = None, current: bool = False) -> str:
    """Why entries `first`..`last` of `epoch` cannot be checked: their key was not given (without them, what
    follows an entry's number). The `current` epoch's key is not a retired one: the log was rekeyed after this
    process started, or it runs with a retired key."""
    named = f" (fingerprint {epoch.fingerprint[:16]})" if epoch.fingerprint else ""
    said = f"entries {first}-{last} were" if first is not None else "was"
    if current:
        return (f"{said} written under the log's current audit key{named}, which this check was not given (the log "
                f"was rekeyed at entry {epoch.marker}): set SHAREDCARE_AUDIT_KEY to it, and {RETIRED_SETTING} to "
                "the retired ones")
    return (f"{said} written under a retired key{named} that this check was not given: set "
            f"{RETIRED_SETTING} to the log's retired audit keys, comma separated")


def chain_key(session: Session) -> ChainKey:
    """The session's key and the chain's epochs: unkeyed up to the first `CHAIN_KEYED` entry, which migration 0024
    wrote; then keyed, a rekey marker (`rekey`) beginning each later epoch. Another unkeyed marker appended later,
    by anyone who may write to the table, moves nothing: the first stays first (no entry can be deleted), and
    those before it are fixed by the checkpoints witnesses took. What was found is kept for the process until
    another marker is appended (one index look-up tells)."""
    return _chain_key(session, session.scalar(_NEWEST_MARK))


def _chain_key(session: Session, newest_mark: int | None) -> ChainKey:
    epochs = session.info.get(AUDIT_EPOCHS)
    found = epochs.found if isinstance(epochs, AuditEpochs) else None
    if found is not None and found[0] == newest_mark:
        return cast(ChainKey, found[1])
    key = _epochs(session, session.info[AUDIT_KEY], session.info.get(AUDIT_RETIRED) or ())
    if isinstance(epochs, AuditEpochs):
        epochs.found = (newest_mark, key, key.current.key == key.key)
    return key


def _epochs(session: Session, own: bytes, retired: tuple[bytes, ...]) -> ChainKey:
    """Where the chain's key changes, judged with the keys this process holds (its own and the retired ones).

    A rekey marker begins an epoch only if it carries the proof of a held key bound to its place, or is written
    under the key of the epoch it ends (when that is held): each needs a key, so no one who may only INSERT can
    make one. When the ended epoch's key is held, the marker must be written under it (a marker made with a
    leaked retired key, appended later, is in the newer epoch and is not). The first such marker of an epoch
    wins: the entries after it are the next epoch's. A key never comes back. The first keyed epoch's key is the
    one its ending marker was written under, or with no rekey this process's own."""
    marks = session.scalars(select(AuditEntry).where(_MARKED).order_by(AuditEntry.seq)).all()
    retired = tuple(key for key in retired if key != own)
    if not marks:
        return ChainKey(own, 0, retired=retired)
    held = (own, *retired)
    epochs: list[Epoch] = []
    current, settled, used = Epoch(marks[0].seq + 1, None), False, set[bytes]()
    for mark in marks[1:]:
        said = decision_details(mark.event)
        proof = said.get("next-key-proof")
        if not proof or not _PROOF.fullmatch(proof):
            continue  # not a rekey (another unkeyed marker, or a proof of no key's making: `verify` names it)
        fields = {name: getattr(mark, name) for name in _HASHED}
        following = next((key for key in held if hmac.compare_digest(_rekey_proof(key, mark.seq, mark.prev_hash),
                                                                     proof)), None)
        named = next((key for key in held if key_fingerprint(key) == said.get("next-key")), None)
        if not settled:  # the first keyed epoch: its key is the one its marker was written under
            writer = next((key for key in held if _digest(mark.prev_hash, fields, key) == mark.hash), None)
            if writer is None and following is None:
                continue  # written by someone without any key held here
            current, settled = replace(current, key=writer, fingerprint=said.get("key")), True
        elif current.key is not None:
            if _digest(mark.prev_hash, fields, current.key) != mark.hash:
                continue  # not written under the epoch's key: forged
        elif following is None:
            continue  # an epoch whose key is not held, and a next key not held: nothing can be told
        # written under the ending epoch's key, naming a held key whose proof fails: the marker's place changed
        # since (an entry before it rewritten with the retired key): that key's epoch, the marker named broken
        broken = following is None and named is not None and current.key is not None
        following = named if broken else following
        if following is not None and (following in used or following == current.key):
            continue  # a key never comes back
        if current.key is not None:
            used.add(current.key)
        epochs.append(current)
        current = Epoch(mark.seq + 1, following, said.get("next-key"), mark.seq, proof_broken=broken)
    if not settled:
        current = replace(current, key=own)
    return ChainKey(own, marks[0].seq, (*epochs, current), retired)


def _check_epoch(session: Session, newest_mark: int | None) -> None:
    """An append's check, once for each marker appended (the head is locked): the chain's current epoch must
    still be keyed by this process's key, else AuditKeyProblem (no entry is written: the writing path fails
    closed when another process rekeyed the log)."""
    key = _chain_key(session, newest_mark)
    if key.current.key != key.key:
        raise AuditKeyProblem(_rekeyed_words(key))


def _rekeyed_words(key: ChainKey) -> str:
    current = key.current
    named = f" (fingerprint {current.fingerprint[:16]})" if current.fingerprint else ""
    return (f"the audit log was rekeyed at entry {current.marker} to another key{named}, and this process's key is "
            "retired: every entry it wrote would fail `audit verify`; set SHAREDCARE_AUDIT_KEY to the log's current "
            f"key (and {RETIRED_SETTING} to the retired ones)")


def rekey(session: Session, new_key: bytes, reason: str,
          also: Callable[[int], dict[str, str]] | None = None) -> int:
    """Append the marker that begins a new epoch keyed by `new_key`, written under this session's key, which must
    be the current epoch's; return its sequence number. The marker names the new key (its fingerprint) and proves
    it with a hash under it bound to its place; `also(seq)` adds details (the checkpoint key's handover). After it
    this session's key writes nothing: every process must be restarted with the new key."""
    own: bytes = session.info[AUDIT_KEY]
    seq, prev_hash, newest_mark = _lock_head(session)  # held: no entry between the check and the mark
    key = _chain_key(session, newest_mark)
    if key.current.key != own:
        raise AuditKeyProblem(_rekeyed_words(key))
    if any(new_key == epoch.key for epoch in key.epochs):
        raise AuditKeyProblem("the new audit key has keyed this log before: a rotation needs a key of its own")
    mark = seq + 1
    detail = {"key": key_fingerprint(own), "next-key": key_fingerprint(new_key),
              "next-key-proof": _rekey_proof(new_key, mark, prev_hash),
              "note": "every entry after this one is keyed with the audit key of fingerprint next-key",
              **(also(mark) if also else {})}
    written = record_audit(session, AuditRecord(AuditAction.CHAIN_KEYED, "permit", username="system",
                                                purpose="governance", reason=reason, detail=detail))
    assert written == mark, (written, mark)  # noqa: S101 - the head was held
    return written


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    broken_seq: int | None = None
    problem: str | None = None
    unkeyed_through: int = 0  # the entries up to this one are from before the chain had a key
    # entries whose key this check was not given (first, last, why): only that each follows the one before is checked
    unchecked: tuple[tuple[int, int, str], ...] = ()
    epochs: tuple[Epoch, ...] = ()


def verify_chain(entries: Iterable[AuditEntry], head: AuditHead | None, key: ChainKey) -> VerifyResult:
    """Walk the chain in order; name the first entry that was edited, removed, reordered or forged. An epoch whose
    key was not given is walked (each entry must follow the one before) and named in `unchecked`."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    unchecked: list[list[Any]] = []  # [first, last, epoch]

    def result(ok: bool, broken: int | None = None, problem: str | None = None) -> VerifyResult:
        spans = tuple((first, last, unheld_words(epoch, first, last, epoch is key.current))
                      for first, last, epoch in unchecked)
        if ok and spans:
            ok, broken, problem = False, spans[0][0], spans[0][2]
        return VerifyResult(ok, checked, broken, problem, key.unkeyed_through, spans, key.epochs)

    for entry in entries:
        if entry.seq != expected_seq:
            return result(False, expected_seq, f"entry {expected_seq} is missing or out of order")
        epoch = key.epoch(entry.seq)
        if epoch is not None and epoch.key is None:  # rarely: a retired key not given
            if entry.prev_hash != prev_hash:
                return result(False, entry.seq, "does not follow the entry before it")
            if unchecked and unchecked[-1][2] is epoch and unchecked[-1][1] == entry.seq - 1:
                unchecked[-1][1] = entry.seq
            else:
                unchecked.append([entry.seq, entry.seq, epoch])
        else:
            problem = chain_problem(entry, prev_hash, key)
            if problem:
                return result(False, entry.seq, problem)
            checked += 1
        prev_hash, expected_seq = entry.hash, expected_seq + 1
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
    walked = expected_seq - 1
    if head_seq != walked or head_hash != prev_hash:
        return result(False, walked + 1, f"the log ends at {walked} but the head says {head_seq}")
    return result(True)


def chain_problem(entry: AuditEntry, prev_hash: str, key: ChainKey) -> str | None:
    """Why `entry` cannot be the one after the entry whose hash is `prev_hash`, or None if it is."""
    if entry.prev_hash != prev_hash:
        return "does not follow the entry before it"
    fields = {name: getattr(entry, name) for name in _HASHED}
    epoch = key.epoch(entry.seq)
    if epoch is not None and epoch.key is None:
        return unheld_words(epoch, current=epoch is key.current)
    entry_key = epoch.key if epoch is not None else None
    if _digest(prev_hash, fields, entry_key) == entry.hash:
        following = key.epoch(entry.seq + 1)
        if following is not None and following.marker == entry.seq and following.proof_broken:
            return (f"is the rekey marker naming the next key (fingerprint {(following.fingerprint or '')[:16]}), "
                    "which this check holds, but its proof of that key no longer matches its place: the entries "
                    "before it were rewritten after the rotation and re-hashed, by someone holding the retired key "
                    "(`--checkpoints` names the first a witness kept otherwise)")
        return None
    if entry_key is None:
        return "content does not match its hash (edited)"
    if _digest(prev_hash, fields, None) == entry.hash:
        return "was written without the chain's key (forged by someone who can write to the database)"
    if epoch is not None and epoch is key.current and epoch.marker is None and any(
            _digest(prev_hash, fields, retired) == entry.hash for retired in key.retired):
        return ("was written under a retired audit key, but no rekey marker ends its epoch: the marker was removed "
                "or edited (the log cut back to before the rotation and the head set back, or the marker's entry "
                f"changed), or a key given in {RETIRED_SETTING} is the log's current one")
    return ("content does not match its keyed hash: edited, or written by someone without the chain's key (or "
            "this check runs with another SHAREDCARE_AUDIT_KEY or SHAREDCARE_SECRET than the service)")


def entry_is_genuine(entry: AuditEntry, key: ChainKey) -> bool:
    """Whether `entry`, checked alone, was written by the service: its hash is that of its own fields and
    `prev_hash` under its epoch's key (False if that key was not given). A view showing a few entries checks
    each so, without walking the chain."""
    epoch = key.epoch(entry.seq)
    if epoch is not None and epoch.key is None:
        return False
    fields = {name: getattr(entry, name) for name in _HASHED}
    return _digest(entry.prev_hash, fields, epoch.key if epoch is not None else None) == entry.hash


KEY_CHECKED = 100  # entries a process reads at a time, newest first, checking its key before it writes (`check_key`)


@dataclass(frozen=True)
class KeyCheck:
    """What a process found of its key before writing to the log (`check_key`)."""

    problem: str | None = None  # why it must not write: its key is not the log's
    unverified: tuple[int, int] | None = None  # the log's newest entries, first and last, that its key does not verify

    @property
    def warning(self) -> str | None:
        """The entries at the end of the log that do not verify, in words for the operator and the IG officer."""
        if self.unverified is None:
            return None
        first, last = self.unverified
        span = f"entry {first}" if first == last else f"entries {first}-{last} ({last - first + 1} entries)"
        return (f"{span} at the end of the audit log do not verify under the service's audit key (the newest that "
                f"does is entry {first - 1}): written into the database by someone without the key, or by a "
                "process run with another key; what they say may not have happened. The service writes on after "
                "them; `sharedcare audit verify` names the first: treat it as a security incident")


def check_key(session: Session) -> KeyCheck:
    """Whether this process may write to the log: its key (`Database.audit_key`) must be the current epoch's, or
    every entry it wrote would fail `verify`. Where the log was rekeyed, the marker says which key (a command run
    with the retired key after `audit rekey` stops here) and proves it. Otherwise some entry of the epoch must
    have been written with it: a command run without SHAREDCARE_AUDIT_KEY, or with SHAREDCARE_SECRET rotated and
    no audit key kept, verifies none of the newest `KEY_CHECKED` nor the oldest, and stops. Entries at the end
    that do not verify (appended by anyone who may INSERT, without the key) stop nothing: the newest entry that
    does is searched back for, and the span after it is `unverified`, for the caller to warn of. Refusing to
    start for them (as before 2026-12) made the record unavailable to whoever could append 100 rows."""
    key = chain_key(session)
    if key.current.key != key.key:
        return KeyCheck(_rekeyed_words(key))
    in_epoch = (AuditEntry.seq >= key.current.first, AuditEntry.seq > key.unkeyed_through)
    newest = None
    for n, page in enumerate(_newest_first(session, in_epoch)):
        newest = newest or page[0].seq
        written = next((entry.seq for entry in page if entry_is_genuine(entry, key)), None)
        if written is not None:
            return KeyCheck(unverified=(written + 1, newest) if written < newest else None)
        if n == 0 and key.current.marker is None and not _any_written(session, key, in_epoch):
            return KeyCheck(f"the audit log's newest and oldest keyed entries (up to entry {newest}) were not "
                            "written with this process's audit key, so every entry it wrote would fail `audit "
                            "verify`: set SHAREDCARE_AUDIT_KEY (or SHAREDCARE_SECRET, if no audit key is set) as the "
                            "service has it")
    if newest is None:  # nothing written since the key was set, or since the rekey marker that proved it
        return KeyCheck()
    return KeyCheck(unverified=(max(key.current.first, key.unkeyed_through + 1), newest))  # the marker proved it


def _any_written(session: Session, key: ChainKey, where: tuple[ColumnElement[bool], ...]) -> bool:
    """Whether this process's key wrote one of the oldest `KEY_CHECKED` entries matching `where`: when neither
    these nor the newest were, its key is not the log's (forged entries are only ever appended at the end)."""
    oldest = session.scalars(select(AuditEntry).where(*where).order_by(AuditEntry.seq).limit(KEY_CHECKED))
    return any(entry_is_genuine(entry, key) for entry in oldest)


def _newest_first(session: Session, where: tuple[ColumnElement[bool], ...]) -> Iterator[list[AuditEntry]]:
    """The entries matching `where`, newest first, `KEY_CHECKED` at a time."""
    before = None
    while True:
        stmt = select(AuditEntry).where(*where).order_by(AuditEntry.seq.desc()).limit(KEY_CHECKED)
        page = list(session.scalars(stmt if before is None else stmt.where(AuditEntry.seq < before)))
        if not page:
            return
        yield page
        before = page[-1].seq


def key_problem(session: Session) -> str | None:
    """Why this process must not write to the log, or None (`check_key`)."""
    return check_key(session).problem


def verify(session: Session) -> VerifyResult:
    """Check the chain up to its head, read first: an entry past it was appended since (each statement sees
    what was committed before it), not a gap. Read after the entries, the head could count one they did
    not hold, and a log being written to was reported broken. No head row bounds nothing."""
    head = session.get(AuditHead, 1)
    key = chain_key(session)
    stmt = select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=1000)
    if head is not None:
        stmt = stmt.where(AuditEntry.seq <= head.seq)
    return verify_chain(session.scalars(stmt), head, key)
