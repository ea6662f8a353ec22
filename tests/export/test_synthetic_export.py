"""An export of a whole synthetic ICS, made with `sharedcare export`, scanned line by line for every
identifying value its sources sent: what an information governance auditor would check before signing
off a pseudonymised extract."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import select
from tests.conftest import BACKENDS, DEPLOYMENT_KEYS, FRAMEWORK_PATH, POSTGRES_URL, _fresh_postgres
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.config import load_settings
from sharedcare.export.jobs import ExportJobs
from sharedcare.governance.consent import set_choice
from sharedcare.governance.framework import Framework, parse_framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.pseudonymise import Pseudonymiser
from sharedcare.governance.secondary import ExportScope
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, Resource
from sharedcare.synth import generate

PEOPLE = 80
PSEUDONYM_KEY = DEPLOYMENT_KEYS["SHAREDCARE_PSEUDONYM_KEY"]  # the extract's, as `sharedcare export` is run here
runner = CliRunner()


@pytest.fixture(scope="module", params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          framework: Framework) -> Iterator[tuple[Database, dict[str, str]]]:
    """The ICS ingested, with one person opted out of secondary use and one objecting to all sharing."""
    feeds = tmp_path_factory.mktemp("ics")
    generate(feeds, people=PEOPLE, seed=17, framework=framework)
    url = _fresh_postgres(POSTGRES_URL) if request.param == "postgresql" and POSTGRES_URL else \
        f"sqlite:///{tmp_path_factory.mktemp('db') / 'ics.db'}"
    db = Database(url)
    db.migrate()
    Pipeline(db, framework).ingest_paths([feeds])
    with db.session() as s:
        numbered = s.execute(select(PatientRecord.nhs_number, PatientRecord.person_id)
                             .where(PatientRecord.nhs_number.is_not(None)).order_by(PatientRecord.id)).all()
        chosen = {}
        for nhs, person in numbered:
            if person not in chosen.values():
                chosen[("opt-out", "object-all")[len(chosen)]] = person
                set_choice(s, nhs, by="patient", person_id=person, **({"opt_out_secondary": True} if len(chosen) == 1
                                                                       else {"object_all": True}))
            if len(chosen) == 2:
                break
    yield db, chosen
    db.dispose()


@pytest.fixture(scope="module")
def exported(store: tuple[Database, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db, _ = store
    out = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
        env.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
        env.setenv("SHAREDCARE_EXPORT_WORKERS", "2")  # two processes, each a shard of the people
        env.setenv("SHAREDCARE_EXPORT_PEOPLE_PER_WORKER", "1")  # (however few they are)
        for name, value in DEPLOYMENT_KEYS.items():  # outside demo mode, an extract is keyed by a key of its own
            env.setenv(name, value)
        result = runner.invoke(app, ["export", "--out", str(out), "--user", "analyst.chen", "--json"])
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    summary["lines"] = {f["type"]: (out / f["file"]).read_text(encoding="utf-8").splitlines()
                        for f in summary["files"]}
    return summary


def _strings(node: Any, keys: set[str]) -> Iterator[str]:
    """Every string under the named keys, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield value
            elif key in keys and isinstance(value, list):
                yield from (v for v in value if isinstance(v, str))
            yield from _strings(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, keys)


def _identifying(db: Database) -> tuple[set[str], set[str], set[str], dict[str, set[str]]]:
    """From every source's patient records: numbers, names, other values (addresses, phones, identifiers,
    free text), and each person's dates of birth."""
    numbers, names, values, births = set(), set(), set(), {}
    with db.session() as s:
        for record in s.scalars(select(PatientRecord)):
            numbers |= {record.nhs_number} if record.nhs_number else set()
            names |= {n for n in (record.family, record.given) if n and len(n) > 2}
            values |= {record.postcode} if record.postcode else set()
            births.setdefault(record.person_id, set()).update({record.birth_date.isoformat()} if record.birth_date
                                                              else set())
        for resource in s.scalars(select(Resource)):
            content = resource.content
            if resource.resource_type == "Patient":
                names |= {n for n in _strings(content, {"family", "given"}) if len(n) > 2}
                values |= set(_strings(content.get("address", []), {"line", "postalCode"}))
                values |= set(_strings(content.get("telecom", []) + content.get("contact", []), {"value"}))
                values |= {i["value"] for i in content.get("identifier", []) if len(i.get("value", "")) > 4}
                names |= {n for n in _strings(content.get("contact", []), {"family", "given"}) if len(n) > 2}
            else:  # free text a clinician or a social worker wrote, and other systems' identifiers
                values |= {t for t in _strings(content, {"text", "description", "title"}) if len(t) > 25}
                values |= {i["value"] for i in content.get("identifier", []) if len(i.get("value", "")) > 4}
    return numbers, names, values, births


