"""CSV extract faults a council's feed really has (CSV review, 2026-12-07): a safeguarding type spelt another way,
an outcome moved to the third-party notes, a stray quote, an extract whose every row fails, Word's line breaks."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.ingest.test_csv_extract import (
    MOSAIC,
    _everything,
    _extract,
    _lrc,
    _resources,
    _row,
    runner,
)
from tests.small_ics import citizen_token
from typer.testing import Result

from sharedcare.api.deps import SESSION_COOKIE
from sharedcare.cli import app
from sharedcare.governance.framework import Framework
from sharedcare.ingest import pipeline as pipeline_module
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Quarantine, Resource
from sharedcare.synth.csv_feeds import HEADER


def _person(db: Database, client_id: str = "C1") -> str:
    with db.session() as s:
        return s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_org == "LRC",
                                                               PatientRecord.source_id == client_id)).one()


def _patient_reads(client: TestClient, db: Database) -> str:
    """The patient's own record page in the patient portal (safeguarding tier 0: never shown to them)."""
    client.cookies.set(SESSION_COOKIE, citizen_token(db, _person(db)))
    page = client.get("/patient/record")
    assert page.status_code == 200
    return page.text


def _line(**changes: str) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(_row(**changes).values())
    return out.getvalue()


def _categories(db: Database) -> dict[tuple[str, str], str]:
    with db.session() as s:
        return {(r.resource_type, r.source_id): r.category for r in s.scalars(select(Resource))}


# --- F1: the assessment type is read exhaustively -------------------------------------------------------------

def test_a_safeguarding_enquiry_spelt_in_another_case_is_still_safeguarding_and_hidden_from_the_patient(
        db: Database, framework: Framework, client: TestClient, tmp_path: Path) -> None:
    """"Safeguarding Enquiry (S42)" against the mapping's "(s42)" was stored as ordinary social care, and the
    patient read the enquiry's outcome (a son suspected of financial abuse) in the patient portal."""
    rows: list[dict[str, str] | str] = [
        _row(assessment_id="A1", assessment_type=" safeguarding  ENQUIRY (S42)",
             outcome_summary="Enquiry opened: son suspected of financial abuse."),
        _row(assessment_id="A2", outcome_summary="Home care package agreed.")]
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), rows)])
    assert report.quarantined == 0, report.quarantine
    categories = _categories(db)
    assert categories[("Encounter", "A1")] == categories[("CarePlan", "A1")] == "safeguarding"
    assert categories[("CarePlan", "A2")] == "social_care"
    page = _patient_reads(client, db)
    assert "Home care package agreed." in page  # the page does show the patient's social care
    assert "financial abuse" not in page


def test_an_assessment_type_the_mapping_does_not_list_is_held_naming_line_column_and_value(
        db: Database, framework: Framework, client: TestClient, tmp_path: Path) -> None:
    """"Safeguarding concern" was kept as text, stored as social care, and shown to the patient."""
    rows: list[dict[str, str] | str] = [
        _row(), _row(assessment_id="A2", assessment_type="Safeguarding concern",
                     outcome_summary="Neighbour reports bruising.")]
    path = _extract(_lrc(tmp_path), rows)
    report = Pipeline(db, framework).ingest_paths([path])
    (held,) = report.quarantine
    assert held["where"] == f"{path}, line 3, column assessment_type"
    assert held["reason"] == ("'Safeguarding concern' is not one of the mapping's values (Safeguarding Enquiry (s42), "
                              "Care Act Assessment, Review, Carer's Assessment): add it to its `codes` or "
                              "`local`")
    assert ("Encounter", "A2") not in _categories(db)
    assert "bruising" not in _patient_reads(client, db)


