"""Structural validation of FHIR R4 resources with the `fhir.resources` models.

fhir.resources 8 ships R5 by default plus R4B; R4B is the nearest to R4 and identical for the resource
types the record keeps, so it is what we validate against. Problems come back located, as
`entry[3] Condition.code.coding[0].code: Input should be a valid string`.

`walked_problems` is the same verdict reached faster, for FHIR from sources and for our HL7 mapper's output:
`surely_valid` walks the resource against the same models' fields and checks each value with the same
pydantic validator the model uses for it, and the model is run in full only when the walk cannot vouch for
the resource (then it also words the problems, so a refusal reads exactly as before). Model validation was
over half of staging an HL7 message and 64% of a FHIR staging worker, most of it fhir_core's Python
validators per element.
"""

from __future__ import annotations

import decimal
import json
import types
import typing
from importlib.metadata import version
from typing import Annotated, Any, get_args, get_origin

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import Base64Binary, FhirBase, Xhtml
from pydantic import TypeAdapter, ValidationError


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# Objects (elements) a resource may nest, counting the resource itself: the model runs out of stack at some
# 130-150 (a RecursionError, which named neither the depth nor where), and real resources nest under 15.
MAX_NESTING = 64


def too_deep(depth: int | str, where: str, levels: str = "levels") -> str:
    """A resource or message nested deeper than MAX_NESTING, in words: how deep, where, and the limit."""
    return (f"{where}: nested {depth} {levels} deep, more than the {MAX_NESTING} levels a resource may nest "
            "(real ones nest under 15); it is not read")


def nesting(node: dict[str, Any]) -> tuple[int, tuple[Any, ...]]:
    """How many objects deep `node` nests (itself 1), and the path to its deepest object. Without recursion:
    a resource nested deeper than Python's stack must still be measured."""
    deepest: tuple[int, tuple[Any, ...]] = (1, ())
    stack: list[tuple[dict[str, Any], int, tuple[Any, ...]]] = [(node, 1, ())]
    while stack:
        current, depth, path = stack.pop()
        if depth > deepest[0]:
            deepest = (depth, path)
        for key, value in current.items():
            if isinstance(value, dict):
                stack.append((value, depth + 1, (*path, key)))
            elif isinstance(value, list):
                stack.extend((item, depth + 1, (*path, key, index)) for index, item in enumerate(value)
                             if isinstance(item, dict))
    return deepest


def short_path(loc: tuple[Any, ...]) -> str:
    """`_path`, with a run of one step repeated (`extension[0]` 150 times) written once with its count."""
    steps: list[str] = []
    for part in loc:
        if isinstance(part, int) and steps:
            steps[-1] += f"[{part}]"
        else:
            steps.append(str(part))
    runs: list[tuple[str, int]] = []
    for step in steps:
        if runs and runs[-1][0] == step:
            runs[-1] = (step, runs[-1][1] + 1)
        else:
            runs.append((step, 1))
    return ".".join(step if count < 3 else f"{step} ({count} times)" for step, count in runs)


