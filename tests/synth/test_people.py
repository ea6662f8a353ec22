"""The population looks like a real one: England's ages, unique identifiers, households, messy feeds."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date

import nhs_number
import pytest

from sharedcare.synth.noise import Noise, corrupt_nhs_number, typo
from sharedcare.synth.people import (
    HouseholdContext,
    Person,
    council_client_id,
    hospital_number,
    make_household,
    nhs_number_for,
)

AS_OF = date(2026, 11, 1)
PRACTICES = ("P81001", "P81002", "P81003", "P81004")


def population(households: int, seed: int = 1) -> list[Person]:
    people: list[Person] = []
    for index in range(households):
        ctx = HouseholdContext(index, len(people) + 1, AS_OF, seed, PRACTICES, 10)
        people += make_household(random.Random(f"{seed}:{index}"), ctx)
    return people


@pytest.fixture(scope="module")
def people() -> list[Person]:
    return population(3000)


def test_every_nhs_number_is_valid_synthetic_and_unique() -> None:
    numbers = [nhs_number_for(n, 42) for n in range(1, 50_001)]
    assert len(set(numbers)) == len(numbers)
    assert all(nhs_number.is_valid(n) and n.startswith("9") for n in numbers)


def test_hospital_numbers_and_council_ids_are_unique_per_person() -> None:
    assert len({hospital_number(n) for n in range(1, 50_001)}) == 50_000
    assert len({council_client_id(n) for n in range(1, 50_001)}) == 50_000


def test_the_age_structure_is_like_englands(people: list[Person]) -> None:
    ages = [p.age(AS_OF) for p in people]
    children, older = sum(a < 16 for a in ages) / len(ages), sum(a >= 65 for a in ages) / len(ages)
    assert 0.13 < children < 0.25 and 0.13 < older < 0.27
    assert max(ages) >= 90


def test_households_share_an_address_and_include_twins(people: list[Person]) -> None:
    by_household: dict[int, list[Person]] = {}
    for person in people:
        by_household.setdefault(person.household, []).append(person)
    assert all(len({p.address for p in members}) == 1 for members in by_household.values())
    twins = [m for m in by_household.values()
             if any(a is not b and a.birth_date == b.birth_date and a.family == b.family for a in m for b in m)]
    assert twins


def test_some_sons_share_their_fathers_name(people: list[Person]) -> None:
    assert any(p.suffix == "Jnr" for p in people)


def test_names_are_diverse_and_some_people_go_by_a_nickname(people: list[Person]) -> None:
    assert len({p.ethnicity for p in people}) >= 8
    assert any(p.given == "Margaret" for p in people) or any(p.nickname == "Bob" for p in people)
    assert 0.05 < sum(bool(p.nickname) for p in people) / len(people) < 0.4


def test_some_women_changed_surname_and_some_people_moved_house(people: list[Person]) -> None:
    assert sum(bool(p.birth_family) for p in people) > 100
    assert sum(len(p.residences) > 1 for p in people) > len(people) * 0.2


def test_about_two_percent_also_have_a_record_at_a_previous_practice(people: list[Person]) -> None:
    share = sum(bool(p.previous_practice) for p in people) / len(people)
    assert 0.005 < share < 0.04
    assert all(p.previous_practice != p.practice for p in people if p.previous_practice)


def test_postcodes_are_in_the_made_up_districts(people: list[Person]) -> None:
    districts = Counter(p.address.postcode.split()[0] for p in people)
    assert set(districts) <= {f"RV{n}" for n in range(1, 10)} | {f"DL{n}" for n in range(20, 25)}


def test_a_typo_always_changes_the_name_and_a_mistyped_nhs_number_always_fails_the_check() -> None:
    rng = random.Random(0)
    assert all(typo(rng, name) != name for name in ("Smith", "Okafor", "Li", "Hughes") * 50)
    good = nhs_number_for(7, 1)
    assert not any(nhs_number.is_valid(corrupt_nhs_number(rng, good)) for _ in range(500))


def test_non_gp_sources_get_errors_at_about_the_stated_rates(people: list[Person]) -> None:
    noise, rng = Noise(), random.Random(5)
    views = [noise.view(rng, p, "RXR", "hl7v2", traced=False) for p in people]
    missing = sum(v.nhs_number is None for v in views) / len(views)
    assert 0.05 < missing < 0.15
    assert noise.injected["missing_nhs_number"] == sum(v.nhs_number is None for v in views)
    assert noise.records["hl7v2"] == len(people)


def test_gp_records_are_traced_and_clean(people: list[Person]) -> None:
    noise, rng = Noise(), random.Random(5)
    views = [noise.view(rng, p, p.practice, "fhir", traced=True) for p in people]
    assert all(v.nhs_number == p.nhs_number and v.family == p.family for v, p in zip(views, people, strict=True))
    assert not noise.injected
