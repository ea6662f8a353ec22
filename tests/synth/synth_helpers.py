"""Reading a synthetic ICS back the way ingest would: bundles, HL7 messages, CSV rows, ground truth."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharedcare.synth import SynthSummary

FRAMEWORK_FILE = Path(__file__).resolve().parents[2] / "config" / "framework.yaml"
PEOPLE = 400
SEED = 3


@dataclass
class SynthRun:
    root: Path
    summary: SynthSummary

    def files(self, pattern: str) -> list[Path]:
        return sorted(self.root.glob(pattern))

    def bundles(self, org: str = "*") -> list[dict[str, Any]]:
        return [json.loads(line) for path in self.files(f"{org}/fhir/*.ndjson")
                for line in path.read_text(encoding="utf-8").splitlines()]

    def messages(self, system: str) -> list[str]:
        """HL7 v2 messages: segments end with CR, each message is followed by LF."""
        return [m for path in self.files(f"RXR/hl7v2/{system}-*.hl7")
                for m in path.read_bytes().decode("latin-1").split("\n") if m]

    def rows(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        for path in self.files("LRC/csv/mosaic-*.csv"):
            with path.open(encoding="utf-8", newline="") as f:
                rows += list(csv.DictReader(f))
        return rows

    def truth(self) -> list[dict[str, str]]:
        with (self.root / "ground_truth.csv").open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.root / "manifest.json").read_text(encoding="utf-8"))

    def records_of(self, person_key: str) -> set[tuple[str, str]]:
        return {(r["source_org"], r["source_id"]) for r in self.truth() if r["person_key"] == person_key}

    def bundles_of(self, person_key: str, org: str) -> list[dict[str, Any]]:
        ids = {sid for o, sid in self.records_of(person_key) if o == org}
        return [b for b in self.bundles(org) if patient(b)["id"] in ids]


def patient(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def segments(message: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in message.split("\r") if s.startswith(name + "|")]
