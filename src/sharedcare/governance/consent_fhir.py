"""A patient's choices as a FHIR R4 Consent, and a Consent the patient sends back as choices.

The Consent is scope patient-privacy, category LOINC 59284-0, with a base `permit` (sharing for care as
the framework allows) and the patient's deny provisions nested in it (consent.py). A sent Consent is
validated with fhir.resources (R4B), then every provision element is checked against what the decision
point honours: anything else is refused naming the element (`ConsentRefused`), never ignored.
"""

from __future__ import annotations

import hmac
import re
from calendar import monthrange
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from sharedcare.errors import SharedcareError
from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.fhir.validate import validation_problems
from sharedcare.governance.audit import ODS_SYSTEM
from sharedcare.governance.consent import PURPOSES_OF_USE, Choices, Provision
from sharedcare.governance.framework import Framework
from sharedcare.identity.nhs_number import NHS_NUMBER_SYSTEM

SCOPE = {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
CATEGORY = {"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}
POLICY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CLASS_SYSTEM = "http://hl7.org/fhir/resource-types"
CATEGORY_SYSTEM = "https://sharedcare.example/fhir/CodeSystem/data-category"
RECIPIENT, CUSTODIAN = "IRCP", "CST"  # the reading organisation; the organisation holding the data
_ROLE_TEXT = {RECIPIENT: "information recipient", CUSTODIAN: "custodian"}
_PURPOSE_TEXT = {"TREAT": "treatment", "ETREAT": "emergency treatment", "HOPERAT": "healthcare operations",
                 "HRESCH": "healthcare research"}
_SECONDARY = frozenset({"HOPERAT", "HRESCH"})
UK_TIME = ZoneInfo("Europe/London")  # a patient's dates are UK dates: read and said in UK time
_HONOURED = frozenset({"type", "period", "actor", "purpose", "class", "code", "provision"})
# The base permit, a deny, a permit in it, a deny in that and a permit in that; and JSON depth overall
# (far beyond what a valid Consent nested so far needs), so nothing recursive meets a deeper body.
_MAX_PROVISION_DEPTH = 5
_MAX_DEPTH = 40
_MAX_WHERE = 120
_PLAIN_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class ConsentRefused(SharedcareError):
    """A Consent the decision point cannot honour exactly; `where` names the element (at most
    `_MAX_WHERE` characters: it is answered and audited, and a body's keys could be any length)."""

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message, where[:_MAX_WHERE] if where else where)


# --- as FHIR ---------------------------------------------------------------------------------------------

def _actor(role: str, org: str, fw: Framework) -> dict[str, Any]:
    found = fw.organisations.get(org)
    reference: dict[str, Any] = {"identifier": {"system": ODS_SYSTEM, "value": org}}
    if found is not None:
        reference["display"] = found.name
    return {"role": {"coding": [{"system": ROLE_SYSTEM, "code": role, "display": _ROLE_TEXT[role]}]},
            "reference": reference}


def _provision(p: Provision, fw: Framework) -> dict[str, Any]:
    out: dict[str, Any] = {"type": p.type}
    if p.start is not None or p.end is not None:
        out["period"] = {k: v.isoformat() for k, v in (("start", p.start), ("end", p.end)) if v is not None}
    actors = [_actor(RECIPIENT, o, fw) for o in sorted(p.recipients)] + [_actor(CUSTODIAN, o, fw)
                                                                          for o in sorted(p.sources)]
    if actors:
        out["actor"] = actors
    if p.purposes:
        out["purpose"] = [{"system": PURPOSE_SYSTEM, "code": c, "display": _PURPOSE_TEXT[c]}
                          for c in sorted(p.purposes)]
    if p.classes:
        out["class"] = [{"system": CLASS_SYSTEM, "code": c} for c in sorted(p.classes)]
    if p.codes:
        out["code"] = [{"coding": [{"system": CATEGORY_SYSTEM, "code": c}], "text": fw.categories.get(c, c)}
                       for c in sorted(p.codes)]
    if p.provisions:
        out["provision"] = [_provision(child, fw) for child in p.provisions]
    return out


def as_provisions(choices: Choices) -> list[Provision]:
    """Every choice as a deny provision: the three with their own columns first, then the others."""
    found = [Provision("deny")] if choices.object_all else []
    found += [Provision("deny", recipients=frozenset({o}), sources=frozenset({o})) for o in sorted(choices.object_orgs)]
    if choices.opt_out_secondary:
        found.append(Provision("deny", purposes=_SECONDARY))
    return found + list(choices.provisions)


def consent_id_key(secret: str) -> bytes:
    """What Consent ids are keyed by: the service's secret under a label of its own, so it is never the key
    of anything else (tokens, pseudonyms, checkpoints)."""
    return hmac.digest(secret.encode(), b"sharedcare consent id key", "sha256")


def consent_id(key: bytes, nhs_number: str) -> str:
    """The id of the Consent held against `nhs_number`: the same at every read (a client keeps it, If-Match),
    yet an id in a URL, which every proxy logs, neither shows the number nor can be turned back into it
    without the key (NHS numbers are few enough to try them all against an unkeyed digest)."""
    return hmac.new(key, nhs_number.encode(), "sha256").hexdigest()[:32]


def consent_resource(resource_id: str, nhs_number: str, choices: Choices, version: int, updated: datetime | None,
                     fw: Framework) -> dict[str, Any]:
    """The patient's choices held against one NHS number as a FHIR R4 Consent (id: `consent_id`'s)."""
    base: dict[str, Any] = {"type": "permit"}
    denies = [_provision(p, fw) for p in as_provisions(choices)]
    if denies:
        base["provision"] = denies
    consent: dict[str, Any] = {
        "resourceType": "Consent", "id": resource_id, "meta": {"versionId": str(version)},
        "status": "active", "scope": {"coding": [SCOPE]}, "category": [{"coding": [CATEGORY]}],
        "patient": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs_number}},
        "policyRule": {"coding": [POLICY], "text": f"{fw.name}, framework version {fw.version}: sharing for care "
                                                  "as the framework allows, except as the provisions deny"},
        "provision": base}
    if updated is not None:
        consent["dateTime"] = updated.isoformat()
    return consent


