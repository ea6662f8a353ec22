"""A mental health condition a GP recorded is mental health information, as the mental health trust's own
records are (framework 2026.12-2): a council social worker sees only that the practice holds some, with its
phone number; a hospital clinician sees the coded diagnosis; the practice's own GP sees it all."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.builders import bundle, condition, patient, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.classify import classify
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

MENTAL_HEALTH = "This service holds mental health information; the details are not shown here."


@pytest.fixture(autouse=True)
def _gp_records_depression(db: Database, framework: Framework, tmp_path: Path) -> None:
    gp = bundle("P81001", "emis", [
        patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        condition("gp-dep", "Patient/gp-okafor", "35489007", "Depressive disorder",
                  note=[{"text": "Low mood since his wife died; lives alone"}]),
    ], timestamp="2026-11-20T09:00:00Z")
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [gp])]).quarantined == 0


def _record(ics: Ics, username: str) -> str:
    signed_in = ics.client.post("/login", data={"username": username, "password": "demo"}, follow_redirects=False)
    assert signed_in.status_code == 303
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"})
    assert page.status_code == 200
    ics.client.post("/logout")
    return page.text


def _care_team_entry(page: str, organisation: str) -> str:
    team = page.split('id="care-team"', 1)[1]
    return team.split(organisation, 1)[1].split("</div>", 1)[0]


def test_a_social_worker_sees_only_that_the_gp_holds_mental_health_information(ics: Ics) -> None:
    page = _record(ics, "sw.brown")
    assert "Type 2 diabetes mellitus" in page  # the GP's problem list, at her summary tier
    assert "Depressive disorder" not in page and "Low mood" not in page
    gp = _care_team_entry(page, "Riverside Medical Centre")
    assert MENTAL_HEALTH in gp and "01632 960001" in gp


def test_a_hospital_clinician_sees_the_coded_diagnosis_and_the_practices_gp_all_of_it(ics: Ics) -> None:
    hospital = _record(ics, "dr.oconnor")  # mental health tier 2: coded, no notes
    assert hospital.count("Depressive disorder") == 2  # the GP's and the mental health trust's
    assert "Low mood" not in hospital
    assert _record(ics, "dr.patel").count("Depressive disorder") == 2  # his own practice's, and the trust's


@pytest.mark.parametrize(("code", "category"), [
    ("35489007", "mental_health"), ("58214004", "mental_health"), ("13746004", "mental_health"),
    ("248062006", "mental_health"), ("72366004", "mental_health"),
    ("52448006", "summary"),  # dementia stays on the problem list: a paramedic must know it
])
def test_a_gp_condition_is_classed_by_its_code(framework: Framework, code: str, category: str) -> None:
    assert classify(condition("c", "Patient/p", code, "x"), "gp", framework) == category
