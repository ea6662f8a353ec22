"""Other writers while a relink holds the matching lock (`mpi.hold_every_key`: re-reading, scoring, clustering
and writing, to its commit). On SQLite that is the store's write lock: every writer (ingest, a reviewer, the
audit entry of a read) waits `sqlite_turns.WAIT_S` for its turn and as long again in SQLite's busy handler, then
is refused, its transaction rolled back whole, saying so: MLLP AE with ERR-3 207 (an engine sends it again),
HTTP 503 with Retry-After, `sharedcare` exit 3. Until 2026-12-07 the sender was told of "an internal error"
(MLLP) or got a 500. A relink of an SQLite store too large to finish within that wait is refused before it
starts. On PostgreSQL only matching waits for a relink, for as long as it holds the lock (sharedcare sets no
`lock_timeout`), and reads go on. Real threads on a real store file, a real MLLP listener and the real API;
the relink held 3 s under the lock and the writers' wait cut to 0.5 s rather than 30."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.builders import bundle, patient, write_ndjson
from tests.conftest import FRAMEWORK_PATH
from tests.ingest.test_mllp import A01, _exchange, _segment, serving
from tests.small_ics import Ics
from typer.testing import CliRunner

import sharedcare.identity.matching as matching
import sharedcare.identity.mpi as mpi
from sharedcare.cli import app
from sharedcare.governance.framework import Framework
from sharedcare.identity.mpi import RelinkReport, relink
from sharedcare.ingest.mllp import MllpServer
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store import sqlite_turns
from sharedcare.store.database import Database
from sharedcare.store.models import LinkEvent, MatchModel, PatientRecord, Quarantine, Resource

HELD_S = 3.0  # how long the relink holds the lock, clustering
T = TypeVar("T")


@pytest.fixture
def short_wait(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Writers on SQLite wait 0.5 s for a turn and 0.5 s in the busy handler (connections made from now on)."""
    monkeypatch.setattr(sqlite_turns, "WAIT_S", 0.5)
    db.dispose()
    yield
    db.dispose()


def _while_relinking(db: Database, monkeypatch: pytest.MonkeyPatch, other: Callable[[], T]) -> tuple[RelinkReport, T]:
    """Run `other` once the relink is clustering under the lock, which it then holds HELD_S longer."""
    clustering = threading.Event()
    cluster = matching.cluster
    done: dict[str, Any] = {}

    def held(*args: Any, **kwargs: Any) -> Any:
        clustering.set()
        time.sleep(HELD_S)
        return cluster(*args, **kwargs)

    def relinking() -> None:
        try:
            with db.session() as s:
                done["report"] = relink(s)[0]
        except BaseException as exc:  # noqa: BLE001 (reported below)
            done["failed"] = exc

    monkeypatch.setattr(matching, "cluster", held)
    thread = threading.Thread(target=relinking)
    thread.start()
    try:
        assert clustering.wait(120), done.get("failed", "the relink never clustered")
        result = other()
    finally:
        thread.join()
    assert "failed" not in done, done["failed"]
    return done["report"], result


def _stored(db: Database, source_id: str) -> tuple[int, int]:
    """The patient records and resources stored from this source patient."""
    with db.session() as s:
        records = list(s.scalars(select(PatientRecord.id).where(PatientRecord.source_id == source_id)))
        resources = s.scalar(select(func.count()).select_from(Resource).where(Resource.patient_record_id.in_(records)))
        return len(records), resources or 0


def _two_patients(db: Database, framework: Framework, tmp: Path) -> None:
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp / "gp.ndjson", [bundle("P81001", "emis", [
        patient("a", "9434765919", "Hughes", "Margaret", "1952-06-11", "female", "RV1 2AB"),
        patient("b", None, "Rossi", "Pawel", "1988-07-21", "male", "RV3 1AA")])])])


