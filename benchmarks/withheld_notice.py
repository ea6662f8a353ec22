"""What saying "some information is not shown" costs a FHIR read (api/fhir.py, `withheld_notice`).

In one process on one synthetic ICS (as benchmarks/governance.py builds it: SQLite, `--people`, the
1,000-resource record, a basis for each record read): whole `GET $everything` and `GET Condition?patient=`
requests through the app, each record read with the notice and with `withheld_notice` made to say nothing,
in turn (`governance.paired`: the server's CPU time per request, medians). Also counts the statements
each request runs both ways, which must be equal: the notice is made from the decision already taken.

Usage: python benchmarks/withheld_notice.py [--people 1000] [--sample 200] [--user dr.patel]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from large_record import add_large_record, synthetic_store
from sqlalchemy import event, func, select

from governance import USER, paired  # benchmarks/ is on the path: these run as scripts
from sharedcare.api import fhir
from sharedcare.api.app import create_app
from sharedcare.api.auth import mint_token
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.governance.framework import load_framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.store.models import PatientRecord, Resource


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--user", default=USER, help="who reads (a pharmacist is told of more left out)")
    args = parser.parse_args()
    fw = load_framework()
    with tempfile.TemporaryDirectory() as tmp:
        db, feeds = synthetic_store(Path(tmp), args.people, 21, fw, "notice.db")
        nhs = add_large_record(db, fw, feeds, Path(tmp) / "large.ndjson", 1000)
        with db.session() as session:
            people = list(session.scalars(select(PatientRecord.person_id).distinct()
                                          .order_by(PatientRecord.person_id).limit(args.sample)))
            large = session.scalars(select(PatientRecord.person_id).where(PatientRecord.nhs_number == nhs)).first()
            sizes = dict(session.execute(select(PatientRecord.person_id, func.count(Resource.id))
                                         .join(Resource, Resource.patient_record_id == PatientRecord.id)
                                         .group_by(PatientRecord.person_id)).all())
        assert large is not None
        people = [pid for pid in people if pid != large]
        actor = actor_for(fw, args.user)
        for pid in [*people, large]:
            with db.session() as session:
                GovernedRecords(session, fw, actor).record_basis(pid, "explicit-consent", "")
        statements = [0]
        event.listen(db.engine, "before_cursor_execute", lambda *_: statements.__setitem__(0, statements[0] + 1))

        settings = replace(load_settings(), database_url=str(db.url), demo=True)
        original = fhir.withheld_notice
        figures: dict[str, Any] = {"people": args.people, "records_read": len(people), "user": args.user,
                                   "median_resources_per_record": statistics.median(sizes[p] for p in people),
                                   "large_record_resources": sizes[large]}
        with TestClient(create_app(settings, framework=fw, database=db)) as client:
            headers = {"Authorization": f"Bearer {mint_token(settings, fw, args.user)}"}
            signalled: dict[str, bool] = {}
            counts: dict[str, list[int]] = {"with": [], "without": []}

            def read(path: str, notice: bool) -> None:
                fhir.withheld_notice = original if notice else (lambda records, view, whole=False: None)
                before = statements[0]
                response = client.get(path, headers=headers)
                counts["with" if notice else "without"].append(statements[0] - before)
                assert response.status_code == 200, response.text
                if notice:
                    signalled[path] = any(e["search"]["mode"] == "outcome" for e in response.json()["entry"])

            try:
                for name, template, who, rounds in (
                        ("everything", "/fhir/Patient/{}/$everything", people, 5),
                        ("search", "/fhir/Condition?patient={}", people, 5),
                        ("large_everything", "/fhir/Patient/{}/$everything", [large], 20)):
                    paths = [template.format(pid) for pid in who]
                    for path in paths:  # warm: each record's documents cached, as a record read again finds them
                        read(path, True)
                    counts["with"].clear()
                    counts["without"].clear()
                    timings = paired(paths, lambda p: read(p, True), lambda p: read(p, False), rounds)
                    # `paired` names its two sides governed / ungoverned: here, with / without the notice
                    with_ms = statistics.median(timings["governed_server"])
                    without_ms = statistics.median(timings["ungoverned_server"])
                    figures[f"{name}_server_cpu_ms_with_notice"] = with_ms
                    figures[f"{name}_server_cpu_ms_without"] = without_ms
                    figures[f"{name}_notice_share"] = (with_ms - without_ms) / with_ms
                    figures[f"{name}_signalled"] = sum(signalled[p] for p in paths) / len(paths)
                    figures[f"{name}_statements_equal"] = sorted(counts["with"]) == sorted(counts["without"])
            finally:
                fhir.withheld_notice = original
        db.dispose()
    figures["measured_at"] = utcnow().isoformat()
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
