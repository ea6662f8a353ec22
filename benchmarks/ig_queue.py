"""What the IG officer's review queue costs to open when a region's weekend has left many items.

One synthetic ICS in SQLite (`--people`), `--items` open break-glass items about the ICS's people in
turn. The IG officer opens /ig (with a bearer token, as benchmarks/portal.py does) in one process: the
page as it is (25 items a page, only those items' patients looked up, each an audited read), and the
whole queue on one page as the portal showed it before paging (`ig.QUEUE_PAGE` set past the queue's
length), alternated. Figures: wall milliseconds per page load (medians), the page's bytes and the audit
entries one load writes.

Nothing passes or fails on time. Usage: python benchmarks/ig_queue.py [--people 300] [--items 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from large_record import synthetic_store  # benchmarks/ is on the path: these run as scripts
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from sharedcare.api.app import create_app
from sharedcare.api.auth import mint_token
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.governance.framework import load_framework
from sharedcare.portal import ig
from sharedcare.store.models import AuditEntry, PatientRecord, ReviewItem


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    fw = load_framework()
    with tempfile.TemporaryDirectory() as tmp:
        db, _ = synthetic_store(Path(tmp), args.people, 5, fw, "ig.db")
        with db.session() as session:
            people = list(session.scalars(select(PatientRecord.person_id).distinct().order_by(PatientRecord.person_id)))
            now = utcnow()
            for n in range(args.items):
                session.add(ReviewItem(kind="emergency", username="dr.oconnor", person_id=people[n % len(people)],
                                       reason="unconscious, no history", created_at=now - timedelta(minutes=n),
                                       status="open"))
        settings = replace(load_settings(), database_url=str(db.url), demo=True)
        paged = ig.QUEUE_PAGE
        wall: dict[str, list[float]] = {"paged": [], "whole": []}
        size: dict[str, int] = {}
        audited: dict[str, int] = {}
        with TestClient(create_app(settings, framework=fw, database=db)) as client:
            headers = {"Authorization": f"Bearer {mint_token(settings, fw, 'ig.morgan')}"}
            for round_ in range(args.rounds):
                for name in ("paged", "whole") if round_ % 2 == 0 else ("whole", "paged"):
                    ig.QUEUE_PAGE = paged if name == "paged" else args.items + 1
                    with db.session() as session:
                        before = session.scalar(select(func.count()).select_from(AuditEntry)) or 0
                    start = time.perf_counter()
                    page = client.get("/ig", headers=headers)
                    wall[name].append((time.perf_counter() - start) * 1000)
                    assert page.status_code == 200, page.text[:300]
                    with db.session() as session:
                        audited[name] = (session.scalar(select(func.count()).select_from(AuditEntry)) or 0) - before
                    size[name] = len(page.content)
        ig.QUEUE_PAGE = paged
    figures = {"people": args.people, "items": args.items, "rounds": args.rounds,
               **{f"{name}_ms_median": round(statistics.median(wall[name]), 1) for name in wall},
               **{f"{name}_bytes": size[name] for name in size},
               **{f"{name}_audit_entries_per_load": audited[name] for name in audited}}
    figures["ratio_paged_to_whole"] = round(figures["paged_ms_median"] / figures["whole_ms_median"], 3)
    table = Table(title=f"/ig with {args.items} open items, {args.people} people")
    for column in ("page", "ms (median)", "bytes", "audit entries a load"):
        table.add_column(column)
    for name in ("paged", "whole"):
        table.add_row(name, f"{figures[f'{name}_ms_median']}", f"{size[name]:,}", str(audited[name]))
    Console(stderr=True).print(table)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
