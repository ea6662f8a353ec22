"""FHIR R4 core invariants and the HL7 validator's security checks, which the models do not evaluate.

The fhir.resources models (and the walk in validate.py) decide structure, cardinality and datatypes; they
do not evaluate FHIRPath invariants, and nothing stops active content in narrative or strings. No Python
library evaluates FHIR's invariants offline (fhirpathpy evaluates expressions but not `htmlChecks()`, and
needs each element's type, which a plain resource dict lacks), so the rules the record relies on are
hand-written here, each from the R4 specification's text:

- ele-1: every element has a value or children (JSON: no {}, no "", no [], nor an element holding only an id);
- per-1: a Period's start is not after its end, compared at the precision both have (FHIRPath's rule:
  components present in both decide; "2024-01" against "2024-01-15" is not a violation);
- ext-1: an extension has value[x] or nested extensions, not both;
- txt-1 and txt-2: the narrative is XHTML (a div in the XHTML namespace) of the allowed elements and
  attributes only (narrative.html: no head, body, scripts, forms, base/link, frames, iframes, objects, event
  attributes, nor active URLs) and has some non-whitespace content; parsed with lxml, no DTD, no entities;
- dom-2, dom-4, dom-5, dom-3: a contained resource holds no contained ones, no meta.versionId, lastUpdated
  or security, and is referenced from elsewhere in the resource (or refers to its container);
- the validator's security checks on strings: markup that would run if shown (a script, frame, object or
  form tag, an event-handler attribute, a javascript: URL) is refused in any string;
- strings hold no control characters but tab, carriage return and line feed (the datatypes page: FHIR XML
  cannot carry them, PostgreSQL refuses a NUL, a terminal obeys an escape): an HL7 `\\X00\\` or a JSON
  `\\u0000` from a feed is refused naming the element (fifth security review, 2026-12-06); nor C1 controls
  (U+0080 to U+009F), which no text holds: they are another character set's bytes read as ISO 8859-1 (a UTF-8
  "ZOË" read so holds U+008B), refused rather than stored over a correct name (review of 2026-12-07).

Problems come back located as the structural ones are: `Condition.code.coding[0].code: ele-1: why`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from lxml import etree

XHTML = "http://www.w3.org/1999/xhtml"
MAX_DEPTH = 64  # deeper than any real resource; a deeper one is refused rather than walked
_PERIOD_KEYS = {"id", "extension", "start", "end", "_start", "_end"}
# narrative.html's allowed XHTML (the HL7 validator's list): everything else, scripts, forms, frames,
# objects, head, body, base, link, meta and style among them, is refused.
_ELEMENTS = {
    "a", "abbr", "acronym", "address", "area", "b", "bdo", "big", "blockquote", "br", "caption", "cite",
    "code", "col", "colgroup", "dd", "dfn", "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "i", "img", "kbd", "li", "map", "ol", "p", "pre", "q", "samp", "small", "span", "strong", "sub", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "ul", "var",
}
_ATTRIBUTES = {
    "title", "style", "class", "id", "lang", "{http://www.w3.org/XML/1998/namespace}lang", "dir", "accesskey",
    "tabindex", "href", "name", "src", "alt", "width", "height", "border", "align", "valign", "colspan",
    "rowspan", "span", "summary", "cellspacing", "cellpadding", "frame", "rules", "start", "type", "value",
    "scope", "abbr", "headers", "axis", "char", "charoff", "nowrap", "shape", "coords", "usemap", "cite",
    "datetime", "hreflang", "rel", "rev", "compact", "bgcolor", "clear", "hspace", "vspace",
}
_URL_ATTRIBUTES = {"href", "src", "cite", "usemap"}
_ACTIVE_URL = re.compile(r"^\s*(javascript|vbscript|data|livescript|mocha)\s*:", re.IGNORECASE)
_SAFE_DATA = re.compile(r"^\s*data\s*:\s*image/(png|jpeg|gif|webp|bmp)[;,]", re.IGNORECASE)
_ACTIVE_STYLE = re.compile(r"expression\s*\(|javascript\s*:|url\s*\(|@import|behavior\s*:", re.IGNORECASE)
# In a string (not markup, so matched as text, the way the validator's security check scans one): a tag
# that runs or embeds something, an event-handler attribute inside a tag, a script URL anywhere.
# Every string a source sends is searched, so the search must take time linear in the string: the obvious
# forms (`<\s*/?\s*` splits a run of spaces two ways; `<[a-z][^>]*\son...` scans from every '<' to the next
# '>' or the end) took seconds on tens of kilobytes. Here an event handler is looked for only back to the
# nearest tag opening, which finds one exactly when some earlier opening with no '>' since would: tested
# against those forms (tests/ingest/test_hostile_sizes.py).
_ACTIVE_STRING = re.compile(
    r"<\s*(?:/\s*)?(script|iframe|frame|frameset|object|embed|applet|form|input|button|base|link|meta|style|"
    r"svg|math|body|html|head)\b"
    r"|<[a-z](?:[^<>]|<(?![a-z]))*\son[a-z]+\s*="
    r"|(java|vb)script\s*:",
    re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x80-\x9f]")
_PARSER_OPTIONS = {"resolve_entities": False, "no_network": True, "load_dtd": False, "huge_tree": False,
                   "dtd_validation": False, "remove_comments": False}


def control_character(text: str) -> re.Match[str] | None:
    """The first control character a string may not hold (see the module's rule), or None."""
    return None if text.isprintable() else _CONTROL.search(text)


def active_content(text: str) -> bool:
    """Whether a string holds markup that would run if shown (the validator's security check on strings)."""
    # most strings have neither a '<' nor "script": those are passed without running the expression
    return ("<" in text or "cript" in text.lower()) and _ACTIVE_STRING.search(text) is not None


def invariant_problems(resource: dict[str, Any]) -> list[str]:
    """Every core invariant or security check the resource breaks, located (empty when none)."""
    problems: list[str] = []
    resource_type = str(resource.get("resourceType"))
    _element(resource, resource_type, problems, 0, resource_root=True)
    _contained(resource, resource_type, problems)
    return problems


def _string(value: str, where: str, problems: list[str]) -> None:
    """A string's problems; called for every string that is empty, holds markup or is not all printable (a
    line end, a control character, a non-breaking space: `str.isprintable` is the cheap first test)."""
    if value == "":
        problems.append(f"{where}: ele-1: an element has a value or children; an empty string has neither")
    elif control := control_character(value):
        problems.append(f"{where}: the string holds the control character U+{ord(control.group()):04X} at character "
                        f"{control.start() + 1}; strings hold none but tab, carriage return and line feed")
    elif active_content(value):
        problems.append(f"{where}: security: the string holds active content (script, frame, object, form, "
                        "event handler or script URL), refused as the FHIR validator's security checks do")


def _element(node: Any, where: str, problems: list[str], depth: int, resource_root: bool = False) -> None:
    """Check one element and what it holds; a path is only spelt out for what is not a string (strings,
    most of a resource, are checked where they stand and located only when refused)."""
    if depth > MAX_DEPTH:
        problems.append(f"{where}: ele-1: nested deeper than {MAX_DEPTH} levels")
        return
    if type(node) is str:
        _string(node, where, problems)
        return
    if isinstance(node, list):
        if not node:
            problems.append(f"{where}: ele-1: an element has a value or children; an empty array has neither")
        for index, item in enumerate(node):
            if type(item) is str:
                if item == "" or not item.isprintable() or active_content(item):
                    _string(item, f"{where}[{index}]", problems)
            elif isinstance(item, (dict, list)):
                _element(item, f"{where}[{index}]", problems, depth + 1)
        return
    if not isinstance(node, dict):
        return
    if not resource_root and (not node or (len(node) == 1 and "id" in node)):
        problems.append(f"{where}: ele-1: an element has a value or children; "
                        + ("an empty object has neither" if not node else "it holds only an id"))
        return
    for key, value in node.items():
        if type(value) is str:
            if key == "div" and where.endswith(".text"):
                _narrative(value, f"{where}.div", problems)
            elif value == "" or not value.isprintable() or active_content(value):
                _string(value, f"{where}.{key}", problems)
        elif key == "contained":
            continue  # each contained resource is checked as a resource of its own, by _contained
        elif isinstance(value, (dict, list)):
            if key == "extension" or key == "modifierExtension":
                _extensions(value, f"{where}.{key}", problems)
            _element(value, f"{where}.{key}", problems, depth + 1)
    if not resource_root and ("start" in node or "end" in node) and node.keys() <= _PERIOD_KEYS:
        _period(node, where, problems)


def _extensions(value: Any, where: str, problems: list[str]) -> None:
    for index, extension in enumerate(value if isinstance(value, list) else []):
        if isinstance(extension, dict) and extension.get("extension") and any(
                key.startswith("value") for key in extension):
            problems.append(f"{where}[{index}]: ext-1: an extension has value[x] or extensions, not both")


def _period(node: dict[str, Any], where: str, problems: list[str]) -> None:
    start, end = node.get("start"), node.get("end")
    if isinstance(start, str) and isinstance(end, str) and _after(start, end):
        problems.append(f"{where}: per-1: the period starts ({start}) after it ends ({end})")


_DATE_PARTS = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def _after(start: str, end: str) -> bool:
    """Whether start is surely after end: dates compare on the components both have (FHIRPath: a
    difference there decides, otherwise the comparison is empty and the invariant holds); two dateTimes
    with times compare as instants (a time has a zone in FHIR)."""
    if "T" in start and "T" in end:
        try:
            return datetime.fromisoformat(start.replace("Z", "+00:00")) > datetime.fromisoformat(
                end.replace("Z", "+00:00"))
        except ValueError:
            return False  # the datatype check words a malformed dateTime
    first, second = _DATE_PARTS.match(start.split("T")[0]), _DATE_PARTS.match(end.split("T")[0])
    if first is None or second is None:
        return False
    for a, b in zip(first.groups(), second.groups(), strict=True):
        if a is None or b is None:
            return False
        if a != b:
            return a > b
    return False  # the same day at day precision (one with a time, one without): not surely after


def _narrative(div: str, where: str, problems: list[str]) -> None:
    parser = etree.XMLParser(**_PARSER_OPTIONS)
    try:
        root = etree.fromstring(div.encode("utf-8"), parser)
    except etree.XMLSyntaxError as exc:
        problems.append(f"{where}: txt-1: the narrative is not well-formed XHTML ({str(exc)[:80]})")
        return
    if root.getroottree().docinfo.doctype or root.getroottree().docinfo.internalDTD is not None:
        problems.append(f"{where}: txt-1: the narrative declares a DTD, which XHTML narrative may not")
        return
    if root.tag != f"{{{XHTML}}}div":
        problems.append(f"{where}: txt-1: the narrative is one div in the XHTML namespace, not {root.tag}")
        return
    for element in root.iter():
        if not isinstance(element.tag, str):  # comments and processing instructions
            if isinstance(element, etree._ProcessingInstruction):
                problems.append(f"{where}: txt-1: processing instructions are not allowed in narrative")
            continue
        name = etree.QName(element).localname
        if etree.QName(element).namespace != XHTML or name not in _ELEMENTS:
            problems.append(f"{where}: txt-1: the element <{name}> is not allowed in narrative "
                            "(no scripts, forms, frames, objects, head, body, base, link, meta or style)")
            return
        for attribute, value in element.attrib.items():
            if attribute not in _ATTRIBUTES:
                problems.append(f"{where}: txt-1: the attribute {etree.QName(attribute).localname} on <{name}> "
                                "is not allowed in narrative (event attributes among others)")
                return
            if attribute in _URL_ATTRIBUTES and _ACTIVE_URL.match(value) and not (
                    name == "img" and _SAFE_DATA.match(value)):
                problems.append(f"{where}: txt-1: the {attribute} of <{name}> is an active URL ({value[:30]})")
                return
            if attribute == "style" and _ACTIVE_STYLE.search(value):
                problems.append(f"{where}: txt-1: the style of <{name}> loads or runs something ({value[:30]})")
                return
    if not "".join(root.itertext()).strip() and root.find(f".//{{{XHTML}}}img") is None:
        problems.append(f"{where}: txt-2: the narrative has no non-whitespace content")


def _contained(resource: dict[str, Any], where: str, problems: list[str]) -> None:
    contained = resource.get("contained")
    if not isinstance(contained, list):
        return
    references = set(_references({k: v for k, v in resource.items() if k != "contained"}))
    for item in contained:
        references.update(_references(item))
    for index, item in enumerate(contained):
        if not isinstance(item, dict):
            continue
        path = f"{where}.contained[{index}]"
        meta: dict[str, Any] = item["meta"] if isinstance(item.get("meta"), dict) else {}
        if "contained" in item:
            problems.append(f"{path}: dom-2: a contained resource holds no contained resources")
        if "versionId" in meta or "lastUpdated" in meta:
            problems.append(f"{path}: dom-4: a contained resource has no meta.versionId or meta.lastUpdated")
        if "security" in meta:
            problems.append(f"{path}: dom-5: a contained resource has no security labels")
        if f"#{item.get('id')}" not in references and "#" not in set(_references(item)):
            problems.append(f"{path}: dom-3: the contained resource is referenced from nowhere in its container")
        _element(item, f"{path}({item.get('resourceType')})", problems, 1, resource_root=True)


def _references(node: Any, depth: int = 0) -> list[str]:
    if depth > MAX_DEPTH:
        return []
    if isinstance(node, list):
        return [ref for item in node for ref in _references(item, depth + 1)]
    if not isinstance(node, dict):
        return []
    found = [node["reference"]] if isinstance(node.get("reference"), str) else []
    return found + [ref for key, value in node.items() if key != "reference"
                    for ref in _references(value, depth + 1)]
