"""Signed checkpoints of the audit chain, for witnesses outside the service (TRUST TE1-TE3).

The hash chain finds an edited, removed or reordered entry, unless whoever edited it also rewrote every
later hash and the head: someone with the database and the time to drop its triggers. A checkpoint is
the head (sequence number and hash) at a moment, signed with Ed25519, kept where the service cannot
write: an IG team's store, another organisation, a transparency service. `sharedcare audit verify
--checkpoints FILE` then checks that the chain still passes through every checkpoint: a rewrite, a
truncation or a log shown differently to two witnesses (two checkpoints at one position with different
hashes: a split view) is found and named.

A checkpoint also signs the log as an RFC 6962 Merkle tree (TRUST TE1): leaf n is entry n's chain hash,
and `root` is the tree head over the first `seq` leaves. Two checkpoints can then be shown consistent
(the later log extends the earlier, nothing rewritten) by a proof of a few dozen hashes, which a witness
checks with no access to the log (`sharedcare audit witness`); the service serves its current checkpoint
and those proofs at `/audit/checkpoint` and `/audit/consistency` (api/transparency.py). An inclusion
proof (`/audit/inclusion`) shows one entry is in the log a witness holds a checkpoint of: evidence, in a
complaint or an investigation, that the access on record is the one the log held then.

The signing key is derived from the deployment's audit secret (`Settings.audit_secret`), so nothing new must be
kept; witnesses need only the public key (`sharedcare audit checkpoint --public-key`). A checkpoint holds no
patient data. Rotating the audit key (`sharedcare audit rekey`) rotates the signing key with it, since a leaked
audit secret leaks it too: the rekey marker carries the new public key and a handover, the old key's signature
over the log's name, the marker's place and the new key (`handover_signature`). The service serves the handovers
(`/audit/handovers`); a witness follows them from the key it was given (`followed_key`), so a scheduled rotation
needs nothing of witnesses. No one without the old signing key can make one. After a leak its holder could, so
the operator gives witnesses the new public key out of band, and a witness given it follows nothing signed by the
old one.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pymerkle import (
    BaseMerkleTree,
    ConsistencyProof,
    InclusionProof,
    InvalidProof,
    verify_consistency,
    verify_inclusion,
)
from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.governance.audit import (
    GENESIS,
    SEQ_MOST,
    chain_key,
    decision_details,
    entry_is_genuine,
    unheld_words,
)
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, AuditHead, AuditTreeMark

LOG_NAME = "sharedcare audit log"
MARK_LABEL = b"sharedcare audit tree mark"  # the label of the mark's key, derived from the chain's (TreeMark)
log = logging.getLogger(__name__)


class CheckpointError(SharedcareError):
    """A checkpoint that cannot be read: names the file, the line and what is wrong."""


class UnsoundLog(CheckpointError):
    """The log holds an entry no checkpoint or proof may vouch for (missing, off the chain or not the
    service's): named, so that the witness asking is told why nothing is signed."""


def signing_key(secret: str) -> Ed25519PrivateKey:
    """The deployment's checkpoint key: an Ed25519 seed made from the secret under its own label, so it
    is never the key of anything else (tokens, pseudonyms)."""
    seed = hmac.digest(secret.encode(), b"sharedcare audit checkpoint key", "sha256")
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _handover_bytes(seq: int, new_key: str) -> bytes:
    return f"{LOG_NAME}\nhandover\n{seq}\n{new_key}\n".encode()


def handover_signature(old: Ed25519PrivateKey, seq: int, new_key: str) -> str:
    """The old checkpoint key's word that from the rekey marker at entry `seq` on, `new_key` signs the checkpoints."""
    return base64.b64encode(old.sign(_handover_bytes(seq, new_key))).decode()


def handovers(session: Session) -> list[dict[str, Any]]:
    """The checkpoint key's handovers the log's rekey markers carry, in order: what `followed_key` follows. Only
    markers that began an epoch (`chain_key`) are read; a witness checks each signature itself in any case."""
    found = []
    for epoch in chain_key(session).epochs:
        if epoch.marker is None:
            continue
        said = decision_details(session.get_one(AuditEntry, epoch.marker).event)
        if "next-checkpoint-key" in said and "handover" in said:
            found.append({"seq": epoch.marker, "key": said["next-checkpoint-key"], "signature": said["handover"]})
    return found


def followed_key(public_key: str, given: Iterable[dict[str, Any]]) -> str:
    """The checkpoint key a witness given `public_key` trusts now: followed through each handover (in the log's
    order) that the key trusted before signed. The first handover a key signed wins."""
    trusted = public_key
    for handover in sorted(given, key=lambda found: int(found.get("seq", 0))):
        try:
            seq, new_key, signature = int(handover["seq"]), str(handover["key"]), str(handover["signature"])
            verifier = Ed25519PublicKey.from_public_bytes(base64.b64decode(trusted))
            verifier.verify(base64.b64decode(signature), _handover_bytes(seq, new_key))
        except (InvalidSignature, ValueError, KeyError, TypeError):
            continue
        trusted = new_key
    return trusted


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head at one moment: every entry up to `seq` is fixed by `hash`."""

    log: str
    seq: int
    hash: str
    root: str  # the RFC 6962 tree head over entries 1..seq (hex)
    at: str
    key: str  # the signer's public key (base64), so a witness holding several logs can tell them apart
    signature: str

    def signed_bytes(self) -> bytes:
        return f"{self.log}\n{self.seq}\n{self.root}\n{self.hash}\n{self.at}\n".encode()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class TreeMark:
    """How far the service's tree has checked the log: every entry up to `seq` was checked to follow the one
    before and to be the service's, the last has chain hash `hash`, and `root` is the tree head over them.

    Kept in the store (`audit_tree_mark`, one row) so that a restarted server rebuilds its tree from the
    stored hashes alone (about 7 us an entry, against 70-90 to check one) and checks only the entries after
    `seq` (`AuditTree.resume`). The application's own database role may write that row, so the row carries
    an HMAC (`mac`) under a key derived from the audit chain's key, which the database does not hold: whoever
    lacks the key cannot move the mark past an entry they forged, nor make one for another log. A mark that
    is not trusted (no row, another key, edited) costs only the full check, as before.

    The tree head, not only `hash`, is what makes the rebuilt tree the checked one: a leaf is an entry's
    stored hash column, which someone with the owner's rights can change beneath the mark (the chain links
    each entry to the hash before it, but reading hashes alone does not walk those links), and the tree head
    over `seq` leaves fixes every one of them. `hash` says where the checked log ended, and is checked too.
    What the mark vouches for is that each entry was checked once, when the tree took it in: as in a server
    never restarted, an entry's content edited later (its hash kept) is not looked at again by the tree
    (`audit verify` finds it)."""

    seq: int
    hash: str
    root: str

    def mac(self, chain_key: bytes) -> str:
        key = hmac.digest(chain_key, MARK_LABEL, "sha256")  # its own key: a mark's MAC is no entry's hash
        return hmac.digest(key, f"{LOG_NAME}\n{self.seq}\n{self.hash}\n{self.root}\n".encode(), "sha256").hex()


def read_mark(session: Session, chain_key: bytes) -> TreeMark | None:
    """The stored mark, if its MAC is the chain key's; else None (and a warning, for a row there is)."""
    row = session.get(AuditTreeMark, 1)
    if row is None:
        return None
    mark = TreeMark(row.seq, row.hash, row.root)
    # compared as bytes: the row is the application role's to write, and a str holding a non-ASCII character made
    # compare_digest raise, every checkpoint then a 500 (review of 2026-12-07)
    if not hmac.compare_digest(mark.mac(chain_key).encode(), str(row.mac).encode()):
        log.warning("the audit tree's stored mark (entry %s) is not under this process's audit key: not trusted; "
                    "every entry is checked", row.seq)
        return None
    return mark


