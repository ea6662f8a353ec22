"""The store's JSON codec (orjson) keeps every document exactly, on both stores, and a number it could
not keep exactly is refused at ingest with the resource named, never stored rounded."""

from __future__ import annotations

import json
from pathlib import Path

from tests.builders import bundle, patient, write_ndjson

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database, json_loads
from sharedcare.store.models import Resource


def _observation(value: object) -> dict[str, object]:
    return {"resourceType": "Observation", "id": "obs-1", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"text": "Weight — measured by Siân Öztürk"}, "valueQuantity": {"value": value, "unit": "kg"}}


def test_documents_read_back_exactly(db: Database, framework: Framework, tmp_path: Path) -> None:
    obs = _observation(72.35)
    obs["component"] = [{"code": {"text": "count"}, "valueInteger": 2**31 - 1},
                        {"code": {"text": "tiny"}, "valueQuantity": {"value": 1e-7}}]
    feed = write_ndjson(tmp_path / "gp.ndjson", [bundle("P81001", "emis", [
        patient("p1", "9434765919", "Öztürk", "Siân", "1950-01-01"), obs])])
    assert Pipeline(db, framework).ingest_paths([feed]).accepted == 2
    with db.session() as session:
        stored = next(r.content for r in session.query(Resource) if r.resource_type == "Observation")
    assert stored["code"] == obs["code"] and stored["valueQuantity"] == obs["valueQuantity"]
    assert stored["component"] == obs["component"]


def test_a_number_beyond_64_bits_is_refused_with_the_resource_named(db: Database, framework: Framework,
                                                                    tmp_path: Path) -> None:
    text = json.dumps(bundle("P81001", "emis", [patient("p1", "9434765919", "Okafor", "Emeka", "1950-01-01"),
                                                _observation(12345)]))
    huge = text.replace('"value": 12345', '"value": 123456789012345678901234567890')
    feed = write_ndjson(tmp_path / "gp.ndjson", [huge])
    report = Pipeline(db, framework).ingest_paths([feed])
    assert (report.accepted, report.quarantined) == (0, 1)  # the whole message waits, nothing half-stored
    reason = report.quarantine[0]["reason"]
    assert reason.startswith("Observation/obs-1:") and "64-bit" in reason
    with db.session() as session:
        assert session.query(Resource).count() == 0


def test_documents_written_by_the_standard_library_still_read() -> None:
    assert json_loads('{"value": NaN, "n": [1, 2.5]}')["n"] == [1, 2.5]
    assert json_loads(b'{"a": "\\u00e9"}') == {"a": "é"}