def test_mapping_check_names_an_assessment_type_the_mapping_does_not_list(env: Database, tmp_path: Path) -> None:  # noqa: F811
    path = _extract(tmp_path / "sample.csv", [_row(), _row(assessment_type="Safeguarding concern")])
    result = runner.invoke(app, ["mapping", "check", str(MOSAIC), str(path), "--json"])
    assert result.exit_code == 1
    (failed,) = json.loads(result.stdout)["failed"]
    assert (failed["line"], failed["column"]) == (3, "assessment_type")
    assert failed["rule"].startswith("'Safeguarding concern' is not one of the mapping's values")


@pytest.mark.parametrize(("change", "problem"), [
    ("    local: [Care Act Assessment, Review, \"Carer's Assessment\"]\n", "list the values the column holds"),
    ("    local: [Care Act Assessment, Review, \"Carer's Assessment\", safeguarding enquiry  (S42)]\n",
     "'safeguarding enquiry (S42)' is listed twice (as 'Safeguarding Enquiry (s42)' too"),
    # a mapping written before `local` (2026-12-07): its values were kept as text, which tier 2 withholds
    ("    text_only: [Care Act Assessment, Review, \"Carer's Assessment\"]\n", "`text_only` is now `local`"),
])
def test_a_mapping_whose_assessment_types_are_not_each_listed_once_is_refused_naming_its_line(
        env: Database, tmp_path: Path, change: str, problem: str) -> None:  # noqa: F811
    good = MOSAIC.read_text()
    declared = "    local: [Care Act Assessment, Review, \"Carer's Assessment\"]\n"
    broken = good.replace(declared, change)
    if change == declared:  # no values at all: neither codes nor local
        broken = good[:good.index("    codes:\n      \"Safeguarding")] + good[good.index("  status: {column: status"):]
    mapping = tmp_path / "LRC-mosaic.yaml"
    mapping.write_text(broken)
    result = runner.invoke(app, ["mapping", "check", str(mapping), str(_extract(tmp_path / "s.csv", [_row()]))])
    assert result.exit_code == 2
    said = " ".join(result.stderr.split())
    assert "assessment.type" in said and problem in said, said


# --- F2: a part left blank withdraws what an earlier row made of it --------------------------------------------

def test_an_outcome_moved_to_the_third_party_notes_is_withdrawn_from_the_patients_record(
        db: Database, framework: Framework, client: TestClient, tmp_path: Path) -> None:
    """The council typed a neighbour's allegation into the outcome, then moved it to the third-party notes and
    sent the row again: the old care plan stayed, and the patient still read the allegation."""
    allegation = "Neighbour Mrs Hale says his son hits him when drunk."
    pipeline = Pipeline(db, framework)
    pipeline.ingest_paths([_extract(_lrc(tmp_path), [_row(outcome_summary=allegation)])])
    assert allegation in _patient_reads(client, db)
    corrected = _row(outcome_summary="", third_party_notes=allegation, last_updated="2026-10-18T09:00:00Z")
    report = pipeline.ingest_paths([_extract(_lrc(tmp_path, "mosaic-0002.csv"), [corrected])])
    assert report.quarantined == 0, report.quarantine
    assert allegation not in _patient_reads(client, db)
    (plan,) = _resources(db, "CarePlan")
    assert plan["status"] == "entered-in-error" and "description" not in plan
    # the social worker reads the note as third-party information, and no care plan
    seen = _everything(client, framework, "sw.brown", _person(db))
    assert [r["resourceType"] for r in seen if r["resourceType"] in ("CarePlan", "DocumentReference")] == [
        "DocumentReference"]

    # an older copy of the first row, arriving late, does not bring the allegation back
    late = pipeline.ingest_paths([_extract(_lrc(tmp_path, "mosaic-0000.csv"), [_row(outcome_summary=allegation)])])
    assert late.stale >= 1 and allegation not in _patient_reads(client, db)


