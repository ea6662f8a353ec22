"""FHIR search as a partner EPR uses it: by patient, code, date, status, with paging, includes and sort,
after the decision point (so search can never show what a read would refuse)."""

from __future__ import annotations

import uuid
from datetime import date

from fhir.resources.R4B import get_fhir_model_class
from tests.fhir_bundles import entries
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.identity.compare import search_key
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Person

SCT = "http://snomed.info/sct"


def _entries(bundle: dict, rtype: str | None = None) -> list[dict]:
    return [e["resource"] for e in entries(bundle) if rtype is None or e["resource"]["resourceType"] == rtype]


def test_the_capability_statement_lists_what_is_searchable_and_is_valid(ics: Ics) -> None:
    statement = ics.client.get("/fhir/metadata").json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    condition = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Condition")
    assert {p["name"] for p in condition["searchParam"]} >= {"patient", "code", "date", "status"}


def test_patient_search_by_nhs_number_in_a_form_body_finds_one_person_and_nothing_clinical(ics: Ics) -> None:
    response = ics.client.post("/fhir/Patient/_search", headers=ics.token("para.evans"),
                               data={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{OKAFOR_NHS}"})
    assert response.status_code == 200
    (patient,) = _entries(response.json())
    assert patient["id"] == ics.okafor and patient["birthDate"] == "1945-03-02"
    assert "contact" not in patient
    assert OKAFOR_NHS not in str(response.url)


def test_patient_search_by_name_and_birth_date(ics: Ics) -> None:
    def found(born: str) -> list[str]:
        response = ics.client.post("/fhir/Patient/_search", headers=ics.token("dr.patel"),
                                   data={"family": "okafor", "birthdate": born})
        return [p["id"] for p in _entries(response.json())]

    assert found("1945-03-02") == [ics.okafor]
    assert found("1945-03-03") == []


def test_a_patient_search_with_details_in_the_url_is_refused_saying_to_post_them(ics: Ics) -> None:
    for query in (f"identifier=https://fhir.nhs.uk/Id/nhs-number|{OKAFOR_NHS}", "family=okafor&birthdate=1945-03-02"):
        response = ics.client.get(f"/fhir/Patient?{query}", headers=ics.token("dr.patel"))
        diagnostics = response.json()["issue"][0]["diagnostics"]
        assert response.status_code == 400 and "POST [base]/Patient/_search" in diagnostics
        assert "entry" not in response.json() and OKAFOR_NHS not in response.text and "1945" not in response.text
    assert ics.client.get(f"/fhir/Patient?identifier={OKAFOR_NHS}").status_code == 401  # the token first
    in_url = ics.client.post(f"/fhir/Patient/_search?identifier={OKAFOR_NHS}", headers=ics.token("dr.patel"),
                             data={"family": "okafor"})  # criteria in the URL as well as the body
    assert in_url.status_code == 400 and "entry" not in in_url.json() and OKAFOR_NHS not in in_url.text
    statement = ics.client.get("/fhir/metadata").json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert "POST only" in patient["documentation"]


def test_an_unknown_search_parameter_is_refused_by_name(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    response = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&colour=blue", headers=headers)
    assert response.status_code == 400 and "'colour'" in response.json()["issue"][0]["diagnostics"]


def test_counts_that_could_reveal_withheld_records_are_refused(ics: Ics) -> None:
    headers = ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    for param in ("_total=accurate", "_summary=count"):
        response = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&{param}", headers=headers)
        assert response.status_code == 400 and "could reveal" in response.json()["issue"][0]["diagnostics"]
    bundle = ics.client.get(f"/fhir/Condition?patient={ics.okafor}", headers=headers).json()
    assert "total" not in bundle


def test_search_by_code_date_and_status(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    base = f"/fhir/Condition?patient={ics.okafor}"
    diabetes = ics.client.get(f"{base}&code={SCT}|44054006", headers=headers).json()
    assert [c["code"]["coding"][0]["code"] for c in _entries(diabetes)] == ["44054006"]
    assert _entries(ics.client.get(f"{base}&code={SCT}|0000", headers=headers).json()) == []
    assert len(_entries(ics.client.get(f"{base}&date=ge2019-01-01&date=le2019-12-31", headers=headers).json())) == 3
    assert _entries(ics.client.get(f"{base}&date=gt2020-01-01", headers=headers).json()) == []
    assert len(_entries(ics.client.get(f"{base}&status=active", headers=headers).json())) == 3
    bad = ics.client.get(f"{base}&date=yesterday", headers=headers)
    assert bad.status_code == 400 and "date" in bad.json()["issue"][0]["diagnostics"]


def test_paging_follows_next_links_to_every_result_once(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    url: str | None = f"/fhir/Condition?patient={ics.okafor}&_count=1&_sort=date"
    seen = []
    while url:
        bundle = ics.client.get(url, headers=headers).json()
        seen += [c["id"] for c in _entries(bundle)]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    everything = ics.client.get(f"/fhir/Condition?patient={ics.okafor}", headers=headers).json()
    assert sorted(seen) == sorted(c["id"] for c in _entries(everything)) and len(seen) == len(set(seen)) == 3


def test_include_brings_the_patient_after_the_matches(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    bundle = ics.client.get(f"/fhir/DocumentReference?patient={ics.okafor}&_include=DocumentReference:patient",
                            headers=headers).json()
    assert [r["resourceType"] for r in _entries(bundle)][-1] == "Patient"


def test_search_never_returns_what_the_role_may_not_see(ics: Ics) -> None:
    headers = ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    found = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&code=105629000,35489007", headers=headers).json()
    assert _entries(found) == []  # sexual health and mental health: not at the paramedic's tiers


def test_everything_by_type_and_since(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    base = f"/fhir/Patient/{ics.okafor}/$everything"
    only = ics.client.get(f"{base}?_type=Condition,MedicationStatement", headers=headers).json()
    assert {r["resourceType"] for r in _entries(only)} == {"Condition", "MedicationStatement"}
    future = ics.client.get(f"{base}?_since=2999-01-01", headers=headers).json()
    assert [r["resourceType"] for r in _entries(future)] == ["Patient"]
    assert ics.client.get(f"{base}?_count=5", headers=headers).status_code == 400


def test_search_never_finds_a_person_through_what_a_read_would_refuse(ics: Ics, framework: Framework) -> None:
    from sharedcare.governance.agreements import set_agreement
    from sharedcare.governance.consent import set_choice

    db = ics.client.app.state.database  # type: ignore[attr-defined]
    form = {"identifier": "https://fhir.nhs.uk/Id/nhs-number|9990000018"}  # Mrs Hughes, known only to P81002
    assert _entries(ics.client.post("/fhir/Patient/_search", data=form, headers=ics.token("dr.patel")).json())
    with db.session() as s:
        set_agreement(s, framework, "P81002", "suspended", by="ig.morgan", reason="a breach reported")
    assert _entries(ics.client.post("/fhir/Patient/_search", data=form, headers=ics.token("dr.patel")).json()) == []
    with db.session() as s:
        set_agreement(s, framework, "P81002", "signed", by="ig.morgan", reason="")
        set_choice(s, OKAFOR_NHS, by="patient", object_org="P81001")
    okafor = {"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{OKAFOR_NHS}"}
    assert _entries(ics.client.post("/fhir/Patient/_search", data=okafor, headers=ics.token("dr.patel")).json()) == []
    assert _entries(ics.client.post("/fhir/Patient/_search", data=okafor, headers=ics.token("para.evans")).json())


def test_administrative_staff_find_people_without_their_address(ics: Ics) -> None:
    form = {"identifier": "https://fhir.nhs.uk/Id/nhs-number|9990000018"}  # Mrs Hughes, of another practice
    (found,) = _entries(ics.client.post("/fhir/Patient/_search", data=form, headers=ics.token("dr.patel")).json())
    assert "address" in found  # a GP sees addresses (demographics tier 3)
    (found,) = _entries(ics.client.post("/fhir/Patient/_search", data=form, headers=ics.token("admin.taylor")).json())
    assert found["birthDate"] == "1952-06-11" and "address" not in found  # tier 1: who, not where


def test_an_unsupported_modifier_is_refused_not_ignored(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    for param in ("status:not=entered-in-error", "code:text=diabetes", "_include:iterate=Condition:patient"):
        response = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&{param}", headers=headers)
        assert response.status_code == 400 and "modifier" in response.json()["issue"][0]["diagnostics"]


def test_has_chained_parameters_and_revinclude_are_refused_by_name(ics: Ics) -> None:
    """A reverse chain, a chain or a _revinclude the server ignored could bring what a read would refuse
    (TRUST AC4), so each is a 400 that names it."""
    headers = ics.open_record("dr.patel")
    for query, named in ((f"patient={ics.okafor}&_has:Observation:patient:code=1234", "_has:Observation"),
                         ("patient.name=Okafor", "patient.name"),
                         (f"patient={ics.okafor}&subject:Patient.name=Okafor", "subject:Patient.name"),
                         (f"patient={ics.okafor}&_revinclude=Observation:patient", "_revinclude")):
        response = ics.client.get(f"/fhir/Condition?{query}", headers=headers)
        assert response.status_code == 400 and named in response.json()["issue"][0]["diagnostics"], query


def test_include_brings_the_patient_only_as_a_read_would(ics: Ics) -> None:
    """`_include` of the patient: refused with the search when the caller may not open the record, and
    otherwise the very Patient a read gives that caller, no more (TRUST AC4)."""
    paramedic = ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    refused = ics.client.get(f"/fhir/Condition?patient={ics.stranger}&_include=Condition:patient", headers=paramedic)
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    assert "Hughes" not in refused.text and "1952" not in refused.text
    bundle = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&_include=Condition:patient",
                            headers=paramedic).json()
    (included,) = [r for r in _entries(bundle) if r["resourceType"] == "Patient"]
    read = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=paramedic).json()
    assert {k: v for k, v in included.items() if k != "meta"} == {k: v for k, v in read.items() if k != "meta"}


def test_percent_or_underscore_in_a_given_name_are_not_wildcards(ics: Ics, db: Database) -> None:
    """`%` and `_` typed in a given name are not LIKE's wildcards, which let any name fill the candidates: as
    any character that is not a letter they are read as nothing (`compare.search_key`), so "%" alone finds no
    one rather than 201 Okafors born the same day, "A_ne" and "%hi" find no Anne or Chi, and "%c" finds Chi."""
    born = date(1945, 3, 2)
    with db.session() as s:
        for n, given in enumerate(["Anne"] * 200 + ["Chi"]):
            person = str(uuid.uuid4())
            s.add(Person(id=person))
            s.flush()  # the person before the record naming it
            s.add(PatientRecord(source_org="P81001", source_id=f"crowd-{n}", person_id=person, family="Okafor",
                                family_key="okafor", given=given, given_key=search_key(given), birth_date=born,
                                link_method="new", match_probability=1.0, link_status="linked"))

    def found(given: str) -> list[str]:
        response = ics.client.post("/fhir/Patient/_search", headers=ics.token("dr.patel"),
                                   data={"family": "okafor", "given": given, "birthdate": born.isoformat()})
        assert response.status_code == 200, response.text
        return [name["text"] for p in _entries(response.json()) for name in p["name"]]

    assert found("%") == found("_") == found("A_ne") == found("%hi") == []
    assert found("%c") == found("c_") == ["OKAFOR, Chi"]
