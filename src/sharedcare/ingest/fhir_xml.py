"""FHIR XML in: a resource or Bundle in the FHIR XML format becomes the same JSON dict a JSON feed gives.

fhir.resources (with lxml, its `xml` extra) does the mapping from XML to its models; this module adds
what a feed needs around it: a parser that never fetches or expands anything (no DTD, no external
entities, no network: XML from another system is untrusted input), and errors located by line and
column, or by element path when the XML is well formed but not valid FHIR.
"""

from __future__ import annotations

import json
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from lxml import etree
from pydantic import ValidationError

from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.fhir.validate import MAX_NESTING, _path, short_path, too_deep
from sharedcare.ingest.messages import MessageError

FHIR_NS = "http://hl7.org/fhir"
_LIBXML2_DEPTH = 256  # elements libxml2 nests before it refuses a document (without XML_PARSE_HUGE)


def looks_like_xml(payload: bytes) -> bool:
    return payload.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=True)


def parse_xml(payload: bytes, where: str) -> dict[str, Any]:
    """The FHIR resource in `payload` as a JSON-shaped dict; MessageError naming line and column or element."""
    try:
        root = etree.fromstring(payload, parser=_parser())
    except etree.XMLSyntaxError as exc:
        line, column = exc.position if exc.position else (exc.lineno, 0)
        if exc.msg.startswith("Excessive depth in document"):  # libxml2's own limit (no huge_tree): 256
            raise MessageError(too_deep(f"more than {_LIBXML2_DEPTH}", f"line {line} column {column}"), where) from exc
        raise MessageError(f"invalid XML at line {line} column {column}: {exc.msg}", where) from exc
    depth, deepest = _nesting(root)
    if depth > MAX_NESTING:  # the JSON path's limit (`fhir.validate`): the model runs out of stack at some 130
        names = [etree.QName(e).localname for e in reversed([deepest, *deepest.iterancestors()])]
        raise MessageError(too_deep(depth, f"{short_path(tuple(names))} (line {deepest.sourceline})"), where)
    doctype = root.getroottree().docinfo.doctype
    if doctype:
        raise MessageError("XML with a DOCTYPE is refused (FHIR XML has none; entities are not expanded)", where)
    name = etree.QName(root)
    if name.namespace != FHIR_NS:
        raise MessageError(f"not FHIR XML: the root element <{name.localname}> is not in the {FHIR_NS} namespace "
                           f"(line {root.sourceline})", where)
    try:
        model = get_fhir_model_class(name.localname)
    except (ValueError, KeyError) as exc:
        raise MessageError(f"<{name.localname}> is not a FHIR R4 resource type", where) from exc
    if name.localname not in RECORD_TYPES and name.localname != "Bundle":
        return _set_aside_stub(root)
    set_aside = _take_out_unused(root) if name.localname == "Bundle" else {}
    try:
        resource = model.model_validate_xml(etree.tostring(root), xmlparser=_parser())
    except ValidationError as exc:
        raise MessageError(_locate(root) or _first(name.localname, exc, root), where) from exc
    except KeyError as exc:  # fhir.resources' XML walker meets an element its model does not have
        raise MessageError(f"{name.localname}: unknown element <{exc.args[0]}>", where) from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise MessageError(f"{name.localname}: not valid FHIR XML ({str(exc)[:200]})", where) from exc
    data: dict[str, Any] = json.loads(resource.model_dump_json())
    for index, stub in set_aside.items():
        data["entry"][index]["resource"] = stub
    return data


def _nesting(root: etree._Element) -> tuple[int, etree._Element]:
    """How many elements with elements inside them (a JSON object each) nest from the root (itself 1), and the
    deepest of them. Without recursion, as `fhir.validate.nesting` measures JSON."""
    deepest, at = 0, root
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        children = [child for child in element if isinstance(child.tag, str)]  # not comments
        if not children:
            continue
        if depth > deepest:
            deepest, at = depth, element
        stack.extend((child, depth + 1) for child in children)
    return deepest, at


def _first(resource_type: str, exc: ValidationError, element: etree._Element) -> str:
    """The first problem, with the line of the element at fault (or of the resource holding it)."""
    errors = exc.errors()
    loc = tuple(errors[0]["loc"])
    at_fault = element.find(f"{{{FHIR_NS}}}{loc[0]}") if loc and isinstance(loc[0], str) else None
    line = (at_fault if at_fault is not None else element).sourceline
    return (f"{resource_type}.{_path(loc)} (line {line}): {errors[0]['msg']}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))


def _locate(bundle: etree._Element) -> str | None:
    """Which entry of a Bundle is invalid, and where: fhir.resources builds nested resources as it goes, so
    its error for a Bundle names the Bundle only; each entry's resource is checked alone to say which."""
    if etree.QName(bundle).localname != "Bundle":
        return None
    for index, entry in enumerate(bundle.iterfind(f"{{{FHIR_NS}}}entry")):
        holder = entry.find(f"{{{FHIR_NS}}}resource")
        if holder is None or not len(holder):
            continue
        inner = holder[0]
        resource_type = etree.QName(inner).localname
        try:
            get_fhir_model_class(resource_type).model_validate_xml(etree.tostring(inner), xmlparser=_parser())
        except ValidationError as exc:
            return f"entry[{index}] {_first(resource_type, exc, inner)}"
        except (KeyError, ValueError, TypeError, AttributeError):
            return f"entry[{index}] {resource_type} (line {inner.sourceline}): not valid FHIR XML"
    return None


def _set_aside_stub(element: etree._Element) -> dict[str, Any]:
    """Just enough of a resource the record does not use (a US Claim...) for it to be set aside and counted:
    it is neither validated nor kept, so it can never be the reason a feed is refused."""
    found = element.find(f"{{{FHIR_NS}}}id")
    stub: dict[str, Any] = {"resourceType": etree.QName(element).localname}
    if found is not None and found.get("value"):
        stub["id"] = found.get("value")
    return stub


def _take_out_unused(bundle: etree._Element) -> dict[int, dict[str, Any]]:
    """Swap each entry's resource of a type the record does not use for a placeholder (so the Bundle's own
    validation cannot fail on it), returning what to put back, by entry index, after conversion."""
    taken: dict[int, dict[str, Any]] = {}
    for index, entry in enumerate(bundle.iterfind(f"{{{FHIR_NS}}}entry")):
        holder = entry.find(f"{{{FHIR_NS}}}resource")
        inner = holder[0] if holder is not None and len(holder) else None
        if inner is None or etree.QName(inner).localname in RECORD_TYPES:
            continue
        taken[index] = _set_aside_stub(inner)
        holder.replace(inner, etree.fromstring(_PLACEHOLDER))
    return taken


_PLACEHOLDER = f'<Basic xmlns="{FHIR_NS}"><code><text value="set aside"/></code></Basic>'.encode()
