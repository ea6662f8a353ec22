"""The pseudonymiser's cost per resource, this checkout's against another's (say main's), in one process.

Every clinical row of a store is decoded into its declared shape and encoded as an extract's line
(`Pseudonymiser.decode` and `.encode`, after `.for_person` for each person in turn, as an export does),
by this checkout's `governance/pseudonymise.py` and by the one under `--compare-src`, alternating in
rounds; process CPU, medians of the rounds. The rest of an export
(reading the store, the decision, writing files) is not in it: `benchmarks/export.py` measures that.

    PYTHONPATH=src python benchmarks/pseudonymise.py sqlite:///var/sharedcare.db --compare-src ../main/src
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import create_engine, text

MODULE = Path("sharedcare") / "governance" / "pseudonymise.py"


def _load(src: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, src / MODULE)
    assert spec is not None and spec.loader is not None  # noqa: S101 - a path given on the command line
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # msgspec resolves the Structs' annotations through the module
    spec.loader.exec_module(module)
    return module


def _cpu(module: ModuleType, rows: list[Any]) -> float:
    pseudonymiser = module.Pseudonymiser("a pseudonym key of the benchmark, 32+ bytes", "secondary-use")
    person = None
    started = time.process_time()
    for server_id, resource_type, content, person_id, born in rows:
        if person_id != person:  # as an export does, person by person (with the date of birth of the record)
            person = person_id
            pseudonymiser.for_person(person_id, str(born) if born else None)
        try:
            shaped = pseudonymiser.decode(resource_type, content)
        except module.Unreadable:
            continue
        pseudonymiser.encode(shaped, server_id, frozenset())
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("database", help="a store's URL (its clinical rows are the input)")
    parser.add_argument("--compare-src", type=Path, required=True, help="another checkout's src folder")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with create_engine(args.database).connect() as connection:
        rows = list(connection.execute(text(
            "SELECT r.id, r.resource_type, CAST(r.content AS TEXT), p.person_id, p.birth_date FROM resources r "
            "JOIN patient_records p ON p.id = r.patient_record_id WHERE r.resource_type <> 'Patient' "
            "ORDER BY p.person_id")))
    here, there = _load(Path(__file__).resolve().parents[1] / "src", "pseudonymise_here"), \
        _load(args.compare_src.resolve(), "pseudonymise_there")
    times: dict[str, list[float]] = {"compared": [], "this": []}
    for _ in range(args.rounds):
        times["compared"].append(_cpu(there, rows))
        times["this"].append(_cpu(here, rows))
    before, after = statistics.median(times["compared"]), statistics.median(times["this"])
    print(f"{len(rows)} rows, CPU median of {args.rounds} rounds: compared {before * 1000:.1f} ms "
          f"({len(rows) / before:,.0f}/s), this {after * 1000:.1f} ms ({len(rows) / after:,.0f}/s), "
          f"ratio {after / before:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
