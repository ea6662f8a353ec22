"""A quantity's `unit` is free text as its source sends it ("tablets - Mrs Hughes's blister pack"):
an export keeps the coded unit (UCUM `code` and `system`) and never the text."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests import builders
from tests.export.conftest import export
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

UCUM, SCT = "http://unitsofmeasure.org", "http://snomed.info/sct"


def test_only_the_coded_unit_of_a_quantity_leaves(ics: Ics, db: Database, framework: Framework,
                                                 tmp_path: Path) -> None:
    observation = {
        "resourceType": "Observation", "id": "gp-o1", "status": "final", "subject": {"reference": "Patient/gp-okafor"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "valueQuantity": {"value": 53, "unit": "mmol/mol (taken at home by daughter Ada)", "system": UCUM,
                          "code": "mmol/mol"},
        "referenceRange": [{"low": {"value": 20, "unit": "mmol/mol", "system": UCUM, "code": "mmol/mol"},
                            "high": {"value": 42, "unit": "millimoles per mole", "system": UCUM, "code": "mmol/mol"}}],
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                       "valueQuantity": {"value": 140, "unit": "see Dr Patel's letter"}}]}
    medication = builders.medication("gp-m9", "Patient/gp-okafor", "Metformin 500mg tablets")
    medication["dosage"] = [{"doseAndRate": [{"doseQuantity": {
        "value": 1, "unit": "tablet from the Okafor family's blister pack", "system": SCT, "code": "428673006"}}]}]
    feed = builders.bundle("P81001", "emis", [
        builders.patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), observation, medication,
    ], timestamp="2026-11-05T09:00:00Z")
    assert Pipeline(db, framework).ingest_paths([builders.write_ndjson(tmp_path / "q.ndjson", [feed])]).accepted == 3
    _, files = export(ics.client, ics.token("analyst.chen"))
    text = json.dumps(files)
    for free_text in ("Ada", "daughter", "Patel", "letter", "blister", "Okafor", "millimoles"):
        assert re.search(rf"\b{free_text}\b", text) is None, free_text  # whole words: ids are hex
    hba1c, = (o for o in files["Observation"] if o["code"]["coding"][0]["code"] == "4548-4")
    assert hba1c["valueQuantity"] == {"value": 53, "unit": "mmol/mol", "system": UCUM, "code": "mmol/mol"}
    assert hba1c["referenceRange"][0]["high"] == {"value": 42, "unit": "mmol/mol", "system": UCUM, "code": "mmol/mol"}
    assert hba1c["component"][0]["valueQuantity"] == {"value": 140}
    dose = next(d for m in files["MedicationStatement"] for d in m.get("dosage", []))
    assert dose["doseAndRate"][0]["doseQuantity"] == {"value": 1, "system": SCT, "code": "428673006"}
