"""The ingest benchmarks: every feed format into SQLite and PostgreSQL, against plain baselines run on the
same input in the same invocation, plus HL7 parsers, MLLP and time-to-visible. Figures, never pass/fail.

Measured, each in a fresh process (so peak RSS, workers included, is its own), median of --repeats:
- FHIR NDJSON resources/s, HL7 v2 messages/s and CSV rows/s from the synthetic ICS's files, through
  `Pipeline.ingest_paths` (workers as configured, SHAREDCARE_INGEST_WORKERS);
- baselines on the same files: FHIR = json.loads + fhir.resources validation of each entry + one INSERT of
  the rows per file; HL7 = python-hl7 parse + INSERT; CSV = csv.reader + INSERT (no mapping, linking,
  provenance, idempotence or quarantine), so each overhead is a ratio;
- the same per CPU second of the measuring process (`time.process_time`: worker processes are not counted,
  so set SHAREDCARE_INGEST_WORKERS=0 for a figure that counts all the work): on a machine shared with other
  work, wall-clock rates follow the load and CPU rates much less;
- HL7 v2 parsing alone, against python-hl7 and hl7apy on the same messages: ours as ingest uses it
  (`hl7v2_syntax` splits segments and fields, charset, labels, Z-segments; a field is split further only
  when mapping reads it), and ours with every field split into components and unescaped (what python-hl7
  and hl7apy do for every message);
- MLLP: `sharedcare mllp` in a subprocess, one connection sending the ICS's HL7 messages one at a time:
  messages/s and ACK latency p50/p99;
- time to visible: an ORU result sent over MLLP until `Patient/$everything` (the real API and decision
  point, a clinician with a basis) shows its Observation, p50/p99;
- a ~1 GB NDJSON file (US billing resources set aside, so it measures reading and staging) with peak RSS.

The CPU figures count the staging workers too (sampled from /proc, see isolated.py). `--ics` reuses a
synthetic ICS made once (`sharedcare synth --seed 11`; at 100,000 people it takes minutes), and `--parts`
picks the measurements, so the issue's 100,000-person runs can be done part by part; each part's own
wall time is in the figures.

Usage: python benchmarks/ingest.py [--people 2000] [--ics DIR] [--parts fhir,hl7v2,csv,parsers,mllp]
                                   [--repeats 3] [--postgres URL] [--stores sqlite,postgresql] [--big-gb 1.0]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isolated import in_fresh_process  # benchmarks/ is on the path: these run as scripts
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
START, END = b"\x0b", b"\x1c\x0d"


PARTS = ("fhir", "hl7v2", "csv", "parsers", "mllp")


def measure(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """fn's figures from a fresh process; peak RSS is the larger of that process and its staging workers,
    and `all_cpu_seconds` adds the workers' CPU to the process's own."""
    result = in_fresh_process(fn, *args)
    result["peak_rss_mb"] = max(result["peak_rss_mb"], result.pop("workers_peak_rss_mb"))
    if "cpu_seconds" in result:
        result["all_cpu_seconds"] = result["cpu_seconds"] + result["workers_cpu_seconds"]
    return result


def _files(feeds: Path, pattern: str) -> list[Path]:
    return sorted(feeds.glob(pattern))


def _fresh(url: str) -> None:
    from sqlalchemy import create_engine, text

    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
        return
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def _warm() -> None:
    """Import the FHIR models before the clock starts, in ours and the baselines alike: a one-off cost
    (about a second) that would otherwise swamp the small feeds (the CSV extract)."""
    from fhir.resources.R4B import get_fhir_model_class

    from sharedcare.fhir.uk_core import RECORD_TYPES

    for name in RECORD_TYPES:
        get_fhir_model_class(name)


def pipeline_run(url: str, paths: list[str]) -> dict[str, Any]:
    from sharedcare.governance.framework import load_framework
    from sharedcare.ingest.pipeline import Pipeline
    from sharedcare.store.database import Database

    _fresh(url)
    db = Database(url)
    db.migrate()
    pipeline = Pipeline(db, load_framework())
    _warm()
    start, cpu = time.perf_counter(), time.process_time()
    report = pipeline.ingest_paths([Path(p) for p in paths])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    db.dispose()
    return {"seconds": seconds, "cpu_seconds": cpu, "messages": report.messages, "resources": report.accepted,
            "quarantined": report.quarantined, "quarantine_reasons": _reasons(report.quarantine),
            "messages_per_s": report.messages / seconds, "resources_per_s": report.accepted / seconds,
            "workers": pipeline.workers}


def _reasons(quarantine: list[dict[str, Any]]) -> dict[str, int]:
    """How many messages were quarantined for each reason, its values left out (so that a run on clean input
    can be told from one where something the synth did not mean to break was refused)."""
    import re
    from collections import Counter

    shapes = Counter(re.sub(r"'[^']*'", "'...'", re.sub(r"^\w+/[^:]+: ", "", item["reason"]))
                     for item in quarantine)
    return dict(shapes.most_common())


def _baseline_table(url: str) -> tuple[Any, Any]:
    from sqlalchemy import JSON, Column, Integer, LargeBinary, MetaData, Table, create_engine

    _fresh(url)
    engine = create_engine(url)
    meta = MetaData()
    table = Table("raw_baseline", meta, Column("id", Integer, primary_key=True), Column("doc", JSON),
                  Column("raw", LargeBinary))
    meta.create_all(engine)
    return engine, table


def fhir_baseline(url: str, paths: list[str]) -> dict[str, float]:
    """json.loads, fhir.resources validation of each entry, one INSERT of its rows per file."""
    from fhir.resources.R4B import get_fhir_model_class
    from sqlalchemy import insert

    engine, table = _baseline_table(url)
    _warm()
    start, cpu, count, messages = time.perf_counter(), time.process_time(), 0, 0
    for path in paths:
        rows = []
        with open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                messages += 1
                doc = json.loads(line)
                for entry in doc.get("entry", []) if doc.get("resourceType") == "Bundle" else [{"resource": doc}]:
                    res = entry.get("resource") or {}
                    try:
                        get_fhir_model_class(res.get("resourceType", "")).model_validate(res)
                    except Exception:  # noqa: BLE001,S112 - the baseline only skips what does not validate
                        continue
                    rows.append({"doc": res})
        with engine.begin() as conn:
            if rows:
                conn.execute(insert(table), rows)
        count += len(rows)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    engine.dispose()
    return {"seconds": seconds, "cpu_seconds": cpu, "resources": count, "resources_per_s": count / seconds,
            "messages_per_s": messages / seconds}


def hl7_baseline(url: str, paths: list[str]) -> dict[str, float]:
    """python-hl7 parse of each message (split as our reader does) and one INSERT of them per file."""
    import hl7
    from sqlalchemy import insert

    from sharedcare.ingest.hl7v2 import read_messages

    engine, table = _baseline_table(url)
    start, cpu, count = time.perf_counter(), time.process_time(), 0
    for path in paths:
        rows = []
        for raw in read_messages(Path(path)):
            text = raw.payload.decode("latin-1").replace("\r\n", "\r").replace("\n", "\r")
            hl7.parse(text)
            rows.append({"raw": raw.payload})
        with engine.begin() as conn:
            conn.execute(insert(table), rows)
        count += len(rows)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    engine.dispose()
    return {"seconds": seconds, "cpu_seconds": cpu, "messages": count, "messages_per_s": count / seconds}


def csv_baseline(url: str, paths: list[str]) -> dict[str, float]:
    """csv.DictReader and one INSERT of the rows (as JSON) per file."""
    from sqlalchemy import insert

    engine, table = _baseline_table(url)
    start, cpu, count = time.perf_counter(), time.process_time(), 0
    for path in paths:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = [{"doc": row} for row in csv.DictReader(handle)]
        with engine.begin() as conn:
            conn.execute(insert(table), rows)
        count += len(rows)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    engine.dispose()
    return {"seconds": seconds, "cpu_seconds": cpu, "messages": count, "messages_per_s": count / seconds}


def hl7_parsers(paths: list[str]) -> dict[str, float]:
    """Parse the same messages with ours, python-hl7 and hl7apy (each message once, messages/s)."""
    import hl7
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    from sharedcare.ingest.hl7v2 import _decode, read_messages

    def every_field(raw: Any) -> None:
        for segment in _decode(raw)[0]:  # (segments, whether UTF-8 was guessed)
            for number in range(1, len(segment.fields)):
                segment.reps(number)

    raws = [raw for path in paths for raw in read_messages(Path(path))]
    texts = [raw.payload.decode("latin-1").replace("\r\n", "\r").replace("\n", "\r") for raw in raws]
    out: dict[str, float] = {"messages": len(raws)}
    parsers: tuple[tuple[str, Callable[[Any], object], list[Any]], ...] = (
        ("ours", _decode, raws),
        ("ours_every_field", every_field, raws),
        ("python_hl7", hl7.parse, texts),
        ("hl7apy", lambda t: parse_message(t, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False), texts),
    )
    for name, parse, items in parsers:
        start = time.perf_counter()
        for item in items:
            parse(item)
        out[f"{name}_per_s"] = len(items) / (time.perf_counter() - start)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _send(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(START + payload + END)
    answer = b""
    while not answer.endswith(END):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the listener closed the connection")
        answer += chunk
    return answer


def mllp_run(url: str, paths: list[str], samples: int) -> dict[str, float]:
    """`sharedcare mllp` in a subprocess; the ICS's HL7 messages one at a time on one connection; then
    results sent one at a time, each polled for through the FHIR API until it shows."""
    from dataclasses import replace

    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from sharedcare.api.app import create_app
    from sharedcare.api.auth import mint_token
    from sharedcare.config import load_settings
    from sharedcare.fhir.uk_core import server_id
    from sharedcare.governance.framework import load_framework
    from sharedcare.ingest.hl7v2 import read_messages
    from sharedcare.store.database import Database
    from sharedcare.store.models import PatientRecord

    _fresh(url)
    db = Database(url)
    db.migrate()
    port = _free_port()
    env = {**os.environ, "SHAREDCARE_DB": url, "PYTHONPATH": str(SRC)}
    server = subprocess.Popen([sys.executable, "-c", "from sharedcare.cli import app; app()", "mllp",  # noqa: S603
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.1)
        payloads = [raw.payload.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
                    for path in paths for raw in read_messages(Path(path))]
        latencies, accepted = [], 0
        start = time.perf_counter()
        for payload in payloads:
            sent = time.perf_counter()
            answer = _send(sock, payload)
            latencies.append(time.perf_counter() - sent)
            accepted += b"MSA|AA" in answer
        seconds = time.perf_counter() - start
        figures = {"messages": len(payloads), "accepted_aa": accepted, "messages_per_s": len(payloads) / seconds,
                   "ack_p50_ms": 1000 * statistics.median(latencies),
                   "ack_p99_ms": 1000 * statistics.quantiles(latencies, n=100)[98]}

        framework = load_framework()
        settings = replace(load_settings(), database_url=url, demo=True)
        client = TestClient(create_app(settings, framework=framework, database=db))
        headers = {"Authorization": f"Bearer {mint_token(settings, framework, 'dr.oconnor')}"}
        with db.session() as session:
            mrns = list(session.scalars(select(PatientRecord.source_id).where(PatientRecord.source_org == "RXR")
                                        .order_by(PatientRecord.id).limit(samples)))
            persons = {mrn: session.scalars(select(PatientRecord.person_id).where(
                PatientRecord.source_org == "RXR", PatientRecord.source_id == mrn)).one() for mrn in mrns}
        for person in set(persons.values()):
            client.post(f"/api/access/{person}", json={"basis": "explicit-consent", "reason": ""}, headers=headers)
        visible = []
        for number, mrn in enumerate(mrns, start=1):
            filler = f"BENCH{number:05d}"
            oru = (f"MSH|^~\\&|LAB|RXR|SHAREDCARE|QRD|20261101120000||ORU^R01^ORU_R01|BENCH{number}|P|2.4\r"
                   f"PID|1||{mrn}^^^RXR^MR||BENCH^Test||19450911|M\r"
                   f"OBR|1|P{filler}|{filler}|CRP^C reactive protein^L|||20261101110000||||||||||||||"
                   f"20261101120000|||F\r"
                   f"OBX|1|NM|1001371000000100^Serum C reactive protein level^SCT||{number}|mg/L^mg/L^UCUM|0-5|H|||F")
            wanted = f"Observation/{server_id('RXR', 'Observation', f'{filler}-1')}"
            sent = time.perf_counter()
            _send(sock, oru.encode())
            while True:
                body = client.get(f"/fhir/Patient/{persons[mrn]}/$everything", headers=headers).text
                if wanted in body:
                    break
                if time.perf_counter() - sent > 30:
                    raise TimeoutError(f"{wanted} not visible after 30 s")
            visible.append(time.perf_counter() - sent)
        figures |= {"visible_samples": len(visible), "visible_p50_ms": 1000 * statistics.median(visible),
                    "visible_p99_ms": 1000 * max(visible) if len(visible) < 100 else
                    1000 * statistics.quantiles(visible, n=100)[98]}
        sock.close()
        return figures
    finally:
        server.kill()
        server.wait()
        db.dispose()


def big_file_run(url: str, gigabytes: float, work: str) -> dict[str, float]:
    """A ~N GB NDJSON file of US billing bundles (set aside) with a GP bundle every 1,000 lines."""
    from sharedcare.governance.framework import load_framework
    from sharedcare.ingest.pipeline import Pipeline
    from sharedcare.store.database import Database

    gp = "https://fhir.nhs.uk/Id/ods-organization-code|P81001#emis"
    claims = json.dumps({"resourceType": "Bundle", "type": "collection", "meta": {"source": gp}, "entry": [
        {"resource": {"resourceType": "Claim", "id": f"c{i}", "status": "active"}} for i in range(40)]})
    path = Path(work) / "P81001" / "big.ndjson"
    path.parent.mkdir(parents=True, exist_ok=True)
    target = int(gigabytes * 1e9)
    with path.open("w", encoding="utf-8") as handle:
        written = line = 0
        while written < target:
            line += 1
            if line % 1000 == 1:
                doc = {"resourceType": "Bundle", "type": "collection", "meta": {"source": gp}, "entry": [
                    {"resource": {"resourceType": "Patient", "id": f"big-{line}",
                                  "name": [{"family": "Big", "given": ["File"]}], "birthDate": "1970-01-01"}}]}
                text = json.dumps(doc)
            else:
                text = claims
            handle.write(text + "\n")
            written += len(text) + 1
    _fresh(url)
    db = Database(url)
    db.migrate()
    start = time.perf_counter()
    report = Pipeline(db, load_framework()).ingest_paths([path])
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    path.unlink()
    db.dispose()
    return {"gb": size / 1e9, "seconds": seconds, "mb_per_s": size / 1e6 / seconds, "messages": report.messages,
            "accepted": report.accepted, "set_aside": sum(report.set_aside.values())}


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _repeat(repeats: int, fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    runs = [measure(fn, *args) for _ in range(repeats)]  # (a figure that is no number, as the first run's)
    return {key: _median(runs, key) if isinstance(value, int | float) else value for key, value in runs[0].items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("SHAREDCARE_BENCH_POSTGRES"),
                        help="a PostgreSQL URL whose schema may be dropped (default: SHAREDCARE_BENCH_POSTGRES)")
    parser.add_argument("--big-gb", type=float, default=1.0, help="size of the large-file run (0 to skip)")
    parser.add_argument("--samples", type=int, default=100, help="results sent to measure time to visible")
    parser.add_argument("--ics", type=Path, help="an ICS made by `sharedcare synth` to use (default: make one of "
                                                 "--people with seed 11)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"what to measure, of {','.join(PARTS)}")
    parser.add_argument("--stores", default="sqlite,postgresql",
                        help="which stores the parts run on (postgresql only with --postgres; the 1 GB file is "
                             "always SQLite): at 100,000 people one store's parts take most of an hour")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--parts: unknown {', '.join(sorted(parts - set(PARTS)))}")
    console = Console(stderr=True)
    figures: dict[str, Any] = {"people": args.people, "repeats": args.repeats, "cpus": os.cpu_count(),
                               "load_average_at_start": os.getloadavg()[0], "part_seconds": {}}

    def timed(part: str, fn: Callable[..., Any], *fn_args: Any, **fn_kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*fn_args, **fn_kwargs)
        figures["part_seconds"][part] = time.perf_counter() - start
        return out

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        feeds = args.ics or work / "ics"
        if args.ics:
            figures["people"] = json.loads((feeds / "manifest.json").read_text())["people"]
        else:
            console.print(f"synthesising {args.people} people")
            timed("synth", subprocess.run, [sys.executable, "-c", "from sharedcare.cli import app; app()", "synth",
                                            "--people", str(args.people), "--out", str(feeds), "--seed", "11"],
                  check=True, env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.DEVNULL)
        sets = {"fhir": [str(p) for p in _files(feeds, "*/fhir/*.ndjson")],
                "hl7v2": [str(p) for p in _files(feeds, "*/hl7v2/*.hl7")],
                "csv": [str(p) for p in _files(feeds, "*/csv/*.csv")]}
        figures["input_mb"] = {k: sum(Path(p).stat().st_size for p in v) / 1e6 for k, v in sets.items()}
        sqlite = f"sqlite:///{work / 'bench.db'}"
        databases = {name: url for name, url in (("sqlite", sqlite), ("postgresql", args.postgres))
                     if url and name in args.stores.split(",")}
        baselines = {"fhir": fhir_baseline, "hl7v2": hl7_baseline, "csv": csv_baseline}
        for name, url in databases.items():
            for kind, paths in sets.items():
                if kind in parts:
                    console.print(f"{kind} into {name}")
                    ours = timed(f"{kind}/{name}", _repeat, args.repeats, pipeline_run, url, paths)
                    base = timed(f"{kind}/{name} baseline", _repeat, args.repeats, baselines[kind], url, paths)
                    figures[f"{kind}/{name}"] = {"sharedcare": ours, "baseline": base}
        if "parsers" in parts:
            console.print("HL7 v2 parsers")
            figures["hl7_parsers"] = timed("parsers", _repeat, args.repeats, hl7_parsers, sets["hl7v2"])
        for name, url in databases.items():
            if "mllp" in parts:
                console.print(f"MLLP into {name}")
                figures[f"mllp/{name}"] = timed(f"mllp/{name}", measure, mllp_run, url, sets["hl7v2"], args.samples)
        if args.big_gb > 0:
            console.print(f"{args.big_gb} GB NDJSON file into sqlite")
            figures["big_file/sqlite"] = timed("big_file/sqlite", measure, big_file_run, sqlite,
                                               args.big_gb, str(work / "big"))
    _print(console, figures)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ingest-{int(time.time())}.json"
    out.write_text(json.dumps(figures, indent=2))
    console.print(f"figures written to {out}")
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _print(console: Console, f: dict[str, Any]) -> None:
    table = Table(title=f"sharedcare ingest ({f['people']} people, median of {f['repeats']}, {f['cpus']} CPUs, "
                        f"load {f['load_average_at_start']:.1f} at start)")
    for column in ("measure", "sharedcare", "baseline", "ratio", "peak RSS MB"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    units = {"fhir": ("resources", "resources_per_s"), "hl7v2": ("messages", "messages_per_s"),
             "csv": ("rows", "messages_per_s")}
    for key, value in f.items():
        if "/" not in key or key.split("/")[0] not in units:
            continue
        kind, db = key.split("/")
        unit, field = units[kind]
        ours, base = value["sharedcare"][field], value["baseline"][field]
        table.add_row(f"{kind} {unit}/s into {db}", f"{ours:,.0f}", f"{base:,.0f}", f"{ours / base:.2f}",
                      f"{value['sharedcare']['peak_rss_mb']:.0f}")
        count = "resources" if kind == "fhir" else "messages"
        ours, base = (value[who][count] / value[who]["all_cpu_seconds"] for who in ("sharedcare", "baseline"))
        table.add_row(f"{kind} {unit} per CPU-s (workers too) into {db}", f"{ours:,.0f}", f"{base:,.0f}",
                      f"{ours / base:.2f}", "")
    p = f.get("hl7_parsers", {})
    for ours in ("ours", "ours_every_field") if p else ():
        for name in ("python_hl7", "hl7apy"):
            table.add_row(f"HL7 parse msgs/s: {ours} vs {name}", f"{p[f'{ours}_per_s']:,.0f}",
                          f"{p[f'{name}_per_s']:,.0f}", f"{p[f'{ours}_per_s'] / p[f'{name}_per_s']:.2f}", "")
    for key, m in f.items():
        if key.startswith("mllp/"):
            db = key.split("/")[1]
            table.add_row(f"MLLP msgs/s into {db}", f"{m['messages_per_s']:,.0f}", "", "", f"{m['peak_rss_mb']:.0f}")
            table.add_row(f"MLLP ACK p50 / p99 ms ({db})", f"{m['ack_p50_ms']:.1f} / {m['ack_p99_ms']:.1f}", "", "", "")
            table.add_row(f"source event visible p50 / p99 ms ({db}, {m['visible_samples']} results)",
                          f"{m['visible_p50_ms']:.0f} / {m['visible_p99_ms']:.0f}", "", "", "")
    if "big_file/sqlite" in f:
        b = f["big_file/sqlite"]
        table.add_row(f"{b['gb']:.2f} GB NDJSON MB/s (sqlite)", f"{b['mb_per_s']:.1f}", "", "",
                      f"{b['peak_rss_mb']:.0f}")
    console.print(table)
    console.print("seconds per part: " + ", ".join(f"{k} {v:.0f}" for k, v in f["part_seconds"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
