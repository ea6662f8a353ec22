"""A result as the lab sent it: "<5" stays less than five, ">90" more than ninety, a coded finding
("Detected") and a range ("10 to 20") are shown, a flag is said in words with the reference range beside
it, whether the result came by HL7 v2 or FHIR; and a trend chart does not draw ">90" as if it were 90."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.builders import SCT, bundle, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import IngestReport, Pipeline
from sharedcare.store.database import Database

MSH = "MSH|^~\\&|LAB|RXR|SHAREDCARE|QRD|20261103100000||ORU^R01^ORU_R01|L1|P|2.4|||AL|NE|GBR|8859/1"
PID = f"PID|1||MRN1^^^RXR^MR~{OKAFOR_NHS}^^^NHS^NH||OKAFOR^Emeka||19450302|M"
TESTS = ("Troponin T", "Estimated GFR", "MRSA screen", "Platelet estimate", "Serum potassium")
UCUM = "http://unitsofmeasure.org"
LAB = "https://riverside.example/lab-codes"
FLAGS = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


def _lab_report(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    path = tmp_path / "RXR" / "oru.hl7"
    path.parent.mkdir()
    path.write_bytes("\r".join([
        MSH, PID,
        "OBR|1|P1|F1|CARD^Cardiac and micro^L|||20261103080000||||||||||||||20261103090000|||F",
        "OBX|1|SN|TROP^Troponin T^L||<^5|ng/L|<14||||F",
        "OBX|2|NM|EGFRX^Estimated GFR^L||>90|mL/min/1.73m2|>60||||F",
        "OBX|3|CE|MRSA^MRSA screen^L||260373001^Detected^SCT||||||F",
        "OBX|4|SN|PLT^Platelet estimate^L||^10^-^20|10*9/L|||||F",
        "OBX|5|NM|K^Serum potassium^L||6.8|mmol/L|3.5-5.3|HH|||F"]).encode("latin-1") + b"\r\n")
    report: IngestReport = Pipeline(_db(ics), framework).ingest_paths([path])
    assert report.quarantined == 0, report.quarantine


def _page(ics: Ics, user: str, view: str = "") -> str:
    ics.client.post("/login", data={"username": user, "password": "demo"})
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"})
    page = ics.client.get(f"/record/{ics.okafor}/{view}") if view else page
    assert page.status_code == 200
    return " ".join(re.sub(r"<[^>]+>", " ", page.text.split('id="maincontent"', 1)[1]).split())


def _results_tab(text: str, tests: tuple[str, ...]) -> dict[str, str]:
    return {t: text.split(f"What {t} ", 1)[1].split("Detail", 1)[1].split("From", 1)[0].strip() for t in tests}


def test_the_results_tab_shows_less_than_more_than_coded_ranged_and_flagged_lab_values_as_sent(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """Stored right, shown wrong: troponin "<5" read "5 ng/L", eGFR ">90" read "90", the MRSA screen and
    the platelet range were blank, and the critically high potassium had neither its flag nor its range."""
    _lab_report(ics, framework, tmp_path)
    assert _results_tab(_page(ics, "dr.patel"), TESTS) == {
        "Troponin T": "&lt;5 ng/L (range up to 14 ng/L)",
        "Estimated GFR": "&gt;90 mL/min/1.73m2 (range 60 mL/min/1.73m2 and above)",
        "MRSA screen": "Detected",
        "Platelet estimate": "10 to 20 ×10⁹/L",
        "Serum potassium": "6.8 mmol/L (Critical high; range 3.5 to 5.3 mmol/L)"}


def test_what_changed_shows_the_hospitals_new_results_as_the_lab_sent_them(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    _lab_report(ics, framework, tmp_path)
    text = _page(ics, "dr.patel", "changes")
    shown = {t: text.split(f"Test {t} ", 1)[1].split("Result", 1)[1].split("Your last result", 1)[0].strip()
             for t in TESTS}
    assert shown == {"Troponin T": "&lt;5 ng/L (range up to 14 ng/L)",
                     "Estimated GFR": "&gt;90 mL/min/1.73m2 (range 60 mL/min/1.73m2 and above)",
                     "MRSA screen": "Detected", "Platelet estimate": "10 to 20 ×10⁹/L",
                     "Serum potassium": "6.8 mmol/L (Critical high; range 3.5 to 5.3 mmol/L)"}


def _observation(oid: str, display: str, **value: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/MRN1"},
            "code": {"coding": [{"system": LAB if oid.isalpha() else SCT, "code": oid, "display": display}]},
            "effectiveDateTime": "2026-11-03T08:00:00Z", **value}


def test_a_fhir_result_shows_its_comparator_coded_value_flag_range_and_other_kinds_of_value(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """The same display serves FHIR feeds: a flag sent only as its code ("H") is said in words."""
    feed = bundle("RXR", "epr", [
        _observation("crp", "C reactive protein",
                     valueQuantity={"value": 4, "comparator": "<", "unit": "mg/L", "system": UCUM, "code": "mg/L"}),
        _observation("hb", "Haemoglobin", valueQuantity={"value": 182, "unit": "g/L", "system": UCUM, "code": "g/L"},
                     interpretation=[{"coding": [{"system": FLAGS, "code": "H"}]}],
                     referenceRange=[{"low": {"value": 130, "unit": "g/L"}, "high": {"value": 180, "unit": "g/L"}}]),
        _observation("covid", "SARS-CoV-2 RNA", valueCodeableConcept={
            "coding": [{"system": SCT, "code": "260415000", "display": "Not detected"}]}),
        _observation("titre", "Rubella antibody titre", valueRatio={"numerator": {"value": 1},
                                                                     "denominator": {"value": 128}}),
        _observation("lmp", "Last menstrual period", valueDateTime="2026-10-20"),
        _observation("smoker", "Current smoker", valueBoolean=False),
        _observation("falls", "Falls in last year", valueInteger=3),
    ], timestamp="2026-11-20T10:00:00Z")
    report = Pipeline(_db(ics), framework).ingest_paths([write_ndjson(tmp_path / "fhir.ndjson", [feed])])
    assert report.quarantined == 0, report.quarantine
    names = ("C reactive protein", "Haemoglobin", "SARS-CoV-2 RNA", "Rubella antibody titre",
             "Last menstrual period", "Current smoker", "Falls in last year")
    assert _results_tab(_page(ics, "dr.patel"), names) == {
        "C reactive protein": "&lt;4 mg/L", "Haemoglobin": "182 g/L (High; range 130 to 180 g/L)",
        "SARS-CoV-2 RNA": "Not detected", "Rubella antibody titre": "1:128",
        "Last menstrual period": "20 Oct 2026", "Current smoker": "No", "Falls in last year": "3"}


def test_an_egfr_given_as_more_than_90_is_not_drawn_as_90_and_the_chart_says_so(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    feed = bundle("RXR", "epr", [
        _observation("1011481000000105", "eGFR using creatinine CKD-EPI",
                     valueQuantity={"value": 55, "unit": "mL/min/{1.73_m2}", "system": UCUM,
                                    "code": "mL/min/{1.73_m2}"}) | {"id": "egfr-1",
                                                                    "effectiveDateTime": "2026-05-14T09:00:00Z"},
        _observation("1011481000000105", "eGFR using creatinine CKD-EPI",
                     valueQuantity={"value": 90, "comparator": ">", "unit": "mL/min/{1.73_m2}", "system": UCUM,
                                    "code": "mL/min/{1.73_m2}"}) | {"id": "egfr-2"},
    ], timestamp="2026-11-20T10:00:00Z")
    report = Pipeline(_db(ics), framework).ingest_paths([write_ndjson(tmp_path / "egfr.ndjson", [feed])])
    assert report.quarantined == 0, report.quarantine
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    html = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    chart = html.split('<figcaption class="sc-chart__caption">eGFR', 1)[1].split("</figure>")[0]
    assert chart.count('r="4.5"') == 1  # 55 only: >90 is not a point at 90
    assert "eGFR 90 mL/min" not in chart and "latest 90" not in chart
    text = " ".join(re.sub(r"<[^>]+>", " ", chart).split())
    assert ("Not drawn, given as a limit, not a value: eGFR &gt;90 on 3 Nov 2026 "
            "(Riverside University Hospitals NHS Trust)") in text
