"""A source's merge does not silently overrule a person's decision that two records are two people. The hospital
holds Margaret Hughes as H100 and Peggy Hughes as H555; an operator merged them by mistake and undid it
(`mpi merge`, `mpi unmerge`: "two women"), or took one record out of a person (`links.separate`). Until
2026-12-07 the PAS's A40 merging H555 into H100 then joined the two women again (Peggy's admission in Margaret's
record), as only a reviewer's "separate" was checked. Now the A40 is stored and answered AA saying the merge is
held for review (MPI review #n), and the MPI reviewer sees the pair and the operator's decision it would undo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.conftest import FRAMEWORK_PATH
from tests.identity.test_review_decisions import _ids, _people
from tests.ingest.test_hl7v2 import adt, pid, pv1, write_hl7
from tests.ingest.test_mllp import _exchange, serving
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.identity.links import decide, separate
from sharedcare.ingest.mllp import MllpServer
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import LinkEvent, MatchReview

MARGARET = pid(mrn="H100", nhs=None, name="HUGHES^Margaret^^^Mrs", born="19520611", sex="F",
               address="1 High Street^^Riverside^^RV1 2AB^GBR^H")
PEGGY = pid(mrn="H555", nhs=None, name="HUGHES^Peggy^^^Mrs", born="19530217", sex="F",
            address="4 Low Road^^Riverside^^RV4 4BB^GBR^H")
A40 = adt("A40", "M9", "20260112090000", MARGARET, "MRG|H555^^^RXR^MR")  # H555 retired into H100


@pytest.fixture
def env(db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    return db


def _admitted(db: Database, fw: Framework, tmp: Path, *patients: tuple[str, str]) -> None:
    """Each (PID, visit) admitted by the hospital's PAS."""
    Pipeline(db, fw).ingest_paths([write_hl7(tmp / "pas.hl7", [
        adt("A01", f"A{n}", "20260110090000", patient, pv1(visit)) for n, (patient, visit) in enumerate(patients)])])


def _visits(db: Database, fw: Framework, person: str) -> set[str]:
    """The hospital visits dr.patel sees in the person's record, through the governance gateway."""
    with db.session() as s:
        g = GovernedRecords(s, fw, actor_for(fw, "dr.patel"))
        g.record_basis(person, "explicit-consent", "checking the record")
        return {r.content["identifier"][0]["value"] for r in g.everything(person).resources
                if r.content["resourceType"] == "Encounter"}


def _a40_answer(db: Database, fw: Framework) -> list[str]:
    """The A40 sent to the MLLP listener over TCP, as the PAS sends it: its ACK's MSA segment."""
    with serving(MllpServer(Pipeline(db, fw))) as port:
        [answer] = _exchange(port, A40.encode("latin-1"))
    assert "ERR" not in answer, answer
    return next(seg for seg in answer.split("\r") if seg.startswith("MSA")).split("|")


def test_a_pas_merge_of_two_women_an_operator_unmerged_is_held_for_review_not_made(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    _admitted(env, framework, tmp_path, (MARGARET, "V100"), (PEGGY, "V555"))
    p = _people(env)
    assert p["H100"] != p["H555"]
    runner = CliRunner()
    merged = runner.invoke(app, ["mpi", "merge", p["H100"], p["H555"], "--reason", "one woman?"])
    assert merged.exit_code == 0, merged.output
    with env.session() as s:
        merge = s.scalars(select(LinkEvent.id).where(LinkEvent.kind == "merge")).one()
    undone = runner.invoke(app, ["mpi", "unmerge", str(merge), "--reason", "two women: different dates of birth",
                                 "--json"])
    assert undone.exit_code == 0, undone.output
    unmerge = json.loads(undone.stdout)["unmerge"]
    assert _people(env) == p

    msa = _a40_answer(env, framework)

    assert _visits(env, framework, p["H100"]) == {"V100"}
    assert _people(env) == p
    assert msa[1] == "AA", msa
    assert msa[3].startswith("MRG-1: the merge of patient 'H555' into 'H100' is held for review (MPI review #"), msa
    assert "nothing was merged" in msa[3] and "mpi.operator" not in msa[3], msa
    ids = _ids(env)
    with env.session() as s:
        [item] = s.scalars(select(MatchReview))
        assert (item.record_a, item.record_b, item.status) == (ids["H100"], ids["H555"], "open")
        assert (f"held for a reviewer: record {ids['H555']} was kept apart from record {ids['H100']} by the unmerge "
                f"#{unmerge} of cli (") in item.evidence["source_merge"], item.evidence
        assert "two women: different dates of birth), a person's decision" in item.evidence["source_merge"]
    shown = runner.invoke(app, ["mpi", "review"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    assert "RXR/H555: HUGHES" in shown.output and "source merge:" in shown.output
    assert f"was kept apart from record {ids['H100']} by the unmerge #{unmerge} of cli" in shown.output
    with env.session() as s:  # the reviewer, who may overrule the operator: Peggy is not Margaret
        decide(s, item.id, "separate", by="mpi.reviewer", reason="two women, as the operator found")
    assert _people(env) == p


def test_a_pas_merge_into_a_person_an_operator_took_the_record_out_of_is_held_and_a_reviewers_link_makes_it(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    """H555 with Margaret's details, linked to H100 on arrival, which an operator took out ("her twin sister, who
    shares her name in the PAS"); the PAS's A40 would put it back. The reviewer who finds it one woman after
    all links the pair, and that joins them."""
    _admitted(env, framework, tmp_path, (MARGARET, "V100"), (MARGARET.replace("H100", "H555"), "V555"))
    p = _people(env)
    assert p["H100"] == p["H555"]
    with env.session() as s:
        separate(s, _ids(env)["H555"], by="mpi.operator", reason="her twin sister")
    p = _people(env)
    assert p["H100"] != p["H555"]

    msa = _a40_answer(env, framework)

    assert _visits(env, framework, p["H100"]) == {"V100"}
    assert _people(env) == p
    assert msa[1] == "AA" and "is held for review (MPI review #" in msa[3], msa
    with env.session() as s:
        [item] = s.scalars(select(MatchReview))
        assert "by the separate #" in item.evidence["source_merge"], item.evidence
        decide(s, item.id, "link", by="mpi.reviewer", reason="one woman: the ward confirmed, no twin")
    after = _people(env)
    assert after["H100"] == after["H555"]
    assert _visits(env, framework, after["H100"]) == {"V100", "V555"}
