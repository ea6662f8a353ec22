"""CSV extracts (the council's Mosaic extract, a care home's export), read through a mapping per source.

Reading: row by row, never the whole file: UTF-8 with or without a byte order mark (anything else is
named as such), CRLF or LF, quoted fields with embedded newlines; rows whose cells are all blank are
skipped; a record that is not valid CSV is held as its opening line, and reading goes on at the next.
Each data row is one message, located at the physical line it starts on; its payload is the header line
followed by the row's own text, so a quarantined row can be replayed with the mapping as it is by then.
Which mapping reads a file is decided, for each row, from the source organisation and the header (see
`csv_mapping`): a row no mapping reads is held under the header's reason. A file whose header cannot be
read at all (empty, not UTF-8, not CSV) is held whole, once, at `header`.

Shapes (every resource is checked as FHIR R4): each row makes a UK Core Patient whose id is the source's
client id, an Encounter for the assessment (its type, date, status, worker and team, served by the source
organisation), a CarePlan carrying the outcome summary as its description (free text, so shown at tier 3
only) when the row has one, and, when the third-party column is not blank, a DocumentReference holding
that text as a text/plain attachment, labelled THIRDPARTY: the decision point shows it to no one outside
the source organisation. A blank outcome or third-party column withdraws (entered in error) what an earlier
row of the assessment made of it. Every resource of a row takes the row's `updated` time as its event time,
so an older extract arriving late does not overwrite a newer row.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.fhir.checks import resource_problems
from sharedcare.fhir.invariants import control_character
from sharedcare.fhir.lifecycle import ENTERED_IN_ERROR
from sharedcare.fhir.uk_core import ODS_SYSTEM, demographics, meta_source, server_id
from sharedcare.governance.framework import Framework, local_code_system
from sharedcare.identity.nhs_number import NHS_NUMBER_SYSTEM, is_valid, normalise
from sharedcare.ingest.csv_mapping import (
    ACT_CODE,
    DateColumn,
    Mapping,
    MappingError,
    NoMapping,
    PatientMap,
    ValueProblem,
    day_month_swapped,
    describe_format,
    find_mapping,
    organisation_of,
    required,
    text,
)
from sharedcare.ingest.messages import (
    KEPT_OF_TOO_LARGE,
    MAX_MESSAGE_BYTES,
    DateReading,
    MessageError,
    RawMessage,
    StagedMessage,
    StagedResource,
    future_event_time,
    sender_conflict,
    sent_by,
    too_large,
)

T = TypeVar("T")

HEADER = "header"  # the location of a file quarantined as a whole because no mapping can read its header
THIRD_PARTY = {"system": ACT_CODE, "code": "THIRDPARTY", "display": "third party information"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LINE_BREAKS = str.maketrans({"\x0b": "\n", "\x0c": "\n"})  # Word's manual line break (VT) and page break (FF)


class RowError(MessageError):
    """Cells of one row the mapping cannot read, each with its column and the rule it breaks."""

    def __init__(self, problems: list[ValueProblem], where: str, date_readings: tuple[DateReading, ...] = ()) -> None:
        self.problems = problems
        first = problems[0]
        rest = "".join(f"; {problem}" for problem in problems[1:])
        super().__init__(first.rule + rest, f"{where}, column {first.column}" if first.column else where,
                         date_readings=date_readings)


@dataclass
class _DateColumnSeen:
    format: str
    swapped: int = 0  # rows whose date reads only with day and month exchanged (each refused)
    example: str = ""  # the first of them
    as_mapped: bool = False  # a date of the column reads only as the mapping reads it


@dataclass
class DateOrders:
    """A file's dates that read in only one order of day and month, by column. When some of a column read only
    with day and month exchanged and none reads only as the mapping reads it, the column looks written the other
    way round (a US system's MM/DD/YYYY under a DD/MM/YYYY mapping): the file's note says so, once, with what the
    mapping expects. Each row keeps its own refusal, and no date is ever read the other way round: 03/04/2025
    cannot tell which it is."""

    columns: dict[str, _DateColumnSeen] = field(default_factory=dict)

    def add(self, readings: Iterable[DateReading]) -> None:
        for column, fmt, value, swapped in readings:
            seen = self.columns.setdefault(column, _DateColumnSeen(fmt))
            if swapped:
                seen.swapped += 1
                seen.example = seen.example or value
            else:
                seen.as_mapped = True

    def notes(self) -> list[str]:
        """One for the file, for each format of the columns that look the other way round (usually one)."""
        flagged = [(column, seen) for column, seen in self.columns.items() if seen.swapped and not seen.as_mapped]
        return [_swapped_note(fmt, [(column, seen) for column, seen in flagged if seen.format == fmt])
                for fmt in dict.fromkeys(seen.format for _, seen in flagged)]


def _swapped_note(fmt: str, columns: list[tuple[str, _DateColumnSeen]]) -> str:
    def order(written: str) -> str:
        return "month first" if written.index("%m") < written.index("%d") else "day first"

    other = day_month_swapped(fmt) or fmt  # (a format without both reads no date so)
    mapped, written = describe_format(fmt), describe_format(other)
    counts = " and ".join(f"{seen.swapped} in column {column} (such as '{seen.example}')" for column, seen in columns)
    return (f"its dates look {order(other)} ({written}), but the mapping reads them {order(fmt)} ({mapped}): rows "
            f"hold a date that reads only as {written}, {counts}, and no date in "
            f"{'that column' if len(columns) == 1 else 'those columns'} reads only as {mapped}. No date was read "
            "the other way round: those rows are refused, and a date that "
            f"reads either way (a day of 12 or less) is read as {mapped}, so if the extract is {order(other)} such a "
            "row's date has its day and month exchanged. Ask the source which order its extract writes, then "
            "correct the extract or the mapping.")


@dataclass(frozen=True)
class _Record:
    """One CSV record: the line it starts on, its exact text, its fields, or why it is not valid CSV."""

    line: int
    text: str
    fields: list[str]
    problem: str | None = None


class _Lines:
    """A text stream's physical lines, counted, keeping the text of the record being read; lines given back
    (`refuse`) are read again first."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle
        self.number = 0
        self.taken: list[str] = []
        self.again: list[str] = []  # lines to read again, the next one last

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.again.pop() if self.again else self.handle.readline()
        if not line:
            raise StopIteration
        self.number += 1
        self.taken.append(line)
        return line

    def record(self, fields: list[str], problem: str | None = None) -> _Record:
        taken, self.taken = self.taken, []
        return _Record(self.number - len(taken) + 1, "".join(taken), fields, problem)

    def refuse(self, problem: str) -> _Record:
        """The record that is not valid CSV, as its opening line alone: the lines read after it are read again.
        A stray opening quote made the reader take every following line into one field until the field limit
        (131,072 characters): 569 rows of 3,000 were held as one item, counted once (CSV review, 2026-12-07)."""
        first, *rest = self.taken or [""]
        self.again.extend(reversed(rest))
        self.number -= len(rest)
        self.taken = [first]
        return self.record([], problem)


def _csv_problem(exc: csv.Error) -> str:
    if "unexpected end of data" in str(exc):  # (a held line, staged again, always ends so)
        return ("a quoted field opened on this line is not closed on it: is a quote left open? This line alone is "
                "held; the lines after it are read as rows of their own")
    if "field limit" in str(exc):
        return f"a field is longer than {csv.field_size_limit()} characters: is a quote left open?"
    return f"not valid CSV ({exc})"


def _records(handle: IO[str]) -> Iterator[_Record]:
    """The non-blank records of a CSV stream, one at a time; a record that is not valid CSV is yielded as its
    first line with its problem, and reading goes on from the line after that."""
    lines = _Lines(handle)
    while True:
        try:
            for fields in csv.reader(lines, strict=True):
                record = lines.record(fields)
                if any(cell.strip() for cell in fields):
                    yield record
            return
        except csv.Error as exc:
            yield lines.refuse(_csv_problem(exc))


def _open(path: Path) -> IO[str]:
    """Undecodable bytes are kept (as surrogates) so the row's exact bytes survive into quarantine."""
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")


def _bytes(chunk: str) -> bytes:
    return chunk.encode("utf-8", "surrogateescape")


def _not_utf8(chunk: str) -> str | None:
    """Why this text, read with surrogateescape, was not UTF-8; None when it was."""
    # UTF-16 text is half NULs; a stray NUL in a UTF-8 row is refused naming its column (`_controls`)
    if chunk.startswith(("\udcff\udcfe", "\udcfe\udcff")) or chunk.count("\x00") * 4 >= len(chunk) > 0:
        return "the file is UTF-16, not UTF-8: export the extract again as UTF-8"
    try:
        chunk.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(chunk[exc.start]) - 0xDC00
        return (f"not UTF-8: byte 0x{byte:02X} at character {exc.start + 1} cannot be read "
                "(export the extract as UTF-8)")
    return None


def _fault(record: _Record) -> str | None:
    """Why a record cannot be read at all: its encoding first (a UTF-16 file is not CSV to us either)."""
    return _not_utf8(record.text) or record.problem


def _mappings_folder() -> Path:
    return load_settings().mappings_path


def _whole_file(path: Path, fault: str) -> RawMessage:
    """A file whose header cannot be read at all, as one `header` message of all its bytes (its start, past a
    message's limit): held as the file it is, not as its header line alone with its rows in no item."""
    size = path.stat().st_size
    if size <= MAX_MESSAGE_BYTES:
        return RawMessage(str(path), HEADER, path.read_bytes(), "csv")
    with path.open("rb") as handle:
        head = handle.read(KEPT_OF_TOO_LARGE)
    return too_large(str(path), HEADER, "csv", head, size, f"its header cannot be read ({fault})")


def read_messages(path: Path) -> Iterator[RawMessage]:
    """One message per data row (the header line and the row's text); a file whose header cannot be read at all
    (empty, not UTF-8, not CSV) is one `header` message of the whole file. Which mapping reads the header is
    staging's to decide: a row none reads is held under the header's reason, to be replayed once one does."""
    with _open(path) as handle:
        records = _records(handle)
        header = next(records, None)
        fault = "the file is empty" if header is None else _fault(header)
        if header is None or fault:
            yield _whole_file(path, fault or "")
            return
        # Each row's payload repeats the header; the header's own bytes are counted once, with the first row.
        header_bytes = len(_bytes(header.text))
        for record in records:
            row = _bytes(record.text)
            yield RawMessage(str(path), f"line {record.line}", _bytes(header.text) + row, "csv",
                             file_bytes=header_bytes + len(row))
            header_bytes = 0


def _names(header: _Record) -> list[str]:
    """The header's column names; a second byte order mark (two exports joined) is not part of the first."""
    return [header.fields[0].lstrip("\ufeff"), *header.fields[1:]] if header.fields else []


def _parse(raw: RawMessage) -> tuple[list[str], _Record | None]:
    """The header's fields and the row (None for a `header` message), from a message's payload."""
    records = _records(io.StringIO(raw.payload.decode("utf-8", "surrogateescape"), newline=""))
    at_header = f"{raw.filename}, {HEADER}"
    header = next(records, None)
    if header is None:
        raise MessageError("the file is empty: a header line naming the columns is expected", at_header)
    problem = _fault(header)
    if problem:
        raise MessageError(problem, at_header)
    row = next(records, None)
    if row is not None:
        problem = _fault(row)
        if problem:
            raise MessageError(problem, raw.where)
    return _names(header), row


def stage_csv(raw: RawMessage, fw: Framework, source_override: str | None = None) -> StagedMessage:
    """Check and shape one row; raise MessageError naming the line, and the column when a cell is at fault.
    Only the file's organisation folder names a sender that --source can conflict with: the header names only
    the system that wrote the file, and organisations running the same system (Mosaic) write the same one."""
    folder_org = organisation_of(raw.filename, fw.organisations)
    if source_override and folder_org and folder_org != source_override:
        raise sender_conflict(f"its folder names the sender {folder_org}", folder_org, source_override, raw.where)
    organisation = source_override or folder_org
    with sent_by(organisation):
        header, row = _parse(raw)
        at_header = f"{raw.filename}, {HEADER}"
        try:
            mapping = find_mapping(_mappings_folder(), organisation, header)
        except (NoMapping, MappingError) as exc:
            why = exc.message if isinstance(exc, NoMapping) else f"the mapping {exc.where} is invalid: {exc.message}"
            held = "" if row is None else ": the row is held unread, to be replayed once a mapping reads the header"
            raise MessageError(why + held, at_header) from exc
        if row is None:
            raise MessageError(f"the header now fits the {mapping.name} mapping: ingest the file again to read its "
                               "rows", at_header)
        return shape_row(mapping, header, row.fields, raw.where, f"{Path(raw.filename).name}:{raw.location}", fw,
                         raw.received)


class _Reader:
    """Reads one row's cells through the mapping, noting every problem rather than stopping at the first."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.problems: list[ValueProblem] = []

    def __call__(self, read: Callable[[dict[str, str]], T], fallback: T) -> T:
        """What `read` finds, or `fallback` when the cell breaks a rule (never used: the row is refused)."""
        try:
            return read(self.values)
        except ValueProblem as problem:
            if str(problem) not in map(str, self.problems):  # two parts reading one column (`status`) say it once
                self.problems.append(problem)
            return fallback


def _event_time(column: DateColumn, received: datetime) -> Callable[[dict[str, str]], datetime]:
    """Reads the row's `updated` time, which orders it against the source's other rows: refused, naming the
    column, when it is in the future (`future_event_time`)."""
    def read(values: dict[str, str]) -> datetime:
        at = column.instant(values)
        problem = future_event_time(at, received)
        if problem is not None:
            raise ValueProblem(column.column, f"event time {problem}")
        return at
    return read


def _nhs_number(values: dict[str, str], column: str | None) -> str | None:
    """A blank NHS number is allowed (the MPI links by demographics); a wrong one is refused."""
    value = text(values, column)
    if value is None:
        return None
    if not is_valid(value):
        raise ValueProblem(column, "not a valid NHS number (modulus 11 check)")  # not quoted: listed to operators
    return normalise(value)


def _control_problems(mapping: Mapping, values: dict[str, str]) -> list[ValueProblem]:
    """Each column the mapping reads that holds a control character FHIR refuses, named by the column (the FHIR
    check names only the element made of it). In free text a line or page break pasted from Word becomes a line
    end: a care plan's outcome typed in Word was refused as `CarePlan.description`."""
    free = {part.text for part in (mapping.outcome, mapping.third_party) if part is not None}
    problems: list[ValueProblem] = []
    for column in mapping.columns:
        if column in free:
            values[column] = values[column].translate(_LINE_BREAKS)
        if control := control_character(values[column]):
            problems.append(ValueProblem(column, f"holds the control character U+{ord(control.group()):04X} at "
                                                 f"character {control.start() + 1}, which a record cannot keep"))
    return problems


def _compact(node: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in node.items() if value not in (None, "", [], {})}


def _patient(p: PatientMap, values: dict[str, str], nhs: str | None, born: date | None,
             gender: str | None) -> dict[str, Any]:
    family, given = text(values, p.family), text(values, p.given)
    line, phone = text(values, p.address_line), text(values, p.phone)
    place = _compact({"line": [line] if line else None, "city": text(values, p.town),
                      "postalCode": text(values, p.postcode)})
    return _compact({
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}] if nhs else None,
        "name": [_compact({"use": "official", "family": family, "given": [given] if given else None})]
        if family or given else None,
        "gender": gender,
        "birthDate": born.isoformat() if born else None,
        "address": [{"use": "home", **place}] if place else None,
        "telecom": [{"system": "phone", "value": phone}] if phone else None,
    })


