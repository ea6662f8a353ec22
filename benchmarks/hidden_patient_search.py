"""Whether a patient search's time tells a reader that a patient it may not find is stored (gateway.py,
`search_patients`; sixth security review, 2026-12-06).

In one process on one synthetic ICS (SQLite, `--people`): a hospital clinician (dr.oconnor, RXR) searches by
NHS number for people who objected to the hospital (found, hidden: no entry) and for valid NHS numbers no
source sent (no entry either), in turn, `--repeat` times each. Prints the median wall time of each kind of
search through the app and their ratio: 1.00 is no difference to measure.

Usage: python benchmarks/hidden_patient_search.py [--people 300] [--sample 40] [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fastapi.testclient import TestClient
from large_record import synthetic_store
from sqlalchemy import select

from sharedcare.api.app import create_app
from sharedcare.api.auth import mint_token
from sharedcare.config import load_settings
from sharedcare.governance.framework import load_framework
from sharedcare.governance.workspace import CitizenWorkspace
from sharedcare.identity.nhs_number import is_valid
from sharedcare.store.models import PatientRecord

READER, READER_ORG = "dr.oconnor", "RXR"


def _unused_numbers(held: set[str], count: int) -> list[str]:
    """Valid NHS numbers (check digit right) that no record holds."""
    out: list[str] = []
    stem = 400_000_000
    while len(out) < count:
        for last in "0123456789":
            number = f"{stem}{last}"
            if is_valid(number) and number not in held:
                out.append(number)
                break
        stem += 7919
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--sample", type=int, default=40, help="people who objected, and as many unused numbers")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    fw = load_framework()
    with tempfile.TemporaryDirectory() as tmp:
        db, _ = synthetic_store(Path(tmp), args.people, 21, fw, "hidden.db")
        with db.session() as session:
            rows = session.execute(select(PatientRecord.person_id, PatientRecord.nhs_number)
                                   .where(PatientRecord.nhs_number.is_not(None))).all()
        held = {number for _, number in rows if number}
        people = sorted({person: number for person, number in rows if number}.items())[:args.sample]
        for person, _ in people:
            with db.session() as session:
                CitizenWorkspace(session, fw, person).set_choice("object-org", READER_ORG)
        hidden = [number for _, number in people]
        absent = _unused_numbers(held, len(hidden))
        settings = replace(load_settings(), database_url=str(db.url), demo=True)
        headers = {"Authorization": f"Bearer {mint_token(settings, fw, READER)}"}
        times: dict[str, list[float]] = {"hidden": [], "absent": []}
        with TestClient(create_app(settings, framework=fw, database=db)) as client:
            def search(number: str) -> float:
                start = time.perf_counter()
                response = client.post("/fhir/Patient/_search", data={"identifier": number}, headers=headers)
                took = time.perf_counter() - start
                assert response.status_code == 200 and not response.json().get("entry"), response.text
                return took

            for number in hidden[:5] + absent[:5]:  # warm up
                search(number)
            for _ in range(args.repeat):
                for one, other in zip(hidden, absent, strict=True):
                    times["hidden"].append(search(one))
                    times["absent"].append(search(other))
        db.dispose()
    medians = {kind: round(statistics.median(values) * 1000, 3) for kind, values in times.items()}
    print(json.dumps({"people": args.people, "searches_each": len(times["hidden"]), "median_ms": medians,
                      "hidden_over_absent": round(medians["hidden"] / medians["absent"], 3)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
