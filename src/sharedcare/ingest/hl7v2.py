"""HL7 v2 input (ADT and ORU^R01, v2.3 to v2.5.1: `VERSIONS`) from .hl7 files, split by `hl7v2_syntax`.

Turns one message into a StagedMessage: a UK Core Patient from PID/PD1/NK1, an Encounter from PV1 (ADT),
a DiagnosticReport per OBR and an Observation per OBX (ORU); references use server ids, provenance is
stamped in `meta.source`, event times are made UTC. Any problem raises a MessageError naming the file,
the message and the segment and field (`PID-7`, `OBX[3]-5`). The segment mapping is in `hl7v2_map`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from pathlib import Path

from sharedcare.fhir.checks import CODE_INVALID, resource_problems
from sharedcare.fhir.invariants import active_content
from sharedcare.fhir.uk_core import demographics, meta_source, nhs_numbers, server_id
from sharedcare.governance.framework import Framework, Organisation
from sharedcare.ingest import hl7v2_map as hmap
from sharedcare.ingest.hl7v2_map import Json, Seg, Sender
from sharedcare.ingest.hl7v2_syntax import SyntaxProblem, split_message
from sharedcare.ingest.messages import (
    MAX_MESSAGE_BYTES,
    Condition,
    MessageError,
    RawMessage,
    StagedMessage,
    StagedResource,
    cut,
    future_event_time,
    sender_conflict,
    sent_by,
    too_large,
)

# MSH-18 (HL7 table 0211) to Python codecs. A message without MSH-18 is ISO 8859-1, as NHS trusts send it, unless
# its bytes are UTF-8 beyond ASCII, which ISO 8859-1 text all but never is: read as ISO 8859-1, a UTF-8 "ZOË" was
# stored as "ZOÃ" and a control character over the correct name. Reading it as UTF-8 is noted in the report.
CHARSETS = {"ASCII": "ascii", "UNICODE UTF-8": "utf-8", "8859/15": "iso8859-15",
            **{f"8859/{n}": f"iso8859-{n}" for n in range(1, 10)}}
DEFAULT_CHARSET = "8859/1"
UTF8 = "UNICODE UTF-8"
READ_AS_UTF8 = "HL7 v2 message without MSH-18 read as UTF-8 (its bytes are UTF-8, not ISO 8859-1)"
AMBIGUOUS_TIME = ("HL7 v2 event time without an offset in the hour the clocks go back (BST or GMT): ordered by "
                  "arrival against a version stored within that hour")
# a local PV1-10 code from a system the framework lists no `service_codes` for: stored, filed by its type
UNMAPPED_SERVICE = ("HL7 v2 visit with a local hospital service code (PV1-10) the framework does not map: filed by "
                    "its type; list the sending system's codes in its organisation's service_codes")
# C1 controls are in no name or text: in decoded text they are bytes of another character set read as this one
# (UTF-8, or Windows-1252's quotes and dashes, read as ISO 8859-1)
_C1 = re.compile("[\x80-\x9f]")
# ADT events and the Encounter status each sets; None: an update, whose status follows PV1's times.
ADT_EVENTS: dict[str, str | None] = {
    "A01": "in-progress", "A02": "in-progress", "A04": "in-progress", "A05": "planned", "A03": "finished",
    "A11": "entered-in-error", "A13": "in-progress", "A08": None, "A28": None, "A31": None, "A60": None,
}
# MSH-12, the versions read: the segments and fields mapped are these versions' (IAM and A60 from 2.4, XON-10 from
# 2.5); a later version may move or redefine them, so it is refused (AR 203) until it has been checked.
VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
CONTROL_ID_CHARACTERS = 100  # as much of MSH-10 as the store keeps (each resource's message_id, String(100))
SYSTEM_CHARACTERS = 40  # as much of MSH-3's application name as the store keeps (source_system, String(40))
# A40 and A34 merge one of the sender's patient records into another (MRG-1 names the retired one);
# the other merge events (visit and account merges, person-level A18/A30/A36/A39) are held for now.
PATIENT_MERGES = {"A34", "A40"}
MERGE_EVENTS = {"A18", "A30", "A36", "A39"}
REPEATING = {"NK1", "ORC", "OBR", "OBX", "NTE"}  # labelled OBX[3] so an analyst can find the one at fault
_BATCH_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")
# Where a mapped element came from, so that a refused one is located at its segment and field (a field alone
# is of the resource's own segment): a SNOMED CT code in OBX-3, an ODS code in PD1-3.
SOURCE_FIELDS = {"Patient.identifier": "PID-3", "Patient.generalPractitioner": "PD1-3", "Observation.code": "-3",
                 "AllergyIntolerance.code": "-3",
                 "Observation.valueCodeableConcept": "-5", "DiagnosticReport.code": "-4"}
_ELEMENT = re.compile(r"[A-Za-z]+\.[A-Za-z]+")
# A mapped resource the FHIR validators refuse (fhir/validate.py, invariants.py, uk_core_rules.py: text shared by
# every format, with no HL7 code of its own) is coded by the phrases those checks use for table 0357's
# conditions; any other is 207. The adapter's own refusals carry theirs where they are raised.
_VALIDATION_CONDITIONS = (
    (re.compile(r"modulus 11|is not a number|is not an HL7 (timestamp|date)"), Condition.DATA_TYPE),
    (re.compile(r"is required"), Condition.REQUIRED_FIELD),
    (re.compile(r"is not one of"), Condition.TABLE_VALUE),
)
_SEGMENT_END = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")


def read_messages(path: Path) -> Iterator[RawMessage]:
    """Yield the messages in an HL7 file. A message starts at each MSH and nowhere else, so files that end
    segments with CR, LF or CRLF and separate messages with a newline or a blank line all read, and a blank
    line inside a message is left out of it rather than splitting it (the rest of an ORU's results, or an
    A08's PD1 and NK1, would have been held as a message of their own). Batch envelope segments (FHS, BHS,
    BTS, FTS) are not messages and are skipped."""
    number = held = 0
    lines: list[bytes] = []
    for line in chain(_segments(path), [None]):
        if lines and (line is None or line.startswith(b"MSH")):
            number += 1
            payload = b"".join(lines).rstrip(b"\r\n")
            yield (_raw_message(path, number, payload) if held <= MAX_MESSAGE_BYTES else
                   too_large(str(path), f"message {number}", "hl7v2", payload, held,
                             "is a segment separator or an MSH missing?"))
            lines, held = [], 0
        if line is not None and line.strip() and not line.startswith(_BATCH_ENVELOPE):
            held += len(line)
            if held <= MAX_MESSAGE_BYTES or not lines:  # past the limit only the start is kept
                lines.append(line[:MAX_MESSAGE_BYTES + 1])


def _segments(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The file's lines ending in CR, LF or CRLF, read a megabyte at a time so any size streams."""
    pending = b""
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            pending += block
            lines = pending.splitlines(keepends=True)
            # a line may continue in the next block (and a CR may be the first half of a CRLF)
            pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
            yield from lines
            if len(pending) > MAX_MESSAGE_BYTES:  # no line end in sight: hand on what there is, memory stays bounded
                yield pending
                pending = b""
    if pending:
        yield pending


