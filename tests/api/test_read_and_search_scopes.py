"""SMART v2 keeps reading by id (`r`: read, vread, `_history`) and searching (`s`: a type's search, `$everything`,
Patient search) apart; v1 `read` is both.

Review (API security, 2026-12-07, finding 5): a `user/Condition.s` token read a Condition by its id and a
`user/Condition.r` token searched, as `.s` and `.r` were both taken as "reads".
"""

from __future__ import annotations

import pytest
from tests.fhir_bundles import entries
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.fhir.uk_core import server_id
from sharedcare.governance.scopes import covers, parse


def _calls(ics: Ics) -> dict[str, tuple[str, str]]:
    rid = server_id("P81001", "Condition", "gp-c1")
    return {"read": ("GET", f"/fhir/Condition/{rid}"), "vread": ("GET", f"/fhir/Condition/{rid}/_history/1"),
            "history": ("GET", f"/fhir/Condition/{rid}/_history"),
            "search": ("GET", f"/fhir/Condition?patient={ics.okafor}"),
            "everything": ("GET", f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition")}


@pytest.mark.parametrize(("scope", "allowed"), [
    ("user/Condition.s", {"search", "everything"}),
    ("user/Condition.r", {"read", "vread", "history"}),
    ("user/Condition.rs", {"read", "vread", "history", "search", "everything"}),
    ("user/Condition.read", {"read", "vread", "history", "search", "everything"}),
])
def test_a_search_only_token_cannot_read_by_id_and_a_read_only_one_cannot_search(
        ics: Ics, scope: str, allowed: set[str]) -> None:
    ics.open_record("dr.patel")
    headers = ics.token("dr.patel", scope)
    answered = {name: ics.client.request(method, url, headers=headers).status_code
                for name, (method, url) in _calls(ics).items()}
    assert {name for name, status in answered.items() if status == 200} == allowed, answered
    assert all(status in (403, 404) for name, status in answered.items() if name not in allowed), answered


def test_a_patient_search_needs_a_search_scope_for_patient(ics: Ics) -> None:
    body = {"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{OKAFOR_NHS}"}
    assert ics.client.post("/fhir/Patient/_search", headers=ics.token("dr.patel", "user/Patient.r"),
                           data=body).status_code == 403
    assert ics.client.post("/fhir/Patient/_search", headers=ics.token("dr.patel", "user/Patient.s"),
                           data=body).status_code == 200


def test_a_registration_to_read_by_id_never_yields_a_search_scope_nor_the_reverse() -> None:
    assert not covers("user/*.r", "user/Condition.s") and not covers("user/*.s", "user/Condition.r")
    assert covers("user/*.rs", "user/Condition.s") and covers("user/*.read", "user/Condition.r")
    found = parse("patient/Observation.s")
    assert found is not None and found.searches and not found.reads



def test_including_the_patient_needs_a_scope_for_patient(ics: Ics) -> None:
    """Review (FHIR API, 2026-12-07, LOW): `_include=Condition:patient` with a `user/Condition.rs` token answered
    the Conditions without the Patient, unsaid; a type outside the scopes is refused (deny-scope), as a search
    of it is. With the scope, the Patient comes as an included entry, not as a match."""
    ics.open_record("dr.patel")
    url = f"/fhir/Condition?patient={ics.okafor}&_include=Condition:patient"
    refused = ics.client.get(url, headers=ics.token("dr.patel", "user/Condition.rs"))
    assert refused.status_code == 403 and "(rule deny-scope)" in refused.text and "Patient" in refused.text
    assert ics.client.get(f"/fhir/Condition?patient={ics.okafor}",
                          headers=ics.token("dr.patel", "user/Condition.rs")).status_code == 200
    both = ics.client.get(url, headers=ics.token("dr.patel", "user/Condition.rs user/Patient.rs"))
    assert both.status_code == 200, both.text
    modes = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in entries(both.json())]
    assert modes[-1] == ("Patient", "include")
    assert {mode for rtype, mode in modes if rtype == "Condition"} == {"match"}