def test_a_third_party_note_cleared_is_withdrawn_and_a_row_that_never_had_one_makes_nothing(
        db: Database, framework: Framework, client: TestClient, tmp_path: Path) -> None:
    note = "Daughter says she cannot cope."
    pipeline = Pipeline(db, framework)
    first = pipeline.ingest_paths([_extract(_lrc(tmp_path), [
        _row(third_party_notes=note), _row(assessment_id="A2", outcome_summary="")])])
    assert (first.accepted, first.quarantined) == (5, 0)  # Patient, 2 Encounters, CarePlan, DocumentReference
    assert {("CarePlan", "A2"), ("DocumentReference", "A2")}.isdisjoint(_categories(db))
    cleared = pipeline.ingest_paths([_extract(_lrc(tmp_path, "mosaic-0002.csv"), [
        _row(third_party_notes="", last_updated="2026-10-18T09:00:00Z")])])
    assert (cleared.accepted, cleared.quarantined) == (1, 0)
    (document,) = _resources(db, "DocumentReference")
    assert document["status"] == "entered-in-error" and "data" not in document["content"][0]["attachment"]
    assert not [r for r in _everything(client, framework, "sw.brown", _person(db))
                if r["resourceType"] == "DocumentReference"]
    again = pipeline.ingest_paths([_extract(_lrc(tmp_path, "mosaic-0002.csv"), [
        _row(third_party_notes="", last_updated="2026-10-18T09:00:00Z")])])
    assert (again.accepted, again.quarantined) == (0, 0)


# --- F4: a stray quote holds its own line only --------------------------------------------------------------

@pytest.mark.parametrize("case", ["never closed", "past the field limit", "closed by a later quoted field"])
def test_a_stray_opening_quote_holds_only_its_line_and_every_later_row_is_read(
        db: Database, framework: Framework, tmp_path: Path, case: str) -> None:
    """One stray quote in row 2 took the following rows into one field until the end of the file or the field
    limit (131,072 characters): 569 of 3,000 assessments were missing, held as one item counted once."""
    long = "Eligible needs identified. " * (200 if case == "past the field limit" else 1)
    rows = [_line(client_id=f"C{i}", nhs_number="", assessment_id=f"A{i}", outcome_summary=long.strip())
            for i in range(1, 41)]
    rows[1] = rows[1].replace("Eligible", '"Eligible', 1)
    if case == "closed by a later quoted field":
        rows[5] = _line(client_id="C6", nhs_number="", assessment_id="A6", team="Older People's, Locality Team")
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), list(rows))])
    assert (len(_resources(db, "Encounter")), report.quarantined) == (39, 1)
    (held,) = report.quarantine
    assert (held["location"], held["reason"]) == ("line 3", (
        "a quoted field opened on this line is not closed on it: is a quote left open? This line alone is held; the "
        "lines after it are read as rows of their own"))
    with db.session() as s:
        assert s.scalars(select(Quarantine.payload)).one().decode().endswith(rows[1] + "\r\n")


# --- F5: a report keeps what a person reads, however many rows fail ------------------------------------------