def _raw_message(path: Path, number: int, payload: bytes) -> RawMessage:
    control_id = ""
    first = _SEGMENT_END.split(payload.decode("latin-1"), maxsplit=1)[0]
    if first.startswith("MSH"):
        try:
            fields = split_message(first)[1][0]
        except SyntaxProblem:
            fields = []
        control_id = cut(fields[10].strip()) if len(fields) > 10 else ""
    location = f"message {number} (MSH-10 {control_id})" if control_id else f"message {number}"
    return RawMessage(str(path), location, payload, "hl7v2")


def _parse(raw: RawMessage, text: str, codec: str = "iso8859-1") -> list[Seg]:
    """Segments in order, labelled; Z-segments (local extensions) are left out. `codec` is the character
    set `text` was decoded in, which hex escapes are read in too."""
    try:
        encoding, message = split_message("\r".join(s for s in _SEGMENT_END.split(text) if s.strip()))
    except SyntaxProblem as exc:
        if exc.field == 2:
            raise MessageError("not an HL7 v2 message: MSH must start with its field separator and encoding "
                               "characters, each a different character (MSH-1 and MSH-2, as in MSH|^~\\&|)",
                               f"{raw.where}, MSH-2", condition=Condition.SEGMENT_SEQUENCE, rejected=True) from exc
        raise MessageError(f"not an HL7 v2 message: {exc.reason}", raw.where, condition=Condition.SEGMENT_SEQUENCE,
                           rejected=True) from exc
    seen: Counter[str] = Counter()
    segments = []
    for position, fields in enumerate(message, start=1):
        name = fields[0]
        if not _SEGMENT_ID.fullmatch(name):
            raise _not_a_segment(raw, position, name or encoding.field, message[position - 2][0])
        if name.startswith("Z"):
            continue
        seen[name] += 1
        segments.append(Seg(fields, encoding, f"{name}[{seen[name]}]" if name in REPEATING else name, raw.where,
                            codec))
    return segments


