"""How sure the source is: a suspected pulmonary embolism is not shown as a confirmed one, and an allergy
the source ruled out (refuted) or has not confirmed says so in words, not by colour alone."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.builders import SCT, bundle, write_ndjson
from tests.small_ics import Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFIED = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFIED = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"


def _condition(cid: str, code: str, display: str, verification: str | None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/MRN1"},
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "code": {"coding": [{"system": SCT, "code": code, "display": display}]}, "onsetDateTime": "2026-11-18"}
    if verification:
        res["verificationStatus"] = {"coding": [{"system": VERIFIED, "code": verification}]}
    return res


def _allergy(aid: str, code: str, display: str, verification: str) -> dict[str, Any]:
    return {"resourceType": "AllergyIntolerance", "id": aid, "patient": {"reference": "Patient/MRN1"},
            "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
            "verificationStatus": {"coding": [{"system": ALLERGY_VERIFIED, "code": verification}]},
            "code": {"coding": [{"system": SCT, "code": code, "display": display}]}, "recordedDate": "2026-11-18"}


def _row(html: str, what: str) -> str:
    """One row of the record as a reader hears it: what, date, status, detail."""
    text = " ".join(re.sub(r"<[^>]+>", " ", html.split('id="maincontent"', 1)[1]).split())
    return text.split(f"What {what} ", 1)[1].split(" From ", 1)[0]


def test_a_suspected_diagnosis_and_unconfirmed_or_refuted_allergies_say_how_sure_the_source_is(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """The hospital suspects a pulmonary embolism (provisional): the record said "Status active", as for a
    confirmed one. A refuted (ruled-out) penicillin allergy read as a current allergy."""
    feed = bundle("RXR", "epr", [
        _condition("rx-pe", "59282003", "Pulmonary embolism", "provisional"),
        _condition("rx-dvt", "128053003", "Deep venous thrombosis", "refuted"),
        _condition("rx-af", "49436004", "Atrial fibrillation", "confirmed"),
        _condition("rx-copd", "13645005", "Chronic obstructive lung disease", None),
        _allergy("rx-al-pen", "91936005", "Allergy to penicillin", "refuted"),
        _allergy("rx-al-lat", "300916003", "Latex allergy", "unconfirmed"),
    ], timestamp="2026-11-20T10:00:00Z")
    db: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "certainty.ndjson", [feed])])
    assert report.quarantined == 0, report.quarantine
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    html = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    assert _row(html, "Pulmonary embolism") == "Date 18 Nov 2026 Status active, provisional (suspected) Detail"
    assert _row(html, "Deep venous thrombosis") == "Date 18 Nov 2026 Status refuted (ruled out) Detail"
    assert _row(html, "Atrial fibrillation") == "Date 18 Nov 2026 Status active Detail"
    assert _row(html, "Chronic obstructive lung disease") == "Date 18 Nov 2026 Status active Detail"
    assert _row(html, "Allergy to penicillin") == "Date 18 Nov 2026 Status refuted (ruled out) Detail"
    assert _row(html, "Latex allergy") == "Date 18 Nov 2026 Status active, unconfirmed Detail"
    # the tags: text first; colour as well (red for ruled out, orange for not yet sure)
    assert '<strong class="nhsuk-tag nhsuk-tag--orange">active, provisional (suspected)</strong>' in html
    assert '<strong class="nhsuk-tag nhsuk-tag--red">refuted (ruled out)</strong>' in html
    # and on what changed, where the GP reads the hospital's new problems
    changes = ics.client.get(f"/record/{ics.okafor}/changes").text
    assert "Pulmonary embolism Date 18 Nov 2026 Status active, provisional (suspected)" in \
        " ".join(re.sub(r"<[^>]+>", " ", changes).split())
