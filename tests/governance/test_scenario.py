"""One walk through the governance promises over HTTP and the command line, in the order an IG officer
would check them before the partnership board signs."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text, update
from tests.conftest import FRAMEWORK_PATH
from tests.fhir_bundles import entries
from tests.governance.test_audit import as_an_attacker_with_ddl_rights
from tests.small_ics import OKAFOR_NHS, Ics
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.store.models import AuditEntry

runner = CliRunner()


def _sources(bundle: dict) -> set[str]:
    return {e["resource"]["meta"]["source"].split("|")[1].split("#")[0] for e in entries(bundle)}


def test_the_governance_promises_hold_end_to_end(ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    everything = f"/fhir/Patient/{ics.okafor}/$everything"

    # Administrative staff see demographics only (and their own practice's data).
    admin = ics.open_record("admin.taylor")
    assert _sources(ics.client.get(everything, headers=admin).json()) <= {"P81001"}

    # A clinician with no basis gets 403 and an OperationOutcome saying what to do.
    refused = ics.client.get(everything, headers=ics.token("dr.oconnor"))
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    assert "record why you are opening this record" in refused.json()["issue"][0]["diagnostics"]

    # Break glass without a reason is refused; with one it works and appears in the review queue.
    glass = {"basis": "emergency"}
    assert ics.client.post(f"/api/access/{ics.okafor}", json=glass, headers=ics.token("dr.oconnor")).status_code == 400
    doctor = ics.open_record("dr.oconnor", basis="emergency", reason="unconscious, brought in by ambulance")
    assert ics.client.get(everything, headers=doctor).status_code == 200
    queue = json.loads(runner.invoke(app, ["audit", "review", "--json"]).stdout)
    assert [(i["kind"], i["username"]) for i in queue] == [("emergency", "dr.oconnor")]

    # A suspended organisation's data disappears and its users are locked out, their tokens for good;
    # re-signing restores the data and lets them sign in again.
    gp = ics.open_record("dr.patel")
    suspend = ["agreements", "set", "RXR", "--status", "suspended", "--reason", "a breach reported"]
    assert runner.invoke(app, suspend).exit_code == 0
    assert "RXR" not in _sources(ics.client.get(everything, headers=gp).json())
    assert ics.client.get(everything, headers=doctor).status_code == 401
    assert runner.invoke(app, ["agreements", "set", "RXR", "--status", "signed"]).exit_code == 0
    assert "RXR" in _sources(ics.client.get(everything, headers=gp).json())
    assert ics.client.get(everything, headers=doctor).status_code == 401
    doctor = ics.open_record("dr.oconnor", basis="emergency", reason="unconscious, brought in by ambulance")
    assert ics.client.get(everything, headers=doctor).status_code == 200

    # An objection empties the view of other organisations' data, at once.
    assert runner.invoke(app, ["preferences", "set", OKAFOR_NHS, "--object-all"]).exit_code == 0
    assert _sources(ics.client.get(everything, headers=gp).json()) == {"P81001"}
    assert runner.invoke(app, ["preferences", "set", OKAFOR_NHS, "--clear"]).exit_code == 0
    assert len(_sources(ics.client.get(everything, headers=gp).json())) > 1

    # The audit chain verifies, and fails once a row is edited in the database.
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
    as_an_attacker_with_ddl_rights(db)
    with db.session() as session:
        session.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(outcome="error"))
        assert session.scalar(text("SELECT count(*) FROM audit_events")) > 10
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1 and "broken at entry 3" in broken.stderr