def _not_a_segment(raw: RawMessage, position: int, start: str, previous: str) -> MessageError:
    """A line that is no segment (`start`: what stands where its ID should): most often the rest of a field cut
    by a CR or LF the sender did not escape, which read on would leave that field truncated and the fields after
    it (a birth date, an address) unread."""
    return MessageError(f"segment {position} (after {previous}) starts '{start[:10]}', which is not a segment ID "
                        "(three capital letters or digits, as PID): a carriage return or line feed inside a field "
                        "ends its segment early; the sender must escape it (\\X0D\\, \\X0A\\ or \\.br\\)",
                        f"{raw.where}, segment {position}", condition=Condition.SEGMENT_SEQUENCE, rejected=True)


def _decode(raw: RawMessage) -> tuple[list[Seg], bool]:
    """Parse with the character set MSH-18 declares (read first through ISO 8859-1, which any byte decodes), or
    with none declared, as UTF-8 when the bytes are UTF-8 beyond ASCII (then True: it is noted), else as
    ISO 8859-1. Text holding a C1 control character was not in the character set it was read as: refused."""
    text = raw.payload.decode("latin-1")
    segments = _parse(raw, text)
    declared = segments[0].get(18)
    guessed = not declared and not raw.payload.isascii() and _utf8(raw.payload)
    charset = UTF8 if guessed else declared or DEFAULT_CHARSET
    codec = CHARSETS.get(charset)
    if codec is None:
        raise segments[0].error(f"character set '{charset}' is not supported ({', '.join(CHARSETS)})", 18,
                                condition=Condition.TABLE_VALUE, rejected=True)
    if declared and codec.startswith("iso8859") and not raw.payload.isascii() and _utf8(raw.payload):
        _refuse_utf8(segments, charset)
    if codec != "iso8859-1":
        try:
            text = raw.payload.decode(codec)
        except UnicodeDecodeError as exc:
            raise segments[0].error(f"declares {charset} but byte {exc.start} is not {charset}", 18,
                                    condition=Condition.DATA_TYPE, rejected=True) from exc
        segments = _parse(raw, text, codec)
    if _C1.search(text):
        _refuse_c1(segments, charset)
    return segments, guessed


def _utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# A UTF-8 sequence read byte by byte as ISO 8859-1: a lead byte (Â-ô) and its continuation bytes (U+0080-U+00BF)
_UTF8_AS_LATIN1 = re.compile("[\xc2-\xf4][\x80-\xbf]+")


