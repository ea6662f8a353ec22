"""The one Patient a pseudonymised export holds of a person is the one their record's demographics come from
(gateway.combined_patient's rule): a record a practice made for itself, still awaiting IG review, or a
competing registration claim must not give an analyst the person's postcode district."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tests.builders import bundle, patient, write_ndjson
from tests.export.conftest import export
from tests.small_ics import Ics

from sharedcare.api.auth import mint_token
from sharedcare.config import load_settings
from sharedcare.fhir.uk_core import ODS_SYSTEM
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database


def _write_hughes(ics: Ics, pid: str, postcode: str, **extra: object) -> None:
    """Riverside Medical Centre's user writes a Patient for Mrs Hughes (registered at Castle Street)."""
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {mint_token(load_settings(), fw, 'dr.patel', 'user/*.read user/*.write')}",
               "Content-Type": "application/fhir+json"}
    resource = patient(pid, "9990000018", "Hughes", "Margaret", "1952-06-11", gender="female", postcode=postcode,
                       **extra)
    written = ics.client.put(f"/fhir/Patient/{pid}", headers=headers, content=json.dumps(resource))
    assert written.status_code in (200, 201), written.text


def _hughes_district(ics: Ics) -> str:
    _, files = export(ics.client, ics.token("analyst.chen"))
    (hughes,) = [p for p in files["Patient"] if p["gender"] == "female"]
    return str(hughes["address"][0]["postalCode"])


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_a_self_made_record_awaiting_review_does_not_give_the_export_its_postcode(ics: Ics) -> None:
    """It was the newest GP record, and the export took "the GP record, else the newest"."""
    _write_hughes(ics, "made-up", "ZZ9 9ZZ")
    assert _hughes_district(ics) == "RV1"


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_a_competing_registration_claim_does_not_give_the_export_its_postcode(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Castle Street's feed names it as her GP; Riverside, which she left, sends her old record active again."""
    castle = {"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": "P81002"}}
    riverside = {"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": "P81001"}}
    registered = patient("gp-other", "9990000018", "Hughes", "Margaret", "1952-06-11", gender="female",
                         postcode="RV2 4NW", active=True, generalPractitioner=[castle])
    message = bundle("P81002", "systmone", [registered], "2026-11-10T09:00:00Z")
    feed = write_ndjson(tmp_path / "castle.ndjson", [message])
    assert Pipeline(db, framework).ingest_paths([feed]).accepted == 1
    _write_hughes(ics, "rv-hughes", "RV9 9QD", active=False, generalPractitioner=[riverside])
    _write_hughes(ics, "rv-hughes", "ZZ9 9ZZ", active=True, generalPractitioner=[riverside])
    assert _hughes_district(ics) == "RV2"


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_a_death_recorded_by_a_source_other_than_the_chosen_one_reaches_the_export(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """The hospital recorded Mr Okafor's death; his GP's record, whose demographics the export takes, has not
    caught up. Population health counts deaths: the extract's Patient says he died, to the month (moved by
    his date shift, as his other dates are)."""
    died = patient("MRN1", "9434765919", "OKAFOR", "Emeka", "1945-03-02", deceasedDateTime="2026-11-20T03:10:00Z")
    feed = write_ndjson(tmp_path / "died.ndjson", [bundle("RXR", "epr", [died], "2026-11-21T09:00:00Z")])
    assert Pipeline(db, framework).ingest_paths([feed]).accepted == 1
    _, files = export(ics.client, ics.token("analyst.chen"))
    (okafor,) = [p for p in files["Patient"] if p["gender"] == "male"]
    assert re.fullmatch(r"202[67]-\d\d", okafor.get("deceasedDateTime", "")), okafor