def shape_row(mapping: Mapping, header: list[str], fields: list[str], where: str, message_id: str,
              fw: Framework, received: datetime) -> StagedMessage:
    """One row as a staged message of FHIR resources; RowError lists every cell the mapping cannot read.
    `received`: when the row was received, which its `updated` time may not be much later than."""
    if len(fields) != len(header):
        raise MessageError(f"expected {len(header)} columns, as the header has, but found {len(fields)}", where)
    org, system = mapping.organisation, mapping.system
    organisation = fw.organisation(org)
    if organisation is None:
        raise MessageError(f"organisation '{org}' (the {mapping.name} mapping) is not part of the sharing framework",
                           where)
    values = dict(zip((name.strip() for name in header), fields, strict=True))
    p, a = mapping.patient, mapping.assessment
    read = _Reader(values)
    read.problems += _control_problems(mapping, values)
    updated = read(_event_time(mapping.updated, received), _EPOCH)
    client = read(lambda v: required(v, p.id), "")
    nhs = read(lambda v: _nhs_number(v, p.nhs_number), None)
    born = read(p.birth_date.read, None) if p.birth_date else None
    gender = read(p.sex.read, None) if p.sex else None
    readings = tuple(found for column in (mapping.updated, p.birth_date, a.date)
                     if column is not None and (found := column.reading(values)) is not None)
    assessment = read(lambda v: required(v, a.id), "")
    day = read(a.date.require, date.min).isoformat()
    kind = read(lambda v: a.type.read(v, local_code_system(org, system, "assessment-type")), {"text": ""})
    status = read(a.status.require, "unknown")
    outcome = text(values, mapping.outcome.text) if mapping.outcome else None
    plan_status = read(mapping.outcome.status.require, "unknown") if mapping.outcome and outcome else None
    note = text(values, mapping.third_party.text) if mapping.third_party else None
    if read.problems:
        raise RowError(read.problems, where, readings)

    provider = {"identifier": {"system": ODS_SYSTEM, "value": org}, "display": organisation.name}
    subject = {"reference": f"Patient/{server_id(org, 'Patient', client)}"}
    encounter = {"reference": f"Encounter/{server_id(org, 'Encounter', assessment)}"}
    team, worker = text(values, a.team), text(values, a.worker)
    patient = _patient(p, values, nhs, born, gender)
    made: list[tuple[str, str, dict[str, Any]]] = [
        ("Patient", client, patient),
        ("Encounter", assessment, _compact({
            "status": status, "class": a.encounter_class.model_dump(exclude_none=True), "type": [kind],
            "serviceType": {"text": team} if team else None, "subject": subject,
            "participant": [{"individual": {"display": worker}}] if worker else None,
            "period": {"start": day}, "serviceProvider": provider,
        })),
    ]
    # An optional part left blank withdraws what an earlier row of the assessment made of it (entered in error,
    # as an HL7 DG1-21 "D" does): a neighbour's allegation typed into the outcome, then moved to the third-party
    # notes, stayed in the care plan the patient reads. Stored only over a held version (`withdraws`).
    if mapping.outcome:
        made.append(("CarePlan", assessment, _compact({
            # the assessment type as category too, so a code such as a safeguarding one classifies the plan
            "status": plan_status if outcome else ENTERED_IN_ERROR, "intent": "plan", "category": [kind],
            "title": f"{kind['text']}: outcome", "description": outcome, "subject": subject, "encounter": encounter,
            "period": {"start": day}, "created": day, "author": provider,
        })))
    if mapping.third_party:
        made.append(("DocumentReference", assessment, {
            "meta": {"security": [THIRD_PARTY]}, "status": "current" if note else ENTERED_IN_ERROR,
            "type": {"text": "Information about other people (third party)"}, "subject": subject,
            "date": updated.isoformat(), "author": [provider],
            "content": [{"attachment": _compact({
                "contentType": "text/plain", "title": f"{kind['text']}: third-party notes",
                "data": base64.b64encode(note.encode("utf-8")).decode("ascii") if note else None})}],
            "context": {"encounter": [encounter], "period": {"start": day}},
        }))

    staged = StagedMessage(source_org=org, source_system=system, message_id=message_id, date_readings=readings)
    staged.patients[client] = demographics(patient, nhs)
    for resource_type, source_id, body in made:
        meta = {**body.pop("meta", {}), "source": meta_source(org, system)}
        content = {"resourceType": resource_type, "id": server_id(org, resource_type, source_id), "meta": meta,
                   **body}
        problems, issue = resource_problems(content)
        if problems:
            raise MessageError(f"the {resource_type} made from this row is not valid FHIR: {problems[0]}", where,
                               issue=issue)
        staged.resources.append(StagedResource(resource_type, source_id, content["id"], content, updated, client,
                                               withdraws=content.get("status") == ENTERED_IN_ERROR))
    return staged