def _refuse_utf8(segments: list[Seg], charset: str) -> None:
    """Refuse a message that declares an ISO 8859 character set but whose bytes are UTF-8, naming the first
    field where they show: read as declared, 'Siobhán' was stored as 'SiobhÃ¡n' and answered AA (clinical
    fidelity review, 2026-12-07), and the C1 check catches only some letters (Ë, not á). Text in ISO 8859
    that is also valid UTF-8 needs a capital accented letter followed by a symbol (Ã©): no name holds one."""
    for segment in segments:
        for number, value in enumerate(segment.fields[1:], start=1):
            if _UTF8_AS_LATIN1.search(value):
                raise segment.error(
                    f"declares {charset} in MSH-18, but its bytes are UTF-8 (read as {charset}, its letters "
                    "would change): the sender must declare UNICODE UTF-8 in MSH-18", number,
                    condition=Condition.DATA_TYPE)


def _refuse_c1(segments: list[Seg], charset: str) -> None:
    """Refuse the first field holding a C1 control character, naming it (one in a Z-segment is not read)."""
    for segment in segments:
        for number, value in enumerate(segment.fields[1:], start=1):
            if found := _C1.search(value):
                raise segment.error(
                    f"holds the control character U+{ord(found.group()):04X}, which no name or text holds: its bytes "
                    f"are not {charset} (UTF-8 or Windows-1252 read as ISO 8859-1, perhaps); the sender must "
                    "declare its character set in MSH-18", number, condition=Condition.DATA_TYPE)


def _source_of(msh: Seg, raw: RawMessage, fw: Framework, override: str | None) -> tuple[Sender, str]:
    """Which organisation and system sent this: --source, else MSH-4 if it is an ODS code in the framework,
    else the folder it sits in; the system is MSH-3, the sending application. --source only names a sender
    MSH-4 does not: another organisation of the framework there is refused (`sender_conflict`)."""
    sending = msh.get(4)
    if override and sending != override and sending in fw.organisations:
        raise sender_conflict(f"MSH-4 names the sender {sending}", sending, override, f"{msh.where}, MSH-4")
    org = override or (sending if sending in fw.organisations else None)
    if org is None:
        org = next((part for part in reversed(Path(raw.filename).parts) if part in fw.organisations), None)
    if org is None:
        raise msh.error(f"unknown source organisation: '{sending}' is not an organisation of the framework; "
                        "give --source ORG", 4, condition=Condition.TABLE_VALUE)
    organisation = fw.organisation(org)
    if organisation is None:
        raise MessageError(f"organisation '{org}' is not part of the sharing framework", raw.where,
                           condition=Condition.TABLE_VALUE)
    sent = "-".join(msh.get(3).lower().split())
    if len(sent) > SYSTEM_CHARACTERS:  # else PostgreSQL refuses the store's write: AE 207, saying nothing useful
        raise msh.error(f"sending application (MSH-3) of {len(sent)} characters: the store keeps at most "
                        f"{SYSTEM_CHARACTERS}", 3, condition=Condition.DATA_TYPE, rejected=True)
    system = _declared_system(msh, sent, organisation)
    return Sender(org, organisation.name, system, organisation.service_codes.get(system)), system


def _declared_system(msh: Seg, sent: str, organisation: Organisation) -> str:
    """The organisation's HL7 v2 system MSH-3 names (ignoring case and spacing; an MSH-3 left blank names the
    only one it has). Deny by default: the framework maps each system's local visit codes (`service_codes`),
    so a GUM clinic visit sent as "PAS-LIVE" missed the PAS's table and was filed as an ordinary encounter
    (operations review of 2026-12-07); a message from a system the framework does not declare is held (AE
    103), and replayed once it is declared."""
    org = organisation.code
    declared = {"-".join(name.lower().split()): name for name, fmt in organisation.systems.items() if fmt == "hl7v2"}
    if not sent and len(declared) == 1:
        return next(iter(declared.values()))
    if sent in declared:
        return declared[sent]
    listed = f"organisations.{org}.systems lists {', '.join(sorted(declared.values())) or 'none'}"
    if not sent:
        raise msh.error(f"no sending application (MSH-3) to say which HL7 v2 system of {org} sent it ({listed})", 3,
                        condition=Condition.TABLE_VALUE)
    raise msh.error(f"sending application '{cut(msh.get(3))}' (MSH-3) is not an HL7 v2 system of {org} in the "
                    f"framework ({listed}): held until it is declared, so that its visits' local codes are read by "
                    "its service_codes", 3, condition=Condition.TABLE_VALUE)


