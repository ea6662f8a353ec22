"""Bulk Data `$export` over HTTP, as a population health analyst's tool uses it: kick off, poll,
download; and what the export must never contain or include."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import select, update
from tests import builders
from tests.conftest import DEPLOYMENT_KEYS, FRAMEWORK_PATH
from tests.export.conftest import ASYNC, exact_counts, export, wait_for
from tests.fhir_bundles import entries
from tests.small_ics import OKAFOR_NHS, Ics, file_says
from typer.testing import CliRunner

from sharedcare.api.auth import mint_token, sign_token
from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.export.jobs import ExportJobs
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.clients import add_client
from sharedcare.governance.consent import set_choice
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import actor_for
from sharedcare.governance.pseudonymise import Pseudonymiser
from sharedcare.governance.secondary import ExportScope
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, ExportJob, PatientRecord, Resource

HUGHES_NHS = "9990000018"
# Every identifying value the small ICS's feeds hold (tests/small_ics.py), and its free text.
IDENTIFYING = [OKAFOR_NHS, HUGHES_NHS, "Okafor", "Emeka", "Ada", "Hughes", "Margaret", "1 High Street", "RV1 2AB",
               "07700 900123", "1945-03-02", "1952-06-11", "Takes with breakfast", "Discharged after a fall",
               "Visits on Tuesdays", "District nursing", "gp-okafor", "MRN1", "RYC-9", "gp-other"]


def _leaks(value: str, line: str) -> bool:
    """Whether `value` appears in `line` as a whole word: a pseudonymised id is random hex, and "ada"
    inside "4adad0" is not Mrs Hughes's given name leaking."""
    return re.search(rf"(?<![0-9a-z]){re.escape(value.lower())}(?![0-9a-z])", line.lower()) is not None


def _lines(files: dict[str, list[dict[str, object]]]) -> list[str]:
    return [json.dumps(resource) for resources in files.values() for resource in resources]


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_kick_off_poll_and_download_give_one_pseudonymised_file_per_type(ics: Ics) -> None:
    headers = ics.token("analyst.chen")
    manifest, files = export(ics.client, headers)
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"].endswith("/fhir/$export")
    assert {"Patient", "Condition", "MedicationStatement", "DocumentReference", "CarePlan",
            "AllergyIntolerance"} <= set(files)
    assert len(files["Patient"]) == 2  # Mr Okafor (four sources, one person) and Mrs Hughes
    patients = {p["id"] for p in files["Patient"]}
    for resource in (r for t, rs in files.items() if t != "Patient" for r in rs):
        reference = (resource.get("subject") or resource.get("patient"))["reference"]  # type: ignore[index]
        assert reference.removeprefix("Patient/") in patients  # every file joins up on the pseudonym
    for patient in files["Patient"]:
        assert len(patient["birthDate"]) == 7 and patient["address"] == [{"use": "home", "postalCode": "RV1"}]
        assert {"code": "PSEUDED"}.items() <= patient["meta"]["security"][0].items()


def test_no_name_number_address_phone_date_of_birth_or_free_text_leaves(ics: Ics) -> None:
    _, files = export(ics.client, ics.token("analyst.chen"))
    found = [(value, line) for line in _lines(files) for value in IDENTIFYING if _leaks(value, line)]
    assert found == []
    assert ics.okafor not in " ".join(_lines(files)) and ics.stranger not in " ".join(_lines(files))


def test_sensitive_and_always_withheld_information_stays_out(ics: Ics, db: Database) -> None:
    manifest, files = export(ics.client, ics.token("analyst.chen"))
    codes = {c["code"] for r in files["Condition"] for c in r["code"]["coding"]}
    assert codes == {"44054006"}  # diabetes; not the chlamydia (sexual health) nor the mental health trust's
    assert len(files["DocumentReference"]) == 1  # the restricted letter is withheld
    assert "data" not in json.dumps(files["DocumentReference"][0]["content"])
    withheld = exact_counts(db)["withheld"]  # the IG's exact figures; the recipient's are suppressed
    assert withheld["sensitive-category"] == 2 and withheld["confidential"] == 1
    shown = manifest["extension"]["https://sharedcare.example/bulk/summary"]
    assert shown["resources_withheld"]["sensitive-category"] == shown["resources_withheld"]["confidential"] == "*"


