"""A source fixes a message that waits in quarantine and sends it again: what an integration engineer sees.

The corrected copy is stored; the held original is marked superseded (kept byte for byte, naming what
superseded it and when), is no longer counted as waiting past the service level, and is never replayed.
What counts as the same message is in `ingest/resent.py`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from tests.builders import bundle, downgrade_store, patient, write_ndjson
from tests.ingest.test_csv_extract import _extract, _lrc, _row
from tests.ingest.test_mllp import A01, _segment
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.governance.framework import Framework
from sharedcare.ingest.mllp import MllpServer
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, Quarantine

runner = CliRunner()
BAD_DOB, GOOD_DOB = "19451302", "19450302"


def _a01(dob: str, control_id: str = "MSG002", app_name: str = "PAS", sent: str = "20261101093000",
         kind: str = "ADT^A01", patient: str = "H900^^^RXR^MR~9434765919^^^NHS^NH") -> bytes:
    return (A01.format(dob=dob).replace("MSG001", control_id).replace("|PAS|RXR|", f"|{app_name}|RXR|")
            .replace("20261101093000||ADT", f"{sent}||ADT").replace("ADT^A01^", f"{kind}^")
            .replace("H900^^^RXR^MR~9434765919^^^NHS^NH", patient).encode("latin-1"))


def _held_two_days(db: Database) -> None:
    """The items held have waited two days: past the 24-hour service level."""
    with db.session() as s:
        s.execute(update(Quarantine).values(received_at=utcnow() - timedelta(days=2)))


def _items(db: Database) -> list[Quarantine]:
    with db.session() as s:
        return list(s.scalars(select(Quarantine).order_by(Quarantine.id)))


def test_an_hl7_message_resent_corrected_with_its_control_id_supersedes_the_held_one(
        env: Database, framework: Framework) -> None:
    listener = MllpServer(Pipeline(env, framework))
    bad = _a01(BAD_DOB)
    assert _segment(listener.handle(bad, "127.0.0.1:5000").decode("latin-1"), "MSA")[1] == "AE"
    _held_two_days(env)
    assert runner.invoke(app, ["quarantine", "check"]).exit_code == 1  # waiting past the service level

    fixed = listener.handle(_a01(GOOD_DOB), "127.0.0.1:5000").decode("latin-1")
    assert _segment(fixed, "MSA")[1:3] == ["AA", "MSG002"]

    (item,) = _items(env)
    assert (item.status, item.payload) == ("superseded", bad)  # kept, byte for byte
    assert item.superseded_by == "mllp://127.0.0.1:5000, message 2 (MSH-10 MSG002) (message MSG002)"
    assert item.superseded_at is not None and utcnow() - item.superseded_at < timedelta(minutes=1)
    check = runner.invoke(app, ["quarantine", "check", "--json"])
    assert check.exit_code == 0 and json.loads(check.stdout)["held"] == 0  # no longer waiting
    assert json.loads(runner.invoke(app, ["quarantine", "list", "--json"]).stdout) == []
    (listed,) = json.loads(runner.invoke(app, ["quarantine", "list", "--all", "--json"]).stdout)
    assert (listed["status"], listed["superseded_by"]) == ("superseded", item.superseded_by)
    shown = runner.invoke(app, ["quarantine", "list", "--all"], env={"COLUMNS": "400"}).stdout
    assert "superseded" in shown and "MSH-10 MSG002) (message MSG002)" in shown and "PID-7" in shown
    assert "1 superseded by a corrected copy" in runner.invoke(app, ["quarantine", "list"]).stderr

    replay = runner.invoke(app, ["quarantine", "replay", str(item.id)], env={"COLUMNS": "400"})
    assert replay.exit_code == 2 and f"#{item.id} was superseded by mllp://127.0.0.1:5000" in replay.stderr
    with env.session() as s:
        assert s.scalars(select(PatientRecord.birth_date)).one().isoformat() == "1945-03-02"
    assert [i.status for i in _items(env)] == ["superseded"]


def test_a_message_held_with_a_huge_sending_application_is_held_and_superseded_by_its_corrected_copy(
        env: Database, framework: Framework) -> None:
    """A 300,000-character MSH-3 made the held item's key too long for PostgreSQL's index: the listener closed
    the connection without an ACK and nothing was held. The key is now its start and its digest."""
    listener = MllpServer(Pipeline(env, framework))
    name = "PAS^" + "X" * 300_000  # the key holds MSH-3 whole; the system is its first part
    held = listener.handle(_a01(BAD_DOB, app_name=name), "127.0.0.1:5000").decode("latin-1")
    assert _segment(held, "MSA")[1] == "AE"
    (item,) = _items(env)
    assert item.status == "held" and item.message_key is not None and len(item.message_key) < 300
    fixed = listener.handle(_a01(GOOD_DOB, app_name=name), "127.0.0.1:5000").decode("latin-1")
    assert _segment(fixed, "MSA")[1] == "AA"
    assert [i.status for i in _items(env)] == ["superseded"]


@pytest.mark.parametrize("sent", ["2026110109300X", "{ahead}"], ids=["malformed-msh-7", "msh-7-in-the-future"])
def test_an_hl7_message_held_for_its_own_msh_7_is_superseded_by_its_corrected_copy(
        env: Database, framework: Framework, sent: str) -> None:
    """The held copy's faulty time is no time to order by: the corrected copy, dated earlier, supersedes it."""
    listener = MllpServer(Pipeline(env, framework))
    ahead = (utcnow() + timedelta(days=1)).strftime("%Y%m%d%H%M%S+0000")
    held = listener.handle(_a01(GOOD_DOB, sent=sent.format(ahead=ahead)), "127.0.0.1:5000").decode("latin-1")
    assert _segment(held, "MSA")[1] == "AE" and _segment(held, "ERR")[1] == "MSH^1^7"
    fixed = listener.handle(_a01(GOOD_DOB), "127.0.0.1:5000").decode("latin-1")
    assert _segment(fixed, "MSA")[1] == "AA"
    assert [i.status for i in _items(env)] == ["superseded"]


