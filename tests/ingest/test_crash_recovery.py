"""A kill -9 in the middle of an ingest loses nothing: ingesting the same input again afterwards leaves
the store exactly as one clean run would (resources, patient records, who is linked with whom,
quarantine), on SQLite and PostgreSQL; and the run that was killed is in the audit log, started and never
finished, though what it committed is stored. A SIGTERM stops a run after the message in hand, and its end
says so. The ingest is the real `sharedcare ingest` in a subprocess.
"""

from __future__ import annotations

import errno
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from tests.builders import bundle, condition, patient, write_ndjson

import sharedcare
from sharedcare.governance.access_log import details
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, Quarantine, Resource
from sharedcare.synth import generate

SRC = Path(sharedcare.__file__).resolve().parents[1]


def _ingest(url: str, feeds: Path) -> subprocess.Popen[bytes]:
    return _sharedcare(url, "ingest", str(feeds), "--json")


def _sharedcare(url: str, *args: str, workers: int = 2, stdout: int = subprocess.DEVNULL,
                stderr: int = subprocess.DEVNULL, own_group: bool = False) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SHAREDCARE_DB": url, "PYTHONPATH": str(SRC), "SHAREDCARE_INGEST_WORKERS": str(workers)}
    return subprocess.Popen([sys.executable, "-c", "from sharedcare.cli import app; app()", *args],  # noqa: S603
                            env=env, stdout=stdout, stderr=stderr, start_new_session=own_group)


def _runs(url: str, *options: str) -> list[dict[str, str]]:
    """`sharedcare audit runs --json`, as an IG officer or operator reads it."""
    listed = _sharedcare(url, "audit", "runs", "--json", *options, stdout=subprocess.PIPE)
    out, _ = listed.communicate(timeout=120)
    assert listed.returncode == 0
    return list(json.loads(out))


def _cli_entries(db: Database) -> list[AuditEntry]:
    """The audit entries the operator's commands wrote, in chain order."""
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.username == "cli").order_by(AuditEntry.seq)))


def _gp_feed(folder: Path) -> Path:
    """One practice's FHIR file: two patients, one with a problem."""
    return write_ndjson(folder / "P81001" / "fhir" / "emis-0001.ndjson", [
        bundle("P81001", "emis", [patient("gp-1", "9434765919", "Okafor", "Emeka", "1945-03-02"),
                                  condition("c1", "Patient/gp-1", "44054006", "Type 2 diabetes mellitus")]),
        bundle("P81001", "emis", [patient("gp-2", None, "Hughes", "Margaret", "1952-06-11", gender="female")])])


def _opened_when_read(fifo: Path, reader: subprocess.Popen[bytes]) -> int:
    """`fifo` opened for writing once `reader` has opened it to read (until then there is no one to open it for)."""
    deadline = time.monotonic() + 120
    while reader.poll() is None and time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            time.sleep(0.05)
    raise AssertionError(f"the ingest never came to read {fifo.name} (exit {reader.poll()})")


def _resources(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Resource)) or 0


def _store(db: Database) -> dict[str, Any]:
    """Everything a run leaves that a user could notice, free of ids and times that differ run to run."""
    with db.session() as s:
        records = {r.id: r for r in s.scalars(select(PatientRecord))}
        people: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for r in records.values():
            people[r.person_id].add((r.source_org, r.source_id))
        resources = {}
        for row in s.scalars(select(Resource)):
            content = dict(row.content)
            content["meta"] = {k: v for k, v in content["meta"].items() if k != "lastUpdated"}
            owner = records[row.patient_record_id] if row.patient_record_id else None
            resources[row.id] = (row.resource_type, row.source_org, row.source_id, row.version, row.content_hash,
                                 row.recorded_at, row.message_id, content,
                                 (owner.source_org, owner.source_id) if owner else None)
        return {
            "resources": resources,
            "patient_records": {(r.source_org, r.source_id): (r.nhs_number, r.family, r.given, r.birth_date, r.gender,
                                                              r.postcode, r.link_method, r.link_status)
                                for r in records.values()},
            "people": sorted(sorted(group) for group in people.values()),
            "quarantine": sorted((q.filename, q.location, q.reason, q.payload, q.status)
                                 for q in s.scalars(select(Quarantine))),
        }


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ics")
    generate(out, people=250, seed=5)
    # a message that cannot be accepted, so quarantine is compared too
    with (out / "P81001" / "fhir" / "emis-0000.ndjson").open("a", encoding="utf-8") as handle:
        handle.write('{"resourceType": "Bundle", "entry": [\n')
    return out


