"""What the audit head's old row versions cost an append on PostgreSQL, as the log grows.

Every audit append locks the one `audit_head` row and the chain's step updates it, so each append leaves old
versions of that row behind. PostgreSQL prunes them only once no open transaction can still see them: while
one is open (a long export, `audit verify`, a slow report), each append's read of the head walks every
version left since it began. In one process, on a PostgreSQL database of your own (empty: it is migrated and
filled), `--appends` entries are appended one transaction each, as reads do, in blocks of `--block`; with
`--hold` a second connection holds one snapshot open throughout (REPEATABLE READ, as an export does).
Each block's figures: appends a second (wall), the server's CPU an append (the backend's own CPU time, read
from /proc: the server must run on this host), the head's size in pages and the buffers one read of the head
touches. Printed per block and as medians of the last half of the blocks.

Nothing passes or fails on time. Usage:
python benchmarks/audit_head.py --database postgresql+psycopg://.../db [--appends 5000] [--block 500] [--hold]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.store.database import Database


def backend_cpu_s(pid: int) -> float:
    """The server process `pid`'s user and system CPU time (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def head_figures(db: Database) -> tuple[int, int]:
    """The head's size in pages and the shared buffers one read of it touches (its versions' pages)."""
    with db.engine.connect() as conn:
        pages = conn.execute(text("SELECT pg_relation_size('audit_head') / current_setting('block_size')::int"))
        plan = conn.execute(text("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) "
                                 "SELECT seq FROM audit_head WHERE id = 1"))
        size, lines = int(pages.scalar_one()), [row[0] for row in plan]
    hits = [int(line.split("shared hit=")[1].split()[0]) for line in lines if "shared hit=" in line]
    return size, max(hits, default=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", required=True, help="an empty PostgreSQL database of your own")
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument("--block", type=int, default=500)
    parser.add_argument("--hold", action="store_true", help="hold one snapshot open throughout")
    args = parser.parse_args()
    db = Database(args.database)
    if db.backend != "postgresql":
        parser.error("--database must name a PostgreSQL database: SQLite keeps no row versions")
    db.migrate()
    holder = db.engine.connect() if args.hold else None
    if holder is not None:
        holder.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.exec_driver_sql("SELECT count(*) FROM audit_events").scalar()
    with db.session() as session:  # one thread: the pool hands every append this connection
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    blocks = []
    for done in range(args.block, args.appends + 1, args.block):
        cpu, wall = backend_cpu_s(pid), time.perf_counter()
        for i in range(args.block):
            with db.session() as session:
                record_audit(session, AuditRecord(AuditAction.RECORD_READ, "permit", username="bench", role="gp",
                                                  organisation="P81001", purpose="direct-care", patient_id=str(i),
                                                  released=[f"Condition/{i}"] * 20))
        rate = args.block / (time.perf_counter() - wall)
        server_us = (backend_cpu_s(pid) - cpu) / args.block * 1e6
        pages, buffers = head_figures(db)
        blocks.append({"after": done, "appends_per_s": rate, "server_us": server_us, "head_pages": pages,
                       "head_read_buffers": buffers})
        print(json.dumps(blocks[-1]), flush=True)
    if holder is not None:
        holder.close()
    db.dispose()
    late = blocks[len(blocks) // 2:]
    figures = {"appends": args.appends, "hold": args.hold,
               **{f"{key}_median": statistics.median(b[key] for b in late)
                  for key in ("appends_per_s", "server_us", "head_read_buffers")},
               "head_pages_end": blocks[-1]["head_pages"]}
    table = Table(title=f"audit appends on PostgreSQL, {'a snapshot held' if args.hold else 'no snapshot held'}: "
                        f"medians of blocks {late[0]['after']}-{args.appends}")
    for key in figures:
        table.add_column(key)
    table.add_row(*(f"{value:.0f}" if isinstance(value, float) else str(value) for value in figures.values()))
    Console().print(table)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
