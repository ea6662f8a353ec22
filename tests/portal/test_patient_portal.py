"""The patient portal over HTTP: sign-in by NHS number, date of birth and a one-time code; the citizen's
own record, access log and choices; and the edges (wrong, expired and reused codes, someone else's
record, a clinician's session)."""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from tests.builders import bundle, condition, patient, write_ndjson
from tests.fhir_bundles import entries
from tests.governance.test_audit import FORGED_READ, _forged_after_head, _plain
from tests.portal_client import PortalClient
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.api.app import create_app
from sharedcare.api.deps import SESSION_COOKIE
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.governance import workspace
from sharedcare.governance.access_log import PATIENT_VISIBLE, UNVERIFIED_WORDS, VISIT_MINUTES, Access, visits
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.framework import Framework
from sharedcare.governance.one_time_codes import MAX_ATTEMPTS, MAX_CODES_PER_HOUR
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.portal.pages import RECORD_UNAVAILABLE
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, Preference, Resource, SignInCode

BORN = {"birth_day": "2", "birth_month": "3", "birth_year": "1945"}
WRONG_CODE = "The code is not right, or it has expired"
COMMUNITY = "Riverside Community Healthcare NHS Trust"


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


def visit_rows(page: str) -> list[str]:
    """Each visit's line of "who has looked", markup stripped, as a reader hears it (its events included)."""
    rows = page.split('class="nhsuk-table__row sc-visit"')[1:]
    return [html.unescape(" ".join(re.sub(r"<[^>]+>", " ", row.split("</tr>")[0]).split())) for row in rows]


def events_listed(page: str) -> int:
    """How many audit entries the page lists, inside its visits."""
    return sum(int(n) for n in re.findall(r'class="nhsuk-table__row sc-visit" data-events="(\d+)"', page))


def _start(client: TestClient, nhs: str = OKAFOR_NHS, born: dict[str, str] | None = None) -> str | None:
    """Step one; returns the demo code shown on the page (None when no code was issued)."""
    page = client.post("/patient/sign-in", data={"nhs_number": nhs, **(born or BORN)})
    assert page.status_code == 200 and "Enter your security code" in page.text
    found = re.search(r'id="demo-code">(\d{6})<', page.text)
    return found.group(1) if found else None


def _sign_in(client: TestClient) -> None:
    code = _start(client)
    assert code is not None
    done = client.post("/patient/code", data={"code": code}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/patient/home"


def _logins(ics: Ics) -> list[tuple[str, str | None, str | None, str]]:
    with _db(ics).session() as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action == "auth:session:login")
                            .order_by(AuditEntry.seq)).all()
        return [(e.outcome, e.username, e.patient_id,
                 next(d["valueString"] for ent in e.event["entity"] if ent.get("name") == "decision"
                      for d in ent["detail"] if d["type"] == "result")) for e in entries]


def test_the_sign_in_form_posts_so_no_nhs_number_is_in_a_url(ics: Ics) -> None:
    page = ics.client.get("/patient")
    assert page.status_code == 200
    assert 'method="post" action="/patient/sign-in"' in page.text and 'name="nhs_number"' in page.text


def test_a_citizen_signs_in_with_a_one_time_code_and_sees_what_is_shared(ics: Ics) -> None:
    code = _start(ics.client)
    assert code is not None and len(code) == 6
    with _db(ics).session() as s:
        (row,) = s.scalars(select(SignInCode)).all()
        assert code not in row.code_hash and row.person_id == ics.okafor  # stored hashed, never as typed
        assert timedelta(minutes=9) < row.expires_at - row.created_at <= timedelta(minutes=10)
    ics.client.post("/patient/code", data={"code": code})
    home = ics.client.get("/patient/home")
    assert home.status_code == 200
    for org in ("Riverside Medical Centre", "Riverside University Hospitals NHS Trust",
                "Riverside Community Healthcare NHS Trust", "Riverside and Dales Mental Health NHS Foundation Trust"):
        assert org in home.text
    assert "sharing under a signed agreement" in home.text
    assert "Suspending an agreement takes effect at once" in home.text  # explain.rules_in_words
    assert _logins(ics) == [("permit", "anonymous", ics.okafor, "found"),
                            ("permit", f"patient:{ics.okafor}", ics.okafor, "ok")]


def test_the_code_is_printed_in_the_server_log(ics: Ics, caplog: pytest.LogCaptureFixture) -> None:
    code = _start(ics.client)
    assert code is not None and code in caplog.text
    assert OKAFOR_NHS not in caplog.text


