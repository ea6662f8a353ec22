"""`sharedcare audit forward`: the audit log copied, in chain order and as it grows, to a separate Audit
Record Repository over HTTP (TRUST AU7, IHE RESTful ATNA), never twice, never an edited entry."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import update
from tests.governance.test_audit import (
    NEW_KEY,
    _forged_after_head,
    _forged_marker,
    _plain,
    _store,
    _write,
    as_an_attacker_with_ddl_rights,
    rotated,
)
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.errors import SharedcareError
from sharedcare.governance.audit_forward import CHAIN, ChainBroken, ForwardError, forward, http_sender, read_position
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

runner = CliRunner()
SHUTDOWN_POLL = 0.02  # seconds: how often a test's repository looks for shutdown (0.5 by default, every test)


class Repository(ThreadingHTTPServer):
    """Another organisation's Audit Record Repository: a FHIR endpoint that takes transaction Bundles of
    AuditEvents, validates each against the R4 model and creates it unless one with the `ifNoneExist` tag
    is already held (FHIR conditional create). `refuse` makes it answer 503; `answer` overrides the reply."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.kept: dict[str, dict[str, Any]] = {}  # by the chain tag's code, "{seq}-{hash}"
        self.answer: object = None
        self.bundles: list[list[str]] = []
        self.refuse = False
        self.tokens: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/fhir"


class _Handler(BaseHTTPRequestHandler):
    server: Repository

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.server.tokens.append(self.headers.get("Authorization"))
        bundle = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.server.refuse:
            self._answer(503, {"resourceType": "OperationOutcome", "issue": [{"severity": "error",
                                                                             "code": "transient"}]})
            return
        if self.server.answer is not None:
            self._answer(200, self.server.answer)
            return
        assert bundle["type"] == "transaction"
        statuses, seqs = [], []
        for entry in bundle["entry"]:
            AuditEvent.model_validate(entry["resource"])
            ((system, code),) = [(t["system"], t["code"]) for t in entry["resource"]["meta"]["tag"]]
            assert entry["request"] == {"method": "POST", "url": "AuditEvent", "ifNoneExist": f"_tag={system}|{code}"}
            statuses.append("200 OK" if code in self.server.kept else "201 Created")
            self.server.kept.setdefault(code, entry["resource"])
            seqs.append(int(code.split("-")[0]))
        self.server.bundles.append(seqs)
        self._answer(200, {"resourceType": "Bundle", "type": "transaction-response",
                           "entry": [{"response": {"status": status}} for status in statuses]})

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def repository() -> Iterator[Repository]:
    server = Repository()
    thread = threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _held(repository: Repository) -> dict[int, dict[str, Any]]:
    """What the repository holds, by sequence number (a forged entry would be a second event for one)."""
    held: dict[int, dict[str, Any]] = {}
    for code, event in repository.kept.items():
        seq = int(code.split("-")[0])
        assert seq not in held, f"two events for entry {seq}"
        held[seq] = event
    return held


def _chain(event: dict[str, Any]) -> dict[str, Any]:
    (chain,) = [e for e in event["extension"] if e["url"] == CHAIN]
    return {e["url"]: e.get("valueInteger", e.get("valueString")) for e in chain["extension"]}


def test_the_log_is_copied_in_order_and_only_what_is_new_goes_next_time(db: Database, repository: Repository,
                                                                        tmp_path: Path) -> None:
    seqs = _write(db, 7)  # after the entry a new store's log begins with
    state, send = tmp_path / "forward.json", http_sender(repository.url, token="arr-secret")
    assert seqs == list(range(2, 9)) and forward(db, state, send, batch=3) == 8
    assert repository.bundles == [[1, 2, 3], [4, 5, 6], [7, 8]]
    assert set(repository.tokens) == {"Bearer arr-secret"}
    with db.session() as s:
        for n, seq in enumerate(seqs):
            entry = s.get_one(AuditEntry, seq)
            kept = repository.kept[f"{seq}-{entry.hash}"]
            assert _chain(kept) == {"seq": seq, "hash": entry.hash, "previous": entry.prev_hash}
            assert kept["agent"][0]["who"]["identifier"]["value"] == f"user{n}"
            assert {"what": {"reference": f"Condition/{n}"}} in kept["entity"]  # one entity per release
    assert forward(db, state, send, batch=3) == 0
    _write(db, 2)
    assert forward(db, state, send, batch=3) == 2 and repository.bundles[-1] == [9, 10]
    assert read_position(state).seq == 10


