"""What the SMART authorisation server keeps: authorisation codes, used client assertions, revoked
token ids, and backend clients' sign-ins. `OAuthStore` is handed to the OAuth routes bound to one
request's session (by `api/deps.py`), so that API code never touches the database itself (TRUST AC2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.governance.agreements import STOPPED, effective_agreements, stopped_words
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit, record_refusal_in
from sharedcare.governance.clients import RegisteredClient, find_client, list_clients
from sharedcare.governance.framework import Framework
from sharedcare.store.database import Prepared, run
from sharedcare.store.models import (
    AgreementChange,
    KeptSearch,
    OAuthClient,
    OAuthCode,
    RevokedToken,
    SeenAssertion,
)

PURGE_AFTER = timedelta(minutes=5)  # rows outlive their expiry a little: clocks differ
PURGE_EVERY = 60.0  # seconds between purges of expired rows (each process)
_last_purge = float("-inf")
_REVOKED_TABLE = cast(Table, RevokedToken.__table__)
_REVOKED = select(_REVOKED_TABLE.c.jti).where(_REVOKED_TABLE.c.jti == bindparam("jti"))  # every request: built once
_CLIENTS_TABLE = cast(Table, OAuthClient.__table__)
_CHANGES = cast(Table, AgreementChange.__table__)
# Whether the organisation a token was issued under (its `org` claim) had its agreement stopped (`STOPPED`)
# since: every token of its users and systems issued before then is cut off, for good (signing the agreement
# again brings none back), so that a copied cookie or a second browser's session is no use afterwards.
_CUT_OFF = select(_CHANGES.c.id).where(_CHANGES.c.org_code == bindparam("org"),  # (no IN list: prepared below)
                                       or_(*(_CHANGES.c.status == status for status in STOPPED)),
                                       _CHANGES.c.changed_at >= bindparam("issued_at")).exists().label("cut_off")
# A token of no app: every request (prepared: through `run` its execution cost as much as the query)
_SESSION_STANDING = Prepared(select(_REVOKED.exists().label("revoked"), _CUT_OFF))
# A presented token's standing, in one statement (every request: built once): whether it was revoked, and
# whether the app it names (`client_id`) is registered now under a registration made before the token was
# issued (a client removed and registered again does not bring back the tokens of the one removed).
_STANDING = Prepared(select(_REVOKED.exists().label("revoked"), select(_CLIENTS_TABLE.c.client_id).where(
    _CLIENTS_TABLE.c.client_id == bindparam("client"),
    _CLIENTS_TABLE.c.created_at < bindparam("issued_by"),
).exists().label("registered"), _CUT_OFF))
_LAST_STOP = select(_CHANGES.c.status, _CHANGES.c.changed_at).where(
    _CHANGES.c.org_code == bindparam("org"), _CHANGES.c.status.in_(STOPPED),
    _CHANGES.c.changed_at >= bindparam("issued_at")).order_by(_CHANGES.c.id).limit(1)  # the first since


@dataclass(frozen=True)
class Code:
    """An authorisation code as issued: who approved which app, for which scopes and launch patient."""

    code: str
    client_id: str
    username: str
    redirect_uri: str
    scope: str
    code_challenge: str
    code_challenge_method: str
    patient: str | None


def refusal(session: Session, claims: dict[str, Any], fw: Framework | None = None) -> str | None:
    """Why a signed, unexpired token no longer works, if it does not: it was revoked; its organisation's
    agreement was suspended or ended after it was issued (`cut_off`); or the app it was issued to has been
    removed (`sharedcare clients remove`), which cuts off every token of that app at once rather than one
    at a time, and stays cut off if a client of that id is registered again. One query a request."""
    org = str(claims.get("org", ""))
    issued_at = datetime.fromtimestamp(float(claims.get("iat", 0)), UTC)
    client = claims.get("client_id")
    if not client:
        ((revoked, cut_off),) = _SESSION_STANDING(session, {"jti": str(claims.get("jti", "")), "org": org,
                                                            "issued_at": issued_at})
        registered = True
    else:
        # The registration is compared with whole seconds, as tokens before float `iat` carried it: a
        # registration made in the second the token was issued still counts as before it, so removing and
        # re-registering within that one second would not cut the token off.
        issued_by = datetime.fromtimestamp(int(claims.get("iat", 0)) + 1, UTC)
        ((revoked, registered, cut_off),) = _STANDING(session, {
            "jti": str(claims.get("jti", "")), "client": str(client), "issued_by": issued_by, "org": org,
            "issued_at": issued_at})
    if revoked:
        return "the access token has been revoked; sign in again"
    if cut_off:
        return cut_off_words(session, org, issued_at, fw)
    return None if registered else f"the app '{client}' is no longer registered; its tokens no longer work"


def organisations_words(fw: Framework | None, code: str) -> str:
    """An organisation's, as its staff know it, with the ODS code a helpdesk asks for: "Riverside University
    Hospitals NHS Trust's (RXR)"; "your organisation's (RXR)" where the framework does not name it."""
    organisation = fw.organisation(code) if fw is not None else None
    return f"{organisation.name if organisation else 'your organisation'}'s ({code})"