def test_a_wrong_pair_reads_exactly_like_a_right_pair_with_no_record_and_both_are_audited(ics: Ics) -> None:
    wrong_birthday = ics.client.post("/patient/sign-in", data={"nhs_number": OKAFOR_NHS, "birth_day": "3",
                                                               "birth_month": "3", "birth_year": "1945"})
    nobody = ics.client.post("/patient/sign-in", data={"nhs_number": "9990000026", "birth_day": "1",
                                                       "birth_month": "1", "birth_year": "1970"})
    assert wrong_birthday.status_code == nobody.status_code == 200
    assert wrong_birthday.text == nobody.text
    assert 'id="demo-code"' not in nobody.text
    assert _logins(ics) == [("deny", "anonymous", None, "no-match"), ("deny", "anonymous", None, "no-match")]


def test_a_wrong_code_is_refused_and_after_too_many_tries_so_is_the_right_one(ics: Ics) -> None:
    code = _start(ics.client)
    assert code is not None
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(MAX_ATTEMPTS):
        page = ics.client.post("/patient/code", data={"code": wrong})
        assert page.status_code == 401 and WRONG_CODE in page.text
    assert ics.client.post("/patient/code", data={"code": code}).status_code == 401
    assert [r for *_, r in _logins(ics)][1:] == ["wrong-code"] * MAX_ATTEMPTS + ["too-many-attempts"]
    assert ics.client.get("/patient/home").status_code == 401


def test_a_patient_who_asked_for_too_many_codes_is_told_to_wait_without_saying_whether_the_details_match(
        ics: Ics) -> None:
    """A patient whose phone was slow asks again and again: after the hour's limit no code comes, and the
    page must tell her why it might not, in words that are the same whether or not her details match."""
    for _ in range(MAX_CODES_PER_HOUR):
        assert _start(ics.client) is not None
    assert _start(ics.client) is None  # the limit: no code
    limited = ics.client.post("/patient/sign-in", data={"nhs_number": OKAFOR_NHS, **BORN}).text
    nobody = ics.client.post("/patient/sign-in", data={"nhs_number": "9990000026", "birth_day": "1",
                                                       "birth_month": "1", "birth_year": "1970"}).text
    assert f"We send at most {MAX_CODES_PER_HOUR} codes an hour for one record" in limited
    assert limited == nobody


def test_an_expired_code_is_refused(ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _start(ics.client)
    assert code is not None
    later = utcnow() + timedelta(minutes=10, seconds=1)
    monkeypatch.setattr(workspace, "utcnow", lambda: later)
    page = ics.client.post("/patient/code", data={"code": code})
    assert page.status_code == 401 and WRONG_CODE in page.text
    assert _logins(ics)[-1] == ("deny", "anonymous", ics.okafor, "expired")


def test_a_code_works_once(ics: Ics) -> None:
    code = _start(ics.client)
    assert code is not None
    assert ics.client.post("/patient/code", data={"code": code}, follow_redirects=False).status_code == 303
    assert ics.client.post("/patient/code", data={"code": code}).status_code == 401


def test_a_citizen_cannot_open_anyone_elses_record_or_the_clinician_pages(ics: Ics) -> None:
    _sign_in(ics.client)
    own = ics.client.get(f"/record/{ics.okafor}")  # the clinician pages: not a citizen's purpose
    assert own.status_code == 403 and "You cannot see this record" in own.text
    for other in (ics.stranger, str(uuid.uuid4())):  # anyone else's is as if missing, whether stored or not
        page = ics.client.get(f"/record/{other}")
        assert page.status_code == 404 and RECORD_UNAVAILABLE in page.text
        assert ics.client.post(f"/record/{other}/basis", data={"basis": "explicit-consent"}).status_code == 404
    assert ics.client.post("/search", data={"nhs_number": "9990000018"}).status_code == 403
    mine = ics.client.get("/patient/record")
    assert mine.status_code == 200 and "Metformin 500mg tablets" in mine.text and "Hughes" not in mine.text


def test_the_citizen_sees_their_whole_record_with_what_is_withheld_said_plainly(ics: Ics) -> None:
    _sign_in(ics.client)
    page = ics.client.get("/patient/record").text
    assert "Depressive disorder" in page  # their own mental health record, which staff see as a headline
    assert "Restricted letter" not in page and "marked restricted (ask them for a copy)" in page


def test_the_access_log_lists_exactly_the_audit_events_about_the_record(ics: Ics) -> None:
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present", found=False)
    ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=ics.token("para.evans"))
    ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=ics.token("dr.patel"))  # refused: no basis
    _sign_in(ics.client)
    ics.client.get("/patient/record")  # the citizen's own look is not listed
    page = ics.client.get("/patient/accesses").text
    with _db(ics).session() as s:
        events = s.scalars(select(AuditEntry).where(
            AuditEntry.patient_id == ics.okafor, AuditEntry.action.in_([a.value for a in PATIENT_VISIBLE]),
            AuditEntry.username != f"patient:{ics.okafor}")).all()
    assert len(events) == events_listed(page) == 3
    rows = visit_rows(page)  # the paramedic's basis and read are one visit; the GP's refused read another
    assert len(rows) == 2 and "Carys Evans" in rows[1] and "Dr Amara Patel" in rows[0]
    assert "Paramedic" in page and "North Region Ambulance Service" in page
    assert "confused, daughter not present" in page and "Dr Amara Patel" in page and "Refused" in page
    assert "01632 960400" in page  # the ambulance trust's number, to ask about the paramedic's look


