"""The HL7 mapper's output is validated by `walked_problems`: a walk that vouches for a resource only when
the fhir.resources model would accept it, else the model itself. It must be exactly as strict as the
model: a message the model would refuse is refused with the same reason at the same segment, and a
message it would accept is staged the same. Checked on real messages with hostile values put where the
mapper copies them into FHIR (names, codes, units, free text, times, numbers), and value by value on
mapped resources.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.ingest.test_fuzz import ADT, ORU, _encode, _mutate
from tests.walk_check import same_as_the_model

from sharedcare.fhir.validate import surely_valid, validation_problems
from sharedcare.governance.framework import Framework
from sharedcare.ingest import hl7v2
from sharedcare.ingest.messages import MessageError, RawMessage

SETTINGS = settings(max_examples=300, deadline=timedelta(seconds=5), derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Real-world shapes beside test_fuzz's two: repeated names, phones and identifiers, escapes, NK1 and PD1,
# a discharge, and every OBX value type the mapper reads (NM with a comparator, SN range, CE, DT, TX, FT).
A08 = ("MSH|^~\\&|PAS|RXR|SHAREDCARE|QRD|20261002101500||ADT^A08^ADT_A01|PAS0000002002|P|2.5|||AL|NE|GBR\r"
       "EVN|A08|20261002101500\r"
       "PID|1||H0112648^^^RXR^MR~9539736528^^^NHS^NH||OKAFOR^Emeka^Chukwudi^^Mr^^L~OKAFOR^Emma^^^^^N||19450911|M|||"
       "14 Mill Lane^Flat 2^Riverside^Wessex^RV3 7QT^GBR^H~1 Work St^^Town^^TW1 1AA^GBR^B||"
       "01632 960457^PRN^PH~^NET^Internet^emeka@example.org|^WPN^PH^^^01632^960999||||||||||||||"
       "20261001\r"
       "PD1|||Riverside Medical Centre^^P81001\r"
       "NK1|1|ADEYEMI^Ngozi^^^Mrs|CHD^Daughter^HL70063|2 Oak Rd^^Riverside^^RV3 7QA|07700 900461^PRN^CP||"
       "N^Next-of-Kin^HL70131\r"
       "PV1|1|I|Ward 3 (Respiratory)^Bay 2^Bed 4^RXR||||C123^KENT^Laura^^^Dr|||MED|||||||||V000000102|||||||||||||||"
       "||||||||||20260928084000|20261002100000\r")
ORU_TYPES = ("MSH|^~\\&|LAB|RXR|SHAREDCARE|QRD|20260928114000||ORU^R01^ORU_R01|LAB0000001002|P|2.4\r"
             "PID|1||H0112648^^^RXR^MR||OKAFOR^Emeka||19450911|M\r"
             "PV1|1|I|Ward 3^^^RXR||||||||||||||||V000000101\r"
             "OBR|1|P1|F1|FBC^Full blood count^L|||20260928094000||||||||||||||20260928114000|||C\r"
             "OBX|1|NM|26464-8^WBC^LN||<0.5|10*9/L^10*9/L^UCUM|4.0-11.0|LL|||F|||20260928093000+0100\r"
             "OBX|2|SN|1000^Ratio^L||^1.2^-^3.4|mmol/L|>1|A|||P\r"
             "OBX|3|CE|2000^Organism^L||3092008^Staphylococcus aureus^SCT||||||F\r"
             "OBX|4|DT|3000^Date^L||20260927||||||F\r"
             "OBX|5|TX|4000^Comment^L||Line one~Line two \\T\\ more||||||F\r"
             "NTE|1||Repeat \\.br\\ if unwell\r"
             "OBX|6|FT|5000^Report^L||\\H\\Bold\\N\\ text||||||W\r")
SEEDS = [ADT, ORU, A08, ORU_TYPES]

# Values the FHIR primitives refuse, or only just accept: blank and whitespace-only strings, control
# characters, leading or trailing spaces (a code allows none), Unicode spaces, markup, impossible dates,
# numbers beyond a decimal, HL7 escapes and nulls that unescape into such values.
HOSTILE = st.one_of(
    st.sampled_from([" ", "  ", "\t", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u00a0", "\u2028", "\u3000", "\x00",
                     " x", "x ", "a\x0bb", "a  b", "a\tb", "<script>alert(1)</script>", '""', "\\X0B\\", "\\X20\\",
                     "\\.br\\", "\\H\\\\N\\", "1e999", "9" * 400 + ".5", "-0", "0.0", "20260230", "2026022910",
                     "00000101", "18991231235960", "20261001120000+1500", "202610011200-0000", "", "x" * 300]),
    st.text(alphabet=st.sampled_from(list(" \t\x0b\x0c\x1c\x1d\x1e\x1f\x85\u00a0\u2028ab<>&")), max_size=5))


def _put_value(data: st.DataObject, message: str) -> str:
    """Put a hostile value into one component of one field of one segment (MSH's first fields kept)."""
    segments = message.rstrip("\r").split("\r")
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(segments) - 1))
        fields = segments[index].split("|")
        position = data.draw(st.integers(3 if index == 0 else 1, max(len(fields), 3 if index == 0 else 1)))
        fields += [""] * (position + 1 - len(fields))
        components = fields[position].split("^")
        spot = data.draw(st.integers(0, len(components)))
        components += [""] * (spot + 1 - len(components))
        components[spot] = data.draw(HOSTILE)
        fields[position] = "^".join(components)
        segments[index] = "|".join(fields)
    return "\r".join(segments)


