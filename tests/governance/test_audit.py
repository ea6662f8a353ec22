"""The audit log: every decision leaves an event, and tampering with the chain is found."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, event, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from tests.builders import downgrade_store
from tests.conftest import AUDIT_KEY as TEST_AUDIT_KEY
from tests.small_ics import Ics

from sharedcare.api import fhir
from sharedcare.config import Settings, chain_key_of
from sharedcare.governance import audit
from sharedcare.governance.audit import AuditAction, AuditRecord, _canonical, record_audit, verify
from sharedcare.store.database import AUDIT_KEY, Database
from sharedcare.store.models import AuditEntry, AuditHead


def as_an_attacker_with_ddl_rights(db: Database) -> None:
    """Drop the append-only triggers and the head's guard, as someone with the database owner's rights could."""
    with db.engine.begin() as conn:
        if db.backend == "postgresql":
            conn.execute(text("DROP TRIGGER audit_events_no_change ON audit_events"))
            conn.execute(text("DROP TRIGGER audit_head_guard ON audit_head"))
        else:
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
            conn.execute(text("DROP TRIGGER audit_events_no_delete"))
            conn.execute(text("DROP TRIGGER audit_head_guard"))


# what a test wrote, not the entry a new store's log begins with (migration 0024's, where the key starts)
WRITTEN = AuditEntry.action != AuditAction.CHAIN_KEYED


def _write(db: Database, n: int) -> list[int]:
    """Append `n` reads; their sequence numbers (a new store's log begins with migration 0024's entry)."""
    with db.session() as session:
        return [record_audit(session, AuditRecord(AuditAction.RECORD_READ, "permit", username=f"user{i}", role="gp",
                                                  organisation="P81001", purpose="direct-care", patient_id=f"p{i}",
                                                  released=[f"Condition/{i}"]))
                for i in range(n)]


def test_an_untouched_chain_verifies(db: Database) -> None:
    seqs = _write(db, 5)
    with db.session() as session:
        result = verify(session)
    assert result.ok and result.checked == seqs[-1]


def test_an_edited_entry_is_found(db: Database) -> None:
    _write(db, 5)
    as_an_attacker_with_ddl_rights(db)
    with db.session() as session:
        entry = session.get_one(AuditEntry, 3)
        event = dict(entry.event)
        event["outcome"] = "4"
        session.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(event=event))
    with db.session() as session:
        result = verify(session)
    assert not result.ok and result.broken_seq == 3 and "edited" in (result.problem or "")


def test_a_removed_entry_is_found(db: Database) -> None:
    _write(db, 5)
    as_an_attacker_with_ddl_rights(db)
    with db.session() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.seq == 2))
    with db.session() as session:
        result = verify(session)
    assert not result.ok and result.broken_seq == 2


def test_a_removed_last_entry_is_found(db: Database) -> None:
    _write(db, 5)
    as_an_attacker_with_ddl_rights(db)
    with db.session() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.seq == 5))
    with db.session() as session:
        result = verify(session)
    assert not result.ok and result.broken_seq == 5


def test_reordered_entries_are_found(db: Database) -> None:
    _write(db, 4)
    as_an_attacker_with_ddl_rights(db)
    with db.session() as session:
        second, third = session.get_one(AuditEntry, 2), session.get_one(AuditEntry, 3)
        a, b = dict(second.event), dict(third.event)
        session.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(event=b))
        session.execute(update(AuditEntry).where(AuditEntry.seq == 3).values(event=a))
    with db.session() as session:
        result = verify(session)
    assert not result.ok and result.broken_seq == 2


@pytest.mark.parametrize("statement", ["UPDATE audit_events SET outcome = 'deny'", "DELETE FROM audit_events"])
def test_the_database_refuses_to_change_or_delete_audit_entries(db: Database, statement: str) -> None:
    _write(db, 2)
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as conn:
        conn.execute(text(statement))
    with db.session() as session:
        assert verify(session).ok


def test_the_database_refuses_to_empty_the_log_or_its_head(db: Database) -> None:
    """The application's own role (no trigger dropped) cannot empty the log or its head at once: TRUNCATE
    on PostgreSQL, which fires no row trigger; a DELETE of every row (SQLite's truncate) on SQLite."""
    seqs = _write(db, 3)
    statements = (["TRUNCATE audit_events", "TRUNCATE audit_head", "TRUNCATE audit_events, audit_head"]
                  if db.backend == "postgresql" else ["DELETE FROM audit_events", "DELETE FROM audit_head"])
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only|only by appending"), db.engine.begin() as conn:
            conn.execute(text(statement))
    with db.session() as session:
        result = verify(session)
    assert result.ok and result.checked == seqs[-1]


HEAD_MOVES = [
    "UPDATE audit_head SET seq = 0, hash = '" + "0" * 64 + "'",  # back to the start, as if the log were empty
    "UPDATE audit_head SET seq = seq - 1",  # one back, to hide the last entry
    "UPDATE audit_head SET hash = '" + "f" * 64 + "'",
    "UPDATE audit_head SET seq = seq + 1",  # a step forward that no entry made
    "UPDATE audit_head SET newest_mark = NULL",  # a rekey hidden from appends holding the retired key
    "DELETE FROM audit_head",
]


@pytest.mark.parametrize("statement", HEAD_MOVES)
def test_the_database_refuses_to_move_the_head_except_by_appending(db: Database, statement: str) -> None:
    seqs = _write(db, 3)
    with pytest.raises(DBAPIError, match="only by appending"), db.engine.begin() as conn:
        conn.execute(text(statement))
    (last,) = _write(db, 1)  # appending still moves it
    with db.session() as session:
        result = verify(session)
        assert session.get_one(AuditHead, 1).seq == last == seqs[-1] + 1
    assert result.ok and result.checked == last


def test_the_tail_of_the_log_cannot_be_cut_and_the_prefix_put_back(db: Database) -> None:
    """What the third security review did with the application's own role: keep entries 1-2, empty the
    log, set the head back and re-insert them, so that the chain verified with 3-5 gone. The steps that
    lose entries and move the head back are refused; the log keeps all five."""
    seqs = _write(db, 5)
    empty = "TRUNCATE audit_events" if db.backend == "postgresql" else "DELETE FROM audit_events WHERE seq > 2"
    for step in (empty, HEAD_MOVES[0]):
        with pytest.raises(DBAPIError), db.engine.begin() as conn:
            conn.execute(text(step))
    with db.session() as session:
        result = verify(session)
    assert result.ok and result.checked == seqs[-1]


def test_audit_events_are_fhir_audit_events_holding_references_not_content(db: Database) -> None:
    _write(db, 1)
    with db.session() as session:
        event = session.scalars(select(AuditEntry.event).where(WRITTEN)).one()
    from fhir.resources.R4B.auditevent import AuditEvent

    AuditEvent.model_validate(event)
    assert event["entity"][0]["what"]["reference"] == "Patient/p0"
    assert event["agent"][0]["who"]["identifier"]["value"] == "user0"


def test_control_characters_cannot_forge_log_lines(db: Database) -> None:
    with db.session() as session:
        record_audit(session, AuditRecord(AuditAction.BASIS_RECORD, "permit", username="dr.patel",
                                          reason="ok\nFAKE ENTRY: admin read everything"))
    with db.session() as session:
        event = session.scalars(select(AuditEntry.event).where(WRITTEN)).one()
    details = {d["type"]: d["valueString"] for d in event["entity"][-1]["detail"]}
    assert "\n" not in details["reason"] and "\\x0a" in details["reason"]


def test_a_typed_name_or_id_with_a_nul_is_audited_not_lost(db: Database) -> None:
    """A sign-in name or a patient id from a URL is what someone typed; PostgreSQL refuses NUL in text."""
    with db.session() as session:
        record_audit(session, AuditRecord(AuditAction.LOGIN, "deny", username="dr.\x00patel", patient_id="p\x001"))
    with db.session() as session:
        entry = session.scalars(select(AuditEntry).where(WRITTEN)).one()
        assert (entry.username, entry.patient_id) == ("dr.\\x00patel", "p\\x001")
        assert verify(session).ok


def test_many_writers_keep_one_linear_chain(db: Database) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: _write(db, 5), range(4)))
    with db.session() as session:
        result = verify(session)
        assert session.scalar(select(func.count()).where(WRITTEN)) == 20
    assert result.ok