def _ingest_safeguarding(db: Database, framework: Framework, tmp_path: Path) -> str:
    """Mr Okafor's GP sends a safeguarding condition (a vulnerable adult): the id it is stored under."""
    gp = bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
                                   condition("gp-sg", "Patient/gp-okafor", "417430008", "Vulnerable adult")],
                timestamp="2026-11-02T09:00:00Z")
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "sg.ndjson", [gp])]).quarantined == 0
    with db.session() as s:
        return s.scalars(select(Resource.id).where(Resource.source_id == "gp-sg")).one()


@pytest.mark.parametrize("looked_at", ["", "/_history", "/_history/1"], ids=["read", "history", "vread"])
def test_a_look_at_a_safeguarding_record_is_listed_without_what_was_seen_or_why(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path, looked_at: str) -> None:
    """The patient never sees a safeguarding record (it can put them at risk if someone with them reads it),
    nor, in "who has looked", what a social worker looked at of it or the reason she gave (an S42 enquiry
    naming his son); who looked, from where, when and on what basis are still listed (patient portal review
    of 2026-12-07, MEDIUM 6). So too for a look at its history or a version (review of 2026-12-07: those
    gave the reason away). A look at anything else still says what it was, and why."""
    safeguarding = _ingest_safeguarding(db, framework, tmp_path)
    with db.session() as s:
        diabetes = s.scalars(select(Resource.id).where(Resource.source_id == "gp-c1")).one()
    why = "S42 enquiry: concern his son is taking his pension"
    social_worker = ics.open_record("sw.brown", basis="implied-consent", reason=why)
    assert ics.client.get(f"/fhir/Condition/{safeguarding}{looked_at}", headers=social_worker).status_code == 200
    gp_reads = ics.open_record("dr.patel", basis="implied-consent", reason="diabetes review")
    assert ics.client.get(f"/fhir/Condition/{diabetes}", headers=gp_reads).status_code == 200
    _sign_in(ics.client)
    assert "Vulnerable adult" not in ics.client.get("/patient/record").text
    page = ics.client.get("/patient/accesses").text
    rows = visit_rows(page)
    (look,) = [row for row in rows if "Maya Brown" in row]
    assert "Social worker" in look and "Riverside City Council Adult Social Care" in look
    assert "viewed your record" in look and "problem or diagnosis" not in look and "versions" not in look
    assert "implied consent: not shown here: the organisation named can tell you" in look
    assert "S42" not in page and "pension" not in page and "son" not in look.split()
    (gp_look,) = [row for row in rows if "Dr Amara Patel" in row]
    assert "viewed a problem or diagnosis in your record" in gp_look and "diabetes review" in gp_look


def test_a_history_of_a_safeguarding_record_audited_before_it_named_the_record_is_held_back_too(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """A history or vread audited before 2026-12-07 named only the versions released, not the record: the
    record is read from them, and the look is held back as one audited now is (its reason too)."""
    safeguarding = _ingest_safeguarding(db, framework, tmp_path)
    with db.session() as s:
        record_audit(s, AuditRecord(  # as the gateway wrote a released history then
            AuditAction.RESOURCE_HISTORY, "permit", "sw.brown", role="social_worker", organisation="LRC",
            patient_id=ics.okafor, basis="implied-consent", reason="S42 enquiry: concern his son is taking his pension",
            rule_id="permit-tier", released=[f"Condition/{safeguarding}/_history/1"]))
    _sign_in(ics.client)
    page = ics.client.get("/patient/accesses").text
    (look,) = [row for row in visit_rows(page) if "Maya Brown" in row]
    assert "viewed your record" in look and "versions" not in look
    assert "S42" not in page and "pension" not in page


def test_a_look_the_service_did_not_record_is_listed_as_not_verified(ics: Ics) -> None:
    """A read of the record appended to the log by someone without the chain's key (the database role may
    INSERT), which `audit verify` names as forged: listed, so that the citizen sees something is wrong, but
    marked as not verified rather than shown as fact; the genuine looks around it are not marked."""
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    _forged_after_head(_db(ics), _plain, replace(FORGED_READ, patient_id=ics.okafor))
    ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    _sign_in(ics.client)
    said = visit_rows(ics.client.get("/patient/accesses").text)
    forged = [row for row in said if "Dr Amara Patel" in row]
    assert len(forged) == 1 and "Could not be verified" in forged[0] and UNVERIFIED_WORDS in forged[0]
    genuine = [row for row in said if "Carys Evans" in row]
    assert genuine and not any("Could not be verified" in row for row in genuine)


def test_a_choice_is_explained_first_and_applies_to_the_next_clinician_request(ics: Ics) -> None:
    gp = ics.open_record("dr.patel")
    _sign_in(ics.client)
    confirm = ics.client.post("/patient/choices/confirm", data={"change": "object-org", "organisation": "RYC"})
    assert confirm.status_code == 200
    assert "Stop Riverside Community Healthcare NHS Trust seeing your record" in confirm.text
    assert "even in an emergency" in confirm.text
    unchanged = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=gp).json()
    assert any("RYC#" in e["resource"]["meta"]["source"] for e in entries(unchanged))  # nothing applied yet
    done = ics.client.post("/patient/choices", data={"change": "object-org", "organisation": "RYC"},
                           follow_redirects=False)
    assert done.status_code == 303
    after = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=gp).json()
    assert not any("RYC#" in e["resource"]["meta"]["source"] for e in entries(after))
    assert "Riverside Community Healthcare NHS Trust" in ics.client.get("/patient/choices").text


