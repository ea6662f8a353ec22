"""Every answer and audit event of the governed read paths, to compare two versions of the code record by record.

A change to the read path that is meant only to be faster (issue 5) must release, refuse and audit exactly
what the code before it did. `build` makes one store (300 people with the 1,102-resource record, bases for
the framework's users on 25 people: explicit, emergency, or none); `read` runs on a copy of it, with the
code on PYTHONPATH: each user reads each person's `$everything`, `$everything?_type=Condition`,
`Patient/{id}`, `Condition?patient=` and a Condition by id, twice; then one person objects to all
sharing, RYC's agreement is suspended, two people are merged, and in the large record and a typical one a
row's category is changed and another row given a new version, and all is read twice again; then the
merge is undone and RYC signed again, and all is read twice more; last, the audit as AuditEvent NDJSON.
What differs between runs of the same code (times, request sites, random Bundle and OperationOutcome ids)
is masked, so two runs' outputs are byte-identical when the code's answers are.

Usage: python benchmarks/governance_answers.py build DIR [URL]
       cp DIR/base.db A.db; python benchmarks/governance_answers.py read DIR A.db OUT
On PostgreSQL, build into a database URL and read copies of it (`CREATE DATABASE a TEMPLATE base`):
       python benchmarks/governance_answers.py read DIR postgresql+psycopg://.../a OUT
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from fastapi.testclient import TestClient
from large_record import add_large_record  # benchmarks/ is on the path: these run as scripts
from sqlalchemy import select, update

from sharedcare.api.app import create_app
from sharedcare.api.auth import mint_token
from sharedcare.config import load_settings
from sharedcare.errors import SharedcareError
from sharedcare.governance.access_log import export_ndjson
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.consent import set_choice
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.identity.links import merge_persons, unmerge
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Resource
from sharedcare.synth import generate

_RANDOM = re.compile(r'"(recorded|site|lastUpdated|timestamp)":"[^"]*"|urn:uuid:[0-9a-f-]{36}'
                     r'|"resourceType":"(Bundle|OperationOutcome)","id":"[0-9a-f-]{36}"'
                     r'|correlation-id","valueString":"[0-9a-f-]{36}"'
                     # an exported entry's place in the chain: its hash covers its time
                     r'|"url":"(hash|previous)","valueString":"[0-9a-f]{64}"|"code":"\d+-[0-9a-f]{64}"'
                     # a page's cursor (sealed with a random nonce), and the times a suspension was made
                     r'|_cursor=[A-Za-z0-9_\-]+|signed out on \d+ \w+ \d{4} at \d\d:\d\d UTC'
                     r'|"issued_before","valueString":"[^"]*"')


def _masked(text: str) -> str:
    return _RANDOM.sub("M", text)


def _url(database: str) -> str:
    """A database URL as given, or a SQLite file's path."""
    return database if "://" in database else f"sqlite:///{database}"


def build(out: Path, database: str | None = None) -> None:
    fw = load_framework()
    generate(out / "feeds", people=300, seed=21, framework=fw)
    db = Database(_url(database or str(out / "base.db")))
    db.migrate()
    Pipeline(db, fw).ingest_paths([out / "feeds"])
    nhs = add_large_record(db, fw, out / "feeds", out / "large.ndjson", 1000)
    with db.session() as s:
        large = s.scalars(select(PatientRecord.person_id).where(PatientRecord.nhs_number == nhs)).first()
        assert large is not None  # noqa: S101 - add_large_record linked it
        people = sorted(set(s.scalars(select(PatientRecord.person_id))) - {large})[:24] + [large]
    (out / "people.txt").write_text("\n".join(people))
    for i, person in enumerate(people):
        for j, user in enumerate(sorted(fw.users)):
            if (i + j) % 3 == 2:
                continue  # no basis
            with db.session() as s:
                try:
                    GovernedRecords(s, fw, actor_for(fw, user)).record_basis(
                        person, "explicit-consent" if (i + j) % 3 == 0 else "emergency",
                        "patient collapsed in clinic today")
                    s.commit()
                except SharedcareError:  # refused for this role (audited)
                    s.rollback()
    db.dispose()


