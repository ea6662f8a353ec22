"""FHIR XML in: a resource or Bundle in the FHIR XML format becomes the same JSON dict a JSON feed gives.

fhir.resources (with lxml, its `xml` extra) does the mapping from XML to its models; this module adds
what a feed needs around it: a parser that never fetches or expands anything (no DTD, no external
entities, no network: XML from another system is untrusted input), a check of what that mapping would
silently drop or get wrong (`_check`), and errors located by line and column, or by element path when
the XML is well formed but not valid FHIR.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any
from xml.parsers import expat

from fhir.resources import R4B
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.utils import determine_version_prefix, get_fhir_type_name, is_list_type
from lxml import etree
from pydantic import ValidationError

from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.fhir.validate import MAX_NESTING, _path, short_path, too_deep
from sharedcare.ingest.messages import MessageError

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"  # schema hints (xsi:schemaLocation): no data
_LIBXML2_DEPTH = 256  # elements libxml2 nests before it refuses a document (without XML_PARSE_HUGE)


def looks_like_xml(payload: bytes) -> bool:
    return payload.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=True, remove_pis=True)


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
    try:
        _check(root, model, (name.localname,))
    except _Refused as refused:
        line, column = _position(payload, root, refused.element)
        raise MessageError(f"{short_path(refused.path)} (line {line} column {column}): {refused.why}", where) from None
    set_aside = _take_out_unused(root) if name.localname == "Bundle" else {}
    try:
        resource = model.model_validate_xml(etree.tostring(root), xmlparser=_parser())
    except ValidationError as exc:
        raise MessageError(_locate(root) or _first(name.localname, exc, root), where) from exc
    except KeyError as exc:  # fhir.resources' XML walker meets what it cannot place (`_check` names the rest)
        if exc.args[0] is None:  # it looks for the default namespace
            raise MessageError(f"FHIR XML written with a namespace prefix (<{root.prefix}:{name.localname}>) is not "
                               f'read: declare FHIR\'s namespace as the default (xmlns="{FHIR_NS}")', where) from exc
        raise MessageError(f"{name.localname}: unknown element <{exc.args[0]}>", where) from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise MessageError(f"{name.localname}: not valid FHIR XML ({str(exc)[:200]})", where) from exc
    data: dict[str, Any] = json.loads(resource.model_dump_json())
    for index, stub in set_aside.items():
        data["entry"][index]["resource"] = stub
    return data


class _Refused(Exception):
    """An element fhir.resources would read wrongly or drop: where it is, and why."""

    def __init__(self, element: etree._Element, path: tuple[Any, ...], why: str) -> None:
        super().__init__(why)
        self.element, self.path, self.why = element, path, why


_VERSION = determine_version_prefix(R4B.__name__)


@cache
def _elements(model: type) -> dict[str, tuple[bool, str]]:
    """The elements a FHIR type has, by XML name: whether each repeats, and its type ('date', 'xhtml',
    'HumanName', 'PatientContact', 'Resource'...). From fhir.resources' own fields, which know every element."""
    fields = model.model_fields  # type: ignore[attr-defined]
    return {alias: (is_list_type(fields[name]), get_fhir_type_name(fields[name], prefix=_VERSION))
            for alias, name in model.get_alias_mapping().items()}  # type: ignore[attr-defined]


def _check(element: etree._Element, model: type, path: tuple[Any, ...]) -> None:
    """Refuse (_Refused) what fhir.resources reads without a word but wrongly: a value given as text, not in
    the `value` attribute (dropped), an element that does not repeat given twice (the last one kept), an
    element or attribute outside FHIR (read as FHIR, or dropped), or an unknown element (a KeyError, unplaced).
    Walks `element`, of the FHIR type `model`, and all it holds but xhtml narrative (`fhir.checks` reads that)
    and the resources a Bundle sets aside (never read)."""
    elements = _elements(model)
    _attributes(element, path, ("id", "url") if model.__name__ == "Extension" else ("id",))
    if element.text is not None and not element.text.isspace():
        raise _Refused(element, path, _TEXT)
    counts: dict[str, int] = {}
    for child in element:
        tag = child.tag
        if not isinstance(tag, str):  # a processing instruction (comments are not parsed)
            continue
        if child.tail is not None and not child.tail.isspace():
            raise _Refused(element, path, _TEXT)
        name = tag[_FHIR_LENGTH:] if tag.startswith(_IN_FHIR) else "div" if tag == _XHTML_DIV else ""
        known = elements.get(name)
        if known is None:
            raise _Refused(child, path, _unknown(child, model))
        repeats, kind = known
        count = counts[name] = counts.get(name, 0) + 1
        if count > 1 and not repeats:
            raise _Refused(child, (*path, name), f"<{name}> is given {count} times, but {model.__name__}.{name} "
                                                 "takes one value: only the last would be kept")
        if kind[0].islower():  # a primitive: its value in the attribute, perhaps extensions inside; or xhtml
            if (kind == "xhtml") != (tag == _XHTML_DIV):
                raise _Refused(child, path, _unknown(child, model))
            if kind != "xhtml":
                _primitive(child, (*path, name, count - 1) if repeats else (*path, name))
        elif kind == "Resource":
            _resource(child, (*path, name, count - 1) if repeats else (*path, name),
                      within_bundle=model.__name__ == "BundleEntry")
        else:
            _check(child, get_fhir_model_class(kind), (*path, name, count - 1) if repeats else (*path, name))


