"""A patient search is audited as IHE BALP's PatientQuery asks (TRUST AU2): one event per person found,
each with the raw query base64-encoded, and one event when nobody is found."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import parse_qs

from sqlalchemy import select
from tests.builders import bundle, patient, write_ndjson
from tests.small_ics import Ics

from sharedcare.governance.access_log import details
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord


def _search_events(db: Database, request_id: str) -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:patient:search",
                                                       AuditEntry.event["source"]["site"].as_string() == request_id)
                              .order_by(AuditEntry.seq)))


def test_a_search_finding_two_people_is_two_events_each_with_the_query(ics: Ics, db: Database, framework: Framework,
                                                                      tmp_path: Path) -> None:
    namesake = patient("gp-ozzie", "9990000026", "Okafor", "Osita", "1945-03-02", postcode="RV4 1AA")
    feed = write_ndjson(tmp_path / "namesake.ndjson", [bundle("P81001", "emis", [namesake])])
    assert Pipeline(db, framework).ingest_paths([feed]).quarantined == 0
    with db.session() as s:
        people = set(s.scalars(select(PatientRecord.person_id).where(PatientRecord.family == "Okafor")))
    assert len(people) == 2 and ics.okafor in people

    found = ics.client.post("/fhir/Patient/_search", data={"family": "Okafor", "birthdate": "1945-03-02"},
                            headers={**ics.token("dr.patel"), "X-Request-ID": "search-two"}).json()
    assert {e["resource"]["id"] for e in found["entry"]} == people
    events = _search_events(db, "search-two")
    assert sorted(e.patient_id for e in events if e.patient_id) == sorted(people) and len(events) == 2
    for event in events:
        assert event.outcome == "permit" and event.username == "dr.patel"
        query = parse_qs(base64.b64decode(details(event)["query"]).decode())
        assert query["family"] == ["Okafor"] and query["birthdate"] == ["1945-03-02"]
        assert "Okafor" not in str(event.event)  # the name is kept only encoded, in the query


def test_a_search_finding_no_one_is_still_audited(ics: Ics, db: Database) -> None:
    found = ics.client.post("/fhir/Patient/_search", data={"family": "Nobody", "birthdate": "1945-03-02"},
                            headers={**ics.token("dr.patel"), "X-Request-ID": "search-none"}).json()
    assert found.get("entry", []) == []
    (event,) = _search_events(db, "search-none")
    assert (event.patient_id, event.outcome, details(event)["results"]) == (None, "permit", "0")
    assert parse_qs(base64.b64decode(details(event)["query"]).decode())["family"] == ["Nobody"]


def test_a_search_of_one_patients_records_is_audited_with_its_query_allowed_or_not(ics: Ics, db: Database) -> None:
    """`GET /fhir/Condition?patient=...` reads one person's record: one event for that person, with the
    query base64-encoded, whether the search was answered or refused (TRUST AU2)."""
    def events(request_id: str) -> list[AuditEntry]:
        with db.session() as s:
            return list(s.scalars(select(AuditEntry).where(
                AuditEntry.event["source"]["site"].as_string() == request_id).order_by(AuditEntry.seq)))

    asked = f"patient={ics.okafor}&code=44054006&_count=5"
    refused = ics.client.get(f"/fhir/Condition?{asked}", headers={**ics.token("dr.patel"), "X-Request-ID": "cs-no"})
    assert refused.status_code == 403
    found = ics.client.get(f"/fhir/Condition?{asked}", headers={**ics.open_record("dr.patel"), "X-Request-ID": "cs"})
    assert found.status_code == 200 and found.json()["entry"]
    for request_id, outcome in (("cs-no", "deny"), ("cs", "permit")):
        (event,) = events(request_id)
        assert (event.action, event.patient_id, event.outcome) == ("clinical:record:read", ics.okafor, outcome)
        assert base64.b64decode(details(event)["query"]).decode() == asked
