"""A large record for the read benchmarks: one person's GP history repeated until it holds about N
resources, ingested through the one pipeline (as a GP system's bulk backfill would arrive)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database


def _first_bundle(feeds: Path) -> dict[str, Any]:
    """The first GP bundle in the ICS that carries an NHS number (so it links to its person)."""
    for path in sorted(feeds.glob("P8*/fhir/*.ndjson")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                bundle = json.loads(line)
                patient = bundle["entry"][0]["resource"]
                if patient["resourceType"] == "Patient" and any(
                        i.get("system") == "https://fhir.nhs.uk/Id/nhs-number" for i in patient.get("identifier", [])):
                    return bundle
    raise ValueError(f"no GP bundle with an NHS number under {feeds}")


def synthetic_store(folder: Path, people: int, seed: int, fw: Framework, name: str) -> tuple[Database, Path]:
    """A fresh SQLite store in `folder` holding a synthetic ICS of `people` (by the real pipeline), and its
    feeds' folder: what a benchmark reads from."""
    from sharedcare.synth import generate

    feeds = folder / "feeds"
    generate(feeds, people=people, seed=seed, framework=fw)
    db = Database(f"sqlite:///{folder / name}")
    db.migrate()
    Pipeline(db, fw).ingest_paths([feeds])
    return db, feeds


def add_large_record(db: Database, fw: Framework, feeds: Path, out: Path, resources: int = 1000) -> str:
    """Ingest a bundle of about `resources` resources for one person; return that person's NHS number."""
    bundle = _first_bundle(feeds)
    patient, clinical = bundle["entry"][0], bundle["entry"][1:]
    entries, copy = [patient], 0
    while len(entries) < resources:
        for entry in clinical:
            resource = dict(entry["resource"])
            resource["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"large-record:{resource['id']}:{copy}"))
            entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource})
            if len(entries) >= resources:
                break
        copy += 1
    bundle = {**bundle, "id": str(uuid.uuid4()), "entry": entries}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(bundle) + "\n", encoding="utf-8")
    report = Pipeline(db, fw).ingest_paths([out])
    if report.quarantined:
        raise ValueError(f"the large record was quarantined: {report.quarantine}")
    nhs = next(i["value"] for i in patient["resource"]["identifier"]
               if i.get("system") == "https://fhir.nhs.uk/Id/nhs-number")
    return str(nhs)
