"""A reviewer's decision holds: an unmerge, a second reviewer, an operator's merge or a source's A40 cannot
undo it silently, and every decision is audited. Two GP records for Margaret Hughes, Diabetes in record a
and HIV infection in record b, seen through the governance gateway as a clinician sees them."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.builders import bundle, condition, patient, write_ndjson
from tests.ingest.test_hl7v2 import adt, pid, pv1, write_hl7
from tests.ingest.test_mllp import _exchange, serving
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.governance.access_log import search
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.identity.links import LinkError, decide, merge_persons, unmerge
from sharedcare.identity.mpi import relink
from sharedcare.ingest.mllp import MllpServer
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, LinkEvent, MatchReview, PatientRecord, Quarantine


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


def _arrives(db: Database, fw: Framework, tmp: Path, org: str, sid: str, cond: str, at: str = "2026-11-01T09:00:00Z",
             **details: str) -> None:
    """A record of a woman with Margaret Hughes's details (or those given) and one condition, sent at `at`."""
    d = {"given": "Margaret", "born": "1952-06-11", "postcode": "RV1 2AB"} | details
    Pipeline(db, fw).ingest_paths([write_ndjson(tmp / f"{org}-{sid}-{at[:10]}.ndjson", [bundle(org, "x", [
        patient(sid, None, "Hughes", d["given"], d["born"], "female", d["postcode"]),
        condition(f"{sid}-c", f"Patient/{sid}", "44054006", cond)], timestamp=at)])])


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


def _separated_pair(db: Database, fw: Framework, tmp: Path) -> int:
    """Two records with Margaret's details (linked on ingest) that a reviewer found to be two women."""
    _arrives(db, fw, tmp, "P81001", "a", "Diabetes")
    _arrives(db, fw, tmp, "P81002", "b", "HIV infection")
    ids = _ids(db)
    with db.session() as s:
        item = MatchReview(record_a=ids["a"], record_b=ids["b"], probability=0.99, evidence={},
                           created_at=utcnow(), status="open")
        s.add(item)
        s.flush()
        decide(s, item.id, "separate", by="reviewer1", reason="two women: another mother's maiden name")
        return item.id


def _review_audit(db: Database, username: str) -> list[dict[str, str]]:
    """The review decisions `username` was audited for, oldest first."""
    with db.session() as s:
        return [_details(e) for e in reversed(search(s, username=username, actions=("identity:mpi:review-decided",)))]


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