def test_a_diagnosis_its_source_withdrew_as_entered_in_error_is_not_exported(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    withdrawn = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                             "code": "entered-in-error"}]}
    gp = builders.bundle("P81001", "emis", [
        builders.patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        builders.condition("gp-c1", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus",
                           verificationStatus=withdrawn),
    ], timestamp="2026-11-05T09:00:00Z")
    assert Pipeline(db, framework).ingest_paths([builders.write_ndjson(tmp_path / "withdraw.ndjson", [gp])]).accepted
    _, files = export(ics.client, ics.token("analyst.chen"))
    assert "44054006" not in json.dumps(files.get("Condition", []))


def test_opted_out_and_objecting_people_are_left_out(ics: Ics, db: Database) -> None:
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=True)
        set_choice(s, HUGHES_NHS, by="patient", object_all=True)
    manifest, files = export(ics.client, ics.token("analyst.chen"))
    assert files == {}
    summary = manifest["extension"]["https://sharedcare.example/bulk/summary"]
    # one person each: told to the IG exactly, to the recipient as "*" (TRUST SU2), and no count of the
    # people in scope from which the recipient could subtract the people in the files (SU3)
    assert exact_counts(db)["people_excluded"] == {"deny-opt-out": 1, "deny-objection-all": 1}
    assert summary["people_excluded"] == {"deny-opt-out": "*", "deny-objection-all": "*"}
    assert "people_seen" not in summary and "people_excluded_total" not in summary
    # the national data opt-out is for planning and research only: his GP still sees his record (TRUST SU1)
    record = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=ics.open_record("dr.patel"))
    assert record.status_code == 200 and any(e["resource"]["resourceType"] == "Condition"
                                             for e in entries(record.json()))


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_a_suspended_organisations_data_and_an_objected_organisation_stay_out(ics: Ics, db: Database,
                                                                             framework: Framework) -> None:
    with db.session() as s:
        set_agreement(s, framework, "RXR", "suspended", by="ig.morgan", reason="a breach reported")
        set_choice(s, OKAFOR_NHS, by="patient", object_org="RYC")
    _, files = export(ics.client, ics.token("analyst.chen"))
    sources = {r["meta"]["source"].split("|")[1].split("#")[0] for rs in files.values() for r in rs}
    assert sources == {"P81001", "P81002"}
    assert "DocumentReference" not in files and "CarePlan" not in files


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_group_export_is_one_practices_registered_population(ics: Ics) -> None:
    headers = ics.token("analyst.chen")
    _, files = export(ics.client, headers, "/fhir/Group/P81002/$export")
    assert len(files["Patient"]) == 1 and "|P81002#" in files["Patient"][0]["meta"]["source"]
    assert set(files) == {"Patient", "AllergyIntolerance"}
    for group in ("RXR", "NOPE"):  # a hospital is not a practice's population; an unknown code is nobody
        response = ics.client.get(f"/fhir/Group/{group}/$export", headers={**headers, **ASYNC})
        assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"


def test_patient_level_export_with_type_and_since(ics: Ics) -> None:
    headers = ics.token("analyst.chen")
    _, files = export(ics.client, headers, "/fhir/Patient/$export", {"_type": "Condition,Patient",
                                                                     "_outputFormat": "application/fhir+ndjson"})
    assert set(files) == {"Condition", "Patient"}
    _, later = export(ics.client, headers, params={"_since": "2999-01-01T00:00:00Z"})
    assert later == {}


def test_pseudonyms_are_the_same_in_every_export_for_the_purpose(ics: Ics) -> None:
    headers = ics.token("analyst.chen")
    _, first = export(ics.client, headers)
    _, second = export(ics.client, headers)
    for resource_type in first:
        assert sorted(r["id"] for r in first[resource_type]) == sorted(r["id"] for r in second[resource_type])


def test_roles_without_a_secondary_use_purpose_get_403_and_are_audited(ics: Ics, db: Database) -> None:
    for user in ("dr.patel", "ig.morgan"):
        response = ics.client.get("/fhir/$export", headers={**ics.token(user), **ASYNC})
        assert response.status_code == 403
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome" and "deny-purpose" in outcome["issue"][0]["diagnostics"]
    with db.session() as s:
        denied = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:kick-off",
                                                    AuditEntry.outcome == "deny")).all()
    assert {e.username for e in denied} == {"dr.patel", "ig.morgan"}


def test_an_analyst_of_a_suspended_organisation_is_refused(ics: Ics, db: Database, framework: Framework) -> None:
    with db.session() as s:
        set_agreement(s, framework, "QRD", "suspended", by="ig.morgan", reason="a breach reported")
    response = ics.client.get("/fhir/$export", headers={**ics.token("analyst.chen"), **ASYNC})
    assert response.status_code == 403 and "deny-actor-agreement" in response.text