def contact_words(fw: Framework | None) -> str:
    """Whom a member of staff locked out asks about their organisation's agreement: the ICS's information
    governance team (at its integrated care board, which keeps the agreements), with its number."""
    icb = next((org for org in fw.organisations.values() if org.kind == "icb"), None) if fw is not None else None
    if icb is None:
        return "To ask about it, contact your organisation's information governance lead"
    return (f"To ask about it, contact your organisation's information governance lead, or the information "
            f"governance team at {icb.name}" + (f" on {icb.phone}" if icb.phone else ""))


def cut_off_words(session: Session, org: str, issued_at: datetime, fw: Framework | None = None) -> str:
    """What a person presenting a token cut off by a suspension is told: when, and why, in plain words."""
    status, when = run(session, _LAST_STOP, {"org": org, "issued_at": issued_at}).one()
    return (f"You were signed out on {when.day} {when:%B %Y at %H:%M} UTC, when {organisations_words(fw, org)} "
            f"information-sharing agreement was {stopped_words(status)}, and that session has ended for good: "
            "sign in again")


def staff_not_sharing(session: Session, fw: Framework, username: str) -> str | None:
    """Why a member of staff may not be signed in now, if they may not: their organisation's information-sharing
    agreement is not in force (suspended, ended, not yet signed). None for anyone else (a citizen)."""
    user = fw.users.get(username)
    if user is None:
        return None
    agreement = effective_agreements(session, fw).get(user.organisation)
    if agreement is not None and agreement.in_force(utcnow().date()):
        return None
    status = agreement.status if agreement else "none"
    state = NOT_SHARING_WORDS.get(status, "is not in force")
    return (f"{organisations_words(fw, user.organisation)} information-sharing agreement {state}, so its staff "
            f"cannot use the shared care record until it is signed again. {contact_words(fw)}")


# An agreement not in force, after "the agreement" (a signed one is out of its dates: "is not in force").
NOT_SHARING_WORDS = {"suspended": "is suspended", "ended": "has ended", "draft": "is not signed",
                     "none": "is not recorded"}


