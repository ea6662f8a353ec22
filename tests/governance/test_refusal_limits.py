"""Refusals at the door (forged or expired tokens, bad TLS handshakes) cannot flood the audit log: the
first ones a minute from an address are audited, the rest counted onto its next audited refusal."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from tests.small_ics import Ics

from sharedcare.governance import audit
from sharedcare.governance.access_log import details
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_refusals_a_minute_are_audited_and_the_rest_counted_onto_the_next() -> None:
    clock = Clock()
    limits = audit.RefusalLimiter(per_minute=3, clock=clock)
    assert [limits.admit("198.51.100.7") for _ in range(5)] == [0, 0, 0, None, None]
    assert limits.admit("203.0.113.9") == 0  # another address has its own allowance
    clock.now += 59
    assert limits.admit("198.51.100.7") is None
    clock.now += 1  # a new minute: the three not audited are told on the first that is
    assert [limits.admit("198.51.100.7") for _ in range(4)] == [3, 0, 0, None]


def test_the_addresses_remembered_are_bounded() -> None:
    limits = audit.RefusalLimiter(per_minute=1, addresses=100)
    for n in range(1000):
        limits.admit(f"10.0.{n // 256}.{n % 256}")
    assert len(limits._windows) == 100


def test_a_flood_of_forged_tokens_writes_a_bounded_number_of_entries_and_every_one_is_refused(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(audit, "REFUSALS", audit.RefusalLimiter(per_minute=5, clock=clock))
    forged = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkci5wYXRlbCJ9.forged"}
    statuses = [ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=forged).status_code for _ in range(40)]
    assert statuses == [401] * 40

    def refused() -> list[AuditEntry]:
        with db.session() as s:
            return list(s.scalars(select(AuditEntry).where(AuditEntry.action == "auth:token:refused")
                                  .order_by(AuditEntry.seq)))

    assert len(refused()) == 5
    clock.now += 60
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=forged).status_code == 401
    entries = refused()
    assert len(entries) == 6 and details(entries[-1])["not_audited_before"] == "35"
