"""Bulk export fixtures: the app writes its export files under the test's own folder, and a helper
walks a whole `$export` as a client would (kick-off, poll, download)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.conftest import FRAMEWORK_PATH
from tests.portal_client import PortalClient

from sharedcare.api.app import create_app
from sharedcare.config import load_settings
from sharedcare.governance.framework import Framework
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@pytest.fixture
def client(db: Database, framework: Framework, tmp_path: Path) -> Iterator[TestClient]:
    """The app of the root conftest, with its data folder (export files) inside this test's folder, and
    exports run in one process (test_synthetic_export runs them in several)."""
    settings = replace(load_settings(), database_url=str(db.url), framework_path=FRAMEWORK_PATH, demo=True,
                       data_path=tmp_path / "data", export_workers=1)
    with PortalClient(create_app(settings, framework=framework, database=db)) as test_client:
        yield test_client


def wait_for(client: TestClient, status_url: str, headers: dict[str, str], seconds: float = 60) -> Any:
    """Poll a status URL as the Bulk Data spec asks until it stops answering 202."""
    deadline = time.monotonic() + seconds
    while True:
        response = client.get(status_url, headers=headers)
        if response.status_code != 202:
            return response
        # progress in tens of percent, never a count of the people in scope (TRUST SU2, SU3)
        assert re.fullmatch(r"(100|[1-9]?0)% done", response.headers["X-Progress"]), response.headers["X-Progress"]
        assert time.monotonic() < deadline, "the export did not finish"
        time.sleep(0.05)


def export(client: TestClient, headers: dict[str, str], path: str = "/fhir/$export",
           params: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Kick off, wait, download every file: (manifest, resources by type)."""
    kick_off = client.get(path, params=params or {}, headers={**headers, **ASYNC})
    assert kick_off.status_code == 202, kick_off.text
    done = wait_for(client, kick_off.headers["Content-Location"], headers)
    assert done.status_code == 200, done.text
    manifest = done.json()
    files: dict[str, list[dict[str, Any]]] = {}
    for entry in manifest["output"]:
        response = client.get(entry["url"], headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+ndjson")
        files[entry["type"]] = [json.loads(line) for line in response.text.splitlines()]
        assert len(files[entry["type"]]) == entry["count"]
    return manifest, files


def exact_counts(db: Database) -> dict[str, Any]:
    """The newest export's exact counts, as the IG sees them in its audit entry (its recipient sees them
    with small numbers suppressed): people excluded by rule, and resources withheld by rule."""
    with db.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:complete")
                          .order_by(AuditEntry.seq.desc())).first()
        assert entry is not None, "no export completed"
        details = {d["type"]: d["valueString"] for d in entry.event["entity"][-1]["detail"]}
    return {"people_excluded": json.loads(details["people_excluded"]),
            "withheld": {key.removeprefix("withheld:"): int(value) for key, value in details.items()
                         if key.startswith("withheld:")}}
