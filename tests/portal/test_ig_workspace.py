"""The IG officer's workspace over HTTP: sign-in, review queue, audit search, agreements and a patient's
choices; and that every page is refused (403, audited) to a role without the permission."""

from __future__ import annotations

import html
import re
import uuid
from collections import Counter
from datetime import date, timedelta

import pytest
from sqlalchemy import select
from tests.conftest import FRAMEWORK_PATH
from tests.fhir_bundles import entries
from tests.governance.test_audit import _forged_after_head, _plain
from tests.portal.test_patient_portal import _sign_in as _patient_sign_in
from tests.portal.test_patient_portal import events_listed, visit_rows
from tests.small_ics import OKAFOR_NHS, Ics, without_nhs_number
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.clock import utcnow
from sharedcare.governance import explain
from sharedcare.governance.access_log import details
from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.consent import hide_category, set_choice
from sharedcare.governance.framework import Framework
from sharedcare.governance.review import record_outcome
from sharedcare.governance.workspace import CitizenWorkspace
from sharedcare.identity.links import merge_persons, separate, unmerge
from sharedcare.portal import ig
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, ReviewItem

REASON = "unconscious in resus, no history available"


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


def _framework(ics: Ics) -> Framework:
    framework: Framework = ics.client.app.state.framework  # type: ignore[attr-defined]
    return framework