_TEXT = ("holds text: in FHIR XML a value is in an element's value attribute and every part is an element; the text "
         "would be lost")


def _unknown(element: etree._Element, model: type) -> str:
    """Why an element `model` does not have is refused, by its name and namespace."""
    name = etree.QName(element)
    if name.localname == "div" and "div" in _elements(model):
        return f"a narrative is an xhtml <div> ({XHTML_NS}), not a FHIR element"
    if name.namespace == FHIR_NS:
        return f"unknown element <{name.localname}>: {model.__name__} has no such element"
    if name.namespace == XHTML_NS and name.localname == "div":
        return f"{model.__name__} has no narrative <div> (a Narrative, `text`, has)"
    where = f"in the namespace {name.namespace}" if name.namespace else "in no namespace"
    return (f"<{name.localname}> is {where}, not FHIR's ({FHIR_NS}): it would be read as if it were FHIR; "
            "only a narrative's <div> is xhtml")


def _primitive(element: etree._Element, path: tuple[Any, ...]) -> None:
    """A value (`<birthDate value="..."/>`): in its attribute, never text; only extensions inside it."""
    _attributes(element, path, ("id", "value"))
    if element.text is not None and not element.text.isspace():
        name = etree.QName(element).localname
        raise _Refused(element, path, f'<{name}> holds text: its value goes in the value attribute, <{name} '
                                      'value="..."/>; the text would be lost')
    for inner in element:
        if inner.tail is not None and not inner.tail.isspace():
            raise _Refused(element, path, _TEXT)
        if isinstance(inner.tag, str):
            if inner.tag != _IN_FHIR + "extension":
                raise _Refused(inner, path, f"<{etree.QName(element).localname}> is a value (in its value attribute):"
                                            f" it holds only extensions, not <{etree.QName(inner).localname}>")
            _check(inner, get_fhir_model_class("Extension"), (*path, "extension"))


_IN_FHIR = f"{{{FHIR_NS}}}"
_FHIR_LENGTH = len(_IN_FHIR)
_XHTML_DIV = f"{{{XHTML_NS}}}div"


def _attributes(element: etree._Element, path: tuple[Any, ...], allowed: tuple[str, ...]) -> None:
    for attribute in element.keys():
        if attribute not in allowed and not attribute.startswith(f"{{{_XSI_NS}}}"):
            name = etree.QName(attribute)
            said = f"{{{name.namespace}}}{name.localname}" if name.namespace else name.localname
            raise _Refused(element, path, f"the attribute {said} is not FHIR XML ({', '.join(allowed)} only "
                                          "here): what it holds would be lost")


def _resource(holder: etree._Element, path: tuple[Any, ...], within_bundle: bool) -> None:
    """A resource inside another (a Bundle entry's, a contained one): one element, naming its type."""
    _attributes(holder, path, ("id",))
    inner = [child for child in holder if isinstance(child.tag, str)]
    if len(inner) != 1 or (holder.text is not None and not holder.text.isspace()) \
            or any(child.tail is not None and not child.tail.isspace() for child in holder):
        raise _Refused(holder, path, f"<{etree.QName(holder).localname}> holds one resource, and nothing else "
                                     f"({len(inner)} elements here): the rest would be lost")
    (resource,) = inner
    tag = resource.tag
    resource_type = tag[len(_IN_FHIR):] if tag.startswith(_IN_FHIR) else None
    if within_bundle and resource_type not in RECORD_TYPES:
        return  # set aside, never read (`_take_out_unused`)
    if resource_type is None:
        raise _Refused(resource, path, f"<{etree.QName(resource).localname}> is not in FHIR's namespace "
                                       f"({FHIR_NS}): it would be read as if it were FHIR")
    try:
        model = get_fhir_model_class(resource_type)
    except (ValueError, KeyError):
        raise _Refused(resource, path, f"<{resource_type}> is not a FHIR R4 resource type") from None
    if within_bundle:  # named as other errors of a Bundle's entries are: `entry[2] Condition.code`
        _check(resource, model, (f"entry[{path[-2]}] {resource_type}",))
    else:
        _check(resource, model, (*path, resource_type))


class _Found(Exception):
    pass


def _position(payload: bytes, root: etree._Element, element: etree._Element) -> tuple[int, int]:
    """Line and column (from 1) where `element`'s start tag opens: lxml keeps only the line, so, for an error
    only, expat reads the document again up to that element (a DOCTYPE, and so any entity, is refused before)."""
    target = next(index for index, found in enumerate(root.iter(etree.Element)) if found is element)
    parser, seen = expat.ParserCreate(), [0]

    def start(*_: Any) -> None:
        if seen[0] == target:
            raise _Found(parser.CurrentLineNumber, parser.CurrentColumnNumber + 1)
        seen[0] += 1

    parser.StartElementHandler = start
    try:
        parser.Parse(payload, True)
    except _Found as found:
        return found.args[0], found.args[1]
    except expat.ExpatError:
        pass
    return element.sourceline or 0, 0


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
