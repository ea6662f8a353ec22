"""Cost of the core-invariant and security checks per resource, against the structural walk, on a synthetic ICS.

Every FHIR resource of a record type in the synth feeds is checked by `walked_problems` (the structural walk,
the baseline) and `invariant_problems`, alternated in rounds in one process; thread CPU per resource, median
of the rounds. Also counts the resources either check refuses (the synth ICS should have none).

    PYTHONPATH=src python benchmarks/invariants.py var/synth --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sharedcare.fhir.invariants import invariant_problems
from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.fhir.validate import walked_problems


def resources(folder: Path) -> list[dict[str, Any]]:
    """Every resource of a type the record keeps, from the synth ICS's FHIR feeds."""
    out = []
    for path in sorted(folder.glob("*/fhir/*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            message = json.loads(line)
            entries = [e.get("resource") for e in message.get("entry", [])] if message.get(
                "resourceType") == "Bundle" else [message]
            out += [r for r in entries if isinstance(r, dict) and r.get("resourceType") in RECORD_TYPES]
    return out


def cpu_per_resource(check: Callable[[dict[str, Any]], list[str]], batch: list[dict[str, Any]]) -> float:
    started = time.thread_time()
    for resource in batch:
        check(resource)
    return (time.thread_time() - started) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("synth", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    batch = resources(args.synth)
    refused = {"walk": sum(1 for r in batch if walked_problems(r)),
               "invariants": [p for r in batch for p in invariant_problems(r)][:5]}
    walk: list[float] = []
    invariants: list[float] = []
    for _ in range(args.rounds):
        walk.append(cpu_per_resource(walked_problems, batch))
        invariants.append(cpu_per_resource(invariant_problems, batch))
    print(json.dumps({"resources": len(batch), "refused": refused,
                      "walk_us": round(statistics.median(walk) * 1e6, 1),
                      "invariants_us": round(statistics.median(invariants) * 1e6, 1),
                      "ratio": round(statistics.median(i / w for i, w in zip(invariants, walk, strict=True)), 3),
                      "with_narrative": sum(1 for r in batch if isinstance(r.get("text"), dict))}))


if __name__ == "__main__":
    main()
