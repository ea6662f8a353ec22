"""What an interface analyst notices about the acute trust's HL7 v2 files."""

from __future__ import annotations

from collections import Counter

import hl7
import nhs_number
import pytest
from synth_helpers import SynthRun, segments

from sharedcare.synth.hl7_feeds import escape


@pytest.mark.parametrize("system", ["pas", "lab"])
def test_every_message_parses_as_hl7_v2_4_in_iso_8859_1(run: SynthRun, system: str) -> None:
    messages = run.messages(system)
    assert messages
    for text in messages:
        assert text.endswith("\r")
        message = hl7.parse(text)
        assert str(message.segment("MSH")[12]) == "2.4"
        assert str(message.segment("MSH")[18]) == "8859/1"


def test_files_are_encoded_latin_1_not_utf_8(run: SynthRun) -> None:
    for path in run.files("RXR/hl7v2/*.hl7"):
        path.read_bytes().decode("latin-1").encode("latin-1")


def test_control_ids_are_unique_across_both_feeds(run: SynthRun) -> None:
    ids = Counter(segments(m, "MSH")[0][9] for system in ("pas", "lab") for m in run.messages(system))
    assert max(ids.values()) == 1


def test_the_pas_sends_admissions_discharges_and_address_updates(run: SynthRun) -> None:
    kinds = Counter(segments(m, "MSH")[0][8] for m in run.messages("pas"))
    assert kinds["ADT^A01^ADT_A01"] == kinds["ADT^A03^ADT_A03"] > 0
    assert kinds["ADT^A08^ADT_A01"] > 0
    for message in run.messages("pas"):
        names = [s.split("|")[0] for s in message.split("\r") if s]
        assert names[:3] == ["MSH", "EVN", "PID"] and "PD1" in names and names[-1] == "PV1"


def test_pid_3_carries_the_hospital_number_and_usually_a_valid_nhs_number(run: SynthRun) -> None:
    with_nhs = without = 0
    for message in run.messages("pas"):
        ids = segments(message, "PID")[0][3].split("~")
        assert ids[0].endswith("^^^RXR^MR")
        if len(ids) == 2:
            number, _, _, authority, kind = ids[1].split("^")
            assert (authority, kind) == ("NHS", "NH") and nhs_number.is_valid(number)
            with_nhs += 1
        else:
            without += 1
    assert with_nhs > without > 0


def test_next_of_kin_is_sent_where_known(run: SynthRun) -> None:
    kin = [segments(m, "NK1")[0] for m in run.messages("pas") if segments(m, "NK1")]
    assert kin
    assert all(k[7] == "N^Next-of-Kin^HL70131" and k[3].endswith("^HL70063") for k in kin)


def test_lab_results_are_numeric_with_units_ranges_flags_and_snomed_codes(run: SynthRun) -> None:
    codes: Counter[str] = Counter()
    for message in run.messages("lab"):
        names = [s.split("|")[0] for s in message.split("\r") if s]
        assert names[:5] == ["MSH", "PID", "PV1", "ORC", "OBR"]
        for obx in segments(message, "OBX"):
            assert obx[2] == "NM" and obx[3].endswith("^SCT")
            float(obx[5])
            assert obx[6] and obx[8] in {"H", "L", "N"} and obx[11] == "F"
            codes[obx[3].split("^")[0]] += 1
    assert {"1011481000000105", "1000731000000107"} <= set(codes)


def test_lab_comments_use_hl7_escapes_for_ampersands(run: SynthRun) -> None:
    notes = [n for m in run.messages("lab") for n in segments(m, "NTE")]
    assert notes
    assert any("\\T\\" in n[3] for n in notes) and not any("&" in n[3] for n in notes)


def test_text_is_escaped_with_hl7_escape_sequences() -> None:
    assert escape("U&E | 5^2 ~ a\\b") == "U\\T\\E \\F\\ 5\\S\\2 \\R\\ a\\E\\b"
