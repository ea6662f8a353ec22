"""SMART on FHIR over real HTTP: an app launched from the clinician portal (authorisation code + PKCE),
a partner EPR's backend (client credentials with a signed JWT), and every way a token is refused.

Keys are generated here; the flows go through the app's real endpoints, database and governance."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt as pyjwt
import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from fastapi.testclient import TestClient
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy import select
from tests.api.test_sign_in_floods import _sign_ins
from tests.conftest import FRAMEWORK_PATH
from tests.fhir_bundles import entries
from tests.small_ics import OKAFOR_NHS, Ics
from typer.testing import CliRunner

from sharedcare.api import oauth
from sharedcare.api.auth import mint_token
from sharedcare.cli import app as cli
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.governance import tokens
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.clients import add_client
from sharedcare.governance.framework import Framework
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, ReviewItem, SeenAssertion

APP, REDIRECT, LAUNCH_URI = "ward-tasks", "https://tasks.example/callback", "https://tasks.example/launch"
EPR = "rxr-epr"
TOKEN_URL = "http://testserver/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(autouse=True)
def _plain_http_for_the_test_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Authlib refuses OAuth over plain HTTP; TestClient talks http://testserver (deployments use TLS)."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")


@pytest.fixture
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "epr-2026"})


@pytest.fixture
def registered(ics: Ics, db: Database, framework: Framework, rsa_key: RSAKey) -> Ics:
    with db.session() as session:
        add_client(session, framework, APP, "Ward tasks", "public", by="cli", redirect_uris=[REDIRECT],
                   launch_uri=LAUNCH_URI)
        add_client(session, framework, EPR, "Riverside Hospital EPR", "backend", by="cli", organisation="RXR",
                   role="acute_clinician", jwks=KeySet([rsa_key]).as_dict(private=False))
    return ics


# -- helpers: what an app and a backend do ----------------------------------------------------------------

def _sign_in(ics: Ics, username: str = "dr.patel") -> None:
    response = ics.client.post("/login", data={"username": username, "password": "demo", "target": "/search"},
                               follow_redirects=False)
    assert response.status_code == 303


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _launch(ics: Ics, patient: str) -> str:
    """The clinician follows 'Open an app' from the record and presses the app's button: the portal sends
    the browser to the app's launch URI."""
    record = ics.client.get(f"/record/{patient}")
    assert f'href="/oauth/launch?patient={patient}"' in record.text
    page = ics.client.get(f"/oauth/launch?patient={patient}")
    assert page.status_code == 200 and "Open Ward tasks" in page.text
    response = ics.client.post("/oauth/launch", data={"client_id": APP, "patient": patient}, follow_redirects=False)
    assert response.status_code == 303, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == LAUNCH_URI
    query = parse_qs(location.query)
    assert query["iss"] == ["http://testserver/fhir"]
    return query["launch"][0]


def _authorize_url(challenge: str | None, scope: str, launch: str | None = None, state: str = "xyz") -> str:
    params = {"response_type": "code", "client_id": APP, "redirect_uri": REDIRECT, "scope": scope,
              "state": state, "aud": "http://testserver/fhir"}
    if challenge:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    if launch:
        params["launch"] = launch
    return "/oauth/authorize?" + urlencode(params)


def _approve(ics: Ics, url: str) -> dict[str, list[str]]:
    page = ics.client.get(url)
    assert page.status_code == 200 and "Allow Ward tasks to read records?" in page.text
    # the answer redirects to the app: the page's CSP lets its form go there, and nowhere else
    assert "form-action 'self' https://tasks.example;" in page.headers["content-security-policy"]
    response = ics.client.post(url, data={"decision": "approve"}, follow_redirects=False)
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    return parse_qs(location.query)


def _redeem(ics: Ics, code: str, verifier: str) -> Any:
    return ics.client.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                 "redirect_uri": REDIRECT, "client_id": APP,
                                                 "code_verifier": verifier})


def _app_token(ics: Ics, scope: str = "launch patient/*.read") -> dict[str, Any]:
    """The whole EHR launch: sign in, record a basis, launch, approve, redeem the code with the verifier."""
    _sign_in(ics)
    assert ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}).status_code == 201
    verifier, challenge = _pkce()
    query = _approve(ics, _authorize_url(challenge, scope, _launch(ics, ics.okafor)))
    assert query["state"] == ["xyz"]
    response = _redeem(ics, query["code"][0], verifier)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assertion(key: Any, alg: str = "RS384", client_id: str = EPR, expires_in: int = 240,
               jti: str | None = None, audience: str = TOKEN_URL) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + expires_in,
              "jti": jti or str(uuid.uuid4())}
    return jose_jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def _backend_token(ics: Ics, assertion: str, scope: str = "system/*.read", host: str | None = None) -> Any:
    return ics.client.post("/oauth/token", data={"grant_type": "client_credentials", "scope": scope,
                                                 "client_assertion_type": ASSERTION_TYPE,
                                                 "client_assertion": assertion},
                           headers={"Host": host} if host else None)


def _outcome(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0]["diagnostics"])


# -- discovery ----------------------------------------------------------------------------------------

