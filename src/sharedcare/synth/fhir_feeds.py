"""FHIR R4 feeds shaped to UK Core: one `collection` Bundle per line of NDJSON, one Patient per bundle.

Each bundle carries `meta.source` naming the organisation's ODS code and system; each resource a
deterministic uuid, a UK Core profile and `lastUpdated`. Other resources reference the bundle's
Patient as `urn:uuid:<Patient.id>`, where Patient.id is the source's own stable id for the person
(for the acute trust's EPR, the hospital number that HL7 PID-3 also carries).
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sharedcare.synth import codes
from sharedcare.synth.clinical import (
    FHIR_WEEKDAYS,
    Admission,
    Allergy,
    AmbulanceCall,
    BloodPressure,
    GpRecord,
    HospiceEpisode,
    Medication,
    MentalHealthEpisode,
    NursingEpisode,
    Result,
    Vaccination,
    discharge_letter,
    weekday_name,
)
from sharedcare.synth.codes import Code, Test
from sharedcare.synth.noise import Demographics, Noise
from sharedcare.synth.people import Address, Person

Json = dict[str, Any]


def new_id(rng: random.Random) -> str:
    """A uuid4 drawn from the household's generator, so reruns give the same ids."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def instant(when: datetime) -> str:
    return when.isoformat()


def coding(code: Code, system: str = codes.SNOMED) -> Json:
    return {"coding": [{"system": system, "code": code.code, "display": code.display}], "text": code.display}


def org_ref(code: str, name: str) -> Json:
    return {"type": "Organization", "identifier": {"system": codes.ODS, "value": code}, "display": name}


def quantity(value: float, unit: str, decimals: int | None = None) -> Json:
    """A Quantity as a system sends it: a value measured to whole units (`decimals` 0) is written without a
    decimal point ("95", as a lab reports it), since FHIR keeps a decimal's precision as sent and the
    portal shows it so: "95.0" would say a precision no one measured."""
    sent: float | int = int(value) if decimals == 0 and float(value).is_integer() else value
    return {"value": sent, "unit": unit, "system": codes.UCUM, "code": unit}


@dataclass
class Source:
    """One organisation's record of one person: who holds it, under which id, with which demographics."""

    org: str
    system: str
    patient_id: str
    view: Demographics
    person: Person
    traced: bool = False  # a GP practice's own record: every name and address it has known

CALL_LENGTH = timedelta(minutes=75)  # an ambulance call's bundle is sent as the call ends
TREATMENT_FUNCTION = "https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary-treatment-function"


class Bundle:
    """Builds one bundle; every resource added references the bundle's Patient."""

    def __init__(self, feed: FhirFeed, source: Source, when: datetime, active: bool = True) -> None:
        self.feed, self.source, self.when = feed, source, when
        self.entries: list[Json] = []
        self.patient_ref = {"reference": f"urn:uuid:{source.patient_id}"}
        nhs_number = feed.noise.bundle_nhs_number(feed.rng, source.person, source.view.nhs_number)
        self.add(patient(feed, source, when, nhs_number, active), source.patient_id)

    def add(self, resource: Json, resource_id: str | None = None) -> Json:
        """Add a resource (giving it id and meta); returns a reference to it."""
        resource_id = resource_id or new_id(self.feed.rng)
        kind = resource["resourceType"]
        meta = {"profile": [codes.UK_CORE + kind], "lastUpdated": instant(self.when), **resource.get("meta", {})}
        resource = {"resourceType": kind, "id": resource_id, "meta": meta,
                    **{k: v for k, v in resource.items() if k not in ("resourceType", "meta")}}
        self.entries.append({"fullUrl": f"urn:uuid:{resource_id}", "resource": resource})
        self.feed.count(self.source.org, kind)
        return {"reference": f"urn:uuid:{resource_id}"}

    def to_json(self) -> str:
        bundle = {
            "resourceType": "Bundle", "id": new_id(self.feed.rng),
            "meta": {"source": f"{codes.ODS}|{self.source.org}#{self.source.system}",
                     "lastUpdated": instant(self.when)},
            "type": "collection", "timestamp": instant(self.when), "entry": self.entries,
        }
        self.feed.count(self.source.org, "Bundle")
        return json.dumps(bundle, ensure_ascii=False, separators=(",", ":"))


