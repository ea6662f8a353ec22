"""Back to search results: the search form's POST keeps the criteria on the server and sends the browser to a
results page (`GET /search/results/{id}`), so Back from a record shows the results again without asking to
send the form again, and no NHS number, name or date of birth is in a URL. The page searches afresh each
time it is shown, decided and audited as a search; only the user and session that made it may see it, and
only for a while."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from tests.portal_client import PortalClient
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.clock import utcnow
from sharedcare.governance import gateway
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.audit import AuditAction
from sharedcare.governance.framework import Framework
from sharedcare.governance.review import UNUSUAL_SEARCHES
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, KeptSearch, ReviewItem

BY_NAME = {"family": "Okafor", "birth_day": "2", "birth_month": "3", "birth_year": "1945"}
GONE = "These search results are no longer available"


def _sign_in(client: PortalClient, username: str = "dr.oconnor") -> None:
    done = client.post("/login", data={"username": username, "password": "demo"}, follow_redirects=False)
    assert done.status_code == 303


def _search(client: PortalClient, form: dict[str, str] | None = None) -> str:
    """The results page the search form leads to."""
    sent = client.post("/search", data=form or BY_NAME, follow_redirects=False)
    assert sent.status_code == 303, sent.text
    return str(sent.headers["location"])


def _searches(db: Database, username: str, outcome: str = "permit") -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(
            AuditEntry.action == AuditAction.PATIENT_SEARCH.value, AuditEntry.username == username,
            AuditEntry.outcome == outcome).order_by(AuditEntry.seq)))


def test_a_search_leads_to_a_results_page_with_nothing_typed_in_its_address(ics: Ics, db: Database) -> None:
    _sign_in(ics.client)
    page = _search(ics.client)
    assert page.startswith("/search/results/")
    assert not any(typed in page.lower() for typed in ("okafor", "1945", OKAFOR_NHS))
    assert _searches(db, "dr.oconnor") == []  # the POST searched no one: the page does
    shown = ics.client.get(page)
    assert shown.status_code == 200 and "1 person found" in shown.text and "OKAFOR, Emeka" in shown.text
    assert 'value="Okafor"' in shown.text  # the form keeps what was typed, to search again
    assert [e.patient_id for e in _searches(db, "dr.oconnor")] == [ics.okafor]
    by_number = _search(ics.client, {"nhs_number": "943 476 5919"})
    assert OKAFOR_NHS not in by_number and "943" not in by_number
    assert "1 person found" in ics.client.get(by_number).text


def test_showing_the_results_again_searches_again_and_counts_each_person_once_an_hour(
        ics: Ics, db: Database) -> None:
    """Back to the results runs the search through the decision point again: each showing is audited (the
    patient sees each in "Who has looked", the IG officer each in the audit log), and the hour's count of
    different people found is not raised by showing the same person again (41 showings, one person: no
    item in the review queue, whose line is 30 people)."""
    _sign_in(ics.client)
    page = _search(ics.client)
    for _ in range(41):
        assert "1 person found" in ics.client.get(page).text
    assert [e.patient_id for e in _searches(db, "dr.oconnor")] == [ics.okafor] * 41
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ReviewItem).where(ReviewItem.kind == UNUSUAL_SEARCHES)) == 0


def test_the_results_page_shows_what_the_user_may_see_now(ics: Ics, db: Database, framework: Framework) -> None:
    """Searched again, not replayed: once the organisation's agreement is suspended, Back to the results
    shows no one (she is signed out)."""
    _sign_in(ics.client)
    page = _search(ics.client)
    assert "1 person found" in ics.client.get(page).text
    with db.session() as s:
        set_agreement(s, framework, "RXR", "suspended", by="operator", reason="a breach")
    shown = ics.client.get(page)
    assert shown.status_code == 401 and "OKAFOR" not in shown.text
    assert len(_searches(db, "dr.oconnor")) == 1


@pytest.mark.parametrize("who", ["another user", "another session of the same user"])
def test_another_users_or_sessions_results_page_finds_nothing_and_is_audited(ics: Ics, db: Database,
                                                                             who: str) -> None:
    _sign_in(ics.client, "dr.oconnor")
    page = _search(ics.client)
    other = PortalClient(ics.client.app)
    _sign_in(other, "dr.patel" if who == "another user" else "dr.oconnor")
    shown = other.get(page)
    assert shown.status_code == 404 and GONE in shown.text
    assert "OKAFOR" not in shown.text and "Okafor" not in shown.text
    username = "dr.patel" if who == "another user" else "dr.oconnor"
    (refused,) = _searches(db, username, "deny")
    assert refused.patient_id is None and "deny-search-not-kept" in str(refused.event)
    assert "1 person found" in ics.client.get(page).text  # its own session still sees it


def test_a_results_page_ends_after_half_an_hour_and_a_made_up_one_finds_nothing(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    _sign_in(ics.client)
    page = _search(ics.client)
    assert ics.client.get("/search/results/made-up").status_code == 404
    later = utcnow() + timedelta(minutes=31)
    monkeypatch.setattr(gateway, "utcnow", lambda: later)
    shown = ics.client.get(page)
    assert shown.status_code == 404 and GONE in shown.text and "OKAFOR" not in shown.text
    assert len(_searches(db, "dr.oconnor", "deny")) == 2


def test_signing_out_deletes_the_sessions_kept_searches(ics: Ics, db: Database) -> None:
    _sign_in(ics.client)
    _search(ics.client)
    _search(ics.client, {"nhs_number": OKAFOR_NHS})
    other = PortalClient(ics.client.app)
    _sign_in(other, "dr.patel")
    _search(other)
    ics.client.post("/logout", data={"target": "/"})
    with db.session() as s:
        assert s.scalars(select(KeptSearch.username)).all() == ["dr.patel"]  # the other session's is kept


def test_a_search_refused_as_typed_is_answered_on_the_form_and_kept_nowhere(ics: Ics, db: Database) -> None:
    _sign_in(ics.client)
    wrong = ics.client.post("/search", data={"nhs_number": "943 476 5918"}, follow_redirects=False)
    assert wrong.status_code == 400 and "valid check digit" in wrong.text
    padded = ics.client.post("/search", data={**BY_NAME, "family": "Okafor" + " " * 200}, follow_redirects=False)
    assert padded.status_code == 400 and "at most 100 characters" in padded.text
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(KeptSearch)) == 0


def test_one_who_may_not_look_anyone_up_is_refused_at_the_form_and_nothing_is_kept(ics: Ics, db: Database) -> None:
    _sign_in(ics.client, "analyst.chen")  # an analyst: secondary use only, no direct care
    refused = ics.client.post("/search", data=BY_NAME, follow_redirects=False)
    assert refused.status_code == 403 and "OKAFOR" not in refused.text
    assert len(_searches(db, "analyst.chen", "deny")) == 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(KeptSearch)) == 0


def test_a_results_page_asked_for_after_the_session_ended_signs_in_to_find_a_patient(
        ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its id is the ended session's, so signing in again leads to the search form, not to a page that
    would find nothing."""
    _sign_in(ics.client)
    page = _search(ics.client)
    later = utcnow() + timedelta(minutes=31)
    monkeypatch.setattr("sharedcare.api.auth.utcnow", lambda: later)
    shown = ics.client.get(page)
    assert shown.status_code == 401 and 'name="target" value="/search"' in shown.text
