"""Ingest of one feed set into a fresh store by whichever sharedcare is first on PYTHONPATH, so that two commits
can be measured back to back on one machine (the matching lock's cost, 2026-12-07). Figures, never pass/fail.

kind `fhir` or `hl7v2`: `Pipeline.ingest_paths` as `ingest.py`'s `pipeline_run`, with the CPU of the PostgreSQL
backends serving the store added (read from /proc); `mllp`: `sharedcare mllp` of the same code in a subprocess,
the ICS's HL7 v2 messages one at a time on one connection (the first, which warms the server, not counted), the
CPU of the server process and of the backends, ACK p50/p99. NOLOCK=1: `mpi.hold_matching` made to do nothing
(the same code without the matching lock). On a shared machine compare CPU, and alternate the codes by round.

Usage (SHAREDCARE_INGEST_WORKERS=0 so that the process's CPU is all of ingest's):
  git archive COMMIT | tar -x -C /tmp/old
  PYTHONPATH=/tmp/old/src python benchmarks/ingest_ab.py ICS {fhir,hl7v2,mllp} URL
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ingest import _files, _free_port, _fresh, _send, _warm  # benchmarks/ is on the path: these run as scripts

PATCH = ("import sharedcare.identity.mpi as m, sharedcare.ingest.pipeline as p; "
         "m.hold_matching = p.hold_matching = lambda session, demos: None; ")


if os.environ.get("NOLOCK"):
    exec(PATCH)  # noqa: S102 - the benchmark's own constant


def server_cpu(dbname: str) -> float:
    """CPU seconds (user + system) of the PostgreSQL backends serving this database now."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if not cmd.startswith(b"postgres: ") or f" {dbname} ".encode() not in cmd:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return total


def run(url: str, paths: list[str]) -> dict[str, Any]:
    from sharedcare.governance.framework import load_framework
    from sharedcare.ingest.pipeline import Pipeline
    from sharedcare.store.database import Database
    _fresh(url)
    db = Database(url)
    db.migrate()
    pipeline = Pipeline(db, load_framework())
    _warm()
    dbname = url.rsplit("/", 1)[1]
    pg = url.startswith("postgresql")
    server = server_cpu(dbname) if pg else 0.0
    start, cpu = time.perf_counter(), time.process_time()
    report = pipeline.ingest_paths([Path(p) for p in paths])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    server = (server_cpu(dbname) - server) if pg else 0.0
    db.dispose()
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "server_cpu_seconds": round(server, 3),
            "messages": report.messages, "resources": report.accepted, "quarantined": report.quarantined}


def mllp(url: str, paths: list[str]) -> dict[str, Any]:
    from sharedcare.ingest.hl7v2 import read_messages
    from sharedcare.store.database import Database
    _fresh(url)
    db = Database(url)
    db.migrate()
    db.engine.dispose()
    port = _free_port()
    env = {**os.environ, "SHAREDCARE_DB": url}
    code = (PATCH if os.environ.get("NOLOCK") else "") + "from sharedcare.cli import app; app()"
    server = subprocess.Popen([sys.executable, "-c", code, "mllp", "--port", str(port)], env=env,  # noqa: S603
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dbname = url.rsplit("/", 1)[1]
    pg = url.startswith("postgresql")
    tick = os.sysconf("SC_CLK_TCK")

    def cpu_now() -> float:
        fields = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick + (server_cpu(dbname) if pg else 0.0)

    try:
        for _ in range(600):
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.1)
        payloads = [raw.payload.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
                    for path in paths for raw in read_messages(Path(path))]
        _send(sock, payloads[0])  # warms the server; not counted
        payloads = payloads[1:]
        latencies, accepted = [], 0
        cpu0, start = cpu_now(), time.perf_counter()
        for payload in payloads:
            sent = time.perf_counter()
            answer = _send(sock, payload)
            latencies.append(time.perf_counter() - sent)
            accepted += b"MSA|AA" in answer
        seconds, cpu = time.perf_counter() - start, cpu_now() - cpu0
        sock.close()
        return {"seconds": round(seconds, 3), "cpu_seconds_server_and_db": round(cpu, 3), "messages": len(payloads),
                "accepted_aa": accepted, "messages_per_s": round(len(payloads) / seconds, 1),
                "ack_p50_ms": round(1000 * statistics.median(latencies), 3),
                "ack_p99_ms": round(1000 * statistics.quantiles(latencies, n=100)[98], 3)}
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    ics, kind, url = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    pattern = {"fhir": "*/fhir/*.ndjson", "hl7v2": "*/hl7v2/*.hl7", "mllp": "*/hl7v2/*.hl7"}[kind]
    paths = [str(p) for p in _files(ics, pattern)]
    print(json.dumps(mllp(url, paths) if kind == "mllp" else run(url, paths)))


if __name__ == "__main__":
    main()
