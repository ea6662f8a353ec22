"""The information governance officer's workspace at /ig: the review queue, audit search, the agreements
board and a patient's recorded choices (journey 7).

Every page goes through `IgWorkspace`, which checks the role's permissions and audits a refusal: a GP
who opens /ig gets the 403 page from governance, never from a check here. It signs in through the
clinician portal's form (`target=/ig`); NHS numbers are only ever POSTed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sharedcare.api.deps import FrameworkDep, IgDep, people_only
from sharedcare.clock import utcnow
from sharedcare.export.jobs import ExportJobs
from sharedcare.governance import explain
from sharedcare.governance.access_log import BY_ID, FOUND_DETAIL, Found, details, requested_resource
from sharedcare.governance.audit import SEQ_MOST, AuditAction, expanded, minted_by
from sharedcare.governance.consent import Choices
from sharedcare.governance.framework import Framework
from sharedcare.governance.review import OPENED_BY_ID_WORDS, UNUSUAL_SEARCHES, QueueItem
from sharedcare.governance.workspace import DECISION_NEEDS_A_REASON, INVESTIGATION_NEEDS_A_NOTE
from sharedcare.identity.links import LinkError
from sharedcare.identity.nhs_number import is_valid, normalise
from sharedcare.portal import csrf, pages
from sharedcare.portal.pages import render, uk_date
from sharedcare.portal.present import patient_banner

router = APIRouter(prefix="/ig", dependencies=[Depends(people_only), Depends(csrf.check)])

KIND_WORDS = {"emergency": "Break glass", "implied-consent": "Implied consent",
              "unusual-volume": "Unusual volume", UNUSUAL_SEARCHES: "Unusually many people looked up",
              "no-relationship": "No care relationship",
              "new-source-record": "New source record for an existing person",
              "registration-conflict": "Competing GP registration",
              "opened-by-id": "Record opened by its id, without a search",
              "choices-left-behind": "Choices held against an NHS number no record carries"}
# Each audit action as the IG officer reads it: what the user (or the service) did, in words; the code stays
# on the page, smaller, for `sharedcare audit search` and an exported log. Every action has words (a test
# keeps it so): a new one shown as its code would be the page this replaced.
ACTION_WORDS = {
    AuditAction.RECORD_READ: "opened the record",
    AuditAction.RECORD_EMERGENCY_READ: "opened the record in an emergency",
    AuditAction.RESOURCE_READ: "opened one item of the record",
    AuditAction.RESOURCE_HISTORY: "looked at earlier versions of one item of the record",
    AuditAction.RECORD_WRITE: "sent information to the shared record",
    AuditAction.INGEST_START: "began sending files of information to the shared record (an ingest run)",
    AuditAction.PATIENT_SEARCH: "searched for a patient",
    AuditAction.PATIENT_IDENTIFY: "saw who the patient is on the form to record why they opened the record",
    AuditAction.DEMOGRAPHICS_READ: "saw the patient's name, date of birth and NHS number (reviewing an access)",
    AuditAction.BASIS_RECORD: "recorded why they opened the record",
    AuditAction.LOGIN: "signed in",
    AuditAction.CREDENTIALS_REFUSED: "presented a sign-in or token that was not accepted",
    AuditAction.TLS_REFUSED: "a feed's connection was refused (its certificate)",
    AuditAction.CLOCK_CHECK: "the service checked its clock at start-up",
    AuditAction.DEMO_START: "started the service in demo mode",
    AuditAction.UNVERIFIED_END: ("the service started and found entries at the end of the audit log that it cannot "
                                 "verify (see the reason: treat it as a security incident)"),
    AuditAction.CHAIN_KEYED: "the audit log began keying its entries",
    AuditAction.AGREEMENT_SET: "changed an organisation's information-sharing agreement",
    AuditAction.PREFERENCE_SET: "changed the patient's sharing choices",
    AuditAction.REVIEW_OUTCOME: "recorded the outcome of a review",
    AuditAction.REVIEW_ESCALATED: "a review item was escalated (not worked in time)",
    AuditAction.MPI_RELINK: "matched every record again (relink)",
    AuditAction.MPI_LINK_CHANGE: "changed which person a record belongs to",
    AuditAction.MPI_REVIEW_VIEW: "looked at records waiting for a matching decision",
    AuditAction.MPI_REVIEW_SETTLED: "matching review items were settled by a relink",
    AuditAction.MPI_REVIEW_DECIDED: "decided whether two records are one person",
    AuditAction.AUDIT_SEARCH: "searched the audit log",
    AuditAction.AUDIT_EXPORT: "exported the whole audit log",
    AuditAction.REVIEW_VIEW: "looked at the review queue at the command line",
    AuditAction.QUARANTINE_SUPERSEDED: "a held message was replaced by its source's corrected copy",
    AuditAction.QUARANTINE_PURGE: "erased held messages kept past their retention period",
    AuditAction.CLIENT_ADD: "registered an app or partner system",
    AuditAction.CLIENT_REMOVE: "cut off an app or partner system",
    AuditAction.PREFERENCE_VIEW: "looked up the patient's sharing choices",
    AuditAction.GOVERNANCE_DENIED: "tried to use an information governance function",
    AuditAction.EXPORT_KICK_OFF: "started a data export",
    AuditAction.EXPORT_COMPLETE: "a data export finished",
    AuditAction.EXPORT_DOWNLOAD: "downloaded an export file",
    AuditAction.EXPORT_CANCEL: "cancelled a data export",
    AuditAction.EXPORT_WITHDRAWN: "an export's files were deleted (after it started, an agreement stopped or "
                                  "a person in it changed their choices)",
}
# Item words for a read of one item ("opened one item of the record: a medicine").
ITEM_WORDS = {"Patient": "the personal details", "Condition": "a problem or diagnosis",
              "MedicationStatement": "a medicine", "AllergyIntolerance": "an allergy",
              "Encounter": "an appointment or stay", "Observation": "a test result or measurement",
              "DiagnosticReport": "a test report", "Procedure": "a procedure", "Immunization": "an immunisation",
              "CarePlan": "a care plan", "DocumentReference": "a letter or document"}
NAMED_AT_MOST = 10  # patients an audit search by patient names (each an audited look-up); more keep their ids
RECENT = 50  # audit events the search page shows before any criteria are given
FOUND = 500  # events a search shows, newest first; it says so when more match
QUEUE_PAGE = 25  # review items a page of the queue shows
MATCHING_PAGE = 25  # matching pairs the data quality page shows (each person shown is an audited look-up)
DECISION_WORDS = {"link": "Linked as one person", "separate": "Kept apart as different people",
                  "defer": "Deferred"}


@dataclass(frozen=True)
class QueueRow:
    item: QueueItem
    kind: str
    who: str
    role: str
    organisation: str
    patient: dict[str, str] | None  # the person the access was to (name, born, NHS number), if released
    also_now: list[tuple[str, dict[str, str] | None]]  # others holding that person's records now, likewise
    search: dict[str, str]  # the audit search that shows what was seen (the "See what was seen" form)
    given: bool  # whether `item.reason` is the user's own words (a basis) or why the item was flagged


def _search_for(item: QueueItem) -> dict[str, str]:
    """An unusual volume is about every record the user opened (or everyone their searches found), not the one
    that crossed the line: search the user's events over the hour before it (by day, as the form searches);
    any other item, the one patient's."""
    if item.kind not in ("unusual-volume", UNUSUAL_SEARCHES):
        return {"patient": item.patient_id, "user": item.username}
    start, end = (item.created_at - timedelta(hours=1)).date(), item.created_at.date()
    return {"user": item.username, "from_day": str(start.day), "from_month": str(start.month),
            "from_year": str(start.year), "to_day": str(end.day), "to_month": str(end.month), "to_year": str(end.year)}


