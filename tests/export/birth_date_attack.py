"""The attack on a pseudonymised extract that the date shift is for, using the extract alone: a
vaccine given on a schedule (the first MMR at one year, the 8-week immunisations) dates a child's birth.

The schedule's offset is learned from the extract itself: for each vaccine code, the one number of days
that puts every person's first dose in their published month of birth. A person's birth is then their
first dose less that offset. An attacker holding a register of date of birth, sex and postcode district
(a school list, a nursery's, a leaked one) links a child when only one person on it has the recovered
values: a re-identification when that person is the child.

Run on an extract and its store, for the figures in docs/architecture.md:
    PYTHONPATH=.:src python -m tests.export.birth_date_attack STORE_URL EXTRACT_DIR [--purpose P]
(with `SHAREDCARE_PSEUDONYM_KEY` as the extract was made).
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import select

from sharedcare.governance.pseudonymise import Pseudonymiser
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord

SCHEDULE_FIT = 0.95  # a code is a schedule when one offset puts this share of first doses in the birth month


@dataclass(frozen=True)
class Outcome:
    """What the attack got for the children (born in the 24 months before the latest birth month)."""

    children: int  # under-2s in the extract
    dated: int  # of them, with a birth recovered
    exact: int  # recovered to the day
    within_3_days: int
    reidentified: int  # unique on the register by (recovered birth, sex, district), and the right child


def _month(text: str) -> tuple[date, date]:
    first = date(int(text[:4]), int(text[5:7]), 1)
    return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])


def recovered_births(lines: dict[str, list[str]]) -> dict[str, date]:
    """A birth date per person (pseudonym) for whom a scheduled vaccine dates it, from the extract alone."""
    months = {p["id"]: _month(p["birthDate"]) for p in map(json.loads, lines["Patient"]) if len(p.get("birthDate",
                                                                                                       "")) >= 7}
    first_dose: dict[str, dict[str, date]] = defaultdict(dict)  # code -> person -> first dose
    for line in lines.get("Immunization", []):
        vaccine = json.loads(line)
        person = vaccine["patient"]["reference"].removeprefix("Patient/")
        given = vaccine.get("occurrenceDateTime", "")
        if person not in months or len(given) != 10:
            continue
        for coding in vaccine["vaccineCode"]["coding"]:
            doses = first_dose[coding["code"]]
            doses[person] = min(doses.get(person, date.max), date.fromisoformat(given))
    births: dict[str, date] = {}
    for doses in sorted(first_dose.values(), key=len):  # the most common schedule wins
        fits: Counter[int] = Counter()
        for person, given in doses.items():  # the offsets that put this dose in the person's birth month
            first, last = months[person]
            fits.update(range((given - last).days, (given - first).days + 1))
        offset, fitted = fits.most_common(1)[0] if fits else (0, 0)
        if offset > 0 and fitted >= SCHEDULE_FIT * len(doses) >= 10:
            births.update({person: given - timedelta(days=offset) for person, given in doses.items()})
    return births


def attack(lines: dict[str, list[str]], true_births: dict[str, date]) -> Outcome:
    """The attack's outcome against the true dates of birth (by pseudonym); the register is everyone's
    true date of birth, sex and district."""
    patients = {p["id"]: p for p in map(json.loads, lines["Patient"])}

    def key(person: str, born: date) -> tuple[date, str, str]:
        patient = patients[person]
        return born, patient.get("gender", ""), (patient.get("address") or [{}])[0].get("postalCode", "")

    register = Counter(key(p, born) for p, born in true_births.items() if p in patients)
    latest = max(p["birthDate"][:7] for p in patients.values() if "birthDate" in p)
    cutoff = f"{int(latest[:4]) - 2}{latest[4:7]}"
    children = {p for p, patient in patients.items() if patient.get("birthDate", "")[:7] > cutoff}
    births = recovered_births(lines)
    dated = {p: births[p] for p in children if p in births and p in true_births}
    return Outcome(children=len(children), dated=len(dated),
                   exact=sum(born == true_births[p] for p, born in dated.items()),
                   within_3_days=sum(abs((born - true_births[p]).days) <= 3 for p, born in dated.items()),
                   reidentified=sum(born == true_births[p] and register[key(p, born)] == 1
                                    for p, born in dated.items()))


def true_births(db: Database, pseudonymiser: Pseudonymiser) -> dict[str, date]:
    """Each person's date of birth in the store (the earliest, where sources disagree), by pseudonym."""
    births: dict[str, date] = {}
    with db.session() as session:
        for person, born in session.execute(select(PatientRecord.person_id, PatientRecord.birth_date)
                                            .where(PatientRecord.birth_date.is_not(None))):
            pseudonym = pseudonymiser.pseudonym("Patient", person)
            births[pseudonym] = min(births.get(pseudonym, born), born)
    return births


def read_extract(folder: Path) -> dict[str, list[str]]:
    return {path.stem: path.read_text(encoding="utf-8").splitlines() for path in folder.glob("*.ndjson")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("extract", type=Path)
    parser.add_argument("--purpose", default="secondary-use")
    args = parser.parse_args()
    db = Database(args.store)
    outcome = attack(read_extract(args.extract),
                     true_births(db, Pseudonymiser(os.environ["SHAREDCARE_PSEUDONYM_KEY"], args.purpose)))
    db.dispose()
    print(outcome)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
