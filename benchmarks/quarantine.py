"""What migration 0022 costs on a large quarantine: keys for items held before 0021.

`--items` held items without a key (a third each an HL7 v2 ADT, a FHIR Bundle of one Patient and a council CSV
row, as bytes a source sent, about 0.5-1 kB each) in a fresh store at revision 0021; the upgrade to 0022 timed,
`--rounds` times (the keys cleared and the revision set back in between), against a baseline in the same
process: reading every item's body and columns once (what the migration cannot avoid). Figures: wall seconds
(medians) and the ratio. SQLite unless `--url` names a PostgreSQL database of your own (its quarantine is
emptied at the end).

Nothing passes or fails on time. Usage: python benchmarks/quarantine.py [--items 10000] [--rounds 3] [--url URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy
from alembic import command
from rich.console import Console
from rich.table import Table
from sqlalchemy import delete, insert, select, update

from sharedcare.clock import utcnow
from sharedcare.store.database import Database
from sharedcare.store.models import Quarantine
from sharedcare.synth.csv_feeds import HEADER

_A01 = ("MSH|^~\\&|PAS|RXR|SHAREDCARE|QRD|20261101093000||ADT^A01^ADT_A01|MSG{n}|P|2.4|||AL|NE|GBR|8859/1\r"
        "EVN|A01|20261101093000\r"
        "PID|1||H{n}^^^RXR^MR~9434765919^^^NHS^NH||OKAFOR^Emeka^^^Mr||19451302|M|||14 Mill Lane^^Riverside^^RV3 7QT\r"
        "PV1|1|I|Ward 12^^^RXR||||||||||||||||V{n}|||||||||||||||||||||||||20261101093000\r")


def _body(n: int) -> tuple[str, str, bytes]:
    """The `n`th held item's sender, format and bytes."""
    if n % 3 == 0:
        return "RXR", "hl7v2", _A01.format(n=n).encode("latin-1")
    if n % 3 == 1:
        bundle = {"resourceType": "Bundle", "id": f"b{n}", "type": "collection", "timestamp": "2026-11-01T09:00:00Z",
                  "identifier": {"system": "https://emis.example/messages", "value": f"M-{n}"},
                  "meta": {"source": "P81001:emis"},
                  "entry": [{"resource": {"resourceType": "Patient", "id": f"gp-{n}", "identifier": [
                      {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "1234567890"}],
                      "name": [{"family": "Hughes", "given": ["Margaret"]}], "birthDate": "1952-06-11"}}]}
        return "P81001", "fhir", json.dumps(bundle).encode()
    row = {"client_id": f"C{n}", "nhs_number": "9434765919", "family_name": "Okafor", "given_name": "Emeka",
           "date_of_birth": "02/03/1945", "sex": "Mle", "address_line1": "14 Mill Lane", "town": "Riverside",
           "postcode": "RV3 7QT", "phone": "01632 960457", "assessment_id": f"A{n}",
           "assessment_type": "Care Act Assessment", "assessment_date": "12/10/2026", "status": "Completed",
           "outcome_summary": "Home care package agreed.", "third_party_notes": "", "worker_name": "Maya Brown",
           "team": "Older People's Locality Team", "last_updated": "2026-10-17T10:35:00Z"}
    return "LRC", "csv", (",".join(HEADER) + "\r\n" + ",".join(row[c] for c in HEADER) + "\r\n").encode()


def _at_0021(db: Database) -> None:
    cfg = db.alembic_config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0021")


def _upgrade(db: Database) -> float:
    cfg = db.alembic_config()
    started = time.perf_counter()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0022")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(args.url or f"sqlite:///{Path(tmp) / 'quarantine.db'}")
        db.migrate()
        _at_0021(db)
        received = utcnow() - timedelta(days=30)
        with db.engine.begin() as conn:
            conn.execute(insert(Quarantine.__table__), [  # type: ignore[arg-type]
                {"source_org": org, "format": fmt, "filename": f"feed-{n // 1000}", "location": f"message {n}",
                 "reason": "PID-7: not a date", "payload": body, "received_at": received, "status": "held"}
                for n in range(args.items) for org, fmt, body in [_body(n)]])
        table = Quarantine.__table__
        assert isinstance(table, sqlalchemy.Table)  # (declared a FromClause)
        wall: dict[str, list[float]] = {"read every held body (baseline)": [], "upgrade 0021 -> 0022": []}
        keyed = 0
        for _ in range(args.rounds):
            started = time.perf_counter()
            with db.engine.connect() as conn:
                conn.execute(select(table.c.id, table.c.source_org, table.c.format, table.c.filename,
                                    table.c.location, table.c.payload, table.c.received_at)
                             .where(table.c.status == "held")).all()
            wall["read every held body (baseline)"].append(time.perf_counter() - started)
            with db.engine.begin() as conn:
                conn.execute(update(table).values(message_key=None))
            _at_0021(db)
            wall["upgrade 0021 -> 0022"].append(_upgrade(db))
            with db.engine.connect() as conn:
                keyed = len(conn.execute(select(table.c.id).where(table.c.message_key.is_not(None))).all())
        with db.engine.begin() as conn:
            conn.execute(delete(table))
        db.dispose()
    base = statistics.median(wall["read every held body (baseline)"])
    out = Table(title=f"Migration 0022 on {args.items:,} held items ({keyed:,} given a key), "
                      f"{'PostgreSQL' if args.url else 'SQLite'}, median of {args.rounds}")
    for column in ("step", "wall s", "x baseline"):
        out.add_column(column)
    for name, times in wall.items():
        out.add_row(name, f"{statistics.median(times):.2f}", f"{statistics.median(times) / base:.1f}")
    Console().print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
