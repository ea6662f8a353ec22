"""FHIR R4 input: bundles or single resources, from .json or .xml files or .ndjson (one message a line).

Turns one message into a StagedMessage: validated, references rewritten to server ids, provenance
stamped in `meta.source`, NHS numbers checked. Any problem raises a MessageError naming the file, the
line, the entry and the element.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from sharedcare.fhir.checks import resource_problems
from sharedcare.fhir.uk_core import (
    PATIENT_FIELDS,
    RECORD_TYPES,
    declared_senders,
    demographics,
    meta_source,
    nhs_numbers,
    parse_meta_source,
    server_id,
)
from sharedcare.fhir.validate import short_path, too_deep
from sharedcare.governance.framework import Framework
from sharedcare.identity.nhs_number import normalise
from sharedcare.ingest.fhir_batch import entry_index, messages_of, repeated_entry
from sharedcare.ingest.fhir_xml import looks_like_xml, parse_xml
from sharedcare.ingest.messages import (
    KEPT_OF_TOO_LARGE,
    MAX_MESSAGE_BYTES,
    MessageError,
    RawMessage,
    StagedMessage,
    StagedResource,
    bounded_event_time,
    sender_conflict,
    sent_by,
    too_large,
)

BUNDLE_TYPES = {"collection", "batch", "transaction", "message", "document"}


def read_messages(path: Path) -> Iterator[RawMessage]:
    """Yield the messages in a FHIR file: one per non-blank NDJSON line, or the whole JSON or XML file;
    a batch Bundle is split into one message per entry (`fhir_batch`). A message larger than
    MAX_MESSAGE_BYTES is not read but refused (a whole-file bundle is stored all or nothing, so its
    entries cannot be streamed into the store one by one)."""
    if path.suffix == ".ndjson":
        for raw in _ndjson(path):
            yield from (raw,) if raw.refused else messages_of(raw, parse_message)
        return
    size = path.stat().st_size
    if size > MAX_MESSAGE_BYTES:
        with path.open("rb") as handle:
            head = handle.read(KEPT_OF_TOO_LARGE)
        yield too_large(str(path), "whole file", "fhir", head, size,
                        "send a large extract as NDJSON (one bundle or resource a line), or split the bundle")
    else:
        yield from messages_of(RawMessage(str(path), "whole file", path.read_bytes(), "fhir"), parse_message)


def parse_message(raw: RawMessage) -> dict[str, Any]:
    """The FHIR resource in a message, from JSON or (when it starts with `<`) FHIR XML."""
    if looks_like_xml(raw.payload):
        return parse_xml(raw.payload, raw.where)
    return _parse_json(raw)


def _ndjson(path: Path) -> Iterator[RawMessage]:
    """One message per non-blank line, a line at a time, never reading more than a message's limit."""
    with path.open("rb") as handle:
        number = 0
        while line := handle.readline(MAX_MESSAGE_BYTES + 1):
            number += 1
            if len(line) <= MAX_MESSAGE_BYTES or line.endswith(b"\n"):
                if line.strip():
                    yield RawMessage(str(path), f"line {number}", line.rstrip(b"\r\n"), "fhir")
                continue
            head, size = line[:KEPT_OF_TOO_LARGE], len(line)
            while not line.endswith(b"\n") and (line := handle.readline(1 << 20)):
                size += len(line)
            yield too_large(str(path), f"line {number}", "fhir", head, size,
                            "split it: one bundle or resource a line")


# orjson parses a message in a third of the standard library's time and gives the same objects, but reads an
# integer beyond 64 bits as a float (the standard library keeps it exact, and the store then refuses it): a
# message with 19 digits in a row anywhere is left to the standard library, as is anything orjson refuses
# (NaN, lone surrogates, every error), so what is accepted, and every error's wording, stay as they were.
_DIGITS_AS_ZEROS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_NINETEEN_DIGITS = b"0" * 19


