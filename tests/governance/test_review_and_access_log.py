"""The IG officer's Monday morning and the citizen's access log, over the small ICS."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import select, update
from tests.fhir_bundles import entries
from tests.small_ics import Ics

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.governance.access_log import accesses_of, details, export_ndjson, search
from sharedcare.governance.audit import verify
from sharedcare.governance.framework import Framework
from sharedcare.governance.review import escalate, queue, record_outcome
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, ReviewItem


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


def test_break_glass_without_a_reason_is_refused_and_with_one_enters_the_queue(ics: Ics, framework: Framework) -> None:
    ics.find("dr.oconnor")  # found by a search first: opened by its id alone, it would be queued for that too
    headers = ics.token("dr.oconnor")
    refused = ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "emergency"}, headers=headers)
    assert refused.status_code == 400
    ok = ics.client.post(f"/api/access/{ics.okafor}",
                         json={"basis": "emergency", "reason": "unconscious in resus, no history"}, headers=headers)
    assert ok.status_code == 201 and ok.json()["review"] is True and "reviewed" in ok.json()["message"]
    with _db(ics).session() as s:
        (item,) = queue(s, framework, utcnow())
    assert (item.kind, item.username, item.patient_id) == ("emergency", "dr.oconnor", ics.okafor)
    assert item.reason == "unconscious in resus, no history" and not item.overdue


def test_a_reason_no_one_can_read_is_refused_as_an_empty_one(ics: Ics, framework: Framework) -> None:
    """Ten zero-width spaces passed as ten characters: break glass with nothing for IG to review."""
    headers = ics.token("dr.oconnor")
    empty = ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "emergency"}, headers=headers)
    for reason in ("\u200b" * 10, "\u2060\ufeff\u200d\x07" * 3, "a" + "\u200b" * 12, "1234567890"):
        refused = ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "emergency", "reason": reason},
                                  headers=headers)
        assert refused.status_code == 400, repr(reason)
        assert refused.json()["issue"][0]["diagnostics"] == empty.json()["issue"][0]["diagnostics"]
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 403
    with _db(ics).session() as s:
        assert queue(s, framework, utcnow()) == []
    spaced = ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "emergency", "reason": "fits, no ID\u200b"},
                             headers=headers)
    assert spaced.status_code == 201  # a reason in words counts, whatever invisible character came with it


def test_only_roles_allowed_to_break_glass_can_and_the_refusal_is_audited(ics: Ics, framework: Framework) -> None:
    """TRUST BG1: emergency access needs the role's permission (`access:emergency`), a reason and its code;
    administrative and care home staff, pharmacists and social workers are refused, audited."""
    allowed = {name for name, role in framework.roles.items() if "access:emergency" in role.permissions}
    assert allowed == {"gp", "practice_nurse", "acute_clinician", "district_nurse", "mental_health_clinician",
                       "paramedic"}
    glass = {"basis": "emergency", "reason": "collapsed at the desk, unresponsive"}
    for user in ("admin.taylor", "carehome.davies", "pharm.khan", "sw.brown"):
        refused = ics.client.post(f"/api/access/{ics.okafor}", json=glass, headers=ics.token(user))
        assert refused.status_code == 403, user
        assert "may not use emergency access" in refused.json()["issue"][0]["diagnostics"]
    with _db(ics).session() as s:
        denied = [e for e in search(s, patient_id=ics.okafor) if e.action == "access:basis:record"]
        assert {(e.username, e.outcome, details(e)["rule"]) for e in denied} == {
            (user, "deny", "deny-basis-permission") for user in ("admin.taylor", "carehome.davies", "pharm.khan",
                                                                  "sw.brown")}
        assert queue(s, framework, utcnow()) == []  # nothing was opened
    assert ics.client.post(f"/api/access/{ics.okafor}", json=glass, headers=ics.token("para.evans")).status_code == 201


def test_an_item_not_reviewed_within_a_day_is_overdue(ics: Ics, framework: Framework) -> None:
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    with _db(ics).session() as s:
        assert not queue(s, framework, utcnow() + timedelta(hours=23))[0].overdue
        assert queue(s, framework, utcnow() + timedelta(hours=25))[0].overdue


def test_the_ig_officer_records_outcomes_which_are_audited(ics: Ics, framework: Framework) -> None:
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    ics.open_record("dr.oconnor", basis="emergency", reason="unconscious in resus, no history")
    with _db(ics).session() as s:
        first, second = queue(s, framework, utcnow())
        record_outcome(s, first.id, "appropriate", by="ig.morgan", note="999 call, patient confused")
        record_outcome(s, second.id, "investigate", by="ig.morgan", note="no A&E attendance found")
    with _db(ics).session() as s:
        assert [i.id for i in queue(s, framework, utcnow())] == [second.id]  # under investigation stays visible
        with pytest.raises(SharedcareError, match="already closed"):
            record_outcome(s, first.id, "investigate", by="ig.morgan")
        outcomes = sorted(details(e)["outcome"] for e in search(s, username="ig.morgan"))
    assert outcomes == ["appropriate", "investigate"]


def test_opening_many_records_in_an_hour_is_flagged_once(ics: Ics, framework: Framework, db: Database) -> None:
    from sharedcare.governance.gateway import GovernedRecords, actor_for
    from sharedcare.store.models import Person

    limit = framework.review.patients_per_hour
    with db.session() as s:
        for i in range(limit + 3):
            s.add(Person(id=f"extra-{i:03d}"))
    records_by = actor_for(framework, "para.evans")
    for i in range(limit + 3):
        with db.session() as s:
            GovernedRecords(s, framework, records_by).record_basis(f"extra-{i:03d}", "explicit-consent", "")
    with db.session() as s:
        kinds = [i.kind for i in queue(s, framework, utcnow())]
    assert kinds.count("unusual-volume") == 1


def test_a_practice_opening_a_stranger_to_it_is_flagged(ics: Ics, framework: Framework) -> None:
    ics.open_record("dr.patel", person=ics.stranger)  # Mrs Hughes is registered at P81002, not P81001
    ics.open_record("dr.patel")  # Mr Okafor is their patient
    with _db(ics).session() as s:
        items = queue(s, framework, utcnow())
    assert [(i.kind, i.patient_id) for i in items] == [("no-relationship", ics.stranger)]


def test_a_citizen_sees_who_looked_at_their_record_and_why(ics: Ics, framework: Framework) -> None:
    headers = ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers)
    ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=ics.token("dr.singh"))  # refused: no basis
    with _db(ics).session() as s:
        log = accesses_of(s, framework, ics.okafor).accesses
    lines = {(a.who, a.role, a.organisation, a.what, a.basis, a.outcome) for a in log}
    assert ("Carys Evans", "Paramedic", "North Region Ambulance Service NHS Trust", "viewed your record",
            "implied consent", "allowed") in lines
    assert ("Carys Evans", "Paramedic", "North Region Ambulance Service NHS Trust",
            "recorded why they needed your record", "implied consent", "allowed") in lines
    assert any(a.who == "Dr Harjit Singh" and a.outcome == "refused" for a in log)
    assert all(a.when.tzinfo is not None for a in log)


def test_the_audit_exports_as_valid_fhir_audit_events_in_chain_order(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers)
    with _db(ics).session() as s:
        lines = list(export_ndjson(s))
        count = len(s.scalars(select(AuditEntry.seq)).all())
        assert verify(s).ok
    assert len(lines) == count >= 2
    events = [json.loads(line) for line in lines]
    assert [int(e["id"]) for e in events] == list(range(1, count + 1))
    for event in events:
        AuditEvent.model_validate(event)


def test_a_record_read_names_every_resource_it_served_exactly_and_the_export_lists_each(ics: Ics) -> None:
    """The audit stores a read's released references as one string (cheap to hash and store); the exported
    AuditEvent lists each as an entity of its own, as it always did, and names exactly what was served."""
    headers = ics.open_record("dr.patel")
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers={**headers, "X-Request-ID": "all-1"})
    served = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries(bundle.json())
              if e["resource"]["resourceType"] != "Patient"]
    assert len(served) > 5
    with _db(ics).session() as s:
        (stored,) = s.scalars(select(AuditEntry.event).where(AuditEntry.action == "clinical:record:read")).all()
        exported = [json.loads(line) for line in export_ndjson(s)]
    AuditEvent.model_validate(stored)  # the stored form is a FHIR AuditEvent too
    released = next(e for e in stored["entity"] if e.get("name") == "released")
    assert released["detail"] == [{"type": "references", "valueString": " ".join(served)}]
    (event,) = [e for e in exported if e["source"]["site"] == "all-1"]
    AuditEvent.model_validate(event)
    assert [e["what"]["reference"] for e in event["entity"] if "what" in e] == [f"Patient/{ics.okafor}", *served]
    assert event["entity"][-1]["name"] == "decision"


def test_an_objection_to_all_sharing_empties_another_organisations_view(ics: Ics, framework: Framework) -> None:
    from tests.small_ics import OKAFOR_NHS

    from sharedcare.governance.consent import set_choice

    headers = ics.open_record("dr.oconnor")
    before = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    assert {e["resource"]["meta"]["source"].split("|")[1] for e in entries(before)} > {"RXR#epr"}
    with _db(ics).session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", object_all=True)
    after = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    assert {e["resource"]["meta"]["source"].split("|")[1] for e in entries(after)} == {"RXR#epr"}


def test_an_overdue_item_is_escalated_once_as_a_high_priority_audit_event(ics: Ics, framework: Framework) -> None:
    """TRUST BG2: a break glass not reviewed in time is escalated (frozen clock), once, and shows so."""
    ics.open_record("dr.oconnor", basis="emergency", reason="unconscious in resus, no history")
    db = _db(ics)
    with db.session() as s:
        assert escalate(s, framework, utcnow() + timedelta(hours=23)) == []
        (item,) = escalate(s, framework, utcnow() + timedelta(hours=25))
        assert (item.kind, item.username, item.patient_id) == ("emergency", "dr.oconnor", ics.okafor)
    with db.session() as s:
        assert escalate(s, framework, utcnow() + timedelta(hours=26)) == []  # not again
        (shown,) = queue(s, framework, utcnow() + timedelta(hours=26))
        assert shown.overdue and shown.escalated_at is not None
        (event,) = search(s, username="system", patient_id=ics.okafor)
    assert (event.action, event.outcome) == ("governance:review:escalated", "error")
    assert details(event)["review_item"] == str(item.id) and details(event)["reviewed_user"] == "dr.oconnor"
    with db.session() as s:  # an item IG has concluded, or is investigating, is never escalated nor overdue
        record_outcome(s, item.id, "appropriate", by="ig.morgan", note="resus notes confirm")
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    with db.session() as s:
        (investigating,) = [i for i in queue(s, framework, utcnow()) if i.username == "para.evans"]
        record_outcome(s, investigating.id, "investigate", by="ig.morgan", note="asked the crew")
    with db.session() as s:
        assert escalate(s, framework, utcnow() + timedelta(hours=48)) == []


def test_the_escalate_command_exits_3_when_it_escalated_something(ics: Ics, framework: Framework,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from sharedcare.cli import app

    ics.open_record("dr.oconnor", basis="emergency", reason="unconscious in resus, no history")
    db = _db(ics)
    with db.session() as s:
        s.execute(update(ReviewItem).values(created_at=utcnow() - timedelta(hours=25)))
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    first = CliRunner().invoke(app, ["audit", "escalate"])
    assert first.exit_code == 3 and "Escalated now: 1" in first.output
    again = CliRunner().invoke(app, ["audit", "escalate"])
    assert again.exit_code == 0 and "Escalated now: 0" in again.output
