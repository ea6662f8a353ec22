"""Small cells in a pseudonymised extract: no published combination of quasi-identifiers under k people.

A person's one Patient in an extract carries what a motivated intruder (the ICO's anonymisation code of
practice) would match against a register they hold: sex, year and month of birth (and of death), postcode
district, GP practice, ethnic category and the source it came from. A combination held by one person, or
by a few, singles them out (on a 3,000-person ICS all 51 children under two were alone on birth date, sex
and district). So before an extract's Patient file is written, every Patient whose combination (the
whole resource but its pseudonymous id: whatever it publishes counts) is shared by fewer than k people of
the extract is generalised, a step at a time, the data analysts use least going first:

1. `source-left-out`: the Patient's `meta.source` (whose record the demographics were taken from);
2. `birth-year`: year of birth (and of death) instead of year and month;
3. `ethnicity-left-out`: the ethnic category left out;
4. `postcode-area`: postcode area (`RV`) instead of district (`RV3`);
5. `practice-left-out`: the GP practice left out;
6. `birth-5-years`: the five years of birth (1970 to 1974) instead of the year, as a Period in an extension
   on `birthDate` (`_birthDate`; FHIR's birthDate cannot hold a range), and a death as `deceasedBoolean`;

and whoever is still in a group under k after the last step is `suppressed`: their Patient keeps only its
id and the pseudonymised label (their clinical resources leave without organisations, below). A step is tried on all the
people not settled at an earlier one together, so the outcome depends only on the extract's set of
Patients, not on their order: the same extract gives the same file. Patients settled at step 0 are written
byte for byte as they were.

An export reads its Patient file twice, as a stream (`screen`): once keeping of each person only short
digests of their combination as it is and after each step (`decide`; a few hundred bytes a person, not the
decoded Patient), once rewriting the lines whose step changes them (`apply`).

The people settled at `practice-left-out` or later, and those suppressed, are named (`unsourced`, by
pseudonymous id), and their clinical resources leave without the organisations that recorded or provided
them (`export/jobs.py`: `meta.source`, every reference by ODS code): the practice's code there,
linked to the Patient by its pseudonym, would put the practice back into their combination.

What this does not cover (docs/architecture.md, HAZ-05): the clinical resources' dates, which through
age-tied events can date a child's birth to the month.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

STEPS = ("source-left-out", "birth-year", "ethnicity-left-out", "postcode-area", "practice-left-out",
         "birth-5-years")
SUPPRESSED = "suppressed"
BIRTH_PERIOD = "https://sharedcare.example/fhir/StructureDefinition/birth-period"
DEFAULT_K = 8  # disclosure.SMALLEST_SHOWN: the smallest count the extract's own summary shows
_KEPT_WHEN_SUPPRESSED = ("resourceType", "id")


@dataclass
class SmallCells:
    """What the check did to an extract's Patients: counts of people, never who."""

    k: int
    generalised: Counter[str] = field(default_factory=Counter)  # people settled at each step
    suppressed: int = 0
    # the Patient ids whose clinical resources leave without organisations (kept here, never published)
    unsourced: set[str] = field(default_factory=set, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"k": self.k, "generalised": {step: self.generalised[step] for step in STEPS if self.generalised[step]},
                SUPPRESSED: self.suppressed}


def _source_left_out(patient: dict[str, Any]) -> None:
    (patient.get("meta") or {}).pop("source", None)


def _birth_year(patient: dict[str, Any]) -> None:
    for key in ("birthDate", "deceasedDateTime"):
        if isinstance(patient.get(key), str):
            patient[key] = patient[key][:4]


def _ethnicity_left_out(patient: dict[str, Any]) -> None:
    patient.pop("extension", None)


def _postcode_area(patient: dict[str, Any]) -> None:
    for address in patient.get("address") or []:
        if isinstance(address.get("postalCode"), str):
            address["postalCode"] = _area(address["postalCode"])


