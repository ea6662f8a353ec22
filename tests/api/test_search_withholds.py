"""A patient search shows only what a read of the record would release (review of 2026-12-07): it matched on,
and showed, a source's record of who the person is that every read withholds: one its source restricted (a
woman's new address at a refuge), and one of a service the role may not know of (a mental health trust's,
to a pharmacist). Each case is found, or not, the way a read would show the person."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.builders import bundle, condition, patient, write_ndjson
from tests.fhir_bundles import entries
from tests.small_ics import Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

RESTRICTED = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}
HUGHES_NHS, QUILL_NHS = "9990000018", "9434765870"


def _ingest(db: Database, framework: Framework, tmp_path: Path, *bundles: dict[str, Any]) -> None:
    files = [write_ndjson(tmp_path / f"{i}.ndjson", [b]) for i, b in enumerate(bundles)]
    report = Pipeline(db, framework).ingest_paths(files)
    assert report.quarantined == 0, report.quarantine


def _found(ics: Ics, user: str, **query: str) -> list[dict[str, Any]]:
    response = ics.client.post("/fhir/Patient/_search", data=query, headers=ics.token(user))
    assert response.status_code == 200, response.text
    return [e["resource"] for e in entries(response.json()) if e["resource"]["resourceType"] == "Patient"]


def _postcodes(found: list[dict[str, Any]]) -> list[str]:
    return [a.get("postalCode") for p in found for a in p.get("address", [])]


def test_a_postcode_its_source_restricted_is_neither_shown_nor_searched_on(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Her practice re-sends her Patient restricted, with the refuge's postcode; the hospital holds the old one."""
    _ingest(db, framework, tmp_path,
            bundle("RXR", "epr", [patient("MRN-H", HUGHES_NHS, "Hughes", "Margaret", "1952-06-11", gender="female",
                                          postcode="RV1 2AB")], timestamp="2026-10-01T09:00:00Z"),
            bundle("P81002", "systmone", [patient("gp-h", HUGHES_NHS, "Hughes", "Margaret", "1952-06-11",
                                                  gender="female", postcode="RV7 7RF", meta=RESTRICTED)],
                   timestamp="2026-11-01T09:00:00Z"))
    for user in ("dr.oconnor", "para.evans"):
        found = _found(ics, user, identifier=HUGHES_NHS)
        assert len(found) == 1 and "RV7 7RF" not in _postcodes(found), user
        assert _found(ics, user, family="Hughes", birthdate="1952-06-11", **{"address-postalcode": "RV7 7RF"}) == []
        assert len(_found(ics, user, family="Hughes", birthdate="1952-06-11",
                          **{"address-postalcode": "RV1 2AB"})) == 1


def test_a_person_known_only_by_a_restricted_record_is_not_found(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    _ingest(db, framework, tmp_path, bundle("RXR", "epr", [
        patient("MRN-R", QUILL_NHS, "Quill", "Bryony", "1990-01-01", gender="female", postcode="RV9 9ZZ",
                meta=RESTRICTED),
        condition("rx-c9", "Patient/MRN-R", "44054006", "Type 2 diabetes mellitus")]))
    assert _found(ics, "dr.patel", identifier=QUILL_NHS) == []
    assert _found(ics, "dr.patel", family="Quill", birthdate="1990-01-01") == []
    assert len(_found(ics, "dr.oconnor", identifier=QUILL_NHS)) == 1  # the hospital that restricted it finds her


def test_a_pharmacist_does_not_find_a_person_only_a_mental_health_trust_knows(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    _ingest(db, framework, tmp_path, bundle("RXM", "rio", [
        patient("RXM-77", QUILL_NHS, "Thorne", "Alys", "1980-05-05", gender="female"),
        condition("rxm-c77", "Patient/RXM-77", "58214004", "Schizophrenia")]))
    assert _found(ics, "pharm.khan", identifier=QUILL_NHS) == []
    assert _found(ics, "pharm.khan", family="Thorne", birthdate="1980-05-05") == []
    assert len(_found(ics, "dr.patel", identifier=QUILL_NHS)) == 1  # a GP sees mental health: finds her
