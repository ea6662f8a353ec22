"""Mr Okafor's Care Act assessment from the council's social care system (a Mosaic CSV extract, through
the CSV mapping like any council feed), for the tests that show the social care tab."""

from __future__ import annotations

from pathlib import Path

from tests.ingest.test_csv_extract import _extract, _lrc, _row

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database


def ingest_social_care(db: Database, framework: Framework, tmp: Path) -> None:
    extract = _extract(_lrc(tmp), [_row(), _row(assessment_id="A2", assessment_type="Carer's Assessment",
                                            assessment_date="20/10/2026", status="In progress",
                                            outcome_summary="Daughter assessed as carer; respite to discuss.",
                                            last_updated="2026-10-21T09:00:00Z")])
    report = Pipeline(db, framework).ingest_paths([extract])
    assert report.quarantined == 0, report.quarantine