def test_a_form_on_a_sibling_site_cannot_approve_an_app_in_the_clinicians_name(registered: Ics) -> None:
    """The session cookie is SameSite=Strict, but a sibling site under the same domain is the same site:
    its self-submitting form must not approve an app with her session (Fetch Metadata says where it came from)."""
    ics = registered
    _sign_in(ics)
    assert ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}).status_code == 201
    url = _authorize_url(_pkce()[1], "launch patient/*.read", _launch(ics, ics.okafor))
    assert "Allow Ward tasks to read records?" in ics.client.get(url).text
    sibling = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    response = ics.client.post(url, data={"decision": "approve"}, headers=sibling, follow_redirects=False)
    assert "code=" not in response.headers.get("location", "")
    own = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    approved = ics.client.post(url, data={"decision": "approve"}, headers=own, follow_redirects=False)
    assert approved.status_code == 302 and "code=" in approved.headers["location"]


@pytest.mark.parametrize("whose", ["the app's own access token", "a token an operator minted"])
def test_only_a_portal_session_approves_an_app(registered: Ics, framework: Framework, whose: str) -> None:
    """An app approved for one patient sent its own access token as the session cookie and approved itself
    user/*.read on the approval page (its CSRF field read off the page), then did it again with that token:
    every patient the clinician may see, with no one asked. Nor does a `sharedcare token` approve an app."""
    ics = registered
    if whose == "the app's own access token":
        token = _app_token(ics)["access_token"]
    else:
        token = mint_token(load_settings(), framework, "dr.patel", minted_by="operator:ops")
    app_http = TestClient(ics.client.app)
    app_http.cookies.set("sc_session", token)
    url = _authorize_url(_pkce()[1], "user/*.read")
    page = app_http.get(url)
    assert page.status_code == 200 and "Allow Ward tasks" not in page.text and "Sign in" in page.text
    field = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    answer = app_http.post(url, data={"decision": "approve", "csrf_token": field.group(1) if field else ""},
                           follow_redirects=False)
    assert answer.status_code in (401, 403) and "code=" not in answer.headers.get("location", "")


def test_discovery_document_and_capability_statement_point_at_the_same_endpoints(ics: Ics) -> None:
    config = ics.client.get("/.well-known/smart-configuration").json()
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert {"private_key_jwt", "none"} <= set(config["token_endpoint_auth_methods_supported"])
    assert {"launch-ehr", "client-public", "client-confidential-asymmetric", "context-ehr-patient"} \
        <= set(config["capabilities"])
    assert ics.client.get("/fhir/.well-known/smart-configuration").json() == config
    security = ics.client.get("/fhir/metadata").json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {"authorize": config["authorization_endpoint"], "token": config["token_endpoint"],
                    "revoke": config["revocation_endpoint"]}


# -- authorisation code with PKCE (EHR launch) -------------------------------------------------------------

def test_ehr_launch_with_pkce_gives_a_token_for_the_launch_patient_only(registered: Ics) -> None:
    ics = registered
    token = _app_token(ics)
    assert token["patient"] == ics.okafor and token["token_type"] == "Bearer"
    assert token["scope"] == "launch patient/*.read" and 0 < token["expires_in"] <= 3600
    record = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=_bearer(token["access_token"]))
    assert record.status_code == 200
    assert {e["resource"]["resourceType"] for e in entries(record.json())} >= {"Patient", "Condition"}

    # The same user may open the stranger's record (a basis recorded), but this app's token may not.
    assert ics.client.post(f"/api/access/{ics.stranger}", json={"basis": "explicit-consent"},
                           headers=ics.token("dr.patel")).status_code == 201
    refused = ics.client.get(f"/fhir/Patient/{ics.stranger}/$everything", headers=_bearer(token["access_token"]))
    assert f"no patient {ics.stranger}" in _outcome(refused, 404)  # as if there were no such person
    search = ics.client.get(f"/fhir/Condition?patient={ics.stranger}", headers=_bearer(token["access_token"]))
    assert f"no patient {ics.stranger}" in _outcome(search, 404)


def test_a_patient_scoped_token_cannot_read_another_patients_resources_by_id(registered: Ics, db: Database) -> None:
    """Reads by id decide one resource without opening the whole record; the launch patient still bounds them."""
    ics = registered
    token = _bearer(_app_token(ics)["access_token"])
    assert ics.client.post(f"/api/access/{ics.stranger}", json={"basis": "explicit-consent"},
                           headers=ics.token("dr.patel")).status_code == 201
    theirs = ics.client.get(f"/fhir/Patient/{ics.stranger}/$everything", headers=ics.token("dr.patel")).json()
    clinical = next(e["resource"] for e in entries(theirs) if e["resource"]["resourceType"] != "Patient")
    own_url = f"/fhir/{clinical['resourceType']}/{clinical['id']}"
    assert ics.client.get(own_url, headers=ics.token("dr.patel")).status_code == 200  # the user may
    for url in (own_url, f"{own_url}/_history"):  # refused looks like missing (TRUST AC3)
        assert ics.client.get(url, headers=token).status_code == 404, url
    assert ics.client.get(f"/fhir/Patient/{ics.stranger}", headers=token).status_code == 404
    with db.session() as session:
        denied = [e for e in session.scalars(select(AuditEntry).where(AuditEntry.outcome == "deny"))
                  if "deny-patient-scope" in json.dumps(e.event)]
    assert len(denied) == 3 and {e.patient_id for e in denied} == {ics.stranger}