def test_no_identifying_value_from_any_source_appears_on_any_line(store: tuple[Database, dict[str, str]],
                                                                   exported: dict[str, Any]) -> None:
    db, _ = store
    numbers, names, values, _ = _identifying(db)
    assert len(numbers) > PEOPLE * 0.8 and len(names) > PEOPLE and len(values) > PEOPLE * 2  # a real scan
    number_pattern = re.compile(r"(?<!\d)(" + "|".join(map(re.escape, numbers)) + r")(?!\d)")
    name_pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b", re.IGNORECASE)
    lowered = {v.lower() for v in values}
    leaks = []
    for lines in exported["lines"].values():
        for line in lines:
            leaks += number_pattern.findall(line) + name_pattern.findall(line)
            low = line.lower()
            leaks += [v for v in lowered if v in low]
    assert leaks == []


def test_no_one_s_date_of_birth_leaves_but_by_a_coincidence_of_their_date_shift(
        store: tuple[Database, dict[str, str]], exported: dict[str, Any]) -> None:
    """Each person's full date of birth is checked against every line that is theirs. Every date of a
    person leaves moved by their date shift, so their date of birth can appear only where the shift lands
    another day on it (or is 0 days, 1 in 28-31, on a birth-day event): which says nothing, as nobody can
    tell those people from the rest (test_date_shift.py measures what an attacker recovers). (Another
    person's date of birth may coincide with a clinical date, which discloses nothing.)"""
    db, _ = store
    *_, births = _identifying(db)
    pseudonymiser = Pseudonymiser(PSEUDONYM_KEY, "secondary-use")
    by_pseudonym = {pseudonymiser.pseudonym("Patient", person): dates for person, dates in births.items()}
    checked, coinciding = 0, set[str]()
    for lines in exported["lines"].values():
        for line in lines:
            resource = json.loads(line)
            ref = resource["id"] if resource["resourceType"] == "Patient" else \
                (resource.get("subject") or resource.get("patient"))["reference"].removeprefix("Patient/")
            if any(date in line for date in by_pseudonym[ref]):
                coinciding.add(ref)
            checked += 1
    assert checked == sum(len(lines) for lines in exported["lines"].values()) > PEOPLE * 10
    assert len(coinciding) <= 2  # of 80: chance, at most
    # a year and month at most (a year, or nothing, where the small-cell check generalised or suppressed it)
    assert all(len(json.loads(p).get("birthDate", "")) <= 7 for p in exported["lines"]["Patient"])


def test_opted_out_and_objecting_people_are_not_in_the_export(store: tuple[Database, dict[str, str]],
                                                              exported: dict[str, Any]) -> None:
    _, chosen = store
    pseudonymiser = Pseudonymiser(PSEUDONYM_KEY, "secondary-use")
    absent = {pseudonymiser.pseudonym("Patient", person) for person in chosen.values()}
    text = "\n".join(line for lines in exported["lines"].values() for line in lines)
    assert not any(p in text for p in absent)
    assert exported["people_excluded"] == {"deny-objection-all": "*", "deny-opt-out": "*"}  # 1 each
    patients = {json.loads(p)["id"] for p in exported["lines"]["Patient"]}
    assert len(patients) == exported["people_included"] > PEOPLE * 0.9


