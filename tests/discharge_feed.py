"""Mr Okafor's hospital stay last month (journeys 2 and 6): the GP saw him on 1 September with his repeat
medicines; the hospital admitted him on 15 October with an acute kidney injury, stopped metformin, halved
his ramipril, started gliclazide, gave a course of amoxicillin, kept his atorvastatin, and asked the GP
to check his kidneys. Added to the `ics` fixture's store by the tests that need them (with
`results_feed` for the blood results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.builders import SCT, bundle, write_ndjson

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

DMD = "https://dmd.nhs.uk"
GP_SEEN = "2026-09-01"
ADMITTED, DISCHARGED = "2026-10-15", "2026-10-20"
FOLLOW_UP = "Please check U&E in 2 weeks; metformin stopped, do not restart without review"


def _medicine(mid: str, subject: str, name: str, dose: str, status: str, start: str, end: str | None = None,
              code: str | None = None, last_issue: str | None = None, asserted: str | None = None,
              reason: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": name}
    if code:
        concept["coding"] = [{"system": DMD, "code": code, "display": name}]
    res: dict[str, Any] = {"resourceType": "MedicationStatement", "id": mid, "status": status,
                           "subject": {"reference": subject}, "medicationCodeableConcept": concept,
                           "effectivePeriod": {"start": start, **({"end": end} if end else {})},
                           "dosage": [{"text": dose}]}
    if asserted:
        res["dateAsserted"] = asserted
    if last_issue:
        res["extension"] = [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-"
                                    "MedicationStatementLastIssueDate", "valueDateTime": last_issue}]
    if reason:
        res["statusReason"] = [{"text": reason}]
    return res


def _encounter(eid: str, subject: str, cls: tuple[str, str], kind: str, start: str, end: str) -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": eid, "status": "finished", "subject": {"reference": subject},
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls[0],
                      "display": cls[1]},
            "type": [{"text": kind}],
            "period": {"start": f"{start}T09:00:00Z", "end": f"{end}T16:00:00Z"}}


def ingest_discharge(db: Database, framework: Framework, tmp: Path) -> None:
    gp_ref, rx_ref = "Patient/gp-okafor", "Patient/MRN1"
    gp = bundle("P81001", "emis", [
        _encounter("gp-e1", gp_ref, ("AMB", "ambulatory"), "GP consultation", GP_SEEN, GP_SEEN),
        _medicine("gp-m2", gp_ref, "Ramipril 5mg capsules", "One capsule once a day", "active", "2021-04-01",
                  code="318902004", last_issue="2026-09-20", asserted=f"{GP_SEEN}T10:00:00Z"),
        _medicine("gp-m3", gp_ref, "Atorvastatin 20mg tablets", "One tablet at night", "active", "2020-01-10",
                  last_issue="2026-09-20", asserted=f"{GP_SEEN}T10:00:00Z"),
    ], timestamp=f"{GP_SEEN}T10:00:00Z")
    at_discharge = f"{DISCHARGED}T15:00:00Z"
    acute = bundle("RXR", "epr", [
        _encounter("rx-e1", rx_ref, ("IMP", "inpatient encounter"), "Admission to ward 7", ADMITTED, DISCHARGED),
        {"resourceType": "Condition", "id": "rx-c1", "subject": {"reference": rx_ref},
         "code": {"coding": [{"system": SCT, "code": "14669001", "display": "Acute kidney injury"}]},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "onsetDateTime": ADMITTED},
        _medicine("rx-m1", rx_ref, "Metformin 500mg tablets", "One tablet twice a day with meals", "stopped",
                  "2019-01-01", end="2026-10-16", code="325278007", asserted=at_discharge,
                  reason="Acute kidney injury, eGFR 47"),
        _medicine("rx-m2", rx_ref, "Ramipril 2.5mg capsules", "One capsule once a day", "active", "2026-10-17",
                  asserted=at_discharge),
        _medicine("rx-m3", rx_ref, "Gliclazide 40mg tablets", "One tablet each morning", "active", "2026-10-19",
                  asserted=at_discharge),
        _medicine("rx-m4", rx_ref, "Atorvastatin 20mg tablets", "One tablet at night", "active", "2020-01-10",
                  asserted=at_discharge),
        _medicine("rx-m5", rx_ref, "Amoxicillin 500mg capsules", "One capsule three times a day", "completed",
                  ADMITTED, end=DISCHARGED, asserted=at_discharge),
        {"resourceType": "CarePlan", "id": "rx-cp1", "status": "active", "intent": "plan",
         "subject": {"reference": rx_ref}, "title": "Follow-up requested of the GP",
         "category": [{"text": "Discharge follow-up"}], "description": FOLLOW_UP,
         "period": {"start": DISCHARGED}},
    ], timestamp=at_discharge)
    paths = [write_ndjson(tmp / "discharge" / f"{name}.ndjson", [b]) for name, b in (("gp", gp), ("acute", acute))]
    report = Pipeline(db, framework).ingest_paths(paths)
    assert report.quarantined == 0, report.quarantine
