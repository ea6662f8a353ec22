"""The decision point as tables: every role against every category, every basis and agreement state,
and the patient's choices. `decide` is pure, so these run without a database."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import FRAMEWORK_PATH

from sharedcare.governance.consent import Choices
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.governance.policy import ActiveBasis, Actor, Item, Request, decide

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
FRAMEWORK = load_framework(FRAMEWORK_PATH)  # for hypothesis tests, which cannot take function fixtures
SOURCE = "RXR"  # items come from the acute trust unless a test says otherwise

CATEGORY_ITEMS = {
    "summary": {"resourceType": "Condition", "id": "c", "note": [{"text": "free text"}],
                "code": {"text": "Diabetes"}},
    "diagnostics": {"resourceType": "Observation", "id": "o", "note": [{"text": "free text"}]},
    "encounters": {"resourceType": "Encounter", "id": "e", "text": {"status": "generated", "div": "<div/>"}},
    "hospital_detail": {"resourceType": "DocumentReference", "id": "d", "content": [{"attachment": {}}]},
    "community": {"resourceType": "CarePlan", "id": "p", "description": "free text"},
    "mental_health": {"resourceType": "Condition", "id": "m", "note": [{"text": "free text"}]},
    "social_care": {"resourceType": "Observation", "id": "s", "note": [{"text": "free text"}]},
    "safeguarding": {"resourceType": "Condition", "id": "g", "note": [{"text": "free text"}]},
    "sexual_health": {"resourceType": "Condition", "id": "x", "note": [{"text": "free text"}]},
    "alerts": {"resourceType": "AllergyIntolerance", "id": "a", "note": [{"text": "free text"}]},
}
FREE_TEXT = {"note", "text", "content", "description"}
THIRD_PARTY = "http://terminology.hl7.org/CodeSystem/v3-ActCode|THIRDPARTY"
WITHHELD_DOC = [{"attachment": {"title": "Document not shown at your access level"}}]


def _request(fw: Framework, username: str, basis: str | None = "explicit-consent", *,
             agreements: dict | None = None, choices: Choices = Choices(), purpose: str = "direct-care") -> Request:
    user = fw.users[username]
    active = ActiveBasis(basis, "reason given here", NOW + timedelta(hours=1)) if basis else None
    return Request(actor=Actor(username, fw.roles[user.role], user.organisation), purpose=purpose,
                   patient_id="p1", basis=active, agreements=agreements or
                   {code: org.agreement for code, org in fw.organisations.items()}, choices=choices, now=NOW)


def _item(category: str, source: str = SOURCE, security: frozenset[str] = frozenset()) -> Item:
    resource = CATEGORY_ITEMS[category]
    return Item(resource, resource["resourceType"], source, category, security)


CLINICAL_USERS = ["dr.patel", "nurse.lee", "dr.oconnor", "dn.williams", "dr.singh", "para.evans", "pharm.khan",
                  "sw.brown", "admin.taylor"]


@pytest.mark.parametrize(("username", "category"), list(itertools.product(CLINICAL_USERS, CATEGORY_ITEMS)))
def test_each_role_sees_each_category_at_exactly_its_framework_tier(framework: Framework, username: str,
                                                                     category: str) -> None:
    user = framework.users[username]
    tier = framework.roles[user.role].tier(category)
    source = "RXM" if user.organisation == SOURCE else SOURCE  # never the user's own organisation
    decision = decide(_request(framework, username), [_item(category, source)], framework)
    assert decision.permitted
    if tier == 0:
        assert not decision.released and decision.withheld == {"tier": 1}
    elif tier == 1:
        assert not decision.released and decision.withheld == {"tier-1-headline": 1}
        assert {(h.category, h.organisation) for h in decision.headlines} == {(category, source)}
    else:
        (released,) = decision.released
        assert released.tier == tier
        has_free_text = bool(FREE_TEXT & set(released.content)) and released.content.get("content") != WITHHELD_DOC
        assert has_free_text == (tier == 3)


@pytest.mark.parametrize(("username", "category"), list(itertools.product(CLINICAL_USERS, CATEGORY_ITEMS)))
def test_a_users_own_organisations_data_is_shown_in_full_where_the_role_sees_the_category_at_all(
        framework: Framework, username: str, category: str) -> None:
    own = framework.users[username].organisation
    decision = decide(_request(framework, username), [_item(category, own)], framework)
    if framework.roles[framework.users[username].role].tier(category) == 0:  # never, whoever recorded it
        assert not decision.released and decision.withheld == {"tier": 1}
    else:
        assert [r.tier for r in decision.released] == [3]


@pytest.mark.parametrize(("basis", "expires_in", "permitted"), [
    ("explicit-consent", 1, True), ("implied-consent", 1, True), ("emergency", 1, True),
    (None, None, False), ("explicit-consent", -1, False), ("emergency", -1, False),
])
def test_direct_care_needs_a_current_basis(framework: Framework, basis: str | None, expires_in: int | None,
                                           permitted: bool) -> None:
    req = _request(framework, "dr.patel", basis)
    if basis and expires_in is not None:
        req = Request(**{**req.__dict__, "basis": ActiveBasis(basis, "r", NOW + timedelta(hours=expires_in))})
    decision = decide(req, [_item("summary")], framework)
    assert decision.permitted is permitted
    if not permitted:
        assert decision.rule_id == "deny-no-basis" and not decision.released


@pytest.mark.parametrize(("status", "actor_permitted", "item_released"), [
    ("signed", True, True), ("suspended", False, False), ("ended", False, False), ("draft", False, False),
])
def test_agreement_state_governs_both_users_and_data(framework: Framework, status: str, actor_permitted: bool,
                                                     item_released: bool) -> None:
    agreements = {code: org.agreement for code, org in framework.organisations.items()}
    changed = {**agreements, "RXR": agreements["RXR"].model_copy(update={"status": status})}
    as_viewer = decide(_request(framework, "dr.oconnor", agreements=changed), [_item("summary", "P81001")], framework)
    assert as_viewer.permitted is actor_permitted
    if not actor_permitted:
        assert as_viewer.rule_id == "deny-actor-agreement"
    as_source = decide(_request(framework, "dr.patel", agreements=changed), [_item("summary", "RXR")], framework)
    assert bool(as_source.released) is item_released
    if not item_released:
        assert as_source.withheld == {"source-agreement": 1}


def test_an_agreement_outside_its_dates_is_not_in_force(framework: Framework) -> None:
    agreements = {code: org.agreement for code, org in framework.organisations.items()}
    expired = {**agreements, "RXR": agreements["RXR"].model_copy(update={"ends": NOW.date() - timedelta(days=1)})}
    decision = decide(_request(framework, "dr.patel", agreements=expired), [_item("summary")], framework)
    assert decision.withheld == {"source-agreement": 1}


@pytest.mark.parametrize(("choices", "expected"), [
    (Choices(), "released"),
    (Choices(object_all=True), "objection-all"),
    (Choices(object_orgs=frozenset({"RXR"})), "objection-org"),
    (Choices(object_orgs=frozenset({"NHR"})), "released"),
    (Choices(opt_out_secondary=True), "released"),  # the national data opt-out never touches direct care
])
def test_patient_choices_narrow_what_is_shared(framework: Framework, choices: Choices, expected: str) -> None:
    decision = decide(_request(framework, "dr.patel", choices=choices), [_item("summary")], framework)
    if expected == "released":
        assert len(decision.released) == 1
    else:
        assert decision.withheld == {expected: 1}


def test_objecting_to_an_organisation_locks_its_users_out_of_the_record(framework: Framework) -> None:
    decision = decide(_request(framework, "dr.oconnor", choices=Choices(object_orgs=frozenset({"RXR"}))),
                      [_item("summary", "P81001")], framework)
    assert not decision.permitted and decision.rule_id == "deny-objection-org"


def test_an_objection_to_all_sharing_leaves_the_users_own_organisations_data(framework: Framework) -> None:
    decision = decide(_request(framework, "dr.patel", choices=Choices(object_all=True)),
                      [_item("summary", "P81001"), _item("summary", "RXR")], framework)
    assert [r.item.source_org for r in decision.released] == ["P81001"]


@pytest.mark.parametrize("label", ["http://terminology.hl7.org/CodeSystem/v3-ActCode|THIRDPARTY",
                                   "http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R",
                                   "http://terminology.hl7.org/CodeSystem/v3-Confidentiality|V"])
def test_third_party_and_restricted_items_are_always_withheld_from_other_organisations(framework: Framework,
                                                                                       label: str) -> None:
    item = _item("social_care", "LRC", frozenset({label}))
    gp = decide(_request(framework, "dr.patel"), [item], framework)
    assert not gp.released and sum(gp.withheld.values()) == 1
    council = decide(_request(framework, "sw.brown"), [item], framework)
    assert len(council.released) == 1


@pytest.mark.parametrize("username", ["ig.morgan", "analyst.chen"])
def test_roles_without_direct_care_are_denied_clinical_reads(framework: Framework, username: str) -> None:
    decision = decide(_request(framework, username), [_item("summary")], framework)
    assert not decision.permitted and decision.rule_id == "deny-purpose"


def test_an_unknown_actor_is_denied_by_default(framework: Framework) -> None:
    req = _request(framework, "dr.patel")
    req = Request(**{**req.__dict__, "actor": Actor("mallory", None, "P81001")})
    decision = decide(req, [_item("summary")], framework)
    assert not decision.permitted and decision.rule_id == "deny-unknown-actor"


def test_an_unknown_purpose_is_denied(framework: Framework) -> None:
    decision = decide(_request(framework, "dr.patel", purpose="marketing"), [_item("summary")], framework)
    assert not decision.permitted and decision.rule_id == "deny-purpose"


@settings(deadline=None)  # it loads the framework each example; time is measured in benchmarks/, not here
@given(username=st.sampled_from(CLINICAL_USERS), categories=st.lists(st.sampled_from(list(CATEGORY_ITEMS)), max_size=6),
       basis=st.sampled_from([None, "explicit-consent", "implied-consent", "emergency"]))
def test_decisions_are_deterministic_and_account_for_every_item(username: str, categories: list[str],
                                                                basis: str | None) -> None:
    from tests.conftest import FRAMEWORK_PATH

    from sharedcare.governance.framework import load_framework

    fw = load_framework(FRAMEWORK_PATH)
    items = [_item(c) for c in categories]
    first, second = decide(_request(fw, username, basis), items, fw), decide(_request(fw, username, basis), items, fw)
    assert (first.outcome, first.rule_id, first.withheld, len(first.released)) == \
        (second.outcome, second.rule_id, second.withheld, len(second.released))
    if first.permitted:
        assert len(first.released) + sum(first.withheld.values()) == len(items)
    else:
        assert not first.released


def test_items_alike_are_decided_alike_and_kept_in_order_even_when_their_groups_are_separate_objects(
        framework: Framework) -> None:
    """The decision groups items by `Item.alike`, one shared object per combination; a combination made
    twice (the shared objects' look-up forgot it) is a second group with the same verdict, not a lost item."""
    from sharedcare.governance.policy import _alike

    first = [_item("summary"), _item("mental_health"), _item("summary", security=frozenset({THIRD_PARTY}))]
    assert all(item.alike for item in first)  # made now, before the look-up forgets them
    _alike.cache_clear()
    second = [_item("summary"), _item("mental_health"), _item("summary", source="P81001")]
    assert first[0].alike is not second[0].alike
    items = [first[0], second[0], first[1], second[1], first[2], second[2]]
    decision = decide(_request(framework, "dr.patel"), items, framework)
    one_by_one = [decide(_request(framework, "dr.patel"), [item], framework) for item in items]
    assert [r.item for r in decision.released] == [item for item, d in zip(items, one_by_one, strict=True)
                                                    if d.released]
    assert [r.tier for r in decision.released] == [d.released[0].tier for d in one_by_one if d.released]
    assert [decision.tier_of(item) for item in items] == [d.released[0].tier if d.released else None
                                                          for d in one_by_one]
    assert decision.withheld == sum((d.withheld for d in one_by_one), Counter())
    assert decision.withheld and {r.tier for r in decision.released} == {2, 3}  # both verdicts are exercised
    assert decision.tier_of(_item("summary", source="RYA")) is None  # not decided here: not released