def _sign_in(ics: Ics, username: str = "ig.morgan") -> None:
    done = ics.client.post("/login", data={"username": username, "password": "demo", "target": "/ig"},
                           follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/ig"


def test_the_workspace_starts_with_a_sign_in_form_that_comes_back_here(ics: Ics) -> None:
    page = ics.client.get("/ig")
    assert page.status_code == 401
    assert 'action="/login"' in page.text and 'name="target" value="/ig"' in page.text
    _sign_in(ics)
    assert ics.client.get("/ig").status_code == 200


def test_a_sign_in_goes_only_to_a_portal_page(ics: Ics) -> None:
    done = ics.client.post("/login", data={"username": "ig.morgan", "password": "demo",
                                           "target": "https://elsewhere.example/"}, follow_redirects=False)
    assert done.headers["location"] == "/search"


def test_break_glass_appears_in_the_queue_and_is_marked_appropriate(ics: Ics) -> None:
    ics.open_record("dr.oconnor", basis="emergency", reason=REASON)
    _sign_in(ics)
    queue = ics.client.get("/ig").text
    for text in ("Break glass", "Dr Niamh O&#39;Connor", "Hospital clinician",
                 "Riverside University Hospitals NHS Trust", REASON, ics.okafor, "Due"):
        assert text in queue, text
    with _db(ics).session() as s:
        item_id = s.scalars(select(ReviewItem.id)).one()
    done = ics.client.post(f"/ig/review/{item_id}", data={"outcome": "appropriate", "note": "resus notes agree"},
                           follow_redirects=False)
    assert done.status_code == 303
    after = ics.client.get(done.headers["location"]).text
    assert f"Recorded as appropriate: Break glass by Dr Niamh O&#39;Connor (review item {item_id})" in after
    assert "Recorded by Rhian Morgan" in after and REASON not in after
    with _db(ics).session() as s:
        item = s.get_one(ReviewItem, item_id)
        assert (item.status, item.outcome) == ("closed", "appropriate: resus notes agree")


def test_the_queue_names_the_patient_through_the_decision_point_and_audits_each_look_up(ics: Ics) -> None:
    """The IG officer sees whose record it was (name, born, NHS number) and nothing clinical; the look-up is
    decided and audited like any read, so the patient sees it; an objection to sharing withholds the name."""
    ics.open_record("dr.oconnor", basis="emergency", reason=REASON)
    _sign_in(ics)
    queue = ics.client.get("/ig").text
    assert "OKAFOR, Emeka, born 2 Mar 1945, NHS number 943 476 5919" in queue
    assert "Metformin" not in queue and "Type 2 diabetes" not in queue
    with _db(ics).session() as s:
        looks = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:demographics:read")).all()
        assert [(e.username, e.patient_id, e.outcome) for e in looks] == [("ig.morgan", ics.okafor, "permit")]
        seen = CitizenWorkspace(s, _framework(ics), ics.okafor).accesses().accesses
    assert any(a.username == "ig.morgan" and "saw your name" in a.what for a in seen)

    with _db(ics).session() as s:
        set_choice(s, OKAFOR_NHS, by="test", object_all=True)
        s.commit()
    withheld = ics.client.get("/ig").text
    assert "OKAFOR" not in withheld and "Name not available" in withheld and REASON in withheld
    with _db(ics).session() as s:
        outcomes = s.scalars(select(AuditEntry.outcome).where(AuditEntry.action == "clinical:demographics:read")
                             .order_by(AuditEntry.seq)).all()
    assert outcomes == ["permit", "permit"]  # decided and audited, with nothing released the second time


def test_an_investigation_keeps_the_item_in_the_queue(ics: Ics) -> None:
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    _sign_in(ics)
    with _db(ics).session() as s:
        item_id = s.scalars(select(ReviewItem.id)).one()
    ics.client.post(f"/ig/review/{item_id}", data={"outcome": "investigate", "note": "ask the crew"})
    assert "Under investigation" in ics.client.get("/ig").text
    assert ics.client.post(f"/ig/review/{item_id}", data={"outcome": "maybe"}).status_code == 400


def test_an_ig_officer_may_not_record_the_outcome_of_a_review_of_her_own_access(ics: Ics) -> None:
    with _db(ics).session() as s:
        own = ReviewItem(kind="unusual-volume", username="ig.morgan", person_id=ics.okafor, reason="40 records",
                         created_at=utcnow())
        s.add(own)
        s.flush()
        item_id = own.id
    _sign_in(ics)
    refused = ics.client.post(f"/ig/review/{item_id}", data={"outcome": "appropriate", "note": "fine"})
    assert refused.status_code == 400
    assert "is about ig.morgan&#39;s own access: another IG officer must record its outcome" in refused.text
    with _db(ics).session() as s:
        assert s.get_one(ReviewItem, item_id).status == "open"
        (denied,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:function:denied"))
    assert (denied.username, details(denied)["rule"], details(denied)["review_item"]) == (
        "ig.morgan", "deny-own-review", str(item_id))


def test_every_ig_page_is_refused_to_a_gp_and_the_refusal_is_audited(ics: Ics) -> None:
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    pages = [("get", "/ig", {}), ("get", "/ig/audit", {}), ("post", "/ig/audit", {"user": "x"}),
             ("get", "/ig/agreements", {}), ("post", "/ig/agreements/RYC", {"status": "suspended"}),
             ("post", "/ig/choices", {"nhs_number": OKAFOR_NHS}), ("post", "/ig/review/1", {"outcome": "appropriate"}),
             # a form the page would refuse is refused for the role first, never shown back in the IG page
             ("post", "/ig/audit", {"from_day": "x", "from_month": "1", "from_year": "2026"}),
             ("post", "/ig/audit", {"nhs_number": "1234567890"}), ("post", "/ig/choices", {"nhs_number": "12"})]
    for method, url, data in pages:
        page = ics.client.request(method, url, data=data or None)
        assert page.status_code == 403 and "You cannot use this page" in page.text, url
    with _db(ics).session() as s:
        denied = s.scalars(select(AuditEntry.username).where(AuditEntry.action == "governance:function:denied")).all()
    assert denied == ["dr.patel"] * len(pages)


def test_the_audit_log_is_searched_by_user_organisation_patient_and_dates(ics: Ics,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present", found=False)
    ics.open_record("dr.patel", found=False)
    _sign_in(ics)
    by_user = ics.client.post("/ig/audit", data={"user": "para.evans"}).text
    assert "1 event found" in by_user and "confused, daughter not present" in by_user
    by_org = ics.client.post("/ig/audit", data={"organisation": "P81001"}).text
    assert "1 event found" in by_org and "Dr Amara Patel" in by_org
    by_patient = ics.client.post("/ig/audit", data={"patient": ics.okafor}).text
    assert "2 events found" in by_patient
    today, tomorrow = utcnow().date(), utcnow().date() + timedelta(days=1)

    def on(prefix: str, day: date) -> dict[str, str]:
        return {f"{prefix}_day": str(day.day), f"{prefix}_month": str(day.month), f"{prefix}_year": str(day.year)}

    # and that search (audited about him) and the officer's look-up of his name for its page: found now
    assert "4 events found" in ics.client.post("/ig/audit", data={"patient": ics.okafor, **on("from", today),
                                                                   **on("to", today)}).text
    assert "0 events found" in ics.client.post("/ig/audit", data={"patient": ics.okafor,
                                                                   **on("from", tomorrow)}).text
    monkeypatch.setattr(ig, "FOUND", 1)  # a search finding more than a page shows says so, never a short count
    capped = ics.client.post("/ig/audit", data={"patient": ics.okafor}).text
    assert "More than 1 event found" in capped and "Only the latest 1 are shown" in capped
    assert "1 event found" not in capped.replace("More than 1 event found", "")
    bad = ics.client.post("/ig/audit", data={"from_day": "31", "from_month": "2", "from_year": "2026"})
    assert bad.status_code == 400 and "From must be a real date" in bad.text
    with _db(ics).session() as s:
        searches = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:audit:search")).all()
    assert len(searches) == 6 and all(e.username == "ig.morgan" for e in searches)


def test_an_audit_search_is_audited_with_what_was_searched_and_what_was_shown(
        ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    """The search's own entry says what the officer asked for and how many entries the page showed (and
    which), never the one extra entry the page reads to know there are more."""
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present", found=False)
    ics.open_record("dr.patel", found=False)
    _sign_in(ics)
    monkeypatch.setattr(ig, "FOUND", 1)
    assert "More than 1 event found" in ics.client.post("/ig/audit", data={"patient": ics.okafor}).text
    ics.client.post("/ig/audit", data={"user": "para.evans"})
    ics.client.get("/ig/audit")  # the most recent events, before any criteria
    with _db(ics).session() as s:
        searches = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:audit:search")
                             .order_by(AuditEntry.seq)).all()
        bases = s.scalars(select(AuditEntry.seq).where(AuditEntry.action == "access:basis:record")
                          .order_by(AuditEntry.seq)).all()
        earlier = len(s.scalars(select(AuditEntry.seq).where(AuditEntry.seq < searches[-1].seq)).all())
    by_patient, by_user, recent = (details(e) for e in searches)
    assert by_patient == {"patient_id": ics.okafor, "entries": "1", "newest_seq": str(bases[1]),
                          "oldest_seq": str(bases[1]), "more": "true"}
    assert by_user == {"username": "para.evans", "entries": "1", "newest_seq": str(bases[0]),
                       "oldest_seq": str(bases[0])}
    assert recent["entries"] == str(min(ig.RECENT, earlier)) and "limit" not in recent


def test_a_complaint_giving_an_nhs_number_finds_the_looks_at_every_record_carrying_it(ics: Ics) -> None:
    """Journey 7: a citizen complains, giving his NHS number. The search resolves it through the MPI to every
    person holding it now (here his record and a community record held apart, which was once merged with
    his and unmerged), and finds the looks at each, before and after; another patient's are not shown. The
    number is POSTed, checked by modulus 11, and the search's audit entry keeps only its last four digits."""
    db = _db(ics)
    with db.session() as s:
        record = s.scalars(select(PatientRecord.id).where(PatientRecord.source_id == "RYC-9")).one()
        assert s.get_one(PatientRecord, record).nhs_number == OKAFOR_NHS
        separate(s, record, by="test", reason="community record held apart")
    with db.session() as s:
        apart = s.get_one(PatientRecord, record).person_id
        record_audit(s, AuditRecord(AuditAction.RECORD_READ, "permit", "dr.patel", patient_id=ics.okafor))
        record_audit(s, AuditRecord(AuditAction.RECORD_READ, "permit", "dn.williams", patient_id=apart))
        record_audit(s, AuditRecord(AuditAction.RECORD_READ, "permit", "admin.taylor", patient_id=ics.stranger))
        merged = merge_persons(s, ics.okafor, apart, by="test", reason="one person")
    with db.session() as s:
        record_audit(s, AuditRecord(AuditAction.RECORD_READ, "permit", "para.evans", patient_id=ics.okafor))
        unmerge(s, merged.id, by="test")
    _sign_in(ics)
    page = ics.client.post("/ig/audit", data={"nhs_number": "943 476 5919"})
    # the three reads, and the separation and the merge (each audited about the person it moved records to)
    assert page.status_code == 200 and "5 events found" in page.text
    assert page.text.count("identity:mpi:link-change") == 2
    assert "(dr.patel)" in page.text and "(dn.williams)" in page.text and "(para.evans)" in page.text
    assert "admin.taylor" not in page.text  # another patient's record
    assert apart in page.text and ics.okafor in page.text

    for typed, why in (("943 476 5918", "fails the modulus 11 check"), ("943 476", "is not 10 digits")):
        refused = ics.client.post("/ig/audit", data={"nhs_number": typed})
        assert refused.status_code == 400 and f"NHS number: {typed} {why}" in refused.text
    with db.session() as s:
        searches = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:audit:search")
                             .order_by(AuditEntry.seq)).all()
    found = details(searches[-1])
    assert found["nhs_number_suffix"] == "5919" and sorted(found["persons"].split()) == sorted([ics.okafor, apart])
    assert sorted(e.patient_id for e in searches) == sorted([ics.okafor, apart])  # the search, about each of them
    assert all(OKAFOR_NHS not in str(entry.event) for entry in searches)


def test_an_ig_officers_look_ups_by_nhs_number_are_found_by_patient_and_the_patient_is_told(
        ics: Ics, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """An audit search and a choices look-up by a patient's NHS number are looks at that patient: a later IG
    search by the patient finds them (and is one too), and the patient's "Who has looked" says what each was,
    as it does the operator's look-up of the choices at the command line."""
    _sign_in(ics)
    assert ics.client.post("/ig/audit", data={"nhs_number": OKAFOR_NHS}).status_code == 200
    assert ics.client.post("/ig/choices", data={"nhs_number": OKAFOR_NHS}).status_code == 200
    found = ics.client.post("/ig/audit", data={"patient": ics.okafor}).text
    assert "Searched the audit log" in found and "Looked up the patient&#39;s sharing choices" in found
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    assert CliRunner().invoke(app, ["preferences", "show", OKAFOR_NHS]).exit_code == 0
    ics.client.post("/logout", data={"target": "/ig"})
    _patient_sign_in(ics.client)
    page = ics.client.get("/patient/accesses").text
    said = visit_rows(page)
    officer, choices = "Rhian Morgan Information governance officer", "looked at your sharing choices"
    told = [("The shared care record's technical team using the service's own commands", [choices]),
            # her four looks (two searches), one visit, in the order she made them
            (officer, ["looked at the list of who has seen your record (an information governance check) 2 times, "
                       f"{choices}, then saw your name and date of birth"])]
    assert len(said) == len(told) and events_listed(page) == 5  # newest first
    assert all(who in row and all(what in row for what in whats)
               for row, (who, whats) in zip(said, told, strict=True)), said


def test_an_audit_search_by_the_patients_id_is_a_look_at_them_and_they_are_told(ics: Ics, db: Database) -> None:
    """TRUST AU8: the review queue's "see this patient's events" searches by person id and lists every look
    at them with its reasons, as a search by their NHS number does: audited about them the same way, so
    their "Who has looked" says the IG officer looked at the list."""
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present", found=False)
    _sign_in(ics)
    found = ics.client.post("/ig/audit", data={"patient": ics.okafor})
    assert found.status_code == 200 and "confused, daughter not present" in found.text
    with db.session() as s:
        [search] = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:audit:search")).all()
    assert search.patient_id == ics.okafor
    ics.client.cookies.clear()
    _patient_sign_in(ics.client)
    said = visit_rows(ics.client.get("/patient/accesses").text)
    assert any("Rhian Morgan" in row and "looked at the list of who has seen your record" in row for row in said), said


UNVERIFIED_TAG = 'nhsuk-tag--red">Could not be verified'


def test_the_audit_search_flags_an_entry_the_service_did_not_write(ics: Ics) -> None:
    """An entry appended to the log by someone without the chain's key (`audit verify` names it forged) is
    shown in the IG officer's search, flagged with what it means and what to do; genuine ones are not."""
    _forged_after_head(_db(ics), _plain)
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    _sign_in(ics)
    found = ics.client.post("/ig/audit", data={"patient": "p-forged"}).text
    assert "1 event found" in found and found.count(UNVERIFIED_TAG) == 1
    assert "Entries that could not be verified" in found and "sharedcare audit verify" in found
    recent = ics.client.get("/ig/audit").text
    assert "para.evans" in recent and "dr.patel" in recent and recent.count(UNVERIFIED_TAG) == 1


def test_an_agreement_change_the_service_did_not_write_is_flagged_on_the_board(ics: Ics) -> None:
    """A suspension written into the audit log by someone without the chain's key shows on the board's history
    as not verified, not as a change an officer made; the genuine change beside it is not flagged."""
    _sign_in(ics)
    ics.client.post("/ig/agreements/RYC", data={"status": "suspended", "reason": "breach reported"})
    _forged_after_head(_db(ics), _plain, AuditRecord(
        AuditAction.AGREEMENT_SET, "permit", "ig.morgan", purpose="governance", reason="nothing happened",
        detail={"organisation": "RYC", "status": "signed"}))
    history = ics.client.get("/ig/agreements").text
    assert history.count(UNVERIFIED_TAG) == 1
    flagged = history[history.index(UNVERIFIED_TAG):]
    assert flagged.index("nothing happened") < flagged.index("breach reported")  # newest first: only it flagged


def test_suspending_an_agreement_locks_its_users_out_on_their_next_request(ics: Ics) -> None:
    nurse = ics.open_record("dn.williams")
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=nurse).status_code == 200
    _sign_in(ics)
    board = ics.client.get("/ig/agreements").text
    assert "Riverside Community Healthcare NHS Trust" in board and "Dr Priya Nair, Caldicott Guardian" in board
    done = ics.client.post("/ig/agreements/RYC", data={"status": "suspended", "reason": "breach reported"},
                           follow_redirects=False)
    assert done.status_code == 303
    assert "agreement now suspended" in ics.client.get(done.headers["location"]).text
    locked = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=nurse)
    assert locked.status_code == 401 and "(RYC) information-sharing agreement was suspended" in locked.text
    ics.client.post("/ig/agreements/RYC", data={"status": "signed"})
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=nurse).status_code == 401  # for good
    again = ics.open_record("dn.williams")  # a token issued since: as before
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=again).status_code == 200


