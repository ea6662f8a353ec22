"""What the council's data lead notices about the social care extract."""

from __future__ import annotations

import csv
import re
from datetime import date

from synth_helpers import SynthRun

HEADER = ("client_id,nhs_number,family_name,given_name,date_of_birth,sex,address_line1,town,postcode,phone,"
          "assessment_id,assessment_type,assessment_date,status,outcome_summary,third_party_notes,worker_name,"
          "team,last_updated")


def uk_date(text: str) -> date:
    day, month, year = text.split("/")
    assert len(day) == len(month) == 2 and len(year) == 4
    return date(int(year), int(month), int(day))


def test_the_extract_has_exactly_the_agreed_header(run: SynthRun) -> None:
    for path in run.files("LRC/csv/*.csv"):
        assert path.read_text(encoding="utf-8").splitlines()[0] == HEADER
        with path.open(encoding="utf-8", newline="") as f:
            assert all(len(row) == 19 for row in csv.reader(f))


def test_dates_are_uk_style_and_last_updated_is_iso_utc(run: SynthRun) -> None:
    rows = run.rows()
    assert rows
    for row in rows:
        uk_date(row["date_of_birth"])
        uk_date(row["assessment_date"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["last_updated"])


def test_nhs_number_is_often_blank(run: SynthRun) -> None:
    clients = {row["client_id"]: row["nhs_number"] for row in run.rows()}
    blank = sum(1 for number in clients.values() if not number)
    assert 0 < blank < len(clients)


def test_some_third_party_notes_name_a_carer_or_a_neighbour(run: SynthRun) -> None:
    notes = [row["third_party_notes"] for row in run.rows() if row["third_party_notes"]]
    assert any(note.startswith("Neighbour Mrs Ruth Allen") for note in notes)
    assert len(notes) < len(run.rows())
