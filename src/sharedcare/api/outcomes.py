"""FHIR OperationOutcome responses: every API error says what went wrong and what to do, with a
correlation id and never a stack trace or SQL (TRUST DP3)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

FHIR_JSON = "application/fhir+json"


def operation_outcome(status: int, code: str, text: str, request_id: str, severity: str = "error") -> JSONResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text,
                   "details": {"text": text}}],
        "extension": [{"url": "https://sharedcare.example/StructureDefinition/correlation-id",
                       "valueString": request_id}],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)
