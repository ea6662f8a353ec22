"""A clinician's portal session lasts while she uses it: each page renews its idle window
(`SHAREDCARE_SESSION_IDLE_MINUTES`, 30), up to its cap (`SHAREDCARE_SESSION_HOURS`, 8) after the sign-in,
never later. Renewed, it is the same session: sign-out, a suspension's cut-off and revocation end every copy
of it, and a copy of the cookie no one uses ends at its own idle timeout; one that turns up expired (her idle
tab, pressing Sign out there, signing in over it) ends every copy too."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from sqlalchemy import select
from tests.portal_client import PortalClient
from tests.small_ics import Ics

from sharedcare.api.auth import read_token
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.audit import AuditAction
from sharedcare.governance.framework import Framework
from sharedcare.portal.pages import SESSION_COOKIE
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, RevokedToken

ENDED = "Your session has ended. Sign in again to continue."


class Clock:
    """The time the tokens are signed and read at, moved on by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = timedelta()
        for module in ("sharedcare.api.auth", "sharedcare.api.deps", "sharedcare.portal.pages"):
            monkeypatch.setattr(f"{module}.utcnow", self.now, raising=False)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def at(self, minutes: float) -> None:
        self.offset = timedelta(minutes=minutes)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def _sign_in(ics: Ics, username: str = "dr.oconnor", target: str = "/search") -> None:
    done = ics.client.post("/login", data={"username": username, "password": "demo", "target": target},
                           follow_redirects=False)
    assert done.status_code == 303, done.text


def _cookie(ics: Ics) -> str:
    return str(ics.client.cookies[SESSION_COOKIE])


def _with(ics: Ics, cookie: str, url: str = "/search") -> int:
    """The status of a page asked for with this copy of the session cookie, from another browser."""
    other = PortalClient(ics.client.app)
    other.cookies.set(SESSION_COOKIE, cookie)
    return int(other.get(url).status_code)


