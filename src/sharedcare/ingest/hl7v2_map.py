"""HL7 v2 segments to UK Core FHIR: the mapping an interface analyst reviews, one function per resource.

Segments are read through `Seg`, which numbers fields as the standard does and unescapes values with
python-hl7's `unescape`. A value that cannot be mapped raises a MessageError naming the segment and field
(`PID-7`, `OBX[3]-5`) with the value and what was expected.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import hl7.util
from hl7.util import unescape

from sharedcare.fhir.uk_core import ODS_SYSTEM, SNOMED, server_id
from sharedcare.governance.framework import hospital_service_system
from sharedcare.identity.nhs_number import NHS_NUMBER_SYSTEM, is_valid, normalise
from sharedcare.ingest.hl7v2_syntax import Encoding
from sharedcare.ingest.messages import Condition, MessageError

# python-hl7's unescape logs the whole field on an escape it does not know, under a logger named after its
# file: patient values in the server's log (TRUST DP1). The value is kept as sent either way.
logging.getLogger(hl7.util.__file__).disabled = True

Json = dict[str, Any]

UK_TIME = ZoneInfo("Europe/London")  # HL7 times without an offset are the sender's local time
UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
# NHS HL7 v2 sends the visit's treatment function in PV1-10 (hospital service): 360 is a GUM clinic
TREATMENT_FUNCTION = "https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary-treatment-function"
_TREATMENT_FUNCTION_CODE = re.compile(r"[0-9]{3}")

# python-hl7 turns \.br\ into a carriage return and highlighting (\H\, \N\) into underscores;
# FHIR text wants newlines and no markup.
_UNESCAPE = {".br": "\n", ".sp": "\n", ".ce": "\n", "H": "", "N": ""}

ICD_10 = "http://hl7.org/fhir/sid/icd-10"
OPCS_4 = "http://fhir.nhs.net/CodeSystem/opcs-4"
# CWE-3 names: HL7 table 0396's (SCT, LN, UCUM, I10 for ICD-10) and the NHS's for OPCS-4, which the table lacks
_CODE_SYSTEMS = {"SCT": SNOMED, "LN": LOINC, "UCUM": UCUM, "I10": ICD_10, "OPCS4": OPCS_4, "OPCS": OPCS_4}
_GENDER = {"M": "male", "F": "female", "U": "unknown", "O": "other", "A": "other", "N": "unknown"}
_NAME_USE = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname"}
_ADDRESS_USE = {"H": "home", "B": "work", "O": "work", "C": "temp"}
_ENCOUNTER_CLASS = {"I": ("IMP", "inpatient encounter"), "O": ("AMB", "ambulatory"), "E": ("EMER", "emergency"),
                    "P": ("PRENC", "pre-admission")}
# HL7 table 0123 (OBR-25, order status) and 0085 (OBX-11, result status) to FHIR status.
_REPORT_STATUS = {"O": "registered", "I": "registered", "S": "registered", "A": "partial", "P": "preliminary",
                  "R": "preliminary", "F": "final", "C": "amended", "X": "cancelled"}
_RESULT_STATUS = {"I": "registered", "P": "preliminary", "R": "preliminary", "S": "preliminary", "F": "final",
                  "U": "final", "C": "amended", "X": "cancelled", "D": "entered-in-error", "W": "entered-in-error"}
_FLAGS = {"H": "High", "L": "Low", "N": "Normal", "HH": "Critical high", "LL": "Critical low", "A": "Abnormal",
          "AA": "Critical abnormal"}

_TIMESTAMP = re.compile(r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?)?)?)?)?"
                        r"([+-]\d{4})?")
# Both are run on what a sender wrote, so each is written to take time linear in its input: no run of one
# class that two quantifiers in a row could share out between them (`\s*(op)?\s*`, `\d+\.?\d*` took
# seconds on a few kilobytes of spaces or digits). The languages are the same as the obvious forms'.
_NUMBER = re.compile(r"\s*(?:(<=|>=|<|>)\s*)?([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*")
_RANGE = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*-\s*([+-]?\d+(?:\.\d+)?)\s*")


class Seg:
    """One segment as the standard numbers it (MSH-9 is field 9, PID-3 field 3), values unescaped.

    A field is split (repetitions, components, the first subcomponent of each) and unescaped when
    mapping first reads it, and kept for the next read."""

    def __init__(self, fields: list[str], encoding: Encoding, label: str, where: str,
                 codec: str = "iso8859-1") -> None:
        self.fields = fields  # each field's text as sent (hl7v2_syntax.split_message)
        self.encoding = encoding
        self.codec = codec  # the message's character set (MSH-18), which a hex escape's bytes are in
        self.name = fields[0]
        self.label = label  # "PID", or "OBX[3]" for segments that repeat
        self.where = where
        self._reps: dict[int, list[list[str]]] = {}

    def error(self, reason: str, field: int | None = None, *, condition: Condition,
              rejected: bool = False) -> MessageError:
        """The refusal of this segment (and `field`), with its table 0357 condition (see MessageError)."""
        return MessageError(reason, f"{self.where}, {self.label}" + (f"-{field}" if field else ""),
                            condition=condition, rejected=rejected)

    def reps(self, field: int) -> list[list[str]]:
        """Each repetition of a field as its components (the first subcomponent of each), empty ones left out."""
        if field >= len(self.fields):
            return []
        if field not in self._reps:
            enc = self.encoding
            out = []
            for rep in self.fields[field].split(enc.repetition):
                components = [self._unescape(c.split(enc.subcomponent, 1)[0]) for c in rep.split(enc.component)]
                if any(components):
                    out.append(components)
            self._reps[field] = out
        return self._reps[field]

    def get(self, field: int, component: int = 1) -> str:
        reps = self.reps(field)
        return part(reps[0], component) if reps else ""

    def text(self, field: int) -> str:
        """A free-text field whole (ST, TX, FT): repetitions are lines; a separator left unescaped is kept."""
        if field >= len(self.fields):
            return ""
        return "\n".join(self._unescape(rep) for rep in self.fields[field].split(self.encoding.repetition)).strip()

    def _unescape(self, value: str) -> str:
        if value == '""':  # HL7's null
            return ""
        esc = self.encoding.esc
        if f"{esc}X" in value:
            value = _hex_escapes(esc).sub(self._hex_text, value)
        return str(unescape(self.encoding, value, _UNESCAPE))

    def _hex_text(self, found: re.Match[str]) -> str:
        """A hex escape (\\XC3A1\\) as the text its bytes make in the message's character set, its escape
        character escaped again for `unescape`. python-hl7 made each byte a character of its own, so 'á' sent
        as \\XC3A1\\ in a UTF-8 message was stored as 'Ã¡' (clinical fidelity review, 2026-12-07). A control
        character it makes is refused by the FHIR checks, naming the element, as before."""
        try:
            text = bytes.fromhex(found.group(1)).decode(self.codec)
        except (ValueError, UnicodeDecodeError):
            text = None
        if text is None:
            raise self.error(f"the hex escape {found.group(0)} is not text in the message's character set "
                             f"({self.codec})", condition=Condition.DATA_TYPE)
        return text.replace(self.encoding.esc, f"{self.encoding.esc}E{self.encoding.esc}")


@lru_cache(maxsize=8)
def _hex_escapes(esc: str) -> re.Pattern[str]:
    """HL7's hex escape (\\Xhh...\\) under a message's escape character."""
    return re.compile(re.escape(esc) + "X([0-9A-Fa-f]*)" + re.escape(esc))


def part(components: list[str], n: int) -> str:
    """Component n (1-based) of a repetition, or "" when the sender stopped short of it."""
    return components[n - 1] if n <= len(components) else ""


def compact(node: Json) -> Json:
    """Leave out the keys HL7 left empty: FHIR forbids empty strings, lists and objects."""
    return {key: value for key, value in node.items() if value not in (None, "", [], {})}


@dataclass(frozen=True)
class Sender:
    """The organisation that sent the message: how its resources refer to each other and to it."""

    org: str
    name: str
    application: str = ""  # the sending system (MSH-3), as meta.source names it
    # the local hospital service codes the framework lists for that system (None: it lists none)
    service_codes: dict[str, str] | None = field(default=None, compare=False)

    def organisation(self) -> Json:
        return {"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": self.org}, "display": self.name}

    def system(self, kind: str) -> str:
        """A local identifier system in the NHS England form, e.g. https://fhir.rxr.nhs.uk/Id/mrn."""
        return f"https://fhir.{self.org.lower()}.nhs.uk/Id/{kind}"

    def reference(self, resource_type: str, source_id: str) -> Json:
        return {"reference": f"{resource_type}/{server_id(self.org, resource_type, source_id)}"}


