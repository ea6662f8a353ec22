"""Migrations build exactly the schema the code expects, on both stores, and can be undone."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from tests.builders import bundle, condition, downgrade_store, patient, write_ndjson

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import Base, Resource, ResourceVersion


def test_the_migrated_schema_matches_the_models(db: Database) -> None:
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_migrations_downgrade_to_nothing_and_upgrade_again(db: Database) -> None:
    downgrade_store(db, "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    db.migrate()
    assert {"resources", "audit_events", "patient_records"} <= set(inspect(db.engine).get_table_names())


def test_migrating_twice_changes_nothing(db: Database) -> None:
    db.migrate()
    with db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    assert current == ScriptDirectory.from_config(db.alembic_config()).get_current_head()


def test_versions_stored_before_they_kept_their_patient_are_given_the_resources_patient(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    for n, display in enumerate(("Diabetes", "Type 2 diabetes")):
        message = bundle("P81001", "emis", [patient("a", None, "Hughes", "Margaret", "1952-06-11", gender="female"),
                                            condition("a-c", "Patient/a", "44054006", display)],
                         timestamp=f"2026-11-0{n + 1}T09:00:00Z")
        Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / f"{n}.ndjson", [message])])
    downgrade_store(db, "0011")
    assert "patient_record_id" not in {c["name"] for c in inspect(db.engine).get_columns("resource_versions")}
    db.migrate()
    with db.session() as s:
        resource = s.scalars(select(Resource).where(Resource.source_id == "a-c")).one()
        (version,) = s.scalars(select(ResourceVersion).where(ResourceVersion.resource_id == resource.id))
        assert version.version == 1 and version.content["code"]["coding"][0]["display"] == "Diabetes"
        assert version.patient_record_id == resource.patient_record_id is not None


def test_link_moves_survive_a_downgrade_to_the_json_list_and_back(db: Database, framework: Framework,
                                                                  tmp_path: Path) -> None:
    from sharedcare.identity.links import merge_persons, separate
    from sharedcare.store.models import LinkEvent, PatientRecord

    message = bundle("P81001", "emis", [patient("a", None, "Hughes", "Margaret", "1952-06-11", gender="female")])
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "a.ndjson", [message])])
    with db.session() as s:
        record = s.scalars(select(PatientRecord)).one()
        first = record.person_id
        separate(s, record.id, by="test", reason="apart")
    with db.session() as s:
        second = s.get_one(PatientRecord, record.id).person_id
        merge_persons(s, first, second, by="test", reason="together")

    def moves() -> list[tuple[str, list[tuple[int, str, str]]]]:
        with db.session() as s:
            return [(e.kind, [(m.patient_record_id, m.from_person, m.to_person) for m in e.moves])
                    for e in s.scalars(select(LinkEvent).order_by(LinkEvent.id))]

    before = moves()
    assert before == [("separate", [(record.id, first, second)]), ("merge", [(record.id, second, first)])]
    downgrade_store(db, "0013")
    assert "link_moves" not in inspect(db.engine).get_table_names()
    db.migrate()
    assert moves() == before


def test_a_superseded_quarantine_item_is_held_again_below_0021_and_kept_byte_for_byte(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """The older code cannot say why an item is not waiting: downgraded, it waits again (HAZ-13)."""
    from sharedcare.store.models import Quarantine

    def sent(nhs: str, at: str) -> dict[str, object]:
        message = bundle("P81001", "emis", [patient("a", nhs, "Hughes", "Margaret", "1952-06-11")], timestamp=at)
        return message | {"identifier": {"system": "https://emis.example/messages", "value": "M-1"}}

    pipeline = Pipeline(db, framework)
    pipeline.ingest_paths([write_ndjson(tmp_path / "1.ndjson", [sent("1234567890", "2026-11-01T09:00:00Z")])])
    pipeline.ingest_paths([write_ndjson(tmp_path / "2.ndjson", [sent("9434765919", "2026-11-01T10:00:00Z")])])
    with db.session() as s:
        item = s.scalars(select(Quarantine)).one()
        assert item.status == "superseded"
        payload = item.payload
    downgrade_store(db, "0020")
    assert "superseded_by" not in {c["name"] for c in inspect(db.engine).get_columns("quarantine")}
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT status, payload FROM quarantine").one() == ("held", payload)
    db.migrate()
    with db.session() as s:
        item = s.scalars(select(Quarantine)).one()
        # held again, and keyed again from its bytes (0022): the next corrected copy supersedes it
        assert (item.status, item.payload, item.message_key, item.superseded_by) == (
            "held", payload, "Bundle.identifier https://emis.example/messages|M-1", None)


def test_a_persons_active_bases_are_indexed_and_the_index_goes_on_downgrade(db: Database) -> None:
    """A link event looks up the bases of the persons it moved by this index (0026) instead of reading every
    active basis of the store."""
    def indexes() -> set[str]:
        return {i["name"] for i in inspect(db.engine).get_indexes("access_bases")}

    assert "ix_access_bases_person_expires" in indexes()
    downgrade_store(db, "0025")
    assert "ix_access_bases_person_expires" not in indexes()
    db.migrate()
    assert "ix_access_bases_person_expires" in indexes()


def test_a_store_rolled_back_below_0024_and_upgraded_again_keeps_one_chain_marker_and_verifies(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """0024's upgrade appended its unkeyed `audit:chain:keyed` marker again after a downgrade: the second came
    after keyed entries, `audit verify` reported it forged and checkpoints were refused, for ever."""
    from sharedcare.governance.audit import AuditAction, key_problem, verify
    from sharedcare.store.models import AuditEntry

    message = bundle("P81001", "emis", [patient("a", None, "Hughes", "Margaret", "1952-06-11", gender="female")])
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "a.ndjson", [message])])

    def markers() -> list[int]:
        with db.session() as s:
            return list(s.scalars(select(AuditEntry.seq).where(AuditEntry.action == AuditAction.CHAIN_KEYED.value)))

    before = markers()
    assert len(before) == 1
    downgrade_store(db, "0022")
    db.migrate()
    assert markers() == before
    with db.session() as s:
        result = verify(s)
        assert result.ok, result.problem
        assert key_problem(s) is None


def test_link_moves_keep_the_records_previous_status_and_the_columns_go_on_downgrade(db: Database) -> None:
    """An unmerge restores each record's link status and method from its move (0028)."""
    def columns() -> set[str]:
        return {c["name"] for c in inspect(db.engine).get_columns("link_moves")}

    assert {"from_status", "from_method"} <= columns()
    downgrade_store(db, "0027")
    assert not {"from_status", "from_method"} & columns()
    db.migrate()
    assert {"from_status", "from_method"} <= columns()


