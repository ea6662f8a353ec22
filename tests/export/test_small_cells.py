"""What an IG officer checks of an extract's small cells, on a synthetic ICS: no published combination of a
person's quasi-identifiers (their Patient, all but its pseudonymous id) is held by fewer than the purpose's
k people unless it says nothing at all; and nothing else in the extract changes for it: every other file,
and every Patient already in a group of k, is what the pseudonymiser streamed (main's extract)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from tests.conftest import DEPLOYMENT_KEYS, FRAMEWORK_PATH
from tests.export.conftest import synthetic_store
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.config import load_settings
from sharedcare.export import jobs as export_jobs
from sharedcare.export.jobs import ExportJobs
from sharedcare.fhir.uk_core import ODS_SYSTEM
from sharedcare.governance.framework import Framework, parse_framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.secondary import ExportCounts, ExportScope, SecondaryUse
from sharedcare.governance.small_cells import SmallCells, protect
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, ExportJob

PEOPLE = 400
K = 8
QUASI_IDENTIFIERS = {"meta", "gender", "birthDate", "_birthDate", "deceasedBoolean", "deceasedDateTime", "address",
                     "generalPractitioner", "extension"}
runner = CliRunner()


@pytest.fixture(scope="module")
def fw() -> Framework:
    return parse_framework(FRAMEWORK_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, fw: Framework) -> Iterator[Database]:
    yield from synthetic_store(tmp_path_factory.mktemp("store"), fw, PEOPLE, seed=11)


def _export(db: Database, fw: Framework, folder: Path, workers: int) -> tuple[dict[str, list[bytes]], dict[str, Any]]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in DEPLOYMENT_KEYS.items():
            env.setenv(name, value)
        jobs = ExportJobs(db, fw, replace(load_settings(), data_path=folder, export_workers=workers,
                                          export_people_per_worker=1))
        job = jobs.start(actor_for(fw, "analyst.chen"), ExportScope("system"), "test", out_dir=folder / "out",
                         background=False)
        view = jobs.run(job)
    return {o["type"]: (folder / "out" / o["file"]).read_bytes().splitlines() for o in view.output}, view.summary


@pytest.fixture(scope="module")
def extract(db: Database, fw: Framework, tmp_path_factory: pytest.TempPathFactory) -> tuple[
        dict[str, list[bytes]], dict[str, Any]]:
    return _export(db, fw, tmp_path_factory.mktemp("two"), workers=2)


@pytest.fixture(scope="module")
def streamed(db: Database, fw: Framework) -> dict[str, list[bytes]]:
    """The lines the pseudonymiser hands out for the same extract, before any small-cell check: what main's
    export writes (its files hold exactly these)."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in DEPLOYMENT_KEYS.items():
            env.setenv(name, value)
        secondary = SecondaryUse(db, fw, load_settings().pseudonym_secret, actor_for(fw, "analyst.chen"),
                                 "secondary-use")
        lines: dict[str, list[bytes]] = {}
        for resource_type, line in secondary.stream(ExportScope("system"), ExportCounts()):
            lines.setdefault(resource_type, []).append(line)
    return lines


def _published(line: bytes) -> str:
    patient = json.loads(line)
    return json.dumps({key: value for key, value in patient.items() if key != "id"}, sort_keys=True)


def _says_nothing(line: bytes) -> bool:
    patient = json.loads(line)
    return set(patient) == {"resourceType", "id", "meta"} and set(patient["meta"]) == {"security"}


def test_every_published_combination_is_held_by_k_people_or_says_nothing(
        extract: tuple[dict[str, list[bytes]], dict[str, Any]], streamed: dict[str, list[bytes]]) -> None:
    files, _ = extract
    before = Counter(map(_published, streamed["Patient"]))
    assert sum(n for n in before.values() if n < K) > PEOPLE / 2  # as the pseudonymiser gives them: most alone
    sizes = Counter(map(_published, files["Patient"]))
    small = [line for line in files["Patient"] if sizes[_published(line)] < K]
    assert all(_says_nothing(line) for line in small)
    assert len(files["Patient"]) == len(streamed["Patient"])


