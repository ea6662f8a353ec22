"""The identity targets on a large synthetic ICS, ingesting only what carries a person (issue 4).

Ingesting a whole ICS costs mostly clinical content (FHIR validation of every Observation, every lab
result), which the MPI never reads: a person's record is made and updated only from the Patient
resources, HL7 PIDs and social care rows. So the MPI's figures at 100,000 people are measured on a copy
of the ICS that keeps every message that can make or change a patient record, through the one real
pipeline (`sharedcare ingest`), and drops the rest:

- FHIR bundles: every bundle, with its Patient entries only (a bundle without one is dropped: it
  cannot make or change a record);
- HL7 v2: every ADT message; an ORU result only if no earlier HL7 message of its organisation named its
  patient (a result for a patient the PAS never sent makes the record itself; were that earlier message
  quarantined, a whole ingest would differ, which `check` would show);
- CSV (social care): every row, unchanged (each carries the client's demographics and address then).

`check` proves the copy is faithful where it matters: it ingests one ICS whole and as this copy, and
compares every patient record (each column but the store's own id and timestamp), the people they are
linked into, every review pair with its evidence, every link event and every record's review item.

Usage:
  python benchmarks/identity_ics.py check --people 3000       # full ingest vs the copy, record by record
  python benchmarks/identity_ics.py run --people 100000 --dir var/bench/ics-100k
      # synth, copy, `sharedcare init`, `sharedcare ingest`, `sharedcare mpi evaluate`, `sharedcare mpi
      # relink`, `sharedcare mpi evaluate` again; each step's wall and CPU seconds to results/
      # --whole: the same on the whole ICS; --src: other code (e.g. a `git archive` of main); --db NAME.db;
      # each store is also kept as ingest left it (NAME.ingested.db)
  python benchmarks/identity_ics.py compare sqlite:///A.db sqlite:///B.db   # two stores, record by record
  python benchmarks/identity_ics.py copy FULL_DIR OUT_DIR    # the copy alone
  python benchmarks/identity_ics.py breakdown STORE.db ground_truth.csv
      # pairs linked, missed and false, and the review list, by kind of record: unknown patients', newborns'
      # before naming (a placeholder given name or none), named; each review pair by the rule that held it
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SRC = Path(__file__).resolve().parent.parent / "src"
_MSH = re.compile(rb"(?:^|(?<=[\r\n]))MSH\|")


def _hl7_ids(message: bytes) -> tuple[bytes, set[bytes]]:
    """(MSH-9's message type, PID-3's identifiers) of one message."""
    segments = re.split(rb"[\r\n]+", message)
    kind = segments[0].split(b"|")[8].split(b"^")[0] if segments[0].count(b"|") >= 8 else b""
    pid = next((s.split(b"|") for s in segments if s.startswith(b"PID|")), [])
    ids = {rep.split(b"^")[0] for rep in pid[3].split(b"~")} if len(pid) > 3 else set()
    return kind, ids - {b""}


def person_bearing_copy(full: Path, out: Path) -> Counter[str]:
    """Write the copy described in the module docstring; counts of what was kept and dropped."""
    manifest = json.loads((full / "manifest.json").read_text(encoding="utf-8"))
    counts: Counter[str] = Counter()
    named: set[tuple[str, bytes]] = set()  # (organisation, patient id) an earlier HL7 message carried
    for rel in manifest["files"]:
        src, dst = full / rel, out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".ndjson"):
            with src.open(encoding="utf-8") as lines, dst.open("w", encoding="utf-8") as kept:
                for line in lines:
                    bundle = json.loads(line)
                    entries = bundle.get("entry") or []
                    patients = [e for e in entries if e.get("resource", {}).get("resourceType") == "Patient"]
                    counts["fhir entries dropped"] += len(entries) - len(patients)
                    if not patients:
                        counts["fhir bundles dropped"] += 1
                        continue
                    kept.write(json.dumps({**bundle, "entry": patients}) + "\n")
                    counts["fhir bundles kept"] += 1
        elif rel.endswith(".hl7"):
            data, org = src.read_bytes(), rel.split("/")[0]
            starts = [m.start() for m in _MSH.finditer(data)] + [len(data)]
            with dst.open("wb") as kept:
                for a, b in zip(starts, starts[1:], strict=False):
                    message = data[a:b]
                    kind, ids = _hl7_ids(message)
                    new = {(org, i) for i in ids} - named
                    if kind == b"ORU" and ids and not new:
                        counts["hl7 results dropped"] += 1
                        continue
                    named |= new
                    kept.write(message)
                    counts[f"hl7 {kind.decode('latin-1')} kept"] += 1
        else:
            shutil.copyfile(src, dst)
            counts["csv files copied"] += 1
    for name in ("manifest.json", "ground_truth.csv", "users.csv"):
        shutil.copyfile(full / name, out / name)
    return counts


# ------------------------------------------------------------------------------------------------ check

def _ingest(db_url: str, folder: Path) -> dict[str, Any]:
    from sharedcare.config import load_settings
    from sharedcare.governance.framework import load_framework
    from sharedcare.ingest.pipeline import Pipeline
    from sharedcare.store.database import Database

    db = Database(db_url)
    db.migrate()
    start, cpu = time.perf_counter(), time.process_time()
    report = Pipeline(db, load_framework(load_settings().framework_path)).ingest_paths([folder])
    return {"seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
            "messages": report.messages, "quarantined": report.quarantined}


def snapshot(db_url: str) -> dict[str, Any]:
    """What identity decided, keyed by source record (org, id), free of the store's ids and clocks."""
    from sqlalchemy import select

    from sharedcare.store.database import Database
    from sharedcare.store.models import LinkEvent, MatchReview, PatientRecord, Quarantine, ReviewItem

    db = Database(db_url)
    with db.session() as s:
        rows = list(s.scalars(select(PatientRecord).order_by(PatientRecord.id)))
        key = {r.id: (r.source_org, r.source_id) for r in rows}
        skip = {"id", "person_id", "updated_at"}
        columns = [c.key for c in PatientRecord.__table__.columns if c.key not in skip]
        records = {key[r.id]: {c: getattr(r, c) for c in columns} for r in rows}
        people: dict[str, set[tuple[str, str]]] = {}
        for r in rows:
            people.setdefault(r.person_id, set()).add(key[r.id])
        reviews = sorted((key[m.record_a], key[m.record_b], m.probability, json.dumps(m.evidence, sort_keys=True),
                          m.status) for m in s.scalars(select(MatchReview)))
        events = [(e.kind, e.by, e.reason, [key[m.patient_record_id] for m in e.moves])
                  for e in s.scalars(select(LinkEvent).order_by(LinkEvent.id))]
        items = sorted((i.kind, key[i.patient_record_id], i.reason) for i in s.scalars(select(ReviewItem))
                       if i.patient_record_id is not None)
        quarantined = sum(1 for _ in s.scalars(select(Quarantine.id)))
    return {"records": records, "people": sorted(sorted(p) for p in people.values()), "reviews": reviews,
            "events": events, "record_review_items": items, "quarantined": quarantined}


