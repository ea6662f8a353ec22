"""A `Prepared` statement stores and reads exactly what the same statement run through SQLAlchemy does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import String, Table, bindparam, insert, select, type_coerce
from sqlalchemy.exc import IntegrityError

from sharedcare.store.database import Database, Prepared, run
from sharedcare.store.models import AccessBasis, Preference

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
                                           "updated_at": None, "updated_by": None})
    with db.session() as session:
        assert Prepared(_PREFS_OF)(session) == [("9434765919", False, [])]


def test_a_list_expanded_when_run_is_refused_when_prepared(db: Database) -> None:
    with db.session() as session, pytest.raises(ValueError, match="IN list"):
        Prepared(select(_PREFS.c.nhs_number).where(_PREFS.c.nhs_number.in_(["1", "2"])))(session)
