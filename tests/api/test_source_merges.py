"""A source's merge of two of its own patients over the FHIR write API (`Patient.link` replaced-by) moves only
its own record: it never takes another organisation's records to another person, never gives the writer a
care relationship, and never tells the writer a number it did not send. What it cannot decide alone waits
for an MPI reviewer (security review of 2026-12-07, HIGH: each test below is one of its probes)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.builders import bundle, condition, patient, write_ndjson
from tests.conftest import FRAMEWORK_PATH
from tests.fhir_bundles import resources
from tests.small_ics import OKAFOR_NHS, Ics
from typer.testing import CliRunner

from sharedcare.api.auth import mint_token
from sharedcare.api.deps import SESSION_COOKIE
from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.governance.framework import Framework
from sharedcare.governance.review import queue, record_outcome
from sharedcare.identity.links import decide, merge_persons, unmerge
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, LinkEvent, MatchReview, PatientRecord, ReviewItem

HUGHES_NHS = "9990000018"  # the small ICS's stranger, Mrs Hughes (her practice, P81002, sent it)
HUGHES = patient("made-up-1", HUGHES_NHS, "Hughes", "Margaret", "1952-06-11", gender="female")


def _writer(ics: Ics, username: str = "dr.patel") -> dict[str, str]:
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {mint_token(load_settings(), fw, username, 'user/*.read user/*.write')}",
            "Content-Type": "application/fhir+json"}


def _write(ics: Ics, resource: dict[str, Any], username: str = "dr.patel", **link_to: str) -> dict[str, Any]:
    """PUT one Patient (with `replaced_by`, retired for that Patient of the writer's); the answer's issue."""
    if "replaced_by" in link_to:
        resource = {**resource, "active": False,
                    "link": [{"other": {"reference": f"Patient/{link_to['replaced_by']}"}, "type": "replaced-by"}]}
    response = ics.client.put(f"/fhir/Patient/{resource['id']}", headers=_writer(ics, username),
                              content=json.dumps(resource))
    assert response.status_code in (200, 201), response.text
    issue: dict[str, Any] = response.json()["issue"][0]
    return issue


def _persons(db: Database) -> dict[str, str]:
    with db.session() as s:
        return {f"{r.source_org}/{r.source_id}": r.person_id for r in s.scalars(select(PatientRecord))}


def _shown(ics: Ics, person: str, headers: dict[str, str]) -> set[str]:
    """What a user reading the person's record sees: each resource's code (or the Patient's family name)."""
    response = ics.client.get(f"/fhir/Patient/{person}/$everything", headers=headers)
    assert response.status_code == 200, response.text
    return {r["code"]["coding"][0]["display"] if "code" in r else r["name"][0]["family"]
            for r in resources(response.json())}


def _mpi_review(db: Database, monkeypatch: pytest.MonkeyPatch, *options: str) -> list[dict[str, Any]]:
    """The pairs an MPI reviewer is shown (`sharedcare mpi review --json`, with `options`)."""
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    shown = CliRunner().invoke(app, ["mpi", "review", "--json", *options])
    assert shown.exit_code == 0, shown.output
    return [item for item in json.loads(shown.stdout) if "id" in item]


def _held(issue: dict[str, Any]) -> None:
    """The write was stored and its merge held: said as a warning on the replaced-by link."""
    assert issue["severity"] == "warning" and issue["location"][0].endswith("Patient.link[0].other")
    assert "is held for review (MPI review #" in issue["diagnostics"], issue
    assert "nothing was merged" in issue["diagnostics"]


def test_a_practices_merge_of_its_copy_of_a_hospital_patient_never_shows_his_record_in_another_patients(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mr Nowak is known to the hospital without an NHS number. A practice writes a copy of his demographics
    (the MPI links it to him), then marks the copy replaced-by a Patient it wrote with Mrs Hughes's NHS number.
    Before, his hospital record moved into her person: her practice nurse saw his asthma, and she saw his HIV."""
    Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "rxr.ndjson", [bundle("RXR", "epr", [
        patient("MRN-NOWAK", None, "Nowak", "Tomasz", "1961-04-04", postcode="RV3 1ZZ"),
        condition("rx-hiv", "Patient/MRN-NOWAK", "86406008", "HIV infection"),
        condition("rx-asthma", "Patient/MRN-NOWAK", "195967001", "Asthma")])])])
    copy = patient("copy-nowak", None, "Nowak", "Tomasz", "1961-04-04", postcode="RV3 1ZZ")
    _write(ics, HUGHES)
    _write(ics, copy)
    nowak = _persons(db)["RXR/MRN-NOWAK"]
    assert _persons(db)["P81001/copy-nowak"] == nowak  # the MPI linked the copy to him

    issue = _write(ics, copy, replaced_by="made-up-1")

    assert _persons(db)["RXR/MRN-NOWAK"] == _persons(db)["P81001/copy-nowak"] == nowak
    nurse = ics.open_record("nurse.lee", person=ics.stranger)
    assert _shown(ics, ics.stranger, nurse) == {"Hughes", "Allergy to penicillin"}
    ics.client.cookies.set(SESSION_COOKIE, ics.citizen_token(ics.stranger))
    page = ics.client.get("/patient/record")  # Mrs Hughes reads her own record in the patient portal
    ics.client.cookies.clear()
    assert page.status_code == 200 and "Allergy to penicillin" in page.text
    assert "HIV infection" not in page.text and "Asthma" not in page.text
    _held(issue)
    for not_sent in ("Nowak", "RXR", "MRN-NOWAK", "HIV", OKAFOR_NHS[-4:]):
        assert not_sent not in issue["diagnostics"]
    [pair] = _mpi_review(db, monkeypatch)  # the reviewer sees both records and why the merge waits
    assert "NOWAK" in pair["a"] + pair["b"] and "HUGHES" in pair["a"] + pair["b"]
    assert "holds records of RXR too" in pair["evidence"]["source_merge"]


def test_a_practices_merge_of_its_record_of_a_shared_patient_into_one_it_made_moves_no_one(
        ics: Ics, db: Database) -> None:
    """The reverse: a practice's record linked to Mrs Hughes, retired into a Patient it has just made up.
    Before, her whole record (her own practice's included) went to the made-up person, and her practice
    nurse's basis to open it ended."""
    nurse = ics.open_record("nurse.lee", person=ics.stranger)
    _write(ics, HUGHES)
    _write(ics, patient("evil3", None, "Yon", "Someone", "1991-02-02"))
    before = _persons(db)
    assert before["P81001/made-up-1"] == ics.stranger

    issue = _write(ics, HUGHES, replaced_by="evil3")

    assert _persons(db) == before
    assert _shown(ics, ics.stranger, nurse) == {"Hughes", "Allergy to penicillin"}  # her basis still holds
    _held(issue)


def test_a_practice_cannot_make_itself_a_care_relationship_by_merging_a_new_patient_into_one_awaiting_ig_review(
        ics: Ics, db: Database, framework: Framework) -> None:
    """A practice writes a Patient with Mrs Hughes's NHS number (its first record of her: queued for IG as a
    self-made record), and a Patient of nobody, then retires the second into the first. Before, the second
    joined her person as a record not under review, and the practice opened her record as its own patient's
    with no "no-relationship" flag, before IG had looked."""
    _write(ics, HUGHES)
    nobody = patient("evil2", None, "Zed", "Nobody", "1990-01-01")
    _write(ics, nobody)

    issue = _write(ics, nobody, replaced_by="made-up-1")

    assert _persons(db)["P81001/evil2"] != ics.stranger
    with db.session() as s:  # IG looks, and has not closed the self-made record's item
        [item] = queue(s, framework, utcnow())
        record_outcome(s, item.id, "investigate", by="ig.morgan", note="no registration found")
    ics.open_record("dr.patel", person=ics.stranger)
    with db.session() as s:
        flagged = set(s.scalars(select(ReviewItem.kind).where(ReviewItem.person_id == ics.stranger)))
    assert flagged == {"new-source-record", "no-relationship"}
    _held(issue)


def test_a_held_merge_names_no_nhs_number_the_writer_did_not_send(ics: Ics, db: Database) -> None:
    """A practice nurse writes a Patient with Mr Okafor's name and birth date but no NHS number (the MPI links
    it to him), then retires it into her practice's Mrs Hughes. Before, the refusal answered "NHS numbers
    ending 0018 and 5919": the last four digits of Mr Okafor's number, which her practice never sent."""
    okafor = patient("ns-1", None, "Okafor", "Emeka", "1945-03-02")
    _write(ics, okafor, username="nurse.lee")
    assert _persons(db)["P81002/ns-1"] == ics.okafor

    response = ics.client.put("/fhir/Patient/ns-1", headers=_writer(ics, "nurse.lee"), content=json.dumps(
        {**okafor, "active": False, "link": [{"other": {"reference": "Patient/gp-other"}, "type": "replaced-by"}]}))

    issue = response.json()["issue"][0]
    assert OKAFOR_NHS[-4:] not in issue["diagnostics"] and HUGHES_NHS[-4:] not in issue["diagnostics"]
    assert response.status_code == 200
    _held(issue)
    assert _persons(db)["P81002/ns-1"] == ics.okafor and _persons(db)["P81002/gp-other"] == ics.stranger


def test_a_merge_of_two_of_the_writers_own_patients_with_different_nhs_numbers_is_refused_naming_no_digits(
        ics: Ics, db: Database) -> None:
    second = patient("gp-dup", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02")
    response = ics.client.put("/fhir/Patient/gp-dup", headers=_writer(ics, "nurse.lee"), content=json.dumps(
        {**second, "active": False, "link": [{"other": {"reference": "Patient/gp-other"}, "type": "replaced-by"}]}))
    assert response.status_code == 422, response.text
    issue = response.json()["issue"][0]
    assert "'gp-dup' and 'gp-other' carry different valid NHS numbers" in issue["diagnostics"]
    assert OKAFOR_NHS[-4:] not in issue["diagnostics"] and HUGHES_NHS[-4:] not in issue["diagnostics"]
    assert "P81002/gp-dup" not in _persons(db)  # held in quarantine whole: nothing of it stored


def test_a_practice_merging_its_own_duplicate_of_a_shared_patient_joins_it_to_him(ics: Ics, db: Database) -> None:
    """The merge a source may make alone: its duplicate registration, linked to no one else, retired into its
    record of Mr Okafor, whom the hospital and trusts know too. Only the duplicate moves."""
    duplicate = patient("gp-dup", None, "Okafor", "Emeka", "1954-03-02", postcode="LS1 4AP")  # a keying error
    _write(ics, duplicate)
    before = _persons(db)
    assert before["P81001/gp-dup"] != ics.okafor

    issue = _write(ics, duplicate, replaced_by="gp-okafor")

    assert issue["severity"] == "information" and issue["diagnostics"] == "updated to version 2"
    after = _persons(db)
    assert after == {**before, "P81001/gp-dup": ics.okafor}
    with db.session() as s:
        [merge] = s.scalars(select(LinkEvent).where(LinkEvent.kind == "merge"))
        assert [(m.from_person, m.to_person) for m in merge.moves] == [(before["P81001/gp-dup"], ics.okafor)]


def test_a_practices_merge_across_an_operators_unmerge_is_held_for_review_not_made(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mr Okafor's son, registered at his father's practice, was merged into his father by the MPI's operator
    and the merge undone ("his son"). The practice then retires the son's Patient into the father's. Until
    2026-12-07 the write joined them again, the operator's decision overruled by a source: the father's
    clinicians saw the son's record. Now it is stored and the merge held for an MPI reviewer, the writer told
    so as for any merge that waits."""
    son = patient("gp-son", None, "Okafor", "Emeka", "1984-09-20", postcode="LS1 4AP")
    _write(ics, son)
    before = _persons(db)
    assert before["P81001/gp-son"] != ics.okafor
    with db.session() as s:
        merge = merge_persons(s, ics.okafor, before["P81001/gp-son"], by="mpi.operator", reason="one man?").id
    with db.session() as s:
        unmerge(s, merge, by="mpi.operator", reason="his son, at the same address")
    assert _persons(db) == before

    issue = _write(ics, son, replaced_by="gp-okafor")

    assert _persons(db) == before
    _held(issue)
    [pair] = _mpi_review(db, monkeypatch)
    assert "by the unmerge #" in pair["evidence"]["source_merge"], pair
    assert "mpi.operator" not in issue["diagnostics"] and "unmerge" not in issue["diagnostics"], issue


def test_a_merge_across_a_reviewers_separation_tells_the_writer_whom_to_ask_and_nothing_internal(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dr Patel's practice holds two Patients an MPI reviewer (ig.morgan) decided are two people, and retires
    one into the other. The merge is not made, the message held. Before, the writer was told the internal ids
    of both records and the reviewer's name (and a command only the service's operators can run); now the
    review's number, to quote, and whom to ask: the ICS's identity team, as the framework names its ICB. The
    reviewer's name and the records stay where the IG and identity team read them: `mpi review` and the
    decision's audit entry."""
    first, second = patient("pa-1", None, "Zed", "Nobody", "1990-01-01"), patient("pa-2", None, "Yon", "Someone",
                                                                                  "1991-02-02")
    _write(ics, first)
    _write(ics, second)
    with db.session() as s:
        ids = {r.source_id: r.id for r in s.scalars(select(PatientRecord).where(PatientRecord.source_org == "P81001"))}
        item = MatchReview(record_a=ids["pa-1"], record_b=ids["pa-2"], probability=0.2, evidence={},
                           created_at=utcnow(), status="open")
        s.add(item)
        s.flush()
        decide(s, item.id, "separate", by="ig.morgan", reason="two people: different mothers")
        review = item.id
    before = _persons(db)

    response = ics.client.put("/fhir/Patient/pa-2", headers=_writer(ics), content=json.dumps(
        {**second, "active": False, "link": [{"other": {"reference": "Patient/pa-1"}, "type": "replaced-by"}]}))

    assert response.status_code == 422, response.text
    said = response.json()["issue"][0]["diagnostics"]
    assert f"MPI review #{review}" in said and "nothing was merged" in said, said
    assert "identity team at Riverside and Dales Integrated Care Board" in said and "0300 123 0001" in said, said
    for internal in ("ig.morgan", "Rhian Morgan", "mpi decide", "record "):
        assert internal not in said, f"{internal!r} told to the writer: {said}"
    quarantine = re.search(r"held in quarantine as #(\d+)", said)
    assert quarantine is not None, said
    left = said  # no number but the review's, the quarantine item's, the desk's telephone and its own ids
    for told in (quarantine.group(0), f"MPI review #{review}", "0300 123 0001", "'pa-1'", "'pa-2'"):
        left = left.replace(told, "")
    assert not re.search(r"\d", left), said
    assert _persons(db) == before
    [shown] = [pair for pair in _mpi_review(db, monkeypatch, "--all") if pair["id"] == review]
    assert shown["status"] == "separate" and shown["decided_by"] == "ig.morgan", shown
    assert shown["a"].startswith("P81001/pa-1: ") and shown["b"].startswith("P81001/pa-2: "), shown
    with db.session() as s:
        [decided] = s.scalars(select(AuditEntry).where(AuditEntry.action == "identity:mpi:review-decided"))
        assert decided.username == "ig.morgan"
        assert f"{ids['pa-1']}" in json.dumps(decided.event) and f"{ids['pa-2']}" in json.dumps(decided.event)