def compare(full_db: str, copy_db: str) -> dict[str, Any]:
    """Whether two stores' identity decisions are the same, part by part (the first unequal records named)."""
    full, copy = snapshot(full_db), snapshot(copy_db)
    differ = {part: full[part] != copy[part] for part in ("records", "people", "reviews", "events",
                                                           "record_review_items")}
    unequal = [k for k in full["records"].keys() | copy["records"].keys()
               if full["records"].get(k) != copy["records"].get(k)]
    return {"source_records": len(full["records"]), "persons": len(full["people"]),
            "review_pairs": len(full["reviews"]), "link_events": len(full["events"]),
            "record_review_items": len(full["record_review_items"]),
            "quarantined_full": full["quarantined"], "quarantined_copy": copy["quarantined"],
            "differ": differ, "unequal_records": [list(k) for k in unequal[:10]],
            "identical": not any(differ.values())}


def _kind(given: str | None, family: str | None, postcode: str | None) -> str:
    """Which of the ICS's records this is: an unknown patient's (a placeholder surname or the
    pseudo-postcode), a newborn's before naming (a placeholder given name, or none), or a named one. From
    the record alone: an unknown patient's record that carries a real surname reads as "before naming"."""
    from sharedcare.identity.compare import PSEUDO_POSTCODE_DISTRICT, family_text, given_text

    if (postcode or "").upper().startswith(PSEUDO_POSTCODE_DISTRICT) or (family and not family_text(family)):
        return "unknown patient"
    if given_text(given) is None:
        return "before naming, placeholder" if (given or "").strip() else "before naming, no given name"
    return "named"