def test_an_extract_whose_every_row_fails_is_counted_whole_and_listed_in_part(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each refusal was kept with its traceback (6.4 KB a row, about 3 GB for a 500,000-row extract whose every
    row failed). The report lists the first REPORT_LISTS, without tracebacks, and counts all by reason; the
    quarantine table holds every row."""
    monkeypatch.setattr(pipeline_module, "REPORT_LISTS", 4)
    rows: list[dict[str, str] | str] = [_row(client_id=f"C{i}", nhs_number="", assessment_id=f"A{i}",
                                             status="Done" if i % 2 else "Closed") for i in range(11)]
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), rows)])
    assert report.quarantined == 11 and len(report.quarantine) == len(report.errors) == 4
    assert all(e.__traceback__ is None and e.__cause__ is None and e.__context__ is None for e in report.errors)
    assert report.held_by_reason == {
        "'Closed' is not in the mapping's codes (Completed, In progress)": 6,
        "'Done' is not in the mapping's codes (Completed, In progress)": 5}
    assert report.to_json()["quarantine_unlisted"] == 7
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Quarantine)) == 11


def test_ingest_tells_the_operator_how_many_more_were_held_and_why(env: Database, tmp_path: Path) -> None:  # noqa: F811
    header = tuple("team_name" if column == "team" else column for column in HEADER)
    rows: list[dict[str, str] | str] = [{**_row(client_id=f"C{i}", assessment_id=f"A{i}"), "team_name": "OP"}
                                        for i in range(25)]
    result: Result = runner.invoke(app, ["ingest", str(_extract(_lrc(tmp_path), rows, header=header))],
                                   env={"COLUMNS": "400"})
    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert "5 more quarantined (sharedcare quarantine list); all 25 by reason:" in said
    assert "25 x the header lacks column 'team'" in said


# --- F6: what a reason names ----------------------------------------------------------------------------------

def _held(db: Database, framework: Framework, tmp_path: Path, text: str) -> list[dict[str, Any]]:
    path = _lrc(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return Pipeline(db, framework).ingest_paths([path]).quarantine


def test_a_nul_in_a_utf8_row_is_named_in_its_column_not_as_utf16(db: Database, framework: Framework,
                                                                 tmp_path: Path) -> None:
    (held,) = _held(db, framework, tmp_path, ",".join(HEADER) + "\r\n" + _line(outcome_summary="ok\x00") + "\r\n")
    assert held["where"].endswith("line 2, column outcome_summary")
    assert held["reason"] == "holds the control character U+0000 at character 3, which a record cannot keep"


def test_a_line_break_from_word_in_free_text_is_a_line_end_and_elsewhere_names_the_column(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    rows = [_line(outcome_summary="Agreed.\x0bReview in 6 weeks.", third_party_notes="Daughter says\x0cshe is tired"),
            _line(client_id="C2", nhs_number="", assessment_id="A2", phone="01632\x0b960457")]
    (held,) = _held(db, framework, tmp_path, "\r\n".join([",".join(HEADER), *rows]) + "\r\n")
    assert held["where"].endswith("line 3, column phone")
    assert held["reason"] == "holds the control character U+000B at character 6, which a record cannot keep"
    (plan,) = _resources(db, "CarePlan")
    assert plan["description"] == "Agreed.\nReview in 6 weeks."


def test_a_doubled_byte_order_mark_is_read(db: Database, framework: Framework, tmp_path: Path) -> None:
    assert _held(db, framework, tmp_path, "\ufeff\ufeff" + ",".join(HEADER) + "\r\n" + _line() + "\r\n") == []
    assert len(_resources(db, "Encounter")) == 1


def test_a_status_the_mapping_lacks_is_named_once(db: Database, framework: Framework, tmp_path: Path) -> None:
    """Both the assessment and its outcome read `status`: the reason said the same thing twice."""
    (held,) = _held(db, framework, tmp_path, f"{','.join(HEADER)}\r\n{_line(status='Done')}\r\n")
    assert held["reason"] == "'Done' is not in the mapping's codes (Completed, In progress)"


# --- F7: an extract written month first (a US system's MM/DD/YYYY under the DD/MM/YYYY mapping) ------------------

def _month_first(**dates: tuple[str, str]) -> list[dict[str, str] | str]:
    """Rows of clients C0.. with these (date of birth, assessment date), as a US system writes them."""
    return [_row(client_id=client, nhs_number="", assessment_id=f"A-{client}", date_of_birth=born,
                 assessment_date=seen) for client, (born, seen) in dates.items()]


US_ROWS = {"C0": ("03/24/1945", "10/02/2026"), "C1": ("02/03/1950", "10/13/2026"),
           "C2": ("11/30/1938", "10/14/2026"), "C3": ("07/04/1960", "09/03/2026")}
MONTH_FIRST_NOTE = (
    "its dates look month first (MM/DD/YYYY), but the mapping reads them day first (DD/MM/YYYY): rows hold a date "
    "that reads only as MM/DD/YYYY, 2 in column date_of_birth (such as '03/24/1945') and 2 in column "
    "assessment_date (such as '10/13/2026'), and no date in those columns reads only as DD/MM/YYYY. No date was "
    "read the other way round: those rows are refused, and a date that reads either way (a day of 12 or less) is "
    "read as DD/MM/YYYY, so if the extract is month first such a row's date has its day and month exchanged. Ask "
    "the source which order its extract writes, then correct the extract or the mapping.")


def test_an_extract_written_month_first_is_named_so_once_and_each_row_keeps_its_refusal(
        env: Database, tmp_path: Path) -> None:  # noqa: F811
    """Each row was refused as 'not a date' and nothing said why so many were: the operator is told once, for the
    file, that its dates look month first and what the mapping reads; no date is read the other way round."""
    path = _extract(_lrc(tmp_path), _month_first(**US_ROWS))
    result: Result = runner.invoke(app, ["ingest", str(path)], env={"COLUMNS": "400"})
    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert said.count("look month first") == 1 and f"note {path}: {MONTH_FIRST_NOTE}" in said
    for line, refusal in ((2, "column date_of_birth: '03/24/1945' is not a date in the form DD/MM/YYYY"),
                          (3, "column assessment_date: '10/13/2026' is not a date in the form DD/MM/YYYY"),
                          (4, "column date_of_birth: '11/30/1938' is not a date in the form DD/MM/YYYY; column "
                              "assessment_date: '10/14/2026' is not a date in the form DD/MM/YYYY")):
        assert f"{path}, line {line}, {refusal}" in said
    # the rows whose dates read either way are stored as the mapping reads them, never turned round
    (patient,) = _resources(env, "Patient")
    (encounter,) = _resources(env, "Encounter")
    assert (patient["birthDate"], encounter["period"]["start"]) == ("1960-04-07", "2026-03-09")

    again = json.loads(runner.invoke(app, ["ingest", str(path), "--json"]).stdout)
    assert again["file_notes"] == [{"file": str(path), "note": MONTH_FIRST_NOTE}]
    assert again["quarantined"] == 3


def test_month_first_dates_staged_by_worker_processes_are_named_too(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A large extract is staged by worker processes: the rows' dates come back with their refusals."""
    report = Pipeline(db, framework, workers=2, parallel_from_bytes=0).ingest_paths(
        [_extract(_lrc(tmp_path), _month_first(**US_ROWS))])
    assert [item["note"] for item in report.file_notes] == [MONTH_FIRST_NOTE]
    assert report.quarantined == 3


def test_a_day_first_extract_with_one_date_written_month_first_has_no_note(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A slip in one row is that row's refusal alone: the other rows' 25/12 dates show the file is day first."""
    rows = _month_first(C0=("24/03/1945", "13/10/2026"), C1=("02/03/1950", "10/13/2026"),
                        C2=("30/11/1938", "14/10/2026"))
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), rows)])
    assert report.file_notes == []
    (held,) = report.quarantine
    assert (held["where"].endswith("line 3, column assessment_date"), held["reason"]) == (
        True, "'10/13/2026' is not a date in the form DD/MM/YYYY")


def test_mapping_check_says_a_sample_looks_month_first(env: Database, tmp_path: Path) -> None:  # noqa: F811
    path = _extract(tmp_path / "sample.csv", _month_first(**US_ROWS))
    result = runner.invoke(app, ["mapping", "check", str(MOSAIC), str(path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["notes"] == [MONTH_FIRST_NOTE] and (report["rows"], report["accepted"]) == (4, 1)
    said = " ".join(runner.invoke(app, ["mapping", "check", str(MOSAIC), str(path)], env={"COLUMNS": "400"})
                    .stderr.split())
    assert f"note: {MONTH_FIRST_NOTE}" in said
