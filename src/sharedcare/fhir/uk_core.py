"""UK Core shapes sharedcare relies on: identifier systems, provenance in meta.source, patient fields."""

from __future__ import annotations

import uuid
from datetime import date
from functools import lru_cache
from typing import Any

from sharedcare.identity.mpi import Demographics
from sharedcare.identity.nhs_number import NHS_NUMBER_SYSTEM, normalise

ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SNOMED = "http://snomed.info/sct"
DMD = "https://dmd.nhs.uk"

# The clinical resource types the shared record keeps and serves (DESIGN, "Interface names"),
# plus DiagnosticReport for laboratory reports. Anything else is set aside, counted, never stored.
RECORD_TYPES = frozenset({
    "Patient", "Condition", "MedicationStatement", "AllergyIntolerance", "Encounter", "Observation",
    "Procedure", "Immunization", "CarePlan", "DocumentReference", "DiagnosticReport",
})

# Where each type names its patient.
PATIENT_FIELDS = ("subject", "patient")

# server ids are derived from the source key, so ingest is idempotent and references can be rewritten
# without a lookup; the namespace is fixed for the lifetime of a deployment.
_ID_NAMESPACE = uuid.UUID("6f1d7a4e-2b7c-4f0a-9a53-5c1e2d7b8a90")


@lru_cache(maxsize=1 << 16)  # a message names its patient from every resource: a SHA-1 each time adds up
def server_id(source_org: str, resource_type: str, source_id: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, f"{source_org}|{resource_type}|{source_id}"))


def meta_source(org: str, system: str) -> str:
    """`meta.source` as DESIGN fixes it: `https://fhir.nhs.uk/Id/ods-organization-code|RXX#pas`."""
    return f"{ODS_SYSTEM}|{org}#{system}"


def parse_meta_source(value: str | None) -> tuple[str, str] | None:
    """Read (ods code, system) back from a `meta.source` written in that form; None if it is not."""
    if not value or not value.startswith(f"{ODS_SYSTEM}|"):
        return None
    rest = value[len(ODS_SYSTEM) + 1:]
    org, _, system = rest.partition("#")
    return (org, system or "unknown") if org else None


def declared_senders(data: dict[str, Any]) -> list[tuple[int | None, str]]:
    """The organisations a message names as its sender in meta.source: the resource's own (entry None) and, in a
    Bundle, each entry's (its index); a bundle without meta of its own can still carry another's entries."""
    resources: list[tuple[int | None, Any]] = [(None, data)]
    if data.get("resourceType") == "Bundle" and isinstance(data.get("entry"), list):
        resources += [(index, e["resource"]) for index, e in enumerate(data["entry"])
                      if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    named = []
    for index, resource in resources:
        meta = resource.get("meta")
        declared = parse_meta_source(meta.get("source") if isinstance(meta, dict) else None)
        if declared:
            named.append((index, declared[0]))
    return named


def claims_registration(patient: dict[str, Any], sender: str) -> bool:
    """Whether a Patient says the person is registered with the organisation that sent it: not inactive,
    with a generalPractitioner naming the sender's ODS code (as a GP system's feed does; a practice the
    person has left sends its record inactive)."""
    if patient.get("active") is False:
        return False
    for ref in patient.get("generalPractitioner") or []:
        identifier = ref.get("identifier") if isinstance(ref, dict) else None
        if isinstance(identifier, dict) and (identifier.get("system"), identifier.get("value")) == (ODS_SYSTEM, sender):
            return True
    return False


def nhs_numbers(patient: dict[str, Any]) -> list[str]:
    return [normalise(str(i.get("value", ""))) for i in patient.get("identifier", [])
            if i.get("system") == NHS_NUMBER_SYSTEM and i.get("value")]


def _official_name(patient: dict[str, Any]) -> dict[str, Any]:
    names = patient.get("name") or [{}]
    for use in ("official", "usual", None):
        for name in names:
            if use is None or name.get("use") == use:
                return dict(name)
    return {}


def _current_postcode(patient: dict[str, Any]) -> str | None:
    for address in patient.get("address", []):
        if address.get("use", "home") == "home" and not (address.get("period") or {}).get("end"):
            postcode = address.get("postalCode")
            if postcode:
                return " ".join(str(postcode).upper().split())
    return None


def demographics(patient: dict[str, Any], nhs_number: str | None) -> Demographics:
    """The matching fields of a UK Core Patient."""
    name = _official_name(patient)
    given = (name.get("given") or [None])[0]
    birth = patient.get("birthDate")
    return Demographics(
        nhs_number=nhs_number,
        family=name.get("family"),
        given=given,
        birth_date=date.fromisoformat(birth) if birth and len(birth) == 10 else None,
        gender=patient.get("gender"),
        postcode=_current_postcode(patient),
        other_given=[str(g) for n in patient.get("name") or [] for g in n.get("given") or []
                     if g and g != given],
        other_family=[str(n["family"]) for n in patient.get("name") or []
                      if n.get("family") and n.get("family") != name.get("family")],
        postcodes=[str(a["postalCode"]) for a in patient.get("address") or [] if a.get("postalCode")],
        phones=[str(t["value"]) for t in patient.get("telecom") or [] if t.get("system") == "phone" and t.get("value")],
        email=next((str(t["value"]) for t in patient.get("telecom") or []
                    if t.get("system") == "email" and t.get("value")), None),
    )
