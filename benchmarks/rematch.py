"""What matching a stored record again costs when a source changes its demographics (issue 4, real time).

On a store an ingest made (a copy of it: nothing is kept), in one process, for a sample of stored records,
each of four calls in a transaction of its own that is rolled back, so every call meets the same index:
- `resend`: the record's own demographics sent again (what most A08s, A31s and FHIR Patient updates are:
  nothing matching uses changed, as when only a marital status did): `link_found_record`, no re-match;
- `resend_main`: the same written as main wrote it (`_update_record` alone), its baseline;
- `update`: a new postcode written the way main writes it (`_update_record` alone: no re-match), the
  baseline;
- `rematch`: the same new postcode through `link_found_record`: written, then matched again.
Medians and p99 in microseconds, the order of the four rotated per record. Figures, never pass/fail.

Usage: python benchmarks/rematch.py STORE.db [--records 500] [--seed 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from sharedcare.identity.mpi import Demographics, _update_record, link_found_record, problems, usable_nhs_number
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord

RESULTS = Path(__file__).parent / "results"


def demographics(r: PatientRecord, postcode: str | None = None) -> Demographics:
    """What a source would send to give a stored record these demographics again (a new postcode if given)."""
    other = r.other_names or {}
    return Demographics(r.nhs_number, r.family, r.given, r.birth_date, r.gender, postcode or r.postcode,
                        tuple(other.get("given", ())), tuple(other.get("family", ())), tuple(r.postcodes or ()),
                        tuple(r.phones or ()), r.email)


def _timed(db: Database, record_id: int, call: Callable[[Session, PatientRecord], object]) -> float:
    with db._sessions() as session:  # rolled back: each call meets the same store
        record = session.get_one(PatientRecord, record_id)
        start = time.perf_counter()
        call(session, record)
        session.flush()
        elapsed = time.perf_counter() - start
        session.rollback()
    return elapsed * 1e6


def _calls(same: Demographics, moved: Demographics) -> dict[str, Callable[[Session, PatientRecord], object]]:
    """The four ways of storing a record again: as sent before, or with a moved postcode; matched again or not."""
    return {
        "resend": lambda s, rec: link_found_record(s, rec, rec.source_org, rec.source_id, same),
        "resend_main": lambda s, rec: _update_record(s, rec, same, usable_nhs_number(same), problems(same)),
        "update": lambda s, rec: _update_record(s, rec, moved, usable_nhs_number(moved), problems(moved)),
        "rematch": lambda s, rec: link_found_record(s, rec, rec.source_org, rec.source_id, moved)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "store.db"
        shutil.copy(args.store, copy)
        db = Database(f"sqlite:///{copy}")
        with db.session() as s:
            records = list(s.scalars(select(PatientRecord).where(PatientRecord.link_method != "insufficient-data",
                                                                 PatientRecord.postcode.is_not(None))))
        rng = random.Random(args.seed)
        sample = rng.sample(records, min(args.records, len(records)))
        postcodes = [r.postcode for r in records]
        times: dict[str, list[float]] = {"resend": [], "resend_main": [], "update": [], "rematch": []}
        for i, r in enumerate(sample):
            same, moved = demographics(r), demographics(r, rng.choice(postcodes))
            calls = _calls(same, moved)
            names = list(calls)
            for name in names[i % len(names):] + names[:i % len(names)]:
                times[name].append(_timed(db, r.id, calls[name]))
        db.dispose()
    figures = {name: {"median_us": round(statistics.median(t)), "p99_us": round(sorted(t)[int(len(t) * 0.99)])}
               for name, t in times.items()}
    result = {"store": str(args.store), "records": len(sample), "index": len(records), "figures": figures,
              "resend_over_main": round(figures["resend"]["median_us"] / figures["resend_main"]["median_us"], 2),
              "rematch_over_update": round(figures["rematch"]["median_us"] / figures["update"]["median_us"], 2),
              "load_average": os.getloadavg()}
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rematch.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
