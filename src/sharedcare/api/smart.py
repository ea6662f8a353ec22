"""SMART on FHIR discovery: `/.well-known/smart-configuration` (SMART App Launch 2), served at the
server root and under the FHIR base, where apps look for it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sharedcare.api.deps import public_base
from sharedcare.api.oauth import AUTHORIZE_PATH, REVOKE_PATH, TOKEN_PATH
from sharedcare.governance.clients import ASSERTION_ALGORITHMS

router = APIRouter()
WELL_KNOWN = "/.well-known/smart-configuration"


def smart_configuration(base: str) -> dict[str, Any]:
    return {
        "issuer": base,
        "authorization_endpoint": base + AUTHORIZE_PATH,
        "token_endpoint": base + TOKEN_PATH,
        "revocation_endpoint": base + REVOKE_PATH,
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["launch", "patient/*.read", "patient/*.rs", "user/*.read",
                             "user/*.rs", "system/*.read", "system/*.rs"],
        "capabilities": ["launch-ehr", "client-public", "client-confidential-asymmetric", "context-ehr-patient",
                         "permission-patient", "permission-user", "permission-v1", "permission-v2"],
    }


def smart_security(base: str) -> dict[str, Any]:
    """The CapabilityStatement's `rest.security`: SMART on FHIR, with the OAuth endpoints as the
    oauth-uris extension (SMART App Launch 2 still lists it; apps read the well-known file first)."""
    config = smart_configuration(base)
    return {
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}]}],
        "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                       "extension": [{"url": "authorize", "valueUri": config["authorization_endpoint"]},
                                     {"url": "token", "valueUri": config["token_endpoint"]},
                                     {"url": "revoke", "valueUri": config["revocation_endpoint"]}]}],
        "description": f"SMART on FHIR (see {base}{WELL_KNOWN}); `sharedcare token` mints tokens for "
                       "integration. Every read needs a point-of-care basis, which the user records in the "
                       "portal before launching an app (a partner's backend system or a `sharedcare token` "
                       "script records it with POST /api/access/{patient_id}), and is decided by the sharing "
                       "framework. Writes (create, update, batch, transaction; FHIR JSON or XML) need a write "
                       "scope and an organisation that contributes under a signed agreement, and go through "
                       "ingest.",
    }


@router.get(WELL_KNOWN)
@router.get("/fhir" + WELL_KNOWN)
def discovery(request: Request) -> JSONResponse:
    return JSONResponse(smart_configuration(public_base(request)))