def test_bad_kick_offs_say_what_is_wrong(ics: Ics) -> None:
    headers = ics.token("analyst.chen")
    assert ics.client.get("/fhir/$export", headers=headers).status_code == 400  # no Prefer: respond-async
    for params, expected in (({"_outputFormat": "text/csv"}, "_outputFormat"), ({"_type": "Practitioner"}, "_type"),
                             ({"patient": "x"}, "does not take patient"), ({"_since": "yesterday"}, "_since")):
        response = ics.client.get("/fhir/$export", params=params, headers={**headers, **ASYNC})
        assert response.status_code == 400, params
        assert expected in response.json()["issue"][0]["diagnostics"]
    assert ics.client.get("/fhir/$export", headers=ASYNC).status_code == 401
    # an app launched for one patient exports no population, whatever its user's role may export
    state = ics.client.app.state  # type: ignore[attr-defined]
    with state.database.session() as session:
        add_client(session, state.framework, "ward-tasks", "Ward tasks", "public", by="cli",
                   redirect_uris=["https://tasks.example/callback"], launch_uri="https://tasks.example/launch")
    launched = mint_token(state.settings, state.framework, "analyst.chen", "launch patient/*.read",
                          client_id="ward-tasks", patient=ics.okafor)
    response = ics.client.get("/fhir/$export", headers={"Authorization": f"Bearer {launched}", **ASYNC})
    assert response.status_code == 400
    assert "only patient/ scopes cannot export" in response.json()["issue"][0]["diagnostics"]


def test_only_the_requesting_user_can_poll_download_or_cancel(ics: Ics) -> None:
    manifest, _ = export(ics.client, ics.token("analyst.chen"))
    status_url = manifest["output"][0]["url"].rsplit("/", 1)[0]
    other = ics.token("dr.patel")
    assert ics.client.get(status_url, headers=other).status_code == 404
    assert ics.client.get(manifest["output"][0]["url"], headers=other).status_code == 404
    assert ics.client.delete(status_url, headers=other).status_code == 404
    assert ics.client.get(manifest["output"][0]["url"]).status_code == 401
    assert ics.client.get(f"{status_url}/..%2F..%2Fsharedcare.db", headers=ics.token("analyst.chen")).status_code \
        == 404


def test_an_app_the_analyst_authorised_reaches_only_what_its_scopes_name(ics: Ics, db: Database) -> None:
    """Kick-off held a token to its scopes, polling and downloading did not: an app authorised for one type,
    for one patient, or to write only downloaded the whole population extract. Each refusal is audited."""
    manifest, _ = export(ics.client, ics.token("analyst.chen"))
    status_url = manifest["output"][0]["url"].rsplit("/", 1)[0]
    urls = {o["type"]: o["url"] for o in manifest["output"]}
    assert {"Patient", "Condition"} <= set(urls)
    conditions_only = ics.token("analyst.chen", scope="user/Condition.read")
    assert ics.client.get(status_url, headers=conditions_only).status_code == 200
    assert ics.client.get(urls["Condition"], headers=conditions_only).status_code == 200
    refused = ics.client.get(urls["Patient"], headers=conditions_only)
    assert refused.status_code == 403 and "deny-scope" in refused.text
    for scope in ("patient/*.read", "user/Condition.write", "system/*.write"):
        # signed as `ics.token` would (it refuses write scopes to a role that may not write)
        app = {"Authorization": "Bearer " + sign_token(load_settings(), {"sub": "analyst.chen", "role": "analyst",
                                                                         "org": "QRD", "scope": scope})}
        assert ics.client.get(status_url, headers=app).status_code == 403, scope
        assert ics.client.get(urls["Condition"], headers=app).status_code == 403, scope
        assert ics.client.delete(status_url, headers=app).status_code == 403, scope
    with db.session() as session:
        denied = session.scalars(select(AuditEntry).where(AuditEntry.outcome == "deny")).all()
    assert sum("deny-scope" in json.dumps(e.event) for e in denied) == 10
    assert ics.client.get(status_url, headers=ics.token("analyst.chen")).status_code == 200  # nothing cancelled


def test_cancelling_deletes_the_files_and_forgets_the_job(ics: Ics, tmp_path: Path) -> None:
    headers = ics.token("analyst.chen")
    manifest, _ = export(ics.client, headers)
    status_url = manifest["output"][0]["url"].rsplit("/", 1)[0]
    folder = tmp_path / "data" / "exports" / status_url.rsplit("/", 1)[1]
    assert any(folder.iterdir())
    assert ics.client.delete(status_url, headers=headers).status_code == 202
    assert not folder.exists()
    assert ics.client.get(status_url, headers=headers).status_code == 404
    assert ics.client.get(manifest["output"][0]["url"], headers=headers).status_code == 404


