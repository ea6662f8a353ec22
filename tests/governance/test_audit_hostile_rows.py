"""What someone who may write to the audit tables, but holds no audit key, can do to the log after a key rotation
(review of the rekey and the tree mark, 2026-12-07): a row of any shape, a forged entry after a rekey, a mark
not of the service's making, an append racing the rekey. Each is found or refused; none stops the service."""
from __future__ import annotations

import hashlib
import html
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import insert, select, update
from tests.conftest import DEPLOYMENT_KEYS
from tests.governance.test_audit import (
    NEW_KEY,
    NEW_SECRET,
    OLD_KEY,
    _forged_after_head,
    _plain,
    _store,
    _write,
    rotated,
)
from tests.governance.test_checkpoints import SECRET
from tests.portal.test_ig_workspace import UNVERIFIED_TAG
from tests.portal.test_ig_workspace import _sign_in as ig_sign_in
from tests.portal.test_patient_portal import _sign_in as patient_sign_in
from tests.portal.test_patient_portal import visit_rows
from tests.small_ics import Ics
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.governance import audit
from sharedcare.governance.access_log import MINTED_WORDS, UNVERIFIED_WORDS, details
from sharedcare.governance.audit import CHAIN_KEYED, _canonical, verify
from sharedcare.governance.checkpoints import Transparency
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, AuditHead, AuditTreeMark


def _insert_marker(db: Database, event: Any, **columns: str | None) -> int:
    """An `audit:chain:keyed` row (or of the `columns` given) as the application's role may INSERT one: it
    follows the head, with a plain hash."""
    with db.engine.begin() as conn:
        seq, prev_hash = conn.execute(select(AuditHead.seq, AuditHead.hash)).one()
        now = datetime.now(UTC)
        row = {"seq": seq + 1, "recorded_at": now, "action": CHAIN_KEYED, "outcome": "permit", "username": None,
               "organisation": None, "patient_id": None, "event": event, **columns}
        row["hash"] = _plain(prev_hash.encode() + _canonical({**row, "recorded_at": now.isoformat()}))
        conn.execute(insert(AuditEntry).values(prev_hash=prev_hash, **row))
    return int(seq + 1)


@pytest.mark.parametrize("event", [
    pytest.param({"entity": [{"name": "decision", "detail": [{"type": "next-key-proof",
                                                              "valueString": "\u00e9" * 64}]}]}, id="non-ascii proof"),
    pytest.param(["not", "an", "object"], id="event not an object")])
def test_a_forged_marker_of_any_shape_stops_no_append_and_verify_names_it(db: Database, event: Any) -> None:
    _write(db, 2)
    forged = _insert_marker(db, event)
    (written,) = _write(db, 1)  # it was TypeError / AttributeError from every append, verify, key_problem
    with db.session() as session:
        result = verify(session)
    assert written == forged + 1 and not result.ok and result.broken_seq == forged


def _append_during_rekey(db: Database) -> list[object]:
    """A service holding the old key (epochs already read) appends while `audit rekey` holds the head."""
    _write(db, 1)
    appender, rekeying = _store(db, OLD_KEY), _store(db, OLD_KEY)
    _write(appender, 1)
    outcome: list[object] = []

    def append() -> None:
        try:
            outcome.append(_write(appender, 1))
        except Exception as exc:  # noqa: BLE001
            outcome.append(exc)

    with rekeying.session() as session:
        audit.rekey(session, NEW_KEY, "a scheduled rotation")
        writer = threading.Thread(target=append)
        writer.start()
        time.sleep(1.5)  # the append waits on the head row this transaction holds
    writer.join(30)
    appender.dispose()
    rekeying.dispose()
    return outcome


def test_an_append_racing_a_rekey_is_refused_not_written_under_the_retired_key(db: Database) -> None:
    outcome = _append_during_rekey(db)
    restarted = _store(db, NEW_KEY, (OLD_KEY,))
    with restarted.session() as session:
        result, problem = verify(session), audit.key_problem(session)
    restarted.dispose()
    assert isinstance(outcome[0], audit.AuditKeyProblem), outcome  # on PostgreSQL it was written under the old key
    assert result.ok and problem is None, (result.problem, problem)


def test_one_forged_entry_after_a_rekey_does_not_lock_the_new_key_out(db: Database) -> None:
    _write(db, 2)
    with rotated(db) as (restarted, _):
        _forged_after_head(restarted, _plain)  # all writers are stopped until restarted with the new key
        with restarted.session() as session:
            assert audit.key_problem(session) is None  # it was "newest 1 entries ... not written with this key"


