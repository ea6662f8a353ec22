"""Twins whose given names share a common element (a Vietnamese middle name Thị or Văn, a first name
Mohammed or Mary) and differ in the one that tells them apart, through the real ingest path: the GP's
FHIR Patient for one twin, the hospital's HL7 v2 admission for the other."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.builders import bundle, patient, write_ndjson
from tests.ingest.test_hl7v2 import admission, write_hl7

from sharedcare.governance.framework import Framework
from sharedcare.identity.compare import GIVEN_NAMES_CONFLICT, NHS_NUMBER_OUTWEIGHS_GIVEN_NAME, MatchRecord
from sharedcare.identity.matching import cluster
from sharedcare.identity.model import default_model
from sharedcare.identity.mpi import relink
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import MatchReview, PatientRecord

BORN, HL7_BORN, POSTCODE = "2001-04-09", "20010409", "RV3 7QT"
ADDRESS = f"14 Mill Lane^^Riverside^^{POSTCODE}^GBR^H"


def _ingest(db: Database, framework: Framework, tmp_path: Path, gp_given: list[str], family: str, sex: str,
            hl7_name: str, gp_nhs: str | None = "9434765919") -> dict[str, PatientRecord]:
    """The GP's FHIR Patient (given names as `gp_given`), then the hospital's A01 (PID-5 `hl7_name`)."""
    gp = patient("gp-1", gp_nhs, family, gp_given[0], BORN, sex, POSTCODE,
                 name=[{"use": "official", "family": family, "given": gp_given}],
                 telecom=[{"system": "phone", "value": "01632 960457", "use": "home"}])
    feeds = [write_ndjson(tmp_path / "P81001" / "gp.ndjson", [bundle("P81001", "emis", [gp])]),
             write_hl7(tmp_path / "RXR" / "pas.hl7",
                       [admission("PAS1", mrn="H1", nhs=None, name=hl7_name, born=HL7_BORN, sex=sex[0].upper(),
                                  address=ADDRESS).replace("|8859/1\r", "|UNICODE UTF-8\r")], encoding="utf-8")]
    for feed in feeds:
        report = Pipeline(db, framework).ingest_paths([feed])
        assert report.quarantined == 0, report.quarantine
    with db.session() as s:
        rows = list(s.scalars(select(PatientRecord)))
        s.expunge_all()
    return {r.source_org: r for r in rows}


def _relinked(db: Database) -> dict[str, PatientRecord]:
    with db.session() as s:
        relink(s)
    with db.session() as s:
        rows = list(s.scalars(select(PatientRecord)))
        s.expunge_all()
    return {r.source_org: r for r in rows}


TWINS = [  # (GP's given names for one twin, surname, sex, the hospital's PID-5 for the other twin)
    pytest.param(["Thị", "Hằng"], "Trần", "female", "TRẦN^Thị^Hương", id="fhir-given-middle/hl7-given^middle"),
    pytest.param(["Thị Hằng"], "Trần", "female", "TRAN^Thi Huong", id="fhir-one-given/hl7-one-given-unaccented"),
    pytest.param(["Thị", "Hằng"], "Trần", "female", "TRAN^Thi Huong", id="fhir-given-middle/hl7-one-given"),
    pytest.param(["Thị Hằng"], "Trần", "female", "TRẦN^Thị^Hương", id="fhir-one-given/hl7-given^middle"),
    pytest.param(["Hằng", "Thị"], "Trần", "female", "TRẦN^Hương^Thị", id="fhir-middle-last/hl7-middle-last"),
    pytest.param(["Văn", "Minh"], "Nguyễn", "male", "NGUYỄN^Văn^Long", id="van-minh/van-long"),
    pytest.param(["Văn Minh"], "Nguyễn", "male", "NGUYEN^Van Long", id="van-minh/van-long-one-given"),
    pytest.param(["Mohammed", "Ali"], "Khan", "male", "KHAN^Mohammed^Omar", id="mohammed-ali/mohammed-omar"),
    pytest.param(["Mohammed Ali"], "Khan", "male", "KHAN^Mohammed Omar", id="mohammed-ali/mohammed-omar-one"),
    pytest.param(["Mary", "Ann"], "Smith", "female", "SMITH^Mary^Jane", id="mary-ann/mary-jane"),
    pytest.param(["Mary-Ann"], "Smith", "female", "SMITH^Mary-Jane", id="mary-ann/mary-jane-hyphenated"),
    # named a letter apart: as the rule holds Ava and Eva alone (a short name's one edit is no typing error)
    pytest.param(["Mary", "Ava"], "Smith", "female", "SMITH^Mary^Eva", id="mary-ava/mary-eva"),
]


@pytest.mark.parametrize(("gp_given", "family", "sex", "hl7_name"), TWINS)
def test_twins_sharing_a_common_given_name_element_are_not_linked(
        db: Database, framework: Framework, tmp_path: Path, gp_given: list[str], family: str, sex: str,
        hl7_name: str) -> None:
    r = _ingest(db, framework, tmp_path, gp_given, family, sex, hl7_name)
    assert r["RXR"].person_id != r["P81001"].person_id, "on ingest"
    assert r["RXR"].link_status == "review"
    assert "safety rule: name" in (r["RXR"].link_note or "")
    with db.session() as s:  # the reviewer sees the pair, and why it was not linked
        review = s.scalars(select(MatchReview)).one()
        assert {review.record_a, review.record_b} == {r["RXR"].id, r["P81001"].id}
    r = _relinked(db)
    assert r["RXR"].person_id != r["P81001"].person_id, "after a relink"


def test_twins_sharing_a_common_given_name_are_reviewed_with_the_reason_on_ingest(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    r = _ingest(db, framework, tmp_path, ["Thị", "Hằng"], "Trần", "female", "TRẦN^Thị^Hương")
    with db.session() as s:
        review = s.scalars(select(MatchReview)).one()
        assert review.evidence["held"] == GIVEN_NAMES_CONFLICT
    assert r["RXR"].link_status == "review"


@pytest.mark.parametrize(("one", "other"), [
    (("Thị", ("Hằng",)), ("Thị", ("Hương",))), (("Thị Hằng", ()), ("Thi Huong", ())),
    (("Mohammed", ("Ali",)), ("Mohammed Omar", ())), (("Mary", ("Ann",)), ("Mary", ("Jane",)))])
def test_a_relink_does_not_join_twins_sharing_a_common_given_name(
        one: tuple[str, tuple[str, ...]], other: tuple[str, tuple[str, ...]]) -> None:
    """The relink's path (`matching.cluster`), the records as a store holds them: reviewed, with the reason."""
    twin = MatchRecord(1, given=one[0], other_given=one[1], family="Tran", birth_date="2001-04-09", sex="female",
                       postcode="RV3 7QT", phones=("01632 960457",))
    found = cluster([twin, MatchRecord(2, given=other[0], other_given=other[1], family="Tran", birth_date="2001-04-09",
                                       sex="female", postcode="RV3 7QT", phones=("01632 960457",))],
                    fallback=default_model().json)
    assert found.cluster_of[1] != found.cluster_of[2]
    [pair] = found.review_pairs
    assert pair.evidence["held"] == GIVEN_NAMES_CONFLICT and pair.probability >= 0.999


