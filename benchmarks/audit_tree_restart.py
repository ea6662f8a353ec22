"""What a server's first checkpoint after a restart costs: the checkpoint tree built afresh against one rebuilt
from its mark (governance/checkpoints.py `TreeMark`).

In one process, on SQLite (or --database), over a log of --entries typical reads (20 references released each):
- afresh: `make_checkpoint` over a new `AuditTree`, as the server's first checkpoint was before the mark: every
  entry read whole and checked to be the service's (`AuditTree.catch_up`);
- from the mark, --since entries behind the head (a restart while the log grew since the last witness's poll):
  `Transparency.checkpoint` in a new `Transparency`, which rebuilds the tree from the stored hashes up to the
  mark (`AuditTree.resume`), checks the entries after it and stores the new mark;
- from the mark at the head (nothing logged since).
Each is run --rounds times, in turn, so load on the machine falls on all; medians of wall-clock and process
CPU seconds, and the ratio of afresh to from the mark, both measured in this run.

Usage: python benchmarks/audit_tree_restart.py [--entries 200000] [--since 1000] [--rounds 3] [--database URL]
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

from rich.console import Console
from rich.table import Table
from sqlalchemy import delete

from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.checkpoints import AuditTree, Transparency, make_checkpoint, signing_key
from sharedcare.store.database import Database
from sharedcare.store.models import AuditTreeMark

RESULTS = Path(__file__).parent / "results"
SECRET = "the benchmark's secret, of at least thirty-two bytes"  # noqa: S105 (signs only its own checkpoints)


def _append(db: Database, n: int, batch: int = 1000) -> None:
    """`n` typical reads appended to the chain, `batch` to a transaction."""
    for start in range(0, n, batch):
        with db.session() as session:
            for i in range(start, min(n, start + batch)):
                record_audit(session, AuditRecord(
                    AuditAction.RECORD_READ, "permit", username=f"user{i % 500}", role="gp", organisation="P81001",
                    purpose="direct-care", patient_id=f"p{i % 20000}",
                    released=[f"Condition/{i}-{j}" for j in range(20)]))


def _timed(step: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--since", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{Path(tmp) / 'tree.db'}"
        db = Database(url)
        db.migrate()
        start = time.perf_counter()
        _append(db, args.entries - args.since)
        Transparency(db, SECRET).checkpoint()  # the mark, --since entries behind the head once these are written
        _append(db, args.since)
        filled = time.perf_counter() - start
        with db.session() as session:
            row = session.get_one(AuditTreeMark, 1)
            behind = {"seq": row.seq, "hash": row.hash, "root": row.root, "mac": row.mac}
        key = signing_key(SECRET)

        def afresh() -> object:
            with db.session() as session:
                return make_checkpoint(session, key, tree=AuditTree())

        def from_the_mark_behind() -> object:
            with db.session() as session:  # the mark as it was before the last --since entries
                session.execute(delete(AuditTreeMark))
                session.add(AuditTreeMark(id=1, **behind))
            return _timed(lambda: Transparency(db, SECRET).checkpoint())

        timings: dict[str, list[tuple[float, float]]] = {"afresh": [], "behind": [], "head": []}
        for _ in range(args.rounds):
            timings["afresh"].append(_timed(afresh))
            timings["behind"].append(from_the_mark_behind())  # type: ignore[arg-type]
            timings["head"].append(_timed(lambda: Transparency(db, SECRET).checkpoint()))  # its mark: the head
        db.dispose()

    def median(name: str, i: int) -> float:
        return statistics.median(t[i] for t in timings[name])

    figures: dict[str, object] = {"database": url.split(":")[0], "entries": args.entries, "since": args.since,
                                  "rounds": args.rounds, "fill_s": round(filled, 1)}
    for name in timings:
        figures[f"{name}_s_median"] = round(median(name, 0), 3)
        figures[f"{name}_cpu_s_median"] = round(median(name, 1), 3)
    for name in ("behind", "head"):
        figures[f"ratio_afresh_to_{name}_cpu"] = round(median("afresh", 1) / median(name, 1), 1)
    figures["afresh_cpu_us_per_entry"] = round(median("afresh", 1) / args.entries * 1e6, 1)
    figures["head_cpu_us_per_entry"] = round(median("head", 1) / args.entries * 1e6, 2)
    table = Table(title=f"First checkpoint after a restart, {args.entries} entries ({args.rounds} rounds, medians)")
    for column in ("tree", "wall s", "CPU s", "afresh / this (CPU)"):
        table.add_column(column)
    table.add_row("built afresh, every entry checked (before)", f"{median('afresh', 0):.2f}",
                  f"{median('afresh', 1):.2f}", "1")
    table.add_row(f"from its mark, {args.since} entries behind", f"{median('behind', 0):.2f}",
                  f"{median('behind', 1):.2f}", f"{figures['ratio_afresh_to_behind_cpu']}")
    table.add_row("from its mark at the head", f"{median('head', 0):.2f}", f"{median('head', 1):.2f}",
                  f"{figures['ratio_afresh_to_head_cpu']}")
    Console(stderr=True).print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "audit_tree_restart.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