@pytest.mark.parametrize("other", [
    {"control_id": "MSG003"},  # another message of the same sender
    {"app_name": "LAB"},  # the same control id from another of the trust's applications
    {"sent": "20261101080000"},  # the same control id on an older message: a counter that wrapped
    {"patient": "H300^^^RXR^MR~9990000018^^^NHS^NH"},  # the same control id, reused for another patient
    {"kind": "ADT^A08"},  # the same control id, reused for another kind of message
], ids=["other-control-id", "other-application", "older-message", "other-patient", "other-message-type"])
def test_an_hl7_message_that_is_not_the_same_one_leaves_the_held_item_waiting(
        env: Database, framework: Framework, other: dict[str, Any]) -> None:
    listener = MllpServer(Pipeline(env, framework))
    listener.handle(_a01(BAD_DOB), "127.0.0.1:5000")
    ack = listener.handle(_a01(GOOD_DOB, **other), "127.0.0.1:5000").decode("latin-1")
    assert _segment(ack, "MSA")[1] == "AA"
    assert [(i.status, i.superseded_by) for i in _items(env)] == [("held", None)]


def test_an_hl7_message_resent_with_its_nhs_number_corrected_supersedes_the_held_one(
        env: Database, framework: Framework) -> None:
    """The copy is about the same patient when it shares one identifier of PID-3: here the hospital number,
    the NHS number being the fault corrected."""
    listener = MllpServer(Pipeline(env, framework))
    held = listener.handle(_a01(GOOD_DOB, patient="H900^^^RXR^MR~9434765918^^^NHS^NH"), "127.0.0.1:5000")
    assert _segment(held.decode("latin-1"), "MSA")[1] == "AE"
    assert _segment(listener.handle(_a01(GOOD_DOB), "127.0.0.1:5000").decode("latin-1"), "MSA")[1] == "AA"
    assert [i.status for i in _items(env)] == ["superseded"]


def _identified(nhs: str, timestamp: str) -> dict[str, Any]:
    message = bundle("P81001", "emis", [patient("gp-2", nhs, "Hughes", "Margaret", "1952-06-11")], timestamp=timestamp)
    return message | {"identifier": {"system": "https://emis.example/messages", "value": "M-77"}}


@pytest.mark.parametrize(("resent_at", "superseded"), [("2026-11-01T10:00:00Z", True), ("2026-11-01T08:00:00Z", False)],
                         ids=["later", "earlier"])
