"""HL7 v2 over MLLP as a hospital's interface engine sends it: one connection, messages in order, an ACK
for each that says what happened and where."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.conftest import FRAMEWORK_PATH

import sharedcare
from sharedcare.clock import utcnow
from sharedcare.governance.agreements import note_file_agreements, set_agreement
from sharedcare.governance.audit import AuditAction, expanded, verify
from sharedcare.governance.framework import Framework
from sharedcare.ingest.mllp import END, START, MllpServer
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, Quarantine, Resource

A01 = ("MSH|^~\\&|PAS|RXR|SHAREDCARE|QRD|20261101093000||ADT^A01^ADT_A01|MSG001|P|2.4|||AL|NE|GBR|8859/1\r"
       "EVN|A01|20261101093000\r"
       "PID|1||H900^^^RXR^MR~9434765919^^^NHS^NH||OKAFOR^Emeka^^^Mr||{dob}|M|||14 Mill Lane^^Riverside^^RV3 7QT\r"
       "PV1|1|I|Ward 12^^^RXR||||||||||||||||V900|||||||||||||||||||||||||20261101093000\r")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(server: MllpServer) -> Iterator[int]:
    """`server` listening on a free port, on an event loop of its own in a thread, until the block ends."""
    port = _free_port()
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    task = loop.create_task(server.serve("127.0.0.1", port, ready))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(ready.wait(), loop).result(timeout=10)
    try:
        yield port
    finally:
        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0.05)  # let connection handlers finish closing

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@contextmanager
def sharedcare_mllp(db: Database, **settings: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`sharedcare mllp` in a process of its own on a free port (with `settings` in its environment), its
    standard output and error one text stream; stopped with SIGTERM if it is still running when the block ends."""
    port = _free_port()
    src = str(Path(sharedcare.__file__).resolve().parents[1])
    env = {**os.environ, "SHAREDCARE_DB": db.url.render_as_string(hide_password=False), "PYTHONPATH": src, **settings}
    started = subprocess.Popen([sys.executable, "-c", "from sharedcare.cli import app; app()", "mllp",  # noqa: S603
                                "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        yield started, port
    finally:
        if started.poll() is None:
            started.terminate()
        started.communicate(timeout=30)


def _wait_listening(started: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and started.poll() is None, "the listener did not start"
            time.sleep(0.2)


@pytest.fixture
def listener(db: Database, framework: Framework) -> Iterator[int]:
    with serving(MllpServer(Pipeline(db, framework))) as port:
        yield port


def _exchange(port: int, *messages: bytes) -> list[str]:
    acks = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for message in messages:
            sock.sendall(START + message + END)
            data = b""
            while not data.endswith(END):
                chunk = sock.recv(65536)
                assert chunk, "the listener closed the connection without an ACK"
                data += chunk
            acks.append(data[1:-2].decode("latin-1"))
    return acks


def _segment(ack: str, name: str) -> list[str]:
    return next(s for s in ack.split("\r") if s.startswith(name)).split("|")


def test_a_good_admission_is_stored_and_acknowledged_aa(listener: int, db: Database) -> None:
    (ack,) = _exchange(listener, A01.format(dob="19450302").encode("latin-1"))
    msa = _segment(ack, "MSA")
    assert msa[1:3] == ["AA", "MSG001"]
    assert _segment(ack, "MSH")[8] == "ACK^A01^ACK"
    with db.session() as s:
        assert s.scalars(select(PatientRecord.source_id)).all() == ["H900"]


def test_every_message_is_audited_as_the_feeds_write_naming_the_patient_and_what_it_wrote(
        listener: int, db: Database) -> None:
    """TRUST AU1: a feed's writes are audited as a FHIR write is: who (the feed, ORG:application, and the
    address it came from), the patient, the resources created or updated. A refused message is a deny by the
    listener naming what it claimed, never its content (the reason quotes the bad date of birth)."""
    good = A01.format(dob="19450302").encode("latin-1")
    bad = A01.format(dob="19451302").replace("MSG001", "MSG002").encode("latin-1")
    _exchange(listener, good, good, bad)
    with db.session() as s:
        person = s.scalars(select(PatientRecord.person_id)).one()
        writes = s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.RECORD_WRITE.value)
                           .order_by(AuditEntry.seq)).all()
        assert verify(s).ok
    assert [(w.outcome, w.username, w.organisation, w.patient_id) for w in writes] == [
        ("permit", "RXR:pas", "RXR", person), ("permit", "RXR:pas", "RXR", person), ("deny", "mllp", None, None)]

    def written(entry: AuditEntry) -> list[str]:
        return sorted(e["what"]["reference"].split("/")[0] for e in expanded(entry.event)["entity"]
                      if "what" in e and e.get("role", {}).get("code") != "1")  # the patient's own entity aside

    assert written(writes[0]) == ["Encounter", "Patient"] and writes[0].event["action"] == "C"
    assert written(writes[1]) == []  # the same message again: nothing written
    refused = json.dumps(writes[2].event)
    assert "RXR:PAS" in refused and "MSG002" in refused and "127.0.0.1" in refused
    assert "19451302" not in refused and "OKAFOR" not in refused and "9434765919" not in refused


def test_a_malformed_date_is_answered_ae_naming_segment_and_field_and_waits_in_quarantine(
        listener: int, db: Database) -> None:
    bad = A01.format(dob="19451302").replace("MSG001", "MSG002").encode("latin-1")
    good = A01.format(dob="19450302").encode("latin-1")
    bad_ack, good_ack = _exchange(listener, bad, good)
    assert _segment(bad_ack, "MSA")[1:3] == ["AE", "MSG002"]
    err = _segment(bad_ack, "ERR")
    # the fault is named by place and rule; the date of birth is not sent back to the sender's engine logs
    assert err[1] == "PID^1^7" and "date of birth is not an HL7 date" in err[8] and "19451302" not in err[8]
    # ERR-3 (table 0357): a bad date is the sender's data type error, not our application failing (207)
    assert err[3] == "102^Data type error^HL70357" and f"quarantine #{_held_id(db)}" in err[8]
    assert _segment(good_ack, "MSA")[1] == "AA"  # the connection goes on
    with db.session() as s:
        held = s.scalars(select(Quarantine)).one()
    assert held.payload == bad and "PID-7" in held.reason


def _held_id(db: Database) -> int:
    with db.session() as s:
        return s.scalars(select(Quarantine.id)).one()


@pytest.mark.parametrize(("change", "code", "condition", "location"), [
    (("9434765919^^^NHS^NH", "9434765918^^^NHS^NH"), "AE", "102^Data type error", "PID^1^3"),
    (("H900^^^RXR^MR~", ""), "AE", "101^Required field missing", "PID^1^3"),
    (("|M|||14 Mill", "|Q|||14 Mill"), "AE", "103^Table value not found", "PID^1^8"),
    (("PV1|1|I|", "PV1|1|Z|"), "AE", "103^Table value not found", "PV1^1^2"),
    (("\rPID|1|", "\rNTE|1|"), "AE", "100^Segment sequence error", ""),
    (("|P|2.4|", "|T|2.4|"), "AE", "202^Unsupported processing id", "MSH^1^11"),
    (("ADT^A01^ADT_A01", "ADT^A17^ADT_A17"), "AR", "201^Unsupported event code", "MSH^1^9"),
    (("ADT^A01^ADT_A01", "ADT^A18^ADT_A18"), "AR", "201^Unsupported event code", "MSH^1^9"),
    (("ADT^A01^ADT_A01|MSG001|P|2.4|||AL|NE|GBR|8859/1\rEVN|A01|", "ADT|MSG001|P|2.4|||AL|NE|GBR|8859/1\rEVN||"),
     "AR", "200^Unsupported message type", "MSH^1^9"),
    (("ADT^A01^ADT_A01", "SIU^S12^SIU_S12"), "AR", "200^Unsupported message type", "MSH^1^9"),
    (("|20261101093000||ADT", "|||ADT"), "AE", "101^Required field missing", "MSH^1^7"),
    (("|20261101093000||ADT", "|2026110109300X||ADT"), "AE", "102^Data type error", "MSH^1^7"),
    (("|PAS|RXR|", "|PAS|RIVERSIDE|"), "AE", "103^Table value not found", "MSH^1^4"),
    (("|8859/1\r", "|KLINGON\r"), "AR", "103^Table value not found", "MSH^1^18"),
    (("\rPV1|1|I|Ward 12", "\rPV1|1|I|Ward 12\rPID|1||H901^^^RXR^MR"), "AE", "100^Segment sequence error", ""),
    (("ADT^A01^ADT_A01", "ADT^A40^ADT_A39"), "AE", "100^Segment sequence error", "MSH^1^9"),
    (("OKAFOR^Emeka", "OKAFOR^Em\reka"), "AR", "100^Segment sequence error", ""),
    (("|MSG001|P|", "||P|"), "AR", "101^Required field missing", "MSH^1^10"),
], ids=["nhs-number-check-digit", "no-hospital-number", "unknown-sex", "unknown-patient-class", "no-pid",
        "test-processing-id", "unhandled-event", "visit-merge", "no-event", "unhandled-message-type", "no-msh-7",
        "bad-msh-7", "unknown-sender", "unknown-character-set", "two-pids", "merge-without-mrg",
        "carriage-return-in-a-field", "no-control-id"])
def test_each_refusal_is_coded_in_err_3_by_table_0357_with_its_location_and_quarantine_number(
        listener: int, db: Database, change: tuple[str, str], code: str, condition: str, location: str) -> None:
    """An interface analyst's engine routes on ERR-3: 207 (application internal error) says "our fault, try
    again", so only a failure of ours is coded so; the sender's own faults carry the condition they are. The
    code is carried by the refusal where it is raised (`MessageError.condition`), not read from its wording."""
    message = A01.format(dob="19450302").replace(*change)
    assert message != A01.format(dob="19450302")
    (ack,) = _exchange(listener, message.encode("latin-1"))
    err = _segment(ack, "ERR")
    assert _segment(ack, "MSA")[1] == code
    assert (err[3], err[1]) == (f"{condition}^HL70357", location), err
    assert f"quarantine #{_held_id(db)}" in err[8]
def test_a_value_quoted_in_the_reason_cannot_change_the_code_the_ack_gives(listener: int) -> None:
    """The reason quotes what the sender sent; its words once chose ERR-3 and AR (a patient class spelling
    "but byte 1 is not handled" was answered AR, 102, as if the message could not be read)."""
    message = A01.format(dob="19450302").replace("PV1|1|I|", "PV1|1|but byte 1 is not handled|")
    (ack,) = _exchange(listener, message.encode("latin-1"))
    err = _segment(ack, "ERR")
    assert "patient class 'but byte 1 is not handled' is not one of" in err[8]
    assert (_segment(ack, "MSA")[1], err[3], err[1]) == ("AE", "103^Table value not found^HL70357", "PV1^1^2")


@pytest.mark.parametrize(("sent", "place"), [("|{}||ADT", "MSH^1^7"), ("EVN|A01|{}", "EVN^1^2")])
def test_a_message_dated_in_the_future_is_answered_ae_naming_the_field_and_waits_in_quarantine(
        listener: int, db: Database, sent: str, place: str) -> None:
    """secrev F2: MSH-7 (or EVN-2) orders the message against the source's others; an hour ahead would
    make every later update of the admission stale, so it is held, and the engine is told where and why."""
    ahead = (utcnow() + timedelta(hours=1)).strftime("%Y%m%d%H%M%S+0000")
    message = A01.format(dob="19450302").replace(sent.format("20261101093000"), sent.format(ahead), 1)
    (ack,) = _exchange(listener, message.encode("latin-1"))
    assert _segment(ack, "MSA")[1:3] == ["AE", "MSG001"]
    err = _segment(ack, "ERR")
    assert err[1] == place and "more than 300 seconds after the message was received" in err[8]
    with db.session() as s:
        assert s.scalars(select(PatientRecord)).all() == []
        assert s.scalars(select(Quarantine.source_org)).all() == ["RXR"]


def test_an_agreement_suspended_while_listening_holds_the_next_message_until_it_is_signed_again(
        listener: int, db: Database, framework: Framework) -> None:
    """Each message is checked against the agreements as they stand when it is stored, in its own transaction."""
    first = A01.format(dob="19450302").encode("latin-1")
    with db.session() as s:
        set_agreement(s, framework, "RXR", "suspended", by="ig.morgan", reason="a breach reported")
    (held_ack,) = _exchange(listener, first)
    assert _segment(held_ack, "MSA")[1] == "AE" and "no signed agreement in force" in _segment(held_ack, "MSA")[3]
    assert _segment(held_ack, "ERR")[3] == "207^Application internal error^HL70357"  # 0357 has none for policy
    with db.session() as s:
        assert s.scalars(select(PatientRecord)).all() == []
        assert s.scalars(select(Quarantine.payload)).one() == first
        set_agreement(s, framework, "RXR", "signed", by="ig.morgan", reason="")
    (ack,) = _exchange(listener, first)
    assert _segment(ack, "MSA")[1] == "AA"
    with db.session() as s:
        assert s.scalars(select(PatientRecord.source_id)).all() == ["H900"]


def test_the_ack_sends_the_header_back_in_its_own_separators_and_cannot_be_given_fields(listener: int) -> None:
    """Fifth security review (LOW): MSH-3, -4, -10 and -12 went back verbatim. A sender that declared `#` its
    field separator and `*` its component separator had `|` read as text; echoed, it added fields to the ACK's
    MSH and MSA, and a VT in MSH-10 put a frame's start inside the ACK (a VT inside a frame is now read as the start
    of another message, below), as an FS would its end. Each value is now re-encoded in the ACK's separators."""
    header = "MSH#*~\\&#PAS|X^Y#RXR*1.2*ISO#SHAREDCARE#QRD#20261101093000##ADT*A01*ADT_A01#MSG\x1c|AA#P#2.4"
    rest = A01.format(dob="19450302").split("\r", 1)[1].replace("|", "#").replace("^", "*")
    (ack,) = _exchange(listener, (header + "\r" + rest).encode("latin-1"))
    msh, msa = _segment(ack, "MSH"), _segment(ack, "MSA")
    assert len(msh) == 12 and msh[4:6] == ["PAS\\F\\X\\S\\Y", "RXR^1.2^ISO"] and msh[8] == "ACK^A01^ACK"
    assert msa[2] == "MSG\\F\\AA" and "\x1c" not in ack


def test_something_that_is_not_hl7_is_rejected_ar_and_kept(listener: int, db: Database) -> None:
    (ack,) = _exchange(listener, b"hello, is this the lab?")
    assert _segment(ack, "MSA")[1] == "AR"
    with db.session() as s:
        assert s.scalars(select(Quarantine.payload)).one() == b"hello, is this the lab?"


def test_an_unhandled_message_type_is_rejected_ar(listener: int) -> None:
    siu = A01.format(dob="19450302").replace("ADT^A01^ADT_A01", "SIU^S12^SIU_S12").encode("latin-1")
    (ack,) = _exchange(listener, siu)
    assert _segment(ack, "MSA")[1] == "AR" and "is not handled" in _segment(ack, "ERR")[8]


def test_the_same_message_twice_is_acknowledged_and_stored_once(listener: int, db: Database) -> None:
    message = A01.format(dob="19450302").encode("latin-1")
    acks = _exchange(listener, message, message)
    assert [_segment(a, "MSA")[1] for a in acks] == ["AA", "AA"]
    with db.session() as s:
        assert len(s.scalars(select(PatientRecord)).all()) == 1


def test_a_bad_message_its_engine_sends_again_is_held_once(listener: int, db: Database) -> None:
    """An engine whose message was answered AE may send it again, on the same connection or, reconnected, on
    another: each copy was held as an item of its own (the listener's place of a message is its connection and
    count), so an operator fixing one found another waiting, and `quarantine check` counted the message twice.
    The same bytes from the same sender are one item, as file ingest keeps a file read again."""
    bad = A01.format(dob="19451302").encode("latin-1")
    other = bad.replace(b"MSG001", b"MSG002")  # another message, as bad: an item of its own
    acks = [*_exchange(listener, bad, bad), *_exchange(listener, bad, other)]
    assert [_segment(a, "MSA")[1] for a in acks] == ["AE"] * 4
    named = [_segment(a, "MSA")[3].rsplit("(quarantine #", 1)[1].rstrip(")") for a in acks]
    assert named[0] == named[1] == named[2] != named[3]
    with db.session() as s:
        held = s.scalars(select(Quarantine).order_by(Quarantine.id)).all()
    assert [(str(item.id), item.status, item.payload) for item in held] == [
        (named[0], "held", bad), (named[3], "held", other)]


def test_an_agreement_suspended_mid_stream_refuses_the_very_next_message_on_the_same_connection(
        listener: int, db: Database, framework: Framework) -> None:
    """An engine keeps its connection open: a suspension between two of its messages holds the second."""
    first = A01.format(dob="19450302").encode("latin-1")
    second = first.replace(b"MSG001", b"MSG002").replace(b"H900", b"H901").replace(b"9434765919", b"9999999468")
    with socket.create_connection(("127.0.0.1", listener), timeout=10) as sock:
        def send(message: bytes) -> str:
            sock.sendall(START + message + END)
            data = b""
            while not data.endswith(END):
                data += sock.recv(65536)
            return data[1:-2].decode("latin-1")

        assert _segment(send(first), "MSA")[1] == "AA"
        with db.session() as s:
            set_agreement(s, framework, "RXR", "suspended", by="ig.morgan", reason="a breach reported")
        held = send(second)
    assert _segment(held, "MSA")[1:3] == ["AE", "MSG002"] and "no signed agreement" in _segment(held, "MSA")[3]
    with db.session() as s:
        assert s.scalars(select(PatientRecord.source_id)).all() == ["H900"]


def test_a_merge_is_audited_naming_the_surviving_patients_person(listener: int, db: Database) -> None:
    """An A40 moves the prior record's person into the surviving one's: its write names the person they are now."""
    h900 = A01.format(dob="19450302").encode("latin-1")
    h901 = (A01.format(dob="19620714").replace("MSG001", "MSG002").replace("H900", "H901")
            .replace("~9434765919^^^NHS^NH", "").replace("OKAFOR^Emeka", "JONES^Ann").encode("latin-1"))
    a40 = ("MSH|^~\\&|PAS|RXR|SHAREDCARE|QRD|20261102093000||ADT^A40^ADT_A39|MSG003|P|2.4\r"
           "EVN|A40|20261102093000\r"
           "PID|1||H900^^^RXR^MR~9434765919^^^NHS^NH||OKAFOR^Emeka^^^Mr||19450302|M\r"
           "MRG|H901^^^RXR^MR\r").encode("latin-1")
    acks = _exchange(listener, h900, h901, a40)
    assert [_segment(a, "MSA")[1] for a in acks] == ["AA", "AA", "AA"]
    with db.session() as s:
        persons = {source_id: person for source_id, person in s.execute(
            select(PatientRecord.source_id, PatientRecord.person_id))}
        merge = s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.RECORD_WRITE.value)
                          .order_by(AuditEntry.seq.desc()).limit(1)).one()
    assert persons["H900"] == persons["H901"] and merge.patient_id == persons["H900"]