def _claims(ics: Ics, token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def _said(page: str) -> str:
    found = re.search(r'id="session-ends"[^>]*>(.*?)</p>', page, re.S)
    return " ".join(found.group(1).split()) if found else ""


def test_a_session_in_use_goes_on_past_the_idle_window_and_the_old_fixed_hour(ics: Ics, clock: Clock) -> None:
    _sign_in(ics)
    first = _claims(ics, _cookie(ics))
    for minutes in (20, 40, 60, 80, 100):  # a page every 20 minutes: never 30 minutes unused
        clock.at(minutes)
        page = ics.client.get("/search")
        assert page.status_code == 200, f"signed out at {minutes} minutes while in use"
    renewed = _claims(ics, _cookie(ics))
    # the same session: its id and sign-in time kept, only its expiry moved on
    assert (renewed["jti"], renewed["iat"], renewed["cap"]) == (first["jti"], first["iat"], first["cap"])
    assert float(str(renewed["exp"])) > float(str(first["exp"]))
    assert "if you do not open another page before then, and at" in _said(page.text)


def test_the_page_says_when_the_session_ends(ics: Ics, clock: Clock) -> None:
    _sign_in(ics)
    page = ics.client.get("/search")
    ends = datetime.fromtimestamp(float(str(_claims(ics, _cookie(ics))["exp"])), UTC)
    said = _said(page.text)
    assert said.startswith("Your session ends at ") and "at the latest" in said
    from sharedcare.portal.pages import uk_hour  # the clock time as the page writes it
    assert f"ends at {uk_hour(ends)} if you do not open another page" in said


def test_an_unused_session_ends_at_the_idle_timeout_and_signing_in_again_goes_back(ics: Ics, clock: Clock) -> None:
    _sign_in(ics)
    clock.at(31)
    page = ics.client.get(f"/record/{ics.okafor}")
    assert page.status_code == 401 and ENDED in page.text
    assert f'name="target" value="/record/{ics.okafor}"' in page.text  # back to the page asked for
    again = ics.client.post("/login", data={"username": "dr.oconnor", "password": "demo",
                                            "target": f"/record/{ics.okafor}"}, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == f"/record/{ics.okafor}"


def test_a_copied_cookie_left_unused_ends_at_the_idle_timeout_and_ends_the_session_it_was_copied_from(
        ics: Ics, clock: Clock) -> None:
    _sign_in(ics)
    copied = _cookie(ics)
    clock.at(20)
    assert ics.client.get("/search").status_code == 200  # the clinician goes on working
    clock.at(40)
    assert ics.client.get("/search").status_code == 200
    assert _with(ics, copied) == 401  # the copy, unused since sign-in, is expired
    # an expired copy turning up means the cookie was copied: which copy is hers no one can tell, so all end
    assert ics.client.get("/search").status_code == 401


def _copy_kept_in_use(ics: Ics, clock: Clock) -> PortalClient:
    """Someone copies the clinician's cookie (a shared PC, devtools) and uses it now and then, each page
    renewing their copy, while her own tab sits idle."""
    other = PortalClient(ics.client.app)
    other.cookies.set(SESSION_COOKIE, _cookie(ics))
    for minutes in (20, 45):
        clock.at(minutes)
        assert other.get("/search").status_code == 200
    clock.at(50)  # her own copy idled out at 30
    return other


@pytest.mark.parametrize("she", ["opens a page", "signs out", "signs in again"])
def test_a_copy_kept_in_use_ends_when_her_expired_session_comes_back(ics: Ics, clock: Clock, she: str) -> None:
    _sign_in(ics)
    other = _copy_kept_in_use(ics, clock)
    if she == "opens a page":
        page = ics.client.get("/search")
        assert page.status_code == 401 and ENDED in page.text
    elif she == "signs out":
        assert ics.client.post("/logout", data={"target": "/"}, follow_redirects=False).status_code == 303
    else:
        _sign_in(ics)  # (her new session, signed at the moved clock, is not used: PyJWT checks `iat` by its own)
    page = other.get("/search")
    assert page.status_code == 401 and "sign in again" in page.text  # the copy ended, though it was not expired
    clock.at(70)
    assert other.get("/search").status_code == 401


def test_a_forged_expired_cookie_revokes_nothing(ics: Ics, clock: Clock, db: Database) -> None:
    _sign_in(ics)
    claims = _claims(ics, _cookie(ics))
    forged = jwt.encode(claims, "not the service's secret, though as long as one", algorithm="HS256")
    clock.at(40)
    assert _with(ics, forged) == 401
    with db.session() as s:
        assert s.scalars(select(RevokedToken)).all() == []


def test_signing_out_a_renewed_session_ends_every_copy_of_it_until_its_cap(
        ics: Ics, clock: Clock, db: Database) -> None:
    _sign_in(ics)
    first = _cookie(ics)
    clock.at(20)
    assert ics.client.get("/search").status_code == 200
    renewed = _cookie(ics)
    assert renewed != first
    clock.at(25)
    assert ics.client.get("/search").status_code == 200
    later = _cookie(ics)  # (renewed again: a minute had passed)
    other = PortalClient(ics.client.app)  # signs out with the copy renewed at 20 minutes
    other.cookies.set(SESSION_COOKIE, renewed)
    assert other.post("/logout", data={"target": "/"}, follow_redirects=False).status_code == 303
    assert _with(ics, first) == 401 and _with(ics, renewed) == 401 and _with(ics, later) == 401
    with db.session() as s:
        kept = s.scalars(select(RevokedToken.expires_at)).one()
    cap = datetime.fromtimestamp(int(str(_claims(ics, later)["cap"])), UTC)
    assert kept >= cap  # the revocation outlives every copy the session could have renewed


def test_a_session_ends_at_its_cap_however_much_it_is_used(ics: Ics, clock: Clock, db: Database) -> None:
    _sign_in(ics)
    minutes = 0
    while minutes < 8 * 60 - 20:
        minutes += 20
        clock.at(minutes)
        page = ics.client.get("/search")
        assert page.status_code == 200, minutes
    assert _said(page.text).startswith("Your session ends at ") and "sign in again then" in _said(page.text)
    clock.at(8 * 60 + 1)  # used 21 minutes ago, but 8 hours since the sign-in
    page = ics.client.get("/search")
    assert page.status_code == 401 and ENDED in page.text
    with db.session() as s:  # renewals are not sign-ins: one in the audit log
        logins = s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.LOGIN.value,
                                                    AuditEntry.username == "dr.oconnor")).all()
    assert len(logins) == 1


def test_a_renewed_session_is_cut_off_by_its_organisations_suspension_for_good(
        ics: Ics, clock: Clock, db: Database, framework: Framework) -> None:
    _sign_in(ics)
    first = _cookie(ics)
    clock.at(20)
    assert ics.client.get("/search").status_code == 200
    renewed = _cookie(ics)
    with db.session() as s:
        set_agreement(s, framework, "RXR", "suspended", by="operator", reason="a breach")
    assert _with(ics, renewed) == 401 and _with(ics, first) == 401
    with db.session() as s:
        set_agreement(s, framework, "RXR", "signed", by="operator", reason="")
    assert _with(ics, renewed) == 401  # signing again brings the session back for no copy of it
    assert read_token(ics.client.app.state.settings, renewed)["jti"] == _claims(ics, first)["jti"]  # type: ignore[attr-defined]


