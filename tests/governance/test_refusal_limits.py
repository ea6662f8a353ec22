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


def test_many_addresses_cannot_flood_the_log_and_what_they_sent_is_still_counted() -> None:
    """An attacker with many addresses (an IPv6 /64 holds 2**64) meets the limit for all addresses, and the
    counts of addresses no longer remembered are told on the next refusal audited."""
    limits = audit.RefusalLimiter(per_minute=2, per_minute_all=50, addresses=100)
    admitted = [limits.admit(f"2001:db8:{n // 256:x}:{n % 256:x}::1") for n in range(1000)]
    assert sum(a is not None for a in admitted) == 50
    assert len(limits._windows) == 100
    same_64 = [limits.admit(f"2001:db8:ffff:1::{n:x}") for n in range(5)]  # one client's /64: one address
    assert len(limits._windows) == 100 and same_64 == [None] * 5  # all addresses' minute is spent
    fresh = audit.RefusalLimiter(per_minute=2, addresses=3)
    told = [fresh.admit(f"10.0.0.{n}") for n in range(6) for _ in range(3)]  # one over the limit each
    told.append(fresh.admit("192.0.2.1"))
    assert told.count(None) == 6 and sum(t or 0 for t in told) == 4  # the 4 forgotten ones, each told once


def test_ipv4_clients_of_a_dual_stack_listener_each_have_their_own_share() -> None:
    """A dual-stack listener sees an IPv4 client as `::ffff:a.b.c.d`: taken as an IPv6 /64, every IPv4 client
    fell into `::/64` and one client's flood of refusals used up every other's (MLLP review, 2026-12-07)."""
    limits = audit.RefusalLimiter(per_minute=2, per_minute_all=100)
    assert [limits.admit("::ffff:198.51.100.7") for _ in range(3)] == [0, 0, None]
    assert limits.admit("::ffff:203.0.113.9") == 0  # another client: its own share
    assert limits.admit("198.51.100.7") is None  # the same client, however it arrives
    assert audit.network_of("::ffff:198.51.100.7") == "198.51.100.7"


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


def test_refusals_whose_entry_could_not_be_written_are_told_on_the_next_one_written(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal whose audit write fails (the store briefly unavailable) is not lost from the count: it and
    the refusals it was to tell go on the next entry that is written."""
    clock = Clock()
    monkeypatch.setattr(audit, "REFUSALS", audit.RefusalLimiter(per_minute=1, clock=clock))
    refusal = audit.AuditRecord(audit.AuditAction.CREDENTIALS_REFUSED, "deny", username=None, reason="forged token",
                                source_address="198.51.100.7")
    audit.record_refusal(db, refusal)
    audit.record_refusal(db, refusal)  # over the minute's limit: counted only
    clock.now += 60
    real_record_audit = audit.record_audit

    def store_unavailable(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(audit, "record_audit", store_unavailable)
    with pytest.raises(OSError):
        audit.record_refusal(db, refusal)  # was to tell of 1, and is itself not written
    monkeypatch.setattr(audit, "record_audit", real_record_audit)
    clock.now += 60
    audit.record_refusal(db, refusal)
    with db.session() as s:
        entries = list(s.scalars(select(AuditEntry).where(AuditEntry.action == "auth:token:refused")
                                 .order_by(AuditEntry.seq)))
    assert len(entries) == 2
    assert details(entries[-1])["not_audited_before"] == "2"
