"""Signed checkpoints kept by witnesses find what the hash chain alone cannot: a log rewritten end to end
by someone with the database owner's rights, a log cut back, and a log shown differently to two
witnesses (TRUST TE1-TE3)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, text, update
from tests.conftest import AUDIT_KEY, FRAMEWORK_PATH
from tests.e2e.conftest import LiveServer
from tests.governance.test_audit import (
    NEW_KEY,
    NEW_SECRET,
    OLD_KEY,
    _forged_after_head,
    _forged_marker,
    _plain,
    _store,
    _write,
    as_an_attacker_with_ddl_rights,
    rotated,
)
from typer.testing import CliRunner, Result

from sharedcare.api import transparency
from sharedcare.api.app import create_app
from sharedcare.cli import app
from sharedcare.config import load_settings
from sharedcare.governance import checkpoints
from sharedcare.governance.audit import _HASHED, GENESIS, RefusalLimiter, _digest, chain_key, verify
from sharedcare.governance.checkpoints import (
    AuditTree,
    CheckpointError,
    Transparency,
    TreeMark,
    UnsoundLog,
    check_against_chain,
    consistency_proof,
    followed_key,
    handover_signature,
    inclusion_proof,
    make_checkpoint,
    proves_inclusion,
    public_key_text,
    read_checkpoints,
    signing_key,
    witness_problems,
)
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, AuditHead, AuditTreeMark

KEY = signing_key(AUDIT_KEY)  # the service's: its checkpoints are signed with the audit key
PUBLIC = public_key_text(KEY)
runner = CliRunner()


def _rewrite_from(db: Database, seq: int, username: str) -> None:
    """What an insider with the owner's rights and the deployment's secret does so that the chain still
    verifies (which only the checkpoints witnesses keep can show): edit one entry, then recompute every later
    hash, under the chain's key, and the head."""
    as_an_attacker_with_ddl_rights(db)
    with db.session() as s:
        s.execute(update(AuditEntry).where(AuditEntry.seq == seq).values(username=username))
        prev, key = GENESIS, chain_key(s)
        for entry in s.scalars(select(AuditEntry).order_by(AuditEntry.seq)):
            if entry.seq >= seq:
                entry.prev_hash = prev
                entry.hash = _digest(prev, {name: getattr(entry, name) for name in _HASHED},
                                     key.for_entry(entry.seq))
            prev = entry.hash
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))


def test_a_log_rewritten_end_to_end_passes_the_chain_but_not_a_witnesses_checkpoint(db: Database) -> None:
    seqs = _write(db, 5)
    with db.session() as s:
        kept = make_checkpoint(s, KEY)
        assert kept.seq == seqs[-1] and check_against_chain(s, [kept], PUBLIC) == []
    _rewrite_from(db, seqs[1], "someone-else")
    with db.session() as s:
        assert verify(s).ok  # the chain alone cannot tell
        (found,) = check_against_chain(s, [kept], PUBLIC)
    assert found.checkpoint == kept and f"entry {seqs[-1]} no longer has the hash" in found.problem


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
    seqs = _write(db, 3)
    with db.session() as s:
        first = make_checkpoint(s, KEY)
    _rewrite_from(db, seqs[0], "someone-else")
    with db.session() as s:
        second = make_checkpoint(s, KEY)  # the rewritten log, signed for another witness
        problems = [p.problem for p in check_against_chain(s, [first, second], PUBLIC)]
    assert any(f"two checkpoints at entry {seqs[-1]} disagree" in p for p in problems)


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
        read_checkpoints(['{"log": "x", "seq": 1, "hash": "h", "root": "r", "at": "t", "key": "k", "signature": "s"}',
                          '{"seq": "many"}'], "witness.jsonl")
    with pytest.raises(CheckpointError, match=r"line 1: not a checkpoint \(entry 1000000000000000000000 is out"):
        read_checkpoints(['{"log": "x", "seq": 1e21, "hash": "h", "root": "r", "at": "t", "key": "k", '
                          '"signature": "s"}'], "witness.jsonl")