def test_the_refusal_for_another_patient_is_audited(registered: Ics, db: Database) -> None:
    token = _app_token(registered)
    registered.client.get(f"/fhir/Patient/{registered.stranger}/$everything", headers=_bearer(token["access_token"]))
    with db.session() as session:
        denied = session.scalars(select(AuditEntry).where(AuditEntry.outcome == "deny")).all()
        found = [(e.username, e.patient_id) for e in denied if "deny-patient-scope" in json.dumps(e.event)]
    assert found == [("dr.patel", registered.stranger)]


def test_a_wrong_code_verifier_is_refused_and_the_right_one_still_works_once(registered: Ics) -> None:
    ics = registered
    _sign_in(ics)
    verifier, challenge = _pkce()
    query = _approve(ics, _authorize_url(challenge, "user/*.read"))
    wrong = _redeem(ics, query["code"][0], _pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert "patient" not in (right := _redeem(ics, query["code"][0], verifier)).json()
    assert right.status_code == 200
    again = _redeem(ics, query["code"][0], verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"  # a code is used once


def test_a_code_redeemed_twice_at_once_gives_one_token(registered: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two redemptions of one code arriving together both found it before either spent it: each was given a
    token. Held at the point where both have found it, only one gets a token now."""
    ics = registered
    _sign_in(ics)
    verifier, challenge = _pkce()
    code = _approve(ics, _authorize_url(challenge, "user/*.read"))["code"][0]
    both_found_it = threading.Barrier(2, timeout=10)
    authenticate = oauth.CodeGrant.authenticate_user

    def after_both_found_it(grant: oauth.CodeGrant, found: Any) -> Any:
        both_found_it.wait()
        return authenticate(grant, found)

    monkeypatch.setattr(oauth.CodeGrant, "authenticate_user", after_both_found_it)
    answers: list[Any] = []
    redeemers = [threading.Thread(target=lambda: answers.append(_redeem(ics, code, verifier))) for _ in range(2)]
    for redeemer in redeemers:
        redeemer.start()
    for redeemer in redeemers:
        redeemer.join()
    assert sorted(a.status_code for a in answers) == [200, 400]
    assert [a.json()["error"] for a in answers if a.status_code == 400] == ["invalid_grant"]


def test_an_authorisation_request_without_pkce_s256_is_sent_back_as_an_error(registered: Ics) -> None:
    _sign_in(registered)
    response = registered.client.get(_authorize_url(None, "user/*.read"), follow_redirects=False)
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["invalid_request"] and "PKCE" in query["error_description"][0]
    plain = _authorize_url("x" * 43, "user/*.read").replace("code_challenge_method=S256", "code_challenge_method=plain")
    assert parse_qs(urlsplit(registered.client.get(plain, follow_redirects=False).headers["location"]).query)[
        "error"] == ["invalid_request"]


def test_an_unregistered_redirect_uri_gets_a_page_not_a_redirect(registered: Ics) -> None:
    _sign_in(registered)
    url = _authorize_url(_pkce()[1], "user/*.read").replace("tasks.example", "evil.example")
    response = registered.client.get(url, follow_redirects=False)
    assert response.status_code == 400 and "App sign-in refused" in response.text


def test_patient_scopes_without_a_launch_are_refused(registered: Ics) -> None:
    _sign_in(registered)
    response = registered.client.get(_authorize_url(_pkce()[1], "patient/*.read"), follow_redirects=False)
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["invalid_request"] and "EHR launch" in query["error_description"][0]


def test_signing_in_from_the_app_returns_to_the_approval_and_declining_tells_the_app(registered: Ics) -> None:
    ics = registered
    url = _authorize_url(_pkce()[1], "user/*.read")
    page = ics.client.get(url)
    assert page.status_code == 200 and 'action="/login"' in page.text and "Allow" not in page.text
    signed_in = ics.client.post("/login", data={"username": "dr.patel", "password": "demo", "target": url},
                                follow_redirects=False)
    assert signed_in.headers["location"] == url
    ics.client.get(url)
    declined = ics.client.post(url, data={"decision": "deny"}, follow_redirects=False)
    assert parse_qs(urlsplit(declined.headers["location"]).query)["error"] == ["access_denied"]


def test_a_launch_made_by_another_user_is_refused(registered: Ics) -> None:
    ics = registered
    _sign_in(ics)
    assert ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}).status_code == 201
    launch = _launch(ics, ics.okafor)
    _sign_in(ics, "dr.oconnor")
    response = ics.client.get(_authorize_url(_pkce()[1], "launch patient/*.read", launch), follow_redirects=False)
    assert "another user" in parse_qs(urlsplit(response.headers["location"]).query)["error_description"][0]


def test_a_launch_cannot_be_used_as_an_access_token_nor_made_before_a_basis(registered: Ics) -> None:
    ics = registered
    _sign_in(ics)
    before = ics.client.post("/oauth/launch", data={"client_id": APP, "patient": ics.okafor}, follow_redirects=False)
    assert before.headers["location"] == f"/record/{ics.okafor}"  # the basis form comes first
    assert ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}).status_code == 201
    launch = _launch(ics, ics.okafor)
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=_bearer(launch))
    assert _outcome(response, 401)


@pytest.mark.parametrize("aud", ["https://counterfeit.example/fhir", None])
def test_an_app_naming_another_fhir_server_is_sent_back_an_error(registered: Ics, aud: str | None) -> None:
    """SMART: the app names the FHIR server it will read (`aud`); one sent here by a counterfeit server (to
    collect the token) names that server, and is refused before anyone is asked to approve it."""
    _sign_in(registered)
    params = {"response_type": "code", "client_id": APP, "redirect_uri": REDIRECT, "scope": "user/*.read",
              "state": "xyz", "code_challenge": _pkce()[1], "code_challenge_method": "S256"}
    response = registered.client.get("/oauth/authorize?" + urlencode(params | ({"aud": aud} if aud else {})),
                                     follow_redirects=False)
    location = urlsplit(response.headers.get("location", ""))
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["error"] == ["invalid_request"] and "code" not in query
    assert query["error_description"] == ["aud must name this FHIR server, http://testserver/fhir"]


def test_with_a_public_url_a_backend_assertion_for_another_service_is_refused_whatever_the_host(
        registered: Ics, rsa_key: RSAKey) -> None:
    """A partner using one key with two services signs an assertion for each one's token endpoint. The
    audience was taken from the request's Host header, so ICS B's assertion sent here with `Host: ics-b`
    got a token. With SHAREDCARE_PUBLIC_URL the audience is that address, and discovery says so."""
    ics = registered
    public = "https://scr.example.nhs.uk"
    app_state = ics.client.app.state
    app_state.settings = replace(app_state.settings, public_url=public)
    discovery = ics.client.get("/.well-known/smart-configuration").json()
    assert discovery["token_endpoint"] == f"{public}/oauth/token"
    for_ics_b = _assertion(rsa_key, audience="http://ics-b.example/oauth/token")
    refused = _backend_token(ics, for_ics_b, host="ics-b.example")
    assert refused.status_code in (400, 401) and "access_token" not in refused.json()
    assert _backend_token(ics, _assertion(rsa_key, audience=TOKEN_URL)).status_code in (400, 401)
    assert _backend_token(ics, _assertion(rsa_key, audience=f"{public}/oauth/token")).status_code == 200


def test_an_approval_form_from_another_site_is_refused(registered: Ics) -> None:
    _sign_in(registered)
    url = _authorize_url(_pkce()[1], "user/*.read")
    response = registered.client.post(url, data={"decision": "approve"}, csrf=False, follow_redirects=False)
    assert response.status_code == 403 and "location" not in response.headers


# -- client credentials with a signed assertion (backend services) -----------------------------------------

def test_a_partner_backend_with_a_signed_assertion_reads_under_its_organisations_role(
        registered: Ics, rsa_key: RSAKey) -> None:
    ics = registered
    # signed as docs/api.md shows a partner, with Authlib's client helper
    assertion = private_key_jwt_sign(rsa_key, EPR, TOKEN_URL, alg="RS384", header={"kid": rsa_key.kid},
                                     expires_in=300)
    response = _backend_token(ics, assertion)
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["scope"] == "system/*.read" and token["expires_in"] == 300 and "patient" not in token
    headers = _bearer(token["access_token"])
    basis = ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}, headers=headers)
    assert basis.status_code == 201
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    assert any(e["resource"]["resourceType"] == "Condition" for e in entries(bundle))


def _queued(db: Database) -> list[tuple[str, str, str]]:
    with db.session() as s:
        return [(i.kind, i.username, i.person_id) for i in s.scalars(select(ReviewItem).order_by(ReviewItem.id))]


def test_an_ehr_launched_apps_reads_queue_nothing_for_ig(registered: Ics, db: Database) -> None:
    """The launch supplies the patient, but no basis: an app may not record one, and the user recorded it in
    the portal before launching, where it was judged (found by a search here: nothing queued). The app's reads
    are the user's, after that, and add nothing to the queue however many there are."""
    ics = registered
    _sign_in(ics)
    assert ics.client.post("/search", data={"nhs_number": OKAFOR_NHS}).status_code == 200
    token = _app_token(ics)
    for _ in range(3):
        read = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=_bearer(token["access_token"]))
        assert read.status_code == 200
    assert _queued(db) == []


def test_a_backend_opening_a_record_by_id_alone_is_queued_and_after_its_search_is_not(
        registered: Ics, rsa_key: RSAKey, db: Database) -> None:
    """A partner system finds a patient as a user does, by the NHS number its own records hold (a Patient search,
    audited under its name); a basis for an id it did not find that way is queued like a user's."""
    ics = registered
    headers = _bearer(_backend_token(ics, _assertion(rsa_key)).json()["access_token"])
    found = ics.client.post("/fhir/Patient/_search", data={"identifier": OKAFOR_NHS}, headers=headers)
    assert found.status_code == 200 and entries(found.json())
    for person in (ics.okafor, ics.stranger):
        basis = ics.client.post(f"/api/access/{person}", json={"basis": "explicit-consent"}, headers=headers)
        assert basis.status_code == 201
    assert _queued(db) == [("opened-by-id", f"client:{EPR}", ics.stranger)]


def test_an_es384_key_works_too(registered: Ics, db: Database, framework: Framework) -> None:
    key = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
    with db.session() as session:
        add_client(session, framework, "ec-system", "EC system", "backend", by="cli", organisation="RYC",
                   role="district_nurse", jwks=KeySet([key]).as_dict(private=False))
    assert _backend_token(registered, _assertion(key, "ES384", "ec-system")).status_code == 200


@pytest.mark.parametrize("problem", ["wrong key", "expired", "too long", "rs256", "other audience"])
def test_a_bad_assertion_gets_no_token(registered: Ics, rsa_key: RSAKey, problem: str) -> None:
    if problem == "wrong key":
        assertion = _assertion(RSAKey.generate_key(2048, parameters={"kid": rsa_key.kid}))
    elif problem == "expired":
        assertion = _assertion(rsa_key, expires_in=-120)
    elif problem == "too long":
        assertion = _assertion(rsa_key, expires_in=3600)
    elif problem == "rs256":
        assertion = _assertion(rsa_key, alg="RS256")
    else:
        now = int(time.time())
        assertion = jose_jwt.encode({"alg": "RS384", "kid": rsa_key.kid},
                                    {"iss": EPR, "sub": EPR, "aud": "https://elsewhere.example/token",
                                     "exp": now + 60, "jti": "x"}, rsa_key, algorithms=["RS384"])
    response = _backend_token(registered, assertion)
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client", response.text
    assert "access_token" not in response.json()


def test_a_replayed_assertion_is_refused(registered: Ics, rsa_key: RSAKey) -> None:
    assertion = _assertion(rsa_key)
    assert _backend_token(registered, assertion).status_code == 200
    replay = _backend_token(registered, assertion)
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"


def test_a_backend_may_not_ask_for_user_or_patient_scopes(registered: Ics, rsa_key: RSAKey) -> None:
    response = _backend_token(registered, _assertion(rsa_key), scope="user/*.read")
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


def test_a_backend_of_a_suspended_organisation_gets_nothing(registered: Ics, rsa_key: RSAKey, db: Database,
                                                           framework: Framework) -> None:
    ics = registered
    earlier = _bearer(_backend_token(ics, _assertion(rsa_key)).json()["access_token"])
    assert ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"},
                           headers=earlier).status_code == 201
    with db.session() as session:
        set_agreement(session, framework, "RXR", "suspended", by="test", reason="a breach reported")
    refused = _backend_token(ics, _assertion(rsa_key))
    assert refused.status_code == 403 and refused.json()["error"] == "unauthorized_client"
    assert "suspended" in refused.json()["error_description"] and "access_token" not in refused.json()
    read = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=earlier)  # cut off by the suspension
    assert "(RXR) information-sharing agreement was suspended" in _outcome(read, 401)
    with db.session() as session:
        sign_ins = session.scalars(select(AuditEntry).where(AuditEntry.username == f"client:{EPR}",
                                                            AuditEntry.action == "auth:session:login")
                                      .order_by(AuditEntry.seq)).all()
    assert [e.outcome for e in sign_ins] == ["permit", "deny"]