def _quick_loads(payload: bytes) -> Any:
    """What `json.loads` gives for this payload, or None where only the standard library may say."""
    if _NINETEEN_DIGITS in payload.translate(_DIGITS_AS_ZEROS):
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


def _parse_json(raw: RawMessage) -> dict[str, Any]:
    data = _quick_loads(raw.payload)
    if data is None:
        data = _standard_loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise MessageError("not a FHIR resource: a JSON object with resourceType is required", raw.where)
    return data


def _standard_loads(raw: RawMessage) -> Any:
    try:
        text = raw.payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"not UTF-8 (byte {exc.start})", raw.where) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MessageError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", raw.where) from exc
    except RecursionError as exc:  # nested deeper than the parser's stack: never read, measured in the text
        depth, line, column = _json_nesting(text)
        raise MessageError(too_deep(depth, f"line {line} column {column}", "objects and arrays"), raw.where) from exc
    except ValueError as exc:  # numbers too long to convert
        raise MessageError(f"invalid JSON: {str(exc)[:120]}", raw.where) from exc
    return data


def _json_nesting(text: str) -> tuple[int, int, int]:
    """How many objects and arrays deep the JSON text nests, and the line and column where it is deepest (only
    for a text too deep to parse: a character at a time)."""
    depth = deepest = 0
    line, column, at = 1, 0, (1, 1)
    in_string = escaped = False
    for char in text:
        column += 1
        if in_string:
            in_string, escaped = (escaped or char != '"'), (not escaped and char == "\\")
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
            if depth > deepest:
                deepest, at = depth, (line, column)
        elif char in "}]":
            depth -= 1
        elif char == "\n":
            line, column = line + 1, 0
    return deepest, *at


def _source_of(data: dict[str, Any], raw: RawMessage, fw: Framework, override: str | None) -> tuple[str, str]:
    """Which organisation and system sent this: --source, else meta.source, else the folder it sits in. --source
    only names a sender meta.source does not: another organisation of the framework there, the message's own or
    any entry's (each entry's would be overwritten with --source's), is refused; so is, without it, an entry
    naming another than the message's own sender, held as the message's (a batch's entry on its own)."""
    meta = data.get("meta")
    declared = parse_meta_source(meta.get("source") if isinstance(meta, dict) else None)
    org = override or (declared[0] if declared else None)
    if org is None:
        org = next((part for part in reversed(Path(raw.filename).parts) if part in fw.organisations), None)
    if org is None:
        raise MessageError("unknown source organisation: give --source ORG or meta.source with an ODS code",
                           raw.where)
    for index, named in declared_senders(data):
        if named != org and named in fw.organisations:
            where = raw.where if index is None or entry_index(raw) is not None else f"{raw.where}, entry[{index}]"
            raise sender_conflict(f"meta.source names the sender {named}", named, org, where, given=bool(override))
    organisation = fw.organisation(org)
    if organisation is None:
        raise MessageError(f"organisation '{org}' is not part of the sharing framework", raw.where)
    if declared and declared[0] == org:
        system = declared[1]
    else:
        system = next((name for name, fmt in organisation.systems.items() if fmt == "fhir"), "fhir")
    return org, system


def _timestamp(value: Any, fallback: datetime) -> datetime:
    if isinstance(value, str) and "T" in value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return fallback
        if parsed.tzinfo is not None:
            return parsed
    return fallback


# References FHIR resolves only within the Bundle that carries them, to an entry's fullUrl: one that names no
# entry is not a reference to anything (stored, it pointed nowhere and read as if it did).
BUNDLE_ONLY_REFERENCES = ("urn:uuid:", "urn:oid:")


class _Unresolved(Exception):
    """A urn reference that names no entry; `path` is filled in (innermost first) as the walk unwinds."""

    def __init__(self, reference: str) -> None:
        super().__init__(reference)
        self.reference = reference
        self.path: list[str | int] = []


