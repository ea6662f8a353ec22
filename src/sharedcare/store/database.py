"""Engine, sessions and migrations for the one store, on SQLite (embedded default) or PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeGuard, TypeVar, cast
from weakref import WeakKeyDictionary

import orjson
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import ColumnElement, create_engine, event, inspect, select
from sqlalchemy.engine import CursorResult, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, InvalidRequestError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, configure_mappers, make_transient_to_detached, sessionmaker
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

from sharedcare.config import load_settings
from sharedcare.private_files import create_private, private_folder
from sharedcare.store import sqlite_turns
from sharedcare.store.sqlite_turns import TurnTakingConnection

MIGRATIONS = Path(__file__).parent / "migrations"
AUDIT_KEY = "sharedcare.audit_key"  # Session.info: the HMAC key of the audit chain (Database.audit_key)
# Session.info: the keys of the chain's earlier epochs (Database.retired_audit_keys), and what this process has
# found of the chain's epochs (an `AuditEpochs`, shared by the sessions of one Database; governance/audit.py)
AUDIT_RETIRED = "sharedcare.audit_retired"
AUDIT_EPOCHS = "sharedcare.audit_epochs"


class AuditEpochs:
    """Where this process found the audit chain's keys to change (governance/audit.py `chain_key`), kept with
    the newest epoch marker it was found from: worked out again only when another marker is appended."""

    __slots__ = ("found",)

    def __init__(self) -> None:
        # (the newest marker's seq, the ChainKey found, whether its current epoch is keyed by this process's key)
        self.found: tuple[int | None, Any, bool] | None = None
Model = TypeVar("Model", bound=DeclarativeBase)


class Encoded(str):
    """A JSON document encoded by `json_dumps` already, given to a JSON column: stored as it is, not
    encoded a second time (ingest encodes each resource once, to refuse what cannot be stored, and
    inserts that text)."""

    __slots__ = ()


def json_dumps(document: Any) -> str:
    """Encode a JSON document for the store with orjson (several times faster than the standard library
    on every ingest and audit append). orjson refuses integers beyond 64 bits, so every stored document
    reads back exactly with `json_loads`; such a number is refused here with a clear error (ingest
    quarantines the message) rather than stored and read back rounded. An `Encoded` document is returned
    as it is."""
    if type(document) is Encoded:
        return document
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
    # a writer that waited `WAIT_S` for its turn waits as long again in SQLite's busy handler, then is refused (`busy`)
    cursor.execute(f"PRAGMA busy_timeout={int(sqlite_turns.WAIT_S * 1000)}")
    cursor.close()


def unreachable(exc: BaseException) -> TypeGuard[DBAPIError]:
    """Whether `exc` says the store cannot be reached, rather than that a statement failed: a connection that
    could not be made (the server down or refusing, a wrong host, port or password, an SQLite file that cannot
    be opened: an error with no statement), or one lost under a statement (a restart, a terminated backend:
    SQLAlchemy invalidates it). SQLite's other OperationalErrors (a missing table, a lock) are not."""
    if not isinstance(exc, DBAPIError):
        return False
    return exc.connection_invalidated or (exc.statement is None and isinstance(exc, OperationalError | InterfaceError))


# What a writer refused for `busy` is told: nothing of what it was writing was stored.
STORE_BUSY = ("the record store is busy: another writer held it longer than a writer waits (on SQLite, an MPI "
              "relink holds every writer while it clusters); nothing was stored")


def busy(exc: BaseException) -> TypeGuard[DBAPIError]:
    """Whether `exc` says a write gave up waiting for another writer: SQLite's "database is locked" after its
    turn and busy handler (`WAIT_S` each), or PostgreSQL's lock_not_available where a DBA set `lock_timeout`
    (sharedcare sets none: a writer there waits as long as the lock is held). Its transaction was rolled back
    whole, so the writer can say nothing was stored and the same write can be sent again."""
    if not isinstance(exc, OperationalError):
        return False
    return (isinstance(exc.orig, sqlite3.OperationalError) and "locked" in str(exc.orig)) or getattr(
        exc.orig, "sqlstate", None) == "55P03"