# --- datatypes -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stamp:
    """An HL7 timestamp as an aware UTC instant; a date-only value stays a date in FHIR."""

    at: datetime
    day: date
    has_time: bool
    # a UK local time without an offset in the hour the clocks go back: it is `at` (BST) or an hour later (GMT)
    ambiguous: bool = False

    @property
    def fhir(self) -> str:
        return self.at.isoformat() if self.has_time else self.day.isoformat()


def stamp(seg: Seg, field: int) -> Stamp | None:
    """Read a TS/DTM field. Written here because python-hl7's parse_datetime accepts trailing text, forgets
    the precision and leaves a time without an offset naive; here it is UK local time made UTC."""
    value = seg.get(field)
    if not value:
        return None
    try:
        return _stamp(value)
    except (ValueError, OverflowError) as exc:  # OverflowError: a time zone moves year 1 or 9999 out of range
        raise seg.error(f"'{value}' is not an HL7 timestamp (YYYYMMDD[HHMM[SS]][+/-ZZZZ])", field,
                        condition=Condition.DATA_TYPE) from exc


@lru_cache(maxsize=4096)  # a message repeats its times (OBR-7 and OBR-22 on every result), a feed its days
def _stamp(value: str) -> Stamp:
    match = _TIMESTAMP.fullmatch(value)
    if match is None or match[3] is None:
        raise ValueError(value)
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    zone = UK_TIME if offset is None else timezone(
        (-1 if offset[0] == "-" else 1) * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:])))
    local = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
                     int((fraction or "0").ljust(6, "0")), tzinfo=zone)
    ambiguous = offset is None and hour is not None and local.utcoffset() != local.replace(fold=1).utcoffset()
    return Stamp(local.astimezone(UTC), local.date(), hour is not None, ambiguous)