def test_a_removed_backend_clients_token_stops_working(registered: Ics, rsa_key: RSAKey, db: Database) -> None:
    from sharedcare.store.models import OAuthClient

    headers = _bearer(_backend_token(registered, _assertion(rsa_key)).json()["access_token"])
    with db.session() as session:
        session.delete(session.get_one(OAuthClient, EPR))
    response = registered.client.get(f"/fhir/Patient/{registered.okafor}/$everything", headers=headers)
    assert "no longer registered" in _outcome(response, 401)


def test_a_removed_apps_tokens_stop_working_on_their_next_request(registered: Ics, db: Database) -> None:
    """A public app's token names its user, not the app's registration: the app being removed must still
    cut every token it holds off at once (not one revocation at a time), audited."""
    from sharedcare.store.models import OAuthClient

    headers = _bearer(_app_token(registered)["access_token"])
    everything = f"/fhir/Patient/{registered.okafor}/$everything"
    assert registered.client.get(everything, headers=headers).status_code == 200
    with db.session() as session:
        session.delete(session.get_one(OAuthClient, APP))
    assert "no longer registered" in _outcome(registered.client.get(everything, headers=headers), 401)
    with db.session() as session:
        refusal = session.scalars(select(AuditEntry).where(AuditEntry.action == "auth:token:refused")
                                  .order_by(AuditEntry.seq.desc())).first()
    assert refusal is not None and refusal.username == "dr.patel" and refusal.outcome == "deny"
    # the user's own portal session was never the app's: it still works
    assert registered.client.get(f"/record/{registered.okafor}").status_code == 200


