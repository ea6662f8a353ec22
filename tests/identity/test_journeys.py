"""The hard cases of identity, through the real ingest pipeline: each record arrives in a FHIR bundle
and is matched on arrival against what the index already holds."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.builders import bundle, patient, write_ndjson

from sharedcare.governance.framework import Framework
from sharedcare.identity.compare import MatchRecord
from sharedcare.identity.links import decide
from sharedcare.identity.matching import cluster
from sharedcare.identity.model import default_model
from sharedcare.identity.mpi import Demographics, link_patient_record, missing, relink
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import MatchReview, PatientRecord

GP, HOSPITAL = ("P81001", "emis"), ("RXR", "epr")
PHONE = [{"system": "phone", "value": "01632 960123", "use": "home"}]


def _ingest(db: Database, framework: Framework, path: Path, *messages: tuple[tuple[str, str], dict[str, Any]]) -> None:
    feed = write_ndjson(path, [bundle(org, system, [res]) for (org, system), res in messages])
    report = Pipeline(db, framework).ingest_paths([feed])
    assert report.quarantined == 0, report.quarantine


def _records(db: Database) -> dict[str, PatientRecord]:
    with db.session() as s:
        rows = list(s.scalars(select(PatientRecord)))
        s.expunge_all()
    return {f"{r.source_org}/{r.source_id}": r for r in rows}


def test_twins_are_never_joined_and_each_hospital_record_finds_the_right_twin(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("amy", "9434765919", "Jones", "Amy", "2001-04-05", "female")),
            (GP, patient("zoe", "9434765870", "Jones", "Zoe", "2001-04-05", "female")),
            (HOSPITAL, patient("h-zoe", None, "Jones", "Zoe", "2001-04-05", "female")),
            (HOSPITAL, patient("h-amy", None, "JONES", "Amy", "2001-04-05", "female")))
    r = _records(db)
    assert r["P81001/amy"].person_id != r["P81001/zoe"].person_id
    assert r["RXR/h-zoe"].person_id == r["P81001/zoe"].person_id
    assert r["RXR/h-amy"].person_id == r["P81001/amy"].person_id
    assert r["RXR/h-zoe"].link_method == "probabilistic"


Sent = tuple[tuple[str, str], dict[str, Any]]  # (organisation, system), the resource


def _twins_held_apart(db: Database, framework: Framework, tmp_path: Path, first: Sent, second: Sent) -> None:
    """Two twins' records sent one after the other: two persons, the second held for review by the name rule."""
    _ingest(db, framework, tmp_path / "f.ndjson", first, second)
    r = _records(db)
    one, other = (f"{org}/{sent['id']}" for (org, _), sent in (first, second))
    assert r[one].person_id != r[other].person_id
    assert r[other].link_status == "review"
    assert "safety rule: name" in (r[other].link_note or "")


