"""A patient's Consent provisions against the decision point, as tables (TRUST CO1): a deny provision
withholds what it matches (by the reading organisation, purpose, resource type, category, period, or the
organisation holding the data); a permit nested in it re-permits its matching subset, never above what
the framework itself allows (CO2). `decide` is pure, so these run without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tests.conftest import FRAMEWORK_PATH

from sharedcare.governance.consent import Choices, Provision, combined_choices
from sharedcare.governance.consent_fhir import ConsentRefused, choices_from_consent
from sharedcare.governance.explain import provision_in_words
from sharedcare.governance.framework import load_framework, parse_framework
from sharedcare.governance.policy import ActiveBasis, Actor, Item, Request, decide, decide_secondary

FW = load_framework(FRAMEWORK_PATH)
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)
THIRD_PARTY = "http://terminology.hl7.org/CodeSystem/v3-ActCode|THIRDPARTY"

# (id, resource type, source organisation, category)
RECORD = [
    ("gp-cond", "Condition", "P81001", "summary"),
    ("gp-med", "MedicationStatement", "P81001", "summary"),
    ("gp-mh", "Condition", "P81001", "mental_health"),
    ("ryc-plan", "CarePlan", "RYC", "community"),
    ("rxr-doc", "DocumentReference", "RXR", "hospital_detail"),
    ("rxm-cond", "Condition", "RXM", "mental_health"),
]
ITEMS = [Item({"resourceType": t, "id": i}, t, org, category) for i, t, org, category in RECORD]
EVERYTHING = {i for i, *_ in RECORD}


def _f(*values: str) -> frozenset[str]:
    return frozenset(values)


def _request(username: str, provisions: tuple[Provision, ...] = (), basis: str = "explicit-consent",
             purpose: str = "direct-care", now: datetime = NOW, choices: Choices | None = None,
             agreements: dict | None = None) -> Request:
    user = FW.users[username]
    return Request(Actor(username, FW.roles[user.role], user.organisation), purpose, "p1",
                   ActiveBasis(basis, "a reason given here", now + timedelta(hours=1)),
                   agreements or {code: org.agreement for code, org in FW.organisations.items()},
                   choices or Choices(provisions=provisions), now)


def released(username: str, *provisions: Provision, **options: object) -> set[str]:
    decision = decide(_request(username, provisions, **options), ITEMS, FW)  # type: ignore[arg-type]
    assert decision.permitted, decision.reason
    return {r.item.resource["id"] for r in decision.released}


# What each reader sees with no choice made: acute and mental health clinicians see mental health at tier 2.
def test_without_a_choice_every_reader_sees_the_whole_record_the_framework_allows() -> None:
    assert released("dr.oconnor") == EVERYTHING
    assert released("dr.singh") == EVERYTHING


HIDE_MH_EXCEPT_RXM = Provision("deny", codes=_f("mental_health"),
                               provisions=(Provision("permit", recipients=_f("RXM")),))
HIDE_MH_EXCEPT_RXM_TO_GP = Provision("deny", codes=_f("mental_health"), provisions=(
    Provision("permit", recipients=_f("P81001"), sources=_f("RXM")),))
EXCEPT_EMERGENCY = Provision("deny", purposes=_f("TREAT"), provisions=(Provision("permit", purposes=_f("ETREAT")),))

CASES = [
    # actor (the reading organisation): the hospital sees only its own; another organisation is unaffected
    ("actor", Provision("deny", recipients=_f("RXR")), "dr.oconnor", {}, {"rxr-doc"}),
    ("actor, other organisation", Provision("deny", recipients=_f("RXR")), "dr.singh", {}, EVERYTHING),
    # actor (the organisation holding the data): the community trust's care plan goes from every reader
    ("custodian", Provision("deny", sources=_f("RYC")), "dr.oconnor", {}, EVERYTHING - {"ryc-plan"}),
    # purpose: object to all sharing except in an emergency
    ("purpose", EXCEPT_EMERGENCY, "dr.oconnor", {}, {"rxr-doc"}),
    ("purpose, nested exception", EXCEPT_EMERGENCY, "dr.oconnor", {"basis": "emergency"}, EVERYTHING),
    ("purpose, emergency only", Provision("deny", purposes=_f("ETREAT")), "dr.oconnor", {"basis": "emergency"},
     {"rxr-doc"}),
    ("purpose, emergency only, ordinary read", Provision("deny", purposes=_f("ETREAT")), "dr.oconnor", {},
     EVERYTHING),
    # class: medicines lists only
    ("class", Provision("deny", classes=_f("MedicationStatement")), "dr.oconnor", {}, EVERYTHING - {"gp-med"}),
    # code: the framework's category; nested: hide my mental health from everyone except the mental health trust
    ("code", Provision("deny", codes=_f("mental_health")), "dr.oconnor", {}, EVERYTHING - {"gp-mh", "rxm-cond"}),
    ("code, nested exception excepts its reader", HIDE_MH_EXCEPT_RXM, "dr.singh", {}, EVERYTHING),
    ("code, nested exception, any other reader", HIDE_MH_EXCEPT_RXM, "dr.oconnor", {},
     EVERYTHING - {"gp-mh", "rxm-cond"}),
    ("code, nested exception, other data untouched", HIDE_MH_EXCEPT_RXM, "dr.patel", {},
     EVERYTHING - {"rxm-cond"}),  # the GP's own mental health entry stays with the GP
    # period: in force; ended yesterday (no longer applies); not yet begun
    ("period", Provision("deny", start=NOW - DAY, end=NOW + DAY), "dr.oconnor", {}, {"rxr-doc"}),
    ("period, expired", Provision("deny", start=NOW - 9 * DAY, end=NOW - DAY), "dr.oconnor", {}, EVERYTHING),
    ("period, not begun", Provision("deny", start=NOW + DAY), "dr.oconnor", {}, EVERYTHING),
    ("period, open-ended", Provision("deny", start=NOW - DAY), "dr.oconnor", {}, {"rxr-doc"}),
    # a reader and a holder: the provision controls the data that holder holds when that reader reads it
    ("actors", Provision("deny", recipients=_f("RXR"), sources=_f("P81001")), "dr.oconnor", {},
     EVERYTHING - {"gp-cond", "gp-med", "gp-mh"}),
    ("actors, another reader", Provision("deny", recipients=_f("RXR"), sources=_f("P81001")), "dr.singh", {},
     EVERYTHING),
    # hide my mental health from everyone, except the mental health trust's records to my GP: not to the hospital
    ("actors in an exception, another reader", HIDE_MH_EXCEPT_RXM_TO_GP, "dr.oconnor", {},
     EVERYTHING - {"gp-mh", "rxm-cond"}),
    ("actors in an exception, the reader named", HIDE_MH_EXCEPT_RXM_TO_GP, "dr.patel", {}, EVERYTHING),
    # every other element given must match: mental health Conditions, for the hospital only
    ("class and code", Provision("deny", classes=_f("Condition"), codes=_f("mental_health"),
                                 recipients=_f("RXR")), "dr.oconnor", {}, EVERYTHING - {"gp-mh", "rxm-cond"}),
    # a permit in a deny, and a deny in that permit: hide everything except the GP's, except its medicines
    ("nested twice", Provision("deny", provisions=(Provision("permit", sources=_f("P81001"), provisions=(
        Provision("deny", classes=_f("MedicationStatement")),)),)), "dr.oconnor", {}, {"rxr-doc", "gp-cond", "gp-mh"}),
    # two exceptions that both match, one re-permitting and one denying again: the deny wins
    ("exceptions disagree", Provision("deny", provisions=(Provision("permit", recipients=_f("RXR")),
                                                          Provision("deny", codes=_f("mental_health")))),
     "dr.oconnor", {}, EVERYTHING - {"gp-mh", "rxm-cond"}),
    # an exception whose period has ended no longer re-permits
    ("nested exception expired", Provision("deny", provisions=(Provision("permit", end=NOW - DAY),)), "dr.oconnor",
     {}, {"rxr-doc"}),
]


@pytest.mark.parametrize(("what", "provision", "username", "options", "expected"), CASES,
                         ids=[case[0] for case in CASES])
def test_a_deny_provision_withholds_what_it_matches_unless_a_nested_permit_re_permits_it(
        what: str, provision: Provision, username: str, options: dict, expected: set[str]) -> None:
    assert released(username, provision, **options) == expected


def test_what_a_provision_withholds_is_counted_by_its_rule_and_gives_no_headline() -> None:
    decision = decide(_request("dr.oconnor", (Provision("deny", codes=_f("mental_health")),)), ITEMS, FW)
    assert decision.withheld["consent-deny"] == 2
    assert not decision.headlines  # not even that a mental health service is involved


def test_among_a_patients_provisions_a_deny_wins() -> None:
    assert released("dr.singh", HIDE_MH_EXCEPT_RXM, Provision("deny", recipients=_f("RXM"))) == {"rxm-cond"}


def test_a_nested_permit_never_re_permits_above_the_framework() -> None:
    everything = Provision("deny", provisions=(Provision("permit"),))  # a deny whose exception is everything
    # the role's tier: a district nurse sees mental health as a headline only, and never in full
    user = FW.users["dn.williams"]
    decision = decide(_request("dn.williams", (everything,)), ITEMS, FW)
    assert FW.roles[user.role].tier("mental_health") == 1
    assert not {"gp-mh", "rxm-cond"} & {r.item.resource["id"] for r in decision.released}
    # an objection to the organisation, a suspended agreement, a third-party rule
    assert released("dr.oconnor", everything, choices=Choices(object_orgs=_f("RYC"), provisions=(everything,))) \
        == EVERYTHING - {"ryc-plan"}
    agreements = {code: org.agreement for code, org in FW.organisations.items()}
    agreements["RXM"] = agreements["RXM"].model_copy(update={"status": "suspended"})
    assert released("dr.oconnor", everything, agreements=agreements) == EVERYTHING - {"rxm-cond"}
    labelled = [*ITEMS, Item({"resourceType": "Condition", "id": "tp"}, "Condition", "P81001", "summary",
                             frozenset({THIRD_PARTY}))]
    decision = decide(_request("dr.oconnor", (everything,)), labelled, FW)
    assert "tp" not in {r.item.resource["id"] for r in decision.released}


def test_the_patient_always_sees_their_own_record_whatever_they_chose() -> None:
    citizen = Actor("patient:p1", FW.roles["patient"], "", person_id="p1")
    request = Request(citizen, "self-access", "p1", None, {c: o.agreement for c, o in FW.organisations.items()},
                      Choices(provisions=(Provision("deny"),)), NOW)
    assert {r.item.resource["id"] for r in decide(request, ITEMS, FW).released} == EVERYTHING


def test_secondary_use_honours_a_research_deny_without_an_own_organisation_exception() -> None:
    research = Provision("deny", purposes=_f("HRESCH"), classes=_f("MedicationStatement"))
    kept = decide_secondary(_request("analyst.chen", (research,), purpose="secondary-use"), ITEMS, FW)
    assert kept.permitted
    assert "gp-med" not in {r.item.resource["id"] for r in kept.released}
    assert kept.withheld["consent-deny"] == 1
    treatment_only = decide_secondary(_request("analyst.chen", (EXCEPT_EMERGENCY,), purpose="secondary-use"),
                                      ITEMS, FW)
    assert "gp-med" in {r.item.resource["id"] for r in treatment_only.released}


@pytest.mark.parametrize("purpose", ["secondary-use", "research"])
def test_a_research_deny_holds_for_every_secondary_purpose_whatever_its_name(purpose: str) -> None:
    """A deployment that adds a second non-identifiable purpose ('research') exported, under it, what the
    patient's Consent denied for research: only a purpose named 'secondary-use' acted for HOPERAT/HRESCH."""
    text = FRAMEWORK_PATH.read_text().replace(
        "  secondary-use: {identifiable: false, needs_basis: false, smallest_group: 8}\n",
        "  secondary-use: {identifiable: false, needs_basis: false, smallest_group: 8}\n"
        "  research: {identifiable: false, needs_basis: false, smallest_group: 8}\n").replace(
        "    purposes: [secondary-use]\n", "    purposes: [secondary-use, research]\n")
    fw = parse_framework(text)
    assert fw.purposes["research"].identifiable is False and "research" in fw.roles["analyst"].purposes
    user = fw.users["analyst.chen"]
    request = Request(Actor("analyst.chen", fw.roles[user.role], user.organisation), purpose, "p1", None,
                      {code: org.agreement for code, org in fw.organisations.items()},
                      Choices(provisions=(Provision("deny", purposes=_f("HRESCH")),)), NOW)
    decision = decide_secondary(request, ITEMS, fw)
    assert decision.permitted and decision.released == []


