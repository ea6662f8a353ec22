"""The audit log's transparency endpoints, for witnesses (TRUST TE1-TE3; governance/checkpoints.py).

`GET /audit/checkpoint` is a freshly signed checkpoint of the log (its size, chain head and RFC 6962 tree
head); `GET /audit/consistency?first=M&second=N` proves that the log of N entries extends the log of M;
`GET /audit/inclusion?seq=K&size=N` proves entry K is in the log of N entries.
Neither holds patient data (hashes and counts only), so neither needs a token: a witness in another
organisation polls the first every few minutes and checks it against the last it kept with the second
(`sharedcare audit witness`). The tree is kept between requests and caught up on each.

A proof costs CPU in proportion to the log (about 0.4 s at a million entries) and anyone may ask for one,
so proofs are limited per address and in all (PROOFS); a witness asks for one each time it polls.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from sharedcare.api.outcomes import ERROR_RESPONSES, FHIR_JSON, operation_outcome
from sharedcare.governance.audit import RefusalLimiter
from sharedcare.governance.checkpoints import Transparency

router = APIRouter(prefix="/audit", tags=["audit transparency"])
# Proofs a minute in this process: from one address, and from all together (at about 0.4 s of CPU each on a
# log of a million entries, the second bounds what all callers can take to a tenth of a core or so).
# The limiter counts refusals at the door the same way; here it counts proofs.
PROOFS = RefusalLimiter(per_minute=10, per_minute_all=20)
THROTTLED: dict[int | str, dict[str, Any]] = {429: {
    "description": "Too many proofs asked for this minute (Retry-After says when to ask again)",
    "content": {FHIR_JSON: ERROR_RESPONSES[400]["content"][FHIR_JSON]}}}


def _throttled(request: Request) -> JSONResponse | None:
    """A 429 when this caller (or everyone together) has had its proofs for the minute."""
    if PROOFS.admit(request.client.host if request.client else None) is not None:
        return None
    response = operation_outcome(429, "throttled", "too many proofs asked for this minute: ask again in a "
                                 "minute (a witness needs one each time it polls)", request.state.request_id)
    response.headers["Retry-After"] = "60"
    return response


def _published(request: Request) -> Transparency:
    state = request.app.state
    if getattr(state, "transparency", None) is None:
        state.transparency = Transparency(state.database, state.settings.audit_secret)
    published: Transparency = state.transparency
    return published


@router.get("/checkpoint")
def checkpoint(request: Request) -> dict[str, Any]:
    """The log's current checkpoint, signed now."""
    return asdict(_published(request).checkpoint())


@router.get("/consistency", responses=THROTTLED, response_model=None)
def consistency(request: Request, first: Annotated[int, Query(ge=1)],
                second: Annotated[int, Query(ge=1)]) -> dict[str, Any] | JSONResponse:
    """Proof that the log of `second` entries extends the log of `first` (both at most the log's size)."""
    return _throttled(request) or _published(request).consistency(first, second)


@router.get("/inclusion", responses=THROTTLED, response_model=None)
def inclusion(request: Request, seq: Annotated[int, Query(ge=1)],
              size: Annotated[int, Query(ge=1)]) -> dict[str, Any] | JSONResponse:
    """Proof that entry `seq` (its chain hash) is in the log of `size` entries."""
    return _throttled(request) or _published(request).inclusion(seq, size)
