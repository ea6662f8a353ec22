"""How dangerous an allergy is: its criticality, how severe its reaction was, and whether it is an allergy or an
intolerance, as the source sent them (HL7 AL1-4 is mapped into the first two). Clinician portal review of
2026-12-07 (MEDIUM, clinical safety): a penicillin allergy with anaphylaxis read the same as a codeine
intolerance that made the patient sick."""

from __future__ import annotations

import re
from pathlib import Path

from tests.allergy_feed import ingest_allergies
from tests.small_ics import Ics

from sharedcare.governance.framework import Framework


def _allergy_rows(html: str, start: str, end: str) -> list[str]:
    """The Allergies table's rows as a reader hears them: what, date, status, detail (not who sent them)."""
    section = html[html.index(start):html.index(end)]
    rows = re.findall(r'<tr class="nhsuk-table__row">(.*?)</tr>', section, re.S)[1:]
    return [" ".join(re.sub(r"<[^>]+>", " ", r).split()).split(" From ", 1)[0] for r in rows]


EXPECTED = [
    "What Allergy to penicillin High risk Date 2 Apr 1996 Status active Detail Anaphylaxis (severe)",
    "What Codeine Low risk Intolerance Date 1 Oct 2026 Status active Detail Nausea (mild)",
    "What Aspirin Risk not assessed Date 11 Jun 2024 Status active Detail Wheeze (moderate)",
]


def test_the_record_and_the_medicines_page_say_how_dangerous_each_allergy_is_high_risk_first(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    ingest_allergies(ics.client.app.state.database, framework, tmp_path)  # type: ignore[attr-defined]
    ics.client.post("/login", data={"username": "para.evans", "password": "demo"})
    record = ics.client.post(f"/record/{ics.okafor}/basis",
                             data={"basis": "implied-consent", "reason": "confused, daughter not present"}).text
    assert _allergy_rows(record, 'id="allergies"', 'id="medications"') == EXPECTED
    # the risk in words and in colour: red for high, as the design system's tags show a warning
    assert '<strong class="nhsuk-tag nhsuk-tag--red">High risk</strong>' in record
    assert '<strong class="nhsuk-tag nhsuk-tag--grey">Low risk</strong>' in record
    medicines = ics.client.get(f"/record/{ics.okafor}/medicines").text
    assert _allergy_rows(medicines, "<h2>Allergies</h2>", "<h2>Medicines from every source</h2>") == EXPECTED


def test_a_doctor_breaking_glass_sees_the_high_risk_allergy_first(ics: Ics, framework: Framework,
                                                                    tmp_path: Path) -> None:
    ingest_allergies(ics.client.app.state.database, framework, tmp_path)  # type: ignore[attr-defined]
    ics.client.post("/login", data={"username": "dr.oconnor", "password": "demo"})
    record = ics.client.post(f"/record/{ics.okafor}/basis",
                             data={"basis": "emergency", "reason": "unconscious in resus, no history"}).text
    assert "Emergency access" in record
    assert _allergy_rows(record, 'id="allergies"', 'id="medications"') == EXPECTED