# --- from FHIR -------------------------------------------------------------------------------------------

def choices_from_consent(body: Any, nhs_number: str, fw: Framework) -> Choices:
    """The choices a Consent sent for `nhs_number` asks for; refused (naming the element) if it is not valid
    FHIR R4 or asks for anything the decision point would not honour exactly."""
    if not isinstance(body, dict) or body.get("resourceType") != "Consent":
        raise ConsentRefused("send a FHIR Consent resource", where="resourceType")
    _refuse_what_would_be_ignored(body)
    problems = validation_problems(body)
    if problems:
        raise ConsentRefused("not valid FHIR R4: " + "; ".join(problems[:5]))
    if body.get("status") != "active":
        raise ConsentRefused("only an active Consent is honoured; to withdraw every choice send an active "
                             "Consent whose base permit has no provisions", where="Consent.status")
    if SCOPE["code"] not in _codes(body["scope"], SCOPE["system"]):
        raise ConsentRefused("the scope must be patient-privacy (consentscope)", where="Consent.scope")
    patient = (body.get("patient") or {}).get("identifier") or {}
    if patient.get("system") != NHS_NUMBER_SYSTEM or patient.get("value") != nhs_number:
        raise ConsentRefused(f"the patient must be identified by the NHS number {nhs_number} "
                             f"({NHS_NUMBER_SYSTEM})", where="Consent.patient")
    base = body.get("provision")
    if not isinstance(base, dict) or base.get("type") != "permit":
        raise ConsentRefused("the base provision must be a permit (sharing for care as the framework allows); "
                             "put each choice in a deny provision nested in it", where="Consent.provision")
    extra = sorted(set(base) - {"type", "provision", "id"})
    if extra:
        raise ConsentRefused("the base permit is the framework's and takes no conditions: put them in a nested "
                             "deny provision", where=f"Consent.provision.{extra[0]}")
    found = [_parse(child, f"Consent.provision.provision[{i}]", fw)
             for i, child in enumerate(base.get("provision", []))]
    for i, p in enumerate(found):
        if p.type != "deny":
            raise ConsentRefused("a permit directly in the base permit would grant nothing beyond the framework: "
                                 "nest it in a deny provision as its exception",
                                 where=f"Consent.provision.provision[{i}].type")
    for i, p in enumerate(found):
        _refuse_self_only(p, f"Consent.provision.provision[{i}]", top=True)
    object_all = any(_bare(p) for p in found)
    object_orgs = {next(iter(p.recipients)) for p in found if _object_org(p)}
    opt_out = any(_opt_out(p) for p in found)
    others = tuple(p for p in found if not (_bare(p) or _object_org(p) or _opt_out(p)))
    return Choices(object_all=object_all, object_orgs=frozenset(object_orgs), opt_out_secondary=opt_out,
                   provisions=others)


