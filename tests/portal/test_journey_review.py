"""What a reviewer walking the clinician's journeys in a browser found (2026-12-07), as the user meets it:
the summary's medicines without the hospital's stop, dates that were the GP extract's day, a basis form
that did not say whose record, a receptionist told "nothing shared" of allergies, a letter whose text was
removed without a word, and search errors only in the summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.discharge_feed import ingest_discharge
from tests.small_ics import Ics

from sharedcare.governance.framework import Framework
from sharedcare.store.database import Database

HOSPITAL = "Riverside University Hospitals NHS Trust"


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


@pytest.fixture
def stay(ics: Ics, framework: Framework, tmp_path: Path) -> Ics:
    ingest_discharge(_db(ics), framework, tmp_path)
    return ics


def _sign_in(ics: Ics, username: str) -> None:
    ics.client.post("/logout")
    response = ics.client.post("/login", data={"username": username, "password": "demo"}, follow_redirects=False)
    assert response.status_code == 303


def _open(ics: Ics, username: str, person: str | None = None) -> str:
    _sign_in(ics, username)
    page = ics.client.post(f"/record/{person or ics.okafor}/basis", data={"basis": "explicit-consent"})
    assert page.status_code == 200
    return page.text


def _text(html: str) -> str:
    """The page's main content as a reader sees it: tags gone, whitespace collapsed."""
    main = html.split('id="maincontent"', 1)[1]
    return " ".join(re.sub(r"<[^>]+>", " ", main).split())


def _section(html: str, section: str) -> str:
    """One section of the summary tab, as text."""
    part = html.split(f'id="{section}"', 1)[1].split("</section>", 1)[0]
    return " ".join(re.sub(r"<[^>]+>", " ", part).split())


def _rows(html: str, section: str) -> list[str]:
    part = html.split(f'id="{section}"', 1)[1].split("</section>", 1)[0]
    rows = [" ".join(re.sub(r"<[^>]+>", " ", row).split())
            for row in re.findall(r'<tr class="nhsuk-table__row">(.*?)</tr>', part, re.S)][1:]
    return [row.removeprefix("What ") for row in rows]  # each cell's heading, for narrow screens


# -- H1: the summary's medicines say where the sources disagree ------------------------------------------------

def test_the_summary_warns_when_the_hospital_stopped_a_medicine_the_gp_lists_as_current(stay: Ics) -> None:
    """The paramedic reads the summary, not the reconciliation page: the GP's metformin read "active" with
    the hospital's stop a separate line further down, and nothing said the two disagree."""
    page = _open(stay, "para.evans")
    medications = _section(page, "medications")
    assert "Sources disagree" in medications
    warning = medications.split("Sources disagree", 1)[1].split("What", 1)[0]
    assert "Metformin" in warning
    assert (f"Stopped by {HOSPITAL} on 16 Oct 2026 (Acute kidney injury, eGFR 47), but still current at "
            "Riverside Medical Centre") in warning
    assert "Medicines from every source" in warning
    assert f'href="/record/{stay.okafor}/medicines"' in page.split('id="medications"', 1)[1].split("</section>")[0]
    # each row of a medicine the sources disagree about carries the tag, in words; the others do not
    for row in _rows(page, "medications"):
        if row.startswith("Metformin") or row.startswith("Ramipril"):
            assert "Sources disagree" in row, row
        if row.startswith("Atorvastatin"):
            assert "Sources disagree" not in row, row


def test_the_summary_says_nothing_of_disagreement_when_the_sources_agree(ics: Ics) -> None:
    medications = _section(_open(ics, "para.evans"), "medications")
    assert "Metformin 500mg tablets" in medications and "Sources disagree" not in medications


# -- H2: a medicine's date is when it started, and a time the source sent is not called "recorded" ------------

def test_a_medicines_date_is_when_it_started_not_the_day_the_gp_system_sent_it(stay: Ics) -> None:
    page = _open(stay, "dr.patel")
    ramipril = next(r for r in _rows(page, "medications") if r.startswith("Ramipril 5mg capsules"))
    assert "started 1 Apr 2021" in ramipril, ramipril  # effectivePeriod.start, not dateAsserted (1 Sep 2026)
    assert "1 Sep 2026" not in ramipril.split("From", 1)[0]
    metformin = next(r for r in _rows(page, "medications") if r.startswith("Metformin 500mg tablets")
                     and "stopped" in r)
    assert "started 1 Jan 2019, until 16 Oct 2026" in metformin, metformin


def test_a_medicine_with_no_start_says_its_date_is_when_it_was_listed() -> None:
    from sharedcare.portal.present import date_label

    statement = {"resourceType": "MedicationStatement", "dateAsserted": "2026-12-06T02:00:00Z"}
    assert date_label(statement) == "listed"
    assert date_label({**statement, "effectivePeriod": {"start": "2023-02-01"}}) == "started"
    assert date_label({"resourceType": "MedicationRequest", "authoredOn": "2023-02-01"}) == "prescribed"
    assert date_label({"resourceType": "Condition", "onsetDateTime": "2023-02-01"}) == ""


def test_the_time_a_source_sent_an_item_is_not_called_the_time_it_was_recorded(stay: Ics) -> None:
    """The time beside each item is the source system's message or update time (Bundle.timestamp,
    meta.lastUpdated, MSH-7): for a GP extract, the night it ran, not when the GP recorded anything."""
    page = _text(_open(stay, "dr.patel"))
    assert "recorded 1 Sep 2026" not in page and "sent 1 Sep 2026, 11:00 · received" in page