def validation_problems(resource: dict[str, Any]) -> list[str]:
    """Return every structural problem in the resource (empty when it is valid FHIR). Nesting is measured
    here, where the walk did not vouch for the resource (it vouches for none deeper than _MAX_DEPTH)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return ["resourceType: missing"]
    try:
        model = get_fhir_model_class(resource_type)
    except ValueError:
        return [f"resourceType: '{resource_type}' is not a FHIR R4 resource type"]
    depth, where = nesting(resource)
    if depth > MAX_NESTING:
        return [too_deep(depth, ".".join(filter(None, [resource_type, short_path(where)])))]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [f"{resource_type}.{_path(tuple(err['loc']))}: {err['msg']}" for err in exc.errors()]
    except (KeyError, TypeError) as exc:
        # fhir_core 1.1 picks a nested resource's model (contained, a Bundle entry's) by looking its
        # resourceType up unchecked: a type it does not know, or not a string, raises instead of refusing
        return [f"{resource_type}: could not be validated; a resourceType inside it may not be a FHIR R4 "
                f"resource type ({type(exc).__name__}: {str(exc)[:80]})"]
    return []


def walked_problems(resource: dict[str, Any]) -> list[str]:
    """`validation_problems`, skipping the model when `surely_valid` vouches for the resource."""
    return [] if surely_valid(resource) else validation_problems(resource)


# --- the walk ------------------------------------------------------------------------------------------
# What the models check, and how the walk holds to it (fhir_core 1.1, pydantic 2): unknown keys are
# refused (extra="forbid"): the walk knows only the fields' aliases; nulls in lists of elements are refused
# (a "before" validator): the walk takes no null anywhere; each field's value is validated by its type: the
# walk runs that same type's pydantic validator on a primitive and walks an element's dict against its own
# model; required fields and choices of type (value[x]: at most one, or exactly one) are checked after
# construction: the walk checks them from the model's own lists. A primitive's extension (`_field`) is an
# element (FHIRPrimitiveExtension: id or extension required, its one validator of its own), and its lists
# keep nulls as placeholders (the model's null check skips them). Anything else (a model with another
# validator or its own __init__, a field of another kind such as contained resources, an empty list, a
# null elsewhere, a value of an unexpected Python type) is not vouched for, and the model decides.

# The walk mirrors fhir_core's own validators, read in this version: under any other it vouches for nothing
# and the model decides everything (slower, never less strict) until the walk is checked against it again.
_AUDITED_FHIR_CORE = "1.1.12"
_WALKS = version("fhir-core") == _AUDITED_FHIR_CORE
_VALIDATORS = {"reject_null_complex_elements", "validate_after_model_construction"}
# FHIRPrimitiveExtension's own validator (refuses one with neither id, extension nor fhir_comments), as
# read in this fhir.resources: under another, a primitive's extension is left to the model.
_AUDITED_FHIR_RESOURCES = "8.3.0"
_RESOURCES_AUDITED = version("fhir.resources") == _AUDITED_FHIR_RESOURCES
_PRIMITIVE_EXTENSION_VALIDATOR = "validate_extension_or_fhir_comment_required"
_BASE_VALIDATORS = FHIRAbstractModel.__pydantic_decorators__.model_validators
_SCALARS = (str, int, bool)  # values whose validity is a function of type and value, so a verdict is kept
# Verdicts kept per primitive type and Python type, only of small values (ASCII strings up to _CACHED_LENGTH,
# 64-bit ints): at most about 5 MB a primitive type (some 20 are met) per process, whatever a feed sends.
_CACHE_LIMIT = 20_000
_CACHED_LENGTH = 128
_INT_RANGE = range(-(2**63), 2**63)


class _Primitive:
    """A primitive field's own pydantic validator, and the values it has passed; and the JSON type FHIR
    gives its values (`json_types`), and whether the 1 MB limit on strings holds for it."""

    def __init__(self, annotation: Any) -> None:
        self.adapter: TypeAdapter[Any] = TypeAdapter(annotation, config=FHIRAbstractModel.model_config)
        base, *markers = get_args(annotation) if get_origin(annotation) is Annotated else (annotation,)
        self.json_types: tuple[type, ...] = ((bool,) if base is bool else (int,) if base is int
                                             else (int, float) if base is decimal.Decimal else (str,))
        self.limited = self.json_types == (str,) and not any(isinstance(m, Base64Binary | Xhtml) for m in markers)
        # the values passed, a set for each Python type a verdict is kept for (True == 1: never in one set);
        # looked up by the walk itself, `accepts` deciding only what is not there
        self.passed: dict[type, set[Any]] = {kind: set() for kind in _SCALARS}

    def accepts(self, value: Any) -> bool:
        kind = type(value)
        passed = self.passed.get(kind)
        if passed is None and kind is not float:
            return False
        if passed is not None and value in passed:
            return True
        try:
            self.adapter.validate_python(value)
        except ValidationError:
            return False
        if passed is not None and ((kind is int and value in _INT_RANGE) or kind is bool  # (no floats: -0.0 == 0.0)
                                   or (kind is str and len(value) <= _CACHED_LENGTH and value.isascii())):
            if len(passed) >= _CACHE_LIMIT:
                passed.clear()
            passed.add(value)
        return True


class _Model:
    """What the walk needs of one model class: its fields by JSON name, required fields, choices of type."""

    def __init__(self, cls: type[FHIRAbstractModel]) -> None:
        decorators = cls.__pydantic_decorators__
        # a primitive's extension: its own validator's rule is that one of these is present (not null)
        self.one_of = frozenset({"id", "extension"}) if _audited_primitive_extension(cls) else None
        own = {_PRIMITIVE_EXTENSION_VALIDATOR} if self.one_of else set()
        self.walkable = (cls.__init__ is FHIRAbstractModel.__init__
                         and set(decorators.model_validators) == _VALIDATORS | own
                         and all(_function(decorators.model_validators[name].func)
                                 is _function(_BASE_VALIDATORS[name].func) for name in _VALIDATORS)
                         and not decorators.field_validators and cls.model_config == FHIRAbstractModel.model_config)
        blank = cls.model_construct()
        fields = cls.model_fields
        self.fields: dict[str, _Kind] = {}
        for name, info in fields.items():
            kind = None if info.metadata else _kind(info.annotation)
            if kind is not None and name.endswith("__ext"):  # `_field`: only as a primitive's extension
                many, _, element, _ = kind
                kind = (many, None, element, True) if element and _audited_primitive_extension(element) else None
            if kind is not None and info.alias:  # a field without its alias is left to the model
                self.fields[info.alias] = kind
        # get_required_fields names elements as in JSON; model_fields and choices by their Python names
        self.required = frozenset({element for element, _ in blank.get_required_fields()}
                                  | {info.alias or name for name, info in fields.items() if info.is_required()})
        choices = blank.get_one_of_many_fields().values()
        self.choices = [(frozenset(fields[name].alias or name for name in names),
                         fields[names[0]].json_schema_extra["one_of_many_required"] is True)  # type: ignore[index]
                        for names in choices]


def _audited_primitive_extension(cls: type[FHIRAbstractModel]) -> bool:
    """FHIRPrimitiveExtension with the validator the walk mirrors, in the fhir.resources it was read in."""
    validator = cls.__pydantic_decorators__.model_validators.get(_PRIMITIVE_EXTENSION_VALIDATOR)
    return (_RESOURCES_AUDITED and cls.__name__ == "FHIRPrimitiveExtension" and validator is not None
            and _function(validator.func).__qualname__ == f"FHIRPrimitiveExtension.{_PRIMITIVE_EXTENSION_VALIDATOR}")


def _function(validator: Any) -> Any:
    """The function behind a validator (a classmethod's is bound to each class)."""
    return getattr(validator, "__func__", validator)


def _optional(annotation: Any) -> Any:
    """X from `X | None`; None for any other union."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        return args[0] if len(args) == 1 else None
    return annotation


_primitives: dict[Any, _Primitive] = {}
# repeats; a primitive's check, or an element; a list's nulls allowed (a primitive's extensions)
_Kind = tuple[bool, _Primitive | None, type[FHIRAbstractModel] | None, bool]


def _kind(annotation: Any) -> _Kind | None:
    """How the walk checks a field's value, or None for a field it leaves to the model."""
    inner = _optional(annotation)
    many = get_origin(inner) is list
    if many:
        inner = _optional(get_args(inner)[0])
    if isinstance(inner, type) and issubclass(inner, FhirBase):
        # an element type; element-or-resource types (contained) pick their model from the value: not walked
        return (many, None, inner.get_model_klass(), False) if inner.__mro__[1] is FhirBase else None
    if get_origin(inner) is Annotated or inner is bool:
        if inner not in _primitives:
            _primitives[inner] = _Primitive(inner)
        return many, _primitives[inner], None, False
    return None


_models: dict[type[FHIRAbstractModel], _Model] = {}


def _model(cls: type[FHIRAbstractModel]) -> _Model:
    model = _models.get(cls)
    if model is None:
        model = _models[cls] = _Model(cls)
    return model


def element_fields(cls: type[FHIRAbstractModel]) -> dict[str, tuple[bool, type[FHIRAbstractModel] | None]]:
    """A model's fields by JSON name, each as (repeats, its element's model or None for a primitive), as the
    walk reads them (fhir/value_sets.py finds its bound elements through them)."""
    return {name: (kind[0], kind[2]) for name, kind in _model(cls).fields.items()}


# Deeper than this the walk vouches for nothing: the model, which decides then, runs out of stack at some
# 130-150 levels of nesting (a RecursionError, quarantined as unreadable), and the walk must not accept what
# the model cannot read. Real resources nest under 15 levels.
_MAX_DEPTH = 32


def _walk(model: _Model, node: dict[str, Any], skip: str | None = None, depth: int = 0) -> bool:
    if not model.walkable or depth > _MAX_DEPTH:
        return False
    fields = model.fields
    for key, value in node.items():
        if key == skip:
            continue
        kind = fields.get(key)
        if kind is None:
            return False
        many, primitive, element, nulls = kind
        if many and (type(value) is not list or not value):
            return False
        if primitive is not None:  # a value passed before is passed here, without a call (most values are)
            passed = primitive.passed
            if many:
                for item in value:
                    known = passed.get(type(item))
                    if (known is None or item not in known) and not primitive.accepts(item):
                        return False
            else:
                known = passed.get(type(value))
                if (known is None or value not in known) and not primitive.accepts(value):
                    return False
        else:
            inner = _models.get(element) or _model(element)  # type: ignore[arg-type]
            for item in value if many else (value,):
                if type(item) is not dict or not _walk(inner, item, depth=depth + 1):
                    if item is None and nulls:
                        continue
                    return False
    if model.required and not model.required <= node.keys():
        return False
    if model.one_of is not None and not model.one_of & node.keys():
        return False
    for names, required in model.choices:
        present = 0
        for name in names:
            present += name in node
        if present > 1 or (required and not present):
            return False
    return True


# FHIR's JSON: a boolean is true or false, an integer or decimal a number, every other primitive a string, and
# "strings SHALL NOT exceed 1MB" (R4 datatypes, string).
MAX_STRING_BYTES = 1024 * 1024
_JSON_NAMES = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
               dict: "an object"}
