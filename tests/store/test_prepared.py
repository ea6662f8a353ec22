"""A `Prepared` statement stores and reads exactly what the same statement run through SQLAlchemy does."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import String, Table, bindparam, insert, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sharedcare.store.database import Database, Prepared, PreparedObjects, run
from sharedcare.store.models import AccessBasis, PatientRecord, Person, Preference

_BASES = AccessBasis.__table__
_PREFS = Preference.__table__
assert isinstance(_BASES, Table) and isinstance(_PREFS, Table)
_ADD_BASIS = insert(_BASES)
_BASES_OF = (select(_BASES.c.id, _BASES.c.basis, _BASES.c.expires_at)
             .where(_BASES.c.username == bindparam("username"), _BASES.c.expires_at > bindparam("now"))
             .order_by(_BASES.c.id))
_PREFS_OF = select(_PREFS.c.nhs_number, _PREFS.c.object_all, _PREFS.c.object_orgs).order_by(_PREFS.c.nhs_number)


def test_values_are_stored_and_read_as_sqlalchemy_stores_and_reads_them(db: Database) -> None:
    now = datetime(2026, 12, 5, 16, 0, 0, 123456, tzinfo=UTC)
    basis = {"id": 1, "username": "dr.patel", "person_id": "p1", "basis": "emergency", "reason": "unconscious in resus",
             "granted_at": now, "expires_at": now + timedelta(hours=8)}
    with db.session() as session:
        Prepared(_ADD_BASIS)(session, basis)  # through the driver's cursor
        run(session, _ADD_BASIS, {**basis, "id": 2, "username": "dr.singh"})  # through SQLAlchemy
        session.add(Preference(nhs_number="9434765919", object_all=True, object_orgs=["RXR", "RYC"],
                               opt_out_secondary=False))
    with db.session() as session:
        for statement, params in ((_BASES_OF, {"username": "dr.patel", "now": now}),
                                  (_BASES_OF, {"username": "dr.singh", "now": now}),
                                  (_BASES_OF, {"username": "dr.patel", "now": now + timedelta(hours=9)}),
                                  (_PREFS_OF, {})):
            expected = [tuple(row) for row in run(session, statement, params)]
            assert Prepared(statement)(session, params) == expected
        stored = session.execute(select(*(type_coerce(c, String) for c in _BASES.c if c.name not in ("id", "username")))
                                 .order_by(_BASES.c.id)).all()
        assert len(stored) == 2 and stored[0] == stored[1]  # the very same text in the store
        ((_, kind, expires),) = Prepared(_BASES_OF)(session, {"username": "dr.patel", "now": now})
        assert (kind, expires) == ("emergency", now + timedelta(hours=8)) and expires.tzinfo is not None
        assert Prepared(_PREFS_OF)(session) == [("9434765919", True, ["RXR", "RYC"])]


def test_a_refused_statement_raises_sqlalchemys_error_and_the_transaction_rolls_back(db: Database) -> None:
    with db.session() as session:
        session.add(Preference(nhs_number="9434765919", object_all=False, object_orgs=[], opt_out_secondary=True))
    with pytest.raises(IntegrityError), db.session() as session:
        Prepared(insert(_PREFS))(session, {"nhs_number": "9434765919", "object_all": True, "object_orgs": [],
                                           "opt_out_secondary": False, "provisions": [], "version": 0,
                                           "updated_at": None, "updated_by": None, "persons": None})
    with db.session() as session:
        assert Prepared(_PREFS_OF)(session) == [("9434765919", False, [])]


def test_a_list_expanded_when_run_is_refused_when_prepared(db: Database) -> None:
    with db.session() as session, pytest.raises(ValueError, match="IN list"):
        Prepared(select(_PREFS.c.nhs_number).where(_PREFS.c.nhs_number.in_(["1", "2"])))(session)


def test_many_rows_are_stored_as_sqlalchemy_stores_a_list_of_them(db: Database) -> None:
    now = datetime(2026, 12, 5, 16, 0, 0, 123456, tzinfo=UTC)
    rows = [{"id": i, "username": f"user{i}", "person_id": "p1", "basis": "emergency", "reason": "", "granted_at": now,
             "expires_at": now + timedelta(hours=i)} for i in range(1, 4)]
    with db.session() as session:
        Prepared(_ADD_BASIS).many(session, rows)  # the driver's executemany
        run(session, _ADD_BASIS, [{**row, "id": row["id"] + 10} for row in rows])  # type: ignore[arg-type]
        Prepared(_ADD_BASIS).many(session, [])  # nothing to do
    with db.session() as session:
        stored = session.execute(select(*(type_coerce(c, String) for c in _BASES.c if c.name != "id"))
                                 .order_by(_BASES.c.id)).all()
        assert len(stored) == 6 and stored[:3] == stored[3:]


_RECORD = PatientRecord.__table__
assert isinstance(_RECORD, Table)
_RECORDS_BY_SOURCE = PreparedObjects(PatientRecord, _RECORD.c.source_org == bindparam("org"))


def _a_record(session: Session, source_id: str) -> None:
    session.add(Person(id=f"person-{source_id}"))
    session.flush()
    session.add(PatientRecord(source_org="RXR", source_id=source_id, person_id=f"person-{source_id}",
                              link_method="new", match_probability=1.0, link_status="linked", family="OKAFOR",
                              birth_date=date(1945, 3, 2), other_names={"given": ["Emeka"]}, phones=["07700900123"],
                              updated_at=datetime(2026, 12, 5, 16, 0, tzinfo=UTC)))


def test_objects_read_prepared_are_the_objects_the_orms_query_gives(db: Database) -> None:
    with db.session() as session:
        _a_record(session, "H1")
        _a_record(session, "H2")
    columns = [column.key for column in _RECORD.columns]
    with db.session() as session:
        expected = {r.id: {name: getattr(r, name) for name in columns} for r in session.scalars(
            select(PatientRecord).where(PatientRecord.source_org == "RXR"))}
    with db.session() as session:
        found = _RECORDS_BY_SOURCE(session, {"org": "RXR"})
        assert {r.id: {name: getattr(r, name) for name in columns} for r in found} == expected
        assert not session.dirty and not session.new  # stored objects, nothing to write
        assert session.scalars(select(PatientRecord).where(PatientRecord.source_id == "H1")).one() in found
        found[0].family = "OKAFOR-JONES"  # a change to one is written when the session commits
    with db.session() as session:
        assert {r.family for r in _RECORDS_BY_SOURCE(session, {"org": "RXR"})} == {"OKAFOR", "OKAFOR-JONES"}


def test_an_object_the_session_holds_already_is_the_one_given_unchanged(db: Database) -> None:
    with db.session() as session:
        _a_record(session, "H1")
    with db.session() as session:
        held = session.scalars(select(PatientRecord)).one()
        held.family = "CHANGED"  # not yet written: the look-up writes it first, as the ORM's query does
        assert _RECORDS_BY_SOURCE(session, {"org": "RXR"}) == [held]
        assert held.family == "CHANGED"


def test_a_refused_statements_error_which_the_server_log_keeps_quotes_none_of_the_values(db: Database) -> None:
    """An unforeseen store error is logged with its traceback (docs/operations/log-inventory.md): SQLAlchemy's
    message would quote the statement's values (a resource, an audit event, a reason naming someone)."""
    now = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    basis = {"id": 1, "username": "dr.patel", "person_id": "p1", "basis": "implied-consent",
             "reason": "Jane Smith, his carer, says he fell", "granted_at": now, "expires_at": now}
    with db.session() as session:
        Prepared(_ADD_BASIS)(session, basis)
    for insert_again in (lambda s: Prepared(_ADD_BASIS)(s, basis), lambda s: s.add(AccessBasis(**basis))):
        with pytest.raises(IntegrityError) as refused, db.session() as session:
            insert_again(session)
        assert "Jane Smith" not in str(refused.value) and "dr.patel" not in str(refused.value)
