"""Records stored before names were folded by their accents (letters of every script kept) and NHS numbers'
full-width digits read as ASCII (2026-12-07) hold what was made of them then; `sharedcare mpi reprepare`, run
once after upgrading, prepares them again and matches again those it changes. Each test writes a record's old
values directly, as the earlier release stored them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import update
from tests.builders import patient
from tests.conftest import FRAMEWORK_PATH
from tests.identity.test_journeys import _ingest, _records
from tests.ingest.test_hl7v2 import GOOD_NHS, OTHER_NHS
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.governance.framework import Framework
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Person

GP, HOSPITAL = ("P81001", "emis"), ("RXR", "epr")
runner = CliRunner()



def _as_stored_before(db: Database, source_id: str, **old: object) -> None:
    """Give a record the values the earlier release stored for it, in a person of its own unless `old` names one."""
    with db.session() as s:
        if "person_id" not in old:
            old["person_id"] = str(uuid.uuid4())
            s.add(Person(id=old["person_id"]))
            s.flush()
        s.execute(update(PatientRecord).where(PatientRecord.source_id == source_id).values(
            {"link_method": "new", "link_status": "linked"} | old))


def _reprepare(db: Database, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    result = runner.invoke(app, ["mpi", "reprepare", "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, int] = json.loads(result.stdout)
    return report


def test_an_nhs_number_stored_in_full_width_digits_is_read_as_his_number_and_his_records_joined(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier release stored the hospital's full-width number as typed; the two-numbers rule then kept Mr
    Okafor's hospital record apart from his GP record for good (a relink too: it takes numbers as stored)."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("emeka", GOOD_NHS, "Okafor", "Emeka", "1945-03-02", "male")),
            (HOSPITAL, patient("h-emeka", OTHER_NHS, "Okafor", "Emeka", "1945-03-02", "male", "LS6 1AA")))
    _as_stored_before(db, "h-emeka", nhs_number="".join(chr(ord(d) + 0xFEE0) for d in GOOD_NHS))
    assert _records(db)["RXR/h-emeka"].person_id != _records(db)["P81001/emeka"].person_id
    report = _reprepare(db, monkeypatch)
    r = _records(db)
    assert r["RXR/h-emeka"].nhs_number == GOOD_NHS
    assert r["RXR/h-emeka"].person_id == r["P81001/emeka"].person_id
    assert r["RXR/h-emeka"].link_method == "nhs-number"
    assert (report["records"], report["nhs_numbers_rewritten"], report["matched_again"], report["moved"]) == (
        2, 1, 1, 1)
    assert _reprepare(db, monkeypatch)["matched_again"] == 0  # once done, nothing is due again


def test_a_greek_name_held_as_no_name_is_matched_to_her_other_record(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier release read Μαρία Παπαδοπούλου as no name: both her records were held as too little to match
    on, each a person of its own, which a relink skips."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("maria", GOOD_NHS, "Παπαδόπουλος", "Μαρία", "1970-05-05", "female")),
            (HOSPITAL, patient("h-maria", GOOD_NHS, "Παπαδόπουλος", "Μαρία", "1970-05-05", "female")))
    held = {"link_method": "insufficient-data", "link_status": "review", "name_key": None,
            "link_note": "held for review: no name; not matched"}
    _as_stored_before(db, "maria", **held)
    _as_stored_before(db, "h-maria", **held)
    report = _reprepare(db, monkeypatch)
    r = _records(db)
    assert r["RXR/h-maria"].person_id == r["P81001/maria"].person_id
    assert r["RXR/h-maria"].link_status == "linked"
    assert r["P81001/maria"].name_key == r["RXR/h-maria"].name_key == "παπαδοπουλοσ μαρια"  # final sigma: σ
    assert (report["name_keys_rewritten"], report["matched_again"], report["moved"]) == (2, 2, 1)


def test_twins_linked_when_their_names_read_alike_are_parted(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier release deleted every letter outside a-z: Nguyễn Hằng and Nguyễn Hương both read "ngyn hng"
    and the twins were one person, each seeing the other's record."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("hang", None, "Nguyễn", "Hằng", "2001-04-09", "female")),
            (HOSPITAL, patient("huong", None, "Nguyễn", "Hương", "2001-04-09", "female")))
    _as_stored_before(db, "hang", name_key="ngyn hng")
    _as_stored_before(db, "huong", name_key="ngyn hng", link_method="probabilistic",
                      person_id=_records(db)["P81001/hang"].person_id)
    assert _records(db)["RXR/huong"].person_id == _records(db)["P81001/hang"].person_id
    report = _reprepare(db, monkeypatch)
    r = _records(db)
    assert r["RXR/huong"].person_id != r["P81001/hang"].person_id
    assert report["name_keys_rewritten"] == 2


def test_a_record_with_only_a_given_name_read_as_her_twins_is_matched_again_to_her_own(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with one part has no blocking key, so the key cannot show it was read otherwise: the earlier release
    read the hospital's "Hương" (no surname given) as "hng", nearer Hằng than Hương, and put Hương's hospital record
    with her twin sister's GP record (each GP typed the name without accents)."""
    huong = patient("h-huong", None, "x", "x", "2001-04-09", "female")
    huong["name"] = [{"use": "official", "given": ["Hương"]}]
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("hang", None, "Nguyen", "Hang", "2001-04-09", "female")),
            (GP, patient("huong", None, "Nguyen", "Huong", "2001-04-09", "female")),
            (HOSPITAL, huong))
    r = _records(db)
    assert r["RXR/h-huong"].name_key is None
    assert r["RXR/h-huong"].person_id == r["P81001/huong"].person_id  # as this release reads her
    _as_stored_before(db, "h-huong", link_method="probabilistic", person_id=r["P81001/hang"].person_id)
    report = _reprepare(db, monkeypatch)
    r = _records(db)
    assert r["RXR/h-huong"].person_id == r["P81001/huong"].person_id
    assert r["RXR/h-huong"].person_id != r["P81001/hang"].person_id
    assert (report["names_read_anew"], report["matched_again"], report["moved"]) == (1, 1, 1)
    assert _reprepare(db, monkeypatch)["moved"] == 0  # matched again, it stays
