"""What every source format becomes before it is stored: a staged message of shaped FHIR resources.

Adapters (FHIR bundles, HL7 v2 messages, CSV extracts) turn their input into a
`StagedMessage`; the pipeline links, stores and reports it. A message is the unit of atomicity: it is
stored whole or quarantined whole.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sharedcare.errors import SharedcareError
from sharedcare.governance.framework import Framework
from sharedcare.identity.mpi import Demographics

# One message (a FHIR JSON file, an NDJSON line, an HL7 message, a CSV row) is staged whole in memory; past
# this size it is refused rather than read, so memory stays bounded whatever the input.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
KEPT_OF_TOO_LARGE = 64 * 1024  # what quarantine keeps of a message too large to take (its start)


class MessageError(SharedcareError):
    """A message cannot be accepted; `where` names file, line and element at fault, `source_org` the sending
    organisation when the message got far enough to name it (quarantine is counted by it)."""

    def __init__(self, message: str, where: str | None = None, source_org: str | None = None) -> None:
        super().__init__(message, where)
        self.source_org = source_org


@contextmanager
def sent_by(org: str | None) -> Iterator[None]:
    """A MessageError raised inside names `org` (when known) as its sender, unless it names one already."""
    try:
        yield
    except MessageError as exc:
        exc.source_org = exc.source_org or org
        raise


@dataclass(frozen=True)
class RawMessage:
    """One message exactly as received, with where it came from."""

    filename: str
    location: str  # "line 12", "message 3 (MSH-10 ABC123)", "whole file"
    payload: bytes
    format: str  # fhir | hl7v2 | csv
    file_bytes: int | None = None  # bytes of the file it spans, when that is not its payload and a line end
    refused: str | None = None  # why the reader could not take it (too large): quarantined without staging

    @property
    def size(self) -> int:
        """Bytes of the file this message accounts for (what a progress bar advances by)."""
        return len(self.payload) + 1 if self.file_bytes is None else self.file_bytes

    @property
    def where(self) -> str:
        return f"{self.filename}, {self.location}"


def content_hash(content: dict[str, Any]) -> str:
    """SHA-256 of a resource's canonical JSON: equal hashes mean unchanged content."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def too_large(filename: str, location: str, fmt: str, head: bytes, size: int, advice: str) -> RawMessage:
    """A message the reader did not load, kept in quarantine by its start, with why and what to do."""
    return RawMessage(filename, location, head[:KEPT_OF_TOO_LARGE], fmt, file_bytes=size,
                      refused=f"{size:,} bytes is more than one message may be ({MAX_MESSAGE_BYTES:,} bytes); "
                              f"{advice} (quarantine keeps its first {KEPT_OF_TOO_LARGE:,} bytes)")


@dataclass
class StagedResource:
    resource_type: str
    source_id: str
    server_id: str
    content: dict[str, Any]
    recorded_at: datetime
    patient_source_id: str
    outcome: str = ""  # set when stored: created | updated | unchanged | stale (answers a FHIR write)
    content_hash: str = ""  # filled in by staging (in a worker process for large files), else when stored
    category: str = ""  # its data category (governance/classify.py), filled in by staging, else when stored


@dataclass
class StagedMessage:
    source_org: str
    source_system: str
    message_id: str
    patients: dict[str, Demographics] = field(default_factory=dict)
    resources: list[StagedResource] = field(default_factory=list)
    set_aside: Counter[str] = field(default_factory=Counter)
    # (retired source id, surviving source id): the sender merged two of its own patient records
    merges: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Adapter:
    """A source format: `read` splits a file into raw messages (never failing on content), `stage`
    checks and shapes one message or raises MessageError saying where and why."""

    read: Callable[[Path], Iterator[RawMessage]]
    stage: Callable[[RawMessage, Framework, str | None], StagedMessage]
