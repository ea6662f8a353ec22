"""What every source format becomes before it is stored: a staged message of shaped FHIR resources.

Adapters (FHIR bundles, HL7 v2 messages, CSV extracts) turn their input into a
`StagedMessage`; the pipeline links, stores and reports it. A message is the unit of atomicity: it is
stored whole or quarantined whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from sharedcare.clock import utcnow
from sharedcare.config import event_skew
from sharedcare.errors import SharedcareError
from sharedcare.governance.framework import Framework
from sharedcare.identity.mpi import Demographics

# One message (a FHIR JSON file, an NDJSON line, an HL7 message, a CSV row) is staged whole in memory; past
# this size it is refused rather than read, so memory stays bounded whatever the input.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
KEPT_OF_TOO_LARGE = 64 * 1024  # what quarantine keeps of a message too large to take (its start)


class Condition(StrEnum):
    """HL7 v2.5.1 table 0357 (message error condition codes), code and name: the ERR-3 an MLLP refusal is
    answered with, and which an interface engine routes on (207 says "our fault, try again")."""

    SEGMENT_SEQUENCE = "100^Segment sequence error"
    REQUIRED_FIELD = "101^Required field missing"
    DATA_TYPE = "102^Data type error"
    TABLE_VALUE = "103^Table value not found"
    MESSAGE_TYPE = "200^Unsupported message type"
    EVENT_CODE = "201^Unsupported event code"
    PROCESSING_ID = "202^Unsupported processing id"
    VERSION_ID = "203^Unsupported version id"
    DUPLICATE_KEY = "205^Duplicate key identifier"
    APPLICATION = "207^Application internal error"  # a store that failed, or a refusal by policy (no code of its own)


# A CSV date cell that reads in only one order of day and month: its column, the mapping's format, the value, and
# whether it is the order with day and month exchanged (csv_extract.DateOrders says so of a file whose rows agree)
DateReading = tuple[str, str, str, bool]


class MessageError(SharedcareError):
    """A message cannot be accepted; `where` names file, line and element at fault, `source_org` the sending
    organisation when the message got far enough to name it (quarantine is counted by it). An HL7 v2 refusal
    carries its table 0357 `condition` and whether the message could not be taken at all (`rejected`: an MLLP
    AR, not AE), set where it is raised, so that rewording a reason never changes what an ACK says; `issue` is
    the OperationOutcome issue type a FHIR writer is answered with (`code-invalid` for a code outside its value
    set). `date_readings`: a CSV row's (`DateReading`), for its file's note."""

    def __init__(self, message: str, where: str | None = None, source_org: str | None = None,
                 condition: Condition = Condition.APPLICATION, rejected: bool = False,
                 issue: str = "processing", date_readings: tuple[DateReading, ...] = ()) -> None:
        super().__init__(message, where)
        self.source_org = source_org
        self.condition = condition
        self.rejected = rejected
        self.issue = issue
        self.date_readings = date_readings


class WriteRefused(SharedcareError):
    """A FHIR write refused inside its own transaction, once what it would do is known (it would change a
    held resource without an update scope, or the version it named is not the one held): raised by the
    check `Pipeline.ingest_message` runs before committing, it undoes the message and reaches the writer
    as its answer (`status`, 403 or 412), never quarantine: sending it again as it was cannot succeed."""

    def __init__(self, status: int, rule_id: str, message: str, where: str | None = None) -> None:
        super().__init__(message, where)
        self.status = status
        self.rule_id = rule_id


@contextmanager
def sent_by(org: str | None) -> Iterator[None]:
    """A MessageError raised inside names `org` (when known) as its sender, unless it names one already."""
    try:
        yield
    except MessageError as exc:
        exc.source_org = exc.source_org or org
        raise


def sender_conflict(claim: str, named: str, source: str, where: str,
                    condition: Condition = Condition.APPLICATION, given: bool = True) -> MessageError:
    """`--source` names the sender of messages that name none; a message that names another organisation of the
    framework is refused: stored as `source`'s, its records would be shared and audited with a false
    provenance. It is held as the organisation whose corrected copy will supersede it: the one it names when
    `source` is --source's (`given`: an operator's word against the message's), else the message's own sender
    (a bundle's meta.source, its folder), which one entry contradicts and which alone can send it again
    corrected. `claim`: what in the message names `named`; the reason names both."""
    if not given:
        return MessageError(f"{claim}, but the message is sent as {source}: stored as {source}'s, its records would "
                            "carry a false provenance; have the sender send each organisation's records in a message "
                            "of its own, or correct it", where, source_org=source, condition=condition)
    return MessageError(f"{claim}, but --source names {source}: stored as {source}'s, its records would carry a "
                        f"false provenance; ingest it without --source (or with --source {named}), or have the "
                        "sender correct it", where, source_org=named, condition=condition)


MLLP_PREFIX = "mllp://"
ECHOED_CHARACTERS = 200  # the most an ACK echoes, or an audit entry keeps, of one header field


def cut(text: str, limit: int = ECHOED_CHARACTERS) -> str:
    """A field the sender fills, as an ACK echoes it or an audit entry (never deleted) keeps it: its first `limit`
    characters, saying so when cut. A 3 MB MSH-10 was once audited whole, and a 3 MB MSH-3 echoed back."""
    return text if len(text) <= limit else f"{text[:limit]}... (cut from {len(text)} characters)"


@dataclass(frozen=True)
class CertifiedSender:
    """Who sent a message over a mutually authenticated connection (its TLS certificate's subject) and the
    organisations the framework lets that certificate send for (`Organisation.feed_certificates`)."""

    subject: str
    organisations: frozenset[str]

    @classmethod
    def of(cls, framework: Framework, subject: str) -> CertifiedSender:
        return cls(subject, frozenset(code for code, org in framework.organisations.items()
                                      if subject in org.feed_certificates))


def certificate_in(filename: str) -> str | None:
    """The certificate subject a TLS listener's message names in its file name (`mllp://{subject}@{address}`,
    kept with a quarantine item, so that a replay is held to the same certificate); None for any other."""
    if not filename.startswith(MLLP_PREFIX) or "@" not in filename:
        return None
    return filename[len(MLLP_PREFIX):filename.rindex("@")]  # a subject may hold "@"; an address never does


def mllp_sender(filename: str) -> str | None:
    """Who sent a listener's message (`mllp://[{subject}@]{address}:{port}`): its certificate and address, without
    the port, which each connection has its own of; None for a message from a file."""
    return filename.rsplit(":", 1)[0] if filename.startswith(MLLP_PREFIX) else None


@dataclass(frozen=True)
class RawMessage:
    """One message exactly as received, with where it came from."""

    filename: str
    location: str  # "line 12", "message 3 (MSH-10 ABC123)", "whole file"
    payload: bytes
    format: str  # fhir | hl7v2 | csv
    file_bytes: int | None = None  # bytes of the file it spans, when that is not its payload and a line end
    refused: str | None = None  # why the reader could not take it (too large): quarantined without staging
    received_at: datetime | None = None  # when it was received, if not now: a quarantine replay's, when held

    @property
    def received(self) -> datetime:
        """When this message was received: its event time when it gives none, and the bound of those it gives."""
        return self.received_at or utcnow()

    @property
    def size(self) -> int:
        """Bytes of the file this message accounts for (what a progress bar advances by)."""
        return len(self.payload) + 1 if self.file_bytes is None else self.file_bytes

    @property
    def where(self) -> str:
        return f"{self.filename}, {self.location}"


def future_event_time(at: datetime, received: datetime) -> str | None:
    """Why `at` cannot be a message's event time, or None: later than the message was received by more than
    SHAREDCARE_EVENT_SKEW_SECONDS (a source's clock a little ahead). Versions are ordered by event time, so a
    time in the future would make every later update of the resource, a withdrawal included, stale."""
    skew = event_skew()
    if at <= received + skew:
        return None
    return (f"{at.isoformat()} is more than {int(skew.total_seconds())} seconds after the message was received "
            f"({received.isoformat(timespec='seconds')}): an event time in the future would order this message "
            "after every later update (SHAREDCARE_EVENT_SKEW_SECONDS)")


def bounded_event_time(at: datetime, received: datetime, where: str) -> datetime:
    """`at`, or a MessageError at `where` (naming the element) when it is too far in the future."""
    problem = future_event_time(at, received)
    if problem is not None:
        raise MessageError(f"event time {problem}", where)
    return at


def content_hash(content: dict[str, Any]) -> str:
    """SHA-256 of a resource's canonical JSON: equal hashes mean unchanged content."""
    return hashlib.sha256(canonical_json(content)).hexdigest()


# orjson writes the canonical text the hashes have always been taken of (`json.dumps` with sorted keys and no
# spaces) in a fifth of the time, except where the two differ: a non-ASCII character (the standard library
# escapes it), DEL (escaped too), NaN or an infinity (orjson writes null), a float below 1e-4 in magnitude (the
# standard library writes 1e-05, orjson 0.00001 or 1e-5), an integer beyond 64 bits or a key that is not a
# string (orjson refuses both). Text showing any of these, and much that merely looks like them (a string
# holding "null", "0.0000" or "1e-5,"), is made by the standard library, as before: stored hashes stay valid.
# (Content holds only JSON's types, parsed from JSON or XML or mapped from text; subclasses, dates and
# dataclasses, which orjson would write and the standard library refuses, are passed to the standard library.)
_HASH_OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME
                 | orjson.OPT_PASSTHROUGH_DATACLASS)
_EXPONENT = re.compile(rb"e-[0-9]+[,}\]]")  # a number's negative exponent: orjson's form for the smallest floats


def canonical_json(content: Any) -> bytes:
    """`json.dumps(content, sort_keys=True, separators=(",", ":")).encode()`, by orjson where that is the same."""
    try:
        text = orjson.dumps(content, option=_HASH_OPTIONS)
        if (text.isascii() and b"null" not in text and b"0.0000" not in text and b"\x7f" not in text
                and _EXPONENT.search(text) is None):  # (a single expression of all four took three times as long)
            return text
    except TypeError:
        pass  # the standard library decides (and raises what it always raised)
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()


def too_large(filename: str, location: str, fmt: str, head: bytes, size: int, advice: str,
              limit: int = MAX_MESSAGE_BYTES) -> RawMessage:
    """A message the reader did not load (over `limit`: the MLLP listener's is smaller than a file's), kept in
    quarantine by its start, with why and what to do."""
    return RawMessage(filename, location, head[:KEPT_OF_TOO_LARGE], fmt, file_bytes=size,
                      refused=f"{size:,} bytes is more than one message may be ({limit:,} bytes); "
                              f"{advice} (quarantine keeps its first {KEPT_OF_TOO_LARGE:,} bytes)")


@dataclass
class StagedResource:
    resource_type: str
    source_id: str
    server_id: str
    content: dict[str, Any]
    recorded_at: datetime
    patient_source_id: str
    # its event time may be up to this much later (a UK local time without an offset in the hour the clocks go
    # back): a stored version within it is not newer for certain, so arrival orders them (pipeline)
    recorded_doubt: timedelta = timedelta(0)
    # a withdrawal of what the source's row no longer has (a CSV row's blanked outcome): stored over a version
    # held, never as a resource of its own (a row that never had an outcome makes no withdrawn care plan)
    withdraws: bool = False
    outcome: str = ""  # set when stored: created | updated | unchanged | stale (answers a FHIR write)
    held_version: int | None = None  # set when stored: the version held before (None: there was none)
    content_hash: str = ""  # filled in by staging (in a worker process for large files), else when stored
    category: str = ""  # its data category (governance/classify.py), filled in by staging, else when stored
    # The content's JSON text either side of its meta, and the meta (`around_meta`), filled in by staging
    around_meta: tuple[bytes, dict[str, Any], bytes] | None = None

    def stamped_text(self, stamp: dict[str, str]) -> str | None:
        """The text the store writes for this content with `stamp` added to its meta (exactly what
        `store.database.json_dumps` makes of it), from staging's text; None when staging made none."""
        if self.around_meta is None:
            return None
        before, meta, after = self.around_meta
        return (before + orjson.dumps({**meta, **stamp}) + after).decode()

    def sent_content(self) -> dict[str, Any]:
        """The content as sent. A worker hands the writer only its text (see `__getstate__`), decoded here
        when the writer needs the dict (an update, a Patient's registration, a resource sent again)."""
        if "content" not in self.__dict__:
            self.content = orjson.loads(self.stamped_text({}) or b"")
        return self.content

    def __getstate__(self) -> dict[str, Any]:
        """Leaving a staging worker for the writer, the content goes as its text, not as pickled dicts and
        lists: unpickling those was a tenth of the writer's CPU, on ingest's critical path, and the writer
        needs only the text for a new resource (`stamped_text`)."""
        if self.around_meta is None:
            return self.__dict__
        state = self.__dict__.copy()
        del state["content"]
        return state


# Stands for the meta while the rest of a resource is encoded (a NUL: FHIR strings hold no control characters,
# and a content where it shows up anyway is split at most once, else not at all)
_META_MARK = "\x00meta\x00"
_ENCODED_MARK = orjson.dumps(_META_MARK)


def around_meta(content: dict[str, Any]) -> tuple[bytes, dict[str, Any], bytes] | None:
    """A resource's JSON text either side of its meta, and the meta, such that the text with any meta's
    encoding between is exactly what `store.database.json_dumps` writes for the content with that meta.
    None where that cannot be promised: orjson refuses something in it (an int beyond 64 bits, a key that
    is not a string, a subclass of str or dict), or its text holds `null` (a NaN written as null would not
    read back as sent); the writer then encodes the content itself, as before."""
    meta = content.get("meta")
    if not isinstance(meta, dict):
        return None
    try:
        text = orjson.dumps({**content, "meta": _META_MARK}, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
        meta_text = orjson.dumps(meta, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    except TypeError:
        return None
    parts = text.split(_ENCODED_MARK)
    if len(parts) != 2 or b"null" in text or b"null" in meta_text:  # (a string holding "null": encoded as before)
        return None
    return parts[0], meta, parts[1]


@dataclass
class StagedMessage:
    source_org: str
    source_system: str
    message_id: str
    patients: dict[str, Demographics] = field(default_factory=dict)
    resources: list[StagedResource] = field(default_factory=list)
    set_aside: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)  # how it was read, where the reader had to judge
    # (retired source id, surviving source id, where it is named): the sender merged two of its own patient
    # records (HL7 MRG-1, FHIR Patient.link replaced-by)
    merges: list[tuple[str, str, str]] = field(default_factory=list)
    # those held for review when stored (`links.source_merge`): review item id, retired source id, where, reason
    merges_held: list[dict[str, Any]] = field(default_factory=list)
    persons: dict[str, str] = field(default_factory=dict)  # set when stored: each patient's person (its id)
    date_readings: tuple[DateReading, ...] = ()  # a CSV row's, for its file's note (csv_extract.DateOrders)


@dataclass(frozen=True)
class Adapter:
    """A source format: `read` splits a file into raw messages (never failing on content), `stage`
    checks and shapes one message or raises MessageError saying where and why."""

    read: Callable[[Path], Iterator[RawMessage]]
    stage: Callable[[RawMessage, Framework, str | None], StagedMessage]