def _refuse_what_would_be_ignored(body: dict[str, Any]) -> None:
    """Refuse, naming the element, what the checks below would otherwise pass over: a modifier (it could
    reverse a provision's meaning), an element name no FHIR element has (any length or character, which
    `where` would carry into the answer and the audit), a policy beyond the framework's, an empty element
    (an empty `actor` would read as "anyone", turning a deny into an objection to all sharing or a nested
    permit into an unconditional one), and nesting deeper than a patient's choice needs (checked here,
    without recursion, before anything recursive reads the body)."""
    for name in ("implicitRules", "policy"):
        if name in body:
            raise ConsentRefused(f"'{name}' is not honoured here: the policy is the sharing framework's",
                                 where=f"Consent.{name}")
    stack: list[tuple[Any, str, int, int]] = [(body, "Consent", 0, 0)]  # value, where, depth, provision depth
    while stack:
        value, where, depth, provisions = stack.pop()
        if value is None or value == [] or value == {} or value == "":
            raise ConsentRefused("an element may not be empty: leave it out", where=where)
        if depth > _MAX_DEPTH:
            raise ConsentRefused("the Consent is nested too deeply", where=where)
        if isinstance(value, dict):
            if "modifierExtension" in value:
                raise ConsentRefused("a modifier extension would change what this element means, and is not "
                                     "honoured here", where=f"{where}.modifierExtension")
            for key, child in value.items():
                if not _PLAIN_KEY.fullmatch(key):  # kept out of `where`: it is answered and audited
                    raise ConsentRefused("an element's name is FHIR's: letters and digits, at most 64", where=where)
                inner = provisions + (key == "provision")
                if inner > _MAX_PROVISION_DEPTH:
                    raise ConsentRefused(f"a choice may nest exceptions {_MAX_PROVISION_DEPTH - 2} deep at most "
                                         "(a deny, a permit in it, a deny in that, and a permit in that)",
                                         where=f"{where}.{key}")
                stack.append((child, f"{where}.{key}", depth + 1, inner))
        elif isinstance(value, list):
            stack.extend((child, f"{where}[{i}]", depth + 1, provisions) for i, child in enumerate(value))


def _refuse_self_only(p: Provision, where: str, top: bool) -> None:
    """Refuse a provision naming one organisation as both reader (IRCP) and holder (CST), unless it is
    exactly the objection to that organisation (a top-level deny naming nothing else). Read literally it
    would cover only that organisation's own data read by itself, which no Consent governs, so with a
    period, purpose, class, code or exceptions it would silently withhold nothing."""
    if len(p.recipients) == 1 and p.recipients == p.sources and not (top and _object_org(p)):
        raise ConsentRefused("naming one organisation as both reader and holder objects to that organisation, "
                             "and takes nothing else (no period, purpose, class, code or exceptions); to hide "
                             "something from it, name it as the reader (IRCP) alone", where=where)
    for j, child in enumerate(p.provisions):
        _refuse_self_only(child, f"{where}.provision[{j}]", top=False)


def _bare(p: Provision) -> bool:
    return p == Provision("deny")


def _object_org(p: Provision) -> bool:
    return (len(p.recipients) == 1 and p.recipients == p.sources
            and p == Provision("deny", recipients=p.recipients, sources=p.sources))


def _opt_out(p: Provision) -> bool:
    return p == Provision("deny", purposes=_SECONDARY)


def _codes(concept: dict[str, Any], system: str) -> set[str]:
    return {c.get("code") for c in concept.get("coding", []) if c.get("system") == system}