@dataclass
class _Result:
    obx: Seg
    notes: list[str] = field(default_factory=list)


@dataclass
class _Order:
    obr: Seg
    notes: list[str] = field(default_factory=list)
    results: list[_Result] = field(default_factory=list)


def _orders(segments: list[Seg]) -> list[_Order]:
    """Group ORU segments: each OBR with its OBXs; an NTE belongs to the OBR or OBX just before it."""
    orders: list[_Order] = []
    notes: list[str] | None = None
    for seg in segments:
        if seg.name == "OBR":
            orders.append(_Order(seg))
            notes = orders[-1].notes
        elif seg.name == "OBX":
            if not orders:
                raise seg.error("OBX before any OBR: a result must belong to a report",
                                condition=Condition.SEGMENT_SEQUENCE)
            orders[-1].results.append(_Result(seg))
            notes = orders[-1].results[-1].notes
        elif seg.name == "NTE":
            if notes is not None and seg.text(3):
                notes.append(seg.text(3))
        else:
            notes = None
    return orders


def _first(segments: list[Seg], name: str) -> Seg | None:
    return next((s for s in segments if s.name == name), None)


def _one_patient(segments: list[Seg], raw: RawMessage) -> Seg:
    pids = [s for s in segments if s.name == "PID"]
    if not pids:
        raise MessageError("no PID segment: every message must name its patient", f"{raw.where}, PID",
                           condition=Condition.SEGMENT_SEQUENCE)
    if len(pids) > 1:
        raise MessageError(f"{len(pids)} PID segments: one patient per message is accepted", f"{raw.where}, PID",
                           condition=Condition.SEGMENT_SEQUENCE)
    return pids[0]


def _retired_mrn(segments: list[Seg], msh: Seg, sender: Sender) -> str:
    """MRG-1: the hospital number being merged away (type MR)."""
    mrg = _first(segments, "MRG")
    if mrg is None:
        raise msh.error("a patient merge needs an MRG segment naming the record merged away", 9,
                        condition=Condition.SEGMENT_SEQUENCE)
    retired = [c[0] for c in mrg.reps(1) if hmap.part(c, 5) in ("MR", "") and c[0]]
    if not retired:
        raise mrg.error("no prior hospital number (MRG-1 with type MR)", 1, condition=Condition.REQUIRED_FIELD)
    return retired[0]


def _adt(event: str, segments: list[Seg], msh: Seg, subject: Json, sender: Sender) -> list[tuple[str, Json]]:
    """The Encounter an ADT event creates or changes (none for a person-only update)."""
    if event in MERGE_EVENTS:
        raise msh.error(f"ADT^{event} (a visit or person-level merge) is not handled yet; held until it is", 9,
                        condition=Condition.EVENT_CODE, rejected=True)
    if event not in ADT_EVENTS:
        # an event code no table could hold (none, or not a word) leaves the message type unsupported
        unsupported = Condition.EVENT_CODE if re.fullmatch(r"\w+", event) else Condition.MESSAGE_TYPE
        raise msh.error(f"message type ADT^{event} is not handled (ADT^{', ADT^'.join(ADT_EVENTS)}, ORU^R01)", 9,
                        condition=unsupported, rejected=True)
    pv1 = _first(segments, "PV1")
    update = ADT_EVENTS[event] is None
    # An update's PV1 without a visit number (PV1|1|N) describes no visit: the Patient alone changes.
    if pv1 is None or (update and not pv1.get(19)):
        if update:
            return []
        raise msh.error(f"ADT^{event} has no PV1 segment: the visit is required", 9,
                        condition=Condition.SEGMENT_SEQUENCE)
    visit = pv1.get(19) or msh.get(10)  # (stage_hl7 has refused a message without MSH-10)
    return [(pv1.label, hmap.encounter(pv1, ADT_EVENTS[event], visit, subject, sender, reopened=event == "A13"))]