class FhirFeed:
    """Renders people's histories as FHIR bundles for each FHIR-speaking organisation."""

    def __init__(self, rng: random.Random, org_names: dict[str, str], counts: dict[str, Counter[str]],
                 as_of: date, noise: Noise) -> None:
        self.rng = rng
        self.noise = noise
        self.org_names = org_names
        self.counts = counts
        self.as_of = as_of

    def count(self, org: str, kind: str) -> None:
        self.counts.setdefault(org, Counter())[kind] += 1

    def org(self, code: str) -> Json:
        return org_ref(code, self.org_names.get(code, code))

    # --- GP practices -----------------------------------------------------------------------
    def gp_record(self, source: Source, record: GpRecord,
                  until: date | None = None) -> str:
        """The practice's structured record; `until` cuts it at the date the person left that practice."""
        cut = until or self.as_of
        when = datetime.combine(cut - timedelta(days=1), time(2, 0), tzinfo=UTC)
        b = Bundle(self, source, when, active=until is None)
        if record.last_consultation and until is None:
            start = record.last_consultation
            b.add(encounter_resource(b.patient_ref, "AMB", "ambulatory", codes.GP_CONSULTATION,
                                     start, start + timedelta(minutes=10), self.org(source.org)))
        for problem in record.problems:
            if problem.onset < cut:
                resolved = problem.resolved if problem.resolved and problem.resolved < cut else None
                b.add(condition(b.patient_ref, problem.code, problem.onset, "problem-list-item", resolved))
        for med in record.medications:
            if med.start < cut:
                running = until is not None and (med.end is None or med.end > cut)
                b.add(medication_statement(b.patient_ref, med, when, cut if running else None))
        for allergy in record.allergies:
            if allergy.recorded < cut:
                b.add(allergy_resource(b.patient_ref, allergy))
        for result in record.results:
            if result.at.date() < cut:
                b.add(observation(b.patient_ref, result, "laboratory", self.org(source.org)))
        for bp in record.pressures:
            if bp.at.date() < cut:
                b.add(blood_pressure(b.patient_ref, bp))
        for vaccination in record.vaccinations:
            if vaccination.on < cut:
                b.add(immunization(b.patient_ref, vaccination))
        return b.to_json()

    # --- Acute trust EPR ------------------------------------------------------------------------
    def discharge_summary(self, source: Source, stay: Admission, gp: str) -> str:
        b = Bundle(self, source, stay.discharged)
        trust = self.org(source.org)
        enc = b.add({**encounter_resource(b.patient_ref, "IMP", "inpatient encounter", None, stay.admitted,
                                          stay.discharged, trust, service=stay.ward),
                     "reasonCode": [coding(stay.reason)],
                     "hospitalization": {"dischargeDisposition": {"text": "Discharged to usual place of residence"}},
                     "participant": [{"individual": {"display": stay.consultant}}]})
        for diagnosis in stay.diagnoses:
            b.add(condition(b.patient_ref, diagnosis, stay.admitted.date(), "encounter-diagnosis", encounter=enc))
        if stay.procedure:
            b.add({"resourceType": "Procedure", "status": "completed", "code": coding(stay.procedure),
                   "subject": b.patient_ref, "encounter": enc,
                   "performedDateTime": instant(stay.admitted + timedelta(hours=6))})
        for drug in stay.continued:
            b.add(medication_statement(b.patient_ref, Medication(drug, stay.admitted.date(), "active",
                                                                 reason="Continued on discharge"), stay.discharged))
        for med in stay.started + stay.stopped:
            b.add(medication_statement(b.patient_ref, med, stay.discharged))
        for bp in stay.pressures:
            b.add(blood_pressure(b.patient_ref, bp, enc))
        letter = discharge_letter(source.person, stay, source.view.given, source.view.family)
        b.add(document(b.patient_ref, codes.DISCHARGE_SUMMARY, "Discharge summary", stay.discharged, letter,
                       trust, enc, restricted=False))
        b.add({"resourceType": "CarePlan", "status": "active", "intent": "plan",
               "category": [{"text": "Discharge follow-up"}], "title": "Follow-up requested of the GP",
               "description": stay.follow_up, "subject": b.patient_ref, "encounter": enc,
               "period": {"start": stay.discharged.date().isoformat()}, "author": trust,
               "activity": [{"detail": {"status": "not-started", "description": ask.strip() + ".",
                                        "performer": [self.org(gp)]}}
                            for ask in stay.follow_up.rstrip(".").split(". ")]})
        return b.to_json()

    # --- Community trust ---------------------------------------------------------------------------
    def district_nursing(self, source: Source, episode: NursingEpisode) -> list[str]:
        trust = self.org(source.org)
        start = datetime.combine(episode.start, time(9, 0), tzinfo=UTC)
        b = Bundle(self, source, start)
        problem = b.add(condition(b.patient_ref, episode.problem, episode.start, "problem-list-item"))
        day = weekday_name(episode.weekday)
        b.add({"resourceType": "CarePlan", "status": "active", "intent": "plan",
               "category": [{"text": "District nursing"}], "title": "District nursing care plan",
               "description": f"District nurse visits on {day} for wound care "
                              f"({episode.problem.display.lower()}). Contact {episode.team} on {episode.team_phone}.",
               "subject": b.patient_ref, "period": {"start": episode.start.isoformat()},
               "author": {"display": episode.team}, "addresses": [problem],
               "activity": [{"detail": {
                   "kind": "Appointment", "code": coding(codes.DISTRICT_NURSE_VISIT), "status": "scheduled",
                   "scheduledTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk",
                                                  "dayOfWeek": [FHIR_WEEKDAYS[episode.weekday]]}},
                   "performer": [{"display": f"{episode.nurse}, {episode.team}"}],
                   "description": f"Home visit every week on {day}: wound dressing and review."}}],
               "note": [{"text": f"Named nurse {episode.nurse}. Team phone {episode.team_phone} (08:00-18:00)."}]})
        bundles = [b.to_json()]
        for when, length, width in episode.wounds:
            b = Bundle(self, source, when + timedelta(minutes=40))
            enc = b.add(encounter_resource(b.patient_ref, "HH", "home health", codes.DISTRICT_NURSE_VISIT, when,
                                           when + timedelta(minutes=40), trust, service="District nursing"))
            b.add({"resourceType": "Observation", "status": "final",
                   "category": [observation_category("exam")], "code": coding(codes.WOUND_FINDING),
                   "subject": b.patient_ref, "encounter": enc, "effectiveDateTime": instant(when),
                   "bodySite": {"text": "Left lower leg" if episode.problem == codes.LEG_ULCER else "Sacrum"},
                   "valueString": "Granulating, moderate exudate, no signs of infection. Dressing renewed.",
                   "component": [{"code": coding(Code(t.code, t.display)), "valueQuantity": quantity(v, t.unit)}
                                 for t, v in ((codes.WOUND_LENGTH, length), (codes.WOUND_WIDTH, width))]})
            bundles.append(b.to_json())
        return bundles

    def sexual_health(self, source: Source, when: datetime,
                      diagnosis: Code | None) -> str:
        b = Bundle(self, source, when + timedelta(minutes=30))
        enc = b.add({**encounter_resource(b.patient_ref, "AMB", "ambulatory", None, when,
                                          when + timedelta(minutes=30), self.org(source.org),
                                          service="Sexual health clinic"),
                     "type": [{"text": "Sexual health clinic attendance"}],
                     # NHS Data Dictionary treatment function 360: the code that marks the service sensitive
                     "serviceType": {"coding": [{"system": TREATMENT_FUNCTION, "code": "360",
                                                 "display": "Genitourinary Medicine"}],
                                     "text": "Sexual health clinic"}})
        if diagnosis:
            b.add(condition(b.patient_ref, diagnosis, when.date(), "encounter-diagnosis", encounter=enc))
        return b.to_json()

    # --- Mental health trust --------------------------------------------------------------------------
    def mental_health(self, source: Source, episode: MentalHealthEpisode) -> list[str]:
        trust = self.org(source.org)
        start = datetime.combine(episode.start, time(10, 0), tzinfo=UTC)
        b = Bundle(self, source, start)
        problem = b.add(condition(b.patient_ref, episode.condition, episode.start, "problem-list-item"))
        b.add({"resourceType": "CarePlan", "status": "active", "intent": "plan",
               "category": [{"text": "Mental health care plan"}], "title": "Care plan",
               "description": f"Care coordinator {episode.coordinator}, {episode.team}, "
                              f"phone {episode.team_phone}. Crisis line 0800 015 0000 out of hours.",
               "subject": b.patient_ref, "period": {"start": episode.start.isoformat()},
               "author": trust, "addresses": [problem],
               "activity": [{"detail": {"status": "in-progress", "description": "Regular review with care coordinator",
                                        "performer": [{"display": f"{episode.coordinator}, {episode.team}"}]}}]})
        bundles = [b.to_json()]
        letters = {when: (text, restricted) for when, text, restricted in episode.letters}
        for when in episode.contacts:
            b = Bundle(self, source, when + timedelta(hours=1))
            enc = b.add(encounter_resource(b.patient_ref, "AMB", "ambulatory", None, when,
                                           when + timedelta(hours=1), trust, service=episode.team))
            if when in letters:
                text, restricted = letters[when]
                b.add(document(b.patient_ref, codes.CLINICAL_LETTER, "Clinic letter", when + timedelta(hours=1),
                               text, trust, enc, restricted))
            bundles.append(b.to_json())
        return bundles

    # --- Ambulance ------------------------------------------------------------------------------------
    def ambulance(self, source: Source, call: AmbulanceCall) -> str:
        end = call.at + CALL_LENGTH
        b = Bundle(self, source, end)
        enc = {**encounter_resource(b.patient_ref, "EMER", "emergency", None, call.at, end, self.org(source.org),
                                    service="Emergency ambulance response")}
        if call.conveyed:
            enc["hospitalization"] = {"destination": {"display": "Riverside University Hospital, Emergency Department"}}
        ref = b.add(enc)
        b.add({**condition(b.patient_ref, call.impression, call.at.date(), "encounter-diagnosis", encounter=ref),
               "verificationStatus": {"coding": [{"system": codes.CONDITION_VERIFICATION, "code": "provisional"}]},
               "note": [{"text": "Paramedic clinical impression"}]})
        for result in call.vitals:
            b.add(observation(b.patient_ref, result, "vital-signs", None, ref))
        b.add(blood_pressure(b.patient_ref, call.pressure, ref))
        return b.to_json()

    # --- Hospice ----------------------------------------------------------------------------------------
    def hospice(self, source: Source, episode: HospiceEpisode) -> list[str]:
        hospice = self.org(source.org)
        start = datetime.combine(episode.start, time(11, 0), tzinfo=UTC)
        b = Bundle(self, source, start)
        problem = b.add(condition(b.patient_ref, episode.reason, episode.start, "problem-list-item"))
        period = {"start": episode.start.isoformat(), **({"end": episode.end.isoformat()} if episode.end else {})}
        b.add({"resourceType": "CarePlan", "status": "completed" if episode.end else "active", "intent": "plan",
               "category": [{"text": "Palliative care"}], "title": "Palliative care plan",
               "description": "Hospice at home support and symptom control; advance care plan discussed; "
                              "preferred place of care: home.",
               "subject": b.patient_ref, "period": period, "author": hospice, "addresses": [problem],
               "activity": [{"detail": {"code": coding(codes.PALLIATIVE_CARE),
                                        "status": "completed" if episode.end else "in-progress",
                                        "description": "Visits from the hospice at home team"}}]})
        bundles = [b.to_json()]
        for when in episode.visits:
            b = Bundle(self, source, when + timedelta(hours=1))
            b.add(encounter_resource(b.patient_ref, "HH", "home health", codes.PALLIATIVE_CARE, when,
                                     when + timedelta(hours=1), hospice, service="Hospice at home"))
            bundles.append(b.to_json())
        return bundles


