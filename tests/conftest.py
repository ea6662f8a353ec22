"""Shared fixtures. Every test that takes `db` runs on SQLite and, when SHAREDCARE_TEST_POSTGRES names
a server (CI always does), again on PostgreSQL: the same code and tests on both stores."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, make_url, select, text
from tests.portal_client import PortalClient

from sharedcare.api.app import create_app
from sharedcare.config import PROJECT_ROOT, load_settings
from sharedcare.governance import audit, gateway
from sharedcare.governance.content_cache import cache_of
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.governance.gateway import ServedResource
from sharedcare.store.database import Database
from sharedcare.store.models import Resource

pytest_plugins = ["tests.small_ics"]

POSTGRES_URL = os.environ.get("SHAREDCARE_TEST_POSTGRES")
BACKENDS = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])
FRAMEWORK_PATH = PROJECT_ROOT / "config" / "framework.yaml"


def _fresh_postgres(url: str) -> str:
    """Empty the test database's schema so each test starts from nothing, then hand it over."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def _postgres_database(suffix: str) -> tuple[str, str]:
    """The name and URL of a database the tests make beside the named one (the role needs CREATEDB)."""
    assert POSTGRES_URL is not None
    url = make_url(POSTGRES_URL)
    name = f"{url.database}_{suffix}"
    return name, url.set(database=name).render_as_string(hide_password=False)


def _postgres_admin(*statements: str) -> None:
    """Run statements outside a transaction (CREATE and DROP DATABASE) on the named test database."""
    assert POSTGRES_URL is not None
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store fresh from the migrations, made once a session: each test's store is a copy of the
    file rather than migrated again."""
    path = tmp_path_factory.mktemp("migrated") / "sharedcare.db"
    database = Database(f"sqlite:///{path}")
    database.migrate()
    database.dispose()
    assert not path.with_name(f"{path.name}-wal").exists(), "the migrated store is not yet whole in its file"
    return path


@pytest.fixture(scope="session")
def migrated_postgres() -> Iterator[str]:
    """A PostgreSQL database fresh from the migrations, made once a session: each test's store is made
    from it with CREATE DATABASE ... TEMPLATE rather than migrated again."""
    template, url = _postgres_database("template")
    _postgres_admin(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)',
                    f'CREATE DATABASE "{template}" TEMPLATE template0')
    database = Database(url)
    database.migrate()
    database.dispose()  # a template may have no one connected
    yield template
    _postgres_admin(f'DROP DATABASE IF EXISTS "{_postgres_database("each")[0]}" WITH (FORCE)',
                    f'DROP DATABASE "{template}"')


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of this test's own store, fresh from the migrations and holding nothing else."""
    if request.param == "postgresql":
        name, url = _postgres_database("each")
        _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',  # closes what the last test left open
                        f'CREATE DATABASE "{name}" TEMPLATE "{request.getfixturevalue("migrated_postgres")}"')
        return url
    path = tmp_path / "sharedcare.db"
    shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
    return f"sqlite:///{path}"


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    wait_for_exports()
    check_cached_documents(database)
    database.dispose()


def wait_for_exports() -> None:
    """A test may end while a Bulk export it started still runs in its thread: let it finish against this
    test's store, or the next test drops its PostgreSQL database under it."""
    for thread in threading.enumerate():
        if thread.name.startswith("export-"):
            thread.join(timeout=60)
            assert not thread.is_alive(), f"{thread.name} still running a minute after its test ended"


def check_cached_documents(database: Database) -> None:
    """Every document the read path's cache holds is what the store holds for its stamp, and every shape
    served from one is what its JSON says: nothing a test did (a request, a page, an export) changed a
    shared document or shape in place."""
    held = list(cache_of(database.engine).entries())
    table = Resource.__table__
    columns = (table.c.id, *gateway._STAMP_COLUMNS, table.c.content)  # the stamp as the read path reads it
    with database.engine.connect() as connection:
        for start in range(0, len(held), 500):
            chunk = held[start:start + 500]
            stored = {rid: ((version, digest, received), content) for rid, version, digest, received, content
                      in connection.execute(select(*columns).where(table.c.id.in_([rid for rid, _, _ in chunk])))}
            for rid, stamp, content in chunk:
                if rid in stored and stored[rid][0] == stamp:
                    assert content == stored[rid][1], f"the cached document of {rid} was changed in place"
    for rid, _, made in cache_of(database.engine).made():
        if isinstance(made, ServedResource) and made.encoded is not None:
            assert made.content == orjson.loads(made.encoded), f"the served shape of {rid} was changed in place"


@pytest.fixture(scope="session")
def framework() -> Framework:
    return load_framework(FRAMEWORK_PATH)


@pytest.fixture
def client(db: Database, framework: Framework) -> Iterator[TestClient]:
    settings = replace(load_settings(), database_url=str(db.url), framework_path=FRAMEWORK_PATH, demo=True)
    with PortalClient(create_app(settings, framework=framework, database=db)) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def fresh_refusal_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no refusals counted against its client's address (the limit is per process)."""
    monkeypatch.setattr(audit, "REFUSALS", audit.RefusalLimiter())