def _listed(segments: list[Seg], name: str, base: str, build: Callable[[Seg, str], Json],
            known_as: str | None = None) -> list[tuple[str, Json]]:
    """The resource of each `name` segment of an ADT's list (allergies, a visit's diagnoses, procedures and
    observations), each known by `base`, the segment (or `known_as`) and what it is about (its code, its words
    where it has none), so the same item sent in the next ADT updates it (and "D" in its action code withdraws
    it); its set ID only numbers the list. (AL1 was read and dropped, the message answered AA, until
    2026-12-07; DG1 and PR1 were counted as set aside, IAM and OBX until 2026-12-07 in the evening.)"""
    out: list[tuple[str, Json]] = []
    keys: Counter[str] = Counter()
    for seg in (s for s in segments if s.name == name):
        key = f"{base}-{known_as or name}-{seg.get(3) or seg.get(3, 2).lower()}"
        if len(key) > 56:  # the store keeps 64 characters of a source id, a repeat's suffix included
            key = f"{known_as or name}-{hashlib.sha256(key.encode()).hexdigest()[:40]}"
        keys[key] += 1
        out.append((seg.label, build(seg, key if keys[key] == 1 else f"{key}-{keys[key]}")))
    return out


def _clinical_lists(segments: list[Seg], mrn: str, subject: Json, sender: Sender) -> list[tuple[str, Json]]:
    """An ADT's allergies (the patient's: AL1, or IAM in an A60, one allergy whichever segment sent it), and
    its diagnoses, procedures and observations such as a height or weight (the visit's, PV1-19, when it names
    one: the same code at another admission is another item)."""
    pv1 = _first(segments, "PV1")
    visit = pv1.get(19) if pv1 else ""
    encounter_ref = sender.reference("Encounter", visit) if visit else None
    of_visit = f"{mrn}-{visit}" if visit else mrn
    return [*_listed(segments, "AL1", mrn, lambda seg, key: hmap.allergy(seg, key, subject)),
            *_listed(segments, "IAM", mrn, lambda seg, key: hmap.allergy(seg, key, subject), known_as="AL1"),
            *_listed(segments, "DG1", of_visit, lambda seg, key: hmap.diagnosis(seg, key, subject, encounter_ref)),
            *_listed(segments, "PR1", of_visit, lambda seg, key: hmap.procedure(seg, key, subject, encounter_ref)),
            *_listed(segments, "OBX", of_visit,
                     lambda seg, key: hmap.observation(seg, None, key, [], subject, encounter_ref))]


def _oru(segments: list[Seg], subject: Json, sender: Sender, raw: RawMessage) -> list[tuple[str, Json]]:
    """A DiagnosticReport per OBR and an Observation per OBX, the report listing its results."""
    orders = _orders(segments)
    if not orders:
        raise MessageError("ORU^R01 without an OBR segment: there is no report", f"{raw.where}, OBR",
                           condition=Condition.SEGMENT_SEQUENCE)
    pv1 = _first(segments, "PV1")
    visit = sender.reference("Encounter", pv1.get(19)) if pv1 and pv1.get(19) else None
    out: list[tuple[str, Json]] = []
    for order in orders:
        filler = order.obr.get(3)
        if not filler:
            raise order.obr.error("no filler order number (OBR-3): it identifies the report for corrections", 3,
                                     condition=Condition.REQUIRED_FIELD)
        results = []
        for number, result in enumerate(order.results, start=1):
            source_id = f"{filler}-{result.obx.get(1) or number}"
            out.append((result.obx.label, hmap.observation(result.obx, order.obr, source_id, result.notes,
                                                           subject, visit)))
            results.append(sender.reference("Observation", source_id))
        out.append((order.obr.label, hmap.report(order.obr, order.notes, results, subject, visit, sender)))
    return out


