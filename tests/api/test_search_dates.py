"""Searching by date as FHIR R4 defines it: a date of a year, a month or a day is the range of time it covers, in
the search and in the record, and each prefix compares the two ranges.

Review (API security, 2026-12-07, finding 3, clinical safety): `date=2019` found nothing for a diabetes diagnosed
on 1 March 2019, nor did `le2019`, and `date=2019-03` found only what began on 1 March: a clinician asking what
was diagnosed in 2019 was told nothing was.
"""

from __future__ import annotations

import json

import pytest
from tests.fhir_bundles import entries
from tests.small_ics import Ics

from sharedcare.fhir.search import DateFilter, SearchError, Span, clinical_span, span

DIABETES = "44054006"


def _found(ics: Ics, headers: dict[str, str], *dates: str) -> int:
    query = "".join(f"&date={d}" for d in dates)
    response = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&code={DIABETES}{query}", headers=headers)
    assert response.status_code == 200, response.text
    return len(entries(response.json()))


@pytest.mark.parametrize(("dates", "found"), [
    (("2019",), 1), (("2019-03",), 1), (("2019-03-01",), 1), (("le2019",), 1), (("ge2019",), 1),
    (("le2019-03",), 1), (("sa2018",), 1), (("eb2020",), 1), (("ap2019-03",), 1),
    (("ge2019-03-01", "le2019-03-01"), 1),
    (("2018",), 0), (("2019-04",), 0), (("ne2019",), 0), (("gt2019",), 0), (("lt2019",), 0),
    (("sa2019",), 0), (("eb2019",), 0), (("2019-03-01T00:00:00Z",), 0),  # a second holds no whole day
])
def test_a_diagnosis_of_1_march_2019_is_found_by_the_year_or_month_it_falls_in(
        ics: Ics, dates: tuple[str, ...], found: int) -> None:
    assert _found(ics, ics.open_record("dr.patel"), *dates) == found


def test_an_onset_recorded_as_a_year_is_found_by_searches_reaching_into_that_year(ics: Ics) -> None:
    """A practice that knows only the year ("diabetes since 2019"): a search for after June 2019 or before it
    finds it, since it may be either; one for 1 March alone does not claim it was that day."""
    gp = ics.token("dr.patel", "user/*.read user/*.write") | {"Content-Type": "application/fhir+json"}
    from tests.builders import condition  # the small ICS's diabetes, sent again with its onset as a year
    body = condition("gp-c1", "Patient/gp-okafor", DIABETES, "Type 2 diabetes mellitus", onsetDateTime="2019")
    assert ics.client.put("/fhir/Condition/gp-c1", headers=gp, content=json.dumps(body)).status_code == 200
    reader = ics.open_record("dr.oconnor")
    assert _found(ics, reader, "ge2019-06-01") == 1 and _found(ics, reader, "le2019-06-01") == 1
    assert _found(ics, reader, "2019") == 1 and _found(ics, reader, "2019-03-01") == 0
    assert _found(ics, reader, "gt2019-12-31") == 0 and _found(ics, reader, "sa2018-12-31") == 1


def test_every_prefix_compares_ranges_as_fhir_r4_says() -> None:
    march = span("2019-03")
    assert march == Span(span("2019-03-01").start, span("2019-04-01").start)
    table = {  # the resource's date -> the prefixes of `2019-03` it matches
        "2019-03-15": {"eq", "ge", "le", "ap"},
        "2019": {"ne", "gt", "lt", "ge", "le", "ap"},  # reaches both sides of March, contains it
        "2019-02-28T23:59:59Z": {"ne", "lt", "le", "eb", "ap"},
        "2019-04-01": {"ne", "gt", "ge", "sa", "ap"},
        "2019-03-31T23:30:00-01:00": {"ne", "gt", "ge", "sa", "ap"},  # 00:30 on 1 April in UTC
        "1990": {"ne", "lt", "le", "eb"},
    }
    for value, matching in table.items():
        got = {p for p in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
               if DateFilter.parse("date", f"{p}2019-03").matches(span(value))}
        assert got == matching, value


def test_a_period_is_the_range_from_its_start_to_the_end_of_its_end_and_open_without_one() -> None:
    ongoing = {"resourceType": "MedicationStatement", "effectivePeriod": {"start": "2019-01"}}
    stopped = {"resourceType": "MedicationStatement", "effectivePeriod": {"start": "2019-01", "end": "2019-06"}}
    assert DateFilter.parse("date", "ge2026").matches(clinical_span(ongoing))
    assert not DateFilter.parse("date", "ge2019-07").matches(clinical_span(stopped))
    assert DateFilter.parse("date", "2019").matches(clinical_span(stopped))
    assert DateFilter.parse("date", "le2019-06-30").matches(clinical_span(stopped))


@pytest.mark.parametrize("value", ["2019-3", "2019-03-1", "2019-W01-1", "2019-03-01T10", "19", "2019-13", "x2019"])
def test_what_is_not_a_fhir_date_is_refused_naming_it(value: str) -> None:
    with pytest.raises(SearchError, match=f"date: '{value}' is not a FHIR date"):
        DateFilter.parse("date", value)


def test_a_patient_search_by_a_partial_birth_date_is_refused_not_read_as_1_january(ics: Ics) -> None:
    response = ics.client.post("/fhir/Patient/_search", headers=ics.token("dr.patel"),
                               data={"family": "Okafor", "birthdate": "1945"})
    assert response.status_code == 400 and "whole date of birth" in response.json()["issue"][0]["diagnostics"]
