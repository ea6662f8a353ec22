"""Which identifiers keep two records apart by rule in a batch relink: two different valid NHS numbers
always; an identifier without a check digit (a local or foreign number) only as evidence the model weighs,
because a keying error in it still looks like a number."""

from __future__ import annotations

from dataclasses import replace

from sharedcare.identity.compare import MatchRecord
from sharedcare.identity.matching import cluster
from sharedcare.identity.model import default_model

SAME = MatchRecord(1, given="Robert", family="Okafor", birth_date="1960-03-07", sex="male", postcode="RV1 2AB",
                   phones=("07700 900123",))


def _together(a: str, b: str) -> bool:
    records = [replace(SAME, nhs_number=a), replace(SAME, record_id=2, nhs_number=b)]
    found = cluster(records, fallback=default_model().json)
    return found.cluster_of[1] == found.cluster_of[2]


def test_two_different_valid_nhs_numbers_are_never_one_person_however_well_the_rest_agrees() -> None:
    assert not _together("9434765919", "9434765870")


def test_numbers_without_a_check_digit_that_differ_are_weighed_not_ruled_out() -> None:
    assert _together("4652817", "4658217")
    assert _together("4652817", "1190432")  # a different number, but everything else agrees
