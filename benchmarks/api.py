"""The FHIR API under governance, as a client sees it: latency and throughput over loopback HTTP.

One synthetic ICS is built once (synth, then ingest through the one pipeline, then one person's record
grown to about --large resources) and kept in --store, so later runs reuse it. The server is the
app `sharedcare serve` runs (uvicorn, governance on: every read decided and audited), started in its
own process; the client (httpx) runs here. Measured, each as median / p95 / p99 in milliseconds:
- `Patient/{id}/$everything` for typical records (people with the median number of resources);
- `$everything` for the large record;
- a resource read (`GET /fhir/{type}/{id}`) and a search (`GET /fhir/Observation?patient=...`);
- the resource read again from wrk with one request in flight (when wrk is installed): the latency a
  client sees without a Python client's own time in it (httpx adds about 0.5 ms a request here), which
  is the figure the read's target is judged by;
- the server's CPU time per request (from /proc, its worker processes included), steadier than wall
  time on a shared machine;
- requests per second under concurrent load (--concurrency requests in flight for --seconds), for the
  large record and for a typical mix. The load generator is wrk when it is installed (`apt-get install
  wrk`: C, so it leaves the 2 cores to the server), else an asyncio httpx client in this process.
The server runs --workers processes (`sharedcare serve --workers`).

Targets (issue 7, this 2-core machine, shared with the client): large-record `$everything` p50 < 30 ms,
p99 < 150 ms, >= 50 requests/s; a resource read p50 < 2 ms (wrk, one in flight). Figures only: nothing
passes or fails.

With --copies the people ingested are copied in SQL (new ids, same contents: `benchmarks/export.py`'s
`replicate`) to reach the issue's 100,000 people (`--people 10000 --copies 9`) in minutes; the copies
share their originals' NHS numbers and choices, so only the store's size differs from an ingested one.

Usage: python benchmarks/api.py [--people 10000] [--copies 0] [--store var/bench] [--large 1000] [--seconds 20]
                                [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the dev dependency starlette's TestClient uses
from large_record import add_large_record
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import func, select, text

from export import ingested_records, replicate  # benchmarks/ is on the path: these run as scripts
from sharedcare.api.auth import mint_token
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.ingest.pipeline import Pipeline, expand_paths
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Resource
from sharedcare.synth import generate

RESULTS = Path(__file__).parent / "results"
USER = "dr.patel"  # a GP: the widest clinical view, so every resource is decided and most released
SEED = 7
console = Console(stderr=True)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": statistics.median(values), "p95": percentile(values, 95),
            "p99": percentile(values, 99)}


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
                    console=console)


def build_store(store: Path, people: int, large: int, fw: Framework, copies: int = 0) -> dict[str, Any]:
    """Synthesise and ingest once (then `copies` copies of those people in SQL); the store's manifest says
    what it holds so a later run can reuse it."""
    manifest = store / "store.json"
    if manifest.exists():
        built = json.loads(manifest.read_text())
        if (built.get("people") == people and built.get("large") == large and built.get("seed") == SEED
                and built.get("copies", 0) == copies):
            console.print(f"reusing the store in {store} ({people} people, built {built['built_at']})")
            return dict(built)
    store.mkdir(parents=True, exist_ok=True)
    for old in store.glob("api.db*"):
        old.unlink()
    feeds = store / "feeds"
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("synthesising people", total=people)
        generate(feeds, people=people, seed=SEED, framework=fw, progress=lambda n: progress.advance(task, n))
    synth_s = time.perf_counter() - start
    db = Database(f"sqlite:///{store / 'api.db'}")
    db.migrate()
    files = expand_paths([feeds])
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("ingesting", total=sum(p.stat().st_size for p in files))
        report = Pipeline(db, fw).ingest_paths(files, progress=lambda n: progress.advance(task, n))
    ingest_s = time.perf_counter() - start
    start = time.perf_counter()
    replicate(str(db.url), range(1, copies + 1), ingested_records(str(db.url)))
    own_ids(db)
    replicate_s = time.perf_counter() - start
    nhs = add_large_record(db, fw, feeds, store / "large.ndjson", large)
    with db.session() as session:
        resources = session.scalar(select(func.count(Resource.id)))
    db.dispose()
    built = {"people": people, "copies": copies, "large": large, "seed": SEED, "large_nhs_number": nhs,
             "resources": resources, "accepted": report.accepted, "quarantined": report.quarantined, "synth_s": synth_s,
             "ingest_s": ingest_s, "replicate_s": replicate_s, "built_at": utcnow().isoformat()}
    manifest.write_text(json.dumps(built, indent=2))
    return built


def own_ids(db: Database) -> None:
    """Give each copied resource its own server id as its FHIR id, as ingest does (`replicate` keeps the
    original's), so that the ids `$everything` serves read the copy back. SQLite (the store here)."""
    with db.session() as session:
        session.execute(text("UPDATE resources SET content = json_set(content, '$.id', id) "
                             "WHERE json_extract(content, '$.id') <> id"))


def pick_records(db: Database, fw: Framework, nhs: str, sample: int) -> tuple[list[str], str, int, int]:
    """People with the median record size, the large record's person, and their sizes; each given a basis."""
    with db.session() as session:
        sizes = {pid: n for pid, n in session.execute(
            select(PatientRecord.person_id, func.count(Resource.id))
            .join(Resource, Resource.patient_record_id == PatientRecord.id).group_by(PatientRecord.person_id))}
        large = session.scalars(select(PatientRecord.person_id).where(PatientRecord.nhs_number == nhs)).first()
    assert large is not None
    median = int(statistics.median(sizes.values()))
    typical = sorted((pid for pid, n in sizes.items() if n == median and pid != large))
    random.Random(SEED).shuffle(typical)
    typical = typical[:sample]
    actor = actor_for(fw, USER)
    for pid in [*typical, large]:
        with db.session() as session:
            records = GovernedRecords(session, fw, actor)
            if records.active_basis(pid) is None:
                records.record_basis(pid, "explicit-consent", "")
    return typical, large, median, sizes[large]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(store: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    """`sharedcare serve` on the store, in its own process (the same app and settings an operator runs)."""
    env = {**os.environ, "SHAREDCARE_DB": f"sqlite:///{store / 'api.db'}", "SHAREDCARE_DEMO": "1"}
    command = [sys.executable, "-c", "from sharedcare.cli import app; app()", "serve", "--host", "127.0.0.1",
               "--port", str(port)] + (["--workers", str(workers)] if workers > 1 else [])
    log = store / "server.log"
    with log.open("wb") as handle:
        server = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)  # noqa: S603
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server did not start; see {log}:\n{log.read_text()[-2000:]}")


def server_cpu_ms(pid: int) -> float:
    """CPU time the server process and its worker processes have used (user + system), in ms: what a
    request costs the server, whatever else this shared machine is running meanwhile."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # the server, or one of its workers
            total += int(fields[11]) + int(fields[12])
    return total * 1000 / os.sysconf("SC_CLK_TCK")


def timed(client: httpx.Client, paths: list[str], repeat: int, check: Callable[[httpx.Response], None],
          server: int) -> tuple[list[float], float]:
    """Wall-clock ms of each request, and the server's mean CPU ms per request."""
    out = []
    cpu = server_cpu_ms(server)
    for _ in range(repeat):
        for path in paths:
            start = time.perf_counter()
            response = client.get(path)
            out.append((time.perf_counter() - start) * 1000)
            check(response)
    return out, (server_cpu_ms(server) - cpu) / len(out)


def ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}: {response.text[:300]}")


