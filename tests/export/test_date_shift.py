"""What an IG officer and an analyst check of a pseudonymised extract's dates, on a synthetic ICS: the
birth of a young child cannot be read back from an age-tied event (the attack in birth_date_attack.py),
while every interval within a person is kept to the day, and the extracts of one purpose agree."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.conftest import DEPLOYMENT_KEYS, FRAMEWORK_PATH
from tests.export.birth_date_attack import attack, read_extract, recovered_births, true_births
from tests.export.conftest import synthetic_store, unscreened

from sharedcare.config import load_settings
from sharedcare.export import jobs as export_jobs
from sharedcare.export.jobs import ExportJobs
from sharedcare.governance.framework import Framework, parse_framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.pseudonymise import Pseudonymiser
from sharedcare.governance.secondary import ExportScope
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Resource

pytestmark = pytest.mark.slow

PEOPLE = 2000  # about 35 children between one and two: the first MMR, at a year, dates their birth
PSEUDONYM_KEY = DEPLOYMENT_KEYS["SHAREDCARE_PSEUDONYM_KEY"]
Extract = dict[str, list[str]]


@pytest.fixture(scope="module")
def fw() -> Framework:
    """The framework with a second secondary purpose the analyst may export for."""
    text = FRAMEWORK_PATH.read_text(encoding="utf-8")
    text = text.replace("  secondary-use: {identifiable: false, needs_basis: false, smallest_group: 8}\n",
                        "  secondary-use: {identifiable: false, needs_basis: false, smallest_group: 8}\n"
                        "  research: {identifiable: false, needs_basis: false}\n")
    return parse_framework(text.replace("    purposes: [secondary-use]\n", "    purposes: [secondary-use, research]\n"))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, fw: Framework) -> Iterator[Database]:
    """The ICS ingested into SQLite (the shift is computed in Python, the same on either store)."""
    yield from synthetic_store(tmp_path_factory.mktemp("store"), fw, PEOPLE, seed=5)


def _export(db: Database, fw: Framework, folder: Path, purpose: str, workers: int = 1) -> Extract:
    """The extract with its Patients as the pseudonymiser gave them: the date shift measured alone (the
    small-cell check, which on 2,000 people publishes no child's month of birth, and so leaves this attack
    nothing to learn the schedule from, is tested in test_small_cells.py)."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in DEPLOYMENT_KEYS.items():
            env.setenv(name, value)
        env.setattr(export_jobs, "screen", unscreened)  # (module-scoped: the function fixture cannot serve)
        jobs = ExportJobs(db, fw, replace(load_settings(), data_path=folder, export_workers=workers,
                                          export_people_per_worker=1))
        job = jobs.start(actor_for(fw, "analyst.chen"), ExportScope("system"), "test", out_dir=folder / "out",
                         purpose=purpose, background=False)
        jobs.run(job)
    return read_extract(folder / "out")


@pytest.fixture(scope="module")
def extracts(db: Database, fw: Framework, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Extract]:
    return {"first": _export(db, fw, tmp_path_factory.mktemp("first"), "secondary-use"),
            "again": _export(db, fw, tmp_path_factory.mktemp("again"), "secondary-use", workers=2),
            "research": _export(db, fw, tmp_path_factory.mktemp("research"), "research")}