def test_the_first_message_after_the_listener_starts_updates_a_patient_already_stored(
        db: Database, framework: Framework) -> None:
    """Network review of 2026-12-07 (HIGH): after each `sharedcare mllp` start, the first message for a patient
    already stored was answered AE 207 and quarantined (objects made before the ORM had configured its mappers),
    and engines do not resend after an AE: that update went missing. The listener is restarted here: a patient
    stored, and the framework file's agreements noted, as an earlier run left them."""
    stored = A01.format(dob="19450302").encode("latin-1")
    MllpServer(Pipeline(db, framework)).handle(stored, "127.0.0.1:5000")
    note_file_agreements(db, framework, str(FRAMEWORK_PATH))
    update = (stored.replace(b"ADT^A01^ADT_A01|MSG001", b"ADT^A08^ADT_A01|MSG002").replace(b"EVN|A01", b"EVN|A08")
              .replace(b"14 Mill Lane^^Riverside^^RV3 7QT", b"2 Quay Street^^Riverside^^RV1 2AB"))
    with sharedcare_mllp(db) as (started, port):
        _wait_listening(started, port)
        (ack,) = _exchange(port, update)
    assert _segment(ack, "MSA")[1:3] == ["AA", "MSG002"], ack
    with db.session() as s:
        assert s.scalars(select(PatientRecord.postcode)).all() == ["RV1 2AB"]
        assert s.scalars(select(Quarantine)).all() == []


