"""Free text from sources is shown as text, never run: a social care note and a lab comment carrying
markup reach the record page escaped."""

from __future__ import annotations

from pathlib import Path

from tests.ingest.test_csv_extract import _extract, _lrc, _row
from tests.ingest.test_hl7v2 import results, write_hl7
from tests.small_ics import Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline

# Active content (a script, an event handler) is refused at ingest (tests/ingest/test_invariants.py); markup
# that passes there (formatting, an image that fetches a URL) must still reach a page only as text.
SCRIPT = "<b>urgent</b>"
IMAGE = '<img src="https://evil.example/pixel.png">'


def test_markup_in_a_social_care_note_and_a_lab_comment_is_escaped(ics: Ics, framework: Framework,
                                                                   tmp_path: Path) -> None:
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    council = _extract(_lrc(tmp_path), [_row(outcome_summary=f"Care agreed {SCRIPT}")])
    lab = write_hl7(tmp_path / "RXR" / "lab.hl7", [results().replace(
        "NTE|1|L|Repeat in 2\\X2D\\3 days", f"NTE|1|L|Repeat soon {IMAGE}")])
    report = Pipeline(db, framework).ingest_paths([council, lab])
    assert report.quarantined == 0, report.quarantine
    for username in ("sw.brown", "dr.patel"):  # the council's own worker sees the note; the GP the lab comment
        ics.client.post("/login", data={"username": username, "password": "demo"})
        ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent", "reason": ""})
        page = ics.client.get(f"/record/{ics.okafor}").text
        assert SCRIPT not in page and IMAGE not in page and "<img src=" not in page
        if username == "sw.brown":
            assert "&lt;b&gt;urgent&lt;/b&gt;" in page
        ics.client.post("/logout")
