"""Deny by default, route by route (TRUST AC1): every route the app serves, called with no credentials,
with a correctly signed token naming no configured user, and with a user whose organisation has no
signed agreement, answers a refusal (or a sign-in page) and never a patient's details.

The routes are read from the app itself, so a new route is in the matrix the day it is added; the few
that are public by design are listed below with why."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.api.auth import sign_token
from sharedcare.config import load_settings
from sharedcare.governance.framework import Framework

# Public by design: descriptions of the service, sign-in forms, OAuth's own endpoints (which answer OAuth
# errors, never records) and the audit log's checkpoints. Each still must not show a patient's details.
PUBLIC = {
    ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
    ("GET", "/.well-known/smart-configuration"), ("GET", "/fhir/.well-known/smart-configuration"),
    ("GET", "/fhir/metadata"), ("GET", "/"), ("GET", "/patient"), ("GET", "/ig"), ("POST", "/login"),
    ("POST", "/logout"), ("POST", "/patient/sign-in"), ("POST", "/patient/code"),
    ("GET", "/oauth/authorize"), ("POST", "/oauth/authorize"), ("POST", "/oauth/token"), ("POST", "/oauth/revoke"),
    # the audit log's transparency endpoints, for witnesses in other organisations: hashes and counts only
    ("GET", "/audit/checkpoint"), ("GET", "/audit/consistency"), ("GET", "/audit/inclusion"),
    ("GET", "/audit/handovers"),  # the checkpoint key's handovers: public keys and signatures
}
# A form's URL opened by GET (a bookmark, a refreshed tab): only a redirect to the page holding the form, which
# then decides (pages.FORM_PAGES); never the form's action.
FORM_URLS = {("GET", path) for path in (
    "/login", "/logout", "/record/{person_id}/basis", "/record/{person_id}/feedback", "/ig/review/{item_id}",
    "/ig/agreements/{org}", "/ig/identity/{review_id}", "/patient/sign-in", "/patient/code", "/patient/choices/confirm",
    "/patient/choices/hide/confirm", "/patient/choices/hide", "/patient/choices/withdraw")}
# Shown to any signed session, even one the decision point refuses: an empty form, whose POST is decided.
FORMS = {("GET", "/search")}
REFUSED = {401, 403, 404}
# Answered 400 before any record is named: no app 'rxr-epr' is registered for launch (the record's own
# check, `needs_basis`, refuses a user who may not open it once an app is found); a patient search by GET
# is refused whoever asks (TRUST DP1: criteria go in a POST body).
REFUSED_BEFORE_THE_RECORD = {("POST", "/oauth/launch"), ("GET", "/fhir/Patient")}
# What must never come back: Mr Okafor's name, NHS number, birth date and his GP's notes. (The sign-in
# forms show his number spaced, "943 476 5919", as the example of an NHS number.)
SECRETS = ("okafor", OKAFOR_NHS, "1945-03-02", "metformin", "diabetes", "chlamydial")


def _routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)  # FastAPI's wrapper around an included router
        if inner is not None:
            yield from _routes(inner.routes)


def _calls(ics: Ics) -> list[tuple[str, str, str]]:
    """(method, route path, URL) for every route, path parameters naming Mr Okafor's record."""
    values = {"patient_id": ics.okafor, "person_id": ics.okafor, "resource_type": "Condition",
              "resource_id": "gp-c1", "version_id": "1", "group_id": "P81001", "job_id": "1",
              "file_name": "Condition.ndjson", "item_id": "1", "review_id": "1", "org": "RXR", "status": "suspended",
              "consent_id": OKAFOR_NHS, "code_system_id": "withheld-reason",
              "search_id": "a-kept-search-id"}
    calls = []
    for route in _routes(ics.client.app.router.routes):  # type: ignore[attr-defined]
        for method in sorted((route.methods or set()) - {"HEAD"}):
            url = route.path.format(**values)
            if route.path in ("/fhir/{resource_type}", "/fhir/Consent"):  # a search names its patient
                url += f"?patient={ics.okafor}"
            if route.path == "/oauth/launch":  # an EHR launch names its app and patient
                url += f"?client_id=rxr-epr&patient={ics.okafor}"
            calls.append((method, route.path, url))
    return calls


def _body(method: str, path: str, ics: Ics) -> dict[str, Any]:
    if method not in {"POST", "PUT"}:
        return {}
    if path.startswith(("/fhir", "/api")):
        return {"json": {"basis": "explicit-consent", "resourceType": "Bundle", "type": "batch", "entry": []}}
    return {"data": {"nhs_number": OKAFOR_NHS, "family": "Okafor", "birth_day": "2", "birth_month": "3",
                     "birth_year": "1945", "patient": ics.okafor, "basis": "explicit-consent",
                     "reason": "reviewing before the clinic", "change": "object-all", "status": "suspended",
                     "outcome": "appropriate", "helped": "yes", "client_id": "rxr-epr", "decision": "link",
                     "was": "open"}}


ACTORS = ["no credentials", "a signed token naming no one", "a user without a signed agreement"]


def _headers(actor: str, framework: Framework) -> dict[str, str]:
    settings = load_settings()
    if actor == "a signed token naming no one":
        token = sign_token(settings, {"sub": "mallory", "role": "gp", "org": "P81001",
                                      "scope": "user/*.read user/*.write"})
    elif actor == "a user without a signed agreement":  # the care home's agreement is a draft
        token = sign_token(settings, {"sub": "carehome.davies", "role": "care_home_staff", "org": "VWC01",
                                      "scope": "user/*.read user/*.write"})
    else:
        return {}
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("actor", ACTORS)
def test_every_route_refuses_an_anonymous_or_empty_actor_and_shows_no_patient(ics: Ics, framework: Framework,
                                                                              actor: str) -> None:
    ics.open_record("dr.patel")  # someone else's basis and audit entries exist: nothing of them may show
    headers = _headers(actor, framework)
    calls = _calls(ics)
    assert len(calls) > 50
    leaks, allowed = [], []
    for method, path, url in calls:
        ics.client.cookies.clear()  # no session from an earlier call
        response = ics.client.request(method, url, headers={**headers, "Prefer": "respond-async"},  # as $export needs
                                      follow_redirects=False, **_body(method, path, ics))
        text = response.text.lower()
        found = [secret for secret in SECRETS if secret in text]
        if found:
            leaks.append(f"{method} {url}: {response.status_code} {found}")
        # Each request is well formed, so a 400 would mean it reached the work before the access check.
        refusals = REFUSED | ({400} if (method, path) in REFUSED_BEFORE_THE_RECORD else set()) | (
            {303} if (method, path) in FORM_URLS else set())
        if (method, path) not in PUBLIC | FORMS and response.status_code not in refusals:
            allowed.append(f"{method} {path}: {response.status_code}")
    assert leaks == [] and allowed == []