def _queue_row(item: QueueItem, fw: Framework, people: dict[str, dict[str, Any] | None]) -> QueueRow:
    user = fw.users.get(item.username)
    role = fw.roles.get(user.role) if user else None
    feed_org, _, system = item.username.partition(":")  # an item about what a feed sent names it ORG:system
    org = fw.organisation(user.organisation if user else feed_org)
    who = user.name if user else f"{org.name}'s {system} feed" if org and system else item.username
    return QueueRow(item, KIND_WORDS.get(item.kind, item.kind), who,
                    role.label if role else "unknown role" if user else "feed", org.name if org else "",
                    _banner(people.get(item.patient_id)),
                    [(person_id, _banner(people.get(person_id))) for person_id in item.also_now],
                    _search_for(item), item.kind in fw.basis)


def _banner(patient: dict[str, Any] | None) -> dict[str, str] | None:
    return patient_banner(patient) if patient else None


@dataclass(frozen=True)
class Recorded:
    """What the officer just recorded, for the page's banner: the outcome, on whose access, by whom."""

    item_id: int
    outcome: str  # "appropriate" or "investigate"
    kind: str
    who: str  # the user whose access it was, by name
    by: str  # the officer who recorded it, by name


def _recorded(ig: IgDep, fw: Framework, item_id: int) -> Recorded | None:
    """The banner's words, from the item and the audit entry of its outcome (who recorded it, whoever
    opens the page)."""
    found = ig.review_item(item_id)
    if found is None:
        return None
    item, by = found
    if not item.outcome or by is None:
        return None
    user, officer = fw.users.get(item.username), fw.users.get(by)
    return Recorded(item.id, "investigate" if item.status == "investigating" else "appropriate",
                    KIND_WORDS.get(item.kind, item.kind), user.name if user else item.username,
                    officer.name if officer else by)


