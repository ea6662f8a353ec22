"""What changes after an export was asked for and before its files are downloaded (files are kept 7 days):
a person opting out of planning and research, or objecting, and an organisation whose data the export
holds suspended. An extract is one snapshot, read when the run starts; a change after the kick-off may be
missing from it, so the export is withdrawn (its files deleted, audited) and the analyst is told why and
asked to export again, which then reflects the change. Only the exports it touches (2026-12-07): a choice
of a person the export included (by any NHS number their records carry or carried), a stop of an
organisation whose data its files hold or of the exporter's own; anyone else's leaves it to download (in a
region of a million people choices change daily: before, no large export lived to be downloaded). An export
finished before its persons were recorded is withdrawn by any change, as before."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from tests.builders import bundle, condition, patient, write_ndjson
from tests.export.conftest import ASYNC, export, wait_for
from tests.small_ics import (
    OKAFOR_NHS,
    OKAFOR_SECOND_NHS,
    Ics,
    his_number_on_another_record,
    okafor_second_number,
    without_nhs_number,
)

from sharedcare.export.jobs import ExportJobs
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.consent import set_choice
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.secondary import ExportScope, SecondaryUse
from sharedcare.identity.links import decide, merge_persons, separate
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, ExportJob, ExportJobPerson, MatchReview, PatientRecord

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


HUGHES_NHS = "9990000018"  # the stranger: Mrs Hughes, known only to her GP practice, P81002
HER_PRACTICE = "/fhir/Group/P81002/$export"  # her practice's registered population: she alone


def _finished(ics: Ics, headers: dict[str, str], path: str = "/fhir/$export") -> tuple[str, Any]:
    kick = ics.client.get(path, headers={**headers, **ASYNC})
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


def _served(ics: Ics, headers: dict[str, str], manifest: dict[str, Any]) -> int:
    """The status of the download of the export's Patient file."""
    url = next(o["url"] for o in manifest["output"] if o["type"] == "Patient")
    return ics.client.get(url, headers=headers).status_code


@pytest.mark.parametrize("choice", CHOICES)
def test_a_choice_of_someone_not_in_the_export_leaves_it_and_one_of_someone_in_it_withdraws_it(
        ics: Ics, db: Database, choice: str) -> None:
    """An analyst exports Mrs Hughes's practice; Mr Okafor, registered elsewhere, then opts out or objects:
    her practice's export holds nothing of his and stays to download (before, any person's choice withdrew
    every export). She then opts out: it is withdrawn (410). Neither person's id is in its files or the audit."""
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers, HER_PRACTICE)
    assert done.status_code == 200, done.text
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", **CHOICES[choice])
    assert _served(ics, headers, done.json()) == 200, "withdrawn by the choice of someone not in it"
    assert ics.client.get(f"/fhir/bulk/{job_id}", headers=headers).status_code == 200
    assert not any(job_id in entry and "choices-changed" in entry for entry in _withdrawals(db))
    with db.session() as s:
        set_choice(s, HUGHES_NHS, by="patient", opt_out_secondary=True)
    assert _served(ics, headers, done.json()) == 410
    polled = ics.client.get(f"/fhir/bulk/{job_id}", headers=headers)
    assert polled.status_code == 410 and "start a new one" in polled.json()["issue"][0]["diagnostics"]
    assert any(job_id in entry and "choices-changed" in entry for entry in _withdrawals(db))
    with db.session() as s:
        audit = json.dumps([e.event for e in s.scalars(select(AuditEntry).where(
            AuditEntry.action.like("secondary:export:%")))])
        assert ics.stranger not in audit and ics.okafor not in audit
        assert s.scalars(select(ExportJobPerson)).all() == [], "the withdrawn export's persons are kept"


@pytest.mark.parametrize(("who", "kept"), [("Mr Okafor", True), ("Mrs Hughes", False)])
def test_a_choice_recorded_while_the_export_runs_withdraws_it_only_if_the_person_is_in_it(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch, who: str, kept: bool) -> None:
    people = SecondaryUse._people

    def people_then_choice(self: SecondaryUse, *args: Any, **kwargs: Any) -> list[str]:
        found = people(self, *args, **kwargs)  # the run has read everyone's choices; one of them chooses now
        with db.session() as s:
            set_choice(s, OKAFOR_NHS if who == "Mr Okafor" else HUGHES_NHS, by="patient", object_all=True)
        return found

    monkeypatch.setattr(SecondaryUse, "_people", people_then_choice)
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers, HER_PRACTICE)  # her practice's: she is in it, he is not
    if kept:
        assert done.status_code == 200, done.text
        assert _served(ics, headers, done.json()) == 200
    else:
        assert done.status_code == 410, done.text  # nothing was published
        assert "choices" in done.json()["issue"][0]["diagnostics"]
        with db.session() as s:
            assert s.get_one(ExportJob, job_id).output == []