def test_the_cli_signs_checkpoints_and_verify_checks_the_chain_through_them(
        deployment_keys: None, env: Database, tmp_path: Path) -> None:  # noqa: F811
    seqs = _write(env, 4)
    alone = runner.invoke(app, ["audit", "verify"])  # whole, but a chain alone cannot show a cut end: it says so
    assert alone.exit_code == 0 and "cannot show entries cut from its end" in " ".join(alone.stderr.split())
    made = runner.invoke(app, ["audit", "checkpoint"])
    assert made.exit_code == 0
    witness = tmp_path / "witness.jsonl"
    witness.write_text(made.stdout)
    assert json.loads(made.stdout)["key"] == runner.invoke(app, ["audit", "checkpoint", "--public-key"]).stdout.strip()
    ok = runner.invoke(app, ["audit", "verify", "--checkpoints", str(witness)])
    assert ok.exit_code == 0 and f"{seqs[-1]} entries verified, through 1 checkpoints" in ok.stderr
    assert "no checkpoints given" not in ok.stderr
    _rewrite_from(env, seqs[1], "someone-else")
    broken = runner.invoke(app, ["audit", "verify", "--checkpoints", str(witness)])
    assert broken.exit_code == 1 and f"checkpoint at entry {seqs[-1]}" in broken.stderr and "rewritten" in broken.stderr
    witness.write_text("not json\n")
    unreadable = runner.invoke(app, ["audit", "verify", "--checkpoints", str(witness)])
    assert unreadable.exit_code == 2 and "line 1: not a checkpoint" in unreadable.stderr


def test_verify_reports_an_edit_and_a_removed_middle_entry_without_crashing(
        deployment_keys: None, env: Database, tmp_path: Path) -> None:  # noqa: F811
    """The chain's finding is printed first; the Merkle tree, which cannot be built over a log with an entry
    missing, is built only to check checkpoints, and its failure is reported, not a traceback."""
    _write(env, 6)
    witness = tmp_path / "witness.jsonl"
    witness.write_text(runner.invoke(app, ["audit", "checkpoint"]).stdout)
    as_an_attacker_with_ddl_rights(env)
    with env.session() as session:
        session.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(username="someone-else"))
        session.execute(delete(AuditEntry).where(AuditEntry.seq == 5))
    for args in ([], ["--checkpoints", str(witness)]):
        result = runner.invoke(app, ["audit", "verify", *args])
        said = " ".join(result.stderr.split())
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception  # no crash
        assert "audit chain broken at entry 2" in said and "edited" in said
    assert "checkpoints not checked: audit log: audit entry 5 is missing (the next is 6)" in said


def test_outside_demo_mode_the_demo_secret_signs_nothing(env: Database,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHAREDCARE_SECRET", raising=False)
    monkeypatch.delenv("SHAREDCARE_DEMO", raising=False)
    refused = runner.invoke(app, ["audit", "checkpoint"])
    assert refused.exit_code == 2 and "SHAREDCARE_SECRET" in refused.stderr


# -- the log as an RFC 6962 Merkle tree, and a witness that holds only checkpoints (TRUST TE1-TE3) -----------
# RFC 6962's reference test vectors (certificate-transparency, merkle_tree_test): leaves and tree heads.
RFC6962_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
                  bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
RFC6962_ROOTS = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                 "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                 "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
                 "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                 "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
                 "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
                 "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
                 "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]


def test_the_audit_tree_is_the_rfc_6962_merkle_tree() -> None:
    tree = AuditTree()
    for leaf in RFC6962_LEAVES:
        tree.append_entry(leaf)
    assert [tree.get_root(n).hex() for n in range(1, 9)] == RFC6962_ROOTS


def test_a_witness_accepts_a_log_that_grew_and_refuses_one_rewritten_beneath_it(db: Database) -> None:
    seqs = _write(db, 3)
    with db.session() as s:
        kept = make_checkpoint(s, KEY)
    grew = _write(db, 2)
    with db.session() as s:
        grown = make_checkpoint(s, KEY)
        assert witness_problems(kept, grown, consistency_proof(s, seqs[-1], grew[-1]), PUBLIC) == []
        assert check_against_chain(s, [kept, grown], PUBLIC) == []

    _rewrite_from(db, seqs[1], "someone-else")  # the owner's rights and the secret: the chain and keys still work
    (last,) = _write(db, 1)
    with db.session() as s:
        assert verify(s).ok
        rewritten = make_checkpoint(s, KEY)
        (problem,) = witness_problems(kept, rewritten, consistency_proof(s, seqs[-1], last), PUBLIC)
    assert f"does not extend the {seqs[-1]} of the checkpoint kept" in problem and "rewritten" in problem


def test_a_witness_refuses_a_log_cut_back_a_split_view_and_a_forged_checkpoint(db: Database) -> None:
    _write(db, 4)
    with db.session() as s:
        kept = make_checkpoint(s, KEY)
        other_view = json.loads(kept.to_json()) | {"hash": "0" * 64}
        foreign = make_checkpoint(s, signing_key("another deployment's secret, also long enough"))
        smaller = make_checkpoint(s, KEY)
    (smaller_cp,) = read_checkpoints([json.dumps(json.loads(smaller.to_json()) | {"seq": 2})], "test")
    (other_cp,) = read_checkpoints([json.dumps(other_view)], "test")
    assert "not signed" in witness_problems(kept, foreign, None, PUBLIC)[0]
    assert "not signed" in witness_problems(kept, other_cp, None, PUBLIC)[0]  # edited after signing
    assert "not signed" in witness_problems(kept, smaller_cp, None, PUBLIC)[0]
    shrunk = make_checkpoint_at(db, 2)
    assert "entries were removed" in witness_problems(kept, shrunk, None, PUBLIC)[0]


def make_checkpoint_at(db: Database, seq: int) -> object:
    """A checkpoint the service signs after its log was cut back to `seq` entries."""
    as_an_attacker_with_ddl_rights(db)
    with db.session() as s:
        s.execute(delete(AuditEntry).where(AuditEntry.seq > seq))
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq, hash=s.get_one(AuditEntry, seq).hash))
    with db.session() as s:
        return make_checkpoint(s, KEY)


