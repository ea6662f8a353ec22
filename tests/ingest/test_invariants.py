"""FHIR core invariants (ele-1, per-1, ext-1, txt-1, txt-2, dom-2..5) and the validator's security checks:
what the models leave through is refused by every format with the rule named, and nothing else is lost."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from tests.builders import condition, medication, patient, write_ndjson
from tests.ingest.test_fhir_xml_and_batch import GOOD_NHS, _gp, _stored
from tests.ingest.test_hl7v2 import results, write_hl7
from tests.small_ics import Ics

from sharedcare.fhir.invariants import invariant_problems
from sharedcare.governance.framework import Framework
from sharedcare.ingest.mllp import MllpServer
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import Quarantine

XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'


def _condition(**changes: Any) -> dict[str, Any]:
    return {**condition("gp-c1", "Patient/gp-1", "44054006", "Type 2 diabetes mellitus"), **changes}


def _div(inner: str) -> dict[str, Any]:
    return {"status": "generated", "div": f"<div {XHTML}>{inner}</div>"}


BROKEN: dict[str, tuple[dict[str, Any], str, str]] = {
    # rule: (changes that break it, the rule named, the element named)
    "empty object": ({"code": {}}, "ele-1", "Condition.code"),
    "empty string": ({"note": [{"text": ""}]}, "ele-1", "Condition.note[0].text"),
    "empty array": ({"category": []}, "ele-1", "Condition.category"),
    "only an id": ({"severity": {"id": "s1"}}, "ele-1", "Condition.severity"),
    "period backwards": ({"onsetPeriod": {"start": "2024-02-01", "end": "2023-01-01"}}, "per-1",
                         "Condition.onsetPeriod"),
    "period backwards by month": ({"onsetPeriod": {"start": "2024-02", "end": "2024-01-15"}}, "per-1",
                                  "Condition.onsetPeriod"),
    "period backwards by instant": ({"onsetPeriod": {"start": "2024-01-15T10:00:00Z",
                                                     "end": "2024-01-15T10:30:00+01:00"}}, "per-1",
                                    "Condition.onsetPeriod"),
    "extension value and extensions": ({"extension": [{"url": "https://example.org/x", "valueString": "a",
                                                       "extension": [{"url": "y", "valueString": "b"}]}]},
                                       "ext-1", "Condition.extension[0]"),
    "script": ({"text": _div("<p>Diabetes</p><script>alert(1)</script>")}, "txt-1", "Condition.text.div"),
    "event attribute": ({"text": _div('<p onclick="steal()">Diabetes</p>')}, "txt-1", "Condition.text.div"),
    "javascript url": ({"text": _div('<a href=" JavaScript:alert(1)">Diabetes</a>')}, "txt-1",
                       "Condition.text.div"),
    "data url": ({"text": _div('<a href="data:text/html,&lt;script&gt;">Diabetes</a>')}, "txt-1",
                 "Condition.text.div"),
    "iframe": ({"text": _div('<iframe src="https://evil.example"></iframe>Diabetes')}, "txt-1",
               "Condition.text.div"),
    "object": ({"text": _div('<object data="x.swf">Diabetes</object>')}, "txt-1", "Condition.text.div"),
    "form": ({"text": _div('<form action="https://evil.example"><p>Diabetes</p></form>')}, "txt-1",
             "Condition.text.div"),
    "style element": ({"text": _div("<style>p {color: red}</style><p>Diabetes</p>")}, "txt-1",
                      "Condition.text.div"),
    "style loading a url": ({"text": _div('<p style="background: url(https://evil.example/t)">Diabetes</p>')},
                            "txt-1", "Condition.text.div"),
    "not xhtml": ({"text": {"status": "generated", "div": "<div><p>Diabetes</p></div>"}}, "txt-1",
                  "Condition.text.div"),
    "not well formed": ({"text": _div("<p>Diabetes")}, "txt-1", "Condition.text.div"),
    "whitespace only": ({"text": _div(" <p> </p> ")}, "txt-2", "Condition.text.div"),
    "script in a string": ({"note": [{"text": "See <script src=https://evil.example/x.js></script>"}]},
                           "security", "Condition.note[0].text"),
    "event handler in a string": ({"note": [{"text": "<img src=x onerror=alert(1)>"}]}, "security",
                                  "Condition.note[0].text"),
    "javascript url in a string": ({"code": {"text": "javascript:alert(1)"}}, "security", "Condition.code.text"),
    "nested contained": ({"contained": [{"resourceType": "Practitioner", "id": "pr1", "contained": [
        {"resourceType": "Practitioner", "id": "pr2"}]}], "asserter": {"reference": "#pr1"}}, "dom-2",
        "Condition.contained[0]"),
    "contained referenced from nowhere": ({"contained": [{"resourceType": "Practitioner", "id": "pr1"}]},
                                          "dom-3", "Condition.contained[0]"),
    "contained with a version": ({"contained": [{"resourceType": "Practitioner", "id": "pr1",
                                                 "meta": {"versionId": "3"}}],
                                  "asserter": {"reference": "#pr1"}}, "dom-4", "Condition.contained[0]"),
    "contained with a security label": ({"contained": [{"resourceType": "Practitioner", "id": "pr1", "meta": {
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}}],
        "asserter": {"reference": "#pr1"}}, "dom-5", "Condition.contained[0]"),
}

SOUND: dict[str, dict[str, Any]] = {
    # the same elements, each within its rule
    "a value in every element": {"note": [{"text": "Diet controlled"}], "category": [{"text": "problem"}],
                                 "severity": {"id": "s1", "text": "mild"}},
    "period in order": {"onsetPeriod": {"start": "2023-01-01", "end": "2024-02-01"}},
    "period of one day at two precisions": {"onsetPeriod": {"start": "2024-01-15T09:00:00Z", "end": "2024-01-15"}},
    "period within a month at two precisions": {"onsetPeriod": {"start": "2024-01-15", "end": "2024-01"}},
    "period in order across zones": {"onsetPeriod": {"start": "2024-01-15T10:00:00+01:00",
                                                     "end": "2024-01-15T09:30:00Z"}},
    "extension with a value": {"extension": [{"url": "https://example.org/x", "valueString": "a"}]},
    "extension with extensions": {"extension": [{"url": "https://example.org/x",
                                                 "extension": [{"url": "y", "valueString": "b"}]}]},
    "rich narrative": {"text": _div(
        '<h3 class="title">Type 2 diabetes</h3><table border="1"><thead><tr><th>Onset</th></tr></thead>'
        '<tbody><tr><td style="color: #333">2018</td></tr></tbody></table><ul><li><b>HbA1c</b> 53 mmol/mol'
        '</li></ul><a href="https://www.nhs.uk/conditions/type-2-diabetes/">NHS</a><!-- generated -->'
        '<img src="data:image/png;base64,iVBORw0KGgo=" alt="chart"/>')},
    "a string with angle brackets that is not markup": {"note": [{"text": "eGFR <60 and K+ > 5.5; a<b"}]},
    "contained referenced": {"contained": [{"resourceType": "Practitioner", "id": "pr1",
                                            "meta": {"profile": ["https://fhir.hl7.org.uk/x"]}}],
                             "asserter": {"reference": "#pr1"}},
}


@pytest.mark.parametrize("case", BROKEN)
def test_each_invariant_is_refused_naming_the_element_and_the_rule(case: str) -> None:
    changes, rule, element = BROKEN[case]
    problems = invariant_problems(_condition(**changes))
    assert any(p.startswith(f"{element}: {rule}: ") for p in problems), problems


@pytest.mark.parametrize("case", SOUND)
def test_the_same_elements_within_their_rules_pass(case: str) -> None:
    assert invariant_problems(_condition(**SOUND[case])) == []


def test_the_real_resources_the_builders_and_the_hl7_mapper_make_pass(db: Database, framework: Framework,
                                                                      tmp_path: Path) -> None:
    sent = [patient("gp-1", GOOD_NHS, "Okafor", "Emeka", "1945-03-02"), _condition(),
            medication("gp-m1", "Patient/gp-1", "Metformin 500mg tablets", note="with food")]
    assert [invariant_problems(r) for r in sent] == [[], [], []]
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "lab.hl7", [results()])])
    assert report.quarantined == 0 and report.accepted > 0, report.quarantine  # notes with '<5', '>60' pass


def test_a_batch_with_one_unsafe_entry_stores_the_rest_and_names_entry_element_and_rule(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    unsafe = {**condition("gp-c2", "Patient/gp-1", "38341003", "Hypertension"),
              "text": _div('<p>Hypertension</p><img src="x" onerror="fetch(\'//evil\')"/>')}
    message = _gp("batch", _condition(), unsafe, medication("gp-m1", "Patient/gp-1", "Metformin 500mg tablets"),
                  patient("gp-1", GOOD_NHS, "Okafor", "Emeka", "1945-03-02"))
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [message])])
    assert (report.accepted, report.quarantined) == (3, 1), report.quarantine
    (problem,) = report.quarantine
    assert problem["location"] == "line 1, entry[1]"
    assert "Condition/gp-c2: Condition.text.div: txt-1: the attribute onerror on <img>" in problem["reason"]
    assert set(_stored(db)) == {"gp-1", "gp-c1", "gp-m1"}


def test_a_transaction_with_a_backwards_period_stores_nothing(db: Database, framework: Framework,
                                                              tmp_path: Path) -> None:
    backwards = _condition(onsetPeriod={"start": "2024-02-01", "end": "2023-01-01"})
    del backwards["onsetDateTime"]
    message = _gp("transaction", patient("gp-1", GOOD_NHS, "Okafor", "Emeka", "1945-03-02"), backwards)
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [message])])
    assert (report.accepted, report.quarantined) == (0, 1)
    assert "entry[1]" in report.quarantine[0]["where"] and "per-1" in report.quarantine[0]["reason"]
    assert _stored(db) == {}


def test_post_fhir_refuses_active_narrative_with_an_operation_outcome_naming_the_rule(ics: Ics) -> None:
    headers = ics.token("dr.patel", "user/*.read user/*.write") | {"Content-Type": "application/fhir+json"}
    unsafe = medication("gp-m9", "Patient/gp-okafor", "Ramipril 5mg capsules")
    unsafe["text"] = _div('<p>Ramipril</p><a href="javascript:alert(document.cookie)">more</a>')
    response = ics.client.post("/fhir/MedicationStatement", headers=headers, content=json.dumps(unsafe))
    assert response.status_code == 422, response.text
    issue = response.json()["issue"][0]
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "MedicationStatement.text.div: txt-1: the href of <a> is an active URL" in issue["diagnostics"]
    unsafe["text"] = _div("<p>Ramipril</p>")
    assert ics.client.post("/fhir/MedicationStatement", headers=headers,
                           content=json.dumps(unsafe)).status_code == 201


def _lab_with_note(note: str) -> bytes:
    return results().replace("NTE|1|L|Repeat in 2\\X2D\\3 days", f"NTE|1|L|{note}").encode("latin-1")


@pytest.mark.parametrize("note", ["Repeat <script>alert(1)</script>", "see <a href=x onmouseover=steal()>here</a>",
                                  "\\X3C\\script\\X3E\\alert(1)"])
def test_an_hl7_note_holding_a_script_is_answered_ae_naming_the_segment_and_field(
        db: Database, framework: Framework, note: str) -> None:
    ack = MllpServer(Pipeline(db, framework)).handle(_lab_with_note(note), "127.0.0.1:2575").decode("latin-1")
    segments = {s.split("|")[0]: s.split("|") for s in ack.split("\r") if s}
    assert segments["MSA"][1] == "AE" and "active content" in segments["MSA"][3]
    assert segments["ERR"][1] == "NTE^2^3" and "security" in segments["ERR"][8]
    with db.session() as s:
        held = s.scalars(select(Quarantine)).one()
    assert held.payload == _lab_with_note(note) and "active content" in held.reason


def test_an_hl7_result_value_holding_a_script_is_held_naming_obx_5(db: Database, framework: Framework,
                                                                   tmp_path: Path) -> None:
    message = results().replace("Target cells \\F\\ occasional", "<iframe src=//evil></iframe>")
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "lab.hl7", [message])])
    assert report.quarantined == 1 and report.quarantine[0]["where"].endswith("OBX[4]-5")


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">'
                            for i in range(1, 10))
                  + f']><div {XHTML}>&lol9;</div>')


def test_entity_expansion_and_external_entities_are_refused_not_expanded() -> None:
    started = time.process_time()
    problems = invariant_problems(_condition(text={"status": "generated", "div": BILLION_LAUGHS}))
    assert problems and "txt-1" in problems[0]
    external = (f'<!DOCTYPE div [<!ENTITY x SYSTEM "file:///etc/passwd">]><div {XHTML}>&x;</div>')
    problems = invariant_problems(_condition(text={"status": "generated", "div": external}))
    assert problems and "txt-1" in problems[0] and "root:" not in problems[0]
    assert time.process_time() - started < 5  # refused, not expanded (a billion 'lol's would take minutes)


def test_deep_nesting_and_a_huge_narrative_are_answered() -> None:
    deep: dict[str, Any] = {"url": "u", "valueString": "v"}
    for _ in range(5000):
        deep = {"url": "u", "extension": [deep]}
    assert any("nested deeper" in p for p in invariant_problems(_condition(extension=[deep])))
    huge = _div("<p>" + "<b>x</b>" * 200_000 + "</p>")
    assert invariant_problems(_condition(text=huge)) == []
    nested = _div("<span>" * 20_000 + "x" + "</span>" * 20_000)
    assert invariant_problems(_condition(text=nested))  # libxml2's own depth limit refuses it, located


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                         st.sampled_from(["start", "end", "id", "extension", "url", "valueString", "text", "div",
                                          "contained", "reference", "meta", "security", "x"]), inner, max_size=4),
                     max_leaves=30)
_markup = st.text(alphabet=st.sampled_from(list("<>/=\"' &;!-[]abcdivpscrtonlk:")), max_size=200)


@settings(max_examples=300, deadline=None)
@given(body=_json, div=_markup)
def test_no_input_makes_the_checker_crash(body: Any, div: str) -> None:
    resource = {"resourceType": "Condition", "id": "c", "body": body, "contained": [body] if body else None,
                "text": {"div": div}, "onsetPeriod": body}
    problems = invariant_problems(resource)
    assert all(isinstance(p, str) and ": " in p for p in problems)
