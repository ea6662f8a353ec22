"""The people of JOURNEYS.md, always the first households of a run of 20 or more people.

Their names, ages and stories are fixed so demos and end-to-end tests can find them; dates move with
`as_of`, and small details (ids, result values) come from the run's seed. They carry no injected
errors except the ones their journeys need ("Peggy" at the hospice, a maiden name at the hospital).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sharedcare.synth import clinical, codes
from sharedcare.synth.clinical import Allergy, GpRecord, History, Medication, Problem
from sharedcare.synth.codes import Code, Drug
from sharedcare.synth.people import (
    RELATIONSHIPS,
    Address,
    Contact,
    HouseholdContext,
    Person,
    Residence,
    hospital_number,
    nhs_number_for,
    years_before,
)

DAY = timedelta(days=1)
JOURNEY_MIN_PEOPLE = 20


@dataclass(frozen=True)
class Orgs:
    """The codes of the organisations the journeys involve (from the framework)."""

    practices: tuple[str, ...]
    ambulance: str | None
    hospice: str | None
    acute: str | None


@dataclass(frozen=True)
class Journey:
    person_key: str
    journey: str
    name: str
    birth_date: str
    nhs_number: str
    practice: str


class _Scripter:
    def __init__(self, rng: random.Random, ctx: HouseholdContext, orgs: Orgs) -> None:
        self.rng, self.ctx, self.orgs, self.as_of = rng, ctx, orgs, ctx.as_of
        self.members: list[tuple[Person, History]] = []
        self.created = 0

    def person(self, title: str, given: str, middle: str, family: str, sex: str, age: int, ethnicity: str,
               home: list[Residence], practice: int, **extra: object) -> Person:
        number = self.ctx.first_number + self.created
        self.created += 1
        born = years_before(self.as_of, age) - timedelta(days=40 + 11 * number)
        person = Person(key=f"P{number:07d}", number=number, household=self.ctx.index, title=title, given=given,
                        middle=middle, family=family, sex=sex, birth_date=born, ethnicity=ethnicity,
                        nhs_number=nhs_number_for(number, self.ctx.seed), residences=home,
                        practice=self.orgs.practices[practice % len(self.orgs.practices)], scripted=True)
        for name, value in extra.items():
            setattr(person, name, value)
        return person

    def gp(self, person: Person, problems: list[tuple[Code, int]], drugs: list[Drug],
           allergy: Allergy | None = None) -> GpRecord:
        record = GpRecord(registered=person.residences[0].start)
        record.problems = [Problem(code, years_before(self.as_of, years)) for code, years in problems]
        record.medications = [Medication(drug, years_before(self.as_of, 3), "active",
                                         last_issue=self.as_of - (12 + 7 * i) * DAY) for i, drug in enumerate(drugs)]
        record.allergies = [allergy or Allergy(codes.NO_KNOWN_ALLERGY, record.registered)]
        clinical.add_results(self.rng, person, record, self.as_of)
        clinical.add_vaccinations(self.rng, person, record, self.as_of)
        record.last_consultation = self.at(60, 10)
        return record

    def at(self, days_ago: int, hour: int, minute: int = 0) -> datetime:
        return datetime.combine(self.as_of - days_ago * DAY, time(hour, minute), tzinfo=UTC)

    def stay(self, person: Person, gp: GpRecord, reason: Code, admitted_days_ago: int, nights: int,
             mrn: str | None = None) -> clinical.Admission:
        """A stay with a fixed admission (07:40) and length; the ward, results and changes come from the seed."""
        return clinical.admission(self.rng, person, gp, self.at(admitted_days_ago, 7, 40),
                                  mrn or hospital_number(person.number), self.as_of, reason, nights)

    def add(self, person: Person, history: History) -> None:
        self.members.append((person, history))


def _home(line: str, town: str, postcode: str, since_years: float, as_of: date) -> list[Residence]:
    return [Residence(Address(line, town, postcode), years_before(as_of, since_years), None)]


def okafor(s: _Scripter) -> None:
    """Journey 1 and 2: confused after a fall; GP list, discharge summary, district nurse, daughter."""
    home = _home("14 Mill Lane", "Riverside", "RV3 7QT", 27, s.as_of)
    daughter = Contact("Mrs", "Ngozi", "Adeyemi", RELATIONSHIPS["daughter"], "07700 900461")
    person = s.person("Mr", "Emeka", "Chukwudi", "Okafor", "male", 81, "N", home, 0, home_phone="01632 960457",
                      next_of_kin=daughter,
                      no_nhs_number_at=frozenset({s.orgs.ambulance} if s.orgs.ambulance else set()))
    gp = s.gp(person, [(codes.HYPERTENSION, 17), (codes.DIABETES, 12), (codes.AF, 7), (codes.CKD, 5)],
              [codes.METFORMIN, codes.AMLODIPINE, codes.RAMIPRIL, codes.BISOPROLOL, codes.TEMAZEPAM],
              Allergy(codes.PENICILLIN_ALLERGY, years_before(s.as_of, 30), "medication", codes.RASH))
    stay = s.stay(person, gp, codes.FALL, 34, 5)
    stay.diagnoses = [codes.FALL, codes.CKD, codes.HYPERTENSION]
    reasons = {codes.AMLODIPINE.code: "postural hypotension", codes.TEMAZEPAM.code: "falls risk"}
    stay.stopped = [Medication(m.drug, m.start, "stopped", end=stay.discharged.date(),
                               reason=f"Stopped in hospital: {reasons[m.drug.code]}")
                    for m in gp.medications if m.drug.code in reasons]
    stay.started = [Medication(codes.PARACETAMOL, stay.discharged.date(), "active",
                               reason="Started in hospital for pain after the fall")]
    stay.continued = [codes.METFORMIN, codes.RAMIPRIL, codes.BISOPROLOL]
    stay.follow_up = clinical.follow_up(stay.stopped, stay.started, codes.FALL)
    nursing = clinical.district_nursing(s.rng, person, stay.discharged.date() + 2 * DAY, 1, s.as_of,
                                        codes.LEG_ULCER)
    call = clinical.ambulance_call(s.rng, stay.admitted - timedelta(minutes=50), codes.FALL, True)
    care = clinical.assessment(
        s.rng, person, "Care Act Assessment", s.as_of - 20 * DAY, "Hospital Discharge Team", s.as_of,
        third_party="Daughter Ngozi is the main carer and visits every evening after work.",
        outcome="Reablement after hospital discharge: two calls a day for six weeks.")
    s.add(person, History(gp=gp, admissions=[stay], nursing=nursing, ambulance=[call], social_care=[care]))


def hughes(s: _Scripter) -> None:
    """Journey 8: a recent hospital stay, and a hospice she no longer uses (which calls her Peggy)."""
    home = _home("3 Castle View Terrace", "Castleford Bridge", "RV8 2LS", 40, s.as_of)
    son = Contact("Mr", "Gareth", "Hughes", RELATIONSHIPS["son"], "07700 900372")
    names = {s.orgs.hospice: ("Peggy", "Hughes")} if s.orgs.hospice else {}
    person = s.person("Mrs", "Margaret", "Ann", "Hughes", "female", 74, "A", home, 1, mobile="07700 900318",
                      nickname="Peggy", next_of_kin=son, source_names=names)
    gp = s.gp(person, [(codes.COPD, 10), (codes.HYPERTENSION, 14)], [codes.AMLODIPINE])
    stay = s.stay(person, gp, codes.COPD, 21, 5)
    hospice = clinical.hospice(s.rng, s.as_of - 400 * DAY, s.as_of - 200 * DAY, codes.COPD)
    s.add(person, History(gp=gp, admissions=[stay], hospice=hospice))


def twins(s: _Scripter) -> None:
    """Twins share a surname, a date of birth and an address; only their given names differ."""
    home = _home("8 Orchard Close", "Millbrook", "DL23 6NB", 12, s.as_of)
    mum = Contact("Mrs", "Claire", "Bennett", RELATIONSHIPS["mother"], "07700 900233")
    oliver = s.person("", "Oliver", "James", "Bennett", "male", 16, "A", home, 2, home_phone="01632 960733",
                      next_of_kin=mum)
    harry = s.person("", "Harry", "Thomas", "Bennett", "male", 16, "A", home, 2, home_phone="01632 960733",
                     next_of_kin=mum)
    mother = s.person("Mrs", "Claire", "Louise", "Bennett", "female", 44, "A", home, 2, mobile="07700 900233",
                      home_phone="01632 960733")
    harry.birth_date = oliver.birth_date
    oliver_gp = s.gp(oliver, [(codes.ASTHMA, 10)], [])
    s.add(oliver, History(gp=oliver_gp, admissions=[s.stay(oliver, oliver_gp, codes.APPENDICITIS, 420, 3)]))
    s.add(harry, History(gp=s.gp(harry, [], [])))
    s.add(mother, History(gp=s.gp(mother, [], [])))


def father_and_son(s: _Scripter) -> None:
    """A father and son with the same name at the same address, both known to the hospital."""
    home = _home("27 Beech Grove", "Dalesby", "DL21 4HP", 30, s.as_of)
    father = s.person("Mr", "David", "John", "Thomas", "male", 63, "A", home, 3, home_phone="01632 960527",
                      mobile="07700 900527", suffix="Snr")
    son = s.person("Mr", "David", "John", "Thomas", "male", 35, "A", home, 3, home_phone="01632 960527",
                   mobile="07700 900528", suffix="Jnr")
    father.next_of_kin = Contact("Mr", "David", "Thomas", RELATIONSHIPS["son"], "07700 900528")
    son.next_of_kin = Contact("Mr", "David", "Thomas", RELATIONSHIPS["father"], "07700 900527")
    father_gp = s.gp(father, [(codes.HYPERTENSION, 8), (codes.AF, 3)], [codes.RAMIPRIL, codes.BISOPROLOL])
    son_gp = s.gp(son, [(codes.ASTHMA, 25)], [])
    s.add(father, History(gp=father_gp, admissions=[s.stay(father, father_gp, codes.CHEST_PAIN, 300, 2)]))
    s.add(son, History(gp=son_gp, admissions=[s.stay(son, son_gp, codes.CELLULITIS, 700, 3)],
                       ambulance=[clinical.ambulance_call(s.rng, s.at(180, 22, 15), codes.DYSPNOEA, False)]))


def maiden_name(s: _Scripter) -> None:
    """Married name at her practice; the hospital still has her maiden name."""
    home = _home("61 Willow Avenue", "Riverside", "RV5 3JU", 8, s.as_of)
    names = {s.orgs.acute: ("Priya", "Kapoor")} if s.orgs.acute else {}
    priya = s.person("Mrs", "Priya", "", "Sharma", "female", 38, "H", home, 0, mobile="07700 900614",
                     birth_family="Kapoor", name_changed=years_before(s.as_of, 9), source_names=names)
    rohan = s.person("Mr", "Rohan", "", "Sharma", "male", 40, "H", home, 0, mobile="07700 900615")
    priya.next_of_kin = Contact("Mr", "Rohan", "Sharma", RELATIONSHIPS["husband"], "07700 900615")
    rohan.next_of_kin = Contact("Mrs", "Priya", "Sharma", RELATIONSHIPS["wife"], "07700 900614")
    priya_gp = s.gp(priya, [(codes.ASTHMA, 20)], [])
    s.add(priya, History(gp=priya_gp, admissions=[s.stay(priya, priya_gp, codes.CELLULITIS, 500, 2)]))
    s.add(rohan, History(gp=s.gp(rohan, [], [])))


def clarke(s: _Scripter) -> None:
    """Journey 5: a social care client a neighbour worries about, under the mental health trust."""
    home = _home("Flat 4, 51 Station Road", "Riverside", "RV2 5DX", 6, s.as_of)
    sister = Contact("Ms", "Janet", "Clarke", RELATIONSHIPS["sister"], "07700 900744")
    person = s.person("Mr", "Dennis", "", "Clarke", "male", 68, "A", home, 0, mobile="07700 900743",
                      nickname="Den", next_of_kin=sister)
    gp = s.gp(person, [(codes.DEPRESSION, 9), (codes.HYPERTENSION, 6)], [codes.AMITRIPTYLINE, codes.AMLODIPINE])
    mental = clinical.mental_health_episode(s.rng, person, gp, s.as_of, force=codes.DEPRESSION)
    care = clinical.assessment(
        s.rng, person, "Care Act Assessment", s.as_of - 45 * DAY, "Older People's Locality Team", s.as_of,
        third_party="Neighbour Mrs Ruth Allen reports he has not been seen going out for a week and his "
                    "curtains stay closed.",
        outcome="Eligible needs identified. Weekly visits from a support worker; shopping delivered.")
    s.add(person, History(gp=gp, mental_health=mental, social_care=[care]))


def thompson(s: _Scripter) -> None:
    """A young adult seen at the community trust's sexual health clinic."""
    home = _home("19 Heather Way", "Dalesby", "DL20 7RF", 3, s.as_of)
    person = s.person("Miss", "Jade", "", "Thompson", "female", 22, "A", home, 3, mobile="07700 900822")
    gp = s.gp(person, [], [codes.COC])
    s.add(person, History(gp=gp, sexual_health=[(s.at(45, 17, 30), codes.CHLAMYDIA)]))


_STORIES = (
    (okafor, "1 paramedic at a kitchen table; 2 GP after a discharge"),
    (hughes, "8 citizen after a hospital stay"),
    (twins, "twins sharing surname, date of birth and address"),
    (father_and_son, "father and son with the same name at the same address"),
    (maiden_name, "maiden name at the hospital, married name at the GP"),
    (clarke, "5 social worker: neighbour's note and mental health involvement"),
    (thompson, "young adult at the sexual health clinic"),
)
JOURNEY_HOUSEHOLDS = len(_STORIES)


def journey_household(rng: random.Random, ctx: HouseholdContext, orgs: Orgs) -> tuple[list[tuple[Person, History]],
                                                                                     list[Journey]]:
    """Household `ctx.index` of the journeys, with a line per person for the manifest."""
    story, label = _STORIES[ctx.index]
    scripter = _Scripter(rng, ctx, orgs)
    story(scripter)
    notes = [Journey(p.key, label, " ".join(x for x in (p.title, p.given, p.family) if x), p.birth_date.isoformat(),
                     p.nhs_number, p.practice) for p, _ in scripter.members]
    return scripter.members, notes
