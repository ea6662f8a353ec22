"""Fuzzing the parsers a feed's bytes meet first: HL7 v2, CSV extracts and FHIR JSON.

Whatever arrives, each adapter either stages the message or raises a MessageError naming the file and
place; nothing else escapes (an unforeseen exception would reach the pipeline as "could not be read",
which tells an integration engineer nothing), and nothing hangs (each example has a deadline). Inputs
are real messages mutated field by field, with separators, escape sequences, control and non-Latin
characters, plus raw bytes. Example counts are bounded so the file runs in well under a minute.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import hl7
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sharedcare.governance.framework import Framework
from sharedcare.ingest import csv_extract, fhir_bundle, hl7v2
from sharedcare.ingest.hl7v2_map import _UNESCAPE, Seg
from sharedcare.ingest.hl7v2_syntax import HEADERS, SyntaxProblem, split_message
from sharedcare.ingest.messages import MessageError, RawMessage, StagedMessage, canonical_json

FUZZ = settings(max_examples=150, deadline=timedelta(seconds=5), derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ADT = ("MSH|^~\\&|PAS|RXR|SHAREDCARE|QRD|20260928084000||ADT^A01^ADT_A01|PAS0000001001|P|2.4|||AL|NE|GBR|8859/1\r"
       "EVN|A01|20260928084000\r"
       "PID|1||H0112648^^^RXR^MR~9539736528^^^NHS^NH||OKAFOR^Emeka^Chukwudi^^Mr||19450911|M|||"
       "14 Mill Lane^^Riverside^^RV3 7QT^GBR^H||01632 960457^PRN^PH\r"
       "PD1|||Riverside Medical Centre^^P81001\r"
       "NK1|1|ADEYEMI^Ngozi^^^Mrs|CHD^Daughter^HL70063||07700 900461||N^Next-of-Kin^HL70131\r"
       "PV1|1|I|Ward 3 (Respiratory)^^^RXR||||^STENSON^Paul^^^Mr|||MED|||||||||V000000101|||||||||||||||||||||||||"
       "20260928084000|\r"
       "ZXT|1|local extension\r")
ORU = ("MSH|^~\\&|LAB|RXR|SHAREDCARE|QRD|20260928114000||ORU^R01^ORU_R01|LAB0000001001|P|2.4|||AL|NE|GBR|8859/1\r"
       "PID|1||H0112648^^^RXR^MR~9539736528^^^NHS^NH||OKAFOR^Emeka^Chukwudi^^Mr||19450911|M\r"
       "ORC|RE|PRXR0000001001|FRXR0000001001||CM\r"
       "OBR|1|PRXR0000001001|FRXR0000001001|CRP^C reactive protein^L|||20260928094000|||||||||^STENSON^Paul"
       "||||||20260928114000|||F\r"
       "OBX|1|NM|1001371000000100^Serum C reactive protein level^SCT||48|mg/L^mg/L^UCUM|0-5|H|||F\r"
       "NTE|1||Sample slightly haemolysed \\T\\ repeated\r"
       "OBX|2|ST|1000581000000104^Comment^SCT||see \\F\\ note||||||F\r")
CSV_HEADER = ("client_id,nhs_number,family_name,given_name,date_of_birth,sex,address_line1,town,postcode,phone,"
              "assessment_id,assessment_type,assessment_date,status,outcome_summary,third_party_notes,worker_name,"
              "team,last_updated")
CSV_ROW = ('1003571,9539736528,Okafor,Emeka,11/09/1945,Male,14 Mill Lane,Riverside,RV3 7QT,01632 960457,A33025142,'
           'Care Act Assessment,12/10/2026,Completed,"Reablement, two calls a day",Daughter visits,Tom Hargreaves,'
           'Hospital Discharge Team,2026-10-17T10:35:00Z')

# Text that exercises parsers: separators, HL7 escapes, quotes, line ends, control, Latin-1 and beyond.
NASTY = st.text(alphabet=st.sampled_from(list("|^~\\&\r\n\",'\t\x00\x0b\x1c MSHPIDOBX0123456789.-+TFESRXZ"
                                               "é£ÿ€漢\ud7ff")), max_size=12)
FIELD = st.one_of(NASTY, st.text(max_size=20), st.sampled_from(["", '""', "\\", "\\X0D\\", "\\.br\\", "^^^",
                                                              "99999999999999", "2026", "20261340", "-1", "1e999"]))


# What Python says when code fails; a sender reading a quarantine reason or an ACK should never see it.
PYTHON_WORDS = ("index out of range", "NoneType", "object has no attribute", "unhashable", "Traceback", "KeyError")


def _mutate(data: st.DataObject, message: str) -> str:
    """Replace, drop, repeat or cut fields and segments of a real message."""
    segments = message.rstrip("\r").split("\r")
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["field", "field", "drop", "repeat", "cut"]))
        index = data.draw(st.integers(0, len(segments) - 1))
        if action == "field":
            fields = segments[index].split("|")
            position = data.draw(st.integers(0, len(fields)))
            fields[position:position + 1] = [data.draw(FIELD)]
            segments[index] = "|".join(fields)
        elif action == "drop" and len(segments) > 1:
            del segments[index]
        elif action == "repeat":
            segments.insert(index, segments[index])
        elif action == "cut":
            segments[index] = segments[index][: data.draw(st.integers(0, len(segments[index])))]
    return "\r".join(segments)


def _stages_or_says_where(stage, raw: RawMessage, framework: Framework) -> None:
    try:
        staged = stage(raw, framework, None)
    except MessageError as exc:
        assert exc.message.strip() and not exc.message.rstrip().endswith(":"), f"an error must say why: {exc}"
        assert exc.where and exc.where.startswith(raw.filename), f"an error must say where: {exc.where!r}"
        assert not any(words in exc.message for words in PYTHON_WORDS), f"not a sender's words: {exc.message}"
        return
    assert isinstance(staged, StagedMessage)


def _encode(text: str) -> bytes:
    return text.encode("latin-1", errors="surrogatepass") if all(ord(c) < 256 for c in text) else \
        text.encode("utf-8", errors="surrogatepass")


@FUZZ
@given(data=st.data(), seed=st.sampled_from([ADT, ORU]))
def test_mutated_hl7_messages_are_staged_or_refused_with_their_place(data: st.DataObject, seed: str,
                                                                     framework: Framework) -> None:
    raw = RawMessage("feeds/RXR/pas.hl7", "message 1", _encode(_mutate(data, seed)), "hl7v2")
    _stages_or_says_where(hl7v2.stage_hl7, raw, framework)


@FUZZ
@given(payload=st.one_of(st.binary(max_size=300), st.builds(lambda b: b"MSH" + b, st.binary(max_size=300))))
@example(payload=b"MSH|\r")  # python-hl7: IndexError
@example(payload=b"MSH\xa7\nbD")  # python-hl7: a bare AssertionError
def test_any_bytes_as_an_hl7_message_are_refused_with_their_place(payload: bytes, framework: Framework) -> None:
    _stages_or_says_where(hl7v2.stage_hl7, RawMessage("feeds/RXR/pas.hl7", "message 1", payload, "hl7v2"), framework)


@FUZZ
@given(content=st.one_of(st.binary(max_size=400),
                         st.builds(lambda a, b: a + ADT.encode() + b, st.binary(max_size=40), st.binary(max_size=40))))
def test_any_hl7_file_splits_into_messages_that_are_each_staged_or_refused(content: bytes, framework: Framework,
                                                                          tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("hl7") / "RXR" / "feed.hl7"
    path.parent.mkdir()
    path.write_bytes(content)
    for raw in hl7v2.read_messages(path):
        assert raw.payload.strip(), "a message is never empty"
        _stages_or_says_where(hl7v2.stage_hl7, raw, framework)


def _read_as_python_hl7_does(text: str) -> list[list[tuple[list[list[str]], str]]] | None:
    """Each field after the name as mapping reads it (repetitions of components, and whole as text), through
    python-hl7's own objects; None when python-hl7 cannot parse the message."""
    try:
        message = hl7.parse(text)
    except Exception:  # noqa: BLE001 - python-hl7 fails in many ways on bad input; any failure is "cannot"
        return None

    def unescape(value: str) -> str:
        return "" if value == '""' else str(message.unescape(value, _UNESCAPE))

    out = []
    for number, segment in enumerate(message):
        if number and str(segment[0])[:3] in HEADERS:
            continue  # a second header segment: python-hl7 splits it oddly, and mapping reads none of it
        fields = []
        for field in list(segment)[3 if number == 0 else 1:]:
            reps = [[unescape(p if isinstance(p, str) else str(p[0])) for p in ([r] if isinstance(r, str) else r)]
                    for r in field]
            fields.append(([r for r in reps if any(r)], "\n".join(unescape(str(r)) for r in field).strip()))
        out.append(fields)
    return out