def birth_date(seg: Seg, field: int) -> str | None:
    """A date of birth at the precision sent (YYYY, YYYYMM or YYYYMMDD; a time after it is ignored)."""
    value = seg.get(field)
    if not value:
        return None
    match = _TIMESTAMP.fullmatch(value)
    try:
        if match is None:
            raise ValueError(value)
        date(int(match[1]), int(match[2] or 1), int(match[3] or 1))
    except ValueError as exc:
        # not quoted: a date of birth, and reasons go back to the sender in the ACK and into operators' lists
        raise seg.error("the date of birth is not an HL7 date (YYYYMMDD[HHMM[SS]])", field,
                        condition=Condition.DATA_TYPE) from exc
    return "-".join(p for p in (match[1], match[2], match[3]) if p)


def code_system(name: str) -> str:
    """SCT and LN become their FHIR URIs, HL7nnnn the v2 table's; a local name is kept as the sender gave it."""
    table = re.fullmatch(r"HL7(\d{4})", name)
    return f"http://terminology.hl7.org/CodeSystem/v2-{table[1]}" if table else _CODE_SYSTEMS.get(name, name)


def concept(components: list[str]) -> Json | None:
    """A CE/CWE (code^text^system, and an alternate code^text^system after it) as a CodeableConcept."""
    codings = [compact({"system": code_system(part(components, i + 3)), "code": part(components, i + 1),
                        "display": part(components, i + 2)})
               for i in (0, 3) if part(components, i + 1)]
    return compact({"coding": codings, "text": part(components, 2) or part(components, 5)}) or None


def human_name(components: list[str], use: str | None = None) -> Json | None:
    """An XPN: family^given^middle^suffix^prefix."""
    family, given, middle, suffix, prefix = (part(components, n) for n in range(1, 6))
    return compact({"use": use, "family": family, "given": [g for g in (given, middle) if g],
                    "suffix": [suffix] if suffix else [], "prefix": [prefix] if prefix else []}) or None


def person_display(components: list[str]) -> str:
    """An XCN (id^family^given^middle^suffix^prefix) as a clinician would write it: 'Dr Laura KENT'."""
    return " ".join(p for p in (part(components, 6), part(components, 3), part(components, 2)) if p)


def address(components: list[str]) -> Json | None:
    """An XAD: street^other^city^state^postcode^country^type."""
    return compact({
        "use": _ADDRESS_USE.get(part(components, 7)),
        "line": [line for line in (part(components, 1), part(components, 2)) if line],
        "city": part(components, 3), "district": part(components, 4), "postalCode": part(components, 5),
        "country": part(components, 6),
    }) or None


def telecom(components: list[str], use: str) -> Json | None:
    """An XTN: number^use^equipment^email, or the v2.5 parts (area code, local number) when 1 is empty."""
    number, use_code, equipment, email = (part(components, n) for n in range(1, 5))
    if use_code == "NET" or equipment in ("Internet", "X.400"):
        return compact({"system": "email", "value": email or number, "use": use})
    number = number or " ".join(p for p in (part(components, 6), part(components, 7)) if p)
    system = {"FX": "fax", "BP": "pager"}.get(equipment, "phone")
    use = "mobile" if equipment == "CP" else {"PRN": "home", "WPN": "work"}.get(use_code, use)
    return compact({"system": system, "value": number, "use": use}) or None


def _each(items: list[Json | None]) -> list[Json]:
    return [item for item in items if item]


# --- Patient ---------------------------------------------------------------------------------------

def patient_ids(pid: Seg, sender: Sender) -> tuple[str, str | None]:
    """PID-3: the hospital number (type MR, this trust's if several) and the NHS number (type NH), checked."""
    identifiers = pid.reps(3)
    mrns = [c for c in identifiers if part(c, 5) == "MR" and c[0]]
    if not mrns:
        raise pid.error("no MR identifier: the hospital number (PID-3 with type MR) is required", 3,
                        condition=Condition.REQUIRED_FIELD)
    mrn = next((c[0] for c in mrns if part(c, 4) in (sender.org, "")), mrns[0][0])
    nhs = next((c[0] for c in identifiers if part(c, 5) == "NH" and c[0]), None)
    if nhs is not None and not is_valid(nhs):
        # not quoted: reasons go back in ACKs
        raise pid.error("the NHS number fails the modulus 11 check", 3, condition=Condition.DATA_TYPE)
    return mrn, normalise(nhs) if nhs else None