def test_given_names_that_differ_beside_a_shared_one_link_on_an_agreeing_nhs_number_for_review(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """The exception to the given-name rule applies as to any given names that differ: a valid NHS number, the
    surname and the birth date agree (twins carry different numbers), so the hospital's record links and is
    kept on the review list as linked with a discrepancy (before: linked with nothing to review)."""
    gp = patient("gp-1", "9434765919", "Khan", "Mohammed", BORN, "male", POSTCODE,
                 name=[{"use": "official", "family": "Khan", "given": ["Mohammed", "Ali"]}])
    feeds = [write_ndjson(tmp_path / "P81001" / "gp.ndjson", [bundle("P81001", "emis", [gp])]),
             write_hl7(tmp_path / "RXR" / "pas.hl7", [admission("PAS1", mrn="H1", nhs="9434765919",
                                                                name="KHAN^Mohammed^Omar", born=HL7_BORN,
                                                                address=ADDRESS)])]
    for feed in feeds:
        Pipeline(db, framework).ingest_paths([feed])
    with db.session() as s:
        records = {r.source_org: r for r in s.scalars(select(PatientRecord))}
        assert records["RXR"].person_id == records["P81001"].person_id
        assert NHS_NUMBER_OUTWEIGHS_GIVEN_NAME in (records["RXR"].link_note or "")
        review = s.scalars(select(MatchReview)).one()
        assert review.evidence["discrepancy"] == NHS_NUMBER_OUTWEIGHS_GIVEN_NAME


ONE_PERSON = [  # (the GP's given names, surname, sex, the hospital's PID-5 for the same person)
    pytest.param(["Mary", "Ann"], "Smith", "female", "SMITH^Mary", id="middle-name-missing"),
    pytest.param(["Thị", "Hằng"], "Trần", "female", "TRAN^Thi Hang", id="one-given-field-unaccented"),
    pytest.param(["Thị Hằng"], "Trần", "female", "TRẦN^Thị^Hằng", id="given^middle-against-one-field"),
    pytest.param(["Thị Hằng"], "Trần", "female", "TRAN^Hang", id="common-middle-missing"),
    pytest.param(["Thị", "Hằng"], "Trần", "female", "TRẦN^Hằng^Thị", id="given-names-in-swapped-order"),
    pytest.param(["John", "Robert"], "Smith", "male", "SMITH^Robert", id="goes-by-the-middle-name"),
    pytest.param(["Robert", "James"], "Okafor", "male", "OKAFOR^Bob^James", id="nickname"),
    pytest.param(["Margaret", "Rose"], "Hughes", "female", "HUGHES^Peggy", id="nickname-middle-missing"),
    pytest.param(["Jonathan", "Paul"], "Smith", "male", "SMITH^Jonathon^Paul", id="typing-error-in-the-first"),
    pytest.param(["Mohammed", "Ibrahim"], "Khan", "male", "KHAN^Mohammed^Ibrahm", id="typing-error-in-the-second"),
    pytest.param(["Mary", "Ann"], "Smith", "female", "SMITH^Mary^A", id="middle-initial"),
    pytest.param(["Robert", "James"], "Smith", "male", "ROBERT^Smith^James", id="first-and-last-swapped"),
]


@pytest.mark.parametrize(("gp_given", "family", "sex", "hl7_name"), ONE_PERSON)
def test_one_persons_given_names_written_differently_still_link(
        db: Database, framework: Framework, tmp_path: Path, gp_given: list[str], family: str, sex: str,
        hl7_name: str) -> None:
    r = _ingest(db, framework, tmp_path, gp_given, family, sex, hl7_name)
    assert r["RXR"].person_id == r["P81001"].person_id, "on ingest"
    assert r["RXR"].link_status == "linked"
    r = _relinked(db)
    assert r["RXR"].person_id == r["P81001"].person_id, "after a relink"


def _fhir_twin(pid: str, given: list[str], nhs: str | None = None, phone: bool = True) -> dict[str, Any]:
    return patient(pid, nhs, "Trần", given[0], BORN, "female", POSTCODE,
                   name=[{"use": "official", "family": "Trần", "given": given}],
                   **({"telecom": [{"system": "phone", "value": "01632 960457", "use": "home"}]} if phone else {}))


@pytest.mark.parametrize("bridge_first", [True, False], ids=["bridge-before-the-twin", "bridge-after-the-twin"])
def test_twins_sharing_a_common_given_name_are_not_joined_through_a_record_with_only_that_name(
        db: Database, framework: Framework, tmp_path: Path, bridge_first: bool) -> None:
    """An ambulance record with "Thị" alone agrees with both twins (a middle name missing is no
    disagreement), so a relink joined Thị Hằng and Thị Hương through it, as a chain of agreeing names joins.
    Given names that differ element by element hold through any record: the bridge is held for review."""
    # the GP holds no phone: Hương's record scores higher with the bridge than with her twin's
    hang = ("P81001", "emis", _fhir_twin("hang", ["Thị", "Hằng"], "9434765919", phone=False))
    bridge = ("RYA", "cleric", _fhir_twin("thi", ["Thị"]))
    huong = ("RXR", "epr", _fhir_twin("huong", ["Thị", "Hương"]))
    for n, (org, system, res) in enumerate([hang, bridge, huong] if bridge_first else [hang, huong, bridge]):
        Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / f"{n}.ndjson", [bundle(org, system, [res])])])
    with db.session() as s:
        rows = {r.source_org: r for r in s.scalars(select(PatientRecord))}
        assert rows["RXR"].person_id != rows["P81001"].person_id, "on ingest"
        assert rows["RXR"].link_status == "review"
    r = _relinked(db)
    assert r["RXR"].person_id != r["P81001"].person_id, "after a relink"
    assert r["RYA"].person_id not in (r["RXR"].person_id, r["P81001"].person_id)
    assert r["RYA"].link_status == "review" and "kept apart" in (r["RYA"].link_note or "")


def test_a_relink_holds_a_record_with_only_the_shared_given_name_between_twins() -> None:
    base = MatchRecord(0, family="Tran", birth_date=BORN, sex="female", postcode=POSTCODE, phones=("01632 960457",))
    records = [replace(base, record_id=1, given="Thị", other_given=("Hằng",)), replace(base, record_id=2, given="Thị"),
               replace(base, record_id=3, given="Thị Hương")]
    found = cluster(records, fallback=default_model().json)
    assert len({found.cluster_of[i] for i in (1, 2, 3)}) == 3
    assert found.held_for_review == found.torn == {2}