def _holder_rows(page: str) -> dict[str, str]:
    """The home page's "Who holds information about you" rows, by organisation."""
    rows = page.split('<tbody class="nhsuk-table__body">')[1].split("</tbody>")[0].split("<tr")[1:]
    return {re.search(r'sc-cell">([^<]+)<', row).group(1): row for row in rows}  # type: ignore[union-attr]


def test_the_home_page_never_says_an_organisation_shares_what_the_patient_stopped(ics: Ics) -> None:
    """Journey 8: after stopping the hospice (here the community trust) the page that says who shares
    must say it no longer does, not "sharing under a signed agreement" as before."""
    _sign_in(ics.client)
    ics.client.post("/patient/choices", data={"change": "object-org", "organisation": "RYC"})
    rows = _holder_rows(ics.client.get("/patient/home").text)
    assert "not shared: you stopped this organisation seeing your record" in rows[COMMUNITY]
    assert "sharing under a signed agreement" not in rows[COMMUNITY]
    assert "sharing under a signed agreement" in rows["Riverside Medical Centre"]

    ics.client.post("/patient/choices", data={"change": "object-all"})
    rows = _holder_rows(ics.client.get("/patient/home").text)
    assert all("not shared with others: you asked for your record not to be shared" in row
               for name, row in rows.items() if name != COMMUNITY)
    assert not any("sharing under a signed agreement" in row for row in rows.values())


def test_every_choice_says_before_it_is_confirmed_that_it_applies_at_once(ics: Ics) -> None:
    _sign_in(ics.client)
    for change in ("object-org", "object-all", "object-all-except-emergency", "opt-out-secondary", "clear"):
        page = ics.client.post("/patient/choices/confirm", data={"change": change, "organisation": "RYC"})
        assert page.status_code == 200 and "This applies straight away." in page.text, change


def test_each_choice_is_undone_on_its_own_keeping_the_others(ics: Ics) -> None:
    """Journey 8: a patient who stopped the community trust and opted out of research lets the trust see her
    record again without losing the opt-out (before, only "remove all your choices" undid anything)."""
    gp = ics.open_record("dr.patel")
    _sign_in(ics.client)
    for change in ({"change": "object-org", "organisation": "RYC"}, {"change": "opt-out-secondary"},
                   {"change": "object-all"}):
        ics.client.post("/patient/choices", data=change)
    page = ics.client.get("/patient/choices").text
    assert f"Let it see your record again<span class=\"nhsuk-u-visually-hidden\"> ({COMMUNITY})" in page
    assert "Opt back in" in page and "Share again" in page

    confirm = ics.client.post("/patient/choices/confirm", data={"change": "allow-org", "organisation": "RYC"})
    assert f"Let {COMMUNITY} see your record again" in confirm.text and "This applies straight away." in confirm.text
    assert not _sources(ics, gp) & {"RYC:CarePlan"}  # nothing applied yet
    ics.client.post("/patient/choices", data={"change": "allow-org", "organisation": "RYC"})
    ics.client.post("/patient/choices", data={"change": "share-again"})
    assert "RYC:CarePlan" in _sources(ics, gp)
    choices = ics.client.get("/patient/choices").text
    assert "You have opted out" in choices
    assert "Let it see your record again" not in choices and "Share again" not in choices
    ics.client.post("/patient/choices", data={"change": "opt-in-secondary"})
    assert "Pseudonymised data may be used" in ics.client.get("/patient/choices").text


def _sources(ics: Ics, headers: dict[str, str]) -> set[str]:
    """What a read released, as source organisation and resource type."""
    body = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    return {f"{e['resource']['meta']['source'].split('|')[1].split('#')[0]}:{e['resource']['resourceType']}"
            for e in entries(body)}


