"""FHIR vread and instance history: every version of a resource, corrections and withdrawals included.

Both go through the governed repository (`GovernedRecords.history`): the same decision as a read,
audited as `clinical:resource:history`. A withdrawn (entered-in-error) resource is gone from the record,
reads and search, but its history still shows what was sent and when it was withdrawn. `_history` takes
`_since`; any other parameter, and any on a vread, is refused naming it (`search.only_these`).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sharedcare.api.deps import ReadRecordsDep, public_base, public_link
from sharedcare.api.outcomes import FHIR_JSON
from sharedcare.clock import utcnow
from sharedcare.fhir.search import DateFilter, Span, only_these
from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.governance.gateway import NotFound, ServedResource

router = APIRouter(prefix="/fhir")
HISTORY_TYPES = frozenset(RECORD_TYPES - {"Patient"})  # /fhir/Patient/{id} is the combined person, not a version
MICROSECOND = timedelta(microseconds=1)  # a version's received_at is an instant: the range it covers


def _checked(resource_type: str, version_id: str | None = None) -> int | None:
    if resource_type not in HISTORY_TYPES:
        raise NotFound(f"resource type '{resource_type}' has no history here")
    if version_id is None:
        return None
    if not version_id.isdigit() or len(version_id) > 9:
        raise NotFound(f"no version {version_id}")
    return int(version_id)


def _entry(base: str, served: ServedResource) -> dict[str, Any]:
    content = served.content
    version = content.get("meta", {}).get("versionId", "1")
    return {
        "fullUrl": f"{base}/{served.resource_type}/{content['id']}",
        "resource": content,
        "request": {"method": "POST" if version == "1" else "PUT", "url": f"{served.resource_type}/{content['id']}"},
        "response": {"status": "201 Created" if version == "1" else "200 OK", "etag": f'W/"{version}"',
                     "lastModified": served.received_at.isoformat()},
    }


@router.get("/{resource_type}/{resource_id}/_history")
def instance_history(resource_type: str, resource_id: str, request: Request, records: ReadRecordsDep) -> JSONResponse:
    """Every version, newest first; with `_since`, those received at or after it (FHIR's "created at or
    after the given instant"; a date is its whole day, as a search's is)."""
    _checked(resource_type)
    only_these(list(request.query_params.multi_items()), ("_since",), "_history")
    since = DateFilter.parse("_since", "ge" + request.query_params["_since"]) \
        if "_since" in request.query_params else None
    versions = [served for served in records.history(resource_type, resource_id)
                if since is None or since.matches(Span(served.received_at, served.received_at + MICROSECOND))]
    base = public_base(request) + "/fhir"
    body = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "history", "timestamp": utcnow().isoformat(),
            "total": len(versions), "link": [{"relation": "self", "url": public_link(request)}],
            "entry": [_entry(base, served) for served in versions]}
    return JSONResponse(body, media_type=FHIR_JSON)


@router.get("/{resource_type}/{resource_id}/_history/{version_id}")
def vread(resource_type: str, resource_id: str, version_id: str, request: Request,
          records: ReadRecordsDep) -> JSONResponse:
    number = _checked(resource_type, version_id)
    only_these(list(request.query_params.multi_items()), (), "a vread")
    (served,) = records.history(resource_type, resource_id, number)
    version = served.content.get("meta", {}).get("versionId", version_id)
    return JSONResponse(served.content, media_type=FHIR_JSON,
                        headers={"ETag": f'W/"{version}"',
                                 "Last-Modified": served.received_at.strftime("%a, %d %b %Y %H:%M:%S GMT")})
