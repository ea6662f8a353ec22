"""Synthetic people and households: names, ages, addresses over time, identifiers, next of kin.

A household is made from its own `random.Random`, so every household (and so the whole run) is
reproducible and independent of how the output is split into shards. Identifiers that must be
unique across the population (NHS number, hospital number, council client id) are bijections of the
person's sequence number, so uniqueness needs no memory of who came before.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from nhs_number import calculate_checksum

from sharedcare.synth import names
from sharedcare.synth.codes import ETHNIC_CATEGORIES

DAY = timedelta(days=1)

# Household reference-person ages: England's share of adults in each band (ONS mid-2021), with older
# bands weighted up because older people more often live alone or as a couple without children.
_ADULT_BANDS = ((18, 24, 6.0), (25, 29, 6.7), (30, 34, 6.9), (35, 39, 6.6), (40, 44, 6.3), (45, 49, 6.4),
                (50, 54, 6.9), (55, 59, 6.7), (60, 64, 6.4), (65, 69, 6.5), (70, 74, 6.9), (75, 79, 5.0),
                (80, 84, 3.5), (85, 89, 2.0), (90, 99, 1.1))


@dataclass(frozen=True)
class Address:
    line: str
    town: str
    postcode: str


@dataclass(frozen=True)
class Residence:
    """An address and when the person lived there (end None = still does)."""

    address: Address
    start: date
    end: date | None


@dataclass(frozen=True)
class Relationship:
    """How a contact relates to the person, in FHIR (v3 RoleCode) and HL7 v2 (table 0063) terms."""

    role_code: str
    role_display: str
    hl7_code: str
    label: str


RELATIONSHIPS = {
    "daughter": Relationship("DAUC", "daughter", "CHD", "Daughter"),
    "son": Relationship("SONC", "son", "CHD", "Son"),
    "wife": Relationship("WIFE", "wife", "SPO", "Wife"),
    "husband": Relationship("HUSB", "husband", "SPO", "Husband"),
    "partner": Relationship("DOMPART", "domestic partner", "DOM", "Partner"),
    "mother": Relationship("MTH", "mother", "MTH", "Mother"),
    "father": Relationship("FTH", "father", "FTH", "Father"),
    "sister": Relationship("SIS", "sister", "SIS", "Sister"),
    "neighbour": Relationship("NBOR", "neighbor", "OTH", "Neighbour"),
}


@dataclass(frozen=True)
class Contact:
    """A next of kin: a name, a relationship and a phone number (not necessarily in the population)."""

    title: str
    given: str
    family: str
    relationship: Relationship
    phone: str


@dataclass
class Person:
    key: str
    number: int
    household: int
    title: str
    given: str
    middle: str
    family: str
    sex: str  # "male" | "female"
    birth_date: date
    ethnicity: str
    nhs_number: str
    residences: list[Residence]
    practice: str
    home_phone: str | None = None
    mobile: str | None = None
    suffix: str = ""
    nickname: str | None = None
    birth_family: str | None = None  # surname before marriage, if it changed
    name_changed: date | None = None
    previous_practice: str | None = None
    left_previous_practice: date | None = None
    next_of_kin: Contact | None = None
    # Journey people: feeds render them exactly as scripted, without injected errors.
    scripted: bool = False
    source_names: dict[str, tuple[str, str]] = field(default_factory=dict)  # org -> (given, family)
    no_nhs_number_at: frozenset[str] = frozenset()

    def age(self, on: date) -> int:
        years = on.year - self.birth_date.year
        return years - ((on.month, on.day) < (self.birth_date.month, self.birth_date.day))

    def address_on(self, when: date) -> Address:
        """Where the person lived on a date (the earliest known address before any record)."""
        for residence in reversed(self.residences):
            if residence.start <= when:
                return residence.address
        return self.residences[0].address

    @property
    def address(self) -> Address:
        return self.residences[-1].address


def nhs_number_for(number: int, seed: int) -> str:
    """A valid NHS number in the synthetic 9xx range, unique per person number (up to 10 million).

    The 7 middle digits are an affine bijection of the person number; the ninth digit is chosen so
    the modulus 11 check digit exists (one of ten always does).
    """
    slot = (7_654_321 * number + 2_654_435_761 * (seed + 1)) % 10_000_000
    stem = f"9{slot:07d}"
    for step in range(10):
        nine = stem + str((number + step) % 10)
        check = calculate_checksum(nine)
        if check is not None and check < 10:
            return nine + str(check)
    raise AssertionError("unreachable: one of ten ninth digits always gives a check digit")


def hospital_number(number: int) -> str:
    """The acute trust's MRN (hospital number), unique per person."""
    return f"H{(7919 * number + 104_729) % 10_000_000:07d}"