def test_hiding_mental_health_from_everyone_but_the_gp_is_explained_listed_and_applied_at_once(ics: Ics) -> None:
    hospital, gp = ics.open_record("dr.oconnor"), ics.open_record("dr.patel")
    _sign_in(ics.client)
    form = {"category": "mental_health", "hide_from": "everyone", "except_org": "P81001"}
    confirm = ics.client.post("/patient/choices/hide/confirm", data=form)
    assert confirm.status_code == 200
    assert "Hide mental health from everyone; except: show it to Riverside Medical Centre" in confirm.text
    assert "staff at every organisation will not see mental health recorded by other organisations" \
        in confirm.text
    assert "RXM:Condition" in _sources(ics, hospital)  # nothing applied yet
    assert ics.client.post("/patient/choices/hide", data=form, follow_redirects=False).status_code == 303
    assert "RXM:Condition" not in _sources(ics, hospital)
    assert "RXM:Condition" in _sources(ics, gp)
    page = ics.client.get(f"/record/{ics.okafor}", headers=hospital).text  # said, without saying what
    assert "information the patient has chosen not to share" in page and "Depressive" not in page
    listed = ics.client.get("/patient/choices").text
    assert "Other choices" in listed and "Hide mental health from everyone" in listed
    assert "Hide mental health from everyone" in ics.client.get("/patient/home").text
    (form,) = _withdraw_forms(listed)
    assert ics.client.post("/patient/choices/withdraw", data=form, follow_redirects=False).status_code == 303
    assert "RXM:Condition" in _sources(ics, hospital)
    assert "Other choices" not in ics.client.get("/patient/choices").text


MENTAL_HEALTH_TRUST = "Riverside and Dales Mental Health NHS Foundation Trust"


def test_hiding_mental_health_from_everyone_hides_that_the_trust_is_involved_too(ics: Ics) -> None:
    """The trust's record of who he is (demographics) told the hospital's care team list, the API's Patient
    and an export that a mental health trust cares for him (patient portal review of 2026-12-07, HIGH 2)."""
    hospital, gp = ics.open_record("dr.oconnor"), ics.open_record("dr.patel")

    def seen(headers: dict[str, str]) -> tuple[str, str, str]:
        page = html.unescape(ics.client.get(f"/record/{ics.okafor}", headers=headers).text)
        patient = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=headers).text
        everything = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).text
        return page, patient, everything

    page, patient, everything = seen(hospital)
    assert MENTAL_HEALTH_TRUST in page and "chosen not to share" not in patient
    _sign_in(ics.client)
    form = {"category": "mental_health", "hide_from": "everyone", "except_org": "P81001"}
    assert ics.client.post("/patient/choices/hide", data=form, follow_redirects=False).status_code == 303
    page, patient, everything = seen(hospital)
    assert MENTAL_HEALTH_TRUST not in page and "01632 960300" not in page and "Mental health service" not in page
    assert "information the patient has chosen not to share" in page  # told something is not shown, not what
    for read in (patient, everything):
        assert "RXM" not in read and MENTAL_HEALTH_TRUST not in read
    # the Patient read alone says so too: the trust's record of him is withheld by his choice
    assert "information the patient has chosen not to share" in patient
    page, _, _ = seen(gp)  # the exception he made
    assert MENTAL_HEALTH_TRUST in page


def test_object_to_all_sharing_except_in_an_emergency_from_the_portal(ics: Ics) -> None:
    _sign_in(ics.client)
    confirm = ics.client.post("/patient/choices/confirm", data={"change": "object-all-except-emergency"})
    assert confirm.status_code == 200 and "except in an emergency" in confirm.text
    assert ics.client.post("/patient/choices", data={"change": "object-all-except-emergency"},
                           follow_redirects=False).status_code == 303
    ordinary = _sources(ics, ics.open_record("dr.oconnor"))
    emergency = _sources(ics, ics.open_record("para.evans", basis="emergency",
                                              reason="Collapsed at home, unresponsive"))
    assert not {"P81001:Condition", "RYC:CarePlan"} & ordinary
    assert {"P81001:Condition", "RYC:CarePlan"} <= emergency


def test_hiding_allergies_or_medicines_warns_what_that_risks_before_it_is_saved(ics: Ics) -> None:
    _sign_in(ics.client)
    for category in ("summary", "alerts"):
        page = ics.client.post("/patient/choices/hide/confirm", data={"category": category, "hide_from": "everyone"})
        assert "could give you a medicine you are allergic to" in page.text
    other = ics.client.post("/patient/choices/hide/confirm", data={"category": "sexual_health", "hide_from": "RXR"})
    assert other.status_code == 200 and "allergic" not in other.text


