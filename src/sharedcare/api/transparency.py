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

from sharedcare.governance.checkpoints import (
    AuditTree,
    consistency_proof,
    inclusion_proof,
    make_checkpoint,
    signing_key,
)

router = APIRouter(prefix="/audit", tags=["audit transparency"])


def _tree(request: Request) -> AuditTree:
    state = request.app.state
    if getattr(state, "audit_tree", None) is None:
        state.audit_tree = AuditTree()
    tree: AuditTree = state.audit_tree
    return tree


@router.get("/checkpoint")
def checkpoint(request: Request) -> dict[str, Any]:
    """The log's current checkpoint, signed now."""
    state = request.app.state
    with state.database.session() as session:
        return asdict(make_checkpoint(session, signing_key(state.settings.secret), tree=_tree(request)))


@router.get("/consistency")
def consistency(request: Request, first: Annotated[int, Query(ge=1)],
                second: Annotated[int, Query(ge=1)]) -> dict[str, Any]:
    """Proof that the log of `second` entries extends the log of `first` (both at most the log's size)."""
    with request.app.state.database.session() as session:
        return consistency_proof(session, first, second, tree=_tree(request))


@router.get("/inclusion")
def inclusion(request: Request, seq: Annotated[int, Query(ge=1)], size: Annotated[int, Query(ge=1)]) -> dict[str, Any]:
    """Proof that entry `seq` (its chain hash) is in the log of `size` entries."""
    with request.app.state.database.session() as session:
        return inclusion_proof(session, seq, size, tree=_tree(request))
