"""Copying the audit log, as it grows, to a separate Audit Record Repository (TRUST AU7, IHE RESTful ATNA).

The repository is any FHIR R4 server that takes a transaction Bundle. Entries go in chain order, a batch a
Bundle, each as a create (`POST AuditEvent`, as RESTful ATNA records events) made conditional on a tag
naming its sequence and hash (`ifNoneExist`): a batch sent twice (a lost reply, a lost state file) adds
nothing, and nothing sent from here can replace a copy the repository already holds; an entry rewritten
here would arrive beside the original, under another hash. Each event also carries its place in the chain
(sequence, hash, previous hash), which matches the leaves of the witnessed checkpoints; the hash itself is
of the stored form, so the copy names its entry but cannot recompute it.

An entry leaves only if it follows the last one sent and its content matches its hash under the chain's key:
an entry edited in the database, or appended there by someone without the key, is never copied as if genuine,
and the forwarder stops, naming it. The position (sequence
and hash of the last entry the repository accepted) is kept in a small state file, replaced atomically,
and checked against the log at every start, so a rewrite of what was already copied is reported too. One
forwarder at a time holds a lock beside the state file.

Entries name patients and users, so they go only over https (plain http only to this machine), and a
redirect is refused rather than followed with the token.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from sharedcare.errors import SharedcareError
from sharedcare.governance.audit import GENESIS, chain_key, chain_problem, columns_event, expanded
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

CHAIN = "https://sharedcare.example/fhir/StructureDefinition/audit-chain"
CHAIN_TAG = "https://sharedcare.example/fhir/CodeSystem/audit-chain-entry"  # code: "{seq}-{hash}"
BATCH = 500
LOOPBACK = ("127.0.0.1", "::1", "localhost")


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
    """Replace the state file whole (write aside, sync, then rename), so a crash leaves the old or the new."""
    handle, aside = tempfile.mkstemp(dir=state.parent, prefix=state.name, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(json.dumps(asdict(position)))
        out.flush()
        os.fsync(out.fileno())
    os.replace(aside, state)


def as_audit_event(entry: AuditEntry, verified: bool | None = None) -> dict[str, Any]:
    """The entry as the FHIR AuditEvent the repository keeps, with its place in the chain. Given `verified`
    (the NDJSON export, which holds every entry), that is said too, and an entry that did not verify is told
    from its columns alone (`columns_event`); the forwarder sends only entries that verify."""
    chain = [{"url": "seq", "valueInteger": entry.seq}, {"url": "hash", "valueString": entry.hash},
             {"url": "previous", "valueString": entry.prev_hash}]
    if verified is not None:
        chain.append({"url": "verified", "valueBoolean": verified})
    event = columns_event(entry) if verified is False else expanded(entry.event)
    return {**event, "meta": {"tag": [{"system": CHAIN_TAG, "code": _tag(entry)}]},
            "extension": [{"url": CHAIN, "extension": chain}]}


def _tag(entry: AuditEntry) -> str:
    return f"{entry.seq}-{entry.hash}"


def transaction(entries: list[AuditEntry]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": as_audit_event(entry),
         "request": {"method": "POST", "url": "AuditEvent", "ifNoneExist": f"_tag={CHAIN_TAG}|{_tag(entry)}"}}
        for entry in entries]}


Send = Callable[[dict[str, Any]], None]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirected to {newurl}: not followed", headers, fp)


def http_sender(repository: str, token: str | None = None, timeout: float = 30) -> Send:
    """POST a transaction Bundle to the repository's base URL; any answer but a 2xx transaction-response
    whose every entry is 2xx is a ForwardError naming the status and what the server said."""
    address = urllib.parse.urlsplit(repository)
    if not (address.scheme == "https" or (address.scheme == "http" and address.hostname in LOOPBACK)):
        raise SharedcareError(f"{repository}: the repository must be https (audit entries name patients; "
                              "plain http only to this machine)")
    opener = urllib.request.build_opener(_NoRedirects)

    def send(bundle: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(repository.rstrip("/"), data=json.dumps(bundle).encode(),  # noqa: S310
                                         headers=headers, method="POST")
        try:
            with opener.open(request, timeout=timeout) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            raise ForwardError(f"{repository}: HTTP {exc.code} {exc.reason}: "
                               f"{exc.read()[:300].decode(errors='replace')}") from exc
        except (OSError, ValueError) as exc:
            raise ForwardError(f"{repository}: {exc}") from exc
        entries = answer.get("entry") if isinstance(answer, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ForwardError(f"{repository}: the answer is not a transaction-response Bundle")
        statuses = [str((e.get("response") or {}).get("status", "")) for e in entries]
        if len(statuses) != len(bundle["entry"]) or not all(s.startswith("2") for s in statuses):
            raise ForwardError(f"{repository}: the transaction was not accepted entry by entry ({statuses[:5]})")
    return send


def forward(db: Database, state: Path, send: Send, batch: int = BATCH,
            on_batch: Callable[[Position], None] | None = None) -> int:
    """Send every entry after the state file's position, a batch at a time; return how many were sent.
    The position moves only after the repository accepted a batch."""
    if not state.parent.is_dir():
        raise SharedcareError(f"{state}: its folder does not exist")
    with state.with_name(state.name + ".lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SharedcareError(f"{state}: another forwarder is running with this state file") from exc
        return _forward(db, state, send, batch, on_batch)


def _forward(db: Database, state: Path, send: Send, batch: int,
             on_batch: Callable[[Position], None] | None) -> int:
    position, sent = read_position(state), 0
    with db.session() as session:
        key = chain_key(session)
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
                problem = (chain_problem(entry, previous.hash, key) if entry.seq == previous.seq + 1
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
