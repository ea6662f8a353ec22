"""Trend charts: inline SVG with a text alternative, points coloured by source, nothing unescaped; an absurd
value or a fault in them never takes the record page down."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest
from tests.builders import SCT, bundle, patient, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.api.deps import SESSION_COOKIE
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.portal import present
from sharedcare.portal.charts import PALETTE, Point, Series, describe, trend_chart

GP, HOSPITAL = "Riverside Medical Centre", "Riverside University Hospitals NHS Trust"
HBA1C = [Point(date(2024, 5, 10), 52, GP), Point(date(2025, 5, 12), 55, GP), Point(date(2026, 10, 18), 62, HOSPITAL)]


def test_no_results_no_chart() -> None:
    assert trend_chart("c", "HbA1c", "mmol/mol", [Series("HbA1c", [])]) == ""


def test_a_chart_is_an_image_named_by_its_title_and_description() -> None:
    svg = str(trend_chart("chart-hba1c", "HbA1c", "mmol/mol", [Series("HbA1c", HBA1C)]))
    assert 'role="img" aria-labelledby="chart-hba1c-title chart-hba1c-desc"' in svg
    assert '<title id="chart-hba1c-title">HbA1c trend</title>' in svg
    assert describe("HbA1c", "mmol/mol", [Series("HbA1c", HBA1C)]) in svg
    assert svg.count("<circle") == 3 + 2  # three points, two legend swatches
    assert svg.count("<polyline") == 1


def test_points_are_coloured_by_the_organisation_that_sent_them_in_order_of_first_result() -> None:
    svg = str(trend_chart("c", "HbA1c", "mmol/mol", [Series("HbA1c", HBA1C)]))
    fills = re.findall(r'<circle cx="[^"]+" cy="[^"]+" r="4.5" fill="(#[0-9a-f]{6})">', svg)
    assert fills == [PALETTE[0], PALETTE[0], PALETTE[1]]


def test_later_values_are_higher_up_and_later_dates_further_right() -> None:
    svg = str(trend_chart("c", "HbA1c", "mmol/mol", [Series("HbA1c", HBA1C)]))
    points = [(float(x), float(y)) for x, y in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="4.5"', svg)]
    assert [x for x, _ in points] == sorted(x for x, _ in points)
    assert [y for _, y in points] == sorted((y for _, y in points), reverse=True)  # rising values: smaller y


def test_blood_pressure_draws_two_lines_and_says_which_is_which() -> None:
    systolic = [Point(date(2025, 5, 12), 142, GP), Point(date(2026, 5, 14), 138, GP)]
    diastolic = [Point(date(2025, 5, 12), 86, GP), Point(date(2026, 5, 14), 82, GP)]
    svg = str(trend_chart("bp", "Blood pressure", "mmHg",
                          [Series("Systolic", systolic), Series("Diastolic", diastolic, dashed=True)]))
    assert svg.count("<polyline") == 2 and 'stroke-dasharray="5 4"' in svg
    assert "Lines: Systolic solid, Diastolic dashed." in svg


def test_one_result_is_a_point_in_the_middle() -> None:
    svg = str(trend_chart("c", "eGFR", "mL/min", [Series("eGFR", [Point(date(2026, 1, 2), 47, GP)])]))
    assert "<polyline" not in svg and 'text-anchor="middle"' in svg
    assert "1 result from 2 Jan 2026 to 2 Jan 2026" in svg


def test_source_names_are_escaped() -> None:
    svg = str(trend_chart("c", "HbA1c", "mmol/mol", [Series("HbA1c", [Point(date(2026, 1, 2), 50, "<b>Evil</b>")])]))
    assert "<b>" not in svg and "&lt;b&gt;Evil&lt;/b&gt;" in svg


def test_an_absurd_value_is_not_drawn_and_is_listed_beside_the_chart() -> None:
    points = [*HBA1C, Point(date(2026, 11, 1), 1e308, HOSPITAL), Point(date(2026, 11, 2), float("nan"), GP),
              Point(date(2026, 11, 3), 4800, GP)]  # 4800: HbA1c in the wrong unit
    svg = str(trend_chart("c", "HbA1c", "mmol/mol", [Series("HbA1c", points)], (0, 300)))
    assert svg.count('r="4.5"') == 3  # the three real results are drawn, on their own scale
    # the axes: values 51 to 64, dates up to the last drawn result
    assert re.findall(r'text-anchor="end" [^>]*>([^<]+)</text>', svg) == ["51", "64", "Oct 2026"]
    note = svg.partition('class="sc-chart__left-out">')[2]
    assert "Not drawn" in note and "1e+308 on 1 Nov 2026" in note and "4800 on 3 Nov 2026" in note
    assert "nan on 2 Nov 2026" in note


def test_a_chart_of_only_absurd_values_says_so_and_draws_nothing() -> None:
    out = str(trend_chart("c", "eGFR", "mL/min", [Series("eGFR", [Point(date(2026, 1, 1), -1e308, GP)])]))
    assert "<svg" not in out and "-1e+308 on 1 Jan 2026" in out


def _ingest_hba1c(ics: Ics, tmp_path: Path, framework: Framework, values: list[float],
                  dates: list[str] | None = None) -> None:
    dates = dates or [f"2026-0{i + 1}-01" for i in range(len(values))]
    obs = [{"resourceType": "Observation", "id": f"gp-h{i}", "status": "final",
            "code": {"coding": [{"system": SCT, "code": "999791000000106", "display": "HbA1c"}]},
            "subject": {"reference": "Patient/gp-okafor"}, "effectiveDateTime": dates[i],
            "valueQuantity": {"value": value, "unit": "mmol/mol", "system": "http://unitsofmeasure.org",
                              "code": "mmol/mol"}} for i, value in enumerate(values)]
    gp = bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), *obs])
    report = Pipeline(ics.client.app.state.database, framework).ingest_paths(
        [write_ndjson(tmp_path / "hba1c.ndjson", [gp])])
    assert report.quarantined == 0


def _record_pages(ics: Ics) -> list[str]:
    """The clinician's record page and the patient's own, as each would see them."""
    c = ics.client
    c.post("/login", data={"username": "dr.patel", "password": "demo"})
    c.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent", "reason": ""})
    clinician = c.get(f"/record/{ics.okafor}")
    c.cookies.clear()
    c.cookies.set(SESSION_COOKIE, ics.citizen_token())
    own = c.get("/patient/record")
    c.cookies.clear()
    assert clinician.status_code == 200 and own.status_code == 200
    return [clinician.text, own.text]


def test_one_extreme_result_leaves_the_record_page_up_for_clinician_and_patient(
        ics: Ics, tmp_path: Path, framework: Framework) -> None:
    _ingest_hba1c(ics, tmp_path, framework, [1e308, -1e308, 48])
    for page in _record_pages(ics):
        assert "Problems" in page and "Type 2 diabetes mellitus" in page  # the rest of the record is there
        assert "1e+308 on 1 Jan 2026" in page and "-1e+308 on 1 Feb 2026" in page  # said beside the chart


def test_a_fault_in_the_charts_leaves_the_rest_of_the_record(ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(view: object) -> list[object]:
        raise ValueError("a chart fault")

    monkeypatch.setattr(present, "_trend_charts", broken)
    for page in _record_pages(ics):
        assert "The trend charts could not be drawn" in page and "Type 2 diabetes mellitus" in page


def test_a_result_dated_only_to_the_month_leaves_the_charts_drawn(ics: Ics, tmp_path: Path,
                                                                   framework: Framework) -> None:
    """FHIR allows a partial date ("2026-03"): it has no day to plot at, so that result is left off the chart
    (the results table lists it), and the other results are still drawn."""
    _ingest_hba1c(ics, tmp_path, framework, [48, 52, 55], dates=["2026-01-01", "2026-03", "2026-05-01"])
    for page in _record_pages(ics):
        assert "The trend charts could not be drawn" not in page
        assert '<svg' in page and "Type 2 diabetes mellitus" in page
