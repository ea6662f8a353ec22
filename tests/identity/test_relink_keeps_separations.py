"""An operator's separation survives a relink as a reviewer's "separate" does (issue 4: decisions survive
relinking). Two GP records with Margaret Hughes's details, Diabetes in record a and HIV infection in record b,
linked on arrival; an operator takes b out (`links.separate`), or undoes a merge that joined them. Until
2026-12-07 the next relink joined them again (Margaret's record showed b's HIV diagnosis), and a correction of
b sent afterwards was held for review "where that decision put it", in her person."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from tests.identity.test_review_decisions import _arrives, _conditions
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.governance.framework import Framework
from sharedcare.identity.links import decide, merge_persons, separate, unmerge
from sharedcare.identity.mpi import relink
from sharedcare.store.database import Database
from sharedcare.store.models import LinkEvent, MatchReview, PatientRecord


def _records(db: Database) -> dict[str, PatientRecord]:
    with db.session() as s:
        found = {r.source_id: r for r in s.scalars(select(PatientRecord))}
        s.expunge_all()
        return found


def _one_woman_twice(db: Database, fw: Framework, tmp: Path) -> dict[str, PatientRecord]:
    _arrives(db, fw, tmp, "P81001", "a", "Diabetes")
    _arrives(db, fw, tmp, "P81002", "b", "HIV infection")
    r = _records(db)
    assert r["a"].person_id == r["b"].person_id  # linked on arrival
    return r


def _relinked(runner: CliRunner, tmp: Path) -> dict[str, int]:
    done = runner.invoke(app, ["mpi", "relink", "--json", "--model-out", str(tmp / "model.json")])
    assert done.exit_code == 0, done.output
    report: dict[str, int] = json.loads(done.stdout)
    return report


def test_an_operators_separation_survives_a_relink_which_says_it_kept_it(env: Database, framework: Framework,
                                                                       tmp_path: Path) -> None:
    r = _one_woman_twice(env, framework, tmp_path)
    with env.session() as s:
        separate(s, r["b"].id, by="mpi.operator", reason="two women: the practice checked")
    report = _relinked(CliRunner(), tmp_path)
    r = _records(env)
    assert r["a"].person_id != r["b"].person_id
    assert _conditions(env, framework, r["a"].person_id) == {"Diabetes"}
    assert report["operator_separations_kept"] == 1
    # b's practice corrects her name and address: she matches no one, and is where the operator put her
    _arrives(env, framework, tmp_path, "P81002", "b", "HIV infection", "2026-11-02T09:00:00Z", given="Helen",
             postcode="RV4 4BB")
    b = _records(env)["b"]
    assert (b.person_id, b.link_status, b.link_note) == (r["b"].person_id, "linked", None)
    assert _relinked(CliRunner(), tmp_path)["operator_separations_kept"] == 1  # still in force


def test_an_unmerge_survives_a_relink_and_a_later_merge_overrules_the_separation_it_undid(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Separated, merged again ("the same woman after all"), the merge undone ("no: two women"): the unmerge is
    the decision in force, not the separation the merge overruled."""
    r = _one_woman_twice(db, framework, tmp_path)
    with db.session() as s:
        separate(s, r["b"].id, by="mpi.operator", reason="two women?")
    b = _records(db)["b"].person_id
    with db.session() as s:
        merge = merge_persons(s, r["a"].person_id, b, by="mpi.operator", reason="the same woman after all").id
    with db.session() as s:
        merged, _ = relink(s)
    r = _records(db)
    assert r["a"].person_id == r["b"].person_id  # the merge holds
    with db.session() as s:
        unmerge(s, merge, by="mpi.operator", reason="no: two women")
    with db.session() as s:
        report, _ = relink(s)
    r = _records(db)
    assert r["a"].person_id != r["b"].person_id == b
    assert _conditions(db, framework, r["a"].person_id) == {"Diabetes"}
    assert (merged.operator_separations_kept, report.operator_separations_kept) == (0, 1)


def test_separating_a_record_a_reviewer_linked_marks_the_link_separate_so_a_relink_keeps_them_apart(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Margaret and Peggy, two persons on arrival, which a reviewer linked; an operator then takes Peggy's record
    out. Left "linked", the review item would have a relink join them again, a reviewer's link winning."""
    _arrives(db, framework, tmp_path, "P81001", "a", "Diabetes")
    _arrives(db, framework, tmp_path, "P81002", "b", "HIV infection", given="Peggy", born="1953-02-17",
             postcode="RV4 4BB")
    r = _records(db)
    with db.session() as s:
        item = MatchReview(record_a=r["a"].id, record_b=r["b"].id, probability=0.9, evidence={}, created_at=utcnow(),
                           status="open")
        s.add(item)
        s.flush()
        decide(s, item.id, "link", by="reviewer1", reason="Peggy is Margaret")
        item_id = item.id
    with db.session() as s:
        separate(s, r["b"].id, by="mpi.operator", reason="Peggy is her sister-in-law")
    with db.session() as s:
        found = s.get_one(MatchReview, item_id)
        assert (found.status, found.decided_by) == ("separate", "mpi.operator")
        assert found.evidence["decisions"][-1]["reason"].endswith("Peggy is her sister-in-law")
    with db.session() as s:
        relink(s)
    r = _records(db)
    assert r["a"].person_id != r["b"].person_id
    assert _conditions(db, framework, r["a"].person_id) == {"Diabetes"}


def _on_the_review_list(db: Database, r: dict[str, PatientRecord]) -> int:
    """The pair of records a and b, waiting for a reviewer."""
    with db.session() as s:
        item = MatchReview(record_a=r["a"].id, record_b=r["b"].id, probability=0.99, evidence={},
                           created_at=utcnow(), status="open")
        s.add(item)
        s.flush()
        return item.id


def test_an_operators_separation_whose_reason_reads_as_a_reviewers_is_kept_as_the_operators(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    """The operator quotes the pair's review item in the words a reviewer's decision is written in. Until
    2026-12-07 a reviewer's separate was told from an operator's by that text: the separation was taken for
    the undecided item's, which holds nothing, and the relink joined the women again (HIV infection shown in
    Margaret's record). The link event now keeps the review item it decided (migration 0032), set by
    `decide` alone."""
    r = _one_woman_twice(env, framework, tmp_path)
    item = _on_the_review_list(env, r)
    with env.session() as s:
        separate(s, r["b"].id, by="mpi.operator",
                 reason=f"review #{item}: different people: the practice checked, before any reviewer did")
    report = _relinked(CliRunner(), tmp_path)
    r = _records(env)
    assert _conditions(env, framework, r["a"].person_id) == {"Diabetes"}
    assert r["a"].person_id != r["b"].person_id
    assert report["operator_separations_kept"] == 1


def test_a_reviewers_separation_is_kept_by_its_review_item_and_counts_as_no_operators(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    r = _one_woman_twice(env, framework, tmp_path)
    item = _on_the_review_list(env, r)
    with env.session() as s:
        decide(s, item, "separate", by="reviewer1", reason="two women: another mother's maiden name")
    with env.session() as s:
        [event] = s.scalars(select(LinkEvent).where(LinkEvent.kind == "separate"))
        assert (event.match_review_id, event.reason) == (item, f"review #{item}: different people: two women: "
                                                               "another mother's maiden name")
    report = _relinked(CliRunner(), tmp_path)
    r = _records(env)
    assert _conditions(env, framework, r["a"].person_id) == {"Diabetes"}
    assert r["a"].person_id != r["b"].person_id
    assert report["operator_separations_kept"] == 0  # the item holds it