def test_while_a_long_transaction_is_open_each_append_leaves_one_old_version_of_the_head(db: Database) -> None:
    """Appends slowed as a long transaction (an export, `audit verify`) stayed open: PostgreSQL cannot prune the
    head's old row versions any transaction may still see, and every append's read of the head walks them all.
    The lock that read it was an UPDATE of its own, leaving a version behind as the chain's step does: two an
    append, where one (the step's) is all the chain needs."""
    if db.backend == "sqlite":
        pytest.skip("SQLite keeps no old row versions: PostgreSQL's")
    with db.engine.connect() as long_transaction:
        long_transaction.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
        long_transaction.exec_driver_sql("SELECT count(*) FROM audit_events").scalar()
        with db.session() as session:
            for i in range(50):
                record_audit(session, AuditRecord(AuditAction.RECORD_READ, "permit", username="gp", role="gp",
                                                  organisation="P81001", purpose="direct-care", patient_id=f"p{i}"))
            versions = session.execute(text("SELECT pg_stat_get_xact_tuples_updated('audit_head'::regclass)"))
            assert versions.scalar_one() == 50
        head = long_transaction.execute(text("SELECT seq FROM audit_head")).scalar_one()  # its snapshot's head
    with db.session() as session:
        assert session.get(AuditHead, 1).seq == head + 50  # type: ignore[union-attr]
        assert verify(session).ok