def test_a_choice_held_against_a_number_a_record_in_the_export_carries_withdraws_it(ics: Ics, db: Database,
                                                                                  framework: Framework,
                                                                                  tmp_path: Path) -> None:
    """Mr Okafor's mental health trust knows him by a second NHS number, and he opted out under it before the
    kick-off: the export leaves him out. A baby's hospital record carries his first number (the MPI keeps the
    baby apart as another person, and a reviewer has found them two people: while the pair waits on review, an
    extract applies his choices to the baby too), and the baby is in the export. A choice held against his
    second number after the kick-off is his alone: the export stays. One held against his first is the baby's
    too (the decision point applies it to both): the export is withdrawn."""
    okafor_second_number(db)
    baby = his_number_on_another_record(db, framework, tmp_path)
    with db.session() as s:
        pairs = s.scalars(select(MatchReview.id).where(MatchReview.status == "open")).all()
        assert pairs, "the baby's record is held for review against Mr Okafor's"
        for pair in pairs:
            decide(s, pair, "separate", "ig.morgan", "a baby's record sent with her father's NHS number")
        s.commit()
    with db.session() as s:
        set_choice(s, OKAFOR_SECOND_NHS, by="patient", opt_out_secondary=True)
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers)
    assert done.status_code == 200, done.text
    with db.session() as s:
        assert set(s.scalars(select(ExportJobPerson.person_id).where(ExportJobPerson.job_id == job_id))) == \
            {baby, ics.stranger}, "the baby and Mrs Hughes are in the export, Mr Okafor is not"
        set_choice(s, OKAFOR_SECOND_NHS, by="patient", object_all=True)
    assert _served(ics, headers, done.json()) == 200
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", object_org="RXR")
    assert _served(ics, headers, done.json()) == 410


def test_a_choice_under_the_number_of_a_record_moved_out_of_a_person_in_the_export_withdraws_it(
        ics: Ics, db: Database) -> None:
    """Mr Okafor is in the export with his mental health trust record, which carries his second number. The
    record is then separated from him (a wrong link): a choice held against that number now belongs to the
    person the record went to, who is not in the export; but the export holds the record's data under him,
    so it is withdrawn."""
    okafor_second_number(db)
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers)
    assert done.status_code == 200, done.text
    with db.session() as s:
        record = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "RXM-4")).one()
        separate(s, record.id, by="mpi.admin", reason="a wrong link")
    with db.session() as s:
        set_choice(s, OKAFOR_SECOND_NHS, by="patient", opt_out_secondary=True)
    assert _served(ics, headers, done.json()) == 410


def test_a_stop_of_an_organisation_whose_data_is_not_in_the_export_leaves_it(ics: Ics, db: Database,
                                                                            framework: Framework) -> None:
    """Mrs Hughes's practice's export holds only P81002's data: the hospital (RXR) suspended leaves it to
    download (before, any organisation's stop withdrew every export); her practice suspended withdraws it."""
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers, HER_PRACTICE)
    assert done.status_code == 200, done.text
    with db.session() as s:
        set_agreement(s, framework, "RXR", "suspended", "ig.morgan", "breach reported")
    assert _served(ics, headers, done.json()) == 200, "withdrawn by a stop of an organisation not in it"
    with db.session() as s:
        set_agreement(s, framework, "P81002", "suspended", "ig.morgan", "breach reported")
        set_agreement(s, framework, "P81002", "signed", "ig.morgan", "")  # signed again: the poll says why
    polled = ics.client.get(f"/fhir/bulk/{job_id}", headers=headers)
    assert polled.status_code == 410 and "P81002" in polled.json()["issue"][0]["diagnostics"]
    assert any(job_id in entry and "source-agreement" in entry for entry in _withdrawals(db))


