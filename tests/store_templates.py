"""Stores made once a test session, which each test's own store is a copy of: migrating a store (and
ingesting the small ICS into it) for every test was most of the suite's set-up time, on PostgreSQL above
all. A copy is the store as it was made, and no test can reach a template to change it.

SQLite: the template is a file, copied. PostgreSQL: a database beside the named test database, copied
with CREATE DATABASE ... TEMPLATE (so the role needs CREATEDB) into a database of the test's own
(`<name>_each<n>`). Making a copy (0.1-0.3 s) and dropping it (0.1-1.7 s: DROP DATABASE waits for a
checkpoint of the whole server, so it costs more the busier the server) were most of a PostgreSQL test's
time, so a thread makes the next copy of each template while a test runs, and another drops each test's
copy after it (a failure of either is raised by the next test that takes that copy, or at the end). The
databases commit without waiting for the disk (`synchronous_commit = off`: nothing a test sees changes,
only what a crash of the server would keep), and autovacuum leaves the templates' tables alone, so no copy
has statistics an earlier copy lacked (a plan a test checks depends on none)."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import make_url

from sharedcare.store.database import Database

TABLES = "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"
# What a finished test left connected to its database (its own role's connections only), ended.
LEFT_CONNECTED = sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {} "
                         "AND usename = current_user AND pid <> pg_backend_pid()")


class StoreTemplates:
    def __init__(self, folder: Path, postgres_url: str | None) -> None:
        self.folder = folder
        self.postgres_url = postgres_url
        self.made: dict[tuple[str, Hashable], str] = {}  # (backend, key) -> SQLite file or PostgreSQL database
        self._copies = itertools.count()
        self._making = ThreadPoolExecutor(1, thread_name_prefix="store-copy")
        self._dropping = ThreadPoolExecutor(1, thread_name_prefix="store-drop")
        self._next: dict[str, Future[str]] = {}  # PostgreSQL template -> its next copy, made or being made
        self._last: str | None = None  # the last test's PostgreSQL copy
        self._dropped: list[Future[None]] = []

    def template(self, backend: str, key: Hashable, fill: Callable[[Database], None]) -> str:
        """The template for `key`, made on first use: the migrated store filled by `fill` (the migrated store
        itself is `migrated`, made by migrating)."""
        if (backend, key) not in self.made:
            migrated = None if key == "migrated" else self.template(backend, "migrated", Database.migrate)
            name = f"t{len(self.made)}"
            if backend == "sqlite":
                url = self._sqlite(name, migrated)
            else:
                url = self._postgres(self._name(name), migrated or "template0")
            database = Database(url)
            try:
                fill(database)
            finally:
                database.dispose()  # a PostgreSQL template may have no one connected
            self.made[backend, key] = str(make_url(url).database)
            if backend == "sqlite":
                assert not Path(f"{self.made[backend, key]}-wal").exists(), "the template is not whole in its file"
            else:
                self._without_autovacuum(url)
        return self.made[backend, key]

    def copy(self, backend: str, template: str, folder: Path) -> str:
        """The URL of a new store that is a copy of `template` (made in `folder` on SQLite)."""
        if backend == "sqlite":
            return self._sqlite("sharedcare", template, folder)
        if self._last is not None:
            self._dropped.append(self._dropping.submit(self._drop, self._last))
        made = self._next.pop(template, None)  # (made while the last test ran, or still being made)
        self._last = made.result() if made is not None else self._make(template)
        self._next[template] = self._making.submit(self._make, template)
        return self._url(self._last)

    def drop(self) -> None:
        """Drop the PostgreSQL databases made (the SQLite files go with the session's temporary folder); raise
        what failed making or dropping a copy meanwhile."""
        self._making.shutdown()
        self._dropping.shutdown()
        if self.postgres_url:
            left = [made.result() for made in self._next.values()]
            names = [name for (backend, _), name in self.made.items() if backend == "postgresql"]
            for name in [*([self._last] if self._last else []), *left, *names]:
                self._drop(name)
        for dropped in self._dropped:
            dropped.result()

    def _sqlite(self, name: str, template: str | None = None, folder: Path | None = None) -> str:
        path = (folder or self.folder) / f"{name}.db"
        if template:
            shutil.copyfile(template, path)
        return f"sqlite:///{path}"

    def _make(self, template: str) -> str:
        """A new copy of `template`, for the next test that takes it: its database's name."""
        database = self._name(f"each{next(self._copies)}")
        self._postgres(database, template)
        return database

    def _postgres(self, database: str, template: str) -> str:
        named = sql.Identifier(database)
        self._drop(database)
        self._admin(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(named, sql.Identifier(template)),
                    sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(named))
        return self._url(database)

    def _url(self, database: str) -> str:
        assert self.postgres_url is not None
        return make_url(self.postgres_url).set(database=database).render_as_string(hide_password=False)

    def _name(self, name: str) -> str:
        assert self.postgres_url is not None
        return f"{make_url(self.postgres_url).database}_{name}"

    def _without_autovacuum(self, url: str) -> None:
        """Autovacuum off on every table of a template (and so of its copies): see the module's docstring."""
        with psycopg.connect(_conninfo(url), autocommit=True) as conn:
            for (table,) in conn.execute(TABLES).fetchall():
                conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(sql.Identifier(table)))

    def _drop(self, database: str) -> None:
        """Drop a database, first closing what a finished test left connected to it. Not WITH (FORCE): that
        refuses to end an autovacuum worker (another role's process) where a plain DROP ends it itself."""
        self._admin(LEFT_CONNECTED.format(database),  # (DROP waits up to 5 s for the ended ones to go)
                    sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))

    def _admin(self, *statements: sql.Composable) -> None:
        """CREATE and DROP DATABASE (and ending connections), run outside a transaction on the named test
        database."""
        assert self.postgres_url is not None
        with psycopg.connect(_conninfo(self.postgres_url), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)


def _conninfo(url: str) -> str:
    """The libpq form of a SQLAlchemy URL, for psycopg's own connections."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
