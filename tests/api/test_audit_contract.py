"""The audit contract (TRUST AU1): every FHIR interaction the API offers, allowed and refused, writes
AuditEvents that say who (the user, their role and organisation, and the app when there is one), on
whose behalf, what (the patient, and the resource when one was asked for), when (UTC), where (network
address, and the request id as `source.site`), why (purposeOfEvent), which action and the outcome.

The expectations are written here from the interactions, not read from the code: the action code a FHIR
reader expects (C create, R read, U update, E execute) and the outcome (0 success, 4 refused)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from httpx2 import Response
from sqlalchemy import select
from tests.builders import condition
from tests.fhir_bundles import entries
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.api.auth import mint_token
from sharedcare.config import load_settings
from sharedcare.governance.access_log import export_ndjson
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

ORGANISATIONS = {"dr.patel": "P81001", "nurse.lee": "P81002", "analyst.chen": "QRD"}
ROLES = {"dr.patel": "gp", "nurse.lee": "practice_nurse", "analyst.chen": "analyst"}
ON_BEHALF_OF = "http://hl7.org/fhir/StructureDefinition/auditevent-OnBehalfOf"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


@dataclass(frozen=True)
class Interaction:
    name: str
    user: str
    send: Callable[[Ics, dict[str, str]], Response]  # (the ICS, headers with token and request id)
    audit_type: str  # AuditEvent.type.code
    action: str  # AuditEvent.action: C, R, U, E
    outcome: str  # AuditEvent.outcome: 0 allowed, 4 refused
    names_patient: bool = True
    names_resource: str | None = None  # the type of the resource asked for, named among the entities
    purpose: str = "TREAT"


def _server_id(ics: Ics, code: str) -> str:
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition",
                            headers=ics.open_record("dr.patel")).json()
    return next(e["resource"]["id"] for e in entries(bundle) if e["resource"]["code"]["coding"][0]["code"] == code)


def _write_headers(ics: Ics, headers: dict[str, str]) -> dict[str, str]:
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    token = mint_token(load_settings(), fw, "dr.patel", "user/*.read user/*.write")
    return {**headers, "Authorization": f"Bearer {token}", **FHIR_JSON}


def _diabetes(**changes: object) -> str:
    return json.dumps(condition("gp-c1", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus", **changes))


INTERACTIONS = [
    Interaction("$everything", "dr.patel", lambda ics, h: ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything",
                                                                         headers=h),
                "clinical:record:read", "R", "0"),
    Interaction("$everything with no basis", "nurse.lee",
                lambda ics, h: ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=h),
                "clinical:record:read", "R", "4"),
    Interaction("read Patient", "dr.patel", lambda ics, h: ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=h),
                "clinical:resource:read", "R", "0", names_resource="Patient"),
    Interaction("read a resource", "dr.patel",
                lambda ics, h: ics.client.get(f"/fhir/Condition/{_server_id(ics, '44054006')}", headers=h),
                "clinical:resource:read", "R", "0", names_resource="Condition"),
    Interaction("vread", "dr.patel",
                lambda ics, h: ics.client.get(f"/fhir/Condition/{_server_id(ics, '44054006')}/_history/1", headers=h),
                "clinical:resource:history", "R", "0", names_resource="Condition"),
    Interaction("history", "dr.patel",
                lambda ics, h: ics.client.get(f"/fhir/Condition/{_server_id(ics, '44054006')}/_history", headers=h),
                "clinical:resource:history", "R", "0", names_resource="Condition"),
    Interaction("clinical search", "dr.patel",
                lambda ics, h: ics.client.get(f"/fhir/Condition?patient={ics.okafor}&code=44054006", headers=h),
                "clinical:record:read", "E", "0"),
    Interaction("patient search", "dr.patel",
                lambda ics, h: ics.client.post("/fhir/Patient/_search", headers=h, data={"identifier": OKAFOR_NHS}),
                "clinical:patient:search", "E", "0"),
    Interaction("create", "dr.patel",
                lambda ics, h: ics.client.post("/fhir/Condition", headers=_write_headers(ics, h), content=json.dumps(
                    condition("gp-c9", "Patient/gp-okafor", "38341003", "Hypertension"))),
                "clinical:record:write", "C", "0"),
    Interaction("update", "dr.patel",
                lambda ics, h: ics.client.put("/fhir/Condition/gp-c1", headers=_write_headers(ics, h),
                                              content=_diabetes(onsetDateTime="2018-07-01")),
                "clinical:record:write", "U", "0"),
    Interaction("write without a write scope", "dr.patel",
                lambda ics, h: ics.client.put("/fhir/Condition/gp-c1", headers={**h, **FHIR_JSON},
                                              content=_diabetes(onsetDateTime="2018-07-01")),
                "clinical:record:write", "U", "4", names_patient=False),  # refused on its scopes alone
    Interaction("bulk export kick-off", "analyst.chen",
                lambda ics, h: ics.client.get("/fhir/$export", headers={**h, "Prefer": "respond-async"}),
                "secondary:export:kick-off", "E", "0", names_patient=False, purpose="HOPERAT"),
]


def _events(db: Database, request_id: str) -> list[dict[str, Any]]:
    """The request's AuditEvents as the NDJSON export gives them to an audit repository."""
    with db.session() as session:
        seqs = set(session.scalars(select(AuditEntry.seq).where(
            AuditEntry.event["source"]["site"].as_string() == request_id)))
        return [event for event in map(json.loads, export_ndjson(session)) if int(event["id"]) in seqs]


