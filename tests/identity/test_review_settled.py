"""The review list after a relink: a pair the relink settled leaves it, with the relink's evidence kept as
history; a reviewer's own decision is never changed; a pair a later relink parts again comes back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tests.builders import bundle, patient, write_ndjson
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord

runner = CliRunner()
PHONE = [{"system": "phone", "value": "01632 960123", "use": "home"}]


def _ingest(tmp_path: Path, name: str, *messages: tuple[str, str, dict[str, Any]]) -> None:
    feed = write_ndjson(tmp_path / name, [bundle(org, system, [res]) for org, system, res in messages])
    assert runner.invoke(app, ["ingest", str(feed)]).exit_code == 0


def _listed(*options: str) -> list[dict[str, Any]]:
    shown = runner.invoke(app, ["mpi", "review", "--json", *options])
    assert shown.exit_code == 0, shown.output
    return [item for item in json.loads(shown.stdout) if "id" in item]


def _relink(tmp_path: Path) -> dict[str, Any]:
    done = runner.invoke(app, ["mpi", "relink", "--json", "--model-out", str(tmp_path / "model.json")])
    assert done.exit_code == 0, done.output
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _baby_and_her_gp_record(tmp_path: Path) -> int:
    """A baby's maternity record before naming, then her GP record: held on arrival (a twin's record would
    match either twin); the one review item's id."""
    _ingest(tmp_path, "baby.ndjson",
            ("RXR", "epr", patient("b", None, "Rowe", "Baby", "2023-09-16", "female", telecom=PHONE)),
            ("P81001", "emis", patient("ada", "9434765919", "Rowe", "Ada", "2023-09-16", "female", telecom=PHONE)))
    [item] = _listed()
    assert not item["linked"]
    return int(item["id"])


def test_a_pair_a_relink_links_leaves_the_review_list_and_its_history_says_why(env: Database,
                                                                               tmp_path: Path) -> None:
    item = _baby_and_her_gp_record(tmp_path)
    report = _relink(tmp_path)
    assert _listed() == []  # before: still listed, although the relink had made the two records one person
    assert (report["review_closed_one_person"], report["review_open"]) == (1, 0)
    [closed] = _listed("--all")
    assert (closed["id"], closed["status"], closed["linked"]) == (item, "relink-same", True)
    [step] = closed["evidence"]["relinks"]
    assert step["status"] == "relink-same" and {link["with_record"] for link in step["links"]} != {None}
    shown = runner.invoke(app, ["mpi", "review", "--all"], env={"COLUMNS": "400"})
    assert "relink-same" in shown.stdout and "the relink put both records in one person" in shown.stdout
    table = runner.invoke(app, ["mpi", "relink", "--model-out", str(tmp_path / "model.json")], env={"COLUMNS": "200"})
    assert "review closed one person" in table.stdout
    with env.session() as session:  # one entry for the relink that closed it, naming the item only
        [entry] = session.scalars(select(AuditEntry).where(AuditEntry.action == "identity:mpi:review-settled"))
        event = json.dumps(entry.event)
    assert f'"{item}"' in event and "Rowe" not in event and "9434765919" not in event


def test_a_reviewers_deferral_is_never_closed_by_a_relink(env: Database, tmp_path: Path) -> None:
    item = _baby_and_her_gp_record(tmp_path)
    assert runner.invoke(app, ["mpi", "decide", str(item), "--decision", "defer"]).exit_code == 0
    report = _relink(tmp_path)
    assert report["review_closed_one_person"] == 0
    assert [(i["id"], i["status"], i["linked"]) for i in _listed()] == [(item, "deferred", True)]
    shown = runner.invoke(app, ["mpi", "review", "--all"], env={"COLUMNS": "400"})
    assert "decided deferred" in shown.stdout and "relink-same" not in shown.stdout


