"""FHIR OperationOutcome responses: every API error says what went wrong and what to do, with a
correlation id and never a stack trace or SQL (TRUST DP3)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

FHIR_JSON = "application/fhir+json"

# What the OpenAPI description says every API error is: an OperationOutcome (checked by the contract tests).
_OUTCOME_SCHEMA = {"type": "object", "required": ["resourceType", "issue"],
                   "properties": {"resourceType": {"const": "OperationOutcome"},
                                  "issue": {"type": "array", "minItems": 1}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": why, "content": {FHIR_JSON: {"schema": _OUTCOME_SCHEMA}}}
    for status, why in ((400, "The request is wrong; the OperationOutcome says where and why"),
                        (401, "No valid access token"),
                        (403, "Governance refused; the OperationOutcome says what to do"),
                        (404, "No such resource, or none this caller may know exists"),
                        (500, "The server failed; quote the correlation id"))}
FHIR_RESOURCE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "A FHIR R4 resource", "content": {FHIR_JSON: {"schema": {
        "type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}}}}}}}


def operation_outcome(status: int, code: str, text: str, request_id: str, severity: str = "error",
                      where: str | None = None) -> JSONResponse:
    """`where`: the element at fault, as the issue's FHIRPath `expression`."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text, "details": {"text": text},
                   **({"expression": [where]} if where else {})}],
        "extension": [{"url": "https://sharedcare.example/StructureDefinition/correlation-id",
                       "valueString": request_id}],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)
