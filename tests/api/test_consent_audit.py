"""A patient's choice that changes what a read releases is audited with that read (TRUST CO5): the event
counts what the choice withheld, by rule, and lists only what was released."""

from __future__ import annotations

from sqlalchemy import select
from tests.fhir_bundles import entries
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.access_log import details
from sharedcare.governance.consent import set_choice
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry


def _read_event(db: Database, request_id: str) -> AuditEntry:
    with db.session() as s:
        return s.scalars(select(AuditEntry).where(AuditEntry.event["source"]["site"].as_string() == request_id)).one()


def test_what_an_objection_withholds_is_counted_in_the_reads_audit_event(ics: Ics, db: Database) -> None:
    headers = ics.open_record("dr.patel")
    url = f"/fhir/Patient/{ics.okafor}/$everything"
    before = ics.client.get(url, headers={**headers, "X-Request-ID": "before"}).json()
    community = {e["resource"]["id"] for e in entries(before) if "RYC#" in e["resource"]["meta"]["source"]}
    assert community
    assert not any(key.startswith("withheld:objection") for key in details(_read_event(db, "before")))

    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", object_org="RYC")
    after = ics.client.get(url, headers={**headers, "X-Request-ID": "after"}).json()
    assert not community & {e["resource"]["id"] for e in entries(after)}
    event = _read_event(db, "after")
    assert (event.action, event.outcome) == ("clinical:record:read", "permit")
    assert details(event)["withheld:objection-org"] == "2"  # the community trust's Patient and care plan
    released = {e["what"]["reference"].split("/")[1] for e in event.event["entity"] if "what" in e}
    assert not community & released
