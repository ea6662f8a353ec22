"""What a record served to a role says of a service that role may not know of: only "A specialist service".

A role that sees nothing of a service's own category (a community pharmacist, mental health 0) must not
learn that the service holds a record of the person (`policy.may_know_of_service`). The gateway serves
what it does see of the service's records (an allergy the mental health trust recorded, filed as
`alerts`) from `UNNAMED_SERVICE`, without meta.source, identifiers or a Provenance naming it; this module
takes the service's name out of the elements inside a record too, by one rule for every resource type:

- a Reference that names such a service (its ODS code as identifier, an identifier or address in one of
  its local systems `https://fhir.<code>.nhs.uk/...`, its name or its ODS code as a word in the display,
  `Organization/<code>` as any source's reference to it is stored) becomes `{"display": "A specialist
  service"}`, wherever it is (recorder, asserter, performer, author, custodian, informationSource,
  serviceProvider, participant...) and whoever recorded it (a GP's record of a depot the trust gives
  names the trust as its source);
- in a record the service itself made (`whole`), so does every Reference to who recorded or did something
  (an Organization, Practitioner, PractitionerRole, Location, CareTeam... or a Reference with no
  literal reference), since its staff, wards and teams are the service's; a contained resource of those
  types goes, and the record's own identifiers;
- a Coding or Identifier in one of its local systems, or in the national ODS system with its ODS code
  (whatever the case), goes wherever it is (meta.tag and meta.security, an extension's value[x], a
  CodeableConcept's codings, a resource's identifiers), and so does an extension defined under one of its
  local systems or left with no value: ODS codes are public, so "RXM" tells the reader as much as the
  trust's name (privacy review of 2026-12-07, D1). A CodeableConcept left with nothing says it is not
  shown.

Free text is not read: the gateway serves a service's own records to such a role at tier 2 at most (no
notes, narrative or displays), and another organisation's free text naming the service at tier 3 is a
residue (docs/architecture.md, "What names a service the reader may not know of"). Nothing is changed in
place: what is given may be a cached document or shape, so an element changed is a copy, and a record
naming no such service is returned as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from sharedcare.fhir.uk_core import ODS_SYSTEM, server_id
from sharedcare.governance.framework import Framework, Role
from sharedcare.governance.policy import UNNAMED_SERVICE, may_know_of_service

# Who recorded or did something: the types a Reference to the service's own staff, places and teams has
AGENT_TYPES = frozenset({"Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService",
                         "CareTeam", "Device", "Endpoint", "Group", "RelatedPerson"})
_UNNAMED = {"display": UNNAMED_SERVICE}
_NOT_SHOWN = "Not shown at your access level"
_REFERENCE_KEYS = frozenset({"reference", "identifier", "display"})
_NOT_A_REFERENCE = frozenset({"code", "system", "value", "resourceType", "url"})


@dataclass(frozen=True)
class Unknown:
    """What names the services a role may not know of."""

    codes: frozenset[str]  # their ODS codes
    hosts: tuple[str, ...]  # ".rxm.nhs.uk/" and "//rxm.nhs.uk/": in a local system's or reference's address
    names: tuple[str, ...]  # their names, casefolded
    references: frozenset[str]  # "Organization/<server id>": any source's `Organization/RXM` as stored
    # what the resource's JSON, its ASCII letters lowered, holds wherever one of the above is in it
    # (`mentioned_in`): each code (an ODS code, and within each host) and name; the references only where it
    # holds "organization/"
    hints: tuple[bytes, ...] = field(init=False)
    reference_hints: tuple[bytes, ...] = field(init=False)
    exact: bool = field(init=False)  # whether the JSON holds each name as written, lowered as it is
    lowered: frozenset[str] = field(init=False)  # their ODS codes, casefolded
    word: re.Pattern[str] = field(init=False)  # any of their ODS codes as a whole word, in casefolded text

    def __post_init__(self) -> None:
        hints = (*self.codes, *self.names)
        object.__setattr__(self, "hints", tuple(hint.lower().encode() for hint in hints))
        object.__setattr__(self, "reference_hints", tuple(ref.lower().encode() for ref in sorted(self.references)))
        object.__setattr__(self, "lowered", frozenset(code.casefold() for code in self.codes))
        object.__setattr__(self, "word", re.compile(
            r"(?<![0-9a-z])(?:" + "|".join(re.escape(code) for code in sorted(self.lowered)) + r")(?![0-9a-z])"))
        object.__setattr__(self, "exact", all(name.isascii() and name.isprintable() and '"' not in name
                                              and "\\" not in name for name in self.names))

    def mentioned_in(self, resource: dict[str, Any]) -> bool:
        """Whether anything in `resource` may name one of the services: its JSON, lowered, holds an ODS code
        (alone or in a host), a name or a reference (a walk cost several times this, and nearly every
        record another organisation made names none of them). Names not in plain ASCII: always walked."""
        return self.mentions(orjson.dumps(resource))

    def mentions(self, encoded: bytes) -> bool:
        """`mentioned_in` for a resource's JSON, as orjson encodes it."""
        if not self.exact:
            return True
        text = encoded.lower()
        for hint in self.hints:
            if hint in text:
                return True
        if b"organization/" in text:
            for hint in self.reference_hints:
                if hint in text:
                    return True
        return False

    def local(self, value: Any) -> bool:
        """Whether `value` is an address in one of their local systems."""
        if type(value) is not str:
            return False
        lowered = value.lower()
        return any(host in lowered for host in self.hosts)

    def ods(self, element: dict[str, Any]) -> bool:
        """Whether a Coding or Identifier is one of their ODS codes (the national system, any case)."""
        if element.get("system") != ODS_SYSTEM:
            return False
        code = element.get("code", element.get("value"))
        return type(code) is str and code.strip().casefold() in self.lowered

    def named_by(self, ref: dict[str, Any]) -> bool:
        """Whether a Reference names one of the services: its ODS code or a local system as its identifier,
        its reference, its name anywhere in its display or its ODS code there as a word ("Given by RXM")."""
        ident = ref.get("identifier")
        if type(ident) is dict and (self.ods(ident) or self.local(ident.get("system"))):
            return True
        target = ref.get("reference")
        if type(target) is str and (target in self.references or self.local(target)):
            return True
        display = ref.get("display")
        if type(display) is not str:
            return False
        shown = display.casefold()
        return any(name in shown for name in self.names) or self.word.search(shown) is not None