def test_a_hide_choice_that_makes_no_sense_is_sent_back_in_words(ics: Ics) -> None:
    _sign_in(ics.client)
    for form, words in (({"category": "", "hide_from": "everyone"}, "Choose the kind of information"),
                        ({"category": "mental_health", "hide_from": "RXR", "except_org": "RXM"},
                         "An exception applies only when you hide information from everyone")):
        page = ics.client.post("/patient/choices/hide/confirm", data=form)
        assert page.status_code == 400 and words in page.text


def test_an_unknown_organisation_is_sent_back(ics: Ics) -> None:
    _sign_in(ics.client)
    for url in ("/patient/choices/confirm", "/patient/choices"):
        page = ics.client.post(url, data={"change": "object-org", "organisation": "NOPE"})
        assert page.status_code == 400 and "Choose the organisation" in page.text


def test_signing_out_clears_the_session_and_the_portal_asks_to_sign_in_again(ics: Ics) -> None:
    _sign_in(ics.client)
    out = ics.client.post("/logout", data={"target": "/patient"}, follow_redirects=False)
    assert out.headers["location"] == "/patient" and "Clear-Site-Data" in out.headers
    again = ics.client.get("/patient/home")
    assert again.status_code == 401 and 'action="/patient/sign-in"' in again.text


def test_a_clinicians_session_is_not_a_patients(ics: Ics) -> None:
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    page = ics.client.get("/patient/accesses")
    assert page.status_code == 401 and 'action="/patient/sign-in"' in page.text


def test_outside_demo_mode_patients_are_sent_to_nhs_login(ics: Ics, db: Database) -> None:
    settings = replace(load_settings(), database_url=str(db.url), demo=False, secret="s" * 40)
    app = create_app(settings, framework=ics.client.app.state.framework, database=db)  # type: ignore[attr-defined]
    with PortalClient(app, base_url="https://testserver") as live:  # outside demo mode cookies are HTTPS-only
        page = live.post("/patient/sign-in", data={"nhs_number": OKAFOR_NHS, **BORN})
    assert page.status_code == 403 and "NHS login" in page.text and 'id="demo-code"' not in page.text


def test_a_long_access_log_is_read_a_page_at_a_time(ics: Ics) -> None:
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit

    with _db(ics).session() as s:
        for username in ["dr.patel"] * 30 + ["dn.williams"] * 100:
            record_audit(s, AuditRecord(AuditAction.RECORD_READ, "permit", username, patient_id=ics.okafor))
    _sign_in(ics.client)
    first = ics.client.get("/patient/accesses").text
    assert events_listed(first) == 100 and "Dr Amara Patel" not in first
    assert len(visit_rows(first)) == 1 and "viewed your record 100 times" in first  # one visit, every entry
    older = re.search(r'href="(/patient/accesses\?before=\d+)"', first)
    assert older is not None and "Earlier entries" in first
    second = ics.client.get(older.group(1)).text
    assert events_listed(second) == 30 and second.count('class="sc-access">') == 30
    assert ["Dr Amara Patel" in row and "viewed your record 30 times" in row for row in visit_rows(second)] == [True]
    assert "Earlier entries</span>" not in second and 'href="/patient/accesses"' in second
    assert ics.client.get("/patient/accesses?before=soon").status_code == 400


def _withdraw_forms(page: str) -> list[dict[str, str]]:
    """The withdraw buttons' hidden fields, in the order the page lists the choices."""
    return [{"choice": choice, "drawn": drawn} for choice, drawn in
            re.findall(r'name="choice" value="([^"]*)"><input type="hidden" name="drawn" value="([^"]*)"', page)]


def test_a_withdraw_from_a_page_shown_before_another_change_never_removes_a_different_choice(ics: Ics) -> None:
    _sign_in(ics.client)
    for category in ("mental_health", "sexual_health"):
        assert ics.client.post("/patient/choices/hide", data={"category": category, "hide_from": "everyone"},
                               follow_redirects=False).status_code == 303
    stale = _withdraw_forms(ics.client.get("/patient/choices").text)  # a second tab, left open
    assert len(stale) == 2
    fresh = _withdraw_forms(ics.client.get("/patient/choices").text)
    assert ics.client.post("/patient/choices/withdraw", data=fresh[0], follow_redirects=False).status_code == 303

    again = ics.client.post("/patient/choices/withdraw", data=stale[0])  # the mental health choice, again
    assert again.status_code == 409 and "already withdrawn" in again.text
    other = ics.client.post("/patient/choices/withdraw", data=stale[1])  # drawn before the change
    assert other.status_code == 409 and "already changed" in other.text
    listed = ics.client.get("/patient/choices").text
    assert "Hide sexual and reproductive health from everyone" in listed
    assert "Hide mental health" not in listed


