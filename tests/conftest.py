"""Shared fixtures. Every test that takes `db` runs on SQLite and, when SHAREDCARE_TEST_POSTGRES names
a server (CI always does), again on PostgreSQL: the same code and tests on both stores."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text
from tests.portal_client import PortalClient
from tests.store_templates import StoreTemplates

from sharedcare.api import transparency
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
# what a deployment sets instead of SHAREDCARE_DEMO=1 (which `serve` refuses beside PostgreSQL or TLS)
DEPLOYMENT_KEYS = {"SHAREDCARE_SECRET": "a deployment secret of at least thirty-two bytes",
                   "SHAREDCARE_PSEUDONYM_KEY": "a pseudonym key of its own, of at least thirty-two bytes"}
# The audit chain's key of every store and command in the run, kept apart from the secret as README advises a
# deployment to: a test that sets SHAREDCARE_SECRET (`deployment_keys`) after its store was written still runs
# commands on it, which a command whose key is not the log's refuses (`audit.key_problem`).
AUDIT_KEY = os.environ.setdefault("SHAREDCARE_AUDIT_KEY", "the test run's audit key of at least thirty-two bytes")


def _fresh_postgres(url: str) -> str:
    """Empty the test database's schema so each test starts from nothing, then hand it over."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture
def deployment_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys in the environment as a deployment sets them: a `serve` started by the test runs outside demo mode,
    and the test's own tokens and apps (made after this fixture) are signed with the same secret."""
    for name, value in DEPLOYMENT_KEYS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def env(db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    """The test's store and the example framework in the environment, where a CLI command run in process
    (`typer.testing.CliRunner`) reads its settings."""
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    return db


@pytest.fixture(scope="session")
def store_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreTemplates]:
    templates = StoreTemplates(tmp_path_factory.mktemp("templates"), POSTGRES_URL)
    yield templates
    templates.drop()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, store_templates: StoreTemplates) -> str:
    """The URL of this test's own store: a copy of one fresh from the migrations or, for a test that takes
    `ics`, of one holding the small ICS too (tests/small_ics.py), each made once a session."""
    if "ics" in request.fixturenames:
        from tests.small_ics import ingest_small_ics  # here: imported first as a plugin, its asserts rewritten

        framework = request.getfixturevalue("framework")
        template = store_templates.template(request.param, ("ics", id(framework)),
                                            partial(ingest_small_ics, framework=framework,
                                                    folder=store_templates.folder))
    else:
        template = store_templates.template(request.param, "migrated", Database.migrate)
    return store_templates.copy(request.param, template, tmp_path)


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
def client(db: Database, framework: Framework, tmp_path: Path) -> Iterator[TestClient]:
    """The app on the test's store, writing its files (Bulk exports) inside the test's folder, and running an
    export in one process (tests/export/test_synthetic_export.py runs them in several)."""
    settings = replace(load_settings(), database_url=str(db.url), framework_path=FRAMEWORK_PATH, demo=True,
                       data_path=tmp_path / "data", export_workers=1)
    with PortalClient(create_app(settings, framework=framework, database=db)) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def fresh_refusal_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no refusals (nor audit proofs) counted against its client's address, and no proofs
    kept from other tests (the limits and the proofs are per process)."""
    monkeypatch.setattr(audit, "REFUSALS", audit.RefusalLimiter())
    monkeypatch.setattr(transparency, "PROOFS", audit.RefusalLimiter(per_minute=transparency.PROOFS.per_minute,
                                                                      per_minute_all=transparency.PROOFS.per_minute_all))
    monkeypatch.setattr(transparency, "KEPT", transparency.KeptProofs())