def unknown_services(fw: Framework, role: Role | None, organisation: str,
                     hidden: frozenset[str] = frozenset()) -> Unknown | None:
    """What names the services of the framework a user with `role` at `organisation` may not know of (never
    their own), and those the patient's Consent hides from them (`hidden`, `policy.hidden_services`); None
    when they may know of all (a citizen knows their own services)."""
    if role is None or role.citizen:
        return None
    codes = tuple(sorted(code for code in fw.organisations
                         if code != organisation and (code in hidden or not may_know_of_service(code, fw, role))))
    if not codes:
        return None
    return _unknown(codes, tuple(org.name for code in codes if (org := fw.organisations[code])),
                    tuple(sorted(fw.organisations)))


@lru_cache(maxsize=64)
def _unknown(codes: tuple[str, ...], names: tuple[str, ...], sources: tuple[str, ...]) -> Unknown:
    return Unknown(frozenset(codes),
                   tuple(f"{lead}{code.lower()}.nhs.uk/" for code in codes for lead in (".", "//")),
                   tuple(name.casefold() for name in names if name),
                   frozenset(f"Organization/{server_id(source, 'Organization', code)}"
                             for source in sources for code in codes))


def unnamed(resource: dict[str, Any], unknown: Unknown, whole: bool, checked: bool = False) -> dict[str, Any]:
    """`resource` without what names the `unknown` services (`whole`: the service made it). The same
    object when nothing does. `checked`: the caller found that it may (`Unknown.mentions`)."""
    if not whole and not checked and not unknown.mentioned_in(resource):
        return resource
    contained = resource.get("contained")
    gone: set[str] = set()
    if type(contained) is list:
        for item in contained:
            if type(item) is dict and item.get("resourceType") in AGENT_TYPES and (whole or _names(item, unknown)):
                gone.add(f"#{item.get('id')}")
    out = _walk(resource, unknown, whole, gone)
    if whole and ("identifier" in out or "masterIdentifier" in out):
        out = {key: value for key, value in out.items() if key not in ("identifier", "masterIdentifier")}
    if gone:
        kept = [item for item in out.get("contained", []) if f"#{item.get('id')}" not in gone]
        out = {key: value for key, value in out.items() if key != "contained"} | ({"contained": kept} if kept else {})
    return out


