"""Two updates of one resource carrying the same `If-Match`, sent at once to two server processes on one store
(as `serve --workers N` or two servers behind a balancer run): exactly one is stored, the other is answered
412 as FHIR's version-aware update says, and nothing is lost or quarantined."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx  # the dev dependency starlette's TestClient uses
import pytest
from sqlalchemy import create_engine, func, select, text
from tests.api.test_fhir_write import _diabetes, _token
from tests.builders import condition
from tests.conftest import FRAMEWORK_PATH
from tests.small_ics import Ics

from sharedcare.store.database import Database
from sharedcare.store.models import Quarantine, Resource, ResourceVersion

pytestmark = pytest.mark.usefixtures("deployment_keys")  # `serve` refuses demo mode beside PostgreSQL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def two_servers(db: Database, tmp_path: Path) -> Iterator[list[str]]:
    """Two `sharedcare serve` processes on the test's store; their base URLs."""
    env = {**os.environ, "SHAREDCARE_DB": db.url.render_as_string(hide_password=False),
           "SHAREDCARE_FRAMEWORK": str(FRAMEWORK_PATH)}
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    urls: list[str] = []
    try:
        for _ in range(2):
            port, log = _free_port(), tmp_path / f"server-{len(started)}.log"
            with log.open("wb") as out:
                started.append((subprocess.Popen(  # noqa: S603
                    [sys.executable, "-c", "from sharedcare.cli import app; app()", "serve", "--port", str(port)],
                    env=env, stdout=out, stderr=subprocess.STDOUT), log))
            url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 90
            while True:
                assert time.monotonic() < deadline and started[-1][0].poll() is None, log.read_text()[-2000:]
                try:
                    if httpx.get(f"{url}/fhir/metadata", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            urls.append(url)
        yield urls
    finally:
        for server, _ in started:
            server.terminate()
            server.wait(timeout=30)


@contextmanager
def writes_held(db: Database) -> Iterator[Callable[[int], None]]:
    """Hold the store's writers back, as a long write by another process does, so that both updates read the
    version held before either writes; yields a wait for `n` writers to be held. PostgreSQL: the resource
    tables locked against writes (reads go on), the waiters counted in pg_locks. SQLite: the writers' turn
    (store/sqlite_turns.py) taken, as any writer takes it; a waiter there is not visible, so it waits 2 s."""
    if db.backend == "postgresql":
        engine = create_engine(db.url)
        with engine.connect() as holder, engine.connect() as watcher:
            holder.execute(text("LOCK TABLE resources, resource_versions IN EXCLUSIVE MODE"))

            def wait_postgres(n: int) -> None:
                deadline = time.monotonic() + 30
                while watcher.scalar(text("SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted")) < n:
                    assert time.monotonic() < deadline, "the writers never reached the store"
                    time.sleep(0.05)
            yield wait_postgres
            holder.rollback()
        engine.dispose()
        return
    turn = os.open(f"{os.path.abspath(str(db.url.database))}-writer", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(turn, fcntl.LOCK_EX)
    try:
        yield lambda _: time.sleep(2)
    finally:
        fcntl.flock(turn, fcntl.LOCK_UN)
        os.close(turn)


def test_two_updates_naming_the_same_version_at_once_store_one_and_refuse_the_other_412(
        ics: Ics, db: Database, two_servers: list[str]) -> None:
    """Two clinicians' systems both read version 1 of Mr Okafor's diabetes and send their change with
    `If-Match: W/"1"` at the same moment, each to its own server process: one is stored as version 2, the
    other is refused 412 (read again), and the stored record is the winner's, its version 1 in history."""
    headers = {**_token(ics, "dr.patel"), "If-Match": 'W/"1"'}
    onsets = ["2011-01-01", "2012-02-02"]
    with ThreadPoolExecutor(2) as pool:
        with writes_held(db) as wait_for:
            sent = [pool.submit(httpx.put, f"{url}/fhir/Condition/gp-c1", headers=headers, timeout=60,
                                content=json.dumps(_diabetes(onsetDateTime=onset)))
                    for url, onset in zip(two_servers, onsets, strict=True)]
            wait_for(2)
        answers = [future.result() for future in sent]
    assert sorted(a.status_code for a in answers) == [200, 412], [a.text for a in answers]
    won = onsets[[a.status_code for a in answers].index(200)]
    refused = next(a for a in answers if a.status_code == 412).json()["issue"][0]
    assert refused["code"] == "conflict" and "version 2 is held" in refused["diagnostics"]
    with db.session() as s:
        stored = s.scalars(select(Resource).where(Resource.source_id == "gp-c1")).one()
        assert (stored.version, stored.content["onsetDateTime"]) == (2, won)
        assert s.scalars(select(ResourceVersion.version).where(ResourceVersion.resource_id == stored.id)).all() == [1]
        assert s.scalar(select(func.count()).select_from(Quarantine)) == 0


def test_the_same_new_resource_put_at_once_to_two_processes_is_stored_once_and_nothing_is_quarantined(
        ics: Ics, db: Database, two_servers: list[str]) -> None:
    """An interface engine's PUT of a new Condition times out and is sent again, reaching the other server
    process while the first is still storing it: one creates it, the other finds it held (200, unchanged),
    and nothing is held in quarantine as a failure."""
    headers = _token(ics, "dr.patel")
    body = json.dumps(condition("gp-new", "Patient/gp-okafor", "195967001", "Asthma"))
    with ThreadPoolExecutor(2) as pool:
        with writes_held(db) as wait_for:
            sent = [pool.submit(httpx.put, f"{url}/fhir/Condition/gp-new", headers=headers, timeout=60, content=body)
                    for url in two_servers]
            wait_for(2)
        answers = [future.result() for future in sent]
    assert sorted(a.status_code for a in answers) == [200, 201], [a.text for a in answers]
    assert "unchanged" in next(a for a in answers if a.status_code == 200).text
    with db.session() as s:
        assert s.scalars(select(Resource.version).where(Resource.source_id == "gp-new")).all() == [1]
        assert s.scalar(select(func.count()).select_from(Quarantine)) == 0