def _into_the_next_second() -> None:
    """Wait until the clock is past its next whole second (at most a second; a fixed 1.1 s waited longer)."""
    time.sleep(1.01 - time.time() % 1)


def test_an_app_removed_and_registered_again_does_not_bring_back_its_old_tokens(registered: Ics, db: Database,
                                                                                framework: Framework) -> None:
    """Removing a compromised app and registering it again (new redirect URI, say) must leave the tokens
    the old registration issued cut off; the new registration's tokens work."""
    from sharedcare.governance.clients import remove_client

    old = _bearer(_app_token(registered)["access_token"])
    everything = f"/fhir/Patient/{registered.okafor}/$everything"
    assert registered.client.get(everything, headers=old).status_code == 200
    _into_the_next_second()  # the token's iat is whole seconds; the new registration must come after its second
    with db.session() as session:
        remove_client(session, APP, by="cli")
        add_client(session, framework, APP, "Ward tasks", "public", by="cli", redirect_uris=[REDIRECT],
                   launch_uri=LAUNCH_URI)
    assert "no longer registered" in _outcome(registered.client.get(everything, headers=old), 401)
    _into_the_next_second()
    new = _bearer(_app_token(registered)["access_token"])
    assert registered.client.get(everything, headers=new).status_code == 200
    assert registered.client.get(everything, headers=old).status_code == 401


