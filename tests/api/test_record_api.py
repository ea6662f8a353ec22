"""The combined record over FHIR: what a partner system or a clinician's app gets, and is refused."""

from __future__ import annotations

import json
from pathlib import Path

from tests.builders import bundle, condition, medication, patient, write_ndjson
from tests.fhir_bundles import entries, resources, withheld
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.fhir.uk_core import ODS_SYSTEM, server_id
from sharedcare.governance.consent import hide_category, set_choice
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

SCT = "http://snomed.info/sct"


def _types(bundle: dict) -> list[str]:
    return [e["resource"]["resourceType"] for e in entries(bundle)]


def _sources(bundle: dict) -> set[str]:
    return {e["resource"]["meta"]["source"].split("|")[1] for e in entries(bundle)
            if e["resource"]["resourceType"] != "Provenance"}


def test_without_a_token_the_api_answers_401_with_an_operation_outcome(ics: Ics) -> None:
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything")
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.headers["content-type"].startswith("application/fhir+json")


def test_a_forged_token_is_refused(ics: Ics) -> None:
    import jwt

    forged = jwt.encode({"sub": "dr.patel", "iss": "sharedcare", "exp": 9999999999}, "x" * 40, algorithm="HS256")
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401


def test_reading_without_a_point_of_care_basis_answers_403_saying_what_to_do(ics: Ics) -> None:
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=ics.token("dr.patel"))
    assert response.status_code == 403
    text = response.json()["issue"][0]["diagnostics"]
    assert "record why you are opening this record" in text


def test_a_gp_sees_the_combined_record_from_every_organisation_with_its_source(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers)
    assert response.status_code == 200
    bundle = response.json()
    assert _sources(bundle) >= {"P81001#emis", "RXR#epr", "RYC#rio", "RXM#rio"}
    patient = entries(bundle)[0]["resource"]
    assert patient["resourceType"] == "Patient" and patient["id"] == ics.okafor
    subjects = {e["resource"].get("subject", {}).get("reference") for e in entries(bundle)[1:]}
    assert subjects == {f"Patient/{ics.okafor}"}
    assert response.headers["cache-control"] == "no-store"


def test_everything_can_include_the_provenance_of_each_resource(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_revinclude=Provenance:target",
                            headers=headers).json()
    provenance = [e["resource"] for e in entries(bundle) if e["resource"]["resourceType"] == "Provenance"]
    clinical = [e["resource"] for e in entries(bundle)
                if e["resource"]["resourceType"] not in ("Patient", "Provenance")]
    assert {p["target"][0]["reference"] for p in provenance} == {f"{r['resourceType']}/{r['id']}" for r in clinical}
    assert {p["agent"][0]["who"]["identifier"]["value"] for p in provenance} >= {"P81001", "RXR"}


def test_a_restricted_document_is_never_shared_and_the_view_says_something_was_withheld(ics: Ics) -> None:
    headers = ics.open_record("dr.oconnor")  # hospital clinician at RXR sees their own restricted letter
    own = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=DocumentReference", headers=headers).json()
    assert len(entries(own)) == 2
    headers = ics.open_record("dr.patel")
    gp = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=DocumentReference", headers=headers).json()
    assert len(entries(gp)) == 1


