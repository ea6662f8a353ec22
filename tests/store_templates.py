"""Stores made once a test session, which each test's own store is a copy of: migrating a store (and
ingesting the small ICS into it) for every test was most of the suite's set-up time, on PostgreSQL above
all. A copy is the store as it was made, and no test can reach a template to change it.

SQLite: the template is a file, copied. PostgreSQL: a database beside the named test database, copied
with CREATE DATABASE ... TEMPLATE (so the role needs CREATEDB), each test's copy in one database that the
next test drops."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Hashable
from pathlib import Path

from sqlalchemy import TextClause, create_engine, make_url, text

from sharedcare.store.database import Database


class StoreTemplates:
    def __init__(self, folder: Path, postgres_url: str | None) -> None:
        self.folder = folder
        self.postgres_url = postgres_url
        self.made: dict[tuple[str, Hashable], str] = {}  # (backend, key) -> SQLite file or PostgreSQL database

    def template(self, backend: str, key: Hashable, fill: Callable[[Database], None]) -> str:
        """The template for `key`, made on first use: the migrated store filled by `fill` (the migrated store
        itself is `migrated`, made by migrating)."""
        if (backend, key) not in self.made:
            migrated = None if key == "migrated" else self.template(backend, "migrated", Database.migrate)
            name = f"t{len(self.made)}"
            if backend == "sqlite":
                url = self._sqlite(name, migrated)
            else:
                url = self._postgres(name, migrated or "template0")
            database = Database(url)
            try:
                fill(database)
            finally:
                database.dispose()  # a PostgreSQL template may have no one connected
            self.made[backend, key] = str(make_url(url).database)
            if backend == "sqlite":
                assert not Path(f"{self.made[backend, key]}-wal").exists(), "the template is not whole in its file"
        return self.made[backend, key]

    def copy(self, backend: str, template: str, folder: Path) -> str:
        """The URL of a new store that is a copy of `template` (made in `folder` on SQLite)."""
        if backend == "sqlite":
            return self._sqlite("sharedcare", template, folder)
        return self._postgres("each", template)

    def drop(self) -> None:
        """Drop the PostgreSQL databases made (the SQLite files go with the session's temporary folder)."""
        if self.postgres_url:
            names = [name for (backend, _), name in self.made.items() if backend == "postgresql"]
            for name in [self._name("each"), *names]:
                self._drop(name)

    def _sqlite(self, name: str, template: str | None = None, folder: Path | None = None) -> str:
        path = (folder or self.folder) / f"{name}.db"
        if template:
            shutil.copyfile(template, path)
        return f"sqlite:///{path}"

    def _postgres(self, name: str, template: str) -> str:
        database = self._name(name)
        self._drop(database)
        self._admin(f'CREATE DATABASE "{database}" TEMPLATE "{template}"')
        assert self.postgres_url is not None
        return make_url(self.postgres_url).set(database=database).render_as_string(hide_password=False)

    def _name(self, name: str) -> str:
        assert self.postgres_url is not None
        return f"{make_url(self.postgres_url).database}_{name}"

    def _drop(self, database: str) -> None:
        """Drop a database, first closing what a finished test left connected to it. Not WITH (FORCE): that
        refuses to end an autovacuum worker (another role's process) where a plain DROP ends it itself."""
        self._admin(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :database "
                         "AND usename = current_user AND pid <> pg_backend_pid()").bindparams(database=database),
                    f'DROP DATABASE IF EXISTS "{database}"')  # waits up to 5 s for the ended ones to go

    def _admin(self, *statements: str | TextClause) -> None:
        """CREATE and DROP DATABASE, run outside a transaction on the named test database."""
        assert self.postgres_url is not None
        engine = create_engine(self.postgres_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement) if isinstance(statement, str) else statement)
        engine.dispose()