# -- tokens refused -----------------------------------------------------------------------------------------

def test_a_token_without_the_scope_for_a_type_gets_none_of_it(ics: Ics) -> None:
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    observations_only = _bearer(mint_token(load_settings(), fw, "dr.patel", "user/Observation.rs"))
    ics.open_record("dr.patel")
    search = ics.client.post("/fhir/Patient/_search", data={"identifier": "https://fhir.nhs.uk/Id/nhs-number|9434765919"},
                             headers=observations_only)
    assert "(rule deny-scope)" in _outcome(search, 403)
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=observations_only).json()
    assert {e["resource"]["resourceType"] for e in entries(bundle)} <= {"Observation"}


def test_an_expired_token_is_refused(ics: Ics) -> None:
    settings = load_settings()
    past = utcnow() - timedelta(minutes=5)
    expired = pyjwt.encode({"iss": "sharedcare", "sub": "dr.patel", "scope": "user/*.read", "jti": "j1",
                            "iat": past - timedelta(hours=1), "exp": past}, settings.secret, algorithm="HS256")
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=_bearer(expired))
    assert "expired" in _outcome(response, 401)


def test_a_token_accepted_while_valid_is_refused_once_it_expires(ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    token = ics.open_record("dr.patel")
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=token).status_code == 200
    later = utcnow() + timedelta(minutes=load_settings().token_minutes + 1)
    monkeypatch.setattr("sharedcare.api.auth.utcnow", lambda: later)
    assert "expired" in _outcome(ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=token), 401)


def test_a_token_signed_with_another_key_is_refused(ics: Ics) -> None:
    key = RSAKey.generate_key(2048)
    forged = jose_jwt.encode({"alg": "RS256"}, {"iss": "sharedcare", "sub": "dr.patel", "scope": "user/*.read",
                                                "jti": "j2", "exp": int(time.time()) + 600}, key)
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=_bearer(forged))
    assert "not valid" in _outcome(response, 401)


def test_a_revoked_app_token_is_refused_and_only_its_client_may_revoke_it(registered: Ics,
                                                                          rsa_key: RSAKey) -> None:
    ics = registered
    token = _app_token(ics)["access_token"]
    headers = _bearer(token)
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 200
    other = ics.client.post("/oauth/revoke", data={"token": token, "client_assertion_type": ASSERTION_TYPE,
                                                   "client_assertion": _assertion(rsa_key)})
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 200
    revoked = ics.client.post("/oauth/revoke", data={"token": token, "client_id": APP})
    assert revoked.status_code == 200
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers)
    assert "revoked" in _outcome(response, 401)
    assert ics.client.post("/oauth/revoke", data={"token": "not-a-token", "client_id": APP}).status_code == 200


def test_portal_sign_out_revokes_the_session_token(ics: Ics) -> None:
    _sign_in(ics)
    session_token = ics.client.cookies["sc_session"]
    assert ics.client.get("/search").status_code == 200
    ics.client.post("/logout", data={"target": "/"}, follow_redirects=False)
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=_bearer(session_token))
    assert "revoked" in _outcome(response, 401)
    ics.client.cookies.set("sc_session", session_token)  # a copy of the old cookie
    assert ics.client.get("/search").status_code == 401


# -- registering clients -------------------------------------------------------------------------------

