"""The UK Core rules at ingest (identifier systems, ODS codes, SNOMED CT and dm+d codes, required codes): what
a feed's engineer notices in every format, a located refusal naming the element and the rule, nothing else lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from stdnum import verhoeff
from tests.builders import SCT, condition, medication, patient, write_ndjson
from tests.ingest.test_csv_extract import MOSAIC, _extract, _lrc, _row
from tests.ingest.test_fhir_xml_and_batch import GOOD_NHS, _gp, _stored
from tests.ingest.test_hl7v2 import admission, results, write_hl7
from tests.small_ics import Ics

from sharedcare.fhir.uk_core_rules import _code_problem, sctid_problem, uk_core_problems
from sharedcare.governance.framework import Framework
from sharedcare.ingest.mllp import MllpServer
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import Quarantine, Resource

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
DMD = "https://dmd.nhs.uk"


def _patient(**changes: Any) -> dict[str, Any]:
    return {**patient("gp-1", GOOD_NHS, "Okafor", "Emeka", "1945-03-02"), **changes}


def _coded(code: str, system: str = SCT) -> dict[str, Any]:
    return {**condition("gp-c1", "Patient/gp-1", "44054006", "Type 2 diabetes mellitus"),
            "code": {"coding": [{"system": system, "code": code, "display": "as sent"}]}}


def _practice(code: str, system: str = ODS) -> dict[str, Any]:
    return _patient(generalPractitioner=[{"identifier": {"system": system, "value": code}}])


BROKEN: dict[str, tuple[dict[str, Any], str, str]] = {
    # case: (resource, the element named, the rule named)
    "NHS number failing modulus 11": (_patient(identifier=[{"system": "https://fhir.nhs.uk/Id/nhs-number",
                                                            "value": "9434765918"}]),
                                      "Patient.identifier[0].value", "UK Core nhsNumber: the NHS number fails the "
                                      "modulus 11 check"),
    "NHS number under the HL7 OID": (_patient(identifier=[{"system": "urn:oid:2.16.840.1.113883.2.1.4.1",
                                                           "value": GOOD_NHS}]),
                                     "Patient.identifier[0].system", "UK Core nhsNumber: an NHS number is identified "
                                     "by https://fhir.nhs.uk/Id/nhs-number, not the legacy"),
    "NHS number under Care Connect's system": (_patient(identifier=[{"system": "http://fhir.nhs.net/Id/nhs-number",
                                                                     "value": GOOD_NHS}]),
                                               "Patient.identifier[0].system", "UK Core nhsNumber"),
    "a reference's NHS number": ({**_coded("44054006"), "subject": {"identifier": {
        "system": "https://fhir.nhs.uk/Id/nhs-number", "value": "1234567890"}}},
                                 "Condition.subject.identifier.value", "UK Core nhsNumber"),
    "ODS code with punctuation": (_practice("P81-001"), "Patient.generalPractitioner[0].identifier.value",
                                  "UK Core ODS organisation code: 'P81-001' is not shaped as an ODS code"),
    "ODS code in lower case": (_practice("p81001"), "Patient.generalPractitioner[0].identifier.value",
                               "UK Core ODS organisation code"),
    "ODS code too long": (_practice("P81001P81001"), "Patient.generalPractitioner[0].identifier.value",
                          "UK Core ODS organisation code"),
    "ODS site code too short": (_practice("R1", "https://fhir.nhs.uk/Id/ods-site-code"),
                                "Patient.generalPractitioner[0].identifier.value", "UK Core ODS site code"),
    "SNOMED CT check digit wrong": (_coded("44054007"), "Condition.code.coding[0].code",
                                    "UK Core SNOMED CT: the check digit fails (Verhoeff) ('44054007')"),
    "SNOMED CT digits transposed": (_coded("44045006"), "Condition.code.coding[0].code", "Verhoeff"),
    "SNOMED CT description id": (_coded("1222663017"), "Condition.code.coding[0].code",
                                 "partition identifier 01 is a description's, not a concept's"),
    "SNOMED CT too short": (_coded("12345"), "Condition.code.coding[0].code", "an SCTID has 6 to 18 digits, not 5"),
    "SNOMED CT leading zero": (_coded("044054006"), "Condition.code.coding[0].code", "no leading zero"),
    "a Read code under SNOMED CT": (_coded("C10F."), "Condition.code.coding[0].code", "not an SCTID"),
    "SNOMED CT coding without a code": ({**_coded("x"), "code": {"coding": [
        {"system": SCT, "display": "Type 2 diabetes mellitus"}]}}, "Condition.code.coding[0]", "(code 1..1)"),
    "an expression with a wrong concept": (_coded("71388002:405813007=15497007"), "Condition.code.coding[0].code",
                                           "the expression's 15497007: the check digit fails"),
    "dm+d id with a wrong check digit": (
        {**medication("gp-m1", "Patient/gp-1", "Metformin 500mg tablets"),
         "medicationCodeableConcept": {"coding": [{"system": DMD, "code": "39720311000001102"}]}},
        "MedicationStatement.medicationCodeableConcept.coding[0].code", "UK Core dm+d: the check digit fails"),
    "allergy without a code": ({"resourceType": "AllergyIntolerance", "id": "al-1",
                                "patient": {"reference": "Patient/gp-1"}},
                               "AllergyIntolerance.code",
                               "UK Core: code is required (1..1 in UKCore-AllergyIntolerance)"),
}

SOUND: dict[str, dict[str, Any]] = {
    "a valid NHS number": _patient(),
    "GP practice, trust, independent provider and registry codes": _patient(generalPractitioner=[
        {"identifier": {"system": ODS, "value": code}} for code in ("P81001", "RXR", "8HA04", "Y0401")]),
    "an ODS site code": _practice("RXR01", "https://fhir.nhs.uk/Id/ods-site-code"),
    "a concept id": _coded("44054006"),
    "a UK extension concept id (partition 10)": _coded("196471000000108"),
    "a post-coordinated expression": _coded("71388002 |Procedure|: 405813007 |Procedure site| = 15497006"),
    "a dm+d VMP": medication("gp-m1", "Patient/gp-1", "Metformin 500mg tablets"),
    "a local code under a local system": _coded("FILM", "https://fhir.rxr.nhs.uk/CodeSystem/lab"),
    "a Read code under the Read system": _coded("C10F.", "http://read.info/readv2"),
    # UK Core leaves these 0..1: refusing them would be stricter than UK Core
    "a Condition with no code": {k: v for k, v in _coded("44054006").items() if k != "code"},
    "a Procedure with no code": {"resourceType": "Procedure", "id": "p1", "status": "completed",
                                 "subject": {"reference": "Patient/gp-1"}},
    "an allergy with a code": {"resourceType": "AllergyIntolerance", "id": "al-1",
                               "patient": {"reference": "Patient/gp-1"},
                               "code": {"coding": [{"system": SCT, "code": "91936005"}]}},
}


@pytest.mark.parametrize("case", BROKEN)
def test_each_rule_is_refused_naming_the_element_and_the_rule(case: str) -> None:
    resource, element, rule = BROKEN[case]
    problems = uk_core_problems(resource)
    assert any(p.startswith(f"{element}: ") and rule in p for p in problems), problems


@pytest.mark.parametrize("case", SOUND)
def test_what_uk_core_allows_passes(case: str) -> None:
    assert uk_core_problems(SOUND[case]) == []


def _sctid(item: int, extension: int | None) -> str:
    """A concept's SCTID: item id, then (for an extension) its 7-digit namespace, partition, check digit."""
    body = f"{item}{extension:07d}10" if extension is not None else f"{item}00"
    return body + verhoeff.calc_check_digit(body)


