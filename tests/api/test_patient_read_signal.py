"""A read of the combined `Patient/{id}` says when it leaves something out, as a Bundle of the record does
(issue 5, point 5): a GP system taking the person's identifiers and address from it must be able to tell
that some of their records were not combined in. Said with the security label `REDACTED` and the notice's
reason codes as tags (docs/api.md, "What was not shown"), never which organisation or what was left out;
answered exactly as before when nothing was."""

from __future__ import annotations

from typing import Any

import orjson
from fhir.resources.R4B.patient import Patient
from tests.api.test_withheld_signal import _event, _mine
from tests.fhir_bundles import withheld
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.api.fhir import REDACTED, WITHHELD_REASON_SYSTEM
from sharedcare.governance.access_log import details
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.consent import set_choice
from sharedcare.governance.explain import WITHHELD_LABELS
from sharedcare.governance.framework import Framework
from sharedcare.store.database import Database


def _read(ics: Ics, person: str, headers: dict[str, str], request_id: str = "") -> dict[str, Any]:
    response = ics.client.get(f"/fhir/Patient/{person}", headers={**headers, "X-Request-ID": request_id or "r"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    Patient.model_validate(body)  # still a FHIR R4 Patient, labels and all
    return body


def _reasons(patient: dict[str, Any]) -> dict[str, str]:
    """The Patient's reasons as a client reads them: each tag of the withheld-reason system, by code."""
    return {tag["code"]: tag["display"] for tag in patient.get("meta", {}).get("tag", [])
            if tag["system"] == WITHHELD_REASON_SYSTEM}


def _redacted(patient: dict[str, Any]) -> bool:
    return REDACTED in patient.get("meta", {}).get("security", [])


def _notice(ics: Ics, person: str, headers: dict[str, str]) -> set[str]:
    return set(withheld(ics.client.get(f"/fhir/Patient/{person}/$everything", headers=headers).json()))


def test_a_patient_who_objected_to_one_organisation_is_read_labelled_without_naming_it(
        ics: Ics, db: Database) -> None:
    gp = ics.open_record("dr.patel")
    before = _read(ics, ics.okafor, gp)
    assert not _redacted(before) and _reasons(before) == {}
    with db.session() as s:  # Mr Okafor objects to the mental health trust's information being shared
        set_choice(s, OKAFOR_NHS, by="patient", object_org="RXM")
        s.commit()
    after = _read(ics, ics.okafor, gp, "objected")
    assert _redacted(after)
    assert _reasons(after) == {"objection-org": WITHHELD_LABELS["objection-org"]}
    assert set(_reasons(after)) <= _notice(ics, ics.okafor, gp)  # nothing the record's notice does not say
    text = orjson.dumps(after).decode()
    assert "RXM" not in text and "RXM-4" not in text  # which organisation, or its record, is not said
    # the rest is the Patient as before: the same person, demographics and identifiers
    assert {k: v for k, v in after.items() if k != "meta"} == {k: v for k, v in before.items() if k != "meta"}
    assert details(_event(db, "objected"))["withheld:objection-org"] == "1"  # and audited as a read's count


def test_a_suspended_partners_demographics_are_signalled_as_left_out(ics: Ics, framework: Framework) -> None:
    hospital = ics.open_record("dr.oconnor")
    assert _reasons(_read(ics, ics.okafor, hospital)) == {}
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    with db.session() as session:
        set_agreement(session, framework, "RYC", "suspended", by="ig.morgan", reason="a breach reported")
    patient = _read(ics, ics.okafor, hospital)
    assert _redacted(patient)
    assert _reasons(patient) == {"source-agreement": WITHHELD_LABELS["source-agreement"]}
    assert set(_reasons(patient)) <= _notice(ics, ics.okafor, hospital)
    assert "RYC" not in orjson.dumps(patient).decode()


def test_a_role_that_sees_demographics_below_full_detail_is_told_its_role_does_not_include_some(ics: Ics) -> None:
    """A community pharmacist sees demographics at tier 2: no next of kin. The same for any patient, so it
    says nothing about this one; the pharmacist's $everything notice says `tier` too."""
    pharmacist = ics.open_record("pharm.khan")
    patient = _read(ics, ics.okafor, pharmacist)
    assert "contact" not in patient and _redacted(patient)
    assert _reasons(patient) == {"tier": WITHHELD_LABELS["tier"]}
    assert "tier" in _notice(ics, ics.okafor, pharmacist)
    # the GP's, at full detail, has the daughter's telephone and no label
    gp = _read(ics, ics.okafor, ics.open_record("dr.patel"))
    assert gp["contact"] and not _redacted(gp)


def test_nothing_left_out_is_answered_exactly_as_the_record_holds_it(ics: Ics) -> None:
    """Mrs Hughes has one source. A GP, and a paramedic (whose role sees nothing of sexual health, so every
    Bundle it reads says `tier`), read her Patient whole: no label, and the very bytes $everything holds."""
    for user in ("dr.patel", "para.evans"):
        headers = ics.open_record(user, person=ics.stranger, basis="implied-consent", reason="collapsed in clinic")
        response = ics.client.get(f"/fhir/Patient/{ics.stranger}", headers=headers)
        assert response.status_code == 200
        everything = ics.client.get(f"/fhir/Patient/{ics.stranger}/$everything", headers=headers).json()
        assert response.content == orjson.dumps(everything["entry"][0]["resource"])
        assert "security" not in response.json().get("meta", {}) and "tag" not in response.json().get("meta", {})


def test_the_patient_reading_their_own_record_over_the_api_is_refused_and_told_nothing(
        ics: Ics, db: Database) -> None:
    """The API serves care: a patient's own token is refused records here, their Patient included, whatever
    is withheld from it (the patient portal tells them what their record leaves out, in their words)."""
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", object_org="RXM")
        s.commit()
    refused = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=_mine(ics))
    assert refused.status_code == 404
    assert "REDACTED" not in refused.text and WITHHELD_REASON_SYSTEM not in refused.text


def test_a_refused_reader_is_told_nothing(ics: Ics, db: Database) -> None:
    """No basis: 404 like a missing Patient, with no label or reason, whatever the patient chose."""
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", object_org="RXM")
        s.commit()
    refused = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=ics.token("dr.oconnor"))
    assert refused.status_code in (403, 404) and "REDACTED" not in refused.text
    assert WITHHELD_REASON_SYSTEM not in refused.text


def test_the_capability_statement_says_a_patient_read_may_be_labelled(ics: Ics) -> None:
    documentation = ics.client.get("/fhir/metadata").json()["rest"][0]["documentation"]
    assert "Patient read" in documentation and "REDACTED" in documentation and "meta.tag" in documentation
