"""CSV extract ingest: what an integration engineer notices when the council's Mosaic extract arrives."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from sharedcare.api.auth import mint_token
from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.config import PROJECT_ROOT, load_settings
from sharedcare.governance.framework import Framework
from sharedcare.ingest.messages import content_hash
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Quarantine, Resource
from sharedcare.synth import generate
from sharedcare.synth.csv_feeds import HEADER

MOSAIC = PROJECT_ROOT / "config" / "mappings" / "LRC-mosaic.yaml"
THIRD_PARTY = "http://terminology.hl7.org/CodeSystem/v3-ActCode|THIRDPARTY"
runner = CliRunner()


def _row(**changes: str) -> dict[str, str]:
    row = {"client_id": "C1", "nhs_number": "9434765919", "family_name": "Okafor", "given_name": "Emeka",
           "date_of_birth": "02/03/1945", "sex": "Male", "address_line1": "14 Mill Lane", "town": "Riverside",
           "postcode": "RV3 7QT", "phone": "01632 960457", "assessment_id": "A1",
           "assessment_type": "Care Act Assessment", "assessment_date": "12/10/2026", "status": "Completed",
           "outcome_summary": "Home care package agreed: two calls a day.", "third_party_notes": "",
           "worker_name": "Maya Brown", "team": "Older People's Locality Team", "last_updated": "2026-10-17T10:35:00Z"}
    row.update(changes)
    return row


def _extract(path: Path, rows: list[dict[str, str] | str], header: tuple[str, ...] = HEADER, bom: bool = False,
             newline: str = "\r\n") -> Path:
    """An extract as Mosaic writes it; a str row is written as it is (to break the CSV on purpose)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(header)
    for row in rows:
        if isinstance(row, str):
            out.write(row + newline)
        else:
            writer.writerow([row[column] for column in header])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\ufeff" if bom else "").encode() + out.getvalue().encode("utf-8"))
    return path


def _lrc(tmp_path: Path, name: str = "mosaic-0001.csv") -> Path:
    return tmp_path / "LRC" / "csv" / name


def _count(db: Database, model: type) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def _resources(db: Database, resource_type: str) -> list[dict[str, Any]]:
    with db.session() as s:
        return list(s.scalars(select(Resource.content).where(Resource.resource_type == resource_type)))


@pytest.fixture(scope="module")
def council(tmp_path_factory: pytest.TempPathFactory, framework: Framework) -> Path:
    """A synthetic ICS's council extract folder (LRC/csv/)."""
    out = tmp_path_factory.mktemp("ics")
    generate(out, people=200, seed=5, framework=framework)
    return out / "LRC" / "csv"


