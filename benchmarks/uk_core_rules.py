"""Cost of the UK Core rules per resource, against the structural walk and the invariants, on a synthetic ICS.

Two measures, each alternated in rounds in one process, thread CPU, medians of the rounds:
- per check: every FHIR resource of a record type in the synth feeds through `walked_problems`,
  `invariant_problems` and `uk_core_problems` in turn;
- per staged resource: every FHIR message staged as a staging worker stages it (`stage`), with the rules and
  with them switched off, so the rules' share of a staging worker's time is a ratio.
Also counts the resources the rules refuse (the synth ICS should have none).

    PYTHONPATH=src python benchmarks/uk_core_rules.py var/synth --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from invariants import cpu_per_resource, resources  # benchmarks/invariants.py: the same resources, same timing

from sharedcare.fhir import checks
from sharedcare.fhir.invariants import invariant_problems
from sharedcare.fhir.uk_core_rules import uk_core_problems
from sharedcare.fhir.validate import walked_problems
from sharedcare.governance.framework import load_framework
from sharedcare.ingest.messages import MessageError, RawMessage
from sharedcare.ingest.pipeline import ADAPTERS
from sharedcare.ingest.staging import stage

_CHECKS = SimpleNamespace(**vars(checks))  # each check as `fhir.checks` holds it before a run switches one off


def messages(folder: Path) -> list[RawMessage]:
    """Every message of the synth ICS's FHIR feeds, as the file reader hands them to staging."""
    adapter = ADAPTERS["fhir"]
    return [raw for path in sorted(folder.glob("*/fhir/*.ndjson")) for raw in adapter.read(path)]


def stage_cpu(batch: list[RawMessage], framework: Any, check: str = "uk_core_problems",
              on: bool = True) -> tuple[float, int]:
    """Thread CPU per staged resource, staging every message with one of `fhir.checks`' checks on or off."""
    setattr(checks, check, getattr(_CHECKS, check) if on else _none)
    staged = 0
    started = time.thread_time()
    for raw in batch:
        try:
            staged += len(stage(ADAPTERS["fhir"], raw, framework, None).resources)
        except MessageError:
            pass
    return (time.thread_time() - started) / max(staged, 1), staged


def _none(resource: dict[str, Any]) -> list[str]:
    return []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("synth", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    batch = resources(args.synth)
    refused = [p for r in batch for p in uk_core_problems(r)]
    walk: list[float] = []
    invariants: list[float] = []
    rules: list[float] = []
    for _ in range(args.rounds):
        walk.append(cpu_per_resource(walked_problems, batch))
        invariants.append(cpu_per_resource(invariant_problems, batch))
        rules.append(cpu_per_resource(uk_core_problems, batch))
    framework = load_framework()
    raws = messages(args.synth)
    with_rules: list[float] = []
    without: list[float] = []
    for _ in range(args.rounds):
        cost, staged_with = stage_cpu(raws, framework, on=True)
        with_rules.append(cost)
        cost, staged_without = stage_cpu(raws, framework, on=False)
        without.append(cost)
    print(json.dumps({
        "resources": len(batch), "refused": len(refused), "refusals": refused[:5],
        "walk_us": round(statistics.median(walk) * 1e6, 2),
        "invariants_us": round(statistics.median(invariants) * 1e6, 2),
        "uk_core_us": round(statistics.median(rules) * 1e6, 2),
        "uk_core_vs_walk": round(statistics.median(r / w for r, w in zip(rules, walk, strict=True)), 3),
        "messages": len(raws), "staged_resources": [staged_with, staged_without],
        "stage_with_rules_us": round(statistics.median(with_rules) * 1e6, 2),
        "stage_without_rules_us": round(statistics.median(without) * 1e6, 2),
        "stage_ratio": round(statistics.median(a / b for a, b in zip(with_rules, without, strict=True)), 4),
    }))


if __name__ == "__main__":
    main()
