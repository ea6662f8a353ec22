"""How many processes an export runs in. A spawned worker imports the service and reads the framework before
its first person (about a CPU-second, what exporting 2,000 people costs): two workers made an export of 2,000
people slower than one process (2.1-3.3 s against 1.4 s, benchmarks/export.py --orders). A worker is started
only for `export_people_per_worker` people (default 5,000); the files are the same, byte for byte."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tests import builders
from tests.conftest import DEPLOYMENT_KEYS

from sharedcare.config import load_settings
from sharedcare.export.jobs import ExportJobs, shard_count
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.secondary import ExportScope
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

PEOPLE = 30


def _export(db: Database, framework: Framework, folder: Path, **settings: int) -> tuple[dict[str, bytes], int]:
    jobs = ExportJobs(db, framework, replace(load_settings(), data_path=folder, **settings))
    job = jobs.start(actor_for(framework, "analyst.chen"), ExportScope("system"), "test", out_dir=folder / "out",
                     background=False)
    view = jobs.run(job)
    assert view.status == "completed"
    return {o["file"]: (folder / "out" / o["file"]).read_bytes() for o in view.output}, view.summary["people_included"]


def test_a_small_export_runs_in_one_process_and_writes_what_two_would(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = builders.different_people(PEOPLE)
    resources += [builders.condition(f"c{n}", f"Patient/p{n}", "44054006", "Type 2 diabetes mellitus")
                  for n in range(PEOPLE)]
    path = builders.write_ndjson(tmp_path / "gp.ndjson", [builders.bundle("P81001", "emis", resources)])
    assert Pipeline(db, framework).ingest_paths([path]).quarantined == 0
    for name, value in DEPLOYMENT_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SHAREDCARE_EXPORT_PEOPLE_PER_WORKER", raising=False)
    # two processes, however few the people (as before)
    two, seen = _export(db, framework, tmp_path / "two", export_workers=2, export_people_per_worker=1)
    assert seen == PEOPLE

    def no_processes(self: ExportJobs, tasks: list[object], on_people: object) -> None:
        raise AssertionError(f"{len(tasks)} worker processes started for an export of {PEOPLE} people")

    monkeypatch.setattr(ExportJobs, "_in_processes", no_processes)
    one, seen = _export(db, framework, tmp_path / "one", export_workers=2)  # the default people per worker
    assert seen == PEOPLE
    assert one == two  # the same files, byte for byte: in the order of the pseudonyms either way
    assert set(one) >= {"Patient.ndjson", "Condition.ndjson"}


def test_workers_are_started_for_enough_people_each() -> None:
    assert load_settings().export_people_per_worker == 5000
    assert [shard_count(people, 2, 5000) for people in (0, 30, 2000, 9999, 10_000, 100_000)] == [1, 1, 1, 1, 2, 2]
    assert [shard_count(people, 4, 5000) for people in (14_999, 15_000, 100_000)] == [2, 3, 4]
    assert shard_count(100_000, 1, 5000) == 1