SCTIDS = st.builds(_sctid, st.integers(100, 10**8 - 1), st.none() | st.integers(1_000_000, 9_999_999))  # to 18 digits


@given(SCTIDS)
def test_every_well_formed_concept_sctid_passes(sctid: str) -> None:
    assert sctid_problem(sctid) is None


@given(SCTIDS, st.data())
def test_any_single_digit_change_is_refused(sctid: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(sctid) - 1))
    digit = data.draw(st.sampled_from([d for d in "0123456789" if d != sctid[at]]))
    assert sctid_problem(sctid[:at] + digit + sctid[at + 1:]) is not None


@given(SCTIDS, st.data())
def test_any_swap_of_adjacent_digits_is_refused(sctid: str, data: st.DataObject) -> None:
    at = data.draw(st.sampled_from([i for i in range(len(sctid) - 1) if sctid[i] != sctid[i + 1]]))
    assert sctid_problem(sctid[:at] + sctid[at + 1] + sctid[at] + sctid[at + 2:]) is not None


# --- through the real pipeline, per format ------------------------------------------------------------------


def test_a_batch_entry_with_a_wrong_snomed_code_is_held_and_the_rest_stored(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    message = _gp("batch", patient("gp-1", GOOD_NHS, "Okafor", "Emeka", "1945-03-02"),
                  condition("gp-c1", "Patient/gp-1", "44054006", "Type 2 diabetes mellitus"),
                  condition("gp-c2", "Patient/gp-1", "38341004", "Hypertensive disorder"),
                  medication("gp-m1", "Patient/gp-1", "Metformin 500mg tablets"))
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [message])])
    assert (report.accepted, report.quarantined) == (3, 1), report.quarantine
    (held,) = report.quarantine
    assert held["location"] == "line 1, entry[2]"
    assert held["reason"] == ("Condition/gp-c2: Condition.code.coding[0].code: UK Core SNOMED CT: the check digit "
                              "fails (Verhoeff) ('38341004')")
    assert set(_stored(db)) == {"gp-1", "gp-c1", "gp-m1"}


