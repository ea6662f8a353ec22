"""The portals against a hostile browser: forged forms (CSRF), expired sessions and edited URLs; and what a
shared workstation's browser keeps after sign-out."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from tests.portal.test_patient_portal import _sign_in as _patient_sign_in
from tests.portal.test_patient_portal import _start as _patient_start
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.api.app import create_app
from sharedcare.api.auth import ALGORITHM, ISSUER, mint_token
from sharedcare.api.deps import SESSION_COOKIE
from sharedcare.config import Settings
from sharedcare.portal import csrf
from sharedcare.store.database import Database

FORGED = "This form could not be sent"
STRANGER = ("Hughes", "HUGHES", "Margaret", "9990000018", "999 000 0018")


def _settings(ics: Ics) -> Settings:
    settings: Settings = ics.client.app.state.settings  # type: ignore[attr-defined]
    return settings


def _staff(ics: Ics, username: str) -> None:
    done = ics.client.post("/login", data={"username": username, "password": "demo"}, follow_redirects=False)
    assert done.status_code == 303


# --- 1. CSRF ---------------------------------------------------------------------------------------------

def test_every_form_on_every_page_carries_the_token_from_one_field(ics: Ics) -> None:
    for url in ("/", "/patient"):
        page = ics.client.get(url)
        token = csrf.token_for(_settings(ics), ics.client.cookies[csrf.CSRF_COOKIE])
        assert page.text.count("<form") == page.text.count(f'name="csrf_token" value="{token}"') >= 1, url
    _staff(ics, "dr.patel")
    for url in ("/search", f"/record/{ics.okafor}"):
        page = ics.client.get(url)
        assert page.text.count("<form") == page.text.count('name="csrf_token"') >= 2, url  # + sign out


def test_the_token_changes_with_each_session(ics: Ics) -> None:
    before = ics.client.csrf_token()  # type: ignore[attr-defined]
    _staff(ics, "dr.patel")
    assert ics.client.csrf_token() != before  # type: ignore[attr-defined]


@pytest.mark.parametrize("token", [None, "", "0" * 64])
def test_clinician_forms_without_the_right_token_are_refused(ics: Ics, token: str | None) -> None:
    extra = {} if token is None else {"csrf_token": token}
    login = ics.client.post("/login", data={"username": "dr.patel", "password": "demo", **extra},  # type: ignore[call-arg]
                            csrf=False, follow_redirects=False)
    assert login.status_code == 403 and FORGED in login.text
    assert SESSION_COOKIE not in login.headers.get("set-cookie", "")
    _staff(ics, "dr.patel")
    for url, data in (("/search", {"nhs_number": OKAFOR_NHS}),
                      (f"/record/{ics.okafor}/basis", {"basis": "explicit-consent"}),
                      (f"/record/{ics.okafor}/feedback", {"helped": "yes"})):
        page = ics.client.post(url, data={**data, **extra}, csrf=False, follow_redirects=False)  # type: ignore[call-arg]
        assert page.status_code == 403 and FORGED in page.text and "OKAFOR" not in page.text, url
    # nothing happened: no basis was recorded, so the record still asks for one, and the session survived
    assert "Why are you opening this record?" in ics.client.get(f"/record/{ics.okafor}").text


def test_a_token_from_another_browser_is_refused(ics: Ics) -> None:
    _staff(ics, "dr.patel")
    other = csrf.token_for(_settings(ics), csrf.new_nonce())
    page = ics.client.post("/search", data={"nhs_number": OKAFOR_NHS, "csrf_token": other}, csrf=False)  # type: ignore[call-arg]
    assert page.status_code == 403 and "OKAFOR" not in page.text


def test_ig_forms_without_the_token_are_refused(ics: Ics) -> None:
    _staff(ics, "ig.morgan")
    for url, data in (("/ig/audit", {"patient": ics.okafor}), ("/ig/agreements/RYC", {"status": "suspended"}),
                      ("/ig/choices", {"nhs_number": OKAFOR_NHS}), ("/ig/review/1", {"outcome": "appropriate"})):
        page = ics.client.post(url, data=data, csrf=False, follow_redirects=False)  # type: ignore[call-arg]
        assert page.status_code == 403 and FORGED in page.text, url
    assert "Suspended" not in ics.client.get("/ig/agreements").text


def test_patient_forms_without_the_token_are_refused(ics: Ics) -> None:
    born = {"birth_day": "2", "birth_month": "3", "birth_year": "1945"}
    for url, data in (("/patient/sign-in", {"nhs_number": OKAFOR_NHS, **born}), ("/patient/code", {"code": "123456"})):
        page = ics.client.post(url, data=data, csrf=False)  # type: ignore[call-arg]
        assert page.status_code == 403 and FORGED in page.text and "security code" not in page.text, url
    _patient_sign_in(ics.client)
    for url, data in (("/patient/choices/confirm", {"change": "object-all"}),
                      ("/patient/choices", {"change": "object-all"})):
        page = ics.client.post(url, data=data, csrf=False, follow_redirects=False)  # type: ignore[call-arg]
        assert page.status_code == 403 and FORGED in page.text, url


def test_the_fhir_and_access_apis_need_no_form_token(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")  # POST /api/access with a bearer token, no CSRF field
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=headers).status_code == 200


# --- 3. Sessions expire ----------------------------------------------------------------------------------

def _expired(ics: Ics, subject: str) -> str:
    past = datetime.now(UTC) - timedelta(hours=2)
    claims = {"iss": ISSUER, "sub": subject, "iat": past, "exp": past + timedelta(minutes=15), "scope": "user/*.read"}
    return jwt.encode(claims, _settings(ics).secret, algorithm=ALGORITHM)


@pytest.mark.parametrize(("subject", "url", "form"), [
    ("dr.patel", "/search", 'action="/login"'), ("dr.patel", "/record/{okafor}", 'action="/login"'),
    ("ig.morgan", "/ig", 'value="/ig"'), ("ig.morgan", "/ig/agreements", 'value="/ig/agreements"'),
    ("patient:{okafor}", "/patient/home", 'action="/patient/sign-in"'),
    ("patient:{okafor}", "/patient/record", 'action="/patient/sign-in"')])
def test_an_expired_session_is_sent_back_to_sign_in(ics: Ics, subject: str, url: str, form: str) -> None:
    ics.client.cookies.set(SESSION_COOKIE, _expired(ics, subject.format(okafor=ics.okafor)))
    page = ics.client.get(url.format(okafor=ics.okafor))
    assert page.status_code == 401 and form in page.text, url
    assert "OKAFOR" not in page.text and "Metformin" not in page.text
    assert f'{SESSION_COOKIE}=""' in page.headers.get("set-cookie", "")  # the stale cookie is cleared


def test_a_session_minted_for_a_minute_ends_after_it(ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    with monkeypatch.context() as m:
        m.setattr("sharedcare.api.auth.utcnow", lambda: datetime.now(UTC) - timedelta(minutes=5), raising=False)
        token = mint_token(_settings(ics), fw, "dr.patel", minutes=1)
    ics.client.cookies.set(SESSION_COOKIE, token)
    assert ics.client.get("/search").status_code == 401


# --- 4. URL editing --------------------------------------------------------------------------------------

@pytest.mark.parametrize("username", ["dr.oconnor", "para.evans", "dn.williams", "pharm.khan", "admin.taylor"])
def test_a_clinician_editing_the_url_gets_the_basis_form_or_a_refusal_never_data(ics: Ics, username: str) -> None:
    _staff(ics, username)
    page = ics.client.get(f"/record/{ics.stranger}")
    assert page.status_code in {200, 403}
    if page.status_code == 200:
        assert "Why are you opening this record?" in page.text
    assert not any(word in page.text for word in STRANGER)
    made_up = ics.client.get("/record/00000000-0000-0000-0000-000000000000")
    assert made_up.status_code in {200, 403, 404} and "Metformin" not in made_up.text


def test_a_citizen_editing_any_url_gets_nothing_of_anyone_else(ics: Ics) -> None:
    _patient_sign_in(ics.client)
    for url in (f"/record/{ics.stranger}", f"/fhir/Patient/{ics.stranger}", f"/fhir/Patient/{ics.stranger}/$everything",
                f"/fhir/AllergyIntolerance?patient={ics.stranger}", "/search", "/ig", "/ig/audit",
                f"/patient/record?person={ics.stranger}", f"/patient/record/{ics.stranger}",
                f"/patient/accesses?patient_id={ics.stranger}"):
        page = ics.client.get(url)
        assert not any(word in page.text for word in STRANGER), url
        assert page.status_code in {200, 401, 403, 404}, url
        if page.status_code == 200:
            # only their own pages answer (and the empty clinician search form, whose search finds nothing)
            assert url.startswith(("/patient/", "/search")), url
    for url, data in ((f"/record/{ics.stranger}/basis", {"basis": "explicit-consent"}),
                      ("/search", {"nhs_number": "9990000018"}), ("/ig/choices", {"nhs_number": "9990000018"})):
        page = ics.client.post(url, data=data, follow_redirects=True)
        assert not any(word in page.text for word in STRANGER), url
    assert "OKAFOR" in ics.client.get("/patient/record").text.upper()  # their own record still works


# --- HTTPS only outside demo mode -------------------------------------------------------------------------

def test_outside_demo_mode_browsers_are_told_https_only_and_cookies_are_secure(ics: Ics, db: Database) -> None:
    """Behind a TLS-terminating proxy the service may see plain HTTP; its cookies must still never be sent
    over it. A demo on a laptop (http://localhost) keeps working."""
    settings = replace(_settings(ics), demo=False, secret="s" * 40)
    app = create_app(settings, framework=ics.client.app.state.framework, database=db)  # type: ignore[attr-defined]
    with TestClient(app) as live:
        page = live.get("/patient")
    assert page.headers["strict-transport-security"] == "max-age=31536000"
    assert csrf.CSRF_COOKIE in page.headers["set-cookie"] and "secure" in page.headers["set-cookie"].lower()
    ics.client.cookies.clear()
    demo = ics.client.get("/patient")
    assert "strict-transport-security" not in demo.headers
    assert "secure" not in demo.headers["set-cookie"].lower()


def test_the_stylesheets_the_pages_link_ask_for_no_font_the_policy_refuses(ics: Ics) -> None:
    """The NHS stylesheet declared Frutiger from assets.nhs.uk; with `font-src 'self'` Chromium logged every
    refused source on every page (the browser tests now fail on any console error). The pages load fonts
    from nowhere else, and the policy is not widened to let them."""
    page = ics.client.get("/")
    policy = page.headers["content-security-policy"]
    assert "font-src 'self';" in policy
    for href in re.findall(r'<link rel="stylesheet" href="([^"]+)"', page.text):
        css = ics.client.get(href).text
        sources = re.findall(r"@font-face\s*\{[^}]*\}", css)
        assert all(re.findall(r"url\((?!/)", face) == [] for face in sources), f"{href}: {sources}"


# --- Shared workstations ---------------------------------------------------------------------------------

def test_a_patients_name_and_number_stay_out_of_the_browser_history(ics: Ics) -> None:
    """Browser history keeps each page's title after sign-out (Clear-Site-Data does not clear it): the next
    user of a shared workstation would read there whose records were opened. The name stays on the page."""
    _staff(ics, "dr.patel")
    ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"})
    for page, title in (("", "Patient record"), ("/changes", "What changed"),
                        ("/medicines", "Medicines from every source")):
        text = ics.client.get(f"/record/{ics.okafor}{page}").text
        assert f"<title>{title} - Shared care record</title>" in text, page
        assert '<h1 id="patient-name">OKAFOR, Emeka</h1>' in text, page


def test_closing_the_browser_ends_the_session(ics: Ics) -> None:
    """The session cookie has no lifetime of its own, so no browser keeps it on disk once closed; the
    token inside it still ends at its own expiry while the browser stays open."""
    clinician = ics.client.post("/login", data={"username": "dr.patel", "password": "demo"}, follow_redirects=False)
    code = _patient_start(ics.client)
    citizen = ics.client.post("/patient/code", data={"code": code}, follow_redirects=False)
    for signed_in in (clinician, citizen):
        (cookie,) = [c for c in signed_in.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")]
        assert "max-age" not in cookie.lower() and "expires" not in cookie.lower(), cookie


@pytest.mark.parametrize("portal", ["staff", "patient"])
def test_signing_in_again_ends_the_session_the_browser_had(ics: Ics, portal: str) -> None:
    """A second sign-in on the same browser (another tab, the next user of a shared workstation) replaces
    the session cookie, and signing out then revoked only the new session: a copy of the first went on
    working for up to an hour. Signing in now revokes the session the browser carries, as signing out does."""
    def sign_in() -> str:
        if portal == "staff":
            _staff(ics, "dr.patel")
        else:
            _patient_sign_in(ics.client)
        return ics.client.cookies[SESSION_COOKIE]

    home = "/search" if portal == "staff" else "/patient/home"
    first = sign_in()
    second = sign_in()
    assert second != first and ics.client.get(home).status_code == 200
    ics.client.post("/logout", data={"target": "/" if portal == "staff" else "/patient"})
    for token in (first, second):
        ics.client.cookies.clear()
        ics.client.cookies.set(SESSION_COOKIE, token)
        assert ics.client.get(home).status_code == 401


def test_sign_out_from_a_tab_opened_before_the_last_sign_in_ends_the_session(ics: Ics) -> None:
    """Tab A's page was rendered before the clinician signed in again in tab B, so its Sign out form carries
    the old token. It was refused as a forged form ("This form could not be sent") and the session went on
    for up to an hour at a shared workstation; a sign-out now ends the session whatever token it carries."""
    _staff(ics, "dr.patel")
    tab_a = ics.client.csrf_token()  # type: ignore[attr-defined]
    _staff(ics, "dr.patel")  # tab B: signing in again gives the browser a new token
    assert ics.client.csrf_token() != tab_a  # type: ignore[attr-defined]
    session = ics.client.cookies[SESSION_COOKIE]
    out = ics.client.post("/logout", data={"target": "/", "csrf_token": tab_a}, csrf=False,  # type: ignore[call-arg]
                          follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/"
    ics.client.cookies.clear()
    ics.client.cookies.set(SESSION_COOKIE, session)
    assert ics.client.get("/search").status_code == 401