def test_twins_without_nhs_numbers_go_to_review_and_the_reviewers_decision_survives_a_relink(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    _twins_held_apart(db, framework, tmp_path, (HOSPITAL, patient("amy", None, "Jones", "Amy", "2001-04-05", "female")),
                      (HOSPITAL, patient("zoe", None, "Jones", "Zoe", "2001-04-05", "female")))
    with db.session() as s:
        review = s.scalars(select(MatchReview)).one()
        levels = {step["comparison"]: step["level"] for step in review.evidence["comparisons"]}
        assert levels["name"] == "surname agrees, given name different" and levels["dob"] == "exact"
        decide(s, review.id, "separate", by="mpi.reviewer", reason="twins")
    with db.session() as s:
        relink(s)
    r = _records(db)
    assert r["RXR/amy"].person_id != r["RXR/zoe"].person_id
    with db.session() as s:
        review = s.scalars(select(MatchReview)).one()
        # the reviewer changes their mind: the pair is one
        decide(s, review.id, "link", by="mpi.reviewer", reason="one woman, her name mistyped", was="separate")
    with db.session() as s:
        relink(s)
    r = _records(db)
    assert r["RXR/amy"].person_id == r["RXR/zoe"].person_id


def test_a_twins_record_without_a_surname_is_not_linked_to_the_other_twin(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """An ambulance record of Zoe with no surname taken: her given name still tells her from her twin
    Amy (same birth date and address). Until 2026-12-06 a missing surname made the whole name comparison
    'missing', so the given-name rule held nothing and the pair linked on birth date and address alone."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (HOSPITAL, patient("amy", None, "Jones", "Amy", "2001-04-05", "female")),
            (("RYA", "cleric"), patient("zoe", None, "", "Zoe", "2001-04-05", "female",
                                        name=[{"use": "official", "given": ["Zoe"]}])))
    r = _records(db)
    assert r["RYA/zoe"].person_id != r["RXR/amy"].person_id
    with db.session() as s:
        relink(s)
    r = _records(db)
    assert r["RYA/zoe"].person_id != r["RXR/amy"].person_id


def test_twins_are_never_joined_through_a_record_without_a_given_name(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """An ambulance record with only the surname (no given name taken) matches either twin on surname,
    birth date, address and phone; the given-name rule holds Amy and Zoe apart, and a third record must
    not join them. Until this change (2026-12-06) ingest linked Zoe to Amy's person through that record, and a
    relink joined all three as one person."""
    phone = {"telecom": [{"system": "phone", "value": "01632 960457", "use": "home"}]}
    _ingest(db, framework, tmp_path / "f.ndjson",
            (HOSPITAL, patient("amy", None, "Jones", "Amy", "2001-04-05", "female")),
            (("RYA", "cleric"), patient("x", None, "Jones", "", "2001-04-05", "female",
                                        name=[{"use": "official", "family": "Jones"}], **phone)),
            (HOSPITAL, patient("zoe", None, "Jones", "Zoe", "2001-04-05", "female", **phone)))
    r = _records(db)
    assert r["RXR/zoe"].person_id != r["RXR/amy"].person_id
    assert r["RXR/zoe"].link_status == "review"
    with db.session() as s:
        relink(s)
    r = _records(db)
    assert r["RXR/zoe"].person_id != r["RXR/amy"].person_id
    assert r["RYA/x"].person_id not in (r["RXR/amy"].person_id, r["RXR/zoe"].person_id)
    assert r["RYA/x"].link_status == "review" and "kept apart" in (r["RYA/x"].link_note or "")
    with db.session() as s:
        listed = {frozenset((m.record_a, m.record_b)) for m in s.scalars(select(MatchReview))}
    assert {frozenset((r["RYA/x"].id, r[k].id)) for k in ("RXR/amy", "RXR/zoe")} <= listed


def test_records_a_reviewer_separated_are_not_joined_through_a_third_record() -> None:
    """A reviewer said records 1 and 2 are two people; record 3 agrees with both on everything. Until
    this change (2026-12-06) a relink linked 3 to each and so put 1 and 2 in one person after all; now 3 is held."""
    same = MatchRecord(1, given="John", family="Smith", birth_date="1950-09-14", sex="male", postcode="RV1 2AB")
    records = [same, replace(same, record_id=2), replace(same, record_id=3)]
    found = cluster(records, decided_different={(1, 2)}, fallback=default_model().json)
    assert found.cluster_of[1] != found.cluster_of[2]
    assert found.held_for_review == found.torn == {3}
    assert {(1, 3), (2, 3)} <= {(p.record_a, p.record_b) for p in found.review_pairs}


def test_a_chain_of_agreeing_given_names_stays_one_person(db: Database, framework: Framework,
                                                          tmp_path: Path) -> None:
    """Joe, Joseph (twice, with Joe's NHS number) and a keyed "Jooseph": Joe and Jooseph differ by the
    rule, but each agrees with Joseph, so the chain is evidence of one person. The first fix for twins
    joined through a third record (branch ident-transitive) held the Joseph records alone (the 10,000-
    person ICS lost recall so); only a record without a given name of its own is held as a bridge."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("joe", "9434765919", "Bloggs", "Joe", "1972-06-30")),
            (HOSPITAL, patient("joseph", "9434765919", "Bloggs", "Joseph", "1972-06-30")),
            (("RYA", "cleric"), patient("joseph", "9434765919", "Bloggs", "Joseph", "1972-06-30")),
            (("RYC", "pas"), patient("jooseph", None, "Bloggs", "Jooseph", "1972-06-30")))
    for when in ("on ingest", "after a relink"):
        r = _records(db)
        assert len({record.person_id for record in r.values()}) == 1, when
        assert {record.link_status for record in r.values()} == {"linked"}, when
        with db.session() as s:
            relink(s)


def test_newborn_twins_without_given_names_are_reviewed_not_linked(db: Database, framework: Framework,
                                                                    tmp_path: Path) -> None:
    """Twins' records before naming carry no given name or a placeholder ("Twin 1", "Baby"), with the same
    surname, birth date and address: nothing tells them apart, so the pair goes to review. On main
    "Twin 1" and "Twin 2" both read "twin", an exact name, and were linked (HAZ-01)."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (HOSPITAL, patient("t1", None, "Jones", "Twin 1", "2026-11-30", "female")),
            (HOSPITAL, patient("t2", None, "Jones", "Twin 2", "2026-11-30", "female")),
            (("RYA", "cleric"), patient("b", None, "Jones", "Baby", "2026-11-30", "female")))
    for when in ("on ingest", "after a relink"):
        r = _records(db)
        assert len({r[k].person_id for k in ("RXR/t1", "RXR/t2", "RYA/b")}) == 3, when
        assert r["RXR/t2"].link_status == "review", when
        with db.session() as s:
            listed = {frozenset((m.record_a, m.record_b)) for m in s.scalars(select(MatchReview))}
            relink(s)
        assert frozenset((r["RXR/t1"].id, r["RXR/t2"].id)) in listed, when
    assert "given name" in (r["RXR/t2"].link_note or "")


def test_a_placeholder_alone_is_no_name_to_match_on() -> None:
    """"Unknown Male" with no surname says nothing of who this is: held for review as too little to match
    on, as a record with no name is, not matched on birth date and address alone."""
    born = date(1980, 1, 1)
    assert missing(Demographics(None, None, "Unknown Male", born, "male", "RV1 2AB")) == "no name"
    assert missing(Demographics(None, "Jones", "Baby", born, "male", "RV1 2AB")) is None


def test_newborn_twins_registered_as_baby_of_their_mother_are_reviewed_not_linked(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A maternity system's "B/O Sarah" (baby of Sarah) on both twins' records names neither: before
    placeholders.csv it read as the given name "bo sarah", an exact match, and the twins were one person."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (HOSPITAL, patient("t1", None, "Jones", "B/O Sarah", "2026-11-30", "female")),
            (("RYA", "cleric"), patient("t2", None, "Jones", "B/O Sarah", "2026-11-30", "female")))
    for when in ("on ingest", "after a relink"):
        r = _records(db)
        assert r["RXR/t1"].person_id != r["RYA/t2"].person_id, when
        assert r["RYA/t2"].link_status == "review", when
        with db.session() as s:
            relink(s)


def test_a_twins_record_before_naming_is_not_linked_on_arrival_to_whichever_twin_came_first(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Found at 100,000 people (seed 23): the maternity record "Twin 2 Rowe" (no NHS number yet) arrived,
    then twin Samuel's GP record, which matched it on surname, birth date, address and phone with nothing
    else in the index and was linked: Samuel's record joined his twin's. A link with no given-name evidence
    and no agreeing NHS number is reviewed on arrival; the relink, seeing both twins, links each record of
    one baby and holds the twin's birth record that matches both."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (HOSPITAL, patient("t2", None, "Rowe", "Twin 2", "2023-09-16", "male", telecom=PHONE)),
            (GP, patient("samuel", "9434765919", "Rowe", "Samuel", "2023-09-16", "male", telecom=PHONE)),
            (("P81002", "systmone"), patient("oscar", "9434765870", "Rowe", "Oscar", "2023-09-16", "male",
                                              telecom=PHONE)))
    r = _records(db)
    assert r["RXR/t2"].person_id != r["P81001/samuel"].person_id
    assert r["P81001/samuel"].link_status == "review"
    assert "no NHS number agrees" in (r["P81001/samuel"].link_note or "")
    with db.session() as s:
        relink(s)
    r = _records(db)
    assert r["RXR/t2"].person_id not in (r["P81001/samuel"].person_id, r["P81002/oscar"].person_id)


def test_a_babys_record_before_naming_is_linked_by_a_relink(db: Database, framework: Framework,
                                                           tmp_path: Path) -> None:
    """One baby, no twin: reviewed on arrival (nothing yet says there is no twin), one person after a relink."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (HOSPITAL, patient("b", None, "Rowe", "Baby", "2023-09-16", "male", telecom=PHONE)),
            (GP, patient("samuel", "9434765919", "Rowe", "Samuel", "2023-09-16", "male", telecom=PHONE)))
    with db.session() as s:
        relink(s)
    r = _records(db)
    assert r["RXR/b"].person_id == r["P81001/samuel"].person_id


def test_unknown_patients_are_held_as_too_little_to_match_and_never_paired(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Two unidentified patients registered as a trust's guidance says (surname and forename UNKNOWN, born
    1 January of an estimated year, postcode ZZ99 3WZ: address not known) are two people. Before, the
    surname "UNKNOWN" counted as a name, so each was matched and the pair went on the review list; now
    each is held for review as having no name, as a record with none is."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (("RYA", "cleric"), patient("u1", None, "UNKNOWN", "UNKNOWN", "1980-01-01", "male", "ZZ99 3WZ")),
            (HOSPITAL, patient("u2", None, "Not known", "Unknown Male", "1980-01-01", "male", "ZZ99 3WZ")))
    r = _records(db)
    for key in ("RYA/u1", "RXR/u2"):
        assert r[key].link_status == "review"
        assert "no name" in (r[key].link_note or "")
    assert r["RYA/u1"].person_id != r["RXR/u2"].person_id
    with db.session() as s:
        assert not list(s.scalars(select(MatchReview)))