def _names(resource: dict[str, Any], unknown: Unknown) -> bool:
    """Whether a contained Organization, Practitioner... is, or belongs to, one of the services."""
    name = resource.get("name")
    if type(name) is str and any(known in name.casefold() for known in unknown.names):
        return True
    return any(type(ident) is dict and (unknown.ods(ident) or unknown.local(ident.get("system")))
               for ident in resource.get("identifier") or [])


def _agent(ref: dict[str, Any], gone: set[str]) -> bool:
    """Whether a Reference in the service's own record is to who recorded or did something."""
    target = ref.get("reference")
    if type(target) is not str:
        return ref.get("type") != "Patient"  # a logical reference (identifier, display) to someone
    if target.startswith("#"):
        return target in gone
    parts = target.split("/")
    return len(parts) < 2 or parts[-2] in AGENT_TYPES or not parts[-2][:1].isupper()


def _replaced(value: dict[str, Any], unknown: Unknown, whole: bool, gone: set[str]) -> dict[str, Any] | None:
    """What a dict element becomes: the unnamed Reference, None when it goes (a Coding or Identifier in a
    local system or with their ODS code, an extension defined under a local system or whose value went),
    else itself walked."""
    if _REFERENCE_KEYS.intersection(value) and _NOT_A_REFERENCE.isdisjoint(value):
        target = value.get("reference")
        if (whole and _agent(value, gone)) or unknown.named_by(value) or (type(target) is str and target in gone):
            return _UNNAMED
        return value
    if unknown.local(value.get("system")) or unknown.local(value.get("url")) or unknown.ods(value):
        return None
    walked = _walk(value, unknown, whole, gone)
    if walked is not value and "url" in value and _valued(value) and not _valued(walked):
        return None  # an extension whose value named the service: nothing of it is left to say
    return walked


def _valued(extension: dict[str, Any]) -> bool:
    """Whether an extension has a value[x] or extensions of its own."""
    return any(key.startswith("value") or key == "extension" for key in extension)


def _walk(node: dict[str, Any], unknown: Unknown, whole: bool, gone: set[str]) -> dict[str, Any]:
    out: dict[str, Any] | None = None
    for key, value in node.items():
        kind = type(value)
        if kind is dict:
            new: Any = _replaced(value, unknown, whole, gone)
            if new is not value and not new and value:
                new = None  # an element (meta) whose only content named the service
        elif kind is list:
            items = [(_replaced(item, unknown, whole, gone) if type(item) is dict else item) for item in value]
            new = [item for item in items if item is not None]
            if len(new) == len(value) and all(a is b for a, b in zip(new, value, strict=True)):
                new = value
            elif not new:
                new = None
        else:
            continue
        if new is not value:
            if out is None:
                out = dict(node)
            if new is None:
                del out[key]
            else:
                out[key] = new
    if out is None:
        return node
    if ("coding" in node or "text" in node) and not out.get("coding") and not out.get("text"):
        out["text"] = _NOT_SHOWN  # a CodeableConcept whose only codes were the service's own
    return out
