"""Cross-site request forgery protection for the three portals' forms.

A signed double-submit cookie: each browser holds a random nonce in `sc_csrf` (HttpOnly,
SameSite=Strict), renewed whenever a session starts or ends, so the token is per session; every form
carries `csrf_token`, the HMAC of that nonce under the app's secret, rendered by the `csrf_field()`
macro. `check` (a router dependency of every portal router) refuses a POST whose token is missing or
wrong with the 403 page; signing out is the one form it lets through (`SIGN_OUT`). The FHIR and access
APIs use bearer tokens, not cookies, and are not covered; nor is a portal POST that carries a bearer
token (a script's: the token, not the cookie, names the caller).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request, Response

from sharedcare.config import Settings

CSRF_COOKIE = "sc_csrf"
CSRF_FIELD = "csrf_token"
# Signing out needs no token: it ends only the session of the browser that sends it, and a forged one from
# another site carries no session (SameSite=Strict). Refusing it left the session running when a tab opened
# before the last sign-in (whose token has since changed) said "Sign out", on a shared workstation.
SIGN_OUT = "/logout"


class CsrfRefused(Exception):
    """A portal form arrived without this browser's token: possibly from another site."""


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def token_for(settings: Settings, nonce: str) -> str:
    return hmac.new(settings.secret.encode(), f"csrf|{nonce}".encode(), hashlib.sha256).hexdigest()


def nonce_of(request: Request) -> str:
    """The browser's nonce, or a new one this response will set (`remember`)."""
    nonce = getattr(request.state, "csrf_nonce", None) or request.cookies.get(CSRF_COOKIE) or ""
    if not nonce:
        nonce = new_nonce()
    request.state.csrf_nonce = nonce
    return nonce


def secure_cookies(request: Request) -> bool:
    """Whether cookies are set Secure (sent back over HTTPS only): always outside demo mode, since behind a
    TLS-terminating proxy the service itself may see plain HTTP; in demo mode only when served over HTTPS
    (a demo on a laptop runs on http://localhost)."""
    return not request.app.state.settings.demo or request.url.scheme == "https"


def remember(request: Request, response: Response, nonce: str | None = None) -> None:
    """Set the nonce cookie when the browser does not hold it yet (or `nonce` replaces it)."""
    nonce = nonce or nonce_of(request)
    if nonce != request.cookies.get(CSRF_COOKIE):
        response.set_cookie(CSRF_COOKIE, nonce, httponly=True, samesite="strict", secure=secure_cookies(request))


async def check(request: Request) -> None:
    """Every portal POST must carry the token of the nonce its browser holds."""
    if request.method != "POST" or request.url.path == SIGN_OUT:
        return
    if request.headers.get("authorization", "").lower().startswith("bearer "):
        return  # a script with a bearer token (which then wins over any cookie): no browser sends one unasked
    nonce = request.cookies.get(CSRF_COOKIE, "")
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    settings: Settings = request.app.state.settings
    if not nonce or not isinstance(sent, str) or not hmac.compare_digest(sent, token_for(settings, nonce)):
        raise CsrfRefused()