def write_mark(session: Session, chain_key: bytes, mark: TreeMark) -> None:
    values = {"seq": mark.seq, "hash": mark.hash, "root": mark.root, "mac": mark.mac(chain_key)}
    moved = update(AuditTreeMark).where(AuditTreeMark.id == 1).values(values)
    if not cast(CursorResult[Any], session.execute(moved)).rowcount:
        session.add(AuditTreeMark(id=1, **values))


class AuditTree(BaseMerkleTree):
    """The audit log as an RFC 6962 Merkle tree: leaf n is entry n's chain hash (32 bytes), which fixes the
    entry and all before it. pymerkle does the tree's arithmetic and proofs (it matches RFC 6962's test
    vectors, tests/governance/test_checkpoints.py); this backend keeps only the leaf hashes, read from the
    store, which is all the arithmetic needs (its in-memory backend keeps a node object per leaf)."""

    def __init__(self) -> None:
        super().__init__("sha256", capacity=64 * 1024 ** 2)
        self.leaves: list[bytes] = []
        self.last_hash: str | None = None  # the chain hash of the last leaf's entry, as read

    def resume(self, session: Session, mark: TreeMark) -> bool:
        """Rebuild an empty tree up to the entry `mark` names from the stored hashes alone, unchecked, and keep it
        only if its last entry's hash and its tree head are the mark's: then its leaves are exactly those that
        were checked (`TreeMark`). Else (the log rewritten or cut back beneath the mark) it is emptied, and
        `catch_up` checks every entry. Whether the mark may be trusted at all is `read_mark`'s to say."""
        with self.lock:
            if self.leaves or mark.seq < 1:
                return False
            last = None
            try:
                for seq, digest in session.execute(select(AuditEntry.seq, AuditEntry.hash)
                                                   .where(AuditEntry.seq <= mark.seq).order_by(AuditEntry.seq)):
                    if seq != len(self.leaves) + 1:
                        break
                    self.append_entry(bytes.fromhex(digest))
                    last = digest
                kept = (len(self.leaves) == mark.seq and last == mark.hash
                        and self.get_root(mark.seq).hex() == mark.root)
            except ValueError:  # a stored hash that is not hex
                kept = False
            except BaseException:  # the store failed mid-way: no half-built tree is left behind
                self.leaves, self.last_hash = [], None
                self.cache_clear()
                raise
            if kept:
                self.last_hash = last
                return True
            log.warning("the audit log up to entry %s is not the one the tree's mark says was checked (rewritten or "
                        "cut back beneath it): every entry is checked", mark.seq)
            self.leaves, self.last_hash = [], None
            self.cache_clear()
            return False

    def mark(self) -> TreeMark | None:
        """Where this tree has got to, as a `TreeMark` (None when empty). Only for a tree whose every leaf was
        checked (`catch_up` checked, or `resume`): the service's."""
        with self.lock:
            if not self.leaves or self.last_hash is None:
                return None
            return TreeMark(len(self.leaves), self.last_hash, self.get_root(len(self.leaves)).hex())

    def catch_up(self, session: Session, upto: int, checked: bool = True) -> None:
        """Add the entries after the last leaf, up to entry `upto`. Each is `checked` to follow the one before
        and to be the service's (`entry_is_genuine`), else UnsoundLog names it: a checkpoint or a proof over an
        entry someone without the chain's key appended would vouch for it. A tree kept between calls is rebuilt
        if the store no longer holds its last leaf's entry as read (the log was rewritten or cut back beneath
        it): it must show what the store holds, so that witnesses see the rewrite."""
        with self.lock:
            if self.leaves and session.scalar(
                    select(AuditEntry.hash).where(AuditEntry.seq == len(self.leaves))) != self.last_hash:
                self.leaves, self.last_hash = [], None
                self.cache_clear()
            key = chain_key(session)
            after = (AuditEntry.seq > len(self.leaves), AuditEntry.seq <= upto)
            # whole entries, their events decoded and hashed (about 65-90 us each); or, unchecked (`audit verify
            # --checkpoints`, whose chain check comes first), the leaves alone (about 3-7 us)
            entries = cast(Iterable[Any], session.scalars(
                select(AuditEntry).where(*after).order_by(AuditEntry.seq).execution_options(yield_per=1000))
                if checked else session.execute(select(AuditEntry.seq, AuditEntry.hash).where(*after)
                                                .order_by(AuditEntry.seq)))
            for entry in entries:
                if entry.seq != len(self.leaves) + 1:
                    raise UnsoundLog(f"audit entry {len(self.leaves) + 1} is missing (the next is {entry.seq})",
                                     where="audit log")
                if checked and entry.prev_hash != (self.last_hash or GENESIS):
                    raise UnsoundLog(f"audit entry {entry.seq} does not follow the entry before it",
                                     where="audit log")
                if checked and not entry_is_genuine(entry, key):
                    epoch = key.epoch(entry.seq)
                    if epoch is not None and epoch.key is None:
                        words = unheld_words(epoch, current=epoch is key.current)
                        raise UnsoundLog(f"audit entry {entry.seq} {words}", where="audit log")
                    raise UnsoundLog(f"audit entry {entry.seq} was not written by the service (its hash is not "
                                     "under the chain's key: forged, or edited in the database); run "
                                     "`sharedcare audit verify`", where="audit log")
                self.append_entry(bytes.fromhex(entry.hash))
                self.last_hash = entry.hash

    def _encode_entry(self, data: bytes) -> bytes:
        return data

    def _store_leaf(self, data: bytes, digest: bytes) -> int:
        self.leaves.append(digest)
        return len(self.leaves)

    def _get_leaf(self, index: int) -> bytes:
        return self.leaves[index - 1]

    def _get_leaves(self, offset: int, width: int) -> list[bytes]:
        return self.leaves[offset:offset + width]

    def _get_size(self) -> int:
        return len(self.leaves)


