"""A reviewer's decision holds: an unmerge, a second reviewer, an operator's merge or a source's A40 cannot
undo it silently, and every decision is audited. Two GP records for Margaret Hughes, Diabetes in record a
and HIV infection in record b, seen through the governance gateway as a clinician sees them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from tests.builders import bundle, condition, patient, write_ndjson

from sharedcare.clock import utcnow
from sharedcare.governance.access_log import search
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.identity.links import LinkError, decide, unmerge
from sharedcare.identity.mpi import relink
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, LinkEvent, MatchReview, PatientRecord


def _people(db: Database) -> dict[str, str]:
    with db.session() as s:
        return {r.source_id: r.person_id for r in s.scalars(select(PatientRecord))}


def _ids(db: Database) -> dict[str, int]:
    with db.session() as s:
        return {r.source_id: r.id for r in s.scalars(select(PatientRecord))}


def _item(db: Database, item_id: int) -> MatchReview:
    with db.session() as s:
        item = s.get_one(MatchReview, item_id)
        s.expunge(item)
        return item


def _details(entry: AuditEntry) -> dict[str, str]:
    """An audit entry's decision details (reason, review, status, was) by name."""
    return {d["type"]: d["valueString"] for e in entry.event["entity"] if e.get("name") == "decision"
            for d in e["detail"]}


def _conditions(db: Database, fw: Framework, person: str) -> set[str]:
    """What dr.patel sees of the person's conditions, through the governance gateway."""
    with db.session() as s:
        g = GovernedRecords(s, fw, actor_for(fw, "dr.patel"))
        g.record_basis(person, "explicit-consent", "checking the record")
        return {r.content["code"]["coding"][0]["display"] for r in g.everything(person).resources
                if r.content["resourceType"] == "Condition"}


def _arrives(db: Database, fw: Framework, tmp: Path, org: str, sid: str, cond: str, **details: str) -> None:
    d = {"given": "Margaret", "born": "1952-06-11", "postcode": "RV1 2AB"} | details
    Pipeline(db, fw).ingest_paths([write_ndjson(tmp / f"{org}-{sid}.ndjson", [bundle(org, "x", [
        patient(sid, None, "Hughes", d["given"], d["born"], "female", d["postcode"]),
        condition(f"{sid}-c", f"Patient/{sid}", "44054006", cond)])])])


def _two_women(db: Database, fw: Framework, tmp: Path) -> int:
    """Margaret (Diabetes) and Peggy (HIV infection): two persons, their pair on the review list."""
    _arrives(db, fw, tmp, "P81001", "a", "Diabetes")
    _arrives(db, fw, tmp, "P81002", "b", "HIV infection", given="Peggy", born="1953-02-17", postcode="RV4 4BB")
    ids = _ids(db)
    with db.session() as s:
        item = MatchReview(record_a=ids["a"], record_b=ids["b"], probability=0.9, evidence={},
                           created_at=utcnow(), status="open")
        s.add(item)
        s.flush()
        return item.id


def test_an_unmerged_reviewers_link_stays_apart_after_the_next_relink(db: Database, framework: Framework,
                                                                        tmp_path: Path) -> None:
    """Until 2026-12-07 the item stayed "linked" after the unmerge, and the relink, keeping reviewers' links,
    joined the two women again: Margaret's record showed Peggy's HIV diagnosis."""
    item = _two_women(db, framework, tmp_path)
    with db.session() as s:
        decide(s, item, "link", by="reviewer1", reason="same woman, known as Peggy")
        merge = s.scalars(select(LinkEvent).where(LinkEvent.kind == "merge")).one().id
    with db.session() as s, pytest.raises(LinkError, match=f"say why .*review #{item} linked \\(reviewer1\\)"):
        unmerge(s, merge, by="mpi.operator")
    with db.session() as s:
        done = unmerge(s, merge, by="mpi.operator", reason="wrong link: two different women")
        assert [i.id for i in done.separated] == [item]
    with db.session() as s:
        relink(s)
    p = _people(db)
    assert p["a"] != p["b"]
    assert _conditions(db, framework, p["a"]) == {"Diabetes"}
    decided = _item(db, item)
    assert (decided.status, decided.decided_by) == ("separate", "mpi.operator")
    last = decided.evidence["decisions"][-1]
    assert (last["was"], last["by"]) == ("linked", "mpi.operator")
    assert last["reason"].endswith("wrong link: two different women")
    with db.session() as s:
        [entry] = search(s, username="mpi.operator", actions=("identity:mpi:review-decided",))
        found = _details(entry)
    assert (found["review"], found["status"], found["was"]) == (str(item), "separate", "linked")
    assert found["reason"].endswith("wrong link: two different women")
