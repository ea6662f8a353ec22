"""Control characters a feed slips into a value (fifth security review, 2026-12-06): an HL7 escape such as
`\\X00\\` or a JSON `\\u0000` gave a NUL that SQLite stored inside a patient's name and PostgreSQL refused as an
"unexpected DataError"; an escape character (`\\X1B\\`) reached the record as it was sent. FHIR strings hold
no control characters but tab, carriage return and line feed, and FHIR XML cannot carry them at all: the
message waits in quarantine, naming the element and the character, on either database."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from tests.ingest.test_mllp import A01

from sharedcare.governance.framework import Framework
from sharedcare.ingest.messages import RawMessage
from sharedcare.ingest.mllp import MllpServer
from sharedcare.ingest.pipeline import ADAPTERS, IngestReport, Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Quarantine, Resource

PATIENT = {"resourceType": "Patient", "id": "gp-1",
           "meta": {"source": "https://fhir.nhs.uk/Id/ods-organization-code|P81001#emis"},
           "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
           "name": [{"family": "OKAFOR", "given": ["Emeka"]}], "birthDate": "1945-03-02", "gender": "male"}


@pytest.mark.parametrize(("escape", "code"), [("\\X00\\", "U+0000"), ("\\X1B\\", "U+001B"), ("\\X85\\", "U+0085")])
def test_an_hl7_escape_that_gives_a_control_character_is_answered_ae_and_held(
        db: Database, framework: Framework, escape: str, code: str) -> None:
    message = A01.format(dob="19450302").replace("OKAFOR", f"OKA{escape}FOR").encode("latin-1")
    ack = MllpServer(Pipeline(db, framework)).handle(message, "127.0.0.1:5000").decode("latin-1")
    msa = next(s for s in ack.split("\r") if s.startswith("MSA")).split("|")
    assert msa[1] == "AE" and "Patient.name[0].family" in msa[3] and f"control character {code}" in msa[3]
    with db.session() as s:
        assert s.scalars(select(PatientRecord)).all() == [] and s.scalars(select(Resource)).all() == []
        (held,) = s.scalars(select(Quarantine)).all()
        assert f"control character {code}" in held.reason


def test_utf8_sent_as_iso_8859_1_is_answered_ae_naming_the_field_not_stored_garbled(
        db: Database, framework: Framework) -> None:
    """MSH-18 says ISO 8859-1 but the bytes are UTF-8: "ZOË" read so is "ZOÃ" and U+008B, a C1 control character
    no name holds. It was stored so, over the correct name; it is held, naming PID-5 and the character set
    (since 2026-12-07 found as UTF-8 before any C1 character, which only some letters make)."""
    message = A01.format(dob="19450302").replace("OKAFOR^Emeka", "ZOË^Zoë").encode("utf-8")
    ack = MllpServer(Pipeline(db, framework)).handle(message, "127.0.0.1:5000").decode("latin-1")
    msa = next(s for s in ack.split("\r") if s.startswith("MSA")).split("|")
    err = next(s for s in ack.split("\r") if s.startswith("ERR")).split("|")
    assert msa[1] == "AE" and err[1] == "PID^1^5" and err[3] == "102^Data type error^HL70357"
    assert "declares 8859/1 in MSH-18, but its bytes are UTF-8" in msa[3] and "declare UNICODE UTF-8" in msa[3]
    with db.session() as s:
        assert s.scalars(select(Resource)).all() == []
        assert s.scalars(select(Quarantine.payload)).one() == message


def test_a_fhir_string_holding_a_nul_is_held_naming_the_element(db: Database, framework: Framework) -> None:
    patient = PATIENT | {"name": [{"family": "OKA\u0000FOR", "given": ["Emeka"]}]}
    report = IngestReport()
    raw = RawMessage("feeds/P81001/gp.ndjson", "line 1", json.dumps(patient).encode(), "fhir")
    assert Pipeline(db, framework).ingest_message(ADAPTERS["fhir"], raw, None, report, None) is None
    assert "Patient.name[0].family" in report.quarantine[0]["reason"]
    assert "control character U+0000" in report.quarantine[0]["reason"]
    with db.session() as s:
        assert s.scalars(select(Resource)).all() == []


def test_tab_carriage_return_and_line_feed_are_still_text(db: Database, framework: Framework) -> None:
    patient = PATIENT | {"name": [{"family": "OKAFOR", "given": ["Emeka"], "text": "Mr\tEmeka\r\nOKAFOR"}]}
    report = IngestReport()
    raw = RawMessage("feeds/P81001/gp.ndjson", "line 1", json.dumps(patient).encode(), "fhir")
    assert Pipeline(db, framework).ingest_message(ADAPTERS["fhir"], raw, None, report, None) is not None
    with db.session() as s:
        assert s.scalars(select(Resource.content)).one()["name"][0]["text"] == "Mr\tEmeka\r\nOKAFOR"