def test_two_unknown_patients_with_a_surname_at_the_pseudo_postcode_are_not_linked(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """"UNK Smith" twice, both estimated 1 January 1980, both ZZ99 3WZ: the given name is a placeholder and
    the pseudo-postcode is no address shared, so nothing says these are one man. Before, "unk" was an exact
    given name and ZZ99 3WZ the same postcode: one person."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (("RYA", "cleric"), patient("u1", None, "Smith", "UNK", "1980-01-01", "male", "ZZ99 3WZ")),
            (HOSPITAL, patient("u2", None, "Smith", "UNK", "1980-01-01", "male", "ZZ99 3WZ")))
    for when in ("on ingest", "after a relink"):
        r = _records(db)
        assert r["RYA/u1"].person_id != r["RXR/u2"].person_id, when
        assert "pseudo-postcode" in (r["RXR/u2"].link_note or ""), when
        with db.session() as s:
            relink(s)


def test_a_newborns_records_without_a_given_name_link_on_an_agreeing_nhs_number(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A newborn in England is given an NHS number at birth: two of one baby's records before naming that
    carry the same valid number are linked, on ingest and by a relink."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (HOSPITAL, patient("b", "9434765919", "Jones", "Baby", "2026-11-30", "female")),
            (("RYA", "cleric"), patient("b", "9434765919", "Jones", "Baby Girl", "2026-11-30", "female")))
    for when in ("on ingest", "after a relink"):
        r = _records(db)
        assert r["RXR/b"].person_id == r["RYA/b"].person_id, when
        with db.session() as s:
            relink(s)


def test_father_and_son_with_the_same_name_and_address_stay_apart(db: Database, framework: Framework,
                                                                    tmp_path: Path) -> None:
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("sr", "9434765919", "Smith", "John", "1950-09-14")),
            (GP, patient("jr", "9434765870", "Smith", "John", "1980-02-21")),
            (HOSPITAL, patient("h-jr", None, "Smith", "John", "1980-02-21")))
    r = _records(db)
    assert r["P81001/sr"].person_id != r["P81001/jr"].person_id
    assert r["RXR/h-jr"].person_id == r["P81001/jr"].person_id


def test_twins_whose_names_differ_only_in_letters_outside_a_to_z_are_reviewed_not_linked(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    _twins_held_apart(db, framework, tmp_path, (GP, patient("hang", None, "Nguyễn", "Hằng", "2001-04-09", "female")),
                      (HOSPITAL, patient("huong", None, "Nguyễn", "Hương", "2001-04-09", "female")))


def test_a_name_in_another_script_is_matched_not_held_as_no_name(db: Database, framework: Framework,
                                                                 tmp_path: Path) -> None:
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("maria", "9434765919", "Παπαδόπουλος", "Μαρία", "1970-05-05", "female")),
            (HOSPITAL, patient("h-maria", "9434765919", "Παπαδόπουλος", "Μαρία", "1970-05-05", "female")))
    r = _records(db)
    assert r["RXR/h-maria"].person_id == r["P81001/maria"].person_id
    assert r["RXR/h-maria"].link_status == "linked"


def test_an_nhs_number_in_full_width_digits_is_stored_and_linked_as_the_same_number(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("emeka", "9434765919", "Okafor", "Emeka", "1945-03-02", "male")),
            (HOSPITAL, patient("h-emeka", "９４３４７６５９１９", "Okafor", "Emeka", "1945-03-02", "male", "LS6 1AA")))
    r = _records(db)
    assert r["RXR/h-emeka"].nhs_number == "9434765919"
    assert r["RXR/h-emeka"].person_id == r["P81001/emeka"].person_id
    assert r["RXR/h-emeka"].link_method == "nhs-number"


def test_a_son_is_never_linked_through_his_fathers_record_without_a_number_to_a_person_with_another(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Found at 100,000 people: the son's GP record (its own NHS number) matched the father's hospital
    record (no number: same name, address and phone, another birth date) well enough to link, joining
    two valid NHS numbers in one person. A relink splits such a person; ingest must not make it."""
    phone = {"telecom": [{"system": "phone", "value": "01632 960457", "use": "home"}]}
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("sr", "9434765919", "Tucker", "Keith", "1940-08-23", **phone)),
            (HOSPITAL, patient("h-sr", None, "Tucker", "Keith", "1940-08-23", **phone)),
            (("P81002", "systmone"), patient("jr", "9434765870", "Tucker", "Keith", "1988-09-05", **phone)))
    r = _records(db)
    assert r["RXR/h-sr"].person_id == r["P81001/sr"].person_id
    assert r["P81002/jr"].person_id != r["P81001/sr"].person_id
    # not linked, but put in front of a reviewer with the record it matched, as a relink would
    assert r["P81002/jr"].link_status == "review"
    assert "another NHS number" in (r["P81002/jr"].link_note or "")
    with db.session() as s:
        pairs = {frozenset((m.record_a, m.record_b)) for m in s.scalars(select(MatchReview))}
    assert frozenset((r["P81002/jr"].id, r["RXR/h-sr"].id)) in pairs