def test_a_repository_that_is_down_loses_nothing_and_gets_nothing_twice(db: Database, repository: Repository,
                                                                        tmp_path: Path) -> None:
    first = _write(db, 5)
    state, send = tmp_path / "forward.json", http_sender(repository.url)
    assert forward(db, state, send, batch=2) == first[-1]
    then = _write(db, 3)
    repository.refuse = True
    with pytest.raises(ForwardError, match="HTTP 503"):
        forward(db, state, send, batch=2)
    assert read_position(state).seq == first[-1]
    repository.refuse = False
    assert forward(db, state, send, batch=2) == 3
    sent = [i for bundle in repository.bundles for i in bundle]
    assert sent == list(range(1, then[-1] + 1)) and sorted(_held(repository)) == sent


def test_a_lost_state_file_sends_again_but_nothing_held_is_replaced_or_doubled(
        db: Database, repository: Repository, tmp_path: Path) -> None:
    seqs = _write(db, 4)
    state, send = tmp_path / "forward.json", http_sender(repository.url)
    forward(db, state, send)
    held = json.dumps(_held(repository), sort_keys=True)
    state.unlink()
    assert forward(db, state, send) == seqs[-1]  # sent again: the repository creates nothing new
    assert json.dumps(_held(repository), sort_keys=True) == held


def test_the_repository_must_be_https_and_its_answers_are_checked(db: Database, repository: Repository,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(SharedcareError, match="must be https"):
        http_sender("http://arr.example.org/fhir")
    _write(db, 2)
    state = tmp_path / "forward.json"
    for answer in (["not", "a", "bundle"], {"resourceType": "Bundle", "entry": "x"}, {"entry": [1, 2]}):
        repository.answer = answer
        with pytest.raises(ForwardError, match="not a transaction-response"):
            forward(db, state, http_sender(repository.url))
    assert not state.exists()


def test_a_redirect_is_refused_not_followed_with_the_token(db: Database, tmp_path: Path) -> None:
    class Redirecting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL,), daemon=True).start()
    try:
        _write(db, 1)
        with pytest.raises(ForwardError, match="not followed"):
            forward(db, tmp_path / "forward.json", http_sender(f"http://127.0.0.1:{server.server_address[1]}/fhir",
                                                               token="arr-secret"))
    finally:
        server.shutdown()
        server.server_close()


