"""One hospital stay of Mr Okafor's told twice, by the hospital's PAS (ADT A01 and A03, visit V555) and by
its EPR (a FHIR Encounter starting five minutes later); and a hospice stay starting at the same time, which
is another organisation's and so another stay."""

from __future__ import annotations

from pathlib import Path

from tests.builders import bundle, patient, write_ndjson
from tests.ingest.test_hl7v2 import adt, pid, pv1, write_hl7
from tests.small_ics import OKAFOR_NHS

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

WARD = "Ward 3 (Respiratory)"
IMP = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP", "display": "inpatient encounter"}


def _stay(eid: str, subject: str, start: str, end: str, service: str) -> dict[str, object]:
    return {"resourceType": "Encounter", "id": eid, "status": "finished", "class": IMP,
            "serviceType": {"text": service}, "subject": {"reference": subject}, "period": {"start": start, "end": end}}


def ingest_stay(db: Database, framework: Framework, tmp: Path, hospice: bool = False) -> None:
    """The PAS's admission and discharge (10:00 on 2 Nov 2026, UK time, which is UTC in November) and the
    EPR's Encounter for the same stay; with `hospice`, St Brigid's own stay from the same minute."""
    pas = write_hl7(tmp / "stay" / "pas.hl7", [
        adt("A01", "STAY1", "20261102100000", pid(), pv1("V555", admitted="20261102100000", ward=f"{WARD}^^^RXR")),
        adt("A03", "STAY2", "20261107120000", pid(),
            pv1("V555", admitted="20261102100000", discharged="20261107120000", ward=f"{WARD}^^^RXR")),
    ])
    epr = bundle("RXR", "epr", [patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"),
                                _stay("rx-stay", "Patient/MRN1", "2026-11-02T10:05:00Z", "2026-11-07T12:00:00Z", WARD)],
                 timestamp="2026-11-07T13:00:00Z")
    feeds = [pas, write_ndjson(tmp / "stay" / "epr.ndjson", [epr])]
    if hospice:
        nhr = bundle("NHR", "crosscare", [
            patient("NHR-1", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
            _stay("nhr-stay", "Patient/NHR-1", "2026-11-02T10:00:00Z", "2026-11-04T12:00:00Z", "Respite care")],
            timestamp="2026-11-04T13:00:00Z")
        feeds.append(write_ndjson(tmp / "stay" / "nhr.ndjson", [nhr]))
    report = Pipeline(db, framework).ingest_paths(feeds)
    assert report.quarantined == 0, report.quarantine