# --- Resources -------------------------------------------------------------------------------------------
def patient(feed: FhirFeed, source: Source, when: datetime, nhs_number: str | None, active: bool) -> Json:
    person, view = source.person, source.view
    identifiers = []
    if nhs_number:
        identifiers.append({
            "extension": [{"url": codes.UK_CORE_EXT + "NHSNumberVerificationStatus", "valueCodeableConcept": {
                "coding": [{"system": codes.NHS_NUMBER_VERIFICATION, "code": "01" if source.traced else "02",
                            "display": "Number present and verified" if source.traced else
                            "Number present but not traced"}]}}],
            "system": codes.NHS_NUMBER, "value": nhs_number})
    identifiers.append({"system": f"{codes.LOCAL_PATIENT_ID}/{source.org}", "value": source.patient_id})
    resource: Json = {"resourceType": "Patient", "identifier": identifiers, "active": active,
                      "name": names(person, view, source.traced, when.date())}
    telecom = [{"system": "phone", "value": number, "use": use}
               for number, use in ((person.home_phone, "home"), (person.mobile, "mobile")) if number]
    if telecom:
        resource["telecom"] = telecom
    resource["gender"] = view.sex
    resource["birthDate"] = view.birth_date.isoformat()
    address = addresses(person, source.traced, when.date())
    if address:  # none known yet on that day: FHIR JSON has no empty arrays (ele-1)
        resource["address"] = address
    kin = person.next_of_kin
    if kin:
        resource["contact"] = [{
            "relationship": [
                {"coding": [{"system": codes.CONTACT_ROLE, "code": "N", "display": "Next-of-Kin"}]},
                {"coding": [{"system": codes.ROLE_CODE, "code": kin.relationship.role_code,
                             "display": kin.relationship.role_display}], "text": kin.relationship.label}],
            "name": {"use": "official", "family": kin.family, "given": [kin.given],
                     **({"prefix": [kin.title]} if kin.title else {})},
            **({"telecom": [{"system": "phone", "value": kin.phone, "use": "mobile"}]} if kin.phone else {})}]
    practice = person.previous_practice if not active and person.previous_practice else person.practice
    resource["generalPractitioner"] = [feed.org(practice)]
    if source.traced:
        category = next(c for c in codes.ETHNIC_CATEGORIES if c[0] == person.ethnicity)
        resource["extension"] = [{"url": codes.UK_CORE_EXT + "EthnicCategory", "valueCodeableConcept": {
            "coding": [{"system": codes.ETHNIC_CATEGORY, "code": category[0], "display": category[1]}]}}]
    return resource


