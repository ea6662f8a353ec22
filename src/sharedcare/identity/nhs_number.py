"""NHS numbers: normalised and checked with the modulus 11 algorithm (via the `nhs-number` package)."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import nhs_number

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


def normalise(value: str) -> str:
    """Strip the spaces and dashes people type ("943 476 5919" -> "9434765919") and write a digit of
    another script as its ASCII digit (full-width "９" -> "9"): the number is stored and compared so, and one
    person's number written both ways is one number."""
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch
                   for ch in value if ch.isdigit() or ch.isalpha())


def is_valid(value: str) -> bool:
    """Ten ASCII digits, once normalised, whose check digit agrees (modulus 11): "²" is a digit to
    `str.isdigit` but no decimal digit, and stays one no number is made of."""
    digits = normalise(value)
    return len(digits) == 10 and digits.isascii() and digits.isdigit() and _check_digit_agrees(digits)


@lru_cache(maxsize=1 << 16)
def _check_digit_agrees(digits: str) -> bool:
    """The package's check, remembered: matching checks every candidate's number against the incoming
    one's, the same stored numbers again and again (4 us a call, 0.1 us remembered)."""
    return bool(nhs_number.is_valid(digits))
