"""What the three portals (clinician, IG officer, patient) share: the templates, the headers every page
carries, the sign-in pages an expired session falls back to, the session cookie and dates typed as
day, month and year.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from markupsafe import Markup

from sharedcare.api.auth import SessionWindow, signed_claims
from sharedcare.api.deps import SESSION_COOKIE
from sharedcare.clock import utcnow
from sharedcare.governance.framework import Framework
from sharedcare.governance.policy import Actor
from sharedcare.governance.tokens import OAuthStore
from sharedcare.portal import csrf

HERE = Path(__file__).parent
STATIC = HERE / "static"
ASSETS = STATIC / "nhsuk" / "assets"  # nhsuk-frontend's stylesheet asks for /assets/images/...
templates = Jinja2Templates(directory=HERE / "templates")
UK = ZoneInfo("Europe/London")


def uk_time(moment: datetime) -> str:
    """A stored UTC time as people in the ICS read it (UK time, with summer time)."""
    local = moment.astimezone(UK)
    return f"{local.day} {local:%b %Y, %H:%M}"


def uk_hour(moment: datetime) -> str:
    """A time later today as a clock in the UK shows it ("14:32"), with its day if not today ("8 Dec, 02:00")."""
    local = moment.astimezone(UK)
    return f"{local:%H:%M}" if local.date() == utcnow().astimezone(UK).date() else f"{local.day} {local:%b, %H:%M}"


def uk_clock(moment: datetime) -> datetime:
    """A time as clocks in the UK read it: one with an offset in UK time (summer time too), one without as sent
    (the source's own clock). Every page's date and time of day of an item comes from here, so a result at
    23:30 UTC on 31 July is on 1 August in the table, on the chart and on What changed alike."""
    return moment.astimezone(UK) if moment.tzinfo else moment


def uk_date(value: str | date | datetime | None) -> str:
    """A date as UK clinicians and patients read it ("5 Dec 2026"), from a FHIR date or dateTime (partial
    ones too: "Mar 2019", "2019") or a Python date; a time with an offset is taken in UK time first, so a
    stay that began at 23:30 UTC in summer began the next day. Pages only: FHIR, JSON and CSV keep ISO.
    Anything else is shown as sent."""
    if value is None or value == "":
        return ""
    day: date
    if isinstance(value, datetime):
        day = uk_clock(value).date()
    elif isinstance(value, date):
        day = value
    else:
        text = str(value)
        try:
            if len(text) == 4 and text.isdigit():
                return text
            if len(text) == 7:
                return f"{date.fromisoformat(text + '-01'):%b %Y}"
            if len(text) == 10:
                day = date.fromisoformat(text)
            else:
                return uk_date(datetime.fromisoformat(text))
        except ValueError:
            return text
    return f"{day.day} {day:%b %Y}"


def nhs_spaced(number: str | None) -> str:
    """An NHS number as people read and say it: 943 476 5919."""
    digits = number or ""
    return f"{digits[:3]} {digits[3:6]} {digits[6:]}" if len(digits) == 10 else digits


templates.env.filters["uk_time"] = uk_time
templates.env.filters["uk_hour"] = uk_hour
templates.env.filters["uk_date"] = uk_date
templates.env.filters["nhs"] = nhs_spaced


@pass_context
def csrf_field(context: Any) -> Markup:
    """The hidden field every portal form carries (see portal.csrf): `{{ csrf_field() }}` inside the form."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(csrf.CSRF_FIELD, context.get("csrf_token", ""))


templates.env.globals["csrf_field"] = csrf_field

# How long before a session's idle end its page warns, with "Stay signed in" (`/static/sharedcare.js`).
SESSION_WARNING_SECONDS = 120


def session_sentence(window: SessionWindow) -> str:
    """What a page says of when its session ends, and what "Stay signed in" answers once it has renewed it."""
    if window.ends < window.cap:
        return (f"Your session ends at {uk_hour(window.ends)} if you do not open another page before then, "
                f"and at {uk_hour(window.cap)} at the latest.")
    return f"Your session ends at {uk_hour(window.cap)}: sign in again then."


def session_left(window: SessionWindow) -> dict[str, int]:
    """Seconds from now to the session's ends, for the page's script: counted from when the page arrives, so
    a browser whose clock is wrong still warns on time."""
    now = utcnow()
    return {"ends_in": max(0, int((window.ends - now).total_seconds())),
            "cap_in": max(0, int((window.cap - now).total_seconds())), "warn": SESSION_WARNING_SECONDS}


templates.env.globals["session_sentence"] = session_sentence
templates.env.globals["session_left"] = session_left

# Pages load only this server's own styles, scripts, images and fonts: no inline script, no third party
# (the NHS font host included: see static/nhsuk/README.md), no framing, forms post only here.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")


@dataclass(frozen=True)
class Portal:
    key: str
    service: str
    home: str  # where a signed-in user starts
    sign_in: str  # where signing out leads
    nav: tuple[tuple[str, str], ...]


PORTALS = {
    "clinician": Portal("clinician", "Shared care record", "/search", "/", (("Find a patient", "/search"),)),
    "ig": Portal("ig", "Information governance", "/ig", "/ig", (
        ("Review queue", "/ig"), ("Audit search", "/ig/audit"), ("Agreements", "/ig/agreements"),
        ("Patient choices", "/ig/choices"), ("Matching", "/ig/identity"))),
    "patient": Portal("patient", "Your shared care record", "/patient/home", "/patient", (
        ("What is shared", "/patient/home"), ("Your record", "/patient/record"),
        ("Who has looked", "/patient/accesses"), ("Your choices", "/patient/choices"))),
}
# The staff portals' pages a sign-in may lead to: a path on this site only (never `//host`, a scheme or a `..`
# segment), no query
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"
STAFF_PAGE = re.compile(rf"/(?:search|record/{_SEGMENT}(?:/[a-z]+)?|ig(?:/{_SEGMENT})*)")


def may_lead_to(target: str) -> bool:
    """Where a staff sign-in may go next: a page of the clinician portal or the IG workspace (the one asked
    for when the session ended), or back to an app's pending SMART authorisation."""
    return STAFF_PAGE.fullmatch(target) is not None or target.startswith("/oauth/authorize?")


# Each URL a portal form is POSTed to, and the page holding that form: a GET of the URL (a bookmark, a refreshed
# tab, a pasted link) is sent there, and so is a sign-in after the session ended on the POST, since what was
# typed is lost and cannot be replayed.
FORM_PAGES = (
    (re.compile(r"/(?:login|logout)"), "/"),
    (re.compile(r"/record/([^/]+)/(?:basis|feedback)"), r"/record/\1"),
    (re.compile(r"/ig/review/[^/]+"), "/ig"),
    (re.compile(r"/ig/agreements/[^/]+"), "/ig/agreements"),
    (re.compile(r"/ig/identity/[^/]+"), "/ig/identity"),
    (re.compile(r"/patient/(?:sign-in|code)"), "/patient"),
    (re.compile(r"/patient/choices/(?:confirm|hide/confirm|hide|withdraw)"), "/patient/choices"),
)


def form_page(path: str) -> str:
    """The page holding the form that is POSTed to `path` (the path itself for a page that posts to itself)."""
    for pattern, page in FORM_PAGES:
        if (found := pattern.fullmatch(path)) is not None:
            return found.expand(page)
    return path


def to_form_page(request: Request) -> Response:
    """A GET of a form's URL: never the form's action, only the page that holds the form."""
    return RedirectResponse(form_page(request.url.path), status_code=303)


def portal_for(path: str) -> Portal:
    if path == "/ig" or path.startswith("/ig/"):
        return PORTALS["ig"]
    if path == "/patient" or path.startswith("/patient/"):
        return PORTALS["patient"]
    return PORTALS["clinician"]


def account(actor: Actor, fw: Framework) -> dict[str, str]:
    """Who is signed in, as the header shows it."""
    user = fw.users.get(actor.username)
    org = fw.organisation(actor.organisation)
    return {"name": user.name if user else actor.username,
            "detail": " · ".join(part for part in (actor.role.label if actor.role else "no role",
                                                  org.name if org else "") if part)}


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("portal", portal_for(request.url.path))
    context.setdefault("account", None)
    context.setdefault("current", request.url.path)
    context["csrf_token"] = csrf.token_for(request.app.state.settings, csrf.nonce_of(request))
    window: SessionWindow | None = getattr(request.state, "session_window", None)
    context.setdefault("session_ends", window)
    response = templates.TemplateResponse(request, name, context, status_code=status)
    csrf.remember(request, response)
    if window is not None and window.token is not None:  # a page asked for: the session's idle window again
        set_session_cookie(request, response, window.token)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def error_page(request: Request, status: int, message: str, heading: str = "") -> HTMLResponse:
    return render(request, "error.html", status=status, message=message, code=status, heading=heading)


RECORD_UNAVAILABLE = "This record is not available to you"


def record_unavailable(request: Request) -> HTMLResponse:
    """A record the portal cannot show: one stored nowhere, or one refused on the patient's account (their
    objection, a joined record since separated: governance answers both as missing, TRUST AC3). The page
    says the same words for every one, with no id and no reason, so that it tells no one which it was, and
    what to do next; the API's OperationOutcome keeps governance's own message."""
    return render(request, "error.html", status=404, message="", code=404, heading=RECORD_UNAVAILABLE,
                  unavailable=True)


def staff_sign_in(request: Request, status: int = 200, error: str | None = None, target: str = "/search",
                  username: str = "") -> HTMLResponse:
    return render(request, "sign_in.html", status=status, error=error, target=target, username=username,
                  demo=request.app.state.settings.demo, portal=portal_for(target))


def sign_in_again(request: Request, message: str, end_session: bool = True) -> Response:
    """The sign-in page of whichever portal the request was for, with the stale session cleared (unless
    the session is good and only this request was refused). Signing in again leads back to the page asked
    for, or, for a form's POST, to the page holding the form."""
    portal = portal_for(request.url.path)
    message = sentence(message)  # governance's words start lower case, for the API's diagnostics
    if portal.key == "patient":
        response: Response = render(request, "patient/sign_in.html", status=401, error=message, form={})
    else:
        path = request.url.path if request.method in {"GET", "HEAD"} else form_page(request.url.path)
        response = staff_sign_in(request, 401, message, target=path if may_lead_to(path) else portal.home)
    if end_session:
        response.delete_cookie(SESSION_COOKIE)
    return response


def revoke_session(request: Request, store: OAuthStore) -> None:
    """The session token in the cookie is refused from now on, not only forgotten (sign-out, and signing in
    again over it), expired or not: a copy of the cookie that someone else keeps using was renewed past this
    one's expiry, and is the same session (`OAuthStore.revoke` keeps the `jti` until the cap)."""
    token_value = request.cookies.get(SESSION_COOKIE)
    claims = signed_claims(request.app.state.settings, token_value) if token_value else None
    if claims is not None:
        store.revoke(claims)


def start_session(request: Request, store: OAuthStore, token: str, target: str) -> Response:
    """The session cookie has no expiry of its own: closing the browser ends it (a shared workstation's next
    user finds no session), and the token in it still ends at its own `exp` while the browser stays open.
    A session the browser already carries is revoked, as sign-out would: the new cookie replaces it, and
    signing out later ends only the new one, so a copy of the old one would otherwise go on working."""
    revoke_session(request, store)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(request, response, token)
    csrf.remember(request, response, csrf.new_nonce())  # a new session, a new form token
    return response


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=csrf.secure_cookies(request))