_WANTED = {(bool,): "a boolean", (int,): "an integer", (int, float): "a number", (str,): "a string"}


def json_problems(resource: dict[str, Any]) -> list[str]:
    """What the model takes but FHIR JSON does not allow, by element: a number or boolean sent as a string
    (`"5.9"`, `"true"`: pydantic reads them, and they were stored and served back as strings, which is not
    FHIR), a string where a number belongs, and a string over 1 MB. Fields the walk leaves to the model
    are not looked at; a value the model refuses is refused by it first."""
    resource_type = resource.get("resourceType")
    model = _by_type.get(resource_type) if type(resource_type) is str else None
    if model is None and type(resource_type) is str:
        try:
            model = _by_type[resource_type] = _model(get_fhir_model_class(resource_type))
        except ValueError:  # not a resource type: the model has refused it already
            return []
    found = _json_problem(model, resource) if model is not None else None
    if found is None:
        return []
    path, problem = found
    return [f"{short_path((resource_type, *reversed(path)))}: {problem}"]


_by_type: dict[str, _Model] = {}  # the models of resource types met (looking one up took a third of the check)


def _json_problem(model: _Model, node: dict[str, Any]) -> tuple[list[Any], str] | None:
    """The first value of `node` FHIR JSON does not allow: its path (innermost first) and why."""
    fields = model.fields
    for key, value in node.items():
        kind = fields.get(key)
        if kind is None:
            continue
        many, primitive, element, _ = kind
        for index, item in enumerate(value if many and type(value) is list else (value,)):
            if primitive is not None:
                problem = _json_value_problem(primitive, item)
            elif type(item) is dict:
                found = _json_problem(_models.get(element) or _model(element), item)  # type: ignore[arg-type]
                if found is None:
                    continue
                path, problem = found
                return [*path, *((index, key) if many else (key,))], problem
            else:
                continue
            if problem is not None:
                return ([index, key] if many else [key]), problem
    return None


