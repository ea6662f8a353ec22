"""The whole path on a synthetic ICS: synth -> ingest -> identity -> store -> governance -> API.

One small area (120 people) is generated and ingested once per store; the tests then ask what a user
of each part would ask of it."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import select
from tests.conftest import BACKENDS, FRAMEWORK_PATH, POSTGRES_URL, _fresh_postgres
from tests.fhir_bundles import entries

from sharedcare.api.app import create_app
from sharedcare.api.auth import mint_token
from sharedcare.config import load_settings
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import IngestReport, Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord
from sharedcare.synth import generate

PEOPLE = 120


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory, framework: Framework) -> Path:
    out = tmp_path_factory.mktemp("ics")
    generate(out, people=PEOPLE, seed=3, framework=framework)
    return out


@pytest.fixture(scope="module")
def manifest(feeds: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((feeds / "manifest.json").read_text())
    return data


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, feeds: Path,
           framework: Framework) -> Iterator[tuple[Database, IngestReport]]:
    if request.param == "postgresql":
        assert POSTGRES_URL
        url = _fresh_postgres(POSTGRES_URL)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'ics.db'}"
    db = Database(url)
    db.migrate()
    report = Pipeline(db, framework).ingest_paths([feeds])
    yield db, report
    db.dispose()


@pytest.fixture(scope="module")
def api(loaded: tuple[Database, IngestReport], framework: Framework) -> Iterator[TestClient]:
    db, _ = loaded
    settings = replace(load_settings(), database_url=str(db.url), framework_path=FRAMEWORK_PATH, demo=True)
    with TestClient(create_app(settings, framework=framework, database=db)) as client:
        yield client


def _headers(api: TestClient, username: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(load_settings(), api.app.state.framework, username)}"}  # type: ignore[attr-defined]


def _person_of(db: Database, org: str, source_id: str) -> str:
    with db.session() as s:
        return s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_org == org,
                                                               PatientRecord.source_id == source_id)).one()


def _ground_truth(feeds: Path) -> list[dict[str, str]]:
    with (feeds / "ground_truth.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_fhir_feed_is_accepted_except_what_the_generator_broke_on_purpose(
        loaded: tuple[Database, IngestReport], manifest: dict[str, Any]) -> None:
    _, report = loaded
    assert report.accepted > PEOPLE * 5
    assert report.quarantined == manifest["injected_errors"].get("invalid_nhs_number", 0)
    assert all("modulus 11" in q["reason"] for q in report.quarantine)


def test_no_two_people_share_a_combined_record(loaded: tuple[Database, IngestReport], feeds: Path) -> None:
    db, _ = loaded
    truth = {(r["source_org"], r["source_id"]): r["person_key"] for r in _ground_truth(feeds)}
    keys_by_person: dict[str, set[str]] = defaultdict(set)
    with db.session() as s:
        for record in s.scalars(select(PatientRecord)):
            keys_by_person[record.person_id].add(truth[(record.source_org, record.source_id)])
    falsely_merged = {pid: keys for pid, keys in keys_by_person.items() if len(keys) > 1}
    assert falsely_merged == {}


def test_records_carrying_one_nhs_number_join_one_person(loaded: tuple[Database, IngestReport]) -> None:
    db, _ = loaded
    people_by_number: dict[str, set[str]] = defaultdict(set)
    with db.session() as s:
        for record in s.scalars(select(PatientRecord).where(PatientRecord.nhs_number.is_not(None))):
            people_by_number[record.nhs_number or ""].add(record.person_id)
    split = {n: p for n, p in people_by_number.items() if len(p) > 1}
    assert split == {}


def test_a_paramedic_sees_mr_okafors_record_from_his_gp_the_hospital_community_and_ambulance(
        api: TestClient, loaded: tuple[Database, IngestReport], manifest: dict[str, Any]) -> None:
    db, _ = loaded
    okafor = next(j for j in manifest["journeys"] if "Okafor" in j["name"])
    headers = _headers(api, "para.evans")
    found = api.post("/search", data={"family": "Okafor", "birth_date": okafor["birth_date"]}, headers=headers)
    assert "OKAFOR, Emeka" in found.text
    person = _person_of(db, okafor["practice"], _gp_source_id(db, okafor["nhs_number"], okafor["practice"]))
    assert api.post(f"/api/access/{person}", json={"basis": "implied-consent",
                                                   "reason": "confused, daughter not present"},
                    headers=headers).status_code == 201
    bundle = api.get(f"/fhir/Patient/{person}/$everything", headers=headers).json()
    resources = [e["resource"] for e in entries(bundle)]
    orgs = {r["meta"]["source"].split("|")[1].split("#")[0] for r in resources}
    assert {okafor["practice"], "RXR", "RYC", "RYA"} <= orgs
    kinds = {r["resourceType"] for r in resources}
    assert {"MedicationStatement", "AllergyIntolerance", "DocumentReference", "CarePlan"} <= kinds
    patient = resources[0]
    assert any("Daughter" in json.dumps(c.get("relationship")) for c in patient.get("contact", []))
    page = api.get(f"/record/{person}", headers=headers).text
    assert "last issued" in page and "Daughter" in page and "Discharge" in page


def _gp_source_id(db: Database, nhs_number: str, practice: str) -> str:
    with db.session() as s:
        return s.scalars(select(PatientRecord.source_id).where(PatientRecord.nhs_number == nhs_number,
                                                               PatientRecord.source_org == practice)).one()


def test_every_resource_the_api_serves_is_valid_fhir_r4(api: TestClient, loaded: tuple[Database, IngestReport],
                                                        manifest: dict[str, Any]) -> None:
    db, _ = loaded
    headers = _headers(api, "dr.patel")
    with db.session() as s:
        people = sorted(set(s.scalars(select(PatientRecord.person_id))))
    checked = 0
    for person in people:
        api.post(f"/api/access/{person}", json={"basis": "explicit-consent"}, headers=headers)
        bundle = api.get(f"/fhir/Patient/{person}/$everything?_revinclude=Provenance:target", headers=headers).json()
        get_fhir_model_class("Bundle").model_validate(bundle)
        for entry in entries(bundle):
            get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
            checked += 1
    assert checked > 100