def make_checkpoint(session: Session, key: Ed25519PrivateKey, now: datetime | None = None,
                    tree: AuditTree | None = None) -> Checkpoint:
    """Sign the chain's current head and the Merkle tree head over the same entries. `tree` is one kept
    between calls (the service's), caught up here; without one the tree is built afresh."""
    head = session.get(AuditHead, 1)
    seq, digest = (head.seq, head.hash) if head else (0, "0" * 64)
    tree = tree if tree is not None else AuditTree()
    tree.catch_up(session, seq)
    unsigned = Checkpoint(LOG_NAME, seq, digest, tree.get_root(seq).hex(), (now or utcnow()).isoformat(),
                          public_key_text(key), "")
    signature = base64.b64encode(key.sign(unsigned.signed_bytes())).decode()
    return Checkpoint(**{**asdict(unsigned), "signature": signature})


def _tree_up_to(session: Session, size: int, smallest: int, tree: AuditTree | None, asked: str) -> AuditTree:
    """The tree caught up to `size` entries, once `0 < smallest <= size <= ` the log's size holds; else an
    error naming what was `asked` for."""
    head = session.get(AuditHead, 1)
    entries = head.seq if head else 0
    if not 0 < smallest <= size <= entries:
        raise CheckpointError(f"no {asked}: the log has {entries}", where="audit log")
    tree = tree if tree is not None else AuditTree()
    tree.catch_up(session, size)
    return tree


