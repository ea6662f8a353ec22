"""A refused token or session is audited like a failed sign-in (TRUST AU3, ASVS 16.3.1): expired,
forged and revoked tokens each leave one `auth:token:refused` event, naming the user only where the
signature was checked; a request with no credentials at all is not a sign-in attempt and leaves none."""

from __future__ import annotations

from datetime import timedelta

import jwt as pyjwt
from sqlalchemy import select
from tests.small_ics import Ics

from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

REFUSED = "auth:token:refused"


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


def _refusals(ics: Ics) -> list[AuditEntry]:
    with _db(ics).session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == REFUSED).order_by(AuditEntry.seq)))


def _token(secret: str, minutes: int) -> str:
    now = utcnow()
    return pyjwt.encode({"iss": "sharedcare", "sub": "dr.patel", "scope": "user/*.read", "jti": f"j{minutes}",
                         "iat": now - timedelta(hours=1), "exp": now + timedelta(minutes=minutes)},
                        secret, algorithm="HS256")


def test_expired_and_forged_tokens_are_audited_and_name_no_one(ics: Ics) -> None:
    url = f"/fhir/Patient/{ics.okafor}/$everything"
    expired = ics.client.get(url, headers={"Authorization": f"Bearer {_token(load_settings().secret, -5)}",
                                           "X-Request-ID": "expired-1"})
    forged = ics.client.get(url, headers={"Authorization": f"Bearer {_token('a guessed secret ' * 3, 10)}",
                                          "X-Request-ID": "forged-1"})
    assert (expired.status_code, forged.status_code) == (401, 401)
    events = [(e.outcome, e.username, e.patient_id, e.event["outcome"]) for e in _refusals(ics)]
    assert events == [("deny", None, None, "4"), ("deny", None, None, "4")]
    first, second = (str(e.event) for e in _refusals(ics))  # the reason and the request, in the event
    assert "expired" in first and "expired-1" in first and "not valid" in second and "forged-1" in second


def test_a_revoked_session_token_is_audited_under_its_user(ics: Ics) -> None:
    done = ics.client.post("/login", data={"username": "dr.patel", "password": "demo"}, follow_redirects=False)
    assert done.status_code == 303
    session_token = ics.client.cookies["sc_session"]
    ics.client.post("/logout", data={"target": "/"}, follow_redirects=False)
    refused = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything",
                             headers={"Authorization": f"Bearer {session_token}"})
    assert refused.status_code == 401
    ((outcome, username),) = [(e.outcome, e.username) for e in _refusals(ics)]
    assert (outcome, username) == ("deny", "dr.patel")


def test_no_credentials_at_all_is_answered_but_not_audited_as_a_sign_in(ics: Ics) -> None:
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything").status_code == 401
    assert _refusals(ics) == []
