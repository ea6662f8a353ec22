"""The framework file: a partner's typo is reported with its line and key, never half-loaded."""

from __future__ import annotations

import pytest
from tests.conftest import FRAMEWORK_PATH

from sharedcare.errors import FrameworkError
from sharedcare.governance.framework import parse_framework

TEXT = FRAMEWORK_PATH.read_text(encoding="utf-8")


def _problems(text: str) -> list[str]:
    with pytest.raises(FrameworkError) as caught:
        parse_framework(text, "framework.yaml")
    return caught.value.problems


def _line_of(fragment: str, text: str = TEXT) -> int:
    return text[: text.index(fragment)].count("\n") + 1


def test_the_example_framework_is_valid() -> None:
    fw = parse_framework(TEXT)
    assert fw.roles["district_nurse"].tier("community") == 3
    assert fw.roles["district_nurse"].tier("hospital_detail") == 2  # the iLINKS example
    assert fw.roles["admin_staff"].tier("demographics") == 1


def test_an_unknown_role_is_named_with_its_line() -> None:
    text = TEXT.replace("role: paramedic,", "role: paramedik,")
    (problem,) = _problems(text)
    assert problem.startswith(f"line {_line_of('role: paramedik', text)}, users.para.evans.role")
    assert "unknown role 'paramedik'" in problem


def test_a_username_the_audit_could_not_name_as_written_is_refused_with_its_line() -> None:
    """The audit escapes a backslash (`audit._clean`): a user `RYA\\para.evans` would be audited under another
    name than the framework's, and the IG search and a citizen's "who looked" would not find them."""
    text = TEXT.replace("  para.evans: {", "  RYA\\para.evans: {")
    (problem,) = _problems(text)
    assert problem.startswith(f"line {_line_of('RYA' + chr(92) + 'para.evans', text)}, users.RYA")
    assert "without a backslash" in problem


def test_a_tier_out_of_range_is_named_with_its_line() -> None:
    text = TEXT.replace("sexual_health: 1, alerts: 2}\n  practice_nurse",
                        "sexual_health: 4, alerts: 2}\n  practice_nurse", 1)
    (problem,) = _problems(text)
    assert "roles.gp.tiers.sexual_health" in problem and "out of range" in problem


def test_a_missing_category_is_reported() -> None:
    nurse = "mental_health: 1, social_care: 1, safeguarding: 1, sexual_health: 1, alerts: 2}\n  acute_clinician"
    text = TEXT.replace(nurse, nurse.replace("mental_health: 1, ", ""), 1)
    problems = _problems(text)
    assert any("roles.practice_nurse.tiers" in p and "'mental_health' missing" in p for p in problems)


def test_a_wrong_type_is_named_with_its_key() -> None:
    text = TEXT.replace("min_reason_chars: 10", "min_reason_chars: ten")
    (problem,) = _problems(text)
    assert problem.startswith(f"line {_line_of('min_reason_chars')}, min_reason_chars")


def test_broken_yaml_names_the_line() -> None:
    text = TEXT.replace("version: \"2026.12-6\"", "version: [unclosed")
    (problem,) = _problems(text)
    assert problem.startswith("line ")


def test_explain_says_in_words_what_a_district_nurse_sees() -> None:
    from sharedcare.governance.explain import role_rows, rules_in_words

    fw = parse_framework(TEXT)
    seen = {r.category: r.sees for r in role_rows(fw, "district_nurse")}
    assert seen["community"] == "everything, including letters and free-text notes"
    assert seen["hospital_detail"].startswith("a coded summary")
    assert seen["mental_health"].startswith("only that a service holds information")
    for tier in ("hospital_detail", "mental_health"):  # a category she sees at all: her trust's in full
        assert seen[tier].endswith("; in full what their own organisation recorded")
    assert seen["sexual_health"] == "nothing, not even what their own organisation recorded"
    rules = " ".join(rules_in_words(fw))
    assert "Staff see everything their own organisation recorded, but only in the kinds of information their " \
           "role may see at all" in rules and "always see their own organisation's information in full" not in rules
    assert "emergency" in rules and "lasts 4 hours" in rules and "information about other people" in rules
    assert "opens the records of more than 30 people, or whose searches find more than 30 people" in rules
    assert "not what a service typed rather than coded" in seen["hospital_detail"]
    assert "For safety, allergies recorded by a mental health, community or social care service are shown" in rules
    assert seen["alerts"].startswith("a coded summary")


def test_a_safety_critical_type_that_is_not_a_summary_type_is_refused_with_its_line() -> None:
    broken = TEXT.replace("safety_critical_types: [AllergyIntolerance]", "safety_critical_types: [Observation]")
    assert broken != TEXT
    with pytest.raises(FrameworkError) as refused:
        parse_framework(broken)
    assert "safety_critical_types" in str(refused.value) and "line " in str(refused.value)


def test_explain_leaves_out_roles_that_never_see_records() -> None:
    from sharedcare.governance.explain import role_rows

    assert {r.role for r in role_rows(parse_framework(TEXT))}.isdisjoint({"analyst", "ig_officer"})