def _read_as_we_do(text: str) -> list[list[tuple[list[list[str]], str]]] | None:
    try:
        encoding, message = split_message(text)
    except SyntaxProblem:
        return None
    out = []
    for number, fields in enumerate(message):
        if number and fields[0][:3] in HEADERS:
            continue
        seg = Seg(fields, encoding, fields[0], "here")
        out.append([(seg.reps(n), seg.text(n)) for n in range(3 if number == 0 else 1, len(fields))])
    return out


@FUZZ
@given(data=st.data(), seed=st.sampled_from([ADT, ORU]),
       separators=st.sampled_from(["|^~\\&", "!@#%$", "|^~\\&#", "|^~", "|"]))
def test_our_splitter_reads_every_field_as_python_hl7_does(data: st.DataObject, seed: str, separators: str) -> None:
    """hl7v2_syntax replaced python-hl7's parse for speed: whatever python-hl7 can parse, every field mapping
    may read is the same, with the usual separators or a sender's own (MSH-1, MSH-2), escapes included."""
    text = _mutate(data, seed.translate(str.maketrans("|^~\\&", "!@#%$")) if separators == "!@#%$" else
                   seed.replace("MSH|^~\\&|", f"MSH{separators}|", 1)).strip()
    theirs = _read_as_python_hl7_does(text)
    if theirs is not None and (ours := _read_as_we_do(text)) is not None:
        assert ours == theirs



