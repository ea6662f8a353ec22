"""Large input in bounded memory: feeds are read a message at a time, and a message too large to take is
refused with its place and a way out, never loaded whole and never a reason to lose the rest.

Peak memory is measured in a subprocess (its own peak RSS), comparing a large file with a small one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.builders import bundle, condition, patient, write_ndjson

import sharedcare
from sharedcare.governance.framework import Framework
from sharedcare.ingest import fhir_bundle, hl7v2
from sharedcare.ingest.messages import KEPT_OF_TOO_LARGE, MAX_MESSAGE_BYTES
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import Quarantine

SRC = Path(sharedcare.__file__).resolve().parents[1]
GP = "https://fhir.nhs.uk/Id/ods-organization-code|P81001#emis"
# A line of US billing resources: set aside (counted) by the pipeline without being stored, so a file of
# them is cheap to ingest and measures reading, parsing and staging a large file rather than the store.
CLAIMS = json.dumps({"resourceType": "Bundle", "type": "collection", "meta": {"source": GP}, "entry": [
    {"resource": {"resourceType": "Claim", "id": f"c{i}", "status": "active", "text": {"div": "x" * 400}}}
    for i in range(20)]})
_PEAK_RSS = """
import resource, sys
from pathlib import Path
from sharedcare.governance.framework import load_framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
db = Database(sys.argv[1]); db.migrate()
report = Pipeline(db, load_framework(), workers=0).ingest_paths([Path(sys.argv[2])])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, report.accepted, report.set_aside["Claim"])
"""


def _gp_bundle(pid: str) -> dict:
    return bundle("P81001", "emis", [patient(pid, None, "Okafor", "Emeka", "1945-03-02"),
                                     condition(f"{pid}-c", f"Patient/{pid}", "44054006", "Type 2 diabetes")])


def _ingest_measured(tmp_path: Path, lines: int) -> tuple[int, int, int]:
    path = tmp_path / f"P81001-{lines}.ndjson"
    with path.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(_gp_bundle("first")) + "\n")
        for _ in range(lines):
            handle.write(CLAIMS + "\n")
        handle.write(json.dumps(_gp_bundle("last")) + "\n")
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, f"sqlite:///{tmp_path / f'{lines}.db'}", str(path)],  # noqa: S603
                          capture_output=True, text=True, env={"PYTHONPATH": str(SRC)}, timeout=300, check=True)
    peak_mb, accepted, claims = (int(n) for n in done.stdout.split())
    assert (accepted, claims) == (4, 20 * lines), "every line was read"
    return peak_mb, path.stat().st_size // 2**20, claims


def test_a_large_ndjson_file_streams_in_the_memory_of_a_small_one(tmp_path: Path) -> None:
    small_peak, small_mb, _ = _ingest_measured(tmp_path, 200)
    large_peak, large_mb, _ = _ingest_measured(tmp_path, 12_000)
    assert large_mb >= 100
    assert large_peak - small_peak < 40, f"{large_mb} MB file: peak RSS {large_peak} MB against {small_peak} MB"


def test_a_fhir_json_file_larger_than_a_message_may_be_is_refused_unread_and_the_rest_goes_on(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    huge = tmp_path / "P81001" / "extract.json"
    huge.parent.mkdir()
    with huge.open("wb") as handle:
        handle.write(b'{"resourceType": "Bundle", "type": "collection", "entry": [')
        handle.truncate(MAX_MESSAGE_BYTES + 1)  # sparse: large on paper, nothing to write
    good = write_ndjson(tmp_path / "P81001" / "gp.ndjson", [_gp_bundle("p1")])
    report = Pipeline(db, framework).ingest_paths([huge, good])
    assert (report.accepted, report.quarantined) == (2, 1)
    held = report.quarantine[0]
    assert (held["file"], held["location"]) == (str(huge), "whole file")
    assert f"{MAX_MESSAGE_BYTES + 1:,} bytes is more than one message may be" in held["reason"]
    assert "NDJSON" in held["reason"]
    with db.session() as s:
        payload = s.get_one(Quarantine, held["id"]).payload
    assert payload.startswith(b'{"resourceType": "Bundle"') and len(payload) == KEPT_OF_TOO_LARGE


def test_an_ndjson_line_too_long_is_refused_with_its_line_and_the_next_lines_are_read(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fhir_bundle, "MAX_MESSAGE_BYTES", 100_000)
    long_line = json.dumps(_gp_bundle("long") | {"id": "x" * 300_000})
    path = write_ndjson(tmp_path / "P81001" / "gp.ndjson", [_gp_bundle("p1"), long_line, _gp_bundle("p2")])
    report = Pipeline(db, framework).ingest_paths([path])
    assert (report.accepted, report.quarantined) == (4, 1)
    assert report.quarantine[0]["location"] == "line 2"
    assert "split it" in report.quarantine[0]["reason"]


def test_an_hl7_file_without_segment_ends_is_refused_in_bounded_pieces_and_the_next_message_is_read(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hl7v2, "MAX_MESSAGE_BYTES", 50_000)
    good = ("MSH|^~\\&|PAS|RXR|SHAREDCARE|QRD|20260928084000||ADT^A01^ADT_A01|M2|P|2.4\r"
            "PID|1||H1^^^RXR^MR||OKAFOR^Emeka||19450911|M\rPV1|1|I|Ward 3^^^RXR|||||||||||||||||V1\r")
    path = tmp_path / "RXR" / "pas.hl7"
    path.parent.mkdir()
    path.write_bytes(b"MSH|^~\\&|PAS|RXR|||20260928084000||ADT^A08|M1|P|2.4|" + b"Z" * 200_000 + b"\n\n"
                     + good.encode())
    report = Pipeline(db, framework).ingest_paths([path])
    assert report.quarantined == 1 and report.quarantine[0]["location"] == "message 1"
    assert "is a segment separator or an MSH missing?" in report.quarantine[0]["reason"]
    assert report.accepted == 2  # the next message's Patient and Encounter