class _References:
    """Rewrites a source's references (urn:uuid fullUrls, Type/id) to sharedcare's server ids."""

    def __init__(self, org: str, entries: list[tuple[str | None, dict[str, Any]]]) -> None:
        self.org = org
        self.by_full_url = {url: (res["resourceType"], str(res.get("id")))
                            for url, res in entries if url and res.get("id") is not None}
        # a logical reference (`subject.identifier`, no `reference`) to a Patient sent in the same message
        self.patient_by_identifier = {(i.get("system"), normalise(str(i.get("value")))): str(res["id"])
                                      for _, res in entries if res["resourceType"] == "Patient"
                                      for i in res.get("identifier") or [] if isinstance(i, dict) and i.get("value")}

    def resolve(self, reference: str) -> tuple[str, str] | None:
        """(type, source id) of a reference within this source; None if it points outside it."""
        if reference in self.by_full_url:
            return self.by_full_url[reference]
        parts = reference.split("/")
        if len(parts) == 2 and parts[0][:1].isupper() and not reference.startswith(("urn:", "#")):
            return parts[0], parts[1]
        return None

    def rewrite(self, node: dict[str, Any] | list[Any]) -> None:
        """Rewrite the references in `node` in place: it was parsed for this message alone and nothing reads
        the source's references after this (copying every object and array was a twentieth of staging).
        Only dicts and lists are walked into (a call per string and number was a tenth of staging). A urn
        reference that names no entry raises _Unresolved (the try costs nothing until it does)."""
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, dict | list):
                    try:
                        self.rewrite(value)
                    except _Unresolved as unresolved:
                        unresolved.path.append(key)
                        raise
            ref = node.get("reference")
            if isinstance(ref, str):
                target = self.resolve(ref)
                if target:
                    node["reference"] = f"{target[0]}/{server_id(self.org, target[0], target[1])}"
                elif ref.startswith(BUNDLE_ONLY_REFERENCES):
                    raise _Unresolved(ref)
        else:
            for index, item in enumerate(node):
                if isinstance(item, dict | list):
                    try:
                        self.rewrite(item)
                    except _Unresolved as unresolved:
                        unresolved.path.append(index)
                        raise


