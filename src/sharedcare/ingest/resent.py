"""Which held quarantine items a stored message supersedes: its source sent the same message again, fixed.

"The same message" is read from the bytes as the source names them, within one sending organisation and
one format (a control id is only unique to its sender):
- HL7 v2: the same sending application (MSH-3) and message control id (MSH-10), as an interface engine
  resends a message it was told was in error (AE), and the same message type (MSH-9) about the same patient
  (an identifier of PID-3 in common, so that a corrected NHS number still matches by the hospital number):
  senders reuse control ids, and an unrelated message for another patient superseded a held admission.
- FHIR: the same Bundle (its `identifier`, else its `id`, but only where both copies carry a readable
  `timestamp`: senders reuse ids such as "1" or "export" for unrelated bundles); a single resource, or one
  entry of a split batch, by the resource's type and id.
- CSV: the same record through the source's mapping (its assessment id), a row being one assessment.
and the stored copy's event time (HL7 MSH-7; FHIR `Bundle.timestamp`, else the resource's `meta.lastUpdated`;
CSV the mapping's `updated` column) is not earlier than the held one's, where both can be read (a time more
than SHAREDCARE_EVENT_SKEW_SECONDS past the message's receipt is not read: the held copy's fault, perhaps): at
an equal event time the later message wins, as the store orders versions. A held item whose key cannot be read (no
MSH-10, not JSON, no mapping fits), or an HL7 v2 one that names no patient in PID-3, is never superseded: it waits
to be seen, as before.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sharedcare.errors import SharedcareError
from sharedcare.ingest import hl7v2_map
from sharedcare.ingest.csv_extract import _mappings_folder as mappings_folder
from sharedcare.ingest.csv_extract import _parse as parse_csv
from sharedcare.ingest.csv_mapping import ValueProblem, find_mapping, required
from sharedcare.ingest.fhir_batch import entry_index
from sharedcare.ingest.fhir_bundle import parse_message
from sharedcare.ingest.hl7v2_syntax import SyntaxProblem, split_message
from sharedcare.ingest.messages import MessageError, RawMessage, future_event_time

_SEGMENT_END = re.compile(r"\r\n|\r|\n")
# A key's most characters as stored: it is indexed (ix_quarantine_message_key), and PostgreSQL's btree refuses an
# entry over 2,704 bytes; a longer one is kept as its start and its SHA-256, so that copies still compare equal.
KEY_MOST = 200


@dataclass(frozen=True)
class Identity:
    """A message as its source names it (`key`, stored with a held item) and its event time, when readable."""

    key: str
    at: datetime | None
    needs_times: bool = False  # a key weak enough that only copies both dated may be taken as one message
    # HL7 v2: the message type (MSH-9) and the patient's identifiers (PID-3), which a copy must share too
    about: tuple[str, frozenset[str]] | None = None

    def __post_init__(self) -> None:
        """A key past KEY_MOST is cut to its start and its digest: a 300,000-character MSH-3 made PostgreSQL refuse
        the held item, and the listener closed the connection without an ACK."""
        if len(self.key) > KEY_MOST:
            digest = hashlib.sha256(self.key.encode("utf-8", "surrogatepass")).hexdigest()
            object.__setattr__(self, "key", f"{self.key[:100]}... sha256:{digest}")

    def supersedes(self, held: Identity) -> bool:
        """Whether a stored message with this identity replaces a held one (see the module's rule)."""
        if self.key != held.key or not self._about_the_same(held):
            return False
        if self.at is None or held.at is None:
            return not self.needs_times
        return self.at >= held.at

    def _about_the_same(self, held: Identity) -> bool:
        if self.about is None or held.about is None:
            return self.about is held.about  # neither says (FHIR, CSV): the key decides
        return self.about[0] == held.about[0] and bool(self.about[1] & held.about[1])


def identity(raw: RawMessage, org: str | None) -> Identity | None:
    """The message's identity, or None when the bytes do not name it; never raises (a held item's bytes are
    whatever failed). `org`: its sending organisation (a CSV row's mapping is the organisation's)."""
    try:
        if raw.format == "hl7v2":
            return _hl7(raw)
        if raw.format == "fhir":
            return _fhir(raw)
        if raw.format == "csv":
            return _csv(raw, org)
    except (SharedcareError, SyntaxProblem, ValueProblem, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return None


def _hl7(raw: RawMessage) -> Identity | None:
    encoding, (fields, *rest) = split_message("\r".join(_SEGMENT_END.split(raw.payload.decode("latin-1"))))
    control_id = fields[10].strip() if len(fields) > 10 else ""
    if not control_id:
        return None
    msh = hl7v2_map.Seg(fields, encoding, "MSH", raw.where)
    try:
        stamp = hl7v2_map.stamp(msh, 7)
    except MessageError:  # the fault the source has corrected, perhaps
        stamp = None
    pid = next((hl7v2_map.Seg(segment, encoding, "PID", raw.where) for segment in rest if segment[0] == "PID"), None)
    patient = frozenset(f"{hl7v2_map.part(rep, 5)} {rep[0]}" for rep in pid.reps(3) if rep[0]) if pid else frozenset()
    return Identity(f"MSH-3 {fields[3].strip()} MSH-10 {control_id}", _bounded(stamp.at if stamp else None, raw),
                    about=(f"{msh.get(9)}^{msh.get(9, 2)}", patient))


def _bounded(at: datetime | None, raw: RawMessage) -> datetime | None:
    """An event time, unless it is too far past the message's receipt to be one (`future_event_time`: a
    message held for that is corrected by a copy dated earlier)."""
    return None if at is None or future_event_time(at, raw.received) else at


def _fhir(raw: RawMessage) -> Identity | None:
    data = parse_message(raw)
    if data.get("resourceType") == "Bundle" and entry_index(raw) is None:
        named, at = data.get("identifier"), _time(data, "timestamp", raw)
        if isinstance(named, dict) and named.get("value"):
            return Identity(f"Bundle.identifier {named.get('system', '')}|{named['value']}", at)
        return Identity(f"Bundle/{data['id']}", at, needs_times=True) if data.get("id") else None
    resource = data
    if data.get("resourceType") == "Bundle":  # one entry of a split batch: the resource is what was sent
        resource = data["entry"][0]["resource"]
    if not resource.get("id"):
        return None
    meta = resource.get("meta")
    return Identity(f"{resource['resourceType']}/{resource['id']}",
                    _time(meta, "lastUpdated", raw) if isinstance(meta, dict) else None)


def _time(data: dict[str, Any], element: str, raw: RawMessage) -> datetime | None:
    value = data.get(element)
    if not isinstance(value, str) or "T" not in value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return _bounded(parsed, raw) if parsed.tzinfo is not None else None


def _csv(raw: RawMessage, org: str | None) -> Identity | None:
    header, row = parse_csv(raw)
    if row is None:
        return None
    mapping = find_mapping(mappings_folder(), org, header)
    values = dict(zip((name.strip() for name in header), row.fields, strict=True))
    key = f"{mapping.name} {required(values, mapping.assessment.id)}"
    try:
        at: datetime | None = mapping.updated.instant(values)
    except ValueProblem:
        at = None
    return Identity(key, _bounded(at, raw))