def patient(pid: Seg, pd1: Seg | None, next_of_kin: list[Seg], sender: Sender) -> Json:
    """PID, PD1 and NK1 as a UK Core Patient whose id is the hospital number."""
    mrn, nhs = patient_ids(pid, sender)
    names = pid.reps(5)
    died = stamp(pid, 29)
    resource: Json = {
        "resourceType": "Patient", "id": mrn, "meta": {"profile": [UK_CORE + "Patient"]},
        "identifier": ([{"system": NHS_NUMBER_SYSTEM, "value": nhs}] if nhs else [])
        + [{"system": sender.system("mrn"), "value": mrn}],
        "name": _each([human_name(n, _NAME_USE.get(part(n, 7), "official" if i == 0 else None))
                       for i, n in enumerate(names)]),
        "telecom": _each([telecom(t, "home") for t in pid.reps(13)] + [telecom(t, "work") for t in pid.reps(14)]),
        "gender": _GENDER.get(pid.get(8)),
        "birthDate": birth_date(pid, 7),
        "deceasedDateTime": died.fhir if died else None,
        "deceasedBoolean": True if not died and pid.get(30) == "Y" else None,
        "address": _each([address(a) for a in pid.reps(11)]),
        "generalPractitioner": _practice(pd1),
        "contact": _each([_contact(nk1) for nk1 in next_of_kin]),
    }
    if pid.get(8) and resource["gender"] is None:
        raise pid.error(f"administrative sex '{pid.get(8)}' is not one of M, F, U, O, A, N", 8,
                        condition=Condition.TABLE_VALUE)
    return compact(resource)


def _practice(pd1: Seg | None) -> list[Json]:
    """PD1-3, the registered practice (XON: name^^ODS code, or the code in XON-10 from v2.5)."""
    if pd1 is None or not pd1.reps(3):
        return []
    practice = pd1.reps(3)[0]
    code = part(practice, 10) or part(practice, 3)
    return [compact({"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": code} if code else None,
                     "display": part(practice, 1)})]


def _contact(nk1: Seg) -> Json | None:
    """NK1: name, relationship (NK1-3), address, phones, and the contact role (NK1-7, e.g. next of kin)."""
    return compact({
        "relationship": _each([concept(c) for c in nk1.reps(7)[:1] + nk1.reps(3)[:1]]),
        "name": human_name(nk1.reps(2)[0]) if nk1.reps(2) else None,
        "telecom": _each([telecom(t, "home") for t in nk1.reps(5)] + [telecom(t, "work") for t in nk1.reps(6)]),
        "address": address(nk1.reps(4)[0]) if nk1.reps(4) else None,
    }) or None


# --- Encounter -------------------------------------------------------------------------------------

def encounter(pv1: Seg, status: str | None, visit: str, subject: Json, sender: Sender, reopened: bool) -> Json:
    """PV1 as an Encounter. `status` None means an update (A08): the status follows the admit and
    discharge times sent. `reopened` (A13, cancel discharge) drops the end. PV1-10 is the service type: a
    three-digit treatment function code (the framework's sensitive codes list some: GUM clinics), else a
    local code (`service_type`)."""
    kind = pv1.get(2)
    if kind not in _ENCOUNTER_CLASS:
        raise pv1.error(f"patient class '{kind}' is not one of {', '.join(_ENCOUNTER_CLASS)}", 2,
                        condition=Condition.TABLE_VALUE)
    start, end = stamp(pv1, 44), None if reopened else stamp(pv1, 45)
    status = status or ("finished" if end else "in-progress" if start else "planned")
    prior, current = _place(pv1.reps(6)), _place(pv1.reps(3))
    return compact({
        "resourceType": "Encounter", "id": visit, "meta": {"profile": [UK_CORE + "Encounter"]},
        "identifier": [{"system": sender.system("visit-number"), "value": pv1.get(19)}] if pv1.get(19) else [],
        "status": status,
        "class": {"system": ACT_CODE, "code": _ENCOUNTER_CLASS[kind][0], "display": _ENCOUNTER_CLASS[kind][1]},
        "serviceType": service_type(pv1, sender),
        "subject": subject,
        "participant": [{"type": [{"coding": [{"system": PARTICIPATION, "code": "ATND", "display": "attender"}]}],
                         "individual": {"display": person_display(doctor)}} for doctor in pv1.reps(7)[:1]],
        "period": compact({"start": start.fhir if start else None, "end": end.fhir if end else None}),
        "location": ([{"location": {"display": prior}, "status": "completed"}] if prior else [])
        + ([{"location": {"display": current}, "status": "completed" if status == "finished" else "active"}]
           if current else []),
        "serviceProvider": sender.organisation(),
    })


