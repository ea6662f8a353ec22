"""How a person finds their way back: a form's URL opened directly (a bookmark, a refreshed tab, a pasted
link), the sign-in page's words when there is no session or it has ended, and signing in again mid-task."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.api.auth import mint_token
from sharedcare.api.deps import SESSION_COOKIE
from sharedcare.store.models import AccessBasis, Feedback

SIGN_IN_FIRST = "Sign in to continue."
SESSION_ENDED = "Your session has ended. Sign in again to continue."


def _sign_in(ics: Ics, username: str = "dr.oconnor", target: str = "/search") -> str:
    done = ics.client.post("/login", data={"username": username, "password": "demo", "target": target},
                           follow_redirects=False)
    assert done.status_code == 303
    return str(done.headers["location"])


def _expired(ics: Ics, monkeypatch: pytest.MonkeyPatch, subject: str = "dr.oconnor") -> str:
    """A session signed in 61 minutes ago: its hour is up."""
    app = ics.client.app
    with monkeypatch.context() as m:
        m.setattr("sharedcare.api.auth.utcnow", lambda: datetime.now(UTC) - timedelta(minutes=61), raising=False)
        return mint_token(app.state.settings, app.state.framework, subject)  # type: ignore[attr-defined]


def _said(page: str) -> str:
    """The sign-in page's error summary, as read."""
    found = re.search(r'nhsuk-error-summary__list[^>]*>(.*?)</ul>', page, re.S)
    return re.sub(r"<[^>]+>|\s+", " ", found.group(1)).strip() if found else ""


def _next(page: str) -> str | None:
    found = re.search(r'name="target" value="([^"]*)"', page)
    return found.group(1) if found else None


def _count(ics: Ics, model: type) -> int:
    with ics.client.app.state.database.session() as s:  # type: ignore[attr-defined]
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


# --- 1. A form's URL opened by GET -----------------------------------------------------------------------

@pytest.mark.parametrize(("username", "url", "page"), [
    (None, "/login", "/"), ("dr.oconnor", "/login", "/"), ("dr.oconnor", "/logout", "/"),
    ("dr.oconnor", "/record/{okafor}/basis", "/record/{okafor}"),
    ("dr.oconnor", "/record/{okafor}/feedback", "/record/{okafor}"),
    ("ig.morgan", "/ig/review/1", "/ig"), ("ig.morgan", "/ig/agreements/RXR", "/ig/agreements"),
    ("ig.morgan", "/ig/identity/1", "/ig/identity"),
    (None, "/patient/sign-in", "/patient"), (None, "/patient/code", "/patient"),
    (None, "/patient/choices/confirm", "/patient/choices"), (None, "/patient/choices/hide", "/patient/choices"),
    (None, "/patient/choices/hide/confirm", "/patient/choices"),
    (None, "/patient/choices/withdraw", "/patient/choices")])
def test_a_forms_url_opened_directly_leads_to_the_page_holding_the_form(ics: Ics, username: str | None, url: str,
                                                                        page: str) -> None:
    if username:
        _sign_in(ics, username, "/ig" if username.startswith("ig.") else "/search")
    opened = ics.client.get(url.format(okafor=ics.okafor), follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == page.format(okafor=ics.okafor)
    shown = ics.client.get(url.format(okafor=ics.okafor))
    assert "Method Not Allowed" not in shown.text and "Something went wrong" not in shown.text


def test_a_get_of_a_form_does_not_do_what_the_form_does(ics: Ics) -> None:
    """A link (from anywhere) to a form's URL with the form's fields records no basis, no feedback, and
    signs no one out."""
    _sign_in(ics)
    ics.client.get(f"/record/{ics.okafor}/basis?basis=explicit-consent")
    ics.client.get(f"/record/{ics.okafor}/feedback?helped=no")
    ics.client.get("/logout")
    assert _count(ics, AccessBasis) == 0 and _count(ics, Feedback) == 0
    page = ics.client.get(f"/record/{ics.okafor}")  # still signed in, and still asked why
    assert page.status_code == 200 and "Why are you opening this record?" in page.text


# --- 2. The sign-in page's words -------------------------------------------------------------------------

def test_with_no_session_the_sign_in_page_speaks_to_a_person(ics: Ics) -> None:
    page = ics.client.get(f"/record/{ics.okafor}")
    assert page.status_code == 401 and _said(page.text) == SIGN_IN_FIRST
    assert "Bearer" not in page.text and "sharedcare token" not in page.text


def test_after_the_session_ended_the_sign_in_page_says_so(ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    ics.client.cookies.set(SESSION_COOKIE, _expired(ics, monkeypatch))
    page = ics.client.get("/search")
    assert page.status_code == 401 and _said(page.text) == SESSION_ENDED


def test_the_api_keeps_its_own_words(ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = ics.client.get(f"/fhir/Patient/{ics.okafor}")
    assert refused.status_code == 401
    assert "Authorization: Bearer <token>" in refused.json()["issue"][0]["diagnostics"]
    token = _expired(ics, monkeypatch)
    expired = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers={"Authorization": f"Bearer {token}"})
    assert "the access token has expired" in expired.json()["issue"][0]["diagnostics"]


# --- 3. Signing in again leads back ----------------------------------------------------------------------

@pytest.mark.parametrize("url", ["/record/{okafor}", "/record/{okafor}/medicines", "/record/{okafor}/changes",
                                 "/search", "/ig/audit", "/ig/agreements"])
def test_signing_in_again_returns_to_the_page_asked_for(ics: Ics, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    url = url.format(okafor=ics.okafor)
    user = "ig.morgan" if url.startswith("/ig") else "dr.oconnor"
    ics.client.cookies.set(SESSION_COOKIE, _expired(ics, monkeypatch, user))
    page = ics.client.get(url)
    assert page.status_code == 401 and _next(page.text) == url
    assert _sign_in(ics, user, url) == url
    assert ics.client.get(url).status_code == 200


def test_a_basis_form_whose_session_ended_returns_to_the_record_without_what_was_typed(
        ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    _sign_in(ics)
    ics.client.post("/search", data={"nhs_number": OKAFOR_NHS})
    ics.client.cookies.delete(SESSION_COOKIE)
    ics.client.cookies.set(SESSION_COOKIE, _expired(ics, monkeypatch))  # the hour is up while she types the reason
    page = ics.client.post(f"/record/{ics.okafor}/basis",
                           data={"basis": "emergency", "reason": "unconscious in resus, no history available"})
    assert page.status_code == 401 and _said(page.text) == SESSION_ENDED
    assert _next(page.text) == f"/record/{ics.okafor}" and "unconscious in resus" not in page.text
    assert _sign_in(ics, target=f"/record/{ics.okafor}") == f"/record/{ics.okafor}"
    assert "Why are you opening this record?" in ics.client.get(f"/record/{ics.okafor}").text
    assert _count(ics, AccessBasis) == 0  # the lost form was not replayed


@pytest.mark.parametrize("target", ["//elsewhere.example/record", "https://elsewhere.example/", "/\\elsewhere.example",
                                    "/record/x?next=//elsewhere.example", "/fhir/Patient", "/patient/home",
                                    "/record/../fhir/Patient", "/ig/../fhir/metadata", "search"])
def test_a_sign_in_leads_only_to_a_staff_page_of_this_site(ics: Ics, target: str) -> None:
    assert _sign_in(ics, target=target) == "/search"