def test_a_control_id_longer_than_the_store_keeps_is_rejected_ar_and_neither_echoed_nor_audited_whole(
        listener: int, db: Database) -> None:
    """Network review of 2026-12-07 (MEDIUM): a 3 MB MSH-10 was answered AA, echoed whole in the ACK and kept whole in
    an audit entry that can never be deleted. It is refused, naming the field and the limit, and what the
    ACK and the audit say of it is cut, saying so."""
    long_id = "Z" * 300_000
    message = A01.format(dob="19450302").replace("MSG001", long_id).encode("latin-1")
    (ack,) = _exchange(listener, message)
    msa, err = _segment(ack, "MSA"), _segment(ack, "ERR")
    assert msa[1] == "AR" and msa[2] == "Z" * 200 + "... (cut from 300000 characters)"
    assert (err[1], err[3]) == ("MSH^1^10", "102^Data type error^HL70357")
    assert "message control id (MSH-10) of 300000 characters: the store keeps at most 100" in err[8]
    assert len(ack) < 2_000
    with db.session() as s:
        assert s.scalars(select(PatientRecord)).all() == []
        (refused,) = s.scalars(select(AuditEntry).where(AuditEntry.username == "mllp")).all()
    assert len(json.dumps(refused.event)) < 5_000 and "cut from 300000 characters" in json.dumps(refused.event)


