"""The audit log's transparency endpoints, for witnesses (TRUST TE1-TE3; governance/checkpoints.py).

`GET /audit/checkpoint` is a freshly signed checkpoint of the log (its size, chain head and RFC 6962 tree
head); `GET /audit/consistency?first=M&second=N` proves that the log of N entries extends the log of M;
`GET /audit/inclusion?seq=K&size=N` proves entry K is in the log of N entries; `GET /audit/handovers` lists
the checkpoint key's handovers at each rotation of the audit key, which a witness follows (`followed_key`).
Neither holds patient data (hashes and counts only), so neither needs a token: a witness in another
organisation polls the first every few minutes and checks it against the last it kept with the second
(`sharedcare audit witness`). The tree is kept between requests and caught up on each.

A proof costs CPU in proportion to the log (about 0.4 s at a million entries) and anyone may ask for one,
so new proofs are limited per address and in all (PROOFS); a witness asks for one each time it polls. A
proof asked for again is answered from those made lately (KEPT) at no cost and not counted: review of
2026-12-07, where all callers together had 20 a minute, two addresses asking for one proof over and over
took them all, and every witness was answered 429.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from sharedcare.api.outcomes import ERROR_RESPONSES, FHIR_JSON, operation_outcome
from sharedcare.governance.audit import RefusalLimiter
from sharedcare.governance.checkpoints import Transparency, UnsoundLog

router = APIRouter(prefix="/audit", tags=["audit transparency"])
# New proofs a minute in this process: from one address (an IPv6 /64), and from all together (at about 0.4 s
# of CPU each on a log of a million entries, the second bounds what all callers can take to a third of a
# core; ten addresses are needed to take it all, where two were). A witness needs one each time it polls.
# The limiter counts refusals at the door the same way; here it counts proofs.
PROOFS = RefusalLimiter(per_minute=5, per_minute_all=50)
THROTTLED: dict[int | str, dict[str, Any]] = {429: {
    "description": "Too many proofs asked for this minute (Retry-After says when to ask again)",
    "content": {FHIR_JSON: ERROR_RESPONSES[400]["content"][FHIR_JSON]}}}
UNSOUND: dict[int | str, dict[str, Any]] = {409: {
    "description": "The log holds an entry the service did not write (or one missing): nothing is signed over it",
    "content": {FHIR_JSON: ERROR_RESPONSES[400]["content"][FHIR_JSON]}}}


def _unsound(request: Request, exc: UnsoundLog) -> JSONResponse:
    """A 409 naming the entry no checkpoint or proof may vouch for, for the witness to report."""
    return operation_outcome(409, "conflict", f"nothing signed or proved: {exc}", request.state.request_id)


def _throttled(request: Request) -> JSONResponse | None:
    """A 429 when this caller (or everyone together) has had its proofs for the minute."""
    if PROOFS.admit(request.client.host if request.client else None) is not None:
        return None
    response = operation_outcome(429, "throttled", "too many proofs asked for this minute: ask again in a "
                                 "minute (a witness needs one each time it polls)", request.state.request_id)
    response.headers["Retry-After"] = "60"
    return response


ProofKey = tuple[str, int, int, str]  # what is proved (kind, an entry or size, a size), the log's last hash


class KeptProofs:
    """The proofs made lately (the `most` recent), by what they prove and the chain hash of the last entry of
    the log they were made over, which fixes every entry before it (in an intact chain). A witness checks a
    proof against the tree heads signed in its checkpoints, so one answered from here for a log rewritten
    since can only fail its check, never pass it."""

    most = 1024  # a proof is a few dozen hashes: a few MB at most

    def __init__(self) -> None:
        self._proofs: OrderedDict[ProofKey, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()  # the endpoints run in a thread pool

    def get(self, key: ProofKey) -> dict[str, Any] | None:
        with self._lock:
            proof = self._proofs.get(key)
            if proof is not None:
                self._proofs.move_to_end(key)
            return proof

    def put(self, key: ProofKey, proof: dict[str, Any]) -> None:
        with self._lock:
            self._proofs[key] = proof
            while len(self._proofs) > self.most:
                self._proofs.popitem(last=False)


KEPT = KeptProofs()


def _proof(request: Request, kind: str, low: int, size: int,
           prove: Callable[[Transparency], dict[str, Any]]) -> dict[str, Any] | JSONResponse:
    """A proof about the log of `size` entries: one made before over the same log, free; else a new one,
    counted against the caller's share (or 429)."""
    last = _published(request).hash_of(size)  # None beyond the log: refused below, as such
    key = (kind, low, size, str(last))
    kept = KEPT.get(key) if last is not None else None
    if kept is not None:
        return kept
    refused = _throttled(request)
    if refused is not None:
        return refused
    try:
        proof = prove(_published(request))
    except UnsoundLog as exc:
        return _unsound(request, exc)
    if last is not None:
        KEPT.put(key, proof)
    return proof


def _published(request: Request) -> Transparency:
    state = request.app.state
    if getattr(state, "transparency", None) is None:
        state.transparency = Transparency(state.database, state.settings.audit_secret)
    published: Transparency = state.transparency
    return published


@router.get("/checkpoint", responses=UNSOUND, response_model=None)
def checkpoint(request: Request) -> dict[str, Any] | JSONResponse:
    """The log's current checkpoint, signed now."""
    try:
        return asdict(_published(request).checkpoint())
    except UnsoundLog as exc:
        return _unsound(request, exc)


@router.get("/handovers")
def handovers(request: Request) -> list[dict[str, Any]]:
    """The checkpoint key's handovers, in the log's order: at each `sharedcare audit rekey`, the old key's
    signature over the log's name, the rekey marker's entry and the new public key (`checkpoints.followed_key`)."""
    return _published(request).handovers()


@router.get("/consistency", responses=THROTTLED | UNSOUND, response_model=None)
def consistency(request: Request, first: Annotated[int, Query(ge=1)],
                second: Annotated[int, Query(ge=1)]) -> dict[str, Any] | JSONResponse:
    """Proof that the log of `second` entries extends the log of `first` (both at most the log's size)."""
    return _proof(request, "consistency", first, second, lambda published: published.consistency(first, second))


@router.get("/inclusion", responses=THROTTLED | UNSOUND, response_model=None)
def inclusion(request: Request, seq: Annotated[int, Query(ge=1)],
              size: Annotated[int, Query(ge=1)]) -> dict[str, Any] | JSONResponse:
    """Proof that entry `seq` (its chain hash) is in the log of `size` entries."""
    return _proof(request, "inclusion", seq, size, lambda published: published.inclusion(seq, size))