def test_an_export_finished_before_its_persons_were_recorded_is_withdrawn_by_anyone_s_choice(
        ics: Ics, db: Database, framework: Framework) -> None:
    """A job finished before migration 0027 recorded nobody and no organisation: any change withdraws it,
    a choice of someone not in it and a stop of an organisation not in it alike."""
    headers = ics.token("analyst.chen")
    jobs = []
    for _ in range(2):
        job_id, done = _finished(ics, headers, HER_PRACTICE)
        assert done.status_code == 200, done.text
        jobs.append((job_id, done.json()))
        with db.session() as s:  # as a job finished before 0027 is
            s.get_one(ExportJob, job_id).source_orgs = None
            s.execute(delete(ExportJobPerson).where(ExportJobPerson.job_id == job_id))
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=True)
    assert _served(ics, headers, jobs[0][1]) == 410
    with db.session() as s:
        set_agreement(s, framework, "RXR", "suspended", "ig.morgan", "breach reported")
    assert ics.client.get(f"/fhir/bulk/{jobs[1][0]}", headers=headers).status_code == 410


def test_an_export_run_in_processes_records_everyone_its_shards_included(ics: Ics, db: Database,
                                                                         framework: Framework) -> None:
    """With two worker processes (a shard of the people each), a choice of either person withdraws the
    export: each shard's persons are recorded, not only the first's."""
    settings = ics.client.app.state.settings  # type: ignore[attr-defined]
    jobs = ExportJobs(db, framework, replace(settings, export_workers=2, export_people_per_worker=1))
    for nhs_number in (OKAFOR_NHS, HUGHES_NHS):
        job_id = jobs.start(actor_for(framework, "analyst.chen"), ExportScope("system"), "test", background=False)
        assert jobs.run(job_id).status == "completed"
        with db.session() as s:
            set_choice(s, nhs_number, by="patient", opt_out_secondary=True)
        assert jobs.withdraw() == 1, f"the choice under {nhs_number} withdrew nothing"
        with db.session() as s:
            set_choice(s, nhs_number, by="patient", opt_out_secondary=False)  # back in, for the next export


HUGHES_CORRECTED_NHS = "9990000107"  # valid (modulus 11): the number her practice corrects hers to


def _her_number_corrected(db: Database, framework: Framework, folder: Path) -> None:
    """Her practice sends her Patient again with another NHS number (a keying error put right): her record no
    longer carries the one it had, and nothing else does; no merge, her record stays her person's."""
    gp = bundle("P81002", "systmone", [patient("gp-other", HUGHES_CORRECTED_NHS, "Hughes", "Margaret",
                                               "1952-06-11", gender="female")], timestamp="2026-11-20T09:00:00Z")
    report = Pipeline(db, framework).ingest_paths([write_ndjson(folder / "corrected.ndjson", [gp])])
    assert report.quarantined == 0, report.quarantine
    with db.session() as s:
        assert s.scalars(select(PatientRecord.nhs_number).where(PatientRecord.source_id == "gp-other")).one() == \
            HUGHES_CORRECTED_NHS


@pytest.mark.parametrize("choice", CHOICES)
def test_a_choice_whose_number_her_source_then_corrects_still_withdraws_the_export(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path, choice: str) -> None:
    """Mrs Hughes is in her practice's export. She opts out or objects; then, before anyone polls or downloads,
    her practice corrects the NHS number on her record: no record carries the number her choice is held under
    any more. The export still holds what she restricted, and is withdrawn (before, the choice mapped to nobody
    and the files stayed to download)."""
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers, HER_PRACTICE)
    assert done.status_code == 200, done.text
    with db.session() as s:
        set_choice(s, HUGHES_NHS, by="patient", **CHOICES[choice])
    _her_number_corrected(db, framework, tmp_path)
    assert _served(ics, headers, done.json()) == 410, "served after she restricted her choices"
    assert any(job_id in entry and "choices-changed" in entry for entry in _withdrawals(db))