def unreachable_reason(exc: DBAPIError) -> str:
    """The driver's reason a store could not be reached, in a few words (`connection refused`, `password
    authentication failed for user "x"`): its first line, without psycopg's preamble naming host and port."""
    text = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    text = text.rsplit(" failed: ", 1)[-1].removeprefix("connection failed: ").removeprefix("FATAL:")
    text = " ".join(text.split())
    return text[:1].lower() + text[1:]


def run(session: Session, statement: Executable,
        params: dict[str, Any] | None = None) -> CursorResult[*tuple[Any, ...]]:
    """Run a Core statement built once at import on the session's connection, in its transaction.

    For the per-request read and audit path: `Session.execute` costs about three times the database work
    there (ORM bookkeeping on every statement). Pending ORM changes are flushed first, as ORM queries do."""
    session.flush()
    return session.connection().execute(statement, params or {})


def begin_write(session: Session) -> None:
    """On SQLite, begin the session's transaction as a write transaction now (writers take turns:
    `store/sqlite_turns.py`), so what it reads next holds every commit before it and no other writer's
    until it ends: SQLite's `SELECT ... FOR UPDATE`. pysqlite otherwise begins one only at the first write,
    reading until then outside any transaction. Nothing to do on PostgreSQL (lock the rows read instead)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite" and not getattr(connection.connection.dbapi_connection,
                                                           "in_transaction", False):
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # (in one already: it holds the lock)


class Prepared:
    """A Core statement built once, compiled once per dialect, and run on the driver's own cursor in the
    session's transaction: for the statements every governed read runs (its decision inputs, the audit
    append). SQLAlchemy's execution (context, parameter and result set-up) cost several times the
    database's own work there: on SQLite 78 us against 10 us for the decision inputs, 26 against 3 for
    locking the audit head. Values are bound and read with the statement's own type processors, so they
    are exactly what `run` would store and return; errors are raised as SQLAlchemy's, as `run` raises them.
    Columns' Python-side defaults are not applied: an INSERT names every value. The driver keeps the
    statement prepared (sqlite3's statement cache, psycopg's prepared statements)."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._forms: WeakKeyDictionary[Dialect, _Form] = WeakKeyDictionary()  # per engine: its own JSON codec

    def __call__(self, session: Session, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """The statement's rows (none for a statement that returns none), pending ORM changes flushed
        first as `run` does."""
        return self._execute(session, [params or {}])

    def many(self, session: Session, params: list[dict[str, Any]]) -> None:
        """Run a statement that returns no rows (an INSERT) once for each of `params`, in one call to the
        driver (its `executemany`, as `Session.execute` runs a list of parameters)."""
        if params:
            self._execute(session, params)

    def _execute(self, session: Session, params: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        session.flush()
        connection = session.connection()
        dialect = connection.dialect
        form = self._forms.get(dialect)
        if form is None:
            form = self._forms[dialect] = _Form(self.statement, dialect)
        args = [form.arguments(values) for values in params]
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if len(args) == 1:
                cursor.execute(form.sql, args[0])
            else:
                cursor.executemany(form.sql, args)
            if cursor.description is None:
                return []
            rows, processing = cursor.fetchall(), form.results(cursor.description)
        except dialect.loaded_dbapi.Error as err:
            gone = dialect.is_disconnect(err, connection.connection.dbapi_connection, cursor)
            if gone:  # as SQLAlchemy's own execution does: the pool must not hand the dead connection out again
                connection.invalidate(err)
            raise DBAPIError.instance(form.sql, args[0] if len(args) == 1 else args, err, dialect.loaded_dbapi.Error,
                                      hide_parameters=True, connection_invalidated=gone) from err
        finally:
            cursor.close()
        if not processing:
            return [tuple(row) for row in rows]
        out = []
        for row in rows:
            values = list(row)
            for i, process in processing:
                values[i] = process(values[i])
            out.append(tuple(values))
        return out


class PreparedObjects(Generic[Model]):
    """A look-up of one model's rows by a `Prepared` statement, each row given to the session as a stored
    object, as the ORM's query would give it: the object the session holds already when it holds that row,
    else one holding exactly the row's values (`make_transient_to_detached`: later changes to it are
    UPDATEs). For the look-ups every ingested message makes, where the ORM's execution of a query cost
    several times the database's own work."""

    def __init__(self, entity: type[Model], *criteria: ColumnElement[bool], order_by: ColumnElement[Any] | None = None,
                 limit: int | None = None) -> None:
        # An ORM query configures the mappers first; objects made here are not, and an unconfigured mapper
        # cannot key them: a listener's first message touching a stored patient failed (AttributeError, AE 207)
        configure_mappers()
        mapper = inspect(entity)
        table = mapper.local_table
        self.entity = entity
        self._mapper = mapper
        self._names = [mapper.get_property_by_column(column).key for column in table.columns]
        columns = list(table.columns)
        self._key = [next(i for i, column in enumerate(columns) if column is key) for key in mapper.primary_key]
        self._prepared = Prepared(select(*table.columns).where(*criteria).order_by(order_by).limit(limit))

    def __call__(self, session: Session, params: dict[str, Any]) -> list[Model]:
        found: list[Model] = []
        for row in self._prepared(session, params):
            key = self._mapper.identity_key_from_primary_key(tuple(row[i] for i in self._key))
            held = session.identity_map.get(key)
            if held is None:
                # made as the ORM's loading makes an object (a new instance, its values written to its
                # __dict__, not set through the attribute events: about 30 us less than the constructor), then
                # marked as loaded and stored
                held = self._mapper.class_manager.new_instance()  # (the mapper's own class: a Model)
                held.__dict__.update(zip(self._names, row, strict=True))
                make_transient_to_detached(held)
                session.add(held)
            found.append(cast(Model, held))
        return found


class _Form:
    """A `Prepared` statement in one dialect: its SQL, where its parameters go, their bind processors and
    (once the driver has described the result) the result columns' processors. The statement's own values
    (its literals, a LIMIT) are bound once, here: `construct_params` and the processors over all of them
    on every call were about 5 of the 15 us SQLAlchemy's part of running the decision inputs took (16 of its
    19 values are the statement's own)."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
        if compiled.post_compile_params or compiled.literal_execute_params:
            raise ValueError("a Prepared statement cannot expand parameters when run (an IN list): write it out")
        self.compiled = compiled
        self.sql = compiled.string
        self.positions = list(compiled.positiontup or ()) if dialect.positional else None
        bind = {name: cast(Callable[[Any], Any], process) for name, process in compiled._bind_processors.items()
                if not isinstance(process, tuple)}  # (a tuple: a multi-valued parameter; none here)
        if compiled.escaped_bind_names or any(param.callable for param in compiled.bind_names):
            raise ValueError("a Prepared statement binds plain names and values: write it so")
        # The caller's values by the names a call passes (a parameter's key, as `construct_params` takes
        # it, or its compiled name); the statement's own values bound and processed now.
        self.given: dict[str, dict[str, Callable[[Any], Any] | None]] = {}  # key -> {name: its processor}
        self.required: set[str] = set()
        self.fixed: dict[str, Any] = {}
        for param, name in compiled.bind_names.items():
            for key in {param.key, name}:
                self.given.setdefault(key, {})[name] = bind.get(name)
            if param.required:
                self.required.add(param.key)
            else:
                self.fixed[name] = bind[name](param.value) if name in bind else param.value
        # On a positional driver (sqlite3's `?`), the arguments as a list to copy, with the statement's own
        # values in place, and where each of the caller's values goes: a dictionary of every value turned
        # into a tuple on each call was most of the Python a governed read's three statements ran here.
        self.template: list[Any] = []
        self.slots: dict[str, list[tuple[int, Callable[[Any], Any] | None]]] = {}
        for i, name in enumerate(self.positions or ()):
            self.template.append(self.fixed.get(name))
            for key, names in self.given.items():
                if name in names:  # (a caller's value for one of the statement's own replaces it, as before)
                    self.slots.setdefault(key, []).append((i, names[name]))
        self._types = [entry[3] for entry in compiled._result_columns]
        self._dialect = dialect
        self._results: list[tuple[int, Callable[[Any], Any]]] | None = None

    def arguments(self, params: dict[str, Any]) -> Any:
        """What the driver binds: the statement's own values with the caller's `params`, each processed."""
        missing = self.required.difference(params)
        if missing:
            raise InvalidRequestError(f"A value is required for bind parameter {sorted(missing)[0]!r}")
        if self.positions is not None:
            out = self.template.copy()
            for key, value in params.items():
                for i, process in self.slots.get(key, ()):
                    out[i] = value if process is None else process(value)
            return tuple(out)
        values = dict(self.fixed)
        for key, value in params.items():
            for name, process in self.given.get(key, {}).items():
                values[name] = value if process is None else process(value)
        return values

    def results(self, description: Any) -> list[tuple[int, Callable[[Any], Any]]]:
        """The result columns that have a processor, by position, with it."""
        if self._results is None:
            processors = [type_._cached_result_processor(self._dialect, column[1])
                          for type_, column in zip(self._types, description, strict=True)]
            self._results = [(i, process) for i, process in enumerate(processors) if process is not None]
        return self._results


class Database:
    """One store: an engine, a session factory and its migrations."""

    def __init__(self, url: str, audit_key: bytes | None = None,
                 retired_audit_keys: tuple[bytes, ...] | None = None) -> None:
        """`audit_key`: the audit chain's HMAC key (`Settings.audit_chain_key`), by default the environment's;
        `retired_audit_keys`: those of its earlier epochs (`Settings.audit_chain_keys_retired`), by default too."""
        self.url = make_url(url)
        file_sqlite = self.url.get_backend_name() == "sqlite" and self.url.database not in (None, "", ":memory:")
        if file_sqlite:  # a new store and its journals (which SQLite makes with its mode) are owner-only
            store = Path(str(self.url.database))
            private_folder(store.parent)
            create_private(store)
        # Writers on one SQLite file take turns (store/sqlite_turns.py): no sleeping in SQLite's busy handler.
        # hide_parameters: an error's message (logged with its traceback) names the statement, not its values,
        # which hold patients' data (a resource, an audit event); the database's own words may still quote some.
        # pool_pre_ping (a server's store): a pooled connection the server dropped (a restart, a terminated backend,
        # a firewall's idle timeout) is found dead as it is taken from the pool and replaced, not handed to the
        # next request to fail on; a round trip per checkout. An SQLite file has no connection to lose.
        self.engine: Engine = create_engine(self.url, future=True, hide_parameters=True, json_serializer=json_dumps,
                                            json_deserializer=json_loads,
                                            pool_pre_ping=self.url.get_backend_name() != "sqlite",
                                            connect_args={"factory": TurnTakingConnection} if file_sqlite else {})
        if self.url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # every session carries the key its audit entries are chained with (governance/audit.py)
        self.audit_key = audit_key if audit_key is not None else load_settings().audit_chain_key
        self.retired_audit_keys = (retired_audit_keys if retired_audit_keys is not None
                                   else load_settings().audit_chain_keys_retired)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, info={
            AUDIT_KEY: self.audit_key, AUDIT_RETIRED: self.retired_audit_keys, AUDIT_EPOCHS: AuditEpochs()})

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    def alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        # '%' is ConfigParser's interpolation: a URL-escaped password (p%40ss) would stop every command
        cfg.set_main_option("sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%"))
        return cfg

    def schema_revision(self) -> str | None:
        """The migration the store's schema is at (Alembic's `alembic_version`), None for a store with no schema."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str:
        """The migration this release's code needs the schema at."""
        return str(ScriptDirectory.from_config(self.alembic_config()).get_current_head())

    def known_revision(self, revision: str) -> bool:
        """Whether `revision` is one of this release's migrations (an older schema), not a later release's."""
        return revision in {script.revision for script in ScriptDirectory.from_config(self.alembic_config())
                            .walk_revisions()}

    def migrate(self) -> None:
        """Bring the schema to the newest migration (safe to run on every start)."""
        with self.engine.begin() as connection:
            cfg = self.alembic_config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back if it raises. A block that committed
        its work itself and did nothing after (a governed read commits its audit entry before it answers)
        is not committed again: SQLAlchemy would begin and commit an empty transaction, 20-25 us of a
        typical read's CPU for nothing."""
        session = self._sessions()
        try:
            yield session
            if session.in_transaction() or session.new or session.dirty or session.deleted:
                session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
