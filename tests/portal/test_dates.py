"""Dates on the pages are written as UK clinicians and patients read them ("5 Dec 2026"; times in UK time),
never as ISO dates (2026-12-05), which stay for machines: FHIR, JSON and CSV."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from tests.discharge_feed import ingest_discharge
from tests.portal.test_patient_portal import _sign_in as _patient_sign_in
from tests.results_feed import ingest_results
from tests.small_ics import Ics
from tests.social_care_feed import ingest_social_care

from sharedcare.governance.framework import Framework
from sharedcare.portal.pages import uk_date, uk_time
from sharedcare.store.database import Database

ISO = re.compile(r"\b\d{4}-\d{2}(-\d{2})?\b")


def _shown(html: str) -> str:
    """What a reader sees: the text, without tags, attributes, scripts or hidden form values."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def _iso_dates(html: str) -> list[str]:
    text = _shown(html)
    return [text[max(0, m.start() - 40):m.end() + 10].strip() for m in ISO.finditer(text)]


@pytest.mark.parametrize(("value", "shown"), [
    ("2026-12-05", "5 Dec 2026"), ("1945-03-02", "2 Mar 1945"), ("2019-03", "Mar 2019"), ("2019", "2019"),
    ("2026-12-05T09:30:00Z", "5 Dec 2026"), ("2026-07-31T23:30:00+00:00", "1 Aug 2026"),  # UK summer time
    ("2026-12-31T23:30:00Z", "31 Dec 2026"), (date(2026, 1, 9), "9 Jan 2026"),
    (datetime(2026, 6, 30, 23, 15, tzinfo=UTC), "1 Jul 2026"), ("", ""), (None, ""), ("not a date", "not a date"),
])
def test_one_helper_writes_every_kind_of_fhir_date_as_a_uk_reader_reads_it(value: object, shown: str) -> None:
    assert uk_date(value) == shown  # type: ignore[arg-type]


def test_times_are_uk_time_with_summer_time() -> None:
    assert uk_time(datetime(2026, 7, 1, 8, 5, tzinfo=UTC)) == "1 Jul 2026, 09:05"
    assert uk_time(datetime(2026, 12, 5, 8, 5, tzinfo=UTC)) == "5 Dec 2026, 08:05"


def test_no_clinician_page_shows_an_iso_date(ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    ingest_results(db, framework, tmp_path)
    ingest_discharge(db, framework, tmp_path)
    ingest_social_care(db, framework, tmp_path)
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    found = ics.client.post("/search", data={"family": "okafor", "birth_day": "2", "birth_month": "3",
                                             "birth_year": "1945"}).text
    assert "2 Mar 1945" in found
    record = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    pages = {"search": found, "record": record}
    for name in ("changes", "medicines"):
        pages[name] = ics.client.get(f"/record/{ics.okafor}/{name}").text
    assert "2 Mar 1945" in record
    assert {name: _iso_dates(page) for name, page in pages.items()} == {name: [] for name in pages}


def test_no_patient_page_shows_an_iso_date(ics: Ics) -> None:
    _patient_sign_in(ics.client)
    pages = {name: ics.client.get(f"/patient/{name}").text for name in ("home", "record", "accesses", "choices")}
    assert "2 Mar 1945" in pages["record"]
    assert {name: _iso_dates(page) for name, page in pages.items()} == {name: [] for name in pages}