def wrk_load(base: str, headers: dict[str, str], paths: list[str], concurrency: int, seconds: float,
             scratch: Path) -> dict[str, float]:
    """`load` with wrk: each connection takes the paths in turn (a Lua script), so the generator's own CPU
    is a small part of the machine's."""
    script = scratch / "paths.lua"
    script.write_text("paths = {" + ",".join(json.dumps(p) for p in paths) + "}\n"
                      "counter = 0\n"
                      "request = function()\n  counter = counter + 1\n"
                      "  return wrk.format('GET', paths[(counter % #paths) + 1])\nend\n")
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--latency", "-s", str(script)]
    command += [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    out = subprocess.run([*command, base], capture_output=True, text=True, check=True).stdout  # noqa: S603
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def ms(label: str) -> float:
        found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        return float(found[1]) * units[found[2]] if found else float("nan")

    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": requests, "errors": int(errors[1]) if errors else 0, "seconds": seconds,
            "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
            "latency_p50": ms("50%"), "latency_p95": float("nan"), "latency_p99": ms("99%")}


async def load(base: str, headers: dict[str, str], paths: list[str], concurrency: int,
               seconds: float) -> dict[str, float]:
    """`concurrency` requests in flight for `seconds`; completed requests per second, and their latency."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:
        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop:
                start = time.perf_counter()
                response = await client.get(paths[i % len(paths)])
                latencies.append((time.perf_counter() - start) * 1000)
                errors += response.status_code != 200
                i += concurrency
        began = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {"requests": len(latencies), "errors": errors, "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, **{f"latency_{k}": v for k, v in summary(latencies).items()
                                                           if k != "n"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=10000, help="about ten minutes of set-up here")
    parser.add_argument("--store", type=Path, default=Path("var/bench"))
    parser.add_argument("--copies", type=int, default=0,
                        help="copies of the ingested people made in SQL (new person, record and resource ids, same "
                             "contents, as benchmarks/export.py makes them): --people 10000 --copies 9 is an ICS "
                             "of 100,000 people, which ingest here could not load in the time")
    parser.add_argument("--large", type=int, default=1000, help="resources in the large record")
    parser.add_argument("--sample", type=int, default=100, help="typical records read")
    parser.add_argument("--repeat", type=int, default=3, help="times each typical record is read")
    parser.add_argument("--large-requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20, help="length of each load run")
    parser.add_argument("--workers", type=int, default=2, help="server processes (one per core)")
    parser.add_argument("--generator", choices=("wrk", "httpx"), default="wrk" if shutil.which("wrk") else "httpx")
    args = parser.parse_args()
    fw = load_framework()
    store = args.store / (f"api-{args.people}" + (f"x{args.copies + 1}" if args.copies else ""))
    built = build_store(store, args.people, args.large, fw, args.copies)
    db = Database(f"sqlite:///{store / 'api.db'}")
    typical, large, median, large_size = pick_records(db, fw, built["large_nhs_number"], args.sample)
    db.dispose()

    settings = replace(load_settings(), demo=True)
    headers = {"Authorization": f"Bearer {mint_token(settings, fw, USER)}"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    console.print(f"serving {store} on {base}")
    server = start_server(store, port, args.workers)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            everything = [f"/fhir/Patient/{pid}/$everything" for pid in typical]
            timed(client, everything[:10] + [f"/fhir/Patient/{large}/$everything"] * 5, 1, ok, server.pid)  # warm up
            ids = []
            for pid in typical:
                bundle = client.get(f"/fhir/Patient/{pid}/$everything").json()
                ids += [f"/fhir/{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]
                        if e["search"]["mode"] == "match" and e["resource"]["resourceType"] != "Patient"]
            reads = random.Random(SEED).sample(ids, min(len(ids), 300))
            searches = [f"/fhir/Observation?patient={pid}" for pid in typical]
            console.print("timing single requests")
            typical_ms, typical_cpu = timed(client, everything, args.repeat, ok, server.pid)
            large_ms, large_cpu = timed(client, [f"/fhir/Patient/{large}/$everything"], args.large_requests, ok,
                                        server.pid)
            read_ms, read_cpu = timed(client, reads, 1, ok, server.pid)
            search_ms, search_cpu = timed(client, searches, args.repeat, ok, server.pid)
        read_wrk = None
        if args.generator == "wrk":
            console.print(f"resource reads from wrk, one in flight for {args.seconds:.0f} s")
            cpu = server_cpu_ms(server.pid)
            read_wrk = wrk_load(base, headers, reads, 1, args.seconds, store)
            read_wrk["server_cpu_mean"] = (server_cpu_ms(server.pid) - cpu) / max(1, read_wrk["requests"])
        console.print(f"load ({args.generator}): {args.concurrency} in flight for {args.seconds:.0f} s, twice")
        mix = everything + reads + searches
        random.Random(SEED).shuffle(mix)
        runs = []
        for paths in ([f"/fhir/Patient/{large}/$everything"], mix):
            cpu = server_cpu_ms(server.pid)
            run = (wrk_load(base, headers, paths, args.concurrency, args.seconds, store) if args.generator == "wrk"
                   else asyncio.run(load(base, headers, paths, args.concurrency, args.seconds)))
            runs.append({**run, "server_cpu_mean": (server_cpu_ms(server.pid) - cpu) / max(1, run["requests"]),
                         "generator": args.generator})
        load_large, load_mix = runs
    finally:
        server.terminate()
        server.wait(timeout=30)

    figures = {
        "people": args.people * (args.copies + 1), "people_ingested": args.people,
        "resources_in_store": built["resources"], "quarantined_at_ingest": built["quarantined"],
        "set_up_s": {"synth": built["synth_s"], "ingest": built["ingest_s"]}, "database": "sqlite",
        "user": USER, "typical_record_resources": median, "large_record_resources": large_size,
        "everything_typical_ms": {**summary(typical_ms), "server_cpu_mean": typical_cpu},
        "everything_large_ms": {**summary(large_ms), "server_cpu_mean": large_cpu},
        "read_ms": {**summary(read_ms), "server_cpu_mean": read_cpu}, "read_wrk_one_in_flight": read_wrk,
        "search_ms": {**summary(search_ms), "server_cpu_mean": search_cpu},
        "load_large_everything": load_large, "load_typical_mix": load_mix, "concurrency": args.concurrency,
        "workers": args.workers, "load_average_1m": os.getloadavg()[0],
        "targets": {"everything_large_p50_ms": 30, "everything_large_p99_ms": 150, "requests_per_s": 50,
                    "read_p50_ms": 2},
        "measured_at": utcnow().isoformat(),
    }
    table = Table(title=f"FHIR API, governance on ({figures['people']} people, {built['resources']} resources, "
                        f"SQLite, user {USER}, {args.workers} server processes; ms unless stated)")
    for column in ("request", "p50", "p95", "p99", "server CPU", "target"):
        table.add_column(column, justify="left" if column == "request" else "right")
    rows = [(f"$everything, typical record ({median} resources)", figures["everything_typical_ms"], ""),
            (f"$everything, large record ({large_size} resources)", figures["everything_large_ms"],
             "p50 < 30, p99 < 150"),
            ("resource read (httpx)", figures["read_ms"], "" if read_wrk else "p50 < 2"),
            ("search Observation?patient=", figures["search_ms"], "")]
    for label, s, target in rows:
        table.add_row(label, f"{s['p50']:.2f}", f"{s['p95']:.2f}", f"{s['p99']:.2f}", f"{s['server_cpu_mean']:.2f}",
                      target)
    if read_wrk:
        table.add_row("resource read (wrk, 1 in flight)", f"{read_wrk['latency_p50']:.2f}", "",
                      f"{read_wrk['latency_p99']:.2f}", f"{read_wrk['server_cpu_mean']:.2f}", "p50 < 2")
    for label, run in ((f"load: large $everything, {args.concurrency} in flight", load_large),
                       (f"load: typical mix, {args.concurrency} in flight", load_mix)):
        table.add_row(f"{label}: {run['requests_per_s']:.0f} req/s ({run['errors']} errors)",
                      f"{run['latency_p50']:.2f}", f"{run['latency_p95']:.2f}", f"{run['latency_p99']:.2f}",
                      f"{run['server_cpu_mean']:.2f}", ">= 50 req/s" if "large" in label else "")
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"api-{int(time.time())}.json").write_text(json.dumps(figures, indent=2))
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
