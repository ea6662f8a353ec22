"""Request-scoped dependencies: the caller (actor) and the governance objects bound to them.

Routes declare `RecordsDep`, `MemberDep`, `CitizenDep`, `IgDep`, `SignInDep` or `FeedbackDep` and never see a
database session (TRUST AC2); the session lives here. Each is committed before the response is sent
(`scope="function"`), so a change (a choice, a suspended agreement, a basis) holds for the very next
request the browser makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from sharedcare.api.auth import (
    CITIZEN_PREFIX,
    CLIENT_PREFIX,
    SESSION_CAP,
    SESSION_ENDED,
    AuthError,
    citizen_details,
    read_token,
    session_window,
    signed_claims,
)
from sharedcare.clock import utcnow
from sharedcare.config import Settings
from sharedcare.governance.agreements import effective_agreements
from sharedcare.governance.audit import AuditAction
from sharedcare.governance.clients import current_actor
from sharedcare.governance.consent_fhir import consent_id_key
from sharedcare.governance.feedback import StaffFeedback
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import AccessDenied, GovernedRecords, citizen_actor
from sharedcare.governance.patient_scope import PatientScopedRecords
from sharedcare.governance.policy import Actor
from sharedcare.governance.scopes import patient_level_only, read_scopes
from sharedcare.governance.tokens import OAuthStore, refusal
from sharedcare.governance.workspace import (
    CitizenSignIn,
    CitizenWorkspace,
    ConsentWorkspace,
    IgWorkspace,
    verified_person,
)
from sharedcare.store.database import Database

SESSION_COOKIE = "sc_session"

Interaction = Literal["read", "search"]  # SMART v2 `r` (read by id, vread, history) and `s` (search)


# The three below are attribute look-ups: `async` so FastAPI runs them in the event loop rather than
# handing each to a worker thread and back (a thread hop costs more than a governed read's decision).
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_framework(request: Request) -> Framework:
    framework: Framework = request.app.state.framework
    return framework


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def public_base(request: Request) -> str:
    """The service's address as users and apps know it: SHAREDCARE_PUBLIC_URL, or else this request's own
    (its Host header, the caller's to choose: `serve` warns outside demo mode)."""
    configured: str | None = request.app.state.settings.public_url
    return configured or str(request.base_url).rstrip("/")


def public_link(request: Request, query: str | None = None) -> str:
    """This request's address as users and apps know it (`public_base`), with `query` in place of its own if
    given: a Bundle's self and next links, which a client behind a proxy follows with its token."""
    query = request.url.query if query is None else query
    return public_base(request) + request.url.path + (f"?{query}" if query else "")


def _source_address(request: Request) -> str | None:
    return request.client.host if request.client else None


class FromAnotherSite(AuthError):
    """A session cookie sent with a request another site's page made (an image, a form, a script): refused,
    audited, and the session kept (the clinician did nothing wrong)."""

    presented, ends_session = True, False


def from_own_pages(request: Request) -> bool:
    """Whether a browser says this request came from the service's own pages, or from no page (an address
    typed or bookmarked), or is a link followed from elsewhere (a GET navigation): Fetch Metadata's
    `Sec-Fetch-*` headers. SameSite=Strict keeps the session cookie from other *sites* only: a sibling under
    the same domain (a trust's intranet beside the record, both under ics.nhs.uk) is the same site, and its
    image or form would read or search in the signed-in clinician's name. A request without the headers
    (an older browser, a script) is taken as before."""
    site = request.headers.get("sec-fetch-site")
    if site is None or site in ("same-origin", "none"):
        return True
    return request.method == "GET" and request.headers.get("sec-fetch-mode") == "navigate" \
        and request.headers.get("sec-fetch-dest", "document") == "document"


def bearer_or_cookie(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        if not from_own_pages(request):
            refused = FromAnotherSite("this request came from another site's page, which may not act with your "
                                      "session: open the shared care record itself")
            try:  # the audit names whose session it was, if it is a valid one
                refused.subject = str(read_token(request.app.state.settings, cookie)["sub"])
            except AuthError:
                pass
            raise refused
        return cookie
    none = AuthError("sign in first: send 'Authorization: Bearer <token>' (see `sharedcare token`)")
    none.for_people = "Sign in to continue."
    raise none


def people_only(request: Request) -> None:
    """The portals and the IG workspace are used by people, signed in through the portal (or with a token
    from `sharedcare token`, for scripts). A token issued to an app (SMART on FHIR, or a backend client) is
    refused there, audited: its scopes grant FHIR reads, never the IG officer's functions (the audit log,
    agreements, the review queue), a citizen's choices, or a page a CSRF token would otherwise guard. A
    member of staff whose organisation's agreement was suspended or ended is signed out on their next page,
    audited, the IG officer too (the audit log names patients, and she could sign her own organisation's
    agreement again); the server's operator still can, with `sharedcare agreements set`."""
    state = request.app.state
    try:
        claims = read_token(state.settings, bearer_or_cookie(request))
    except AuthError:
        return  # none or not valid: the route's own dependency refuses it (or asks the person to sign in)
    if "client_id" in claims:  # even an empty one: only the SMART server issues the claim
        refused = AuthError(f"this token was issued to the app '{claims['client_id']}', and apps may not use the "
                            "portal: sign in to it yourself")
        refused.presented, refused.subject = True, str(claims["sub"])
        raise refused
    with state.database.session() as session:
        why = OAuthStore(session, state.framework).staff_not_sharing(str(claims["sub"]))
    if why is not None:
        refused = AuthError(f"You have been signed out. {why}.")
        refused.presented, refused.subject = True, str(claims["sub"])
        raise refused


def caller(request: Request, settings: Settings, fw: Framework, session: Session) -> Actor:
    """The caller named by a valid, unrevoked token of a registered app (if it names one). A backend client
    acts as its registered organisation and role, looked up on each request so that removing it takes
    effect at once."""
    token = bearer_or_cookie(request)
    subject = None
    try:
        claims = read_token(settings, token)
        request.state.scopes = str(claims.get("scope", ""))
        request.state.launch_patient = claims.get("patient")
        request.state.client_id = claims.get("client_id")
        request.state.minted_by = claims.get("minted_by")  # a `sharedcare token`: its reads say so
        request.state.token_id = claims.get("jti")
        subject = str(claims["sub"])
        refused = refusal(session, claims, fw)
        if refused:
            raise AuthError(refused)
        actor = (_citizen_now(request, session, fw, claims) if subject.startswith(CITIZEN_PREFIX)
                 else current_actor(session, fw, subject))
        if actor is None:
            raise AuthError(f"the client '{subject.removeprefix(CLIENT_PREFIX)}' is no longer registered")
    except AuthError as refused:
        refused.presented, refused.subject = True, subject
        raise
    if token == request.cookies.get(SESSION_COOKIE):  # a portal session used: the page renews it (`pages.render`)
        request.state.session_window = session_window(settings, claims)
    return actor


# What a citizen whose sign-in details no longer lead to one person's record is told (`_citizen_now`), and one
# who typed the right code after they stopped leading to the person it was sent for (`citizen.check_code`).
_SIGN_IN_AGAIN = ("Sign in again. If you still cannot sign in, contact your GP surgery: they can check the details "
                  "your record holds.")
NO_LONGER_ONE_PERSON = ("You have been signed out because the records held under your NHS number have changed "
                        f"since you signed in. {_SIGN_IN_AGAIN}")
CHANGED_SINCE_CODE = ("You could not be signed in because the records held under your NHS number changed after "
                      f"you asked for the code. {_SIGN_IN_AGAIN}")


def _citizen_now(request: Request, session: Session, fw: Framework, claims: dict[str, Any]) -> Actor:
    """Who a citizen's session is on this request: the one person the NHS number and date of birth it was
    signed in with lead to now (`verified_person`, as at sign-in), not the person id it began with. A merge
    may since have moved their records into another id, an unmerge left that id holding another person's
    record, a separation given their number to two persons, or a correction changed it: a session that kept
    the id would show someone else's record or none of theirs. Details that now lead to no one person end
    the session (audited with the refused credentials, naming why): its `jti` is revoked, in a unit of work
    of its own (this one is rolled back), so it stays ended when the records are joined again."""
    details = citizen_details(request.app.state.settings, claims)
    if details is None:
        refused = AuthError("this patient session does not say whose NHS number it was signed in with; sign in again")
        refused.for_people = SESSION_ENDED
        raise refused
    nhs_number, born = details
    person_id, result = verified_person(session, nhs_number, born)
    if person_id is None:
        refused = AuthError(f"the NHS number ending {nhs_number[-4:]} and date of birth this patient session was "
                            f"signed in with no longer lead to one person's record ({result}); sign in again")
        refused.for_people = NO_LONGER_ONE_PERSON
        database: Database = request.app.state.database
        with database.session() as ending:
            OAuthStore(ending, fw).revoke(claims)
            ending.commit()
        raise refused
    return citizen_actor(fw, person_id)


def get_actor(request: Request, settings: Annotated[Settings, Depends(get_settings)],
              fw: Annotated[Framework, Depends(get_framework)],
              db: Annotated[Database, Depends(get_database)]) -> Actor:
    """The caller (`caller`), for routes that read no records."""
    with db.session() as session:
        return caller(request, settings, fw, session)


def get_member(request: Request, settings: Annotated[Settings, Depends(get_settings)],
               fw: Annotated[Framework, Depends(get_framework)],
               db: Annotated[Database, Depends(get_database)]) -> Actor:
    """The caller (`caller`), if a patient or one of staff whose organisation's agreement is in force: for
    the API's reads that hold no patient data (its published terminology), which are still the sharing
    partners' alone, as every other /fhir route is (TRUST AC1). Not audited: no patient's data is read."""
    with db.session() as session:
        actor = caller(request, settings, fw, session)
        if actor.role is None:
            raise AccessDenied("deny-unknown-actor", "unknown user or role")
        if not actor.role.citizen:
            agreement = effective_agreements(session, fw).get(actor.organisation)
            if agreement is None or not agreement.in_force(utcnow().date()):
                raise AccessDenied("deny-actor-agreement", f"your organisation ({actor.organisation}) has no "
                                                           "signed information-sharing agreement in force")
    return actor


def scoped_types(scopes: str, patient_only: bool = False, interaction: Interaction | None = None
                 ) -> frozenset[str] | None:
    """The resource types SMART scopes allow reading (by id with `interaction` "read", by search with "search",
    either without one: SMART v2 `r` and `s`): None for a wildcard (`user/*.read`), else the named types; a
    token with no read scope may read nothing. A patient/ scope counts only on a token whose read
    scopes are all patient-level (an app's launch patient, or a citizen's own record): on a token that
    also holds a user/ scope it must not widen what that token reads of every other patient
    (`patient/*.read user/Observation.read` reads Observations, whoever the patient)."""
    types: set[str] = set()
    for scope in read_scopes(scopes):
        if (scope.level == "patient" and not patient_only) or (interaction == "read" and not scope.reads) \
                or (interaction == "search" and not scope.searches):
            continue
        if scope.resource_type == "*":
            return None
        types.add(scope.resource_type)
    return frozenset(types)


@contextmanager
def governed_records(request: Request, interaction: Interaction | None = None) -> Iterator[GovernedRecords]:
    """Records as the caller (`caller`, checked in the records' own session) may read them, committed when
    the block ends; with only patient/ scopes (an app's EHR launch), only the launch patient's (a citizen's
    own-record rule is the framework's, not the scope's); of the types the token's scopes allow for the
    route's `interaction` (read by id, or search). For the routes that open it themselves (`fhir.py`:
    one thread hop, or none, rather than a generator dependency's three)."""
    state = request.app.state
    fw: Framework = state.framework
    with state.database.session() as session:
        actor = caller(request, state.settings, fw, session)
        scopes = request.state.scopes
        launch_patient = request.state.launch_patient
        patient_level = patient_level_only(scopes)
        patient_only = patient_level and actor.person_id is None
        if patient_only and not launch_patient:
            raise AuthError("a patient/ scope needs a launch patient: get the token through an EHR launch")
        common: dict[str, Any] = {"purpose": "direct-care", "request_id": request.state.request_id,
                                  "source_address": _source_address(request),
                                  "resource_types": scoped_types(scopes, patient_level, interaction),
                                  "client_id": request.state.client_id, "minted_by": request.state.minted_by,
                                  "token_id": request.state.token_id}
        yield (PatientScopedRecords(session, fw, actor, launch_patient=str(launch_patient), **common)
               if patient_only else GovernedRecords(session, fw, actor, **common))


@contextmanager
def own_consent(request: Request, action: AuditAction) -> Iterator[ConsentWorkspace]:
    """The caller's own choices (`ConsentWorkspace`), committed when the block ends: only a patient's own
    token may read or change their Consent; anyone else is refused, audited (`action`)."""
    state = request.app.state
    with state.database.session() as session:
        actor = caller(request, state.settings, state.framework, session)
        yield ConsentWorkspace.for_consent(session, state.framework, actor, action,
                                           consent_id_key(state.settings.secret),
                                           request_id=request.state.request_id, client_id=request.state.client_id)


def get_records(request: Request) -> Iterator[GovernedRecords]:
    """`governed_records` as a dependency, for routes that hold the records across other dependencies."""
    with governed_records(request) as records:
        yield records


def get_records_to_read(request: Request) -> Iterator[GovernedRecords]:
    """`get_records` for a read by id (vread, `_history`): of the types a SMART v2 `r` scope names."""
    with governed_records(request, "read") as records:
        yield records


def get_records_to_search(request: Request) -> Iterator[GovernedRecords]:
    """`get_records` for a search: of the types a SMART v2 `s` scope names."""
    with governed_records(request, "search") as records:
        yield records


def get_citizen(request: Request, actor: Annotated[Actor, Depends(get_actor)],
                fw: Annotated[Framework, Depends(get_framework)],
                db: Annotated[Database, Depends(get_database)]) -> Iterator[CitizenWorkspace]:
    """The signed-in citizen's own workspace; anyone else is asked to sign in as a patient."""
    if actor.person_id is None:
        raise AuthError("sign in with your NHS number and date of birth to see your own record")
    with db.session() as session:
        yield CitizenWorkspace(session, fw, actor.person_id, request_id=request.state.request_id)


def get_ig(request: Request, actor: Annotated[Actor, Depends(get_actor)],
           fw: Annotated[Framework, Depends(get_framework)],
           db: Annotated[Database, Depends(get_database)]) -> Iterator[IgWorkspace]:
    """The IG officer's workspace; its audits are marked if her token is a `sharedcare token` (`caller`
    read it)."""
    with db.session() as session:
        yield IgWorkspace(session, fw, actor, minted_by=request.state.minted_by, token_id=request.state.token_id)


def get_sign_in(request: Request, fw: Annotated[Framework, Depends(get_framework)],
                db: Annotated[Database, Depends(get_database)]) -> Iterator[CitizenSignIn]:
    with db.session() as session:
        yield CitizenSignIn(session, fw, request_id=request.state.request_id,
                            source_address=_source_address(request))


def get_feedback(actor: Annotated[Actor, Depends(get_actor)], fw: Annotated[Framework, Depends(get_framework)],
                 db: Annotated[Database, Depends(get_database)]) -> Iterator[StaffFeedback]:
    with db.session() as session:
        yield StaffFeedback(session, fw, actor)


def get_oauth(fw: Annotated[Framework, Depends(get_framework)],
              db: Annotated[Database, Depends(get_database)]) -> Iterator[OAuthStore]:
    """The SMART authorisation server's store (codes, assertions, revocations, clients)."""
    with db.session() as session:
        yield OAuthStore(session, fw)


ActorDep = Annotated[Actor, Depends(get_actor)]
MemberDep = Annotated[Actor, Depends(get_member)]
RecordsDep = Annotated[GovernedRecords, Depends(get_records, scope="function")]
ReadRecordsDep = Annotated[GovernedRecords, Depends(get_records_to_read, scope="function")]
SearchRecordsDep = Annotated[GovernedRecords, Depends(get_records_to_search, scope="function")]
CitizenDep = Annotated[CitizenWorkspace, Depends(get_citizen, scope="function")]
IgDep = Annotated[IgWorkspace, Depends(get_ig, scope="function")]
SignInDep = Annotated[CitizenSignIn, Depends(get_sign_in, scope="function")]
FeedbackDep = Annotated[StaffFeedback, Depends(get_feedback, scope="function")]
OAuthDep = Annotated[OAuthStore, Depends(get_oauth, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
FrameworkDep = Annotated[Framework, Depends(get_framework)]


def end_expired_session(request: Request) -> None:
    """A staff session cookie that arrives expired (her tab left idle) has its `jti` revoked until its cap, in
    a unit of work of its own: a copy of the cookie kept in use elsewhere renews itself for up to the cap, and
    would go on after she sees "Your session has ended" and her Sign out finds nothing to end. The session is
    over for her browser either way; an expired copy turning up means the cookie was copied."""
    token_value = request.cookies.get(SESSION_COOKIE)
    claims = signed_claims(request.app.state.settings, token_value) if token_value else None
    now = utcnow().timestamp()
    if claims is None or not isinstance(cap := claims.get(SESSION_CAP), int) or cap <= now \
            or int(claims["exp"]) > now:
        return
    with request.app.state.database.session() as session:
        OAuthStore(session, request.app.state.framework).revoke(claims)
        session.commit()
