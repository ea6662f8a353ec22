"""Mr Okafor's allergies from his GP, each with its criticality, type and reaction's severity: a penicillin
allergy with anaphylaxis (high risk) recorded thirty years ago, and since then a codeine intolerance (low
risk) and an aspirin allergy the GP could not assess. Added to the `ics` fixture's store by the tests that
need them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.builders import SCT, bundle, patient, write_ndjson
from tests.small_ics import OKAFOR_NHS

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"


def _allergy(aid: str, what: dict[str, Any], kind: str, criticality: str, reaction: str, severity: str,
             recorded: str) -> dict[str, Any]:
    return {"resourceType": "AllergyIntolerance", "id": aid, "patient": {"reference": "Patient/gp-okafor"},
            "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
            "type": kind, "category": ["medication"], "criticality": criticality, "code": what,
            "recordedDate": recorded,
            "reaction": [{"manifestation": [{"text": reaction}], "severity": severity}]}


def ingest_allergies(db: Database, framework: Framework, tmp: Path) -> None:
    """The GP already sent Mr Okafor: this bundle repeats him with his allergies. Newest first alone would list
    penicillin last."""
    feed = bundle("P81001", "emis", [
        patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        _allergy("al-pen", {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]},
                 "allergy", "high", "Anaphylaxis", "severe", "1996-04-02"),
        _allergy("al-cod", {"text": "Codeine"}, "intolerance", "low", "Nausea", "mild", "2026-10-01"),
        _allergy("al-asp", {"text": "Aspirin"}, "allergy", "unable-to-assess", "Wheeze", "moderate", "2024-06-11"),
    ])
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp / "allergies.ndjson", [feed])])
    assert report.quarantined == 0, report.quarantine