def test_clients_are_registered_and_listed_with_the_cli(db: Database, tmp_path: Path, rsa_key: RSAKey,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    runner = CliRunner()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(KeySet([rsa_key]).as_dict(private=False)))
    added = runner.invoke(cli, ["clients", "add", EPR, "--name", "Riverside EPR", "--kind", "backend",
                                "--organisation", "RXR", "--role", "acute_clinician", "--jwks", str(jwks)])
    assert added.exit_code == 0, added.output
    private = tmp_path / "private.json"
    private.write_text(json.dumps(KeySet([rsa_key]).as_dict(private=True)))
    refused = runner.invoke(cli, ["clients", "add", "leaky", "--name", "Leaky", "--kind", "backend",
                                  "--organisation", "RXR", "--role", "acute_clinician", "--jwks", str(private)])
    assert refused.exit_code == 2 and "no private parts" in refused.stderr
    no_org = runner.invoke(cli, ["clients", "add", "x", "--name", "X", "--kind", "backend", "--organisation",
                                 "NOPE", "--role", "gp", "--jwks", str(jwks)])
    assert no_org.exit_code == 2 and "--organisation: 'NOPE'" in no_org.stderr
    sneaky = runner.invoke(cli, ["clients", "add", "sneaky", "--name", "S", "--kind", "public", "--redirect-uri",
                                 "https://a.example/cb; script-src *"])
    assert sneaky.exit_code == 2 and "--redirect-uri" in sneaky.stderr
    app = runner.invoke(cli, ["clients", "add", APP, "--name", "Ward tasks", "--kind", "public",
                              "--redirect-uri", REDIRECT])
    assert app.exit_code == 0, app.output
    listed = json.loads(runner.invoke(cli, ["clients", "list", "--json"]).stdout)
    assert [(c["client_id"], c["kind"], c["organisation"], c["scope"]) for c in listed] == [
        (EPR, "backend", "RXR", "system/*.read"), (APP, "public", None, "launch patient/*.read user/*.read")]
    with db.session() as session:  # each registration audited, as the operator's, naming what it may do
        added_entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "governance:client:add")
                                        .order_by(AuditEntry.seq)).all()
    assert [(e.username, e.outcome) for e in added_entries] == [("cli", "permit"), ("cli", "permit")]
    assert [{d["type"]: d["valueString"] for x in e.event["entity"] if x.get("name") == "decision"
             for d in x["detail"]}["client_id"] for e in added_entries] == [EPR, APP]


def test_an_app_removed_with_the_cli_is_cut_off_and_the_removal_audited(
        registered: Ics, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    headers = _bearer(_app_token(registered)["access_token"])
    everything = f"/fhir/Patient/{registered.okafor}/$everything"
    assert registered.client.get(everything, headers=headers).status_code == 200
    runner = CliRunner()
    removed = runner.invoke(cli, ["clients", "remove", APP])
    assert removed.exit_code == 0, removed.output
    assert "no longer registered" in _outcome(registered.client.get(everything, headers=headers), 401)
    assert APP not in [c["client_id"] for c in json.loads(runner.invoke(cli, ["clients", "list", "--json"]).stdout)]
    _, challenge = _pkce()  # and it gets no new token: the approval page does not know it
    assert registered.client.get(_authorize_url(challenge, "launch patient/*.read")).status_code != 200
    with db.session() as session:
        (entry,) = session.scalars(select(AuditEntry).where(AuditEntry.action == "governance:client:remove")).all()
    assert (entry.username, entry.outcome) == ("cli", "permit")
    assert {d["type"]: d["valueString"] for e in entry.event["entity"] if e.get("name") == "decision"
            for d in e["detail"]}["client_id"] == APP
    again = runner.invoke(cli, ["clients", "remove", APP])
    assert again.exit_code == 2 and f"no client '{APP}'" in again.stderr


def test_oauth_over_plain_http_is_refused(registered: Ics, rsa_key: RSAKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT")
    response = _backend_token(registered, _assertion(rsa_key))
    assert response.status_code == 400 and response.json()["error"] == "insecure_transport"


@pytest.mark.parametrize("wanted", ["system/*.*", "system/*.write", "system/Condition.cu", "system/*.cruds"])
def test_a_read_only_backend_cannot_ask_for_a_write_scope(registered: Ics, rsa_key: RSAKey, wanted: str) -> None:
    response = _backend_token(registered, _assertion(rsa_key), scope=wanted)
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope", response.text
    assert "access_token" not in response.json()


@pytest.mark.parametrize(("wanted", "given"), [("system/Condition.cu", False), ("system/Condition.write", False),
                                              ("system/Condition.u", False), ("system/Condition.c", True),
                                              ("system/Condition.rs", True)])
def test_a_backend_registered_to_create_only_is_never_given_an_update_scope(
        ics: Ics, db: Database, framework: Framework, rsa_key: RSAKey, wanted: str, given: bool) -> None:
    """Review 3, F6: SMART v2 keeps create (`c`) and update (`u`) apart, so a registration for `.c` must not
    yield `.cu` or v1 `.write` (create and update), which would let the backend change what it did not make."""
    with db.session() as session:
        add_client(session, framework, EPR, "Riverside Hospital EPR", "backend", by="cli", organisation="RXR",
                   role="acute_clinician", jwks=KeySet([rsa_key]).as_dict(private=False),
                   scope="system/Condition.rs system/Condition.c")
    response = _backend_token(ics, _assertion(rsa_key), scope=wanted)
    assert (response.status_code == 200) is given, response.text
    if not given:
        assert response.json()["error"] == "invalid_scope"


def test_an_app_asking_for_write_scopes_is_given_only_the_reads_it_is_registered_for(registered: Ics) -> None:
    token = _app_token(registered, scope="launch patient/*.cruds patient/*.write user/*.*")
    granted = token["scope"].split()
    assert "patient/*.cruds" not in granted and "patient/*.write" not in granted and "user/*.*" not in granted
    assert all(word == "launch" or word.endswith((".read", ".rs", ".r", ".s")) for word in granted), granted


def test_a_read_through_an_app_names_the_app_as_well_as_the_user_in_the_audit(registered: Ics, db: Database) -> None:
    token = _bearer(_app_token(registered)["access_token"])
    assert registered.client.get(f"/fhir/Patient/{registered.okafor}/$everything", headers=token).status_code == 200
    with db.session() as session:
        event = session.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:record:read")
                                .order_by(AuditEntry.seq.desc())).first()
    assert event is not None and event.username == "dr.patel"
    agents = [(a["who"]["identifier"]["value"], a["requestor"]) for a in event.event["agent"]]
    assert agents == [("dr.patel", True), (APP, False)]
    on_behalf_of = [a["extension"][0]["valueReference"]["identifier"]["value"] for a in event.event["agent"]]
    assert on_behalf_of == ["P81001", "dr.patel"]  # the user for their practice, the app for the user
    portal = registered.open_record("dr.patel")  # the clinician's own read names no app
    registered.client.get(f"/fhir/Patient/{registered.okafor}/$everything", headers=portal)
    with db.session() as session:
        own = session.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:record:read")
                              .order_by(AuditEntry.seq.desc())).first()
    assert own is not None and len(own.event["agent"]) == 1