def test_long_sending_application_and_facility_are_echoed_cut(listener: int, db: Database) -> None:
    """Network review of 2026-12-07 (MEDIUM): a 3 MB MSH-3 came back whole in the ACK (MSH-5) of a message refused."""
    header = f"MSH|^~\\&|{'A' * 300_000}|{'B' * 300_000}||||||MSG9|P|2.4"
    (ack,) = _exchange(listener, header.encode("latin-1"))
    msh = _segment(ack, "MSH")
    assert _segment(ack, "MSA")[1:3] == ["AE", "MSG9"]  # no message type (MSH-9)
    assert msh[4:6] == ["A" * 200 + "... (cut from 300000 characters)", "B" * 200 + "... (cut from 300000 characters)"]
    with db.session() as s:
        (refused,) = s.scalars(select(AuditEntry).where(AuditEntry.username == "mllp")).all()
    assert len(json.dumps(refused.event)) < 5_000


def test_after_the_store_drops_its_connections_the_next_message_is_stored_and_while_it_refuses_them_ae_207(
        listener: int, db: Database) -> None:
    """After PostgreSQL restarted, a message got no ACK at all: the connection closed on a dead pooled
    connection (AdminShutdown). Now the pool replaces it; and a store that refuses connections is answered AE
    with ERR-3 207 (ours: try again), which an engine resends, not a closed connection."""
    from tests.api.test_failures import store_admin

    def sent(control_id: str) -> bytes:
        return A01.format(dob="19450302").replace("MSG001", control_id).encode("latin-1")

    with store_admin(db) as admin:
        (first,) = _exchange(listener, sent("MSG001"))
        assert _segment(first, "MSA")[1] == "AA"
        admin.drop_connections()
        (after,) = _exchange(listener, sent("MSG002"))
        assert _segment(after, "MSA")[1:3] == ["AA", "MSG002"], after
        admin.drop_connections(refuse=True)
        (refused,) = _exchange(listener, sent("MSG003"))
        assert _segment(refused, "MSA")[1:3] == ["AE", "MSG003"], refused
        assert "the record store is not reachable" in _segment(refused, "MSA")[3]
        assert _segment(refused, "ERR")[3] == "207^Application internal error^HL70357"
        admin.allow(True)
        (again,) = _exchange(listener, sent("MSG003"))
        assert _segment(again, "MSA")[1:3] == ["AA", "MSG003"], again