def council_client_id(number: int) -> str:
    """The council's Mosaic person id, unique per person."""
    return str(1_000_000 + (3571 * number) % 10_000_000)


def years_before(day: date, years: float) -> date:
    return day - timedelta(days=int(years * 365.25))


def random_date(rng: random.Random, start: date, end: date) -> date:
    if end <= start:
        return start
    return start + timedelta(days=rng.randrange((end - start).days + 1))


def birth_date_for_age(rng: random.Random, age: int, as_of: date) -> date:
    latest = years_before(as_of, age)
    return latest - timedelta(days=rng.randrange(365))


def make_address(rng: random.Random, town_index: int | None = None) -> Address:
    if town_index is None:
        town_index = rng.choices(range(len(names.TOWNS)), [t[2] for t in names.TOWNS])[0]
    town, districts, _ = names.TOWNS[town_index]
    street = f"{rng.choice(names.STREET_NAMES)} {rng.choice(names.STREET_KINDS)}"
    number = rng.randint(1, 180)
    line = f"Flat {rng.randint(1, 12)}, {number} {street}" if rng.random() < 0.12 else f"{number} {street}"
    inward = f"{rng.randint(1, 9)}{rng.choice(names.INWARD_LETTERS)}{rng.choice(names.INWARD_LETTERS)}"
    return Address(line, town, f"{rng.choice(districts)} {inward}")


def landline(rng: random.Random) -> str:
    # Ofcom's drama range 01632 960000-960999; numbers ending 00 and 001-009 are left to organisations.
    number = rng.randrange(10, 1000)
    return f"01632 960{number + (number % 100 == 0):03d}"


def mobile(rng: random.Random) -> str:
    return f"07700 900{rng.randrange(1000):03d}"


def _ethnicity(rng: random.Random) -> str:
    return rng.choices([c[0] for c in ETHNIC_CATEGORIES], [c[2] for c in ETHNIC_CATEGORIES])[0]


def _given(rng: random.Random, ethnicity: str, sex: str, born: int) -> str:
    male, female, _ = names.POOLS[ethnicity]
    if ethnicity == "A" and born < 1975:
        male, female = names.BRITISH_OLDER
    return rng.choice(male if sex == "male" else female)


def _surname(rng: random.Random, ethnicity: str) -> str:
    return rng.choice(names.POOLS[ethnicity][2])


def _middle(rng: random.Random, sex: str) -> str:
    if rng.random() < 0.45:
        return ""
    return rng.choice(names.MIDDLE_MALE if sex == "male" else names.MIDDLE_FEMALE)


def _adult_age(rng: random.Random) -> int:
    low, high, _ = rng.choices(_ADULT_BANDS, [b[2] for b in _ADULT_BANDS])[0]
    return rng.randint(low, high)


def _residences(rng: random.Random, oldest_age: int, as_of: date) -> list[Residence]:
    """A household's address history, newest last: about half moved in the last ten years."""
    years_here = min(max(oldest_age - 18, 0.5), rng.expovariate(1 / 9))
    start = years_before(as_of, years_here) - timedelta(days=rng.randrange(30))
    history = [Residence(make_address(rng), start, None)]
    while len(history) < 3 and rng.random() < 0.55 and (as_of - history[0].start).days < (oldest_age - 20) * 365:
        end = history[0].start - DAY
        begun = years_before(end, 1 + rng.expovariate(1 / 6))
        history.insert(0, Residence(make_address(rng), begun, end))
    return history


def _own_residences(household: list[Residence], born: date) -> list[Residence]:
    """A household member's history, starting no earlier than their birth."""
    mine = [r for r in household if r.end is None or r.end >= born]
    first = mine[0]
    if first.start < born:
        mine[0] = Residence(first.address, born, first.end)
    return mine


