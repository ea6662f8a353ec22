"""A partner's FHIR write, however long it takes or waits for the store, does not hold up anyone else's
request: the clinician at the point of care is answered meanwhile (one server process serves both)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from tests.builders import condition
from tests.small_ics import Ics

from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.store.database import Database

WRITE = "user/*.read user/*.write"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    answered: list[Any] = []
    thread = threading.Thread(target=lambda: answered.append(call()), daemon=True)
    thread.start()
    return thread, answered


def test_a_write_waiting_for_the_store_does_not_hold_up_other_requests(ics: Ics, db: Database) -> None:
    write_headers = {**ics.token("dr.patel", WRITE), **FHIR_JSON}
    body = json.dumps(condition("gp-c7", "Patient/gp-okafor", "38341003", "Hypertension"))
    with db.session() as other_writer:  # another writer (an ingest, a read's audit append) holds the store
        record_audit(other_writer, AuditRecord(AuditAction.CLOCK_CHECK, "permit", "system"))
        writing, written = _in_thread(lambda: ics.client.put("/fhir/Condition/gp-c7", headers=write_headers,
                                                             content=body))
        time.sleep(1)  # the write has reached the store and waits for its turn
        assert writing.is_alive() and not written
        asking, answers = _in_thread(lambda: ics.client.get("/fhir/metadata"))
        asking.join(timeout=10)
        assert answers and answers[0].status_code == 200, "another request waited for the partner's write"
        other_writer.commit()
    writing.join(timeout=60)
    assert written and written[0].status_code == 201, written


def test_a_patient_search_waiting_to_be_audited_does_not_hold_up_other_requests(ics: Ics, db: Database) -> None:
    headers = ics.token("dr.patel")
    with db.session() as other_writer:
        record_audit(other_writer, AuditRecord(AuditAction.CLOCK_CHECK, "permit", "system"))
        searching, found = _in_thread(lambda: ics.client.post("/fhir/Patient/_search", headers=headers,
                                                              data={"family": "Okafor", "birthdate": "1945-03-02"}))
        time.sleep(1)  # the search waits to append its audit entry
        assert searching.is_alive() and not found
        asking, answers = _in_thread(lambda: ics.client.get("/fhir/metadata"))
        asking.join(timeout=10)
        assert answers and answers[0].status_code == 200, "another request waited for the search"
        other_writer.commit()
    searching.join(timeout=60)
    assert found and found[0].status_code == 200 and found[0].json()["entry"], found
