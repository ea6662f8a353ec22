"""How long quarantine keeps a refused message's body: storage limitation (UK GDPR art. 5(1)(e)).

A quarantine item holds the bytes a source sent, patient data included, so that it can be read and replayed.
Once resolved (replayed, or superseded by the source's corrected copy) the body serves only to show what was
sent; after `SHAREDCARE_QUARANTINE_RETENTION_DAYS` from its receipt it is erased. The item stays: its sender,
file, place, reason, status, what superseded it, its receipt and the SHA-256 of the body erased (so a copy
found elsewhere can still be matched to it), and the audit. An item still held (not resolved) is erased only
when the operator says so (`include_unresolved`): it becomes `erased`, no longer waiting and never replayed,
as a message its source must send again (HAZ-13). Each erasure run is one audit event naming the items.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.store.models import Quarantine

RESOLVED = ("replayed", "superseded")


def due(session: Session, now: datetime, days: int, include_unresolved: bool = False) -> list[Quarantine]:
    """The items whose body is kept past the retention period: received more than `days` ago, not erased,
    resolved (or also held, with `include_unresolved`), oldest first."""
    statuses = (*RESOLVED, "held") if include_unresolved else RESOLVED
    return list(session.scalars(select(Quarantine).where(
        Quarantine.erased_at.is_(None), Quarantine.status.in_(statuses),
        Quarantine.received_at < now - timedelta(days=days)).order_by(Quarantine.id)))


def erase(session: Session, items: list[Quarantine], now: datetime, by: str, days: int) -> None:
    """Erase these items' bodies, keeping each one's hash, in the caller's transaction with the audit event."""
    for item in items:
        item.payload_sha256 = hashlib.sha256(item.payload).hexdigest()
        item.payload, item.erased_at = b"", now
        if item.status == "held":
            item.status = "erased"
    if items:
        record_audit(session, AuditRecord(
            AuditAction.QUARANTINE_PURGE, "permit", by, purpose="governance", detail={
                "items": " ".join(str(item.id) for item in items), "count": str(len(items)),
                "retention days": str(days),
                "unresolved": str(sum(1 for item in items if item.status == "erased"))}))