@pytest.mark.parametrize(("excepted", "released"), [("HOPERAT", False), ("HRESCH", False), (None, True)])
def test_deny_all_except_for_planning_keeps_the_person_out_of_an_extract_that_may_serve_research(
        excepted: str | None, released: bool) -> None:
    """An extract may serve planning and research alike: "deny all, except for planning" (or except for research)
    must keep the person out of it. Asked once for both purposes, the exception matched because the purposes
    merely overlapped, and everything was released (review of 2026-12-07, F3). An exception for both (None:
    one permit naming HOPERAT and another HRESCH) releases as the framework does."""
    exceptions = ((Provision("permit", purposes=_f(excepted)),) if excepted else
                  (Provision("permit", purposes=_f("HOPERAT")), Provision("permit", purposes=_f("HRESCH"))))
    decision = decide_secondary(_request("analyst.chen", (Provision("deny", provisions=exceptions),),
                                         purpose="secondary-use"), ITEMS, FW)
    assert decision.permitted
    framework_only = decide_secondary(_request("analyst.chen", purpose="secondary-use"), ITEMS, FW)
    assert framework_only.released  # the analyst's extract would hold some of this record
    if released:
        assert decision.released == framework_only.released
    else:
        assert decision.released == [] and decision.withheld["consent-deny"] >= len(framework_only.released)