def _queue_page(request: Request, ig: IgDep, fw: Framework, after: int | None, status: int = 200,
                **context: Any) -> HTMLResponse:
    """A page of the queue: only its items' patients are looked up (each look-up is an audited read)."""
    page = ig.queue(after, QUEUE_PAGE)
    people = ig.whose([person_id for i in page.items for person_id in (i.patient_id, *i.also_now)])
    context.setdefault("recorded", None)
    context.setdefault("error", None)
    context.setdefault("error_item", None)
    return render(request, "ig/queue.html", status=status, account=pages.account(ig.actor, fw),
                  rows=[_queue_row(i, fw, people) for i in page.items], page=page, after=after, **context)


# A form's URL opened by GET leads to the page holding the form (pages.FORM_PAGES)
for _form in ("/review/{item_id}", "/agreements/{org}", "/identity/{review_id}"):
    router.add_api_route(_form, pages.to_form_page, methods=["GET"], response_class=RedirectResponse)


@router.get("", response_class=HTMLResponse)
def queue(request: Request, ig: IgDep, fw: FrameworkDep, recorded: int | None = None,
          after: Annotated[int | None, Query(ge=1, le=SEQ_MOST)] = None) -> Response:
    return _queue_page(request, ig, fw, after,
                       recorded=_recorded(ig, fw, recorded) if recorded is not None else None)


@router.post("/review/{item_id}", response_class=HTMLResponse)  # a redirect to a page, or the page
def review(request: Request, item_id: int, ig: IgDep, fw: FrameworkDep,
           outcome: Annotated[Literal["appropriate", "investigate"], Form()], note: Annotated[str, Form()] = "",
           after: Annotated[int | None, Form(ge=1, le=SEQ_MOST)] = None) -> Response:
    """An investigation needs a note saying what to look into: without one the queue comes back with the
    error at that item's note, and nothing is recorded."""
    if outcome == "investigate" and not note.strip():
        ig.check("governance:review:work")  # the role first, as the audit search's form
        return _queue_page(request, ig, fw, after, 400, error=INVESTIGATION_NEEDS_A_NOTE, error_item=item_id)
    ig.record_outcome(item_id, outcome, note.strip())
    return RedirectResponse(f"/ig?recorded={item_id}" + (f"&after={after}" if after else ""), status_code=303)