@pytest.fixture(scope="module")
def clean_run(feeds: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The store after one uninterrupted run (SQLite; the stores hold the same on PostgreSQL)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('clean') / 'clean.db'}"
    clean = Database(url)
    clean.migrate()
    assert _ingest(url, feeds).wait(timeout=600) == 1  # 1: something was quarantined
    store = _store(clean)
    clean.dispose()
    return store


def test_an_ingest_killed_part_way_and_run_again_equals_one_clean_run(
        db: Database, database_url: str, feeds: Path, clean_run: dict[str, Any]) -> None:
    killed = _ingest(database_url, feeds)
    deadline = time.monotonic() + 120
    while _resources(db) == 0 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get well into the feed, with workers staging ahead of what is committed
    assert killed.poll() is None, "the ingest ended before it could be killed: give it more to do"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    part = _resources(db)
    assert part > 0, "nothing was committed before the kill"
    assert _ingest(database_url, feeds).wait(timeout=600) == 1

    expected, after_crash = clean_run, _store(db)
    assert part < len(expected["resources"]), "the kill came after everything was stored"
    assert len(expected["quarantine"]) == 1
    for part_name in ("resources", "patient_records", "people", "quarantine"):
        assert after_crash[part_name] == expected[part_name], part_name


def test_an_ingest_killed_after_its_first_commit_is_in_the_audit_log_as_started_and_never_finished(
        db: Database, database_url: str, tmp_path: Path) -> None:
    """The run stores its first file, committed, then waits on its second, a file still arriving (a named pipe
    nothing is written to): killed there, it has written records and can write no end, every time."""
    first = _gp_feed(tmp_path)
    arriving = first.with_name("emis-0002.ndjson")
    os.mkfifo(arriving)
    killed = _sharedcare(database_url, "ingest", str(first), str(arriving), workers=0)  # read in order
    writer = _opened_when_read(arriving, killed)
    try:
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    finally:
        os.close(writer)
    assert _resources(db) == 3, "the first file was not committed before the kill"

    (started,) = _cli_entries(db)  # committed before the run wrote anything; its end was never written
    run = details(started)
    assert (started.action, started.outcome, started.organisation) == ("clinical:ingest:start", "permit", "P81001")
    assert len(run["run"]) == 32
    assert (run["paths"], run["files"], run["organisations"], run["operator_account"]) == (
        f"{first} {arriving}", "2", "P81001", getpass.getuser())
    unfinished = _runs(database_url, "--unfinished")
    assert [(r["run"], r["outcome"], r["finished"], r["paths"]) for r in unfinished] == [
        (run["run"], "unfinished", "", run["paths"])]
    assert _sharedcare(database_url, "audit", "verify").wait(timeout=120) == 0

    # run again, it resumes: a run of its own, finished; the killed one stays started and never finished
    arriving.unlink()
    again = _sharedcare(database_url, "ingest", str(first), workers=0)
    assert again.wait(timeout=120) == 0
    assert [(r["outcome"], r["unchanged"]) for r in _runs(database_url)] == [("permit", "3"), ("unfinished", "")]
    assert [r["run"] for r in _runs(database_url, "--unfinished")] == [run["run"]]