def test_a_pair_a_relink_closed_is_reopened_at_once_when_a_correction_parts_it(env: Database,
                                                                              tmp_path: Path) -> None:
    """The practice corrects Ada's record (another birth date, no phone): matched again at once, it leaves the
    baby's record, and the pair the relink had closed as one person is back on the list then, not at the next
    relink; the baby's record, alone now, no longer says it is linked with Ada's."""
    item = _baby_and_her_gp_record(tmp_path)
    _relink(tmp_path)
    _ingest(tmp_path, "correction.ndjson",
            ("P81001", "emis", patient("ada", "9434765919", "Rowe", "Ada", "2019-03-02", "female")))
    [reopened] = _listed()  # before: nothing listed, the item still "relink-same" with both records apart
    assert (reopened["id"], reopened["status"], reopened["linked"]) == (item, "open", False)
    [closed, step] = reopened["evidence"]["relinks"]
    assert (closed["status"], step["status"], step["by"]) == ("relink-same", "open", "mpi re-match")
    assert "two persons" in step["reason"]
    with env.session() as session:
        baby = session.scalars(select(PatientRecord).where(PatientRecord.source_id == "b")).one()
        assert (baby.link_method, baby.match_evidence, baby.match_weight) == ("new", None, None)
    report = _relink(tmp_path)  # the relink finds it open already
    assert (report["review_reopened"], report["review_open"]) == (0, 1)
    assert [(i["id"], i["status"]) for i in _listed()] == [(item, "open")]


def test_a_pair_with_two_different_valid_nhs_numbers_is_closed_as_apart(env: Database, tmp_path: Path) -> None:
    """Twins' hospital records without NHS numbers are a pair in doubt; once each carries its own valid
    number they can never be one person (a reviewer cannot link them either), so the relink closes it."""
    _ingest(tmp_path, "twins.ndjson",
            ("RXR", "epr", patient("amy", None, "Jones", "Amy", "2001-04-05", "female")),
            ("RXR", "epr", patient("zoe", None, "Jones", "Zoe", "2001-04-05", "female")))
    [item] = _listed()
    _ingest(tmp_path, "numbers.ndjson",
            ("RXR", "epr", patient("amy", "9434765919", "Jones", "Amy", "2001-04-05", "female")),
            ("RXR", "epr", patient("zoe", "9434765870", "Jones", "Zoe", "2001-04-05", "female")))
    report = _relink(tmp_path)
    assert _listed() == []  # before: still listed, although no one may link two valid NHS numbers
    assert (report["review_closed_nhs_numbers_differ"], report["review_open"]) == (1, 0)
    [closed] = _listed("--all")
    assert (closed["id"], closed["status"], closed["linked"]) == (item["id"], "relink-apart", False)
    assert "different valid NHS numbers" in closed["evidence"]["relinks"][-1]["reason"]


def test_a_pair_a_relink_closed_is_reopened_when_the_re_match_puts_it_in_doubt_again(env: Database,
                                                                                     tmp_path: Path) -> None:
    """The maternity unit sends the baby's record again without the phone: matched again it is in doubt with
    Ada's record, as on arrival; the pair the relink had closed is back on the list, saying why."""
    item = _baby_and_her_gp_record(tmp_path)
    _relink(tmp_path)
    _ingest(tmp_path, "again.ndjson", ("RXR", "epr", patient("b", None, "Rowe", "Baby", "2023-09-16", "female")))
    [reopened] = _listed()  # before: nothing listed, the pair dropped as already known
    assert (reopened["id"], reopened["status"]) == (item, "open")
    step = reopened["evidence"]["relinks"][-1]
    assert (step["by"], step["reason"]) == ("mpi re-match", "reopened: the re-match lists the pair again")


def test_a_relink_keeps_what_the_re_match_said_about_an_open_item_it_lists_again(env: Database,
                                                                                  tmp_path: Path) -> None:
    """Amy's hospital record (keyed Zara) links on the NHS number with a discrepancy, on the list; the hospital
    sends a new address and the re-match scores the item again; the relink lists it again: the reviewer still
    reads that it was scored again, with the relink's evidence."""
    _ingest(tmp_path, "f.ndjson",
            ("P81001", "emis", patient("amy", "9434765919", "Jones", "Amy", "2001-04-05", "female")),
            ("RXR", "epr", patient("h-amy", "9434765919", "Jones", "Zara", "2001-04-05", "female", "LS1 4AP")))
    _ingest(tmp_path, "g.ndjson",
            ("RXR", "epr", patient("h-amy", "9434765919", "Jones", "Zara", "2001-04-05", "female", "LS2 7UE")))
    [item] = _listed()
    assert "rescored" in item["evidence"]
    _relink(tmp_path)
    [after] = _listed()
    assert (after["id"], after["status"], after["linked"]) == (item["id"], "open", True)
    assert "discrepancy" in after["evidence"]
    assert after["evidence"]["rescored"] == item["evidence"]["rescored"]  # before: dropped by the relink