def test_a_transaction_naming_the_nhs_number_by_its_oid_stores_nothing_and_says_which_system(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    legacy = _patient(identifier=[{"system": "urn:oid:2.16.840.1.113883.2.1.4.1", "value": GOOD_NHS}])
    message = _gp("transaction", legacy, condition("gp-c1", "Patient/gp-1", "44054006", "Type 2 diabetes mellitus"))
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [message])])
    assert (report.accepted, report.quarantined) == (0, 1)
    assert "entry[0]" in report.quarantine[0]["where"]
    assert ("Patient.identifier[0].system: UK Core nhsNumber: an NHS number is identified by "
            "https://fhir.nhs.uk/Id/nhs-number, not the legacy 'urn:oid:2.16.840.1.113883.2.1.4.1'"
            in report.quarantine[0]["reason"])
    assert _stored(db) == {}


def test_post_fhir_refuses_a_wrong_dmd_code_with_an_operation_outcome_naming_the_path(ics: Ics) -> None:
    headers = ics.token("dr.patel", "user/*.read user/*.write") | {"Content-Type": "application/fhir+json"}
    sent = medication("gp-m9", "Patient/gp-okafor", "Ramipril 5mg capsules")
    sent["medicationCodeableConcept"]["coding"][0]["code"] = "39720311000001102"
    response = ics.client.post("/fhir/MedicationStatement", headers=headers, content=json.dumps(sent))
    assert response.status_code == 422, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert ("MedicationStatement.medicationCodeableConcept.coding[0].code: UK Core dm+d: the check digit fails"
            in response.json()["issue"][0]["diagnostics"])
    sent["medicationCodeableConcept"]["coding"][0]["code"] = "39720311000001101"
    assert ics.client.post("/fhir/MedicationStatement", headers=headers, content=json.dumps(sent)).status_code == 201


def _segments(ack: bytes) -> dict[str, list[str]]:
    return {s.split("|")[0]: s.split("|") for s in ack.decode("latin-1").split("\r") if s}