def breakdown(db_file: Path, truth_file: Path) -> dict[str, Any]:
    """A store's identity outcome by kind of record (`_kind`): pairs linked, missed and falsely linked, and
    the review list by what put each pair there (the rule's `held` or `never_link`, else the weight)."""
    with truth_file.open(encoding="utf-8", newline="") as f:
        truth = {(r["source_org"], r["source_id"]): r["person_key"] for r in csv.DictReader(f)}
    with sqlite3.connect(db_file) as con:
        rows = con.execute("select id, source_org, source_id, person_id, given, family, postcode, link_status, "
                           "link_note from patient_records").fetchall()
        reviews = con.execute("select record_a, record_b, status, evidence from match_reviews").fetchall()
    kind = {r[0]: _kind(r[4], r[5], r[6]) for r in rows}
    who = {r[0]: truth[(r[1], r[2])] for r in rows}
    person = {r[0]: r[3] for r in rows}

    def pair_kind(a: int, b: int) -> str:
        return " / ".join(sorted((kind[a], kind[b])))

    groups: dict[str, dict[Any, list[int]]] = {"truth": {}, "store": {}}
    for r in rows:
        groups["truth"].setdefault(who[r[0]], []).append(r[0])
        groups["store"].setdefault(person[r[0]], []).append(r[0])
    linked, missed, false = Counter[str](), Counter[str](), Counter[str]()
    for ids in groups["truth"].values():
        for a, b in combinations(ids, 2):
            (linked if person[a] == person[b] else missed)[pair_kind(a, b)] += 1
    for ids in groups["store"].values():
        false.update(pair_kind(a, b) for a, b in combinations(ids, 2) if who[a] != who[b])
    listed = Counter[str]()
    for a, b, status, evidence in reviews:
        e = json.loads(evidence)
        held = e.get("held", "")
        why = (held.split(" (")[0] if held else "given names differ" if e.get("never_link") else
               "linked on the NHS number, given names differ" if e.get("discrepancy") else "weight")
        listed[f"{status} | {why} | {pair_kind(a, b)} | "
               f"{'same person' if who[a] == who[b] else 'two people'}"] += 1
    notes = Counter(f"{r[7]} | {(r[8] or '').split(' (')[0][:90]} | {kind[r[0]]}" for r in rows
                    if r[8] and "below the link" not in r[8])
    return {"records": Counter(kind.values()), "persons": len(groups["store"]),
            "true pairs linked": linked, "true pairs missed": missed, "false pairs": false,
            "review pairs": dict(sorted(listed.items())), "records noted": dict(sorted(notes.items())),
            "records held for review": sum(r[7] == "review" for r in rows)}


def check(people: int, seed: int) -> dict[str, Any]:
    """Ingest one ICS whole and as the person-bearing copy; compare what identity decided."""
    from sharedcare.synth import generate

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "full", people=people, seed=seed)
        copied = person_bearing_copy(root / "full", root / "copy")
        full_run = _ingest(f"sqlite:///{root}/full.db", root / "full")
        copy_run = _ingest(f"sqlite:///{root}/copy.db", root / "copy")
        return {"people": people, "seed": seed, "copy": dict(copied), "full_ingest": full_run,
                "copy_ingest": copy_run} | compare(f"sqlite:///{root}/full.db", f"sqlite:///{root}/copy.db")


# -------------------------------------------------------------------------------------------------- run

