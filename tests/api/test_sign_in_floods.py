"""Failed sign-ins (staff, citizens; backend clients in test_smart.py), which anyone can make, cannot
flood the audit log: like other refusals at the door, the first ones a minute from an address are
audited and the rest counted onto its next audited refusal. Successful sign-ins are audited one by one,
whatever the flood."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from tests.governance.test_refusal_limits import Clock
from tests.small_ics import Ics

from sharedcare.governance import audit
from sharedcare.governance.access_log import details
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry


@pytest.fixture
def refusal_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(audit, "REFUSALS", audit.RefusalLimiter(clock=clock))
    return clock


def _sign_ins(db: Database) -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == "auth:session:login")
                              .order_by(AuditEntry.seq)))


def test_failed_staff_sign_ins_are_audited_within_the_limit_and_a_good_one_always(
        ics: Ics, db: Database, refusal_clock: Clock) -> None:
    for n in range(100):
        assert ics.client.post("/login", data={"username": f"nobody{n}", "password": "x"}).status_code == 401
    assert [e.outcome for e in _sign_ins(db)] == ["deny"] * 20
    signed_in = ics.client.post("/login", data={"username": "dr.patel", "password": "demo"}, follow_redirects=False)
    assert signed_in.status_code == 303
    assert [(e.outcome, e.username) for e in _sign_ins(db)][-1] == ("permit", "dr.patel")
    refusal_clock.now += 60
    assert ics.client.post("/login", data={"username": "nobody", "password": "x"}).status_code == 401
    last = _sign_ins(db)[-1]
    assert (last.outcome, details(last)["not_audited_before"]) == ("deny", "80")


def test_failed_citizen_sign_ins_are_audited_within_the_limit(ics: Ics, db: Database) -> None:
    for year in range(1900, 1950):
        page = ics.client.post("/patient/sign-in", data={"nhs_number": "9434765919", "birth_day": "1",
                                                          "birth_month": "1", "birth_year": str(year)})
        assert page.status_code == 200
    assert [(e.outcome, e.username) for e in _sign_ins(db)] == [("deny", "anonymous")] * 20
