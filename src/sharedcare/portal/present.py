"""Turns released FHIR resources into the rows a clinician reads: what, when, status, detail, source.

Display only: it receives what governance released and never fetches anything itself.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sharedcare.clock import utcnow
from sharedcare.governance.gateway import RecordView, ServedResource

# A feed whose newest item arrived longer ago than this is flagged as possibly out of date.
STALE_AFTER_DAYS = 7

SECTIONS = [
    ("Problems", ["Condition"]),
    ("Medications", ["MedicationStatement"]),
    ("Allergies", ["AllergyIntolerance"]),
    ("Encounters", ["Encounter"]),
    ("Results", ["Observation", "DiagnosticReport"]),
    ("Care plans", ["CarePlan"]),
    ("Procedures and immunisations", ["Procedure", "Immunization"]),
    ("Documents", ["DocumentReference"]),
]

CATEGORY_LABELS = {
    "demographics": "Demographics", "summary": "Summary", "encounters": "Encounters",
    "diagnostics": "Diagnostics", "hospital_detail": "Hospital detail", "community": "Community care",
    "mental_health": "Mental health", "social_care": "Social care", "safeguarding": "Safeguarding",
    "sexual_health": "Sexual health",
}

WITHHELD_LABELS = {
    "tier": "information your role does not include",
    "tier-1-headline": "details your role sees only as 'a service is involved'",
    "source-agreement": "information from organisations whose sharing agreement is not in force",
    "objection-all": "information the patient has asked not to be shared",
    "objection-org": "information from an organisation the patient has objected to",
    "third-party": "information about other people",
    "confidential": "documents the source marked restricted",
}


def concept_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if coding.get("display"):
            return str(coding["display"])
    codings = concept.get("coding") or [{}]
    return str(codings[0].get("code", ""))


def _first_concept(resource: dict[str, Any], *names: str) -> str:
    for name in names:
        value = resource.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        text = concept_text(value)
        if text:
            return text
    return ""


def when(resource: dict[str, Any]) -> str:
    """The date that matters for this item (onset, effective, period start, issued...)."""
    for name in ("effectiveDateTime", "onsetDateTime", "recordedDate", "occurrenceDateTime", "performedDateTime",
                 "date", "issued", "dateAsserted", "authoredOn", "created"):
        if resource.get(name):
            return str(resource[name])[:10]
    for name in ("period", "effectivePeriod", "performedPeriod"):
        period = resource.get(name) or {}
        if period.get("start"):
            return str(period["start"])[:10]
    return ""


def detail(resource: dict[str, Any]) -> str:
    rtype = resource.get("resourceType")
    if rtype == "Observation":
        if "valueQuantity" in resource:
            q = resource["valueQuantity"]
            return f"{q.get('value')} {q.get('unit') or q.get('code') or ''}".strip()
        parts = [f"{concept_text(c.get('code'))}: {c.get('valueQuantity', {}).get('value')}"
                 for c in resource.get("component", [])]
        return "; ".join(parts) or str(resource.get("valueString", ""))
    if rtype == "MedicationStatement":
        parts = [d.get("text", "") for d in resource.get("dosage", []) if d.get("text")]
        issued = next((e.get("valueDateTime") for e in resource.get("extension", [])
                       if str(e.get("url", "")).endswith("MedicationStatementLastIssueDate")), None)
        if issued:
            parts.append(f"last issued {str(issued)[:10]}")
        parts += [f"stopped: {concept_text(r)}" for r in resource.get("statusReason", []) if concept_text(r)]
        return "; ".join(parts)
    if rtype == "AllergyIntolerance":
        reactions = [concept_text(m) for r in resource.get("reaction", []) for m in r.get("manifestation", [])]
        return ", ".join(r for r in reactions if r)
    if rtype == "CarePlan":
        acts = [a.get("detail", {}).get("description") or concept_text(a.get("detail", {}).get("code"))
                for a in resource.get("activity", [])]
        return "; ".join(a for a in acts if a) or str(resource.get("title", ""))
    if rtype == "Encounter":
        return concept_text((resource.get("class") or {}) and {"text": resource["class"].get("display")}) or ""
    return ""


def document_text(resource: dict[str, Any]) -> str:
    """The text of a released document (only present at tier 3)."""
    for content in resource.get("content", []):
        data = (content.get("attachment") or {}).get("data")
        if data:
            try:
                return base64.b64decode(data).decode("utf-8", errors="replace")
            except (binascii.Error, ValueError):
                return ""
    return ""


@dataclass(frozen=True)
class Row:
    what: str
    when: str
    status: str
    detail: str
    text: str
    source: str
    source_code: str
    recorded: str
    received: str
    category: str
    tier: int


def row(served: ServedResource) -> Row:
    r = served.content
    what = _first_concept(r, "code", "medicationCodeableConcept", "vaccineCode", "type", "category") \
        or str(r.get("title") or r.get("description") or r.get("resourceType"))
    status = concept_text(r.get("clinicalStatus")) or str(r.get("status", ""))
    return Row(what=what, when=when(r), status=status, detail=detail(r),
               text=document_text(r) if r.get("resourceType") == "DocumentReference" else "",
               source=served.source_name, source_code=served.source_org,
               recorded=served.recorded_at.strftime("%d %b %Y %H:%M"),
               received=served.received_at.strftime("%d %b %Y %H:%M"),
               category=CATEGORY_LABELS.get(served.category, served.category), tier=served.tier)


@dataclass(frozen=True)
class Section:
    title: str
    rows: list[Row]


def sections(view: RecordView) -> list[Section]:
    out = []
    for title, types in SECTIONS:
        rows = [row(s) for s in view.resources if s.resource_type in types]
        rows.sort(key=lambda r: r.when, reverse=True)
        out.append(Section(title, rows))
    return out


def stale_sources(view: RecordView, now: datetime | None = None) -> list[str]:
    """Sources whose newest item in this record arrived more than STALE_AFTER_DAYS ago."""
    now = now or utcnow()
    newest: dict[str, datetime] = {}
    for served in view.resources:
        if served.source_name not in newest or served.received_at > newest[served.source_name]:
            newest[served.source_name] = served.received_at
    return sorted(name for name, at in newest.items() if (now - at).days > STALE_AFTER_DAYS)


def patient_banner(patient: dict[str, Any] | None) -> dict[str, str]:
    if not patient:
        return {"name": "Details withheld", "born": "", "nhs": "", "gender": "", "address": "", "kin": ""}
    name = (patient.get("name") or [{}])[0]
    nhs = next((i.get("value", "") for i in patient.get("identifier", [])
                if i.get("system") == "https://fhir.nhs.uk/Id/nhs-number"), "")
    address = next((a for a in patient.get("address", []) if not (a.get("period") or {}).get("end")), None)
    kin = [f"{' '.join((c.get('name') or {}).get('given', []))} {(c.get('name') or {}).get('family', '')}"
           f" ({', '.join(concept_text(r) for r in c.get('relationship', []) if concept_text(r)) or 'contact'})"
           f"{' ' + c['telecom'][0].get('value', '') if c.get('telecom') else ''}"
           for c in patient.get("contact", [])]
    return {
        "name": f"{(name.get('family') or '').upper()}, {' '.join(name.get('given', []))}"
                + (f" ({name['prefix'][0]})" if name.get("prefix") else ""),
        "born": str(patient.get("birthDate", "")),
        "nhs": f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}" if len(nhs) == 10 else nhs,
        "gender": str(patient.get("gender", "")),
        "address": ", ".join([*(address or {}).get("line", []), (address or {}).get("city", ""),
                              (address or {}).get("postalCode", "")]).strip(", ") if address else "",
        "kin": "; ".join(kin),
    }