def names(person: Person, view: Demographics, traced: bool, on: date) -> list[Json]:
    """The official name; a practice also keeps a maiden name and the name the person goes by."""
    given = [view.given] + ([view.middle] if view.middle else [])
    official: Json = {"use": "official", "family": view.family, "given": given}
    if view.title:
        official["prefix"] = [view.title]
    if view.suffix and traced:
        official["suffix"] = [view.suffix]
    result = [official]
    if traced and person.birth_family and person.name_changed and person.name_changed < on:
        result.append({"use": "maiden", "family": person.birth_family, "given": given,
                       "period": {"end": person.name_changed.isoformat()}})
    if traced and person.nickname:
        result.append({"use": "usual", "family": view.family, "given": [person.nickname]})
    return result


def addresses(person: Person, traced: bool, on: date) -> list[Json]:
    """A practice keeps the address history; other sources hold the address they were given at the time."""
    def render(address: Address, start: date, end: date | None, use: str) -> Json:
        period = {"start": start.isoformat(), **({"end": end.isoformat()} if end else {})}
        return {"use": use, "type": "physical", "line": [address.line], "city": address.town,
                "postalCode": address.postcode, "country": "GB", "period": period}

    if not traced:
        current = next((r for r in reversed(person.residences) if r.start <= on), person.residences[0])
        return [render(current.address, current.start, None, "home")]
    known = [r for r in person.residences if r.start <= on]
    return [render(r.address, r.start, r.end if r.end and r.end < on else None,
                   "old" if r.end and r.end < on else "home") for r in reversed(known)]