def _message_type(msh: Seg, segments: list[Seg]) -> tuple[str, str]:
    kind = msh.get(9)
    if not kind:
        raise msh.error("no message type (MSH-9)", 9, condition=Condition.REQUIRED_FIELD)
    evn = _first(segments, "EVN")
    return kind, msh.get(9, 2) or (evn.get(1) if evn else "")


def _refuse_active_content(segments: list[Seg]) -> None:
    """Refuse a field holding markup that would run if shown (a script, an event handler, a javascript: URL),
    naming the segment and field, as the FHIR validator's security checks refuse it in the strings it maps to.
    The whole message is searched first (an HL7 hex escape, \\X3C\\, could spell a '<', so then each field is)."""
    if not any(active_content("|".join(s.fields)) or f"{s.encoding.esc}X" in "".join(s.fields) for s in segments):
        return
    for segment in segments[1:]:
        for number in range(1, len(segment.fields)):
            if active_content(segment.text(number)):
                raise segment.error("security: the field holds active content (a script, frame, object, form, "
                                    "event handler or script URL), refused as the FHIR validator's security "
                                    "checks refuse it", number, condition=Condition.APPLICATION)


def stage_hl7(raw: RawMessage, fw: Framework, source_override: str | None = None) -> StagedMessage:
    """Check and shape one HL7 v2 message; raise MessageError on the first problem, located."""
    segments, guessed = _decode(raw)
    msh = segments[0]
    # a refusal before the sender is resolved is still counted against (and replayed only as) the one MSH-4 names
    with sent_by(source_override or (msh.get(4) if msh.get(4) in fw.organisations else None)):
        _refuse_active_content(segments)
        kind, event = _message_type(msh, segments)
        if not msh.get(10):
            raise msh.error("no message control id (MSH-10): the ACK names the message by it, and a corrected copy "
                            "is known by it", 10, condition=Condition.REQUIRED_FIELD, rejected=True)
        if len(msh.get(10)) > CONTROL_ID_CHARACTERS:
            raise msh.error(f"message control id (MSH-10) of {len(msh.get(10))} characters: the store keeps at most "
                            f"{CONTROL_ID_CHARACTERS} (HL7 allows 199)", 10, condition=Condition.DATA_TYPE,
                            rejected=True)
        if msh.get(12) not in VERSIONS:
            raise msh.error((f"version '{cut(msh.get(12), 20)}'" if msh.get(12) else "no version") + " (MSH-12): "
                            f"HL7 v2 {', '.join(VERSIONS)} are read", 12, condition=Condition.VERSION_ID,
                            rejected=True)
        if msh.get(11) not in ("", "P"):
            raise msh.error(f"processing id '{msh.get(11)}' is not P (production): test and training messages "
                            "must not join a live record", 11, condition=Condition.PROCESSING_ID)
        sender, system = _source_of(msh, raw, fw, source_override)
    with sent_by(sender.org):
        sent = hmap.stamp(msh, 7)
        if sent is None:
            raise msh.error("no message date/time (MSH-7): it orders this message against others", 7,
                            condition=Condition.REQUIRED_FIELD)
        received = raw.received
        _not_future(msh, 7, sent, received)
        staged = StagedMessage(sender.org, system, msh.get(10))
        if guessed:
            staged.notes[READ_AS_UTF8] += 1
        pid = _one_patient(segments, raw)
        patient = hmap.patient(pid, _first(segments, "PD1"), [s for s in segments if s.name == "NK1"], sender)
        mrn = patient["id"]
        numbers = nhs_numbers(patient)
        staged.patients[mrn] = demographics(patient, numbers[0] if numbers else None)
        subject = sender.reference("Patient", mrn)
        if kind == "ADT" and event in PATIENT_MERGES:
            staged.merges.append((_retired_mrn(segments, msh, sender), mrn, f"{raw.where}, MRG-1"))
            evn = _first(segments, "EVN")
            happened = (_not_future(evn, 2, hmap.stamp(evn, 2), received) if evn else None) or sent
            produced = [(pid.label, patient)]
        elif kind == "ADT":
            evn = _first(segments, "EVN")
            happened = (_not_future(evn, 2, hmap.stamp(evn, 2), received) if evn else None) or sent
            produced = [(pid.label, patient), *_adt(event, segments, msh, subject, sender),
                        *_clinical_lists(segments, mrn, subject, sender)]
        elif (kind, event) == ("ORU", "R01"):
            # The lab's PID echoes the PAS registration without PD1 or NK1: it links the patient, but storing it
            # as the Patient would replace the PAS's fuller one (practice, next of kin) whenever a result is newer.
            happened = sent
            produced = _oru(segments, subject, sender, raw)
        else:
            raise msh.error(f"message type {kind}^{event} is not handled (ADT, ORU^R01)", 9,
                            condition=Condition.MESSAGE_TYPE, rejected=True)
        seen: set[str] = set()  # the server ids staged so far: a repeat is refused (a set: a list was quadratic)
        for label, resource in produced:
            if sender.service_codes is None and resource["resourceType"] == "Encounter" and any(
                    coding["system"] != hmap.TREATMENT_FUNCTION for coding in resource.get("serviceType", {})
                    .get("coding", [])):
                staged.notes[UNMAPPED_SERVICE] += 1
            staged.resources.append(_staged(resource, label, sender, system, happened.at, mrn, raw, seen))
        if happened.ambiguous:  # BST or GMT: ordered against a stored version within the hour by arrival
            staged.notes[AMBIGUOUS_TIME] += 1
            for item in staged.resources:
                item.recorded_doubt = timedelta(hours=1)
        return staged