@pytest.mark.parametrize("mac", ["\u00e9" * 32, "0" * 63 + "\u00e9"])
def test_a_mark_whose_mac_is_no_hex_is_only_not_trusted_and_checkpoints_go_on(db: Database, mac: str) -> None:
    (*_, last) = _write(db, 3)
    Transparency(db, SECRET).checkpoint()
    with db.session() as s:
        s.execute(update(AuditTreeMark).values(mac=mac))
    assert Transparency(db, SECRET).checkpoint().seq == last  # it was a TypeError on every request after a restart


PLANTED = "planted by whoever wrote the row"
# Rows whose event is not of the AuditEvent shape the service writes (the review of 2026-12-07: each made the
# citizen's list, the IG officer's audit page and `audit export` fail, for good), and one of that shape whose
# details say what the forger wants shown.
HOSTILE_EVENTS = [
    pytest.param(["not", "an", "object"], id="a list"),
    pytest.param({"entity": [{"name": "decision", "detail": [{"valueString": PLANTED}]}]}, id="a detail without type"),
    pytest.param({"entity": "x", "agent": "y"}, id="entities not a list"),
    pytest.param({"entity": [1, {"role": {"code": "4"}, "what": 2}], "agent": [{"type": {"coding": 3}}]},
                 id="entities not objects"),
    pytest.param(audit.to_audit_event(audit.AuditRecord(
        audit.AuditAction.RECORD_READ, "permit", "dr.patel", basis="explicit-consent", reason=PLANTED,
        minted_by="ops", token_id="t1", resource="Condition/planted"), datetime.now(UTC)), id="well shaped, lying"),
]


