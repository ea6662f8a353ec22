"""A record opened by its id alone (no search that found the person, no read of their record, by this user in
the last 24 hours) is allowed, and goes to the IG review queue as "opened-by-id", once in the 24 hours; its
basis's audit entry says so, in the IG audit search and the citizen's "who has looked". Over the HTTP API."""

from __future__ import annotations

import html
from datetime import timedelta

import pytest
from sqlalchemy import select
from tests.portal.test_ig_workspace import _sign_in as _ig_sign_in
from tests.portal.test_patient_portal import _sign_in as _citizen_sign_in
from tests.portal.test_patient_portal import visit_rows
from tests.small_ics import Ics

from sharedcare.clock import utcnow
from sharedcare.governance.access_log import details
from sharedcare.store.models import AuditEntry, ReviewItem


def _items(ics: Ics) -> list[tuple[str, str, str]]:
    with ics.database.session() as s:
        return [(i.kind, i.username, i.person_id) for i in s.scalars(select(ReviewItem).order_by(ReviewItem.id))]


def _bases(ics: Ics) -> list[dict[str, str]]:
    """The decision details of each permitted basis, oldest first."""
    with ics.database.session() as s:
        return [details(e) for e in s.scalars(select(AuditEntry).where(
            AuditEntry.action == "access:basis:record", AuditEntry.outcome == "permit").order_by(AuditEntry.seq))]


def test_a_basis_after_a_search_queues_nothing(ics: Ics) -> None:
    """Explicit consent by a paramedic who found Mr Okafor by his NHS number: nothing for IG to look at."""
    headers = ics.open_record("para.evans")  # a search first
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 200
    assert _items(ics) == []
    assert "found" not in _bases(ics)[0]


def test_a_basis_by_id_alone_is_allowed_and_queued_once_in_words(ics: Ics) -> None:
    headers = ics.open_record("para.evans", found=False)  # the id from a link: no search
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 200  # not blocked
    assert _items(ics) == [("opened-by-id", "para.evans", ics.okafor)]
    assert _bases(ics)[0]["found"] == "by-id"

    _ig_sign_in(ics)
    queue = html.unescape(ics.client.get("/ig").text)
    assert "Record opened by its id, without a search: Carys Evans" in queue
    assert ("record opened by its id alone: no search by this user found the patient, and they had not read the "
            "record, in the last 24 hours") in queue
    assert "OKAFOR, Emeka, born 2 Mar 1945" in queue  # whose record, as for every item
    searched = html.unescape(ics.client.post("/ig/audit", data={"user": "para.evans"}).text)
    assert "Recorded why they opened the record, having opened it by its id alone (no search by this user" in searched
    ics.client.cookies.clear()

    _citizen_sign_in(ics.client)
    (visit,) = [row for row in visit_rows(ics.client.get("/patient/accesses").text) if "Carys Evans" in row]
    assert ("recorded why they needed your record (went straight to your record, without finding you in a search "
            "first), then viewed your record") in visit


def test_another_basis_or_a_read_in_the_24_hours_adds_no_item(ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the other kinds are not queued twice for one thing: a second basis by id alone (no read between,
    here) and reads of the record under the first basis add nothing; after 24 hours with no search or read, an
    id alone is queued again. Another user's id-only basis is theirs to be asked about."""
    headers = ics.open_record("para.evans", found=False)
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present", found=False)
    assert _bases(ics)[1]["found"] == "by-id"  # still said of the basis itself
    for _ in range(2):
        assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 200
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=headers).status_code == 200
    assert _items(ics) == [("opened-by-id", "para.evans", ics.okafor), ("implied-consent", "para.evans", ics.okafor)]

    ics.open_record("dr.oconnor", found=False)
    assert _items(ics)[-1] == ("opened-by-id", "dr.oconnor", ics.okafor)

    later = utcnow() + timedelta(hours=25)
    for module in ("sharedcare.governance.gateway", "sharedcare.governance.audit"):
        monkeypatch.setattr(f"{module}.utcnow", lambda: later)
    ics.open_record("para.evans", found=False)
    assert [i for i in _items(ics) if i[:2] == ("opened-by-id", "para.evans")] == [
        ("opened-by-id", "para.evans", ics.okafor)] * 2


def test_a_read_under_the_basis_counts_as_having_found_the_person(ics: Ics) -> None:
    """Once the record was read (its banner named him), a new basis the next time is not "by id alone"."""
    headers = ics.open_record("para.evans", found=False)
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 200
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present", found=False)
    assert "found" not in _bases(ics)[1]
    assert _items(ics) == [("opened-by-id", "para.evans", ics.okafor), ("implied-consent", "para.evans", ics.okafor)]
