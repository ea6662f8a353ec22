"""Access tokens: signed JWTs naming a configured user (or a citizen), their role, organisation and scopes.

`sharedcare token` mints them for integration and tests; the portal keeps one in an HttpOnly cookie;
the SMART on FHIR authorisation server (`api/oauth.py`) issues the same shape, adding `client_id` and,
for an EHR launch, `patient`. A backend client's token names it as `client:{client_id}`. A token
revoked before it expires (RFC 7009, or portal sign-out) has its `jti` in `revoked_tokens`
(`governance/tokens.py`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import jwt

from sharedcare import sealing
from sharedcare.clock import utcnow
from sharedcare.config import Settings
from sharedcare.errors import SharedcareError
from sharedcare.governance.clients import CITIZEN_PREFIX as CITIZEN_PREFIX  # subject prefixes (re-exported)
from sharedcare.governance.clients import CLIENT_PREFIX as CLIENT_PREFIX
from sharedcare.governance.framework import Framework
from sharedcare.governance.one_time_codes import CODE_MINUTES
from sharedcare.governance.scopes import write_scopes

ALGORITHM = "HS256"
ISSUER = "sharedcare"
DEFAULT_SCOPE = "user/*.read"
CITIZEN_SCOPE = "patient/*.read"


class AuthError(SharedcareError):
    """No token, or a token that is expired, tampered with or names no configured user."""

    presented = False  # the caller sent credentials and they were refused: audited (TRUST AU3)
    subject: str | None = None  # whom they name, where the signature was checked (revoked, client removed)
    ends_session = True  # a portal page answering it clears the session cookie (it is no good)
    for_people: str | None = None  # what a portal page says instead, where the API's words are for scripts


SESSION_ENDED = "Your session has ended. Sign in again to continue."


def _ended(message: str) -> AuthError:
    """A token no longer good: the API says why, a portal page that the session has ended."""
    refused = AuthError(message)
    refused.for_people = SESSION_ENDED
    return refused


def sign_token(settings: Settings, claims: dict[str, Any], minutes: int | None = None) -> str:
    """Sign `claims` with the issuer, a fresh `jti` and an expiry added."""
    now = utcnow()
    # `iat` to the microsecond (a NumericDate may have a fraction): a session cut off by its organisation's
    # suspension is told apart from one begun after the agreement was signed again within the same second
    full = {"iss": ISSUER, **claims, "iat": now.timestamp(),
            "exp": now + timedelta(minutes=minutes or settings.token_minutes), "jti": str(uuid.uuid4())}
    return jwt.encode(full, settings.secret, algorithm=ALGORITHM)


def mint_token(settings: Settings, fw: Framework, username: str, scope: str = DEFAULT_SCOPE,
               minutes: int | None = None, **extra: str | int) -> str:
    """A token for a configured user; `extra` claims (`client_id`, `patient`) come from the SMART server.
    Write scopes only for a role the framework lets write (the write itself checks the role again)."""
    user = fw.users.get(username)
    if user is None:
        raise SharedcareError(f"no user '{username}' in the framework", where="token")
    role = fw.roles.get(user.role)
    if write_scopes(scope) and (role is None or not role.writes):
        raise SharedcareError(f"{username}'s role ({user.role}) may not write to the record: give read scopes only",
                              where="token")
    return sign_token(settings, {"sub": username, "role": user.role, "org": user.organisation, "scope": scope,
                                 **extra}, minutes)


# A staff portal session's claim: when it ends at the latest (a NumericDate), however much it is used. Signed
# with the rest, so no one can move it; only a token that carries it is ever renewed (`renewed`).
SESSION_CAP = "cap"
RENEW_EVERY = 60  # seconds: a session used within a minute of its last renewal is not renewed again yet


def mint_session(settings: Settings, fw: Framework, username: str) -> str:
    """A staff portal session: ended after `session_idle_minutes` unused, each page renewing that (`renewed`),
    and `session_hours` after the sign-in at the latest, a shift, however much it is used."""
    cap = utcnow() + timedelta(hours=settings.session_hours)
    minutes = min(settings.session_idle_minutes, settings.session_hours * 60)
    return mint_token(settings, fw, username, minutes=minutes, cap=int(cap.timestamp()))  # SESSION_CAP


@dataclass(frozen=True)
class SessionWindow:
    """When a staff portal session ends: `ends` unless it is used before then, `cap` at the latest."""

    ends: datetime
    cap: datetime
    token: str | None  # the same session renewed (its claims but `exp`), to be set in the cookie; None: not now


def session_window(settings: Settings, claims: dict[str, Any]) -> SessionWindow | None:
    """A valid portal session's claims, used now: its idle window starts again (never past its cap). The
    renewed token keeps the session's `jti` and `iat`, so revocation, sign-out, a suspension's cut-off and
    the audit's token id treat it as the same session; a copy of the cookie not used ends at its own `exp`.
    None for a token that is not a staff portal session (a `sharedcare token`, an app's, a citizen's)."""
    cap = claims.get(SESSION_CAP)
    if not isinstance(cap, int) or "client_id" in claims or "minted_by" in claims:
        return None
    expires = int(claims["exp"])
    renewed = min(int(utcnow().timestamp()) + settings.session_idle_minutes * 60, cap)
    token = None
    if renewed - expires >= RENEW_EVERY:
        token = jwt.encode({**claims, "exp": renewed}, settings.secret, algorithm=ALGORITHM)
        expires = renewed
    return SessionWindow(datetime.fromtimestamp(expires, UTC), datetime.fromtimestamp(cap, UTC), token)


# A citizen's NHS number and date of birth, in their session token and the sign-in cookie, sealed (`sealing`):
# a JWT is signed, not encrypted, and anyone who sees the cookie (a shared computer, a copy of it, the browser's
# storage) could read them by base64, expired or signed out or not.
DETAILS = "details"
_SESSION_DETAILS, _SIGN_IN_DETAILS = "citizen session", "citizen sign-in"  # what each is sealed for


def _details_key(settings: Settings) -> bytes:
    return sealing.key(settings.secret, "sharedcare citizen details key")


def _sealed_details(settings: Settings, sealed_for: str, nhs_number: str, birth_date: date) -> str:
    return sealing.seal(_details_key(settings), sealed_for, [nhs_number, birth_date.isoformat()])


def _details_of(settings: Settings, sealed_for: str, claims: dict[str, Any]) -> tuple[str, date] | None:
    try:
        nhs_number, born = sealing.unseal(_details_key(settings), sealed_for, str(claims[DETAILS]))
        return str(nhs_number), date.fromisoformat(str(born))
    except (KeyError, ValueError, TypeError):
        return None


def mint_citizen_token(settings: Settings, person_id: str, nhs_number: str, birth_date: date) -> str:
    """A patient portal session, who may read only their own record: the NHS number and date of birth the
    citizen was verified by (NHS login's ID token names them by its `nhs_number` and `birthdate` claims),
    sealed in `details`, from which each request works out who they are now (`api.deps.caller`), and `sub`
    naming the person they were found to be then (`patient:{person_id}`: the audit of a refused session names
    it). Issued after a one-time code; NHS login would issue it after its own checks."""
    return sign_token(settings, {"sub": f"{CITIZEN_PREFIX}{person_id}", "role": "patient", "scope": CITIZEN_SCOPE,
                                 DETAILS: _sealed_details(settings, _SESSION_DETAILS, nhs_number, birth_date)})


def citizen_details(settings: Settings, claims: dict[str, Any]) -> tuple[str, date] | None:
    """The NHS number and date of birth a citizen's session was signed in with; None if it names none."""
    return _details_of(settings, _SESSION_DETAILS, claims)


SIGN_IN_AUDIENCE = "sharedcare:patient-sign-in"  # a sign-in under way's cookie: never an access token


def sign_in_cookie(settings: Settings, challenge: str, nhs_number: str, birth_date: date) -> str:
    """What the browser keeps between the sign-in's two steps: the challenge, and the details typed at the
    first, sealed, and signed so that the session the code begins is bound to them and the browser cannot
    change them. Its audience is not an access token's, so `read_token` refuses it."""
    return jwt.encode({"iss": ISSUER, "aud": SIGN_IN_AUDIENCE, "challenge": challenge,
                       DETAILS: _sealed_details(settings, _SIGN_IN_DETAILS, nhs_number, birth_date),
                       "exp": utcnow() + timedelta(minutes=CODE_MINUTES)},
                      settings.secret, algorithm=ALGORITHM)


def read_sign_in_cookie(settings: Settings, value: str) -> tuple[str, str, date] | None:
    """The challenge, NHS number and date of birth of a sign-in cookie this service made and that has not
    expired; None for anything else."""
    try:
        claims = jwt.decode(value, settings.secret, algorithms=[ALGORITHM], issuer=ISSUER, audience=SIGN_IN_AUDIENCE)
    except jwt.PyJWTError:
        return None
    details = _details_of(settings, _SIGN_IN_DETAILS, claims)
    return (str(claims.get("challenge", "")), *details) if details else None


@lru_cache(maxsize=4096)
def _verified(secret: str, token: str) -> dict[str, Any]:
    """The claims of a token whose signature, issuer and required claims check out, its expiry aside.
    Kept per token (a refused one is checked afresh every time): PyJWT's checks were about a tenth of a
    resource read's server CPU, and the same token comes with every request of a session."""
    claims: dict[str, Any] = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER,
                                        options={"require": ["exp", "sub", "iss", "jti"], "verify_exp": False})
    return claims


def signed_claims(settings: Settings, token: str) -> dict[str, Any] | None:
    """The claims of a token this service signed, expired or not; None for any other (an unsigned or forged
    one is never trusted): a session cookie to revoke at sign-out, or as it arrives expired."""
    try:
        return dict(_verified(settings.secret, token))
    except jwt.PyJWTError:
        return None


def read_token(settings: Settings, token: str) -> dict[str, Any]:
    """A valid token's claims, its expiry checked on every use (revocation is the caller's: the store)."""
    try:
        claims = _verified(settings.secret, token)
    except jwt.PyJWTError as exc:
        raise _ended("the access token is not valid") from exc
    try:
        expires = int(claims["exp"])  # as PyJWT reads it
    except (ValueError, TypeError, OverflowError):
        raise _ended("the access token is not valid") from None
    if expires <= utcnow().timestamp():
        raise _ended("the access token has expired; sign in again")
    return dict(claims)

