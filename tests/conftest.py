"""Shared fixtures. Every test that takes `db` runs on SQLite and, when SHAREDCARE_TEST_POSTGRES names
a server (CI always does), again on PostgreSQL: the same code and tests on both stores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from tests.portal_client import PortalClient

from sharedcare.api.app import create_app
from sharedcare.config import PROJECT_ROOT, load_settings
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.store.database import Database

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


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        assert POSTGRES_URL is not None
        return _fresh_postgres(POSTGRES_URL)
    return f"sqlite:///{tmp_path / 'sharedcare.db'}"


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def framework() -> Framework:
    return load_framework(FRAMEWORK_PATH)


@pytest.fixture
def client(db: Database, framework: Framework) -> Iterator[TestClient]:
    settings = replace(load_settings(), database_url=str(db.url), framework_path=FRAMEWORK_PATH, demo=True)
    with PortalClient(create_app(settings, framework=framework, database=db)) as test_client:
        yield test_client
