"""A contributing system writes over FHIR: through the ingest pipeline, as its own organisation only,
with a write scope, audited; answered with statuses and OperationOutcomes a developer can act on."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from tests.builders import NHS, condition, medication, patient
from tests.fhir_bundles import entries
from tests.small_ics import OKAFOR_NHS, WITHDRAWN, Ics, resend_diabetes

from sharedcare.api.auth import mint_token, sign_token
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.fhir.uk_core import meta_source, server_id
from sharedcare.governance.framework import Framework
from sharedcare.governance.review import queue, record_outcome
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, Quarantine, Resource, ReviewItem

WRITE = "user/*.read user/*.write"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _token(ics: Ics, username: str, scope: str = WRITE) -> dict[str, str]:
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {mint_token(load_settings(), fw, username, scope)}", **FHIR_JSON}


def _count(db: Database, model: type = Resource) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def _diabetes(**changes: object) -> dict:
    return condition("gp-c1", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus", **changes)


def _bundle(kind: str, *resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "timestamp": "2026-11-10T09:00:00Z",
            "entry": [{"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r,
                       "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}


def _conditions(ics: Ics, headers: dict[str, str]) -> dict[str, dict]:
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition", headers=headers).json()
    return {e["resource"]["code"]["coding"][0]["code"]: e["resource"] for e in entries(bundle)}


def test_a_gp_system_updates_a_condition_with_put_and_the_record_shows_the_new_version(ics: Ics, db: Database) -> None:
    response = ics.client.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel"),
                              content=json.dumps(_diabetes(onsetDateTime="2018-07-01")))
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"2"' and response.headers["location"].endswith("/_history/2")
    assert response.json()["resourceType"] == "OperationOutcome"
    diabetes = _conditions(ics, ics.open_record("dr.patel"))["44054006"]
    assert diabetes["onsetDateTime"] == "2018-07-01" and diabetes["meta"]["versionId"] == "2"
    assert diabetes["meta"]["source"] == meta_source("P81001", "emis")
    again = ics.client.put(response.headers["location"].split("/_history")[0], headers=_token(ics, "dr.patel"),
                           content=json.dumps(_diabetes(onsetDateTime="2018-07-01")))  # by its server id
    assert again.status_code == 200 and again.headers["etag"] == 'W/"2"'
    assert "unchanged" in again.json()["issue"][0]["diagnostics"]


def test_post_creates_and_answers_201_with_the_location(ics: Ics) -> None:
    new = medication("gp-m9", "Patient/gp-okafor", "Ramipril 5mg capsules")
    response = ics.client.post("/fhir/MedicationStatement", headers=_token(ics, "dr.patel"), content=json.dumps(new))
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert location.startswith("/fhir/MedicationStatement/") and location.endswith("/_history/1")
    read = ics.client.get(location.split("/_history")[0], headers=ics.open_record("dr.patel"))
    assert read.status_code == 200 and read.json()["medicationCodeableConcept"]["coding"][0]["display"] == \
        "Ramipril 5mg capsules"


def test_entered_in_error_over_http_hides_the_condition_and_history_keeps_both(ics: Ics) -> None:
    withdrawn = _diabetes(verificationStatus={"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "entered-in-error"}]})
    response = ics.client.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel"), content=json.dumps(withdrawn))
    assert response.status_code == 200, response.text
    headers = ics.open_record("dr.patel")
    assert "44054006" not in _conditions(ics, headers)
    history = ics.client.get(response.headers["location"].split("/_history")[0] + "/_history", headers=headers).json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_a_late_older_update_is_answered_409_and_changes_nothing(ics: Ics, db: Database) -> None:
    older = _diabetes(onsetDateTime="2001-01-01", meta={"lastUpdated": "2020-01-01T00:00:00Z"})
    response = ics.client.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel"), content=json.dumps(older))
    assert response.status_code == 409
    assert "newer version" in response.json()["issue"][0]["diagnostics"]
    assert _conditions(ics, ics.open_record("dr.patel"))["44054006"]["onsetDateTime"] == "2019-03-01"


def test_a_meta_last_updated_in_the_future_is_refused_naming_it_and_the_practices_withdrawal_then_applies(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """secrev F2: a client's meta.lastUpdated dated 9999 pinned the resource against every later update. It is
    the source's event time (it orders a partner system's queued writes, HAZ-07), so it is bounded, not ignored."""
    pinned = ics.client.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel"), content=json.dumps(
        _diabetes(onsetDateTime="2000-01-01", meta={"lastUpdated": "9999-01-01T00:00:00Z"})))
    assert pinned.status_code == 422, pinned.text
    issue = pinned.json()["issue"][0]
    assert issue["location"][0].endswith("Condition/gp-c1, meta.lastUpdated")
    assert "more than 300 seconds after the message was received" in issue["diagnostics"]
    assert "held in quarantine" in issue["diagnostics"]
    resend_diabetes(db, framework, tmp_path, "withdraw", "2026-11-20T09:00:00Z", verificationStatus=WITHDRAWN)
    assert "44054006" not in _conditions(ics, ics.open_record("dr.patel"))


def test_a_withdrawal_is_applied_over_a_version_dated_a_little_ahead_of_its_arrival(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Within the allowed skew a time ahead is accepted; the practice's withdrawal, sent after that version
    arrived but dated before the time it claims, is still applied: a withdrawal is never pinned out."""
    ahead = (utcnow() + timedelta(minutes=4)).isoformat()
    response = ics.client.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel"), content=json.dumps(
        _diabetes(onsetDateTime="2000-01-01", meta={"lastUpdated": ahead})))
    assert response.status_code == 200, response.text
    now = utcnow().isoformat()
    resend_diabetes(db, framework, tmp_path, "withdraw", now, verificationStatus=WITHDRAWN)
    assert "44054006" not in _conditions(ics, ics.open_record("dr.patel"))