def service_type(pv1: Seg, sender: Sender) -> Json | None:
    """PV1-10, the hospital service. A code the framework lists for the sending system (its
    `service_codes`) is kept as that system's local code, which classification reads as what the framework
    maps it to; else a three-digit code is a national treatment function; else the code is local. A system
    with a table sends nothing else: an unlisted local code is held until it is listed, so that a visit to a
    sensitive clinic is never filed as an ordinary one. A system without one keeps the local code (filed by
    type, and a table listed later moves what is stored: the classification key holds the tables)."""
    service = pv1.get(10)
    if not service:
        return None
    table = sender.service_codes
    if (table is None or service not in table) and _TREATMENT_FUNCTION_CODE.fullmatch(service):
        return {"coding": [{"system": TREATMENT_FUNCTION, "code": service}]}
    if table is not None and service not in table:
        raise pv1.error(f"hospital service '{service}' is neither a national treatment function (three digits) "
                        f"nor one of the local codes the framework lists for {sender.org}'s system "
                        f"'{sender.application}' (organisations.{sender.org}.service_codes.{sender.application}): "
                        "held until it is listed with what it means, so that no visit to a sensitive clinic is "
                        "filed as an ordinary one", 10, condition=Condition.TABLE_VALUE)
    local = hospital_service_system(sender.org, sender.application)
    return {"coding": [{"system": local, "code": service}]}


def _place(reps: list[list[str]]) -> str:
    """A PL (point of care^room^bed^...) as one line: 'Ward 3 (Respiratory), Bay 2, Bed 4'."""
    return ", ".join(p for p in (reps[0][:3] if reps else []) if p)


# --- Allergies -------------------------------------------------------------------------------------

ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
# HL7 table 0127 (AL1-2, allergen type) to AllergyIntolerance.category; the miscellaneous types have none
_ALLERGEN_CATEGORY = {"DA": "medication", "FA": "food", "EA": "environment", "AA": "environment",
                      "PA": "environment", "LA": "environment"}
# HL7 table 0128 (AL1-4, severity) to criticality, and to a reaction's severity where a reaction is sent
_ALLERGY_SEVERITY = {"SV": ("high", "severe"), "MO": ("low", "moderate"), "MI": ("low", "mild"),
                     "U": ("unable-to-assess", None)}
# "No known allergies" sent as a local code or as words is the SNOMED CT statement, not an allergen called so
_NO_KNOWN = {"NKA": ("716186003", "No known allergy"), "NKDA": ("409137002", "No known drug allergy")}
_NO_KNOWN_WORDS = re.compile(r"no known (drug )?allerg", re.IGNORECASE)


ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
# HL7 table 0323 (IAM-6, allergy action code): add, delete, update, no change; "D" withdraws the allergy
_IAM_ACTIONS = ("A", "D", "U", "X")
# HL7 table 0438 (IAM-17, allergy clinical status) to verification status: only a confirmed one reads as
# confirmed; unconfirmed, pending, suspected and doubted ones stay on the list as unconfirmed (an allergy in
# doubt is still shown: hiding it is the harm); "I" is confirmed but no longer active; "E" was recorded in error
_IAM_STATUS = {"U": "unconfirmed", "P": "unconfirmed", "S": "unconfirmed", "D": "unconfirmed", "C": "confirmed",
               "I": "confirmed", "E": "entered-in-error"}
# HL7 table 0436 (IAM-9, sensitivity to causative agent) to AllergyIntolerance.type; an adverse reaction or a
# contraindication is neither, so it has none
_SENSITIVITY_TYPE = {"AL": "allergy", "FI": "intolerance", "IN": "intolerance"}


