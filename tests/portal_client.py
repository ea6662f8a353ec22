"""A TestClient that posts portal forms as a browser does: with the form's CSRF token.

A browser gets the token in the hidden field of the page that held the form; this client computes the
same value from the nonce cookie its jar holds (fetching a sign-in page first when it holds none), so
tests can post forms directly. `csrf=False` posts without it, as a forged cross-site form would.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from sharedcare.portal import csrf

API_PREFIXES = ("/fhir", "/api")


class PortalClient(TestClient):
    def csrf_token(self) -> str:
        if not self.cookies.get(csrf.CSRF_COOKIE):
            self.get("/patient")  # any portal page sets the nonce; this one needs no session
        return csrf.token_for(self.app.state.settings, self.cookies[csrf.CSRF_COOKIE])  # type: ignore[attr-defined]

    forge = False

    def post(self, url: Any, *args: Any, csrf: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        self.forge = not csrf
        try:
            return super().post(url, *args, **kwargs)
        finally:
            self.forge = False

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if (method.upper() == "POST" and not self.forge and kwargs.get("json") is None
                and not str(url).startswith(API_PREFIXES)):
            data = dict(kwargs.get("data") or {})
            data.setdefault("csrf_token", self.csrf_token())
            kwargs["data"] = data
        return super().request(method, url, *args, **kwargs)