def test_a_second_reviewers_defer_cannot_drop_a_separation_and_a_relink_keeps_the_women_apart(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Until 2026-12-07 a second reviewer, working from the list as it was, deferred the pair: the separation
    was gone without a word, and the next relink joined the two women (HIV infection in Margaret's record)."""
    item = _separated_pair(db, framework, tmp_path)
    with db.session() as s, pytest.raises(LinkError, match=f"review #{item} was decided 'separate' \\(reviewer1, "
                                                           ".*--change separate and a --reason"):
        decide(s, item, "defer", by="reviewer2")
    with db.session() as s:
        relink(s)
    p = _people(db)
    assert p["a"] != p["b"]
    assert _conditions(db, framework, p["a"]) == {"Diabetes"}
    assert _item(db, item).status == "separate"


def test_changing_a_reviewers_decision_is_explicit_says_why_and_is_audited(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    item = _separated_pair(db, framework, tmp_path)
    with db.session() as s, pytest.raises(LinkError, match="say why .*changing a reviewer's decision"):
        decide(s, item, "defer", by="reviewer2", was="separate")
    with db.session() as s, pytest.raises(LinkError, match=f"review #{item} is now 'separate' .*not 'linked' as read"):
        decide(s, item, "separate", by="reviewer2", reason="two women", was="linked")
    with db.session() as s:
        decide(s, item, "link", by="reviewer2", reason="one woman: the GP confirmed", was="separate")
    p = _people(db)
    assert p["a"] == p["b"]
    assert [(d["status"], d["was"], d["reason"]) for d in _review_audit(db, "reviewer2")] == [
        ("linked", "separate", "one woman: the GP confirmed")]
    decisions = _item(db, item).evidence["decisions"]
    assert [(d["by"], d["status"], d["was"]) for d in decisions] == [
        ("reviewer1", "separate", "open"), ("reviewer2", "linked", "separate")]


def test_decisions_that_move_no_record_are_audited_and_each_reviewer_is_kept(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A defer, and a separate of a pair already apart, moved nothing and until 2026-12-07 wrote no audit entry;
    `decided_by` kept only the last reviewer."""
    item = _two_women(db, framework, tmp_path)
    with db.session() as s, pytest.raises(LinkError, match="say why .*a decision to separate"):
        decide(s, item, "separate", by="reviewer3")
    with db.session() as s:
        decide(s, item, "defer", by="reviewer2")
        decide(s, item, "separate", by="reviewer3", reason="another birth date and address")
    assert _review_audit(db, "reviewer2") == [{"review": str(item), "status": "deferred", "was": "open",
                                               "records": "1 2"}]
    [separated] = _review_audit(db, "reviewer3")
    assert (separated["status"], separated["was"], separated["reason"]) == (
        "separate", "deferred", "another birth date and address")
    assert [d["by"] for d in _item(db, item).evidence["decisions"]] == ["reviewer2", "reviewer3"]


def test_two_reviewers_deciding_one_pair_at_once_decide_one_after_the_other(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Reviewer 1 links the pair and reviewer 2 separates it at the same moment. Until 2026-12-07 both went
    through: the women stayed joined (Peggy's HIV diagnosis in Margaret's record) with the pair marked
    separate. Now the second waits for the first's commit, sees the link and is refused."""
    item = _two_women(db, framework, tmp_path)
    held = db.session()
    first = held.__enter__()
    decide(first, item, "link", by="reviewer1", reason="one woman, known as Peggy")  # not yet committed
    errors: list[Exception] = []

    def second() -> None:
        try:
            with db.session() as s:
                decide(s, item, "separate", by="reviewer2", reason="two women")
        except Exception as exc:  # noqa: BLE001 (the test reads it)
            errors.append(exc)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()  # waiting on the first reviewer's lock
    held.__exit__(None, None, None)
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], LinkError)
    assert f"review #{item} was decided 'linked' (reviewer1, " in str(errors[0])
    p = _people(db)
    assert p["a"] == p["b"] and _item(db, item).status == "linked"
    assert _review_audit(db, "reviewer2") == []


def test_mpi_decide_refuses_to_redecide_without_change_and_reason(env: Database, framework: Framework,
                                                                  tmp_path: Path) -> None:
    item = _separated_pair(env, framework, tmp_path)
    runner = CliRunner()
    refused = runner.invoke(app, ["mpi", "decide", str(item), "--decision", "defer"])
    assert refused.exit_code == 2 and f"review #{item} was decided 'separate'" in refused.output
    assert "--change separate" in refused.output
    unsaid = runner.invoke(app, ["mpi", "decide", str(item), "--decision", "link", "--change", "separate"])
    assert unsaid.exit_code == 2 and "say why (--reason)" in unsaid.output
    changed = runner.invoke(app, ["mpi", "decide", str(item), "--decision", "link", "--change", "separate",
                                  "--reason", "one woman: the GP confirmed", "--by", "reviewer2"])
    assert changed.exit_code == 0, changed.output
    p = _people(env)
    assert p["a"] == p["b"]
    shown = runner.invoke(app, ["mpi", "review", "--all"], env={"COLUMNS": "400"}).stdout
    assert "reviewer2: decided linked (was separate): one woman: the GP confirmed" in shown
    assert "reviewer1: decided separate (was open): two women" in shown


def test_an_operators_merge_across_a_reviewers_separation_is_refused_naming_the_item(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    """Until 2026-12-07 `mpi merge` joined the two women the reviewer had separated, and the relink kept it."""
    item = _separated_pair(env, framework, tmp_path)
    p = _people(env)
    with env.session() as s, pytest.raises(LinkError, match=f"which review #{item} separated \\(reviewer1, "):
        merge_persons(s, p["a"], p["b"], by="mpi.operator", reason="duplicate?")
    merged = CliRunner().invoke(app, ["mpi", "merge", p["a"], p["b"], "--reason", "duplicate?"])
    assert merged.exit_code == 2 and f"review #{item} separated (reviewer1, " in merged.output
    assert f"mpi decide {item} --change separate" in merged.output
    assert _people(env) == p
    assert _conditions(env, framework, p["a"]) == {"Diabetes"}


_PAS_PATIENT = {"nhs": None, "name": "HUGHES^Margaret^^^Mrs", "born": "19520611", "sex": "F",
                "address": "1 High Street^^Riverside^^RV1 2AB^GBR^H"}


def test_a_hospitals_a40_across_a_reviewers_separation_is_quarantined_naming_the_item(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """The hospital holds Margaret as H100 and the other woman as T555 (each linked by a reviewer to her GP
    record), and merges its two numbers: until 2026-12-07 the A40 joined the two women the reviewer had
    separated (HIV infection in Margaret's record). Now the message is answered AE and held, saying whom to ask:
    the ICS's identity team, quoting the review; until the review of secondary use (2026-12-07) the ACK named
    the GP records' internal ids and the reviewer, which are not the hospital's to know."""
    item = _separated_pair(db, framework, tmp_path)
    for n, mrn in enumerate(("H100", "T555")):
        Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / f"pas-{mrn}.hl7", [
            adt("A01", f"M{n}", "20260110090000", pid(mrn=mrn, **_PAS_PATIENT), pv1(f"V{n}"))])])
    ids = _ids(db)
    with db.session() as s:
        pairs = {(i.record_a, i.record_b): i.id for i in s.scalars(select(MatchReview))}
        decide(s, pairs[ids["a"], ids["H100"]], "link", by="reviewer3", reason="Margaret's admission")
        decide(s, pairs[ids["b"], ids["T555"]], "link", by="reviewer3", reason="the other woman's admission")
    before = _people(db)
    a40 = adt("A40", "M3", "20260112090000", pid(mrn="H100", **_PAS_PATIENT), "MRG|T555^^^RXR^MR")
    with serving(MllpServer(Pipeline(db, framework))) as port:  # the listener, over TCP, as the PAS sends
        [answer] = _exchange(port, a40.encode("latin-1"))
    msa, err = (next(seg for seg in answer.split("\r") if seg.startswith(name)).split("|") for name in ("MSA", "ERR"))
    assert msa[1] == "AE"
    assert msa[3].startswith("not merged: the merge of patient 'T555' into 'H100' is held, because an MPI reviewer "
                             f"decided that these patients' records are two people (MPI review #{item})"), msa[3]
    assert "Riverside and Dales Integrated Care Board" in err[8] and f"quoting MPI review #{item}" in err[8]
    assert "reviewer1" not in answer and "mpi decide" not in answer, answer
    told = err[8]  # no number but the review's, the quarantine item's, the desk's telephone and its own MRNs
    for allowed in (f"MPI review #{item}", "0300 123 0001", "'T555'", "'H100'"):
        told = told.replace(allowed, "")
    assert re.fullmatch(r"[^\d]*\(quarantine #\d+\)", told), err[8]
    with db.session() as s:
        [held] = s.scalars(select(Quarantine).where(Quarantine.status == "held"))
        assert "MRG-1: not merged: the merge of patient 'T555' into 'H100' is held" in held.reason
        assert held.reason.endswith(f"quoting MPI review #{item}, then send this message again")
    assert _people(db) == before
    assert _conditions(db, framework, before["a"]) == {"Diabetes"}


def test_an_unmerge_puts_a_record_held_for_review_back_on_hold(db: Database, framework: Framework,
                                                                tmp_path: Path) -> None:
    """An ambulance record with no name or birth date, held for review, merged into Margaret by mistake and the
    merge undone: until 2026-12-07 it came back linked and placed by hand, no longer held, and a relink
    matched it as any other."""
    _arrives(db, framework, tmp_path, "P81001", "a", "Diabetes")
    anonymous = {"resourceType": "Patient", "id": "unknown-1", "gender": "female"}
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "rya.ndjson", [
        bundle("RYA", "epcr", [anonymous, condition("c", "Patient/unknown-1", "217082002", "Fall")])])])

    def statuses() -> dict[str, tuple[str, str]]:
        with db.session() as s:
            return {r.source_id: (r.link_status, r.link_method) for r in s.scalars(select(PatientRecord))}

    before, p = statuses(), _people(db)
    assert before["unknown-1"] == ("review", "insufficient-data")
    with db.session() as s:
        merge = merge_persons(s, p["a"], p["unknown-1"], by="mpi.operator", reason="the same call").id
    assert statuses()["unknown-1"] == ("linked", "manual")
    with db.session() as s:
        unmerge(s, merge, by="mpi.operator", reason="another woman")
    assert statuses() == before
    with db.session() as s:
        relink(s)
    assert statuses() == before and _people(db) == p