def test_the_database_refuses_an_entry_that_does_not_follow_the_head(db: Database) -> None:
    """A trigger advances the head with each entry and refuses one that skips, repeats or forks the chain."""
    seqs = _write(db, 2)
    with db.session() as session:
        last = session.get_one(AuditEntry, seqs[-1])
        row = {"recorded_at": last.recorded_at, "action": last.action, "outcome": "permit", "username": "x",
               "organisation": None, "patient_id": None, "event": last.event, "hash": "f" * 64}
    # PostgreSQL checks the chain once the entry is in (migration 0034): a repeated seq is a duplicate key first
    repeated = "must follow the head" if db.backend == "sqlite" else 'duplicate key .* "audit_events_pkey"'
    for seq, prev_hash, refused in ((last.seq + 2, last.hash, "must follow the head"),
                                    (last.seq + 1, "0" * 64, "must follow the head"),
                                    (last.seq, last.prev_hash, repeated)):
        with pytest.raises(DBAPIError, match=refused), db.engine.begin() as conn:
            conn.execute(insert(AuditEntry).values(seq=seq, prev_hash=prev_hash, **row))
    (appended,) = _write(db, 1)
    with db.session() as session:
        result = verify(session)
        assert result.ok and result.checked == appended == last.seq + 1
        assert session.get_one(AuditHead, 1).seq == appended


