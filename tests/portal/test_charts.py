"""Trend charts: inline SVG with a text alternative, points coloured by source, nothing unescaped."""

from __future__ import annotations

import re
from datetime import date

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