@dataclass(frozen=True)
class AuditRow:
    when: datetime
    action: str
    outcome: str
    user: str
    role: str
    organisation: str
    patient: str
    basis: str
    reason: str
    released: int
    kinds: str  # what the released items were, in words ("test results and measurements 40, medicines 12")
    item: str  # the resource a resource read asked for
    code: str  # the action's code (`clinical:record:read`), as the log and the command line name it
    patient_id: str  # the person id the entry names ("" for none); `patient` is their name when looked up
    named: bool  # whether `patient` is the person's name (looked up through the decision point)
    minted: str  # for an action taken with a `sharedcare token`: who minted it, and the token's id
    unverified: bool  # its hash is not the service's: written by someone without the chain's key


def _action_words(entry: Any, item: str | None, info: dict[str, str]) -> str:
    """What the entry's user did, in words; an item read says what kind of item."""
    try:
        action = AuditAction(entry.action)
    except ValueError:  # an entry written by an older or newer release: its code is all there is
        return str(entry.action)
    words = ACTION_WORDS.get(action, str(entry.action))
    kind = (item or "").partition("/")[0]
    if action in (AuditAction.RESOURCE_READ, AuditAction.RESOURCE_HISTORY) and kind in ITEM_WORDS:
        words = f"{words}: {ITEM_WORDS[kind]}"
    if action == AuditAction.BASIS_RECORD and info.get(FOUND_DETAIL) == BY_ID:
        words = f"{words}, having opened it by its id alone ({OPENED_BY_ID_WORDS})"
    return words[:1].upper() + words[1:]


def _named(patient: dict[str, str] | None) -> str:
    if patient is None:
        return ""
    born = f", born {uk_date(patient['born'])}" if patient.get("born") else ""
    nhs = f", NHS number {patient['nhs']}" if patient.get("nhs") else ""
    return f"{patient['name']}{born}{nhs}"


def _audit_row(entry: Any, fw: Framework, unverified: bool,
               people: dict[str, dict[str, str] | None] | None = None) -> AuditRow:
    """One audit entry in words (`entry` is the store's AuditEntry, which only governance imports); the
    patient by name where `people` (the look-ups the search made) has it. An entry the service did not write
    (`unverified`) is told from its columns alone: its event may hold anything, and is not shown as fact."""
    user = fw.users.get(entry.username or "")
    org = fw.organisation(entry.organisation or "")
    info = {} if unverified else details(entry)
    item = None if unverified else requested_resource(entry)
    # every entity but the patient's (role 1), and but a history's resource asked for (role 4): its versions
    # released are listed besides
    skipped = ("1", "4") if entry.action == AuditAction.RESOURCE_HISTORY.value else ("1",)
    kinds = Counter(str(e["what"].get("reference", "")).split("/")[0]
                    for e in ([] if unverified else expanded(entry.event).get("entity", []))
                    if "what" in e and (e.get("role") or {}).get("code") not in skipped)
    released = 0 if entry.outcome == "deny" else sum(kinds.values())
    agent = {} if unverified else (entry.event.get("agent") or [{}])[0]
    role_code = ((agent.get("role") or [{}])[0]).get("text", "")
    minter = None if unverified else minted_by(entry.event)
    role = fw.roles.get(role_code)
    name = _named((people or {}).get(entry.patient_id or ""))
    return AuditRow(entry.recorded_at, _action_words(entry, item, info), entry.outcome,
                    f"{user.name} ({entry.username})" if user else (entry.username or ""),
                    role.label if role else role_code, org.name if org else (entry.organisation or ""),
                    name or entry.patient_id or "", info.get("basis", "").replace("-", " "), info.get("reason", ""),
                    released,
                    ", ".join(f"{explain.RECORD_TYPE_WORDS.get(kind, kind)} {n}" for kind, n in kinds.most_common())
                    if released else "", item or "", entry.action,
                    entry.patient_id or "", bool(name),
                    f"with a token minted by {minter[0]} (token {minter[1]})" if minter else "",
                    unverified)


