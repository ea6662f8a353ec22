"""What governance costs: decision latency, audit append rate, and `$everything` with and without it.

All in one process on one synthetic ICS (SQLite unless --database names another store):
- decision latency: `policy.decide` for each person's full record, median and p99 per decision;
- audit append rate: events per second appended to the hash chain (one transaction per event, as reads do),
  and what keying the chain costs: one entry's chain hash as an HMAC under the chain's key and as the plain
  SHA-256 entries had before (governance/audit.py), timed alternately in batches; and what building the
  checkpoint tree afresh costs an entry (a server's first checkpoint: each entry read whole and checked to be
  the service's, `checkpoints.AuditTree.catch_up`; later checkpoints add only the entries since);
- `$everything` with and without governance, at the gateway and as whole HTTP requests. Without
  governance is `Ungoverned` below: the same rows read the same way (the gateway's `_rows`, with its
  decoded-content cache), served whole through the same route, with no decision inputs (agreements,
  choices, basis), no classification, no decision and no audit. Each record is read both ways in
  turn, several times, so load on the machine falls on both.
  Governance's share of a request is (governed - ungoverned) / governed, on the medians (and on the
  means: only the governed read writes, so only it pays SQLite's periodic WAL checkpoint, which a median
  leaves out). For HTTP the share that counts is of the server's CPU time: the process's CPU time less
  that of the calling thread, which is the test client's own work (building the request, taking in the
  body), not the server's; the share of the whole in-process round trip is kept beside it.
- the same for one large record (about --large resources, ingested through the pipeline).

Usage: python benchmarks/governance.py [--people 1000] [--sample 200] [--large 1000] [--database URL] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.testclient import TestClient
from large_record import add_large_record  # benchmarks/ is on the path: these run as scripts
from rich.console import Console
from rich.table import Table
from sqlalchemy import event, func, select

from sharedcare.api import fhir
from sharedcare.api.app import create_app
from sharedcare.api.auth import mint_token
from sharedcare.api.deps import Interaction, caller, governed_records
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.governance.audit import AuditAction, AuditRecord, _digest, record_audit, to_audit_event
from sharedcare.governance.checkpoints import AuditTree
from sharedcare.governance.content_cache import content_cache
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.governance.gateway import (
    GovernedRecords,
    NotFound,
    RecordView,
    actor_for,
    combined_patient,
    demographics_rule,
)
from sharedcare.governance.policy import Actor, Item, decide
from sharedcare.governance.review import NOTHING_ON_REVIEW
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditHead, PatientRecord, Resource
from sharedcare.synth import generate

RESULTS = Path(__file__).parent / "results"
USER = "dr.patel"
ROUNDS = 5


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


class Ungoverned(GovernedRecords):
    """The baseline: what `$everything` costs with governance taken out, and nothing else changed."""

    def __init__(self, session: Any, fw: Framework, actor: Actor, **_: Any) -> None:  # no agreements read
        self.session, self.fw, self.actor, self.resource_types = session, fw, actor, None

    def everything(self, person_id: str, query: str | None = None, asked: Iterable[str] = ()) -> RecordView:
        # The gateway's signature (the route passes `asked`). The same rows read the same way (the
        # decoded-content cache is the store's, not governance's)
        rows = self._rows(person_id, patients_only=False)
        if not rows:
            raise NotFound(f"no patient {person_id}")
        # and served the same way: whole, from the cache's shapes, making none of the decision's objects
        # per resource (no `Item`, no `Released`: those are governance's cost)
        cache = content_cache(self.session)
        served = [self._serve(person_id, row, 3, "", self._unknown, cache) for row in rows]
        patients = [s for s in served if s.resource_type == "Patient"]
        # the same choice of demographics from the same records, without the IG review look-up (governance's)
        rule = demographics_rule((Item(s.content, "Patient", s.source_org, "") for s in patients),
                                 self.fw.gp_practices, NOTHING_ON_REVIEW)
        patient = combined_patient(person_id, patients, rule)
        clinical = [s for s in served if s.resource_type != "Patient"]
        return RecordView(person_id, patient, clinical, withheld=Counter(), headlines=[],
                          basis="", sources=sorted({s.source_org for s in served}))


Timings = dict[str, list[float]]


def paired(people: list[str], governed: Callable[[str], None], ungoverned: Callable[[str], None],
           rounds: int = ROUNDS) -> Timings:
    """Milliseconds per call: wall clock, this process's CPU time (steadier on a shared machine), and the
    process's CPU time less the calling thread's ("server": in an HTTP call the server's threads, not the
    test client's), each person read both ways in turn, `rounds` times over, governed first in one round
    and ungoverned first in the next: the second read of a record finds it warmer in the CPU's caches."""
    out: Timings = {f"{name}{kind}": [] for name in ("governed", "ungoverned") for kind in ("", "_cpu", "_server")}
    both = [(governed, "governed"), (ungoverned, "ungoverned")]
    for round_ in range(rounds):
        for pid in people:
            for fn, name in both if round_ % 2 == 0 else both[::-1]:
                wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
                fn(pid)
                process, caller = time.process_time() - cpu, time.thread_time() - own
                out[name + "_server"].append((process - caller) * 1000)
                out[name + "_cpu"].append(process * 1000)
                out[name].append((time.perf_counter() - wall) * 1000)
    return out


def gateway_reads(db: Database, fw: Framework, actor: Actor, people: list[str], rounds: int = ROUNDS) -> Timings:
    def governed(pid: str) -> None:
        with db.session() as session:
            GovernedRecords(session, fw, actor).everything(pid)

    def ungoverned(pid: str) -> None:
        with db.session() as session:
            Ungoverned(session, fw, actor).everything(pid)

    return paired(people, governed, ungoverned, rounds)


def http_reads(client: TestClient, headers: dict[str, str], people: list[str], rounds: int = ROUNDS) -> Timings:
    """Whole `GET $everything` requests in process: the app as served, and the same app with the route's
    records (`fhir.governed_records`) swapped for `Ungoverned` (same token check, route, serialisation)."""
    app: Any = client.app
    db: Database = app.state.database
    fw: Framework = app.state.framework

    @contextmanager
    def ungoverned_records(request: Request, interaction: Interaction | None = None) -> Iterator[GovernedRecords]:
        with db.session() as session:  # the same token check, in the same session, as the real one
            yield Ungoverned(session, fw, caller(request, app.state.settings, fw, session))

    def get(pid: str) -> None:
        response = client.get(f"/fhir/Patient/{pid}/$everything", headers=headers)
        assert response.status_code == 200, response.text

    def governed(pid: str) -> None:
        fhir.governed_records = governed_records
        get(pid)

    def ungoverned(pid: str) -> None:
        fhir.governed_records = ungoverned_records
        get(pid)

    try:
        return paired(people, governed, ungoverned, rounds)
    finally:
        fhir.governed_records = governed_records


def profile_governed(db: Database, fw: Framework, actor: Actor, people: list[str]) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for pid in people:
        with db.session() as session:
            GovernedRecords(session, fw, actor).everything(pid)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    return out.getvalue()


def chain_hash_cost(batches: int = 30, size: int = 1000) -> tuple[float, float]:
    """Microseconds to hash one typical read's entry for the chain: keyed (HMAC-SHA256) and plain (SHA-256),
    medians over batches run alternately so that load on the machine falls on both."""
    recorded = utcnow()
    record = AuditRecord(AuditAction.RECORD_READ, "permit", username="bench", role="gp", organisation="P81001",
                         purpose="direct-care", patient_id="p1", released=[f"Condition/{i}" for i in range(20)])
    row = {"seq": 1000, "recorded_at": recorded, "action": record.action.value, "outcome": "permit",
           "username": "bench", "organisation": "P81001", "patient_id": "p1", "event": to_audit_event(record, recorded)}
    key, prev = load_settings().audit_chain_key, "0" * 64
    timed: dict[bytes | None, list[float]] = {key: [], None: []}
    for _ in range(batches):
        for chain_key in timed:
            start = time.perf_counter()
            for _ in range(size):
                _digest(prev, row, chain_key)
            timed[chain_key].append((time.perf_counter() - start) / size * 1e6)
    return statistics.median(timed[key]), statistics.median(timed[None])


def tree_cost(db: Database, rounds: int = 3) -> float:
    """CPU microseconds an entry to build the checkpoint tree over the whole log afresh, median of `rounds`."""
    timed = []
    for _ in range(rounds):
        with db.session() as session:
            start, tree = time.process_time(), AuditTree()
            tree.catch_up(session, session.get_one(AuditHead, 1).seq)
            timed.append((time.process_time() - start) / len(tree.leaves) * 1e6)
    return statistics.median(timed)


def share(timings: Timings, suffix: str = "", average: Callable[[list[float]], float] = statistics.median) -> float:
    """Governance's share of the call: (governed - ungoverned) / governed, on `average` of each (`suffix`:
    "" wall clock, "_cpu" process CPU, "_server" the server threads' CPU)."""
    gov, raw = average(timings["governed" + suffix]), average(timings["ungoverned" + suffix])
    return (gov - raw) / gov


def medians(prefix: str, timings: Timings) -> dict[str, float]:
    return {**{f"{prefix}_{name}_ms_median": statistics.median(values) for name, values in timings.items()},
            **{f"{prefix}_{name}_ms_mean": statistics.fmean(values) for name, values in timings.items()}}


def shares(prefix: str, timings: Timings) -> dict[str, float]:
    return {f"{prefix}governance_share_{kind}_{average.__name__}": share(timings, suffix, average)
            for kind, suffix in (("wall", ""), ("cpu", "_cpu"), ("server", "_server"))
            for average in (statistics.median, statistics.fmean)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--database", default=None)
    parser.add_argument("--sample", type=int, default=200, help="people whose records are read")
    parser.add_argument("--large", type=int, default=1000, help="resources in the large record")
    parser.add_argument("--profile", action="store_true", help="print where governed reads spend their time")
    parser.add_argument("--synchronous", choices=["NORMAL", "FULL"], default=None,
                        help="SQLite's synchronous setting to measure under (the store's own is NORMAL)")
    args = parser.parse_args()
    console = Console(stderr=True)
    fw = load_framework()
    with tempfile.TemporaryDirectory() as tmp:
        feeds = Path(tmp) / "feeds"
        generate(feeds, people=args.people, seed=21, framework=fw)
        db = Database(args.database or f"sqlite:///{Path(tmp) / 'gov.db'}")
        if args.synchronous and db.backend == "sqlite":  # after the store's own pragmas, on every connection
            event.listen(db.engine, "connect", lambda conn, _: conn.execute(f"PRAGMA synchronous={args.synchronous}"))
        db.migrate()
        console.print(f"ingesting {args.people} people")
        Pipeline(db, fw).ingest_paths([feeds])
        nhs = add_large_record(db, fw, feeds, Path(tmp) / "large.ndjson", args.large)
        with db.session() as session:
            sizes = {pid: n for pid, n in session.execute(
                select(PatientRecord.person_id, func.count(Resource.id))
                .join(Resource, Resource.patient_record_id == PatientRecord.id)
                .group_by(PatientRecord.person_id)
                # by NHS number (those with none last), not by person id, which is random at ingest: every
                # run reads the same people
                .order_by(func.min(PatientRecord.nhs_number).is_(None), func.min(PatientRecord.nhs_number),
                          PatientRecord.person_id))}
            large = session.scalars(select(PatientRecord.person_id).where(PatientRecord.nhs_number == nhs)).first()
        assert large is not None
        people = [pid for pid in sizes if pid != large][: args.sample]
        actor = actor_for(fw, USER)
        for pid in [*people, large]:  # a basis for each, so every read is permitted
            with db.session() as session:
                GovernedRecords(session, fw, actor).record_basis(pid, "explicit-consent", "")

        console.print("timing decisions and reads")
        decision_ms, decision_cpu_ms = [], []  # CPU too: on a busy machine a preempted decision's wall p99 is noise
        for pid in people:
            with db.session() as session:
                records = GovernedRecords(session, fw, actor)
                items = [item for item, _ in records._items(pid)]
                request = records._request(pid)[1]
                for _ in range(5):
                    start, cpu = time.perf_counter(), time.thread_time()
                    decide(request, items, fw)
                    decision_cpu_ms.append((time.thread_time() - cpu) * 1000)
                    decision_ms.append((time.perf_counter() - start) * 1000)
        gw = gateway_reads(db, fw, actor, people)
        big_gw = gateway_reads(db, fw, actor, [large], rounds=20)

        settings = replace(load_settings(), database_url=str(db.url), demo=True)
        with TestClient(create_app(settings, framework=fw, database=db)) as client:
            headers = {"Authorization": f"Bearer {mint_token(settings, fw, USER)}"}
            http = http_reads(client, headers, people)
            big_http = http_reads(client, headers, [large], rounds=20)

        appends = 500
        start = time.perf_counter()
        for i in range(appends):
            with db.session() as session:
                record_audit(session, AuditRecord(AuditAction.RECORD_READ, "permit", username="bench", role="gp",
                                                  organisation="P81001", purpose="direct-care", patient_id=str(i),
                                                  released=[f"Condition/{i}"] * 20))
        append_rate = appends / (time.perf_counter() - start)
        keyed_us, plain_us = chain_hash_cost()
        tree_us = tree_cost(db)
        if args.profile:
            console.print(profile_governed(db, fw, actor, people))
        db.dispose()

    resources = [sizes[pid] for pid in people]
    figures = {
        "people": args.people, "records_read": len(people), "database": args.database or "sqlite", "user": USER,
        "sqlite_synchronous": (args.synchronous or "NORMAL") if db.backend == "sqlite" else None,
        "median_resources_per_record": statistics.median(resources), "max_resources_per_record": max(resources),
        "large_record_resources": sizes[large],
        "decision_ms_median": statistics.median(decision_ms), "decision_ms_p99": percentile(decision_ms, 99),
        "decision_cpu_ms_median": statistics.median(decision_cpu_ms),
        "decision_cpu_ms_p99": percentile(decision_cpu_ms, 99),
        "audit_appends_per_s": append_rate,
        "audit_chain_hash_us_keyed": keyed_us, "audit_chain_hash_us_plain": plain_us,
        "audit_tree_us_per_entry": tree_us,
        **medians("gateway", gw), **medians("http", http),
        "http_governed_ms_p95": percentile(http["governed"], 95),
        **shares("", http), **shares("gateway_", gw),
        **medians("large_gateway", big_gw), **medians("large_http", big_http),
        "large_http_governed_ms_p95": percentile(big_http["governed"], 95),
        **shares("large_", big_http), **shares("large_gateway_", big_gw),
        "measured_at": utcnow().isoformat(),
    }
    table = Table(title=f"Governance cost ({args.people} people, {len(people)} records read {ROUNDS} times, "
                        f"user {USER}, medians)")
    table.add_column("measure")
    table.add_column("typical record", justify="right")
    table.add_column(f"large record ({sizes[large]} resources)", justify="right")
    table.add_row("resources per record (median / max)",
                  f"{figures['median_resources_per_record']:.0f} / {figures['max_resources_per_record']}", "")
    table.add_row("decision ms (median / p99)",
                  f"{figures['decision_ms_median']:.3f} / {figures['decision_ms_p99']:.3f}", "")
    table.add_row("  the same in CPU ms",
                  f"{figures['decision_cpu_ms_median']:.3f} / {figures['decision_cpu_ms_p99']:.3f}", "")
    table.add_row("audit appends/s", f"{append_rate:.0f}", "")
    table.add_row("  chain hash us per entry, keyed / plain", f"{keyed_us:.2f} / {plain_us:.2f}", "")
    table.add_row("  checkpoint tree built afresh, CPU us per entry", f"{tree_us:.1f}", "")
    for label, key in (("gateway $everything ms, governed / ungoverned", "gateway_{}_ms_median"),
                       ("  the same in CPU ms", "gateway_{}_cpu_ms_median"),
                       ("HTTP $everything ms, governed / ungoverned", "http_{}_ms_median"),
                       ("  the same in process CPU ms", "http_{}_cpu_ms_median"),
                       ("  the same in server CPU ms", "http_{}_server_ms_median"),
                       ("  the same in server CPU ms, means", "http_{}_server_ms_mean")):
        cells = [f"{figures[prefix + key.format('governed')]:.2f} / {figures[prefix + key.format('ungoverned')]:.2f}"
                 for prefix in ("", "large_")]
        table.add_row(label, *cells)
    for label, key in (("governance's share of the server's CPU (medians / means)", "governance_share_server_{}"),
                       ("  of the in-process round trip's CPU", "governance_share_cpu_{}"),
                       ("  of its wall clock", "governance_share_wall_{}"),
                       ("  of the gateway call's CPU", "gateway_governance_share_cpu_{}")):
        cells = [f"{figures[prefix + key.format('median')]:.1%} / {figures[prefix + key.format('fmean')]:.1%}"
                 for prefix in ("", "large_")]
        table.add_row(label, *cells)
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"governance-{int(time.time())}.json").write_text(json.dumps(figures, indent=2))
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
