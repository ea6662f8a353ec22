"""What ending a merge's point-of-care bases costs on a store holding many active bases (`links.end_bases`).

A store (SQLite in a temporary folder, or an emptied PostgreSQL database) is given `--bases` active bases
over `--persons` persons; each repeat merges two of those persons (a link event moving a record from one to
the other, never flushed) and ends their bases, in a transaction rolled back, so each meets the same store.
Three ways, in one run, their order rotated each repeat:
- `old`: main before 2026-12-07 (every active basis read and matched by person in Python), as it was;
- `new_no_index`: the lookup by person, with the index dropped;
- `new`: the lookup by person with `ix_access_bases_person_expires` (migration 0025).
The query plans of the old and new queries are printed (EXPLAIN). Medians in milliseconds and the ratio
old/new; figures, never pass/fail.

Usage: python benchmarks/end_bases.py [--bases 100000] [--persons 20000] [--repeats 21]
                                      [--postgres URL] [--stores sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.identity import links
from sharedcare.store.database import Database
from sharedcare.store.models import AccessBasis, LinkEvent, LinkMove

RESULTS = Path(__file__).parent / "results"
INDEX = "ix_access_bases_person_expires"


def old_end_bases(session: Session, event: LinkEvent) -> None:
    """`links.end_bases` as main had it before the index: every active basis read, matched by person."""
    persons = {m.from_person for m in event.moves} | {m.to_person for m in event.moves}
    ended: dict[str, list[AccessBasis]] = {}
    for basis in session.scalars(select(AccessBasis).where(AccessBasis.expires_at > event.at)
                                 .order_by(AccessBasis.id)):
        if basis.person_id in persons:
            basis.expires_at = event.at
            ended.setdefault(basis.person_id, []).append(basis)
    links._audit_ended(session, event, ended)


def fill(db: Database, bases: int, persons: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(persons)]
    now = utcnow()
    rows = [{"username": f"user{n % 300}", "person_id": rng.choice(ids), "basis": "direct-care", "reason": "",
             "granted_at": now, "expires_at": now + timedelta(hours=8)} for n in range(bases)]
    with db.session() as s:
        for start in range(0, len(rows), 10_000):
            s.execute(insert(AccessBasis), rows[start:start + 10_000])
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE" if db.backend == "sqlite" else "ANALYZE access_bases")
    return ids


OLD_QUERY = "SELECT * FROM access_bases WHERE expires_at > :at ORDER BY id"
NEW_QUERY = "SELECT * FROM access_bases WHERE person_id IN (:a, :b) AND expires_at > :at"


def plan(db: Database, statement: str, persons: list[str]) -> list[str]:
    prefix = "EXPLAIN QUERY PLAN " if db.backend == "sqlite" else "EXPLAIN "
    values = {"a": persons[0], "b": persons[1], "at": utcnow().isoformat(sep=" ")}
    with db.engine.connect() as conn:
        return [" ".join(str(c) for c in row) for row in conn.execute(text(prefix + statement), values)]


def timed(db: Database, ended: Callable[[Session, LinkEvent], None], keep: str, absorb: str) -> float:
    event = LinkEvent(at=utcnow(), kind="merge", by="benchmark", reason="benchmark",
                      moves=[LinkMove(patient_record_id=1, from_person=absorb, to_person=keep)])
    with db._sessions() as session:
        start = time.perf_counter()
        ended(session, event)
        session.flush()
        elapsed = time.perf_counter() - start
        session.rollback()
    return elapsed * 1e3


def run(db: Database, args: argparse.Namespace) -> dict[str, object]:
    db.migrate()
    ids = fill(db, args.bases, args.persons, args.seed)
    rng = random.Random(args.seed + 1)
    plans = {"old": plan(db, OLD_QUERY, ids), "new": plan(db, NEW_QUERY, ids)}
    ways: dict[str, Callable[[Session, LinkEvent], None]] = {"old": old_end_bases, "new": links.end_bases}
    times: dict[str, list[float]] = {"old": [], "new_no_index": [], "new": []}
    pairs = [tuple(rng.sample(ids, 2)) for _ in range(args.repeats)]
    for i, (keep, absorb) in enumerate(pairs):
        for way in (["old", "new"] if i % 2 else ["new", "old"]):
            times[way].append(timed(db, ways[way], keep, absorb))
    with db.engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {INDEX}"))
    db.engine.dispose()  # pysqlite's cached statements keep the plan they were prepared with
    plans["new_no_index"] = plan(db, NEW_QUERY, ids)
    for keep, absorb in pairs:
        times["new_no_index"].append(timed(db, links.end_bases, keep, absorb))
    with db.engine.begin() as conn:
        conn.execute(text(f"CREATE INDEX {INDEX} ON access_bases (person_id, expires_at)"))
    medians = {way: round(statistics.median(t), 3) for way, t in times.items()}
    return {"median_ms": medians, "old_over_new": round(medians["old"] / medians["new"], 1),
            "plans": plans}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=int, default=100_000)
    parser.add_argument("--persons", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--postgres", default=os.environ.get("SHAREDCARE_BENCH_POSTGRES"))
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    result: dict[str, object] = {"bases": args.bases, "persons": args.persons, "repeats": args.repeats,
                                 "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores.split(","):
            if store == "postgresql" and not args.postgres:
                continue
            url = f"sqlite:///{tmp}/store.db" if store == "sqlite" else args.postgres
            db = Database(url, audit_key=b"benchmark audit key of thirty-two bytes!")
            if store == "postgresql":
                with db.engine.begin() as conn:
                    conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
                    conn.execute(text("CREATE SCHEMA public"))
            result[store] = run(db, args)
            db.engine.dispose()
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "end_bases.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
