"""Which identifiers keep two records apart by rule in a batch relink: two different valid NHS numbers
always; an identifier without a check digit (a local or foreign number) only as evidence the model weighs,
because a keying error in it still looks like a number."""

from __future__ import annotations

from dataclasses import replace

from sharedcare.identity.compare import MatchRecord
from sharedcare.identity.matching import cluster
from sharedcare.identity.model import default_model
from sharedcare.store.database import Database

SAME = MatchRecord(1, given="Robert", family="Okafor", birth_date="1960-03-07", sex="male", postcode="RV1 2AB",
                   phones=("07700 900123",))


def _together(a: str, b: str) -> bool:
    records = [replace(SAME, nhs_number=a), replace(SAME, record_id=2, nhs_number=b)]
    found = cluster(records, fallback=default_model().json)
    return found.cluster_of[1] == found.cluster_of[2]


def test_two_different_valid_nhs_numbers_are_never_one_person_however_well_the_rest_agrees() -> None:
    assert not _together("9434765919", "9434765870")


def test_numbers_without_a_check_digit_that_differ_are_weighed_not_ruled_out() -> None:
    assert _together("4652817", "4658217")
    assert _together("4652817", "1190432")  # a different number, but everything else agrees


def _twins_share_a_number(number: str) -> bool:
    """Ava's record carries her twin Eva's number (a keying error): everything but the given name agrees."""
    ava = replace(SAME, given="Ava", sex="female", nhs_number=number)
    eva = replace(ava, record_id=2, given="Eva")
    found = cluster([ava, eva], fallback=default_model().json)
    assert {(p.record_a, p.record_b) for p in found.review_pairs} == {(1, 2)}  # a person looks either way
    return found.cluster_of[1] == found.cluster_of[2]


def test_only_a_valid_nhs_number_links_over_a_different_given_name() -> None:
    # A valid number cannot be the twin's by a keying error (modulus 11), so it settles who this is, for
    # review; a local number without a check digit can be: twins get neighbouring numbers.
    assert _twins_share_a_number("9434765919")
    assert not _twins_share_a_number("4652817")


def test_a_new_record_left_without_a_defaulted_column_gets_its_default_not_null(db: Database) -> None:
    """The MPI inserts new records with one prepared statement naming every column; a column with a
    default that the caller left unset must get the default, as the ORM's flush gave it, not NULL."""
    from sharedcare.identity.mpi import _insert_record, _new_person
    from sharedcare.store.models import PatientRecord

    with db.session() as session:
        record = PatientRecord(source_org="P81001", source_id="x1", person_id=_new_person(session),
                               link_method="new", match_probability=1.0, link_status="linked")
        _insert_record(session, record)
        session.commit()
        stored = session.get_one(PatientRecord, record.id)
        assert stored.updated_at is not None and stored.updated_at.tzinfo is not None