@pytest.mark.parametrize("separators", ["|^~\\&", "!@#%$", "|^~\\&#", "|^~", "|"])
@pytest.mark.parametrize("seed", [ADT, ORU], ids=["ADT", "ORU"])
def test_the_unmutated_messages_are_read_by_both_and_alike(seed: str, separators: str) -> None:
    """The fuzz test above compares only where both splitters read a message: here both must read each
    seed message, with each separator set, so a splitter that refused everything could not pass."""
    text = (seed.translate(str.maketrans("|^~\\&", "!@#%$")) if separators == "!@#%$" else
            seed.replace("MSH|^~\\&|", f"MSH{separators}|", 1)).strip()
    theirs, ours = _read_as_python_hl7_does(text), _read_as_we_do(text)
    assert theirs is not None and ours == theirs

def _csv_file(folder: Path, content: bytes) -> Path:
    path = folder / "LRC" / "csv" / "mosaic.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    return path


def _read_and_stage_csv(path: Path, framework: Framework) -> None:
    for raw in csv_extract.read_messages(path):
        _stages_or_says_where(csv_extract.stage_csv, raw, framework)


@FUZZ
@given(data=st.data())
def test_mutated_csv_rows_are_staged_or_refused_with_their_line(data: st.DataObject, framework: Framework,
                                                                tmp_path_factory) -> None:
    rows = []
    for _ in range(data.draw(st.integers(1, 3))):
        cells = CSV_ROW.split(",")
        for _ in range(data.draw(st.integers(1, 3))):
            position = data.draw(st.integers(0, len(cells) - 1))
            cells[position] = data.draw(FIELD)
        rows.append(",".join(cells))
    ending = data.draw(st.sampled_from(["\n", "\r\n", "\r"]))
    bom = data.draw(st.sampled_from(["", "\ufeff"]))
    text = bom + ending.join([CSV_HEADER, *rows]) + data.draw(st.sampled_from(["", ending]))
    _read_and_stage_csv(_csv_file(tmp_path_factory.mktemp("csv"), text.encode("utf-8", "surrogatepass")), framework)


@FUZZ
@given(content=st.one_of(st.binary(max_size=400),
                         st.builds(lambda b: (CSV_HEADER + "\n").encode() + b, st.binary(max_size=400))))
def test_any_bytes_as_a_csv_extract_are_staged_or_refused_with_their_line(content: bytes, framework: Framework,
                                                                          tmp_path_factory) -> None:
    _read_and_stage_csv(_csv_file(tmp_path_factory.mktemp("csv"), content), framework)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["resourceType", "id", "entry", "resource", "fullUrl", "subject", "reference", "meta",
                         "lastUpdated", "code", "coding", "identifier", "system", "value", "type", "x"]),
        children, max_size=4),
    max_leaves=12)
GP_SOURCE = "https://fhir.nhs.uk/Id/ods-organization-code|P81001#emis"
RESOURCE_TYPES = st.sampled_from(["Patient", "Condition", "Observation", "Claim", "Bundle", "NotAType", ""])


@FUZZ
@given(entries=st.lists(st.fixed_dictionaries({"resourceType": RESOURCE_TYPES, "id": st.text(max_size=5)},
                                              optional={"subject": JSON_VALUES, "meta": JSON_VALUES,
                                                        "identifier": JSON_VALUES, "code": JSON_VALUES}),
                        max_size=4),
       bundle_type=st.sampled_from(["collection", "batch", "transaction", "searchset", None]),
       extra=st.lists(JSON_VALUES, max_size=1))
def test_fhir_bundles_of_odd_shapes_are_staged_or_refused_with_their_entry(entries: list, bundle_type: str | None,
                                                                           extra: list, framework: Framework) -> None:
    bundle = {"resourceType": "Bundle", "type": bundle_type, "meta": {"source": GP_SOURCE},
              "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": e} for i, e in enumerate(entries)] + extra}
    raw = RawMessage("feeds/P81001/gp.ndjson", "line 1", json.dumps(bundle).encode(), "fhir")
    _stages_or_says_where(fhir_bundle.stage_fhir, raw, framework)