def _json_value_problem(primitive: _Primitive, value: Any) -> str | None:
    kind = type(value)
    if kind not in primitive.json_types:
        if value is None or kind not in _JSON_NAMES:
            return None  # a null, or not from JSON: for the model
        wanted = _WANTED[primitive.json_types]
        shown = f" ({json.dumps(value[:40] if kind is str else value)[:42]})" if kind in (str, int, float, bool) else ""
        return f"{_JSON_NAMES[kind]}{shown} where FHIR JSON has {wanted}: send it as {wanted}"
    if primitive.limited and len(value) > MAX_STRING_BYTES // 4 and len(value.encode("utf-8", "surrogatepass")) \
            > MAX_STRING_BYTES:
        return (f"a string of {len(value.encode('utf-8', 'surrogatepass')):,} bytes, more than FHIR's limit of "
                f"1 MB ({MAX_STRING_BYTES:,} bytes)")
    return None


def surely_valid(resource: dict[str, Any]) -> bool:
    """True only if the fhir.resources model would accept the resource; False when the walk cannot tell."""
    resource_type = resource.get("resourceType")
    if not _WALKS or type(resource_type) is not str:
        return False
    try:
        cls = get_fhir_model_class(resource_type)
    except ValueError:
        return False
    return cls.__resource_type__ == resource_type and _walk(_model(cls), resource, skip="resourceType")
