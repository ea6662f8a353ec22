"""Quarantine does not keep refused bodies forever (UK GDPR art. 5(1)(e), storage limitation).

`sharedcare quarantine purge` lists, then with --apply erases, the bodies of items received more than the
retention period ago (SHAREDCARE_QUARANTINE_RETENTION_DAYS): resolved ones (replayed, superseded) only,
unless --include-unresolved. The item, its reason, the body's hash and the audit stay.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from tests.builders import bundle, downgrade_store, patient, write_ndjson
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, Quarantine

runner = CliRunner()


@pytest.fixture
def env(env: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    """The shared `env`, with a retention period of its own."""
    monkeypatch.setenv("SHAREDCARE_QUARANTINE_RETENTION_DAYS", "30")
    return env


def _sent(value: str, nhs: str, at: str) -> dict[str, Any]:
    message = bundle("P81001", "emis", [patient(f"gp-{value}", nhs, "Hughes", "Margaret", "1952-06-11")], timestamp=at)
    return message | {"identifier": {"system": "https://emis.example/messages", "value": value}}


def _items(db: Database) -> dict[str, Quarantine]:
    """Each item by the message it holds."""
    with db.session() as s:
        return {str(q.message_key).rsplit("|", 1)[-1]: q for q in s.scalars(select(Quarantine))}


def _store(db: Database, tmp_path: Path) -> dict[str, bytes]:
    """Three items held 40 days ago (one since superseded, two still held) and one held today; their bodies."""
    bad = [_sent(value, "1234567890", "2026-11-01T09:00:00Z") for value in ("OLD-FIXED", "OLD-HELD", "OLD-HELD-2")]
    assert runner.invoke(app, ["ingest", str(write_ndjson(tmp_path / "1.ndjson", bad))]).exit_code == 1
    with db.session() as s:
        s.execute(update(Quarantine).values(received_at=utcnow() - timedelta(days=40)))
    fixed = write_ndjson(tmp_path / "2.ndjson", [_sent("OLD-FIXED", "9434765919", "2026-11-01T10:00:00Z"),
                                                 _sent("NEW", "1234567890", "2026-11-01T09:00:00Z")])
    assert runner.invoke(app, ["ingest", str(fixed)]).exit_code == 1
    items = _items(db)
    assert {k: i.status for k, i in items.items()} == {
        "OLD-FIXED": "superseded", "OLD-HELD": "held", "OLD-HELD-2": "held", "NEW": "held"}
    return {k: i.payload for k, i in items.items()}


def _purge(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["quarantine", "purge", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_dry_run_lists_the_resolved_bodies_past_retention_and_erases_nothing(env: Database, tmp_path: Path) -> None:
    bodies = _store(env, tmp_path)
    planned = _purge()
    assert (planned["retention_days"], planned["applied"]) == (30, False)
    assert [i["id"] for i in planned["items"]] == [_items(env)["OLD-FIXED"].id]
    assert planned["bytes"] == len(bodies["OLD-FIXED"])
    assert {k: i.payload for k, i in _items(env).items()} == bodies
    shown = runner.invoke(app, ["quarantine", "purge"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "dry run: --apply erases" in shown.stdout and "superseded" in shown.stdout


def test_applied_it_erases_those_bodies_keeping_the_item_its_reason_hash_and_an_audit_event(
        env: Database, tmp_path: Path) -> None:
    bodies = _store(env, tmp_path)
    before = {k: (i.reason, i.status, i.superseded_by, i.filename, i.location) for k, i in _items(env).items()}
    done = _purge("--apply")
    assert [i["id"] for i in done["items"]] == [_items(env)["OLD-FIXED"].id]
    items = _items(env)
    erased = items["OLD-FIXED"]
    assert erased.payload == b"" and erased.erased_at is not None
    assert erased.payload_sha256 == hashlib.sha256(bodies["OLD-FIXED"]).hexdigest()
    assert {k: (i.reason, i.status, i.superseded_by, i.filename, i.location) for k, i in items.items()} == before
    assert [items[k].payload for k in ("OLD-HELD", "OLD-HELD-2", "NEW")] == [
        bodies[k] for k in ("OLD-HELD", "OLD-HELD-2", "NEW")]  # not resolved, or not yet due: kept
    assert _purge("--apply")["items"] == []  # nothing more to do
    audit = json.loads(runner.invoke(app, ["audit", "search", "--json"]).stdout)
    (event,) = [e for e in audit if e["action"] == "governance:quarantine:purge"]
    assert (event["items"], event["count"], event["retention days"]) == (str(erased.id), "1", "30")
    with env.session() as s:  # its AuditEvent says what was done: deleted, not read
        (purge,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:quarantine:purge"))
        assert purge.event["action"] == "D"
    listed = {i["id"]: i for i in json.loads(runner.invoke(app, ["quarantine", "list", "--all", "--json"]).stdout)}
    assert listed[erased.id]["bytes"] == 0 and listed[erased.id]["sha256"] == erased.payload_sha256


def test_the_original_file_ingested_again_after_a_purge_is_not_held_again(env: Database, tmp_path: Path) -> None:
    """The erased body's kept SHA-256 still matches its message: the superseded item stays the one item for it,
    not a second copy held, waiting and keeping the body the purge erased."""
    _store(env, tmp_path)
    _purge("--apply")
    before = {k: (i.id, i.status) for k, i in _items(env).items()}
    again = runner.invoke(app, ["ingest", str(tmp_path / "1.ndjson"), "--json"])
    assert again.exit_code == 1
    assert sorted(q["id"] for q in json.loads(again.stdout)["quarantine"]) == sorted(
        before[k][0] for k in ("OLD-FIXED", "OLD-HELD", "OLD-HELD-2"))
    with env.session() as s:
        assert len(s.scalars(select(Quarantine)).all()) == 4
    items = _items(env)
    assert {k: (i.id, i.status) for k, i in items.items()} == before
    assert items["OLD-FIXED"].payload == b""
    check = json.loads(runner.invoke(app, ["quarantine", "check", "--json"]).stdout)
    assert check["held"] == 3  # OLD-HELD, OLD-HELD-2, NEW: the superseded one does not wait again


def test_items_still_held_are_erased_only_when_the_operator_includes_them(env: Database, tmp_path: Path) -> None:
    _store(env, tmp_path)
    done = _purge("--apply", "--include-unresolved")
    items = _items(env)
    old = ("OLD-FIXED", "OLD-HELD", "OLD-HELD-2")
    assert sorted(i["id"] for i in done["items"]) == sorted(items[k].id for k in old)
    assert [items[k].status for k in ("OLD-HELD", "NEW")] == ["erased", "held"]
    assert {i["status"] for i in done["items"]} == {"superseded", "erased"}
    assert items["NEW"].payload  # received today
    check = json.loads(runner.invoke(app, ["quarantine", "check", "--json"]).stdout)
    assert check["held"] == 1  # the erased items no longer wait
    replay = runner.invoke(app, ["quarantine", "replay", str(items["OLD-HELD"].id)], env={"COLUMNS": "300"})
    assert replay.exit_code == 2 and "body was erased" in replay.stderr and "must send it again" in replay.stderr


def test_the_retention_setting_is_a_whole_number_of_days(env: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_QUARANTINE_RETENTION_DAYS", "a month")
    refused = runner.invoke(app, ["quarantine", "purge"], env={"COLUMNS": "300"})
    assert refused.exit_code == 2 and "SHAREDCARE_QUARANTINE_RETENTION_DAYS must be a whole number" in refused.stderr


def test_below_0022_an_erased_items_reason_says_its_body_was_erased(env: Database, tmp_path: Path) -> None:
    """The older code has no column for it: an empty body unexplained would read as a message lost (HAZ-13)."""
    _store(env, tmp_path)
    _purge("--apply")
    erased = _items(env)["OLD-FIXED"]
    downgrade_store(env, "0021")
    with env.engine.connect() as conn:
        reasons = dict(conn.exec_driver_sql("SELECT id, reason FROM quarantine").all())
    reason = reasons[erased.id]
    assert reason.startswith(erased.reason) and f"[body erased {erased.erased_at:%Y-%m-%d}" in reason
    assert reason.endswith(f", sha256 {erased.payload_sha256}]")
    env.migrate()
