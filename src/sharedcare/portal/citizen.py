"""The patient portal at /patient (journey 8): sign in with NHS number, date of birth and a one-time code;
see what is shared and by whom, your own record, everyone who looked at it, and make choices, each
explained on its own page before it is applied.

Every page goes through `CitizenWorkspace`, bound to the person the session names, so no URL here
carries a record id and none can reach anyone else's record. The demo delivers the one-time code to
the server log (and, in demo mode only, on the page); production signs citizens in with NHS login
instead (docs/architecture.md), issuing the same session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sharedcare.api.auth import mint_citizen_token, read_sign_in_cookie, sign_in_cookie
from sharedcare.api.deps import (
    CHANGED_SINCE_CODE,
    CitizenDep,
    FrameworkDep,
    OAuthDep,
    SettingsDep,
    SignInDep,
    people_only,
)
from sharedcare.clock import utcnow
from sharedcare.governance import access_log, explain
from sharedcare.governance.audit import SEQ_MOST
from sharedcare.governance.consent import SECONDARY_USE, Choices, Provision, except_in_emergency, hide_category
from sharedcare.governance.framework import Agreement, Framework, Organisation
from sharedcare.governance.one_time_codes import CODE_MINUTES, MAX_CODES_PER_HOUR
from sharedcare.governance.workspace import ChoicesUnavailable, provision_key
from sharedcare.identity.nhs_number import is_valid, normalise
from sharedcare.portal import csrf, pages, present
from sharedcare.portal.pages import render

log = logging.getLogger("sharedcare.citizen")
router = APIRouter(prefix="/patient", dependencies=[Depends(people_only), Depends(csrf.check)])

CHALLENGE_COOKIE = "sc_challenge"
SIGNED_IN = {"name": "Signed in", "detail": ""}
Change = Literal["object-all", "share-again", "object-all-except-emergency", "object-org", "allow-org",
                 "opt-out-secondary", "opt-in-secondary", "clear"]
ONE_ORGANISATION = ("object-org", "allow-org")  # the changes that name an organisation
AGREEMENT_WORDS = {"signed": "sharing under a signed agreement", "suspended": "sharing suspended",
                   "ended": "no longer sharing (agreement ended)", "draft": "not sharing (agreement not yet signed)"}


def _names(fw: Framework, codes: Iterable[str]) -> list[str]:
    return [fw.organisations[c].name for c in sorted(codes) if c in fw.organisations]


def _sign_in_page(request: Request, status: int = 200, error: str | None = None, error_field: str = "",
                  form: dict[str, str] | None = None) -> HTMLResponse:
    return render(request, "patient/sign_in.html", status=status, error=error, error_field=error_field,
                  form=form or {})


# A form's URL opened by GET leads to the page holding the form (pages.FORM_PAGES)
for _form in ("/sign-in", "/code", "/choices/confirm", "/choices/hide/confirm", "/choices/hide", "/choices/withdraw"):
    router.add_api_route(_form, pages.to_form_page, methods=["GET"], response_class=RedirectResponse)


@router.get("", response_class=HTMLResponse)
def sign_in_form(request: Request) -> Response:
    return _sign_in_page(request)


@router.post("/sign-in", response_class=HTMLResponse)
def sign_in(request: Request, settings: SettingsDep, sign_in: SignInDep,
            nhs_number: Annotated[str, Form()] = "", birth_day: Annotated[str, Form()] = "",
            birth_month: Annotated[str, Form()] = "", birth_year: Annotated[str, Form()] = "") -> Response:
    """Step one: NHS number and date of birth. Whether or not they match a record, the next page is the
    same page, answered in the same time, but in demo mode (the only mode this form works in) it shows the
    code when they match and none when they do not: the demo tells whoever types an NHS number and date of
    birth whether they go together. NHS login, which replaces this form in production, says nothing."""
    form = {"nhs_number": nhs_number, "birth_day": birth_day, "birth_month": birth_month, "birth_year": birth_year}
    if not settings.demo:
        return _sign_in_page(request, 403, "This service signs patients in with NHS login; the code sign-in is "
                                           "only for the demo.", form=form)
    number = normalise(nhs_number)
    if not is_valid(number):
        return _sign_in_page(request, 400, "Enter your 10 digit NHS number, for example 943 476 5919.",
                             "nhs_number", form)
    try:
        born = pages.parse_date(birth_day, birth_month, birth_year)
    except ValueError as exc:
        return _sign_in_page(request, 400, pages.sentence(str(exc)), "birth-day", form)
    challenge = sign_in.start(number, born)
    if challenge.code is not None:
        log.warning("patient portal one-time code: %s (demo delivery; valid %d minutes)", challenge.code,
                    CODE_MINUTES)
    response = render(request, "patient/code.html", demo_code=challenge.code, demo=settings.demo, error=None,
                      minutes=CODE_MINUTES, per_hour=MAX_CODES_PER_HOUR)
    response.set_cookie(CHALLENGE_COOKIE, sign_in_cookie(settings, challenge.id, number, born), httponly=True,
                        samesite="strict", path="/patient",
                        secure=csrf.secure_cookies(request))  # no max_age: it goes with the browser session
    return response


@router.post("/code", response_class=HTMLResponse)
def check_code(request: Request, settings: SettingsDep, sign_in: SignInDep, store: OAuthDep,
               code: Annotated[str, Form()] = "") -> Response:
    """Step two: the code. A wrong, expired or reused code gets one message, whichever it was; a right one
    after the details stopped leading to the person it was sent for, the words a session ended so gets."""
    if not settings.demo:
        return _sign_in_page(request, 403, "This service signs patients in with NHS login; the code sign-in is "
                                           "only for the demo.")
    challenge, nhs_number, born = read_sign_in_cookie(settings, request.cookies.get(CHALLENGE_COOKIE, "")) \
        or ("", "", None)
    person_id, result = sign_in.finish(challenge, code, nhs_number, born)
    if result == "details-now-lead-elsewhere":  # a right code (a wrong one is told nothing more), now spent
        again = _sign_in_page(request, 401, CHANGED_SINCE_CODE)
        again.delete_cookie(CHALLENGE_COOKIE, path="/patient")
        return again
    if person_id is None or born is None:
        return render(request, "patient/code.html", status=401, demo_code=None, demo=settings.demo,
                      minutes=CODE_MINUTES, per_hour=MAX_CODES_PER_HOUR,
                      error="The code is not right, or it has expired. Check it, or start again to get a new one.")
    response = pages.start_session(request, store, mint_citizen_token(settings, person_id, nhs_number, born),
                                   "/patient/home")
    response.delete_cookie(CHALLENGE_COOKIE, path="/patient")
    return response


TREATMENT, IN_AN_EMERGENCY = frozenset({"TREAT"}), frozenset({"TREAT", "ETREAT"})  # as a clinician's read asks


def _sharing(org: Organisation, agreement: Agreement, choices: Choices, fw: Framework, now: datetime) -> dict[str, str]:
    """Whether an organisation shares what it holds, as its agreement today and the citizen's own choices leave
    it: the home page must not say "sharing" of what the decision point withholds (an agreement past its end
    date, a choice made as a Consent provision)."""
    if not agreement.in_force(now.date()):
        words = (AGREEMENT_WORDS.get(agreement.status, agreement.status) if agreement.status != "signed"
                 else f"not sharing yet (agreement starts {pages.uk_date(agreement.starts)})"
                 if agreement.starts and now.date() < agreement.starts
                 else f"no longer sharing (agreement ended {pages.uk_date(agreement.ends)})")
        return {"status": words, "sharing": "not-in-force"}
    if choices.object_all:
        return {"status": "not shared with others: you asked for your record not to be shared", "sharing": "objected"}
    if org.code in choices.object_orgs:
        return {"status": "not shared: you stopped this organisation seeing your record", "sharing": "objected"}
    if choices.withhold_all(org.code, fw.organisations, fw.categories, TREATMENT, now):
        if choices.withhold_all(org.code, fw.organisations, fw.categories, IN_AN_EMERGENCY, now):
            return {"status": "not shared with others: your choices keep all of it back", "sharing": "objected"}
        return {"status": "shared only in an emergency, as you asked", "sharing": "objected"}
    return {"status": AGREEMENT_WORDS["signed"], "sharing": "signed"}


@dataclass(frozen=True)
class Summary:
    """The choices page's and home page's first lines, worked out from what the choices withhold."""

    care: str
    research: str


def _summary(choices: Choices, fw: Framework, holders: Iterable[str], now: datetime) -> Summary:
    """What the citizen's choices do, in words, as the decision point applies them: "Stop sharing, except in an
    emergency" is not "Shared", and no one's data may be used for research after they objected to all sharing
    (the extract leaves them out)."""
    sources = list(holders) or list(fw.organisations)
    if choices.object_all:
        care = "Not shared: you asked for your record not to be shared"
    elif all(choices.withhold_all(s, fw.organisations, fw.categories, TREATMENT, now) for s in sources):
        care = ("Not shared: your choices keep all of it back"
                if all(choices.withhold_all(s, fw.organisations, fw.categories, IN_AN_EMERGENCY, now) for s in sources)
                else "Shared only in an emergency, as you asked")
    else:
        care = "Shared under the rules below" + (", except what your other choices keep back"
                                                 if choices.provisions else "")
    if choices.opt_out_secondary:
        research = "You have opted out"
    elif choices.object_all:
        research = "Not used: you asked for your record not to be shared"
    elif all(any(choices.withhold_all(s, fw.organisations, fw.categories, frozenset({purpose}), now)
                 for purpose in SECONDARY_USE) for s in sources):
        research = "Not used: your choices keep it back from planning and research"
    else:
        research = "Pseudonymised data may be used"
    return Summary(care, research)


@router.get("/home", response_class=HTMLResponse)
def home(request: Request, me: CitizenDep, fw: FrameworkDep) -> Response:
    """What is shared, by whom, under which rules: in plain words."""
    choices, now = me.choices(), utcnow()
    sharing = me.sharing()
    holders = [{"name": org.name, "kind": explain.KIND_LABELS.get(org.kind, org.kind), "phone": org.phone,
                **_sharing(org, agreement, choices, fw, now)} for org, agreement in sharing]
    roles: dict[str, list[explain.RoleCategory]] = {}
    for line in explain.role_rows(fw):
        roles.setdefault(line.role_label, []).append(line)
    return render(request, "patient/home.html", account=SIGNED_IN, holders=holders, choices=choices,
                  summary=_summary(choices, fw, [org.code for org, _ in sharing], now),
                  objected=_names(fw, choices.object_orgs), rules=explain.rules_in_words(fw), roles=roles,
                  further=[explain.provision_in_words(p, fw) for p in choices.provisions],
                  elsewhere=me.choices_elsewhere())


@router.get("/record", response_class=HTMLResponse)
def record(request: Request, me: CitizenDep, fw: FrameworkDep) -> Response:
    view = me.record()
    return render(request, "patient/record.html", account=SIGNED_IN, view=view,
                  banner=present.patient_banner(view.patient), tabs=present.tabs(view, fw, me.actor.role),
                  services=explain.services(view, fw, me.actor.role), charts=present.trend_charts(view),
                  stale=present.stale_sources(view), left_out=explain.not_shown(view.withheld, me.actor.role, fw))


@router.get("/accesses", response_class=HTMLResponse)
def accesses(request: Request, me: CitizenDep, fw: FrameworkDep,
             before: Annotated[int | None, Query(ge=1, le=SEQ_MOST)] = None) -> Response:
    """Everyone who looked at the record, or tried to: the audit log itself (TRUST AU8), a page at a time
    (`before` is an audit sequence number, not anything about the person). Each organisation's phone number
    is beside it: the page tells the patient to contact the organisation named. One person's visit (found in a
    search, why recorded, record viewed) is one line, each of its entries listed inside it
    (`access_log.visits`)."""
    phones = {org.name: org.phone for org in fw.organisations.values() if org.phone}
    return render(request, "patient/accesses.html", account=SIGNED_IN, page=access_log.visit_page(me.accesses(before)),
                  before=before, phones=phones, minutes=access_log.VISIT_MINUTES)


def _choices_page(request: Request, me: CitizenDep, fw: FrameworkDep, status: int = 200,
                  error: str | None = None, saved: bool = False, hide_error: str | None = None,
                  page_error: str | None = None) -> HTMLResponse:
    """`error` is the organisation choice's, `hide_error` the hide form's, `page_error` one of no one field (a
    change the page was drawn before, choices that cannot be changed online): linked to the choices listed."""
    choices = me.choices()
    holding = {org.code for org, _ in me.sharing()}
    organisations = [{"code": code, "name": org.name, "holds": code in holding, "objected": code in choices.object_orgs}
                     for code, org in fw.organisations.items() if org.kind != "icb"]
    further = [(explain.provision_in_words(p, fw), provision_key(p)) for p in choices.provisions]
    return render(request, "patient/choices.html", status=status, account=SIGNED_IN, choices=choices,
                  organisations=organisations, error=error, saved=saved, objected=_names(fw, choices.object_orgs),
                  further=further, drawn=me.drawn_from(), categories=_categories(fw), hide_error=hide_error,
                  page_error=page_error, elsewhere=me.choices_elsewhere(),
                  summary=_summary(choices, fw, holding, utcnow()))


def _categories(fw: Framework) -> list[tuple[str, str]]:
    """The categories a patient may hide (their demographics identify them to whoever cares for them)."""
    return [(code, words) for code, words in fw.categories.items() if code != "demographics"]


def _hide(fw: Framework, category: str, hide_from: str, except_org: str) -> Provision:
    """The provision the "hide" form asks for; ValueError (in words) if it is not a sensible one."""
    if category not in dict(_categories(fw)):
        raise ValueError("Choose the kind of information to hide.")
    if hide_from != "everyone" and fw.organisation(hide_from) is None:
        raise ValueError("Choose whom to hide it from.")
    if except_org and fw.organisation(except_org) is None:
        raise ValueError("Choose the organisation that may still see it, or no one.")
    if except_org and hide_from != "everyone":
        raise ValueError("An exception applies only when you hide information from everyone.")
    return hide_category(category, None if hide_from == "everyone" else hide_from, except_org or None)


@router.get("/choices", response_class=HTMLResponse)
def choices(request: Request, me: CitizenDep, fw: FrameworkDep, saved: bool = False) -> Response:
    return _choices_page(request, me, fw, saved=saved)


def _choose_organisation(change: str) -> str:
    """What to ask for when a one-organisation choice names none the framework knows."""
    if change == "allow-org":
        return "Choose the organisation to let see your record again."
    return "Choose the organisation you do not want to see your record."


@router.post("/choices/confirm", response_class=HTMLResponse)
def confirm_choice(request: Request, me: CitizenDep, fw: FrameworkDep, change: Annotated[Change, Form()],
                   organisation: Annotated[str, Form()] = "") -> Response:
    """What the choice will do, in words, before anything changes."""
    org = fw.organisation(organisation) if change in ONE_ORGANISATION else None
    if change in ONE_ORGANISATION and org is None:
        return _choices_page(request, me, fw, 400, _choose_organisation(change))
    return render(request, "patient/confirm.html", account=SIGNED_IN, change=change, org=org)


@router.post("/choices/hide/confirm", response_class=HTMLResponse)
def confirm_hide(request: Request, me: CitizenDep, fw: FrameworkDep, category: Annotated[str, Form()] = "",
                 hide_from: Annotated[str, Form()] = "everyone", except_org: Annotated[str, Form()] = "") -> Response:
    """Hiding one kind of information, in words, before anything changes."""
    try:
        provision = _hide(fw, category, hide_from, except_org)
    except ValueError as wrong:
        return _choices_page(request, me, fw, 400, hide_error=str(wrong))
    return render(request, "patient/confirm.html", account=SIGNED_IN, change="hide", org=None,
                  category=fw.categories[category], hide_from=fw.organisation(hide_from),
                  except_org=fw.organisation(except_org) if except_org else None,
                  words=explain.provision_in_words(provision, fw),
                  fields={"category": category, "hide_from": hide_from, "except_org": except_org})


@router.post("/choices/hide", response_class=HTMLResponse)
def apply_hide(request: Request, me: CitizenDep, fw: FrameworkDep, category: Annotated[str, Form()] = "",
               hide_from: Annotated[str, Form()] = "everyone", except_org: Annotated[str, Form()] = "") -> Response:
    try:
        provision = _hide(fw, category, hide_from, except_org)
    except ValueError as wrong:
        return _choices_page(request, me, fw, 400, hide_error=str(wrong))
    try:
        me.add_provision(provision)
    except ChoicesUnavailable as unavailable:
        return _choices_page(request, me, fw, 409, hide_error=str(unavailable))
    return RedirectResponse("/patient/choices?saved=true", status_code=303)


@router.post("/choices/withdraw", response_class=HTMLResponse)
def withdraw(request: Request, me: CitizenDep, fw: FrameworkDep, choice: Annotated[str, Form()] = "",
             drawn: Annotated[str, Form()] = "") -> Response:
    """Withdraw the further choice the page showed, if the choices are still those it showed; applies at once."""
    try:
        me.withdraw_provision(choice, drawn)
    except ValueError as wrong:
        return _choices_page(request, me, fw, 409, page_error=str(wrong))
    return RedirectResponse("/patient/choices?saved=true", status_code=303)


@router.post("/choices", response_class=HTMLResponse)  # a redirect to a page, or the page
def apply_choice(request: Request, me: CitizenDep, fw: FrameworkDep, change: Annotated[Change, Form()],
                 organisation: Annotated[str, Form()] = "") -> Response:
    """Applied at once: the very next request anyone makes is decided under it."""
    try:
        if change == "object-all-except-emergency":
            me.add_provision(except_in_emergency())
        else:
            me.set_choice(change, organisation or None)
    except ChoicesUnavailable as unavailable:
        return _choices_page(request, me, fw, 409, page_error=str(unavailable))
    except ValueError:
        return _choices_page(request, me, fw, 400, _choose_organisation(change))
    return RedirectResponse("/patient/choices?saved=true", status_code=303)