def _extract_rows(folder: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(folder.glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def test_a_synthetic_council_extract_is_accepted_row_by_row(db: Database, framework: Framework,
                                                            council: Path) -> None:
    rows = _extract_rows(council)
    report = Pipeline(db, framework).ingest_paths([council])
    assert (report.messages, report.quarantined) == (len(rows), 0), report.quarantine
    assert len(_resources(db, "Encounter")) == len({r["assessment_id"] for r in rows})
    with db.session() as s:
        clients = set(s.scalars(select(PatientRecord.source_id).where(PatientRecord.source_org == "LRC")))
    with (council.parent.parent / "ground_truth.csv").open(newline="") as handle:
        assert clients == {t["source_id"] for t in csv.DictReader(handle) if t["source_org"] == "LRC"}
    notes = [r for r in rows if r["third_party_notes"]]
    assert notes and len(_resources(db, "DocumentReference")) == len(notes)
    assert all(doc["meta"]["security"][0]["code"] == "THIRDPARTY" for doc in _resources(db, "DocumentReference"))


def _everything(client: TestClient, framework: Framework, username: str, person: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {mint_token(load_settings(), framework, username)}"}
    opened = client.post(f"/api/access/{person}", json={"basis": "explicit-consent"}, headers=headers)
    assert opened.status_code == 201, opened.text
    bundle = client.get(f"/fhir/Patient/{person}/$everything", headers=headers).json()
    return [entry["resource"] for entry in bundle["entry"]]


def test_a_neighbours_note_reaches_the_council_social_worker_but_never_the_gp(
        db: Database, framework: Framework, client: TestClient, council: Path) -> None:
    Pipeline(db, framework).ingest_paths([council])
    row = next(r for r in _extract_rows(council) if r["third_party_notes"])
    with db.session() as s:
        person = s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_org == "LRC",
                                                                 PatientRecord.source_id == row["client_id"])).one()

    gp = _everything(client, framework, "dr.patel", person)
    kinds = {r["resourceType"] for r in gp}
    assert {"Encounter", "CarePlan"} <= kinds and "DocumentReference" not in kinds
    assert not any("description" in r for r in gp if r["resourceType"] == "CarePlan")  # free text: tier 3 only
    assert row["third_party_notes"] not in json.dumps(gp)
    assert base64.b64encode(row["third_party_notes"].encode()).decode() not in json.dumps(gp)

    social_worker = _everything(client, framework, "sw.brown", person)
    notes = {base64.b64decode(r["content"][0]["attachment"]["data"]).decode(): r["meta"]["security"]
             for r in social_worker if r["resourceType"] == "DocumentReference"}
    assert THIRD_PARTY in {f"{s['system']}|{s['code']}" for s in notes[row["third_party_notes"]]}
    assert row["outcome_summary"] in {r.get("description") for r in social_worker if r["resourceType"] == "CarePlan"}


def test_a_file_with_a_byte_order_mark_is_read(db: Database, framework: Framework, tmp_path: Path) -> None:
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), [_row()], bom=True)])
    assert (report.accepted, report.quarantined) == (3, 0), report.quarantine  # Patient, Encounter, CarePlan
    (patient,) = _resources(db, "Patient")
    assert patient["birthDate"] == "1945-03-02" and patient["identifier"][0]["value"] == "9434765919"


def test_quoted_newlines_stay_in_the_field_and_lines_are_counted_physically(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    rows: list[dict[str, str] | str] = [
        _row(outcome_summary="Eligible needs identified.\r\nDay centre twice a week."),
        _row(client_id="C2", assessment_id="A2", date_of_birth="31/02/1950"),
    ]
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), rows)])
    assert report.quarantine[0]["location"] == "line 4"  # the second row starts on line 4
    (plan,) = _resources(db, "CarePlan")
    assert plan["description"] == "Eligible needs identified.\r\nDay centre twice a week."


def test_a_row_with_too_few_columns_is_quarantined_naming_its_line_and_the_next_rows_are_stored(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    short = ",".join(list(_row(client_id="C2", assessment_id="A2").values())[:-1])
    rows: list[dict[str, str] | str] = [_row(), short, _row(client_id="C3", assessment_id="A3")]
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), rows)])
    (held,) = report.quarantine
    assert held["location"] == "line 3"
    assert held["reason"] == "expected 19 columns, as the header has, but found 18"
    with db.session() as s:
        assert set(s.scalars(select(Resource.source_id).where(Resource.resource_type == "Encounter"))) == {"A1", "A3"}
        assert s.scalars(select(Quarantine.payload)).one().decode().endswith(short + "\r\n")


def test_a_bad_value_is_quarantined_naming_line_column_and_rule(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    rows: list[dict[str, str] | str] = [_row(), _row(client_id="C2", assessment_id="A2", date_of_birth="31/02/1950",
                                                     nhs_number="9434765918")]
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), rows)])
    (held,) = report.quarantine
    assert held["where"].endswith("mosaic-0001.csv, line 3, column nhs_number")
    assert held["reason"] == ("not a valid NHS number (modulus 11 check); "  # the number is not quoted
                              "column date_of_birth: '31/02/1950' is not a date in the form DD/MM/YYYY")
    assert _count(db, PatientRecord) == 1  # atomic per row: nothing of line 3 was stored


def test_a_blank_nhs_number_is_allowed(db: Database, framework: Framework, tmp_path: Path) -> None:
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), [_row(nhs_number="")])])
    assert report.quarantined == 0
    with db.session() as s:
        assert s.scalars(select(PatientRecord.nhs_number)).one() is None