def allergy(seg: Seg, source_id: str, subject: Json) -> Json:
    """AL1 or IAM as an AllergyIntolerance (the HL7 v2-to-FHIR mapping). Both carry the allergen in field 3,
    its type (category) in 2, the severity (criticality, and each reaction's severity) in 4 and the reactions
    in 5. AL1 has no status, so each is active as sent, with AL1-6 its onset. IAM (ADT^A60, an allergy
    list's update) adds its action (IAM-6 "D" withdraws it), its identifier (IAM-7), allergy or intolerance
    (IAM-9), its onset (IAM-11), when it was reported (IAM-13) and whether it is confirmed (IAM-17)."""
    allergen = seg.reps(3)[0] if seg.reps(3) else []
    if not any(allergen):
        raise seg.error(f"no allergen ({seg.name}-3): an allergy must say what to", 3,
                        condition=Condition.REQUIRED_FIELD)
    code, words = part(allergen, 1).upper(), part(allergen, 2)
    none_known = _NO_KNOWN.get(code) or (
        _NO_KNOWN["NKDA" if "drug" in words.lower() else "NKA"] if _NO_KNOWN_WORDS.match(words) else None)
    severity = seg.get(4)
    if severity and severity not in _ALLERGY_SEVERITY:
        raise seg.error(f"allergy severity '{severity}' is not one of {', '.join(_ALLERGY_SEVERITY)} (table 0128)",
                        4, condition=Condition.TABLE_VALUE)
    criticality, reaction_severity = _ALLERGY_SEVERITY.get(severity, (None, None))
    reported: Stamp | None = None
    verification: str | None = None
    kind: str | None = None
    clinical: str | None = "active"
    identifier: list[Json] = []
    if seg.name == "IAM":
        action, status = seg.get(6), seg.get(17)
        if action and action not in _IAM_ACTIONS:
            raise seg.error(f"allergy action code '{action}' is not one of {', '.join(_IAM_ACTIONS)} (table 0323)",
                            6, condition=Condition.TABLE_VALUE)
        if status and status not in _IAM_STATUS:
            raise seg.error(f"allergy clinical status '{status}' is not one of {', '.join(_IAM_STATUS)} "
                            "(table 0438)", 17, condition=Condition.TABLE_VALUE)
        verification = "entered-in-error" if action == _DELETED else _IAM_STATUS.get(status)
        # FHIR (ait-2): an allergy recorded in error has no clinical status
        clinical = None if verification == "entered-in-error" else "inactive" if status == "I" else "active"
        kind = _SENSITIVITY_TYPE.get(seg.get(9))
        identifier = [{"value": seg.get(7)}] if seg.get(7) else []
        onset, reported = stamp(seg, 11), stamp(seg, 13)
    else:
        onset = stamp(seg, 6)
    return compact({
        "resourceType": "AllergyIntolerance", "id": source_id, "meta": {"profile": [UK_CORE + "AllergyIntolerance"]},
        "identifier": identifier,
        "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": clinical}]} if clinical else None,
        "verificationStatus": {"coding": [{"system": ALLERGY_VERIFICATION, "code": verification}]}
        if verification else None,
        "type": None if none_known else kind,
        "category": [category] if (category := _ALLERGEN_CATEGORY.get(seg.get(2))) and not none_known else [],
        "criticality": None if none_known else criticality,
        "code": ({"coding": [{"system": SNOMED, "code": none_known[0], "display": none_known[1]}], "text": words}
                 if none_known else concept(allergen)),
        "patient": subject,
        "onsetDateTime": onset.fhir if onset else None,
        "recordedDate": reported.fhir if reported else None,
        "reaction": [compact({"manifestation": [{"text": text}], "severity": reaction_severity})
                     for text in seg.text(5).splitlines() if text.strip()] if not none_known else [],
    })


# --- Diagnoses and procedures ----------------------------------------------------------------------

CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
# HL7 table 0052 (DG1-6, diagnosis type): an admitting or working diagnosis is not yet a confirmed one
# (HAZ-14: a suspected diagnosis must not read as confirmed); a final one is
_DIAGNOSIS_TYPE = {"A": "provisional", "W": "provisional", "F": "confirmed"}
_DELETED = "D"  # HL7 table 0206 (DG1-21, PR1-20 action code): the sender withdraws the item


def diagnosis(dg1: Seg, source_id: str, subject: Json, encounter_ref: Json | None) -> Json:
    """DG1 as a Condition of the visit (the HL7 v2-to-FHIR mapping): DG1-3 the diagnosis, DG1-5 when it was
    made, DG1-6 the type (admitting and working are provisional, final confirmed), DG1-19 when attested,
    DG1-21 "D" its withdrawal (entered in error). An ADT carries the visit's diagnoses; DG1 gives no clinical
    status (whether the problem is still active), so none is claimed."""
    code = concept(dg1.reps(3)[0]) if dg1.reps(3) else None
    if code is None:
        raise dg1.error("no diagnosis (DG1-3): a diagnosis must say what it is", 3,
                        condition=Condition.REQUIRED_FIELD)
    kind = dg1.get(6)
    if kind and kind not in _DIAGNOSIS_TYPE:
        raise dg1.error(f"diagnosis type '{kind}' is not one of {', '.join(_DIAGNOSIS_TYPE)} (table 0052)", 6,
                        condition=Condition.TABLE_VALUE)
    verification = "entered-in-error" if dg1.get(21) == _DELETED else _DIAGNOSIS_TYPE.get(kind)
    made, attested = stamp(dg1, 5), stamp(dg1, 19)
    return compact({
        "resourceType": "Condition", "id": source_id, "meta": {"profile": [UK_CORE + "Condition"]},
        "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION, "code": verification}]}
        if verification else None,
        "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "encounter-diagnosis",
                                  "display": "Encounter Diagnosis"}]}],
        "code": code, "subject": subject, "encounter": encounter_ref,
        "onsetDateTime": made.fhir if made else None,
        "recordedDate": attested.fhir if attested else None,
    })


def procedure(pr1: Seg, source_id: str, subject: Json, encounter_ref: Json | None) -> Json:
    """PR1 as a Procedure of the visit: PR1-3 the procedure (OPCS-4 in NHS hospitals), PR1-5 when it was
    done, PR1-20 "D" its withdrawal. PR1 reports procedures done, so each is completed."""
    code = concept(pr1.reps(3)[0]) if pr1.reps(3) else None
    if code is None:
        raise pr1.error("no procedure code (PR1-3): a procedure must say what was done", 3,
                        condition=Condition.REQUIRED_FIELD)
    done = stamp(pr1, 5)
    return compact({
        "resourceType": "Procedure", "id": source_id, "meta": {"profile": [UK_CORE + "Procedure"]},
        "status": "entered-in-error" if pr1.get(20) == _DELETED else "completed",
        "code": code, "subject": subject, "encounter": encounter_ref,
        "performedDateTime": done.fhir if done else None,
    })


