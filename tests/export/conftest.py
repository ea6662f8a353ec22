"""Bulk export helpers: a whole `$export` walked as a client would (kick-off, poll, download), and the
exact counts the IG sees. The root conftest's app writes its export files under the test's own folder."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sharedcare.export import jobs
from sharedcare.governance.framework import Framework
from sharedcare.governance.small_cells import SmallCells
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry
from sharedcare.synth import generate

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


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


@pytest.fixture
def patients_as_pseudonymised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Patient of an extract written as the pseudonymiser gave it, for the tests of which Patient that
    is (the demographics rule, the date of birth anchoring the shift) on stores of two or three people:
    there the small-cell check would leave everyone without quasi-identifiers (and their clinical resources
    without organisations). The check itself is tested on a synthetic ICS (test_small_cells.py)."""
    monkeypatch.setattr(jobs, "screen", unscreened)


def unscreened(lines: Iterable[bytes], k: int) -> tuple[Iterable[bytes], SmallCells]:
    """In place of `small_cells.screen`: every Patient line as the pseudonymiser wrote it."""
    return lines, SmallCells(k)


def synthetic_store(folder: Path, fw: Framework, people: int, seed: int) -> Iterator[Database]:
    """A synthetic ICS of `people` ingested into a new SQLite store in `folder` (for a module's fixture)."""
    generate(folder / "ics", people=people, seed=seed, framework=fw)
    database = Database(f"sqlite:///{folder / 'ics.db'}")
    database.migrate()
    Pipeline(database, fw).ingest_paths([folder / "ics"])
    yield database
    database.dispose()
