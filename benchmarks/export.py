"""Bulk Data export throughput and memory: the governed, pseudonymised export against plain dumping.

One synthetic ICS is synthesised and ingested through the pipeline (`--people`), then replicated in
SQL (`--copies` times: new person, record and resource ids, same contents) to reach a population that
ingest could not load in the time. Measured in fresh processes (so peak RSS is each run's own),
repeated, medians quoted (this machine is shared and noisy):

- export: `ExportJobs.run` as the analyst, exactly what `$export` and `sharedcare export` run: stream
  by person, `decide_secondary` per person (opt-outs, agreements, labels, sensitive categories, tiers),
  pseudonymise, write NDJSON per type, audit. Resources/s by the wall clock and by the process's CPU
  time (the CPU figure is what the code costs; the wall figure also holds the other tenants' load);
- baseline, same run: the same rows in the same order written as stored to NDJSON per type, with no
  decision, no pseudonymisation and no audit (the floor of getting the bytes out of this store);
- peak RSS of the export at a quarter of the population and at all of it (bounded memory: the two
  should be close), and of a one-process export (which holds the whole stream in one process);
- the export with `--workers` processes (shards of the people) and with one.

With `--compare-src` the export of another checkout (say main's `src`) runs too, alternating with this
one's on the same store: before/after figures in the same conditions. `--store FILE` keeps the SQLite store
built (about 1.6 GB at the defaults); a store already there (that file, or a `--database` an earlier run
built) is used as it is, without the quarter-population memory figure.

With `--orders` only the export runs, with 1 and `--workers` processes, as shipped (people in the order
of their pseudonyms) and with the people listed by server id (the order before the sixth security review,
monkeypatched into this process and its workers: a baseline, never shipped), alternated run by run, and
with `--compare-src` that checkout's export too: wall and CPU seconds (medians, and every run's in the
JSON), and whether every run wrote the same files (SHA-256). `SHAREDCARE_EXPORT_PEOPLE_PER_WORKER=1`
makes a small store's export start its workers all the same.

Usage: python benchmarks/export.py [--people 2000] [--copies 24] [--repeats 3] [--workers 2]
                                   [--database URL | --store FILE] [--compare-src DIR] [--orders]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _cpu() -> float:
    """CPU seconds of this process and of the worker processes it has waited for."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _by_person_id(self: Any, session: Any, scope: Any, pseudonymiser: Any, shard: tuple[int, int]) -> list[str]:
    """`SecondaryUse._people` as it was before extracts were in pseudonym order (`--orders`' baseline only,
    never shipped: two purposes' files would line up): the people by server id, shard i of n the i-th of n
    runs of them."""
    from sqlalchemy import select

    from sharedcare.store.models import PatientRecord

    stmt = select(PatientRecord.person_id).distinct()
    if scope.group:
        stmt = stmt.where(PatientRecord.person_id.in_(self._group_members(scope.group)))
    people = sorted(session.scalars(stmt))
    index, count = shard
    return people[index * len(people) // count:(index + 1) * len(people) // count]


def _in_id_order() -> None:
    from sharedcare.governance.secondary import SecondaryUse

    SecondaryUse._people = _by_person_id  # type: ignore[method-assign]


def _shard_in_id_order(task: Any, on_people: Any = None) -> Any:
    """`run_shard` in a worker process, with the people in id order (spawned workers import afresh)."""
    from sharedcare.export import jobs

    _in_id_order()
    # a fresh worker's run_shard is the module's own; in the process that patched it in, the one it replaced
    return getattr(jobs, "unpatched_run_shard", jobs.run_shard)(task, on_people)


def export_run(url: str, out: str, workers: int, src: str | None = None, order: str = "pseudonym",
               digest: bool = False) -> dict[str, float]:
    """One export (`ExportJobs.start` and `run`); `order="id"` lists the people by server id instead of by
    pseudonym (the baseline of `--orders`), `digest` adds a SHA-256 of each file written."""
    if src is not None:  # another checkout's code (--compare-src), here and in the workers this process spawns
        sys.path.insert(0, src)
    from dataclasses import replace

    from sharedcare.config import load_settings
    from sharedcare.export import jobs as jobs_module
    from sharedcare.export.jobs import ExportJobs
    from sharedcare.governance.framework import load_framework
    from sharedcare.governance.gateway import actor_for
    from sharedcare.governance.secondary import ExportScope
    from sharedcare.store.database import Database

    if order == "id":
        _in_id_order()
        jobs_module.unpatched_run_shard = jobs_module.run_shard  # type: ignore[attr-defined]
        jobs_module.run_shard = _shard_in_id_order
    fw = load_framework()
    jobs = ExportJobs(Database(url), fw, replace(load_settings(), data_path=Path(out), export_workers=workers))
    started, cpu = time.perf_counter(), _cpu()
    job = jobs.start(actor_for(fw, "analyst.chen"), ExportScope("system"), "benchmark", background=False)
    start = time.perf_counter()
    view = jobs.run(job)
    end = time.perf_counter()
    seconds, cpu_seconds = end - start, _cpu() - cpu
    resources = sum(o["count"] for o in view.output)
    figures: dict[str, Any] = {
        "seconds": seconds, "start_and_run_seconds": end - started, "cpu_seconds": cpu_seconds,
        "resources": resources, "resources_per_s": resources / seconds,
        "cpu_resources_per_s": resources / cpu_seconds, "people": view.summary["people_included"],
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    if digest:
        import hashlib

        folder = Path(out) / "exports" / job
        figures["digests"] = {o["file"]: hashlib.sha256((folder / o["file"]).read_bytes()).hexdigest()
                              for o in view.output}
    return figures


def baseline_run(url: str, out: str) -> dict[str, float]:
    """The same rows, in the same order, written as stored: no decision, no pseudonymisation, no audit."""
    from sqlalchemy import Text, cast, select

    from sharedcare.store.database import Database
    from sharedcare.store.models import PatientRecord, Resource

    db = Database(url)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    handles: dict[str, Any] = {}
    start, cpu, resources = time.perf_counter(), _cpu(), 0
    with db.session() as session:
        rows = session.execute(select(Resource.resource_type, cast(Resource.content, Text))
                               .join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
                               .order_by(PatientRecord.person_id).execution_options(yield_per=2000))
        for resource_type, text in rows:
            handle = handles.get(resource_type)
            if handle is None:
                handle = handles[resource_type] = (folder / f"{resource_type}.ndjson").open("w", encoding="utf-8")
            handle.write(text + "\n")
            resources += 1
    for handle in handles.values():
        handle.close()
    seconds, cpu_seconds = time.perf_counter() - start, _cpu() - cpu
    return {"seconds": seconds, "resources": resources, "resources_per_s": resources / seconds,
            "cpu_resources_per_s": resources / cpu_seconds}


def ingested_records(url: str) -> tuple[int, int]:
    """The id range of the source records ingest made (the ones `replicate` copies)."""
    from sqlalchemy import func, select

    from sharedcare.store.database import Database
    from sharedcare.store.models import PatientRecord

    db = Database(url)
    with db.session() as session:
        first = int(session.scalar(select(func.min(PatientRecord.id))) or 1) - 1
        last = int(session.scalar(select(func.max(PatientRecord.id))) or 0)
    db.dispose()
    return first, last


def replicate(url: str, copies: range, records: tuple[int, int]) -> None:
    """Copy the ingested people `copies` times with new ids (persons, source records, resources), each
    resource with the category ingest stored for it."""
    from sqlalchemy import text

    from sharedcare.store.database import Database

    db = Database(url)
    top, last = records
    for copy in copies:
        params = {"prefix": f"{copy:08x}", "tag": f"k{copy}-", "offset": copy * (last + 1), "first": top, "last": last}
        with db.session() as session:
            session.execute(text(
                "INSERT INTO persons (id, created_at) SELECT :prefix || substr(id, 9), created_at FROM persons "
                "WHERE id IN (SELECT person_id FROM patient_records WHERE id > :first AND id <= :last)"), params)
            session.execute(text(
                "INSERT INTO patient_records (id, source_org, source_id, person_id, nhs_number, family, family_key, "
                "given, given_key, birth_date, gender, postcode, link_method, match_probability, link_status, "
                "updated_at) "
                "SELECT id + :offset, source_org, :tag || source_id, :prefix || substr(person_id, 9), nhs_number, "
                "family, family_key, given, given_key, birth_date, gender, postcode, link_method, match_probability, "
                "link_status, updated_at "
                "FROM patient_records WHERE id > :first AND id <= :last"), params)
            session.execute(text(
                "INSERT INTO resources (id, resource_type, source_org, source_system, source_id, patient_record_id, "
                "version, content, content_hash, recorded_at, received_at, message_id, category, category_key) "
                "SELECT :prefix || substr(id, 9), resource_type, source_org, source_system, :tag || source_id, "
                "patient_record_id + :offset, version, content, content_hash, recorded_at, received_at, message_id, "
                "category, category_key "
                "FROM resources WHERE patient_record_id > :first AND patient_record_id <= :last"), params)
    db.dispose()


def build(url: str, feeds: Path, people: int) -> dict[str, float]:
    from sharedcare.governance.framework import load_framework
    from sharedcare.ingest.pipeline import Pipeline
    from sharedcare.store.database import Database
    from sharedcare.synth import generate

    fw = load_framework()
    generate(feeds, people=people, seed=23, framework=fw)
    db = Database(url)
    db.migrate()
    start = time.perf_counter()
    report = Pipeline(db, fw).ingest_paths([feeds])
    return {"ingest_seconds": time.perf_counter() - start, "ingested_resources": report.accepted}


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _holds_store(url: str) -> bool:
    """Whether the database already holds resources (a store an earlier run built and kept)."""
    from sqlalchemy import func, inspect, select

    from sharedcare.store.database import Database
    from sharedcare.store.models import Resource

    db = Database(url)
    try:
        with db.session() as session:
            return inspect(session.connection()).has_table("resources") and bool(
                session.scalar(select(func.count()).select_from(Resource)))
    finally:
        db.dispose()


def _store(url: str, work: Path, args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Build the store (ingest, then copies); measure an export at a quarter of the population on the way."""
    console.print(f"synthesising and ingesting {args.people} people")
    built = in_fresh_process(build, url, work / "feeds", args.people)
    quarter = max(0, (args.copies + 1) // 4 - 1)
    records = ingested_records(url)
    replicate(url, range(1, quarter + 1), records)
    console.print(f"export at a quarter of the population ({(quarter + 1) * args.people} people)")
    small = in_fresh_process(export_run, url, str(work / "small"), args.workers)
    console.print(f"replicating to {(args.copies + 1) * args.people} people")
    start = time.perf_counter()
    replicate(url, range(quarter + 1, args.copies + 1), records)
    return {"ingest_seconds": built["ingest_seconds"], "replicate_seconds": time.perf_counter() - start,
            "export_peak_rss_mb_quarter_population": small["peak_rss_mb"]}


def compare_orders(url: str, work: Path, args: argparse.Namespace, compare: str | None,
                   console: Console) -> dict[str, Any]:
    """`--orders`: the export with the people in pseudonym order (as shipped) and in server id order (the
    order before the sixth review, monkeypatched in: the baseline only), with 1 and `--workers` processes,
    interleaved run by run (each variant first in turn), in fresh processes; with `--compare-src` that
    checkout's export (pseudonym order) too. Wall seconds of `run` (and of `start` and `run`), CPU seconds of
    every process, medians; the files of this code and the compared code compared by SHA-256."""
    variants: list[tuple[str, str | None, str]] = [("pseudonym", None, "pseudonym"), ("id", None, "id")]
    if compare:
        variants.append(("compared", compare, "pseudonym"))
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    loads: list[float] = []
    for i in range(args.repeats):
        for workers in sorted({1, args.workers}):
            order = variants[i % len(variants):] + variants[:i % len(variants)]
            for name, src, people_order in order:
                console.print(f"run {i + 1}/{args.repeats}, {workers} process(es): {name}")
                loads.append(os.getloadavg()[0])
                runs.setdefault((name, workers), []).append(in_fresh_process(
                    export_run, url, str(work / f"{name}{workers}-{i}"), workers, src, people_order, True))
    figures: dict[str, Any] = {"people": runs[("pseudonym", 1)][0]["people"], "repeats": args.repeats,
                               "load_average_1min": {"min": min(loads), "median": statistics.median(loads),
                                                     "max": max(loads)}, "cpus": os.cpu_count(),
                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for (name, workers), done in runs.items():
        figures[f"{name}_{workers}"] = {
            "run_seconds": _median(done, "seconds"), "start_and_run_seconds": _median(done, "start_and_run_seconds"),
            "cpu_seconds": _median(done, "cpu_seconds"), "resources": done[0]["resources"],
            "all_run_seconds": [round(r["seconds"], 3) for r in done]}
    digests = {(name, workers): {json.dumps(r["digests"], sort_keys=True) for r in done}
               for (name, workers), done in runs.items()}
    figures["same_files_every_run"] = all(len(d) == 1 for d in digests.values())
    ours = {d for (name, _), ds in digests.items() if name == "pseudonym" for d in ds}
    figures["same_files_1_and_n_workers"] = len(ours) == 1
    if compare:
        figures["compare_src"] = compare
        figures["same_files_as_compared"] = ours == {d for (n, _), ds in digests.items() if n == "compared" for d in ds}
    table = Table(title=f"Export by people's order ({figures['people']} people exported, "
                        f"{figures['pseudonym_1']['resources']} resources, median of {args.repeats}, "
                        f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs)")
    for column in ("export", "processes", "run s (wall)", "start+run s", "CPU s", "wall / id order",
                   "CPU / id order"):
        table.add_column(column, justify="left" if column == "export" else "right")
    for name, _, _ in variants:
        for workers in sorted({1, args.workers}):
            mine, base = figures[f"{name}_{workers}"], figures[f"id_{workers}"]
            table.add_row(name, str(workers), f"{mine['run_seconds']:.2f}", f"{mine['start_and_run_seconds']:.2f}",
                          f"{mine['cpu_seconds']:.2f}", f"{mine['run_seconds'] / base['run_seconds']:.2f}",
                          f"{mine['cpu_seconds'] / base['cpu_seconds']:.2f}")
    Console().print(table)
    Console().print(f"same files in every run: {figures['same_files_every_run']}; with 1 and {args.workers} "
                    f"processes: {figures['same_files_1_and_n_workers']}"
                    + (f"; as --compare-src's: {figures['same_files_as_compared']}" if compare else ""))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=2000, help="people synthesised and ingested")
    parser.add_argument("--copies", type=int, default=24, help="extra copies of them made in SQL (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="processes per export (SHAREDCARE_EXPORT_WORKERS)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database", default=None,
                       help="a SQLAlchemy URL of an empty database, or of one holding a store an earlier run built "
                            "(used as it is) (default: SQLite in a temporary folder)")
    where.add_argument("--store", type=Path, default=None,
                       help="a SQLite file to build the store in and keep, or that holds one (used as it is)")
    parser.add_argument("--compare-src", type=Path, default=None,
                        help="the src folder of another checkout (say main's): its export runs too, alternating "
                             "with this one's on the same store, for before/after figures in the same conditions")
    parser.add_argument("--orders", action="store_true",
                        help="only compare the export with the people in pseudonym order and in server id order "
                             "(the order before the sixth review; with --compare-src, that checkout's too), "
                             "with 1 and --workers processes")
    args = parser.parse_args()
    console = Console(stderr=True)
    compare = str(args.compare_src.resolve()) if args.compare_src else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = args.database or f"sqlite:///{(args.store or work / 'export.db').resolve()}"
        built: dict[str, Any] = {}
        if _holds_store(url):
            console.print("using the store already there (--people and --copies do not apply)")
        else:
            built = _store(url, work, args, console)
        if args.orders:
            ordered = compare_orders(url, work, args, compare, console)
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"export-order-{int(time.time())}.json").write_text(json.dumps(ordered, indent=2))
            json.dump(ordered, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        exports: list[dict[str, Any]] = []
        compared: list[dict[str, Any]] = []
        singles: list[dict[str, Any]] = []
        baselines: list[dict[str, Any]] = []
        loads: list[float] = []
        for i in range(args.repeats):
            console.print(f"run {i + 1}/{args.repeats}: export{' and the compared export' if compare else ''}, "
                          f"one process, then baseline")
            # alternated, so that neither code always runs after the other (the machine is shared)
            order = [(exports, None), (compared, compare)] if compare else [(exports, None)]
            for runs, src in order if i % 2 == 0 else reversed(order):
                loads.append(os.getloadavg()[0])
                runs.append(in_fresh_process(export_run, url, str(work / f"export{i}-{len(runs)}"), args.workers,
                                             src))
            singles.append(in_fresh_process(export_run, url, str(work / f"single{i}"), 1))
            baselines.append(in_fresh_process(baseline_run, url, str(work / f"baseline{i}")))
    figures: dict[str, Any] = {
        "database": "sqlite" if args.database is None else "given", "people_ingested": args.people,
        "people": exports[0]["people"], "stored_resources": baselines[0]["resources"],
        "exported_resources": exports[0]["resources"], "repeats": args.repeats,
        "ingest_seconds": built.get("ingest_seconds"), "replicate_seconds": built.get("replicate_seconds"),
        "export_resources_per_s": _median(exports, "resources_per_s"),
        "export_cpu_resources_per_s": _median(exports, "cpu_resources_per_s"),
        "workers": args.workers,
        "export_one_process_resources_per_s": _median(singles, "resources_per_s"),
        "export_one_process_peak_rss_mb": _median(singles, "peak_rss_mb"),
        "baseline_resources_per_s": _median(baselines, "resources_per_s"),
        "baseline_cpu_resources_per_s": _median(baselines, "cpu_resources_per_s"),
        "export_seconds": _median(exports, "seconds"),
        "export_peak_rss_mb": _median(exports, "peak_rss_mb"),
        "export_worker_peak_rss_mb": _median(exports, "worker_peak_rss_mb"),
        "export_peak_rss_mb_quarter_population": built.get("export_peak_rss_mb_quarter_population"),
        "baseline_peak_rss_mb": _median(baselines, "peak_rss_mb"),
        "load_average_1min": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if compare:
        figures.update({"compare_src": compare, "compare_resources_per_s": _median(compared, "resources_per_s"),
                        "compare_cpu_resources_per_s": _median(compared, "cpu_resources_per_s"),
                        "compare_worker_peak_rss_mb": _median(compared, "worker_peak_rss_mb"),
                        "compare_exported_resources": compared[0]["resources"]})
    figures["export_over_baseline"] = figures["export_resources_per_s"] / figures["baseline_resources_per_s"]
    table = Table(title=f"Bulk export ({figures['people']} people, {figures['stored_resources']} stored resources, "
                        f"median of {args.repeats}, load average {min(loads):.1f}-{max(loads):.1f})")
    for column in ("measure", "export (governed, pseudonymised)", "baseline (plain dump)", "ratio"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row(f"resources/s (wall, {args.workers} processes)", f"{figures['export_resources_per_s']:.0f}",
                  f"{figures['baseline_resources_per_s']:.0f}", f"{figures['export_over_baseline']:.2f}")
    table.add_row("resources/s (wall, 1 process)", f"{figures['export_one_process_resources_per_s']:.0f}",
                  f"{figures['baseline_resources_per_s']:.0f}",
                  f"{figures['export_one_process_resources_per_s'] / figures['baseline_resources_per_s']:.2f}")
    table.add_row("resources per CPU-second (all processes)", f"{figures['export_cpu_resources_per_s']:.0f}",
                  f"{figures['baseline_cpu_resources_per_s']:.0f}",
                  f"{figures['export_cpu_resources_per_s'] / figures['baseline_cpu_resources_per_s']:.2f}")
    if compare:
        table.add_row(f"--compare-src's export: resources/s (wall, {args.workers} processes; per CPU-second)",
                      f"{figures['compare_resources_per_s']:.0f}; {figures['compare_cpu_resources_per_s']:.0f}", "",
                      f"this / it: {figures['export_resources_per_s'] / figures['compare_resources_per_s']:.2f}; "
                      f"{figures['export_cpu_resources_per_s'] / figures['compare_cpu_resources_per_s']:.2f}")
    quarter = figures["export_peak_rss_mb_quarter_population"]
    table.add_row("peak RSS MB, main process (all / a quarter of the people; 1 process)",
                  f"{figures['export_peak_rss_mb']:.0f} / {'-' if quarter is None else f'{quarter:.0f}'}; "
                  f"{figures['export_one_process_peak_rss_mb']:.0f}",
                  f"{figures['baseline_peak_rss_mb']:.0f}", "")
    table.add_row("peak RSS MB of a worker process", f"{figures['export_worker_peak_rss_mb']:.0f}", "", "")
    table.add_row("resources exported (the rest withheld or excluded)", str(figures["exported_resources"]),
                  str(figures["stored_resources"]), "")
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"export-{int(time.time())}.json").write_text(json.dumps(figures, indent=2))
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
