"""FHIR `batch` bundles: each entry stands or falls on its own (FHIR R4 3.1.0.11.1).

A transaction (and any other bundle) is one message: stored whole or quarantined whole, naming the
entry at fault. A batch is split here into one message per entry, so the pipeline stores the good
entries and quarantines each bad one with its own reason and index. Entries of a batch have no
interdependencies by the spec's rule, but senders do point at a patient in the same batch by its
`urn:uuid` fullUrl, so each entry's references to other entries are rewritten to `Type/id` (which the
pipeline resolves within the sender's records) and Patient entries go first, each surviving Patient before
the Patients it replaces (`Patient.link` replaced-by), so a merge finds both stored. A batch whose fullUrls
repeat, or that carries one resource (type and id) twice, is not split: it is refused whole (`repeated_entry`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.ingest.messages import MessageError, RawMessage

_ENTRY_LOCATION = re.compile(r"entry\[(\d+)\]$")


def entry_index(raw: RawMessage) -> int | None:
    """The index in its batch of the entry a split message holds; None for a whole message."""
    found = _ENTRY_LOCATION.search(raw.location)
    return int(found.group(1)) if found else None


def repeated_full_url(entries: list[Any]) -> str | None:
    """Why a Bundle whose entries share a fullUrl is refused (FHIR's bdl-7), naming the first two; None when
    each is unique. A reference to a repeated fullUrl would be resolved to one of them, maybe the wrong
    patient's, so none of the Bundle is taken."""
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        url = entry.get("fullUrl") if isinstance(entry, dict) else None
        if not isinstance(url, str):
            continue
        if url in seen:
            return (f"entry[{seen[url]}] and entry[{index}] have the same fullUrl '{url}': a reference to it could "
                    "name either, and FHIR requires each entry's fullUrl to be unique in a Bundle (bdl-7); "
                    "nothing of this Bundle is stored")
        seen[url] = index
    return None


def repeated_resource(entries: list[Any]) -> str | None:
    """Why a Bundle carrying one resource (type and id) in two entries is refused, naming the first two; None
    when none repeats. Stored apart (a batch's entries are), the second would overwrite the first, and what
    refers to either, by fullUrl or by Type/id, would be filed under the one left: maybe another patient."""
    seen: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") not in RECORD_TYPES \
                or resource.get("id") in (None, ""):
            continue
        key = (str(resource["resourceType"]), str(resource["id"]))
        if key in seen:
            return (f"{key[0]}/{key[1]} is sent twice, in entry[{seen[key]}] and entry[{index}]: one would be stored "
                    "over the other, and what refers to either filed under the one left; send each resource once, "
                    "under its own id; nothing of this Bundle is stored")
        seen[key] = index
    return None


def repeated_entry(entries: list[Any]) -> str | None:
    """Why a Bundle is refused whole for entries that cannot be told apart (`repeated_full_url`,
    `repeated_resource`); None when each entry is its own."""
    return repeated_full_url(entries) or repeated_resource(entries)


def _survivors_first(entries: list[Any], targets: dict[str, str]) -> dict[int, int]:
    """For each Patient entry, how many replaced-by links lead on from it to other Patients of the batch: a
    survivor 0, a record it replaced 1, one replaced by that 2... Stored in that order, each merge finds the
    Patient it names already stored (a cycle, refused when merged, is cut after as many steps as Patients)."""
    indexes = [index for index, entry in enumerate(entries) if isinstance(entry, dict)
               and isinstance(entry.get("resource"), dict) and entry["resource"].get("resourceType") == "Patient"]
    patients = {f"Patient/{entries[index]['resource'].get('id')}": index for index in indexes}
    successor: dict[int, int] = {}
    for index in indexes:
        links = entries[index]["resource"].get("link")
        for link in links if isinstance(links, list) else []:
            other = link.get("other") if isinstance(link, dict) and link.get("type") == "replaced-by" else None
            reference = other.get("reference") if isinstance(other, dict) else None
            if isinstance(reference, str) and targets.get(reference, reference) in patients:
                successor[index] = patients[targets.get(reference, reference)]
    rank = {}
    for index in indexes:
        steps, at = 0, index
        while at in successor and steps < len(patients):
            steps, at = steps + 1, successor[at]
        rank[index] = steps
    return rank


def _targets(entries: list[Any]) -> dict[str, str]:
    targets = {}
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        url = entry.get("fullUrl") if isinstance(entry, dict) else None
        if isinstance(url, str) and isinstance(resource, dict) and resource.get("id") and resource.get("resourceType"):
            targets[url] = f"{resource['resourceType']}/{resource['id']}"
    return targets


def _rewrite(node: Any, targets: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {key: _rewrite(value, targets) for key, value in node.items()}
        if isinstance(node.get("reference"), str) and node["reference"] in targets:
            out["reference"] = targets[node["reference"]]
        return out
    if isinstance(node, list):
        return [_rewrite(item, targets) for item in node]
    return node


def split_batch(raw: RawMessage, data: dict[str, Any]) -> list[RawMessage] | None:
    """One message per entry of a batch Bundle (Patients first, survivors before the records they replace),
    or None when `data` is not a batch or is refused whole (`repeated_entry`)."""
    if data.get("resourceType") != "Bundle" or data.get("type") != "batch":
        return None
    entries = data.get("entry")
    if not isinstance(entries, list) or not entries or repeated_entry(entries):
        return None
    targets = _targets(entries)
    envelope = {key: value for key, value in data.items() if key != "entry"}
    patients = _survivors_first(entries, targets)
    order = sorted(range(len(entries)), key=lambda i: (i not in patients, patients.get(i, 0), i))
    parts = []
    for index in order:
        part = {**envelope, "entry": [_rewrite(entries[index], targets)]}
        parts.append(RawMessage(raw.filename, f"{raw.location}, entry[{index}]",
                                json.dumps(part, separators=(",", ":")).encode(), raw.format))
    return parts


def messages_of(raw: RawMessage, parse: Callable[[RawMessage], dict[str, Any]]) -> Iterator[RawMessage]:
    """The messages in one received message: its batch entries, or itself. `parse` turns the payload into
    a dict (JSON or XML); a payload it cannot parse is passed on whole, for staging to report."""
    if b"batch" not in raw.payload:  # cheap test first: most messages are not batches
        yield raw
        return
    try:
        data = parse(raw)
    except MessageError:  # staging parses it again and reports the problem, located
        yield raw
        return
    yield from split_batch(raw, data) or [raw]
