"""How each source system sees a person: the demographics it holds, with the errors real feeds have.

GP practices hold demographics traced against the national spine, so their records are clean. Every
other source keeps its own registration, made once and rarely corrected, so an error made at
registration (a typo, a nickname, a maiden name, a missing NHS number) persists in every message
that source sends about the person. The rates are stated here and written to the manifest beside
the counts actually injected, so the identity matching can be scored against them.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from datetime import date

from sharedcare.synth.people import Person

NON_GP = "non-GP source patient record"
ERROR_RATES: dict[str, dict[str, float | str]] = {
    "missing_nhs_number": {"fhir": 0.08, "hl7v2": 0.10, "csv": 0.35, "per": NON_GP},
    "name_typo": {"rate": 0.02, "per": NON_GP},
    "nickname_as_given_name": {"rate": 0.15, "per": NON_GP + " of a person known by a nickname"},
    "names_swapped": {"rate": 0.005, "per": NON_GP},
    "dob_day_month_swapped": {"rate": 0.01, "per": NON_GP + " whose day of birth is 12 or less"},
    "maiden_name": {"rate": 0.25, "per": NON_GP + " of a woman who changed her surname"},
    "invalid_nhs_number": {"rate": 0.002, "per": "FHIR bundle carrying an NHS number (fails modulus 11)"},
    "duplicate_hospital_number": {"rate": 0.05, "per": "later hospital stay: the PAS registered the person again"},
    # Extra records (synth/unnamed.py); rates are assumptions, the forms NHS practice (docs/architecture.md)
    "birth_record": {"rate": 0.8, "nhs_number": 0.7,
                     "per": "child under 5: a maternity record made at birth, given name a placeholder or none"},
    "unknown_patient": {"ambulance": 0.01, "per": "person attended by ambulance: one call registered as an unknown "
                                                  "patient (estimated birth date 1 January, address not known)"},
    # the ambulance service resends the record with the real demographics (ePCR/PAS reconciliation), 1 to 24
    # hours after the call, with the NHS number once traced: assumptions (docs/architecture.md)
    "unknown_patient_identified": {"rate": 0.8, "nhs_number": 0.7,
                                   "per": "unknown patient's record: identified later and sent again"},
}


def rate(kind: str, key: str = "rate") -> float:
    return float(ERROR_RATES[kind][key])


@dataclass(frozen=True)
class Demographics:
    """The identifying details one source record holds."""

    title: str
    given: str
    middle: str
    family: str
    suffix: str
    birth_date: date
    sex: str
    nhs_number: str | None


def typo(rng: random.Random, word: str) -> str:
    """A keying error: two letters transposed, one dropped or one doubled."""
    if len(word) < 3:
        return word + word[-1]
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def corrupt_nhs_number(rng: random.Random, nhs_number: str) -> str:
    """One mistyped digit among the first nine: the modulus 11 check then always fails."""
    position = rng.randrange(9)
    digit = (int(nhs_number[position]) + rng.randint(1, 9)) % 10
    return nhs_number[:position] + str(digit) + nhs_number[position + 1:]


class Noise:
    """Decides each source record's demographics and counts what it got wrong."""

    def __init__(self) -> None:
        self.injected: Counter[str] = Counter()
        self.records: Counter[str] = Counter()

    def view(self, rng: random.Random, person: Person, org: str, fmt: str, traced: bool) -> Demographics:
        """The demographics `org` holds for `person`; `traced` sources (GP practices) hold them clean."""
        self.records[fmt] += 1
        clean = Demographics(person.title, person.given, person.middle, person.family, person.suffix,
                             person.birth_date, person.sex, person.nhs_number)
        if person.scripted:
            given, family = person.source_names.get(org, (person.given, person.family))
            nhs = None if org in person.no_nhs_number_at else person.nhs_number
            return replace(clean, given=given, family=family, nhs_number=nhs)
        if traced:
            return clean
        view = clean
        if rng.random() < rate("missing_nhs_number", fmt):
            view = self._count(replace(view, nhs_number=None), "missing_nhs_number")
        if person.birth_family and rng.random() < rate("maiden_name"):
            view = self._count(replace(view, family=person.birth_family), "maiden_name")
        if person.nickname and rng.random() < rate("nickname_as_given_name"):
            view = self._count(replace(view, given=person.nickname), "nickname_as_given_name")
        if rng.random() < rate("name_typo"):
            if rng.random() < 0.6:
                view = replace(view, family=typo(rng, view.family))
            else:
                view = replace(view, given=typo(rng, view.given))
            self._count(view, "name_typo")
        if rng.random() < rate("names_swapped"):
            view = self._count(replace(view, given=view.family, family=view.given), "names_swapped")
        born = view.birth_date
        if born.day <= 12 and born.day != born.month and rng.random() < rate("dob_day_month_swapped"):
            view = self._count(replace(view, birth_date=date(born.year, born.day, born.month)),
                               "dob_day_month_swapped")
        return view

    def count(self, kind: str) -> None:
        self.injected[kind] += 1

    def bundle_nhs_number(self, rng: random.Random, person: Person, nhs_number: str | None) -> str | None:
        """The NHS number one FHIR bundle carries: now and then a mistyped one that fails modulus 11."""
        if nhs_number and not person.scripted and rng.random() < rate("invalid_nhs_number"):
            self.count("invalid_nhs_number")
            return corrupt_nhs_number(rng, nhs_number)
        return nhs_number

    def _count(self, view: Demographics, kind: str) -> Demographics:
        self.count(kind)
        return view
