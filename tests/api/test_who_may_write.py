"""Who may write to the shared record: the framework's `clinical:record:write`, per role, whatever the token.

Review (API security, 2026-12-07, finding 1): writing depended on scopes and organisation only, so a receptionist
(admin staff, summary tier 0) with a write token, or an app registered for write scopes that she approved on a
page headed "read records", withdrew the GP's diabetes diagnosis as entered-in-error.
"""

from __future__ import annotations

import json

import pytest
from joserfc.jwk import KeySet, RSAKey
from tests.api import test_smart as smart
from tests.api.test_fhir_write import _write_events
from tests.builders import condition
from tests.fhir_bundles import entries
from tests.small_ics import Ics

from sharedcare.api.auth import mint_token, sign_token
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.errors import SharedcareError
from sharedcare.governance.clients import add_client
from sharedcare.governance.explain import rules_in_words
from sharedcare.governance.framework import Framework
from sharedcare.store.database import Database
from sharedcare.store.models import OAuthClient

FHIR_JSON = {"Content-Type": "application/fhir+json"}
WITHDRAWN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                         "code": "entered-in-error"}]}


def _withdrawal() -> str:
    return json.dumps(condition("gp-c1", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus",
                                verificationStatus=WITHDRAWN))


def _diabetes_shown(ics: Ics) -> bool:
    bundle = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&code=44054006",
                            headers=ics.open_record("dr.oconnor")).json()
    return len(entries(bundle)) == 1


def test_a_receptionist_with_a_write_token_cannot_withdraw_the_gps_diagnosis(ics: Ics, db: Database) -> None:
    """A token naming write scopes for admin staff (signed before the framework said otherwise, or by hand): the
    write is refused on her role, audited, and the diagnosis stays in the record."""
    token = sign_token(load_settings(), {"sub": "admin.taylor", "role": "admin_staff", "org": "P81001",
                                         "scope": "user/*.read user/*.write"})
    headers = {"Authorization": f"Bearer {token}", **FHIR_JSON}
    response = ics.client.put("/fhir/Condition/gp-c1", headers=headers, content=_withdrawal())
    assert response.status_code == 403, response.text
    assert "Administrative staff" in response.json()["issue"][0]["diagnostics"]
    assert ics.client.post("/fhir/Condition", headers=headers, content=_withdrawal()).status_code == 403
    assert _write_events(db) == [("deny", "deny-write-role")] * 2
    assert _diabetes_shown(ics)


def test_the_gp_still_withdraws_her_own_diagnosis(ics: Ics) -> None:
    """Control: a role the framework lets write does."""
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {mint_token(load_settings(), fw, 'dr.patel', 'user/*.write')}",
               **FHIR_JSON}
    assert ics.client.put("/fhir/Condition/gp-c1", headers=headers, content=_withdrawal()).status_code == 200
    assert not _diabetes_shown(ics)


def test_no_write_token_is_minted_for_a_role_that_may_not_write(framework: Framework) -> None:
    with pytest.raises(SharedcareError, match="may not write"):
        mint_token(load_settings(), framework, "admin.taylor", "user/*.read user/*.write")
    with pytest.raises(SharedcareError, match="may not write"):
        mint_token(load_settings(), framework, "pharm.khan", "user/Condition.c")
    assert mint_token(load_settings(), framework, "admin.taylor", "user/*.read")


def test_a_user_facing_app_is_not_registered_for_write_scopes(db: Database, framework: Framework) -> None:
    with db.session() as session, pytest.raises(SharedcareError, match="--scope: a user-facing app is not given"):
        add_client(session, framework, smart.APP, "Ward tasks", "public", by="cli", redirect_uris=[smart.REDIRECT],
                   scope="launch user/*.read user/*.write")


def test_a_backend_is_registered_for_write_scopes_only_in_a_role_that_may_write(
        db: Database, framework: Framework) -> None:
    jwks = KeySet([RSAKey.generate_key(2048, parameters={"kid": "k1"})]).as_dict(private=False)
    with db.session() as session, pytest.raises(SharedcareError, match="--scope: the role admin_staff may not write"):
        add_client(session, framework, "desk", "Reception desk", "backend", by="cli", organisation="P81001",
                   role="admin_staff", jwks=jwks, scope="system/*.read system/*.write")
    with db.session() as session:
        add_client(session, framework, "epr", "EPR", "backend", by="cli", organisation="RXR",
                   role="acute_clinician", jwks=jwks, scope="system/*.read system/*.write")


@pytest.mark.parametrize("username", ["admin.taylor", "dr.patel"])
def test_an_app_registered_for_write_scopes_before_gets_only_reads_and_the_page_says_it_asked(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch, username: str) -> None:
    """An app registered for write scopes before they were refused to apps (the reviewer's "Ward tasks"): the
    approval page names what it asked for, it is given only its reads, and its write is refused."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    with db.session() as session:
        session.add(OAuthClient(client_id=smart.APP, name="Ward tasks", kind="public",
                                scope="launch user/*.read user/*.write", redirect_uris=[smart.REDIRECT],
                                launch_uri=smart.LAUNCH_URI, created_at=utcnow().replace(year=2025)))
    smart._sign_in(ics, username)
    verifier, challenge = smart._pkce()
    url = smart._authorize_url(challenge, "user/*.read user/*.write")
    page = ics.client.get(url)
    assert "Ward tasks also asked to add to and change records" in page.text
    assert "it will only read" in page.text and "write" not in page.text.lower().split("<h1>")[1].split("</h1>")[0]
    query = smart._approve(ics, url)
    token = smart._redeem(ics, query["code"][0], verifier).json()
    assert token["scope"] == "user/*.read"
    ics.client.cookies.clear()
    headers = {"Authorization": f"Bearer {token['access_token']}", **FHIR_JSON}
    response = ics.client.put("/fhir/Condition/gp-c1", headers=headers, content=_withdrawal())
    assert response.status_code == 403 and "write scope" in response.json()["issue"][0]["diagnostics"]
    assert _diabetes_shown(ics)


def test_the_framework_says_in_words_which_roles_may_write(framework: Framework) -> None:
    (line,) = [w for w in rules_in_words(framework) if "may add to or change the record" in w]
    assert "GP" in line and "Hospital clinician" in line and "Administrative staff" not in line
    assert "Community pharmacist" not in line and "apps staff approve only read" in line