def test_link_events_name_the_review_item_a_reviewer_decided_and_stores_before_0032_read_it_from_the_reason(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A reviewer's separate and link name their review item (0032); an operator's do not, whatever their reason
    says. A store migrated from below 0032 reads the item from `decide`'s reasons once, as the code read them
    (the item's record moved): the same as the code now writes."""
    from tests.identity.test_review_decisions import _arrives, _ids

    from sharedcare.clock import utcnow
    from sharedcare.identity.links import decide, merge_persons, separate
    from sharedcare.store.models import LinkEvent, MatchReview, PatientRecord

    for org, sid in (("P81001", "a"), ("P81002", "b"), ("P81003", "c")):
        _arrives(db, framework, tmp_path, org, sid, "Diabetes")
    ids = _ids(db)
    with db.session() as s:
        item = MatchReview(record_a=ids["a"], record_b=ids["b"], probability=0.99, evidence={}, created_at=utcnow(),
                           status="open")
        s.add(item)
        s.flush()
        decide(s, item.id, "separate", by="reviewer1", reason="two women")
        decide(s, item.id, "link", by="reviewer2", reason="one woman after all", was="separate")
        separate(s, ids["c"], by="mpi.operator", reason=f"review #{item.id}: different people: as for b")
        a, c = (s.get_one(PatientRecord, ids[sid]).person_id for sid in "ac")
        merge_persons(s, a, c, by="mpi.operator", reason=f"review #{item.id}: same person: as for b")
        separate(s, ids["c"], by="mpi.operator", reason="not her")
        review = item.id

    def named() -> list[tuple[str, str, int | None]]:
        with db.session() as s:
            return [(e.kind, e.by, e.match_review_id) for e in s.scalars(select(LinkEvent).order_by(LinkEvent.id))]

    before = named()
    assert before == [("separate", "reviewer1", review), ("merge", "reviewer2", review),
                      ("separate", "mpi.operator", None), ("merge", "mpi.operator", None),
                      ("separate", "mpi.operator", None)]
    downgrade_store(db, "0032-1")
    assert "match_review_id" not in {c["name"] for c in inspect(db.engine).get_columns("link_events")}
    db.migrate()
    assert named() == before


def test_the_audit_head_steps_once_an_append_either_side_of_0034(db: Database) -> None:
    """0034 moves PostgreSQL's step of the head after the entry's insert, for its guard to find the entry: rolled
    back, the step is 0031's again (0033 changes none of it), and neither store steps twice nor not at all."""
    from tests.governance.test_audit import _write

    from sharedcare.governance.audit import verify
    from sharedcare.store.models import AuditHead

    downgrade_store(db, "0033")
    before = _write(db, 2)
    db.migrate()
    after = _write(db, 2)
    with db.session() as s:
        result, head = verify(s), s.get_one(AuditHead, 1)
    assert result.ok and after == [before[-1] + 1, before[-1] + 2] == [head.seq - 1, head.seq]