def test_a_feed_certificate_not_written_as_a_certificate_subject_is_named_with_its_line() -> None:
    text = TEXT.replace('    phone: "01632 960100"\n', '    phone: "01632 960100"\n'
                        '    feed_certificates: ["CN=rxr-engine, O=Riverside"]\n', 1)
    (problem,) = _problems(text)
    assert problem.startswith(f"line {_line_of('    feed_certificates: [', text)}, organisations.RXR.feed_certificates")
    assert "RFC 4514" in problem
    good = parse_framework(text.replace("CN=rxr-engine, O=Riverside", "CN=rxr-engine,O=Riverside"))
    assert good.organisations["RXR"].feed_certificates == ["CN=rxr-engine,O=Riverside"]


def test_explaining_codes_of_a_category_without_any_is_named_with_its_line() -> None:
    text = TEXT.replace("  sexual_health: \"sexually", "  sexual_helth: \"sexually", 1)
    (problem,) = _problems(text)
    assert problem.startswith(f"line {_line_of('sexual_helth:', text)}, sensitive_codes_explain.sexual_helth")
    assert "has no sensitive codes to explain" in problem


def test_the_rules_say_in_plain_words_which_conditions_are_sensitive_whoever_recorded_them() -> None:
    from sharedcare.governance.explain import rules_in_words

    (rule,) = [line for line in rules_in_words(parse_framework(TEXT)) if "whoever recorded them" in line]
    assert "a GP or a hospital" in rule
    assert "mental health: depression" in rule and "self-harm" in rule and "(not dementia)" in rule


def test_a_smallest_group_under_two_is_named_with_its_line_and_key() -> None:
    text = TEXT.replace("needs_basis: false, smallest_group: 8}", "needs_basis: false, smallest_group: 1}")
    (problem,) = _problems(text)
    assert problem.startswith(f"line {_line_of('smallest_group: 1', text)}, purposes.secondary-use.smallest_group")
    assert "greater than or equal to 2" in problem


def test_a_smallest_group_on_an_identifiable_purpose_is_refused_with_its_line() -> None:
    text = TEXT.replace("direct-care: {identifiable: true, needs_basis: true}",
                        "direct-care: {identifiable: true, needs_basis: true, smallest_group: 5}")
    (problem,) = _problems(text)
    assert problem.startswith(f"line {_line_of('direct-care: {', text)}, purposes.direct-care.smallest_group")
    assert "not identifiable" in problem


def test_an_extract_purpose_without_a_smallest_group_gets_eight() -> None:
    text = TEXT.replace("needs_basis: false, smallest_group: 8}", "needs_basis: false}")
    assert parse_framework(text).purposes["secondary-use"].k == 8


def test_the_rules_say_the_smallest_group_an_extract_may_publish() -> None:
    from sharedcare.governance.explain import rules_in_words

    text = TEXT.replace("needs_basis: false, smallest_group: 8}", "needs_basis: false, smallest_group: 11}")
    assert any("shared by fewer than 11 people" in line for line in rules_in_words(parse_framework(text)))


def test_a_local_service_code_mapped_to_nothing_known_is_named_with_its_line_and_key() -> None:
    """A local PV1-10 code must mean a national code (system|code) or a sensitive category; one mapped to a
    typo, or to an ordinary category (which would make a visit less protected than its type), is refused."""
    text = TEXT.replace("SHC: sexual_health", "SHC: sexual_helth").replace(
        "SUR: \"https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary-treatment-function|100\"", "SUR: encounters")
    problems = _problems(text)
    assert len(problems) == 2, problems
    key = "organisations.RXR.service_codes.pas"
    assert problems[0].startswith(f"line {_line_of('SUR: encounters', text)}, {key}.SUR")
    assert "'encounters' is not a sensitive category" in problems[0]
    assert problems[1].startswith(f"line {_line_of('SHC: sexual_helth', text)}, {key}.SHC")
    assert "'sexual_helth' is neither a sensitive category nor a national code" in problems[1]


def test_local_service_codes_of_a_system_that_is_not_hl7v2_are_named_with_their_line() -> None:
    text = TEXT.replace("    service_codes:\n      pas:", "    service_codes:\n      epr:")
    (problem,) = _problems(text)
    assert problem.startswith(f"line {_line_of('      epr:', text)}, organisations.RXR.service_codes.epr")
    assert "'epr' is not an HL7 v2 system of RXR" in problem


def test_the_rules_say_in_plain_words_that_a_hospital_s_own_clinic_codes_count_and_a_service_may_be_unnamed(
        ) -> None:
    from sharedcare.governance.explain import rules_in_words

    rules = " ".join(rules_in_words(parse_framework(TEXT)))
    assert "Riverside University Hospitals NHS Trust list what their own codes mean" in rules
    assert 'names only "a specialist service"' in rules


def test_write_permission_for_a_role_that_gives_no_direct_care_is_named_with_its_line() -> None:
    """`clinical:record:write` (who may write to the record) is for staff giving direct care: an analyst's or a
    patient's role given it is refused, naming the role's permissions and their line."""
    text = TEXT.replace("    purposes: [secondary-use]\n",
                        "    purposes: [secondary-use]\n    permissions: [clinical:record:write]\n")
    (problem,) = _problems(text)
    assert problem.startswith(f"line {_line_of('permissions: [clinical:record:write]', text)}, "
                              "roles.analyst.permissions")
    assert "'clinical:record:write' is for staff roles giving direct care" in problem
    fw = parse_framework(TEXT)
    assert {name for name, role in fw.roles.items() if role.writes} == {
        "gp", "practice_nurse", "acute_clinician", "district_nurse", "mental_health_clinician", "paramedic"}