def test_a_provision_held_against_two_of_a_persons_nhs_numbers_counts_once() -> None:
    held = [HIDE_MH_EXCEPT_RXM.to_json()]
    combined = combined_choices([(False, [], False, held), (False, [], False, held)])
    assert combined.provisions == (HIDE_MH_EXCEPT_RXM,)  # the JSON held reads back as the provision it was


def _sent(provision: dict) -> dict:
    return {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}},
            "policyRule": {"text": "the framework"}, "provision": {"type": "permit", "provision": [provision]}}


def test_a_sent_period_of_whole_days_or_months_covers_them_to_their_last_moment() -> None:
    (held,) = choices_from_consent(_sent({"type": "deny", "period": {"start": "2026-11-01", "end": "2026-11-22"}}),
                                   "9434765919", FW).provisions
    assert held.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert held.end is not None and held.end.date() == NOW.date() and held.end > NOW  # all of the 22nd
    (month,) = choices_from_consent(_sent({"type": "deny", "period": {"end": "2026-02"}}), "9434765919",
                                    FW).provisions
    assert month.end is not None and (month.end.month, month.end.day) == (2, 28)
    with pytest.raises(ConsentRefused) as refused:
        choices_from_consent(_sent({"type": "deny", "period": {"start": "2026-12-01", "end": "2026-11-01"}}),
                             "9434765919", FW)
    assert refused.value.where == "Consent.provision.provision[0].period"