def _gum_visit(app: str, control_id: str) -> bytes:
    """RXR's PAS's attendance at its GUM clinic (PV1-10 'GUM', which the framework maps for the PAS to the
    national genitourinary medicine code, sexual health), sent under MSH-3 `app`."""
    return (A01.format(dob="19450302").replace("|PAS|", f"|{app}|", 1).replace("MSG001", control_id)
            .replace("V900", f"V{control_id}").replace("PV1|1|I|Ward 12^^^RXR||||||||",
                                                        "PV1|1|O|Clinic 4^^^RXR|||||||GUM|").encode("latin-1"))


def test_a_visit_from_a_sending_application_the_framework_does_not_declare_is_held_not_filed_as_an_ordinary_one(
        listener: int, db: Database) -> None:
    """Operations review of 2026-12-07 (HIGH): MSH-3 was taken as the sending system unchecked, so the PAS's GUM
    clinic visit sent as 'PAS-LIVE' missed the PAS's service_codes, was stored as an ordinary encounter (which a
    district nurse, sexual health 0, reads) and answered AA. MSH-3 must name one of the organisation's HL7 v2
    systems (deny by default): else AE naming MSH-3 and the systems the framework declares, the message held
    and the refusal audited. The same visit from 'pas' (case and spacing aside, the PAS) is sexual health."""
    undeclared, declared = _exchange(listener, _gum_visit("PAS-LIVE", "G1"), _gum_visit("pas", "G2"))
    msa, err = _segment(undeclared, "MSA"), _segment(undeclared, "ERR")
    assert msa[1:3] == ["AE", "G1"] and (err[1], err[3]) == ("MSH^1^3", "103^Table value not found^HL70357")
    assert ("sending application 'PAS-LIVE' (MSH-3) is not an HL7 v2 system of RXR in the framework "
            "(organisations.RXR.systems lists lab, pas)") in err[8]
    assert _segment(declared, "MSA")[1:3] == ["AA", "G2"]
    with db.session() as s:
        visits = s.execute(select(Resource.message_id, Resource.category)
                           .where(Resource.resource_type == "Encounter")).all()
        (held,) = s.scalars(select(Quarantine)).all()
        (refused,) = [json.dumps(e.event) for e in s.scalars(select(AuditEntry).where(AuditEntry.username == "mllp"))]
    assert [tuple(v) for v in visits] == [("G2", "sexual_health")]
    assert held.status == "held" and held.source_org == "RXR" and held.location.endswith("(MSH-10 G1)")
    assert "RXR:PAS-LIVE" in refused and f'"{held.id}"' in refused