def test_a_woman_who_changed_surname_and_address_is_found_through_her_name_and_address_history(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    gp = patient("priya", "9434765919", "Sharma", "Priya", "1985-11-30", "female", postcode="LS6 1AA",
                 name=[{"use": "official", "family": "Sharma", "given": ["Priya"]},
                       {"use": "maiden", "family": "Kapoor", "given": ["Priya"], "period": {"end": "2015-06-01"}}],
                 address=[{"use": "home", "postalCode": "LS6 1AA"},
                          {"use": "old", "postalCode": "RV2 3CD", "period": {"end": "2015-06-01"}}])
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, gp),
            (HOSPITAL, patient("h-priya", None, "Kapoor", "Priya", "1985-11-30", "female", postcode="RV2 3CD")))
    r = _records(db)
    assert r["RXR/h-priya"].person_id == r["P81001/priya"].person_id
    evidence = r["RXR/h-priya"].match_evidence or {}
    levels = {step["comparison"]: step["level"] for step in evidence["comparisons"]}
    assert levels["name"] == "given agrees, surname shares a part (hyphenated or previous)"
    assert levels["address"] == "postcode in the other's address history"
    assert r["RXR/h-priya"].match_weight == evidence["match_weight"] > 0


def test_a_transposed_date_of_birth_and_a_nickname_still_link(db: Database, framework: Framework,
                                                               tmp_path: Path) -> None:
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("rob", "9434765919", "Okafor", "Robert", "1960-03-07")),
            (HOSPITAL, patient("h-rob", None, "Okafor", "Robert", "1960-07-03")),
            (("RYA", "epcr"), patient("a-bob", None, "Okafor", "Bob", "1960-03-07")))
    r = _records(db)
    assert r["RXR/h-rob"].person_id == r["P81001/rob"].person_id == r["RYA/a-bob"].person_id
    levels = {s["comparison"]: s["level"] for s in (r["RXR/h-rob"].match_evidence or {})["comparisons"]}
    assert levels["dob"] == "day and month transposed"