def test_an_objection_to_one_organisation_with_exceptions_is_refused_not_read_narrowly() -> None:
    both = [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                  "code": role}]},
             "reference": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RXR"}}}
            for role in ("IRCP", "CST")]
    plain = choices_from_consent(_sent({"type": "deny", "actor": both}), "9434765919", FW)
    assert plain.object_orgs == {"RXR"}
    with pytest.raises(ConsentRefused) as refused:
        choices_from_consent(_sent({"type": "deny", "actor": both, "provision": [
            {"type": "permit", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                            "code": "ETREAT"}]}]}), "9434765919", FW)
    assert refused.value.where == "Consent.provision.provision[0]"


def test_an_objection_to_one_organisation_with_anything_else_is_refused_not_kept_withholding_nothing() -> None:
    both = [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                  "code": role}]},
             "reference": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code",
                                          "value": "P81001"}}}
            for role in ("IRCP", "CST")]
    mental_health = [{"coding": [{"system": "https://sharedcare.example/fhir/CodeSystem/data-category",
                                  "code": "mental_health"}]}]
    for extra, where in (({"period": {"end": "2027-01-01"}}, "Consent.provision.provision[0]"),
                         ({"code": mental_health}, "Consent.provision.provision[0]"),
                         ({"class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]},
                          "Consent.provision.provision[0]")):
        with pytest.raises(ConsentRefused) as refused:
            choices_from_consent(_sent({"type": "deny", "actor": both, **extra}), "9434765919", FW)
        assert refused.value.where == where
    with pytest.raises(ConsentRefused) as nested:  # an exception naming one organisation both ways is as empty
        choices_from_consent(_sent({"type": "deny", "code": mental_health,
                                    "provision": [{"type": "permit", "actor": both}]}), "9434765919", FW)
    assert nested.value.where == "Consent.provision.provision[0].provision[0]"


def test_a_sent_date_is_a_uk_date_and_is_said_as_one() -> None:
    (summer,) = choices_from_consent(_sent({"type": "deny", "period": {"start": "2026-07-01", "end": "2026-07-31"}}),
                                     "9434765919", FW).provisions
    assert summer.start == datetime(2026, 6, 30, 23, 0, tzinfo=UTC)  # midnight in London, in summer time
    assert summer.end is not None and summer.end < datetime(2026, 7, 31, 23, 0, tzinfo=UTC) <= summer.end + DAY
    words = provision_in_words(summer, FW)
    assert "from 01 July 2026" in words and "until 31 July 2026" in words
