"""The order of an extract's lines is itself a side door. People listed in the order of their server ids
(random, but the same for every purpose, and published by `sharedcare mpi export` and every FHIR Patient id)
give each line back to its person: line i of one purpose's Patient file is line i of another's, and the
i-th of the sorted person ids (sixth security review, 2026-12-06). An extract lists people in the order of
their pseudonyms instead, so each purpose orders them its own unrelated way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from tests import builders

from sharedcare.config import load_settings
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.pseudonymise import Pseudonymiser
from sharedcare.governance.secondary import ExportCounts, ExportScope, SecondaryUse
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord

PEOPLE = 40


def _two_purposes(framework: Framework) -> Framework:
    """The framework with a second non-identifiable purpose ("research") the analyst may export for."""
    analyst = framework.roles["analyst"]
    return framework.model_copy(update={
        "purposes": {**framework.purposes, "research": framework.purposes["secondary-use"]},
        "roles": {**framework.roles, "analyst": analyst.model_copy(update={"purposes": [*analyst.purposes,
                                                                                         "research"]})}})


def _store(db: Database, framework: Framework, tmp_path: Path) -> dict[str, str]:
    """PEOPLE people of one GP practice, each with a diabetes diagnosis: person id by source id."""
    resources = builders.different_people(PEOPLE)
    resources += [builders.condition(f"c{n}", f"Patient/p{n}", "44054006", "Type 2 diabetes mellitus")
                  for n in range(PEOPLE)]
    path = builders.write_ndjson(tmp_path / "gp.ndjson", [builders.bundle("P81001", "emis", resources)])
    report = Pipeline(db, framework).ingest_paths([path])
    assert report.quarantined == 0, report.quarantine
    with db.session() as s:
        people = {r.source_id: r.person_id for r in s.scalars(select(PatientRecord))}
    assert len(set(people.values())) == PEOPLE
    return people


def _patient_order(db: Database, framework: Framework, purpose: str, shard: tuple[int, int] = (0, 1)) -> list[str]:
    secondary = SecondaryUse(db, framework, load_settings().secret, actor_for(framework, "analyst.chen"), purpose)
    lines = secondary.stream(ExportScope("system"), ExportCounts(), shard=shard)
    return [json.loads(line)["id"] for resource_type, line in lines if resource_type == "Patient"]


def test_two_purposes_extracts_do_not_list_the_same_people_in_the_same_order(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    framework = _two_purposes(framework)
    people = _store(db, framework, tmp_path)
    secret = load_settings().secret
    order: dict[str, list[str]] = {}
    for purpose in ("secondary-use", "research"):
        person_of = {Pseudonymiser(secret, purpose).pseudonym("Patient", pid): pid for pid in people.values()}
        listed = _patient_order(db, framework, purpose)
        assert sorted(listed) == sorted(person_of), "every person exported, once"
        order[purpose] = [person_of[p] for p in listed]
        # the order of the pseudonyms, not of the server ids anyone with `mpi export` can sort
        assert listed == sorted(listed)
        assert order[purpose] != sorted(people.values())
    # no line-by-line linkage: the people's positions in the two files are unrelated
    same_place = sum(a == b for a, b in zip(order["secondary-use"], order["research"], strict=True))
    assert same_place < PEOPLE // 4, same_place


@pytest.mark.parametrize("shards", [2, 3])
def test_an_export_shared_between_processes_lists_people_in_the_same_order(
        db: Database, framework: Framework, tmp_path: Path, shards: int) -> None:
    """The shards' part files are joined in shard order: each shard takes a run of pseudonyms, so the whole
    file is in pseudonym order as one process would write it."""
    _store(db, framework, tmp_path)
    whole = _patient_order(db, framework, "secondary-use")
    parts = [_patient_order(db, framework, "secondary-use", (index, shards)) for index in range(shards)]
    assert [p for part in parts for p in part] == whole