def test_a_valid_nhs_number_typed_into_the_wrong_person_is_held_for_review_not_linked(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("mary", "9434765919", "Brown", "Mary", "1940-01-01", "female")),
            (HOSPITAL, patient("tom", "9434765919", "Green", "Tom", "1990-05-05", "male")))
    r = _records(db)
    assert r["RXR/tom"].person_id != r["P81001/mary"].person_id
    assert (r["RXR/tom"].link_status, r["RXR/tom"].link_method) == ("review", "nhs-number-conflict")
    assert "another sex and date of birth" in (r["RXR/tom"].link_note or "")


@pytest.mark.parametrize(("born", "linked"), [
    ("1945-03-02", False),  # the father's record given his son's number: same name, sex and address
    ("1975-10-09", False),  # two keying errors
    ("1975-09-08", True), ("1975-08-08", True), ("1957-08-09", True)])  # day-month swap, one keying error
def test_a_valid_nhs_number_on_a_record_born_more_than_a_keying_error_away_is_held_for_review(
        db: Database, framework: Framework, tmp_path: Path, born: str, linked: bool) -> None:
    """Whatever the sex: a birth date one keying error or a day-month swap away is the same date written twice,
    so the number links; a father's (decades away) is someone else's."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("son", "9434765870", "Okafor", "Emeka", "1975-08-09", "male", "RV3 7QT")),
            (HOSPITAL, patient("h", "9434765870", "Okafor", "Emeka", born, "male", "RV3 7QT")))
    r = _records(db)
    assert (r["RXR/h"].person_id == r["P81001/son"].person_id) is linked
    assert r["RXR/h"].link_method == ("nhs-number" if linked else "nhs-number-conflict")


@pytest.mark.parametrize(("given", "family", "born", "reason"), [
    (None, None, "1970-01-01", "no name"),
    ("Ann", "Lee", None, "no date of birth"),
    (None, None, None, "no name and no date of birth"),
    ("Ann", "Lee", "2999-01-01", "is in the future"),
])
def test_a_record_too_thin_to_match_is_stored_under_review_with_its_reason_never_guessed(
        db: Database, given: str | None, family: str | None, born: str | None, reason: str) -> None:
    from datetime import date

    with db.session() as s:
        link_patient_record(s, "P81001", "ann", Demographics("9434765919", "Lee", "Ann", date(1970, 1, 1),
                                                             "female", "RV1 2AB"))
        thin = link_patient_record(s, "RXR", "x", Demographics(
            "9434765919", family, given, date.fromisoformat(born) if born else None, "female", "RV1 2AB"))
        ann = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "ann")).one()
        assert thin.person_id != ann.person_id
        assert (thin.link_status, thin.link_method) == ("review", "insufficient-data")
        assert reason in (thin.link_note or "")


def test_malformed_identifiers_are_reported_on_the_record_and_it_is_still_stored(db: Database) -> None:
    from datetime import date

    with db.session() as s:
        record = link_patient_record(s, "LRC", "c1", Demographics(
            "12345678901234567890X", "Lee", "Ann", date(1970, 1, 1), "female", "NOT A POSTCODE AT ALL",
            phones=["call the ward"], email="ann at home"))
        assert record.nhs_number is None and record.postcode is None and record.phones is None
        note = record.link_note or ""
        for what in ("fails the modulus 11 check", "is not a UK postcode", "is not a UK number", "is not an address"):
            assert what in note
    assert len(_records(db)) == 1


def _reviews(db: Database) -> list[MatchReview]:
    with db.session() as s:
        rows = list(s.scalars(select(MatchReview).order_by(MatchReview.id)))
        s.expunge_all()
    return rows


def test_a_different_given_name_links_on_the_nhs_number_surname_and_birth_date_and_is_on_the_review_list(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    # The hospital keyed another first name; the NHS number, surname and birth date say it is Amy.
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("amy", "9434765919", "Jones", "Amy", "2001-04-05", "female")),
            (HOSPITAL, patient("h-amy", "9434765919", "Jones", "Zara", "2001-04-05", "female", postcode="LS1 4AP")))
    r = _records(db)
    assert r["RXR/h-amy"].person_id == r["P81001/amy"].person_id
    assert (r["RXR/h-amy"].link_status, r["RXR/h-amy"].link_method) == ("linked", "nhs-number")
    assert "given names differ" in (r["RXR/h-amy"].link_note or "")
    [review] = _reviews(db)
    assert review.status == "open"
    assert {review.record_a, review.record_b} == {r["RXR/h-amy"].id, r["P81001/amy"].id}
    assert "given names differ" in review.evidence["discrepancy"]
    assert "NHS number, surname and date of birth agree" in review.evidence["discrepancy"]
    with db.session() as s:
        relink(s)  # the batch relink decides the same way, and the item stays on the list
    r = _records(db)
    assert r["RXR/h-amy"].person_id == r["P81001/amy"].person_id
    [review] = _reviews(db)
    assert review.status == "open" and "given names differ" in review.evidence["discrepancy"]
    with db.session() as s:
        # the IG officer finds they are two people
        decide(s, review.id, "separate", by="mpi.reviewer", reason="twins")
    with db.session() as s:
        relink(s)
    r = _records(db)
    assert r["RXR/h-amy"].person_id != r["P81001/amy"].person_id


def test_a_different_given_name_and_a_mistyped_surname_link_on_the_nhs_number_and_birth_date_for_review(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    # Another first name and a slip in the surname (Jones/Jnoes): the number and birth date still say Amy.
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("amy", "9434765919", "Jones", "Amy", "2001-04-05", "female")),
            (HOSPITAL, patient("h-amy", "9434765919", "Jnoes", "Zara", "2001-04-05", "female")))
    for _ in range(2):  # on ingest, then the same in a batch relink
        r = _records(db)
        assert r["RXR/h-amy"].person_id == r["P81001/amy"].person_id
        [review] = _reviews(db)
        assert review.status == "open" and "surname exactly or but for a typing error" in review.evidence["discrepancy"]
        with db.session() as s:
            relink(s)


def test_a_different_given_name_without_an_agreeing_nhs_number_is_never_linked(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("amy", "9434765919", "Jones", "Amy", "2001-04-05", "female")),
            (HOSPITAL, patient("h-zara", None, "Jones", "Zara", "2001-04-05", "female")))
    with db.session() as s:
        relink(s)
    r = _records(db)
    assert r["RXR/h-zara"].person_id != r["P81001/amy"].person_id
    assert all("discrepancy" not in review.evidence for review in _reviews(db))


def test_a_mothers_nhs_number_on_her_babys_record_is_held_for_review_not_linked(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    # Same number, sex and surname, but another given name and birth date: the number alone does not decide.
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("mum", "9434765919", "Jones", "Sarah", "1990-02-03", "female")),
            (HOSPITAL, patient("baby", "9434765919", "Jones", "Lily", "2026-01-09", "female")))
    r = _records(db)
    assert r["RXR/baby"].person_id != r["P81001/mum"].person_id
    assert (r["RXR/baby"].link_status, r["RXR/baby"].link_method) == ("review", "nhs-number-conflict")
    assert "a date of birth more than a keying error" in (r["RXR/baby"].link_note or "")  # 36 years apart
    [review] = _reviews(db)
    assert {review.record_a, review.record_b} == {r["RXR/baby"].id, r["P81001/mum"].id}
    with db.session() as s:
        relink(s)
    r = _records(db)
    assert r["RXR/baby"].person_id != r["P81001/mum"].person_id


@pytest.mark.parametrize(("postcode", "telecom"), [
    ("RV1 7XY", PHONE),  # moved within the postcode district RV1, same phone
    ("RV1 2AB", [{"system": "phone", "value": "07700 900456", "use": "mobile"}]),  # same address, a new phone
], ids=["moved-within-district", "new-phone"])
def test_a_second_record_that_moved_within_the_district_or_changed_phone_links_in_real_time(
        db: Database, framework: Framework, tmp_path: Path, postcode: str, telecom: list[dict[str, str]]) -> None:
    """Before the first relink the shipped model scores; a level a true match reaches (a move in the same
    district, a new number) must not weigh as a veto that every agreeing field cannot outweigh."""
    _ingest(db, framework, tmp_path / "f.ndjson",
            (GP, patient("gp-1", None, "Okonjo", "Chidi", "1957-09-14", "male", telecom=PHONE)),
            (HOSPITAL, patient("h-1", None, "Okonjo", "Chidi", "1957-09-14", "male", postcode, telecom=telecom)))
    r = _records(db)
    assert r["RXR/h-1"].person_id == r["P81001/gp-1"].person_id
    assert r["RXR/h-1"].link_method == "probabilistic"