def test_a_fhir_bundle_resent_with_its_identifier_and_a_later_timestamp_supersedes_the_held_one(
        env: Database, framework: Framework, tmp_path: Path, resent_at: str, superseded: bool) -> None:
    pipeline = Pipeline(env, framework)
    first = write_ndjson(tmp_path / "1.ndjson", [_identified("1234567890", "2026-11-01T09:00:00Z")])
    held = pipeline.ingest_paths([first])
    assert held.quarantined == 1  # an NHS number failing modulus 11
    resent = pipeline.ingest_paths([write_ndjson(tmp_path / "2.ndjson", [_identified("9434765919", resent_at)])])
    assert (resent.accepted, resent.quarantined) == (1, 0)
    (item,) = _items(env)
    assert item.status == ("superseded" if superseded else "held")
    assert (item.superseded_by == f"{tmp_path / '2.ndjson'}, line 1 (message {_bundle_id(tmp_path / '2.ndjson')})"
            ) is superseded


@pytest.mark.parametrize(("dated", "superseded"), [(False, False), (True, True)], ids=["undated", "dated"])
def test_a_bundle_known_only_by_its_id_supersedes_only_when_both_copies_are_dated(
        env: Database, framework: Framework, tmp_path: Path, dated: bool, superseded: bool) -> None:
    """Senders reuse a Bundle id ("1", "export") for unrelated messages: without times to order them, a later
    bundle with the same id is not taken for a corrected copy of the held one (which would never be replayed)."""
    def numbered(nhs: str, given: str, timestamp: str) -> dict[str, Any]:
        message = bundle("P81001", "emis", [patient("gp-2", nhs, "Hughes", given, "1952-06-11")], timestamp=timestamp)
        message["id"] = "1"
        return message if dated else {k: v for k, v in message.items() if k != "timestamp"}

    pipeline = Pipeline(env, framework)
    held = pipeline.ingest_paths([write_ndjson(tmp_path / "1.ndjson", [numbered("1234567890", "Margaret",
                                                                                "2026-11-01T09:00:00Z")])])
    assert held.quarantined == 1
    later = pipeline.ingest_paths([write_ndjson(tmp_path / "2.ndjson", [numbered("9434765919", "Peggy",
                                                                                 "2026-11-01T10:00:00Z")])])
    assert (later.accepted, later.quarantined) == (1, 0)
    (item,) = _items(env)
    assert item.status == ("superseded" if superseded else "held")


def _bundle_id(path: Path) -> str:
    return str(json.loads(path.read_text())["id"])


