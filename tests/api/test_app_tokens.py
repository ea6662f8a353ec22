"""A token issued to an app grants what its scopes say and nothing else: no portal page, no IG function, no
point-of-care basis (security review, 2026-12-06). And recording a basis answers a patient the caller may
not know of as missing, whatever the form holds (TRUST AC3)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from tests.small_ics import Ics

from sharedcare.api.auth import mint_token
from sharedcare.governance.access_log import details
from sharedcare.governance.clients import add_client
from sharedcare.governance.framework import Framework
from sharedcare.governance.workspace import CitizenWorkspace
from sharedcare.store.database import Database
from sharedcare.store.models import AgreementChange, AuditEntry


@pytest.fixture(autouse=True)
def _registered(ics: Ics, db: Database, framework: Framework) -> None:
    """The app the tokens name is registered (a token naming an unregistered app is refused anyway)."""
    with db.session() as session:
        add_client(session, framework, "ward-tasks", "Ward tasks", "public", by="cli",
                   redirect_uris=["https://tasks.example/callback"], launch_uri="https://tasks.example/launch")


def _app(ics: Ics, username: str, scope: str, **extra: str) -> dict[str, str]:
    """A token as /oauth/token issues it to an app (`client_id`; `patient` for an EHR launch)."""
    app = ics.client.app
    token = mint_token(app.state.settings, app.state.framework, username, scope,  # type: ignore[attr-defined]
                       client_id="ward-tasks", **extra)
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("method", "path", "form"), [
    ("GET", "/ig", None), ("GET", "/ig/audit", None), ("POST", "/ig/agreements/RXR", {"status": "suspended"}),
    ("POST", "/ig/choices", {"nhs_number": "9434765919"}), ("GET", "/search", None),
    ("POST", "/record/{okafor}/basis", {"basis": "implied-consent", "reason": "reviewing before clinic today"}),
])
def test_an_app_token_opens_no_portal_or_ig_page_whatever_its_scopes(ics: Ics, db: Database, method: str,
                                                                     path: str, form: dict[str, str] | None) -> None:
    """An IG officer who approved an app for one patient's Observations has not given it the audit log or the
    agreements; the bearer header that stands in for a CSRF token does not make it a person signed in."""
    headers = _app(ics, "ig.morgan", "launch patient/Observation.read", patient=ics.okafor)
    if "/record/" in path:
        headers = _app(ics, "dr.patel", "user/*.read")
    answer = ics.client.request(method, path.format(okafor=ics.okafor), data=form, headers=headers,
                                follow_redirects=False)
    assert answer.status_code == 401 and "apps may not use the portal" in answer.text
    with db.session() as s:
        assert s.scalars(select(AgreementChange)).all() == []  # no agreement suspended
        refused = s.scalars(select(AuditEntry).where(AuditEntry.action == "auth:token:refused")).all()
    assert [e.outcome for e in refused] == ["deny"]
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=ics.token("dr.oconnor")).status_code != 403


def test_a_clinicians_app_cannot_record_a_basis_but_a_partners_backend_system_can(ics: Ics, db: Database) -> None:
    glass = {"basis": "emergency", "reason": "unconscious in ED, needs allergy history now"}
    refused = ics.client.post(f"/api/access/{ics.stranger}", json=glass,
                              headers=_app(ics, "dr.oconnor", "user/Observation.read"))
    assert refused.status_code == 403
    assert "an app may not record why you are opening a record" in refused.json()["issue"][0]["diagnostics"]
    with db.session() as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action == "access:basis:record")).all()
    assert [(e.username, e.outcome, details(e)["rule"]) for e in entries] == [("dr.oconnor", "deny", "deny-basis-app")]
    # the same user in the portal, signed in themselves, records it (tests/api/test_smart.py: a backend may too)
    signed_in = ics.client.post(f"/api/access/{ics.stranger}", json=glass, headers=ics.token("dr.oconnor"))
    assert signed_in.status_code == 201


def test_recording_a_basis_answers_a_patient_the_caller_may_not_know_of_as_missing_whatever_the_form_holds(
        ics: Ics, db: Database, framework: Framework) -> None:
    with db.session() as s:
        CitizenWorkspace(s, framework, ics.okafor).set_choice("object-org", "RXR")
    short = {"basis": "implied-consent", "reason": "x"}
    for person in (ics.okafor, str(uuid.uuid4())):  # objected to the caller's organisation; never stored
        answer = ics.client.post(f"/api/access/{person}", json=short, headers=ics.token("dr.oconnor"))
        assert answer.status_code == 404, person
    launched = _app(ics, "dr.patel", "launch patient/*.read", patient=ics.okafor)
    for person in (ics.stranger, str(uuid.uuid4())):  # outside the launch patient; never stored
        answer = ics.client.post(f"/api/access/{person}", json=short, headers=launched)
        assert answer.status_code == 404, person
    # a caller-level refusal still says what to do once the form is right (an agreement, a role)
    assert ics.client.post(f"/api/access/{ics.stranger}", json=short,
                           headers=ics.token("dr.oconnor")).status_code == 400


def test_a_patient_wildcard_beside_a_narrow_user_scope_widens_nothing(ics: Ics) -> None:
    """`launch patient/*.read user/Observation.read`: not patient-only (so any patient with a basis), and
    then only Observations; the patient/ wildcard must not lift the type limit for every other patient."""
    ics.open_record("dr.patel", person=ics.stranger)
    headers = _app(ics, "dr.patel", "launch patient/*.read user/Observation.read", patient=ics.okafor)
    everything = ics.client.get(f"/fhir/Patient/{ics.stranger}/$everything", headers=headers)
    kinds = {e["resource"]["resourceType"] for e in everything.json().get("entry", [])}
    assert everything.status_code == 200 and kinds <= {"Observation", "OperationOutcome"}, kinds
    allergies = ics.client.get(f"/fhir/AllergyIntolerance?patient={ics.stranger}", headers=headers)
    assert allergies.status_code == 403
