"""The review list after a relink: a pair the relink settled leaves it, with the relink's evidence kept as
history; a reviewer's own decision is never changed; a pair a later relink parts again comes back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.builders import bundle, patient, write_ndjson
from tests.conftest import FRAMEWORK_PATH
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

runner = CliRunner()
PHONE = [{"system": "phone", "value": "01632 960123", "use": "home"}]


@pytest.fixture
def env(db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    return db


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


def test_a_pair_a_later_relink_parts_again_is_reopened(env: Database, tmp_path: Path) -> None:
    item = _baby_and_her_gp_record(tmp_path)
    _relink(tmp_path)
    # the practice corrects Ada's record: another birth date, no phone; the baby's record no longer matches it
    _ingest(tmp_path, "correction.ndjson",
            ("P81001", "emis", patient("ada", "9434765919", "Rowe", "Ada", "2019-03-02", "female")))
    report = _relink(tmp_path)
    assert (report["review_reopened"], report["review_open"]) == (1, 1)
    [reopened] = _listed()
    assert (reopened["id"], reopened["status"], reopened["linked"]) == (item, "open", False)
    assert [step["status"] for step in reopened["evidence"]["relinks"]] == ["relink-same", "open"]


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