def test_a_record_the_hospital_marked_very_restricted_is_shared_with_no_one_else(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """v3-Confidentiality V is stricter than R: withheld from every other organisation, the notice saying so."""
    marked = condition("rx-v1", "Patient/MRN1", "44054006", "Type 2 diabetes mellitus",
                       meta={"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                           "code": "V"}]})
    feed = bundle("RXR", "epr", [patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"), marked])
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "v.ndjson", [feed])]).quarantined == 0
    for user, sees in (("dr.oconnor", True), ("dr.patel", False), ("para.evans", False)):
        headers = ics.open_record(user)
        got = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition", headers=headers).json()
        assert any("security" in c.get("meta", {}) for c in resources(got)) == sees, user
        assert ("very-restricted" in withheld(got)) != sees, user


def test_a_result_typed_as_text_reaches_a_pharmacist_only_as_a_value_not_shown(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Results are tier 2 for a pharmacist: coded, without what a clinician typed."""
    wound = {"resourceType": "Observation", "id": "rx-ob2", "status": "final", "subject": {"reference": "Patient/MRN1"},
             "code": {"coding": [{"system": SCT, "code": "225552003", "display": "Wound finding"}]},
             "valueString": "Disclosed partner hit her; refuge address 4 Mill Lane"}
    feed = bundle("RXR", "epr", [patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"), wound])
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "o.ndjson", [feed])]).quarantined == 0
    headers = ics.open_record("pharm.khan")
    got = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Observation", headers=headers).json()
    (shown,) = resources(got)
    assert "valueString" not in shown and "Mill Lane" not in json.dumps(got)
    assert shown["dataAbsentReason"]["coding"][0]["code"] == "masked"
    headers = ics.open_record("dr.oconnor")  # the hospital's own clinician reads it in full
    got = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Observation", headers=headers).json()
    assert [o["valueString"] for o in resources(got)] == [wound["valueString"]]


def test_a_social_worker_sees_medications_as_a_coded_summary_without_free_text(ics: Ics) -> None:
    headers = ics.open_record("sw.brown")
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=MedicationStatement", headers=headers)
    meds = [e["resource"] for e in entries(bundle.json())]
    assert meds and meds[0]["dosage"][0]["text"] == "One tablet daily"
    assert "note" not in meds[0]


def test_over_fhir_a_code_typed_rather_than_coded_and_a_care_plan_title_are_tier_3_only(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """The pharmacist (diagnostics 2) reads the result with its code masked (data-absent-reason), its value kept;
    the paramedic (community 2) the care plan's coded visit without its title or typed category; the GP (tier
    3) reads both as sent."""
    typed = "Told me her partner hits her; staying at refuge, 4 Mill Lane"
    obs = {"resourceType": "Observation", "id": "rx-free", "status": "final", "subject": {"reference": "Patient/MRN1"},
           "code": {"text": typed}, "valueQuantity": {"value": 7, "unit": "{score}"}}
    visit = {"coding": [{"system": SCT, "code": "439708006", "display": "Home visit"}], "text": "Visit at the refuge"}
    plan = {"resourceType": "CarePlan", "id": "ryc-cp2", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/RYC-9"}, "title": "Visits agreed away from her husband",
            "category": [{"text": "Refuge outreach"}], "activity": [{"detail": {"status": "scheduled", "code": visit}}]}
    feeds = [bundle("RXR", "epr", [patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"), obs]),
             bundle("RYC", "rio", [patient("RYC-9", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), plan])]
    db: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "t.ndjson", feeds)]).quarantined == 0
    masked = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "masked",
                          "display": "Masked"}], "text": "Not shown at your access level"}

    def read(username: str, rtype: str, **basis: str) -> tuple[dict, dict]:
        body = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type={rtype}",
                              headers=ics.open_record(username, **basis)).json()
        return next(r for r in resources(body) if r["id"] in (server_id("RXR", "Observation", "rx-free"),
                                                              server_id("RYC", "CarePlan", "ryc-cp2"))), body

    result, body = read("pharm.khan", "Observation")
    assert result["code"] == masked and result["valueQuantity"]["value"] == 7
    assert "Mill Lane" not in json.dumps(body) and withheld(body)  # the Bundle says some information is not shown
    cared, body = read("para.evans", "CarePlan", basis="implied-consent", reason="confused, daughter not present")
    assert "title" not in cared and cared["category"] == [masked]
    assert cared["activity"][0]["detail"]["code"] == {"coding": visit["coding"]}  # the code and what it means
    assert "husband" not in json.dumps(body) and "refuge" not in json.dumps(body).lower()
    assert read("dr.patel", "Observation")[0]["code"] == {"text": typed}
    cared = read("dr.patel", "CarePlan")[0]
    assert cared["title"] == plan["title"] and cared["activity"][0]["detail"]["code"] == visit


def test_a_paramedic_sees_gp_notes_but_no_sexual_health_and_only_that_mental_health_is_involved(ics: Ics) -> None:
    headers = ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    meds = [e["resource"] for e in entries(bundle) if e["resource"]["resourceType"] == "MedicationStatement"]
    assert meds[0]["note"][0]["text"] == "Takes with breakfast"  # summary is tier 3 for paramedics
    conditions = {e["resource"]["code"]["coding"][0]["code"] for e in entries(bundle)
                  if e["resource"]["resourceType"] == "Condition"}
    assert conditions == {"44054006"}  # sexual health: tier 0; mental health: tier 1 headline only


def test_implied_consent_needs_a_reason_of_useful_length(ics: Ics) -> None:
    response = ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "implied-consent", "reason": "x"},
                               headers=ics.token("para.evans"))
    assert response.status_code == 400
    assert "at least 10 characters" in response.json()["issue"][0]["diagnostics"]


def test_an_unknown_basis_is_rejected_with_the_field_named(ics: Ics) -> None:
    response = ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "curiosity"},
                               headers=ics.token("dr.patel"))
    assert response.status_code == 400
    assert "basis" in response.json()["issue"][0]["diagnostics"]


def test_a_basis_for_one_patient_does_not_open_another(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    response = ics.client.get(f"/fhir/Patient/{ics.stranger}/$everything", headers=headers)
    assert response.status_code == 403


def test_an_unknown_patient_is_404(ics: Ics) -> None:
    response = ics.client.post("/api/access/no-such-person", json={"basis": "explicit-consent"},
                               headers=ics.token("dr.patel"))
    assert response.status_code == 404


def test_reading_one_resource_goes_through_the_same_rules(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition", headers=headers).json()
    condition = entries(bundle)[0]["resource"]
    assert ics.client.get(f"/fhir/Condition/{condition['id']}", headers=headers).json()["id"] == condition["id"]
    other = ics.token("nurse.lee")  # no basis for this patient: refused looks the same as missing
    refused = ics.client.get(f"/fhir/Condition/{condition['id']}", headers=other)
    missing = ics.client.get("/fhir/Condition/00000000-0000-0000-0000-000000000000", headers=other)
    assert refused.status_code == missing.status_code == 404
    assert refused.json()["issue"][0]["diagnostics"].split(" ")[:2] == ["no", "Condition"]


def test_admin_staff_see_demographics_only(ics: Ics) -> None:
    headers = ics.open_record("admin.taylor")
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    # nothing clinical, their own practice's included: tier 0 is never, whoever recorded it
    assert {e["resource"]["resourceType"] for e in entries(bundle)} == {"Patient"}
    headers = ics.open_record("admin.taylor", person=ics.stranger)  # registered at another practice
    (patient,) = resources(ics.client.get(f"/fhir/Patient/{ics.stranger}/$everything", headers=headers).json())
    assert patient["resourceType"] == "Patient" and patient["birthDate"] == "1952-06-11"
    assert "address" not in patient and "contact" not in patient  # tier 1: who, not where or whom


def test_a_suspended_organisation_disappears_and_its_users_are_locked_out(ics: Ics, framework: Framework) -> None:
    from sharedcare.governance.agreements import set_agreement

    headers = ics.open_record("dr.patel")
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    with db.session() as session:
        set_agreement(session, framework, "RXR", "suspended", by="ig.morgan", reason="a breach reported")
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    assert "RXR#epr" not in _sources(bundle)
    hospital = ics.token("dr.oconnor")
    assert ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"},
                           headers=hospital).status_code == 403


def test_a_token_scoped_to_one_type_receives_only_that_type(ics: Ics, framework: Framework) -> None:
    from sharedcare.api.auth import mint_token
    from sharedcare.config import load_settings

    ics.open_record("dr.patel")
    narrow = {"Authorization": f"Bearer {mint_token(load_settings(), framework, 'dr.patel', 'user/Condition.read')}"}
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=narrow).json()
    assert {e["resource"]["resourceType"] for e in entries(bundle)} == {"Condition"}
    assert ics.client.post("/fhir/Patient/_search", data={"family": "Okafor", "birthdate": "1945-03-02"},
                           headers=narrow).status_code == 403
    nothing = {"Authorization": f"Bearer {mint_token(load_settings(), framework, 'dr.patel', 'openid')}"}
    assert resources(ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=nothing).json()) == []


def test_a_request_id_that_is_not_an_id_is_replaced(ics: Ics) -> None:
    response = ics.client.get("/fhir/metadata", headers={"X-Request-ID": "x" * 500 + "\r\nforged"})
    assert len(response.headers["x-request-id"]) == 36
    assert ics.client.get("/fhir/metadata", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"


def test_the_shared_demographics_are_the_registered_practices_not_the_newest_gp_record(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """Mrs Hughes left Riverside (P81001) for Castle Street (P81002). Riverside's feed still sends her old
    record, inactive, and later than Castle Street's: a hospital clinician must see where she lives now and
    who her next of kin is, i.e. the practice she is registered with, not whichever GP system sent last."""
    db: Database = ics.client.app.state.database  # type: ignore[attr-defined]

    def gp(code: str, name: str) -> dict:
        return {"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": code}, "display": name}

    old = patient("rv-hughes", "9990000018", "Hughes", "Margaret", "1952-06-11", gender="female",
                  postcode="RV9 9QD", active=False, generalPractitioner=[gp("P81001", "Riverside Medical Centre")],
                  contact=[{"relationship": [{"text": "Husband"}], "name": {"family": "Hughes", "given": ["Late"]}}])
    feed = write_ndjson(tmp_path / "riverside.ndjson", [bundle("P81001", "emis", [old], "2026-11-20T09:00:00Z")])
    assert Pipeline(db, framework).ingest_paths([feed]).quarantined == 0
    headers = ics.open_record("dr.oconnor", person=ics.stranger)
    shown = ics.client.get(f"/fhir/Patient/{ics.stranger}", headers=headers).json()
    assert shown["address"][0]["postalCode"] == "RV9 9QD"  # no record claims her registration: the newest GP's

    now = patient("gp-other", "9990000018", "Hughes", "Margaret", "1952-06-11", gender="female",
                  postcode="RV2 4NW", active=True, generalPractitioner=[gp("P81002", "Castle Street Surgery")],
                  contact=[{"relationship": [{"text": "Daughter"}], "name": {"family": "Hughes", "given": ["Ann"]}}])
    feed = write_ndjson(tmp_path / "castle.ndjson", [bundle("P81002", "systmone", [now], "2026-11-10T09:00:00Z")])
    assert Pipeline(db, framework).ingest_paths([feed]).quarantined == 0
    shown = ics.client.get(f"/fhir/Patient/{ics.stranger}", headers=headers).json()
    assert shown["address"][0]["postalCode"] == "RV2 4NW"
    assert shown["contact"][0]["name"]["given"] == ["Ann"]
    assert {i["value"] for i in shown["identifier"]} >= {"9990000018"}


def test_a_mental_health_trusts_allergy_record_reaches_the_paramedic_and_the_pharmacist(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Hazard HAZ-02: an allergy a mental health trust recorded reaches those who prescribe, coded with its
    criticality but without the trust's notes, while its other records stay mental health data (a
    headline for the paramedic, nothing for the pharmacist). The trust's own clinicians see the notes."""
    allergy = {"resourceType": "AllergyIntolerance", "id": "rxm-al-1", "patient": {"reference": "Patient/RXM-4"},
               "criticality": "high", "note": [{"text": "reaction on the ward during an admission"}],
               "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]}}
    path = write_ndjson(tmp_path / "rxm-allergy.ndjson", [bundle("RXM", "rio", [
        patient("RXM-4", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), allergy])])
    assert Pipeline(db, framework).ingest_paths([path]).accepted >= 1

    def allergies(username: str, basis: str = "explicit-consent", reason: str = "") -> list[dict]:
        headers = ics.open_record(username, basis=basis, reason=reason)
        shown = resources(ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json())
        assert username == "dr.singh" or "35489007" not in json.dumps(shown)  # the depression diagnosis stays
        return [r for r in shown if r["resourceType"] == "AllergyIntolerance"]

    for username, basis, reason in (("para.evans", "emergency", "unconscious at home, no carer present"),
                                    ("pharm.khan", "explicit-consent", "")):
        (shown,) = allergies(username, basis, reason)
        assert (shown["code"]["coding"][0]["code"], shown["criticality"]) == ("91936005", "high")
        assert "note" not in shown
    (own,) = allergies("dr.singh")
    assert own["note"][0]["text"] == "reaction on the ward during an admission"


def test_a_pharmacist_reads_a_mental_health_trusts_allergy_without_learning_the_trust_holds_a_record(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """The pharmacist sees nothing of mental health (tier 0), so the allergy comes from "a specialist
    service": not the trust's name, code, identifiers or system, in the resource or its Provenance. The
    paramedic, who is told the trust is involved (tier 1), still sees whom to ask."""
    allergy = {"resourceType": "AllergyIntolerance", "id": "rxm-al", "patient": {"reference": "Patient/RXM-4"},
               "criticality": "high", "identifier": [{"system": "https://fhir.rxm.nhs.uk/Id/allergy", "value": "7"}],
               "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]}}
    path = write_ndjson(tmp_path / "mh-allergy.ndjson", [bundle("RXM", "rio", [
        patient("RXM-4", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), allergy])])
    assert Pipeline(db, framework).ingest_paths([path]).quarantined == 0
    url = f"/fhir/Patient/{ics.okafor}/$everything?_type=AllergyIntolerance&_revinclude=Provenance:target"
    got = resources(ics.client.get(url, headers=ics.open_record("pharm.khan")).json())
    assert [r["code"]["coding"][0]["code"] for r in got if r["resourceType"] == "AllergyIntolerance"] == ["91936005"]
    text = json.dumps(got)
    assert "RXM" not in text and "rxm" not in text and "Mental Health" not in text
    (provenance,) = [r for r in got if r["resourceType"] == "Provenance"]
    assert provenance["agent"][0]["who"] == {"display": "A specialist service"}
    got = resources(ics.client.get(url, headers=ics.open_record("para.evans")).json())
    assert "RXM" in json.dumps([r for r in got if r["resourceType"] == "Provenance"])


TRUST = "Riverside and Dales Mental Health NHS Foundation Trust"


def test_a_pharmacist_learns_nothing_of_the_mental_health_trust_from_the_references_of_what_it_reads(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """meta.source and the Provenance said "A specialist service", but the references still named the trust:
    the allergy's recorder (a contained Practitioner with the trust's staff number), its asserter (the
    trust's staff identifier system, https://fhir.rxm.nhs.uk/...), and the GP's record of a depot the trust
    gives (informationSource: the trust by name and as Organization/RXM, whose server id anyone can work out
    from the public id namespace). Each is now served as "A specialist service" to a role that may not know
    of the trust; the codes the pharmacist needs still reach it, and the paramedic (told the trust is
    involved) still sees whom to ask."""
    allergy = {"resourceType": "AllergyIntolerance", "id": "rxm-al", "patient": {"reference": "Patient/RXM-4"},
               "criticality": "high",
               "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]},
               "contained": [{"resourceType": "Practitioner", "id": "dr", "name": [{"text": "Dr Ruth Ade"}],
                              "identifier": [{"system": "https://fhir.rxm.nhs.uk/Id/staff", "value": "77"}]}],
               "recorder": {"reference": "#dr"},
               "asserter": {"reference": "Practitioner/rxm-dr-ade", "display": f"Dr Ruth Ade, {TRUST}",
                            "identifier": {"system": "https://fhir.rxm.nhs.uk/Id/staff", "value": "77"}}}
    depot = {**medication("gp-depot", "Patient/gp-okafor-2", "Paliperidone 100mg injection"),
             "informationSource": {"reference": "Organization/RXM", "display": TRUST}}
    feeds = [bundle("RXM", "rio", [patient("RXM-4", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), allergy]),
             bundle("P81001", "emis", [patient("gp-okafor-2", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), depot])]
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "feeds.ndjson", feeds)])
    assert report.quarantined == 0, report.quarantine
    url = (f"/fhir/Patient/{ics.okafor}/$everything?_type=AllergyIntolerance,MedicationStatement"
           "&_revinclude=Provenance:target")
    answer = ics.client.get(url, headers=ics.open_record("pharm.khan")).json()
    got = resources(answer)
    (shown,) = [r for r in got if r["resourceType"] == "AllergyIntolerance"]
    assert (shown["code"]["coding"][0]["code"], shown["criticality"]) == ("91936005", "high")
    assert shown["recorder"] == shown["asserter"] == {"display": "A specialist service"}
    assert "contained" not in shown
    (gp_depot,) = [r for r in got if r["resourceType"] == "MedicationStatement" and "informationSource" in r]
    assert gp_depot["informationSource"] == {"display": "A specialist service"}
    assert gp_depot["medicationCodeableConcept"]["coding"][0]["display"] == "Paliperidone 100mg injection"
    text = json.dumps(answer)  # the Bundle whole: its notice of what was withheld too
    for named in ("RXM", "rxm", "Mental Health", "Ruth Ade", server_id("P81001", "Organization", "RXM"),
                  server_id("RXM", "Practitioner", "rxm-dr-ade")):
        assert named not in text, named
    got = resources(ics.client.get(url, headers=ics.open_record("para.evans")).json())
    (seen,) = [r for r in got if r["resourceType"] == "AllergyIntolerance"]
    assert seen["asserter"]["identifier"]["system"] == "https://fhir.rxm.nhs.uk/Id/staff"


def test_once_he_hides_mental_health_the_hospital_gets_the_trusts_allergy_but_not_the_trusts_name(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """"Hide mental health from everyone" withholds the trust's records and its record of who he is, but its
    allergy is `alerts`, not mental health, and must still reach whoever prescribes (HAZ-02): it named the
    trust, and so did the GP's record of the depot the trust gives, telling the hospital what he hid (patient
    portal review of 2026-12-07, HIGH 2). Both now come from "a specialist service", as for a role that may
    not know of the trust; the codes the clinician needs still arrive, and the page names no trust."""
    allergy = {"resourceType": "AllergyIntolerance", "id": "rxm-al", "patient": {"reference": "Patient/RXM-4"},
               "criticality": "high",
               "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]}}
    depot = {**medication("gp-depot", "Patient/gp-okafor-2", "Paliperidone 100mg injection"),
             "informationSource": {"reference": "Organization/RXM", "display": TRUST}}
    feeds = [bundle("RXM", "rio", [patient("RXM-4", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), allergy]),
             bundle("P81001", "emis", [patient("gp-okafor-2", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), depot])]
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "feeds.ndjson", feeds)]).quarantined == 0
    url = f"/fhir/Patient/{ics.okafor}/$everything?_revinclude=Provenance:target"
    hospital = ics.open_record("dr.oconnor")
    assert "RXM" in json.dumps(ics.client.get(url, headers=hospital).json())  # he has hidden nothing yet
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by=f"patient:{ics.okafor}", person_id=ics.okafor,
                   provision=hide_category("mental_health"))
        s.commit()
    answer = ics.client.get(url, headers=hospital).json()
    got = resources(answer)
    (shown,) = [r for r in got if r["resourceType"] == "AllergyIntolerance"]
    assert (shown["code"]["coding"][0]["code"], shown["criticality"]) == ("91936005", "high")
    (gp_depot,) = [r for r in got if r["resourceType"] == "MedicationStatement" and "informationSource" in r]
    assert gp_depot["informationSource"] == {"display": "A specialist service"}
    text = json.dumps(answer)
    for named in ("RXM", "rxm", "Mental Health", "Depressive", server_id("P81001", "Organization", "RXM")):
        assert named not in text, named
    page = ics.client.get(f"/record/{ics.okafor}", headers=hospital).text
    assert TRUST not in page and "Penicillin" in page.title() and "chosen not to share" in page
    allergy_read = ics.client.get(f"/fhir/AllergyIntolerance/{shown['id']}", headers=hospital).text
    assert "RXM" not in allergy_read and '"source"' not in allergy_read  # served as the pharmacist is served it
