"""SQLite writers take turns on a lock that hands over at once, rather than by SQLite's sleeping retries.

SQLite lets one connection write at a time. One that finds the store locked retries in its busy handler
after sleeps of 1, 2, 5, 10, 15, 20, 25... ms, however soon the writer is done; with two server
processes appending audit events (a write transaction per governed read), a read that met the other's
append often slept several times longer than the append took (benchmarks/api.py under load: the typical
mix's p99 29 ms without turns, 16 ms with them; docs/architecture.md). Here a connection about to open
a write transaction first takes a turn: a lock in this process (so a thread never waits on the file
for a turn its own process holds) and then an exclusive `flock` on a file beside the store (shared by
every process on the machine; the kernel wakes the next waiter when the turn ends, and releases it if
its process dies). The turn ends with the
transaction (commit, rollback or close). SQLite's own locking still decides who writes, so a writer
that takes no turn (another program, `sqlite3`) is as safe as before, only not as quick to follow.
Python's sqlite3 has no way to set a busy handler of one's own, hence a connection class
(`sqlite3.connect(factory=...)`, through SQLAlchemy's `connect_args`).
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
import time
from typing import Any

# pysqlite opens a transaction before these statements (and only these), so they start a write; BEGIN IMMEDIATE
# starts one before the first write (the MPI's, before it matches: `identity.mpi.hold_matching`).
_WRITE = re.compile(r"\s*(?:INSERT|UPDATE|DELETE|REPLACE|BEGIN\s+IMMEDIATE)\b", re.IGNORECASE)
# A thread that waits this long for a turn (its own process's: a write nested in another on one thread
# would wait for ever; or another process's: a writer stalled mid-transaction) goes on without one, to
# SQLite's busy handler, as every write did before.
WAIT_S = 30.0
_process_turns: dict[str, threading.Lock] = {}
_process_turns_guard = threading.Lock()


def _process_turn(path: str) -> threading.Lock:
    with _process_turns_guard:
        return _process_turns.setdefault(path, threading.Lock())


def _open_turn_file(path: str) -> int | None:
    """The turn file, made with the store's own permissions (as SQLite makes its -wal and -shm files), so
    every account that may write the store may take turns; None if this one cannot open it."""
    try:
        mode = os.stat(path.removesuffix("-writer")).st_mode & 0o777
    except OSError:
        mode = 0o600
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, mode)
    except OSError:
        return None


def _lock_within(fd: int, seconds: float) -> bool:
    """Take the exclusive lock on `fd`, trying every fraction of a millisecond to every 2 ms, for at most
    `seconds` (flock itself cannot time out, and a writer stalled mid-transaction in another process must
    not hang every server thread behind it)."""
    deadline, pause = time.monotonic() + seconds, 0.0002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.002)


class TurnTakingConnection(sqlite3.Connection):
    """A pysqlite connection that takes a writer's turn before its transaction's first write."""

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        path = os.path.abspath(os.fsdecode(database))
        self._turn_path = path + "-writer"
        self._process_turn = _process_turn(path)
        self._turn_file: int | None = None
        self._holding = False

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _TurnTakingCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)  # sqlite3's own makes its cursor without `cursor()`

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:
        return self.cursor().executemany(sql, seq_of_parameters)

    def take_turn(self, statement: str) -> None:
        if self._holding or self.in_transaction or not _WRITE.match(statement):
            return
        if not self._process_turn.acquire(timeout=WAIT_S):
            return
        try:
            if self._turn_file is None:
                self._turn_file = _open_turn_file(self._turn_path)
            if self._turn_file is None:  # not ours to open: SQLite's own waiting, as before
                self._process_turn.release()
                return
            if not _lock_within(self._turn_file, WAIT_S):  # a writer stuck in another process: SQLite's own
                self._process_turn.release()  # waiting, which gives up with "database is locked", as before
                return
        except BaseException:
            self._process_turn.release()
            raise
        self._holding = True

    def end_turn(self) -> None:
        if self._holding and self._turn_file is not None:
            self._holding = False
            fcntl.flock(self._turn_file, fcntl.LOCK_UN)
            self._process_turn.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.end_turn()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.end_turn()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.end_turn()
            if self._turn_file is not None:
                os.close(self._turn_file)
                self._turn_file = None


class _TurnTakingCursor(sqlite3.Cursor):
    connection: TurnTakingConnection

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        self.connection.take_turn(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:
        self.connection.take_turn(sql)
        return super().executemany(sql, seq_of_parameters)
