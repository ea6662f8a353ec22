"""SQLite writers take turns (`store/sqlite_turns.py`): every write lands, a turn ends with its
transaction, and a write that cannot have a turn still gets SQLite's own answer rather than hanging."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from sharedcare.store import sqlite_turns
from sharedcare.store.database import Database
from sharedcare.store.sqlite_turns import TurnTakingConnection


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'turns.db'}")
    with database.session() as session:
        session.execute(text("CREATE TABLE counted (writer TEXT, n INTEGER)"))
    yield database
    database.dispose()


def _turn_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases it
    return True


def test_the_store_writes_through_turn_taking_connections(store: Database) -> None:
    with store.engine.connect() as connection:
        assert isinstance(connection.connection.driver_connection, TurnTakingConnection)


def test_concurrent_writers_in_threads_and_processes_all_land(store: Database, tmp_path: Path) -> None:
    writer = ("import sys\nfrom sqlalchemy import text\nfrom sharedcare.store.database import Database\n"
              "db = Database(sys.argv[1])\n"
              "for n in range(100):\n"
              "    with db.session() as s:\n"
              "        s.execute(text('INSERT INTO counted VALUES (:w, :n)'), {'w': sys.argv[2], 'n': n})\n")
    others = [subprocess.Popen([sys.executable, "-c", writer, str(store.url), f"process-{k}"],  # noqa: S603
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) for k in range(2)]

    def write(k: int) -> None:
        for n in range(100):
            with store.session() as session:
                session.execute(text("INSERT INTO counted VALUES (:w, :n)"), {"w": f"thread-{k}", "n": n})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    assert [p.wait(timeout=120) for p in others] == [0, 0]
    with store.session() as session:
        counts = dict(session.execute(text("SELECT writer, count(*) FROM counted GROUP BY writer")).all())
    assert counts == {**{f"thread-{k}": 100 for k in range(4)}, **{f"process-{k}": 100 for k in range(2)}}


@pytest.mark.parametrize("end", ["commit", "rollback", "close"])
def test_a_turn_ends_with_its_transaction(tmp_path: Path, end: str) -> None:
    path = tmp_path / "t.db"
    connection = sqlite3.connect(path, factory=TurnTakingConnection)
    connection.execute("CREATE TABLE t (x INTEGER)")
    turn = Path(f"{path}-writer")
    connection.execute("SELECT count(*) FROM t").fetchall()
    assert _turn_is_free(turn)  # reading takes no turn
    connection.execute("INSERT INTO t VALUES (1)")
    assert not _turn_is_free(turn)
    getattr(connection, end)()
    assert _turn_is_free(turn)
    if end != "close":
        connection.close()


def test_a_write_nested_in_another_on_one_thread_gets_sqlites_answer_not_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_turns, "WAIT_S", 0.2)
    path = tmp_path / "t.db"
    first = sqlite3.connect(path, factory=TurnTakingConnection, timeout=0.2)
    first.execute("PRAGMA journal_mode=WAL")
    first.execute("CREATE TABLE t (x INTEGER)")
    second = sqlite3.connect(path, factory=TurnTakingConnection, timeout=0.2)
    first.execute("INSERT INTO t VALUES (1)")
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        second.execute("INSERT INTO t VALUES (2)")
    assert time.monotonic() - started < 5
    first.commit()
    second.execute("INSERT INTO t VALUES (2)")  # the turn is free again
    second.commit()
    assert first.execute("SELECT count(*) FROM t").fetchone() == (2,)
    first.close()
    second.close()


def test_a_turn_held_by_a_stalled_process_is_given_up_after_a_while_not_waited_for_for_ever(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the turn and never lets go (stopped mid-transaction, say): a writer here goes
    on to SQLite's own locking after WAIT_S, and its write lands, rather than every server thread hanging."""
    monkeypatch.setattr(sqlite_turns, "WAIT_S", 0.3)
    path = tmp_path / "t.db"
    holder = subprocess.Popen([sys.executable, "-c",  # noqa: S603
                               "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n",
                               f"{path}-writer"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        connection = sqlite3.connect(path, factory=TurnTakingConnection)
        connection.execute("CREATE TABLE t (x INTEGER)")
        started = time.monotonic()
        connection.execute("INSERT INTO t VALUES (1)")
        connection.commit()
        assert 0.25 < time.monotonic() - started < 5
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (1,)
        connection.close()
    finally:
        holder.kill()
        holder.wait()


def test_a_store_whose_turn_file_cannot_be_opened_is_still_written(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    Path(f"{path}-writer").mkdir()  # as good as another account's file this one may not open
    connection = sqlite3.connect(path, factory=TurnTakingConnection)
    connection.execute("CREATE TABLE t (x INTEGER)")
    connection.execute("INSERT INTO t VALUES (1)")
    connection.commit()
    assert connection.execute("SELECT count(*) FROM t").fetchone() == (1,)
    connection.close()