def test_nothing_but_the_small_cells_changes(extract: tuple[dict[str, list[bytes]], dict[str, Any]],
                                             streamed: dict[str, list[bytes]]) -> None:
    files, summary = extract
    assert set(files) == set(streamed)
    unsourced, unknown = _unsourced(files, streamed)
    for resource_type, lines in streamed.items():
        if resource_type != "Patient":  # but the organisations on the lines of people whose practice is left out
            kept = [line for line in lines if _about(line) not in unsourced | unknown]
            assert Counter(line for line in files[resource_type] if _about(line) not in unsourced | unknown) == \
                Counter(kept), resource_type
    sizes = Counter(map(_published, streamed["Patient"]))
    given = {json.loads(line)["id"]: line for line in files["Patient"]}
    changed = 0
    for line in streamed["Patient"]:
        patient, out = json.loads(line), given[json.loads(line)["id"]]
        if sizes[_published(line)] >= K:
            assert out == line  # already in a group of k: byte for byte
            continue
        changed += 1
        published = json.loads(out)
        # only the quasi-identifiers move, each towards less, never to something the person did not have
        assert set(published) - {"_birthDate", "deceasedBoolean"} <= set(patient)
        assert {key: v for key, v in published.items() if key not in QUASI_IDENTIFIERS} == \
            {key: v for key, v in patient.items() if key not in QUASI_IDENTIFIERS}
        if "birthDate" in published:
            assert patient["birthDate"].startswith(published["birthDate"])
        elif "_birthDate" in published:
            period = published["_birthDate"]["extension"][0]["valuePeriod"]
            assert int(period["start"]) <= int(patient["birthDate"][:4]) <= int(period["end"])
        if "address" in published:
            assert patient["address"][0]["postalCode"].startswith(published["address"][0]["postalCode"])
    small = summary["small_cells"]
    assert small["k"] == K
    assert sum(small["generalised"].values()) + small["suppressed"] == changed > 0
    assert small["suppressed"] == sum(map(_says_nothing, files["Patient"]))


def _about(line: bytes) -> str:
    """The Patient a clinical line is about."""
    match = re.search(r'"reference":\s*"Patient/([^"]+)"', line.decode())
    assert match is not None, line
    return match.group(1)


def _unsourced(files: dict[str, list[bytes]], streamed: dict[str, list[bytes]]) -> tuple[set[str], set[str]]:
    """The people whose Patient leaves without the practice it had, or says nothing; and those who had no
    practice to leave out (whether they were generalised that far the file cannot tell)."""
    had = {json.loads(line)["id"] for line in streamed["Patient"] if "generalPractitioner" in json.loads(line)}
    published = [json.loads(line) for line in files["Patient"]]
    unsourced = {patient["id"] for patient in published if set(patient) == {"resourceType", "id", "meta"}
                 or (patient["id"] in had and "generalPractitioner" not in patient)}
    return unsourced, {patient["id"] for patient in published if patient["id"] not in had} - unsourced


def test_no_clinical_line_gives_back_the_practice_a_patient_left_out(
        extract: tuple[dict[str, list[bytes]], dict[str, Any]], streamed: dict[str, list[bytes]]) -> None:
    """A person generalised as far as leaving out their practice, or suppressed, would be put back in a
    group under k by the practice's code on their clinical resources (meta.source, an Encounter's
    serviceProvider): no organisation is left on them (everyone else's lines are as streamed:
    `test_nothing_but_the_small_cells_changes`)."""
    files, _ = extract
    unsourced, _ = _unsourced(files, streamed)
    assert unsourced
    theirs = [line for resource_type, lines in files.items() if resource_type != "Patient"
              for line in lines if _about(line) in unsourced]
    assert theirs and not [line for line in theirs if ODS_SYSTEM.encode() in line or b'"source"' in line]
    before = [line for resource_type, lines in streamed.items() if resource_type != "Patient"
              for line in lines if _about(line) in unsourced]
    assert len(theirs) == len(before) and any(ODS_SYSTEM.encode() in line for line in before)
    for line in theirs:  # still valid FHIR: nothing required went with the organisations
        resource = json.loads(line)
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_the_same_extract_gives_the_same_patients_in_one_process_or_two(
        db: Database, fw: Framework, extract: tuple[dict[str, list[bytes]], dict[str, Any]], tmp_path: Path) -> None:
    files, summary = extract
    again, summary_again = _export(db, fw, tmp_path, workers=1)
    assert Counter(again["Patient"]) == Counter(files["Patient"])
    assert summary_again["small_cells"] == summary["small_cells"]


def test_the_audit_entry_records_the_k_used_and_what_was_done(
        db: Database, extract: tuple[dict[str, list[bytes]], dict[str, Any]]) -> None:
    _, summary = extract
    with db.session() as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:complete")).all()
    details = [{d["type"]: d["valueString"] for d in e.event["entity"][-1]["detail"]} for e in entries]
    assert details and all(json.loads(d["small_cells"]) == summary["small_cells"] for d in details)


