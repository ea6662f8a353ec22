"""Reads made with a token an operator minted (`sharedcare token`) are audited under the user's name, marked
as such: the AuditEvent names the operator account as a second agent, in the role of the authorisation
server, and the token's id on both agents (IHE BALP's `urn:ietf:params:oauth:jti:`); the IG officer's search
shows it; the citizen is told in words that the person named did not sign in themselves. A read with the
user's own session is not marked."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from tests.conftest import FRAMEWORK_PATH
from tests.export.conftest import ASYNC, wait_for
from tests.portal.test_patient_portal import _sign_in as citizen_sign_in
from tests.portal.test_patient_portal import visit_rows
from tests.small_ics import Ics
from typer.testing import CliRunner

from sharedcare.api.auth import read_token
from sharedcare.cli import app
from sharedcare.config import load_settings
from sharedcare.export.jobs import ExportJobs
from sharedcare.governance.access_log import MINTED_WORDS
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.audit import AuditAction, minted_by
from sharedcare.governance.framework import Framework
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

NOT_THEMSELVES = MINTED_WORDS.split(", ")[-1]  # the words past the apostrophe the page escapes


def _reads(db: Database) -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.RECORD_READ.value,
                                                      AuditEntry.username == "dr.patel").order_by(AuditEntry.seq)))


def test_a_read_with_an_operator_minted_token_is_marked_in_the_audit_the_ig_search_and_the_citizens_log(
        deployment_keys: None, ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    monkeypatch.setenv("USER", "ops.jones")
    minted = CliRunner().invoke(app, ["token", "--user", "dr.patel"])
    assert minted.exit_code == 0, minted.output
    token = minted.stdout.strip()
    jti = read_token(load_settings(), token)["jti"]
    headers = {"Authorization": f"Bearer {token}"}
    assert ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"},
                           headers=headers).status_code == 201
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 200
    own = ics.open_record("dr.patel", found=False)  # the GP's own token, as the portal's session is
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=own).status_code == 200

    with_minted, with_own = _reads(db)
    assert minted_by(with_minted.event) == ("cli:ops.jones", jti) and minted_by(with_own.event) is None
    user_agent, minter = with_minted.event["agent"]
    assert user_agent["who"]["identifier"]["value"] == "dr.patel" and user_agent["requestor"] is True
    assert user_agent["policy"] == [f"urn:ietf:params:oauth:jti:{jti}"] == minter["policy"]
    assert minter["type"]["coding"][0]["code"] == "authserver" and minter["requestor"] is False
    assert "policy" not in with_own.event["agent"][0]

    ics.client.post("/login", data={"username": "ig.morgan", "password": "demo", "target": "/ig"})
    found = ics.client.post("/ig/audit", data={"user": "dr.patel"}).text
    assert found.count(f"with a token minted by cli:ops.jones (token {jti})") == 2  # the basis and the read
    assert found.count("Not signed in") == 2
    ics.client.cookies.clear()

    citizen_sign_in(ics.client)
    rows = visit_rows(ics.client.get("/patient/accesses").text)
    patel = [row for row in rows if "Dr Amara Patel" in row]  # looks with the minted token and with her own: apart
    assert len(patel) == 2 and [NOT_THEMSELVES in row for row in patel] == [False, True]  # newest first
    assert all("See each recorded event (2)" in row for row in patel)  # the basis and the read, each
    assert "ops.jones" not in "".join(rows)


def _mint(db: Database, monkeypatch: pytest.MonkeyPatch, user: str) -> tuple[dict[str, str], str]:
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    monkeypatch.setenv("USER", "ops.jones")
    minted = CliRunner().invoke(app, ["token", "--user", user])
    assert minted.exit_code == 0, minted.output
    token = minted.stdout.strip()
    return {"Authorization": f"Bearer {token}"}, read_token(load_settings(), token)["jti"]


def test_the_ig_officers_looks_with_a_minted_token_are_marked_and_the_patient_is_told(
        deployment_keys: None, ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The review queue's look-up of whose record it was, and the audit search, made with a `sharedcare
    token` for ig.morgan, name the operator who minted it; the patient reads that she did not sign in."""
    ics.open_record("dr.oconnor", basis="emergency", reason="unconscious in resus")
    headers, jti = _mint(db, monkeypatch, "ig.morgan")
    assert "OKAFOR, Emeka" in ics.client.get("/ig", headers=headers).text
    assert ics.client.post("/ig/audit", data={"user": "dr.oconnor"}, headers=headers).status_code == 200
    with db.session() as s:
        looks = s.scalars(select(AuditEntry).where(AuditEntry.username == "ig.morgan", AuditEntry.action.in_(
            [AuditAction.DEMOGRAPHICS_READ.value, AuditAction.AUDIT_SEARCH.value])).order_by(AuditEntry.seq)).all()
    assert [(e.action, minted_by(e.event)) for e in looks] == [
        (AuditAction.DEMOGRAPHICS_READ.value, ("cli:ops.jones", jti)),
        (AuditAction.AUDIT_SEARCH.value, ("cli:ops.jones", jti))]

    citizen_sign_in(ics.client)
    rows = visit_rows(ics.client.get("/patient/accesses").text)
    morgan = [row for row in rows if "Rhian Morgan" in row]
    assert len(morgan) == 1 and NOT_THEMSELVES in morgan[0]


def test_an_export_kicked_off_with_a_minted_token_is_audited_as_such(
        deployment_keys: None, ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    headers, jti = _mint(db, monkeypatch, "analyst.chen")
    kick_off = ics.client.get("/fhir/$export", headers={**headers, "Prefer": "respond-async",
                                                        "Accept": "application/fhir+json"})
    assert kick_off.status_code == 202, kick_off.text
    with db.session() as s:
        started = s.scalars(select(AuditEntry).where(
            AuditEntry.action == AuditAction.EXPORT_KICK_OFF.value)).one()
    assert started.username == "analyst.chen" and minted_by(started.event) == ("cli:ops.jones", jti)


def test_an_export_run_started_with_a_minted_token_is_audited_as_such_when_it_completes_and_is_withdrawn(
        deployment_keys: None, ics: Ics, db: Database, framework: Framework, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's own entries (completed, and withdrawn at QRD's suspension) name the operator and the token the
    export was started with, as its kick-off's does: the run comes after the request, so the job keeps them."""
    headers, jti = _mint(db, monkeypatch, "analyst.chen")
    kick_off = ics.client.get("/fhir/$export", headers={**headers, **ASYNC})
    assert kick_off.status_code == 202, kick_off.text
    assert wait_for(ics.client, kick_off.headers["Content-Location"], headers).status_code == 200
    with db.session() as s:
        set_agreement(s, framework, "QRD", "suspended", by="operator", reason="a breach")
    ExportJobs(db, framework, ics.client.app.state.settings).withdraw()  # type: ignore[attr-defined]
    with db.session() as s:
        run = list(s.scalars(select(AuditEntry).where(AuditEntry.action.in_(
            [AuditAction.EXPORT_COMPLETE.value, AuditAction.EXPORT_WITHDRAWN.value])).order_by(AuditEntry.seq)))
    assert [(e.action, minted_by(e.event)) for e in run] == [
        (AuditAction.EXPORT_COMPLETE.value, ("cli:ops.jones", jti)),
        (AuditAction.EXPORT_WITHDRAWN.value, ("cli:ops.jones", jti))]