def test_sigterm_stops_an_ingest_after_the_message_in_hand_and_its_end_says_how_far_it_got(
        db: Database, database_url: str, tmp_path: Path) -> None:
    """What systemd or Kubernetes sends to stop a service. The run has stored its first file and waits on its
    second, a file still arriving (a named pipe): signalled, it does not end at once but takes the message
    the pipe then brings, stores it, and stops there, reading no further. It says so and how far it got, exits
    143, and its end is in the audit log: `audit runs --unfinished` does not take it for a run killed part-way."""
    first = _gp_feed(tmp_path)
    arriving = first.with_name("emis-0002.ndjson")
    os.mkfifo(arriving)
    stopped = _sharedcare(database_url, "ingest", str(first), str(arriving), workers=0, stderr=subprocess.PIPE)
    writer = _opened_when_read(arriving, stopped)
    try:
        assert _resources(db) == 3  # the first file, committed
        stopped.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):  # it waits for the message in hand, not ended at once
            stopped.wait(timeout=1)
        in_hand = bundle("P81001", "emis", [patient("gp-3", None, "Adeyemi", "Grace", "1961-09-30", gender="female")])
        os.write(writer, json.dumps(in_hand).encode() + b"\n")  # the pipe stays open: the file never ends
        said = stopped.communicate(timeout=120)[1].decode()
    finally:
        os.close(writer)
    assert stopped.returncode == 128 + signal.SIGTERM
    assert " ".join(said.split()).endswith(
        f"stopped by SIGTERM after {arriving}, line 1: what it handled is stored (3 messages: 4 resources "
        "accepted, 0 unchanged, 0 quarantined) and nothing after it was. Run the same input again to finish "
        "(what is stored is answered unchanged).")
    assert _resources(db) == 4  # the message in hand stored whole, with the first file

    assert _runs(database_url, "--unfinished") == []
    (run,) = _runs(database_url)
    assert (run["outcome"], run["stopped"], run["stopped_after"], run["messages"], run["accepted"]) == (
        "error", "SIGTERM", f"{arriving}, line 1", "3", "4")
    assert run["paths"] == f"{first} {arriving}" and run["finished"]
    assert _sharedcare(database_url, "audit", "verify").wait(timeout=120) == 0


def test_an_ingest_whose_every_process_sigterm_stopped_and_run_again_equals_one_clean_run(
        db: Database, database_url: str, feeds: Path, clean_run: dict[str, Any]) -> None:
    """systemd stops a service by signalling each of its processes, the staging workers too: the run stores
    what it had staged, says it stopped, and leaves nothing half-stored, so running it again equals one run."""
    stopped = _sharedcare(database_url, "ingest", str(feeds), "--json", stdout=subprocess.PIPE, own_group=True)
    deadline = time.monotonic() + 120
    while _resources(db) == 0 and stopped.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # well into the feed, the workers staging ahead of what is committed
    assert stopped.poll() is None, "the ingest ended before it could be stopped: give it more to do"
    os.killpg(stopped.pid, signal.SIGTERM)
    report = json.loads(stopped.communicate(timeout=120)[0])
    assert stopped.returncode == 128 + signal.SIGTERM
    assert report["stopped"] and report["stopped_after"].startswith(str(feeds))
    (run,) = _runs(database_url)
    assert (run["stopped"], run["stopped_after"], run["accepted"]) == (
        "SIGTERM", report["stopped_after"], str(report["accepted"]))
    assert 0 < _resources(db) < len(clean_run["resources"])

    assert _ingest(database_url, feeds).wait(timeout=600) == 1
    after_stop = _store(db)
    for part_name in ("resources", "patient_records", "people", "quarantine"):
        assert after_stop[part_name] == clean_run[part_name], part_name


def test_sigterm_stops_a_replay_with_its_item_replayed_whole_and_its_end_in_the_log(
        env: Database, database_url: str, tmp_path: Path) -> None:
    """A replay SIGTERM reached while it was under way ended where it stood, its run listed as killed part-way
    (`audit runs --unfinished`): now it finishes the item in hand (one transaction, never half of it), writes
    its end naming SIGTERM and the item, and exits 143. The test holds the chain's write lock from the moment
    the replay's start is in the log, so the signal arrives before the replay's end can be written."""
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit

    assert _sharedcare(database_url, "agreements", "set", "RYC", "--status", "suspended", "--reason",
                       "a breach reported").wait(timeout=120) == 0
    feed = write_ndjson(tmp_path / "ryc.ndjson", [bundle("RYC", "rio", [
        patient("RYC-1", "9434765919", "Okafor", "Emeka", "1945-03-02")])])
    assert _sharedcare(database_url, "ingest", str(feed), workers=0).wait(timeout=120) == 1
    assert _sharedcare(database_url, "agreements", "set", "RYC", "--status", "signed").wait(timeout=120) == 0
    starts = select(func.count()).where(AuditEntry.action == "clinical:ingest:start")
    ends = select(func.count()).where(AuditEntry.action == "clinical:record:write")
    with env.session() as s:
        held = s.scalars(select(Quarantine.id)).one()
        started_before, ends_before = s.scalar(starts), s.scalar(ends)
    replay = _sharedcare(database_url, "quarantine", "replay", str(held), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    with env.session() as lock:
        while lock.scalar(starts) == started_before and replay.poll() is None and time.monotonic() < deadline:
            lock.rollback()
            time.sleep(0.02)
        record_audit(lock, AuditRecord(AuditAction.RECORD_READ, "permit", username="test", role="gp",
                                       organisation="P81001", purpose="direct-care"))  # the chain held
        assert lock.scalar(ends) == ends_before, "the replay ended before it could be stopped"
        replay.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):  # it finishes the item in hand, not ended at once
            replay.wait(timeout=1)
        lock.rollback()
    said = " ".join(replay.communicate(timeout=120)[1].decode().split())
    assert replay.returncode == 128 + signal.SIGTERM
    assert said.endswith(f"stopped by SIGTERM after replaying #{held}: 1 accepted, 0 unchanged, 0 still quarantined")
    assert _resources(env) == 1
    with env.session() as s:
        assert s.get_one(Quarantine, held).status == "replayed"
    assert _runs(database_url, "--unfinished") == []
    replayed = next(r for r in _runs(database_url) if r["replayed"])
    assert (replayed["outcome"], replayed["stopped"], replayed["stopped_after"], replayed["accepted"]) == (
        "error", "SIGTERM", f"#{held}", "1")


