"""Writes one synthetic ICS: every source's feeds in its own format, plus the ground truth.

The population is generated household by household, each from `random.Random(f"{seed}:{index}")`,
and written as it is made, so memory stays flat whatever the number of people and the same
(people, seed, as_of) always gives the same bytes. Files are split into shards of about a thousand
people each so that no file grows large.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TextIO

from sharedcare.csv_out import CsvWriter
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.synth import csv_feeds
from sharedcare.synth.clinical import History, history
from sharedcare.synth.fhir_feeds import FhirFeed, Source, new_id
from sharedcare.synth.hl7_feeds import Hl7Feed
from sharedcare.synth.journeys import JOURNEY_HOUSEHOLDS, JOURNEY_MIN_PEOPLE, Orgs, journey_household
from sharedcare.synth.noise import ERROR_RATES, Noise
from sharedcare.synth.people import HouseholdContext, Person, council_client_id, make_household
from sharedcare.synth.unnamed import Unnamed, UnnamedRecords

DEFAULT_AS_OF = date(2026, 11, 1)
SHARD_SIZE = 1000
GROUND_TRUTH_HEADER = ("source_org", "source_id", "person_key")
USERS_HEADER = ("username", "name", "role", "organisation")
_EXTENSIONS = {"fhir": "ndjson", "hl7v2": "hl7", "csv": "csv"}
_ENCODINGS = {"fhir": "utf-8", "hl7v2": "latin-1", "csv": "utf-8"}


@dataclass
class SynthSummary:
    """What a run wrote; `to_json()` is the manifest."""

    people: int
    seed: int
    as_of: date
    framework_version: str
    households: int = 0
    files: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    injected_errors: dict[str, int] = field(default_factory=dict)
    source_records: dict[str, int] = field(default_factory=dict)
    error_rates: dict[str, dict[str, float | str]] = field(default_factory=lambda: ERROR_RATES)
    journeys: list[dict[str, str]] = field(default_factory=list)
    organisations: dict[str, dict[str, str]] = field(default_factory=dict)  # code -> name, kind

    def to_json(self) -> str:
        orgs = {
            code: {**about, "files": [f for f in self.files if f.startswith(f"{code}/")],
                   "counts": dict(sorted(self.counts.get(code, {}).items()))}
            for code, about in self.organisations.items() if code in self.counts
        }
        manifest = {
            "generator": "sharedcare.synth", "seed": self.seed, "people": self.people,
            "households": self.households, "as_of": self.as_of.isoformat(),
            "framework_version": self.framework_version, "files": self.files, "organisations": orgs,
            "source_records": dict(sorted(self.source_records.items())),
            "injected_errors": dict(sorted(self.injected_errors.items())), "error_rates": self.error_rates,
            "journeys": self.journeys,
        }
        return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Layout:
    """Which organisation plays which part, and under which system name, read from the framework."""

    names: dict[str, str]
    kinds: dict[str, str]
    practices: dict[str, str]  # ODS -> FHIR system
    acute: str | None
    epr: str | None
    pas: str | None
    lab: str | None
    community: tuple[str, str] | None
    mental_health: tuple[str, str] | None
    ambulance: tuple[str, str] | None
    hospice: tuple[str, str] | None
    social_care: tuple[str, str] | None


def layout(framework: Framework) -> Layout:
    orgs = list(framework.organisations.values())

    def first(kind: str, fmt: str) -> tuple[str, str] | None:
        return next(((o.code, s) for o in orgs if o.kind == kind for s, f in o.systems.items() if f == fmt), None)

    acute = next((o for o in orgs if o.kind == "acute"), None)
    acute_systems = dict(acute.systems) if acute else {}
    epr = first("acute", "fhir")
    return Layout(
        names={o.code: o.name for o in orgs}, kinds={o.code: o.kind for o in orgs},
        practices={o.code: s for o in orgs if o.kind == "gp" for s, f in o.systems.items() if f == "fhir"},
        acute=acute.code if acute else None, epr=epr[1] if epr else None,
        pas="pas" if acute_systems.get("pas") == "hl7v2" else None,
        lab="lab" if acute_systems.get("lab") == "hl7v2" else None,
        community=first("community", "fhir"), mental_health=first("mental_health", "fhir"),
        ambulance=first("ambulance", "fhir"), hospice=first("hospice", "fhir"),
        social_care=first("social_care", "csv"),
    )


class ShardWriter:
    """Keeps the current shard's files open; moving to the next shard closes them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shard = 0
        self.handles: dict[str, TextIO] = {}
        self.headed: set[str] = set()  # CSV files whose header is written
        self.files: list[str] = []

    def move_to(self, shard: int) -> None:
        if shard != self.shard:
            self.close()
            self.shard = shard

    def _handle(self, org: str, fmt: str, system: str) -> tuple[str, TextIO]:
        rel = f"{org}/{fmt}/{system}-{self.shard:04d}.{_EXTENSIONS[fmt]}"
        handle = self.handles.get(rel)
        if handle is None:
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("w", encoding=_ENCODINGS[fmt], newline="")
            self.handles[rel] = handle
            self.files.append(rel)
        return rel, handle

    def write(self, org: str, fmt: str, system: str, text: str) -> None:
        self._handle(org, fmt, system)[1].write(text)

    def write_rows(self, org: str, system: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        rel, handle = self._handle(org, "csv", system)
        writer = csv.writer(handle)  # a source system's extract, read back by ingest as it is (not csv_out's)
        if rel not in self.headed:
            writer.writerow(header)
            self.headed.add(rel)
        writer.writerows(rows)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


class _Renderer:
    """Sends one person's history to each organisation's feed and records the ground truth."""

    def __init__(self, lay: Layout, writer: ShardWriter, truth: Callable[[str, str, str], None], noise: Noise,
                 counts: dict[str, Counter[str]], as_of: date) -> None:
        self.lay, self.writer, self.truth, self.noise = lay, writer, truth, noise
        self.counts, self.as_of = counts, as_of
        self.hl7 = Hl7Feed(lay.acute or "", lay.names, counts)
        self.unnamed_at = Unnamed((lay.acute, lay.epr) if lay.acute and lay.epr else None, lay.ambulance)

    def person(self, rng: random.Random, person: Person, hist: History) -> None:
        fhir = FhirFeed(rng, self.lay.names, self.counts, self.as_of, self.noise)
        self._gp(rng, fhir, person, hist)
        self._acute(rng, fhir, person, hist)
        lay = self.lay
        if lay.community and (hist.nursing or hist.sexual_health):
            source = self._source(rng, person, lay.community)
            bundles = fhir.district_nursing(source, hist.nursing) if hist.nursing else []
            bundles += [fhir.sexual_health(source, when, found) for when, found in hist.sexual_health]
            self._emit(source, bundles)
        if lay.mental_health and hist.mental_health:
            source = self._source(rng, person, lay.mental_health)
            self._emit(source, fhir.mental_health(source, hist.mental_health))
        if lay.ambulance and hist.ambulance:
            source = self._source(rng, person, lay.ambulance)
            self._emit(source, [fhir.ambulance(source, call) for call in hist.ambulance])
        if lay.hospice and hist.hospice:
            source = self._source(rng, person, lay.hospice)
            self._emit(source, fhir.hospice(source, hist.hospice))
        if lay.social_care and hist.social_care:
            org, system = lay.social_care
            view = self.noise.view(rng, person, org, "csv", traced=False)
            client = council_client_id(person.number)
            self.writer.write_rows(org, system, csv_feeds.HEADER,
                                   csv_feeds.rows(person, view, client, hist.social_care, org, self.counts))
            self.truth(org, client, person.key)

    def unnamed(self, rng: random.Random, members: list[tuple[Person, History]]) -> None:
        """A household's records made before naming or identification, from a generator of their own."""
        feed = FhirFeed(rng, self.lay.names, self.counts, self.as_of, self.noise)
        UnnamedRecords(self.unnamed_at, feed, self._emit, self.as_of).household(rng, members)

    def _source(self, rng: random.Random, person: Person, where: tuple[str, str]) -> Source:
        org, system = where
        return Source(org, system, new_id(rng), self.noise.view(rng, person, org, "fhir", traced=False), person)

    def _emit(self, source: Source, bundles: list[str]) -> None:
        self.writer.write(source.org, "fhir", source.system, "".join(line + "\n" for line in bundles))
        self.truth(source.org, source.patient_id, source.person.key)

    def _gp(self, rng: random.Random, fhir: FhirFeed, person: Person, hist: History) -> None:
        practices: list[tuple[str, date | None]] = [(person.practice, None)]
        if person.previous_practice:
            practices.append((person.previous_practice, person.left_previous_practice))
        for practice, left in practices:
            view = self.noise.view(rng, person, practice, "fhir", traced=True)
            source = Source(practice, self.lay.practices[practice], new_id(rng), view, person, traced=True)
            self._emit(source, [fhir.gp_record(source, hist.gp, left)])

    def _acute(self, rng: random.Random, fhir: FhirFeed, person: Person, hist: History) -> None:
        """The trust's PAS registration is shared by its EPR and lab, so one view serves all three."""
        acute, stays = self.lay.acute, hist.admissions
        if not acute or not stays:
            return
        view = self.noise.view(rng, person, acute, "hl7v2" if self.lay.pas else "fhir", traced=False)
        if self.lay.epr:
            bundles = [fhir.discharge_summary(Source(acute, self.lay.epr, stay.mrn, view, person), stay,
                                              person.practice) for stay in stays]
            self.writer.write(acute, "fhir", self.lay.epr, "".join(line + "\n" for line in bundles))
        if self.lay.pas:
            moved_on = person.residences[-1].start
            moved = (datetime.combine(moved_on, time(10), tzinfo=UTC)
                     if stays[0].admitted.date() < moved_on < self.as_of else None)
            self.writer.write(acute, "hl7v2", self.lay.pas, "".join(self.hl7.adt(person, view, stays, moved)))
        if self.lay.lab:
            notes = [rng.random() < 0.3 for stay in stays for _ in stay.labs]
            self.writer.write(acute, "hl7v2", self.lay.lab, "".join(self.hl7.results(person, view, stays, notes)))
        hospital_numbers = list(dict.fromkeys(stay.mrn for stay in stays))
        for mrn in hospital_numbers:
            self.truth(acute, mrn, person.key)
        for _ in hospital_numbers[1:]:
            self.noise.count("duplicate_hospital_number")


def generate(out_dir: Path, people: int, seed: int, as_of: date = DEFAULT_AS_OF,
             framework: Framework | None = None,
             progress: Callable[[int], None] | None = None) -> SynthSummary:
    """Write a synthetic ICS of `people` people to `out_dir`; returns (and writes) the manifest."""
    if people < 1:
        raise ValueError("people must be at least 1")
    if framework is None:
        framework = load_framework()
    lay = layout(framework)
    if not lay.practices:
        raise ValueError("the framework has no GP practice with a FHIR system; everyone must be registered")
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Counter[str]] = {}
    noise = Noise()
    writer = ShardWriter(out_dir)
    practices = tuple(lay.practices)
    summary = SynthSummary(people=people, seed=seed, as_of=as_of, framework_version=framework.version,
                           organisations={c: {"name": n, "kind": lay.kinds[c]} for c, n in lay.names.items()})
    orgs = Orgs(practices, lay.ambulance[0] if lay.ambulance else None, lay.hospice[0] if lay.hospice else None,
                lay.acute)
    with (out_dir / "ground_truth.csv").open("w", encoding="utf-8", newline="") as truth_file:
        truth = CsvWriter(truth_file)
        truth.writerow(GROUND_TRUTH_HEADER)
        renderer = _Renderer(lay, writer, lambda org, sid, key: truth.writerow((org, sid, key)), noise, counts, as_of)
        number, index, unreported = 1, 0, 0
        while number <= people:
            rng = random.Random(f"{seed}:{index}")
            ctx = HouseholdContext(index, number, as_of, seed, practices, people - number + 1)
            if people >= JOURNEY_MIN_PEOPLE and index < JOURNEY_HOUSEHOLDS:
                members, notes = journey_household(rng, ctx, orgs)
                summary.journeys += [asdict(n) for n in notes]
            else:
                members = [(p, history(rng, p, as_of)) for p in make_household(rng, ctx)]
            writer.move_to((number - 1) // SHARD_SIZE)
            for person, hist in members:
                renderer.person(rng, person, hist)
            renderer.unnamed(random.Random(f"{seed}:{index}:unnamed"), members)
            number += len(members)
            index += 1
            unreported += len(members)
            if progress and (unreported >= 100 or number > people):
                progress(unreported)
                unreported = 0
    writer.close()
    with (out_dir / "users.csv").open("w", encoding="utf-8", newline="") as users_file:
        users = CsvWriter(users_file)
        users.writerow(USERS_HEADER)
        users.writerows((u.username, u.name, u.role, u.organisation) for u in framework.users.values())
    summary.households = index
    summary.files = writer.files
    summary.counts = {org: dict(c) for org, c in sorted(counts.items())}
    summary.injected_errors = dict(noise.injected)
    summary.source_records = dict(noise.records)
    (out_dir / "manifest.json").write_text(summary.to_json(), encoding="utf-8")
    return summary