def test_every_exported_resource_is_valid_fhir_without_empty_elements(exported: dict[str, Any]) -> None:
    for resource_type, lines in exported["lines"].items():
        model = get_fhir_model_class(resource_type)
        for line in lines:
            model.model_validate_json(line)
            assert "{}" not in line and "[]" not in line, line


def test_references_join_up_across_files(exported: dict[str, Any]) -> None:
    ids = {t: {json.loads(line)["id"] for line in lines} for t, lines in exported["lines"].items()}
    references = [m.group(1, 2) for lines in exported["lines"].values() for line in lines
                  for m in re.finditer(r'"reference":"(\w+)/([0-9a-f]{32})"', line)]
    assert len(references) > PEOPLE * 10
    dangling = [(t, i) for t, i in references if i not in ids.get(t, set())]
    # never at something withheld (a mental health encounter): that would say it exists
    assert dangling == []


def test_the_export_is_audited_from_the_command_line_too(store: tuple[Database, dict[str, str]],
                                                         exported: dict[str, Any]) -> None:
    db, _ = store
    with db.session() as s:
        actions = [e.action for e in s.scalars(select(AuditEntry).where(AuditEntry.username == "analyst.chen")
                                               .order_by(AuditEntry.seq))]
    assert actions[-2:] == ["secondary:export:kick-off", "secondary:export:complete"]


def test_pseudonyms_differ_between_purposes_and_repeat_within_one(store: tuple[Database, dict[str, str]],
                                                                 tmp_path: Path) -> None:
    db, _ = store
    text = FRAMEWORK_PATH.read_text(encoding="utf-8")
    text = text.replace("  secondary-use: {identifiable: false, needs_basis: false, smallest_group: 8}\n",
                        "  secondary-use: {identifiable: false, needs_basis: false, smallest_group: 8}\n"
                        "  research: {identifiable: false, needs_basis: false}\n")
    text = text.replace("    purposes: [secondary-use]\n", "    purposes: [secondary-use, research]\n")
    fw = parse_framework(text)
    jobs = ExportJobs(db, fw, replace(load_settings(), data_path=tmp_path, export_workers=1))
    patients = {}
    for run, purpose in enumerate(("secondary-use", "research", "secondary-use")):
        job = jobs.start(actor_for(fw, "analyst.chen"), ExportScope("system", types=frozenset({"Patient"})), "test",
                         out_dir=tmp_path / str(run), purpose=purpose, background=False)
        jobs.run(job)
        patients[run] = {json.loads(line)["id"] for line in (tmp_path / str(run) / "Patient.ndjson").open()}
    assert patients[0] == patients[2]
    assert len(patients[0]) == len(patients[1]) > PEOPLE * 0.9 and not patients[0] & patients[1]


def test_a_clinician_cannot_export_from_the_command_line(store: tuple[Database, dict[str, str]],
                                                         tmp_path: Path) -> None:
    db, _ = store
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
        env.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
        for name, value in DEPLOYMENT_KEYS.items():
            env.setenv(name, value)
        result = runner.invoke(app, ["export", "--out", str(tmp_path / "x"), "--user", "dr.patel"])
    assert result.exit_code == 1 and "secondary-use" in result.output
    assert not (tmp_path / "x").exists()


def test_one_process_writes_what_two_processes_write(store: tuple[Database, dict[str, str]],
                                                     exported: dict[str, Any], tmp_path: Path) -> None:
    db, _ = store
    fw = parse_framework(FRAMEWORK_PATH.read_text(encoding="utf-8"))
    jobs = ExportJobs(db, fw, replace(load_settings(), pseudonym_key=PSEUDONYM_KEY, data_path=tmp_path,
                                      export_workers=1))
    view = jobs.run(jobs.start(actor_for(fw, "analyst.chen"), ExportScope("system"), "test", background=False))
    single = {o["type"]: sorted((tmp_path / "exports").glob(f"*/{o['file']}"))[0].read_text().splitlines()
              for o in view.output}
    assert {t: sorted(lines) for t, lines in single.items()} == \
        {t: sorted(lines) for t, lines in exported["lines"].items()}
    assert sorted(p.name for p in Path(exported["out"]).iterdir()) == sorted(o["file"] for o in view.output)