def condition(subject: Json, code: Code, onset: date, category: str, resolved: date | None = None,
              encounter: Json | None = None) -> Json:
    resource: Json = {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": codes.CONDITION_CLINICAL,
                                       "code": "resolved" if resolved else "active"}]},
        "verificationStatus": {"coding": [{"system": codes.CONDITION_VERIFICATION, "code": "confirmed"}]},
        "category": [{"coding": [{"system": codes.CONDITION_CATEGORY, "code": category}]}],
        "code": coding(code), "subject": subject, "onsetDateTime": onset.isoformat(),
        "recordedDate": onset.isoformat(),
    }
    if resolved:
        resource["abatementDateTime"] = resolved.isoformat()
    if encounter:
        resource["encounter"] = encounter
    return resource


def medication_statement(subject: Json, med: Medication, asserted: datetime, ended: date | None = None) -> Json:
    """A medicine the person takes (or took); `ended` closes it when an old record is cut off."""
    status = "completed" if ended else med.status
    end = ended or med.end
    resource: Json = {
        "resourceType": "MedicationStatement", "status": status,
        "medicationCodeableConcept": {"coding": [{"system": med.drug.system, "code": med.drug.code,
                                                  "display": med.drug.display}], "text": med.drug.display},
        "subject": subject,
        "effectivePeriod": {"start": med.start.isoformat(), **({"end": end.isoformat()} if end else {})},
        "dateAsserted": instant(asserted), "dosage": [{"text": med.drug.dose}],
    }
    if med.last_issue:
        last_issue = min(med.last_issue, ended) if ended else med.last_issue
        resource["extension"] = [{"url": codes.UK_CORE_EXT + "MedicationStatementLastIssueDate",
                                  "valueDateTime": last_issue.isoformat()}]
    if med.status == "stopped" and med.reason:
        resource["statusReason"] = [{"text": med.reason}]
    notes = [text for text in (med.note, med.reason if med.status != "stopped" else None) if text]
    if notes:
        resource["note"] = [{"text": text} for text in notes]
    return resource