def _audit_rows(found: Found, fw: Framework,
                people: dict[str, dict[str, str] | None] | None = None) -> list[AuditRow]:
    return [_audit_row(entry, fw, entry.seq in found.unverified, people) for entry in found.entries]


def _search_names(ig: IgDep, found: Found, patient: str) -> dict[str, dict[str, str] | None]:
    """Whose record a search by patient (a record id, or an NHS number from a complaint) is about, by name:
    only the person or persons searched for, each looked up through the decision point and audited as the
    review queue's are, and only when some entry found names them. A search by user, organisation or dates
    (or the latest events) names no one: the officer asks for one patient's events (a button beside each
    record id) to learn whose it is, so no search looks up more people than she asked about. A record id a
    merge has since emptied is the person it is now (`Found.now`): they are looked up, and its entries name
    them when it is one person."""
    asked = list(found.now) if patient else list(found.persons)
    shown = {entry.patient_id for entry in found.entries}
    if patient in shown:
        shown.update(found.now)
    wanted = [person for person in asked if person in shown][:NAMED_AT_MOST]
    if not wanted:
        return {}
    people = ig.whose(wanted, permission="governance:audit:search")
    named = {person: _banner(found_patient) for person, found_patient in people.items() if found_patient}
    if patient and len(found.now) == 1 and found.now[0] in named:
        named.setdefault(patient, named[found.now[0]])
    return named