def _not_future(seg: Seg, field: int, stamp: hmap.Stamp | None, received: datetime) -> hmap.Stamp | None:
    """A date/time that orders this message against others, refused (naming its field) when in the future."""
    problem = future_event_time(stamp.at, received) if stamp is not None else None
    if problem is not None:
        raise seg.error(f"event time {problem}", field, condition=Condition.APPLICATION)
    return stamp


def _staged(resource: Json, label: str, sender: Sender, system: str, recorded: datetime, mrn: str,
            raw: RawMessage, seen: set[str]) -> StagedResource:
    """Give a mapped resource its server id and provenance, and check it is valid FHIR and not a repeat of
    one already `seen` in this message (its server id is added)."""
    resource_type, source_id = resource["resourceType"], str(resource["id"])
    where = f"{raw.where}, {label}"
    content = {**resource, "id": server_id(sender.org, resource_type, source_id),
               "meta": {**resource.get("meta", {}), "source": meta_source(sender.org, system)}}
    if content["id"] in seen:
        raise MessageError(f"{resource_type} '{source_id}' is sent twice in this message", where,
                           condition=Condition.DUPLICATE_KEY)
    seen.add(content["id"])
    problems, issue = resource_problems(content)
    if problems:
        element = _ELEMENT.match(problems[0])
        field = SOURCE_FIELDS.get(element.group(0)) if element else None
        if field:
            where = f"{raw.where}, {label}{field}" if field.startswith("-") else f"{raw.where}, {field}"
        condition = Condition.TABLE_VALUE if issue == CODE_INVALID else next(
            (found for phrase, found in _VALIDATION_CONDITIONS if phrase.search(problems[0])), Condition.APPLICATION)
        raise MessageError(f"{resource_type}/{source_id}: {problems[0]}"
                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), where,
                           condition=condition, issue=issue)
    return StagedResource(resource_type, source_id, content["id"], content, recorded, mrn)
