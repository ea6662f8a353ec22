"""The FHIR API says when a reader's view of a record leaves something out, as the portal does (issue 5,
point 5): a GP system reading allergies over FHIR must be able to tell that the list it got is not the
whole list. It says why (the portal's words, by rule), never what or how many, and nothing to a reader
who is refused anyway."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select
from starlette.requests import Request
from tests.builders import SCT, bundle, patient, write_ndjson
from tests.fhir_bundles import resources, withheld
from tests.small_ics import OKAFOR_NHS, Ics, consent_id_of

from sharedcare.api import fhir
from sharedcare.api.auth import mint_token
from sharedcare.config import load_settings
from sharedcare.governance.access_log import details
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.explain import WITHHELD_LABELS
from sharedcare.governance.framework import Framework
from sharedcare.governance.workspace import CitizenWorkspace
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

HIDDEN = "information the patient has chosen not to share"  # the portal's words for consent-deny
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
ROLES = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def _allergy_from_the_gp(db: Database, framework: Framework, tmp_path: Path, how_many: int = 1) -> None:
    allergies = [{"resourceType": "AllergyIntolerance", "id": f"gp-al-{n}", "criticality": "high",
                  "patient": {"reference": "Patient/gp-okafor"},
                  "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]}}
                 for n in range(1, how_many + 1)]
    path = write_ndjson(tmp_path / "gp-allergy.ndjson", [bundle("P81001", "emis", [
        patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), *allergies])])
    assert Pipeline(db, framework).ingest_paths([path]).quarantined == 0


def _mine(ics: Ics) -> dict[str, str]:
    return {"Authorization": f"Bearer {ics.citizen_token()}"}


def _put_consent(ics: Ics, *denies: dict[str, Any]) -> None:
    """The patient's own PUT /fhir/Consent, holding these deny provisions."""
    consent = {"resourceType": "Consent", "id": consent_id_of(OKAFOR_NHS), "status": "active",
               "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                     "code": "patient-privacy"}]},
               "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
               "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": OKAFOR_NHS}},
               "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                          "code": "OPTIN"}]},
               "provision": {"type": "permit", "provision": list(denies)}}
    saved = ics.client.put(f"/fhir/Consent/{consent_id_of(OKAFOR_NHS)}", json=consent,
                           headers={**_mine(ics), "Content-Type": "application/fhir+json"})
    assert saved.status_code == 200, saved.text


def _actor(role: str, org: str) -> dict[str, Any]:
    return {"role": {"coding": [{"system": ROLES, "code": role}]},
            "reference": {"identifier": {"system": ODS, "value": org}}}