def test_a_withdraw_drawn_with_a_non_ascii_digit_is_refused_and_withdraws_from_no_number(ics: Ics) -> None:
    other_number = "9434765927"
    with _db(ics).session() as s:  # the mental health trust knows him by another NHS number, linked to him
        s.execute(update(PatientRecord).where(PatientRecord.source_id == "RXM-4").values(nhs_number=other_number))
        s.commit()
    _sign_in(ics.client)
    assert ics.client.post("/patient/choices/hide", data={"category": "mental_health", "hide_from": "everyone"},
                           follow_redirects=False).status_code == 303
    (form,) = _withdraw_forms(ics.client.get("/patient/choices").text)
    assert form["drawn"] == "1.1"
    refused = ics.client.post("/patient/choices/withdraw", data={**form, "drawn": "1.\u00b2"})  # "1.²"
    assert refused.status_code == 409 and "already changed" in refused.text
    with _db(ics).session() as s:
        for number in (OKAFOR_NHS, other_number):
            held = s.get(Preference, number)
            assert held is not None and held.version == 1 and len(held.provisions) == 1
    assert "Hide mental health" in ics.client.get("/patient/choices").text


def test_details_that_match_no_one_take_the_work_of_details_that_match(
        ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page is the same whether or not the NHS number and date of birth go together; issuing the code
    spends a slow hash (PBKDF2, 100,000 rounds: tens of milliseconds) that details matching no one, or a
    person already sent the hour's codes, did not, so the answer's time said which (sixth security review,
    2026-12-06). Counted here by the hashes made; times are benchmarks' business."""
    import hashlib

    made: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counted(*args: object, **kwargs: object) -> bytes:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counted)
    hashes = []
    for nhs, born in ((OKAFOR_NHS, BORN), (OKAFOR_NHS, {**BORN, "birth_day": "3"}), ("9990000026", BORN)):
        made.clear()
        page = ics.client.post("/patient/sign-in", data={"nhs_number": nhs, **born})
        assert page.status_code == 200
        hashes.append(len(made))
    assert hashes == [1, 1, 1]