@FUZZ
@given(payload=st.binary(max_size=300))
def test_any_bytes_as_fhir_json_are_refused_with_their_line(payload: bytes, framework: Framework) -> None:
    _stages_or_says_where(fhir_bundle.stage_fhir, RawMessage("feeds/P81001/gp.ndjson", "line 1", payload, "fhir"),
                          framework)


# FHIR JSON is parsed by orjson where it gives exactly what the standard library gives (fhir_bundle._quick_loads):
# every value, type, key order and error must be the same as the standard library's alone.
JSON_TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["\ud800", "x\udfff", "\x00\x1f\x7f", "é£€漢😀"]))
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), JSON_TEXT,
              st.integers(min_value=2**63 - 5, max_value=2**64 + 5),
              st.integers(min_value=-2**63 - 5, max_value=-2**63 + 5)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(JSON_TEXT, children, max_size=4)),
    max_leaves=16)
NUMBER_LITERAL = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][-+]?[0-9]{1,4})?", fullmatch=True)


def _standard_outcome(raw: RawMessage) -> str:
    """What the parse gave before orjson: the standard library's value or error, as text to compare exactly."""
    try:
        data = fhir_bundle._standard_loads(raw)
    except MessageError as exc:
        return f"error {exc}"
    return repr(data) if isinstance(data, dict) and isinstance(data.get("resourceType"), str) else "not a resource"


def _outcome(raw: RawMessage) -> str:
    try:
        return repr(fhir_bundle._parse_json(raw))
    except MessageError as exc:
        return "not a resource" if "not a FHIR resource" in exc.message else f"error {exc}"


@FUZZ
@given(value=JSON_VALUES, number=NUMBER_LITERAL, ascii_only=st.booleans(), cut=st.integers(0, 400),
       junk=st.binary(max_size=3))
@example(value=18446744073709551616, number="1", ascii_only=True, cut=0, junk=b"")
@example(value=float("nan"), number="1e400", ascii_only=True, cut=0, junk=b"")
def test_fhir_json_parses_exactly_as_the_standard_library(value: object, number: str, ascii_only: bool, cut: int,
                                                          junk: bytes) -> None:
    text = json.dumps({"resourceType": "Patient", "value": value}, ensure_ascii=ascii_only)
    payload = (text[:-1] + f', "number": {number}}}').encode("utf-8", "surrogatepass")
    for candidate in (payload, payload[:cut] + junk + payload[cut:], payload[:cut]):
        raw = RawMessage("feeds/P81001/gp.ndjson", "line 1", candidate, "fhir")
        assert _outcome(raw) == _standard_outcome(raw)


# Content hashes are taken of the standard library's canonical text (sorted keys, no spaces, ASCII); orjson writes
# it where the two agree (messages.canonical_json), so every value must give exactly the standard library's text,
# or its error: a hash that changed would make every resource sent again a new version.
def _canonical_outcomes(content: object) -> tuple[bytes | str, bytes | str]:
    outcomes: list[bytes | str] = []
    for encode in (lambda: json.dumps(content, sort_keys=True, separators=(",", ":")).encode(),
                   lambda: canonical_json(content)):
        try:
            outcomes.append(encode())
        except (TypeError, ValueError) as exc:
            outcomes.append(f"error {type(exc).__name__}")
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize("value", [1e-05, -5e-324, 9.999999999999999e-05, 0.0001, 1e16, 1e22, 1.7976931348623157e308,
                                   float("nan"), float("-inf"), "x\x7f", "é", "😀", "\ud800", "\x00\x1f", 2**64, -2**63,
                                   {"b": 1, "a": {"d": [2, {"c": True}]}}, {1: "x"}, {"a": None}, {"a": "1e-5,"}])
def test_each_value_is_hashed_from_exactly_the_standard_librarys_text(value: object) -> None:
    for content in (value, {"resourceType": "Observation", "valueQuantity": {"value": value}}):
        expected, got = _canonical_outcomes(content)
        assert got == expected


@FUZZ
@given(value=JSON_VALUES, small=st.floats(min_value=-1e-3, max_value=1e-3), big=st.floats(min_value=1e14))
def test_any_content_is_hashed_from_exactly_the_standard_librarys_text(value: object, small: float, big: float,
                                                                       ) -> None:
    for content in (value, {"resourceType": "Observation", "valueQuantity": {"value": small}, "z": [big]}):
        expected, got = _canonical_outcomes(content)
        assert got == expected
