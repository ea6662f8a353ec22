"""The clinician portal: sign in, find a person, record a point-of-care basis, read the combined record.

Server-rendered forms that work without JavaScript. Searches are POSTed so that no NHS number or name
ends up in a URL or an access log (TRUST DP1). The session is the same signed token the API accepts,
kept in an HttpOnly, SameSite=Strict cookie.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from sharedcare.api.auth import mint_token
from sharedcare.api.deps import SESSION_COOKIE, ActorDep, FrameworkDep, RecordsDep, SettingsDep, get_database
from sharedcare.config import DEMO_PASSWORD
from sharedcare.governance.audit import record_sign_in
from sharedcare.governance.gateway import InvalidRequest
from sharedcare.identity.nhs_number import normalise
from sharedcare.portal import present

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter()

BASIS_CHOICES = [
    ("explicit-consent", "Explicit consent", "The patient is here and agrees to me viewing their record."),
    ("implied-consent", "Implied consent",
     "The patient is not here (or cannot say), and I need the record for their direct care. Give a reason."),
    ("emergency", "Emergency (break glass)",
     "The patient cannot consent and needs urgent care. Give a reason; the IG team will review it."),
]


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status=status, message=message, code=status)


def sign_in_again(request: Request, message: str) -> Response:
    response = render(request, "sign_in.html", status=401, error=message, demo=request.app.state.settings.demo)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, settings: SettingsDep) -> Response:
    if request.cookies.get(SESSION_COOKIE):
        return RedirectResponse("/search", status_code=303)
    return render(request, "sign_in.html", demo=settings.demo, error=None)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, settings: SettingsDep, fw: FrameworkDep,
          username: Annotated[str, Form()], password: Annotated[str, Form()]) -> Response:
    user = fw.users.get(username.strip())
    ok = settings.demo and user is not None and password == DEMO_PASSWORD
    record_sign_in(get_database(request), username.strip(), ok, role=user.role if user else None,
                   organisation=user.organisation if user else None, request_id=request.state.request_id,
                   source_address=request.client.host if request.client else None)
    if not ok or user is None:
        message = ("Sign-in failed: check the username and password." if settings.demo else
                   "Password sign-in is only for the demo; this deployment signs in through its identity provider.")
        return render(request, "sign_in.html", status=401, demo=settings.demo, error=message)
    response = RedirectResponse("/search", status_code=303)
    response.set_cookie(SESSION_COOKIE, mint_token(settings, fw, user.username), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=settings.token_minutes * 60)
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    response.headers["Clear-Site-Data"] = '"cache", "cookies", "storage"'
    return response


@router.get("/search", response_class=HTMLResponse)
def search_form(request: Request, actor: ActorDep, fw: FrameworkDep) -> Response:
    return render(request, "search.html", actor=actor, org=fw.organisation(actor.organisation), results=None,
                  form={}, error=None)


@router.post("/search", response_class=HTMLResponse)
def search(request: Request, records: RecordsDep, fw: FrameworkDep,
           nhs_number: Annotated[str, Form()] = "", family: Annotated[str, Form()] = "",
           given: Annotated[str, Form()] = "", birth_date: Annotated[str, Form()] = "") -> Response:
    form = {"nhs_number": nhs_number, "family": family, "given": given, "birth_date": birth_date}
    context: dict[str, Any] = {"actor": records.actor, "org": fw.organisation(records.actor.organisation), "form": form}
    try:
        born = date.fromisoformat(birth_date) if birth_date else None
    except ValueError:
        return render(request, "search.html", status=400, results=None,
                      error="Date of birth must be a date (YYYY-MM-DD).", **context)
    number = normalise(nhs_number) if nhs_number.strip() else None
    if number is None and not (family.strip() and born):
        return render(request, "search.html", status=400, results=None,
                      error="Enter an NHS number, or a family name and date of birth.", **context)
    results = records.search_patients(nhs_number=number, family=family or None, given=given or None,
                                      birth_date=born)
    return render(request, "search.html", results=results, error=None, **context)


@router.get("/record/{person_id}", response_class=HTMLResponse)
def record(request: Request, person_id: str, records: RecordsDep, fw: FrameworkDep) -> Response:
    org = fw.organisation(records.actor.organisation)
    if records.active_basis(person_id) is None:
        return render(request, "basis.html", actor=records.actor, org=org, person_id=person_id,
                      choices=BASIS_CHOICES, error=None, reason="", chosen=None)
    view = records.everything(person_id)
    return render(request, "record.html", actor=records.actor, org=org, view=view,
                  banner=present.patient_banner(view.patient), sections=present.sections(view),
                  stale=present.stale_sources(view), withheld_labels=present.WITHHELD_LABELS,
                  category_labels=present.CATEGORY_LABELS, organisations=fw.organisations)


@router.post("/record/{person_id}/basis", response_class=HTMLResponse)
def record_basis(request: Request, person_id: str, records: RecordsDep, fw: FrameworkDep,
                 basis: Annotated[str, Form()] = "", reason: Annotated[str, Form()] = "") -> Response:
    try:
        records.record_basis(person_id, basis, reason)
    except InvalidRequest as exc:
        return render(request, "basis.html", status=400, actor=records.actor,
                      org=fw.organisation(records.actor.organisation), person_id=person_id,
                      choices=BASIS_CHOICES, error=exc.message, reason=reason, chosen=basis)
    return RedirectResponse(f"/record/{person_id}", status_code=303)
