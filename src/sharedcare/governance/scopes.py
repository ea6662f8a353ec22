"""SMART on FHIR scopes (v1 `patient/*.read`, v2 `patient/Observation.rs`): their grammar and what they allow.

Scopes only narrow what a client asked to receive; the sharing framework still decides every read.
Written by hand: the grammar is a few lines and no library we use parses SMART scopes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# v1 permissions read/write/*; v2 any of c, r, u, d, s in that order (".rs" = read and search: `r` alone reads by
# id, `s` alone searches; v1 `read` is both).
_RESOURCE = re.compile(r"^(user|patient|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)$")
# Scopes that grant no data themselves: the EHR launch's context. (No standalone launch, OpenID Connect
# or refresh tokens yet, so `launch/patient`, `openid`, `fhirUser` and `offline_access` are unknown.)
CONTEXT_SCOPES = frozenset({"launch"})
LEVELS = ("patient", "user", "system")


@dataclass(frozen=True)
class Scope:
    level: str  # patient | user | system
    resource_type: str  # "*" or a FHIR type
    reads: bool  # whether it allows reading by id: read, vread, history (v1 read or *, v2 r)
    searches: bool  # whether it allows searching: a type's search, $everything, Patient search (v1 read or *, v2 s)
    creates: bool  # whether it allows creating a resource (v1 write or *, v2 c)
    updates: bool  # whether it allows changing a held one, a withdrawal too (v1 write or *, v2 u; SMART lets an
    # update by PUT create a resource too: "upsert")

    @property
    def writes(self) -> bool:
        return self.creates or self.updates

    @property
    def retrieves(self) -> bool:
        """Whether it allows reading in either way (by id or by search)."""
        return self.reads or self.searches


def parse(scope: str) -> Scope | None:
    """A resource scope, or None for anything else (context scopes, unknown words)."""
    found = _RESOURCE.match(scope)
    if not found or not found.group(3):
        return None
    permission = found.group(3)
    v2 = permission not in ("read", "write", "*")
    v1_read, v1_write = permission in ("read", "*"), permission in ("write", "*")
    return Scope(found.group(1), found.group(2), reads=v1_read or (v2 and "r" in permission),
                 searches=v1_read or (v2 and "s" in permission), creates=v1_write or (v2 and "c" in permission),
                 updates=v1_write or (v2 and "u" in permission))


def is_known(scope: str) -> bool:
    return scope in CONTEXT_SCOPES or parse(scope) is not None


def read_scopes(scopes: str) -> list[Scope]:
    """The scopes that allow reading, by id or by search."""
    return [s for s in (parse(word) for word in scopes.split()) if s is not None and s.retrieves]


def write_scopes(scopes: str) -> list[Scope]:
    return [s for s in (parse(word) for word in scopes.split()) if s is not None and s.writes]


def patient_level_only(scopes: str) -> bool:
    """Whether every reading scope is patient-level: the token may read only its launch patient's record."""
    found = read_scopes(scopes)
    return bool(found) and all(s.level == "patient" for s in found)


def covers(granted: str, wanted: str) -> bool:
    """Whether a registered scope `granted` allows a client to be given `wanted` (`user/*.read` covers
    `user/Observation.rs`, never `user/*.*`: a read-only registration must not yield a write token, nor a
    create-only one `.cu`); context scopes must be registered as they are."""
    if granted == wanted:
        return True
    have, want = parse(granted), parse(wanted)
    return (have is not None and want is not None and have.level == want.level
            and (want.retrieves or want.writes)
            and (have.reads or not want.reads) and (have.searches or not want.searches)
            and (have.creates or not want.creates)
            and (have.updates or not want.updates)
            and have.resource_type in ("*", want.resource_type)
            and (want.resource_type != "*" or have.resource_type == "*"))
