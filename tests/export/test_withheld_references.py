"""A pseudonymised reference to something the export withheld says that it exists (a sexual health
clinic encounter, a restricted result): references survive only to resources in the same export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from tests import builders
from tests.export.conftest import exact_counts, export
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

SCT, LOINC = "http://snomed.info/sct", "http://loinc.org"
GUM = {"coding": [{"system": "https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary-treatment-function",
                   "code": "360"}]}  # genitourinary medicine: a sexual health category, always withheld
RESTRICTED = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}
REF = re.compile(r'"reference":\s*"(\w+)/([0-9a-f]{32})"')


def _observation(oid: str, code: str, system: str = LOINC, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/MRN1"},
            "code": {"coding": [{"system": system, "code": code}]}, "effectiveDateTime": "2026-10-20T10:00:00Z",
            **extra}


def _hospital_record(tmp_path: Path, db: Database, framework: Framework) -> None:
    """Mr Okafor's hospital results, some of them from its sexual health clinic or restricted."""
    visit = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}
    resources = [
        builders.patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"),
        {"resourceType": "Encounter", "id": "enc-clinic", "status": "finished", "class": visit,
         "subject": {"reference": "Patient/MRN1"}},
        {"resourceType": "Encounter", "id": "enc-gum", "status": "finished", "class": visit, "serviceType": GUM,
         "subject": {"reference": "Patient/MRN1"}},
        _observation("obs-hba1c", "4548-4", encounter={"reference": "Encounter/enc-clinic"}),
        _observation("obs-gum", "105629000", SCT, encounter={"reference": "Encounter/enc-gum"}),  # chlamydia
        _observation("obs-restricted", "2093-3", meta=RESTRICTED),
        {"resourceType": "DiagnosticReport", "id": "rep-1", "status": "final", "subject": {"reference": "Patient/MRN1"},
         "code": {"coding": [{"system": LOINC, "code": "24331-1"}]}, "encounter": {"reference": "Encounter/enc-gum"},
         "result": [{"reference": "Observation/obs-hba1c"}, {"reference": "Observation/obs-gum"},
                    {"reference": "Observation/obs-restricted"}]},
        builders.condition("con-dm", "Patient/MRN1", "44054006", "Type 2 diabetes mellitus",
                           encounter={"reference": "Encounter/enc-gum"}),
        builders.condition("con-sh", "Patient/MRN1", "105629000", "Chlamydial infection"),
        {"resourceType": "Encounter", "id": "enc-admission", "status": "finished",
         "subject": {"reference": "Patient/MRN1"},
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
         "partOf": {"reference": "Encounter/enc-gum"},
         "diagnosis": [{"condition": {"reference": "Condition/con-sh"}, "rank": 1},
                       {"condition": {"reference": "Condition/con-dm"}, "rank": 2}]},
    ]
    feed = builders.write_ndjson(tmp_path / "results.ndjson",
                                 [builders.bundle("RXR", "epr", resources, use_urns=False)])
    report = Pipeline(db, framework).ingest_paths([feed])
    assert report.quarantined == 0 and report.accepted + report.unchanged == len(resources)


def test_no_reference_points_at_a_resource_the_export_withheld(ics: Ics, db: Database, framework: Framework,
                                                               tmp_path: Path) -> None:
    _hospital_record(tmp_path, db, framework)
    _, files = export(ics.client, ics.token("analyst.chen"))
    withheld = exact_counts(db)["withheld"]
    assert withheld["sensitive-category"] >= 3 and withheld["confidential"] >= 2  # the clinic's, the restricted
    ids = {(t, r["id"]) for t, rs in files.items() for r in rs}
    lines = [json.dumps(r) for rs in files.values() for r in rs]
    references = [m.groups() for line in lines for m in REF.finditer(line)]
    assert len(references) > 10 and [r for r in references if r not in ids] == []
    report, = files["DiagnosticReport"]
    hba1c = next(o["id"] for o in files["Observation"] if "encounter" in o)
    assert report["result"] == [{"reference": f"Observation/{hba1c}"}]
    assert "encounter" not in report
    diabetes = [c for c in files["Condition"] if c["code"]["coding"][0]["code"] == "44054006"]
    assert diabetes and all("encounter" not in c for c in diabetes)
    admission, = (e for e in files["Encounter"] if e["class"]["code"] == "IMP")
    assert "partOf" not in admission and [d["rank"] for d in admission["diagnosis"]] == [2]  # no empty diagnosis
    for resource_type, resources in files.items():
        for resource in resources:
            get_fhir_model_class(resource_type).model_validate(resource)