def end_session(target: str) -> Response:
    """Sign out: the cookies go, and the browser is told to forget everything this site stored."""
    response = RedirectResponse(target, status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(csrf.CSRF_COOKIE)
    response.headers["Clear-Site-Data"] = '"cache", "cookies", "storage"'
    return response


class DateProblem(ValueError):
    """What is wrong with a typed date, and which of its inputs (`part`: day, month or year) to mark."""

    def __init__(self, message: str, part: str = "day") -> None:
        super().__init__(message)
        self.part = part


def parse_date(day: str, month: str, year: str, what: str = "Date of birth") -> date:
    """A date typed as day, month and year (the NHS date input); DateProblem (a ValueError) says what is wrong,
    in the GOV.UK pattern's words ("Year must include 4 numbers"), and which input it is about."""
    parts = [day.strip(), month.strip(), year.strip()]
    if not all(parts):
        raise DateProblem(f"{what} must include a day, month and year",
                          next(name for name, part in zip(("day", "month", "year"), parts, strict=True) if not part))
    if not all(p.isdigit() for p in parts):
        raise DateProblem(f"{what} must be a real date, for example 2 3 1945",
                          next(name for name, part in zip(("day", "month", "year"), parts, strict=True)
                               if not part.isdigit()))
    if len(parts[2]) != 4:
        raise DateProblem("Year must include 4 numbers", "year")
    try:
        return date(int(parts[2]), int(parts[1]), int(parts[0]))
    except ValueError as exc:
        raise DateProblem(f"{what} must be a real date, for example 2 3 1945") from exc


def sentence(text: str) -> str:
    """A governance message as the NHS style writes an error: capital first, full stop last."""
    text = text.strip()
    return f"{text[:1].upper()}{text[1:]}{'' if text.endswith('.') else '.'}"