def test_one_forwarder_at_a_time_per_state_file(db: Database, repository: Repository, tmp_path: Path) -> None:
    seqs = _write(db, 2)
    state = tmp_path / "forward.json"
    with (tmp_path / "forward.json.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SharedcareError, match="another forwarder"):
            forward(db, state, http_sender(repository.url))
    assert forward(db, state, http_sender(repository.url)) == seqs[-1]
    with pytest.raises(SharedcareError, match="folder does not exist"):
        forward(db, tmp_path / "nowhere" / "forward.json", http_sender(repository.url))


def test_an_edited_entry_is_never_copied_and_the_forwarder_names_it(db: Database, repository: Repository,
                                                                    tmp_path: Path) -> None:
    _write(db, 6)
    as_an_attacker_with_ddl_rights(db)
    with db.session() as s:
        event = dict(s.get_one(AuditEntry, 4).event)
        event["outcome"] = "8"  # a refusal turned into a serious failure, say
        s.execute(update(AuditEntry).where(AuditEntry.seq == 4).values(event=event))
    state = tmp_path / "forward.json"
    with pytest.raises(ChainBroken, match="entry 4 content does not match its keyed hash"):
        forward(db, state, http_sender(repository.url), batch=10)
    assert sorted(_held(repository)) == [1, 2, 3]  # what was sound before it
    assert read_position(state).seq == 3


def test_an_entry_appended_without_the_key_is_never_copied(db: Database, repository: Repository,
                                                          tmp_path: Path) -> None:
    """An entry the application's database role appended (no trigger dropped) with a plain hash: before the
    chain was keyed the forwarder copied it as genuine."""
    seqs = _write(db, 3)
    forged = _forged_after_head(db, lambda message: hashlib.sha256(message).hexdigest())
    state = tmp_path / "forward.json"
    with pytest.raises(ChainBroken, match=f"entry {forged} was written without the chain's key"):
        forward(db, state, http_sender(repository.url), batch=10)
    assert sorted(_held(repository)) == list(range(1, seqs[-1] + 1)) and read_position(state).seq == seqs[-1]


def test_a_rewrite_of_what_was_already_copied_is_reported(db: Database, repository: Repository,
                                                          tmp_path: Path) -> None:
    seqs = _write(db, 4)
    state = tmp_path / "forward.json"
    forward(db, state, http_sender(repository.url))
    as_an_attacker_with_ddl_rights(db)
    with db.session() as s:  # the attacker recomputes the last hash too: the chain alone would not show it
        s.execute(update(AuditEntry).where(AuditEntry.seq == seqs[-1]).values(hash="f" * 64))
    _write(db, 1)
    with pytest.raises(ChainBroken, match=f"entry {seqs[-1]} is not what was forwarded"):
        forward(db, state, http_sender(repository.url))
    assert len(repository.kept) == seqs[-1]


def test_the_command_reports_and_exits_as_an_operator_expects(db: Database, repository: Repository,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seqs = _write(db, 3)
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    state = tmp_path / "forward.json"
    done = runner.invoke(app, ["audit", "forward", repository.url, "--state", str(state)])
    assert done.exit_code == 0, done.output
    assert f"forwarded {seqs[-1]} audit entries" in done.output and len(repository.kept) == seqs[-1]
    repository.refuse = True
    _write(db, 1)
    down = runner.invoke(app, ["audit", "forward", repository.url, "--state", str(state)])
    assert down.exit_code == 2 and "HTTP 503" in down.output
    nowhere = runner.invoke(app, ["audit", "forward", "http://127.0.0.1:9/fhir", "--state", str(state)])
    assert nowhere.exit_code == 2 and "127.0.0.1:9" in nowhere.output
    as_an_attacker_with_ddl_rights(db)
    with db.session() as s:
        s.execute(update(AuditEntry).where(AuditEntry.seq == seqs[-1]).values(hash="0" * 64))  # the last copied
    repository.refuse = False
    broken = runner.invoke(app, ["audit", "forward", repository.url, "--state", str(state)])
    assert broken.exit_code == 1 and "audit chain broken" in broken.output


def _interruptible() -> None:
    """Ctrl-C's default for the follower: a shell starting the suite as a background job ignores SIGINT,
    and an ignored signal stays ignored through exec (Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_following_the_log_copies_entries_as_they_are_written(db: Database, repository: Repository,
                                                              tmp_path: Path) -> None:
    first = _write(db, 2)
    repository.refuse = True  # down when the follower starts: it keeps trying
    env = {**os.environ, "SHAREDCARE_DB": db.url.render_as_string(hide_password=False)}
    follower = subprocess.Popen([sys.executable, "-c", "from sharedcare.cli import app; app()", "audit",  # noqa: S603
                                 "forward", repository.url, "--state", str(tmp_path / "forward.json"),
                                 "--follow", "--every", "0.2"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, preexec_fn=_interruptible)
    try:
        time.sleep(0.5)
        repository.refuse = False
        for written in (first[-1], first[-1] + 3):
            if written > first[-1]:
                _write(db, 3)
            deadline = time.monotonic() + 60
            # until the follower has recorded the repository's answer too: stopping it while the answer is on
            # its way loses only the count it prints (the entries are held, and sent again on the next run)
            while ((len(repository.kept) < written or read_position(tmp_path / "forward.json").seq < written)
                   and time.monotonic() < deadline and follower.poll() is None):
                time.sleep(0.1)
            assert sorted(_held(repository)) == list(range(1, written + 1))
    finally:
        follower.send_signal(signal.SIGINT)
        output = follower.communicate(timeout=30)[0].decode()
    assert follower.returncode == 0 and f"forwarded {first[-1] + 3} audit entries" in output, output


def test_a_rotated_log_is_copied_across_its_epochs_and_a_forged_marker_stops_it(db: Database, repository: Repository,
                                                                                tmp_path: Path) -> None:
    """After `audit rekey`, the forwarder checks each epoch under its key (the retired one given) and copies the
    whole log; a rekey marker forged after it (naming a key of the forger's) is not copied, nor anything after."""
    _write(db, 2)
    state = tmp_path / "forward.json"
    with rotated(db) as (restarted, mark):
        after = _write(restarted, 2)
        assert forward(restarted, state, http_sender(repository.url), batch=3) == after[-1]
        forged = _forged_marker(restarted, _plain, NEW_KEY)
        _write(restarted, 1)
        with pytest.raises(ChainBroken, match=f"entry {forged} was written without the chain's key"):
            forward(restarted, state, http_sender(repository.url))
    assert sorted(_held(repository)) == list(range(1, after[-1] + 1)) and mark < after[0]


def test_the_forwarder_without_the_retired_key_says_so_and_copies_nothing_of_its_epoch(
        db: Database, repository: Repository, tmp_path: Path) -> None:
    (first, _) = _write(db, 2)
    with rotated(db) as (restarted, mark):
        _write(restarted, 1)
    without = _store(db, NEW_KEY)
    with pytest.raises(ChainBroken, match=f"entry {first} was written under a retired key"
                                          ".* SHAREDCARE_AUDIT_KEYS_RETIRED"):
        forward(without, tmp_path / "forward.json", http_sender(repository.url))
    without.dispose()
    assert sorted(_held(repository)) == list(range(1, first)) and mark > first
