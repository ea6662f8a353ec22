"""FHIR vread and instance history: every version of a resource, corrections and withdrawals included.

Both go through the governed repository (`GovernedRecords.history`): the same decision as a read,
audited as `clinical:resource:history`. A withdrawn (entered-in-error) resource is gone from the record,
reads and search, but its history still shows what was sent and when it was withdrawn. `_history` takes
`_since`; any other parameter, and any on a vread, is refused naming it (`search.only_these`).

A read and a vread answer with the version's `ETag` and (a copy released as stored) `Last-Modified`, and a
conditional read
(`If-None-Match`, `If-Modified-Since`) with 304 once the read has been decided and audited like any other:
refused or missing is the same 404 as without the header, and a 304 is on record as the read it is (the
reader learns that the copy they hold is the one released to them now).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

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


def etag(served: ServedResource) -> str:
    """`W/"<versionId>"`, as `meta.versionId` says and a write's If-Match takes, for a version released as
    stored (`ServedResource.as_stored`). A version this reader is shown altered (a coded summary at tier 2,
    from a service not named to them, or naming a service the patient hides from them) has a tag of its own,
    the version and a digest of what was shown: the same version can be shown whole later (a basis recorded)
    or altered later (a service hidden), and a 304 must never tell a reader that a copy other than the one
    released now is current."""
    version = served.content.get("meta", {}).get("versionId", "1")
    if served.as_stored:
        return f'W/"{version}"'
    digest = hashlib.sha256(served.encoded or orjson.dumps(served.content)).hexdigest()[:16]
    return f'W/"{version}-{digest}"'


def _unchanged(request: Request, tag: str, served: ServedResource) -> bool:
    """Whether a conditional read's copy is the one released now: `If-None-Match` naming `tag` (or `*`),
    compared weakly as RFC 9110 says; without it, `If-Modified-Since` no earlier than the version, for a
    version released as stored only (a date cannot tell an altered copy from the stored one). A date that
    cannot be read is ignored, as RFC 9110 says."""
    none_match = request.headers.get("if-none-match")
    if none_match is not None:
        held = {t.strip().removeprefix("W/") for t in none_match.split(",")}
        return "*" in held or tag.removeprefix("W/") in held
    since = request.headers.get("if-modified-since")
    if since is None or not served.as_stored:
        return False
    try:
        asked = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False
    return asked.tzinfo is not None and served.received_at.replace(microsecond=0) <= asked


def versioned(request: Request, served: ServedResource) -> Response:
    """A released version with its `ETag` and, released as stored, `Last-Modified` (when it was received, to
    the second), or 304 with them alone when the conditional read's copy is current (`_unchanged`). An altered
    copy has no date to be asked by: a client holding one asked by date once the copy was shown whole again,
    and was told its altered copy was current (final review of 2026-12-07)."""
    tag = etag(served)
    headers = {"ETag": tag}
    if served.as_stored:
        headers["Last-Modified"] = format_datetime(served.received_at, usegmt=True)
    if _unchanged(request, tag, served):
        return Response(status_code=304, headers=headers)
    return Response(served.encoded or orjson.dumps(served.content), media_type=FHIR_JSON, headers=headers)


def _entry(base: str, served: ServedResource) -> dict[str, Any]:
    content = served.content
    version = content.get("meta", {}).get("versionId", "1")
    return {
        "fullUrl": f"{base}/{served.resource_type}/{content['id']}",
        "resource": content,
        "request": {"method": "POST" if version == "1" else "PUT", "url": f"{served.resource_type}/{content['id']}"},
        "response": {"status": "201 Created" if version == "1" else "200 OK", "etag": etag(served),
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
          records: ReadRecordsDep) -> Response:
    number = _checked(resource_type, version_id)
    only_these(list(request.query_params.multi_items()), (), "a vread")
    (served,) = records.history(resource_type, resource_id, number)
    return versioned(request, served)
