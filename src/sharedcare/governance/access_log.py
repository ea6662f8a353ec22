"""Reading the audit log: the IG officer's search, a citizen's "who looked at my record", and the
FHIR AuditEvent NDJSON export. All read the same hash-chained entries that `audit.py` appends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sharedcare.governance.audit import AuditAction
from sharedcare.governance.framework import Framework
from sharedcare.store.models import AuditEntry

# What a citizen sees as an access to their record: reads, emergency reads, a recorded basis, being
# found in a search, an IG officer learning whose record an access was to. Denied attempts are shown
# too: a refused look is still a look someone tried.
PATIENT_VISIBLE = (AuditAction.RECORD_READ, AuditAction.RECORD_EMERGENCY_READ, AuditAction.RESOURCE_READ,
                   AuditAction.RESOURCE_HISTORY, AuditAction.BASIS_RECORD, AuditAction.PATIENT_SEARCH,
                   AuditAction.DEMOGRAPHICS_READ)
ACTION_WORDS = {
    AuditAction.RECORD_READ: "viewed your record",
    AuditAction.RECORD_EMERGENCY_READ: "viewed your record in an emergency",
    AuditAction.RESOURCE_READ: "viewed an item in your record",
    AuditAction.RESOURCE_HISTORY: "viewed earlier versions of an item in your record",
    AuditAction.BASIS_RECORD: "recorded why they needed your record",
    AuditAction.PATIENT_SEARCH: "found you in a search",
    AuditAction.DEMOGRAPHICS_READ: "saw your name and date of birth (reviewing an access to your record)",
}
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


def search(session: Session, *, patient_id: str | None = None, username: str | None = None,
           organisation: str | None = None, since: datetime | None = None, until: datetime | None = None,
           actions: tuple[str, ...] | None = None, limit: int = 1000) -> list[AuditEntry]:
    """Audit entries matching every criterion given, newest first."""
    stmt = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)
    if patient_id:
        stmt = stmt.where(AuditEntry.patient_id == patient_id)
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


def requested_resource(entry: AuditEntry) -> str | None:
    """The resource a resource read asked for (`Condition/{id}`): the entity in the role of a domain
    resource (audit.py), whether it was released or refused."""
    for entity in entry.event.get("entity", []):
        if (entity.get("role") or {}).get("code") == "4":
            return str(entity["what"]["reference"])
    return None


def describe(entry: AuditEntry) -> str:
    """What someone did, in a citizen's words."""
    action = AuditAction(entry.action)
    if action == AuditAction.RESOURCE_READ:
        resource = requested_resource(entry) or ""
        return ITEM_WORDS.get(resource.partition("/")[0], ACTION_WORDS[action])
    return ACTION_WORDS.get(action, entry.action)


def details(entry: AuditEntry) -> dict[str, str]:
    """The decision details (basis, reason, rule...) recorded in the event."""
    for entity in entry.event.get("entity", []):
        if entity.get("name") == "decision":
            return {d["type"]: d["valueString"] for d in entity.get("detail", [])}
    return {}


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


def accesses_of(session: Session, fw: Framework, person_id: str, limit: int = 500) -> list[Access]:
    out = []
    for entry in search(session, patient_id=person_id, actions=tuple(a.value for a in PATIENT_VISIBLE),
                        limit=limit):
        user = fw.users.get(entry.username or "")
        org = fw.organisation(entry.organisation or "")
        role = fw.roles.get(user.role) if user else None
        info = details(entry)
        out.append(Access(
            when=entry.recorded_at, username=entry.username or "",
            who=user.name if user else (entry.username or "unknown"),
            role=role.label if role else "unknown role", organisation=org.name if org else (entry.organisation or ""),
            what=describe(entry),
            basis=(info.get("basis") or "").replace("-", " "), reason=info.get("reason", ""),
            outcome="refused" if entry.outcome == "deny" else "allowed"))
    return out


def export_ndjson(session: Session) -> Iterator[str]:
    """Every audit entry in chain order as one FHIR AuditEvent per line (id = sequence number)."""
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=1000)):
        event: dict[str, Any] = {"id": str(entry.seq), **entry.event}
        yield json.dumps(event, separators=(",", ":"), sort_keys=True)
