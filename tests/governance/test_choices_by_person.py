"""A patient's choices are read and changed by the person, through every NHS number that is theirs alone
(review of 2026-12-07): a record carrying another person's number gives its holder no hold on that person's
choices (F1); the operator's change on a patient's written request is found by the IG officer's search by
patient and shown to the patient (F2); the IG officer's look-up shows what every read applies (F4)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.conftest import FRAMEWORK_PATH
from tests.small_ics import OKAFOR_NHS, OKAFOR_SECOND_NHS, Ics, his_number_on_another_record, okafor_second_number
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.governance.access_log import OPERATOR_WORDS, details
from sharedcare.governance.consent import set_choice
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.workspace import ChoicesUnavailable, CitizenSignIn, CitizenWorkspace, IgWorkspace
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, Preference

runner = CliRunner()


def _fw(ics: Ics) -> Framework:
    framework: Framework = ics.client.app.state.framework  # type: ignore[attr-defined]
    return framework


def _objects(db: Database, fw: Framework, person: str) -> None:
    with db.session() as s:
        CitizenWorkspace(s, fw, person).set_choice("object-all")
        s.commit()


def test_a_number_two_peoples_records_carry_signs_neither_in_and_the_refusal_is_audited(
        ics: Ics, db: Database, tmp_path: Path) -> None:
    """Anyone who gave Mr Okafor's number with the baby's date of birth became the baby's person and held his
    choices (F1). While the MPI keeps the two apart, the number signs no one in, him included (the portal
    answers as for details that match no one: tests/portal/test_choices_pages.py)."""
    fw = _fw(ics)
    his_number_on_another_record(db, fw, tmp_path)
    with db.session() as s:
        assert CitizenSignIn(s, fw).find(OKAFOR_NHS, date(2026, 11, 30)) is None  # the baby's date of birth
        assert CitizenSignIn(s, fw).find(OKAFOR_NHS, date(1945, 3, 2)) is None  # his own
        assert CitizenSignIn(s, fw).find(OKAFOR_NHS, date(1990, 1, 1)) is None
        s.commit()
        logins = s.scalars(select(AuditEntry).where(AuditEntry.action == "auth:session:login")
                           .order_by(AuditEntry.seq)).all()
    assert [(e.outcome, e.patient_id, details(e)["result"]) for e in logins] == [
        ("deny", None, "number-of-several-persons"), ("deny", None, "number-of-several-persons"),
        ("deny", None, "no-match")]


def test_whoever_holds_a_record_carrying_his_number_neither_sees_nor_withdraws_his_objection(
        ics: Ics, db: Database, tmp_path: Path) -> None:
    """The baby's person (a session from before, however got) saw Mr Okafor's objection and could "share again",
    silently removing it (F1): now the number is neither's to read or change choices by, nothing changes, and
    the decision point still applies his objection."""
    fw = _fw(ics)
    _objects(db, fw, ics.okafor)
    other = his_number_on_another_record(db, fw, tmp_path)
    with db.session() as s:
        them = CitizenWorkspace(s, fw, other)
        assert them.nhs_numbers() == [] and not them.choices().object_all and them.choices_elsewhere()
        for change in ("share-again", "clear", "object-all"):
            with pytest.raises(ChoicesUnavailable, match="contact your GP practice"):
                them.set_choice(change)  # type: ignore[arg-type]
        s.commit()
    with db.session() as s:
        held = s.get(Preference, OKAFOR_NHS)
        assert held is not None and held.object_all and held.version == 1  # untouched
        assert CitizenWorkspace(s, fw, ics.okafor).choices_elsewhere()  # his pages say some are held elsewhere
        assert s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:preference:set",
                                                  AuditEntry.username == f"patient:{other}")).all() == []


def _operator(db: Database, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    done = runner.invoke(app, ["preferences", "set", OKAFOR_NHS, *args])
    assert done.exit_code == 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("change", [["--clear"], ["--allow-org", "RXR"], ["--object-all"]])
def test_an_operators_change_to_a_patients_choices_is_found_by_the_ig_search_by_patient(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch, change: list[str]) -> None:
    """`sharedcare preferences set NHS --clear` (or --allow-org, --object-all) was audited about no person, so
    the IG officer's search by the patient's NHS number did not find it (F2); it also changed one of the
    person's numbers, while the patient's own pages change them all."""
    fw = _fw(ics)
    okafor_second_number(db)
    with db.session() as s:
        CitizenWorkspace(s, fw, ics.okafor).set_choice("object-org", "RXR")
        s.commit()
    said = _operator(db, monkeypatch, *change)
    assert OKAFOR_NHS in said and OKAFOR_SECOND_NHS in said
    with db.session() as s:
        changes = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:preference:set",
                                                     AuditEntry.username == "cli")).all()
        assert {e.patient_id for e in changes} == {ics.okafor}
        suffixes = sorted(details(e)["nhs_number_suffix"] for e in changes)
        assert suffixes == sorted([OKAFOR_NHS[-4:], OKAFOR_SECOND_NHS[-4:]])
        found = IgWorkspace(s, fw, actor_for(fw, "ig.morgan")).search(100, nhs_number=OKAFOR_SECOND_NHS)
        assert {e.seq for e in changes} <= {e.seq for e in found.entries}
        held = [s.get(Preference, n) for n in (OKAFOR_NHS, OKAFOR_SECOND_NHS)]
        assert len({(p.object_all, tuple(p.object_orgs)) for p in held if p}) == 1  # the same on both numbers


def test_a_patient_sees_that_the_technical_team_changed_their_sharing_choices(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's change was not in the patient's "Who has looked" at all (F2); their own changes stay out
    of it, as their own reads do."""
    fw = _fw(ics)
    _objects(db, fw, ics.okafor)
    _operator(db, monkeypatch, "--clear")
    with db.session() as s:
        shown = CitizenWorkspace(s, fw, ics.okafor).accesses().accesses
    assert [(a.who, a.role, a.what) for a in shown] == [(*OPERATOR_WORDS, "changed your sharing choices")]