def stage_fhir(raw: RawMessage, fw: Framework, source_override: str | None = None,
               versioned: bool = False) -> StagedMessage:
    """Check and shape one FHIR message; raise MessageError on the first problem, located. `versioned`: a
    write over the REST API, whose entries may name the version they replace (`request.ifMatch`, checked
    by `ingest.contributions` as the write is stored); a file feed or a quarantine replay cannot."""
    data = parse_message(raw)
    org, system = _source_of(data, raw, fw, source_override)
    with sent_by(org):
        received = raw.received
        if data["resourceType"] == "Bundle":
            if data.get("type") not in BUNDLE_TYPES:
                raise MessageError(f"Bundle.type '{data.get('type')}' cannot be ingested "
                                   f"(expected one of {', '.join(sorted(BUNDLE_TYPES))})", raw.where)
            listed = data.get("entry") or []
            if not isinstance(listed, list):
                raise MessageError("Bundle.entry must be a list of entries", raw.where)
            repeated = repeated_entry(listed)
            if repeated:
                raise MessageError(repeated, raw.where)
            _check_requests(listed, raw, versioned)
            entries = [(e.get("fullUrl"), e.get("resource")) if isinstance(e, dict) else (None, None) for e in listed]
            message_time = bounded_event_time(_timestamp(data.get("timestamp"), received), received,
                                              f"{raw.where}, Bundle.timestamp")
            message_id = str(data.get("id") or f"{Path(raw.filename).name}:{raw.location}")
            label = "entry[{}]"
            if entry_index(raw) is not None:  # one entry of a split batch: its location already names it
                label = "resource"
        else:
            entries = [(None, data)]
            message_time = received
            message_id = f"{Path(raw.filename).name}:{raw.location}"
            label = "resource"
        staged = StagedMessage(source_org=org, source_system=system, message_id=message_id)
        kept: list[tuple[int, str | None, dict[str, Any]]] = []
        for index, (full_url, resource) in enumerate(entries):
            where = f"{raw.where}, {label.format(index)}"
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                raise MessageError("entry has no resource", where)
            if resource["resourceType"] not in RECORD_TYPES:
                staged.set_aside[resource["resourceType"]] += 1
                continue
            if not resource.get("id"):
                raise MessageError(f"{resource['resourceType']} has no id; the source's id is needed to "
                                   "recognise later updates", where)
            problems, issue = resource_problems(resource)
            if problems:
                raise MessageError(f"{resource['resourceType']}/{resource['id']}: {problems[0]}"
                                   + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), where,
                                   issue=issue)
            kept.append((index, full_url, resource))
        refs = _References(org, [(url, res) for _, url, res in kept])
        for index, _, resource in kept:
            where = f"{raw.where}, {label.format(index)} {resource['resourceType']}/{resource['id']}"
            source_id = str(resource["id"])
            if resource["resourceType"] == "Patient":
                numbers = nhs_numbers(resource)  # each a valid NHS number (uk_core_problems)
                staged.patients[source_id] = demographics(resource, numbers[0] if numbers else None)
                staged.merges += _replaced_by(resource, refs, org, where)
                patient_source_id = source_id
            else:
                patient_source_id = _patient_of(resource, refs, where)
            try:
                refs.rewrite(resource)
            except _Unresolved as unresolved:
                element = short_path((resource["resourceType"], *reversed(unresolved.path), "reference"))
                raise MessageError(f"{element} '{unresolved.reference}' names no entry of this message: a urn:uuid or "
                                   "urn:oid reference must be the fullUrl of an entry sent with it (send that entry, "
                                   "or reference the resource as Type/id)", where) from None
            content = resource  # its references rewritten: what is stored
            for name in PATIENT_FIELDS:  # a patient named by identifier only gets the literal reference too
                if isinstance(content.get(name), dict) and "reference" not in content[name]:
                    content[name]["reference"] = f"Patient/{server_id(org, 'Patient', patient_source_id)}"
            content["id"] = server_id(org, resource["resourceType"], source_id)
            meta = dict(content.get("meta") or {})
            meta["source"] = meta_source(org, system)
            content["meta"] = meta
            recorded = bounded_event_time(_timestamp(meta.get("lastUpdated"), message_time), received,
                                          f"{where}, meta.lastUpdated")
            staged.resources.append(StagedResource(resource["resourceType"], source_id, content["id"], content,
                                                   recorded, patient_source_id))
        return staged


def stage_fhir_write(raw: RawMessage, fw: Framework, source_override: str | None = None) -> StagedMessage:
    """A FHIR write over the REST API, as it is made (see `stage_fhir`)."""
    return stage_fhir(raw, fw, source_override, versioned=True)


# Conditional interactions (FHIR R4 RESTful API) that are not supported: refused, naming the element, rather
# than ignored (a write must not go ahead without the guard its sender asked for).
UNSUPPORTED_CONDITIONS = {"ifNoneExist": "conditional create", "ifNoneMatch": "a conditional read",
                          "ifModifiedSince": "a conditional read"}


def etag_version(value: object) -> int | None:
    """The version an ETag names (`W/"3"`, or `"3"`), or None when it names none."""
    version = value.strip().removeprefix("W/").strip('"') if isinstance(value, str) else ""
    return int(version) if version.isascii() and version.isdigit() else None  # isdigit alone passes "²"


def request_version(request: dict[str, Any], where: str) -> int | None:
    """The version a transaction or batch entry's update must replace (`request.ifMatch`), or None; a
    MessageError naming the element for a condition that cannot be honoured (a search in the URL,
    `ifNoneExist`, `ifNoneMatch`, `ifModifiedSince`, an `ifMatch` that is not a version or not on a PUT)."""
    url = str(request.get("url") or "")
    if "?" in url:
        kind = "update" if request.get("method") == "PUT" else "create"
        raise MessageError(f"request.url '{url}' is a conditional {kind} (a search): not supported; name the "
                           "resource as Type/id", f"{where}.request.url")
    for name, what in UNSUPPORTED_CONDITIONS.items():
        if request.get(name) is not None:
            raise MessageError(f"request.{name} ({what}) is not supported: send the entry without it",
                               f"{where}.request.{name}")
    if request.get("ifMatch") is None:
        return None
    version = etag_version(request["ifMatch"])
    if request.get("method") != "PUT" or version is None:
        raise MessageError(f"request.ifMatch '{request['ifMatch']}' is not supported: it names the version an update "
                           'replaces, as W/"<versionId>", on a PUT', f"{where}.request.ifMatch")
    return version