def test_a_file_that_is_not_utf8_is_named_as_such(db: Database, framework: Framework, tmp_path: Path) -> None:
    path = _extract(_lrc(tmp_path), [_row(), _row(client_id="C2", assessment_id="A2", family_name="Renée")])
    path.write_bytes(path.read_bytes().replace("Renée".encode(), "Renée".encode("latin-1")))  # one Windows row
    report = Pipeline(db, framework).ingest_paths([path])
    (held,) = report.quarantine
    assert held["location"] == "line 3" and "not UTF-8: byte 0xE9" in held["reason"]
    assert report.accepted == 3


def test_a_header_no_mapping_reads_holds_every_row_and_each_is_replayed_once_the_mapping_reads_it(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mosaic renamed one column: the file was held as its header line alone, its rows in no item, and a replay
    of that item stored nothing (CSV review, 2026-12-07). Each row is held under the header's reason, nothing
    stored, and replays once the mapping is fixed, with the drop folder cleared meanwhile."""
    header = tuple("team_name" if column == "team" else column for column in HEADER)
    rows: list[dict[str, str] | str] = [{**_row(client_id=f"C{i}", nhs_number="", assessment_id=f"A{i}"),
                                         "team_name": "OP Team"} for i in range(3)]
    path = _extract(_lrc(tmp_path), rows, header=header)
    pipeline = Pipeline(db, framework)
    report = pipeline.ingest_paths([path])
    assert (report.messages, report.quarantined, report.accepted) == (3, 3, 0)
    assert [held["location"] for held in report.quarantine] == ["line 2", "line 3", "line 4"]
    reason = ("the header lacks column 'team' (the LRC-mosaic mapping expects each of its columns once): the row "
              "is held unread, to be replayed once a mapping reads the header")
    assert {(held["where"], held["reason"]) for held in report.quarantine} == {(f"{path}, header", reason)}
    assert report.held_by_reason == {reason: 3}
    assert _count(db, Resource) == 0 and _count(db, PatientRecord) == 0
    with db.session() as s:
        assert b"".join(s.scalars(select(Quarantine.payload).order_by(Quarantine.id))).count(b"OP Team") == 3
    path.unlink()

    mappings = tmp_path / "mappings"
    mappings.mkdir()
    renamed = MOSAIC.read_text().replace("worker_name, team,", "worker_name, team_name,")
    (mappings / "LRC-mosaic.yaml").write_text(renamed.replace("team: team", "team: team_name"))
    monkeypatch.setenv("SHAREDCARE_MAPPINGS", str(mappings))
    for held in report.quarantine:
        assert pipeline.replay(held["id"]).accepted == 3, held["location"]
    assert {e["serviceType"]["text"] for e in _resources(db, "Encounter")} == {"OP Team"}
    assert len(_resources(db, "Encounter")) == 3


def test_a_file_whose_header_cannot_be_read_is_held_whole(db: Database, framework: Framework,
                                                         tmp_path: Path) -> None:
    """A UTF-16 export: one item, of every byte of the file, not its first line alone."""
    path = _lrc(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(",".join(HEADER).encode("utf-16") + "\r\n".join(
        ["", *(",".join(_row(assessment_id=f"A{i}").values()) for i in range(3))]).encode("utf-16-le"))
    report = Pipeline(db, framework).ingest_paths([path])
    (held,) = report.quarantine
    assert (held["location"], held["reason"]) == ("header", "the file is UTF-16, not UTF-8: export the extract "
                                                            "again as UTF-8")
    with db.session() as s:
        assert s.scalars(select(Quarantine.payload)).one() == path.read_bytes()


def test_the_same_file_twice_changes_nothing(db: Database, framework: Framework, council: Path) -> None:
    first = Pipeline(db, framework).ingest_paths([council])
    with db.session() as s:
        before = {r.id: (r.version, r.content_hash) for r in s.scalars(select(Resource))}
    again = Pipeline(db, framework).ingest_paths([council])
    assert (again.accepted, again.quarantined) == (0, 0)
    # stale: the Patient of a client's older row, made when the council held another address
    assert again.unchanged + again.stale == first.accepted + first.unchanged + first.stale
    with db.session() as s:
        assert {r.id: (r.version, r.content_hash) for r in s.scalars(select(Resource))} == before


def test_an_assessment_stored_as_text_before_local_codes_is_coded_when_its_row_is_ingested_again(
        db: Database, framework: Framework, client: TestClient, tmp_path: Path) -> None:
    """Before the mapping's `local` list, Mosaic's types were stored as text alone, which the GP (social care at
    tier 2) is shown as "Not shown at your access level": safe, and left so. Ingesting the council's extract
    again, its rows unchanged, stores each assessment again, coded, and the GP reads what it was."""
    extract = _extract(_lrc(tmp_path), [_row()])
    Pipeline(db, framework).ingest_paths([extract])
    with db.session() as s:  # as the store held it before
        for stored in s.scalars(select(Resource).where(Resource.resource_type.in_(("Encounter", "CarePlan")))):
            kind = "type" if stored.resource_type == "Encounter" else "category"
            stored.content = {**stored.content, kind: [{"text": "Care Act Assessment"}]}
            stored.content_hash = content_hash(stored.content)
        person = s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_org == "LRC")).one()
        s.commit()
    masked = json.dumps([r.get("type") for r in _everything(client, framework, "dr.patel", person)])
    assert "Care Act Assessment" not in masked and "Not shown at your access level" in masked

    again = Pipeline(db, framework).ingest_paths([extract])
    assert (again.accepted, again.quarantined) == (2, 0), again.quarantine  # the Encounter and the CarePlan
    coded = [r for r in _everything(client, framework, "dr.patel", person) if r["resourceType"] == "Encounter"]
    assert coded[0]["type"] == [{"coding": [{"system": "https://fhir.lrc.nhs.uk/CodeSystem/mosaic-assessment-type",
                                             "code": "Care Act Assessment", "display": "Care Act Assessment"}]}]


def test_a_late_older_row_does_not_overwrite_a_newer_one(db: Database, framework: Framework, tmp_path: Path) -> None:
    pipeline = Pipeline(db, framework)
    pipeline.ingest_paths([_extract(_lrc(tmp_path, "mosaic-0002.csv"), [_row(status="Completed")])])
    older = _row(status="In progress", outcome_summary="Assessment started.", last_updated="2026-10-13T09:00:00Z")
    report = pipeline.ingest_paths([_extract(_lrc(tmp_path, "mosaic-0001.csv"), [older])])
    assert (report.accepted, report.unchanged, report.stale) == (0, 1, 2)  # the Patient is the same
    (plan,) = _resources(db, "CarePlan")
    assert (plan["status"], plan["description"]) == ("active", "Home care package agreed: two calls a day.")


def test_a_row_updated_in_the_future_is_quarantined_naming_the_column(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """secrev F2: `last_updated` orders the council's rows; a row dated a day ahead would make every later
    row for the assessment stale, so it is held, naming the column and the rule, and the file goes on."""
    ahead = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows: list[dict[str, str] | str] = [_row(last_updated=ahead), _row(client_id="C2", assessment_id="A2")]
    report = Pipeline(db, framework).ingest_paths([_extract(_lrc(tmp_path), rows)])
    assert (report.accepted, report.quarantined) == (3, 1)
    (held,) = report.quarantine
    assert held["where"].endswith("line 2, column last_updated")
    assert "more than 300 seconds after the message was received" in held["reason"]


def test_a_row_quarantined_by_the_mapping_is_replayed_once_the_mapping_is_fixed(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    mapping = mappings / "LRC-mosaic.yaml"
    mapping.write_text(MOSAIC.read_text().replace("Female: female, ", ""))  # the engineer forgot one code
    monkeypatch.setenv("SHAREDCARE_MAPPINGS", str(mappings))
    rows: list[dict[str, str] | str] = [_row(), _row(client_id="C2", assessment_id="A2", family_name="Hughes",
                                                     given_name="Margaret", sex="Female")]
    pipeline = Pipeline(db, framework)
    report = pipeline.ingest_paths([_extract(_lrc(tmp_path), rows)])
    (held,) = report.quarantine
    assert held["where"].endswith("line 3, column sex") and "'Female' is not in the mapping's codes" in held["reason"]

    mapping.write_text(MOSAIC.read_text())
    replayed = pipeline.replay(held["id"])
    assert (replayed.accepted, replayed.quarantined) == (3, 0)
    with db.session() as s:
        assert s.get_one(Quarantine, held["id"]).status == "replayed"
        assert s.scalars(select(PatientRecord.gender).where(PatientRecord.source_id == "C2")).one() == "female"


def test_mapping_check_passes_a_good_sample(env: Database, council: Path) -> None:
    result = runner.invoke(app, ["mapping", "check", str(MOSAIC), str(next(council.glob("*.csv")))])
    assert result.exit_code == 0, result.output
    assert "rows would be accepted" in result.stderr


def test_mapping_check_names_each_failing_rows_line_column_and_rule(env: Database, tmp_path: Path) -> None:
    path = _extract(tmp_path / "sample.csv", [_row(), _row(assessment_date="2026-10-12"), _row(sex="M")])
    result = runner.invoke(app, ["mapping", "check", str(MOSAIC), str(path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["rows"], report["accepted"]) == (3, 1)
    assert report["failed"] == [
        {"line": 3, "column": "assessment_date", "rule": "'2026-10-12' is not a date in the form DD/MM/YYYY"},
        {"line": 4, "column": "sex", "rule": "'M' is not in the mapping's codes (Male, Female, Other, Unknown)"},
    ]
    assert _count(env, Resource) == 0  # a check stores nothing


def test_mapping_check_reports_a_header_missing_a_column(env: Database, tmp_path: Path) -> None:
    path = _extract(tmp_path / "sample.csv", [_row()], header=HEADER[:-1])
    result = runner.invoke(app, ["mapping", "check", str(MOSAIC), str(path), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["failed"] == [
        {"line": 1, "column": "last_updated", "rule": "is missing from the header"}]


def test_mapping_check_refuses_an_invalid_mapping_naming_its_line(env: Database, tmp_path: Path) -> None:
    broken = tmp_path / "LRC-mosaic.yaml"
    broken.write_text(MOSAIC.read_text().replace("family: family_name", "family: surname"))
    result = runner.invoke(app, ["mapping", "check", str(broken), str(_extract(tmp_path / "s.csv", [_row()]))])
    assert result.exit_code == 2
    assert "line 19, patient.family: column 'surname' is not in `columns`" in result.stderr


def test_a_mapping_that_lists_a_code_twice_is_refused_naming_both_lines(env: Database, tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys without a word: `Male: male` then `Male: female` filed every man as
    a woman. The mapping is refused, as the framework is, before any row is read."""
    twice = tmp_path / "LRC-mosaic.yaml"
    twice.write_text(MOSAIC.read_text().replace("sex: {column: sex, codes: {Male: male, Female: female,",
                                                "sex: {column: sex, codes: {Male: male, Female: female, Male: female,"))
    assert twice.read_text() != MOSAIC.read_text()
    result = runner.invoke(app, ["mapping", "check", str(twice), str(_extract(tmp_path / "s.csv", [_row()]))])
    assert result.exit_code == 2
    assert ("line 22, patient.sex.codes.Male: 'Male' is written twice on this line; YAML keeps only the last, "
            "without a word, so the file does not say which is meant: remove one") in " ".join(result.stderr.split())


def test_a_mapping_that_reads_two_digit_years_is_refused_naming_its_line(env: Database, tmp_path: Path) -> None:
    """%y reads 00-68 as 20xx: a resident born 02/03/25 was stored as born on 2 March 2025 (clinical fidelity
    review, 2026-12-07). The mapping is refused before any row is read."""
    two_digit = tmp_path / "LRC-mosaic.yaml"
    two_digit.write_text(MOSAIC.read_text().replace('date_of_birth, format: "%d/%m/%Y"',
                                                    'date_of_birth, format: "%d/%m/%y"'))
    assert two_digit.read_text() != MOSAIC.read_text()
    result = runner.invoke(app, ["mapping", "check", str(two_digit), str(_extract(tmp_path / "s.csv", [_row()]))])
    assert result.exit_code == 2
    assert ("line 21, patient.birth_date.format: '%d/%m/%y' reads a two-digit year (%y), which cannot tell 1925 "
            "from 2025: use %Y") in " ".join(result.stderr.split())