def consistency_proof(session: Session, first: int, second: int, tree: AuditTree | None = None) -> dict[str, Any]:
    """Proof that the log of `second` entries extends the log of `first` (pymerkle's serialised proof)."""
    tree = _tree_up_to(session, second, first, tree, f"consistency proof from {first} to {second} entries")
    proof: dict[str, Any] = tree.prove_consistency(first, second).serialize()
    return proof


def inclusion_proof(session: Session, seq: int, size: int, tree: AuditTree | None = None) -> dict[str, Any]:
    """Proof that entry `seq` (its chain hash, `hash`) is in the log of `size` entries (pymerkle's
    serialised proof, `proof`): checked against a checkpoint of that size by `proves_inclusion`."""
    tree = _tree_up_to(session, size, seq, tree, f"inclusion proof of entry {seq} in {size} entries")
    entry_hash = session.scalar(select(AuditEntry.hash).where(AuditEntry.seq == seq))
    return {"seq": seq, "size": size, "hash": entry_hash, "proof": tree.prove_inclusion(seq, size).serialize()}


def proves_inclusion(found: dict[str, Any], checkpoint: Checkpoint) -> bool:
    """Whether `found` (an `inclusion_proof`) shows its entry in the log `checkpoint` signed."""
    try:
        if int(found["size"]) != checkpoint.seq:
            return False
        leaf = AuditTree().hash_buff(bytes.fromhex(str(found["hash"])))
        verify_inclusion(leaf, bytes.fromhex(checkpoint.root), InclusionProof.deserialize(found["proof"]),
                         index=int(found["seq"]), size=checkpoint.seq)
        return True
    except (InvalidProof, ValueError, KeyError, TypeError):
        return False


