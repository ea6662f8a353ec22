"""Signed checkpoints kept by witnesses find what the hash chain alone cannot: a log rewritten end to end
by someone with the database owner's rights, a log cut back, and a log shown differently to two
witnesses (TRUST TE1-TE3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from tests.cli.test_commands import env  # noqa: F401  (the fixture: the CLI pointed at the test database)
from tests.governance.test_audit import _write, as_an_attacker_with_ddl_rights
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.governance.audit import _HASHED, GENESIS, _digest, verify
from sharedcare.governance.checkpoints import (
    CheckpointError,
    check_against_chain,
    make_checkpoint,
    public_key_text,
    read_checkpoints,
    signing_key,
)
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, AuditHead

KEY = signing_key("a deployment secret of at least thirty-two bytes")
PUBLIC = public_key_text(KEY)
runner = CliRunner()


def _rewrite_from(db: Database, seq: int, username: str) -> None:
    """What an attacker with the owner's rights does so that the chain still verifies: edit one entry, then
    recompute every later hash and the head."""
    as_an_attacker_with_ddl_rights(db)
    with db.session() as s:
        s.execute(update(AuditEntry).where(AuditEntry.seq == seq).values(username=username))
        prev = GENESIS
        for entry in s.scalars(select(AuditEntry).order_by(AuditEntry.seq)):
            if entry.seq >= seq:
                entry.prev_hash = prev
                entry.hash = _digest(prev, {name: getattr(entry, name) for name in _HASHED})
            prev = entry.hash
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))


def test_a_log_rewritten_end_to_end_passes_the_chain_but_not_a_witnesses_checkpoint(db: Database) -> None:
    _write(db, 5)
    with db.session() as s:
        kept = make_checkpoint(s, KEY)
        assert kept.seq == 5 and check_against_chain(s, [kept], PUBLIC) == []
    _rewrite_from(db, 2, "someone-else")
    with db.session() as s:
        assert verify(s).ok  # the chain alone cannot tell
        (found,) = check_against_chain(s, [kept], PUBLIC)
    assert found.checkpoint == kept and "entry 5 no longer has the hash" in found.problem


def test_a_log_cut_back_below_a_checkpoint_is_found(db: Database) -> None:
    _write(db, 5)
    with db.session() as s:
        kept = make_checkpoint(s, KEY)
    as_an_attacker_with_ddl_rights(db)
    with db.session() as s:
        s.execute(delete(AuditEntry).where(AuditEntry.seq > 3))
        three = s.get_one(AuditEntry, 3).hash
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=3, hash=three))
    with db.session() as s:
        assert verify(s).ok
        (found,) = check_against_chain(s, [kept], PUBLIC)
    assert "the log ends at entry 3" in found.problem and "entries were removed" in found.problem


def test_two_witnesses_shown_different_logs_are_found(db: Database) -> None:
    _write(db, 3)
    with db.session() as s:
        first = make_checkpoint(s, KEY)
    _rewrite_from(db, 1, "someone-else")
    with db.session() as s:
        second = make_checkpoint(s, KEY)  # the rewritten log, signed for another witness
        problems = [p.problem for p in check_against_chain(s, [first, second], PUBLIC)]
    assert any("two checkpoints at entry 3 disagree" in p for p in problems)


def test_a_forged_or_foreign_checkpoint_is_not_trusted(db: Database) -> None:
    _write(db, 2)
    with db.session() as s:
        real = make_checkpoint(s, KEY)
        foreign = make_checkpoint(s, signing_key("another deployment's secret, also long enough"))
        forged = json.loads(real.to_json()) | {"seq": 1}
        (forged_cp,) = read_checkpoints([json.dumps(forged)], "witness.jsonl")
        problems = check_against_chain(s, [foreign, forged_cp], PUBLIC)
    assert [p.checkpoint for p in problems] == [foreign, forged_cp]
    assert all("not signed by this deployment" in p.problem for p in problems)


def test_a_witness_file_that_is_not_checkpoints_is_named_by_line() -> None:
    with pytest.raises(CheckpointError, match=r"witness.jsonl, line 2: not a checkpoint"):
        read_checkpoints(['{"log": "x", "seq": 1, "hash": "h", "at": "t", "key": "k", "signature": "s"}',
                          '{"seq": "many"}'], "witness.jsonl")
    with pytest.raises(CheckpointError, match=r"line 1: not a checkpoint \(entry 1000000000000000000000 is out"):
        read_checkpoints(['{"log": "x", "seq": 1e21, "hash": "h", "at": "t", "key": "k", "signature": "s"}'],
                         "witness.jsonl")


def test_the_cli_signs_checkpoints_and_verify_checks_the_chain_through_them(
        env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("SHAREDCARE_SECRET", "a deployment secret of at least thirty-two bytes")
    _write(env, 4)
    made = runner.invoke(app, ["audit", "checkpoint"])
    assert made.exit_code == 0
    witness = tmp_path / "witness.jsonl"
    witness.write_text(made.stdout)
    assert json.loads(made.stdout)["key"] == runner.invoke(app, ["audit", "checkpoint", "--public-key"]).stdout.strip()
    ok = runner.invoke(app, ["audit", "verify", "--checkpoints", str(witness)])
    assert ok.exit_code == 0 and "4 entries verified, through 1 checkpoints" in ok.stderr
    _rewrite_from(env, 2, "someone-else")
    broken = runner.invoke(app, ["audit", "verify", "--checkpoints", str(witness)])
    assert broken.exit_code == 1 and "checkpoint at entry 4" in broken.stderr and "rewritten" in broken.stderr
    witness.write_text("not json\n")
    unreadable = runner.invoke(app, ["audit", "verify", "--checkpoints", str(witness)])
    assert unreadable.exit_code == 2 and "line 1: not a checkpoint" in unreadable.stderr


def test_outside_demo_mode_the_demo_secret_signs_nothing(env: Database,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHAREDCARE_SECRET", raising=False)
    monkeypatch.delenv("SHAREDCARE_DEMO", raising=False)
    refused = runner.invoke(app, ["audit", "checkpoint"])
    assert refused.exit_code == 2 and "SHAREDCARE_SECRET" in refused.stderr
