"""FHIR R4 REST at /fhir: what the foundation serves, all through the governed repository.

Implemented: metadata; Patient read (the combined record's Patient); read of each clinical type;
search of each clinical type by `patient`; `Patient/{id}/$everything` (with `_type` and
`_revinclude=Provenance:target`). The CapabilityStatement lists exactly these.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sharedcare import __version__
from sharedcare.api.deps import RecordsDep
from sharedcare.api.outcomes import FHIR_JSON
from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.fhir.uk_core import ODS_SYSTEM, RECORD_TYPES
from sharedcare.governance.gateway import NotFound, RecordView, ServedResource

router = APIRouter(prefix="/fhir")
CLINICAL_TYPES = sorted(RECORD_TYPES - {"Patient"})


def fhir_response(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def provenance_of(served: ServedResource) -> dict[str, Any]:
    """A FHIR Provenance saying which organisation and system a served resource came from, and when."""
    target = f"{served.resource_type}/{served.content['id']}"
    return {
        "resourceType": "Provenance",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"provenance:{target}:{served.received_at.isoformat()}")),
        "target": [{"reference": target}],
        "occurredDateTime": served.recorded_at.isoformat(),
        "recorded": served.received_at.isoformat(),
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                 "code": "author"}]},
            "who": {"identifier": {"system": ODS_SYSTEM, "value": served.source_org}, "display": served.source_name},
        }],
        "entity": [{"role": "source", "what": {"display": f"{served.source_org}#{served.source_system}"}}],
    }


def _bundle(request: Request, resources: list[dict[str, Any]]) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/") + "/fhir"
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "timestamp": utcnow().isoformat(),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                   "search": {"mode": "match" if r["resourceType"] != "Provenance" else "include"}}
                  for r in resources],
    }


@router.get("/metadata")
def capability_statement() -> JSONResponse:
    interactions = [{"code": "read"}, {"code": "search-type"}]
    resources: list[dict[str, Any]] = [{
        "type": "Patient", "interaction": [{"code": "read"}],
        "operation": [{"name": "everything",
                       "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}],
    }]
    resources += [{"type": t, "interaction": interactions,
                   "searchParam": [{"name": "patient", "type": "reference"}]} for t in CLINICAL_TYPES]
    return fhir_response({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": utcnow().date().isoformat(),
        "kind": "instance",
        "software": {"name": "sharedcare", "version": __version__},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{"mode": "server", "security": {
            "description": "Bearer tokens (`sharedcare token`); every read needs a point-of-care basis "
                           "(POST /api/access/{patient_id}) and is decided by the sharing framework."},
            "resource": resources}],
    })


def _everything_resources(view: RecordView, types: set[str] | None, provenance: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if view.patient and (types is None or "Patient" in types):
        out.append(view.patient)
    chosen = [s for s in view.resources if types is None or s.resource_type in types]
    out += [s.content for s in chosen]
    if provenance:
        out += [provenance_of(s) for s in chosen]
    return out


@router.get("/Patient/{patient_id}/$everything")
def patient_everything(patient_id: str, request: Request, records: RecordsDep) -> JSONResponse:
    params = request.query_params
    types = {t.strip() for t in params.get("_type", "").split(",") if t.strip()} or None
    provenance = params.get("_revinclude") == "Provenance:target"
    view = records.everything(patient_id)
    return fhir_response(_bundle(request, _everything_resources(view, types, provenance)))


@router.get("/Patient/{patient_id}")
def read_patient(patient_id: str, records: RecordsDep) -> JSONResponse:
    view = records.everything(patient_id)
    if view.patient is None:
        raise NotFound(f"no Patient {patient_id}")
    return fhir_response(view.patient)


@router.get("/{resource_type}/{resource_id}")
def read_resource(resource_type: str, resource_id: str, records: RecordsDep) -> JSONResponse:
    if resource_type not in CLINICAL_TYPES:
        raise NotFound(f"resource type '{resource_type}' is not served here")
    return fhir_response(records.read(resource_type, resource_id))


@router.get("/{resource_type}")
def search(resource_type: str, request: Request, records: RecordsDep) -> JSONResponse:
    if resource_type not in CLINICAL_TYPES:
        raise NotFound(f"resource type '{resource_type}' is not served here")
    unknown = sorted(set(request.query_params) - {"patient", "subject"})
    if unknown:
        raise SharedcareError(f"search parameter(s) not supported yet: {', '.join(unknown)}", where="search")
    patient = request.query_params.get("patient") or request.query_params.get("subject")
    if not patient:
        raise SharedcareError("give patient=<id>: searches are per patient", where="search")
    view = records.everything(patient.removeprefix("Patient/"))
    return fhir_response(_bundle(request, [s.content for s in view.of_type(resource_type)]))
