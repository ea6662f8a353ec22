"""Values a sender controls are matched in time linear in their length (security review, 2026-12-06: one
MLLP message of 15-60 kB held the listener for 3-26 s, and the interpreter with it).

Each pattern rewritten for that is checked against the obvious form it replaced, on every short string
hypothesis makes (where the obvious form is quick), so the rewrite accepts and refuses exactly the same;
then messages of hundreds of kilobytes built to make the obvious forms backtrack are staged or refused,
with their place, under an alarm that fails the test rather than let it hang.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ingest.test_fuzz import ORU, _encode

from sharedcare.fhir.invariants import _ACTIVE_STRING, active_content, invariant_problems
from sharedcare.governance.framework import Framework
from sharedcare.identity.compare import email_key
from sharedcare.ingest.hl7v2 import stage_hl7
from sharedcare.ingest.hl7v2_map import _NUMBER, _atom, is_ucum
from sharedcare.ingest.messages import MessageError, RawMessage, StagedMessage

# The forms these replaced, kept here as the specification of what each must match.
OBVIOUS_ACTIVE = re.compile(
    r"<\s*/?\s*(script|iframe|frame|frameset|object|embed|applet|form|input|button|base|link|meta|style|svg|"
    r"math|body|html|head)\b|<[a-z][^>]*\son[a-z]+\s*=|(java|vb)script\s*:", re.IGNORECASE)
OBVIOUS_NUMBER = re.compile(r"\s*(<=|>=|<|>)?\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*")
OBVIOUS_UCUM_PART = re.compile(r"(?P<atom>.+?)(?P<exponent>[+-]?\d+)?(?P<note>\{[^{}]*\})?")
OBVIOUS_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

EXAMPLES = settings(max_examples=3000, deadline=None, derandomize=True)


def _pieces(*alphabet: str) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(alphabet), max_size=14).map("".join)


# Tag openings, event handlers, script words, case, Unicode letters that IGNORECASE folds to ASCII (the
# Kelvin sign, dotless i), spaces of several kinds, and '<' not starting a tag.
@EXAMPLES
@given(_pieces("<", ">", "a", "A", "o", "n", "N", " ", "\t", "\n", "\u00a0", "=", "/", "\u212a", "\u0131", "1",
               "on", " on", "<a", "<1", "<b ", "script", "SCRIPT", "java", "vb", "script:", "iframe", "x"))
def test_active_content_is_found_exactly_where_the_obvious_pattern_finds_it(text: str) -> None:
    assert (_ACTIVE_STRING.search(text) is not None) == (OBVIOUS_ACTIVE.search(text) is not None)


@EXAMPLES
@given(_pieces(" ", "\t", "<", ">", "=", "<=", ">=", "1", "2", ".", "+", "-", "x", "\u0663"))
def test_a_number_and_its_comparator_are_read_as_the_obvious_pattern_reads_them(text: str) -> None:
    ours, obvious = _NUMBER.fullmatch(text), OBVIOUS_NUMBER.fullmatch(text)
    assert (ours and (ours[1], ours[2])) == (obvious and (obvious[1], obvious[2]))


@EXAMPLES
@given(_pieces("m", "g", "L", "1", "2", "0", "+", "-", "{", "}", "a", "\u0663", "\u00b2", "x", "[", "]"))
def test_a_ucum_terms_atom_is_the_one_the_obvious_pattern_takes(term: str) -> None:
    obvious = OBVIOUS_UCUM_PART.fullmatch(term)
    assert _atom(term) == (obvious["atom"] if obvious else "")


@EXAMPLES
@given(_pieces("a", "b", "@", ".", "..", " ", "\u00a0", "\t", "x.y"))
def test_an_email_address_is_kept_exactly_when_the_obvious_pattern_matches(value: str) -> None:
    text = value.strip().lower()
    assert email_key(value) == (text if value and OBVIOUS_EMAIL.fullmatch(text) else None)


@contextmanager
def _at_most(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: the obvious patterns took minutes to hours on these inputs."""
    def stop(*_: Any) -> None:
        raise TimeoutError(f"still matching after {seconds} s: a pattern backtracks on this input")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _stage(text: str, framework: Framework) -> StagedMessage:
    raw = RawMessage("hostile.hl7", "hostile.hl7 message 1", _encode(text), "hl7v2")
    with _at_most(60):
        return stage_hl7(raw, framework, None)


def _observation(staged: StagedMessage) -> dict[str, Any]:
    return next(r.content for r in staged.resources if r.resource_type == "Observation")


def test_a_note_of_many_tag_openings_is_stored_as_text(framework: Framework) -> None:
    note = "<a " * 80_000  # 240 kB: the obvious pattern scans from each '<' to the end (16 s at 60 kB)
    staged = _stage(ORU.replace("Sample slightly haemolysed \\T\\ repeated", note), framework)
    assert [n["text"] for n in _observation(staged)["note"]] == [note.strip()]


def test_an_event_handler_after_many_tag_openings_is_still_refused(framework: Framework) -> None:
    with pytest.raises(MessageError) as refused:
        _stage(ORU.replace("Sample slightly haemolysed \\T\\ repeated", "<a " * 80_000 + "onclick=run()"),
               framework)
    assert "active content" in refused.value.message and "NTE" in refused.value.where


@pytest.mark.parametrize(("value", "reason"), [
    ("1" * 100_000 + "x", "is not a number"),  # the obvious pattern split the digits every way
    (" " * 100_000 + "x", "is not a number"),  # ... and the spaces between two optional parts
    ("1" * 100_000, "is not a number"),  # more digits than Python reads as an int: refused, not a crash
])
def test_a_huge_result_value_is_refused_with_its_place(framework: Framework, value: str, reason: str) -> None:
    with pytest.raises(MessageError) as refused:
        _stage(ORU.replace("|48|", f"|{value}|"), framework)
    assert reason in refused.value.message and refused.value.where.endswith("OBX[1]-5")


def test_a_huge_unit_or_range_is_kept_as_text(framework: Framework) -> None:
    unit = "a" + "1" * 100_000 + "x"  # the obvious atom pattern tried every head against every tail
    staged = _stage(ORU.replace("mg/L^mg/L^UCUM", unit).replace("|0-5|", f"|{'1' * 100_000}-2|"), framework)
    quantity = _observation(staged)["valueQuantity"]
    assert quantity["unit"] == unit and "system" not in quantity
    assert _observation(staged)["referenceRange"] == [{"text": f"{'1' * 100_000}-2"}]


def test_strings_and_addresses_of_hundreds_of_kilobytes_are_judged(framework: Framework) -> None:
    with _at_most(60):
        assert not active_content("<" + " " * 200_000 + "x")
        assert active_content("<" + " " * 200_000 + "/ script>")
        assert not invariant_problems({"resourceType": "Basic", "id": "b", "code": {"text": "<a " * 80_000}})
        assert email_key("a@" + "." * 200_000 + " x") is None
        assert not is_ucum("a" + "1" * 200_000 + "x")
