"""Mr Okafor's results over three years from his GP, and last month's from the hospital (journey 2): the
HbA1c, eGFR and blood pressure the record page draws as trend charts. Added to the `ics` fixture's
store by the tests that need them, so the fixture itself stays as small as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.builders import SCT, bundle, write_ndjson

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

HBA1C = ("999791000000106", "Haemoglobin A1c level - IFCC standardised", "mmol/mol")
EGFR = ("1011481000000105", "eGFR (estimated glomerular filtration rate) using creatinine CKD-EPI", "mL/min")
GP_RESULTS = [("2024-05-10", HBA1C, 52), ("2025-05-12", HBA1C, 55), ("2026-05-14", HBA1C, 58),
              ("2024-05-10", EGFR, 64), ("2025-05-12", EGFR, 58), ("2026-05-14", EGFR, 55)]
HOSPITAL_RESULTS = [("2026-10-18", HBA1C, 62), ("2026-10-18", EGFR, 47)]
GP_BP = [("2025-05-12", 142, 86), ("2026-05-14", 138, 82)]
HOSPITAL_BP = [("2026-10-18", 150, 90)]


def _result(rid: str, subject: str, day: str, test: tuple[str, str, str], value: float) -> dict[str, Any]:
    code, display, unit = test
    return {"resourceType": "Observation", "id": rid, "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": SCT, "code": code, "display": display}]},
            "effectiveDateTime": f"{day}T09:30:00Z", "valueQuantity": {"value": value, "unit": unit}}


def _bp(rid: str, subject: str, day: str, systolic: int, diastolic: int) -> dict[str, Any]:
    def part(code: str, display: str, value: int) -> dict[str, Any]:
        return {"code": {"coding": [{"system": SCT, "code": code, "display": display}]},
                "valueQuantity": {"value": value, "unit": "mm[Hg]"}}

    return {"resourceType": "Observation", "id": rid, "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": SCT, "code": "75367002", "display": "Blood pressure"}]},
            "effectiveDateTime": f"{day}T09:30:00Z",
            "component": [part("72313002", "Systolic arterial pressure", systolic),
                          part("1091811000000102", "Diastolic arterial pressure", diastolic)]}


def ingest_results(db: Database, framework: Framework, tmp: Path) -> None:
    """Each source already sent Mr Okafor, so these bundles carry only his results."""
    gp = bundle("P81001", "emis", [
        *(_result(f"gp-r{i}", "Patient/gp-okafor", *r) for i, r in enumerate(GP_RESULTS)),
        *(_bp(f"gp-bp{i}", "Patient/gp-okafor", *b) for i, b in enumerate(GP_BP)),
    ], timestamp="2026-11-01T10:00:00Z")
    acute = bundle("RXR", "epr", [
        *(_result(f"rx-r{i}", "Patient/MRN1", *r) for i, r in enumerate(HOSPITAL_RESULTS)),
        *(_bp(f"rx-bp{i}", "Patient/MRN1", *b) for i, b in enumerate(HOSPITAL_BP)),
    ], timestamp="2026-11-01T10:00:00Z")
    paths = [write_ndjson(tmp / "results" / f"{name}.ndjson", [b]) for name, b in (("gp", gp), ("acute", acute))]
    report = Pipeline(db, framework).ingest_paths(paths)
    assert report.quarantined == 0, report.quarantine
