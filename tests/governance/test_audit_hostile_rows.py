"""What someone who may write to the audit tables, but holds no audit key, can do to the log after a key rotation
(review of the rekey and the tree mark, 2026-12-07): a row of any shape, a forged entry after a rekey, a mark
not of the service's making, an append racing the rekey. Each is found or refused; none stops the service."""
from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from tests.governance.test_audit import NEW_KEY, OLD_KEY, _forged_after_head, _plain, _store, _write, rotated
from tests.governance.test_checkpoints import SECRET

from sharedcare.governance import audit
from sharedcare.governance.audit import CHAIN_KEYED, _canonical, verify
from sharedcare.governance.checkpoints import Transparency
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, AuditHead, AuditTreeMark


def _insert_marker(db: Database, event: Any) -> int:
    """An `audit:chain:keyed` row as the application's role may INSERT one (follows the head, plain hash)."""
    with db.engine.begin() as conn:
        seq, prev_hash = conn.execute(select(AuditHead.seq, AuditHead.hash)).one()
        now = datetime.now(UTC)
        row = {"seq": seq + 1, "recorded_at": now, "action": CHAIN_KEYED, "outcome": "permit", "username": None,
               "organisation": None, "patient_id": None, "event": event}
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
