"""A patient's choices as a FHIR Consent over HTTP (TRUST CO1, CO4, CO5): the patient's own token reads
and replaces it; what it denies disappears from the next clinician's read, counted by rule in that read's
AuditEvent; what the decision point could not honour is refused naming the element; no one else may read
or change it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update
from tests.conftest import FRAMEWORK_PATH
from tests.fhir_bundles import entries
from tests.small_ics import OKAFOR_NHS, Ics, consent_id_of, his_number_on_another_record
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.governance.access_log import details
from sharedcare.governance.audit import AuditAction
from sharedcare.governance.consent import hide_category, set_choice
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, Preference

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
ROLES = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CATEGORY = "https://sharedcare.example/fhir/CodeSystem/data-category"
runner = CliRunner()


def _mine(ics: Ics) -> dict[str, str]:
    return {"Authorization": f"Bearer {ics.citizen_token()}"}


def _consent(*denies: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Consent", "id": consent_id_of(OKAFOR_NHS), "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": OKAFOR_NHS}},
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": {"type": "permit", **({"provision": list(denies)} if denies else {})}}


def _okafor_url() -> str:
    return f"/fhir/Consent/{consent_id_of(OKAFOR_NHS)}"


def _reader(org: str) -> dict[str, Any]:
    return {"role": {"coding": [{"system": ROLES, "code": "IRCP"}]},
            "reference": {"identifier": {"system": ODS, "value": org}}}


def _ids(ics: Ics, headers: dict[str, str], request_id: str) -> set[str]:
    """What a read released, as source organisation and resource type (the small ICS has one of each)."""
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything",
                              headers={**headers, "X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    return {f"{r['meta']['source'].split('|')[1].split('#')[0]}:{r['resourceType']}"
            for r in (e["resource"] for e in entries(response.json()))}


def _event(db: Database, request_id: str) -> AuditEntry:
    with db.session() as s:
        return s.scalars(select(AuditEntry).where(AuditEntry.event["source"]["site"].as_string() == request_id)).one()


def _found(ics: Ics, username: str) -> int:
    """How many people a search by the patient's NHS number finds for this user."""
    response = ics.client.post("/fhir/Patient/_search", headers=ics.token(username),
                               data={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{OKAFOR_NHS}"})
    assert response.status_code == 200, response.text
    return len(response.json()["entry"])


HIDE_MENTAL_HEALTH_EXCEPT_GP = {"type": "deny", "code": [{"coding": [{"system": CATEGORY, "code": "mental_health"}]}],
                                "provision": [{"type": "permit", "actor": [_reader("P81001")]}]}


def test_a_patient_hides_their_mental_health_from_everyone_but_their_gp(ics: Ics, db: Database) -> None:
    hospital, gp = ics.open_record("dr.oconnor"), ics.open_record("dr.patel")
    assert "RXM:Condition" in _ids(ics, hospital, "hospital-before")

    found = ics.client.get(f"/fhir/Consent?patient={ics.okafor}", headers=_mine(ics))
    assert found.status_code == 200, found.text
    (entry,) = found.json()["entry"]
    assert entry["resource"]["provision"] == {"type": "permit"}  # nothing chosen: the framework's sharing

    saved = ics.client.put(_okafor_url(), json=_consent(HIDE_MENTAL_HEALTH_EXCEPT_GP),
                           headers={**_mine(ics), "Content-Type": "application/fhir+json"})
    assert saved.status_code == 200, saved.text
    assert saved.json()["meta"]["versionId"] == "1"
    read_back = ics.client.get(_okafor_url(), headers=_mine(ics)).json()
    (deny,) = read_back["provision"]["provision"]
    assert deny["code"][0]["coding"][0]["code"] == "mental_health"
    assert deny["provision"][0]["actor"][0]["reference"]["identifier"]["value"] == "P81001"

    # the very next reads: gone from the hospital's view, counted by rule; still there for the GP
    assert "RXM:Condition" not in _ids(ics, hospital, "hospital-after")
    # the trust's depression diagnosis, and its record of who he is (it would tell that the trust is involved)
    assert details(_event(db, "hospital-after"))["withheld:consent-deny"] == "2"
    assert "RXM:Condition" in _ids(ics, gp, "gp-after")
    with db.session() as s:
        setting = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:preference:set")).one()
        assert details(setting)["consent_version"] == "1"


def test_a_consents_id_and_every_url_naming_it_keep_the_nhs_number_out_of_proxy_logs(ics: Ics, db: Database) -> None:
    """TRUST DP1: a URL is kept by every proxy and access log, so a Consent is named by an opaque id,
    the same at every read; the NHS number is only in the body, and no longer names the Consent."""
    found = ics.client.get(f"/fhir/Consent?patient={ics.okafor}", headers=_mine(ics))
    assert found.status_code == 200, found.text
    (entry,) = found.json()["entry"]
    resource_id = entry["resource"]["id"]
    assert OKAFOR_NHS not in entry["fullUrl"] and OKAFOR_NHS not in resource_id
    assert entry["fullUrl"].endswith(f"/fhir/Consent/{resource_id}")
    assert entry["resource"]["patient"]["identifier"]["value"] == OKAFOR_NHS

    read = ics.client.get(entry["fullUrl"], headers=_mine(ics))
    assert read.status_code == 200, read.text
    assert read.json()["id"] == resource_id  # stable: a client keeps it between reads
    headers = {**_mine(ics), "Content-Type": "application/fhir+json", "If-Match": read.headers["ETag"]}
    saved = ics.client.put(f"/fhir/Consent/{resource_id}", json={**_consent(HIDE_MENTAL_HEALTH_EXCEPT_GP),
                                                                 "id": resource_id}, headers=headers)
    assert saved.status_code == 200, saved.text
    assert saved.json()["id"] == resource_id and saved.headers["ETag"] == 'W/"1"'

    by_number = ics.client.get(f"/fhir/Consent/{OKAFOR_NHS}", headers=_mine(ics))
    assert by_number.status_code == 404  # as any id that is not one of the patient's Consents
    put_by_number = ics.client.put(f"/fhir/Consent/{OKAFOR_NHS}", json={**_consent(), "id": OKAFOR_NHS},
                                   headers={**_mine(ics), "Content-Type": "application/fhir+json"})
    assert put_by_number.status_code == 404
    with db.session() as s:
        held = s.get(Preference, OKAFOR_NHS)
        assert held is not None and held.version == 1 and len(held.provisions) == 1  # the 404 changed nothing


def test_object_to_all_sharing_except_in_an_emergency(ics: Ics) -> None:
    except_emergency = {"type": "deny", "purpose": [{"system": REASON, "code": "TREAT"}],
                        "provision": [{"type": "permit", "purpose": [{"system": REASON, "code": "ETREAT"}]}]}
    assert _found(ics, "pharm.khan") == 1
    saved = ics.client.put(_okafor_url(), json=_consent(except_emergency),
                           headers={**_mine(ics), "Content-Type": "application/fhir+json"})
    assert saved.status_code == 200, saved.text
    ordinary = _ids(ics, ics.open_record("dr.oconnor"), "ordinary")
    emergency = _ids(ics, ics.open_record("para.evans", basis="emergency", reason="Collapsed at home, unresponsive"),
                     "emergency")
    assert not {"P81001:Condition", "P81001:MedicationStatement", "RYC:CarePlan"} & ordinary  # only the hospital's own
    assert {"P81001:Condition", "P81001:MedicationStatement", "RYC:CarePlan"} <= emergency
    # the paramedic (who holds nothing of his) must first find him to break glass; others do not find him
    assert _found(ics, "para.evans") == 1
    assert _found(ics, "pharm.khan") == 0  # a pharmacist may not break glass (found before the choice)


def test_search_finds_a_patient_sharing_only_in_an_emergency_as_the_frameworks_break_glass_rule_says(
        ics: Ics, db: Database, framework: Framework) -> None:
    except_emergency = {"type": "deny", "purpose": [{"system": REASON, "code": "TREAT"}],
                        "provision": [{"type": "permit", "purpose": [{"system": REASON, "code": "ETREAT"}]}]}
    saved = ics.client.put(_okafor_url(), json=_consent(except_emergency),
                           headers={**_mine(ics), "Content-Type": "application/fhir+json"})
    assert saved.status_code == 200, saved.text
    rule = framework.basis["emergency"].model_copy(update={"permission": "access:break-glass"})
    renamed = framework.model_copy(update={"basis": {**framework.basis, "emergency": rule}})
    para = actor_for(renamed, "para.evans")  # his role holds access:emergency, no longer what break glass needs
    assert para.role is not None
    with db.session() as s:
        assert GovernedRecords(s, renamed, para).search_patients(nhs_number=OKAFOR_NHS) == []
    may = replace(para, role=para.role.model_copy(update={"permissions": ["access:break-glass"]}))
    with db.session() as s:
        assert len(GovernedRecords(s, renamed, may).search_patients(nhs_number=OKAFOR_NHS)) == 1


def test_what_the_decision_point_cannot_honour_is_refused_naming_the_element(ics: Ics, db: Database) -> None:
    headers = {**_mine(ics), "Content-Type": "application/fhir+json"}
    for provision, element in (
            ({"type": "deny", "dataPeriod": {"start": "2020-01-01"}}, "Consent.provision.provision[0].dataPeriod"),
            ({"type": "deny", "purpose": [{"system": REASON, "code": "HMARKT"}]},
             "Consent.provision.provision[0].purpose[0]"),
            ({"type": "deny", "actor": [_reader("NOPE1")]}, "Consent.provision.provision[0].actor[0].reference"),
            ({"type": "permit", "actor": [_reader("RXR")]}, "Consent.provision.provision[0].type"),
            ({"type": "deny", "provision": [{"type": "permit", "securityLabel": [{"code": "R"}]}]},
             "Consent.provision.provision[0].provision[0].securityLabel")):
        refused = ics.client.put(_okafor_url(), json=_consent(provision), headers=headers)
        assert refused.status_code == 400, refused.text
        (issue,) = refused.json()["issue"]
        assert issue["expression"] == [element]
        # quoted like every other refusal: the correlation id the support desk finds it by
        assert refused.json()["extension"][0]["valueString"] == refused.headers["X-Request-ID"]
    not_fhir = ics.client.put(_okafor_url(), json={**_consent(), "status": "nonsense"},
                              headers=headers)
    assert not_fhir.status_code == 400 and "status" in not_fhir.text
    with db.session() as s:
        assert s.get(Preference, OKAFOR_NHS) is None  # nothing was held


def test_no_clinician_or_other_organisation_may_read_or_change_a_patients_consent(ics: Ics, db: Database) -> None:
    clinician = ics.token("dr.patel")
    assert ics.client.get(f"/fhir/Consent?patient={ics.okafor}", headers=clinician).status_code == 403
    assert ics.client.get(_okafor_url(), headers=clinician).status_code == 403
    changed = ics.client.put(_okafor_url(), json=_consent(),
                             headers={**clinician, "Content-Type": "application/fhir+json"})
    assert changed.status_code == 403
    assert "only the patient" in changed.json()["issue"][0]["diagnostics"]
    stranger = {"Authorization": f"Bearer {ics.citizen_token(ics.stranger)}"}
    assert ics.client.get(_okafor_url(), headers=stranger).status_code == 404
    assert ics.client.get(f"/fhir/Consent?patient={ics.okafor}", headers=stranger).status_code == 404
    stranger_put = ics.client.put(_okafor_url(), json=_consent(),
                                  headers={**stranger, "Content-Type": "application/fhir+json"})
    assert stranger_put.status_code == 404
    with db.session() as s:
        refused = s.scalars(select(AuditEntry).where(AuditEntry.outcome == "deny",
                                                     AuditEntry.action.like("governance:preference:%"))).all()
        assert [details(e)["rule"] for e in refused] == ["deny-not-own-consent"] * 6  # the patient's own tries too
        assert [e.patient_id for e in refused][3:] == [ics.stranger] * 3
        assert s.get(Preference, OKAFOR_NHS) is None


def test_the_three_earlier_choices_are_consent_provisions_and_come_back_as_they_were(ics: Ics, db: Database) -> None:
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", object_org="RYC")
        set_choice(s, OKAFOR_NHS, by="patient", object_all=True)
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=True)
    consent = ics.client.get(_okafor_url(), headers=_mine(ics)).json()
    denies = consent["provision"]["provision"]
    assert denies[0] == {"type": "deny"}  # object to all sharing
    assert {(a["role"]["coding"][0]["code"], a["reference"]["identifier"]["value"]) for a in denies[1]["actor"]} \
        == {("IRCP", "RYC"), ("CST", "RYC")}  # object to one organisation, both ways
    assert {p["code"] for p in denies[2]["purpose"]} == {"HOPERAT", "HRESCH"}  # opt out of secondary use
    sent_back = ics.client.put(_okafor_url(), json=consent,
                               headers={**_mine(ics), "Content-Type": "application/fhir+json"})
    assert sent_back.status_code == 200, sent_back.text
    with db.session() as s:
        held = s.get(Preference, OKAFOR_NHS)
        assert held is not None
        assert (held.object_all, held.object_orgs, held.opt_out_secondary, held.provisions) == (True, ["RYC"], True, [])
        assert held.version == 4


def test_search_does_not_find_a_patient_through_records_their_consent_hides_from_the_searcher(ics: Ics) -> None:
    def found(username: str) -> int:
        return _found(ics, username)

    assert found("para.evans") == 1
    from_ambulance = {"type": "deny", "actor": [_reader("RYA")]}  # the ambulance service holds nothing of his
    saved = ics.client.put(_okafor_url(), json=_consent(from_ambulance),
                           headers={**_mine(ics), "Content-Type": "application/fhir+json"})
    assert saved.status_code == 200, saved.text
    assert found("para.evans") == 0
    assert found("dr.oconnor") == 1  # another organisation is unaffected


def test_a_change_sent_against_an_older_version_is_refused_and_changes_nothing(ics: Ics, db: Database) -> None:
    headers = {**_mine(ics), "Content-Type": "application/fhir+json"}
    read = ics.client.get(_okafor_url(), headers=_mine(ics))
    assert read.headers["ETag"] == 'W/"0"'
    first = ics.client.put(_okafor_url(), json=_consent(HIDE_MENTAL_HEALTH_EXCEPT_GP),
                           headers={**headers, "If-Match": read.headers["ETag"]})
    assert first.status_code == 200, first.text
    assert first.headers["ETag"] == 'W/"1"'
    stale = ics.client.put(_okafor_url(), json=_consent(),  # drawn from version 0: would clear it
                           headers={**headers, "If-Match": 'W/"0"'})
    assert stale.status_code == 412, stale.text
    assert "already changed" in stale.json()["issue"][0]["diagnostics"]
    with db.session() as s:
        held = s.get(Preference, OKAFOR_NHS)
        assert held is not None and held.version == 1 and len(held.provisions) == 1
        (refusal,) = s.scalars(select(AuditEntry).where(AuditEntry.outcome == "deny")).all()
        assert details(refusal)["rule"] == "deny-consent-version-changed"


def _put_raw(ics: Ics, path: str, headers: dict[str, bytes], body: bytes) -> int:
    """A PUT with header bytes sent as they are (the test client re-encodes a non-ASCII header)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v) for k, v in headers.items()],
             "client": ("testclient", 50000), "server": ("testserver", 80)}
    with contextlib.suppress(Exception):  # an unhandled error is re-raised after its 500 is sent
        asyncio.run(ics.client.app(scope, receive, send))  # type: ignore[arg-type]
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def test_an_if_match_with_a_non_ascii_digit_is_refused_as_a_bad_request_and_audited(ics: Ics, db: Database) -> None:
    headers = {k: v.encode() for k, v in _mine(ics).items()} | {"Content-Type": b"application/fhir+json",
                                                               "If-Match": b'W/"\xb2"'}  # W/"²" read as Latin-1
    status = _put_raw(ics, _okafor_url(), headers,
                      orjson.dumps(_consent(HIDE_MENTAL_HEALTH_EXCEPT_GP)))
    assert status == 400
    with db.session() as s:
        assert s.get(Preference, OKAFOR_NHS) is None
        (refusal,) = s.scalars(select(AuditEntry).where(AuditEntry.outcome == "deny")).all()
        assert details(refusal)["rule"] == "deny-invalid-request"


def _nested(depth: int) -> dict[str, Any]:
    """A deny with exceptions nested `depth` deep below it (permit, deny, permit, ...)."""
    provision: dict[str, Any] = {"type": "permit" if depth % 2 else "deny"}
    for level in range(depth - 1, -1, -1):
        provision = {"type": "permit" if level % 2 else "deny", "provision": [provision]}
    return provision


def test_a_hostile_or_empty_consent_is_refused_naming_the_element_and_nothing_is_held(ics: Ics, db: Database) -> None:
    headers = {**_mine(ics), "Content-Type": "application/fhir+json"}
    modifier = [{"url": "https://example.org/reverse", "valueBoolean": True}]
    without_patient = _consent()
    del without_patient["patient"]
    for body, element in (
            (without_patient, "Consent.patient"),
            ({**_consent(), "modifierExtension": modifier}, "Consent.modifierExtension"),
            ({**_consent(), "policy": [{"uri": "https://example.org/anything"}]}, "Consent.policy"),
            (_consent({"type": "deny", "modifierExtension": modifier}),
             "Consent.provision.provision[0].modifierExtension"),
            (_consent({"type": "deny", "actor": []}), "Consent.provision.provision[0].actor"),  # not "object to all"
            (_consent({"type": "deny", "code": [{"coding": [{"system": CATEGORY, "code": "mental_health"}]}],
                       "provision": [{"type": "permit", "actor": []}]}),  # not an unconditional permit
             "Consent.provision.provision[0].provision[0].actor"),
            (_consent(_nested(4)), "Consent.provision.provision[0].provision[0].provision[0].provision[0].provision"),
            (_consent(_nested(150)), None)):
        refused = ics.client.put(_okafor_url(), json=body, headers=headers)
        assert refused.status_code == 400, refused.text
        if element is not None:
            assert refused.json()["issue"][0]["expression"] == [element]
    assert ics.client.put(_okafor_url(), json=_consent(_nested(3)), headers=headers).status_code == 200
    with db.session() as s:
        held = s.get(Preference, OKAFOR_NHS)
        assert held is not None and held.version == 1  # only the last, honourable one
        refusals = s.scalars(select(AuditEntry).where(AuditEntry.outcome == "deny",
                                                      AuditEntry.action == "governance:preference:set")).all()
        assert len(refusals) == 8 and {details(e)["rule"] for e in refusals} == {"deny-consent-not-honoured"}
        assert details(refusals[0])["where"] == "Consent.patient"


def test_a_hostile_period_key_or_size_is_refused_with_a_short_element_name_and_audited(ics: Ics, db: Database) -> None:
    headers = {**_mine(ics), "Content-Type": "application/fhir+json"}
    long_key = "x" * 3000 + "\n\u0000"
    for body, element in (
            (_consent({"type": "deny", "period": {"start": 5}}), "Consent.provision.provision[0].period.start"),
            (_consent({"type": "deny", "period": {"start": 5.5}}), "Consent.provision.provision[0].period.start"),
            (_consent({"type": "deny", "period": {"start": "2026-07-01T10:00:60Z"}}),
             "Consent.provision.provision[0].period.start"),
            (_consent({"type": "deny", "period": {"start": "0001-01-01T00:00:00+14:00"}}),
             "Consent.provision.provision[0].period.start"),
            (_consent({"type": "deny", "period": {"end": "9999-12-31T23:59:59-01:00"}}),
             "Consent.provision.provision[0].period.end"),
            (_consent({"type": "deny", long_key: True}), "Consent.provision.provision[0]"),
            ({**_consent(), long_key: True}, "Consent")):
        refused = ics.client.put(_okafor_url(), json=body, headers=headers)
        assert refused.status_code == 400, refused.text
        assert refused.json()["issue"][0].get("expression") == [element], (element, refused.text[:500])
        assert "xxxx" not in refused.text
    too_big = _consent({"type": "deny", "code": [{"coding": [{"system": CATEGORY, "code": "mental_health"}]}] * 4000})
    refused = ics.client.put(_okafor_url(), json=too_big, headers=headers)
    assert refused.status_code == 400 and "larger than" in refused.text
    with db.session() as s:
        assert s.get(Preference, OKAFOR_NHS) is None
        refusals = s.scalars(select(AuditEntry).where(AuditEntry.outcome == "deny")).all()
        assert len(refusals) == 8 and all(len(details(e)["where"]) <= 120 for e in refusals)
        assert details(refusals[-1])["where"] == "body"


def test_a_consent_sent_for_one_nhs_number_replaces_the_choices_held_against_all_of_the_persons(
        ics: Ics, db: Database) -> None:
    other_number = "9434765927"
    with db.session() as s:  # the mental health trust knows him by another NHS number, linked to him
        s.execute(update(PatientRecord).where(PatientRecord.source_id == "RXM-4").values(nhs_number=other_number))
        for number in (OKAFOR_NHS, other_number):  # as the portal adds a choice: to each of his numbers
            set_choice(s, number, by="patient", provision=hide_category("mental_health"))
    headers = {**_mine(ics), "Content-Type": "application/fhir+json"}
    hospital = ics.open_record("dr.oconnor")
    assert "RXM:Condition" not in _ids(ics, hospital, "hidden")

    cleared = ics.client.put(_okafor_url(), json=_consent(), headers=headers)
    assert cleared.status_code == 200, cleared.text
    found = ics.client.get(f"/fhir/Consent?patient={ics.okafor}", headers=_mine(ics)).json()
    assert {e["resource"]["id"] for e in found["entry"]} == {consent_id_of(OKAFOR_NHS), consent_id_of(other_number)}
    assert all(e["resource"]["provision"] == {"type": "permit"} for e in found["entry"])
    assert "RXM:Condition" in _ids(ics, hospital, "shown-again")  # no copy left in force under the other number


def test_a_consent_sent_against_one_numbers_version_never_undoes_a_choice_held_only_against_another(
        ics: Ics, db: Database) -> None:
    other_number = "9434765927"
    with db.session() as s:  # the mental health trust knows him by another NHS number, linked to him
        s.execute(update(PatientRecord).where(PatientRecord.source_id == "RXM-4").values(nhs_number=other_number))
        s.commit()
    read = ics.client.get(_okafor_url(), headers=_mine(ics))  # the app reads the first number's
    with db.session() as s:  # meanwhile an objection is recorded against the other number alone (as the CLI does)
        set_choice(s, other_number, by="ig.officer", object_org="RYC")
        s.commit()
    headers = {**_mine(ics), "Content-Type": "application/fhir+json", "If-Match": read.headers["ETag"]}
    stale = ics.client.put(_okafor_url(), json=_consent(HIDE_MENTAL_HEALTH_EXCEPT_GP), headers=headers)
    assert stale.status_code == 412, stale.text
    with db.session() as s:
        held = s.get(Preference, other_number)
        assert held is not None and held.object_orgs == ["RYC"] and held.version == 1  # the objection stands
        mine = s.get(Preference, OKAFOR_NHS)
        assert mine is None or (mine.version == 0 and not mine.provisions)


def test_an_operator_records_a_consent_from_the_command_line_for_a_patient_without_the_app(
        ics: Ics, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A patient who asked at their practice in writing: the IG team records the same Consent the app
    would send; `preferences show` reads it back (audited); a Consent it cannot honour is refused naming
    the file and element, and changes nothing."""
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    other_number = "9434765927"
    with db.session() as s:  # the mental health trust knows him by another NHS number, linked to him
        s.execute(update(PatientRecord).where(PatientRecord.source_id == "RXM-4").values(nhs_number=other_number))
    hospital = ics.open_record("dr.oconnor")
    assert "RXM:Condition" in _ids(ics, hospital, "before")

    sent = tmp_path / "consent.json"
    sent.write_text(json.dumps(_consent(HIDE_MENTAL_HEALTH_EXCEPT_GP)))
    result = runner.invoke(app, ["preferences", "set", OKAFOR_NHS, "--consent", str(sent)])
    assert result.exit_code == 0, result.stderr
    assert f"choices replaced for {OKAFOR_NHS}, {other_number}: 1 provision(s)" in result.stderr
    assert "RXM:Condition" not in _ids(ics, hospital, "after")  # the very next read
    assert "RXM:Condition" in _ids(ics, ics.open_record("dr.patel"), "gp-after")

    shown = runner.invoke(app, ["preferences", "show", other_number, "--json"])
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == consent_id_of(other_number)  # as the API names it
    (deny,) = json.loads(shown.stdout)["provision"]["provision"]
    assert deny["code"][0]["coding"][0]["code"] == "mental_health"
    monkeypatch.setenv("COLUMNS", "200")  # rich's width when not on a terminal
    table = runner.invoke(app, ["preferences", "show", OKAFOR_NHS])
    assert "mental_health" in table.stdout and "version 1" in table.stdout
    with db.session() as s:
        views = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:preference:view")).all()
    assert [(v.username, v.patient_id) for v in views] == [("cli", ics.okafor)] * 2

    unhonoured = _consent({"type": "deny", "securityLabel": [{"code": "R"}]})
    sent.write_text(json.dumps(unhonoured))
    refused = runner.invoke(app, ["preferences", "set", OKAFOR_NHS, "--consent", str(sent)])
    assert refused.exit_code == 2
    assert f"{sent}: Consent.provision.provision[0].securityLabel" in " ".join(refused.stderr.split())
    sent.write_text("{not json")
    broken = runner.invoke(app, ["preferences", "set", OKAFOR_NHS, "--consent", str(sent)])
    assert broken.exit_code == 2 and "line 1, column 2: not JSON" in broken.stderr
    assert "RXM:Condition" not in _ids(ics, hospital, "still-hidden")  # nothing changed by either


def test_a_token_for_a_record_carrying_his_number_neither_reads_nor_replaces_his_consent(
        ics: Ics, db: Database, tmp_path: Path) -> None:
    """A baby's record sent with Mr Okafor's NHS number is another person, kept apart for review. A patient token
    for that person (signed in before, or by the sign-in this review closed) read his objection and replaced it
    (review of 2026-12-07, F1): the number is now no one's to read or change choices by while two persons
    hold it, so the token finds no Consent of its own and his is untouched. The token is refused outright now:
    its NHS number and date of birth lead to no one person (a session is who its sign-in details say)."""
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="cli", object_all=True)
        s.commit()
    other = his_number_on_another_record(db, ics.client.app.state.framework, tmp_path)  # type: ignore[attr-defined]
    theirs = {"Authorization": f"Bearer {ics.citizen_token(other)}"}
    found = ics.client.get(f"/fhir/Consent?patient=Patient/{other}", headers=theirs)
    assert found.status_code == 401 and "no longer lead to one person's record" in found.text
    assert ics.client.get(_okafor_url(), headers=theirs).status_code == 401
    replaced = ics.client.put(_okafor_url(), json=_consent(),
                              headers={**theirs, "Content-Type": "application/fhir+json"})
    assert replaced.status_code == 401
    with db.session() as s:
        held = s.get(Preference, OKAFOR_NHS)
        assert held is not None and held.object_all and held.version == 1
        refusals = s.scalars(select(AuditEntry).where(AuditEntry.username == f"patient:{other}",
                                                      AuditEntry.outcome == "deny")).all()
        assert [e.action for e in refusals] == [AuditAction.CREDENTIALS_REFUSED.value] * 3


def test_a_consent_sent_with_post_is_answered_405_naming_get_and_put_not_that_consents_are_not_kept(
        ics: Ics) -> None:
    """An app that POSTs a patient's Consent was told "resource type 'Consent' is not kept" (404), as if the
    service had no Consent at all (review of 2026-12-07, F5)."""
    posted = ics.client.post("/fhir/Consent", json=_consent(),
                             headers={**_mine(ics), "Content-Type": "application/fhir+json"})
    assert posted.status_code == 405 and posted.headers["allow"] == "GET, PUT"
    issue = posted.json()["issue"][0]
    assert posted.json()["resourceType"] == "OperationOutcome" and issue["code"] == "not-supported"
    assert "PUT /fhir/Consent/" in issue["diagnostics"] and "not kept" not in posted.text