def allergy_resource(patient_ref: Json, allergy: Allergy) -> Json:
    resource: Json = {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": {"coding": [{"system": codes.ALLERGY_CLINICAL, "code": "active"}]},
        "verificationStatus": {"coding": [{"system": codes.ALLERGY_VERIFICATION, "code": "confirmed"}]},
        "code": coding(allergy.code), "patient": patient_ref, "recordedDate": allergy.recorded.isoformat(),
    }
    if allergy.category:
        resource.update(type="allergy", category=[allergy.category], criticality=allergy.criticality)
    if allergy.reaction:
        resource["reaction"] = [{"manifestation": [coding(allergy.reaction)],
                                 "severity": "severe" if allergy.criticality == "high" else "mild"}]
    return resource


def encounter_resource(subject: Json, class_code: str, class_display: str, kind: Code | None, start: datetime,
                       end: datetime, provider: Json, service: str | None = None) -> Json:
    resource: Json = {"resourceType": "Encounter", "status": "finished",
                      "class": {"system": codes.ACT_CODE, "code": class_code, "display": class_display}}
    if kind:
        resource["type"] = [coding(kind)]
    if service:
        resource["serviceType"] = {"text": service}
    resource.update(subject=subject, period={"start": instant(start), "end": instant(end)}, serviceProvider=provider)
    return resource


def observation_category(code: str) -> Json:
    return {"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": code}]}


def reference_range(test: Test) -> list[Json]:
    bounds = {k: quantity(v, test.unit, test.decimals) for k, v in (("low", test.low), ("high", test.high))
              if v is not None}
    return [bounds] if bounds else []


def observation(subject: Json, result: Result, category: str, performer: Json | None,
                encounter: Json | None = None) -> Json:
    test = result.test
    resource: Json = {"resourceType": "Observation", "status": "final",
                      "category": [observation_category(category)], "code": coding(Code(test.code, test.display)),
                      "subject": subject, "effectiveDateTime": instant(result.at),
                      "valueQuantity": quantity(result.value, test.unit, test.decimals)}
    if encounter:
        resource["encounter"] = encounter
    if performer:
        resource["performer"] = [performer]
    flag = result.flag
    if test.low is not None or test.high is not None:
        resource["interpretation"] = [{"coding": [{"system": codes.INTERPRETATION, "code": flag}]}]
        resource["referenceRange"] = reference_range(test)
    return resource


def blood_pressure(subject: Json, bp: BloodPressure, encounter: Json | None = None) -> Json:
    resource: Json = {
        "resourceType": "Observation", "status": "final", "category": [observation_category("vital-signs")],
        "code": coding(codes.BLOOD_PRESSURE), "subject": subject, "effectiveDateTime": instant(bp.at),
        "component": [{"code": coding(code), "valueQuantity": quantity(value, "mm[Hg]")}
                      for code, value in ((codes.SYSTOLIC, bp.systolic), (codes.DIASTOLIC, bp.diastolic))]}
    if encounter:
        resource["encounter"] = encounter
    return resource


def immunization(patient_ref: Json, vaccination: Vaccination) -> Json:
    return {"resourceType": "Immunization", "status": "completed", "vaccineCode": coding(vaccination.vaccine),
            "patient": patient_ref, "occurrenceDateTime": vaccination.on.isoformat(), "primarySource": True}


def document(subject: Json, kind: Code, title: str, when: datetime, text: str, author: Json, encounter: Json,
             restricted: bool) -> Json:
    resource: Json = {"resourceType": "DocumentReference"}
    if restricted:
        resource["meta"] = {"security": [{"system": codes.CONFIDENTIALITY, "code": "R", "display": "restricted"}]}
    resource.update({
        "status": "current", "docStatus": "final", "type": coding(kind), "subject": subject, "date": instant(when),
        "author": [author], "custodian": author, "description": title,
        "content": [{"attachment": {"contentType": "text/plain", "language": "en-GB", "title": title,
                                    "creation": instant(when),
                                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii")}}],
        "context": {"encounter": [encounter]},
    })
    return resource