@pytest.mark.parametrize("event", HOSTILE_EVENTS)
def test_a_row_of_any_shape_is_shown_in_every_view_as_not_verified_and_from_its_columns_alone(
        ics: Ics, event: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Someone who may INSERT (the application's role) appends a read of Mr Okafor's record whose event is
    anything: his "who has looked", the IG officer's audit page and search by him, and `audit export` and
    `audit search` still answer, each showing the row marked not verified, with nothing of its event."""
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    forged = _insert_marker(ics.database, event, action=audit.AuditAction.RECORD_READ.value, username="dr.patel",
                            organisation="P81001", patient_id=ics.okafor)
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    patient_sign_in(ics.client)
    mine = ics.client.get("/patient/accesses")
    assert mine.status_code == 200 and PLANTED not in mine.text  # it was 500
    [shown] = [row for row in visit_rows(mine.text) if "Dr Amara Patel" in row]
    assert "Could not be verified" in shown and UNVERIFIED_WORDS in shown and "viewed your record" in shown
    assert MINTED_WORDS not in shown and "explicit consent" not in shown
    ics.client.cookies.clear()
    ig_sign_in(ics)
    recent, by_him = ics.client.get("/ig/audit"), ics.client.post("/ig/audit", data={"patient": ics.okafor})
    for page in (recent, by_him):
        assert page.status_code == 200 and page.text.count(UNVERIFIED_TAG) == 1 and PLANTED not in page.text
        assert "Opened the record" in page.text and "minted by" not in page.text
    monkeypatch.setenv("SHAREDCARE_DB", ics.database.url.render_as_string(hide_password=False))
    out = tmp_path / "audit.ndjson"
    exported = CliRunner().invoke(app, ["audit", "export", "--out", str(out)])
    assert exported.exit_code == 0, exported.output  # it was a traceback
    assert f"1 of them could not be verified (entries {forged})" in " ".join(exported.stderr.split())
    [line] = [json.loads(text) for text in out.read_text().splitlines() if json.loads(text)["id"] == str(forged)]
    assert PLANTED not in json.dumps(line) and {"url": "verified", "valueBoolean": False} in line["extension"][0][
        "extension"]
    assert [e["what"]["reference"] for e in line["entity"]] == [f"Patient/{ics.okafor}"]  # its columns' patient
    AuditEvent.model_validate(line)
    searched = CliRunner().invoke(app, ["audit", "search", "--patient", ics.okafor, "--json"])
    assert searched.exit_code == 0 and {"seq": forged, "verified": "no"}.items() <= next(
        row for row in json.loads(searched.stdout) if row["seq"] == forged).items()
    table = CliRunner().invoke(app, ["audit", "search", "--patient", ics.okafor], env={"COLUMNS": "400"}).stdout
    assert PLANTED not in searched.stdout + table and "COULD NOT BE VERIFIED" in table


def _forge(db: Database, n: int) -> tuple[int, int]:
    """Append `n` rows that follow the head, as the application's role may, hashed by no key at all (the review's
    `pg_forge_100.sql`); the first and last of them."""
    with db.engine.begin() as conn:
        for _ in range(n):
            seq, prev_hash = conn.execute(select(AuditHead.seq, AuditHead.hash)).one()
            conn.execute(insert(AuditEntry).values(
                seq=seq + 1, recorded_at=datetime.now(UTC), action="auth:token:refused", outcome="deny", event={},
                prev_hash=prev_hash, hash=hashlib.sha256(f"{seq}".encode()).hexdigest()))
    return seq + 2 - n, seq + 1


def test_rows_forged_at_the_end_stop_no_process_and_the_span_is_named(db: Database) -> None:
    """More rows forged at the end than a process checks at a time (it was 100: every process then refused to
    start, blaming its key): the newest entry its key wrote is searched back for, and the rows after it named."""
    _write(db, 3)
    first, last = _forge(db, audit.KEY_CHECKED + 5)
    with db.session() as session:
        assert audit.key_problem(session) is None  # it was "the audit log's newest 100 entries ... were not written"
        found = audit.check_key(session)
    assert found.unverified == (first, last)
    assert f"entries {first}-{last} ({last - first + 1} entries) at the end of the audit log do not verify" in (
        found.warning or "")
    _write(db, 1)
    with db.session() as session:
        assert audit.check_key(session) == audit.KeyCheck()  # the newest verifies again: nothing more to say


def test_rows_forged_at_the_end_of_a_log_never_written_with_this_key_still_name_the_key(db: Database) -> None:
    """A process whose key wrote none of the log's entries (the newest, and the oldest, checked) is still refused,
    with rows forged at the end or not: its entries would fail `verify` for good."""
    _write(db, 3)
    _forge(db, audit.KEY_CHECKED + 5)
    other = _store(db, NEW_KEY)
    with other.session() as session:
        problem = audit.key_problem(session)
    other.dispose()
    assert "were not written with this process's audit key" in (problem or "")


def test_after_rows_forged_at_the_end_a_command_starts_warns_and_the_ig_officer_sees_it(
        ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command (and `serve`) refused to start after 100 forged rows: the record went unavailable at the next
    restart. Now the first to start says which entries do not verify, on the console and in an entry of the log
    the IG officer's audit page shows, and goes on; the rows stay where they are, for `audit verify`."""
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    first, last = _forge(ics.database, audit.KEY_CHECKED + 5)
    monkeypatch.setenv("SHAREDCARE_DB", ics.database.url.render_as_string(hide_password=False))
    shown = CliRunner().invoke(app, ["audit", "review", "--json"])
    said = " ".join(shown.stderr.split())
    assert shown.exit_code == 0, said  # it was 2, "newest 100 entries ... not written with this process's key"
    assert f"the audit log may have been tampered with: entries {first}-{last} (105 entries) at the end" in said
    with ics.database.session() as session:
        [warned] = session.scalars(select(AuditEntry).where(
            AuditEntry.action == audit.AuditAction.UNVERIFIED_END.value)).all()
    assert warned.seq == last + 1 and details(warned)["first_unverified"] == str(first)
    again = CliRunner().invoke(app, ["audit", "review", "--json"])
    assert again.exit_code == 0 and "tampered" not in again.stderr  # said once: the newest entry verifies again
    ig_sign_in(ics)
    page = ics.client.get("/ig/audit").text
    assert "The service started and found entries at the end of the audit log that it cannot verify" in page
    assert f"entries {first}-{last} (105 entries) at the end of the audit log do not verify" in html.unescape(page)


def test_audit_rekey_is_not_refused_for_rows_forged_at_the_end(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The way out of a leaked key was refused too: `audit rekey` checks its key as every command does."""
    _write(db, 2)
    _forge(db, audit.KEY_CHECKED + 5)
    for name, value in {**DEPLOYMENT_KEYS, "SHAREDCARE_AUDIT_KEY_NEW": NEW_SECRET,
                        "SHAREDCARE_DB": db.url.render_as_string(hide_password=False)}.items():
        monkeypatch.setenv(name, value)
    rekeyed = CliRunner().invoke(app, ["audit", "rekey"])
    assert rekeyed.exit_code == 0 and "the audit log is rekeyed" in rekeyed.stderr, rekeyed.stderr