def _outcome(raw: RawMessage, framework: Framework) -> tuple[Any, ...]:
    try:
        staged = hl7v2.stage_hl7(raw, framework)
    except MessageError as exc:
        return "refused", exc.message, exc.where
    return ("staged", staged.source_org, staged.source_system, staged.message_id, staged.patients, staged.merges,
            [(r.resource_type, r.source_id, r.server_id, r.content, r.recorded_at, r.patient_source_id)
             for r in staged.resources])


def _same_as_the_model(raw: RawMessage, framework: Framework) -> tuple[Any, ...]:
    """Stage with the fast path and with the model alone; both outcomes must be the same, and the walk
    must vouch for no resource the model refuses. Returns the outcome."""
    return same_as_the_model(lambda: _outcome(raw, framework))[0]


@SETTINGS
@given(data=st.data(), seed=st.sampled_from(SEEDS))
@example(data=None, seed=ADT.replace("^STENSON^", "^\x0b^"))  # the attender's display blank: ele-1
@example(data=None, seed=ORU.replace("mg/L^mg/L^UCUM", "mg/L^\x0b^UCUM"))  # a unit of a vertical tab
@example(data=None, seed=ORU.replace("1001371000000100^", "10013 ^"))  # a code with a trailing space
def test_hostile_values_are_refused_exactly_as_the_model_refuses_them(data: st.DataObject | None, seed: str,
                                                                      framework: Framework) -> None:
    text = _put_value(data, seed) if data is not None else seed
    _same_as_the_model(RawMessage("feeds/RXR/feed.hl7", "message 1", _encode(text), "hl7v2"), framework)


@SETTINGS
@given(data=st.data(), seed=st.sampled_from(SEEDS))
def test_mutated_messages_are_staged_or_refused_exactly_as_with_the_model(data: st.DataObject, seed: str,
                                                                         framework: Framework) -> None:
    raw = RawMessage("feeds/RXR/feed.hl7", "message 1", _encode(_mutate(data, seed)), "hl7v2")
    _same_as_the_model(raw, framework)


@pytest.mark.parametrize(("seed", "broken", "reason"), [
    (ADT, ("^STENSON^Paul^^^Mr", "^\x0b"), "Encounter.participant[0].individual.display: String should match"),
    (ORU, ("mg/L^mg/L^UCUM", "mg/L^\x0b^UCUM"), ".unit: String should match"),
    (ORU, ("1001371000000100^Serum", "10013 ^Serum"), "Observation.code.coding[0].code: String should match"),
])
def test_the_examples_above_are_refused_by_the_model(seed: str, broken: tuple[str, str], reason: str,
                                                    framework: Framework) -> None:
    """The property tests compare with the model; these cases show the model does refuse such values, so
    the comparison is not only of messages both accept."""
    raw = RawMessage("feeds/RXR/feed.hl7", "message 1", _encode(seed.replace(*broken)), "hl7v2")
    outcome = _same_as_the_model(raw, framework)
    assert outcome[0] == "refused" and reason in outcome[1], outcome


@pytest.mark.parametrize("seed", SEEDS, ids=["ADT", "ORU", "A08", "ORU-types"])
def test_the_walk_vouches_for_every_resource_of_the_real_shapes(seed: str, framework: Framework) -> None:
    """Else the model is run for every message and the fast path saves nothing."""
    staged = hl7v2.stage_hl7(RawMessage("feeds/RXR/feed.hl7", "message 1", _encode(seed), "hl7v2"), framework)
    assert staged.resources and all(surely_valid(r.content) for r in staged.resources)


SCALARS: list[Any] = [" ", "\x0b", "\x1c", "\u00a0", " x", "x ", "a\x0bb", "", "a", "<b>x</b>", "2026-02-30",
                      "2026-13", "2026-09-28T08:40:00", "2026-09-28T08:40:60+00:00", "2026-09-28T24:00:00Z",
                      "0000-01-01", "2026", "x" * 300, "Patient/x y", 0, -1, 10**30, 1.5, float("inf"), float("nan"),
                      -0.0, True, False]
ODD: list[Any] = [None, [], {}, ["a"], {"a": 1}, [None]]


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, (*path, key))]
    if isinstance(node, list):
        return [leaf for i, value in enumerate(node) for leaf in _leaves(value, (*path, i))]
    return [path]


