"""A parameter the server would not act on is refused, naming it, never ignored: an answer to another
question than the one asked looks like the answer to it.

Review (API security, 2026-12-07, finding 4): a read, `_history` and vread answered 200 with everything to
`_summary=true`, `_elements=code`, `_format=xml` or `foo=bar` (`_format` is now negotiated at the door:
tests/api/test_fhir_http.py); `_history?_since=2099-01-01` returned every
version; `code=44054006&code=999999` found the diabetes (FHIR AND-s repeated parameters) and
`patient=A&patient=B` quietly searched A.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from tests.builders import condition
from tests.fhir_bundles import entries
from tests.small_ics import Ics

from sharedcare.fhir.uk_core import server_id

DIABETES = server_id("P81001", "Condition", "gp-c1")


def _refusal(response: object) -> str:
    assert response.status_code == 400, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0]["diagnostics"])


@pytest.mark.parametrize("query", ["_summary=true", "_elements=code", "_pretty=true", "foo=bar"])
@pytest.mark.parametrize("path", [f"/fhir/Condition/{DIABETES}", f"/fhir/Condition/{DIABETES}/_history",
                                  f"/fhir/Condition/{DIABETES}/_history/1", "/fhir/Patient/{okafor}"])
def test_a_read_or_history_with_a_parameter_it_does_not_act_on_is_refused_naming_it(
        ics: Ics, path: str, query: str) -> None:
    headers = ics.open_record("dr.patel")
    response = ics.client.get(f"{path.format(okafor=ics.okafor)}?{query}", headers=headers)
    assert query.split("=")[0] in _refusal(response)
    assert ics.client.get(path.format(okafor=ics.okafor), headers=headers).status_code == 200


def test_history_since_gives_only_the_versions_received_since(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    url = f"/fhir/Condition/{DIABETES}/_history"
    (first,) = ics.client.get(url, headers=headers).json()["entry"]
    gp = ics.token("dr.patel", "user/*.read user/*.write") | {"Content-Type": "application/fhir+json"}
    changed = condition("gp-c1", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus",
                        onsetDateTime="2018-07-01")
    assert ics.client.put("/fhir/Condition/gp-c1", headers=gp, content=json.dumps(changed)).status_code == 200
    assert ics.client.get(url, headers=headers).json()["total"] == 2
    later = ics.client.get(url, headers=headers, params={"_since": "2099-01-01"}).json()
    assert later["total"] == 0 and later.get("entry", []) == []
    since_first = ics.client.get(url, headers=headers, params={"_since": first["response"]["lastModified"]}).json()
    assert since_first["total"] == 2
    (newest,) = ics.client.get(url, headers=headers, params={"_since": _after(first)}).json()["entry"]
    assert newest["resource"]["meta"]["versionId"] == "2" and newest["resource"]["onsetDateTime"] == "2018-07-01"
    assert "_since" in _refusal(ics.client.get(url, headers=headers, params={"_since": "yesterday"}))
    assert "_since" in _refusal(ics.client.get(f"{url}?_since=2020&_since=2099", headers=headers))


def _after(entry: dict) -> str:
    """An instant just after a version was received."""
    return (datetime.fromisoformat(entry["response"]["lastModified"]) + timedelta(milliseconds=1)).isoformat()


def test_a_repeated_code_must_match_each_time_as_fhir_ands_repeated_parameters(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    base = f"/fhir/Condition?patient={ics.okafor}"
    assert len(entries(ics.client.get(f"{base}&code=44054006", headers=headers).json())) == 1
    assert len(entries(ics.client.get(f"{base}&code=44054006&code=999999", headers=headers).json())) == 0
    assert len(entries(ics.client.get(f"{base}&code=44054006,999999", headers=headers).json())) == 1  # OR
    assert len(entries(ics.client.get(f"{base}&code=44054006&status=active&status=inactive",
                                      headers=headers).json())) == 0


@pytest.mark.parametrize("query", ["patient={okafor}&patient={stranger}", "patient={okafor}&subject={stranger}",
                                   "patient={okafor}&_count=1&_count=50", "patient={okafor}&_sort=date&_sort=-date"])
def test_a_parameter_that_takes_one_value_given_twice_is_refused_naming_it(ics: Ics, query: str) -> None:
    headers = ics.open_record("dr.patel")
    response = ics.client.get("/fhir/Condition?" + query.format(okafor=ics.okafor, stranger=ics.stranger),
                              headers=headers)
    named = query.split("&")[1].split("=")[0]
    assert named.replace("subject", "patient") in _refusal(response)


def test_everything_and_patient_search_refuse_a_repeated_parameter(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    everything = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition&_type=Patient",
                                headers=headers)
    assert "_type" in _refusal(everything)
    search = ics.client.post("/fhir/Patient/_search", content="family=Okafor&family=Hughes",
                             headers=headers | {"Content-Type": "application/x-www-form-urlencoded"})
    assert "family" in _refusal(search)


@pytest.mark.parametrize(("query", "named"), [
    ("_type=MedicationRequest", "_type"), ("_type=condition", "_type"), ("_type=Provenance", "_type"),
    ("_type=Condition,Foo", "_type"), ("_type=", "_type"),
    ("_type=Condition&_revinclude=AuditEvent:entity", "_revinclude"), ("_since=", "_since")])
def test_everything_refuses_a_type_or_revinclude_it_would_not_act_on(ics: Ics, query: str, named: str) -> None:
    """Review (FHIR API, 2026-12-07, MEDIUM): `_type=MedicationRequest` or `_type=condition` answered 200 with
    the notice alone, and the self link echoed it as applied: read as a patient on no medicines."""
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?{query}", headers=ics.open_record("dr.patel"))
    diagnostics = _refusal(response)
    issue = response.json()["issue"][0]
    assert issue["expression"] == [named] and named in diagnostics, issue
    assert issue["code"] == ("invalid" if named == "_since" else "not-supported")
    value = query.split("&")[-1].split("=")[1].split(",")[-1]
    assert value in diagnostics


def test_everything_still_takes_record_types_and_provenance(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    everything = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Patient,Condition"
                                "&_revinclude=Provenance:target", headers=headers)
    assert everything.status_code == 200, everything.text
    found = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in entries(everything.json())}
    assert found == {("Patient", "match"), ("Condition", "match"), ("Provenance", "include")}
