"""A death any source records is shown: the hospital's PID-29 or FHIR `deceasedDateTime` reaches the banner,
the search results, the FHIR Patient and the pseudonymised export, even while the GP record the contact
details come from has not caught up (clinical fidelity review, 2026-12-07: the banner never read
`deceased*`, and the combined Patient copied the GP's record alone, so a paramedic saw no sign of death)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.builders import bundle, patient, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database


def _hospital_records_death(db: Database, framework: Framework, tmp_path: Path, **death: object) -> None:
    """The hospital sends Mr Okafor's Patient again, now saying he died; his GP's record does not yet."""
    message = bundle("RXR", "epr", [patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02", **death)],
                     timestamp="2026-11-21T09:00:00Z")
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "died.ndjson", [message])])
    assert report.accepted == 1, report.quarantine


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_a_death_the_hospital_recorded_is_on_the_record_page_and_in_search_results(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    _hospital_records_death(db, framework, tmp_path, deceasedDateTime="2026-11-20T03:10:00Z")
    ics.client.post("/login", data={"username": "para.evans", "password": "demo"})
    found = _text(ics.client.post("/search", data={"nhs_number": OKAFOR_NHS}).text)
    assert "OKAFOR, Emeka Deceased" in found
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"})
    assert page.status_code == 200
    shown = _text(page.text)
    assert ("This person has died Died: 20 Nov 2026, recorded by Riverside University Hospitals NHS Trust (RXR)."
            in shown)
    assert "Contact details from Riverside Medical Centre" in shown  # the GP's record still gives those


def test_the_fhir_patient_carries_a_death_recorded_by_a_source_other_than_the_one_its_details_come_from(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    _hospital_records_death(db, framework, tmp_path, deceasedBoolean=True)
    headers = ics.open_record("dr.patel")
    read = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=headers)
    assert read.status_code == 200
    assert read.json()["deceasedBoolean"] is True
    assert read.json()["name"][0]["family"] == "Okafor"  # the GP's record, as before


def test_a_person_no_source_says_died_shows_no_death(ics: Ics) -> None:
    ics.client.post("/login", data={"username": "para.evans", "password": "demo"})
    shown = _text(ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text)
    assert "died" not in shown.lower() and "Deceased" not in shown
