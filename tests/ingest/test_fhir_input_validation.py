"""FHIR from sources is validated by `walked_problems` too: the walk vouches for a resource only when the
fhir.resources model would accept it, else the model decides and words the refusal. It must be exactly
as strict as the model on what sources send and mapper output never carries: primitive extensions
(`_field`), extensions and modifierExtension, contained resources, choices of type (value[x]), narrative
XHTML, nulls in arrays, empty objects and arrays, unknown elements, a resourceType that does not fit,
numbers as strings, big numbers, dates of every precision. Checked on real resources of every type and
source system the synthetic ICS sends: whole messages staged with the walk and with the model alone, and
value by value over every element.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.walk_check import same_as_the_model

from sharedcare.fhir.validate import MAX_NESTING, surely_valid, validation_problems
from sharedcare.governance.framework import Framework
from sharedcare.ingest.messages import MessageError, RawMessage
from sharedcare.ingest.pipeline import ADAPTERS, Pipeline
from sharedcare.ingest.staging import stage
from sharedcare.store.database import Database
from sharedcare.synth import generate

SETTINGS = settings(max_examples=1000, deadline=timedelta(seconds=10), derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NOW = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
Json = dict[str, Any]
Pick = Callable[[Sequence[Any]], Any]

# Dates and times of every precision FHIR has, and just past each rule: leap days and seconds, offsets to
# +14:00, fractions to nanoseconds, a time without its zone.
DATES = ["2026", "2026-09", "2026-09-28", "2024-02-29", "2026-02-29", "2026-9-28", "20260928", "0001-01-01",
         "9999-12-31", "2026-09-28T08", "2026-09-28T08:40", "2026-09-28T08:40Z", "2026-09-28T08:40:00",
         "2026-09-28T08:40:00Z", "2026-09-28T08:40:00.1Z", "2026-09-28T08:40:00.123456789+01:00",
         "2026-09-28T08:40:00+14:00", "2026-09-28T08:40:00+15:00", "2026-09-28T08:40:00-00:00",
         "2026-12-31T23:59:60Z", "2026-09-28T24:00:00Z", "2026-09-28 08:40:00Z", "08:40", "08:40:00", "24:00:00",
         "08:40:60", "08:40:00.5"]
# Strings the primitives refuse or only just accept, numbers as strings, big and odd numbers.
SCALARS: list[Any] = [" ", "\x0b", "\x1c", "\u00a0", " x", "x ", "a\x0bb", "", "a", "<b>x</b>", "x" * 300,
                      "Patient/x y", "http://a b", "urn:uuid:x", "5", "-5", "1.50", "1e3", " 5", "2147483648",
                      "true", "0x10", 0, -1, 5, 2**31, 2**63, 10**30, 10**400, 1.5, 5.0, 1e308, -0.0, True, False,
                      *DATES]
ODD: list[Any] = [None, [], {}, ["a"], {"a": 1}, [None], [{}], {"extension": []}]
XHTML = ['<div xmlns="http://www.w3.org/1999/xhtml"><p>Seen in clinic</p></div>',
         '<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></div>',
         '<div><img src="x" onerror="alert(1)"/></div>', "plain text", "", " ", "<div>", "\x00"]
EXTENSION_VALUES: list[Json] = [
    {"valueString": "a"}, {"valueString": ""}, {"valueCode": "a b"}, {"valueCode": "x"}, {"valueInteger": "5"},
    {"valueInteger": 2**31}, {"valueDecimal": 10**400}, {"valueDecimal": "1.5"}, {"valueBoolean": "yes"},
    {"valueDateTime": "2026"}, {"valueDateTime": "2026-09-28T08:40:00"}, {"valueInstant": "2026"},
    {"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}},
    {"valueCodeableConcept": {"coding": [None]}}, {"valueReference": {"reference": "Patient/1"}},
    {"valueString": "a", "valueBoolean": True}, {}, {"valueFoo": "a"}, {"valuestring": "a"},
    {"extension": [{"url": "http://x", "valueString": "a"}]}, {"extension": [{"valueString": "a"}]},
    {"valueString": None}]
CONTAINED: list[Any] = [
    {"resourceType": "Medication", "id": "m1", "code": {"text": "Metformin 500mg tablets"}},
    {"resourceType": "Medication", "id": "m1", "code": {"text": "x"}, "form": "tablet"},
    {"resourceType": "Practitioner", "id": "p1", "name": [{"family": "Kent"}]},
    {"resourceType": "Observation", "id": "o1"}, {"resourceType": "HumanName", "family": "x"},
    {"resourceType": "NoSuchType"}, {"resourceType": "patient"}, {"id": "x"}, {}, None, "Medication",
    {"resourceType": "Medication", "contained": [{"resourceType": "Substance", "id": "s", "code": {"text": "x"}}]}]
KEYS = ["foo", "valueFoo", "_", "_foo", "resourceType", "resource_type", "fhir_comments", "class_fhir",
        "extension__ext", "id", "meta", "text", "contained", "modifierExtension", "value", "valueString"]
TYPES = ["Patient", "Observation", "Condition", "Basic", "patient", "Bundle", "NoSuchType", "", 5, None]


@pytest.fixture(scope="module")
def synth_bundles(tmp_path_factory: pytest.TempPathFactory, framework: Framework) -> list[Json]:
    """Every bundle a 150-person synthetic ICS's FHIR feeds send (each source system, each resource type)."""
    root = tmp_path_factory.mktemp("ics")
    generate(root, 150, 3, framework=framework)
    return [json.loads(line) for path in sorted(root.glob("*/fhir/*.ndjson"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _shape(node: Any) -> Any:
    if isinstance(node, dict):
        return tuple(sorted((key, _shape(value)) for key, value in node.items() if key != "id"))
    if isinstance(node, list):
        return tuple(sorted({_shape(value) for value in node}))
    return type(node).__name__


def _system(bundle: Json) -> str:
    return str(bundle["meta"]["source"]).rsplit("#", 1)[-1]


@pytest.fixture(scope="module")
def corpus(synth_bundles: list[Json]) -> list[Json]:
    """Real resources: for each source system and type it sends, the one with the most values."""
    shapes: dict[tuple[str, str], dict[Any, Json]] = {}
    for bundle in synth_bundles:
        for entry in bundle["entry"]:
            resource = entry["resource"]
            shapes.setdefault((_system(bundle), resource["resourceType"]), {}).setdefault(_shape(resource), resource)
    return [resource for _, found in sorted(shapes.items())
            for resource in sorted(found.values(), key=lambda r: -len(_leaves(r)))[:1]]


@pytest.fixture(scope="module")
def seeds(synth_bundles: list[Json]) -> list[Json]:
    """Whole messages to stage: per source system, the smallest bundle holding each type it sends."""
    chosen: dict[tuple[str, str], Json] = {}
    for bundle in sorted(synth_bundles, key=lambda b: len(b["entry"])):
        for entry in bundle["entry"]:
            chosen.setdefault((_system(bundle), entry["resource"]["resourceType"]), bundle)
    return list({id(bundle): bundle for bundle in chosen.values()}.values())


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, (*path, key))]
    if isinstance(node, list):
        return [leaf for i, value in enumerate(node) for leaf in _leaves(value, (*path, i))]
    return [path]


def _nodes(node: Any, kind: type, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every object (or array) in a resource, itself included."""
    found = [path] if isinstance(node, kind) else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return found + [p for key, value in children for p in _nodes(value, kind, (*path, key))]


def _at(resource: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        resource = resource[key]
    return resource


def _replaced(resource: Json, path: tuple[Any, ...], value: Any) -> Json:
    out = copy.deepcopy(resource)
    _at(out, path[:-1])[path[-1]] = value
    return out


# --- hostile changes to a resource, each drawn with `pick` (hypothesis's draws, or a seeded random) -----------

def _hostile_value(resource: Json, pick: Pick) -> None:
    path = pick(_leaves(resource))
    if path != ("resourceType",):
        _at(resource, path[:-1])[path[-1]] = copy.deepcopy(pick(SCALARS + ODD))


def _primitive_extension(resource: Json, pick: Pick) -> None:
    """`_field` beside a primitive (or alone, or beside an element), in lists with null placeholders."""
    path = pick(_leaves(resource))
    parent, key = _at(resource, path[:-1]), path[-1]
    if isinstance(key, int):
        owner, name = _at(resource, path[:-2]), path[-2]
        ext: Any = [None] * len(parent)
        ext[key] = pick([{"extension": [{"url": "http://x", "valueString": "y"}]}, {"id": "a"}, {}, None])
        owner["_" + str(name)] = pick([ext, ext[:1], [], ext + [None]])
        return
    if pick([True, False]):
        del parent[key]  # the value withheld, its extension saying why
    parent["_" + str(key)] = pick([{"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                                   "valueCode": "unknown"}]},
                                   {"extension": []}, {"id": "x"}, {}, None, [], "x",
                                   {"extension": [{"url": "http://x"}], "foo": 1}])


def _extension(resource: Json, pick: Pick) -> None:
    node = _at(resource, pick(_nodes(resource, dict)))
    extension = {"url": pick(["http://example.org/x", "", " x", 5]), **copy.deepcopy(pick(EXTENSION_VALUES))}
    if pick([True, False]):
        extension.pop("url")
    name = pick(["extension", "modifierExtension"])
    node[name] = [*node.get(name, []), extension] if isinstance(node.get(name), list) else [extension]


def _contained(resource: Json, pick: Pick) -> None:
    resource["contained"] = copy.deepcopy(pick([[pick(CONTAINED)], [pick(CONTAINED), pick(CONTAINED)], [],
                                                pick(CONTAINED)]))
    if pick([True, False]):  # a reference into it, as a source would send
        node = _at(resource, pick(_nodes(resource, dict)))
        node["reference"] = "#m1"


def _narrative(resource: Json, pick: Pick) -> None:
    node = _at(resource, pick([(), *_nodes(resource, dict)]))
    node["text"] = pick([{"status": "generated", "div": pick(XHTML)}, {"div": pick(XHTML)},
                         {"status": "made-up", "div": pick(XHTML)}, {"status": "empty"}, pick(XHTML)])


def _null_in_array(resource: Json, pick: Pick) -> None:
    arrays = _nodes(resource, list)
    if arrays:
        array = _at(resource, pick(arrays))
        array.insert(pick(range(len(array) + 1)), None)


def _emptied(resource: Json, pick: Pick) -> None:
    path = pick(_nodes(resource, dict)[1:] + _nodes(resource, list) or [("meta",)])
    _at(resource, path[:-1])[path[-1]] = pick([{}, [], [{}], {"extension": []}])


def _unknown_element(resource: Json, pick: Pick) -> None:
    node = _at(resource, pick(_nodes(resource, dict)))
    value = pick(SCALARS + ODD + [{"text": "x"}, [{"text": "x"}], {"resourceType": "Patient"}])
    node[pick(KEYS)] = copy.deepcopy(value)


def _resource_type(resource: Json, pick: Pick) -> None:
    if pick([True, False]):
        resource["resourceType"] = pick(TYPES)
    else:
        _at(resource, pick(_nodes(resource, dict)))["resourceType"] = pick(TYPES)


def _retyped(resource: Json, pick: Pick) -> None:
    """A number as a string, a string as a number, a boolean as either; or a value[x] twice, or renamed."""
    path = pick(_leaves(resource))
    parent, key = _at(resource, path[:-1]), path[-1]
    value = parent[key]
    if isinstance(key, str) and key.startswith("value") and pick([True, False]):
        parent[pick(["valueString", "valueInteger", "valueDateTime", "valueCode", "valueQuantity"])] = value
        if pick([True, False]):
            del parent[key]
        return
    if isinstance(value, bool):
        parent[key] = pick([str(value).lower(), int(value), "yes"])
    elif isinstance(value, int | float):
        parent[key] = pick([str(value), f" {value}", f"{value}e0", value * 10**20, float(value)])
    elif isinstance(value, str):
        parent[key] = pick([len(value), int(value) if value.isdigit() else 1, True, [value], {"value": value}])


def _removed(resource: Json, pick: Pick) -> None:
    path = pick([p for p in _nodes(resource, dict)[1:] + _leaves(resource) if p != ("resourceType",)] or [()])
    if path:
        parent = _at(resource, path[:-1])
        del parent[path[-1]]


CHANGES = [_hostile_value, _primitive_extension, _extension, _contained, _narrative, _null_in_array, _emptied,
           _unknown_element, _resource_type, _retyped, _removed]


def hostile(bundle: Json, pick: Pick, changes: int) -> Json:
    """The bundle with `changes` hostile changes to its resources."""
    out = copy.deepcopy(bundle)
    for _ in range(changes):
        resource = pick(out["entry"])["resource"]
        pick(CHANGES)(resource, pick)
    return out


# --- staging with the walk and with the model alone ------------------------------------------------------------

def _outcome(raw: RawMessage, framework: Framework) -> tuple[Any, ...]:
    """What staging makes of a message, as the pipeline stages it (a failure nobody foresaw is a refusal)."""
    try:
        staged = stage(ADAPTERS["fhir"], raw, framework, None)
    except MessageError as exc:
        return "refused", exc.message, exc.where
    return ("staged", staged.source_org, staged.source_system, staged.message_id, staged.patients,
            dict(staged.set_aside), [(r.resource_type, r.source_id, r.server_id, r.content, r.content_hash,
                                      r.recorded_at, r.patient_source_id) for r in staged.resources])


def _same_as_the_model(payload: bytes, framework: Framework) -> tuple[tuple[Any, ...], list[Json]]:
    """Stage with the walk and with the model alone: the outcomes must be identical, and the walk must vouch
    for no resource the model refuses. Returns the outcome and the resources validated."""
    raw = RawMessage("feeds/P81001/fhir/emis-0000.ndjson", "line 1", payload, "fhir", received_at=NOW)
    return same_as_the_model(lambda: _outcome(raw, framework))


def _payload(bundle: Json) -> bytes:
    return json.dumps(bundle).encode()  # the standard library: numbers beyond 64 bits stay exact


@SETTINGS
@given(data=st.data())
def test_hostile_fhir_input_is_staged_or_refused_exactly_as_with_the_model(data: st.DataObject, seeds: list[Json],
                                                                          framework: Framework) -> None:
    def pick(options: Sequence[Any]) -> Any:
        return data.draw(st.sampled_from(options))

    bundle = hostile(pick(seeds), pick, data.draw(st.integers(1, 4)))
    _same_as_the_model(_payload(bundle), framework)


@pytest.mark.parametrize("change", CHANGES, ids=[change.__name__.strip("_") for change in CHANGES])
def test_each_kind_of_hostile_input_meets_refusals_and_acceptances(change: Callable[[Json, Pick], None],
                                                                   seeds: list[Json], framework: Framework) -> None:
    """Each kind of change, seeded, over every seed message: the same outcome as the model's, and the
    comparison is not only of messages both accept nor only of ones both refuse."""
    import random

    outcomes = []
    for number in range(60):
        rng = random.Random(number)
        bundle = copy.deepcopy(seeds[number % len(seeds)])
        change(rng.choice(bundle["entry"])["resource"], rng.choice)
        outcomes.append(_same_as_the_model(_payload(bundle), framework)[0][0])
    if change is _emptied:  # an emptied element breaks ele-1 (fhir/invariants.py), whatever the model takes
        assert set(outcomes) == {"refused"}
    elif change is _retyped:  # a value of another JSON type is not FHIR JSON (json_problems), whatever the model takes
        assert set(outcomes) == {"refused"}
    else:
        assert "staged" in outcomes and "refused" in outcomes, change.__name__


def test_the_walk_vouches_for_every_resource_the_synthetic_ics_sends(synth_bundles: list[Json]) -> None:
    """Else the model is run for them and the walk saves nothing."""
    resources = [entry["resource"] for bundle in synth_bundles for entry in bundle["entry"]]
    assert len({r["resourceType"] for r in resources}) >= 9
    assert all(surely_valid(r) for r in resources if not any(value == [] for value in r.values()))


def test_every_value_of_a_real_resource_is_judged_as_the_model_judges_it(corpus: list[Json]) -> None:
    """Each value of each corpus resource replaced in turn by each hostile scalar: the walk vouches exactly
    when the model accepts (same structure, so the walk has no reason to defer); by nulls, lists and
    objects, and each object and array emptied or given a null, it never vouches for what the model
    refuses."""
    assert len({r["resourceType"] for r in corpus}) >= 9
    refused = accepted = 0
    for resource in corpus:
        assert surely_valid(resource), resource
        for path in _leaves(resource):
            if path == ("resourceType",):
                continue
            for value in SCALARS:
                changed = _replaced(resource, path, value)
                model = validation_problems(changed) == []
                refused += not model
                accepted += model
                assert surely_valid(changed) == model, (resource["resourceType"], path, value)
            for value in ODD:
                changed = _replaced(resource, path, value)
                assert not surely_valid(changed) or validation_problems(changed) == [], (path, value)
        for path in _nodes(resource, dict)[1:] + _nodes(resource, list):
            for value in ({}, [], [None], [{}]):
                changed = _replaced(resource, path, value)
                assert not surely_valid(changed) or validation_problems(changed) == [], (path, value)
    assert refused > 1000 and accepted > 1000, (refused, accepted)


@pytest.mark.parametrize("resource", [
    {"resourceType": "Patient", "id": "a", "extension": [{"valueString": "a"}]},  # url required
    {"resourceType": "Patient", "id": "a", "extension": [{"url": "http://x", "valueString": "a", "valueCode": "b"}]},
    {"resourceType": "Patient", "id": "a", "modifierExtension": [{"url": "http://x", "valueInteger": 2**31}]},
    {"resourceType": "Patient", "id": "a", "name": [None]},
    {"resourceType": "Patient", "id": "a", "birthDate": "2026-9-28"},
    {"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "x"},
     "effectiveDateTime": "2026-09-28T08:40:00"},  # a time needs its zone
    {"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "x"}, "issued": "2026"},
    {"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "x"}, "valueInteger": "5.5"},
    {"resourceType": "Patient", "id": "a", "text": {"div": "<div>x</div>"}},  # status required
    {"resourceType": "Patient", "id": "a b"},
])
def test_the_walk_does_not_vouch_for_what_the_model_refuses(resource: Json) -> None:
    assert validation_problems(resource) and not surely_valid(resource)


@pytest.mark.parametrize("resource", [
    {"resourceType": "Patient", "id": "a", "_gender": {"extension": []}},
    {"resourceType": "Patient", "id": "a", "_birthDate": {"fhir_comments": "x"}},
    {"resourceType": "Observation", "id": "a", "code": {"text": "x"},  # a required value withheld, saying why
     "_status": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                "valueCode": "unknown"}]}},
    {"resourceType": "Patient", "id": "a", "name": [{"given": ["A", None]}], "address": []},
    {"resourceType": "Patient", "id": "a", "contained": [{"resourceType": "Practitioner", "id": "p"}]},
    {"resourceType": "Patient", "id": "a", "name": [{"resourceType": "HumanName", "family": "x"}]},
    {"resourceType": "Patient", "id": "a", "fhir_comments": "x"},
])
def test_what_the_walk_does_not_know_the_model_decides(resource: Json) -> None:
    """Shapes the walk leaves to the model (an empty list, in a primitive's extension too, a required value
    given only by its extension, nulls among primitives, contained resources, keys the models take beside
    the JSON names): the model accepts these."""
    assert not surely_valid(resource) and validation_problems(resource) == []


# A primitive's extension (`_field`): the ones the walk judges itself, then ones it leaves to the model.
EXTENSION = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "x"}]}
PRIMITIVE_EXTENSIONS: list[Any] = [
    EXTENSION, {"id": "a"}, {"id": " "}, {"id": "a", **EXTENSION}, None, {}, {"id": 5}, {"id": None}, "x", [EXTENSION],
    {"id": "a", "foo": 1}, {"extension": [{"valueString": "y"}]}, {"extension": [None]}, {"extension": "x"},
    {"extension": [{"url": "http://x", "valueString": "a", "valueCode": "b"}]}, {"extension": [{"url": "u", "foo": 1}]}]
DEFERRED: list[Any] = [{"extension": []}, {"fhir_comments": "x"}, {"id": "a", "fhir_comments": "x"}]


def _primitive_extensions(resource: Json) -> list[tuple[tuple[Any, ...], Any, bool]]:
    """Each primitive of the resource given each extension in turn: (where `_field` goes, its value, whether
    the walk leaves it to the model); a repeating primitive's extensions are a list lined up with its
    values, nulls as placeholders (a null for the whole list, or an empty one, is left to the model)."""
    out = []
    for path in _leaves(resource):
        if path == ("resourceType",):
            continue
        if isinstance(path[-1], int):
            size = len(_at(resource, path[:-1]))
            for value in PRIMITIVE_EXTENSIONS + DEFERRED:
                listed: list[Any] = [None] * size
                listed[path[-1]] = value
                for variant in (listed, listed + [None], listed[:1], [None] * size, value):
                    out.append(((*path[:-2], "_" + str(path[-2])), variant,
                                value in DEFERRED or variant is None or variant == []))
        else:
            out += [((*path[:-1], "_" + str(path[-1])), value, value in DEFERRED)
                    for value in PRIMITIVE_EXTENSIONS + DEFERRED]
    return out


def test_a_primitives_extension_is_judged_as_the_model_judges_it(corpus: list[Json]) -> None:
    """Every primitive of each corpus resource given each extension, beside its value and in its place: the
    walk vouches exactly when the model accepts, but for the shapes it leaves to the model."""
    refused = accepted = 0
    for resource in corpus:
        for path, value, deferred in _primitive_extensions(resource):
            for withheld in (False, True):
                changed = _replaced(resource, path, copy.deepcopy(value))
                if withheld:
                    owner = _at(changed, path[:-1])
                    owner.pop(str(path[-1])[1:], None)
                model = validation_problems(changed) == []
                refused += not model
                accepted += model
                if deferred or withheld:  # a required value withheld, its extension saying why: the model's
                    assert not surely_valid(changed) or model, (path, value, withheld)
                else:
                    assert surely_valid(changed) == model, (resource["resourceType"], path, value)
    assert refused > 1000 and accepted > 1000, (refused, accepted)


def test_what_the_model_lets_through_the_walk_lets_through_and_no_more(framework: Framework) -> None:
    """The walk is no looser and no stricter than the model: markup in a narrative and lax primitives
    (`"5"` for an integer, `"yes"` for a boolean) are accepted by both, so the outcome is the model's."""
    for resource in ({"resourceType": "Patient", "id": "a", "active": "yes",
                      "text": {"status": "generated", "div": "<div><script>alert(1)</script></div>"}},
                     {"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "x"},
                      "valueInteger": "5", "effectiveDateTime": "2026"}):
        assert surely_valid(resource) and validation_problems(resource) == []


def test_a_walk_made_to_vouch_wrongly_is_caught(seeds: list[Json], framework: Framework,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: with one check of the walk skipped (a primitive's own validator for
    strings), a hostile value it would then vouch for is caught."""
    from sharedcare.fhir import validate

    bundle = copy.deepcopy(seeds[0])
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["birthDate"] = "2026-02-30"
    monkeypatch.setattr(validate._Primitive, "accepts", lambda self, value: True)
    with pytest.raises(AssertionError):
        _same_as_the_model(_payload(bundle), framework)


def test_under_another_fhir_resources_a_primitives_extension_is_left_to_the_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk mirrors FHIRPrimitiveExtension's own validator as read in one fhir.resources version; under
    another, a resource carrying a primitive's extension goes to the model (the rest is still walked)."""
    from sharedcare.fhir import validate

    resource = {"resourceType": "Patient", "id": "a", "gender": "male", "_gender": EXTENSION}
    assert surely_valid(resource)
    monkeypatch.setattr(validate, "_RESOURCES_AUDITED", False)
    monkeypatch.setattr(validate, "_models", {})
    assert not surely_valid(resource) and validation_problems(resource) == []
    assert surely_valid({"resourceType": "Patient", "id": "a", "gender": "male"})


def _nested_extension(depth: int) -> Json:
    inner: Json = {"url": "http://x", "valueString": "deepest"}
    for _ in range(depth):
        inner = {"url": "http://x", "extension": [inner]}
    return {"resourceType": "Patient", "id": "a", "extension": [inner]}


@pytest.mark.parametrize("depth", [40, 200, 600])
def test_a_resource_nested_deeper_than_the_model_can_read_is_left_to_the_model(depth: int) -> None:
    """The model runs out of stack at some 130-150 levels: the walk must not accept what the model cannot
    read, so past a few dozen levels it vouches for nothing, and past MAX_NESTING the model is not asked."""
    resource = _nested_extension(depth)
    assert not surely_valid(resource)
    if depth >= 200:
        assert validation_problems(resource) == [
            f"Patient.extension[0] ({depth + 1} times): nested {depth + 2} levels deep, more than the "
            f"{MAX_NESTING} levels a resource may nest (real ones nest under 15); it is not read"]


def _deep_xml(depth: int) -> bytes:
    inner = '<extension url="http://x"><valueString value="deepest"/></extension>'
    for _ in range(depth):
        inner = f'<extension url="http://x">{inner}</extension>'
    return f'<Patient xmlns="http://hl7.org/fhir"><id value="x"/>{inner}</Patient>'.encode()


def test_fhir_nested_hundreds_deep_is_held_naming_how_deep_and_where(db: Database, framework: Framework,
                                                                      tmp_path: Path) -> None:
    """JSON nested 200 and 400 objects deep (which ran the model out of stack: held as "RecursionError"), 1,200
    deep (past the parser's), and XML 200 deep (which crashed the XML path) and 300 (past libxml2's 256): each
    is held saying how deep, where and the limit, the JSON and XML alike; the file's other messages stored."""
    folder = tmp_path / "P81001"
    folder.mkdir()
    plain = {"resourceType": "Patient", "id": "ok"}  # its folder names its sender
    def nested(depth: int) -> str:  # as text: json.dumps runs out of stack too
        inner = '{"url": "http://x", "extension": [' * depth + '{"url": "http://x", "valueString": "deepest"}'
        return f'{{"resourceType": "Patient", "id": "d{depth}", "extension": [{inner}{"]}" * depth}]}}'
    lines = [nested(depth) for depth in (200, 400, 1200)]
    (folder / "deep.ndjson").write_text("\n".join([*lines, json.dumps(plain)]), encoding="utf-8")
    for depth in (200, 300):
        (folder / f"deep{depth}.xml").write_bytes(_deep_xml(depth))
    report = Pipeline(db, framework).ingest_paths([folder])
    assert report.accepted == 1 and report.quarantined == 5, report.quarantine
    reasons = {problem["where"].rsplit("/", 1)[-1].removesuffix(", resource").removesuffix(", whole file"):
               problem["reason"] for problem in report.quarantine}
    limit = f"more than the {MAX_NESTING} levels a resource may nest"
    assert "Patient.extension[0] (201 times): nested 202 levels deep, " + limit in reasons["deep.ndjson, line 1"]
    assert "Patient.extension[0] (401 times): nested 402 levels deep, " + limit in reasons["deep.ndjson, line 2"]
    deepest = lines[2].rindex("{") + 1  # the innermost extension: the parser's stack never got there
    assert f"line 1 column {deepest}: nested 2403 objects and arrays deep, " + limit in reasons["deep.ndjson, line 3"]
    assert "Patient.extension (201 times) (line 1): nested 202 levels deep, " + limit in reasons["deep200.xml"]
    assert "nested more than 256 levels deep, " + limit in reasons["deep300.xml"]
    assert not any("Recursion" in reason for reason in reasons.values()), reasons


def test_a_resource_nested_as_deep_as_real_ones_is_still_vouched_for() -> None:
    assert surely_valid(_nested_extension(10)) and validation_problems(_nested_extension(10)) == []
