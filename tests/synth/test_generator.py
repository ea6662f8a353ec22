"""What an operator running `sharedcare synth` notices about the files it writes."""

from __future__ import annotations

import csv
import hashlib
import json
import tracemalloc
from datetime import date
from pathlib import Path

import pytest
from synth_helpers import FRAMEWORK_FILE, PEOPLE, SEED, SynthRun

from sharedcare.governance.framework import Framework
from sharedcare.synth import DEFAULT_AS_OF, generate


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_people_seed_and_date_give_identical_bytes(tmp_path: Path, framework: Framework) -> None:
    generate(tmp_path / "a", 150, 11, framework=framework)
    generate(tmp_path / "b", 150, 11, framework=framework)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_a_different_seed_gives_a_different_population(tmp_path: Path, framework: Framework) -> None:
    generate(tmp_path / "a", 60, 1, framework=framework)
    generate(tmp_path / "b", 60, 2, framework=framework)
    assert (tmp_path / "a" / "ground_truth.csv").read_bytes() != (tmp_path / "b" / "ground_truth.csv").read_bytes()


def test_the_default_date_is_fixed_so_runs_are_reproducible() -> None:
    assert DEFAULT_AS_OF == date(2026, 11, 1)


def test_the_output_has_a_manifest_ground_truth_users_and_each_sources_feed(run: SynthRun) -> None:
    names = {str(p.relative_to(run.root)) for p in run.root.rglob("*") if p.is_file()}
    assert {"manifest.json", "ground_truth.csv", "users.csv"} <= names
    for expected in ("P81001/fhir/emis-0000.ndjson", "P81002/fhir/systmone-0000.ndjson",
                     "P81003/fhir/emis-0000.ndjson", "P81004/fhir/systmone-0000.ndjson",
                     "RXR/fhir/epr-0000.ndjson", "RXR/hl7v2/pas-0000.hl7", "RXR/hl7v2/lab-0000.hl7",
                     "RYC/fhir/rio-0000.ndjson", "RXM/fhir/rio-0000.ndjson", "RYA/fhir/epcr-0000.ndjson",
                     "NHR/fhir/crosscare-0000.ndjson", "LRC/csv/mosaic-0000.csv"):
        assert expected in names
    assert sorted(run.summary.files) == sorted(n for n in names if "/" in n)


def test_the_manifest_says_what_was_made_and_what_was_got_wrong_on_purpose(run: SynthRun) -> None:
    manifest = run.manifest()
    assert (manifest["seed"], manifest["people"], manifest["as_of"]) == (SEED, PEOPLE, "2026-11-01")
    assert manifest["framework_version"] == "2026.12-6"
    rxr = manifest["organisations"]["RXR"]
    assert {"RXR/hl7v2/pas-0000.hl7", "RXR/hl7v2/lab-0000.hl7", "RXR/fhir/epr-0000.ndjson"} <= set(rxr["files"])
    assert rxr["counts"]["ADT^A01"] == rxr["counts"]["ADT^A03"] > 0
    assert manifest["organisations"]["P81001"]["counts"]["Patient"] > 0
    assert set(manifest["injected_errors"]) <= set(manifest["error_rates"])
    assert manifest["injected_errors"]["missing_nhs_number"] > 0
    assert manifest == json.loads(run.summary.to_json())


def test_ground_truth_has_one_row_per_source_patient_record_and_nothing_else(run: SynthRun) -> None:
    truth = run.truth()
    keys = [(r["source_org"], r["source_id"]) for r in truth]
    assert len(keys) == len(set(keys))
    written: set[tuple[str, str]] = set()
    for bundle in run.bundles():
        org = bundle["meta"]["source"].split("|")[1].split("#")[0]
        written.add((org, next(e["resource"]["id"] for e in bundle["entry"]
                               if e["resource"]["resourceType"] == "Patient")))
    for system in ("pas", "lab"):
        for message in run.messages(system):
            pid = next(s for s in message.split("\r") if s.startswith("PID|")).split("|")
            written.add(("RXR", pid[3].split("~")[0].split("^")[0]))
    written |= {("LRC", row["client_id"]) for row in run.rows()}
    assert written == set(keys)


def test_everyone_asked_for_is_there_and_registered_with_exactly_one_current_practice(run: SynthRun) -> None:
    truth = run.truth()
    assert {r["person_key"] for r in truth} == {f"P{n:07d}" for n in range(1, PEOPLE + 1)}
    current = [b for b in run.bundles("P8100*") if b["entry"][0]["resource"]["active"]]
    assert len(current) == PEOPLE


def test_a_run_smaller_than_twenty_people_has_no_journey_people(tmp_path: Path, framework: Framework) -> None:
    summary = generate(tmp_path, 5, 4, framework=framework)
    assert summary.journeys == []
    with (tmp_path / "ground_truth.csv").open(encoding="utf-8") as f:
        assert {r["person_key"] for r in csv.DictReader(f)} == {f"P{n:07d}" for n in range(1, 6)}


@pytest.mark.slow
def test_files_are_split_into_shards_of_about_a_thousand_people(tmp_path: Path, framework: Framework) -> None:
    summary = generate(tmp_path, 2100, 5, framework=framework)
    shards = sorted(f for f in summary.files if f.startswith("P81001/"))
    assert shards == ["P81001/fhir/emis-0000.ndjson", "P81001/fhir/emis-0001.ndjson", "P81001/fhir/emis-0002.ndjson"]


def test_progress_is_reported_until_every_person_is_counted(tmp_path: Path, framework: Framework) -> None:
    done: list[int] = []
    generate(tmp_path, 250, 9, framework=framework, progress=done.append)
    assert sum(done) == 250 and len(done) > 1


def test_users_csv_lists_the_frameworks_users(run: SynthRun, framework: Framework) -> None:
    with (run.root / "users.csv").open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["username", "name", "role", "organisation"]
        rows = list(reader)
    assert [r["username"] for r in rows] == list(framework.users)
    assert {"username": "para.evans", "name": "Carys Evans", "role": "paramedic", "organisation": "RYA"} in rows


def test_without_a_framework_argument_the_configured_framework_is_used(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_FILE))
    assert generate(tmp_path, 3, 1).framework_version == "2026.12-6"


@pytest.mark.slow
def test_memory_stays_flat_as_the_population_grows(tmp_path: Path, framework: Framework) -> None:
    def peak(people: int) -> int:
        tracemalloc.start()
        generate(tmp_path / str(people), people, 1, framework=framework)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(500), peak(2000)
    assert large < small * 1.5, (small, large)