@pytest.mark.parametrize(("version", "answer", "echoed"), [
    ("2.9", "AR", "2.4"), ("3.0", "AR", "2.4"), ("", "AR", "2.4"), ("banana", "AR", "2.4"),
    ("2.3", "AA", "2.3"), ("2.5.1", "AA", "2.5.1")])
def test_a_version_not_read_is_rejected_ar_203_and_not_echoed(listener: int, db: Database, version: str, answer: str,
                                                            echoed: str) -> None:
    """Operations review of 2026-12-07 (LOW): MSH-12 was never checked: 2.9, 3.0, a blank and 'banana' were
    answered AA, 'banana' echoed as the ACK's version. The versions whose fields the mapping reads are taken;
    any other is AR with ERR at MSH-12 and 203 (unsupported version id), held, and the ACK is in 2.4."""
    message = A01.format(dob="19450302").replace("|P|2.4|", f"|P|{version}|").encode("latin-1")
    (ack,) = _exchange(listener, message)
    assert _segment(ack, "MSA")[1:3] == [answer, "MSG001"] and _segment(ack, "MSH")[11] == echoed
    with db.session() as s:
        held = s.scalars(select(Quarantine.reason)).all()
    if answer == "AR":
        err = _segment(ack, "ERR")
        assert (err[1], err[3]) == ("MSH^1^12", "203^Unsupported version id^HL70357")
        assert "(MSH-12): HL7 v2 2.3, 2.3.1, 2.4, 2.5, 2.5.1 are read" in err[8] and len(held) == 1
    else:
        assert held == []


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_the_listener_stops_cleanly_on_ctrl_c_or_sigterm_saying_how_many_messages_it_took(
        db: Database, signal_name: str) -> None:
    """Operations review of 2026-12-07: Ctrl-C (SIGINT) printed an asyncio CancelledError traceback for each
    connection open, and SIGTERM ended the process where it stood, saying nothing. Either now stops it: the
    connections are closed, and it says how many messages it took."""
    import signal

    with sharedcare_mllp(db) as (started, port):
        _wait_listening(started, port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:  # an engine's, between bursts
            (ack,) = _exchange(port, A01.format(dob="19450302").encode("latin-1"))
            started.send_signal(getattr(signal, signal_name))
            output, _ = started.communicate(timeout=30)
            assert idle.recv(100) == b""  # closed by the listener
    assert _segment(ack, "MSA")[1] == "AA"
    assert started.returncode == 0 and "stopped after 1 messages" in output and "Traceback" not in output, output