def _change(db: Database, fw: Framework, people: list[str]) -> int:
    """The changes between the first and second reads; returns the merge's event id."""
    with db.session() as s:
        nhs = s.scalars(select(PatientRecord.nhs_number).where(PatientRecord.person_id == people[1])).first()
        assert nhs is not None  # noqa: S101 - the synthetic ICS gives every person one
        set_choice(s, nhs, by="bench", object_all=True)
        set_agreement(s, fw, "RYC", "suspended", by="bench", reason="a breach reported")
        # as if people[3]'s sources had sent no NHS number: a merge of two different valid ones is refused
        s.execute(update(PatientRecord).where(PatientRecord.person_id == people[3]).values(nhs_number=None))
        merged = merge_persons(s, people[2], people[3], by="bench", reason="same person after review").id
        for person in (people[-1], people[4]):
            rows = s.execute(select(Resource.id, Resource.content, Resource.version)
                             .join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
                             .where(PatientRecord.person_id == person, Resource.resource_type != "Patient")
                             .order_by(Resource.id).limit(2)).all()
            s.execute(update(Resource).where(Resource.id == rows[0][0]).values(category="mental_health"))
            rid, content, version = rows[1]
            content = {**content, "meta": {**content.get("meta", {}), "versionId": str(version + 1)},
                       "text": {"status": "generated", "div": "<div>changed</div>"}}
            s.execute(update(Resource).where(Resource.id == rid).values(
                content=content, version=version + 1, content_hash="f" * 64,
                received_at=datetime(2026, 12, 5, tzinfo=UTC)))
        s.commit()
    return merged


def read(store: Path, database: str, out: TextIO) -> None:
    people = (store / "people.txt").read_text().split()
    fw = load_framework()
    db = Database(_url(database))
    settings = replace(load_settings(), database_url=str(db.url), demo=True)
    with TestClient(create_app(settings, framework=fw, database=db)) as client:
        tokens = {user: {"Authorization": f"Bearer {mint_token(settings, fw, user)}"} for user in sorted(fw.users)}
        with db.session() as s:
            condition = {person: s.scalars(
                select(Resource.id).join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
                .where(PatientRecord.person_id == person, Resource.resource_type == "Condition")
                .order_by(Resource.id)).first() for person in people}

        def phase(name: str) -> None:
            for again in range(2):
                for user, headers in tokens.items():
                    for person in people:
                        paths = [f"/fhir/Patient/{person}/$everything",
                                 f"/fhir/Patient/{person}/$everything?_type=Condition",
                                 f"/fhir/Patient/{person}", f"/fhir/Condition?patient={person}"]
                        paths += [f"/fhir/Condition/{condition[person]}"] if condition[person] else []
                        for path in paths:
                            response = client.get(path, headers=headers)
                            out.write(f"{name} {again} {user} {path} {response.status_code} {_masked(response.text)}\n")

        phase("start")
        merged = _change(db, fw, people)
        phase("changed")
        with db.session() as s:
            unmerge(s, merged, by="bench", reason="different people after all")
            set_agreement(s, fw, "RYC", "signed", by="bench", reason="")
            s.commit()
        # the suspension ended RYC's users' tokens for good (task sess): they sign in again
        tokens.update({user: {"Authorization": f"Bearer {mint_token(settings, fw, user)}"} for user in fw.users})
        phase("restored")
        with db.session() as s:
            out.writelines(f"AUDIT {_masked(line.rstrip())}\n" for line in export_ndjson(s))
    db.dispose()


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "build":
        build(Path(argv[1]), argv[2] if len(argv) == 3 else None)
    elif len(argv) == 4 and argv[0] == "read":
        with Path(argv[3]).open("w", encoding="utf-8") as out:
            read(Path(argv[1]), argv[2], out)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
