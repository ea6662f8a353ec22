"""Two changes to a patient's choices made at once (two tabs, the portal and an app): each is applied on
top of the other, none lost, each audited with its own Consent version (HAZ-03, HAZ-11)."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from sharedcare.governance.access_log import details
from sharedcare.governance.consent import Choices, Provision, replace_choices, set_choice
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, Preference

NHS = "9434765919"
HIDE_MH = Provision("deny", codes=frozenset({"mental_health"}))
HIDE_SEXUAL_HEALTH = Provision("deny", codes=frozenset({"sexual_health"}))


def _at_once(db: Database, first: Provision, second: Provision) -> None:
    """`first` is added and held uncommitted while `second` is added in another transaction; then both end."""
    problems: list[BaseException] = []

    def other() -> None:
        try:
            with db.session() as s:
                set_choice(s, NHS, by="patient", provision=second)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            problems.append(e)

    with db.session() as s:
        set_choice(s, NHS, by="patient", provision=first)
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.5)  # the other change has begun and waits on this one
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert not problems, problems


def _held(db: Database) -> tuple[list[dict], list[str]]:
    with db.session() as s:
        pref = s.get(Preference, NHS)
        assert pref is not None
        versions = [details(e)["consent_version"] for e in s.scalars(
            select(AuditEntry).where(AuditEntry.action == "governance:preference:set").order_by(AuditEntry.seq))]
        return pref.provisions, versions


def test_two_first_choices_made_at_once_are_both_held(db: Database) -> None:
    _at_once(db, HIDE_MH, HIDE_SEXUAL_HEALTH)
    provisions, versions = _held(db)
    assert provisions == [HIDE_MH.to_json(), HIDE_SEXUAL_HEALTH.to_json()]
    assert versions == ["1", "2"]


def test_two_changes_made_at_once_are_both_held_each_with_its_own_version(db: Database) -> None:
    with db.session() as s:
        set_choice(s, NHS, by="patient", opt_out_secondary=True)
    _at_once(db, HIDE_MH, HIDE_SEXUAL_HEALTH)
    provisions, versions = _held(db)
    assert provisions == [HIDE_MH.to_json(), HIDE_SEXUAL_HEALTH.to_json()]
    assert versions == ["1", "2", "3"]


def test_a_consent_replacing_every_number_and_a_portal_change_made_at_once_both_finish(db: Database) -> None:
    """The PUT names the later number; the portal changes each number in order. Were the PUT to lock the
    number it names first, each would wait on the other (PostgreSQL: a deadlock, one refused with a 500)."""
    other_nhs = "9434765927"
    problems: list[BaseException] = []

    def put() -> None:
        try:
            with db.session() as s:
                replace_choices(s, [NHS, other_nhs], other_nhs, Choices(opt_out_secondary=True), by="patient")
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            problems.append(e)

    with db.session() as s:
        set_choice(s, NHS, by="patient", provision=HIDE_MH)  # the portal's change, first number
        thread = threading.Thread(target=put)
        thread.start()
        time.sleep(0.5)  # the PUT has begun and waits
        set_choice(s, other_nhs, by="patient", provision=HIDE_MH)  # the portal's change, second number
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert not problems, problems
    with db.session() as s:
        for number in (NHS, other_nhs):
            pref = s.get(Preference, number)
            assert pref is not None and pref.opt_out_secondary and pref.provisions == [] and pref.version == 2
