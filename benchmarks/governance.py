"""What governance costs: decision latency, audit append rate, and `$everything` with and without it.

All in one process on one synthetic ICS (SQLite unless --database names another store):
- decision latency: `policy.decide` for each person's full record, median and p99 per decision;
- audit append rate: events per second appended to the hash chain (one transaction per event, as reads do);
- the governed read (`GovernedRecords.everything`: load, decide, audit) against a baseline that loads
  the same rows and builds the same list with no decision and no audit; the ratio is governance's cost.

Usage: python benchmarks/governance.py [--people 1000] [--database URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from sharedcare.clock import utcnow
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.governance.policy import decide
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Resource
from sharedcare.synth import generate

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def raw_everything(db: Database, person_id: str) -> list[dict[str, Any]]:
    """The baseline: the same rows, no decision, no audit."""
    with db.session() as session:
        rows = session.scalars(select(Resource).join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
                               .where(PatientRecord.person_id == person_id).order_by(Resource.recorded_at.desc()))
        return [dict(r.content) for r in rows]


def http_everything(db: Database, fw: Framework, people: list[str]) -> tuple[list[float], list[float]]:
    """Whole `GET $everything` requests in process, and the share of each spent deciding, classifying
    and auditing (the functions the gateway calls, timed by wrapping them)."""
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from sharedcare.api.app import create_app
    from sharedcare.api.auth import mint_token
    from sharedcare.config import load_settings
    from sharedcare.governance import gateway

    spent = [0.0]

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    settings = replace(load_settings(), database_url=str(db.url), demo=True)
    originals = {name: getattr(gateway, name) for name in ("decide", "classify", "record_audit")}
    for name, fn in originals.items():
        setattr(gateway, name, timed(fn))
    request_ms, shares = [], []
    try:
        with TestClient(create_app(settings, framework=fw, database=db)) as client:
            headers = {"Authorization": f"Bearer {mint_token(settings, fw, 'dr.patel')}"}
            for pid in people:
                spent[0] = 0.0
                start = time.perf_counter()
                response = client.get(f"/fhir/Patient/{pid}/$everything", headers=headers)
                elapsed = time.perf_counter() - start
                assert response.status_code == 200, response.text
                request_ms.append(elapsed * 1000)
                shares.append(spent[0] / elapsed)
    finally:
        for name, fn in originals.items():
            setattr(gateway, name, fn)
    return request_ms, shares


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--database", default=None)
    parser.add_argument("--sample", type=int, default=200, help="people whose records are read")
    args = parser.parse_args()
    console = Console(stderr=True)
    fw = load_framework()
    with tempfile.TemporaryDirectory() as tmp:
        feeds = Path(tmp) / "feeds"
        generate(feeds, people=args.people, seed=21, framework=fw)
        db = Database(args.database or f"sqlite:///{Path(tmp) / 'gov.db'}")
        db.migrate()
        console.print(f"ingesting {args.people} people")
        Pipeline(db, fw).ingest_paths([feeds])
        with db.session() as session:
            sizes = session.execute(
                select(PatientRecord.person_id, func.count(Resource.id))
                .join(Resource, Resource.patient_record_id == PatientRecord.id)
                .group_by(PatientRecord.person_id).order_by(PatientRecord.person_id)).all()
        people = [pid for pid, _ in sizes][: args.sample]
        actor = actor_for(fw, "dr.patel")

        for pid in people:  # a basis for each, so every read is permitted
            with db.session() as session:
                GovernedRecords(session, fw, actor).record_basis(pid, "explicit-consent", "")

        decision_ms, governed_ms, raw_ms, resources = [], [], [], []
        for pid in people:
            with db.session() as session:
                records = GovernedRecords(session, fw, actor)
                pairs, numbers = records._items(pid)
                items = [item for item, _ in pairs]
                request = records._request(pid, records.active_basis(pid), numbers)
                for _ in range(5):
                    start = time.perf_counter()
                    decide(request, items, fw)
                    decision_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            raw = raw_everything(db, pid)
            raw_ms.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            with db.session() as session:
                GovernedRecords(session, fw, actor).everything(pid)
            governed_ms.append((time.perf_counter() - start) * 1000)
            resources.append(len(raw))

        http_ms, share = http_everything(db, fw, people)

        appends = 500
        start = time.perf_counter()
        for i in range(appends):
            with db.session() as session:
                record_audit(session, AuditRecord(AuditAction.RECORD_READ, "permit", username="bench", role="gp",
                                                  organisation="P81001", purpose="direct-care", patient_id=str(i),
                                                  released=[f"Condition/{i}"] * 20))
        append_rate = appends / (time.perf_counter() - start)
        db.dispose()

    figures = {
        "people": args.people, "records_read": len(people), "database": args.database or "sqlite",
        "median_resources_per_record": statistics.median(resources), "max_resources_per_record": max(resources),
        "decision_ms_median": statistics.median(decision_ms), "decision_ms_p99": percentile(decision_ms, 99),
        "everything_governed_ms_median": statistics.median(governed_ms),
        "everything_governed_ms_p95": percentile(governed_ms, 95),
        "everything_baseline_ms_median": statistics.median(raw_ms),
        "governance_cost_ratio": statistics.median(governed_ms) / statistics.median(raw_ms),
        "audit_appends_per_s": append_rate,
        "http_everything_ms_median": statistics.median(http_ms),
        "http_everything_ms_p95": percentile(http_ms, 95),
        "governance_share_of_request_median": statistics.median(share),
        "measured_at": utcnow().isoformat(),
    }
    table = Table(title=f"Governance cost ({args.people} people, {len(people)} records read, median)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("resources per record (median / max)",
                  f"{figures['median_resources_per_record']:.0f} / {figures['max_resources_per_record']}")
    table.add_row("decision ms (median / p99)",
                  f"{figures['decision_ms_median']:.3f} / {figures['decision_ms_p99']:.3f}")
    table.add_row("$everything governed ms (median / p95)",
                  f"{figures['everything_governed_ms_median']:.2f} / {figures['everything_governed_ms_p95']:.2f}")
    table.add_row("$everything baseline ms (same rows, no governance)",
                  f"{figures['everything_baseline_ms_median']:.2f}")
    table.add_row("governed / baseline", f"{figures['governance_cost_ratio']:.2f}")
    table.add_row("audit appends/s", f"{append_rate:.0f}")
    table.add_row("HTTP $everything ms (median / p95)",
                  f"{figures['http_everything_ms_median']:.2f} / {figures['http_everything_ms_p95']:.2f}")
    table.add_row("share of the request spent deciding, classifying, auditing",
                  f"{figures['governance_share_of_request_median']:.1%}")
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"governance-{int(time.time())}.json").write_text(json.dumps(figures, indent=2))
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
