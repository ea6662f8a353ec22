"""The export reads the store a few hundred people at a time, by the person index. On SQLite a filter naming
every type made the planner read the rows by the type index and sort all of them (documents included) before
handing over the first: an export of a large store then waited, and used temporary disk, for as long as it
took to sort it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from tests import builders

from sharedcare.config import load_settings
from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.secondary import ExportCounts, ExportScope, SecondaryUse
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database


def _stream_plan(db: Database, framework: Framework, scope: ExportScope, shard: tuple[int, int]) -> str:
    """SQLite's plan for the statement the export streams its rows with."""
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", seen)
    secondary = SecondaryUse(db, framework, load_settings().secret, actor_for(framework, "analyst.chen"),
                             "secondary-use")
    list(secondary.stream(scope, ExportCounts(), shard=shard))
    event.remove(db.engine, "before_cursor_execute", seen)
    statement, parameters = next((s, p) for s, p in statements if "CAST(resources.content AS TEXT)" in s)
    with db.engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    return "\n".join(str(row[-1]) for row in plan)


@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
@pytest.mark.parametrize("scope", [ExportScope("system"), ExportScope("system", types=RECORD_TYPES),
                                   ExportScope("group", "P81001")],
                         ids=["system", "every-type-named", "group"])  # the API names every type it may export
def test_an_export_of_every_type_reads_the_people_by_the_person_index_without_sorting_the_rows(
        tmp_path: Path, framework: Framework, scope: ExportScope, shard: tuple[int, int]) -> None:
    db = Database(f"sqlite:///{tmp_path / 'plan.db'}")
    db.migrate()  # a few people: without statistics (no ANALYZE) the plan does not depend on the tables' size
    # 20 people, so that each of two shards (runs of pseudonyms) holds one but once in a million runs
    people = builders.bundle("P81001", "emis", builders.different_people(20))
    path = builders.write_ndjson(tmp_path / "gp.ndjson", [people])
    assert Pipeline(db, framework).ingest_paths([path]).quarantined == 0
    plan = _stream_plan(db, framework, scope, shard)
    assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
    assert "ix_patient_records_person" in plan, plan
    db.dispose()