def _days(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, day) of every date or date-time string, at any depth, with list positions in the path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _days(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _days(value, f"{path}[{i}]")
    elif isinstance(node, str) and len(node) >= 10 and node[4] == "-" and node[7] == "-" and node[:4].isdigit():
        yield path, node[:10]


def _shifts(db: Database, extract: Extract, purpose: str) -> dict[str, set[int]]:
    """Per person, the differences in days between each exported date and the same element's stored date."""
    pseudonymiser = Pseudonymiser(PSEUDONYM_KEY, purpose)
    stored: dict[str, tuple[str, dict[str, str]]] = {}  # exported id -> (person, stored days by path)
    with db.session() as session:
        rows = session.execute(select(Resource.id, Resource.resource_type, Resource.content, PatientRecord.person_id)
                               .join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
                               .where(Resource.resource_type != "Patient"))
        for server_id, resource_type, content, person in rows:
            stored[pseudonymiser.pseudonym(resource_type, server_id)] = (person, dict(_days(content)))
    shifts: dict[str, set[int]] = {}
    for resource_type, lines in extract.items():
        if resource_type == "Patient":
            continue
        for line in lines:
            resource = json.loads(line)
            person, days = stored[resource["id"]]
            for path, day in _days(resource):
                if path in days:  # (an observation's effectiveInstant leaves as effectiveDateTime)
                    moved = date.fromisoformat(day) - date.fromisoformat(days[path])
                    shifts.setdefault(person, set()).add(moved.days)
    return shifts


def test_an_age_tied_vaccine_no_longer_gives_a_child_s_birth_date_back(db: Database,
                                                                       extracts: dict[str, Extract]) -> None:
    """Before the shift, the first MMR gave every child of one to two their birth to the day, and each was
    the only one of that birth date, sex and district: all re-identified. Now the recovered day is a day
    of the birth month drawn for the person, right only by chance (1 in 28-31)."""
    truth = true_births(db, Pseudonymiser(PSEUDONYM_KEY, "secondary-use"))
    outcome = attack(extracts["first"], truth)
    assert outcome.children > 50 and outcome.dated >= 20
    assert outcome.exact <= outcome.dated * 0.15 and outcome.reidentified <= outcome.dated * 0.15
    assert outcome.within_3_days <= outcome.dated * 0.5  # 7 days in 28-31 by chance
    # what the analyst is told stays true: the recovered birth falls in the published month of birth
    births = recovered_births(extracts["first"])
    months = {p["id"]: p["birthDate"] for p in map(json.loads, extracts["first"]["Patient"])}
    assert births and all(born.isoformat()[:7] == months[p] for p, born in births.items())


def test_intervals_within_a_person_are_kept_to_the_day(db: Database, extracts: dict[str, Extract]) -> None:
    """Every date of a person moves by one number of days (length of stay, readmission within 30 days and
    time from referral to treatment come out exact), of at most a month; people's shifts differ."""
    shifts = _shifts(db, extracts["first"], "secondary-use")
    assert len(shifts) > PEOPLE * 0.9
    assert all(len(moved) == 1 for moved in shifts.values())
    each = [moved.pop() for moved in shifts.values()]
    assert all(-30 <= days <= 30 for days in each)
    assert sum(days != 0 for days in each) > len(each) * 0.9 and len(set(each)) > 50


def test_the_patient_keeps_the_true_month_of_birth(db: Database, extracts: dict[str, Extract]) -> None:
    pseudonymiser = Pseudonymiser(PSEUDONYM_KEY, "secondary-use")
    months: dict[str, set[str]] = {}
    with db.session() as session:
        for person, born in session.execute(select(PatientRecord.person_id, PatientRecord.birth_date)):
            if born is not None:
                months.setdefault(pseudonymiser.pseudonym("Patient", person), set()).add(born.isoformat()[:7])
    patients = [json.loads(line) for line in extracts["first"]["Patient"]]
    assert len(patients) > PEOPLE * 0.9
    assert all(p["birthDate"] in months[p["id"]] for p in patients if "birthDate" in p)


def test_two_extracts_for_one_purpose_agree_and_two_purposes_do_not(db: Database,
                                                                    extracts: dict[str, Extract]) -> None:
    assert {t: sorted(lines) for t, lines in extracts["first"].items()} == \
        {t: sorted(lines) for t, lines in extracts["again"].items()}
    ours, theirs = _shifts(db, extracts["first"], "secondary-use"), _shifts(db, extracts["research"], "research")
    both = ours.keys() & theirs.keys()
    assert len(both) > PEOPLE * 0.9
    assert sum(ours[p] != theirs[p] for p in both) > len(both) * 0.9
