"""Copying the audit log, as it grows, to a separate Audit Record Repository (TRUST AU7, IHE RESTful ATNA).

The repository is any FHIR R4 server that takes a transaction Bundle. Entries go in chain order, a batch a
Bundle, each as `PUT AuditEvent/sharedcare-{seq}`: a batch sent twice (a lost reply, a restart) writes
the same resources again instead of doubling them. Each event carries its place in the chain (sequence,
hash, previous hash) so the repository's copy can be checked on its own.

An entry leaves only if it follows the last one sent and its content matches its hash: an entry edited in
the database is never copied as if genuine, and the forwarder stops, naming it. The position (sequence
and hash of the last entry the repository accepted) is kept in a small state file, replaced atomically,
and checked against the log at every start, so a rewrite of what was already copied is reported too.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from sharedcare.errors import SharedcareError
from sharedcare.governance.audit import GENESIS, chain_problem, expanded
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

CHAIN = "https://sharedcare.example/fhir/StructureDefinition/audit-chain"
BATCH = 500


class ForwardError(SharedcareError):
    """The repository refused or could not be reached; what it accepted before stays recorded."""


class ChainBroken(SharedcareError):
    """The log does not hold what was forwarded, or an entry does not follow: evidence of tampering."""


@dataclass(frozen=True)
class Position:
    """The last entry the repository accepted (0 and the genesis hash before the first)."""

    seq: int = 0
    hash: str = GENESIS


def read_position(state: Path) -> Position:
    if not state.exists():
        return Position()
    try:
        found = json.loads(state.read_text(encoding="utf-8"))
        return Position(int(found["seq"]), str(found["hash"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SharedcareError(f"{state}: not a forwarding position ({exc})") from exc


def write_position(state: Path, position: Position) -> None:
    """Replace the state file whole (write aside, then rename), so a crash leaves the old or the new."""
    aside = state.with_name(state.name + ".tmp")
    aside.write_text(json.dumps(asdict(position)), encoding="utf-8")
    os.replace(aside, state)


def as_audit_event(entry: AuditEntry) -> dict[str, Any]:
    """The entry as the FHIR AuditEvent the repository keeps, with its place in the chain."""
    chain = [{"url": "seq", "valueInteger": entry.seq}, {"url": "hash", "valueString": entry.hash},
             {"url": "previous", "valueString": entry.prev_hash}]
    return {**expanded(entry.event), "id": f"sharedcare-{entry.seq}",
            "extension": [{"url": CHAIN, "extension": chain}]}


def transaction(entries: list[AuditEntry]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": (event := as_audit_event(entry)), "request": {"method": "PUT", "url": f"AuditEvent/{event['id']}"}}
        for entry in entries]}


Send = Callable[[dict[str, Any]], None]


def http_sender(repository: str, token: str | None = None, timeout: float = 30) -> Send:
    """POST a transaction Bundle to the repository's base URL; any answer but a 2xx transaction-response
    whose every entry is 2xx is a ForwardError naming the status and what the server said."""
    def send(bundle: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(repository.rstrip("/"), data=json.dumps(bundle).encode(),  # noqa: S310
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the operator's URL)
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            raise ForwardError(f"{repository}: HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}") from exc
        except (OSError, ValueError) as exc:
            raise ForwardError(f"{repository}: {exc}") from exc
        statuses = [str(e.get("response", {}).get("status", "")) for e in answer.get("entry", [])]
        if len(statuses) != len(bundle["entry"]) or not all(s.startswith("2") for s in statuses):
            raise ForwardError(f"{repository}: the transaction was not accepted entry by entry ({statuses[:5]})")
    return send


def forward(db: Database, state: Path, send: Send, batch: int = BATCH,
            on_batch: Callable[[Position], None] | None = None) -> int:
    """Send every entry after the state file's position, a batch at a time; return how many were sent.
    The position moves only after the repository accepted a batch."""
    position, sent = read_position(state), 0
    with db.session() as session:
        if position.seq:
            held = session.get(AuditEntry, position.seq)
            if held is None or held.hash != position.hash:
                raise ChainBroken(f"entry {position.seq} is not what was forwarded (hash {position.hash[:12]}...): "
                                  "the log was rewritten or cut back after it was copied")
        while True:
            entries = list(session.scalars(select(AuditEntry).where(AuditEntry.seq > position.seq)
                                           .order_by(AuditEntry.seq).limit(batch)))
            if not entries:
                return sent
            good, previous, problem = [], position, None
            for entry in entries:
                problem = (chain_problem(entry, previous.hash) if entry.seq == previous.seq + 1
                           else f"comes after entry {previous.seq}: entry {previous.seq + 1} is missing")
                if problem:
                    problem = f"entry {entry.seq} {problem}"
                    break
                good.append(entry)
                previous = Position(entry.seq, entry.hash)
            if good:  # what is sound before a broken entry still leaves
                send(transaction(good))
                position = previous
                write_position(state, position)
                sent += len(good)
                if on_batch:
                    on_batch(position)
            if problem:
                raise ChainBroken(f"{problem}; nothing from it on was forwarded "
                                  f"(the repository holds up to entry {position.seq})")