def _title(sex: str, age: int, married: bool, rng: random.Random) -> str:
    if age < 16:
        return ""
    if rng.random() < 0.01:
        return "Dr"
    if sex == "male":
        return "Mr"
    return "Mrs" if married else rng.choice(("Ms", "Miss"))


@dataclass
class HouseholdContext:
    """Everything a household needs from the run: its index, where numbering starts, the date, the practices."""

    index: int
    first_number: int
    as_of: date
    seed: int
    practices: tuple[str, ...]
    max_people: int


class _HouseholdBuilder:
    def __init__(self, rng: random.Random, ctx: HouseholdContext) -> None:
        self.rng = rng
        self.ctx = ctx
        self.people: list[Person] = []
        self.ethnicity = _ethnicity(rng)
        self.landline = landline(rng) if rng.random() < 0.55 else None

    def person(self, sex: str, age: int, family: str, ethnicity: str, residences: list[Residence],
               married: bool = False, born: date | None = None) -> Person | None:
        if len(self.people) >= self.ctx.max_people:
            return None
        rng, as_of = self.rng, self.ctx.as_of
        number = self.ctx.first_number + len(self.people)
        born = born or birth_date_for_age(rng, age, as_of)
        given = _given(rng, ethnicity, sex, born.year)
        person = Person(
            key=f"P{number:07d}", number=number, household=self.ctx.index,
            title=_title(sex, age, married, rng), given=given, middle=_middle(rng, sex), family=family,
            sex=sex, birth_date=born, ethnicity=ethnicity, nhs_number=nhs_number_for(number, self.ctx.seed),
            residences=_own_residences(residences, born), practice="",
            home_phone=self.landline, mobile=mobile(rng) if age >= 12 and rng.random() < 0.9 else None,
        )
        if given in names.NICKNAMES and rng.random() < 0.6:
            person.nickname = rng.choice(names.NICKNAMES[given])
        self.people.append(person)
        return person


def _practice_for(rng: random.Random, address: Address, practices: tuple[str, ...]) -> str:
    """Most people are registered with the practice of their town; some travel further."""
    town_index = next(i for i, t in enumerate(names.TOWNS) if t[0] == address.town)
    if rng.random() < 0.15:
        return rng.choice(practices)
    return practices[town_index % len(practices)]