def test_suspending_says_what_it_will_do_and_asks_why_before_anything_changes(ics: Ics) -> None:
    """Journey 7: a care home reports a breach. The board's Suspend leads to a page saying, in words, what
    suspending does; without a reason nothing changes; the reason goes into the audit entry and the board's
    history."""
    nurse = ics.open_record("dn.williams")
    _sign_in(ics)
    board = ics.client.get("/ig/agreements").text
    assert 'href="/ig/agreements/RYC/suspended"' in board
    confirm = ics.client.get("/ig/agreements/RYC/suspended")
    count = sum(1 for u in _framework(ics).users.values() if u.organisation == "RYC")
    users = f"{count} user" + ("s" if count != 1 else "")
    assert confirm.status_code == 200
    assert (f"Suspending Riverside Community Healthcare NHS Trust's agreement hides its information from every "
            f"partner and stops its {users} opening any record") in confirm.text
    assert "signs them out for good" in confirm.text and "finished exports' files are deleted" in confirm.text
    asked = ics.client.post("/ig/agreements/RYC", data={"status": "suspended", "reason": "  "})
    assert asked.status_code == 400 and "Say why" in asked.text and "stops its" in asked.text
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=nurse).status_code == 200  # unchanged
    done = ics.client.post("/ig/agreements/RYC", data={"status": "suspended",
                                                        "reason": "Data breach reported by the trust on 3 Dec"})
    assert done.status_code == 200 and f"Its {users} {'is' if count == 1 else 'are'} refused every record" in done.text
    assert "Reason: Data breach reported by the trust on 3 Dec" in done.text  # the board's history
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=nurse).status_code == 401
    with _db(ics).session() as s:
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:agreement:set")).all()
    assert details(entry)["reason"] == "Data breach reported by the trust on 3 Dec" and entry.username == "ig.morgan"


