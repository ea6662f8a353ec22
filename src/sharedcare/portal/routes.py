"""The clinician portal: sign in, find a person, record a point-of-care basis, read the combined record,
say whether it helped.

Server-rendered forms that work without JavaScript. Searches are POSTed so that no NHS number or name
ends up in a URL or an access log (TRUST DP1). The session is the same signed token the API accepts,
kept in an HttpOnly, SameSite=Strict cookie; the IG workspace signs in through the same form.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from sharedcare.api.auth import SessionWindow, mint_session
from sharedcare.api.deps import (
    SESSION_COOKIE,
    ActorDep,
    FeedbackDep,
    FrameworkDep,
    OAuthDep,
    RecordsDep,
    SettingsDep,
    get_database,
    people_only,
)
from sharedcare.clock import utcnow
from sharedcare.config import DEMO_PASSWORD
from sharedcare.governance import explain
from sharedcare.governance.audit import record_sign_in
from sharedcare.governance.gateway import KEPT_SEARCH_FOR, InvalidRequest, RecordView
from sharedcare.governance.policy import Actor
from sharedcare.identity.nhs_number import is_valid, normalise
from sharedcare.portal import changes, csrf, medicines, pages, present
from sharedcare.portal.changes import Since
from sharedcare.portal.pages import render
from sharedcare.store.database import Database

router = APIRouter(dependencies=[Depends(people_only), Depends(csrf.check)])

BASIS_CHOICES = [
    ("explicit-consent", "Explicit consent", "The patient is here and agrees to me viewing their record."),
    ("implied-consent", "Implied consent",
     "The patient is not here (or cannot say), and I need the record for their direct care. Give a reason."),
    ("emergency", "Emergency (break glass)",
     "The patient cannot consent and needs urgent care. Give a reason; the IG team will review it."),
]


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> Response:
    if request.cookies.get(SESSION_COOKIE):
        return RedirectResponse("/search", status_code=303)
    return pages.staff_sign_in(request)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, settings: SettingsDep, fw: FrameworkDep, store: OAuthDep,
          db: Annotated[Database, Depends(get_database)],
          username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
          target: Annotated[str, Form()] = "/search") -> Response:
    """The demo sign-in for staff; `target` is where to go next (the clinician portal or the IG workspace)."""
    target = target if pages.may_lead_to(target) else "/search"
    name = username.strip()
    user = fw.users.get(name)
    ok = settings.demo and user is not None and password == DEMO_PASSWORD
    not_sharing = store.staff_not_sharing(name) if ok else None
    record_sign_in(db, name, ok and not_sharing is None, role=user.role if user else None,
                   organisation=user.organisation if user else None, request_id=request.state.request_id,
                   source_address=request.client.host if request.client else None)
    if not_sharing is not None:
        return pages.staff_sign_in(request, 403, f"You cannot sign in. {not_sharing}.", target=target, username=name)
    if not ok or user is None:
        message = ("Sign-in failed: check the username and password." if settings.demo else
                   "Password sign-in is only for the demo; this deployment signs in through its identity provider.")
        return pages.staff_sign_in(request, 401, message, target=target, username=name)
    return pages.start_session(request, store, mint_session(settings, fw, user.username), target)


@router.post("/logout", response_class=HTMLResponse)  # a redirect to a sign-in page
def logout(request: Request, store: OAuthDep, target: Annotated[str, Form()] = "/") -> Response:
    """Sign out of any portal (one session cookie serves them all), back to that portal's sign-in. The
    session token is revoked too, so a copy of the cookie is refused from now on."""
    pages.revoke_session(request, store)
    return pages.end_session(target if target in {p.sign_in for p in pages.PORTALS.values()} else "/")


@router.post("/session/stay")
def stay_signed_in(request: Request, actor: ActorDep) -> Response:
    """"Stay signed in" on a page whose session is about to end (`/static/sharedcare.js`): the session's idle
    window starts again, as opening a page does (never past its cap, not audited, as a page is not), without
    leaving the page, so a form half typed is kept. Only a staff portal session sent as its cookie; the page's
    CSRF token too (`csrf.check`), so another site cannot keep a session going."""
    window: SessionWindow | None = getattr(request.state, "session_window", None)
    if window is None:
        return JSONResponse({"error": "only a staff portal session, sent as its cookie, can be kept signed in"},
                            status_code=403, headers={"Cache-Control": "no-store"})
    response = JSONResponse({**pages.session_left(window), "says": pages.session_sentence(window)},
                            headers={"Cache-Control": "no-store"})
    if window.token is not None:
        pages.set_session_cookie(request, response, window.token)
    return response


# A form's URL opened by GET (a bookmark, a refreshed tab, a pasted link) leads to the page holding the form,
# never doing what the form does: a GET /logout does not sign out (another site could link to it).
for _form in ("/login", "/logout", "/record/{person_id}/basis", "/record/{person_id}/feedback"):
    router.add_api_route(_form, pages.to_form_page, methods=["GET"], response_class=RedirectResponse)


def _search_page(request: Request, actor: Actor, fw: FrameworkDep, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("results", None)
    context.setdefault("error", None)
    context.setdefault("field_error", context["error"])  # the message at the field (the summary's, or shorter)
    context.setdefault("form", {})
    return render(request, "search.html", status=status, account=pages.account(actor, fw), **context)


@router.get("/search", response_class=HTMLResponse)
def search_form(request: Request, actor: ActorDep, fw: FrameworkDep) -> Response:
    return _search_page(request, actor, fw)


class _NotSearchable(ValueError):
    """What is wrong with a search form as typed, and the input to mark (`field`), in the page's words."""

    def __init__(self, message: str, field: str, at_field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.at_field = at_field or message


def _criteria(form: dict[str, str]) -> dict[str, Any]:
    """`search_patients`' arguments from the form as typed: an NHS number, or a family name and date of birth."""
    number = normalise(form["nhs_number"]) if form["nhs_number"].strip() else None
    if number is not None and not is_valid(number):
        raise _NotSearchable("NHS number must be 10 digits with a valid check digit, for example 943 476 5919.",
                             "nhs_number")
    born = None
    if number is None:
        if not form["family"].strip():
            raise _NotSearchable("Enter an NHS number, or a family name and date of birth.", "family")
        try:
            born = pages.parse_date(form["birth_day"], form["birth_month"], form["birth_year"])
        except pages.DateProblem as exc:  # the summary links to the input that is wrong
            raise _NotSearchable(f"{exc}. Search by NHS number, or by family name and date of birth.",
                                 f"birth-{exc.part}", pages.sentence(str(exc))) from exc
    return {"nhs_number": number, "family": form["family"] or None, "given": form["given"] or None, "birth_date": born}


@router.post("/search", response_class=HTMLResponse)
def search(request: Request, records: RecordsDep, fw: FrameworkDep,
           nhs_number: Annotated[str, Form()] = "", family: Annotated[str, Form()] = "",
           given: Annotated[str, Form()] = "", birth_day: Annotated[str, Form()] = "",
           birth_month: Annotated[str, Form()] = "", birth_year: Annotated[str, Form()] = "",
           birth_date: Annotated[str, Form()] = "") -> Response:
    """The form sends the date of birth as day, month and year; scripts may send one ISO `birth_date`. The
    criteria are kept on the server (`keep_search`), never put in the URL, and the browser is sent to the
    results page: Back from a record then shows the results again, searched afresh, without asking to
    send the form again (as it did when the POST's answer was the results)."""
    if birth_date and not (birth_day or birth_month or birth_year):
        birth_year, birth_month, birth_day = (birth_date.split("-") + ["", "", ""])[:3]
    form = {"nhs_number": nhs_number, "family": family, "given": given, "birth_day": birth_day,
            "birth_month": birth_month, "birth_year": birth_year}
    try:
        _criteria(form)
    except _NotSearchable as exc:
        return _search_page(request, records.actor, fw, 400, form=form, error_field=exc.field, error=str(exc),
                            field_error=exc.at_field)
    return RedirectResponse(f"/search/results/{records.keep_search(form)}", status_code=303)


@router.get("/search/results/{search_id}", response_class=HTMLResponse)
def search_results(request: Request, search_id: str, records: RecordsDep, fw: FrameworkDep) -> Response:
    """A kept search's results, searched again each time the page is shown (decided and audited as a search,
    as the POST's was): what is shown is what this user may see now. Another user's or session's id, or one
    expired, finds nothing (audited)."""
    form = records.kept_search(search_id)
    if form is None:
        return _search_page(request, records.actor, fw, 404, error_field="nhs_number", current="/search",
                            error=f"These search results are no longer available: a search is kept for "
                                  f"{KEPT_SEARCH_FOR.total_seconds() / 60:g} minutes, in the session it was "
                                  "made in. Search again.")
    try:
        criteria = _criteria(form)
    except _NotSearchable as exc:
        return _search_page(request, records.actor, fw, 400, form=form, error_field=exc.field, error=str(exc),
                            field_error=exc.at_field, current="/search")
    return _search_page(request, records.actor, fw, results=records.search_patients(**criteria), form=form,
                        current="/search")


# The record's pages a basis form may lead back to, once the basis is recorded.
RECORD_PAGES = {"": "", "changes": "/changes", "medicines": "/medicines"}


def _basis_page(request: Request, records: RecordsDep, fw: FrameworkDep, person_id: str, status: int = 200,
                error: str | None = None, error_field: str = "", reason: str = "",
                chosen: str | None = None, then: str = "") -> HTMLResponse:
    role = records.actor.role
    # break glass only for roles that may (TRUST BG1); each says how long it lasts: the framework's hours,
    # not a shift (a basis is the user's for that patient, in every session and token, until it expires)
    choices = [(value, label, f"{hint} Lasts {rule.hours:g} hours, even if you sign out.")
               for value, label, hint in BASIS_CHOICES
               if (rule := fw.basis.get(value)) is not None  # type: ignore[call-overload]
               and (rule.permission is None or (role is not None and rule.permission in role.permissions))]
    # whose record this is, as a search shows this user (through the decision point, audited as the form's
    # look-up, `clinical:patient:identify`, not as a search):
    # twins found by one search differ only here, and a mis-tap records a basis against the other child
    return render(request, "basis.html", status=status, account=pages.account(records.actor, fw),
                  person_id=person_id, patient=records.identify(person_id), choices=choices, error=error,
                  error_field=error_field, reason=reason, chosen=chosen, then=then if then in RECORD_PAGES else "")


@router.get("/record/{person_id}", response_class=HTMLResponse)
def record(request: Request, person_id: str, records: RecordsDep, fw: FrameworkDep) -> Response:
    if records.needs_basis(person_id):
        return _basis_page(request, records, fw, person_id)
    view = records.everything(person_id)
    disagree, references = medicines.disagreements(view.resources, fw)
    return render(request, "record.html", account=pages.account(records.actor, fw), view=view,
                  banner=present.record_banner(view, fw), disagree=disagree,
                  tabs=present.tabs(view, fw, records.actor.role, references),
                  services=explain.services(view, fw, records.actor.role), contacts=present.last_contacts(view, fw),
                  charts=present.trend_charts(view),
                  stale=present.stale_sources(view), left_out=explain.not_shown(view.withheld, records.actor.role, fw))


@router.post("/record/{person_id}/basis", response_class=HTMLResponse)
def record_basis(request: Request, person_id: str, records: RecordsDep, fw: FrameworkDep,
                 basis: Annotated[str, Form()] = "", reason: Annotated[str, Form()] = "",
                 then: Annotated[str, Form()] = "") -> Response:
    if not basis:
        return _basis_page(request, records, fw, person_id, 400, "Select why you are opening this record.",
                           "basis", reason, then=then)
    try:
        records.record_basis(person_id, basis, reason)
    except InvalidRequest as exc:
        label = next((label for value, label, _ in BASIS_CHOICES if value == basis), None)
        message = exc.message
        if label is not None and basis in fw.basis:  # a known basis: the reason was refused, in the form's words
            message = f"Enter a reason of at least {fw.min_reason_chars} characters for {label.lower()}"
        return _basis_page(request, records, fw, person_id, 400, pages.sentence(message),
                           "reason" if basis in fw.basis else "basis", reason, basis, then)
    return RedirectResponse(f"/record/{person_id}{RECORD_PAGES.get(then, '')}", status_code=303)


def _changes_page(request: Request, records: RecordsDep, fw: FrameworkDep, view: RecordView, since: Since,
                  status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("form", {})
    context.setdefault("error", None)
    found = changes.what_changed(view, fw, records.actor.organisation, since)
    return render(request, "changes.html", status=status, account=pages.account(records.actor, fw), view=view,
                  banner=present.record_banner(view, fw), changes=found, sections=changes.SECTIONS,
                  left_out=explain.not_shown(view.withheld, records.actor.role, fw), stale=present.stale_sources(view),
                  **context)


@router.get("/record/{person_id}/changes", response_class=HTMLResponse)
def what_changed(request: Request, person_id: str, records: RecordsDep, fw: FrameworkDep) -> Response:
    """Journey 2: what other organisations recorded since this organisation last saw the person."""
    if records.needs_basis(person_id):
        return _basis_page(request, records, fw, person_id, then="changes")
    view = records.everything(person_id)
    since = changes.default_since(view, fw, records.actor.organisation, pages.uk_clock(utcnow()).date())
    return _changes_page(request, records, fw, view, since)


@router.post("/record/{person_id}/changes", response_class=HTMLResponse)
def what_changed_since(request: Request, person_id: str, records: RecordsDep, fw: FrameworkDep,
                       since_day: Annotated[str, Form()] = "", since_month: Annotated[str, Form()] = "",
                       since_year: Annotated[str, Form()] = "") -> Response:
    """The same, since a date the user typed (POSTed, like every portal form)."""
    if records.needs_basis(person_id):
        return _basis_page(request, records, fw, person_id, then="changes")
    view = records.everything(person_id)
    form = {"since_day": since_day, "since_month": since_month, "since_year": since_year}
    try:
        day = pages.parse_date(since_day, since_month, since_year, what="The date")
    except ValueError as exc:
        since = changes.default_since(view, fw, records.actor.organisation, pages.uk_clock(utcnow()).date())
        return _changes_page(request, records, fw, view, since, 400, form=form, error=pages.sentence(str(exc)))
    return _changes_page(request, records, fw, view, changes.Since(day, "the date you chose"), form=form)


@router.get("/record/{person_id}/medicines", response_class=HTMLResponse)
def medicines_table(request: Request, person_id: str, records: RecordsDep, fw: FrameworkDep) -> Response:
    """Journey 6: every medicine from every source in one table, discrepancies flagged."""
    if records.needs_basis(person_id):
        return _basis_page(request, records, fw, person_id, then="medicines")
    view = records.everything(person_id)
    found = medicines.reconcile(view.resources, fw)
    return render(request, "medicines.html", account=pages.account(records.actor, fw), view=view,
                  banner=present.record_banner(view, fw), medicines=found,
                  allergies=present.in_order(present.row(s, fw) for s in view.of_type("AllergyIntolerance")),
                  flagged=sum(1 for m in found if m.flagged),
                  sources=len({s.source for m in found for s in m.statements}),
                  left_out=explain.not_shown(view.withheld, records.actor.role, fw),
                  stale=present.stale_sources(view))


@router.post("/record/{person_id}/feedback", response_class=HTMLResponse)
def feedback(request: Request, person_id: str, box: FeedbackDep, fw: FrameworkDep,
             helped: Annotated[str, Form()] = "", comment: Annotated[str, Form()] = "") -> Response:
    """One click: 'yes' or 'no', with an optional comment. Stored without the patient (see governance.feedback)."""
    if helped not in {"yes", "no"}:
        return pages.error_page(request, 400, "Choose 'Yes, it helped' or 'No, it did not'.")
    box.give(helped == "yes", comment)
    return render(request, "feedback.html", account=pages.account(box.actor, fw), person_id=person_id)