def _check_requests(entries: list[Any], raw: RawMessage, versioned: bool) -> None:
    """A transaction or batch entry's request must agree with its resource; deletes are not taken
    (a source withdraws a resource by sending it with status entered-in-error, so history is kept), nor
    conditions (`request_version`); a version named (`ifMatch`) only in a write over the REST API."""
    for index, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            continue
        where = f"{raw.where}, entry[{entry_index(raw) if entry_index(raw) is not None else index}]"
        method, url = request.get("method"), str(request.get("url") or "")
        if method == "DELETE":
            raise MessageError("DELETE is not accepted: send the resource again with status (or verificationStatus)"
                               " entered-in-error, so that its history is kept", where)
        if method not in ("POST", "PUT"):
            raise MessageError(f"request.method '{method}' is not accepted here (POST or PUT)", where)
        if request_version(request, where) is not None and not versioned:
            raise MessageError("request.ifMatch is honoured only in a write over the FHIR REST API, as it is made: "
                               "a file feed (or a replay) is ordered by event time, not by versions",
                               f"{where}.request.ifMatch")
        resource = entry.get("resource")
        if method == "PUT" and isinstance(resource, dict):
            expected = f"{resource.get('resourceType')}/{resource.get('id')}"
            if url != expected:
                raise MessageError(f"request.url '{url}' does not name the entry's resource ({expected})", where)


def _replaced_by(patient: dict[str, Any], refs: _References, org: str, where: str) -> list[tuple[str, str, str]]:
    """The merges a Patient states (`link` of type replaced-by): its source retired this record for another of its
    own, merged as an HL7 A40 merges them (retired, surviving, the element naming it). Only a Patient of the same
    source can be the surviving record: a reference to another server, to another type, or to this Patient
    itself is refused here; one to a Patient the source has not sent (another organisation's server id among
    them) is refused when stored, the message held in quarantine naming the element."""
    merges = []
    for n, link in enumerate(patient.get("link") or []):
        if not isinstance(link, dict) or link.get("type") != "replaced-by":
            continue
        element = f"Patient.link[{n}].other"
        reference = (link.get("other") or {}).get("reference")
        target = refs.resolve(reference) if isinstance(reference, str) else None
        if target is None or target[0] != "Patient" or target[1] == str(patient["id"]):
            raise MessageError(f"{element} '{reference}': a Patient replaced-by must name another Patient of {org} "
                               "(its merge is made between one source's own records); not merged",
                               f"{where}, {element}")
        merges.append((str(patient["id"]), target[1], f"{where}, {element}"))
    return merges


def _patient_of(resource: dict[str, Any], refs: _References, where: str) -> str:
    for name in PATIENT_FIELDS:
        ref = (resource.get(name) or {}).get("reference")
        if isinstance(ref, str):
            target = refs.resolve(ref)
            if target is None or target[0] != "Patient":
                raise MessageError(f"{name}.reference '{ref}' does not name a Patient of this source", where)
            return target[1]
        identifier = (resource.get(name) or {}).get("identifier")
        if isinstance(identifier, dict):
            key = (identifier.get("system"), normalise(str(identifier.get("value"))))
            if key not in refs.patient_by_identifier:
                raise MessageError(f"{name}.identifier {key[0]}|{key[1]} names no Patient sent in this message "
                                   "(send the Patient with it, or a literal reference)", where)
            return refs.patient_by_identifier[key]
    raise MessageError("no subject or patient reference: every record item must belong to a patient", where)
