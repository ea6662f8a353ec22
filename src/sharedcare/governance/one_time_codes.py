"""One-time codes for the patient portal's sign-in: random, six digits, ten minutes, a few tries.

Only a salted, slow hash of each code is stored, so someone who can read the table cannot work out a
live code within its ten minutes. The browser holds the challenge id; the code travels another way
(the server log in the demo; NHS login replaces the whole step in production).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from sharedcare.store.models import SignInCode

CODE_MINUTES = 10
MAX_ATTEMPTS = 5
MAX_CODES_PER_HOUR = 5  # per person: more would let a guesser reset MAX_ATTEMPTS at will
_ITERATIONS = 100_000


@dataclass(frozen=True)
class Issued:
    challenge: str
    code: str
    expires_at: datetime


def _hash(code: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", code.encode(), salt, _ITERATIONS).hex()


def new_challenge() -> str:
    """A challenge id (a code's, or one that names none)."""
    return secrets.token_urlsafe(32)


def unmatched_challenge() -> str:
    """A challenge id that names no code (for sign-in details that matched no one, or whose person has had
    the hour's codes), made at the cost of issuing one: a random code hashed as `issue` hashes it, so the
    answer takes as long as one that matched (sixth security review, 2026-12-06)."""
    _hash(f"{secrets.randbelow(1_000_000):06d}", secrets.token_bytes(16))
    return new_challenge()


def issued_in_the_last_hour(session: Session, person_id: str, now: datetime) -> int:
    return int(session.scalar(select(func.count()).select_from(SignInCode).where(
        SignInCode.person_id == person_id, SignInCode.created_at > now - timedelta(hours=1))) or 0)


def issue(session: Session, person_id: str, now: datetime) -> Issued:
    code = f"{secrets.randbelow(1_000_000):06d}"
    salt = secrets.token_bytes(16)
    row = SignInCode(id=new_challenge(), person_id=person_id, code_hash=f"{salt.hex()}${_hash(code, salt)}",
                     created_at=now, expires_at=now + timedelta(minutes=CODE_MINUTES), attempts=0)
    session.add(row)
    session.flush()
    return Issued(row.id, code, row.expires_at)


def as_typed(code: str) -> str:
    """A code as the citizen meant it: without the spaces and hyphens it is often shown or read out with
    ("242 483", "242-483"), which would otherwise make the right code wrong and use up a try."""
    return re.sub(r"[\s\-\u2010-\u2015]", "", code)


@dataclass(frozen=True)
class Redeemed:
    person_id: str | None  # whose code it was, if the challenge exists (for the audit log)
    signed_in: bool
    result: str  # ok, wrong-code, expired, already-used, too-many-attempts, no-such-challenge


def redeem(session: Session, challenge: str, code: str, now: datetime) -> Redeemed:
    """Check a code. Each try is counted by one atomic UPDATE before the code is compared, so guesses sent
    in parallel cannot get more than MAX_ATTEMPTS between them; a code is used once, also atomically. The
    code given is hashed on every path, against a random salt where the challenge names no code (details
    that matched no one: `unmatched_challenge`), so that the answer takes as long whichever it was."""
    row = session.get(SignInCode, challenge) if challenge else None
    salt, expected = row.code_hash.split("$", 1) if row is not None else (secrets.token_bytes(16).hex(), "")
    given = _hash(as_typed(code), bytes.fromhex(salt))
    if row is None:
        return Redeemed(None, False, "no-such-challenge")
    person_id = row.person_id
    if row.used_at is not None:
        return Redeemed(person_id, False, "already-used")
    if now >= row.expires_at:
        return Redeemed(person_id, False, "expired")
    counted = session.execute(update(SignInCode).where(
        SignInCode.id == challenge, SignInCode.attempts < MAX_ATTEMPTS, SignInCode.used_at.is_(None),
    ).values(attempts=SignInCode.attempts + 1))
    if counted.rowcount != 1:  # type: ignore[attr-defined]
        return Redeemed(person_id, False, "too-many-attempts")
    if not hmac.compare_digest(given, expected):
        return Redeemed(person_id, False, "wrong-code")
    used = session.execute(update(SignInCode).where(SignInCode.id == challenge, SignInCode.used_at.is_(None))
                           .values(used_at=now))
    if used.rowcount != 1:  # type: ignore[attr-defined]
        return Redeemed(person_id, False, "already-used")
    return Redeemed(person_id, True, "ok")
