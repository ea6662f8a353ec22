"""What changes after an export was asked for and before its files are downloaded (files are kept 7 days):
a person opting out of planning and research, or objecting, and an organisation whose data the export
holds suspended. An extract is one snapshot, read when the run starts; a change after the kick-off may be
missing from it, so the export is withdrawn (its files deleted, audited) and the analyst is told why and
asked to export again, which then reflects the change."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select
from tests.export.conftest import ASYNC, export, wait_for
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.consent import set_choice
from sharedcare.governance.framework import Framework
from sharedcare.governance.secondary import SecondaryUse
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, ExportJob

DIABETES = "44054006"  # Mr Okafor's type 2 diabetes, held only by his GP practice's (P81001) feed

CHOICES: dict[str, dict[str, Any]] = {
    "opt-out of planning and research": {"opt_out_secondary": True},
    "objection to all sharing": {"object_all": True},
    "objection to his GP practice's records being shared": {"object_org": "P81001"},
}


def _conditions_served(ics: Ics, headers: dict[str, str], manifest: dict[str, Any]) -> tuple[int, set[str], str]:
    url = next(o["url"] for o in manifest["output"] if o["type"] == "Condition")
    served = ics.client.get(url, headers=headers)
    if served.status_code != 200:
        return served.status_code, set(), served.json()["issue"][0]["diagnostics"]
    return 200, {json.loads(line)["code"]["coding"][0]["code"] for line in served.text.splitlines()}, ""


def _finished(ics: Ics, headers: dict[str, str]) -> tuple[str, Any]:
    kick = ics.client.get("/fhir/$export", headers={**headers, **ASYNC})
    assert kick.status_code == 202, kick.text
    return kick.headers["Content-Location"].rsplit("/", 1)[1], wait_for(ics.client, kick.headers["Content-Location"],
                                                                         headers)


def _withdrawals(db: Database) -> list[str]:
    """The audit entries of exports withdrawn, and of runs that ended refused: outcome and event."""
    with db.session() as s:
        return [f"{e.outcome} {json.dumps(e.event)}" for e in s.scalars(select(AuditEntry).where(
            AuditEntry.action.in_(("secondary:export:withdrawn", "secondary:export:complete"))))]


@pytest.mark.parametrize("choice", CHOICES)
def test_a_choice_recorded_while_the_export_runs_keeps_him_out(ics: Ics, db: Database,
                                                               monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    people = SecondaryUse._people

    def people_then_choice(self: SecondaryUse, *args: Any, **kwargs: Any) -> list[str]:
        found = people(self, *args, **kwargs)  # the run has read everyone's choices; he chooses now
        with db.session() as s:
            set_choice(s, OKAFOR_NHS, by="patient", **CHOICES[choice])
        return found

    monkeypatch.setattr(SecondaryUse, "_people", people_then_choice)
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers)
    assert done.status_code == 410, done.text  # nothing was published
    says = done.json()["issue"][0]["diagnostics"]
    assert "choices" in says and "start a new one" in says, says
    with db.session() as s:
        job = s.get_one(ExportJob, job_id)
        assert job.status == "withdrawn" and job.output == []
    assert any(job_id in entry and entry.startswith("deny") and "choices-changed" in entry
               for entry in _withdrawals(db))
    monkeypatch.undo()  # the next export reflects his choice
    _, again = export(ics.client, headers)
    assert DIABETES not in {c["code"]["coding"][0]["code"] for c in again.get("Condition", [])}


@pytest.mark.parametrize("choice", CHOICES)
def test_a_choice_recorded_before_the_files_are_downloaded_withdraws_them(ics: Ics, db: Database,
                                                                         choice: str) -> None:
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers)
    assert done.status_code == 200, done.text
    with db.session() as s:  # the next day, before the analyst downloads
        set_choice(s, OKAFOR_NHS, by="patient", **CHOICES[choice])
    status, codes, says = _conditions_served(ics, headers, done.json())
    assert status == 410 and DIABETES not in codes, "served after he opted out"
    assert "choices" in says and "start a new one" in says, says
    assert ics.client.get(f"/fhir/bulk/{job_id}", headers=headers).status_code == 410
    assert any(job_id in entry for entry in _withdrawals(db))


def test_a_choice_made_before_the_kick_off_keeps_him_out_and_the_export_stands(ics: Ics, db: Database) -> None:
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=True)
    headers = ics.token("analyst.chen")
    manifest, files = export(ics.client, headers)
    assert DIABETES not in {c["code"]["coding"][0]["code"] for c in files.get("Condition", [])}
    with db.session() as s:  # an opt back in withdraws nothing: the files hold less than he now allows
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=False)
    assert ics.client.get(manifest["output"][0]["url"], headers=headers).status_code == 200


def test_a_source_suspended_after_the_export_finished_has_its_data_withdrawn(ics: Ics, db: Database,
                                                                           framework: Framework) -> None:
    headers = ics.token("analyst.chen")  # analyst.chen works for QRD, not P81001
    job_id, done = _finished(ics, headers)
    assert done.status_code == 200, done.text
    with db.session() as s:  # `sharedcare agreements set P81001 --status suspended --reason ...`
        set_agreement(s, framework, "P81001", "suspended", "ig.morgan", "breach reported")
    status, codes, says = _conditions_served(ics, headers, done.json())
    assert status == 410 and DIABETES not in codes, (status, codes)
    assert "P81001" in says and "suspended" in says and "start a new one" in says, says
    assert any(job_id in entry and "P81001" in entry for entry in _withdrawals(db))


def test_a_source_suspended_while_the_export_runs_is_not_published(ics: Ics, db: Database, framework: Framework,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    people = SecondaryUse._people

    def people_then_suspended(self: SecondaryUse, *args: Any, **kwargs: Any) -> list[str]:
        found = people(self, *args, **kwargs)  # the run has read the agreements
        with db.session() as s:
            set_agreement(s, framework, "P81001", "suspended", "ig.morgan", "breach reported")
        return found

    monkeypatch.setattr(SecondaryUse, "_people", people_then_suspended)
    job_id, done = _finished(ics, ics.token("analyst.chen"))
    assert done.status_code == 410, done.text
    assert "P81001" in done.json()["issue"][0]["diagnostics"]
    with db.session() as s:
        assert s.get_one(ExportJob, job_id).output == []
