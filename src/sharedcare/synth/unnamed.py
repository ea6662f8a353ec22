"""Records made before a person is named or identified: newborns' birth records and unknown patients'.

UK feeds carry records whose given name is a placeholder or missing: a maternity system registers a baby
at birth as "Baby", "Baby of <mother>" or "Twin 1" (the birth notification gives the NHS number within
hours, so some records carry it and some do not), and an ambulance crew or emergency department that
cannot learn who a patient is registers "UNKNOWN" / "Unknown Male" with an estimated birth date of
1 January and the NHS pseudo-postcode ZZ99 3WZ (address not known); most are identified within the day and
the service sends the record again with the real details (`_identified`). Each such record is an *extra*
source record of a real person (its truth is that person), drawn from a generator of its own, so the
rest of the ICS is byte for byte what it was without them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from string import ascii_uppercase

from sharedcare.synth.clinical import History
from sharedcare.synth.fhir_feeds import CALL_LENGTH, Bundle, FhirFeed, Source, encounter_resource, new_id
from sharedcare.synth.noise import Demographics, rate
from sharedcare.synth.people import Person

Json = dict[str, object]

# Given names a maternity system writes before naming (weights are assumptions; forms from NHS practice).
_BABY_FORMS = (("Baby", 35), ("Baby {sex}", 20), ("Baby of {mother}", 10), ("B/O {mother}", 5), ("", 20),
               ("{bb}", 5), ("Infant", 3), ("XX", 2))
_TWIN_FORMS = (("Twin {n}", 40), ("Twin {letter}", 30))
# (given, family) an unknown patient is registered under; "" family = the surname a relative gave.
_UNKNOWN_FORMS = ((("UNKNOWN", "UNKNOWN"), 40), (("Unknown {sex}", "Unknown"), 25), (("Not known", "Not known"), 10),
                  (("", ""), 15), (("UNK", ""), 10))
NOT_KNOWN_POSTCODE = "ZZ99 3WZ"  # the NHS Data Dictionary's pseudo-postcode for an address not known


@dataclass(frozen=True)
class Unnamed:
    """Where the extra records go: (organisation, FHIR system) of each, None when the ICS has none."""

    maternity: tuple[str, str] | None  # the acute trust's EPR
    ambulance: tuple[str, str] | None


def _weighted(rng: random.Random, forms: tuple[tuple[object, int], ...]) -> object:
    return rng.choices([f for f, _ in forms], [w for _, w in forms])[0]


def baby_given(rng: random.Random, person: Person, twin: int | None) -> str:
    """The given name on a newborn's birth record: a placeholder, or "" for none."""
    kin = person.next_of_kin
    mother = kin.given if kin and kin.relationship.label == "Mother" else None
    if twin is not None and rng.random() < 0.7:
        form = str(_weighted(rng, _TWIN_FORMS))
    else:
        form = str(_weighted(rng, _BABY_FORMS))
        if "{mother}" in form and mother is None:
            form = "Baby"  # the next of kin is the father
    return form.format(sex="Boy" if person.sex == "male" else "Girl", mother=mother,
                       bb="BB" if person.sex == "male" else "BG", n=(twin or 0) + 1, letter=ascii_uppercase[twin or 0])


