"""The prior (how likely two records picked at random are one person) is estimated from the ICS's own
records, whatever share of them carries an NHS number."""

from __future__ import annotations

import random
import string

import pytest

from sharedcare.identity.compare import MatchRecord
from sharedcare.identity.matching import train


def _ics(people: int, duplicates: int, numbered: float, seed: int = 4) -> list[MatchRecord]:
    """GP records each with an NHS number; `duplicates` of them seen again by a hospital that records the
    number on `numbered` of its records and mis-keys a fifth of the surnames."""
    rng = random.Random(seed)
    records: list[MatchRecord] = []
    for person in range(people):
        given = "".join(rng.choices(string.ascii_lowercase, k=6))
        family = "".join(rng.choices(string.ascii_lowercase, k=7))
        born = f"{rng.randrange(1930, 2020)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        postcode = f"RV{rng.randrange(1, 10)} {rng.randrange(10)}{rng.choice('ABDEFG')}{rng.choice('HJLNPQ')}"
        nhs = f"9{person:09d}"
        records.append(MatchRecord(len(records) + 1, "GP", nhs, given, family, born, "female", postcode))
        if person < duplicates:
            family_seen = family if rng.random() < 0.8 else family[:3] + "x" + family[4:]
            records.append(MatchRecord(len(records) + 1, "RXR", nhs if rng.random() < numbered else None, given,
                                       family_seen, born, "female", postcode))
    return records


@pytest.mark.parametrize("numbered", [0.3, 0.9])
def test_the_prior_is_right_whether_few_or_most_hospital_records_carry_the_nhs_number(numbered: float) -> None:
    records = _ics(people=1500, duplicates=600, numbered=numbered)
    _, model = train(records)
    truth = 600 / (len(records) * (len(records) - 1) / 2)
    # A fixed recall of 0.9 for 'same NHS number' put it at a third of the truth when 30% carry it.
    assert model["probability_two_random_records_match"] == pytest.approx(truth, rel=0.2)