def _audit_page(request: Request, ig: IgDep, fw: FrameworkDep, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("form", {})
    context.setdefault("rows", None)
    context.setdefault("error", None)
    context.setdefault("more", False)
    context.setdefault("by_patient", False)
    context.setdefault("now", [])
    return render(request, "ig/audit.html", status=status, account=pages.account(ig.actor, fw),
                  organisations=fw.organisations, **context)


@router.get("/audit", response_class=HTMLResponse)
def audit_form(request: Request, ig: IgDep, fw: FrameworkDep) -> Response:
    """The search form, above the most recent events."""
    return _audit_page(request, ig, fw, rows=_audit_rows(ig.search(RECENT), fw), recent=True)


@router.post("/audit", response_class=HTMLResponse)
def audit_search(request: Request, ig: IgDep, fw: FrameworkDep, patient: Annotated[str, Form()] = "",
                 nhs_number: Annotated[str, Form()] = "",
                 user: Annotated[str, Form()] = "", organisation: Annotated[str, Form()] = "",
                 from_day: Annotated[str, Form()] = "", from_month: Annotated[str, Form()] = "",
                 from_year: Annotated[str, Form()] = "", to_day: Annotated[str, Form()] = "",
                 to_month: Annotated[str, Form()] = "", to_year: Annotated[str, Form()] = "") -> Response:
    """The events matching the criteria given. The role is checked before the form: a role without the
    permission is refused (audited) whatever it sent, never shown this page back with the form's error."""
    ig.check("governance:audit:search")
    form = {"patient": patient, "nhs_number": nhs_number, "user": user, "organisation": organisation,
            "from_day": from_day, "from_month": from_month, "from_year": from_year, "to_day": to_day,
            "to_month": to_month, "to_year": to_year}
    bounds: dict[str, datetime | None] = {"from": None, "to": None}
    for prefix, parts in (("from", (from_day, from_month, from_year)), ("to", (to_day, to_month, to_year))):
        if any(p.strip() for p in parts):
            try:
                day = pages.parse_date(*parts, what="From" if prefix == "from" else "To")
            except ValueError as exc:
                return _audit_page(request, ig, fw, 400, form=form, error=pages.sentence(str(exc)),
                                   error_field=f"{prefix}-day")
            bounds[prefix] = datetime.combine(day, time(), tzinfo=UTC)
    until = bounds["to"] + timedelta(days=1) if bounds["to"] else None  # the "to" day is included
    number = normalise(nhs_number)
    if number and not is_valid(number):  # a citizen's complaint gives the number: say which rule it breaks
        why = ("is not 10 digits" if not (number.isdigit() and len(number) == 10)
               else "fails the modulus 11 check (a digit mistyped, or two swapped)")
        return _audit_page(request, ig, fw, 400, form=form, error=f"NHS number: {nhs_number.strip()} {why}",
                           error_field="nhs_number")
    found = ig.search(FOUND, nhs_number=number or None, patient_id=patient.strip() or None,
                      username=user.strip() or None, organisation=organisation or None, since=bounds["from"],
                      until=until)
    people = _search_names(ig, found, patient.strip())
    return _audit_page(request, ig, fw, form=form, rows=_audit_rows(found, fw, people), more=found.more,
                       by_patient=bool(patient.strip() or number),
                       now=[person for person in found.now if person != patient.strip()])


def _users(fw: Framework, org: str) -> int:
    return sum(1 for u in fw.users.values() if u.organisation == org)


@router.get("/agreements", response_class=HTMLResponse)
def agreements(request: Request, ig: IgDep, fw: FrameworkDep, changed: str = "") -> Response:
    today = utcnow().date()
    current = ig.agreements()
    history = ig.agreement_history()
    rows = [{"org": org, "kind": explain.KIND_LABELS.get(org.kind, org.kind), "agreement": current[code],
             "in_force": current[code].in_force(today), "users": _users(fw, code), "history": history.get(code, []),
             "own": code == ig.actor.organisation}
            for code, org in fw.organisations.items()]
    return render(request, "ig/agreements.html", account=pages.account(ig.actor, fw), rows=rows,
                  changed=fw.organisation(changed), changed_to=current[changed].status if changed in current else "",
                  changed_users=_users(fw, changed))


Stopping = Literal["suspended", "ended"]


def _confirm_page(request: Request, ig: IgDep, fw: Framework, org: str, status: Stopping, reason: str = "",
                  error: str = "") -> Response:
    """What suspending or ending an agreement will do, in words, and the reason it asks for."""
    ig.may_change_agreement(org, status)
    organisation = fw.organisation(org)
    if organisation is None:
        return pages.error_page(request, 404, f"organisation '{org}' is not in the framework")
    return render(request, "ig/agreement_change.html", status=400 if error else 200,
                  account=pages.account(ig.actor, fw), org=organisation, to=status, users=_users(fw, org),
                  reason=reason, error=error)


@router.get("/agreements/{org}/{status}", response_class=HTMLResponse)
def confirm_agreement_change(request: Request, org: str, status: Stopping, ig: IgDep,
                             fw: FrameworkDep) -> Response:
    """Suspending or ending is asked for here first: the page says what it will do and asks why."""
    return _confirm_page(request, ig, fw, org, status)


@router.post("/agreements/{org}", response_class=HTMLResponse)  # a redirect to a page, or the page
def change_agreement(request: Request, org: str, ig: IgDep, fw: FrameworkDep, background: BackgroundTasks,
                     status: Annotated[Literal["signed", "suspended", "ended"], Form()],
                     reason: Annotated[str, Form()] = "") -> Response:
    """Takes effect at once: the organisation's users are refused on their next request. Suspending or
    ending without a reason shows the confirmation page again, asking for one."""
    if status != "signed" and not reason.strip():
        return _confirm_page(request, ig, fw, org, status, error="Say why: the reason is kept in the audit log "
                                                                  "and shown on the board's history")
    ig.set_agreement(org, status, reason)
    state = request.app.state  # once the change is committed: the organisation's finished exports go
    background.add_task(ExportJobs(state.database, fw, state.settings).withdraw)
    return RedirectResponse(f"/ig/agreements?changed={org}", status_code=303)


@router.get("/choices", response_class=HTMLResponse)
def choices_form(request: Request, ig: IgDep, fw: FrameworkDep) -> Response:
    ig.check("governance:preference:view")
    return render(request, "ig/choices.html", account=pages.account(ig.actor, fw), result=None, error=None,
                  nhs_number="")


@router.post("/choices", response_class=HTMLResponse)
def choices_lookup(request: Request, ig: IgDep, fw: FrameworkDep,
                   nhs_number: Annotated[str, Form()] = "") -> Response:
    ig.check("governance:preference:view")  # before the form, as `audit_search`
    number = normalise(nhs_number)
    if not is_valid(number):
        return render(request, "ig/choices.html", status=400, account=pages.account(ig.actor, fw), result=None,
                      error="Enter a 10 digit NHS number with a valid check digit.", nhs_number=nhs_number)
    found = ig.choices(number)
    return render(request, "ig/choices.html", account=pages.account(ig.actor, fw), result=found.combined,
                  held=_held_against(found.by_number, number, fw), persons=found.persons, error=None,
                  nhs_number=nhs_number)


def _held_against(by_number: tuple[tuple[str, Choices], ...], looked_up: str, fw: Framework
                  ) -> dict[str, list[tuple[str, str]]]:
    """Each choice in words with the NHS number it is held against: the one looked up, or another of the
    person's, named by its last four digits as the audit does (the decision point applies them all)."""
    held: dict[str, list[tuple[str, str]]] = {"object_all": [], "objected": [], "opt_out": [], "further": []}
    for number, choices in by_number:
        where = "the number you entered" if number == looked_up else f"their other NHS number ending {number[-4:]}"
        held["object_all"] += [("Yes", where)] if choices.object_all else []
        held["objected"] += [(fw.organisations[c].name if c in fw.organisations else c, where)
                             for c in sorted(choices.object_orgs)]
        held["opt_out"] += [("Yes", where)] if choices.opt_out_secondary else []
        held["further"] += [(explain.provision_in_words(p, fw), where) for p in choices.provisions]
    return held


def _identity_page(request: Request, ig: IgDep, status: int = 200, **context: Any) -> HTMLResponse:
    shown, waiting = ig.identity_review(MATCHING_PAGE)
    return render(request, "ig/identity.html", status, found=shown, waiting=waiting, **context)


@router.get("/identity", response_class=HTMLResponse)
def identity(request: Request, ig: IgDep, decided: int | None = None,
             decision: Literal["link", "separate", "defer"] | None = None) -> Response:
    """The MPI's uncertain pairs (identity/review_list.py), each with its evidence, for a reviewer to link, keep
    apart or defer in their own name and with a reason (issue 4: the data quality page)."""
    done = DECISION_WORDS[decision] if decided is not None and decision else None
    return _identity_page(request, ig, decided=decided, done=done)


@router.post("/identity/{review_id}", response_class=HTMLResponse)  # a redirect to the page, or the page
def decide_pair(request: Request, review_id: int, ig: IgDep,
                decision: Annotated[Literal["link", "separate", "defer"], Form()],
                was: Annotated[Literal["open", "deferred"], Form()], reason: Annotated[str, Form(max_length=2000)] = "",
                ) -> Response:
    """Without a reason, or refused (different NHS numbers, a reviewer's earlier separation, another reviewer's
    decision since the page was shown), the page comes back with the error at that pair and nothing is decided."""
    if not reason.strip():
        ig.check("identity:review:work")  # the role first, as the queue's note
        return _identity_page(request, ig, 400, error=DECISION_NEEDS_A_REASON, error_item=review_id)
    try:
        ig.decide_pair(review_id, decision, reason.strip(), was)
    except LinkError as refused:
        return _identity_page(request, ig, 409, error=str(refused), error_item=review_id)
    return RedirectResponse(f"/ig/identity?decided={review_id}&decision={decision}", status_code=303)
