"""`decide_secondary` as tables: who may export at all, which people are left out, which items are
withheld. Pure, so no database."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from tests.governance.test_policy import CATEGORY_ITEMS, _item, _request

from sharedcare.governance.consent import Choices
from sharedcare.governance.framework import Framework
from sharedcare.governance.policy import Request, decide_secondary

ALL_USERS = ["dr.patel", "nurse.lee", "dr.oconnor", "dn.williams", "dr.singh", "para.evans", "pharm.khan",
             "sw.brown", "admin.taylor", "hospice.ward", "carehome.davies", "ig.morgan", "analyst.chen"]
THIRD_PARTY = "http://terminology.hl7.org/CodeSystem/v3-ActCode|THIRDPARTY"
RESTRICTED = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R"


def _analyst(fw: Framework, **kwargs: Any) -> Request:
    return _request(fw, "analyst.chen", None, purpose="secondary-use", **kwargs)


@pytest.mark.parametrize("username", ALL_USERS)
def test_only_a_role_with_a_secondary_purpose_may_export(framework: Framework, username: str) -> None:
    decision = decide_secondary(_request(framework, username, None, purpose="secondary-use"),
                                [_item("summary")], framework)
    assert decision.permitted == (username == "analyst.chen")
    if username == "carehome.davies":  # a draft agreement fails before the purpose is asked about
        assert decision.rule_id == "deny-actor-agreement"
    elif username != "analyst.chen":
        assert decision.rule_id == "deny-purpose" and not decision.released


def test_an_identifiable_purpose_is_never_an_export(framework: Framework) -> None:
    decision = decide_secondary(_request(framework, "dr.patel", None, purpose="direct-care"), [_item("summary")],
                                framework)
    assert (decision.permitted, decision.rule_id) == (False, "deny-purpose")


@pytest.mark.parametrize(("choices", "rule"), [
    (Choices(opt_out_secondary=True), "deny-opt-out"),
    (Choices(object_all=True), "deny-objection-all"),
    (Choices(opt_out_secondary=True, object_all=True), "deny-opt-out"),
    (Choices(object_orgs=frozenset({"QRD"})), "deny-objection-org"),  # the analyst's own organisation
])
def test_the_opt_out_and_an_objection_leave_the_whole_person_out(framework: Framework, choices: Choices,
                                                                 rule: str) -> None:
    decision = decide_secondary(_analyst(framework, choices=choices), [_item("summary")], framework)
    assert (decision.permitted, decision.rule_id, decision.released) == (False, rule, [])


@pytest.mark.parametrize("category", list(CATEGORY_ITEMS))
def test_each_category_goes_only_if_not_sensitive_and_the_analyst_tier_is_at_least_2(framework: Framework,
                                                                                      category: str) -> None:
    decision = decide_secondary(_analyst(framework), [_item(category)], framework)
    sensitive = category in framework.sensitive_categories
    assert bool(decision.released) == (not sensitive and framework.roles["analyst"].tier(category) >= 2)
    if sensitive:
        assert decision.withheld == {"sensitive-category": 1}


@pytest.mark.parametrize(("status", "label", "object_org"), list(itertools.product(
    ["signed", "suspended", "ended", "draft"], [None, THIRD_PARTY, RESTRICTED], [False, True])))
def test_agreements_labels_and_objections_to_an_organisation_withhold_items(
        framework: Framework, status: str, label: str | None, object_org: bool) -> None:
    agreements = {code: org.agreement for code, org in framework.organisations.items()}
    agreements["RXR"] = agreements["RXR"].model_copy(update={"status": status})
    choices = Choices(object_orgs=frozenset({"RXR"}) if object_org else frozenset())
    item = _item("summary", "RXR", frozenset({label}) if label else frozenset())
    decision = decide_secondary(_analyst(framework, agreements=agreements, choices=choices), [item], framework)
    expected = ("source-agreement" if status != "signed" else "objection-org" if object_org
                else {THIRD_PARTY: "third-party", RESTRICTED: "confidential"}.get(label or ""))
    assert decision.permitted
    assert decision.withheld == ({expected: 1} if expected else {})
    assert len(decision.released) == (0 if expected else 1)


def test_an_analyst_whose_organisation_is_suspended_exports_nothing(framework: Framework) -> None:
    agreements = {code: org.agreement for code, org in framework.organisations.items()}
    agreements["QRD"] = agreements["QRD"].model_copy(update={"status": "suspended"})
    decision = decide_secondary(_analyst(framework, agreements=agreements), [_item("summary")], framework)
    assert decision.rule_id == "deny-actor-agreement"