def test_a_transaction_with_one_bad_entry_stores_nothing_and_names_the_entry(ics: Ics, db: Database) -> None:
    before = _count(db)
    message = _bundle("transaction", patient("gp-new", "9990000026", "Ahmed", "Sara", "1988-05-05"),
                      condition("gp-n1", "Patient/gp-new", "195967001", "Asthma"),
                      condition("gp-n2", "Patient/gp-new", "38341003", "Hypertension", onsetDateTime="2019-02-30"))
    response = ics.client.post("/fhir", headers=_token(ics, "dr.patel"), content=json.dumps(message))
    assert response.status_code == 422
    issue = response.json()["issue"][0]
    assert "entry[2]" in issue["location"][0] and "onsetDateTime" in issue["diagnostics"]
    assert _count(db) == before
    assert _count(db, Quarantine) == 1  # held, with the bytes as sent, for replay once fixed


def test_a_batch_stores_the_good_entries_and_answers_each(ics: Ics, db: Database) -> None:
    message = _bundle("batch", condition("gp-n1", "urn:uuid:Patient-gp-new", "195967001", "Asthma"),
                      condition("gp-n2", "Patient/gp-new", "38341003", "Hypertension", onsetDateTime="2019-02-30"),
                      patient("gp-new", "9990000026", "Ahmed", "Sara", "1988-05-05"),
                      {"resourceType": "Claim", "id": "claim-1", "status": "active"})
    response = ics.client.post("/fhir", headers=_token(ics, "dr.patel"), content=json.dumps(message))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "201 Created", "404 Not Found"]
    assert "onsetDateTime" in body["entry"][1]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert "does not keep Claim" in body["entry"][3]["response"]["outcome"]["issue"][0]["diagnostics"]
    with db.session() as s:
        stored = set(s.scalars(select(Resource.source_id).where(Resource.source_id.in_(["gp-new", "gp-n1", "gp-n2"]))))
    assert stored == {"gp-new", "gp-n1"}


def test_an_xml_resource_can_be_put(ics: Ics) -> None:
    xml = f"""<Patient xmlns="http://hl7.org/fhir"><id value="gp-okafor"/>
      <identifier><system value="{NHS}"/><value value="{OKAFOR_NHS}"/></identifier>
      <name><use value="official"/><family value="Okafor"/><given value="Emeka"/></name>
      <gender value="male"/><birthDate value="1945-03-02"/></Patient>"""
    headers = {**_token(ics, "dr.patel"), "Content-Type": "application/fhir+xml"}
    response = ics.client.put("/fhir/Patient/gp-okafor", headers=headers, content=xml)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == 'W/"2"'


def test_malformed_json_is_answered_400_with_line_and_column(ics: Ics) -> None:
    broken = '{"resourceType": "Bundle",\n "type": '
    response = ics.client.post("/fhir", headers=_token(ics, "dr.patel"), content=broken)
    assert response.status_code == 400
    assert "invalid JSON at line 2 column" in response.json()["issue"][0]["diagnostics"]