def test_the_command_line_summary_says_what_was_generalised_and_suppressed(db: Database, tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
        env.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
        env.setenv("SHAREDCARE_EXPORT_WORKERS", "1")
        for name, value in DEPLOYMENT_KEYS.items():
            env.setenv(name, value)
        table = runner.invoke(app, ["export", "--out", str(tmp_path / "table"), "--user", "analyst.chen"],
                              terminal_width=200)
        as_json = runner.invoke(app, ["export", "--out", str(tmp_path / "json"), "--user", "analyst.chen", "--json"])
    assert table.exit_code == 0 and as_json.exit_code == 0, table.output + as_json.output
    small = json.loads(as_json.stdout)["small_cells"]
    rows = {cells[0]: cells[1] for cells in (
        [cell.strip() for cell in line.strip("│ ").split("│")] for line in table.output.splitlines() if "│" in line)}
    assert rows["small cells: smallest group published (k)"] == str(K)
    assert rows["people suppressed (Patient without quasi-identifiers)"] == str(small["suppressed"])
    assert {key.removeprefix("people generalised: "): int(value) for key, value in rows.items()
            if key.startswith("people generalised: ")} == small["generalised"]


def _patient(n: int, birth: str, district: str, practice: str = "P81001") -> bytes:
    return json.dumps({"resourceType": "Patient", "id": f"p{n}", "meta": {"security": [{"code": "PSEUDED"}]},
                       "gender": "female", "birthDate": birth, "address": [{"use": "home", "postalCode": district}],
                       "generalPractitioner": [{"identifier": {"value": practice}}]}, separators=(",", ":")).encode()


def test_a_step_is_taken_only_as_far_as_a_group_needs() -> None:
    common = [_patient(n, "1980-03", "RV3") for n in range(3)]  # already a group of three
    same_year = [_patient(3 + n, f"1980-{n + 4:02d}", "RV3") for n in range(3)]  # three months of one year
    alone = [_patient(9, "1931-07", "RV9", practice="P81004")]
    lines = [*common, *same_year, *alone]
    out, small = protect(lines, 3)
    assert out[:3] == common
    assert [json.loads(line)["birthDate"] for line in out[3:6]] == ["1980"] * 3
    assert _says_nothing(out[6])
    assert small.as_dict() == {"k": 3, "generalised": {"birth-year": 3}, "suppressed": 1}
    assert protect(list(reversed(lines)), 3)[0] == list(reversed(out))  # the same whatever the order


def test_a_run_that_fails_in_the_check_leaves_no_unchecked_patient_behind(
        db: Database, fw: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shards write the Patient lines before the check has decided them (it streams the file): a run
    that fails while rewriting it must not leave them, nor the half-written file, for anyone to pick up."""
    def failing(lines: Iterable[bytes], k: int) -> tuple[Iterator[bytes], SmallCells]:
        def some_then_fail() -> Iterator[bytes]:
            yield next(iter(lines))
            raise OSError("no space left on device")
        return some_then_fail(), SmallCells(k)

    monkeypatch.setattr(export_jobs, "screen", failing)
    with pytest.raises(OSError, match="no space"):
        _export(db, fw, tmp_path, workers=1)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_long_small_cell_check_keeps_its_export_running_for_whoever_polls_it(
        db: Database, fw: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check runs in the export's own process after the shards have finished, and on a large extract it
    can take longer than the time after which a job not heard from is taken for dead (STALE_AFTER, here made
    a second). The analyst polling meanwhile must read "running", not "stopped (the server restarted)"."""
    monkeypatch.setattr(export_jobs, "STALE_AFTER", timedelta(seconds=1))
    monkeypatch.setattr(export_jobs, "HEARTBEAT", timedelta(seconds=0.1))
    polled: list[tuple[str, str | None]] = []
    check = export_jobs.screen

    def slow(lines: Iterable[bytes], k: int) -> tuple[Iterator[bytes], SmallCells]:
        time.sleep(2)  # longer than STALE_AFTER
        with db.session() as s:
            job_id = s.scalars(select(ExportJob.id).order_by(ExportJob.created_at.desc())).first()
        assert job_id is not None
        view = ExportJobs(db, fw, load_settings()).status(actor_for(fw, "analyst.chen"), job_id)
        polled.append((view.status, view.error))
        return check(lines, k)

    monkeypatch.setattr(export_jobs, "screen", slow)
    session = db.session
    failures = iter([True])  # the first beat meets a database that is restarting: the next must still come

    def restarting() -> Any:
        if threading.current_thread().name.endswith(": alive") and next(failures, False):
            raise OperationalError("UPDATE export_jobs", {}, Exception("the database system is shutting down"))
        return session()

    monkeypatch.setattr(db, "session", restarting)
    files, _ = _export(db, fw, tmp_path, workers=1)
    assert polled == [("running", None)]
    assert files["Patient"]


def test_a_resource_with_identifiers_of_its_own_loses_only_its_organisations() -> None:
    """A clinical line's own identifiers are a list; only references by ODS code go (this crashed on a list)."""
    own = [{"system": "https://fhir.nhs.uk/Id/encounter", "value": "E1"}]
    encounter = {"resourceType": "Encounter", "identifier": own, "meta": {"source": f"{ODS_SYSTEM}|RXR#epr"},
                 "serviceProvider": {"identifier": {"system": ODS_SYSTEM, "value": "RXR"}}}
    export_jobs.without_organisations(encounter)
    assert encounter == {"resourceType": "Encounter", "identifier": own}
