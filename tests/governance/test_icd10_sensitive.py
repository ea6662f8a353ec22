"""Diagnoses coded in ICD-10, as hospitals code them (and some GP systems send them), are sensitive by the
framework's ICD-10 stems: "icd-10|B20*" is HIV disease in any of its codes, with or without the dot, in the
WHO or UK edition. Until framework 2026.12-5 only SNOMED CT concepts were listed, so a GP's or hospital's
"B20" was filed as summary and shown to every role that sees a summary (a pharmacist, a receptionist's GP
colleague elsewhere)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from tests.builders import bundle, condition, patient, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.errors import FrameworkError
from sharedcare.governance.classify import classify
from sharedcare.governance.framework import Framework, parse_framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

ICD = "http://hl7.org/fhir/sid/icd-10"
ICD_UK = "http://hl7.org/fhir/sid/icd-10-uk"
OPCS = "http://fhir.nhs.uk/CodeSystem/opcs-4"
TEXT = Path("config/framework.yaml").read_text(encoding="utf-8")


def _icd(code: str, system: str = ICD) -> dict:
    return {"resourceType": "Condition", "id": "x", "code": {"coding": [{"system": system, "code": code}]}}


@pytest.mark.parametrize(("code", "system", "category"), [
    ("B20", ICD, "sexual_health"),  # HIV disease
    ("B20.0", ICD, "sexual_health"),
    ("B209", ICD_UK, "sexual_health"),  # the UK edition, written without its dot
    ("z21", ICD, "sexual_health"),  # in lower case
    ("A56.0", ICD, "sexual_health"),  # chlamydia
    ("F32.9", ICD, "mental_health"),  # depression
    ("F329", ICD_UK, "mental_health"),
    ("F20.0", ICD, "mental_health"),  # schizophrenia
    ("F43.1", ICD, "mental_health"),  # post-traumatic stress disorder
    ("X78", ICD, "mental_health"),  # intentional self-harm
    ("R45.8", ICD, "mental_health"),  # suicidal ideation
    ("T74.1", ICD, "safeguarding"),  # physical abuse
    ("F03", ICD, "summary"),  # dementia: left out on purpose (the framework's mental health note)
    ("F05.9", ICD, "summary"),  # delirium
    ("E11.9", ICD, "summary"),  # type 2 diabetes
    ("A49.9", ICD, "summary"),  # a bacterial infection, beside the sexually transmitted A50-A64
    ("R45.0", ICD, "summary"),  # nervousness: R45.8's neighbour
])
def test_icd10_diagnoses_fall_in_the_category_their_stem_names(framework: Framework, code: str, system: str,
                                                                category: str) -> None:
    assert classify(_icd(code, system), "gp", framework) == category


def test_a_stem_holds_only_its_own_classification(framework: Framework) -> None:
    """An OPCS-4 code that happens to begin like a listed ICD-10 stem is a procedure, not HIV disease."""
    assert classify({"resourceType": "Procedure", "id": "x", "code": {"coding": [{"system": OPCS, "code": "B201"}]}},
                    "acute", framework) == "hospital_detail"


def test_a_star_in_snomed_ct_is_refused_naming_its_line() -> None:
    text = TEXT.replace('    - "http://snomed.info/sct|86406008"    # HIV infection',
                        '    - "http://snomed.info/sct|8640*"    # HIV infection')
    with pytest.raises(FrameworkError) as refused:
        parse_framework(text)
    (problem,) = refused.value.problems
    line = text.splitlines().index('    - "http://snomed.info/sct|8640*"    # HIV infection') + 1
    assert problem.startswith(f"line {line}, sensitive_codes.sexual_health.")
    assert "only in ICD-10 and OPCS-4" in problem


@pytest.mark.parametrize(("entry", "says"), [
    ("http://hl7.org/fhir/sid/icd-10|B2*0", "may only end a code"),
    ("http://hl7.org/fhir/sid/icd-10|*", "is not a code written system|code"),
    ("86406008", "is not a code written system|code"),
])
def test_a_malformed_sensitive_code_is_refused(entry: str, says: str) -> None:
    text = TEXT.replace('    - "http://snomed.info/sct|86406008"    # HIV infection', f'    - "{entry}"')
    with pytest.raises(FrameworkError) as refused:
        parse_framework(text)
    (problem,) = refused.value.problems
    assert "sensitive_codes.sexual_health" in problem and says in problem


def test_a_pharmacist_is_not_shown_a_gps_hiv_diagnosis_coded_in_icd10(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Through the API: the GP's own clinician reads the ICD-10 HIV diagnosis; a community pharmacist, whose
    role sees nothing of sexual health, is not shown it, nor its words, nor its code."""
    hiv = condition("gp-icd-hiv", "Patient/gp-okafor", "B20", "HIV disease")
    hiv["code"] = {"coding": [{"system": ICD, "code": "B20", "display": "HIV disease"}]}
    depression = condition("gp-icd-dep", "Patient/gp-okafor", "F329", "Depressive episode, unspecified")
    depression["code"] = {"coding": [{"system": ICD_UK, "code": "F329", "display": "Depressive episode, unspecified"}]}
    feed = write_ndjson(tmp_path / "gp.ndjson", [bundle("P81001", "emis", [
        patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), hiv, depression],
        "2026-11-25T09:00:00Z")])
    assert Pipeline(db, framework).ingest_paths([feed]).quarantined == 0

    def everything(username: str) -> str:
        response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=ics.open_record(username))
        assert response.status_code == 200, response.text
        return orjson.dumps(response.json()).decode()

    own_gp = everything("dr.patel")
    assert "HIV disease" in own_gp and "Depressive episode" in own_gp
    pharmacist = everything("pharm.khan")
    assert "Metformin 500mg tablets" in pharmacist  # the record opened
    for shown in ("HIV disease", "B20", "Depressive episode", "F329"):
        assert shown not in pharmacist