def _step(name: str, argv: list[str], env: dict[str, str], log: list[dict[str, Any]], ok: int = 0) -> str:
    """Run one `sharedcare` command; its wall and CPU seconds (children's rusage) go to the log. Exit codes
    up to `ok` are success (`sharedcare ingest` exits 1 when it quarantined something)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    command = [sys.executable, "-c", "from sharedcare.cli import app; app()", *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.append({"step": name, "argv": argv, "seconds": round(time.perf_counter() - start, 1),
                "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
                "children_peak_rss_mb": round(after.ru_maxrss / 1024), "load_average": os.getloadavg(),
                "exit": done.returncode})
    print(f"{name}: {log[-1]['seconds']} s, exit {done.returncode}", flush=True)
    if done.returncode > ok:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def run(people: int, seed: int, folder: Path, whole: bool, src: Path, db_name: str) -> dict[str, Any]:
    """The steps in the module docstring, with the code in `src`; `whole` ingests the whole ICS instead of
    the copy. The ICS is made once per folder and kept."""
    folder.mkdir(parents=True, exist_ok=True)
    full, copy, db = folder / "full", folder / "copy", folder / db_name
    env = {**os.environ, "SHAREDCARE_DB": f"sqlite:///{db.resolve()}", "PYTHONPATH": str(src.resolve()),
           "COLUMNS": "200"}
    log: list[dict[str, Any]] = []
    if not (full / "manifest.json").is_file():
        _step("synth", ["synth", "--people", str(people), "--seed", str(seed), "--out", str(full)], env, log)
    db.unlink(missing_ok=True)
    if not whole and not (copy / "manifest.json").is_file():
        start = time.perf_counter()
        copied = person_bearing_copy(full, copy)
        log.append({"step": "copy", "seconds": round(time.perf_counter() - start, 1), "counts": dict(copied)})
    _step("init", ["init"], env, log)
    log[-1]["report"] = _step("ingest", ["ingest", str(full if whole else copy), "--json"], env, log, ok=1)[-4000:]
    truth = str(full / "ground_truth.csv")
    log[-1]["report"] = _step("evaluate on ingest", ["mpi", "evaluate", "--truth", truth], env, log)
    with sqlite3.connect(db) as live, sqlite3.connect(db.with_suffix(".ingested.db")) as kept:
        live.backup(kept)  # the store as ingest left it, for `compare`
    # nothing else writes: a store over SQLite's relink limit is relinked (code before the limit has no flag)
    stopped = ["--writers-stopped"] if "--writers-stopped" in (src / "sharedcare" / "cli.py").read_text() else []
    log[-1]["report"] = _step("relink", ["mpi", "relink", *stopped], env, log)[-4000:]
    log[-1]["report"] = _step("evaluate after relink", ["mpi", "evaluate", "--truth", truth], env, log)
    return {"people": people, "seed": seed, "whole": whole, "src": str(src), "steps": log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check")
    c.add_argument("--people", type=int, default=3000)
    c.add_argument("--seed", type=int, default=23)
    r = sub.add_parser("run")
    r.add_argument("--people", type=int, default=100_000)
    r.add_argument("--seed", type=int, default=23)
    r.add_argument("--dir", type=Path, default=Path("var/bench/ics-identity"))
    r.add_argument("--whole", action="store_true", help="ingest the whole ICS, not the copy")
    r.add_argument("--src", type=Path, default=SRC, help="the code to run (a folder holding sharedcare/)")
    r.add_argument("--db", default="mpi.db", help="the store's file name, in --dir")
    d = sub.add_parser("compare")
    d.add_argument("full_db")
    d.add_argument("copy_db")
    k = sub.add_parser("breakdown")
    k.add_argument("db_file", type=Path)
    k.add_argument("truth_file", type=Path)
    p = sub.add_parser("copy")
    p.add_argument("full", type=Path)
    p.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "copy":
        print(json.dumps(person_bearing_copy(args.full, args.out), indent=2))
        return
    if args.command == "breakdown":
        print(json.dumps(breakdown(args.db_file, args.truth_file), indent=1))
        return
    result = (check(args.people, args.seed) if args.command == "check" else
              compare(args.full_db, args.copy_db) if args.command == "compare" else
              run(args.people, args.seed, args.dir, args.whole, args.src, args.db))
    print(json.dumps(result, indent=2, default=str))
    RESULTS.mkdir(exist_ok=True)
    name = args.command + (f"-{Path(args.db).stem}" if args.command == "run" else "")
    (RESULTS / f"identity_ics_{name}.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