def _finished_days_ago(db: Database, job_id: str, days: float) -> None:
    with db.session() as s:
        s.execute(update(ExportJob).where(ExportJob.id == job_id)
                  .values(finished_at=utcnow() - timedelta(days=days)))


def test_a_finished_exports_files_are_deleted_after_the_retention_period(ics: Ics, db: Database,
                                                                         tmp_path: Path) -> None:
    headers = ics.token("analyst.chen")
    manifest, _ = export(ics.client, headers)
    status_url = manifest["output"][0]["url"].rsplit("/", 1)[0]
    job_id = status_url.rsplit("/", 1)[1]
    folder = tmp_path / "data" / "exports" / job_id
    _finished_days_ago(db, job_id, 6.9)  # within the 7 days kept: still there
    assert ics.client.get(status_url, headers=headers).status_code == 200
    assert ics.client.get(manifest["output"][0]["url"], headers=headers).status_code == 200
    _finished_days_ago(db, job_id, 7.1)
    polled = ics.client.get(status_url, headers=headers)
    assert polled.status_code == 404 and "expired" in polled.json()["issue"][0]["diagnostics"]
    assert not folder.exists()  # deleted by that poll
    assert ics.client.get(manifest["output"][0]["url"], headers=headers).status_code == 404


def test_a_server_starting_deletes_the_files_past_their_retention(ics: Ics, db: Database, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, _ = export(ics.client, ics.token("analyst.chen"))
    job_id = manifest["output"][0]["url"].rsplit("/", 2)[1]
    folder = tmp_path / "data" / "exports" / job_id
    _finished_days_ago(db, job_id, 8)
    assert any(folder.iterdir())
    for name, value in (("SHAREDCARE_DB", db.url.render_as_string(hide_password=False)),
                        ("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH)), ("SHAREDCARE_DATA", str(tmp_path / "data")),
                        *DEPLOYMENT_KEYS.items()):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)  # started, not left listening
    started = CliRunner().invoke(app, ["serve"])
    assert started.exit_code == 0, started.output
    assert "deleted the files of 1 finished exports" in started.output
    assert not folder.exists()  # no poll needed
    with db.session() as s:
        assert s.get_one(ExportJob, job_id).status == "expired"


def _command_line_export(ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> tuple[ExportJobs, str, Path]:
    """A finished export written where its operator asked, as `sharedcare export --out my-extract` writes it."""
    jobs = ExportJobs(db, framework, ics.client.app.state.settings)  # type: ignore[attr-defined]
    mine = tmp_path / "my-extract"
    job_id = jobs.start(actor_for(framework, "analyst.chen"), ExportScope("system"), "sharedcare export",
                        out_dir=mine, background=False)
    assert jobs.run(job_id).status == "completed"
    return jobs, job_id, mine


def test_an_export_written_where_its_operator_asked_is_theirs_to_keep(ics: Ics, db: Database, framework: Framework,
                                                                       tmp_path: Path) -> None:
    jobs, job_id, mine = _command_line_export(ics, db, framework, tmp_path)
    _finished_days_ago(db, job_id, 30)
    assert jobs.expire() == 0 and any(mine.iterdir())


def test_cancelling_a_command_line_export_over_the_api_keeps_the_files_its_operator_asked_for(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """The same user may cancel it (the job is theirs), but its files are where the operator chose, as `expire`
    knows: only the service's own folder is the service's to empty."""
    jobs, job_id, mine = _command_line_export(ics, db, framework, tmp_path)
    written = {path.name: path.read_bytes() for path in mine.iterdir()}
    headers = ics.token("analyst.chen")
    assert ics.client.delete(f"/fhir/bulk/{job_id}", headers=headers).status_code == 202
    assert ics.client.get(f"/fhir/bulk/{job_id}", headers=headers).status_code == 404
    assert {path.name: path.read_bytes() for path in mine.iterdir()} == written and written


def test_every_export_is_audited_with_counts(ics: Ics, db: Database) -> None:
    manifest, files = export(ics.client, ics.token("analyst.chen"))
    with db.session() as s:
        events = s.scalars(select(AuditEntry).where(AuditEntry.action.like("secondary:export:%"))
                           .order_by(AuditEntry.seq)).all()
    actions = [e.action for e in events]
    assert actions[:2] == ["secondary:export:kick-off", "secondary:export:complete"]
    assert actions.count("secondary:export:download") == len(manifest["output"])
    assert all(e.username == "analyst.chen" and e.patient_id is None for e in events)
    complete = {d["type"]: d["valueString"] for d in events[1].event["entity"][-1]["detail"]}
    assert json.loads(complete["resources"]) == {t: len(rs) for t, rs in files.items()}
    assert complete["people_included"] == "2" and complete["withheld:sensitive-category"] == "2"
    assert events[1].event["purposeOfEvent"][0]["coding"][0]["code"] == "HOPERAT"


def test_the_status_url_answers_202_with_progress_until_done(ics: Ics) -> None:
    headers = ics.token("analyst.chen")
    kick_off = ics.client.get("/fhir/Patient/$export", headers={**headers, **ASYNC})
    assert kick_off.status_code == 202
    assert kick_off.headers["Content-Location"].startswith("http://testserver/fhir/bulk/")
    done = wait_for(ics.client, kick_off.headers["Content-Location"], headers)
    assert done.status_code == 200 and done.headers["cache-control"] == "no-store"
    assert done.json()["transactionTime"]


def test_an_export_cancelled_before_or_while_it_runs_stops_and_leaves_no_files(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    from dataclasses import replace

    from sharedcare.config import load_settings
    from sharedcare.export.jobs import ExportJobs
    from sharedcare.governance.gateway import actor_for
    from sharedcare.governance.secondary import ExportScope

    jobs = ExportJobs(db, framework, replace(load_settings(), data_path=tmp_path / "data", export_workers=1))
    analyst = actor_for(framework, "analyst.chen")
    before = jobs.start(analyst, ExportScope("system"), "test", background=False)
    jobs.cancel(analyst, before)
    during = jobs.start(analyst, ExportScope("system"), "test", background=False)
    views = [jobs.run(before), jobs.run(during, on_progress=lambda done, total: jobs.cancel(analyst, during))]
    for job, view in zip((before, during), views, strict=True):
        assert view.status == "cancelled" and view.output == []
        assert not (tmp_path / "data" / "exports" / job).exists()
    with db.session() as s:
        actions = [e.action for e in s.scalars(select(AuditEntry).where(AuditEntry.action.like("secondary:export:%"))
                                               .order_by(AuditEntry.seq))]
    assert actions == ["secondary:export:kick-off", "secondary:export:cancel"] * 2  # and no completion


def test_a_patient_who_opted_out_and_then_died_stays_out_of_the_export(ics: Ics, db: Database,
                                                                        framework: Framework, tmp_path: Path) -> None:
    """The opt-out is held against the NHS number, so the GP recording his death changes nothing (TRUST
    SU1): he is still left out of analytics, and still in the clinical view."""
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by="patient", opt_out_secondary=True)
    death = builders.bundle("P81001", "emis", [builders.patient(
        "gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02", deceasedDateTime="2026-11-20T04:10:00Z")],
        timestamp="2026-11-21T09:00:00Z")
    report = Pipeline(db, framework).ingest_paths([builders.write_ndjson(tmp_path / "death.ndjson", [death])])
    assert report.accepted == 1, report
    record = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=ics.open_record("dr.patel"))
    assert record.status_code == 200
    assert any(e["resource"]["resourceType"] == "Patient" and e["resource"].get("deceasedDateTime")
               for e in entries(record.json()))
    _, files = export(ics.client, ics.token("analyst.chen"))
    assert len(files["Patient"]) == 1  # the stranger only
    assert exact_counts(db)["people_excluded"] == {"deny-opt-out": 1}


def test_a_user_keeps_three_finished_exports_and_a_fourth_deletes_the_oldest(ics: Ics, db: Database,
                                                                             tmp_path: Path) -> None:
    """Disk use per user is bounded by count, not only by the retention period: an analyst exporting the
    whole population again and again keeps the newest three; the kick-off that deletes one says which."""
    headers = ics.token("analyst.chen")
    urls = [export(ics.client, headers)[0]["output"][0]["url"].rsplit("/", 1)[0] for _ in range(4)]
    jobs = [url.rsplit("/", 1)[1] for url in urls]
    oldest = ics.client.get(urls[0], headers=headers)
    assert oldest.status_code == 404 and "expired" in oldest.json()["issue"][0]["diagnostics"]
    assert not (tmp_path / "data" / "exports" / jobs[0]).exists()
    for url, job in zip(urls[1:], jobs[1:], strict=True):
        assert ics.client.get(url, headers=headers).status_code == 200
        assert any((tmp_path / "data" / "exports" / job).iterdir())
    with db.session() as s:
        kick_offs = [{d["type"]: d["valueString"] for d in e.event["entity"][-1]["detail"]}
                     for e in s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:kick-off")
                                        .order_by(AuditEntry.seq))]
    assert [k.get("superseded") for k in kick_offs] == [None, None, None, jobs[0]]


def test_with_a_pseudonym_key_of_its_own_a_new_signing_secret_leaves_the_pseudonyms_as_they_were(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """An analyst's extracts join up over time: rotating SHAREDCARE_SECRET (after a leak) does not re-key
    them when SHAREDCARE_PSEUDONYM_KEY is set; without it, pseudonyms are keyed by the secret, as before."""
    settings = ics.client.app.state.settings  # type: ignore[attr-defined]

    def people(**keys: str | None) -> set[str]:
        jobs = ExportJobs(db, framework, replace(settings, **keys))
        out = tmp_path / f"extract-{len(list(tmp_path.iterdir()))}"
        job_id = jobs.start(actor_for(framework, "analyst.chen"), ExportScope("system"), "sharedcare export",
                            out_dir=out, background=False)
        assert jobs.run(job_id).status == "completed"
        return {json.loads(line)["id"] for line in (out / "Patient.ndjson").read_text().splitlines()}

    key = "a-pseudonym-key-kept-apart-from-the-signing-secret"
    before, rotated = people(secret="s" * 40, pseudonym_key=key), people(secret="t" * 40, pseudonym_key=key)
    assert before == rotated and len(before) == 2
    assert people(secret="s" * 40, pseudonym_key=None) != before  # keyed by the secret: another series
    assert people(secret="s" * 40, pseudonym_key=None) == people(secret="s" * 40, pseudonym_key="s" * 40)


def test_an_export_running_when_its_organisation_is_suspended_is_not_kept(ics: Ics, db: Database,
                                                                         framework: Framework) -> None:
    """QRD's agreement is suspended while its analyst's export runs: the run ends failed, audited, and none of
    its files is left to download, then or once QRD signs again; the poll says why."""
    settings = ics.client.app.state.settings  # type: ignore[attr-defined]
    jobs = ExportJobs(db, framework, replace(settings, export_workers=1))
    job_id = jobs.start(actor_for(framework, "analyst.chen"), ExportScope("system"), "test", background=False)

    def suspend_once(done: int, total: int) -> None:
        if done and not suspended:
            with db.session() as s:
                set_agreement(s, framework, "QRD", "suspended", by="ig.morgan", reason="a breach reported")
            suspended.append(done)
    suspended: list[int] = []
    assert jobs.run(job_id, on_progress=suspend_once).status == "failed" and suspended
    folder = settings.data_path / "exports" / job_id
    assert not folder.exists() or not any(folder.iterdir())
    with db.session() as s:
        set_agreement(s, framework, "QRD", "signed", by="ig.morgan", reason="")
        done = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:complete")).one()
    assert done.outcome == "deny" and "deny-actor-agreement" in json.dumps(done.event)
    poll = ics.client.get(f"/fhir/bulk/{job_id}", headers=ics.token("analyst.chen"))
    assert poll.status_code == 500 and "not kept" in poll.json()["issue"][0]["diagnostics"]
    assert "no signed information-sharing agreement in force" in poll.json()["issue"][0]["diagnostics"]
    assert ics.client.get(f"/fhir/bulk/{job_id}/Patient.ndjson", headers=ics.token("analyst.chen")).status_code == 404


def _cli_env(monkeypatch: pytest.MonkeyPatch, db: Database, tmp_path: Path) -> None:
    for name, value in (("SHAREDCARE_DB", db.url.render_as_string(hide_password=False)),
                        ("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH)), ("SHAREDCARE_DATA", str(tmp_path / "data")),
                        *DEPLOYMENT_KEYS.items()):
        monkeypatch.setenv(name, value)


def test_a_finished_export_is_deleted_when_its_organisation_is_suspended_and_not_served_again(
        ics: Ics, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator suspends QRD while its analyst's finished export waits to be downloaded: its files go at
    once (audited, naming them), the status URL says 403 while QRD is suspended, and once QRD signs again
    410 saying why, the download too; the analyst starts a new one."""
    manifest, _ = export(ics.client, ics.token("analyst.chen"))
    status_url, file_url = manifest["output"][0]["url"].rsplit("/", 1)[0], manifest["output"][0]["url"]
    job_id = status_url.rsplit("/", 1)[1]
    folder = tmp_path / "data" / "exports" / job_id
    assert any(folder.iterdir())
    _cli_env(monkeypatch, db, tmp_path)
    suspended = CliRunner().invoke(app, ["agreements", "set", "QRD", "--status", "suspended", "--reason", "a breach"])
    assert suspended.exit_code == 0 and "deleted the files of 1 finished exports of QRD's users" in suspended.output
    assert not folder.exists()  # no poll needed
    settings, fw = ics.client.app.state.settings, ics.client.app.state.framework  # type: ignore[attr-defined]

    def token() -> dict[str, str]:  # signed as the app signs (the environment now holds the command line's key)
        return {"Authorization": f"Bearer {mint_token(settings, fw, 'analyst.chen')}"}
    during = ics.client.get(status_url, headers=token())
    assert during.status_code == 403 and "QRD" in during.json()["issue"][0]["diagnostics"]
    assert CliRunner().invoke(app, ["agreements", "set", "QRD", "--status", "signed"]).exit_code == 0
    headers = token()
    for url in (status_url, file_url):
        gone = ics.client.get(url, headers=headers)
        why = gone.json()["issue"][0]
        assert gone.status_code == 410 and why["code"] == "deleted", url
        assert "its files were deleted when QRD's information-sharing agreement was suspended on" in why["diagnostics"]
    with db.session() as s:
        withdrawn = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:withdrawn")).one()
    assert job_id in json.dumps(withdrawn.event) and "Patient.ndjson" in json.dumps(withdrawn.event)
    export(ics.client, headers)  # a new one, as before


def test_an_export_finished_before_a_suspension_made_elsewhere_is_deleted_at_its_first_touch(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """A suspension that did not pass through `agreements set` or the IG workspace (straight into the store):
    the next poll, of anyone's export, deletes the files before anything is answered."""
    manifest, _ = export(ics.client, ics.token("analyst.chen"))
    job_id = manifest["output"][0]["url"].rsplit("/", 2)[1]
    folder = tmp_path / "data" / "exports" / job_id
    with db.session() as s:
        set_agreement(s, framework, "QRD", "ended", by="test", reason="the contract ended")
    assert any(folder.iterdir())
    polled = ics.client.get(f"/fhir/bulk/{job_id}", headers=ics.token("analyst.chen"))
    assert polled.status_code == 403 and not folder.exists()
    with db.session() as s:
        assert s.get_one(ExportJob, job_id).status == "withdrawn"


def test_an_export_that_ran_through_a_suspension_and_a_re_signing_is_not_kept(ics: Ics, db: Database,
                                                                             framework: Framework) -> None:
    """QRD is suspended and signed again while its analyst's export runs: the run's last check finds the
    agreement signed, but the export was made across a suspension, so its files are not published (since
    2026-12-07: before, they were published and withdrawn at the next touch) and the poll says why (410)."""
    settings = ics.client.app.state.settings  # type: ignore[attr-defined]
    jobs = ExportJobs(db, framework, replace(settings, export_workers=1))
    job_id = jobs.start(actor_for(framework, "analyst.chen"), ExportScope("system"), "test", background=False)

    def suspend_and_sign_once(done: int, total: int) -> None:
        if done and not changed:
            with db.session() as s:
                set_agreement(s, framework, "QRD", "suspended", by="ig.morgan", reason="a breach reported")
                set_agreement(s, framework, "QRD", "signed", by="ig.morgan", reason="")
            changed.append(done)
    changed: list[int] = []
    assert jobs.run(job_id, on_progress=suspend_and_sign_once).status == "withdrawn" and changed
    poll = ics.client.get(f"/fhir/bulk/{job_id}", headers=ics.token("analyst.chen"))
    assert poll.status_code == 410, poll.text
    assert "agreement was suspended on" in poll.json()["issue"][0]["diagnostics"]
    folder = settings.data_path / "exports" / job_id
    assert not folder.exists() or not any(folder.iterdir())


def test_a_finished_export_is_withdrawn_when_a_suspension_is_written_in_the_framework_file(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """The operator suspends QRD by editing the framework file and restarting the server: its analyst's
    finished export is withdrawn, as after `agreements set`, and once the file says signed again the poll
    says why (410), not the files."""
    manifest, _ = export(ics.client, ics.token("analyst.chen"))
    job_id = manifest["output"][0]["url"].rsplit("/", 2)[1]
    with ics.restarted(file_says(framework, "QRD", "suspended")) as suspended:
        assert suspended.get(f"/fhir/bulk/{job_id}", headers=ics.token("analyst.chen")).status_code == 403
    assert not (tmp_path / "data" / "exports" / job_id).exists()
    with ics.restarted(framework) as signed_again:
        polled = signed_again.get(f"/fhir/bulk/{job_id}", headers=ics.token("analyst.chen"))
    assert polled.status_code == 410, polled.text
    assert "agreement was suspended on" in polled.json()["issue"][0]["diagnostics"]


def test_a_finished_export_is_withdrawn_when_its_agreement_is_set_back_to_draft(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Draft is not signed: the files go, and once QRD signs again the poll says why (410)."""
    manifest, _ = export(ics.client, ics.token("analyst.chen"))
    job_id = manifest["output"][0]["url"].rsplit("/", 2)[1]
    with db.session() as s:
        set_agreement(s, framework, "QRD", "draft", by="test", reason="re-drafting the data sharing terms")
        set_agreement(s, framework, "QRD", "signed", by="test", reason="")
    polled = ics.client.get(f"/fhir/bulk/{job_id}", headers=ics.token("analyst.chen"))
    assert polled.status_code == 410, polled.text
    assert "agreement was set back to draft (no longer signed) on" in polled.json()["issue"][0]["diagnostics"]
    assert not (tmp_path / "data" / "exports" / job_id).exists()


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_dates_are_shifted_by_the_date_of_birth_the_export_publishes(ics: Ics, db: Database) -> None:
    """Mr Okafor's hospital record gives his date of birth day and month transposed (1945-02-03, earlier than
    his GP's 1945-03-02). The export publishes his GP record's birth month, and shifts his dates by the shift
    anchored on that record's date of birth, not on the earliest any source gives: else the shifted date of
    birth his events are measured from would not be in the month published."""
    with db.session() as s:
        hospital = s.scalars(select(Resource).join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
                             .where(PatientRecord.source_id == "MRN1", Resource.resource_type == "Patient")).one()
        hospital.content = {**hospital.content, "birthDate": "1945-02-03"}
    settings = ics.client.app.state.settings  # type: ignore[attr-defined]
    _, files = export(ics.client, ics.token("analyst.chen"), params={"_type": "Patient,Condition"})
    assert [p["birthDate"] for p in files["Patient"] if p.get("gender") == "male"] == ["1945-03"]
    with db.session() as s:
        purpose = s.scalars(select(ExportJob.purpose)).one()
    shift = Pseudonymiser(settings.pseudonym_secret, purpose).date_shift(ics.okafor, "1945-03-02")
    assert (date(1945, 3, 2) + shift).strftime("%Y-%m") == "1945-03"
    onsets = {c["onsetDateTime"] for c in files["Condition"]}
    assert onsets == {(date(2019, 3, 1) + shift).isoformat()}, (onsets, shift)


@pytest.mark.usefixtures("patients_as_pseudonymised")
def test_when_the_chosen_patient_is_withheld_dates_follow_the_one_published(ics: Ics, db: Database) -> None:
    """Mr Okafor's GP record, the one his Patient would come from, is marked restricted (and gives an earlier
    date of birth): it does not leave, another source's Patient is published, and his dates are shifted by
    that one's date of birth, not by the withheld record's."""
    with db.session() as s:
        for resource in s.scalars(select(Resource).join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
                                  .where(PatientRecord.person_id == ics.okafor, Resource.resource_type == "Patient")):
            if resource.source_org == "P81001":
                resource.content = {**resource.content, "birthDate": "1945-01-05", "meta": {"security": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}}
    settings = ics.client.app.state.settings  # type: ignore[attr-defined]
    _, files = export(ics.client, ics.token("analyst.chen"), params={"_type": "Patient,Condition"})
    assert [p["birthDate"] for p in files["Patient"] if p.get("gender") == "male"] == ["1945-03"]
    with db.session() as s:
        purpose = s.scalars(select(ExportJob.purpose)).one()
    shift = Pseudonymiser(settings.pseudonym_secret, purpose).date_shift(ics.okafor, "1945-03-02")
    assert {c["onsetDateTime"] for c in files["Condition"]} == {(date(2019, 3, 1) + shift).isoformat()}


@pytest.mark.parametrize("name", ["_type", "_since", "_outputFormat"])
def test_a_repeated_kick_off_parameter_is_refused_naming_it(ics: Ics, name: str) -> None:
    """`_type=Condition&_type=Patient` was cut to its last value without a word: the analyst got Patients
    alone and could take the extract for what was asked. Each parameter is 0..1 in the Bulk Data
    OperationDefinition (`_type` takes a comma-separated list): a repeat is a 400 naming it."""
    values = {"_type": ("Condition", "Patient"), "_since": ("2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z"),
              "_outputFormat": ("ndjson", "application/fhir+ndjson")}[name]
    headers = ics.token("analyst.chen")
    response = ics.client.get("/fhir/$export", params=[(name, value) for value in values], headers={**headers, **ASYNC})
    assert response.status_code == 400, response.text
    says = response.json()["issue"][0]["diagnostics"]
    assert name in says and "more than once" in says, says
