"""A row whose stored category is stale (stored under earlier rules or framework) is classified again from
the whole resource it holds, so a sensitive code deep inside it keeps it out of an extract."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update
from tests.builders import SCT, bundle, patient, write_ndjson
from tests.export.conftest import exact_counts, export
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import Resource


def test_a_report_coded_chlamydia_in_its_conclusion_stays_out_when_its_category_is_stale(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    report = {"resourceType": "DiagnosticReport", "id": "rx-dr1", "status": "final",
              "subject": {"reference": "Patient/MRN1"}, "effectiveDateTime": "2026-10-01",
              "code": {"coding": [{"system": "http://loinc.org", "code": "21613-5"}]},
              "conclusionCode": [{"coding": [{"system": SCT, "code": "105629000"}]}]}
    feed = bundle("RXR", "epr", [patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"), report])
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "r.ndjson", [feed])]).quarantined == 0
    with db.session() as session:
        session.execute(update(Resource).values(category=None, category_key=None))
    _, files = export(ics.client, ics.token("analyst.chen"))
    assert "DiagnosticReport" not in files
    assert exact_counts(db)["withheld"]["sensitive-category"] == 3  # the report, and the GP's and trust's diagnoses
