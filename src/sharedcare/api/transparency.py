"""The audit log's transparency endpoints, for witnesses (TRUST TE1-TE3; governance/checkpoints.py).

`GET /audit/checkpoint` is a freshly signed checkpoint of the log (its size, chain head and RFC 6962 tree
head); `GET /audit/consistency?first=M&second=N` proves that the log of N entries extends the log of M;
`GET /audit/inclusion?seq=K&size=N` proves entry K is in the log of N entries.
Neither holds patient data (hashes and counts only), so neither needs a token: a witness in another
organisation polls the first every few minutes and checks it against the last it kept with the second
(`sharedcare audit witness`). The tree is kept between requests and caught up on each.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from sharedcare.governance.checkpoints import Transparency

router = APIRouter(prefix="/audit", tags=["audit transparency"])


def _published(request: Request) -> Transparency:
    state = request.app.state
    if getattr(state, "transparency", None) is None:
        state.transparency = Transparency(state.database, state.settings.secret)
    published: Transparency = state.transparency
    return published


@router.get("/checkpoint")
def checkpoint(request: Request) -> dict[str, Any]:
    """The log's current checkpoint, signed now."""
    return asdict(_published(request).checkpoint())


@router.get("/consistency")
def consistency(request: Request, first: Annotated[int, Query(ge=1)],
                second: Annotated[int, Query(ge=1)]) -> dict[str, Any]:
    """Proof that the log of `second` entries extends the log of `first` (both at most the log's size)."""
    return _published(request).consistency(first, second)


@router.get("/inclusion")
def inclusion(request: Request, seq: Annotated[int, Query(ge=1)], size: Annotated[int, Query(ge=1)]) -> dict[str, Any]:
    """Proof that entry `seq` (its chain hash) is in the log of `size` entries."""
    return _published(request).inclusion(seq, size)