def make_household(rng: random.Random, ctx: HouseholdContext) -> list[Person]:
    """One household of one to six people: singles, couples, families (with twins), parent and adult child."""
    b = _HouseholdBuilder(rng, ctx)
    as_of = ctx.as_of
    age = _adult_age(rng)
    if age < 30:
        kind = rng.choices(("single", "couple", "family", "lone"), (0.5, 0.3, 0.12, 0.08))[0]
    elif age < 50:
        kind = rng.choices(("single", "couple", "family", "lone"), (0.2, 0.15, 0.5, 0.15))[0]
    elif age < 65:
        kind = rng.choices(("single", "couple", "family", "adult_child"), (0.3, 0.4, 0.2, 0.1))[0]
    else:
        kind = rng.choices(("single", "couple", "adult_child"), (0.5, 0.45, 0.05))[0]
    home = _residences(rng, age, as_of)
    sex = rng.choice(("male", "female"))
    family = _surname(rng, b.ethnicity)

    partner: Person | None = None
    lead: Person | None
    if kind in ("couple", "family"):
        partner_age = max(18, min(99, age + round(rng.gauss(0, 3))))
        man_age, woman_age = (age, partner_age) if sex == "male" else (partner_age, age)
        partner_ethnicity = b.ethnicity if rng.random() < 0.85 else _ethnicity(rng)
        man = b.person("male", man_age, family, b.ethnicity, home, married=True)
        takes_name = rng.random() < 0.75
        maiden = _surname(rng, partner_ethnicity)
        woman = b.person("female", woman_age, family if takes_name else maiden, partner_ethnicity, home,
                         married=takes_name)
        if man and woman:
            if takes_name and maiden != family:
                woman.birth_family = maiden
                latest = as_of - 60 * DAY
                woman.name_changed = random_date(rng, min(years_before(woman.birth_date, -20), latest), latest)
            man.next_of_kin = _kin_from(woman, "wife")
            woman.next_of_kin = _kin_from(man, "husband")
        lead, partner = man, woman
        mother, father = woman, man
    else:
        lead = b.person(sex, age, family, b.ethnicity, home)
        mother, father = (lead, None) if sex == "female" else (None, lead)

    if kind in ("family", "lone") and lead:
        parent_age = min(p.age(as_of) for p in (lead, partner) if p)
        oldest_child = min(parent_age - 18, 24 if parent_age >= 50 else 17)
        children_ethnicity = b.ethnicity if partner is None or partner.ethnicity == b.ethnicity else "G"
        child_family = lead.family if partner is None or rng.random() < 0.9 else (partner.family)
        for _ in range(rng.choices((1, 2, 3), (0.45, 0.4, 0.15))[0]):
            if oldest_child < 0:
                break
            child_age = rng.randint(0, oldest_child)
            born = birth_date_for_age(rng, child_age, as_of)
            twins = 2 if rng.random() < 0.03 else 1
            for _twin in range(twins):
                child_sex = rng.choice(("male", "female"))
                child = b.person(child_sex, child_age, child_family, children_ethnicity, home, born=born)
                if child is None:
                    break
                parent = mother or father
                if parent:
                    child.next_of_kin = _kin_from(parent, "mother" if parent is mother else "father")
                if father and child_sex == "male" and child_age >= 16 and rng.random() < 0.15:
                    _same_name(child, father)

    if kind == "adult_child" and lead:
        child_age = rng.randint(20, max(20, min(45, age - 20)))
        child_sex = rng.choice(("male", "female"))
        child = b.person(child_sex, child_age, lead.family, b.ethnicity, home)
        if child:
            child.next_of_kin = _kin_from(lead, "mother" if lead.sex == "female" else "father")
            lead.next_of_kin = _kin_from(child, "son" if child_sex == "male" else "daughter")
            if lead.sex == "male" and child_sex == "male" and rng.random() < 0.35:
                _same_name(child, lead)

    for person in b.people:
        if person.next_of_kin is None and rng.random() < (0.7 if person.age(as_of) >= 65 else 0.35):
            person.next_of_kin = _relative_elsewhere(rng, person, as_of)
    _register_with_practices(rng, b.people, ctx)
    return b.people


def _same_name(son: Person, father: Person) -> None:
    """A son named after his father: same name, same address, different date of birth."""
    son.given, son.middle, son.nickname = father.given, father.middle, father.nickname
    father.suffix, son.suffix = "Snr", "Jnr"


def _kin_from(person: Person, relationship: str) -> Contact:
    return Contact(person.title or "", person.given, person.family, RELATIONSHIPS[relationship],
                   person.mobile or person.home_phone or "")


def _relative_elsewhere(rng: random.Random, person: Person, as_of: date) -> Contact:
    """A next of kin who lives outside the household (an adult child for older people, else a parent)."""
    older = person.age(as_of) >= 50
    relationship = rng.choice(("daughter", "son") if older else ("mother", "father", "sister"))
    female = relationship in ("daughter", "mother", "sister")
    pool = names.POOLS[person.ethnicity]
    given = rng.choice(pool[1] if female else pool[0])
    family = person.birth_family or person.family
    if relationship == "daughter" and rng.random() < 0.5:
        family = rng.choice(pool[2])
    title = ("Mrs" if relationship in ("mother", "daughter") else "Ms") if female else "Mr"
    return Contact(title, given, family, RELATIONSHIPS[relationship], mobile(rng))


def _register_with_practices(rng: random.Random, people: list[Person], ctx: HouseholdContext) -> None:
    for person in people:
        person.practice = _practice_for(rng, person.address, ctx.practices)
        earlier = person.residences[:-1]
        if earlier and len(ctx.practices) > 1 and rng.random() < 0.045:
            before = _practice_for(rng, earlier[-1].address, ctx.practices)
            if before == person.practice:
                before = ctx.practices[(ctx.practices.index(before) + 1) % len(ctx.practices)]
            person.previous_practice = before
            person.left_previous_practice = person.residences[-1].start