def _hide_allergies_from(ics: Ics, org: str) -> None:
    """No allergy of the patient's is shown to `org`'s readers."""
    _put_consent(ics, {"type": "deny", "actor": [_actor("IRCP", org)],
                       "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "AllergyIntolerance"}]})


def _get(ics: Ics, path: str, headers: dict[str, str], request_id: str | None = None) -> dict[str, Any]:
    response = ics.client.get(path, headers={**headers, **({"X-Request-ID": request_id} if request_id else {})})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    Bundle.model_validate(body)  # still a FHIR R4 Bundle, notice and all
    return body


def _types(body: dict[str, Any]) -> set[str]:
    return {r["resourceType"] for r in resources(body)}


def _event(db: Database, request_id: str) -> AuditEntry:
    with db.session() as s:
        return s.scalars(select(AuditEntry).where(AuditEntry.event["source"]["site"].as_string() == request_id)).one()


def test_allergies_the_patient_hid_from_the_hospital_are_signalled_to_its_clinician_and_audited(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    _allergy_from_the_gp(db, framework, tmp_path)
    hospital = ics.open_record("dr.oconnor")
    everything, allergies = f"/fhir/Patient/{ics.okafor}/$everything", f"/fhir/AllergyIntolerance?patient={ics.okafor}"
    assert "AllergyIntolerance" in _types(_get(ics, everything, hospital))
    assert "consent-deny" not in withheld(_get(ics, allergies, hospital))

    _hide_allergies_from(ics, "RXR")
    whole = _get(ics, everything, hospital, "hidden-everything")
    searched = _get(ics, allergies, hospital, "hidden-search")
    assert "AllergyIntolerance" not in _types(whole) and resources(searched) == []
    for body in (whole, searched):
        assert HIDDEN in withheld(body)["consent-deny"]
        assert body["meta"]["security"] == [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                                             "code": "REDACTED", "display": "redacted"}]
        (notice,) = [e for e in body["entry"] if e["search"]["mode"] == "outcome"]
        assert notice["fullUrl"] == f"urn:uuid:{notice['resource']['id']}" and body["entry"][-1] is notice
        # reasons only: what was hidden (its code, its name) and how much are nowhere in the answer
        assert "91936005" not in orjson.dumps(body).decode() and "penicillin" not in orjson.dumps(body).decode()
        assert not any(c.isdigit() for i in notice["resource"]["issue"] for c in i["details"]["text"])
        assert {i["severity"] for i in notice["resource"]["issue"]} == {"information"}
        assert {i["code"] for i in notice["resource"]["issue"]} == {"suppressed"}
    # the read's AuditEvent counts what was withheld, as before
    assert details(_event(db, "hidden-everything"))["withheld:consent-deny"] == "1"
    assert details(_event(db, "hidden-search"))["withheld:consent-deny"] == "1"

    # the same signal whatever `_type` asks for: it is about the record, as the portal's (docs/api.md)
    assert "consent-deny" in withheld(_get(ics, f"{everything}?_type=Condition", hospital))
    # the GP's own allergy is never hidden from the GP, and the GP is told nothing about the choice
    gp = ics.open_record("dr.patel")
    gp_view = _get(ics, everything, gp)
    assert "AllergyIntolerance" in _types(gp_view) and "consent-deny" not in withheld(gp_view)


def test_a_suspended_organisations_data_is_signalled_as_left_out(ics: Ics, framework: Framework) -> None:
    headers = ics.open_record("dr.patel")
    care_plans = f"/fhir/CarePlan?patient={ics.okafor}"
    assert len(resources(_get(ics, care_plans, headers))) == 1
    assert "source-agreement" not in withheld(_get(ics, care_plans, headers))
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    with db.session() as session:
        set_agreement(session, framework, "RYC", "suspended", by="ig.morgan", reason="a breach reported")
    for path in (care_plans, f"/fhir/Patient/{ics.okafor}/$everything"):
        body = _get(ics, path, headers)
        assert "CarePlan" not in _types(body)
        assert withheld(body)["source-agreement"].endswith(f"{WITHHELD_LABELS['source-agreement']}.")


def test_a_role_limited_by_tier_is_told_its_role_does_not_include_some_information(ics: Ics) -> None:
    body = _get(ics, f"/fhir/Patient/{ics.okafor}/$everything", ics.open_record("admin.taylor"))
    # admin staff see demographics only: nothing clinical, their own practice's included
    assert _types(body) == {"Patient"}
    assert WITHHELD_LABELS["tier"] in withheld(body)["tier"]


def test_a_paramedic_is_told_which_service_to_ask_about_what_their_role_sees_only_as_involved(ics: Ics) -> None:
    """As the portal's list of services: the mental health trust holds information (tier 1 for a paramedic),
    with its telephone number, and nothing of what it holds."""
    headers = ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    body = _get(ics, f"/fhir/AllergyIntolerance?patient={ics.okafor}", headers)
    (notice,) = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "outcome"]
    (issue,) = [i for i in notice["issue"] if i["details"]["coding"][0]["code"] == "tier-1-headline"]
    mental_health = ics.client.app.state.framework.organisation("RXM")  # type: ignore[attr-defined]
    assert issue["diagnostics"] == f"Involved, details not shown: Mental health, {mental_health.name}, " \
                                   f"{mental_health.phone}"
    assert "Mental health" in ics.client.get(f"/record/{ics.okafor}", headers=headers).text  # the portal's words
    assert "Depressive" not in orjson.dumps(body).decode() and "35489007" not in orjson.dumps(body).decode()


def test_an_app_narrowed_to_allergies_is_not_told_which_services_are_involved(ics: Ics) -> None:
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    allergy_app = {"Authorization": "Bearer " + mint_token(load_settings(), fw, "para.evans",
                                                              "user/AllergyIntolerance.rs")}
    body = _get(ics, f"/fhir/AllergyIntolerance?patient={ics.okafor}", allergy_app)
    assert "tier-1-headline" in withheld(body)  # something is still withheld, and it could be an allergy
    text = orjson.dumps(body).decode()
    assert "Involved" not in text and "Mental health" not in text and "Riverside and Dales" not in text


def test_the_tier_reason_is_the_roles_and_says_nothing_about_the_patient(ics: Ics) -> None:
    """A paramedic sees nothing of sexual health: told so for Mr Okafor, who has a sexual health record, and
    for Mrs Hughes, who has none, in the API and the portal alike; a GP, who sees every category, never."""
    for person in (ics.okafor, ics.stranger):
        paramedic = ics.open_record("para.evans", person=person, basis="implied-consent",
                                     reason="collapsed, unable to speak")
        for path in (f"/fhir/AllergyIntolerance?patient={person}", f"/fhir/Patient/{person}/$everything"):
            assert withheld(_get(ics, path, paramedic))["tier"].endswith(f"{WITHHELD_LABELS['tier']}.")
        assert WITHHELD_LABELS["tier"] in ics.client.get(f"/record/{person}", headers=paramedic).text
    gp = ics.open_record("dr.patel", person=ics.stranger)
    assert WITHHELD_LABELS["tier"] not in ics.client.get(f"/record/{ics.stranger}", headers=gp).text


def test_a_search_for_a_type_outside_the_tokens_scopes_is_refused_not_answered_empty(
        ics: Ics, db: Database) -> None:
    """A GP system reading allergies with a token for observations must not read 'no known allergies'."""
    ics.open_record("dr.patel", person=ics.stranger)
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    observations = {"Authorization": f"Bearer {mint_token(load_settings(), fw, 'dr.patel', 'user/Observation.rs')}"}
    for n, path in enumerate((f"/fhir/AllergyIntolerance?patient={ics.stranger}",
                              f"/fhir/Patient/{ics.stranger}/$everything?_type=Observation,AllergyIntolerance")):
        refused = ics.client.get(path, headers={**observations, "X-Request-ID": f"out-of-scope-{n}"})
        assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
        assert "(rule deny-scope)" in refused.text and "penicillin" not in refused.text
        event = _event(db, f"out-of-scope-{n}")  # audited as a refused read of her record
        assert (event.outcome, details(event)["rule"], event.patient_id) == ("deny", "deny-scope", ics.stranger)
    # the whole record asked for: what the scopes allow, said to be not all there is
    whole = _get(ics, f"/fhir/Patient/{ics.stranger}/$everything", observations)
    assert "AllergyIntolerance" not in _types(whole)
    assert withheld(whole) == {"scope": f"Some information is not shown: this record leaves out "
                                        f"{WITHHELD_LABELS['scope']}."} and whole["meta"]["security"]
    # the same with a full token: her allergy, and nothing said
    full = ics.token("dr.patel")
    assert "AllergyIntolerance" in _types(_get(ics, f"/fhir/AllergyIntolerance?patient={ics.stranger}", full))


def test_every_page_since_and_revinclude_keep_the_notice(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    _allergy_from_the_gp(db, framework, tmp_path, how_many=2)
    hospital = ics.open_record("dr.oconnor")
    _put_consent(ics, {"type": "deny", "actor": [_actor("IRCP", "RXR")],
                       "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "CarePlan"}]})
    first = _get(ics, f"/fhir/AllergyIntolerance?patient={ics.okafor}&_count=1", hospital)
    (following,) = [link["url"] for link in first["link"] if link["relation"] == "next"]
    second = _get(ics, following.replace("http://testserver", ""), hospital)
    assert "_cursor=" in following and len(resources(first)) == len(resources(second)) == 1
    assert resources(first) != resources(second)
    everything = f"/fhir/Patient/{ics.okafor}/$everything"
    for body in (first, second, _get(ics, f"{everything}?_since=1900-01-01", hospital),
                 _get(ics, f"{everything}?_since=2999-01-01", hospital),
                 _get(ics, f"{everything}?_revinclude=Provenance:target", hospital)):
        assert HIDDEN in withheld(body)["consent-deny"]


def test_the_capability_statement_tells_a_client_to_look_for_the_notice(ics: Ics) -> None:
    rest = ics.client.get("/fhir/metadata").json()["rest"][0]
    assert "OperationOutcome" in rest["documentation"] and "suppressed" in rest["documentation"]


def test_nothing_withheld_means_no_signal(ics: Ics) -> None:
    """Mrs Hughes's practice sends her Patient and an allergy; a GP elsewhere sees both in full."""
    headers = ics.open_record("dr.patel", person=ics.stranger)
    for path in (f"/fhir/Patient/{ics.stranger}/$everything", f"/fhir/AllergyIntolerance?patient={ics.stranger}",
                 f"/fhir/Patient/{ics.stranger}/$everything?_type=AllergyIntolerance&_revinclude=Provenance:target"):
        body = _get(ics, path, headers)
        assert "AllergyIntolerance" in _types(body)
        assert withheld(body) == {} and "meta" not in body
        assert {e["search"]["mode"] for e in body["entry"]} <= {"match", "include"}


def test_a_refused_reader_is_told_nothing_about_what_is_withheld(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    _allergy_from_the_gp(db, framework, tmp_path)
    _hide_allergies_from(ics, "RXR")
    no_basis = ics.client.get(f"/fhir/AllergyIntolerance?patient={ics.okafor}", headers=ics.token("dr.oconnor"))
    assert no_basis.status_code == 403 and "suppressed" not in no_basis.text
    # the patient's own token: the API serves care, so a record is refused to it here as before (the patient
    # reads their own in the patient portal, which says what it leaves out in their words:
    # tests/portal/test_patient_portal.py::test_the_citizen_sees_their_whole_record_with_what_is_withheld_said_plainly)
    for person in (ics.okafor, ics.stranger):
        refused = ics.client.get(f"/fhir/Patient/{person}/$everything", headers=_mine(ics))
        assert refused.status_code in (403, 404) and "suppressed" not in refused.text, refused.text
    # a reader whose organisation the patient objected to: answered as if there were no such patient
    community = ics.open_record("dn.williams")
    _put_consent(ics, {"type": "deny", "actor": [_actor("IRCP", "RYC"), _actor("CST", "RYC")]})
    objected = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=community)
    assert objected.status_code == 404 and "suppressed" not in objected.text


@pytest.mark.parametrize("with_notice", [False, True])
def test_everything_written_from_kept_json_is_the_bundle_the_search_path_writes(
        with_notice: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """`$everything` writes its Bundle from each resource's kept JSON; the bytes must be those of the
    ordinary path, notice and all."""
    monkeypatch.setattr(fhir.uuid, "uuid4", lambda: "00000000-0000-4000-8000-000000000000")
    request = Request({"type": "http", "method": "GET", "scheme": "http", "server": ("testserver", 80),
                       "path": "/fhir/Patient/p/$everything", "query_string": b"", "headers": [], "root_path": "",
                       "app": SimpleNamespace(state=SimpleNamespace(settings=load_settings()))})
    condition = {"resourceType": "Condition", "id": "c1", "code": {"text": "Diabetes"}}
    provenance = {"resourceType": "Provenance", "id": "v1", "target": [{"reference": "Condition/c1"}]}
    notice = ({"resourceType": "OperationOutcome", "id": "n1", "issue": [{"severity": "information",
                                                                          "code": "suppressed"}]}
              if with_notice else None)
    fixed = fhir.utcnow()
    monkeypatch.setattr(fhir, "utcnow", lambda: fixed)
    written = fhir._encoded_bundle(request, [(condition, orjson.dumps(condition)), (provenance, None)], notice)
    assert written.body == fhir.fhir_response(fhir._bundle(request, [condition, provenance], notice)).body


@pytest.mark.parametrize("why", ["suspended", "objected"])
def test_a_role_that_sees_nothing_of_mental_health_is_not_told_that_the_trust_holds_anything(
        ics: Ics, framework: Framework, why: str) -> None:
    """A pharmacist sees nothing of mental health, nor learns that a mental health trust is involved (policy
    rule e). With the trust's agreement suspended, or the patient's objection to the trust, its records were
    withheld by that rule first, and the notice named it for Mr Okafor, whom the trust knows, and would not
    for a patient it does not know: the reason told what `tier` hides (sixth security review, 2026-12-06).
    What the pharmacist is told is now what it was before."""
    pharmacist = ics.open_record("pharm.khan", basis="implied-consent", reason="checking a new prescription")
    paths = (f"/fhir/Patient/{ics.okafor}/$everything", f"/fhir/MedicationStatement?patient={ics.okafor}")
    before = [set(withheld(_get(ics, path, pharmacist))) for path in paths]
    page_before = ics.client.get(f"/record/{ics.okafor}", headers=pharmacist).text
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    with db.session() as session:
        if why == "suspended":
            set_agreement(session, framework, "RXM", "suspended", by="ig.morgan", reason="a breach reported")
        else:
            CitizenWorkspace(session, framework, ics.okafor).set_choice("object-org", "RXM")
    assert [set(withheld(_get(ics, path, pharmacist))) for path in paths] == before
    assert "tier" in before[0] and not before[0] & {"source-agreement", "objection-org"}
    page = ics.client.get(f"/record/{ics.okafor}", headers=pharmacist).text
    assert WITHHELD_LABELS["source-agreement"] not in page and WITHHELD_LABELS["objection-org"] not in page
    assert WITHHELD_LABELS["tier"] in page and WITHHELD_LABELS["tier"] in page_before