class Transparency:
    """What the service publishes for witnesses (api/transparency.py): checkpoints signed now, and the
    proofs, over one tree kept between requests (caught up on each, rebuilt after a rewrite).

    The tree checks every entry it takes in, so built afresh it cost 70-90 us of CPU an entry: the first
    checkpoint after each restart took some 80 s at a million entries while the witness waited. So where the
    tree has got to is kept in the store (`TreeMark`, under an HMAC of the chain's key) after each request
    that moved it, and an empty tree (a new process) is first rebuilt from the stored hashes up to that mark
    (`AuditTree.resume`, about 7 us an entry), checking only the entries after it. A mark not trusted, or
    one the stored log no longer matches, is ignored: every entry is checked, as before. A store the mark
    cannot be read from or written to (a role not granted the table) is told in the log, and served as
    before. Chosen over warming the tree in a thread at start, which would still check every entry after
    each restart (a core for 80 s at a million) and have to answer early requests 503: the mark removes the
    cost rather than moving it, and the only new trust is in the chain's key, which the log trusts already."""

    def __init__(self, database: Database, secret: str) -> None:
        self.database = database
        self.key = signing_key(secret)
        self.tree = AuditTree()
        self.marked: TreeMark | None = None  # the mark this process last stored

    def checkpoint(self) -> Checkpoint:
        self._resume()
        with self.database.session() as session:
            found = make_checkpoint(session, self.key, tree=self.tree)
        self._remember()
        return found

    def consistency(self, first: int, second: int) -> dict[str, Any]:
        self._resume()
        with self.database.session() as session:
            found = consistency_proof(session, first, second, tree=self.tree)
        self._remember()
        return found

    def inclusion(self, seq: int, size: int) -> dict[str, Any]:
        self._resume()
        with self.database.session() as session:
            found = inclusion_proof(session, seq, size, tree=self.tree)
        self._remember()
        return found

    def _resume(self) -> None:
        """An empty tree rebuilt up to the stored mark, if the chain's key vouches for it (`TreeMark`)."""
        chain_key = self.database.audit_key
        with self.tree.lock:  # one request rebuilds it; the others wait for it, as for a catch-up
            if self.tree.leaves or not chain_key:
                return
            try:
                with self.database.session() as session:
                    mark = read_mark(session, chain_key)
                    if mark is not None and self.tree.resume(session, mark):
                        self.marked = mark
                        log.info("the audit tree was rebuilt from the stored hashes up to entry %s, checked "
                                 "before; entries after it are checked", mark.seq)
            except Exception as exc:  # noqa: BLE001 - a mark that cannot be read or judged is only not trusted
                self.tree.leaves, self.tree.last_hash = [], None
                self.tree.cache_clear()
                log.warning("the audit tree's mark could not be read (%s): every entry is checked",
                            type(exc).__name__ if not isinstance(exc, SQLAlchemyError) else exc)

    def _remember(self) -> None:
        """Store where the tree has got to, if it moved (one small write after a request that checked entries)."""
        chain_key = self.database.audit_key
        mark = self.tree.mark()
        if mark is None or not chain_key or mark == self.marked:
            return
        try:
            with self.database.session() as session:
                write_mark(session, chain_key, mark)
            self.marked = mark
        except SQLAlchemyError as exc:
            log.warning("the audit tree's mark could not be stored (%s): a restart checks every entry again", exc)

    def handovers(self) -> list[dict[str, Any]]:
        with self.database.session() as session:
            return handovers(session)

    def hash_of(self, seq: int) -> str | None:
        """Entry `seq`'s chain hash, which fixes it and every entry before it; None if the log holds none."""
        if not 0 < seq <= SEQ_MOST:
            return None
        with self.database.session() as session:
            return session.scalar(select(AuditEntry.hash).where(AuditEntry.seq == seq))


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
                                    root=str(fields["root"]), at=str(fields["at"]), key=str(fields["key"]),
                                    signature=str(fields["signature"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{where}, line {number}: not a checkpoint ({exc})") from exc
        if not 0 <= found[-1].seq <= SEQ_MOST:  # anything else cannot be a position in the log
            raise CheckpointError(f"{where}, line {number}: not a checkpoint (entry {found[-1].seq} is out of range)")
    return found


@dataclass(frozen=True)
class CheckpointProblem:
    checkpoint: Checkpoint
    problem: str


def check_against_chain(session: Session, checkpoints: list[Checkpoint],
                        public_key: str | Collection[str]) -> list[CheckpointProblem]:
    """Every way the checkpoints and the stored chain disagree: a signature that is not this deployment's (by
    any of `public_key`: the current checkpoint key and those of the retired audit keys),
    two checkpoints at one position with different hashes (a split view), a checkpoint past the head (the
    log was cut back) or one whose position now holds another hash or tree head (the log was rewritten).
    None given, none checked: the tree over the whole log is not built."""
    if not checkpoints:
        return []
    problems, signed = [], []
    keys = [public_key] if isinstance(public_key, str) else list(public_key)
    for checkpoint in checkpoints:
        if any(is_signed(checkpoint, key) for key in keys):
            signed.append(checkpoint)
        else:
            problems.append(CheckpointProblem(checkpoint, "not signed by this deployment's checkpoint key"))
    by_seq: dict[int, str] = {}
    for checkpoint in signed:
        if by_seq.setdefault(checkpoint.seq, checkpoint.hash) != checkpoint.hash:
            problems.append(CheckpointProblem(checkpoint, f"two checkpoints at entry {checkpoint.seq} disagree: "
                                                          "the log was shown differently to different witnesses"))
    head = session.get(AuditHead, 1)
    head_seq = head.seq if head else 0
    tree = AuditTree()
    tree.catch_up(session, head_seq, checked=False)  # what is stored, as it is: `verify` judges the entries
    stored = {seq: digest for seq, digest in session.execute(select(AuditEntry.seq, AuditEntry.hash).where(
        AuditEntry.seq.in_([c.seq for c in signed if c.seq > 0])))}
    for checkpoint in signed:
        if checkpoint.seq > head_seq:
            problems.append(CheckpointProblem(checkpoint, f"the log ends at entry {head_seq}, before this "
                                                          f"checkpoint's {checkpoint.seq}: entries were removed"))
        elif checkpoint.seq > 0 and stored.get(checkpoint.seq) != checkpoint.hash:
            problems.append(CheckpointProblem(checkpoint, f"entry {checkpoint.seq} no longer has the hash this "
                                                          "checkpoint signed: the log was rewritten"))
        elif tree.get_root(checkpoint.seq).hex() != checkpoint.root:
            problems.append(CheckpointProblem(checkpoint, f"the Merkle tree head over entries 1-{checkpoint.seq} "
                                                          "is not the one this checkpoint signed"))
    return problems


def is_signed(checkpoint: Checkpoint, public_key: str) -> bool:
    """Whether this deployment's key (base64 `public_key`) signed the checkpoint, for this log."""
    try:
        if checkpoint.key != public_key or checkpoint.log != LOG_NAME:
            return False
        verifier = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
        verifier.verify(base64.b64decode(checkpoint.signature), checkpoint.signed_bytes())
        return True
    except (InvalidSignature, ValueError):
        return False


def witness_problems(kept: Checkpoint | None, new: Checkpoint, proof: dict[str, Any] | None,
                     public_key: str) -> list[str]:
    """What a witness, holding only the last checkpoint it kept, finds wrong with the service's new one and
    the consistency proof between them: not signed by the deployment, a log that shrank, the same size
    with another head, or a proof that the new log does not extend the kept one (entries rewritten or
    removed, or this witness shown a different log from others). Empty: keep the new checkpoint."""
    if not is_signed(new, public_key):
        return ["the new checkpoint is not signed by this deployment's checkpoint key"]
    if kept is None or kept.seq == 0:
        return []
    if new.seq < kept.seq:
        return [f"the log has {new.seq} entries, fewer than the {kept.seq} of the checkpoint kept: "
                "entries were removed"]
    if new.seq == kept.seq:
        same = (new.root, new.hash) == (kept.root, kept.hash)
        return [] if same else [f"two checkpoints at entry {new.seq} disagree: the log was rewritten or "
                                "is shown differently to different witnesses"]
    try:
        verify_consistency(bytes.fromhex(kept.root), bytes.fromhex(new.root), ConsistencyProof.deserialize(proof),
                           prior_size=kept.seq, later_size=new.seq)
    except (InvalidProof, ValueError, KeyError, TypeError) as exc:
        return [f"the log of {new.seq} entries does not extend the {kept.seq} of the checkpoint kept ({exc}): "
                "entries were rewritten or removed, or this witness is shown a different log"]
    return []

