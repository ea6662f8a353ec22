"""NHS numbers: normalised and checked with the modulus 11 algorithm (via the `nhs-number` package)."""

from __future__ import annotations

import nhs_number

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


def normalise(value: str) -> str:
    """Strip the spaces and dashes people type ("943 476 5919" -> "9434765919")."""
    return "".join(ch for ch in value if ch.isdigit() or ch.isalpha())


def is_valid(value: str) -> bool:
    """Ten digits whose check digit agrees (modulus 11)."""
    digits = normalise(value)
    return len(digits) == 10 and digits.isdigit() and bool(nhs_number.is_valid(digits))
