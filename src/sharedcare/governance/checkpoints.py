"""Signed checkpoints of the audit chain, for witnesses outside the service (TRUST TE1-TE3).

The hash chain finds an edited, removed or reordered entry, unless whoever edited it also rewrote every
later hash and the head: someone with the database and the time to drop its triggers. A checkpoint is
the head (sequence number and hash) at a moment, signed with Ed25519, kept where the service cannot
write: an IG team's store, another organisation, a transparency service. `sharedcare audit verify
--checkpoints FILE` then checks that the chain still passes through every checkpoint: a rewrite, a
truncation or a log shown differently to two witnesses (two checkpoints at one position with different
hashes: a split view) is found and named.

The signing key is derived from the deployment's secret, so nothing new must be kept; witnesses need
only the public key (`sharedcare audit checkpoint --public-key`). A checkpoint holds no patient data.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.store.models import AuditEntry, AuditHead

LOG_NAME = "sharedcare audit log"


class CheckpointError(SharedcareError):
    """A checkpoint that cannot be read: names the file, the line and what is wrong."""


def signing_key(secret: str) -> Ed25519PrivateKey:
    """The deployment's checkpoint key: an Ed25519 seed made from the secret under its own label, so it
    is never the key of anything else (tokens, pseudonyms)."""
    seed = hmac.digest(secret.encode(), b"sharedcare audit checkpoint key", "sha256")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head at one moment: every entry up to `seq` is fixed by `hash`."""

    log: str
    seq: int
    hash: str
    at: str
    key: str  # the signer's public key (base64), so a witness holding several logs can tell them apart
    signature: str

    def signed_bytes(self) -> bytes:
        return f"{self.log}\n{self.seq}\n{self.hash}\n{self.at}\n".encode()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def make_checkpoint(session: Session, key: Ed25519PrivateKey, now: datetime | None = None) -> Checkpoint:
    """Sign the chain's current head."""
    head = session.get(AuditHead, 1)
    seq, digest = (head.seq, head.hash) if head else (0, "0" * 64)
    unsigned = Checkpoint(LOG_NAME, seq, digest, (now or utcnow()).isoformat(), public_key_text(key), "")
    signature = base64.b64encode(key.sign(unsigned.signed_bytes())).decode()
    return Checkpoint(**{**asdict(unsigned), "signature": signature})


def read_checkpoints(lines: Iterable[str], where: str) -> list[Checkpoint]:
    """Checkpoints from a witness's file, one JSON object a line; a line that is not one is an error
    naming the file and line (a witness's store is evidence: nothing in it is skipped)."""
    found = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
            found.append(Checkpoint(log=str(fields["log"]), seq=int(fields["seq"]), hash=str(fields["hash"]),
                                    at=str(fields["at"]), key=str(fields["key"]),
                                    signature=str(fields["signature"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{where}, line {number}: not a checkpoint ({exc})") from exc
        if not 0 <= found[-1].seq < 2**63:  # a database integer: anything else cannot be a position in the log
            raise CheckpointError(f"{where}, line {number}: not a checkpoint (entry {found[-1].seq} is out of range)")
    return found


@dataclass(frozen=True)
class CheckpointProblem:
    checkpoint: Checkpoint
    problem: str


def check_against_chain(session: Session, checkpoints: list[Checkpoint], public_key: str) -> list[CheckpointProblem]:
    """Every way the checkpoints and the stored chain disagree: a signature that is not this deployment's,
    two checkpoints at one position with different hashes (a split view), a checkpoint past the head (the
    log was cut back) or one whose position now holds another hash (the log was rewritten)."""
    verifier = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
    problems, signed = [], []
    for checkpoint in checkpoints:
        try:
            if checkpoint.key != public_key or checkpoint.log != LOG_NAME:
                raise InvalidSignature
            verifier.verify(base64.b64decode(checkpoint.signature), checkpoint.signed_bytes())
            signed.append(checkpoint)
        except (InvalidSignature, ValueError):
            problems.append(CheckpointProblem(checkpoint, "not signed by this deployment's checkpoint key"))
    by_seq: dict[int, str] = {}
    for checkpoint in signed:
        if by_seq.setdefault(checkpoint.seq, checkpoint.hash) != checkpoint.hash:
            problems.append(CheckpointProblem(checkpoint, f"two checkpoints at entry {checkpoint.seq} disagree: "
                                                          "the log was shown differently to different witnesses"))
    head = session.get(AuditHead, 1)
    head_seq = head.seq if head else 0
    stored = {seq: digest for seq, digest in session.execute(select(AuditEntry.seq, AuditEntry.hash).where(
        AuditEntry.seq.in_([c.seq for c in signed if c.seq > 0])))}
    for checkpoint in signed:
        if checkpoint.seq > head_seq:
            problems.append(CheckpointProblem(checkpoint, f"the log ends at entry {head_seq}, before this "
                                                          f"checkpoint's {checkpoint.seq}: entries were removed"))
        elif checkpoint.seq > 0 and stored.get(checkpoint.seq) != checkpoint.hash:
            problems.append(CheckpointProblem(checkpoint, f"entry {checkpoint.seq} no longer has the hash this "
                                                          "checkpoint signed: the log was rewritten"))
    return problems

