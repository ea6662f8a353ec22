"""Small FHIR bundles for tests that need exact control (the synthetic ICS covers realistic volume)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from alembic import command

from sharedcare.fhir.uk_core import meta_source
from sharedcare.store.database import Database

NHS = "https://fhir.nhs.uk/Id/nhs-number"
SCT = "http://snomed.info/sct"


def patient(pid: str, nhs: str | None, family: str, given: str, born: str, gender: str = "male",
            postcode: str = "RV1 2AB", **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Patient", "id": pid,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender, "birthDate": born,
        "address": [{"use": "home", "line": ["1 High Street"], "city": "Riverside", "postalCode": postcode}],
    }
    if nhs:  # FHIR JSON has no empty arrays (ele-1): without a number, no identifier at all
        res["identifier"] = [{"system": NHS, "value": nhs}]
    res.update(extra)
    return res


SURNAMES = ("Okafor", "Hughes", "Patel", "Nowak", "Murphy", "Lindqvist", "Adeyemi", "Brennan", "Castillo", "Dubois",
            "Eriksen", "Fitzgerald", "Gallagher", "Horvath", "Ishikawa", "Jankowski", "Kowalczyk", "Lombardi",
            "Mbeki", "Novak")
GIVEN_NAMES = ("Emeka", "Margaret", "Priya", "Tomasz", "Siobhan", "Astrid", "Tunde", "Ciaran", "Lucia", "Amelie")


def different_people(count: int) -> list[dict[str, Any]]:
    """`count` (at most 40) source Patients `p0`, `p1`, ... no two of whom the MPI takes for one person (names
    differing by a digit are: a typing error)."""
    return [patient(f"p{n}", None, SURNAMES[n % 20], GIVEN_NAMES[n % 10],
                    f"19{40 + n}-{1 + n % 12:02d}-{1 + n % 28:02d}") for n in range(count)]


def condition(cid: str, patient_ref: str, code: str, display: str, **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition", "id": cid, "subject": {"reference": patient_ref},
        "code": {"coding": [{"system": SCT, "code": code, "display": display}]},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "onsetDateTime": "2019-03-01",
    }
    res.update(extra)
    return res


def medication(mid: str, patient_ref: str, display: str, note: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "MedicationStatement", "id": mid, "status": "active", "subject": {"reference": patient_ref},
        "medicationCodeableConcept": {"coding": [{"system": "https://dmd.nhs.uk", "code": "39720311000001101",
                                                  "display": display}]},
        "dosage": [{"text": "One tablet daily"}],
    }
    if note:
        res["note"] = [{"text": note}]
    return res


def document(did: str, patient_ref: str, text: str, restricted: bool = False) -> dict[str, Any]:
    import base64

    res: dict[str, Any] = {
        "resourceType": "DocumentReference", "id": did, "status": "current",
        "subject": {"reference": patient_ref},
        "type": {"coding": [{"system": SCT, "code": "373942005", "display": "Discharge summary"}]},
        "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}],
        "date": "2026-10-20T10:00:00Z",
    }
    if restricted:
        res["meta"] = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                     "code": "R"}]}
    return res


def bundle(org: str, system: str, resources: list[dict[str, Any]], timestamp: str = "2026-11-01T09:00:00Z",
           use_urns: bool = True) -> dict[str, Any]:
    """A collection bundle; references to `Patient/<id>` become urn:uuid fullUrls when use_urns."""
    urls = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, org + r['id'])}"
            for r in resources}
    text = json.dumps(resources)
    if use_urns:
        for rel, urn in urls.items():
            text = text.replace(f'"{rel}"', f'"{urn}"')
    entries = json.loads(text)
    return {
        "resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "collection", "timestamp": timestamp,
        "meta": {"source": meta_source(org, system)},
        "entry": [{"fullUrl": urls[f"{r['resourceType']}/{r['id']}"] if use_urns else None, "resource": r}
                  for r in entries],
    }


def write_ndjson(path: Path, bundles: list[dict[str, Any]] | list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [b if isinstance(b, str) else json.dumps(b) for b in bundles]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def downgrade_store(db: Database, revision: str) -> None:
    """Take the store's schema back to `revision`, as a store a release before it left: the tests of a migration
    then upgrade it (`db.migrate()`) and look at what it made of the rows already there."""
    cfg = db.alembic_config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