# -- failed token requests cannot flood the audit log (test_sign_in_floods.py for staff and citizens) -------

def test_failed_token_requests_are_audited_within_the_limit_and_write_nothing_else(
        registered: Ics, db: Database, rsa_key: RSAKey) -> None:
    for _ in range(60):
        refused = registered.client.post("/oauth/token", data={
            "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": "x.y.z"})
        assert refused.status_code in (400, 401)
    assert [(e.outcome, e.username) for e in _sign_ins(db)] == [("deny", "client:(unknown)")] * 20
    assert _backend_token(registered, _assertion(rsa_key)).status_code == 200
    assert [(e.outcome, e.username) for e in _sign_ins(db)][-1] == ("permit", "client:rxr-epr")


def test_expired_rows_are_purged_after_a_grant_at_most_once_a_minute(
        registered: Ics, db: Database, rsa_key: RSAKey, monkeypatch: pytest.MonkeyPatch) -> None:
    def seen() -> set[str]:
        with db.session() as s:
            return set(s.scalars(select(SeenAssertion.jti)))

    monkeypatch.setattr(tokens, "_last_purge", float("-inf"))
    assert _backend_token(registered, _assertion(rsa_key, expires_in=1, jti="short")).status_code == 200
    monkeypatch.setattr(tokens, "PURGE_AFTER", tokens.timedelta(seconds=-5))  # as if it expired long ago
    assert _backend_token(registered, _assertion(rsa_key, jti="second")).status_code == 200
    assert seen() == {"short", "second"}  # within the minute: not purged again
    monkeypatch.setattr(tokens, "_last_purge", float("-inf"))  # a minute on
    registered.client.post("/oauth/token", data={"grant_type": "client_credentials",
                                                 "client_assertion_type": ASSERTION_TYPE,
                                                 "client_assertion": "x.y.z"})
    assert seen() == {"short", "second"}  # a refused request purges nothing (it writes no more than its audit)
    assert _backend_token(registered, _assertion(rsa_key, jti="third")).status_code == 200
    assert seen() == {"second", "third"}  # the expired one forgotten after the next grant


def test_an_app_gets_no_token_for_a_user_whose_organisation_was_suspended(registered: Ics, db: Database,
                                                                          framework: Framework) -> None:
    """The practice's agreement is suspended between the GP approving the app and the app redeeming its code:
    no token is issued; and the approval page, asked again with the session the GP still holds, is the
    sign-in (which refuses her), never the approval."""
    ics = registered
    _sign_in(ics)
    assert ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}).status_code == 201
    verifier, challenge = _pkce()
    url = _authorize_url(challenge, "launch patient/*.read", _launch(ics, ics.okafor))
    query = _approve(ics, url)
    with db.session() as session:
        set_agreement(session, framework, "P81001", "suspended", by="test", reason="a breach reported")
    refused = _redeem(ics, query["code"][0], verifier)
    assert refused.status_code == 403 and refused.json()["error"] == "unauthorized_client"
    assert "P81001" in refused.json()["error_description"] and "access_token" not in refused.json()
    page = ics.client.get(url)
    assert "Allow Ward tasks" not in page.text and 'name="password"' in page.text
    assert ics.client.post(url, data={"decision": "approve"}, follow_redirects=False).status_code == 401
