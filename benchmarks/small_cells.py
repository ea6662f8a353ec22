"""How many people of a pseudonymised extract are alone, or in a group under k, on what their Patient
publishes (sex, year and month of birth and death, postcode district, practice, ethnic category, source),
by age band, before and after the small-cell check (`governance/small_cells.py`); and its cost.

A synthetic ICS of `--people` is synthesised and ingested into SQLite (kept at `--store`: a store already
there is used as it is), streamed as the analyst's extract (`SecondaryUse.stream`, what an export writes),
and its Patient lines are counted as they come out of the pseudonymiser and as `small_cells.protect`
leaves them. Age is from the published year and month of birth, at the synthetic ICS's date. Cost: the
stream of the whole extract (every resource decided and pseudonymised, nothing written: what main's
export computes) and the check after it, in rounds in one process, process CPU, medians.

    PYTHONPATH=src python benchmarks/small_cells.py --people 10000 --store /tmp/ics10k.db [--k 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

from sharedcare.governance.framework import load_framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.secondary import ExportCounts, ExportScope, SecondaryUse
from sharedcare.governance.small_cells import _STEP_RULES, STEPS, SUPPRESSED, _combination, combinations, protect
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.synth import generate
from sharedcare.synth.generator import DEFAULT_AS_OF

BANDS = ((0, 1), (2, 4), (5, 15), (16, 24), (25, 44), (45, 64), (65, 74), (75, 84), (85, 200))
_LABELS = [f"{low}+" if high == 200 else f"{low}-{high}" for low, high in BANDS]
ANALYST = "analyst.chen"


def _band(birth: str | None) -> str:
    if not birth or len(birth) < 7:
        return "no month of birth"
    age = (DEFAULT_AS_OF.year - int(birth[:4])) * 12 + DEFAULT_AS_OF.month - int(birth[5:7])
    years = age // 12
    low, high = next(b for b in BANDS if b[0] <= years <= b[1])
    return f"{low}+" if high == 200 else f"{low}-{high}"


def _store(people: int, path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    if not path.exists() or path.stat().st_size == 0:
        db.migrate()
        with tempfile.TemporaryDirectory() as feeds:
            generate(Path(feeds), people=people, seed=5, framework=load_framework())
            Pipeline(db, load_framework()).ingest_paths([Path(feeds)])
    return db


def _patients(db: Database) -> list[bytes]:
    fw = load_framework()
    secondary = SecondaryUse(db, fw, os.environ.get("SHAREDCARE_PSEUDONYM_KEY", "a pseudonym key of the benchmark, "
                                                    "32+ bytes"), actor_for(fw, ANALYST), "secondary-use")
    return [line for t, line in secondary.stream(ExportScope("system"), ExportCounts()) if t == "Patient"]


def _table(lines: list[bytes], bands: list[str], k: int) -> dict[str, dict[str, int]]:
    """People, people alone and people in a group under k on what their Patient publishes, by age band
    (`bands`: each person's, from the month of birth the pseudonymiser gave)."""
    sizes = combinations(lines)
    rows: dict[str, Counter[str]] = {}
    for line, band in zip(lines, bands, strict=True):
        size = sizes[_combination(orjson.loads(line))]
        row = rows.setdefault(band, Counter())
        row["people"] += 1
        row["unique"] += size == 1
        row[f"under {k}"] += size < k
    return {band: dict(rows[band]) for band in [*_LABELS, "no month of birth"] if band in rows}


def _step(line: bytes, out: bytes) -> str:
    """The step a Patient was settled at: the first whose generalisation gives what was published."""
    patient, published = orjson.loads(line), _combination(orjson.loads(out))
    for step, rule in zip(STEPS, _STEP_RULES, strict=True):
        rule(patient)
        if _combination(patient) == published:
            return step
    return SUPPRESSED


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--store", type=Path, required=True, help="SQLite file (built if missing)")
    parser.add_argument("--k", type=int, default=load_framework().purposes["secondary-use"].k)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    db = _store(args.people, args.store)
    streaming, checking = [], []  # the extract as main streams it, and the check added to it: alternating
    for _ in range(args.rounds):
        started = time.process_time()
        lines = _patients(db)
        streamed = time.process_time()
        protected, small = protect(lines, args.k)
        streaming.append(streamed - started)
        checking.append(time.process_time() - streamed)
    bands = [_band(orjson.loads(line).get("birthDate")) for line in lines]
    before, after = _table(lines, bands, args.k), _table(protected, bands, args.k)
    # the originals' age bands, for where the generalised and suppressed people were
    moved: dict[str, Counter[str]] = {}
    for line, out, band in zip(lines, protected, bands, strict=True):
        if line != out:
            moved.setdefault(band, Counter())[_step(line, out)] += 1
    print(json.dumps({"people": len(lines), "k": args.k, "before": before, "after": after,
                      "changed_by_band": {b: dict(moved[b]) for b in _LABELS if b in moved},
                      "summary": small.as_dict(),
                      "stream_cpu_s_median": round(statistics.median(streaming), 3),
                      "check_cpu_ms_median": round(statistics.median(checking) * 1000, 1),
                      "ratio": round((statistics.median(streaming) + statistics.median(checking))
                                     / statistics.median(streaming), 4)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
