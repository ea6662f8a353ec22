"""The codes of the FHIR API's "some information is not shown" notice are published as a CodeSystem
(docs/api.md, "What was not shown"): a client that meets `consent-deny` in a notice can look up what it
means. Made from the words the notices are worded from, so a code cannot be in one and not the other."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fhir.resources.R4B.codesystem import CodeSystem
from tests.api.test_withheld_signal import _mine
from tests.small_ics import Ics

from sharedcare.api.auth import mint_token
from sharedcare.api.fhir import WITHHELD_REASON_SYSTEM
from sharedcare.config import load_settings
from sharedcare.governance.explain import not_shown
from sharedcare.governance.framework import Framework

PATH = "/fhir/CodeSystem/withheld-reason"
# Every reason a notice can give, written from the policy's rules (governance/policy.py's docstring, rules
# a-e of direct care) and the API's own (`scope`), not from the code that words them.
POLICY_REASONS = {"source-agreement", "objection-all", "objection-org", "consent-deny", "tier", "tier-1-headline"}


def _served(ics: Ics) -> dict[str, Any]:
    response = ics.client.get(PATH, headers=ics.token("dr.patel"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    CodeSystem.model_validate(body)
    return body


def test_every_code_a_notice_can_carry_is_a_concept_in_the_words_the_notice_says(
        ics: Ics, framework: Framework) -> None:
    served = _served(ics)
    assert (served["url"], served["content"], served["status"]) == (WITHHELD_REASON_SYSTEM, "complete", "active")
    concepts = {c["code"]: c for c in served["concept"]}
    assert served["count"] == len(concepts) == len(served["concept"])
    can_carry = POLICY_REASONS | {rule.id for rule in framework.always_withheld} | {"scope"}
    assert set(concepts) == can_carry
    assert any(role.citizen for role in framework.roles.values())
    for role in framework.roles.values():
        said = not_shown(Counter(can_carry), role, framework)
        for code, words in said.items():
            concept = concepts[code]
            patient_words = next((d["value"] for d in concept.get("designation", [])
                                  if d["use"]["code"] == "patient"), concept["display"])
            assert words == (patient_words if role.citizen else concept["display"]), (role.name, code)
            assert concept["definition"]


def test_the_codes_of_a_real_notice_are_concepts_with_its_words(ics: Ics) -> None:
    concepts = {c["code"]: c["display"] for c in _served(ics)["concept"]}
    paramedic = ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    body = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=paramedic).json()
    (notice,) = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "outcome"]
    codings = [c for issue in notice["issue"] for c in issue["details"]["coding"]]
    assert {c["code"] for c in codings} >= {"tier", "tier-1-headline"}
    for coding in codings:
        assert coding["system"] == WITHHELD_REASON_SYSTEM and coding["display"] == concepts[coding["code"]]


def test_it_is_listed_in_the_capability_statement(ics: Ics) -> None:
    resources = ics.client.get("/fhir/metadata").json()["rest"][0]["resource"]
    (code_system,) = [r for r in resources if r["type"] == "CodeSystem"]
    assert code_system["interaction"] == [{"code": "read"}] and "withheld-reason" in code_system["documentation"]


def test_only_signed_in_members_read_it(ics: Ics, framework: Framework) -> None:
    assert ics.client.get(PATH).status_code == 401
    care_home = mint_token(load_settings(), framework, "carehome.davies", "user/*.read")  # a draft agreement
    refused = ics.client.get(PATH, headers={"Authorization": f"Bearer {care_home}"})
    assert refused.status_code == 403 and "deny-actor-agreement" in refused.text
    assert ics.client.get(PATH, headers=_mine(ics)).status_code == 200  # a patient reads their notices' codes too
    assert ics.client.get("/fhir/CodeSystem/nope", headers=ics.token("dr.patel")).status_code == 404
