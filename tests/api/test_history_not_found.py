"""A vread or `_history` of a resource withheld from the reader answers exactly as one of a resource that does not
exist: the same 404, the same words (TRUST AC3).

Review (API security, 2026-12-07, finding 2): `GET /fhir/Condition/{id}/_history/1` answered "no Condition X
version 1" for one that exists but is withheld (by tier, a confidential label) on a patient the reader has a
basis for, and "no Condition X" for a missing one: a reader could tell which records were kept from them.
"""

from __future__ import annotations

import pytest
from tests.small_ics import Ics

from sharedcare.fhir.uk_core import server_id


def _answer(ics: Ics, headers: dict[str, str], path: str, rid: str) -> tuple[int, str]:
    response = ics.client.get(path.format(id=rid), headers=headers)
    return response.status_code, response.json()["issue"][0]["diagnostics"].replace(rid, "<id>")


@pytest.mark.parametrize("path", ["/fhir/{kind}/{id}", "/fhir/{kind}/{id}/_history", "/fhir/{kind}/{id}/_history/1",
                                  "/fhir/{kind}/{id}/_history/7"])
@pytest.mark.parametrize(("reader", "basis", "withheld", "missing"), [
    # chlamydia: sexual health, tier 0 for a pharmacist
    ("pharm.khan", "explicit-consent", ("P81001", "Condition", "gp-sh"), ("P81001", "Condition", "gp-nothing")),
    # a letter the hospital marked restricted, to the GP
    ("dr.patel", "implied-consent", ("RXR", "DocumentReference", "rx-d2"),
     ("RXR", "DocumentReference", "rx-d9")),
])
def test_a_withheld_resource_and_a_missing_one_answer_alike(
        ics: Ics, path: str, reader: str, basis: str, withheld: tuple[str, str, str],
        missing: tuple[str, str, str]) -> None:
    headers = ics.open_record(reader, basis=basis, reason="reviewing before the clinic")
    seen = [_answer(ics, headers, path.replace("{kind}", withheld[1]), server_id(*ids)) for ids in (withheld, missing)]
    assert seen[0][0] == 404 and seen[0] == seen[1], seen


def test_a_version_that_does_not_exist_of_a_resource_shown_answers_as_a_missing_resource_does(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    shown, missing = server_id("P81001", "Condition", "gp-c1"), server_id("P81001", "Condition", "gp-nothing")
    assert ics.client.get(f"/fhir/Condition/{shown}/_history/1", headers=headers).status_code == 200
    assert _answer(ics, headers, "/fhir/Condition/{id}/_history/9", shown) == \
        _answer(ics, headers, "/fhir/Condition/{id}/_history/9", missing) == (404, "no Condition <id> version 9")