def _instant(value: Any, where: str, end: bool) -> datetime:
    """A FHIR dateTime as an instant; a date alone means from its start, or to its end, as the patient
    means it: in UK time (a choice from 1 July starts at midnight in London, 23:00 UTC in summer).
    Refused, naming `where`, if it is not one, or names no instant there is (a second of 60, a time
    before year 1 or after 9999 in UTC)."""
    if not isinstance(value, str):
        raise ConsentRefused("a date or dateTime is sent as a string", where=where)
    try:
        if len(value) > 10:
            given = datetime.fromisoformat(value)
            return (given if given.tzinfo else given.replace(tzinfo=UK_TIME)).astimezone(UTC)
        parts = [int(x) for x in value.split("-")]  # YYYY, YYYY-MM or YYYY-MM-DD
        year, month = parts[0], parts[1] if len(parts) > 1 else (12 if end else 1)
        day = parts[2] if len(parts) > 2 else (monthrange(year, month)[1] if end else 1)
        return datetime.combine(date(year, month, day), time.max if end else time.min,
                                tzinfo=UK_TIME).astimezone(UTC)
    except (ValueError, OverflowError) as bad:
        raise ConsentRefused("not a date or dateTime that names an instant", where=where) from bad


def _parse(held: dict[str, Any], where: str, fw: Framework) -> Provision:
    """One provision and its exceptions, each element checked against what the decision point honours."""
    if not isinstance(held, dict):
        raise ConsentRefused("a provision is an object", where=where)
    extra = sorted(set(held) - _HONOURED - {"id"})
    if extra:
        raise ConsentRefused(f"'{extra[0]}' is not honoured here: a choice can name who reads (actor), why "
                             "(purpose), the kind of record (class), the category (code) and when (period)",
                             where=f"{where}.{extra[0]}")
    kind = held.get("type")
    if kind not in ("permit", "deny"):
        raise ConsentRefused("say whether the provision denies or permits", where=f"{where}.type")
    recipients: set[str] = set()
    sources: set[str] = set()
    for i, actor in enumerate(held.get("actor", [])):
        roles = _codes(actor["role"], ROLE_SYSTEM)
        if len(roles) != 1 or not roles <= {RECIPIENT, CUSTODIAN}:
            raise ConsentRefused(f"the actor's role must be {RECIPIENT} (the organisation reading) or {CUSTODIAN} "
                                 f"(the organisation holding the data), from {ROLE_SYSTEM}",
                                 where=f"{where}.actor[{i}].role")
        ident = actor["reference"].get("identifier") or {}
        if ident.get("system") != ODS_SYSTEM or ident.get("value") not in fw.organisations:
            raise ConsentRefused(f"name an organisation of the sharing framework by its ODS code ({ODS_SYSTEM})",
                                 where=f"{where}.actor[{i}].reference")
        (recipients if RECIPIENT in roles else sources).add(ident["value"])
    purposes: set[str] = set()
    for i, coding in enumerate(held.get("purpose", [])):
        if coding.get("system") != PURPOSE_SYSTEM or coding.get("code") not in PURPOSES_OF_USE:
            raise ConsentRefused(f"the purpose must be one of {', '.join(PURPOSES_OF_USE)} ({PURPOSE_SYSTEM})",
                                 where=f"{where}.purpose[{i}]")
        purposes.add(coding["code"])
    classes: set[str] = set()
    for i, coding in enumerate(held.get("class", [])):
        if coding.get("system") != CLASS_SYSTEM or coding.get("code") not in RECORD_TYPES:
            raise ConsentRefused("the class must be a resource type the record holds "
                                 f"({', '.join(sorted(RECORD_TYPES))})", where=f"{where}.class[{i}]")
        classes.add(coding["code"])
    codes: set[str] = set()
    for i, concept in enumerate(held.get("code", [])):
        found = _codes(concept, CATEGORY_SYSTEM)
        if len(found) != 1 or not found <= set(fw.categories):
            raise ConsentRefused(f"the code must be one of the framework's data categories ({CATEGORY_SYSTEM}: "
                                 f"{', '.join(fw.categories)})", where=f"{where}.code[{i}]")
        codes |= found
    period = held.get("period") or {}
    if not isinstance(period, dict):
        raise ConsentRefused("a period is an object with a start, an end or both", where=f"{where}.period")
    start = _instant(period["start"], f"{where}.period.start", end=False) if period.get("start") else None
    end = _instant(period["end"], f"{where}.period.end", end=True) if period.get("end") else None
    if start is not None and end is not None and end < start:
        raise ConsentRefused("the period ends before it starts", where=f"{where}.period")
    children = tuple(_parse(child, f"{where}.provision[{i}]", fw) for i, child in enumerate(held.get("provision", [])))
    return Provision(kind, frozenset(recipients), frozenset(sources), frozenset(purposes), frozenset(classes),
                     frozenset(codes), start, end, children)