def test_a_choice_under_a_number_no_one_carried_when_it_was_made_leaves_the_export(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Her number is corrected after her practice's export ran; a choice then held against her old number
    applies to no one (no record carries it), and leaves the export; one under her new number is hers and
    withdraws it."""
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers, HER_PRACTICE)
    assert done.status_code == 200, done.text
    _her_number_corrected(db, framework, tmp_path)
    with db.session() as s:
        set_choice(s, HUGHES_NHS, by="ig.morgan", opt_out_secondary=True)
    assert _served(ics, headers, done.json()) == 200, "withdrawn by a choice that applied to no one"
    with db.session() as s:
        set_choice(s, HUGHES_CORRECTED_NHS, by="patient", opt_out_secondary=True)
    assert _served(ics, headers, done.json()) == 410


def test_a_choice_of_the_person_a_record_in_the_export_was_since_merged_into_withdraws_it(
        ics: Ics, db: Database) -> None:
    """Mrs Hughes's record (with no NHS number) is in her practice's export; it is then merged into Mr Okafor
    (an operator's merge), and he opts out under his own number, which her record never carried. His choice
    now covers the record, whose data the export holds under her former person: it is withdrawn (before, only
    a record carrying the number was followed through its moves)."""
    with db.session() as s:
        without_nhs_number(s, ics.stranger)
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers, HER_PRACTICE)
    assert done.status_code == 200, done.text
    with db.session() as s:
        merge_persons(s, ics.okafor, ics.stranger, by="mpi.admin", reason="one person")
    assert _served(ics, headers, done.json()) == 200, "withdrawn by a merge alone"
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=True)
    assert _served(ics, headers, done.json()) == 410


BABY_NHS = "9990000026"  # valid (modulus 11): the number the maternity unit's record of the baby carries
JAUNDICE = "387712008"  # neonatal jaundice: on the baby's GP record only
HIS_PRACTICE = "/fhir/Group/P81001/$export"  # Mr Okafor's practice's registered population, the baby's too


def _baby_held_for_review(db: Database, framework: Framework, folder: Path) -> tuple[str, str]:
    """A baby's GP record (P81001, which has no NHS number for her yet) and the maternity unit's record of her
    birth (RXR, with her number): the MPI is unsure they are one baby (a twin's record would match either) and
    holds them apart, one pair open for review. Her GP record's person, her hospital record's."""
    phone = [{"system": "phone", "value": "07700 900456"}]
    feeds = [bundle("RXR", "epr", [patient("baby", BABY_NHS, "Rowe", "Baby", "2026-10-16", "female", telecom=phone)]),
             bundle("P81001", "emis", [patient("ada", None, "Rowe", "Ada", "2026-10-16", "female", telecom=phone),
                                       condition("ada-c1", "Patient/ada", JAUNDICE, "Neonatal jaundice")])]
    report = Pipeline(db, framework).ingest_paths([write_ndjson(folder / "baby.ndjson", feeds)])
    assert report.quarantined == 0, report.quarantine
    with db.session() as s:
        persons = {source_id: person for source_id, person in s.execute(select(
            PatientRecord.source_id, PatientRecord.person_id).where(PatientRecord.source_id.in_(("ada", "baby"))))}
        assert s.scalars(select(MatchReview.status)).all() == ["open"]
    assert persons["ada"] != persons["baby"]
    return persons["ada"], persons["baby"]


@pytest.mark.parametrize(("pair", "withdrawn"), [("waiting on review", True), ("decided: two babies", False)])
def test_an_opt_out_from_the_other_side_of_a_pair_on_review_withdraws_an_export_holding_this_side(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path, pair: str, withdrawn: bool) -> None:
    """His practice's export holds the baby's GP record; her hospital record, held apart as perhaps hers, is not
    in it. After the kick-off her parent opts her out under the number only the hospital record carries. An
    extract gives a record waiting on review the choices of the record on the pair's other side, so the next one
    leaves her GP record out: the export holding it is withdrawn, as by a choice of her own (before, it stayed to
    download). Once a reviewer has decided they are two babies, the choice is the other baby's alone: the export
    stays, and the next one holds her GP record as this one does."""
    gp_baby, hospital_baby = _baby_held_for_review(db, framework, tmp_path)
    if not withdrawn:
        with db.session() as s:
            (review,) = s.scalars(select(MatchReview.id)).all()
            decide(s, review, "separate", "ig.morgan", "twins: the hospital's record is her sister's")
            s.commit()
    headers = ics.token("analyst.chen")
    job_id, done = _finished(ics, headers, HIS_PRACTICE)
    assert done.status_code == 200, done.text
    with db.session() as s:
        included = set(s.scalars(select(ExportJobPerson.person_id).where(ExportJobPerson.job_id == job_id)))
    assert gp_baby in included and hospital_baby not in included
    with db.session() as s:
        set_choice(s, BABY_NHS, by="patient", opt_out_secondary=True)
    assert _served(ics, headers, done.json()) == (410 if withdrawn else 200)
    polled = ics.client.get(f"/fhir/bulk/{job_id}", headers=headers)
    assert polled.status_code == (410 if withdrawn else 200)
    assert any(job_id in entry and "choices-changed" in entry for entry in _withdrawals(db)) == withdrawn
    if withdrawn:
        assert "start a new one" in polled.json()["issue"][0]["diagnostics"]
    _, again = export(ics.client, headers, HIS_PRACTICE)  # as the choice applies in an extract made now
    assert (JAUNDICE in {c["code"]["coding"][0]["code"] for c in again.get("Condition", [])}) == (not withdrawn)
