"""FHIR writes for contributing systems: `POST /fhir` (batch or transaction Bundle), `PUT /fhir/{type}/{id}`
and `POST /fhir/{type}`, in JSON or XML.

The routes only read the body and shape the answer; who may write and the writing itself are
`ingest.contributions` (scopes, agreement, own organisation; then the one ingest pipeline; audited).
Answers hold statuses, locations, versions and OperationOutcomes, never the stored resources.

The body is read in the event loop, the write done in a worker thread: a write validates every entry
and waits for its turn at the store, and done in the loop it held up every other request the process
serves (a 3.5 MB batch stopped a clinician's read for 26 s; docs/architecture.md).
"""

from __future__ import annotations

import uuid
from email.utils import format_datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from sharedcare.api import bodies
from sharedcare.api.deps import ActorDep, get_database, get_framework
from sharedcare.api.outcomes import FHIR_JSON
from sharedcare.clock import utcnow
from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import InvalidRequest, NotFound
from sharedcare.ingest.contributions import Contributions, EntryOutcome, WriteResult
from sharedcare.store.database import Database

router = APIRouter(prefix="/fhir")
# The body is read raw (JSON or XML), so the OpenAPI description is given here for clients and contract tests.
BODY = {"requestBody": {"required": True, "content": {
    "application/fhir+json": {"schema": {"type": "object"}}, "application/fhir+xml": {"schema": {"type": "string"}}}}}
ACCEPTED_TYPES = ("application/fhir+json", "application/json", "application/fhir+xml", "application/xml",
                  "text/xml")


def get_contributions(request: Request, actor: ActorDep, fw: Annotated[Framework, Depends(get_framework)],
                      db: Annotated[Database, Depends(get_database)]) -> Contributions:
    return Contributions(db, fw, actor, getattr(request.state, "scopes", ""), request.state.request_id,
                         request.client.host if request.client else None, request.method)


ContributionsDep = Annotated[Contributions, Depends(get_contributions)]


async def _body(request: Request) -> bytes:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ACCEPTED_TYPES:
        raise InvalidRequest(f"send the body as application/fhir+json or application/fhir+xml (got '{kind}')")
    return await bodies.read(request, bodies.FHIR_WRITE_MAX, hint=": send it as a file feed")


def _outcome(outcome: EntryOutcome) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": outcome.severity, "code": outcome.code, "diagnostics": outcome.text}
    if outcome.where:
        issue["location"] = [outcome.where]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _headers(outcome: EntryOutcome) -> dict[str, str]:
    headers = {}
    if outcome.location:
        headers["Location"] = f"/fhir/{outcome.location}"
        headers["ETag"] = f'W/"{outcome.version}"'
    if outcome.last_modified:
        headers["Last-Modified"] = format_datetime(outcome.last_modified, usegmt=True)
    return headers


def _single(result: WriteResult) -> JSONResponse:
    outcome = result.refused or result.entries[0]
    return JSONResponse(_outcome(outcome), status_code=outcome.http_status, media_type=FHIR_JSON,
                        headers=_headers(outcome))


def _response_entry(outcome: EntryOutcome) -> dict[str, Any]:
    response: dict[str, Any] = {"status": outcome.status, "outcome": _outcome(outcome)}
    if outcome.location:
        response["location"] = outcome.location
        response["etag"] = f'W/"{outcome.version}"'
    if outcome.last_modified:
        response["lastModified"] = outcome.last_modified.isoformat()
    return {"response": response}


@router.post("", openapi_extra=BODY)
async def write_bundle(request: Request, contributions: ContributionsDep) -> JSONResponse:
    """A batch answers 200 with each entry's own status; a transaction 200 when all of it was stored, else
    the status of its refusal (nothing of it stored) with an OperationOutcome naming the entry."""
    payload = await _body(request)

    def write() -> JSONResponse:
        result = contributions.write_bundle(payload, "HTTP POST /fhir", request.headers)
        if result.refused is not None:
            return _single(result)
        body = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": f"{result.bundle_type}-response",
                "timestamp": utcnow().isoformat(), "entry": [_response_entry(o) for o in result.entries]}
        return JSONResponse(body, media_type=FHIR_JSON)

    return await run_in_threadpool(write)


def _kept(resource_type: str) -> None:
    if resource_type not in RECORD_TYPES:
        raise NotFound(f"resource type '{resource_type}' is not kept by the shared record")


@router.put("/{resource_type}/{resource_id}", openapi_extra=BODY)
async def update_resource(resource_type: str, resource_id: str, request: Request,
                          contributions: ContributionsDep) -> JSONResponse:
    _kept(resource_type)
    payload = await _body(request)
    return await run_in_threadpool(lambda: _single(contributions.write_resource(
        payload, f"HTTP PUT /fhir/{resource_type}", resource_type, resource_id, request.headers)))


@router.post("/{resource_type}", openapi_extra=BODY)
async def create_resource(resource_type: str, request: Request, contributions: ContributionsDep) -> JSONResponse:
    if resource_type == "Consent":  # kept, as the patient's own, read and replaced only (api/consent.py)
        raise HTTPException(405, "a Consent is not created: read yours (GET /fhir/Consent?patient=) and replace it "
                                 "with PUT /fhir/Consent/{id}", headers={"Allow": "GET, PUT"})
    _kept(resource_type)
    payload = await _body(request)
    return await run_in_threadpool(lambda: _single(contributions.write_resource(
        payload, f"HTTP POST /fhir/{resource_type}", resource_type, None, request.headers)))