# --- Laboratory results ----------------------------------------------------------------------------

def _laboratory() -> list[Json]:
    return [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}]


def _status(seg: Seg, field: int, table: dict[str, str], name: str) -> str:
    code = seg.get(field)
    if code and code not in table:
        raise seg.error(f"{name} '{code}' is not one of {', '.join(table)}", field,
                        condition=Condition.TABLE_VALUE)
    return table.get(code, "unknown")


def report(obr: Seg, notes: list[str], results: list[Json], subject: Json, encounter_ref: Json | None,
           sender: Sender) -> Json:
    """OBR as a DiagnosticReport: code OBR-4, taken OBR-7, reported OBR-22, status OBR-25; the NTEs after
    the OBR are the lab's conclusion."""
    code = concept(obr.reps(4)[0]) if obr.reps(4) else None
    if code is None:
        raise obr.error("no test code (OBR-4): a report must say what was tested", 4,
                        condition=Condition.REQUIRED_FIELD)
    taken, reported = stamp(obr, 7), stamp(obr, 22)
    return compact({
        "resourceType": "DiagnosticReport", "id": obr.get(3), "meta": {"profile": [UK_CORE + "DiagnosticReport"]},
        "identifier": [{"system": sender.system("filler-order-number"), "value": obr.get(3)}],
        "status": _status(obr, 25, _REPORT_STATUS, "result status"),
        "category": _laboratory(), "code": code, "subject": subject, "encounter": encounter_ref,
        "effectiveDateTime": taken.fhir if taken else None,
        "issued": reported.at.isoformat() if reported else None,
        "performer": [sender.organisation()], "result": results, "conclusion": "\n".join(notes),
    })


def observation(obx: Seg, obr: Seg | None, source_id: str, notes: list[str], subject: Json,
                encounter_ref: Json | None) -> Json:
    """OBX as an Observation: code OBX-3, value OBX-5 by its type OBX-2 with units OBX-6, range OBX-7,
    flags OBX-8, status OBX-11, taken OBX-14 (else OBR-7); the NTEs after the OBX are its notes. A result's
    OBX follows its OBR (a laboratory result); an ADT's has none (a height or weight taken at admission), so
    it is not called a laboratory one and is taken when OBX-14 says."""
    code = concept(obx.reps(3)[0]) if obx.reps(3) else None
    if code is None:
        raise obx.error("no observation code (OBX-3)", 3, condition=Condition.REQUIRED_FIELD)
    unit = obx.reps(6)[0] if obx.reps(6) else []
    taken = stamp(obx, 14) or (stamp(obr, 7) if obr else None)
    reported = stamp(obr, 22) if obr else None
    return compact({
        "resourceType": "Observation", "id": source_id, "meta": {"profile": [UK_CORE + "Observation"]},
        "status": _status(obx, 11, _RESULT_STATUS, "result status"),
        "category": _laboratory() if obr else [], "code": code, "subject": subject, "encounter": encounter_ref,
        "effectiveDateTime": taken.fhir if taken else None,
        "issued": reported.at.isoformat() if reported else None,
        **_value(obx, unit),
        "interpretation": [{"coding": [compact({"system": INTERPRETATION, "code": flag[0],
                                                 "display": _FLAGS.get(flag[0])})]}
                           for flag in obx.reps(8) if flag[0]],
        "note": [{"text": note} for note in notes],
        "referenceRange": _each([reference_range(obx.get(7), unit)]),
    })


def _value(obx: Seg, unit: list[str]) -> Json:
    kind = obx.get(2)
    if not obx.reps(5):
        return {}
    if kind == "NM":
        quantity = _quantity(obx.get(5), unit)
        if quantity is None:
            raise obx.error(f"'{obx.get(5)}' is not a number (OBX-2 says NM)", 5,
                            condition=Condition.DATA_TYPE)
        return {"valueQuantity": quantity}
    if kind == "SN":  # comparator^number or ^low^-^high; other forms (ratios, 1:128) are kept as text
        comparator, low, separator, high = (obx.get(5, n) for n in range(1, 5))
        bounds = _quantity(low, unit, simple=True), _quantity(high, unit, simple=True)
        if separator == "-" and bounds[0] and bounds[1]:
            return {"valueRange": {"low": bounds[0], "high": bounds[1]}}
        single = None if separator else _quantity(comparator + low, unit)
        return {"valueQuantity": single} if single else {"valueString": "".join(obx.reps(5)[0])}
    if kind in ("ST", "TX", "FT"):
        return {"valueString": obx.text(5)}
    if kind in ("CE", "CWE"):
        return {"valueCodeableConcept": concept(obx.reps(5)[0])}
    if kind in ("DT", "TS", "DTM"):
        when = stamp(obx, 5)
        return {"valueDateTime": when.fhir} if when else {}
    raise obx.error(f"value type '{kind}' is not handled (NM, SN, ST, TX, FT, CE, CWE, DT, TS)", 2,
                    condition=Condition.TABLE_VALUE, rejected=True)


