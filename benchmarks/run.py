"""The performance suite: synth and FHIR ingest throughput and peak memory, with same-run baselines.

Figures and ratios are printed (a Rich table) and written as JSON to benchmarks/results/; nothing here
passes or fails on time. Each measurement runs in a fresh process (so peak RSS is its own) and is
repeated; medians are quoted because this machine is shared and noisy.

Baselines, run in the same invocation on the same data:
- synth: writing one minimal Patient per person as NDJSON (the floor of emitting anything per person);
- ingest: json.loads of each bundle line plus a bulk INSERT of the raw JSON into one table of the same
  database (the floor of storing the bytes, with no validation, linking, provenance or audit).

Usage: python benchmarks/run.py [--people 2000] [--repeats 3] [--database sqlite|URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from isolated import in_fresh_process  # benchmarks/ is on the path: these run as scripts
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


def synth_run(out: str, people: int) -> dict[str, float]:
    from sharedcare.synth import generate

    start = time.perf_counter()
    summary = generate(Path(out), people=people, seed=11)
    seconds = time.perf_counter() - start
    files = [Path(out) / f for f in summary.files]
    return {"seconds": seconds, "people_per_s": people / seconds,
            "mb_written": sum(f.stat().st_size for f in files if f.exists()) / 1e6}


def synth_baseline(out: str, people: int) -> dict[str, float]:
    start = time.perf_counter()
    with open(Path(out) / "patients.ndjson", "w", encoding="utf-8") as handle:
        for i in range(people):
            handle.write(json.dumps({"resourceType": "Patient", "id": f"p{i}",
                                     "name": [{"family": "Smith", "given": ["Alex"]}],
                                     "birthDate": "1970-01-01"}) + "\n")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "people_per_s": people / seconds}


def _fhir_files(feeds: Path) -> list[Path]:
    return sorted(p for p in feeds.rglob("*.ndjson"))


def ingest_run(feeds: str, url: str) -> dict[str, float]:
    from sharedcare.governance.framework import load_framework
    from sharedcare.ingest.pipeline import Pipeline
    from sharedcare.store.database import Database

    db = Database(url)
    db.migrate()
    pipeline = Pipeline(db, load_framework())
    start = time.perf_counter()
    report = pipeline.ingest_paths(_fhir_files(Path(feeds)))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "resources": report.accepted, "resources_per_s": report.accepted / seconds,
            "messages_per_s": report.messages / seconds, "quarantined": report.quarantined}


def ingest_baseline(feeds: str, url: str) -> dict[str, float]:
    from sqlalchemy import JSON, Column, Integer, MetaData, Table, create_engine, insert

    engine = create_engine(url)
    meta = MetaData()
    raw = Table("raw_baseline", meta, Column("id", Integer, primary_key=True), Column("doc", JSON))
    meta.drop_all(engine)
    meta.create_all(engine)
    start, resources = time.perf_counter(), 0
    with engine.begin() as conn:
        for path in _fhir_files(Path(feeds)):
            rows = []
            with path.open("rb") as handle:
                for line in handle:
                    if line.strip():
                        doc = json.loads(line)
                        resources += len(doc.get("entry", []))
                        rows.append({"doc": doc})
            conn.execute(insert(raw), rows)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "resources": resources, "resources_per_s": resources / seconds}


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--database", default="sqlite", help="'sqlite' (a temp file) or a SQLAlchemy URL")
    args = parser.parse_args()
    console = Console()
    figures: dict[str, Any] = {"people": args.people, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synth_runs, base_runs = [], []
        for i in range(args.repeats):
            console.print(f"synth run {i + 1}/{args.repeats}")
            synth_runs.append(in_fresh_process(synth_run, str(work / f"synth{i}"), args.people))
            (work / f"base{i}").mkdir()
            base_runs.append(in_fresh_process(synth_baseline, str(work / f"base{i}"), args.people))
        big = in_fresh_process(synth_run, str(work / "synth-big"), args.people * 4)
        figures["synth"] = {
            "people_per_s": _median(synth_runs, "people_per_s"),
            "baseline_people_per_s": _median(base_runs, "people_per_s"),
            "peak_rss_mb": _median(synth_runs, "peak_rss_mb"),
            "peak_rss_mb_4x_people": big["peak_rss_mb"],
            "mb_written": _median(synth_runs, "mb_written"),
        }
        feeds = work / "synth0"
        ingest_runs, raw_runs = [], []
        for i in range(args.repeats):
            console.print(f"ingest run {i + 1}/{args.repeats}")
            url = f"sqlite:///{work / f'ingest{i}.db'}" if args.database == "sqlite" else args.database
            if args.database != "sqlite":
                _reset(url)
            ingest_runs.append(in_fresh_process(ingest_run, str(feeds), url))
            raw_url = f"sqlite:///{work / f'raw{i}.db'}" if args.database == "sqlite" else args.database
            raw_runs.append(in_fresh_process(ingest_baseline, str(feeds), raw_url))
        figures["ingest"] = {
            "database": args.database if args.database == "sqlite" else "postgresql",
            "resources": _median(ingest_runs, "resources"),
            "resources_per_s": _median(ingest_runs, "resources_per_s"),
            "messages_per_s": _median(ingest_runs, "messages_per_s"),
            "baseline_resources_per_s": _median(raw_runs, "resources_per_s"),
            "peak_rss_mb": _median(ingest_runs, "peak_rss_mb"),
            "quarantined": _median(ingest_runs, "quarantined"),
        }
    s, g = figures["synth"], figures["ingest"]
    table = Table(title=f"sharedcare benchmarks ({args.people} people, median of {args.repeats})")
    for column in ("measure", "sharedcare", "baseline", "ratio"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    table.add_row("synth people/s", f"{s['people_per_s']:.0f}", f"{s['baseline_people_per_s']:.0f}",
                  f"{s['people_per_s'] / s['baseline_people_per_s']:.3f}")
    table.add_row("synth peak RSS MB (N / 4N people)", f"{s['peak_rss_mb']:.0f} / {s['peak_rss_mb_4x_people']:.0f}",
                  "", f"{s['peak_rss_mb_4x_people'] / s['peak_rss_mb']:.2f}")
    table.add_row(f"ingest resources/s ({g['database']})", f"{g['resources_per_s']:.0f}",
                  f"{g['baseline_resources_per_s']:.0f}", f"{g['resources_per_s'] / g['baseline_resources_per_s']:.3f}")
    table.add_row("ingest messages/s", f"{g['messages_per_s']:.0f}", "", "")
    table.add_row("ingest peak RSS MB", f"{g['peak_rss_mb']:.0f}", "", "")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{int(time.time())}.json"
    out.write_text(json.dumps(figures, indent=2))
    console.print(f"figures written to {out}")
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _reset(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
