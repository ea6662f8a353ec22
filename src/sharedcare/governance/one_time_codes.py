"""One-time codes for the patient portal's sign-in: random, six digits, ten minutes, a few tries.

Only a salted, slow hash of each code is stored, so someone who can read the table cannot work out a
live code within its ten minutes. The browser holds the challenge id; the code travels another way
(the server log in the demo; NHS login replaces the whole step in production).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from sharedcare.store.models import SignInCode

CODE_MINUTES = 10
MAX_ATTEMPTS = 5
_ITERATIONS = 100_000


@dataclass(frozen=True)
class Issued:
    challenge: str
    code: str
    expires_at: datetime


def _hash(code: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", code.encode(), salt, _ITERATIONS).hex()


def new_challenge() -> str:
    """A challenge id that names no code (for sign-in details that matched no one)."""
    return secrets.token_urlsafe(32)


def issue(session: Session, person_id: str, now: datetime) -> Issued:
    code = f"{secrets.randbelow(1_000_000):06d}"
    salt = secrets.token_bytes(16)
    row = SignInCode(id=new_challenge(), person_id=person_id, code_hash=f"{salt.hex()}${_hash(code, salt)}",
                     created_at=now, expires_at=now + timedelta(minutes=CODE_MINUTES), attempts=0)
    session.add(row)
    session.flush()
    return Issued(row.id, code, row.expires_at)


@dataclass(frozen=True)
class Redeemed:
    person_id: str | None  # whose code it was, if the challenge exists (for the audit log)
    signed_in: bool
    result: str  # ok, wrong-code, expired, already-used, too-many-attempts, no-such-challenge


def redeem(session: Session, challenge: str, code: str, now: datetime) -> Redeemed:
    row = session.get(SignInCode, challenge) if challenge else None
    if row is None:
        return Redeemed(None, False, "no-such-challenge")
    problem = ("already-used" if row.used_at is not None else "expired" if now >= row.expires_at
               else "too-many-attempts" if row.attempts >= MAX_ATTEMPTS else None)
    if problem:
        return Redeemed(row.person_id, False, problem)
    salt, expected = row.code_hash.split("$", 1)
    if not hmac.compare_digest(_hash(code.strip(), bytes.fromhex(salt)), expected):
        row.attempts += 1
        return Redeemed(row.person_id, False, "wrong-code")
    row.used_at = now
    return Redeemed(row.person_id, True, "ok")
