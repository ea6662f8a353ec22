"""`MedicationStatement.medication[x]` is required (1..1). Sources often name the drug by
`medicationReference` to a Medication they send contained in the statement (a standalone Medication is
never stored: it has no patient). An export replaces the reference with the contained Medication's coded
`code`, and leaves out, counted as withheld, a statement whose drug cannot leave coded, rather than write
invalid FHIR. A contained drug's code classifies the statement as its own code would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from tests import builders
from tests.export.conftest import exact_counts, export
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

DMD, SCT = "https://dmd.nhs.uk", "http://snomed.info/sct"
SIMVASTATIN = "319996000"


def _statement(sid: str, reference: str, contained: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {"resourceType": "MedicationStatement", "id": sid, "status": "active",
                                 "subject": {"reference": "Patient/gp-okafor"},
                                 "medicationReference": {"reference": reference, "display": "see the repeat slip"},
                                 "effectiveDateTime": "2026-06-01"}
    if contained is not None:
        statement["contained"] = contained
    return statement


def _medication(mid: str, system: str, code: str, display: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Medication", "id": mid, **extra,
            "code": {"coding": [{"system": system, "code": code, "display": display}],
                     "text": "Simvastatin 40mg - Mr Okafor's evening tablet"}}


def _ingest(tmp_path: Path, db: Database, framework: Framework, statements: list[dict[str, Any]]) -> None:
    feed = builders.bundle("P81001", "emis", [
        builders.patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), *statements,
    ], timestamp="2026-11-05T09:00:00Z")
    report = Pipeline(db, framework).ingest_paths([builders.write_ndjson(tmp_path / "m.ndjson", [feed])])
    assert report.quarantined == 0, report.quarantine


def _by_code(files: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {c["code"]: s for s in files.get("MedicationStatement", [])
            for c in (s.get("medicationCodeableConcept") or {}).get("coding", [])}


def _withheld(db: Database, why: str) -> int:
    """How many resources the newest export withheld for `why` (exact, from its audit entry)."""
    return int(exact_counts(db)["withheld"].get(why, 0))


def _all_valid_fhir(files: dict[str, list[dict[str, Any]]]) -> None:
    for resource_type, resources in files.items():
        for resource in resources:
            get_fhir_model_class(resource_type).model_validate(resource)


def test_a_contained_medication_leaves_as_its_code(ics: Ics, db: Database, framework: Framework,
                                                   tmp_path: Path) -> None:
    statement = _statement("gp-m20", "#simva", [
        _medication("simva", DMD, SIMVASTATIN, "Simvastatin 40mg tablets"),
        {"resourceType": "Patient", "id": "p", "name": [{"family": "Okafor"}]}])
    statement["informationSource"] = {"reference": "#p"}  # a contained resource is referenced (dom-3)
    _ingest(tmp_path, db, framework, [statement])
    _, files = export(ics.client, ics.token("analyst.chen"))
    statement = _by_code(files)[SIMVASTATIN]
    assert statement["medicationCodeableConcept"] == {"coding": [{"system": DMD, "code": SIMVASTATIN}]}
    assert not {"medicationReference", "contained"} & statement.keys()
    text = json.dumps(statement)
    assert "Simvastatin 40mg" not in text and "repeat slip" not in text and "Okafor" not in text
    get_fhir_model_class("MedicationStatement").model_validate(statement)


def test_a_statement_whose_medication_is_not_held_is_left_out_and_counted(ics: Ics, db: Database,
                                                                         framework: Framework, tmp_path: Path) -> None:
    _, files = export(ics.client, ics.token("analyst.chen"))
    statements, uncoded = len(files.get("MedicationStatement", [])), _withheld(db, "required-element-uncoded")
    _ingest(tmp_path, db, framework, [
        _statement("gp-m21", "Medication/med-not-sent"),  # a standalone Medication: never stored
        _statement("gp-m22", "#other"),  # a local reference to nothing contained
        _statement("gp-m23", "#simva", [_medication("simva", DMD, SIMVASTATIN, "Simvastatin 40mg tablets",
                                                    status="entered-in-error")]),
        _statement("gp-m24", "#simva", [{"resourceType": "Medication", "id": "simva",
                                         "code": {"text": "the white ones"}}]),  # no code: only free text
    ])
    _, files = export(ics.client, ics.token("analyst.chen"))
    assert len(files.get("MedicationStatement", [])) == statements
    assert SIMVASTATIN not in _by_code(files)
    assert _withheld(db, "required-element-uncoded") - uncoded == 4
    _all_valid_fhir(files)


def test_a_sensitive_drug_named_by_a_contained_medication_is_withheld(ics: Ics, db: Database,
                                                                      framework: Framework, tmp_path: Path) -> None:
    export(ics.client, ics.token("analyst.chen"))
    sensitive = _withheld(db, "sensitive-category")
    _ingest(tmp_path, db, framework, [_statement("gp-m25", "#coc", [
        _medication("coc", SCT, "169470007", "Combined oral contraceptive pill")])])  # sexual health
    _, files = export(ics.client, ics.token("analyst.chen"))
    assert "169470007" not in json.dumps(files)
    assert _withheld(db, "sensitive-category") == sensitive + 1


def test_every_line_of_the_small_ics_export_is_valid_fhir(ics: Ics) -> None:
    _, files = export(ics.client, ics.token("analyst.chen"))
    assert len(files) > 3
    _all_valid_fhir(files)


def test_a_resource_whose_required_code_was_only_text_is_left_out(ics: Ics, db: Database, framework: Framework,
                                                                  tmp_path: Path) -> None:
    """Observation.code, Encounter.class and Immunization.vaccineCode are required; a display or text
    alone does not leave, so such a resource cannot be valid FHIR in the export."""
    export(ics.client, ics.token("analyst.chen"))
    uncoded = _withheld(db, "required-element-uncoded")
    text_only = {"text": "bloods Dr Patel asked for"}
    _ingest(tmp_path, db, framework, [
        {"resourceType": "Observation", "id": "gp-o30", "status": "final", "code": text_only,
         "subject": {"reference": "Patient/gp-okafor"}},
        {"resourceType": "Encounter", "id": "gp-e30", "status": "finished", "class": {"display": "home visit"},
         "subject": {"reference": "Patient/gp-okafor"}},
        {"resourceType": "Immunization", "id": "gp-i30", "status": "completed", "vaccineCode": text_only,
         "patient": {"reference": "Patient/gp-okafor"}, "occurrenceDateTime": "2026-10-01"}])
    _, files = export(ics.client, ics.token("analyst.chen"))
    assert _withheld(db, "required-element-uncoded") - uncoded == 3
    _all_valid_fhir(files)
