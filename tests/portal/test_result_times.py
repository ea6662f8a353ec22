"""When a result was taken, as a clinician reads it: the time of day in UK time beside the date (two
potassiums on one night told apart), results in the order they were taken whatever offset each source
sends, and the same UK day in the table, on the chart and on What changed. Clinician portal review of
2026-12-07."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.builders import SCT, bundle, patient, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

POTASSIUM = ("1000651000000109", "Serum potassium level", "mmol/L")
SODIUM = ("1000661000000107", "Serum sodium level", "mmol/L")
HBA1C = ("999791000000106", "Haemoglobin A1c level - IFCC standardised", "mmol/mol")


def _result(rid: str, subject: str, test: tuple[str, str, str], taken: str, value: float) -> dict[str, Any]:
    code, display, unit = test
    return {"resourceType": "Observation", "id": rid, "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": SCT, "code": code, "display": display}]},
            "effectiveDateTime": taken, "valueQuantity": {"value": value, "unit": unit}}


def _ingest(ics: Ics, framework: Framework, tmp_path: Path, gp: list[dict[str, Any]],
            hospital: list[dict[str, Any]]) -> None:
    feeds = [bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), *gp]),
             bundle("RXR", "epr", [patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"), *hospital],
                    timestamp="2026-12-07T06:00:00Z")]
    db: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    paths = [write_ndjson(tmp_path / f"{n}.ndjson", [feed]) for n, feed in enumerate(feeds)]
    report = Pipeline(db, framework).ingest_paths(paths)
    assert report.quarantined == 0, report.quarantine


def _rows(html: str, what: str) -> list[str]:
    """The rows of that test as a reader hears them: date and detail."""
    found = []
    for row in re.findall(r'<tr class="nhsuk-table__row">(.*?)</tr>', html, re.S):
        text = " ".join(re.sub(r"<[^>]+>", " ", row).split())
        if text.startswith(f"What {what} "):
            found.append(text.split(" From ", 1)[0].removeprefix(f"What {what} "))
    return found


def test_results_taken_on_one_night_say_when_and_are_in_the_order_they_were_taken(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """Potassium 6.8 at 02:10 and 5.1 at 05:40 both read "7 Dec 2026". And in summer the GP system sends UK
    time with its offset, the hospital UTC: sorted on their text, the GP's 09:00 was listed as newer than the
    hospital's 09:30."""
    _ingest(ics, framework, tmp_path,
            gp=[_result("gp-na", "Patient/gp-okafor", SODIUM, "2026-07-01T09:00:00+01:00", 131)],
            hospital=[_result("k1", "Patient/MRN1", POTASSIUM, "2026-12-07T02:10:00Z", 6.8),
                      _result("k2", "Patient/MRN1", POTASSIUM, "2026-12-07T05:40:00Z", 5.1),
                      _result("na", "Patient/MRN1", SODIUM, "2026-07-01T08:30:00Z", 128)])
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    record = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    assert _rows(record, "Serum potassium level") == [
        "Date 7 Dec 2026, 05:40 Status final Detail 5.1 mmol/L",
        "Date 7 Dec 2026, 02:10 Status final Detail 6.8 mmol/L"]
    assert _rows(record, "Serum sodium level") == [
        "Date 1 Jul 2026, 09:30 Status final Detail 128 mmol/L",
        "Date 1 Jul 2026, 09:00 Status final Detail 131 mmol/L"]
    # the GP's What changed lists the hospital's with their times too
    changed = " ".join(re.sub(r"<[^>]+>", " ", ics.client.post(
        f"/record/{ics.okafor}/changes", data={"since_day": "6", "since_month": "12", "since_year": "2026"}).text
    ).split())
    assert "Serum potassium level sent 7 Dec 2026, 06:00 · received" in changed
    assert re.findall(r"Date (7 Dec 2026, \d\d:\d\d) Result ([\d.]+ mmol/L)", changed) == [
        ("7 Dec 2026, 05:40", "5.1 mmol/L"), ("7 Dec 2026, 02:10", "6.8 mmol/L")]


def test_a_result_after_midnight_in_summer_is_on_the_same_uk_day_in_the_table_the_chart_and_what_changed(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """An HbA1c taken at 00:30 BST on 1 Aug (23:30 UTC on 31 Jul): the table said 1 Aug, the chart plotted it
    on 31 Jul, and What changed since 1 Aug left it out."""
    _ingest(ics, framework, tmp_path, gp=[],
            hospital=[_result("h1", "Patient/MRN1", HBA1C, "2026-07-31T23:30:00Z", 70)])
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    record = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    assert _rows(record, "Haemoglobin A1c level - IFCC standardised") == [
        "Date 1 Aug 2026, 00:30 Status final Detail 70 mmol/mol"]
    assert re.findall(r"<title>HbA1c 70 mmol/mol, ([^,]*),", record) == ["1 Aug 2026"]
    changed = ics.client.post(f"/record/{ics.okafor}/changes",
                              data={"since_day": "1", "since_month": "8", "since_year": "2026"}).text
    assert "What changed since 1 Aug 2026" in changed
    assert "Haemoglobin A1c level - IFCC standardised" in changed
    later = ics.client.post(f"/record/{ics.okafor}/changes",
                            data={"since_day": "2", "since_month": "8", "since_year": "2026"}).text
    assert "Haemoglobin A1c level - IFCC standardised" not in later