def test_the_ig_look_up_shows_an_objection_held_against_the_patients_other_nhs_number(
        ics: Ics, db: Database) -> None:
    """An objection held against the mental health trust's number for Mr Okafor applies to every read, yet the
    look-up by his GP's number told the IG officer "Objects to all sharing: No" (F4)."""
    fw = _fw(ics)
    okafor_second_number(db)
    with db.session() as s:
        set_choice(s, OKAFOR_SECOND_NHS, by="cli", object_all=True)
        set_choice(s, OKAFOR_NHS, by="cli", object_org="NHR")
        s.commit()
    with db.session() as s:
        assert CitizenWorkspace(s, fw, ics.okafor).choices().object_all  # what every read applies
        found = IgWorkspace(s, fw, actor_for(fw, "ig.morgan")).choices(OKAFOR_NHS)
    assert found.combined.object_all and found.combined.object_orgs == {"NHR"} and found.persons == 1
    assert [(number, c.object_all, sorted(c.object_orgs)) for number, c in found.by_number] == [
        (OKAFOR_NHS, False, ["NHR"]), (OKAFOR_SECOND_NHS, True, [])]  # the number looked up first


def test_an_operators_change_to_a_number_two_people_hold_is_made_to_that_number_alone_and_says_so(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """While the MPI keeps a baby's record carrying Mr Okafor's number apart, the operator's change is held
    against that number alone (it applies to both persons) and the operator is told to resolve the review."""
    okafor_second_number(db)
    his_number_on_another_record(db, _fw(ics), tmp_path)
    said = _operator(db, monkeypatch, "--object-all")
    assert "more than one person" in said and "sharedcare mpi review" in " ".join(said.split())
    with db.session() as s:
        assert s.get(Preference, OKAFOR_NHS) is not None and s.get(Preference, OKAFOR_SECOND_NHS) is None
