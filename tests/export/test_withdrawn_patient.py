"""Security review: "a Patient withdrawn as entered-in-error may still be exported". A FHIR R4 Patient has
no status nor verificationStatus, so no source can mark one so: every way in validates the resource and
refuses it, and the export is what it was."""

from __future__ import annotations

from pathlib import Path

from tests import builders
from tests.export.conftest import export
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

WITHDRAWN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                         "code": "entered-in-error"}]}


def test_a_patient_sent_as_entered_in_error_is_refused_and_the_export_is_unchanged(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    headers = ics.token("analyst.chen")
    _, before = export(ics.client, headers)
    for n, marked in enumerate(({"status": "entered-in-error"}, {"verificationStatus": WITHDRAWN})):
        feed = builders.bundle("P81001", "emis", [builders.patient(f"gp-new-{n}", OKAFOR_NHS, "Okafor", "Emeka",
                                                                   "1945-03-02", postcode="RV9 9ZZ", **marked)])
        report = Pipeline(db, framework).ingest_paths([builders.write_ndjson(tmp_path / f"w{n}.ndjson", [feed])])
        assert report.accepted == 0
    _, after = export(ics.client, headers)
    assert after["Patient"] == before["Patient"] and len(after["Patient"]) == 2
