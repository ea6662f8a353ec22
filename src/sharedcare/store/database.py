"""Engine, sessions and migrations for the one store, on SQLite (embedded default) or PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import CursorResult, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

from sharedcare.store.sqlite_turns import TurnTakingConnection

MIGRATIONS = Path(__file__).parent / "migrations"


def json_dumps(document: Any) -> str:
    """Encode a JSON document for the store with orjson (several times faster than the standard library
    on every ingest and audit append). orjson refuses integers beyond 64 bits, so every stored document
    reads back exactly with `json_loads`; such a number is refused here with a clear error (ingest
    quarantines the message) rather than stored and read back rounded."""
    try:
        return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as exc:
        raise ValueError(f"the store keeps JSON numbers as 64-bit integers or doubles: {exc}") from exc


def json_loads(document: str | bytes) -> Any:
    """Decode a stored JSON document with orjson; what orjson refuses (NaN or Infinity written by the
    standard library's encoder before this codec) is decoded by the standard library as before."""
    try:
        return orjson.loads(document)
    except orjson.JSONDecodeError:
        return json.loads(document)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets the portal read while ingest writes; foreign keys are off in SQLite unless asked."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync per commit, never corrupt; PostgreSQL for production
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def run(session: Session, statement: Executable,
        params: dict[str, Any] | None = None) -> CursorResult[*tuple[Any, ...]]:
    """Run a Core statement built once at import on the session's connection, in its transaction.

    For the per-request read and audit path: `Session.execute` costs about three times the database work
    there (ORM bookkeeping on every statement). Pending ORM changes are flushed first, as ORM queries do."""
    session.flush()
    return session.connection().execute(statement, params or {})


class Database:
    """One store: an engine, a session factory and its migrations."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        file_sqlite = self.url.get_backend_name() == "sqlite" and self.url.database not in (None, "", ":memory:")
        if file_sqlite:
            Path(str(self.url.database)).parent.mkdir(parents=True, exist_ok=True)
        # Writers on one SQLite file take turns (store/sqlite_turns.py): no sleeping in SQLite's busy handler.
        self.engine: Engine = create_engine(self.url, future=True, json_serializer=json_dumps,
                                            json_deserializer=json_loads,
                                            connect_args={"factory": TurnTakingConnection} if file_sqlite else {})
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    def alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.render_as_string(hide_password=False))
        return cfg

    def migrate(self) -> None:
        """Bring the schema to the newest migration (safe to run on every start)."""
        with self.engine.begin() as connection:
            cfg = self.alembic_config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