def test_a_csv_row_resent_for_the_same_assessment_supersedes_the_held_one(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    pipeline = Pipeline(env, framework)
    first = pipeline.ingest_paths([_extract(_lrc(tmp_path, "mosaic-0001.csv"), [_row(sex="Mle")])])
    assert first.quarantined == 1
    other = pipeline.ingest_paths([_extract(_lrc(tmp_path, "mosaic-0002.csv"), [
        _row(client_id="C2", assessment_id="A2", last_updated="2026-10-18T10:00:00Z")])])
    assert other.accepted and [i.status for i in _items(env)] == ["held"]  # another assessment: still waiting
    fixed = pipeline.ingest_paths([_extract(_lrc(tmp_path, "mosaic-0003.csv"), [
        _row(last_updated="2026-10-18T09:00:00Z")])])
    assert fixed.accepted and fixed.quarantined == 0
    (item,) = _items(env)
    assert item.status == "superseded" and item.superseded_by.startswith(f"{_lrc(tmp_path, 'mosaic-0003.csv')}, line 2")


def test_replay_will_not_store_a_message_as_another_organisations(env: Database, tmp_path: Path) -> None:
    """Provenance: `replay --source` could store a practice's held message as a hospital's, shared and audited
    as the hospital's. It names the sender only of a message that could not name its own."""
    runner.invoke(app, ["agreements", "set", "RYC", "--status", "suspended", "--reason", "a breach reported"])
    feed = write_ndjson(tmp_path / "ryc.ndjson", [bundle("RYC", "rio", [
        patient("RYC-1", "9434765919", "Okafor", "Emeka", "1945-03-02")])])
    assert runner.invoke(app, ["ingest", str(feed)]).exit_code == 1
    (held,) = _items(env)
    runner.invoke(app, ["agreements", "set", "RYC", "--status", "signed"])

    refused = runner.invoke(app, ["quarantine", "replay", str(held.id), "--source", "RXR"], env={"COLUMNS": "400"})
    assert refused.exit_code == 2 and "sent by RYC: a replay cannot store it as RXR's" in refused.stderr
    with env.session() as s:
        assert s.scalars(select(PatientRecord)).all() == []
    assert [i.status for i in _items(env)] == ["held"]
    done = runner.invoke(app, ["quarantine", "replay", str(held.id), "--source", "RYC"])
    assert done.exit_code == 0, done.output
    with env.session() as s:
        assert s.scalars(select(PatientRecord.source_org)).all() == ["RYC"]


def test_replay_with_source_names_the_sender_of_a_message_that_names_none(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    """An HL7 message whose MSH-4 is a local code the framework does not know is held; the operator who
    knows the sender replays it with --source, as `ingest --source` would have stored it. Another
    organisation's message, read as if no --source were given, cannot be."""
    unknown = A01.format(dob=GOOD_DOB).replace("|PAS|RXR|", "|PAS|RIVERSIDE|").encode("latin-1")
    hl7 = tmp_path / "adt.hl7"
    hl7.write_bytes(unknown)
    assert Pipeline(env, framework).ingest_paths([hl7]).quarantined == 1
    (held,) = _items(env)
    assert held.source_org is None
    done = runner.invoke(app, ["quarantine", "replay", str(held.id), "--source", "RXR"])
    assert done.exit_code == 0, done.output
    with env.session() as s:
        assert s.scalars(select(PatientRecord.source_org)).all() == ["RXR"]


def test_the_original_file_ingested_again_after_its_correction_leaves_one_item_superseded(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    """Re-running an ingest (after a crash, say) reads the failing original again: it is the message already
    superseded, not a new one waiting."""
    pipeline = Pipeline(env, framework)
    first = write_ndjson(tmp_path / "1.ndjson", [_identified("1234567890", "2026-11-01T09:00:00Z")])
    pipeline.ingest_paths([first])
    pipeline.ingest_paths([write_ndjson(tmp_path / "2.ndjson", [_identified("9434765919", "2026-11-01T10:00:00Z")])])
    again = pipeline.ingest_paths([first])
    assert again.quarantined == 1  # still refused, and said so
    (item,) = _items(env)
    assert item.status == "superseded" and "modulus 11" in item.reason
    assert json.loads(runner.invoke(app, ["quarantine", "check", "--json"]).stdout)["held"] == 0


@pytest.mark.parametrize("per_transaction", [64, 1], ids=["one-batch", "a-batch-each"])
def test_a_corrected_copy_in_the_same_file_as_its_original_supersedes_it_whatever_the_batch(
        env: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        per_transaction: int) -> None:
    """A source that resends within one file (an interface engine's catch-up, an export run again): the
    outcome does not depend on whether the two copies fall into one stored batch of the file's messages."""
    monkeypatch.setattr("sharedcare.ingest.pipeline.STORE_BATCH", per_transaction)
    hl7 = tmp_path / "adt.hl7"
    hl7.write_bytes(_a01(BAD_DOB) + b"\r\n" + _a01(GOOD_DOB, sent="20261101094000"))
    fhir = write_ndjson(tmp_path / "gp.ndjson", [_identified("1234567890", "2026-11-01T09:00:00Z"),
                                                 _identified("9434765919", "2026-11-01T10:00:00Z")])
    report = Pipeline(env, framework).ingest_paths([hl7, fhir])
    assert (report.messages, report.quarantined) == (4, 2)
    items = _items(env)
    assert [(i.filename, i.status) for i in items] == [(str(hl7), "superseded"), (str(fhir), "superseded")]
    assert items[0].superseded_by.startswith(f"{hl7}, message 2")
    assert items[1].superseded_by.startswith(f"{fhir}, line 2")
    assert json.loads(runner.invoke(app, ["quarantine", "check", "--json"]).stdout)["held"] == 0


def test_a_corrected_copy_before_its_original_in_one_file_does_not_supersede_it(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    """Only a copy stored after the held one replaces it: the same rule as across files."""
    fhir = write_ndjson(tmp_path / "gp.ndjson", [_identified("9434765919", "2026-11-01T10:00:00Z"),
                                                 _identified("1234567890", "2026-11-01T09:00:00Z")])
    assert Pipeline(env, framework).ingest_paths([fhir]).quarantined == 1
    assert [i.status for i in _items(env)] == ["held"]


def test_items_held_before_message_keys_are_superseded_once_migrated(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    """An item held by a release before 0021 has no key; migrated, it is superseded by its source's next
    corrected copy like any other (HL7 v2, a FHIR Bundle, a CSV row)."""
    pipeline = Pipeline(env, framework)
    hl7 = tmp_path / "adt-1.hl7"
    hl7.write_bytes(_a01(BAD_DOB))
    first = [hl7, write_ndjson(tmp_path / "1.ndjson", [_identified("1234567890", "2026-11-01T09:00:00Z")]),
             _extract(_lrc(tmp_path, "mosaic-0001.csv"), [_row(sex="Mle")])]
    assert pipeline.ingest_paths(first).quarantined == 3
    with env.session() as s:  # as a release before 0021 held them
        s.execute(update(Quarantine).values(message_key=None))
    downgrade_store(env, "0021")
    env.migrate()
    assert all(i.message_key for i in _items(env))

    fixed = tmp_path / "adt-2.hl7"
    fixed.write_bytes(_a01(GOOD_DOB))
    again = pipeline.ingest_paths([fixed, write_ndjson(tmp_path / "2.ndjson", [
        _identified("9434765919", "2026-11-01T10:00:00Z")]), _extract(_lrc(tmp_path, "mosaic-0002.csv"), [
            _row(last_updated="2026-10-18T09:00:00Z")])])
    assert (again.quarantined, again.accepted > 0) == (0, True)
    assert [i.status for i in _items(env)] == ["superseded"] * 3


def test_superseding_is_an_audit_event_naming_the_item_the_stored_message_and_when(
        env: Database, framework: Framework) -> None:
    """An IG officer or feed engineer reading the audit sees that a held message was superseded, by which
    stored message, when, and for which sender, without the message's content."""
    listener = MllpServer(Pipeline(env, framework))
    listener.handle(_a01(BAD_DOB), "127.0.0.1:5000")
    listener.handle(_a01(GOOD_DOB), "127.0.0.1:5000")
    (item,) = _items(env)
    found = runner.invoke(app, ["audit", "search", "--org", "RXR", "--json"])
    assert found.exit_code == 0, found.output
    (event,) = [e for e in json.loads(found.stdout) if e["action"] == "governance:quarantine:superseded"]
    assert (event["user"], event["organisation"], event["outcome"]) == ("RXR:pas", "RXR", "permit")
    assert event["quarantine item"] == str(item.id)
    assert event["superseded by"] == item.superseded_by
    assert event["held since"] == item.received_at.isoformat()
    assert abs(datetime.fromisoformat(event["recorded"]) - item.superseded_at) < timedelta(seconds=5)
    assert BAD_DOB not in found.stdout and GOOD_DOB not in found.stdout  # references, never content
    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output


def test_a_superseded_items_audit_event_names_a_long_sending_application_cut(
        env: Database, framework: Framework) -> None:
    """Network review of 2026-12-07 (MEDIUM): the event naming a superseded item's key (MSH-3 and MSH-10) kept MSH-3
    whole, which the sender fills: 300,000 characters in an entry that can never be deleted. It is cut,
    saying so."""
    listener = MllpServer(Pipeline(env, framework))
    long_app = "PAS^" + "X" * 300_000
    listener.handle(_a01(BAD_DOB, app_name=long_app), "127.0.0.1:5000")
    listener.handle(_a01(GOOD_DOB, app_name=long_app), "127.0.0.1:5000")
    assert [i.status for i in _items(env)] == ["superseded"]
    with env.session() as s:
        events = [json.dumps(e.event) for e in s.scalars(select(AuditEntry))]
    (superseded,) = [e for e in events if "governance:quarantine:superseded" in e]
    assert "MSH-3 PAS^XXXX" in superseded and "... sha256:" in superseded  # the key, its start and its digest
    assert max(len(e) for e in events) < 5_000