@dataclass
class CheckReport:
    """What `sharedcare mapping check` found: rows read, rows that would be accepted, and each failure."""

    mapping: str
    file: str
    rows: int = 0
    accepted: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    dates: DateOrders = field(default_factory=DateOrders)

    def fail(self, line: int, column: str | None, rule: str) -> None:
        self.failed.append({"line": line, "column": column, "rule": rule})

    def to_json(self) -> dict[str, Any]:
        return {"mapping": self.mapping, "file": self.file, "rows": self.rows, "accepted": self.accepted,
                "failed": self.failed, "notes": self.dates.notes()}


def check_file(mapping: Mapping, path: Path, fw: Framework) -> CheckReport:
    """Read a sample extract with this mapping exactly as ingest would, storing nothing."""
    report = CheckReport(mapping.name, str(path))
    with _open(path) as handle:
        records = _records(handle)
        header = next(records, None)
        if header is None:
            report.fail(1, None, "the file is empty: a header line naming the columns is expected")
            return report
        problem = _fault(header)
        if problem:
            report.fail(header.line, None, problem)
            return report
        missing = mapping.header_problems(header.fields)
        for fault in missing:
            report.fail(header.line, fault.column, fault.rule)
        if missing:
            return report
        for record in records:
            report.rows += 1
            problem = _fault(record)
            if problem:
                report.fail(record.line, None, problem)
                continue
            try:
                staged = shape_row(mapping, header.fields, record.fields, f"{path}, line {record.line}",
                                   f"{path.name}:line {record.line}", fw, utcnow())
            except RowError as exc:
                report.dates.add(exc.date_readings)
                for fault in exc.problems:
                    report.fail(record.line, fault.column, fault.rule)
                continue
            except MessageError as exc:
                report.fail(record.line, None, exc.message)
                continue
            report.dates.add(staged.date_readings)
            report.accepted += 1
    return report