def _area(district: str) -> str:
    """The postcode area of an outward code: its leading letters (`RV3` -> `RV`, `M1` -> `M`)."""
    letters = len(district) - len(district.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    return district[:letters] or district


def _practice_left_out(patient: dict[str, Any]) -> None:
    patient.pop("generalPractitioner", None)


def _birth_5_years(patient: dict[str, Any]) -> None:
    birth = patient.pop("birthDate", None)
    if isinstance(birth, str) and birth[:4].isdigit():
        first = int(birth[:4]) // 5 * 5
        patient["_birthDate"] = {"extension": [{"url": BIRTH_PERIOD,
                                                "valuePeriod": {"start": f"{first:04d}", "end": f"{first + 4:04d}"}}]}
    if patient.pop("deceasedDateTime", None) is not None:
        patient["deceasedBoolean"] = True


_PRACTICE_STEP = STEPS.index("practice-left-out")
_STEP_RULES: tuple[Callable[[dict[str, Any]], None], ...] = (
    _source_left_out, _birth_year, _ethnicity_left_out, _postcode_area, _practice_left_out, _birth_5_years)


def _suppressed(patient: dict[str, Any]) -> dict[str, Any]:
    kept = {key: patient[key] for key in _KEPT_WHEN_SUPPRESSED if key in patient}
    kept["meta"] = {"security": (patient.get("meta") or {}).get("security", [])}
    return kept


def _combination(patient: dict[str, Any]) -> bytes:
    """What the Patient publishes about its person: everything but the pseudonymous id."""
    return orjson.dumps({key: value for key, value in patient.items() if key != "id"}, option=orjson.OPT_SORT_KEYS)


def combinations(lines: Iterable[bytes]) -> Counter[bytes]:
    """How many people share each published combination, over an extract's Patient lines."""
    return Counter(_combination(orjson.loads(line)) for line in lines)


_KEY = 16  # bytes of a combination's digest: a collision among 10^7 combinations has odds under 10^-24
_WIDTH = _KEY * (len(STEPS) + 1)  # a person's digests: as they are, then after each step
_SUPPRESSED_AT = len(STEPS) + 1  # a person's outcome: 0 as they are, n settled at STEPS[n - 1], or this


def _digests(line: bytes) -> bytes:
    """A Patient's combination as it is and after each step in turn, each as a short digest: what the
    check keeps of a person while it decides (some 120 bytes, not the decoded Patient)."""
    patient = orjson.loads(line)
    keys = [_combination(patient)]
    for rule in _STEP_RULES:
        rule(patient)
        keys.append(_combination(patient))
    return b"".join(hashlib.blake2b(key, digest_size=_KEY).digest() for key in keys)


def decide(lines: Iterable[bytes], k: int) -> tuple[bytearray, SmallCells]:
    """Each person's outcome, by position in the extract (0 as they are, n settled at STEPS[n - 1],
    `_SUPPRESSED_AT` suppressed), read in one pass keeping only their digests (`_digests`), so that the
    extract's memory stays bounded by a few hundred bytes a person; and the counts by step."""
    digests = bytearray()
    for line in lines:
        digests += _digests(line)
    people = len(digests) // _WIDTH

    def key(i: int, step: int) -> bytes:
        start = i * _WIDTH + step * _KEY
        return bytes(digests[start:start + _KEY])

    result = SmallCells(k=k)
    outcome = bytearray(people)
    sizes = Counter(key(i, 0) for i in range(people))
    pending = [i for i in range(people) if sizes[key(i, 0)] < k]
    for n, step in enumerate(STEPS, start=1):
        if not pending:
            break
        sizes = Counter(key(i, n) for i in pending)
        settled = [i for i in pending if sizes[key(i, n)] >= k]
        for i in settled:
            outcome[i] = n
        result.generalised[step] += len(settled)
        pending = [i for i in pending if sizes[key(i, n)] < k]
    for i in pending:
        outcome[i] = _SUPPRESSED_AT
    result.suppressed = len(pending)
    return outcome, result


def apply(lines: Iterable[bytes], outcome: bytearray, result: SmallCells) -> Iterator[bytes]:
    """The Patient lines again, in the same order, each as `decide` settled it (those left as they are
    byte for byte), naming in `result.unsourced` those settled at `practice-left-out` or later."""
    for line, settled in zip(lines, outcome, strict=True):
        if not settled:
            yield line
            continue
        patient = orjson.loads(line)
        for rule in _STEP_RULES[:settled]:
            rule(patient)
        if settled > _PRACTICE_STEP:
            result.unsourced.add(str(patient.get("id")))
        yield orjson.dumps(_suppressed(patient) if settled == _SUPPRESSED_AT else patient)


def screen(lines: Iterable[bytes], k: int) -> tuple[Iterator[bytes], SmallCells]:
    """The Patient lines with every combination held by at least k people (or suppressed), in their order,
    as a stream; `lines` is read twice (`decide`, then `apply`: a list, or a file read again), and
    `SmallCells.unsourced` is complete once the stream is."""
    outcome, result = decide(lines, k)
    return apply(lines, outcome, result), result


def protect(lines: list[bytes], k: int) -> tuple[list[bytes], SmallCells]:
    """`screen` on lines in memory, kept as a list."""
    out, result = screen(lines, k)
    return list(out), result
