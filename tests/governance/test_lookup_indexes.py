"""The citizen's "who looked at my record", the IG officer's search by patient and the IG queue's "whose
record is it now" each ask which records moved to or from a person; a citizen signing in is refused a code
when five were issued to them in the last hour. Those questions must be answered from an index: a store
that has been relinked holds a link move for many of its records, and reading all of them for every page
made each page as slow as the whole MPI history is long; the sign-in codes are counted while the sign-in
holds the audit chain's write lock, which every governed read waits for."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from tests.builders import bundle, patient, write_ndjson

from sharedcare.clock import utcnow
from sharedcare.governance import access_log
from sharedcare.governance.framework import Framework
from sharedcare.governance.workspace import CitizenSignIn
from sharedcare.identity.links import separate
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord


def _plans(db: Database, table: str, work: Any) -> dict[str, str]:
    """SQLite's plan for each statement `work` runs that reads `table`."""
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if table in statement and not statement.startswith("INSERT"):
            statements.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        with db.session() as s:
            work(s)
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    with db.engine.connect() as conn:
        return {statement: "\n".join(str(row[-1]) for row in conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {statement}", parameters).all()) for statement, parameters in statements}


def _store(tmp_path: Path, framework: Framework) -> Database:
    """Two source records of one person."""
    db = Database(f"sqlite:///{tmp_path / 'plan.db'}")
    db.migrate()  # no statistics (no ANALYZE): the plan does not depend on the tables' size
    twins = [bundle(org, system, [patient(source, "9434765919", "Hughes", "Margaret", "1952-06-11", gender="female")])
             for org, system, source in (("P81001", "emis", "a"), ("RXR", "epr", "b"))]
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "twins.ndjson", twins)])
    return db


def test_the_access_log_the_ig_search_and_queue_find_a_persons_link_moves_by_index(
        tmp_path: Path, framework: Framework) -> None:
    db = _store(tmp_path, framework)
    with db.session() as s:
        record = s.scalars(select(PatientRecord).order_by(PatientRecord.id)).first()
        assert record is not None
        person = record.person_id
        separate(s, record.id, by="test", reason="two people")  # a record has now left `person`

    def read(s: Any) -> None:
        access_log.accesses_of(s, framework, person)
        access_log.search(s, patient_id=person)
        access_log.holders_now(s, person, utcnow())

    plans = _plans(db, "link_moves", read)
    assert any("from_person" in statement for statement in plans)
    assert any("to_person" in statement for statement in plans)
    for statement, plan in plans.items():
        assert "SCAN link_moves" not in plan, f"{statement}\n{plan}"
    db.dispose()


def test_the_codes_a_citizen_was_sent_in_the_last_hour_are_counted_by_index(tmp_path: Path,
                                                                           framework: Framework) -> None:
    db = _store(tmp_path, framework)

    def sign_in(s: Any) -> None:
        assert CitizenSignIn(s, framework).start("9434765919", date(1952, 6, 11)).code is not None

    plans = _plans(db, "sign_in_codes", sign_in)
    assert any("count" in statement for statement in plans)
    for statement, plan in plans.items():
        assert "SCAN sign_in_codes" not in plan, f"{statement}\n{plan}"
    db.dispose()