@contextmanager
def _served_to_a_witness(store_db: Database, monkeypatch: pytest.MonkeyPatch,
                         store: Path) -> Iterator[tuple[LiveServer, Callable[[], Result]]]:
    """The service on loopback outside demo mode, and `audit witness` run against it, keeping `store`."""
    monkeypatch.setenv("SHAREDCARE_SECRET", "a deployment secret of at least thirty-two bytes")
    settings = replace(load_settings(), database_url=str(store_db.url), framework_path=FRAMEWORK_PATH, demo=False)
    with LiveServer(create_app(settings, database=store_db)) as server:
        yield server, lambda: runner.invoke(app, ["audit", "witness", server.url, "--store", str(store),
                                                  "--public-key", PUBLIC])


def test_the_witness_command_follows_the_service_over_http_and_stops_at_a_rewrite(
        env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """`sharedcare audit witness` against a real server on loopback: it keeps each new checkpoint the
    service proves consistent, and keeps nothing, exiting 1, once the log under it was rewritten."""
    store = tmp_path / "witness.jsonl"
    (*_, three) = _write(env, 3)
    with _served_to_a_witness(env, monkeypatch, store) as (_, witness):
        first = witness()
        assert first.exit_code == 0 and f"kept the checkpoint at entry {three}: the first kept" in first.stderr
        (four, five) = _write(env, 2)
        second = witness()
        assert second.exit_code == 0 and f"at entry {five}: the log extends the last kept, at entry {three}" in (
            second.stderr)
        unchanged = witness()  # run again before anything new is logged: the file does not grow
        assert unchanged.exit_code == 0 and f"still at entry {five}: nothing new to keep" in unchanged.stderr
        _rewrite_from(env, four, "someone-else")
        (six,) = _write(env, 1)
        refused = witness()
    assert refused.exit_code == 1 and f"checkpoint at entry {six}" in refused.stderr
    assert f"does not extend the {five}" in refused.stderr
    assert [json.loads(line)["seq"] for line in store.read_text().splitlines()] == [three, five]


def test_no_checkpoint_or_proof_vouches_for_an_entry_appended_without_the_key(db: Database) -> None:
    """A read that never happened, appended by the application's database role without the chain's key: the
    service signs no checkpoint and gives no proof over it (nor over the genuine entries after it), with a
    tree kept between requests or one built afresh; the log before it is still proved."""
    published = Transparency(db, "a deployment secret of at least thirty-two bytes")
    (*_, last) = _write(db, 3)
    before = published.checkpoint()
    forged = _forged_after_head(db, _plain)
    _write(db, 1)
    named = f"audit entry {forged} was not written by the service"
    with pytest.raises(UnsoundLog, match=named):
        published.checkpoint()
    with pytest.raises(UnsoundLog, match=named):
        published.inclusion(forged, forged)
    with pytest.raises(UnsoundLog, match=named):
        published.consistency(before.seq, forged + 1)
    with db.session() as s, pytest.raises(UnsoundLog, match=named):
        make_checkpoint(s, KEY)
    assert proves_inclusion(published.inclusion(last, before.seq), before)


def test_the_witness_is_told_which_entry_the_service_will_not_sign_and_exits_1(
        env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """GET /audit/checkpoint answers 409 naming the forged entry, and `audit witness` prints it and exits 1 (a
    log tampered with), not 2 (a service down), keeping nothing."""
    monkeypatch.setenv("SHAREDCARE_SECRET", "a deployment secret of at least thirty-two bytes")
    settings = replace(load_settings(), database_url=str(env.url), framework_path=FRAMEWORK_PATH, demo=False)
    store = tmp_path / "witness.jsonl"
    _write(env, 3)
    forged = _forged_after_head(env, _plain)
    with LiveServer(create_app(settings, database=env)) as server:
        answer = httpx.get(f"{server.url}/audit/checkpoint")
        refused = runner.invoke(app, ["audit", "witness", server.url, "--store", str(store), "--public-key", PUBLIC])
    assert answer.status_code == 409
    assert f"audit entry {forged} was not written by the service" in answer.json()["issue"][0]["diagnostics"]
    said = " ".join(refused.stderr.split())
    assert refused.exit_code == 1 and f"audit entry {forged} was not written by the service" in said
    assert not store.exists()


def test_an_entry_is_proved_in_the_log_a_witness_signed_and_an_edited_one_is_not(db: Database) -> None:
    """An IG officer investigating a complaint shows that the break glass on record is the entry the
    witnessed log held: an inclusion proof against the witness's checkpoint. An entry edited since (its
    hash recomputed) is not proved."""
    seqs = _write(db, 6)
    size = seqs[-1]
    with db.session() as s:
        witnessed = make_checkpoint(s, KEY)
        (*_, last) = _write(db, 2)
    with db.session() as s:
        assert all(proves_inclusion(inclusion_proof(s, seq, size), witnessed) for seq in range(1, size + 1))
        found = inclusion_proof(s, 4, size)
        assert not proves_inclusion(found | {"seq": 5}, witnessed)  # the proof is for entry 4 only
        assert not proves_inclusion(inclusion_proof(s, 4, last), witnessed)  # and for the log the witness signed
        with pytest.raises(CheckpointError, match=f"no inclusion proof of entry {last + 1} in {last + 1} entries: "
                                                  f"the log has {last}"):
            inclusion_proof(s, last + 1, last + 1)
    _rewrite_from(db, 4, "someone-else")
    with db.session() as s:
        assert not proves_inclusion(inclusion_proof(s, 4, size), witnessed)


def test_the_transparency_endpoints_answer_without_a_token_and_refuse_what_the_log_does_not_hold(
        client: TestClient, db: Database) -> None:
    (*_, size) = _write(db, 5)
    checkpoint = client.get("/audit/checkpoint")
    assert checkpoint.status_code == 200 and checkpoint.json()["seq"] == size
    (kept,) = read_checkpoints([json.dumps(checkpoint.json())], "GET /audit/checkpoint")
    found = client.get("/audit/inclusion", params={"seq": 2, "size": size})
    assert found.status_code == 200 and proves_inclusion(found.json(), kept)
    beyond = client.get("/audit/consistency", params={"first": 3, "second": size + 4})
    assert beyond.status_code == 400 and beyond.json()["resourceType"] == "OperationOutcome"
    assert f"the log has {size}" in beyond.json()["issue"][0]["diagnostics"]
    assert client.get("/audit/inclusion", params={"seq": 0, "size": size}).status_code == 400
    # past what the log's sequence column holds (an INTEGER on PostgreSQL, where it was a 500): beyond the log
    assert client.get("/audit/inclusion", params={"seq": 2**40, "size": 2**40}).status_code == 400


def test_proofs_are_limited_per_address_and_a_witness_is_answered_again_a_minute_on(
        client: TestClient, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone may ask for a proof, and each new one costs CPU in proportion to the log: past its share (5 a
    minute) a caller is told to wait (429, Retry-After); checkpoints, and proofs it was given already, are
    still served."""
    now = [1000.0]
    monkeypatch.setattr(transparency, "PROOFS", _proofs_limited(lambda: now[0]))
    _write(db, 8)
    asked = [client.get("/audit/consistency", params={"first": n, "second": 8}) for n in range(1, 8)]
    assert [r.status_code for r in asked] == [200] * 5 + [429] * 2
    assert asked[-1].headers["retry-after"] == "60" and asked[-1].json()["resourceType"] == "OperationOutcome"
    assert client.get("/audit/inclusion", params={"seq": 2, "size": 8}).status_code == 429
    assert client.get("/audit/checkpoint").status_code == 200
    assert client.get("/audit/consistency", params={"first": 1, "second": 8}).json() == asked[0].json()
    now[0] += 60
    assert client.get("/audit/inclusion", params={"seq": 2, "size": 8}).status_code == 200


def _proofs_limited(clock: Callable[[], float]) -> RefusalLimiter:
    """The service's limits on new proofs, on `clock`."""
    return RefusalLimiter(per_minute=transparency.PROOFS.per_minute,
                          per_minute_all=transparency.PROOFS.per_minute_all, clock=clock)


def test_a_proof_asked_for_again_and_again_is_answered_and_costs_the_caller_nothing(
        client: TestClient, db: Database) -> None:
    """Review of 2026-12-07: asking for the same proof over and over used up every caller's proofs for the
    minute. It is made once and answered again as made, uncounted, until the log it was made over changes."""
    _write(db, 8)
    again = [client.get("/audit/consistency", params={"first": 1, "second": 2}) for _ in range(30)]
    assert {r.status_code for r in again} == {200} and len({r.text for r in again}) == 1
    assert [client.get("/audit/inclusion", params={"seq": 1, "size": 1}).status_code for _ in range(30)] == [200] * 30
    _rewrite_from(db, 2, "someone-else")
    with db.session() as s:
        rewritten = consistency_proof(s, 1, 2)
    assert rewritten != again[0].json()
    assert client.get("/audit/consistency", params={"first": 1, "second": 2}).json() == rewritten  # made anew
    fresh = [client.get("/audit/consistency", params={"first": n, "second": 8}).status_code for n in range(1, 4)]
    assert fresh == [200, 200, 429]  # three made so far, and a share of five new proofs a minute


def test_a_witness_is_answered_though_other_addresses_ask_for_all_the_proofs_they_may(
        env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Review of 2026-12-07: all callers together had 20 new proofs a minute, so two addresses asking for 11
    each left none, and `audit witness` failed as if the service were down. Each address has its share
    now: the witness, on another, is answered."""
    store = tmp_path / "witness.jsonl"
    (*_, three) = _write(env, 3)
    with _served_to_a_witness(env, monkeypatch, store) as (server, witness):
        assert witness().exit_code == 0
        (*_, before_last, last) = _write(env, 12)
        for second, attacker in ((last, "127.0.0.2"), (before_last, "127.0.0.3")):  # new proofs, none made yet
            with httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address=attacker)) as asking:
                answers = [asking.get("/audit/consistency", params={"first": n, "second": second}).status_code
                           for n in range(1, 12)]
            assert 429 in answers
        second = witness()
    assert second.exit_code == 0 and "refused for now" not in second.stderr, second.stderr
    assert f"at entry {last}: the log extends the last kept, at entry {three}" in second.stderr


def test_a_witness_refused_for_now_waits_as_told_once_then_exits_3(
        env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A service answering 429 is not a service down (exit 2): the witness waits for its Retry-After and
    asks once more; refused again, it keeps nothing and exits 3 (its own code: run again later)."""
    monkeypatch.setenv("SHAREDCARE_SECRET", "a deployment secret of at least thirty-two bytes")
    settings = replace(load_settings(), database_url=str(env.url), framework_path=FRAMEWORK_PATH, demo=False)
    store = tmp_path / "witness.jsonl"
    now, waits = [1000.0], []
    monkeypatch.setattr(transparency, "PROOFS", _proofs_limited(lambda: now[0]))
    (*_, three) = _write(env, 3)
    with LiveServer(create_app(settings, database=env)) as server:
        def witness(minutes_pass: bool) -> Result:
            def sleep(seconds: float) -> None:
                waits.append(seconds)
                now[0] += seconds if minutes_pass else 0
            with monkeypatch.context() as patched:
                patched.setattr(time, "sleep", sleep)
                return runner.invoke(app, ["audit", "witness", server.url, "--store", str(store),
                                           "--public-key", PUBLIC])

        def use_the_share(second: int) -> None:
            for n in range(1, 6):
                httpx.get(f"{server.url}/audit/inclusion", params={"seq": n, "size": second})

        assert witness(minutes_pass=True).exit_code == 0 and waits == []
        (*_, eight) = _write(env, 5)
        use_the_share(eight)
        waited = witness(minutes_pass=True)
        assert waited.exit_code == 0 and waits == [60], waited.stderr
        assert "refused for now (HTTP Error 429: Too Many Requests); asking again in 60 s" in waited.stderr
        (*_, thirteen) = _write(env, 5)
        use_the_share(thirteen)
        refused = witness(minutes_pass=False)
    assert refused.exit_code == 3 and waits == [60, 60]
    assert "refused again after waiting" in refused.stderr and "run again later" in refused.stderr
    assert [json.loads(line)["seq"] for line in store.read_text().splitlines()] == [three, eight]


SECRET = "a deployment secret of at least thirty-two bytes"


def _checked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The entries the checkpoint tree checks to be the service's from now on, in the order it checks them."""
    seen: list[int] = []
    genuine = checkpoints.entry_is_genuine

    def counted(entry: AuditEntry, key: object) -> bool:
        seen.append(entry.seq)
        return genuine(entry, key)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoints, "entry_is_genuine", counted)
    return seen


def test_a_restarted_service_checks_only_the_entries_logged_since_its_tree_last_checked(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's first checkpoint after a restart checked every entry afresh (70-90 us each: some 80 s at a
    million entries, the witness waiting). Where its tree got to is kept in the store under the chain's key, so
    a new process rebuilds the tree from the stored hashes and checks only the entries logged since; what it
    signs and proves is what a tree built afresh signs and proves."""
    _write(db, 5)
    Transparency(db, SECRET).checkpoint()
    checked = _checked(monkeypatch)
    assert Transparency(db, SECRET).checkpoint().seq == 6 and checked == []  # restarted, nothing new: none checked
    new = _write(db, 2)
    restarted = Transparency(db, SECRET)
    served = restarted.checkpoint()
    assert checked == new
    assert proves_inclusion(restarted.inclusion(3, served.seq), served)
    restarted = Transparency(db, SECRET)  # a restart after the last request was a proof: as far as it had checked
    assert restarted.consistency(2, served.seq) and checked == new
    with db.session() as s:
        fresh = make_checkpoint(s, KEY)
    assert (served.seq, served.hash, served.root) == (fresh.seq, fresh.hash, fresh.root)


def test_a_restarted_service_still_refuses_an_entry_forged_after_where_it_had_checked(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(db, 3)
    Transparency(db, SECRET).checkpoint()
    (genuine,) = _write(db, 1)
    forged = _forged_after_head(db, _plain)
    _write(db, 1)
    checked = _checked(monkeypatch)
    with pytest.raises(UnsoundLog, match=f"audit entry {forged} was not written by the service"):
        Transparency(db, SECRET).checkpoint()
    assert checked == [genuine, forged]


def _tree_over(db: Database, size: int) -> TreeMark:
    """The mark of the tree over the first `size` entries as stored, unchecked: what anyone who may read the log
    can work out."""
    tree = AuditTree()
    with db.session() as s:
        tree.catch_up(s, size, checked=False)
    return TreeMark(size, str(tree.last_hash), tree.get_root(size).hex())


@pytest.mark.parametrize("tampering", ["moved past the forged entry", "made with another key"])
def test_a_mark_the_chain_key_did_not_make_is_not_trusted_and_the_forged_entry_is_refused(
        db: Database, monkeypatch: pytest.MonkeyPatch, tampering: str) -> None:
    """The application's own role may write the tree's mark, as it may append to the log: one moved past an
    entry it forged (its MAC kept), or made anew under a key of its own, is not trusted, so every entry is
    checked and the forged one refused."""
    _write(db, 3)
    Transparency(db, SECRET).checkpoint()
    forged = _forged_after_head(db, _plain)
    (*_, last) = _write(db, 2)
    moved = _tree_over(db, last)
    with db.session() as s:
        if tampering == "moved past the forged entry":
            s.execute(update(AuditTreeMark).values(seq=moved.seq, hash=moved.hash, root=moved.root))
        else:
            s.execute(update(AuditTreeMark).values(seq=moved.seq, hash=moved.hash, root=moved.root,
                                                   mac=moved.mac(b"the forger's own key, of thirty-two bytes")))
    checked = _checked(monkeypatch)
    with pytest.raises(UnsoundLog, match=f"audit entry {forged} was not written by the service"):
        Transparency(db, SECRET).checkpoint()
    assert checked == list(range(1, forged + 1))  # from the first entry


def test_hashes_rewritten_beneath_the_mark_are_found_by_its_tree_head(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone with the owner's rights but not the key replaces an entry's hash beneath the mark (and the next
    entry's link to it), leaving the entry at the mark as it was: the tree rebuilt from the hashes is not the
    one the mark's tree head says was checked, so every entry is checked, and the one replaced is refused."""
    (_, second, *_) = _write(db, 5)
    Transparency(db, SECRET).checkpoint()
    as_an_attacker_with_ddl_rights(db)
    other = "ab" * 32
    with db.session() as s:
        s.execute(update(AuditEntry).where(AuditEntry.seq == second).values(hash=other))
        s.execute(update(AuditEntry).where(AuditEntry.seq == second + 1).values(prev_hash=other))
    checked = _checked(monkeypatch)
    with pytest.raises(UnsoundLog, match=f"audit entry {second} was not written by the service"):
        Transparency(db, SECRET).checkpoint()
    assert checked[0] == 1


def test_a_restarted_server_answers_409_for_an_entry_forged_after_its_mark(
        client: TestClient, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(db, 3)
    assert client.get("/audit/checkpoint").status_code == 200
    client.app.state.transparency = None  # type: ignore[attr-defined]  (a restart: the tree in memory is gone)
    forged = _forged_after_head(db, _plain)
    checked = _checked(monkeypatch)
    refused = client.get("/audit/checkpoint")
    assert refused.status_code == 409 and checked == [forged]
    assert f"audit entry {forged} was not written by the service" in refused.json()["issue"][0]["diagnostics"]


def test_a_store_whose_mark_cannot_be_read_or_written_is_served_checking_every_entry(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A role not granted the mark's table (the grants not run again after the upgrade): served as before."""
    (*_, last) = _write(db, 3)
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE audit_tree_mark"))
    checked = _checked(monkeypatch)
    assert Transparency(db, SECRET).checkpoint().seq == last
    assert Transparency(db, SECRET).checkpoint().seq == last and checked == list(range(1, last + 1)) * 2


def test_the_tree_checks_each_epoch_under_its_key_and_names_a_retired_key_not_given(db: Database) -> None:
    """After `audit rekey` the service (given the retired key) signs checkpoints over both epochs; one not given it
    signs nothing and says why; a rekey marker forged after the rotation is not signed over."""
    _write(db, 2)
    with rotated(db) as (restarted, mark):
        (*_, last) = _write(restarted, 2)
        assert Transparency(restarted, NEW_SECRET).checkpoint().seq == last > mark
        without = _store(db, NEW_KEY)
        with without.engine.begin() as conn:  # else it resumes from the mark the service with both keys stored
            conn.execute(text("DELETE FROM audit_tree_mark"))
        with pytest.raises(UnsoundLog, match="audit entry 2 was written under a retired key .* that this check was "
                                             "not given: set SHAREDCARE_AUDIT_KEYS_RETIRED"):
            Transparency(without, NEW_SECRET).checkpoint()
        without.dispose()
        still_old = _store(db, OLD_KEY)  # a service started before the rotation, not restarted
        with pytest.raises(UnsoundLog, match=f"audit entry {mark + 1} was written under the log's current audit key "
                                             f".* \\(the log was rekeyed at entry {mark}\\): set SHAREDCARE_AUDIT_KEY"):
            Transparency(still_old, AUDIT_KEY).checkpoint()
        still_old.dispose()
        forged = _forged_marker(restarted, _plain, NEW_KEY)
        with pytest.raises(UnsoundLog, match=f"audit entry {forged} was not written by the service"):
            Transparency(restarted, NEW_SECRET).checkpoint()


def test_a_witness_follows_only_a_handover_the_key_it_trusts_signed() -> None:
    new, other, third = (public_key_text(signing_key(secret)) for secret in (NEW_SECRET, "another key entirely",
                                                                             "a third key of thirty-two bytes"))
    handed = {"seq": 7, "key": new, "signature": handover_signature(KEY, 7, new)}
    assert followed_key(PUBLIC, [handed]) == new
    assert followed_key(PUBLIC, []) == PUBLIC
    forged = {"seq": 7, "key": other, "signature": handover_signature(signing_key("another key entirely"), 7, other)}
    assert followed_key(PUBLIC, [forged]) == PUBLIC  # not signed by the key the witness holds
    moved = {**handed, "seq": 8}  # the signature is for the marker at entry 7
    assert followed_key(PUBLIC, [moved]) == PUBLIC
    onward = {"seq": 20, "key": third, "signature": handover_signature(signing_key(NEW_SECRET), 20, third)}
    assert followed_key(PUBLIC, [onward, handed]) == third  # in the log's order
    later = {"seq": 30, "key": other, "signature": handover_signature(KEY, 30, other)}  # the old key, later
    assert followed_key(PUBLIC, [handed, later]) == new  # the first handover a key signed wins


def test_a_witness_follows_the_checkpoint_key_through_audit_rekey_and_verify_takes_both(
        env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The operator's rotation end to end: `audit rekey` with the new key in the environment, every command
    started with the old key refused, the service restarted with the new key and the old retired, and a witness
    given the old public key follows the handover; `audit verify` checks the witness's checkpoints of both keys,
    and without the retired key names the epoch it could not check."""
    store = tmp_path / "witness.jsonl"
    (*_, three) = _write(env, 3)
    with _served_to_a_witness(env, monkeypatch, store) as (_, witness):
        assert witness().exit_code == 0
    monkeypatch.setenv("SHAREDCARE_AUDIT_KEY_NEW", NEW_SECRET)
    rekeyed = runner.invoke(app, ["audit", "rekey", "--reason", "the yearly rotation"])
    monkeypatch.delenv("SHAREDCARE_AUDIT_KEY_NEW")
    mark = three + 1
    assert rekeyed.exit_code == 0 and f"entry {mark} names the new key" in rekeyed.stderr, rekeyed.output
    assert NEW_SECRET not in rekeyed.output and AUDIT_KEY not in rekeyed.output
    stale = runner.invoke(app, ["init"])  # still the old key: refused before it writes
    assert stale.exit_code == 2 and f"rekeyed at entry {mark}" in " ".join(stale.stderr.split())
    monkeypatch.setenv("SHAREDCARE_AUDIT_KEY", NEW_SECRET)
    monkeypatch.setenv("SHAREDCARE_AUDIT_KEYS_RETIRED", AUDIT_KEY)
    restarted = Database(env.url.render_as_string(hide_password=False))
    (*_, last) = _write(restarted, 2)
    with _served_to_a_witness(restarted, monkeypatch, store) as (server, witness):
        followed = witness()
        (handover,) = httpx.get(f"{server.url}/audit/handovers").json()
    restarted.dispose()
    assert followed.exit_code == 0, followed.output
    assert "handed over" in followed.stderr and f"the log extends the last kept, at entry {three}" in followed.stderr
    kept = [json.loads(line) for line in store.read_text().splitlines()]
    new_public = public_key_text(signing_key(NEW_SECRET))
    assert [(c["seq"], c["key"]) for c in kept] == [(three, PUBLIC), (last, new_public)]
    assert handover["seq"] == mark and handover["key"] == new_public
    checked = runner.invoke(app, ["audit", "verify", "--checkpoints", str(store)])
    assert checked.exit_code == 0 and "through 2 checkpoints" in checked.stderr, checked.output
    assert f"rotated 1 time (at entry {mark})" in " ".join(checked.stderr.split())
    monkeypatch.delenv("SHAREDCARE_AUDIT_KEYS_RETIRED")
    unchecked = runner.invoke(app, ["audit", "verify"])
    said = " ".join(unchecked.stderr.split())
    assert unchecked.exit_code == 1 and f"entries 2-{mark} were written under a retired key" in said
    assert "SHAREDCARE_AUDIT_KEYS_RETIRED" in said