def test_an_ig_officer_cannot_suspend_or_end_her_own_organisations_agreement_from_the_workspace(ics: Ics) -> None:
    """Suspending the ICB would stop its users, the officer among them, opening any record: the board
    offers no Suspend for it, and a request to is refused in words naming the CLI; nothing changes."""
    _sign_in(ics)
    board = ics.client.get("/ig/agreements").text
    assert "/ig/agreements/QRD/suspended" not in board and "This is your own organisation" in board
    for status in ("suspended", "ended"):
        page = ics.client.post("/ig/agreements/QRD", data={"status": status, "reason": "testing"})
        assert page.status_code == 400 and "your own organisation&#39;s agreement (QRD)" in page.text
        assert "sharedcare agreements set QRD" in page.text
        assert ics.client.get(f"/ig/agreements/QRD/{status}").status_code == 400
    with _db(ics).session() as s:
        assert s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:agreement:set")).all() == []


def test_a_draft_agreement_without_signatories_cannot_be_signed_here(ics: Ics) -> None:
    _sign_in(ics)
    assert "cannot be signed here until its signatories" in ics.client.get("/ig/agreements").text
    page = ics.client.post("/ig/agreements/VWC01", data={"status": "signed"})
    assert page.status_code == 400 and "no signatories" in page.text


