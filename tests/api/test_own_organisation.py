"""A role's tier 0 for a category means never, whoever recorded it (issue 5, privacy): a GP practice's
receptionist opening a patient of her own practice through the shared record sees demographics and is told
some information is not shown, never the practice's consultations; a GP of the same practice still sees
everything her practice recorded, a category her role sees only as a headline from elsewhere included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select
from tests.builders import bundle, patient, write_ndjson
from tests.fhir_bundles import resources, withheld
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.access_log import details
from sharedcare.governance.explain import WITHHELD_LABELS
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

LOCAL_ID = "https://fhir.nhs.uk/Id/local-patient-identifier"
GP_CLINICAL = ("Type 2 diabetes mellitus", "Metformin 500mg tablets", "Takes with breakfast", "Chlamydial infection")


def _everything(ics: Ics, headers: dict[str, str], request_id: str) -> dict[str, Any]:
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything",
                              headers={**headers, "X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _decision(db: Database, request_id: str) -> dict[str, str]:
    with db.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.event["source"]["site"].as_string() == request_id)).one()
    assert entry.outcome == "permit"
    return details(entry)


def test_a_receptionist_sees_her_own_practices_patient_demographics_and_no_clinical_record(
        ics: Ics, db: Database) -> None:
    body = _everything(ics, ics.open_record("admin.taylor"), "receptionist")
    assert {r["resourceType"] for r in resources(body)} == {"Patient"}
    patient = resources(body)[0]
    assert patient["name"][0]["family"].lower() == "okafor" and patient["birthDate"] == "1945-03-02"
    text = orjson.dumps(body).decode()
    assert not any(words in text for words in GP_CLINICAL)  # her own practice's consultations included
    assert WITHHELD_LABELS["tier"] in withheld(body)["tier"]
    # audited as withheld by her role's tier: the practice's three clinical entries, every other
    # organisation's, and the mental health trust's and the council's records of who he is (they would tell
    # her those services are involved). The restricted letter too, since the sixth security review: her role
    # sees nothing of its category, and its own rule, named in the notice, told her a restricted document exists
    decision = _decision(db, "receptionist")
    assert decision["withheld:tier"] == "9" and "withheld:confidential" not in decision
    assert set(withheld(body)) == {"tier"}


def test_a_gp_still_sees_everything_her_own_practice_recorded(ics: Ics, db: Database) -> None:
    body = _everything(ics, ics.open_record("dr.patel"), "gp")
    text = orjson.dumps(body).decode()
    # sexual health is a headline for a GP from elsewhere, and in full from her own practice
    assert all(words in text for words in GP_CLINICAL)
    assert "withheld:tier" not in _decision(db, "gp")


def test_a_mental_health_trusts_record_of_who_the_patient_is_does_not_reach_a_role_that_sees_no_mental_health(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """A community pharmacist's role sees nothing of mental health, not even that a service is involved:
    the trust's Patient record (here with its local patient identifier) must not tell him either, by a read
    of the combined Patient or by `$everything`. A social worker, who may know of the trust, is told."""
    trust_number = {"system": f"{LOCAL_ID}/RXM", "value": "RIO-778812"}
    held = patient("RXM-4", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02")
    held["identifier"].append(trust_number)
    feed = write_ndjson(tmp_path / "rxm.ndjson", [bundle("RXM", "rio", [held], "2026-11-20T09:00:00Z")])
    assert Pipeline(db, framework).ingest_paths([feed]).quarantined == 0

    pharmacist = ics.open_record("pharm.khan")
    patient_read = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=pharmacist)
    assert patient_read.status_code == 200, patient_read.text
    everything = orjson.dumps(_everything(ics, pharmacist, "pharmacist")).decode()
    for shown in (patient_read.text, everything):
        assert "RIO-778812" not in shown and "/RXM" not in shown
    assert "Metformin 500mg tablets" in everything  # the record opened: the GP's medicines are there

    social_worker = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=ics.open_record("sw.brown"))
    assert trust_number in social_worker.json()["identifier"]
