"""A patient's choices are read and changed by the person, through every NHS number that is theirs alone
(review of 2026-12-07): a record carrying another person's number gives its holder no hold on that person's
choices (F1); the operator's change on a patient's written request is found by the IG officer's search by
patient and shown to the patient (F2); the IG officer's look-up shows what every read applies (F4)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from tests.conftest import FRAMEWORK_PATH
from tests.small_ics import OKAFOR_NHS, OKAFOR_SECOND_NHS, Ics, okafor_second_number
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.governance.access_log import OPERATOR_WORDS, details
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.workspace import CitizenWorkspace, IgWorkspace
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