def test_a_patients_choices_are_looked_up_by_a_posted_nhs_number_and_the_look_up_is_audited(
        ics: Ics, framework: Framework) -> None:
    _sign_in(ics)
    with _db(ics).session() as s:
        CitizenWorkspace(s, framework, ics.okafor).set_choice("object-org", "NHR")
    page = ics.client.post("/ig/choices", data={"nhs_number": "943 476 5919"})
    assert page.status_code == 200 and "St Brigid&#39;s Hospice" in page.text
    assert ics.client.post("/ig/choices", data={"nhs_number": "1234567890"}).status_code == 400
    with _db(ics).session() as s:
        (view,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:preference:view")).all()
    assert (view.username, view.patient_id) == ("ig.morgan", ics.okafor)


def test_the_ig_officer_sees_a_patients_consent_provisions_in_words(ics: Ics, framework: Framework) -> None:
    _sign_in(ics)
    with _db(ics).session() as s:
        CitizenWorkspace(s, framework, ics.okafor).add_provision(hide_category("sexual_health", "RXR"))
    page = ics.client.post("/ig/choices", data={"nhs_number": "943 476 5919"})
    assert "Hide sexual and reproductive health from Riverside University Hospitals NHS Trust" in page.text


def test_the_choices_lookup_page_is_refused_to_a_gp(ics: Ics) -> None:
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    assert ics.client.get("/ig/choices").status_code == 403


def test_a_practice_writing_itself_a_record_of_a_stranger_is_in_the_queue(ics: Ics) -> None:
    """Review 2, F2: Riverside (P81001) holds nothing about Mrs Hughes; Dr Patel's POST /fhir/Patient with her
    NHS number links a record of Riverside to her. The IG officer sees that write in the queue, named."""
    import json

    from tests.builders import patient

    from sharedcare.api.auth import mint_token
    from sharedcare.config import load_settings

    token = mint_token(load_settings(), _framework(ics), "dr.patel", "user/*.read user/*.write")
    fake = patient("made-up-1", "9990000018", "Hughes", "Margaret", "1952-06-11", gender="female")
    written = ics.client.post("/fhir/Patient", content=json.dumps(fake), headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
    assert written.status_code == 201, written.text
    _sign_in(ics)
    queue = ics.client.get("/ig").text
    for text in ("New source record for an existing person", "Dr Amara Patel", "Riverside Medical Centre",
                 "new source record for an existing person from Riverside Medical Centre (P81001)",
                 "HUGHES", "999 000 0018"):
        assert text in queue, text


def test_the_audit_search_says_how_many_items_a_record_read_showed(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    kinds = Counter(kind for e in entries(bundle) if (kind := e["resource"]["resourceType"]) != "Patient")
    clinical = sum(kinds.values())
    assert clinical > 1
    _sign_in(ics)
    page = ics.client.post("/ig/audit", data={"user": "dr.patel"}).text
    assert f"What was seen: {clinical} items: " in page
    for kind, n in kinds.items():  # journey 7: what was seen, not only how much
        assert f"{explain.RECORD_TYPE_WORDS[kind]} {n}" in page, kind
    assert "<br>GP</span>" in page and ">gp<" not in page  # the role in words, not the framework's key


def test_a_long_queue_is_worked_a_page_at_a_time_looking_up_only_that_pages_patients(ics: Ics) -> None:
    """A region's weekend can leave hundreds of items: the page shows 25, oldest first, with the whole
    queue's counts; only its own patients are looked up (each an audited read); recording an outcome on a
    later page comes back to that page, whose start does not move."""
    with _db(ics).session() as s:
        a, b = s.scalars(select(PatientRecord.person_id).distinct().order_by(PatientRecord.person_id)).all()
        c = str(uuid.uuid4())  # a person the store no longer knows: looked up all the same, on its own page
        now, due = utcnow(), _framework(ics).review.due_hours
        for n in range(60):  # items 0-24 about a and b, 25-49 about b, 50-59 about c; the oldest 10 overdue
            person = (a if n % 2 else b) if n < 25 else b if n < 50 else c
            s.add(ReviewItem(kind="emergency", username="dr.oconnor", person_id=person, reason=f"reason {n:02}",
                             created_at=now - timedelta(hours=due + 9.5 - n), status="open"))
        s.commit()
        ids = s.scalars(select(ReviewItem.id).order_by(ReviewItem.created_at)).all()
    _sign_in(ics)
    first = ics.client.get("/ig").text
    assert "60 waiting, 10 overdue" in first and "This page shows 25" in first
    assert [n for n in range(60) if f"reason {n:02}" in first] == list(range(25))
    with _db(ics).session() as s:
        looked_up = set(s.scalars(select(AuditEntry.patient_id).where(
            AuditEntry.action == "clinical:demographics:read", AuditEntry.username == "ig.morgan")))
    assert looked_up == {a, b}  # c's items are on the third page
    assert f'href="/ig?after={ids[24]}"' in first and "Oldest items" not in first

    second = ics.client.get(f"/ig?after={ids[24]}").text
    assert [n for n in range(60) if f"reason {n:02}" in second] == list(range(25, 50))
    assert "Oldest items" in second and f'href="/ig?after={ids[49]}"' in second
    done = ics.client.post(f"/ig/review/{ids[30]}", data={"outcome": "appropriate", "after": str(ids[24])},
                           follow_redirects=False)
    assert done.headers["location"] == f"/ig?recorded={ids[30]}&after={ids[24]}"
    again = ics.client.get(done.headers["location"]).text
    assert [n for n in range(60) if f"reason {n:02}" in again] == [*range(25, 30), *range(31, 51)]
    assert "59 waiting, 10 overdue" in again

    last = ics.client.get(f"/ig?after={ids[50]}").text
    assert [n for n in range(60) if f"reason {n:02}" in last] == list(range(51, 60))
    assert "Later items" not in last
    unknown = ics.client.get("/ig?after=999999")
    assert unknown.status_code == 400 and "no review item #999999" in unknown.text
    assert ics.client.get("/ig?after=0").status_code == 400


def _form_fields(page: str, button: str) -> dict[str, str]:
    """The hidden fields of the form holding the button whose text starts `button`."""
    form = next(f for f in page.split("<form")[1:] if f">{button}" in f.split("</form>")[0])
    return dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', form.split("</form>")[0]))


def test_an_unusual_volume_shows_every_record_the_user_opened_not_only_the_last(ics: Ics) -> None:
    """Journey 7: a receptionist opening 40 records in an hour is flagged on the 31st; the officer must see
    all of them from the item, and is not told the system's words are a reason the user gave."""
    ics.open_record("admin.taylor", ics.stranger)
    ics.open_record("admin.taylor")
    with _db(ics).session() as s:
        s.add(ReviewItem(kind="unusual-volume", username="admin.taylor", person_id=ics.okafor,
                         reason="more than 30 patients' records opened in an hour", created_at=utcnow(),
                         status="open"))
        s.commit()
    _sign_in(ics)
    queue = ics.client.get("/ig").text
    assert "Why it was flagged" in queue and "Reason given" not in queue
    assert "Last record opened" in queue  # the one that crossed the line, not the only one
    found = ics.client.post("/ig/audit", data=_form_fields(queue, "See every record opened")).text
    assert ics.stranger in found and ics.okafor in found


def _cells(page: str) -> list[str]:
    """Each audit row's text, tags and markup stripped, as a reader hears it."""
    rows = page.split("<tbody")[1].split("</tbody>")[0].split('<tr class="nhsuk-table__row">')[1:]
    return [html.unescape(" ".join(re.sub(r"<[^>]+>", " ", row).split())) for row in rows]


def test_see_what_was_seen_says_in_words_what_was_done_and_seen_and_names_the_patient(ics: Ics) -> None:
    """Journey 7 (review M4): from a break-glass card, "See what was seen" says what the user did in words,
    what the record showed by kind of item in words, and whose record it was by name (looked up through the
    decision point and audited, as the card's was); the audit codes stay only as a small "Logged as"."""
    headers = ics.open_record("dr.oconnor", basis="emergency", reason=REASON)
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    kinds = Counter(kind for e in entries(bundle) if (kind := e["resource"]["resourceType"]) != "Patient")
    _sign_in(ics)
    queue = ics.client.get("/ig").text
    page = ics.client.post("/ig/audit", data=_form_fields(queue, "See what was seen")).text
    rows = _cells(page)
    read = next(row for row in rows if "Opened the record in an emergency" in row)
    for kind, n in kinds.items():
        assert f"{explain.RECORD_TYPE_WORDS[kind]} {n}" in read, kind
    assert "What was seen: " in read and "MedicationStatement" not in read and "Observation" not in read
    assert "OKAFOR, Emeka, born 2 Mar 1945, NHS number 943 476 5919" in read
    assert any("Recorded why they opened the record" in row and "emergency: " + REASON in row for row in rows)
    for row in rows:  # each code only as the small "Logged as", never as what happened
        assert re.sub(r"Logged as \S+", "", row).count("clinical:") == 0, row
    with _db(ics).session() as s:
        looks = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:demographics:read")
                          .order_by(AuditEntry.seq)).all()
    assert [(e.username, e.patient_id) for e in looks] == [("ig.morgan", ics.okafor)] * 2  # the card, the search


def test_an_audit_search_by_user_names_no_one_and_offers_each_patients_events(ics: Ics) -> None:
    """A search by user (or organisation, or dates) looks up no one's name: the officer asks for one patient's
    events, and that search names them."""
    ics.open_record("admin.taylor", ics.stranger)
    ics.open_record("admin.taylor")
    _sign_in(ics)
    found = ics.client.post("/ig/audit", data={"user": "admin.taylor"}).text
    assert "OKAFOR" not in found and "See this patient's events" in found
    with _db(ics).session() as s:
        assert s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:demographics:read")).all() == []
    fields = next(dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', f.split("</form>")[0]))
                  for f in found.split("<form")[1:] if f'value="{ics.okafor}"' in f.split("</form>")[0])
    assert "OKAFOR, Emeka" in ics.client.post("/ig/audit", data=fields).text


def test_a_patients_events_by_an_id_a_merge_emptied_are_the_person_nows_and_they_are_told(ics: Ics) -> None:
    """An entry from before a merge names the person id the record had then, which holds nothing now. Its "See
    this patient's events" searched that id alone: the looks since the merge were missing, no one was named,
    and the search was audited about the emptied id, so the patient (the person the merge kept) was never told.
    Now the page says whose record it is now and shows their events, and the patient's list has the look."""
    ics.open_record("admin.taylor", ics.stranger)  # under the stranger's id, before the merge
    with _db(ics).session() as s:
        without_nhs_number(s, ics.stranger)
        merge_persons(s, ics.okafor, ics.stranger, by="mpi.admin", reason="test: one person")
        s.commit()
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")  # since
    _sign_in(ics)
    by_user = ics.client.post("/ig/audit", data={"user": "admin.taylor"}).text
    fields = next(dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', f.split("</form>")[0]))
                  for f in by_user.split("<form")[1:] if f'value="{ics.stranger}"' in f.split("</form>")[0])
    found = ics.client.post("/ig/audit", data=fields).text
    assert f"Record <code>{ics.stranger}</code> holds no records now: a merge or relink moved them to record " \
           f"<code>{ics.okafor}</code>" in found
    assert "confused, daughter not present" in found
    # named: one person now, shown by the demographics of either record it holds (sent at the same moment here)
    assert re.search(r"(OKAFOR, Emeka|HUGHES, Margaret), born", found)
    ics.client.cookies.clear()
    _patient_sign_in(ics.client)
    said = visit_rows(ics.client.get("/patient/accesses").text)
    assert any("Rhian Morgan" in row and "looked at the list of who has seen your record" in row for row in said), said


def test_every_audit_action_has_words_for_the_ig_officer() -> None:
    assert [action for action in AuditAction if action not in ig.ACTION_WORDS] == []


def test_an_investigation_is_opened_only_with_a_note_and_the_banner_says_what_was_recorded(ics: Ics) -> None:
    """Review M4: "Open an investigation" with an empty note comes back with the error at that item's note
    (nothing recorded); with one, the banner names the outcome, whose access and who recorded it."""
    ics.open_record("dr.oconnor", basis="emergency", reason=REASON)
    _sign_in(ics)
    with _db(ics).session() as s:
        item_id = s.scalars(select(ReviewItem.id)).one()
    refused = ics.client.post(f"/ig/review/{item_id}", data={"outcome": "investigate", "note": "  "})
    assert refused.status_code == 400
    assert f'href="#note-{item_id}">Enter a note saying what to investigate' in refused.text
    assert f'id="note-{item_id}-error"' in refused.text and "nhsuk-textarea--error" in refused.text
    assert "Needed to open an investigation" in refused.text
    with _db(ics).session() as s:
        assert s.get_one(ReviewItem, item_id).status == "open"
        assert s.scalars(select(AuditEntry).where(AuditEntry.action == "governance:review:outcome")).all() == []
    done = ics.client.post(f"/ig/review/{item_id}", data={"outcome": "investigate", "note": "no 999 call found"},
                           follow_redirects=False)
    banner = html.unescape(ics.client.get(done.headers["location"]).text)
    assert f"Investigation opened: Break glass by Dr Niamh O'Connor (review item {item_id})." in banner
    assert "Recorded by Rhian Morgan." in banner
    with _db(ics).session() as s:  # the banner names who recorded it, from the audit, whoever opens the page
        record_outcome(s, item_id, "appropriate", by="ig.jones", note="the ward confirmed")
        s.commit()
    later = html.unescape(ics.client.get(f"/ig?recorded={item_id}").text)
    assert "Recorded as appropriate: Break glass by Dr Niamh O'Connor" in later and "Recorded by ig.jones." in later


def test_a_suspended_organisations_user_is_told_in_a_sentence_naming_it_and_whom_to_contact(ics: Ics) -> None:
    """Review L7: the sign-out message starts with a capital, names the organisation (its ODS code beside it,
    for a helpdesk) and says whom to ask; the same at the sign-in it then refuses."""
    assert ics.client.post("/login", data={"username": "hospice.ward", "password": "demo"},
                           follow_redirects=False).status_code == 303
    with _db(ics).session() as s:
        set_agreement(s, _framework(ics), "NHR", "suspended", by="ig.morgan", reason="breach reported")
    said = ("St Brigid's Hospice's (NHR) information-sharing agreement is suspended, so its staff cannot use the "
            "shared care record until it is signed again. To ask about it, contact your organisation's information "
            "governance lead, or the information governance team at Riverside and Dales Integrated Care Board on "
            "0300 123 0001.")
    signed_out = ics.client.get("/search")
    assert signed_out.status_code == 401 and f"You have been signed out. {said}" in html.unescape(signed_out.text)
    refused = html.unescape(ics.client.post("/login", data={"username": "hospice.ward", "password": "demo"}).text)
    assert f"You cannot sign in. {said}" in refused and "your organisation's (NHR)" not in refused


def test_the_agreements_board_writes_every_date_the_uk_way(ics: Ics) -> None:
    """Review L7: "Signed 15 Jan 2026" beside "Runs 1 Feb 2026 to 31 Jan 2029", never an ISO date."""
    _sign_in(ics)
    board = ics.client.get("/ig/agreements").text
    assert "15 Jan 2026" in board and "1 Feb 2026 to 31 Jan 2029" in board
    assert re.search(r"\b20\d\d-\d\d-\d\d\b", board.split("<main", 1)[1]) is None