class UnnamedRecords:
    """Writes the extra records of one household and records their truth."""

    def __init__(self, where: Unnamed, feed: FhirFeed, emit: Callable[[Source, list[str]], None],
                 as_of: date) -> None:
        self.where, self.feed, self.as_of = where, feed, as_of
        self.emit = emit

    def household(self, rng: random.Random, members: list[tuple[Person, History]]) -> None:
        people = [p for p, _ in members]
        for person, hist in members:
            if person.scripted:
                continue
            maternity = self.where.maternity
            if maternity and person.age(self.as_of) < 5 and rng.random() < rate("birth_record"):
                twins = [p for p in people if p.birth_date == person.birth_date and p.family == person.family]
                self._birth(rng, person, twins.index(person) if len(twins) > 1 else None, maternity)
            if self.where.ambulance and hist.ambulance and rng.random() < rate("unknown_patient", "ambulance"):
                self._unknown(rng, person, hist, self.where.ambulance)

    def _birth(self, rng: random.Random, person: Person, twin: int | None, where: tuple[str, str]) -> None:
        org, system = where
        nhs = person.nhs_number if rng.random() < rate("birth_record", "nhs_number") else None
        given = baby_given(rng, person, twin)
        view = Demographics("", given, "", person.family, "", person.birth_date, person.sex, nhs)
        source = Source(org, system, new_id(rng), view, person)
        born = datetime.combine(person.birth_date, time(rng.randrange(24), rng.randrange(60)), tzinfo=UTC)
        b = Bundle(self.feed, source, born + timedelta(days=1))
        _rename(b, person.family, given)
        b.add(encounter_resource(b.patient_ref, "IMP", "inpatient encounter", None, born, born + timedelta(days=1),
                                 self.feed.org(org), service="Maternity: birth"))
        self.feed.noise.count("birth_record")
        self.emit(source, [b.to_json()])

    def _unknown(self, rng: random.Random, person: Person, hist: History, where: tuple[str, str]) -> None:
        org, system = where
        form, surname = rng.choices([f for f, _ in _UNKNOWN_FORMS], [w for _, w in _UNKNOWN_FORMS])[0]
        given = form.format(sex="Male" if person.sex == "male" else "Female")
        family = surname or person.family
        guessed = date(min(person.birth_date.year + rng.randint(-5, 5), self.as_of.year - 1), 1, 1)
        view = Demographics("", given, "", family, "", guessed, person.sex, None)
        source = Source(org, system, new_id(rng), view, person)
        call = rng.choice(hist.ambulance)
        bundles = [_unknown_patient(self.feed.ambulance(source, call), family, given)]
        self.feed.noise.count("unknown_patient")
        identified = self._identified(random.Random(f"{source.patient_id}:identified"), source, call.at)
        self.emit(source, bundles + ([identified] if identified else []))

    def _identified(self, rng: random.Random, source: Source, called: datetime) -> str | None:
        """The record sent again once the patient is identified (a Patient bundle with their real details), or
        None: not identified, or not by the ICS's date. From a generator of its own, so the rest is unchanged."""
        if rng.random() >= rate("unknown_patient_identified"):
            return None
        when = called + CALL_LENGTH + timedelta(minutes=rng.randrange(60, 24 * 60))
        if when.date() >= self.as_of:
            return None
        person = source.person
        nhs = person.nhs_number if rng.random() < rate("unknown_patient_identified", "nhs_number") else None
        view = Demographics(person.title, person.given, person.middle, person.family, "", person.birth_date,
                            person.sex, nhs)
        feed = FhirFeed(rng, self.feed.org_names, self.feed.counts, self.as_of, self.feed.noise)
        self.feed.noise.count("unknown_patient_identified")
        return Bundle(feed, Source(source.org, source.system, source.patient_id, view, person), when).to_json()


def _rename(b: Bundle, family: str, given: str) -> None:
    """The Patient's name as registered: a placeholder given name, or none at all."""
    patient: Json = b.entries[0]["resource"]
    patient["name"] = [{"use": "official", "family": family, **({"given": [given]} if given else {})}]


def _unknown_patient(bundle_json: str, family: str, given: str) -> str:
    """An ambulance bundle with the Patient as an unknown patient is registered: no contact details, no
    GP, no next of kin, address not known."""
    bundle = json.loads(bundle_json)
    patient = bundle["entry"][0]["resource"]
    patient["name"] = [{"use": "official", "family": family, **({"given": [given]} if given else {})}]
    patient["address"] = [{"use": "temp", "line": ["NOT KNOWN"], "postalCode": NOT_KNOWN_POSTCODE, "country": "GB"}]
    for field in ("telecom", "contact", "generalPractitioner"):
        patient.pop(field, None)
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":"))