def test_a_sharedcare_token_is_not_renewed(ics: Ics, clock: Clock) -> None:
    """Only a portal sign-in's session is renewed: a token minted for a script keeps its own expiry."""
    from sharedcare.api.auth import mint_token
    app = ics.client.app
    token = mint_token(app.state.settings, app.state.framework, "dr.oconnor")  # type: ignore[attr-defined]
    other = PortalClient(app)
    other.cookies.set(SESSION_COOKIE, token)
    clock.at(30)
    page = other.get("/search")
    assert page.status_code == 200 and SESSION_COOKIE not in page.cookies and _said(page.text) == ""


# "Stay signed in" (`/session/stay`): the page's script asks it shortly before the idle end, so that a form
# typed for longer than the idle window is not lost to the sign-in page when it is sent.
STAY = "/session/stay"


def test_stay_signed_in_renews_the_session_without_a_page_and_says_until_when(ics: Ics, clock: Clock) -> None:
    _sign_in(ics)
    form = ics.client.get(f"/record/{ics.okafor}")  # the basis form: she starts typing her reason
    assert 'data-renew="/session/stay"' in form.text and 'data-warn="120"' in form.text
    clock.at(28)  # the page's notice: 2 minutes left
    stayed = ics.client.post(STAY)
    assert stayed.status_code == 200, stayed.text
    left = stayed.json()
    assert 29 * 60 < left["ends_in"] <= 30 * 60 and left["cap_in"] > 7 * 3600
    assert left["says"].startswith("Your session ends at ") and "at the latest" in left["says"]
    clock.at(45)  # 45 minutes after the form was opened, 17 after "Stay signed in"
    sent = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "emergency", "reason": "unconscious"},
                           follow_redirects=False)
    assert sent.status_code == 303, sent.text  # the record opens: the reason was not lost


def test_stay_signed_in_never_goes_past_the_cap(ics: Ics, clock: Clock) -> None:
    _sign_in(ics)
    minutes = 0
    while minutes < 8 * 60 - 25:
        minutes += 25
        clock.at(minutes)
        assert ics.client.post(STAY).status_code == 200, minutes
    left = ics.client.post(STAY).json()
    assert left["ends_in"] == left["cap_in"] <= 25 * 60  # no longer than to the cap
    assert "sign in again then" in left["says"]
    assert _claims(ics, _cookie(ics))["exp"] == _claims(ics, _cookie(ics))["cap"]
    clock.at(8 * 60 + 1)
    assert ics.client.post(STAY).status_code == 401


def test_stay_signed_in_is_refused_for_a_token_that_is_not_a_portal_session(ics: Ics, clock: Clock) -> None:
    from sharedcare.api.auth import mint_token
    app = ics.client.app
    token = mint_token(app.state.settings, app.state.framework, "dr.oconnor")  # type: ignore[attr-defined]
    as_cookie = PortalClient(app)
    as_cookie.cookies.set(SESSION_COOKIE, token)
    refused = as_cookie.post(STAY)
    assert refused.status_code == 403 and "only a staff portal session" in refused.json()["error"]
    assert SESSION_COOKIE not in refused.cookies
    as_bearer = PortalClient(app).post(STAY, headers={"Authorization": f"Bearer {token}"})
    assert as_bearer.status_code == 403 and SESSION_COOKIE not in as_bearer.cookies


def test_stay_signed_in_is_refused_after_sign_out_and_without_the_pages_token(ics: Ics, clock: Clock) -> None:
    _sign_in(ics)
    clock.at(5)
    forged = ics.client.post(STAY, csrf=False)  # another site's script: no CSRF token
    assert forged.status_code == 403 and SESSION_COOKIE not in forged.cookies
    kept = _cookie(ics)
    assert ics.client.post("/logout", data={"target": "/"}, follow_redirects=False).status_code == 303
    other = PortalClient(ics.client.app)  # a copy of the cookie, kept from before the sign-out
    other.cookies.set(SESSION_COOKIE, kept)
    refused = other.post(STAY)
    assert refused.status_code == 401  # the revoked session is not renewed, nor answered with times
    assert not any(c.startswith(f"{SESSION_COOKIE}=ey") for c in refused.headers.get_list("set-cookie"))
