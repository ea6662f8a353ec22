"""Cost of the required value sets' check at ingest (`fhir/value_sets.py`), on a synthetic ICS.

As `uk_core_rules.py` measures the UK Core rules, each alternated in rounds in one process, thread CPU,
medians of the rounds:
- per check: every FHIR resource of a record type in the synth feeds through `walked_problems` (the
  structural walk, for scale) and `value_set_problems`;
- per staged resource: every FHIR message staged as a staging worker stages it (`stage`), with the check and
  with it switched off, so its share of a staging worker's time is a ratio.
Also counts the resources the check refuses (the synth ICS should have none).

    PYTHONPATH=src python benchmarks/value_sets.py var/synth --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from invariants import cpu_per_resource, resources  # benchmarks/invariants.py: the same resources, same timing
from uk_core_rules import messages, stage_cpu  # the same staging timed with one check on or off

from sharedcare.fhir.validate import walked_problems
from sharedcare.fhir.value_sets import value_set_problems
from sharedcare.governance.framework import load_framework


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("synth", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    batch = resources(args.synth)
    refused = [p for r in batch for p in value_set_problems(r)]
    walk: list[float] = []
    sets: list[float] = []
    for _ in range(args.rounds):
        walk.append(cpu_per_resource(walked_problems, batch))
        sets.append(cpu_per_resource(value_set_problems, batch))
    framework = load_framework()
    raws = messages(args.synth)
    on: list[float] = []
    off: list[float] = []
    for _ in range(args.rounds):
        cost, staged_on = stage_cpu(raws, framework, "value_set_problems", on=True)
        on.append(cost)
        cost, staged_off = stage_cpu(raws, framework, "value_set_problems", on=False)
        off.append(cost)
    print(json.dumps({
        "resources": len(batch), "refused": len(refused), "refusals": refused[:5],
        "walk_us": round(statistics.median(walk) * 1e6, 2),
        "value_sets_us": round(statistics.median(sets) * 1e6, 2),
        "value_sets_vs_walk": round(statistics.median(v / w for v, w in zip(sets, walk, strict=True)), 3),
        "messages": len(raws), "staged_resources": [staged_on, staged_off],
        "stage_with_check_us": round(statistics.median(on) * 1e6, 2),
        "stage_without_check_us": round(statistics.median(off) * 1e6, 2),
        "stage_ratio": round(statistics.median(a / b for a, b in zip(on, off, strict=True)), 4),
    }))


if __name__ == "__main__":
    main()