def test_an_hl7_result_with_a_wrong_snomed_code_is_answered_ae_naming_obx_3(db: Database,
                                                                           framework: Framework) -> None:
    message = results().replace("1011481000000105^eGFR^SCT", "1011481000000106^eGFR^SCT").encode("latin-1")
    ack = _segments(MllpServer(Pipeline(db, framework)).handle(message, "127.0.0.1:2575"))
    assert ack["MSA"][1] == "AE" and "UK Core SNOMED CT: the check digit fails" in ack["MSA"][3]
    assert ack["ERR"][1] == "OBX^3^3" and "Observation.code.coding[0].code" in ack["ERR"][8]
    with db.session() as s:
        held = s.scalars(select(Quarantine)).one()
        assert held.payload == message and "Observation.code.coding[0].code: UK Core SNOMED CT" in held.reason
        assert s.scalars(select(Resource)).all() == []  # the message is atomic: none of its results stored


def test_an_hl7_laboratorys_own_codes_are_accepted(db: Database, framework: Framework, tmp_path: Path) -> None:
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "lab.hl7", [results()])])
    assert report.quarantined == 0, report.quarantine  # OBR-4 UE^...^L and OBX-3 FILM^...^L are local codes
    with db.session() as s:
        codes = {c["code"]["coding"][0]["code"] for c in s.scalars(
            select(Resource.content).where(Resource.resource_type == "Observation"))}
    assert "FILM" in codes


def test_an_hl7_practice_code_of_impossible_shape_is_answered_ae_naming_pd1_3(db: Database,
                                                                            framework: Framework) -> None:
    message = admission().replace("Riverside Medical Centre^^P81001", "Riverside Medical Centre^^P81 001")
    ack = _segments(MllpServer(Pipeline(db, framework)).handle(message.encode("latin-1"), "127.0.0.1:2575"))
    assert ack["MSA"][1] == "AE" and "UK Core ODS organisation code: 'P81 001'" in ack["MSA"][3]
    assert ack["ERR"][1] == "PD1^1^3"


def test_a_csv_row_mapped_to_a_code_that_is_no_sctid_is_held_then_replayed_once_the_mapping_is_fixed(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    mapping = mappings / "LRC-mosaic.yaml"
    good = MOSAIC.read_text()
    mapping.write_text(good.replace('code: "417430008"', 'code: "870384001"'))  # a made-up code
    monkeypatch.setenv("SHAREDCARE_MAPPINGS", str(mappings))
    enquiry = _row(client_id="C2", assessment_id="A2", family_name="Hughes", given_name="Margaret",
                   assessment_type="Safeguarding Enquiry (s42)")
    rows: list[dict[str, str] | str] = [_row(), enquiry]
    pipeline = Pipeline(db, framework)
    report = pipeline.ingest_paths([_extract(_lrc(tmp_path), rows)])
    (held,) = report.quarantine
    assert held["where"].endswith("line 3")
    assert ("Encounter.type[0].coding[0].code: UK Core SNOMED CT: the check digit fails (Verhoeff) ('870384001')"
            in held["reason"])
    assert report.accepted > 0  # the first row's resources are stored

    mapping.write_text(good)
    assert pipeline.replay(held["id"]).quarantined == 0
    with db.session() as s:
        assert s.get_one(Quarantine, held["id"]).status == "replayed"
        categories = set(s.scalars(select(Resource.category).where(Resource.source_id.like("A2%"))))
    assert categories == {"safeguarding"}


def test_the_verdicts_kept_on_codes_stay_bounded_whatever_a_feed_sends() -> None:
    before = _code_problem.cache_info().currsize
    for n in range(50):
        assert uk_core_problems(_coded("4" * 100_000 + str(n)))  # refused, and not kept
    assert _code_problem.cache_info().currsize == before
    assert _code_problem.cache_info().maxsize == 1 << 14
