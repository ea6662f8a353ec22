"""What happens to a person's health: their GP record and their contacts with other services.

This module decides the facts (a condition and when it began, a hospital stay, a district nursing
episode), in no source's format; the feed modules render the same facts as FHIR, HL7 v2 or CSV.
Prevalences are rough figures for England by age band, enough to make cohorts look plausible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sharedcare.synth import codes, names
from sharedcare.synth.codes import Code, Drug, Test
from sharedcare.synth.noise import rate
from sharedcare.synth.people import Person, hospital_number, random_date, years_before

DAY = timedelta(days=1)

# condition -> ((upper age bound exclusive, prevalence), ...); the last band has no upper bound.
PREVALENCE: tuple[tuple[Code, tuple[tuple[int, float], ...]], ...] = (
    (codes.HYPERTENSION, ((30, 0.0), (45, 0.05), (55, 0.15), (65, 0.28), (75, 0.45), (200, 0.58))),
    (codes.DIABETES, ((30, 0.005), (45, 0.03), (55, 0.08), (65, 0.13), (75, 0.18), (200, 0.2))),
    (codes.ASTHMA, ((16, 0.09), (200, 0.07))),
    (codes.COPD, ((40, 0.0), (55, 0.01), (65, 0.03), (75, 0.06), (200, 0.08))),
    (codes.HEART_FAILURE, ((50, 0.0), (65, 0.008), (75, 0.025), (85, 0.06), (200, 0.1))),
    (codes.AF, ((50, 0.002), (65, 0.01), (75, 0.05), (85, 0.1), (200, 0.15))),
    (codes.CKD, ((40, 0.002), (60, 0.015), (70, 0.06), (80, 0.15), (200, 0.3))),
    (codes.DEPRESSION, ((16, 0.0), (200, 0.12))),
    (codes.DEMENTIA, ((65, 0.001), (75, 0.015), (85, 0.06), (200, 0.18))),
    (codes.SCHIZOPHRENIA, ((18, 0.0), (200, 0.004))),
    (codes.BIPOLAR, ((18, 0.0), (200, 0.005))),
)
SEVERE_MENTAL_ILLNESS = {codes.SCHIZOPHRENIA.code, codes.BIPOLAR.code}


def at_time(rng: random.Random, day: date, first_hour: int = 8, last_hour: int = 18) -> datetime:
    """A moment during the working day (UTC)."""
    moment = time(rng.randint(first_hour, last_hour - 1), rng.randrange(0, 60, 5))
    return datetime.combine(day, moment, tzinfo=UTC)


def _band(table: tuple[tuple[int, float], ...], age: int) -> float:
    return next(p for bound, p in table if age < bound)


def _measure(rng: random.Random, test: Test, mean: float | None = None) -> float:
    value = max(rng.gauss(test.mean if mean is None else mean, test.sd), 0.1)
    return round(value, test.decimals) if test.decimals else float(round(value))


# --- The GP record ------------------------------------------------------------------------------
@dataclass
class Problem:
    code: Code
    onset: date
    resolved: date | None = None


@dataclass
class Medication:
    drug: Drug
    start: date
    status: str  # active | stopped | completed
    end: date | None = None
    last_issue: date | None = None
    note: str | None = None
    reason: str | None = None  # why it was stopped or started


@dataclass
class Allergy:
    code: Code
    recorded: date
    category: str | None = None
    reaction: Code | None = None
    criticality: str = "low"


@dataclass
class Result:
    test: Test
    at: datetime
    value: float

    @property
    def flag(self) -> str:
        """HL7 abnormal flag: H, L or N against the reference range."""
        if self.test.high is not None and self.value > self.test.high:
            return "H"
        if self.test.low is not None and self.value < self.test.low:
            return "L"
        return "N"


@dataclass
class BloodPressure:
    at: datetime
    systolic: int
    diastolic: int


@dataclass
class Vaccination:
    vaccine: Code
    on: date


@dataclass
class GpRecord:
    registered: date
    problems: list[Problem] = field(default_factory=list)
    medications: list[Medication] = field(default_factory=list)
    allergies: list[Allergy] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    pressures: list[BloodPressure] = field(default_factory=list)
    vaccinations: list[Vaccination] = field(default_factory=list)
    last_consultation: datetime | None = None

    def has(self, code: Code) -> bool:
        return any(p.code == code and p.resolved is None for p in self.problems)


def gp_record(rng: random.Random, person: Person, as_of: date) -> GpRecord:
    age = person.age(as_of)
    registered = max(person.residences[-1].start if person.previous_practice else person.birth_date,
                     person.birth_date)
    record = GpRecord(registered=registered)
    adult_from = max(years_before(person.birth_date, -18), years_before(as_of, 25))
    for code, table in PREVALENCE:
        chance = _band(table, age)
        if code == codes.CKD and record.has(codes.DIABETES):
            chance *= 1.8
        if rng.random() < chance:
            earliest = years_before(person.birth_date, -3) if code == codes.ASTHMA else adult_from
            record.problems.append(Problem(code, random_date(rng, min(earliest, as_of - 60 * DAY),
                                                             as_of - 60 * DAY)))
    if 16 <= age <= 30 and rng.random() < 0.02:
        onset = random_date(rng, years_before(as_of, 3), as_of - 90 * DAY)
        record.problems.append(Problem(codes.CHLAMYDIA, onset, onset + 21 * DAY))
    if age >= 18 and rng.random() < (0.02 if age >= 80 else 0.004):
        record.problems.append(Problem(codes.SAFEGUARDING_CONCERN,
                                       random_date(rng, years_before(as_of, 2), as_of - 14 * DAY)))
    _prescribe(rng, person, record, as_of)
    _allergies(rng, person, record, as_of)
    add_results(rng, person, record, as_of)
    add_vaccinations(rng, person, record, as_of)
    if rng.random() < 0.75:
        record.last_consultation = at_time(rng, random_date(rng, years_before(as_of, 1), as_of - DAY))
    return record


def _prescribe(rng: random.Random, person: Person, record: GpRecord, as_of: date) -> None:
    seen: set[str] = set()
    for problem in record.problems:
        for drug, chance in codes.LTC_DRUGS.get(problem.code.code, ()):
            if drug.code in seen or rng.random() >= chance:
                continue
            seen.add(drug.code)
            start = min(problem.onset + rng.randrange(0, 180) * DAY, as_of - 30 * DAY)
            if rng.random() < 0.1:
                end = random_date(rng, start + 30 * DAY, as_of - 7 * DAY)
                record.medications.append(Medication(drug, start, "stopped", end=end, last_issue=end - 14 * DAY,
                                                     reason="Stopped at medication review"))
                continue
            note = rng.choice(codes.LTC_DRUG_NOTES) if rng.random() < 0.08 else None
            record.medications.append(Medication(drug, start, "active", last_issue=as_of - rng.randint(1, 56) * DAY,
                                                 note=note))
    age = person.age(as_of)
    if person.sex == "female" and 16 <= age <= 45 and rng.random() < 0.12:
        start = random_date(rng, years_before(as_of, 3), as_of - 60 * DAY)
        record.medications.append(Medication(codes.COC, start, "active", last_issue=as_of - rng.randint(1, 84) * DAY))
    if age >= 18 and rng.random() < 0.25:
        start = random_date(rng, years_before(as_of, 2), as_of - 30 * DAY)
        record.medications.append(Medication(codes.PARACETAMOL, start, "completed", end=start + 14 * DAY,
                                             last_issue=start))


def _allergies(rng: random.Random, person: Person, record: GpRecord, as_of: date) -> None:
    recorded = random_date(rng, record.registered, as_of - DAY)
    roll = rng.random()
    if roll < 0.12:
        reaction = rng.choice((codes.RASH, codes.URTICARIA, codes.ANAPHYLAXIS))
        record.allergies.append(Allergy(codes.PENICILLIN_ALLERGY, recorded, "medication", reaction,
                                        "high" if reaction == codes.ANAPHYLAXIS else "low"))
    elif roll < 0.14:
        record.allergies.append(Allergy(codes.PEANUT_ALLERGY, recorded, "food", codes.ANAPHYLAXIS, "high"))
    elif roll < 0.15:
        record.allergies.append(Allergy(codes.LATEX_ALLERGY, recorded, "environment", codes.URTICARIA))
    elif roll < 0.165:
        record.allergies.append(Allergy(codes.ASPIRIN_ALLERGY, recorded, "medication", codes.WHEEZE))
    elif roll < 0.7:
        record.allergies.append(Allergy(codes.NO_KNOWN_ALLERGY, recorded))


def add_results(rng: random.Random, person: Person, record: GpRecord, as_of: date) -> None:
    age = person.age(as_of)
    since = max(years_before(as_of, 5), record.registered)
    diabetic = record.has(codes.DIABETES)
    if diabetic:
        onset = next(p.onset for p in record.problems if p.code == codes.DIABETES)
        day, level = max(since, onset), rng.uniform(52, 80)
        while day < as_of - 14 * DAY and len([r for r in record.results if r.test == codes.HBA1C]) < 10:
            record.results.append(Result(codes.HBA1C, at_time(rng, day), _measure(rng, codes.HBA1C, level)))
            level = max(44.0, level - rng.uniform(-2, 5))
            day += rng.randint(150, 220) * DAY
    renal = record.has(codes.CKD)
    if renal or diabetic or record.has(codes.HYPERTENSION) or record.has(codes.HEART_FAILURE) or (
            age >= 60 and rng.random() < 0.5):
        level = rng.uniform(35, 55) if renal else rng.uniform(65, 95) - max(age - 60, 0) * 0.4
        day = since + rng.randrange(0, 200) * DAY
        while day < as_of - 14 * DAY:
            record.results.append(Result(codes.EGFR, at_time(rng, day), _measure(rng, codes.EGFR, level)))
            level -= rng.uniform(0, 2.5)
            day += rng.randint(300, 420) * DAY
    if record.has(codes.HYPERTENSION):
        day, systolic = since + rng.randrange(0, 120) * DAY, rng.uniform(138, 165)
        while day < as_of - 7 * DAY:
            record.pressures.append(_pressure(rng, at_time(rng, day), systolic))
            systolic = max(118.0, systolic - rng.uniform(-3, 6))
            day += rng.randint(150, 360) * DAY
    elif age >= 40:
        for _ in range(rng.randint(0, 2)):
            record.pressures.append(_pressure(rng, at_time(rng, random_date(rng, since, as_of - DAY)), 128))
    record.pressures.sort(key=lambda bp: bp.at)


def _pressure(rng: random.Random, when: datetime, systolic: float) -> BloodPressure:
    sys_value = round(rng.gauss(systolic, 8))
    return BloodPressure(when, sys_value, round(sys_value * rng.uniform(0.55, 0.65)))


MMR_INTRODUCED = date(1988, 10, 1)


def add_vaccinations(rng: random.Random, person: Person, record: GpRecord, as_of: date) -> None:
    age = person.age(as_of)
    # MMR came to the UK schedule in October 1988, for children then reaching their first dose: a man born in
    # 1945 was not given it at 13 months (those older caught up in campaigns this record does not model)
    if person.birth_date + 400 * DAY >= MMR_INTRODUCED:
        for dose_age, days in ((1, 400), (4, 1220)):
            if age >= dose_age:
                record.vaccinations.append(Vaccination(codes.MMR_VACCINE, person.birth_date + days * DAY))
    if age >= 65 or (record.problems and age >= 18 and rng.random() < 0.5):
        for back in range(3):
            season = date(as_of.year - back - (as_of.month < 10), 10, 1)
            if season >= record.registered and rng.random() < 0.8:
                record.vaccinations.append(Vaccination(codes.INFLUENZA_VACCINE, season + rng.randrange(60) * DAY))
    if age >= 66 and rng.random() < 0.7:
        record.vaccinations.append(Vaccination(codes.PNEUMOCOCCAL_VACCINE,
                                               years_before(person.birth_date, -65) + rng.randrange(300) * DAY))
    if age >= 75 and rng.random() < 0.7:
        record.vaccinations.append(Vaccination(codes.COVID_VACCINE,
                                               date(as_of.year - (as_of.month < 10), 9, 15) + rng.randrange(40) * DAY))
    record.vaccinations = [v for v in record.vaccinations if v.on < as_of]


# --- Hospital stays ---------------------------------------------------------------------------------
@dataclass
class Admission:
    mrn: str
    admitted: datetime
    discharged: datetime
    reason: Code
    diagnoses: list[Code]
    ward: str
    consultant: str
    continued: list[Drug]
    started: list[Medication]
    stopped: list[Medication]
    labs: list[list[Result]]  # one list per blood draw
    pressures: list[BloodPressure]
    follow_up: str
    procedure: Code | None = None


_STOP_REASONS = {
    codes.AMLODIPINE.code: "postural hypotension",
    codes.RAMIPRIL.code: "acute kidney injury",
    codes.METFORMIN.code: "acute kidney injury",
    codes.TEMAZEPAM.code: "falls risk",
    codes.AMITRIPTYLINE.code: "falls risk",
    codes.SPIRONOLACTONE.code: "raised potassium",
}
_WARDS = ("Ward 12 (Care of the Elderly)", "Ward 7 (Acute Medicine)", "Ward 3 (Respiratory)",
          "Ward 9 (Surgery)", "Ward 14 (Orthopaedics)")


def admissions(rng: random.Random, person: Person, gp: GpRecord, as_of: date) -> list[Admission]:
    age = person.age(as_of)
    chance = 0.04 if age < 16 else 0.06 if age < 45 else 0.10 if age < 65 else 0.2 if age < 75 else (
        0.32 if age < 85 else 0.45)
    if rng.random() >= chance:
        return []
    stays = []
    mrn = hospital_number(person.number)
    for n in range(1 + (rng.random() < 0.3)):
        admitted_on = random_date(rng, years_before(as_of, 3), as_of - 20 * DAY)
        if n and rng.random() < rate("duplicate_hospital_number"):
            mrn = "T" + mrn[1:]  # registered again: the trust issued a second hospital number
        stays.append(admission(rng, person, gp, at_time(rng, admitted_on, 0, 24), mrn, as_of))
    return sorted(stays, key=lambda s: s.admitted)


def admission(rng: random.Random, person: Person, gp: GpRecord, admitted: datetime, mrn: str, as_of: date,
              reason: Code | None = None, nights: int | None = None) -> Admission:
    """One emergency stay: what brought the person in, what changed in hospital, what the GP is asked to do."""
    older = person.age(as_of) >= 65
    if reason is None:
        options = list(codes.ADMISSION_REASONS_OLDER if older else codes.ADMISSION_REASONS_YOUNGER)
        options += [c for c in (codes.HEART_FAILURE, codes.COPD) if gp.has(c)]
        reason = rng.choice(options)
    nights = nights or rng.randint(2, 14 if older else 5)
    discharged = datetime.combine(min(admitted.date() + nights * DAY, as_of - DAY), time(rng.randint(10, 17)),
                                  tzinfo=UTC)
    comorbid = [p.code for p in gp.problems if p.resolved is None and p.code not in SEVERE_MENTAL_ILLNESS]
    diagnoses = [reason] + rng.sample(comorbid, min(len(comorbid), 2))
    active = [m for m in gp.medications if m.status == "active" and m.start < admitted.date()]
    stopped: list[Medication] = []
    stoppable = [m for m in active if m.drug.code in _STOP_REASONS]
    if stoppable and rng.random() < 0.6:
        old = rng.choice(stoppable)
        stopped.append(Medication(old.drug, old.start, "stopped", end=discharged.date(),
                                  reason=f"Stopped in hospital: {_STOP_REASONS[old.drug.code]}"))
    started: list[Medication] = []
    new_drug = {codes.HEART_FAILURE.code: codes.FUROSEMIDE, codes.FRACTURED_NECK_OF_FEMUR.code: codes.MORPHINE_MR}.get(
        reason.code, codes.PARACETAMOL)
    if new_drug not in [m.drug for m in active] and rng.random() < 0.7:
        started.append(Medication(new_drug, discharged.date(), "active", reason=f"Started in hospital for "
                                  f"{reason.display.lower()}"))
    continued = [m.drug for m in active if m.drug not in [s.drug for s in stopped]]
    draws = [admitted + timedelta(hours=1), discharged - timedelta(hours=rng.randint(3, 20))]
    tests = list(codes.RENAL_PANEL + codes.BLOOD_COUNT) + [codes.CRP]
    labs = [[Result(t, when, _measure(rng, t)) for t in tests] for when in draws]
    if gp.has(codes.DIABETES):
        labs[0].append(Result(codes.HBA1C, draws[0], _measure(rng, codes.HBA1C, 62)))
    pressures = [_pressure(rng, admitted + timedelta(minutes=20), 150), _pressure(rng, draws[1], 130)]
    return Admission(
        mrn=mrn, admitted=admitted, discharged=discharged, reason=reason, diagnoses=diagnoses,
        ward=rng.choice(_WARDS[:3] if reason != codes.FRACTURED_NECK_OF_FEMUR else _WARDS[4:]),
        consultant=rng.choice(names.CONSULTANTS), continued=continued, started=started, stopped=stopped,
        labs=labs, pressures=pressures, follow_up=follow_up(stopped, started, reason),
        procedure=codes.APPENDICECTOMY if reason == codes.APPENDICITIS else None,
    )


def follow_up(stopped: list[Medication], started: list[Medication], reason: Code) -> str:
    asks = ["Please check U&E and blood pressure in 2 weeks"]
    asks += [f"{m.drug.display} was stopped ({(m.reason or '').split(': ')[-1]}); please do not restart "
             f"without review" for m in stopped]
    asks += [f"{m.drug.display} was started; please add to repeat prescriptions if appropriate" for m in started]
    if reason == codes.FALL:
        asks.append("Please refer to the community falls service")
    return ". ".join(asks) + "."


def discharge_letter(person: Person, stay: Admission, given: str, family: str) -> str:
    """The text of the discharge summary the hospital sends (free text, as real letters are)."""
    lines = [
        "Riverside University Hospitals NHS Trust - Discharge summary",
        f"Patient: {given} {family}, born {person.birth_date:%d/%m/%Y}, hospital number {stay.mrn}",
        f"Admitted {stay.admitted:%d/%m/%Y} to {stay.ward} under {stay.consultant}; "
        f"discharged {stay.discharged:%d/%m/%Y}.",
        f"Presenting problem: {stay.reason.display}.",
        "Diagnoses: " + "; ".join(d.display for d in stay.diagnoses) + ".",
    ]
    lines += [f"NEW: {m.drug.display} - {m.drug.dose}" for m in stay.started]
    lines += [f"STOPPED: {m.drug.display} - {(m.reason or '').split(': ')[-1]}" for m in stay.stopped]
    lines += [f"Follow-up requested of the GP: {stay.follow_up}"]
    return "\n".join(lines)


# --- Community, mental health, ambulance, hospice, social care --------------------------------------
@dataclass
class NursingEpisode:
    start: date
    weekday: int  # 0 = Monday
    problem: Code
    visits: list[datetime]
    wounds: list[tuple[datetime, float, float]]
    nurse: str
    team: str
    team_phone: str


_WEEKDAYS = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays")
FHIR_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")


def weekday_name(index: int) -> str:
    return _WEEKDAYS[index]


def nursing_team(person: Person) -> tuple[str, str]:
    town = person.address.town
    return f"{town} District Nursing Team", f"01632 9602{10 + [t[0] for t in names.TOWNS].index(town):02d}"


def nursing_episode(rng: random.Random, person: Person, gp: GpRecord, stays: list[Admission],
                    as_of: date) -> NursingEpisode | None:
    age = person.age(as_of)
    frail = any(gp.has(c) for c in (codes.HEART_FAILURE, codes.DIABETES, codes.DEMENTIA, codes.COPD))
    chance = (0.2 if frail else 0.05) if age >= 75 else (0.03 if age >= 65 else 0.0)
    if stays and age >= 65 and (as_of - stays[-1].discharged.date()).days < 60:
        chance = 0.4
    if rng.random() >= chance:
        return None
    start = as_of - rng.randint(14, 180) * DAY
    return district_nursing(rng, person, start, rng.randrange(5), as_of)


def district_nursing(rng: random.Random, person: Person, start: date, weekday: int, as_of: date,
                     problem: Code | None = None) -> NursingEpisode:
    problem = problem or rng.choice((codes.LEG_ULCER, codes.PRESSURE_ULCER))
    first = start + ((weekday - start.weekday()) % 7) * DAY
    days = [first + 7 * n * DAY for n in range(((as_of - first).days // 7) + 1) if first + 7 * n * DAY < as_of]
    visits = [at_time(rng, d, 9, 16) for d in days[-8:]]
    length, width = rng.uniform(3, 7), rng.uniform(2, 4)
    wounds = []
    for when in visits:
        wounds.append((when, round(length, 1), round(width, 1)))
        length, width = max(0.5, length * rng.uniform(0.85, 1.0)), max(0.3, width * rng.uniform(0.85, 1.0))
    team, phone = nursing_team(person)
    return NursingEpisode(start, weekday, problem, visits, wounds, rng.choice(names.DISTRICT_NURSES), team, phone)


def sexual_health_visits(rng: random.Random, person: Person, as_of: date) -> list[tuple[datetime, Code | None]]:
    if not 16 <= person.age(as_of) <= 30 or rng.random() >= 0.04:
        return []
    visits = []
    for _ in range(rng.randint(1, 2)):
        when = at_time(rng, random_date(rng, years_before(as_of, 2), as_of - DAY), 9, 19)
        visits.append((when, codes.CHLAMYDIA if rng.random() < 0.25 else None))
    return sorted(visits, key=lambda v: v[0])


@dataclass
class MentalHealthEpisode:
    start: date
    condition: Code
    team: str
    team_phone: str
    coordinator: str
    contacts: list[datetime]
    letters: list[tuple[datetime, str, bool]]  # when, text, restricted


def mental_health_episode(rng: random.Random, person: Person, gp: GpRecord, as_of: date,
                          force: Code | None = None) -> MentalHealthEpisode | None:
    condition = force
    if condition is None:
        for problem in gp.problems:
            chance = {codes.DEPRESSION.code: 0.08, codes.DEMENTIA.code: 0.35}.get(
                problem.code.code, 0.9 if problem.code.code in SEVERE_MENTAL_ILLNESS else 0.0)
            if problem.resolved is None and rng.random() < chance:
                condition = problem.code
                break
    if condition is None:
        return None
    memory = condition == codes.DEMENTIA
    team = "Memory Assessment Service" if memory else f"{person.address.town} Community Mental Health Team"
    start = random_date(rng, years_before(as_of, 4), as_of - 30 * DAY)
    contacts = sorted(at_time(rng, random_date(rng, start, as_of - DAY)) for _ in range(rng.randint(2, 6)))
    coordinator = rng.choice(names.CARE_COORDINATORS)
    letters = []
    for when in contacts[-rng.randint(1, 2):]:
        restricted = rng.random() < 0.3
        text = (f"Seen by {coordinator} ({team}). Mood and risk reviewed; plan discussed with the patient. "
                + ("Contains details of a family member's history shared in confidence." if restricted else
                   "No change to medication. Next review in 6 weeks."))
        letters.append((when, text, restricted))
    phone = "01632 960310" if memory else "01632 960320"
    return MentalHealthEpisode(start, condition, team, phone, coordinator, contacts, letters)


@dataclass
class AmbulanceCall:
    at: datetime
    impression: Code
    vitals: list[Result]
    pressure: BloodPressure
    conveyed: bool


def ambulance_calls(rng: random.Random, person: Person, stays: list[Admission], as_of: date) -> list[AmbulanceCall]:
    calls = [ambulance_call(rng, stay.admitted - timedelta(minutes=rng.randint(40, 120)), stay.reason, True)
             for stay in stays if rng.random() < 0.6]
    age = person.age(as_of)
    chance = 0.03 if age < 16 else 0.06 if age < 65 else 0.12 if age < 75 else 0.22 if age < 85 else 0.35
    if rng.random() < chance:
        when = at_time(rng, random_date(rng, years_before(as_of, 3), as_of - DAY), 0, 24)
        calls.append(ambulance_call(rng, when, rng.choice(codes.AMBULANCE_IMPRESSIONS), False))
    return sorted(calls, key=lambda c: c.at)


def ambulance_call(rng: random.Random, when: datetime, impression: Code, conveyed: bool) -> AmbulanceCall:
    tests = (codes.HEART_RATE, codes.RESPIRATORY_RATE, codes.OXYGEN_SATURATION, codes.TEMPERATURE, codes.GCS)
    vitals = [Result(t, when + timedelta(minutes=10), min(_measure(rng, t), 100.0 if t.unit == "%" else 999.0))
              for t in tests]
    for result in vitals:
        if result.test == codes.GCS:
            result.value = float(min(15, max(3, round(result.value))))
    return AmbulanceCall(when, impression, vitals, _pressure(rng, when + timedelta(minutes=12), 140), conveyed)


@dataclass
class HospiceEpisode:
    start: date
    end: date | None
    reason: Code
    visits: list[datetime]


def hospice_episode(rng: random.Random, person: Person, gp: GpRecord, as_of: date) -> HospiceEpisode | None:
    age = person.age(as_of)
    serious = [c for c in (codes.HEART_FAILURE, codes.COPD, codes.DEMENTIA) if gp.has(c)]
    chance = (0.06 if serious else 0.015 if age >= 80 else 0.0) if age >= 70 else 0.0
    if rng.random() >= chance:
        return None
    start = as_of - rng.randint(30, 720) * DAY
    end = random_date(rng, start + 30 * DAY, as_of - DAY) if rng.random() < 0.4 else None
    return hospice(rng, start, end, serious[0] if serious else codes.HEART_FAILURE)


def hospice(rng: random.Random, start: date, end: date | None, reason: Code) -> HospiceEpisode:
    last = end or start + 365 * DAY
    visits = sorted(at_time(rng, random_date(rng, start, last)) for _ in range(rng.randint(2, 5)))
    return HospiceEpisode(start, end, reason, visits)


@dataclass
class Assessment:
    id: str
    type: str
    on: date
    status: str
    outcome: str
    third_party: str
    worker: str
    team: str
    updated: datetime


_OUTCOMES = {
    "Care Act Assessment": ("Eligible needs identified. Home care package agreed: two calls a day.",
                            "Eligible needs identified. Day centre twice a week and telecare pendant alarm.",
                            "No eligible needs. Signposted to Age UK Riverside befriending service."),
    "Review": ("Package of care continues; no change.", "Care increased to three calls a day after hospital stay."),
    "Carer's Assessment": ("Carer's break funded: four weeks respite a year.",),
    "Safeguarding Enquiry (s42)": ("Section 42 enquiry opened; protection plan agreed with the person.",),
}
_THIRD_PARTY = (
    "Neighbour {neighbour} reports he has been leaving the front door open at night.",
    "Neighbour {neighbour} reports she has not been collecting her post and seems low.",
    "Daughter is the main carer and says she is finding it hard to cope; works full time.",
    "Son reports financial worries and asked that this is not discussed with his parent.",
)


def social_care_case(rng: random.Random, person: Person, gp: GpRecord, as_of: date) -> list[Assessment]:
    age = person.age(as_of)
    chance = 0.12 if age >= 75 else 0.04 if age >= 65 else 0.01 if age >= 18 else 0.0
    if gp.has(codes.DEMENTIA):
        chance = 0.4
    if any(p.code.code in SEVERE_MENTAL_ILLNESS for p in gp.problems):
        chance = max(chance, 0.25)
    if gp.has(codes.SAFEGUARDING_CONCERN):
        chance = 0.8
    if rng.random() >= chance:
        return []
    kinds = ["Care Act Assessment"] + rng.sample(["Review", "Carer's Assessment"], rng.randint(0, 2))
    if gp.has(codes.SAFEGUARDING_CONCERN):
        kinds.append("Safeguarding Enquiry (s42)")
    days = sorted(random_date(rng, years_before(as_of, 3), as_of - 3 * DAY) for _ in kinds)
    team = f"{person.address.town} Adult Social Care Team" if age < 65 else "Older People's Locality Team"
    return [assessment(rng, person, kind, day, team, as_of) for kind, day in zip(kinds, days, strict=True)]


def assessment(rng: random.Random, person: Person, kind: str, day: date, team: str, as_of: date,
               third_party: str | None = None, outcome: str | None = None) -> Assessment:
    if third_party is None:
        third_party = rng.choice(_THIRD_PARTY).format(neighbour=rng.choice(names.NEIGHBOUR_NAMES)) if (
            rng.random() < 0.35) else ""
    updated = at_time(rng, min(day + rng.randint(0, 20) * DAY, as_of - DAY))
    status = "Completed" if (as_of - day).days > 30 or rng.random() < 0.5 else "In progress"
    return Assessment(id=f"A{rng.randrange(10**8):08d}", type=kind, on=day, status=status,
                      outcome=outcome or rng.choice(_OUTCOMES[kind]), third_party=third_party,
                      worker=rng.choice(names.WORKERS), team=team, updated=updated)


# --- Everything about one person ------------------------------------------------------------------------
@dataclass
class History:
    gp: GpRecord
    admissions: list[Admission] = field(default_factory=list)
    nursing: NursingEpisode | None = None
    sexual_health: list[tuple[datetime, Code | None]] = field(default_factory=list)
    mental_health: MentalHealthEpisode | None = None
    ambulance: list[AmbulanceCall] = field(default_factory=list)
    hospice: HospiceEpisode | None = None
    social_care: list[Assessment] = field(default_factory=list)


def history(rng: random.Random, person: Person, as_of: date) -> History:
    gp = gp_record(rng, person, as_of)
    stays = admissions(rng, person, gp, as_of)
    return History(
        gp=gp, admissions=stays, nursing=nursing_episode(rng, person, gp, stays, as_of),
        sexual_health=sexual_health_visits(rng, person, as_of),
        mental_health=mental_health_episode(rng, person, gp, as_of),
        ambulance=ambulance_calls(rng, person, stays, as_of), hospice=hospice_episode(rng, person, gp, as_of),
        social_care=social_care_case(rng, person, gp, as_of),
    )
