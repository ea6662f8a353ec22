"""An extract names no organisation whose records it may not hold: the framework keeps mental health out of
secondary use, so an ambulance's conveyance to the mental health trust, or demographics taken from the trust's
record, must not tell the analyst by its ODS code that the person was in the trust's care. And what a sender
writes after the `#` of `meta.source` leaves only when it is one of the organisation's declared systems.

The small ICS's few people would all be left without organisations by the small-cell check: these tests write
the Patients as the pseudonymiser gave them (`patients_as_pseudonymised`), as they leave on a population large
enough that their quasi-identifiers are shared (test_small_cells.py tests the check)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.builders import SCT, bundle, condition, patient, write_ndjson
from tests.export.conftest import export
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.fhir.uk_core import ODS_SYSTEM
from sharedcare.governance.framework import Framework
from sharedcare.governance.secondary import SERVICE_NOT_KEPT
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import ExportJob

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SUMMARY = "https://sharedcare.example/bulk/summary"


def _ods(code: str) -> dict[str, Any]:
    return {"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": code},
            "display": "Mental health place of safety" if code == "RXM" else "An organisation"}


def _ingest(db: Database, framework: Framework, path: Path, *bundles: dict[str, Any]) -> None:
    report = Pipeline(db, framework).ingest_paths([write_ndjson(path, list(bundles))])
    assert report.quarantined == 0, report.quarantine


def _exact_summary(db: Database) -> dict[str, Any]:
    """The newest export's exact summary, as the job keeps it (its recipient sees small numbers suppressed)."""
    with db.session() as s:
        summary = s.scalars(select(ExportJob.summary).order_by(ExportJob.created_at.desc())).first()
    assert summary is not None
    return summary


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_a_conveyance_to_the_mental_health_trust_does_not_name_the_trust(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """The ambulance took Mr Okafor to the mental health trust's place of safety, and the trust's crisis team
    assessed him with the crew: the conveyance and the assessment reach the extract (ambulance encounters
    and procedures are not sensitive) without the trust's ODS code; the ambulance service's stays."""
    conveyance = {"resourceType": "Encounter", "id": "rya-e1", "status": "finished",
                  "class": {"system": ACT, "code": "EMER"}, "subject": {"reference": "Patient/rya-okafor"},
                  "period": {"start": "2026-10-20T23:10:00+00:00", "end": "2026-10-21T00:20:00+00:00"},
                  "serviceProvider": _ods("RYA"), "hospitalization": {"destination": _ods("RXM")}}
    assessment = {"resourceType": "Procedure", "id": "rya-p1", "status": "completed",
                  "code": {"coding": [{"system": SCT, "code": "11429006"}]},
                  "subject": {"reference": "Patient/rya-okafor"}, "performedDateTime": "2026-10-20",
                  "performer": [{"actor": _ods("RXM")}, {"actor": _ods("RYA")}]}
    _ingest(db, framework, tmp_path / "rya.ndjson", bundle("RYA", "epcr", [
        patient("rya-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), conveyance, assessment]))

    manifest, files = export(ics.client, ics.token("analyst.chen"))
    assert "RXM" not in json.dumps(files)
    encounter, = (e for e in files["Encounter"] if e["class"]["code"] == "EMER")
    assert encounter["serviceProvider"] == {"type": "Organization",
                                            "identifier": {"system": ODS_SYSTEM, "value": "RYA"}}
    assert "hospitalization" not in encounter
    procedure, = files["Procedure"]
    assert [p["actor"]["identifier"]["value"] for p in procedure["performer"]] == ["RYA"]
    assert _exact_summary(db)["codings_withheld"][SERVICE_NOT_KEPT] == 2
    assert manifest["extension"][SUMMARY]["codings_withheld"][SERVICE_NOT_KEPT] == "*"  # 1 to 7, for the analyst


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_demographics_from_the_mental_health_trust_do_not_name_the_trust(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """A person known only to the mental health trust: their Condition is withheld (mental health), their
    Patient leaves (demographics), without the `meta.source` that says whose record it came from."""
    _ingest(db, framework, tmp_path / "rxm.ndjson", bundle("RXM", "rio", [
        patient("rxm-7", "9990000026", "Lewis", "Carys", "1990-07-14", gender="female"),
        condition("rxm-c7", "Patient/rxm-7", "35489007", "Depressive disorder")]))

    _, files = export(ics.client, ics.token("analyst.chen"))
    lewis, = (p for p in files["Patient"] if p.get("birthDate") == "1990-07")
    assert "RXM" not in json.dumps(files) and "source" not in lewis["meta"]
    okafor, = (p for p in files["Patient"] if p.get("birthDate") == "1945-03")
    assert okafor["meta"]["source"] == f"{ODS_SYSTEM}|P81001#emis"  # his practice's, its declared system
    assert _exact_summary(db)["codings_withheld"][SERVICE_NOT_KEPT] == 1


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_meta_source_keeps_only_a_system_the_framework_declares(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """A practice's workstation wrote its user's name and phone number as the sending system: the extract's
    lines keep the practice's ODS code alone; the practice's EMIS (declared in the framework) is kept."""
    typed = bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
                                      condition("gp-c9", "Patient/gp-okafor", "38341003", "Hypertensive disorder")],
                   "2026-11-05T09:00:00Z")
    typed["meta"]["source"] = f"{ODS_SYSTEM}|P81001#PC-Jane.Smith.07700900456"
    _ingest(db, framework, tmp_path / "typed.ndjson", typed)

    _, files = export(ics.client, ics.token("analyst.chen"))
    assert "Jane" not in json.dumps(files) and "07700900456" not in json.dumps(files)
    sources = {c["code"]["coding"][0]["code"]: c["meta"]["source"] for c in files["Condition"]}
    assert sources["38341003"] == f"{ODS_SYSTEM}|P81001"
    assert sources["44054006"] == f"{ODS_SYSTEM}|P81001#emis"  # sent before through its declared system