def _replaced(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("seed", SEEDS, ids=["ADT", "ORU", "A08", "ORU-types"])
def test_every_value_of_a_mapped_resource_is_judged_as_the_model_judges_it(seed: str, framework: Framework) -> None:
    """Each value of each mapped resource replaced in turn by each hostile scalar: the walk vouches exactly
    when the model accepts (same structure, so the walk has no reason to defer); replaced by null, lists
    or objects, it never vouches for what the model refuses."""
    staged = hl7v2.stage_hl7(RawMessage("feeds/RXR/feed.hl7", "message 1", _encode(seed), "hl7v2"), framework)
    refused = 0
    for resource in (r.content for r in staged.resources):
        for path in _leaves(resource):
            if path == ("resourceType",):
                continue
            for value in SCALARS:
                changed = _replaced(resource, path, value)
                accepted = validation_problems(changed) == []
                refused += not accepted
                assert surely_valid(changed) == accepted, (path, value)
            for value in ODD:
                changed = _replaced(resource, path, value)
                assert not surely_valid(changed) or validation_problems(changed) == [], (path, value)
        for path in _elements(resource):  # a whole element emptied: what a stricter validator might refuse
            changed = _replaced(resource, path, {})
            assert not surely_valid(changed) or validation_problems(changed) == [], path
    assert refused > 100  # the hostile values do meet refusals


def _elements(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every element (object) below the resource itself."""
    found = [path] if isinstance(node, dict) and path else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return found + [p for key, value in children for p in _elements(value, (*path, key))]


@pytest.mark.parametrize("resource", [
    {"resourceType": "Observation", "status": "final"},  # code is required
    {"resourceType": "Encounter", "status": "planned", "class": {"code": "x"}, "location": [{"status": "active"}]},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "a",
     "valueBoolean": True},  # two types for value[x]
    {"resourceType": "Patient", "name": [{"family": "A", "surname": "B"}]},  # no such element
    {"resourceType": "patient"},
    {"resourceType": "Claim"},  # required elements missing
])
def test_the_walk_does_not_vouch_for_what_the_model_refuses(resource: dict[str, Any]) -> None:
    assert validation_problems(resource) and not surely_valid(resource)


@pytest.mark.parametrize("resource", [
    {"resourceType": "Patient", "resource_type": "Patient"},
    {"resourceType": "Patient", "contained": [{"resourceType": "Patient", "gender": "male"}]},
    {"resourceType": "Patient", "_gender": {"extension": []}},
    {"resourceType": "Patient", "name": []},
])
def test_what_the_walk_does_not_know_the_model_decides(resource: dict[str, Any]) -> None:
    """Shapes the mapper never makes (contained resources, a primitive's extension, empty lists): the
    walk defers, and the model accepts them."""
    assert not surely_valid(resource) and validation_problems(resource) == []


def test_the_verdicts_the_walk_keeps_stay_bounded_whatever_a_feed_sends() -> None:
    """Peak memory must not grow with the input: a feed of ever new names, or of long notes, keeps at most
    _CACHE_LIMIT short values per primitive type, and no long one."""
    from sharedcare.fhir import validate

    for number in range(validate._CACHE_LIMIT + 500):
        assert surely_valid({"resourceType": "Patient", "name": [{"family": f"Name{number}"}],
                             "address": [{"text": f"{number} " + "x" * 500}]})
    for number in range(500):  # huge numbers (an OBX-5 may carry 4,300 digits) and names beyond ASCII
        assert surely_valid({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                             "valueQuantity": {"value": 10**4000 + number}})
        assert surely_valid({"resourceType": "Patient", "name": [{"family": "\U0001f600" * 100 + str(number)}]})
    kept = [passed for p in validate._primitives.values() for passed in p.passed.values()]  # a set a Python type
    assert max(len(passed) for passed in kept) <= validate._CACHE_LIMIT
    assert not any(isinstance(v, str) and (len(v) > validate._CACHED_LENGTH or not v.isascii())
                   for passed in kept for v in passed)
    assert not any(type(v) is int and v.bit_length() > 64 for passed in kept for v in passed)


def test_under_another_fhir_core_the_walk_vouches_for_nothing_and_the_model_decides(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk mirrors the validators of the fhir_core version it was checked against; a different version
    (which may check more) makes ingest slower, never less strict."""
    from sharedcare.fhir import validate

    good = {"resourceType": "Patient", "name": [{"family": "Okafor"}]}
    bad = {"resourceType": "Patient", "birthDate": "2026-02-30"}
    assert surely_valid(good)
    monkeypatch.setattr(validate, "_WALKS", False)
    assert not surely_valid(good)
    assert validate.walked_problems(good) == [] and validate.walked_problems(bad) == validation_problems(bad) != []