def test_an_admission_sent_while_a_relink_holds_the_store_is_stored_whole_or_refused_whole_and_stored_when_resent(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_wait: None) -> None:
    _two_patients(db, framework, tmp_path)
    admission = A01.format(dob="19450302").encode("latin-1")
    with serving(MllpServer(Pipeline(db, framework))) as port:
        def timed() -> tuple[list[bytes], float]:  # the exchange alone: how long the listener held the message
            began = time.monotonic()
            return _exchange(port, admission), time.monotonic() - began

        report, ((ack,), waited) = _while_relinking(db, monkeypatch, timed)
        msa = _segment(ack, "MSA")
        if db.backend == "sqlite":  # refused whole, in words the engine acts on: nothing of it stored
            assert msa[1:3] == ["AE", "MSG001"], ack
            assert msa[3] == "the record store is busy: the message was not stored; send it again shortly"
            assert _segment(ack, "ERR")[3] == "207^Application internal error^HL70357"
            assert _stored(db, "H900") == (0, 0)
            with db.session() as s:
                assert s.scalar(select(func.count()).select_from(Quarantine)) == 0
            (ack,) = _exchange(port, admission)  # the engine sends it again
        else:  # PostgreSQL: it waited for the relink, and was stored after it
            assert waited >= HELD_S / 2, waited  # sent as clustering began, answered once the relink committed
        assert _segment(ack, "MSA")[1:3] == ["AA", "MSG001"], ack
    assert _stored(db, "H900") == (1, 2)  # the patient, the encounter
    assert report.locked_seconds >= HELD_S and report.records == 2  # the relink went on and committed


def test_a_read_while_a_relink_holds_an_sqlite_store_is_answered_503_and_goes_on_on_postgresql(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch, short_wait: None) -> None:
    """A governed read appends its audit entry (a write) before it answers: on SQLite it cannot, so nothing of
    the record leaves (TRUST AU4) and the clinician is told to try again, not of a server error."""
    headers = ics.open_record("dr.patel")
    client = TestClient(ics.client.app, raise_server_exceptions=False)
    _, response = _while_relinking(db, monkeypatch, lambda: client.get(
        f"/fhir/Patient/{ics.okafor}/$everything", headers=headers))
    if db.backend == "sqlite":
        assert response.status_code == 503 and response.headers["retry-after"] == "10", response.text
        assert "the record store is busy; nothing was stored: try again shortly" in response.text
        assert "Okafor" not in response.text
    else:
        assert response.status_code == 200 and "Okafor" in response.text
    assert client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 200


def test_an_ingest_run_while_a_relink_holds_an_sqlite_store_says_so_in_one_line_and_run_again_stores_all(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_wait: None) -> None:
    _two_patients(db, framework, tmp_path)
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    feed = write_ndjson(tmp_path / "rxr.ndjson", [bundle("RXR", "epr", [
        patient("h1", None, "Okafor", "Emeka", "1945-03-02", "male", "RV3 7QT")])])
    runner = CliRunner()
    _, ingested = _while_relinking(db, monkeypatch, lambda: runner.invoke(app, ["ingest", str(feed)]))
    if db.backend == "sqlite":
        assert ingested.exit_code == 3, ingested.output
        assert "error: the record store is busy" in ingested.output and "run the command again" in ingested.output
        assert "Traceback" not in ingested.output
        assert _stored(db, "h1") == (0, 0)
        ingested = runner.invoke(app, ["ingest", str(feed)])
    assert ingested.exit_code == 0, ingested.output
    assert _stored(db, "h1") == (1, 1)


def test_a_relink_of_an_sqlite_store_too_large_to_finish_within_a_writers_wait_is_refused_before_it_starts(
        env: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit cut to one record here (20,000 in a release): the operator is told why and what to do, and the
    store is left as it was; with the writers stopped it relinks."""
    _two_patients(env, framework, tmp_path)
    monkeypatch.setattr(mpi, "SQLITE_RELINK_LIMIT", 1)
    runner, model = CliRunner(), tmp_path / "model.json"
    refused = runner.invoke(app, ["mpi", "relink", "--model-out", str(model)])
    if env.backend == "postgresql":  # only matching waits for a relink there: no limit, it relinks
        assert refused.exit_code == 0, refused.output
        assert model.exists() and "refused" not in refused.output
        return
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.output.split())
    assert "refused: this SQLite store holds 2 source records, more than 1." in said
    assert "Move the store to PostgreSQL" in said and "sharedcare mpi relink --writers-stopped" in said
    with env.session() as s:
        assert s.scalars(select(LinkEvent)).all() == [] and s.scalars(select(MatchModel)).all() == []
    assert not model.exists()
    done = runner.invoke(app, ["mpi", "relink", "--writers-stopped", "--model-out", str(model)])
    assert done.exit_code == 0, done.output
    assert model.exists()