@settings(deadline=None, max_examples=40,  # a shared, busy machine; the store is reused across examples
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(username=st.one_of(st.none(), st.text(max_size=12), st.just('x","username":"y')),
       detail=st.dictionaries(st.sampled_from(["username", "seq", "z"]), st.text(min_size=1, max_size=8), max_size=3))
def test_the_database_hashes_each_entry_as_verify_does(db: Database, username: str | None,
                                                       detail: dict[str, str]) -> None:
    """A name holding quotes or the very key `"username"`, or non-ASCII text, chains as `verify` hashes it."""
    with db.session() as session:
        record_audit(session, AuditRecord(AuditAction.RECORD_READ, "permit", username=username, detail=detail,
                                          patient_id="p1", released=["Condition/1"]))
    with db.session() as session:
        assert verify(session).ok


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a shared, busy machine
@given(fields=st.dictionaries(st.sampled_from(["action", "username", "patient_id", "reason", "é", "z"]),
                              st.one_of(st.text(), st.integers(-(2**63), 2**63 - 1), st.none()), max_size=6))
def test_entries_are_hashed_over_the_standard_librarys_canonical_json(fields: dict[str, object]) -> None:
    """The faster encoder hashes exactly the bytes the standard library did, so older chains still verify."""
    expected = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert _canonical(fields) == expected


@pytest.mark.parametrize("path", ["/fhir/Patient/{}/$everything", "/fhir/Patient/{}"])
def test_a_reads_audit_entry_is_committed_before_its_answer_is_built_and_no_lock_is_held_meanwhile(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """TRUST AU4 (the entry is durable before any data leaves), and other readers' appends do not wait
    while a large answer is built: seen from another connection while the answer is being built."""
    headers = ics.open_record("dr.patel")
    with db.session() as session:
        before = session.scalar(select(func.max(AuditEntry.seq)))
    seen: list[tuple[int, str]] = []

    def from_another_connection() -> None:
        if db.backend == "sqlite":  # a writer of its own, refused at once (no busy wait) if one is active
            assert db.url.database is not None
            other = sqlite3.connect(db.url.database, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                (last,) = other.execute("SELECT max(seq) FROM audit_events").fetchone()
                other.execute("ROLLBACK")
            finally:
                other.close()
        else:
            with db.engine.connect() as conn:  # refused at once if the head row is locked
                last = conn.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE NOWAIT")).scalar_one()
                conn.rollback()
        seen.append((last, "answer being built"))

    def watched(original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            from_another_connection()
            return original(*args, **kwargs)
        return call

    monkeypatch.setattr(fhir, "_encoded_bundle", watched(fhir._encoded_bundle))
    monkeypatch.setattr(fhir, "fhir_response", watched(fhir.fhir_response))
    response = ics.client.get(path.format(ics.okafor), headers=headers)
    assert response.status_code == 200
    assert seen == [(before + 1, "answer being built")]  # this read's entry, committed; the lock free


def test_an_entry_that_waited_for_the_chain_is_timed_after_the_entry_before_it(db: Database) -> None:
    """An IG officer reads the times as times: an append that waits for another writer's turn on the chain
    takes its time once it has the turn, so times never go backwards along the chain."""
    import threading
    import time

    def append(who: str) -> None:
        with db.session() as session:
            record_audit(session, AuditRecord(AuditAction.RECORD_READ, "permit", username=who, patient_id="p1"))

    with db.session() as holder:
        holder.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq))  # the chain's turn
        waiting = threading.Thread(target=append, args=("waited",))
        waiting.start()
        time.sleep(0.3)  # the other append has begun and waits for the turn
        record_audit(holder, AuditRecord(AuditAction.RECORD_READ, "permit", username="held", patient_id="p1"))
    waiting.join(10)
    with db.session() as session:
        entries = session.execute(select(AuditEntry.username, AuditEntry.recorded_at).where(WRITTEN)
                                  .order_by(AuditEntry.seq)).all()
        assert verify(session).ok
    assert [e.username for e in entries] == ["held", "waited"]
    assert entries[0].recorded_at <= entries[1].recorded_at


def test_verify_passes_while_another_writer_appends_between_its_reads(db: Database) -> None:
    """On PostgreSQL each statement sees what was committed before it: an entry appended after the chain
    was read, counted by the head read next, was reported as a broken log (a false tamper alarm)."""
    seqs = _write(db, 3)
    reads: list[str] = []

    def append_before_the_second_read(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "audit_" in statement and len(reads) < 2:
            reads.append(statement)
            if len(reads) == 2:
                _write(db, 1)

    event.listen(db.engine, "before_cursor_execute", append_before_the_second_read)
    try:
        with db.session() as session:
            result = verify(session)
    finally:
        event.remove(db.engine, "before_cursor_execute", append_before_the_second_read)
    assert len(reads) == 2 and result.ok, result.problem
    with db.session() as session:
        assert verify(session).checked == seqs[-1] + 1


@pytest.mark.parametrize("typed", ["\x01x" * 25, "\x00" * 30, "\U000e0001" * 40])
def test_a_refused_sign_in_with_a_long_name_of_control_characters_is_audited(db: Database, typed: str) -> None:
    """Cleaning makes a control character four characters: cut before it, a 50-character name became 125
    and PostgreSQL refused the entry, so the refusal was not on record (TRUST AU3)."""
    audit.record_sign_in(db, typed, False, None, None, "req-1", "203.0.113.9")
    with db.session() as session:
        entry = session.scalars(select(AuditEntry).where(WRITTEN)).one()
        assert entry.outcome == "deny" and len(entry.username or "") == 100
        assert entry.event["agent"][0]["who"]["identifier"]["value"] == entry.username
        assert verify(session).ok


def test_a_control_character_and_its_escape_typed_are_stored_apart(db: Database) -> None:
    """A backslash is escaped too, and every escape of a range has one width: no two names are stored and
    hashed alike, so one cannot stand for another in the log."""
    typed = ["a\x01", "a\\x01", "\u2028", "\\x2028", "\x85", "\U000e0001"]
    with db.session() as session:
        for name in typed:
            record_audit(session, AuditRecord(AuditAction.LOGIN, "deny", username=name))
    with db.session() as session:
        stored = session.scalars(select(AuditEntry.username).where(WRITTEN).order_by(AuditEntry.seq)).all()
        events = session.scalars(select(AuditEntry.event).where(WRITTEN).order_by(AuditEntry.seq)).all()
    assert stored == ["a\\x01", "a\\\\x01", "\\u2028", "\\\\x2028", "\\x85", "\\U000e0001"]
    assert [e["agent"][0]["who"]["identifier"]["value"] for e in events] == stored  # cleaned once, not twice


def test_entries_written_with_the_earlier_cleaning_still_verify(db: Database,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`verify` hashes the fields as stored, never cleaning them again: a log written before the backslash
    was escaped verifies as it did, and goes on with entries cleaned the new way."""
    with monkeypatch.context() as earlier:
        earlier.setattr(audit, "_clean", lambda text: text if text is None or text.isprintable() else "".join(
            ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text))
        with db.session() as session:
            record_audit(session, AuditRecord(AuditAction.LOGIN, "deny", username="a\\b\x01\u2028"))
    with db.session() as session:
        record_audit(session, AuditRecord(AuditAction.LOGIN, "deny", username="a\\b\x01\u2028"))
    with db.session() as session:
        assert session.scalars(select(AuditEntry.username).where(WRITTEN).order_by(AuditEntry.seq)).all() == [
            "a\\b\\x01\\x2028", "a\\\\b\\x01\\u2028"]
        result = verify(session)
    assert result.ok and result.checked == session.get_one(AuditHead, 1).seq


def _plain(message: bytes) -> str:
    """The hash a forger without the chain's key can write: a plain SHA-256."""
    return hashlib.sha256(message).hexdigest()


FORGED_READ = AuditRecord(AuditAction.RECORD_READ, "permit", username="dr.patel", role="gp", organisation="P81001",
                          purpose="direct-care", patient_id="p-forged")


def _forged_after_head(db: Database, digest: Callable[[bytes], str], record: AuditRecord = FORGED_READ) -> int:
    """Append, as the application's own database role may (no trigger dropped), an entry that follows the head,
    naming `record` (by default a read of a patient's record that never happened), hashed by `digest` of what
    the chain hashes."""
    from datetime import UTC, datetime

    with db.engine.begin() as conn:
        seq, prev_hash = conn.execute(select(AuditHead.seq, AuditHead.hash)).one()
        recorded = datetime.now(UTC)
        row: dict[str, Any] = {"seq": seq + 1, "recorded_at": recorded, "action": record.action.value,
                               "outcome": record.outcome, "username": record.username,
                               "organisation": record.organisation, "patient_id": record.patient_id,
                               "event": audit.to_audit_event(record, recorded)}
        hashed = {**row, "recorded_at": recorded.isoformat()}
        row["hash"] = digest(prev_hash.encode() + _canonical(hashed))
        conn.execute(insert(AuditEntry).values(prev_hash=prev_hash, **row))
    return int(seq + 1)


@pytest.mark.parametrize("digest", [
    pytest.param(lambda message: hashlib.sha256(message).hexdigest(), id="a plain hash, as the chain was"),
    pytest.param(lambda message: hmac.digest(Settings("", Path(), Path(), "another deployment's secret",
                                                      False).audit_chain_key, message, "sha256").hex(),
                 id="another deployment's key"),
])
def test_an_entry_appended_by_someone_without_the_key_is_found_as_forged(db: Database,
                                                                        digest: Callable[[bytes], str]) -> None:
    """The audit review of 2026-12-07: the application's role may INSERT, and an entry that follows the head
    passes the triggers; with a plain hash it passed `verify` too, and the next checkpoint vouched for it. A
    false read of a patient's record is now named, and so is its place in the log."""
    seqs = _write(db, 2)
    forged = _forged_after_head(db, digest)
    with db.session() as session:
        result = verify(session)
    assert forged == seqs[-1] + 1
    assert not result.ok and result.broken_seq == forged and result.checked == seqs[-1]
    assert "without the chain's key" in (result.problem or "")


def _append_unkeyed(session: Session, record: AuditRecord) -> int:
    """An append as the code before migration 0024 made it, on its schema (the head has no marker column)."""
    seq, prev_hash = session.execute(text("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")).one()
    return audit.append_after(session, record, seq, prev_hash)


def test_a_log_written_before_the_chain_had_a_key_verifies_and_goes_on_keyed(db: Database) -> None:
    """A store upgraded with entries in it: those keep their plain hashes and verify as before, the upgrade
    marks where the key starts, and an unkeyed entry after it is refused however it is dressed."""
    cfg = db.alembic_config()
    with db.engine.begin() as conn:  # a store as the code before the key left it
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
        command.upgrade(cfg, "0023")
    with db.engine.begin() as conn, Session(bind=conn, info={AUDIT_KEY: None}) as old:  # the code before the key
        before = [_append_unkeyed(old, AuditRecord(AuditAction.RECORD_READ, "permit", username=f"user{i}",
                                                   patient_id=f"p{i}")) for i in range(3)]
    db.migrate()
    after = _write(db, 2)
    with db.session() as session:
        result = verify(session)
        marks = session.scalars(select(AuditEntry.seq).where(AuditEntry.action == AuditAction.CHAIN_KEYED)).all()
    assert result.ok and result.checked == after[-1] == before[-1] + 3
    assert result.unkeyed_through == before[-1] + 1 == marks[-1]  # the upgrade's own entry
    _forged_after_head(db, lambda message: hashlib.sha256(message).hexdigest())
    with db.session() as session:
        assert verify(session).broken_seq == after[-1] + 1


def test_an_unkeyed_mark_appended_later_does_not_move_where_the_key_starts(db: Database) -> None:
    """Someone who may INSERT appends a second 'chain keyed' entry, hoping everything before it is checked
    by plain hash: the first mark is where the key starts, and the forged mark is itself refused."""
    seqs = _write(db, 2)
    with db.session() as session:
        first_mark = verify(session).unkeyed_through
    with db.engine.begin() as conn, Session(bind=conn, info={AUDIT_KEY: None}) as forger:
        mark = record_audit(forger, AuditRecord(AuditAction.CHAIN_KEYED, "permit", username=None))
    with db.session() as session:
        result = verify(session)
    assert first_mark < seqs[0] and mark == seqs[-1] + 1
    assert result.unkeyed_through == first_mark and not result.ok and result.broken_seq == mark



# The audit key rotated in place (`audit rekey`): a marker written under the old key names the new one, the
# entries after it are keyed by that, and each epoch is checked under its own key.
NEW_SECRET = "the audit key it is rotated to (at least thirty-two bytes)"
OLD_KEY, NEW_KEY = chain_key_of(TEST_AUDIT_KEY), chain_key_of(NEW_SECRET)
ATTACKER_KEY = chain_key_of("a key of the attacker's own, of at least thirty-two bytes")


def _store(db: Database, key: bytes, retired: tuple[bytes, ...] = ()) -> Database:
    """The test's store as a process holding `key` (and `retired`) sees it."""
    return Database(db.url.render_as_string(hide_password=False), key, retired)


@contextmanager
def rotated(db: Database, retired: tuple[bytes, ...] = (OLD_KEY,)) -> Iterator[tuple[Database, int]]:
    """Rotate `db`'s log to NEW_KEY as `sharedcare audit rekey` does (a process of its own, holding the old key),
    and give the store as a process restarted with the new key and `retired` sees it, with the marker's seq."""
    rekeying = _store(db, OLD_KEY)
    with rekeying.session() as session:
        mark = audit.rekey(session, NEW_KEY, "a scheduled rotation")
    rekeying.dispose()
    restarted = _store(db, NEW_KEY, retired)
    try:
        yield restarted, mark
    finally:
        restarted.dispose()


def test_a_rotated_log_verifies_each_epoch_under_its_own_key(db: Database) -> None:
    before = _write(db, 3)
    with rotated(db) as (restarted, mark):
        after = _write(restarted, 2)
        with restarted.session() as session:
            result = verify(session)
            assert audit.key_problem(session) is None
            entries = session.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
            key = audit.chain_key(session)
    assert mark == before[-1] + 1 and after == [mark + 1, mark + 2]
    assert result.ok and result.checked == after[-1] and result.unchecked == ()
    assert [(epoch.first, epoch.marker) for epoch in result.epochs] == [(before[0], None), (mark + 1, mark)]
    assert all(audit.entry_is_genuine(entry, key) for entry in entries)
    assert key.for_entry(before[0]) == OLD_KEY and key.for_entry(mark) == OLD_KEY and key.for_entry(after[0]) == NEW_KEY


def test_verify_without_the_retired_key_names_its_epoch_and_still_names_a_forged_entry(db: Database) -> None:
    before = _write(db, 3)
    with rotated(db, retired=()) as (restarted, mark):
        after = _write(restarted, 2)
        with restarted.session() as session:
            result = verify(session)
            assert audit.key_problem(session) is None  # a writer needs only the new key: the marker proves it
            key = audit.chain_key(session)
            shown = {entry.seq: audit.entry_is_genuine(entry, key)
                     for entry in session.scalars(select(AuditEntry).where(WRITTEN))}
        forged = _forged_after_head(restarted, _plain)
        with restarted.session() as session:
            forged_found = verify(session)
    assert not result.ok and result.broken_seq == before[0] and result.checked == result.unkeyed_through + len(after)
    assert result.problem == (f"entries {before[0]}-{mark} were written under a retired key (fingerprint "
                              f"{audit.key_fingerprint(OLD_KEY)[:16]}) that this check was not given: set "
                              "SHAREDCARE_AUDIT_KEYS_RETIRED to the log's retired audit keys, comma separated")
    assert [span[:2] for span in result.unchecked] == [(before[0], mark)]
    assert shown == {**{seq: False for seq in before}, **{seq: True for seq in after}}  # the marker is not WRITTEN
    assert forged_found.broken_seq == forged and "without the chain's key" in (forged_found.problem or "")
    assert [span[:2] for span in forged_found.unchecked] == [(before[0], mark)]


def _marker(seq: int, prev_hash: str, proof_key: bytes) -> AuditRecord:
    """A rekey marker as a forger makes one, proving a key of theirs."""
    return AuditRecord(AuditAction.CHAIN_KEYED, "permit", username="system", detail={
        "key": "0" * 64, "next-key": audit.key_fingerprint(proof_key),
        "next-key-proof": audit._rekey_proof(proof_key, seq, prev_hash)})


def _forged_marker(db: Database, digest: Callable[[bytes], str], proof_key: bytes) -> int:
    with db.engine.connect() as conn:
        seq, prev_hash = conn.execute(select(AuditHead.seq, AuditHead.hash)).one()
    return _forged_after_head(db, digest, _marker(seq + 1, prev_hash, proof_key))


def _under(key: bytes) -> Callable[[bytes], str]:
    return lambda message: hmac.digest(key, message, "sha256").hex()


@pytest.mark.parametrize(("digest", "proof_key"), [
    pytest.param(_plain, ATTACKER_KEY, id="a plain hash"),
    pytest.param(_under(ATTACKER_KEY), ATTACKER_KEY, id="written under the attacker's key"),
    pytest.param(_under(OLD_KEY), ATTACKER_KEY, id="written under the retired key, leaked"),
    pytest.param(_under(OLD_KEY), OLD_KEY, id="the retired key, leaked, brought back"),
])
def test_a_forged_rekey_marker_does_not_move_the_epoch_and_is_named(db: Database, digest: Callable[[bytes], str],
                                                                   proof_key: bytes) -> None:
    """Someone who may INSERT, without the current key (with a leaked retired one at most), appends a marker
    naming a key of theirs: the epoch stays, the service goes on writing, and `verify` names the marker."""
    with rotated(db) as (restarted, mark):
        _write(restarted, 1)
        forged = _forged_marker(restarted, digest, proof_key)
        with restarted.session() as session:
            key = audit.chain_key(session)
            assert audit.key_problem(session) is None
        (written,) = _write(restarted, 1)  # the service's next append is not refused
        with restarted.session() as session:
            result = verify(session)
            genuine = audit.entry_is_genuine(session.get_one(AuditEntry, written), audit.chain_key(session))
    assert key.current.first == mark + 1 and len(key.epochs) == 2 and written == forged + 1 and genuine
    assert not result.ok and result.broken_seq == forged


@pytest.mark.parametrize("digest", [pytest.param(_plain, id="a plain hash"),
                                    pytest.param(_under(ATTACKER_KEY), id="the attacker's key")])
def test_a_forged_rekey_marker_before_any_rotation_moves_nothing(db: Database, digest: Callable[[bytes], str]) -> None:
    seqs = _write(db, 2)
    forged = _forged_marker(db, digest, ATTACKER_KEY)
    with db.session() as session:
        key = audit.chain_key(session)
        assert audit.key_problem(session) is None
    (written,) = _write(db, 1)
    with db.session() as session:
        result = verify(session)
    assert len(key.epochs) == 1 and key.current.key == OLD_KEY and forged == seqs[-1] + 1 == written - 1
    assert not result.ok and result.broken_seq == forged


def test_writing_with_the_old_key_after_a_rotation_is_refused(db: Database) -> None:
    """A process still holding the old key (one running since before, or started with the old settings) writes
    nothing after another process rekeyed the log: its next append fails, and a command stops at start."""
    _write(db, 2)  # this process has read the chain's epochs
    with rotated(db) as (_, mark):
        with db.session() as session:
            head = session.get_one(AuditHead, 1).seq
            problem = audit.key_problem(session)
        with pytest.raises(audit.AuditKeyProblem, match=f"rekeyed at entry {mark}"):
            _write(db, 1)
        started = _store(db, OLD_KEY)
        with started.session() as session:
            assert audit.key_problem(session) == problem
        with pytest.raises(audit.AuditKeyProblem):
            _write(started, 1)
        started.dispose()
        with db.session() as session:
            assert session.get_one(AuditHead, 1).seq == head == mark
    assert problem is not None and f"rekeyed at entry {mark}" in problem and "SHAREDCARE_AUDIT_KEY" in problem


def test_a_key_cannot_be_rotated_twice_from_the_same_epoch_nor_back(db: Database) -> None:
    _write(db, 1)
    with rotated(db) as (restarted, _):
        stale = _store(db, OLD_KEY)
        with stale.session() as session, pytest.raises(audit.AuditKeyProblem, match="rekeyed at entry"):
            audit.rekey(session, ATTACKER_KEY, "a second rotation from the retired key")
        stale.dispose()
        with restarted.session() as session, pytest.raises(audit.AuditKeyProblem, match="keyed this log before"):
            audit.rekey(session, OLD_KEY, "back to the retired key")


def _empty(found: Any, where: str = "") -> list[str]:
    """Where `found` (JSON) holds an empty array or object, which FHIR's JSON forbids (ele-1)."""
    if isinstance(found, dict):
        return [where or "/"] * (not found) + [w for k, v in found.items() for w in _empty(v, f"{where}/{k}")]
    if isinstance(found, list):
        return [where] * (not found) + [w for i, v in enumerate(found) for w in _empty(v, f"{where}/{i}")]
    return []


def test_no_audit_event_holds_an_empty_array_and_a_log_of_entries_written_before_still_verifies(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decision without details was written as `"detail": []` (5 in 6 entries), which the HL7 validator
    refuses: a validating Audit Record Repository would refuse `audit forward`'s Bundles (AU7). New entries
    leave the empty entity out; one written before keeps its hash (`verify` hashes what was stored), and the
    export and the forwarder's copy leave it out too."""
    from sharedcare.governance.access_log import export_ndjson
    from sharedcare.governance.audit_forward import transaction

    signed_in = AuditRecord(AuditAction.LOGIN, "permit", username="dr.patel", role="gp", organisation="P81001")
    written = audit.to_audit_event

    def as_before(record: AuditRecord, at: Any, stamp: str | None = None) -> dict[str, Any]:
        """The event as the release before wrote it: a decision entity always, with its details or none."""
        event = written(record, at, stamp)
        entities = event.get("entity", [])
        if not any(entity.get("name") == "decision" for entity in entities):
            entities = [*entities, {"name": "decision", "detail": []}]
        return {**event, "entity": entities}

    with monkeypatch.context() as before:
        before.setattr(audit, "to_audit_event", as_before)
        with db.session() as session:
            old = [record_audit(session, signed_in), record_audit(session, replace(signed_in, reason="why"))]
    with db.session() as session:
        new = [record_audit(session, signed_in), record_audit(session, replace(signed_in, reason="why")),
               record_audit(session, AuditRecord(AuditAction.CLOCK_CHECK, "permit", username="system"))]
        stored = {e.seq: e.event for e in session.scalars(select(AuditEntry).where(WRITTEN))}
        result = verify(session)
        exported = [json.loads(line) for line in export_ndjson(session)]
        forwarded = transaction(list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq))))
    assert _empty(stored[old[0]]) == ["/entity/0/detail"]  # as it was written, and hashed
    assert [_empty(stored[seq]) for seq in new] == [[], [], []]  # it was "/entity/0/detail" for two of three
    assert "entity" not in stored[new[2]] and stored[new[1]]["entity"] == stored[old[1]]["entity"]
    assert result.ok and result.checked == new[-1]
    assert [where for event in exported for where in _empty(event)] == [] and _empty(forwarded) == []


def test_a_rewrite_with_the_leaked_retired_key_is_named_at_the_rekey_marker_not_blamed_on_the_settings(
        db: Database) -> None:
    """Someone holding the retired key (leaked) and the database edits an entry of the old epoch and re-hashes it
    and those after it up to the rekey marker, then links the next entry to it. `verify` blamed the settings
    ("set SHAREDCARE_AUDIT_KEY") and named no entry, and every process with the new key refused to start; the
    marker's proof of the new key, bound to its place, no longer matches: it is named, and what that means."""
    before = _write(db, 3)
    with rotated(db) as (restarted, mark):
        _write(restarted, 2)
    as_an_attacker_with_ddl_rights(db)
    with db.session() as session:
        prev = session.get_one(AuditEntry, before[0] - 1).hash
        for seq in range(before[0], mark + 1):
            entry = session.get_one(AuditEntry, seq)
            if seq == before[0]:
                entry.outcome = "deny"  # a permitted read made to look refused
            entry.prev_hash = prev
            entry.hash = prev = audit._digest(prev, {name: getattr(entry, name) for name in audit._HASHED}, OLD_KEY)
        session.get_one(AuditEntry, mark + 1).prev_hash = prev
    checking = _store(db, NEW_KEY, (OLD_KEY,))  # `audit verify`, and a process started, with the new key
    with checking.session() as session:
        result, problem = verify(session), audit.key_problem(session)
    checking.dispose()
    assert not result.ok and result.broken_seq == mark and problem is None
    assert "is the rekey marker naming the next key" in (result.problem or "")
    assert "the entries before it were rewritten after the rotation" in (result.problem or "")


def test_a_log_cut_back_to_before_its_rotation_is_said_to_be_cut_back(db: Database) -> None:
    """The rekey marker and every entry after it removed, the head set back: it was "entry 2 edited"."""
    before = _write(db, 3)
    with rotated(db) as (restarted, mark):
        _write(restarted, 2)
    as_an_attacker_with_ddl_rights(db)
    with db.session() as session:
        kept = session.get_one(AuditEntry, mark - 1).hash
        session.execute(delete(AuditEntry).where(AuditEntry.seq >= mark))
        session.execute(update(AuditHead).values(seq=mark - 1, hash=kept))
    checking = _store(db, NEW_KEY, (OLD_KEY,))
    with checking.session() as session:
        result = verify(session)
    checking.dispose()
    assert not result.ok and result.broken_seq == before[0]
    assert "under a retired audit key, but no rekey marker ends its epoch: the marker was removed or edited (the log " \
           "cut back to before the rotation" in (result.problem or "")


def test_a_store_rekeyed_before_the_head_kept_its_marker_is_upgraded_to_it(db: Database) -> None:
    """Every append reads the newest marker's place from the head (migration 0031); a store rekeyed before that
    is upgraded with it, and its head then refuses to be set back: else a process still holding the retired key
    would go on writing entries `verify` names."""
    _write(db, 2)
    with rotated(db) as (restarted, mark):
        downgrade_store(db, "0030")
        db.migrate()
        with db.session() as session:
            assert session.get_one(AuditHead, 1).newest_mark == mark
        with pytest.raises(audit.AuditKeyProblem, match=f"rekeyed at entry {mark}"):
            _write(db, 1)  # the service that held the old key
        (written,) = _write(restarted, 1)
        with pytest.raises(DBAPIError, match="only by appending"), db.engine.begin() as conn:
            conn.execute(update(AuditHead).values(newest_mark=mark - 1))
        with restarted.session() as session:
            result, head = verify(session), session.get_one(AuditHead, 1)
    assert written == mark + 1 and result.ok and (head.seq, head.newest_mark) == (written, mark)