def test_a_token_without_a_write_scope_is_refused_and_audited(ics: Ics, db: Database) -> None:
    before = _count(db)
    response = ics.client.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel", "user/*.read"),
                              content=json.dumps(_diabetes(onsetDateTime="2018-07-01")))
    assert response.status_code == 403
    assert "write scope" in response.json()["issue"][0]["diagnostics"]
    assert _count(db) == before
    with db.session() as s:
        event = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:record:write")).one()
    assert event.outcome == "deny" and event.username == "dr.patel"


def test_a_scope_for_one_type_does_not_write_another(ics: Ics) -> None:
    new = medication("gp-m9", "Patient/gp-okafor", "Ramipril 5mg capsules")
    response = ics.client.post("/fhir/MedicationStatement", headers=_token(ics, "dr.patel", "user/Condition.write"),
                               content=json.dumps(new))
    assert response.status_code == 403 and "MedicationStatement" in response.json()["issue"][0]["diagnostics"]


def test_no_one_writes_as_another_organisation(ics: Ics, db: Database) -> None:
    before = _count(db)
    forged = _diabetes(onsetDateTime="2018-07-01", meta={"source": meta_source("RXR", "epr")})
    response = ics.client.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel"), content=json.dumps(forged))
    assert response.status_code == 403 and "another organisation" in response.json()["issue"][0]["diagnostics"]
    message = _bundle("batch", _diabetes(onsetDateTime="2018-07-01"))
    message["meta"] = {"source": meta_source("RXR", "epr")}
    assert ics.client.post("/fhir", headers=_token(ics, "dr.patel"), content=json.dumps(message)).status_code == 403
    assert _count(db) == before


def test_a_hospital_cannot_overwrite_a_gp_record_by_its_id(ics: Ics) -> None:
    """The hospital's PUT of `Condition/gp-c1` is the hospital's own gp-c1: the GP's stays as it was."""
    response = ics.client.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.oconnor"),
                              content=json.dumps(_diabetes(onsetDateTime="2001-01-01")))
    assert response.status_code == 422  # the hospital never sent a patient gp-okafor
    assert "has not sent" in response.json()["issue"][0]["diagnostics"]
    assert _conditions(ics, ics.open_record("dr.patel"))["44054006"]["onsetDateTime"] == "2019-03-01"


def _signed(ics: Ics, username: str, scope: str = WRITE) -> dict[str, str]:
    """A token as `_token` mints it, for a user whose role is not given write scopes (`mint_token` refuses)."""
    user = ics.client.app.state.framework.users[username]  # type: ignore[attr-defined]
    claims = {"sub": username, "role": user.role, "org": user.organisation, "scope": scope}
    return {"Authorization": f"Bearer {sign_token(load_settings(), claims)}", **FHIR_JSON}


def test_organisations_that_do_not_contribute_or_have_no_agreement_cannot_write(ics: Ics) -> None:
    body = json.dumps(_diabetes())
    pharmacy = ics.client.put("/fhir/Condition/gp-c1", headers=_signed(ics, "pharm.khan"), content=body)
    assert pharmacy.status_code == 403 and "contribute" in pharmacy.json()["issue"][0]["diagnostics"]
    care_home = ics.client.put("/fhir/Condition/gp-c1", headers=_signed(ics, "carehome.davies"), content=body)
    assert care_home.status_code == 403 and "agreement" in care_home.json()["issue"][0]["diagnostics"]
    anonymous = ics.client.put("/fhir/Condition/gp-c1", headers=FHIR_JSON, content=body)
    assert anonymous.status_code == 401


def test_a_write_is_audited_against_the_person_whose_record_changed(ics: Ics, db: Database) -> None:
    response = ics.client.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel"),
                              content=json.dumps(_diabetes(onsetDateTime="2018-07-01")))
    assert response.status_code == 200
    with db.session() as s:
        event = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:record:write")).one()
    assert (event.outcome, event.patient_id, event.organisation) == ("permit", ics.okafor, "P81001")
    assert event.event["action"] == "U"  # an update (a create would be C)
    assert response.headers["location"].removeprefix("/fhir/") in json.dumps(event.event)


def test_the_capability_statement_offers_writes(ics: Ics) -> None:
    rest = ics.client.get("/fhir/metadata").json()["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"batch", "transaction"}
    condition_entry = next(r for r in rest["resource"] if r["type"] == "Condition")
    assert {"create", "update"} <= {i["code"] for i in condition_entry["interaction"]}


def test_post_fhir_takes_only_batch_or_transaction_bundles_in_fhir_formats(ics: Ics) -> None:
    collection = json.dumps(_bundle("collection", _diabetes()))
    response = ics.client.post("/fhir", headers=_token(ics, "dr.patel"), content=collection)
    assert response.status_code == 400 and "batch or transaction" in response.json()["issue"][0]["diagnostics"]
    entries = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": "everything"})
    assert ics.client.post("/fhir", headers=_token(ics, "dr.patel"), content=entries).status_code == 400
    form = {**_token(ics, "dr.patel"), "Content-Type": "application/x-www-form-urlencoded"}
    response = ics.client.post("/fhir", headers=form, content=collection)
    assert response.status_code == 400 and "application/fhir+json" in response.json()["issue"][0]["diagnostics"]
    described = ics.client.get("/openapi.json").json()["paths"]["/fhir"]["post"]
    assert "application/fhir+xml" in described["requestBody"]["content"]


def test_a_write_refused_for_its_shape_is_audited_too(ics: Ics, db: Database) -> None:
    """A body that is not what the URL names, or a Bundle that is neither batch nor transaction: 400, and
    the IG officer still sees who tried to write what."""
    body = _diabetes()
    cases = [("put", "/fhir/Observation/gp-c1", body), ("put", "/fhir/Condition/other-id", body),
             ("post", "/fhir", {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": body}]})]
    before = _count(db)
    for method, url, payload in cases:
        answer = getattr(ics.client, method)(url, headers=_token(ics, "dr.patel"), content=json.dumps(payload))
        assert answer.status_code == 400, answer.text
    assert _count(db) == before
    with db.session() as s:
        events = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:record:write")
                           .order_by(AuditEntry.seq)).all()
    assert [(e.outcome, e.username) for e in events] == [("deny", "dr.patel")] * 3
    reasons = [next(d["valueString"] for e2 in e.event["entity"] if e2.get("name") == "decision"
                    for d in e2["detail"] if d["type"] == "reason") for e in events]
    assert "URL names Observation" in reasons[0] and "other-id" in reasons[1] and "batch or transaction" in reasons[2]


# -- a practice cannot give itself a care relationship by writing a Patient (review 2, F2) -----------------
HUGHES_NHS = "9990000018"  # Mrs Hughes, registered at Castle Street Surgery (P81002), unknown to P81001


def _hughes(pid: str, **extra: object) -> dict:
    return patient(pid, HUGHES_NHS, "Hughes", "Margaret", "1952-06-11", gender="female", **extra)


def _review_kinds(db: Database, person_id: str) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(ReviewItem.kind).where(ReviewItem.person_id == person_id)
                              .order_by(ReviewItem.id)))


def test_a_fhir_write_cannot_manufacture_a_care_relationship_to_avoid_ig_review(ics: Ics, db: Database) -> None:
    """Review 2, F2: a GP user whose practice holds nothing about Mrs Hughes writes a Patient with her NHS
    number. It links to her person, but the IG officer still sees 'no care relationship' when the GP opens
    her record: a relationship the reader's own organisation wrote for itself does not count."""
    fake = _hughes("made-up-1")
    written = ics.client.post("/fhir/Patient", headers=_token(ics, "dr.patel"), content=json.dumps(fake))
    assert written.status_code == 201, written.text
    ics.open_record("dr.patel", person=ics.stranger)
    assert "no-relationship" in _review_kinds(db, ics.stranger), \
        "a self-written Patient let the GP open a stranger's record unflagged"


def test_control_without_the_write_the_no_relationship_flag_fires(ics: Ics, db: Database) -> None:
    """Control for the test above (passed before the fix too): the same open without the written Patient."""
    ics.open_record("dr.patel", person=ics.stranger)
    assert "no-relationship" in _review_kinds(db, ics.stranger)


def test_the_ig_officer_sees_the_write_itself_and_a_finding_of_appropriate_makes_it_count(
        ics: Ics, db: Database, framework: Framework) -> None:
    """The write is queued the moment it links (a new registration looks the same, so IG decides); once
    found appropriate, the practice's record is a care relationship and its opens are no longer flagged."""
    written = ics.client.post("/fhir/Patient", headers=_token(ics, "dr.patel"), content=json.dumps(_hughes("new-reg")))
    assert written.status_code == 201, written.text
    with db.session() as s:
        (item,) = queue(s, framework, utcnow())
    assert (item.kind, item.username, item.patient_id) == ("new-source-record", "dr.patel", ics.stranger)
    assert "new source record for an existing person from Riverside Medical Centre (P81001)" in item.reason
    with db.session() as s:
        record_outcome(s, item.id, "appropriate", by="ig.morgan", note="registered at P81001 on 1 December")
    ics.open_record("dr.patel", person=ics.stranger)
    assert _review_kinds(db, ics.stranger) == ["new-source-record"]  # no 'no-relationship' this time


def test_an_investigation_keeps_the_written_record_from_counting(ics: Ics, db: Database, framework: Framework) -> None:
    ics.client.post("/fhir/Patient", headers=_token(ics, "dr.patel"), content=json.dumps(_hughes("made-up-3")))
    with db.session() as s:
        (item,) = queue(s, framework, utcnow())
        record_outcome(s, item.id, "investigate", by="ig.morgan", note="no registration found")
    ics.open_record("dr.patel", person=ics.stranger)
    assert _review_kinds(db, ics.stranger) == ["new-source-record", "no-relationship"]


def test_writing_to_ones_own_patient_or_a_person_new_to_the_record_is_not_queued(
        ics: Ics, db: Database, framework: Framework) -> None:
    own = patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02", telecom=[
        {"system": "phone", "value": "07700 900999"}])
    assert ics.client.put("/fhir/Patient/gp-okafor", headers=_token(ics, "dr.patel"),
                          content=json.dumps(own)).status_code == 200
    newborn = patient("gp-baby", "9990000026", "Okafor", "Chidi", "2026-11-30")
    assert ics.client.post("/fhir/Patient", headers=_token(ics, "dr.patel"),
                           content=json.dumps(newborn)).status_code == 201
    with db.session() as s:
        assert queue(s, framework, utcnow()) == []


def test_a_practice_that_never_held_a_patient_cannot_replace_their_shared_demographics(ics: Ics) -> None:
    """Review 2, F2 (patient safety): the written Patient was the newest GP record, so it became the
    demographics every organisation sees: a hospital clinician got the writer's address and next of kin."""
    fake = _hughes("made-up-2", postcode="ZZ9 9ZZ",
                   contact=[{"relationship": [{"text": "Son"}], "name": {"family": "Mallory", "given": ["Eve"]},
                             "telecom": [{"system": "phone", "value": "07700 900666"}]}])
    written = ics.client.post("/fhir/Patient", headers=_token(ics, "dr.patel"), content=json.dumps(fake))
    assert written.status_code == 201, written.text
    headers = ics.open_record("dr.oconnor", person=ics.stranger)
    shown = ics.client.get(f"/fhir/Patient/{ics.stranger}", headers=headers).json()
    assert "Mallory" not in json.dumps(shown) and "ZZ9 9ZZ" not in json.dumps(shown), shown
    assert shown["address"][0]["postalCode"] == "RV1 2AB"  # what Castle Street Surgery holds
    everything = ics.client.get(f"/fhir/Patient/{ics.stranger}/$everything", headers=headers).json()
    combined = next(e["resource"] for e in entries(everything) if e["resource"]["resourceType"] == "Patient"
                    and e["resource"]["id"] == ics.stranger)
    assert "Mallory" not in json.dumps(combined) and "ZZ9 9ZZ" not in json.dumps(combined)


def test_a_masked_copy_written_back_cannot_blank_what_the_mask_hid(ics: Ics) -> None:
    """TRUST AC6: a social worker sees the GP's medication without its free-text note (tier 2). Their
    organisation, even with a write scope, cannot write it back by its id: it does not contribute FHIR, and
    one that does writes only its own organisation's resources (which its users always see in full), so a
    field another organisation's copy hid is never written. The GP's note and version stay as they were."""
    def medication(username: str) -> dict:
        bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=MedicationStatement",
                                headers=ics.open_record(username)).json()
        (entry,) = entries(bundle)
        return dict(entry["resource"])

    masked = medication("sw.brown")
    assert "note" not in masked
    response = ics.client.put(f"/fhir/MedicationStatement/{masked['id']}", headers=_signed(ics, "sw.brown"),
                              content=json.dumps(masked))
    assert response.status_code == 403 and "not set up" in response.json()["issue"][0]["diagnostics"]
    shown = medication("dr.patel")
    assert shown["note"][0]["text"] == "Takes with breakfast"
    assert shown["meta"]["versionId"] == masked["meta"]["versionId"]


# -- create and update scopes kept apart; If-Match honoured (review 3, F6 and F7) ------------------------------


def _write_events(db: Database) -> list[tuple[str, str]]:
    with db.session() as s:
        events = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:record:write")
                           .order_by(AuditEntry.seq)).all()
    return [(e.outcome, next((d["valueString"] for x in e.event["entity"] if x.get("name") == "decision"
                              for d in x["detail"] if d["type"] == "rule"), "")) for e in events]


def test_a_create_only_scope_cannot_change_or_withdraw_a_held_resource(ics: Ics, db: Database) -> None:
    """SMART v2 `.c` is create only: a PUT over the GP's diabetes, or its withdrawal, is refused 403 naming
    the update scope it needs, audited, and the record is as it was; creating something new still works."""
    create_only = _token(ics, "dr.patel", "user/*.rs user/Condition.c")
    for change in (_diabetes(onsetDateTime="2001-01-01"), _diabetes(verificationStatus=WITHDRAWN)):
        refused = ics.client.put("/fhir/Condition/gp-c1", headers=create_only, content=json.dumps(change))
        assert refused.status_code == 403, refused.text
        issue = refused.json()["issue"][0]
        assert issue["code"] == "forbidden" and "user/Condition.u" in issue["diagnostics"]
    transaction = _bundle("transaction", _diabetes(onsetDateTime="2001-01-01"),
                          condition("gp-n1", "Patient/gp-okafor", "195967001", "Asthma"))
    refused = ics.client.post("/fhir", headers=create_only, content=json.dumps(transaction))
    assert refused.status_code == 403 and refused.json()["issue"][0]["location"] == ["Bundle.entry[0]"]
    shown = _conditions(ics, ics.open_record("dr.patel"))
    assert shown["44054006"]["onsetDateTime"] == "2019-03-01" and "195967001" not in shown  # nothing of it stored
    created = ics.client.post("/fhir/Condition", headers=create_only,
                              content=json.dumps(condition("gp-n2", "Patient/gp-okafor", "195967001", "Asthma")))
    assert created.status_code == 201, created.text
    assert _write_events(db) == [("deny", "deny-write-scope")] * 3 + [("permit", "permit-write")]


def test_an_update_only_scope_changes_and_upserts_but_does_not_post_a_new_resource(ics: Ics) -> None:
    """SMART v2 `.u`: an update, which may create by PUT (SMART's note on upsert); a POST is a create (`c`)."""
    update_only = _token(ics, "dr.patel", "user/*.rs user/Condition.u")
    updated = ics.client.put("/fhir/Condition/gp-c1", headers=update_only,
                             content=json.dumps(_diabetes(onsetDateTime="2018-07-01")))
    assert updated.status_code == 200 and updated.headers["etag"] == 'W/"2"', updated.text
    asthma = condition("gp-n1", "Patient/gp-okafor", "195967001", "Asthma")
    posted = ics.client.post("/fhir/Condition", headers=update_only, content=json.dumps(asthma))
    assert posted.status_code == 403 and "user/Condition.c" in posted.json()["issue"][0]["diagnostics"]
    assert ics.client.put("/fhir/Condition/gp-n1", headers=update_only, content=json.dumps(asthma)).status_code == 201


def test_v1_write_and_v2_cu_cud_cruds_each_create_and_update(ics: Ics) -> None:
    for number, scope in enumerate(["user/Condition.write", "user/Condition.cu", "user/Condition.cud", "user/*.cruds"]):
        headers = _token(ics, "dr.patel", scope)
        changed = json.dumps(_diabetes(onsetDateTime=f"20{10 + number}-01-01"))
        updated = ics.client.put("/fhir/Condition/gp-c1", headers=headers, content=changed)
        assert updated.status_code == 200 and updated.headers["etag"] == f'W/"{number + 2}"', (scope, updated.text)
        new = condition(f"gp-n{number}", "Patient/gp-okafor", "195967001", "Asthma")
        assert ics.client.post("/fhir/Condition", headers=headers, content=json.dumps(new)).status_code == 201, scope


def test_if_match_naming_an_old_version_is_refused_412_and_changes_nothing(ics: Ics, db: Database) -> None:
    """FHIR's version-aware update: If-Match (or an entry's request.ifMatch) naming a version other than the
    one held is refused 412, audited, and nothing of the write is stored; naming the held one goes ahead."""
    headers = _token(ics, "dr.patel")
    first = ics.client.put("/fhir/Condition/gp-c1", headers=headers,
                           content=json.dumps(_diabetes(onsetDateTime="2002-01-01")))
    assert first.headers["etag"] == 'W/"2"'
    stale = ics.client.put("/fhir/Condition/gp-c1", headers={**headers, "If-Match": 'W/"1"'},
                           content=json.dumps(_diabetes(onsetDateTime="2003-01-01")))
    assert stale.status_code == 412, stale.text
    issue = stale.json()["issue"][0]
    assert issue["code"] == "conflict" and "version 2 is held" in issue["diagnostics"]
    assert issue["location"] == ["If-Match"]
    transaction = _bundle("transaction", condition("gp-n1", "Patient/gp-okafor", "195967001", "Asthma"),
                          _diabetes(onsetDateTime="2004-01-01"))
    transaction["entry"][1]["request"]["ifMatch"] = 'W/"1"'
    refused = ics.client.post("/fhir", headers=headers, content=json.dumps(transaction))
    assert refused.status_code == 412 and refused.json()["issue"][0]["location"] == ["Bundle.entry[1].request.ifMatch"]
    batch = _bundle("batch", condition("gp-n1", "Patient/gp-okafor", "195967001", "Asthma"),
                    _diabetes(onsetDateTime="2004-01-01"))
    batch["entry"][1]["request"]["ifMatch"] = 'W/"1"'
    answered = ics.client.post("/fhir", headers=headers, content=json.dumps(batch)).json()
    assert [e["response"]["status"] for e in answered["entry"]] == ["201 Created", "412 Precondition Failed"]
    assert _conditions(ics, ics.open_record("dr.patel"))["44054006"]["onsetDateTime"] == "2002-01-01"
    new = ics.client.put("/fhir/Condition/gp-new", headers={**headers, "If-Match": 'W/"1"'},
                         content=json.dumps(condition("gp-new", "Patient/gp-okafor", "38341003", "Hypertension")))
    assert new.status_code == 412 and "none is held" in new.json()["issue"][0]["diagnostics"]
    current = ics.client.put("/fhir/Condition/gp-c1", headers={**headers, "If-Match": 'W/"2"'},
                             content=json.dumps(_diabetes(onsetDateTime="2005-01-01")))
    assert current.status_code == 200 and current.headers["etag"] == 'W/"3"', current.text
    assert _write_events(db).count(("deny", "deny-write-version")) == 4


def test_conditions_that_cannot_be_honoured_are_refused_400_naming_them(ics: Ics, db: Database) -> None:
    """A conditional create, update or read is not supported: refused, never ignored, audited, nothing stored."""
    headers = _token(ics, "dr.patel")
    before = _count(db)
    body = json.dumps(_diabetes(onsetDateTime="2001-01-01"))
    for name, value in (("If-None-Exist", "identifier=x"), ("If-None-Match", "*"), ("If-Modified-Since", "x")):
        answer = ics.client.put("/fhir/Condition/gp-c1", headers={**headers, name: value}, content=body)
        assert answer.status_code == 400 and name in answer.json()["issue"][0]["diagnostics"], answer.text
    for url, value in (("/fhir/Condition/gp-c1", "*"), ("/fhir/Condition/gp-c1", "three"),
                       ("/fhir/Condition", 'W/"1"')):
        call = ics.client.put if url.endswith("gp-c1") else ics.client.post
        answer = call(url, headers={**headers, "If-Match": value}, content=body)
        assert answer.status_code == 400 and "If-Match" in answer.json()["issue"][0]["diagnostics"], answer.text
    for element, value in (("ifNoneExist", "identifier=x"), ("ifNoneMatch", "*"),
                           ("ifModifiedSince", "2026-11-01T09:00:00Z"), ("ifMatch", "version one"),
                           ("url", "Condition?identifier=gp-c1")):
        transaction = _bundle("transaction", _diabetes(onsetDateTime="2001-01-01"))
        transaction["entry"][0]["request"][element] = value
        answer = ics.client.post("/fhir", headers=headers, content=json.dumps(transaction))
        assert answer.status_code == 400, answer.text
        assert f"Bundle.entry[0].request.{element}" in answer.json()["issue"][0]["diagnostics"]
    batch = _bundle("batch", _diabetes(onsetDateTime="2001-01-01"))
    batch["entry"][0]["request"]["ifNoneExist"] = "identifier=x"
    entry = ics.client.post("/fhir", headers=headers, content=json.dumps(batch)).json()["entry"][0]["response"]
    assert entry["status"] == "400 Bad Request"
    assert entry["outcome"]["issue"][0]["location"] == ["Bundle.entry[0].request.ifNoneExist"]
    assert _count(db) == before
    assert _conditions(ics, ics.open_record("dr.patel"))["44054006"]["onsetDateTime"] == "2019-03-01"
    assert _write_events(db) == [("deny", "deny-write-invalid")] * 12


def test_a_transaction_whose_entries_share_a_fullurl_is_refused_400_and_stores_nothing(
        ics: Ics, db: Database) -> None:
    """Ann's Condition points at a fullUrl that Bob's Patient entry repeats: it must not be filed under Bob."""
    before = _count(db)
    ann = patient("dupA", "9434765919", "Alpha", "Ann", "1950-01-01")
    bob = patient("dupB", HUGHES_NHS, "Beta", "Bob", "1960-01-01")
    diabetes = condition("dupC", "urn:uuid:same", "44054006", "Type 2 diabetes mellitus")
    for kind in ("transaction", "batch"):
        message = _bundle(kind, ann, bob, diabetes)
        message["entry"][0]["fullUrl"] = message["entry"][1]["fullUrl"] = "urn:uuid:same"
        response = ics.client.post("/fhir", headers=_token(ics, "dr.patel"), content=json.dumps(message))
        assert response.status_code == 400, response.text
        diagnostics = response.json()["issue"][0]["diagnostics"]
        assert "entry[0] and entry[1] have the same fullUrl 'urn:uuid:same'" in diagnostics
    assert _count(db) == before


def test_a_batch_sending_two_patients_under_one_id_is_refused_400_and_stores_nothing(
        ics: Ics, db: Database) -> None:
    """Ann and Bob, both `Patient/dupA` under two fullUrls: as a batch, Bob was stored over Ann, and Ann's
    diabetes filed under Bob. Refused whole, naming both entries, as a transaction is."""
    before = _count(db)
    ann = patient("dupA", "9434765919", "Alpha", "Ann", "1950-01-01")
    bob = patient("dupA", HUGHES_NHS, "Beta", "Bob", "1960-01-01")
    diabetes = condition("dupC", "urn:uuid:ann", "44054006", "Type 2 diabetes mellitus")
    for kind in ("batch", "transaction"):
        message = _bundle(kind, ann, bob, diabetes)
        message["entry"][0]["fullUrl"], message["entry"][1]["fullUrl"] = "urn:uuid:ann", "urn:uuid:bob"
        response = ics.client.post("/fhir", headers=_token(ics, "dr.patel"), content=json.dumps(message))
        assert response.status_code == 400, response.text
        diagnostics = response.json()["issue"][0]["diagnostics"]
        assert "Patient/dupA is sent twice, in entry[0] and entry[1]" in diagnostics
    assert _count(db) == before


def _refused_storing_nothing(ics: Ics, db: Database, method: str, url: str, body: dict[str, Any], status: int,
                             said: str) -> None:
    """The GP's system sends `body`: refused with `status`, the OperationOutcome saying `said`, nothing stored."""
    before = _count(db)
    response = ics.client.request(method, url, headers=_token(ics, "dr.patel"), content=json.dumps(body))
    assert response.status_code == status, response.text
    assert said in response.json()["issue"][0]["diagnostics"]
    assert _count(db) == before


def test_a_urn_reference_that_names_no_entry_is_refused_naming_the_element(ics: Ics, db: Database) -> None:
    message = _bundle("transaction", _diabetes(encounter={"reference": "urn:uuid:not-in-bundle"}))
    _refused_storing_nothing(ics, db, "POST", "/fhir", message, 422,
                             "Condition.encounter.reference 'urn:uuid:not-in-bundle' names no entry")


def test_a_transaction_with_a_type_the_record_does_not_keep_is_refused_400_naming_the_entry(
        ics: Ics, db: Database) -> None:
    """A PUT of a MedicationRequest answers 404; in a transaction it was answered 200 with a warning, the
    sender told its warfarin order was taken when it was dropped."""
    warfarin = {"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "order",
                "subject": {"reference": "Patient/gp-okafor"}, "medicationCodeableConcept": {"text": "Warfarin 5mg"}}
    asthma = condition("gp-n9", "Patient/gp-okafor", "195967001", "Asthma")
    _refused_storing_nothing(ics, db, "POST", "/fhir", _bundle("transaction", asthma, warfarin), 400,
                             "Bundle.entry[1]: the shared record does not keep MedicationRequest resources")


def test_a_number_sent_as_a_string_is_refused_422_naming_the_element(ics: Ics, db: Database) -> None:
    """Stored as sent, "5.9" was served back as a string: a client reading FHIR JSON finds no number."""
    potassium = {"resourceType": "Observation", "id": "ostr", "status": "final", "code": {"text": "Potassium"},
                 "subject": {"reference": "Patient/gp-okafor"}, "valueQuantity": {"value": "5.9", "unit": "mmol/L"}}
    _refused_storing_nothing(ics, db, "PUT", "/fhir/Observation/ostr", potassium, 422,
                             "Observation.valueQuantity.value: a string (\"5.9\") where FHIR JSON has a number")


def test_a_gp_system_retires_a_duplicate_patient_with_replaced_by_only_into_its_own_patient(
        ics: Ics, db: Database) -> None:
    """Patient.link replaced-by over POST /fhir: merged into the practice's other Patient as an A40 merges; one
    naming another organisation's Patient is refused naming the link, and merges nothing."""
    def person_of_duplicate() -> str:
        with db.session() as s:
            return s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id == "gp-dup")).one()

    duplicate = patient("gp-dup", None, "Okafor", "Emeka", "1954-03-02", postcode="LS1 4AP")
    assert ics.client.post("/fhir", headers=_token(ics, "dr.patel"),
                           content=json.dumps(_bundle("transaction", duplicate))).status_code == 200
    assert person_of_duplicate() != ics.okafor
    theirs = {**duplicate, "active": False, "link": [
        {"other": {"reference": f"Patient/{server_id('P81002', 'Patient', 'gp-other')}"}, "type": "replaced-by"}]}
    response = ics.client.post("/fhir", headers=_token(ics, "dr.patel"),
                               content=json.dumps(_bundle("transaction", theirs)))
    assert response.status_code == 422
    assert "Patient.link[0].other" in response.json()["issue"][0]["location"][0]
    assert person_of_duplicate() not in (ics.okafor, ics.stranger)
    retired = {**theirs, "link": [{"other": {"reference": "Patient/gp-okafor"}, "type": "replaced-by"}]}
    response = ics.client.post("/fhir", headers=_token(ics, "dr.patel"),
                               content=json.dumps(_bundle("transaction", retired)))
    assert response.status_code == 200, response.text
    assert person_of_duplicate() == ics.okafor