def test_the_code_step_takes_the_work_of_a_real_challenge_whichever_it_was(
        ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step two compares the code typed with a slow hash (PBKDF2) of the one issued; a challenge that names no
    code (details that matched no one) was answered without one, sooner, with the same page, so the time said
    whether step one's details matched (review of 2026-12-07). Counted by the hashes made, as step one's."""
    import hashlib

    made: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counted(*args: object, **kwargs: object) -> bytes:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    hashes = []
    for born in (BORN, {**BORN, "birth_day": "3"}, None):
        ics.client.cookies.clear()
        if born is not None:
            _start(ics.client, born=born)
        monkeypatch.setattr(hashlib, "pbkdf2_hmac", counted)
        made.clear()
        page = ics.client.post("/patient/code", data={"code": "000000"})
        monkeypatch.setattr(hashlib, "pbkdf2_hmac", real)
        assert page.status_code == 401 and WRONG_CODE in page.text
        hashes.append(len(made))
    assert hashes == [1, 1, 1]  # details that matched, matched no one, no challenge at all


def test_a_citizen_probing_another_persons_id_learns_nothing_and_is_not_named_to_them(ics: Ics) -> None:
    """A citizen's read of someone else's record id was refused 403 where a made-up id was 404, telling them
    the id is a person's; the refusal is answered as missing, still audited about the person, whose "Who has
    looked" then says someone signed in to the patient portal tried, without the prober's person id."""
    _sign_in(ics.client)
    made_up = str(uuid.uuid4())
    for url in ("/fhir/Patient/{}/$everything", "/fhir/Patient/{}", "/fhir/AllergyIntolerance?patient={}"):
        stored, missing = ics.client.get(url.format(ics.stranger)), ics.client.get(url.format(made_up))
        assert stored.status_code == missing.status_code == 404, url
        assert (stored.json()["issue"][0]["diagnostics"].replace(ics.stranger, "ID")
                == missing.json()["issue"][0]["diagnostics"].replace(made_up, "ID")), url
    with _db(ics).session() as s:
        refused = s.scalars(select(AuditEntry).where(AuditEntry.patient_id == ics.stranger,
                                                     AuditEntry.username == f"patient:{ics.okafor}")).all()
    assert len(refused) == 3 and all(e.outcome == "deny" for e in refused)
    ics.client.cookies.clear()
    ics.client.cookies.set(SESSION_COOKIE, ics.citizen_token(ics.stranger))
    page = ics.client.get("/patient/accesses").text
    [row] = visit_rows(page)
    assert "Another person signed in to the patient portal" in row and "Refused" in row
    assert ics.okafor not in page and "patient:" not in page


def test_one_visit_is_one_line_saying_what_they_did_and_why_with_each_entry_inside(ics: Ics) -> None:
    """Review L6: a GP finding Mr Okafor in a search, recording why and opening his record is one line of his
    "who has looked", saying all three and why; each entry is still listed inside it, none hidden."""
    headers = ics.token("dr.patel")
    found = ics.client.post("/fhir/Patient/_search", headers=headers,
                            data={"family": "okafor", "birthdate": "1945-03-02"})
    assert found.status_code == 200
    ics.open_record("dr.patel", reason="review of care after discharge", found=False)
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 200
    _sign_in(ics.client)
    page = ics.client.get("/patient/accesses").text
    (visit,) = visit_rows(page)
    assert ("found you in a search, recorded why they needed your record, then viewed your record" in visit
            and "explicit consent: review of care after discharge" in visit and "Dr Amara Patel" in visit)
    assert "No reason recorded" not in visit and "1 visit (3 recorded events)" in page
    assert events_listed(page) == 3 and "See each recorded event (3)" in visit
    listed = re.findall(r'<li class="sc-access">(.*?)</li>', page, re.S)
    assert [("found you in a search" in e, "recorded why" in e, "viewed your record" in e) for e in listed] == [
        (True, False, False), (False, True, False), (False, False, True)]  # in the order they happened


def test_the_basis_form_naming_the_patient_is_a_step_of_the_visit_not_another_search(ics: Ics) -> None:
    """Privacy review of 2026-12-07 (D3): each render of the basis form was audited as a search, so one look
    read "found you in a search" once a render. The form's look-up is its own step, said plainly."""
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    ics.client.post("/search", data={"nhs_number": OKAFOR_NHS})
    ics.client.get(f"/record/{ics.okafor}")
    ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": ""})
    ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent", "reason": "clinic today"})
    ics.client.post("/logout")
    _sign_in(ics.client)
    page = ics.client.get("/patient/accesses").text
    (visit,) = visit_rows(page)
    said, listed = visit.split("See each recorded event (5)")
    assert said.count("found you in a search") == 1 and listed.count("found you in a search") == 1, visit
    assert ("found you in a search, saw who you are on the form to record why they needed your record 2 times, "
            "recorded why they needed your record, then viewed your record") in visit, visit


def _access(who: str, minute: int, what: str = "viewed your record", **extra: str) -> Access:
    return Access(when=utcnow().replace(hour=9, minute=0, second=0) + timedelta(minutes=minute), username=who,
                  who=who, role="GP", organisation="Riverside Medical Centre", what=what, basis="", reason="",
                  outcome="allowed", seq=minute + 1, **extra)


def test_a_visit_is_one_persons_looks_within_ten_minutes_with_no_one_elses_between() -> None:
    newest_first = [_access("a", 40, unverified=UNVERIFIED_WORDS), _access("b", 30), _access("a", 25),
                    _access("a", 9), _access("a", 0)]
    grouped = [[a.when.minute for a in v.accesses] for v in visits(newest_first)]
    # a's first two within 10 minutes; b's look ends a's visit; the unverified entry stands alone
    assert grouped == [[40], [30], [25], [0, 9]] and VISIT_MINUTES == 10
    assert [len(v.accesses) for v in visits([_access("a", 11), _access("a", 0)])] == [1, 1]  # 11 minutes: two
    refused = visits([_access("a", 1), replace(_access("a", 0), outcome="refused")])[0]
    assert refused.what == "viewed your record (refused), then viewed your record" and refused.refused == 1


def _main(page: str) -> str:
    return page.split("<main", 1)[1].split("</main>", 1)[0]


def test_a_record_the_patient_stopped_mid_visit_reads_as_any_unavailable_record_naming_no_id(ics: Ics) -> None:
    """Review L5: the GP has the record open; Mr Okafor stops her practice seeing it; her reload says the
    record is not available to her and what to do next, never its internal id, in the very words a record
    stored nowhere gets (so the page tells no one which it was). The API keeps governance's message."""
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    assert ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).status_code == 200
    assert "OKAFOR, Emeka" in ics.client.get(f"/record/{ics.okafor}").text
    with _db(ics).session() as s:
        workspace.set_choice(s, OKAFOR_NHS, by="test", object_org="P81001")
        s.commit()
    stopped = ics.client.get(f"/record/{ics.okafor}")
    assert stopped.status_code == 404
    said = html.unescape(_main(stopped.text))
    assert "<h1>This record is not available to you</h1>" in said and "Search for the patient again" in said
    assert "contact your organisation's information governance team" in said
    assert ics.okafor not in said and "no patient" not in said and "Not found" not in said
    made_up = ics.client.get("/record/00000000-0000-4000-8000-000000000000")
    assert made_up.status_code == 404 and _main(made_up.text) == _main(stopped.text)
    api = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=ics.token("dr.patel"))
    assert api.status_code == 404 and f"no patient {ics.okafor}" in api.text
