"""A patient's own Consent over FHIR: `GET /fhir/Consent?patient=`, `GET` and `PUT /fhir/Consent/{id}`.

Only the patient's own token (a citizen's) may read or change their Consent; anyone else (a clinician,
another organisation's system) is refused, audited. The id is a keyed digest of the NHS number the
Consent is held against (`consent_id`), never the number: a URL is kept by every proxy. A PUT is
validated and checked element by element (governance/consent_fhir.py); what the decision point could
not honour exactly is refused with a 400 naming the element.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from sharedcare.api import bodies
from sharedcare.api.deps import own_consent, public_base, public_link
from sharedcare.api.outcomes import ERROR_RESPONSES, FHIR_JSON, FHIR_RESOURCE_RESPONSE, operation_outcome
from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.governance.audit import AuditAction
from sharedcare.governance.consent import VersionConflict
from sharedcare.governance.consent_fhir import ConsentRefused
from sharedcare.governance.gateway import InvalidRequest

router = APIRouter(prefix="/fhir", responses={**FHIR_RESOURCE_RESPONSE, **ERROR_RESPONSES})
BODY = {"requestBody": {"required": True, "content": {"application/fhir+json": {"schema": {"type": "object"}}}}}


def _fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
    headers = {"ETag": f'W/"{body["meta"]["versionId"]}"'} if body.get("resourceType") == "Consent" else None
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)


def _outcome(request: Request, status: int, code: str, refused: SharedcareError) -> JSONResponse:
    """As every other refusal is answered (with the correlation id), naming the element at fault."""
    return operation_outcome(status, code, refused.message, getattr(request.state, "request_id", "unknown"),
                             where=refused.where)


def _if_match(request: Request) -> int | None:
    """The version an `If-Match: W/"<versionId>"` header names (None without one)."""
    value = request.headers.get("if-match")
    if value is None or value.strip() == "*":
        return None
    version = value.strip().removeprefix("W/").strip('"')
    if not (version.isascii() and version.isdigit()):  # isdigit alone passes "²", which int() refuses
        raise InvalidRequest('If-Match must name a version as W/"<versionId>"')
    return int(version)


async def _body(request: Request) -> bytes | None:
    """The body sent, or None once it is larger than CONSENT_MAX (read no further; refused, audited)."""
    try:
        return await bodies.read(request, bodies.CONSENT_MAX)
    except bodies.BodyTooLarge:
        return None


def _bundle(request: Request, consents: list[dict[str, Any]]) -> dict[str, Any]:
    base = public_base(request) + "/fhir"
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset",
            "timestamp": utcnow().isoformat(), "link": [{"relation": "self", "url": public_link(request)}],
            "entry": [{"fullUrl": f"{base}/Consent/{c['id']}", "resource": c, "search": {"mode": "match"}}
                      for c in consents]}


@router.get("/Consent")
def search_consent(request: Request, patient: str | None = None) -> JSONResponse:
    """The caller's own Consents (one per NHS number their record carries); `patient` must be them."""
    with own_consent(request, AuditAction.PREFERENCE_VIEW) as me:  # the caller first: deny by default
        body = _bundle(request, me.consents(patient))
    return _fhir(body)


@router.get("/Consent/{consent_id}")
def read_consent(consent_id: str, request: Request) -> JSONResponse:
    with own_consent(request, AuditAction.PREFERENCE_VIEW) as me:
        body = me.consent(consent_id)
    return _fhir(body)


@router.put("/Consent/{consent_id}", openapi_extra=BODY)
async def update_consent(consent_id: str, request: Request) -> JSONResponse:
    """Replace the caller's choices held against one of their NHS numbers (the one the id names) with the
    Consent sent."""
    sent = await _body(request)

    def replace() -> JSONResponse:
        try:
            with own_consent(request, AuditAction.PREFERENCE_SET) as me:  # the caller first: deny by default
                if sent is None:
                    me.audit_refusal(AuditAction.PREFERENCE_SET, "deny-invalid-request", "body")
                    raise InvalidRequest(f"the body is larger than {bodies.in_words(bodies.CONSENT_MAX)}: "
                                         "a Consent is far smaller")
                try:
                    body, expected = orjson.loads(sent), _if_match(request)
                except (orjson.JSONDecodeError, InvalidRequest) as bad:
                    me.audit_refusal(AuditAction.PREFERENCE_SET, "deny-invalid-request", "body or If-Match")
                    raise InvalidRequest('send the Consent as application/fhir+json, and If-Match as W/"<versionId>"'
                                         ) from bad
                if isinstance(body, dict) and body.get("id") not in (None, consent_id):
                    me.audit_refusal(AuditAction.PREFERENCE_SET, "deny-consent-not-honoured", "Consent.id")
                    raise ConsentRefused(f"the id must be '{consent_id}', as in the URL", where="Consent.id")
                return _fhir(me.replace_consent(consent_id, body, expected))
        except ConsentRefused as refused:
            return _outcome(request, 400, "invalid", refused)
        except VersionConflict as conflict:
            return _outcome(request, 412, "conflict", conflict)

    return await run_in_threadpool(replace)