@pytest.mark.parametrize("interaction", INTERACTIONS, ids=lambda i: i.name)
def test_every_interaction_writes_an_audit_event_with_every_field(ics: Ics, db: Database,
                                                                    interaction: Interaction) -> None:
    user = interaction.user
    if user == "dr.patel":
        headers = ics.open_record(user)
    else:
        headers = ics.token(user)
    request_id = "contract-" + "".join(c if c.isalnum() else "-" for c in interaction.name)
    before = datetime.now(UTC)
    response = interaction.send(ics, {**headers, "X-Request-ID": request_id})
    assert response.status_code < 300 if interaction.outcome == "0" else response.status_code >= 400, response.text

    events = _events(db, request_id)
    assert events, f"{interaction.name}: no AuditEvent"
    for event in events:
        AuditEvent.model_validate(event)
        assert event["type"]["code"] == interaction.audit_type
        assert event["action"] == interaction.action
        assert event["outcome"] == interaction.outcome
        recorded = datetime.fromisoformat(event["recorded"])
        assert recorded.utcoffset() == timedelta(0) and before - timedelta(seconds=1) <= recorded <= datetime.now(UTC)
        assert event["purposeOfEvent"][0]["coding"][0]["code"] == interaction.purpose
        assert event["source"]["site"] == request_id and event["source"]["observer"]["display"] == "sharedcare"

        (person,) = [a for a in event["agent"] if a["requestor"]]
        assert person["who"]["identifier"]["value"] == user and person["role"][0]["text"] == ROLES[user]
        assert person["network"]["address"] == "testclient"
        (behalf,) = [x for x in person["extension"] if x["url"] == ON_BEHALF_OF]
        assert behalf["valueReference"]["identifier"] == {"system": ODS, "value": ORGANISATIONS[user]}

        references = [e["what"]["reference"] for e in event["entity"] if "what" in e]
        assert (f"Patient/{ics.okafor}" in references) == interaction.names_patient
        if interaction.names_resource:  # the resource asked for (a domain resource), or the versions released
            asked = [e["what"]["reference"] for e in event["entity"]
                     if "what" in e and e.get("role", {}).get("code") != "1"]  # not the patient entity
            assert any(r.startswith(f"{interaction.names_resource}/") for r in asked), asked
        assert OKAFOR_NHS not in json.dumps(event) and "Okafor" not in json.dumps(event)  # references, not content