class OAuthStore:
    def __init__(self, session: Session, fw: Framework) -> None:
        self.session = session
        self.fw = fw

    # -- clients ----------------------------------------------------------------------------------
    def client(self, client_id: str) -> RegisteredClient | None:
        return find_client(self.session, client_id)

    def clients(self) -> list[RegisteredClient]:
        return list_clients(self.session)

    def staff_not_sharing(self, username: str) -> str | None:
        """`staff_not_sharing` in this store's session."""
        return staff_not_sharing(self.session, self.fw, username)

    def sharing(self, organisation: str | None) -> tuple[bool, str]:
        """Whether an organisation's information-sharing agreement is in force now, and its status."""
        agreement = effective_agreements(self.session, self.fw).get(organisation or "")
        if agreement is None:
            return False, "none"
        return agreement.in_force(utcnow().date()), agreement.status

    def client_sign_in(self, client: RegisteredClient | None, ok: bool, request_id: str | None,
                       source_address: str | None) -> None:
        """A backend's token request is its sign-in (TRUST AU3): audited when granted; refused, within the
        limits of refusals at the door (anyone can send a token request)."""
        record = AuditRecord(
            AuditAction.LOGIN, "permit" if ok else "deny",
            username=f"client:{client.client_id}" if client else "client:(unknown)",
            role=client.role if client else None, organisation=client.organisation if client else None,
            request_id=request_id, source_address=source_address)
        (record_audit if ok else record_refusal_in)(self.session, record)

    # -- authorisation codes ----------------------------------------------------------------------
    def save_code(self, code: Code, minutes: int) -> None:
        self.session.add(OAuthCode(**vars(code), expires_at=utcnow() + timedelta(minutes=minutes)))

    def code(self, code: str, client_id: str) -> Code | None:
        """An unexpired code issued to this client."""
        row = self.session.get(OAuthCode, code)
        if row is None or row.client_id != client_id or row.expires_at <= utcnow():
            return None
        return Code(row.code, row.client_id, row.username, row.redirect_uri, row.scope, row.code_challenge,
                    row.code_challenge_method, row.patient)

    def use_code(self, code: str) -> bool:
        """Spend a code; False if another request spent it first (two redemptions at once both found it)."""
        spent = self.session.execute(delete(OAuthCode).where(OAuthCode.code == code))
        return spent.rowcount == 1  # type: ignore[attr-defined]

    # -- client assertions and revocation ---------------------------------------------------------
    def first_use_of_assertion(self, client_id: str, jti: str, expires: int) -> bool:
        """Record a client assertion's jti; False if it was used before (a replay)."""
        if self.session.get(SeenAssertion, (client_id, jti)) is not None:
            return False
        self.session.add(SeenAssertion(client_id=client_id, jti=jti, expires_at=datetime.fromtimestamp(expires, UTC)))
        self.session.flush()
        return True

    def revoke(self, claims: dict[str, Any]) -> None:
        """Refuse this token from now on, though it has not expired (its `jti` is kept until it would have).
        A portal session's `jti` is kept until its cap (`auth.SESSION_CAP`): a copy of the cookie renewed
        later than the one signed out with expires later, and is the same session."""
        jti = str(claims.get("jti", ""))
        if jti:
            last = max(int(claims["exp"]), int(claims.get("cap", 0)))
            # a no-op if it is revoked already, here or by a request made at the same moment: two tabs (or an
            # app's parallel requests) ending one session both got here, and the second INSERT was a 500
            insert = (pg_insert if self.session.get_bind().dialect.name == "postgresql" else sqlite_insert)
            self.session.execute(insert(RevokedToken).values(
                jti=jti, revoked_at=utcnow(), expires_at=datetime.fromtimestamp(last, UTC)).on_conflict_do_nothing())
            # the searches the session kept for its results pages (names, NHS numbers typed) go with it
            self.session.execute(delete(KeptSearch).where(KeptSearch.session_id == jti))

    def refusal(self, claims: dict[str, Any]) -> str | None:
        """`refusal` in this store's session."""
        return refusal(self.session, claims, self.fw)

    def purge_expired(self) -> None:
        """Forget codes, used assertions, revoked token ids and kept searches past their expiry: each is refused
        anyway."""
        cutoff = utcnow() - PURGE_AFTER
        for model in (OAuthCode, SeenAssertion, RevokedToken, KeptSearch):
            self.session.execute(delete(model).where(model.expires_at < cutoff))

    def purge_expired_now_and_then(self) -> None:
        """`purge_expired`, at most once every PURGE_EVERY in this process: three DELETEs in the token
        request's write transaction are not needed each time (expired rows are refused anyway)."""
        global _last_purge
        now = time.monotonic()
        if now - _last_purge >= PURGE_EVERY:
            _last_purge = now
            self.purge_expired()