def _quantity(text: str, unit: list[str], simple: bool = False) -> Json | None:
    """A number with an optional comparator ('<5', '>90') in the OBX-6 unit; UCUM-coded when the unit is UCUM."""
    match = _NUMBER.fullmatch(text)
    if match is None or (simple and match[1]):
        return None
    try:
        value: float | int = float(match[2]) if "." in match[2] else int(match[2])
    except ValueError:  # more digits than Python reads as an int (4,300): no lab's value, and no FHIR decimal
        return None
    code, display, system = part(unit, 1), part(unit, 2), part(unit, 3)
    ucum = bool(code) and (system == "UCUM" or is_ucum(code))
    return compact({"value": value, "comparator": match[1], "unit": display or code,
                    "system": UCUM if ucum else None, "code": code if ucum else None})


def reference_range(text: str, unit: list[str]) -> Json | None:
    """OBX-7: 'low-high', '<high' or '>low' as bounds in the result's unit; anything else kept as text."""
    if not text:
        return None
    span = _RANGE.fullmatch(text)
    low, high = (_quantity(span[1], unit, simple=True), _quantity(span[2], unit, simple=True)) if span else (None,) * 2
    if low and high:  # a bound too long to read as a number leaves the range as text
        return {"low": low, "high": high}
    bound = _NUMBER.fullmatch(text)
    if bound and bound[1]:
        return {"high" if bound[1].startswith("<") else "low": _quantity(bound[2], unit, simple=True)}
    return {"text": text}


# --- UCUM ------------------------------------------------------------------------------------------
# No UCUM parser is packaged for Python; this checks the syntax and the atoms clinical laboratories use,
# so a unit is coded as UCUM only when it is one ('mL/min/{1.73_m2}', '10*9/L'), and a unit such as
# 'mL/min/1.73m2', 'x10^9/L' or 'IU/L' is kept as text.
_PREFIXES = ("da", "Y", "Z", "E", "P", "T", "G", "M", "k", "h", "d", "c", "m", "u", "n", "p", "f", "a", "z", "y")
_METRIC = {"m", "g", "s", "L", "l", "mol", "U", "eq", "kat", "Cel", "K", "Pa", "bar", "Hz", "J", "W", "V", "A",
           "osm", "Bq", "Gy", "Sv", "[IU]", "[iU]", "m[Hg]", "m[H2O]", "cal", "t"}
_PLAIN = {"min", "h", "d", "wk", "mo", "a", "%", "[pH]", "[ppm]", "[ppb]", "[ppth]", "[drp]", "[arb'U]", "deg",
          "[in_i]", "[ft_i]", "[lb_av]", "[oz_av]", "[degF]", "[psi]"}
_UCUM_TERM = r"(?:[^./{}\s]|\{[^{}\s]*\})+"
_UCUM = re.compile(rf"/?{_UCUM_TERM}(?:[./]{_UCUM_TERM})*")


def is_ucum(unit: str) -> bool:
    # a lab sends a few dozen units, over and over: short ones are judged once (a long one is not kept)
    return _judged_ucum(unit) if len(unit) <= 64 else _ucum(unit)


@lru_cache(maxsize=1024)
def _judged_ucum(unit: str) -> bool:
    return _ucum(unit)


def _ucum(unit: str) -> bool:
    if not _UCUM.fullmatch(unit):
        return False
    for term in re.findall(_UCUM_TERM, unit):
        if re.fullmatch(r"\{[^{}]*\}|\d+|10[*^][+-]?\d+", term):
            continue
        atom = _atom(term)
        if atom not in _PLAIN and not any(atom.startswith(p) and atom[len(p):] in _METRIC for p in ("", *_PREFIXES)):
            return False
    return True


def _atom(term: str) -> str:
    """A UCUM term's atom: what is left before its exponent and annotation ('mg' of 'mg2{dry}'), the shortest
    non-empty head whose tail is `[+-]?digits`, then `{note}`, each optional.

    By hand, from the end, because the regex for it (`(.+?)([+-]?\\d+)?(\\{[^{}]*\\})?`, which this replaced and
    is tested against) tried every head against every tail: seconds on a unit of a few kilobytes of digits."""
    ends = [len(term)]  # where an exponent may end: the term's end, or where a closing note begins
    note = term.rfind("{")
    if term.endswith("}") and note >= 0 and "}" not in term[note:-1]:
        ends.insert(0, note)  # the tail with the note is the longer one, so it leaves the shorter head
    for end in ends:
        start = end
        while start > 0 and term[start - 1].isdecimal():  # what `\d` matches: a Unicode decimal digit
            start -= 1
        if start < end and start > 0 and term[start - 1] in "+-":
            start -= 1
        head = max(start, 1)
        if head <= end:
            return term[:head]
    return term
