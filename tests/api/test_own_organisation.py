"""A role's tier 0 for a category means never, whoever recorded it (issue 5, privacy): a GP practice's
receptionist opening a patient of her own practice through the shared record sees demographics and is told
some information is not shown, never the practice's consultations; a GP of the same practice still sees
everything her practice recorded, a category her role sees only as a headline from elsewhere included."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select
from tests.fhir_bundles import resources, withheld
from tests.small_ics import Ics

from sharedcare.governance.access_log import details
from sharedcare.governance.explain import WITHHELD_LABELS
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

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
    # audited as withheld by her role's tier: the practice's three clinical entries and every other
    # organisation's but the restricted letter (withheld by its own rule first)
    decision = _decision(db, "receptionist")
    assert decision["withheld:tier"] == "6" and decision["withheld:confidential"] == "1"


def test_a_gp_still_sees_everything_her_own_practice_recorded(ics: Ics, db: Database) -> None:
    body = _everything(ics, ics.open_record("dr.patel"), "gp")
    text = orjson.dumps(body).decode()
    # sexual health is a headline for a GP from elsewhere, and in full from her own practice
    assert all(words in text for words in GP_CLINICAL)
    assert "withheld:tier" not in _decision(db, "gp")