def test_a_run_that_finishes_has_a_start_and_an_end_naming_one_run(
        db: Database, database_url: str, tmp_path: Path) -> None:
    _gp_feed(tmp_path / "feeds")
    assert _sharedcare(database_url, "ingest", str(tmp_path / "feeds"), workers=0).wait(timeout=120) == 0
    started, ended = _cli_entries(db)
    assert (started.action, ended.action, ended.outcome) == ("clinical:ingest:start", "clinical:record:write", "permit")
    assert started.recorded_at <= ended.recorded_at and started.organisation == ended.organisation == "P81001"
    given, done = details(started), details(ended)
    assert done["run"] == given["run"] and len(given["run"]) == 32
    assert {k: done[k] for k in given} == given  # the end names all the start did: the paths, whose, who
    assert (given["paths"], given["files"], done["accepted"], done["quarantined"]) == (
        str(tmp_path / "feeds"), "1", "3", "0")
    (listed,) = _runs(database_url)
    assert (listed["run"], listed["outcome"], listed["accepted"], listed["start_seq"], listed["end_seq"]) == (
        given["run"], "permit", "3", str(started.seq), str(ended.seq))
    assert _runs(database_url, "--unfinished") == []


def test_the_same_bad_message_ingested_twice_is_held_once(db: Database, framework: Framework, tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "P81001" / "gp.ndjson", [
        bundle("P81001", "emis", [patient("p1", "9434765919", "Okafor", "Emeka", "1945-03-02"),
                                  condition("c1", "Patient/nobody", "44054006", "Type 2 diabetes mellitus")])])
    first = Pipeline(db, framework).ingest_paths([path])
    second = Pipeline(db, framework).ingest_paths([path])
    assert first.quarantined == second.quarantined == 1
    assert first.quarantine[0]["id"] == second.quarantine[0]["id"]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Quarantine)) == 1


_STOPPING = """
import os, signal, sys, time
from sharedcare import cli
cli.STOP_GRACE_S = 0.5
with cli._sigterm_stops():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(float(sys.argv[1]))  # stuck inside the stop, or not
time.sleep(float(sys.argv[2]))  # after it: the caller's own work, the report
"""


@pytest.mark.parametrize(("inside", "after", "status"), [(30, 0, 128 + signal.SIGTERM), (0, 1.5, 0)])
def test_a_stop_stuck_past_its_grace_ends_saying_where_and_one_that_ended_in_time_is_left_alone(
        inside: float, after: float, status: int) -> None:
    """A run SIGTERM stopped ends within STOP_GRACE_S whatever it waits for, printing every thread's stack (a
    run whose every process was signalled once never ended); a stop that ended in time is not ended later."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", _STOPPING, str(inside), str(after)], env=env,  # noqa: S603
                          capture_output=True, timeout=20, check=False)
    assert done.returncode == status, done.stderr.decode()
    said = done.stderr.decode()
    assert ("stopping took over 0.5 s: ended" in said and "Thread" in said) == (status != 0), said
