"""A citizen's portal session is always the citizen: who they are is worked out again on each request from the
NHS number and date of birth they signed in with, so a merge, an unmerge or a separation after they signed in
never shows them someone else's record or log, nor hides their own (patient portal review, 2026-12-07, HIGH 1).
Also the sign-in's small edges: a code typed with a space, and an error page's title (LOW 8)."""

from __future__ import annotations

import base64
import html
import re
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select, update
from starlette.testclient import TestClient
from tests.governance.test_access_log_history import _community_record, _left_apart, _person_of
from tests.portal.test_patient_portal import WRONG_CODE, _logins, _sign_in, _start
from tests.small_ics import OKAFOR_NHS, Ics, consent_id_of

from sharedcare.api.deps import CHANGED_SINCE_CODE, NO_LONGER_ONE_PERSON, SESSION_COOKIE
from sharedcare.governance.access_log import accesses_of
from sharedcare.governance.audit import AuditAction
from sharedcare.governance.framework import Framework
from sharedcare.identity.links import merge_persons, separate, unmerge
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord

DIABETES, SONS_PLAN = "Type 2 diabetes mellitus", "Visits on Tuesdays"


def _text(page: str) -> str:
    main = page.split('id="maincontent"', 1)[-1]
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", main).split()))


def _title(page: str) -> str:
    found = re.search(r"<title>(.*?)</title>", page, re.S)
    assert found is not None
    return html.unescape(found.group(1)).strip()


def _held_apart(db: Database, record: int, **values: object) -> str:
    """The community record made someone else's (`values`), and held in a person of its own; that person."""
    with db.session() as s:
        if values:
            s.execute(update(PatientRecord).where(PatientRecord.id == record).values(**values))
        separate(s, record, by="test", reason="another person's record")
        s.commit()
    return _person_of(db, record)


def _last_seq(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1)) or 0


def _bearer(ics: Ics) -> dict[str, str]:
    """The session the browser holds, as a bearer token (the FHIR Consent API takes it)."""
    return {"Authorization": f"Bearer {ics.client.cookies.get(SESSION_COOKIE)}"}


def test_after_a_false_merge_is_undone_his_session_shows_his_own_record_not_his_sons(
        ics: Ics, db: Database, framework: Framework) -> None:
    """The community record is really his son's; a false merge kept the son's person id, and Mr Okafor signed
    in then. IG undoes the merge: his next page showed the son's care plan and none of his own data, and his
    reads were logged as the son's own. Now his session follows him back to his own records."""
    record = _community_record(db)
    son = _held_apart(db, record, nhs_number=None, given="Chidi")
    with db.session() as s:
        merged = merge_persons(s, son, ics.okafor, by="test", reason="looked like one person")
        s.commit()
    _sign_in(ics.client)  # his records are in the son's person id now
    with db.session() as s:
        unmerge(s, merged.id, by="ig.morgan", reason="two people")
        s.commit()
    father = _person_of(db, _gp_record(db))
    assert father != son and _person_of(db, record) == son
    since = _last_seq(db)
    page = ics.client.get("/patient/record")
    assert page.status_code == 200
    assert DIABETES in page.text and SONS_PLAN not in page.text and "Chidi" not in page.text
    assert ics.client.get("/patient/accesses").status_code == 200
    with db.session() as s:  # his reads are logged as his own, about himself
        reads = s.scalars(select(AuditEntry).where(AuditEntry.seq > since)).all()
        assert reads and {(e.username, e.patient_id) for e in reads} == {(f"patient:{father}", father)}
        assert accesses_of(s, framework, son).accesses == []  # the son's log holds nothing of his
        assert accesses_of(s, framework, father).accesses == []  # nor his own: his own reads are left out (AU8)


def _gp_record(db: Database) -> int:
    with db.session() as s:
        return s.scalars(select(PatientRecord.id).where(PatientRecord.source_id == "gp-okafor")).one()


def test_after_a_merge_into_another_id_he_still_sees_his_whole_record_and_choices(ics: Ics, db: Database) -> None:
    """A record without an NHS number, held apart, is found to be his and merged, the merge keeping its person id:
    his session named the id the merge emptied, and showed "Details withheld", no organisation holding anything,
    and no choices to make; the FHIR Consent API found none of his."""
    record = _community_record(db)
    other = _held_apart(db, record, nhs_number=None)
    _sign_in(ics.client)
    with db.session() as s:
        merge_persons(s, other, ics.okafor, by="ig.morgan", reason="same person")
        s.commit()
    own = _text(ics.client.get("/patient/record").text)
    assert DIABETES in own and SONS_PLAN in own and "Details withheld" not in own
    home = _text(ics.client.get("/patient/home").text)
    for org in ("Riverside Medical Centre", "Riverside Community Healthcare NHS Trust"):
        assert org in home
    assert "Riverside Medical Centre" in _text(ics.client.get("/patient/choices").text)
    consent = ics.client.get(f"/fhir/Consent?patient={other}", headers=_bearer(ics))
    assert consent.status_code == 200, consent.text
    assert [e["resource"]["id"] for e in consent.json()["entry"]] == [consent_id_of(OKAFOR_NHS)]


def test_a_separation_that_leaves_his_number_on_two_persons_ends_his_session(ics: Ics, db: Database) -> None:
    """IG separates a record carrying his NHS number and date of birth: the number is now two persons', which
    signs in neither (whoever holds it might be the other). His session went on as before, reading and changing
    the choices held against that number; now it ends, telling him what to do, audited."""
    _sign_in(ics.client)
    bearer = _bearer(ics)
    assert ics.client.get("/patient/home").status_code == 200
    _held_apart(db, _community_record(db))
    page = ics.client.get("/patient/record")
    assert page.status_code == 401
    assert NO_LONGER_ONE_PERSON in _text(page.text) and _title(page.text).startswith("Error: ")
    assert DIABETES not in page.text
    assert ics.client.cookies.get(SESSION_COOKIE) is None  # the session is gone, not only refused once
    consent = ics.client.get(f"/fhir/Consent?patient={ics.okafor}", headers=bearer)  # the same token
    assert consent.status_code == 401
    said = consent.json()["issue"][0]["diagnostics"]
    assert "has been revoked" in said, said  # ended, not only refused once
    with db.session() as s:
        refused = s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.CREDENTIALS_REFUSED.value)
                            .order_by(AuditEntry.seq)).all()
    assert [e.username for e in refused] == [f"patient:{ics.okafor}"] * 2
    assert "no longer lead to one person's record (ambiguous)" in str(refused[0].event), refused[0].event


def test_a_session_ended_for_ambiguity_stays_ended_when_the_records_are_joined_again(
        ics: Ics, db: Database) -> None:
    """"You have been signed out" must be true: the session was only refused while the details led to two
    persons, and the same token worked again once IG put the record back with him."""
    _sign_in(ics.client)
    bearer = _bearer(ics)
    assert ics.client.get(f"/fhir/Consent?patient={ics.okafor}", headers=bearer).status_code == 200
    apart = _left_apart(db, _community_record(db))
    ended = ics.client.get(f"/fhir/Consent?patient={ics.okafor}", headers=bearer)
    assert ended.status_code == 401
    assert "no longer lead to one person's record" in ended.json()["issue"][0]["diagnostics"]
    with db.session() as s:
        merge_persons(s, ics.okafor, apart, by="test", reason="same person after all")
        s.commit()
    assert ics.client.get(f"/fhir/Consent?patient={ics.okafor}", headers=bearer).status_code == 401
    page = ics.client.get("/patient/home")
    assert page.status_code == 401 and DIABETES not in page.text


def test_a_code_typed_with_a_space_or_hyphen_signs_in(ics: Ics) -> None:
    """A code is often shown or read out in two halves: "242 483" was refused, and used up a try."""
    for typed in ("{} {}", "{}-{}"):
        ics.client.cookies.clear()
        code = _start(ics.client)
        assert code is not None
        done = ics.client.post("/patient/code", data={"code": typed.format(code[:3], code[3:])},
                               follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"] == "/patient/home"
    assert [result for *_, result in _logins(ics)] == ["found", "ok"] * 2


def test_the_sign_in_pages_say_error_in_their_title_when_something_is_wrong(ics: Ics) -> None:
    """NHS design system: a page showing an error summary starts its title with "Error: ", so that a screen
    reader user hears at once that the page came back with a problem."""
    assert _title(ics.client.get("/patient").text).startswith("Sign in")
    wrong = ics.client.post("/patient/sign-in", data={"nhs_number": "123", "birth_day": "2", "birth_month": "3",
                                                      "birth_year": "1945"})
    assert wrong.status_code == 400 and _title(wrong.text).startswith("Error: Sign in")
    assert _start(ics.client) is not None
    refused = ics.client.post("/patient/code", data={"code": "not a code"})
    assert refused.status_code == 401 and WRONG_CODE in refused.text
    assert _title(refused.text).startswith("Error: Enter your security code")
    _sign_in(ics.client)
    assert _title(ics.client.get("/patient/choices").text).startswith("Your choices")
    hide = ics.client.post("/patient/choices/hide/confirm", data={"category": "", "hide_from": "everyone"})
    assert hide.status_code == 400 and _title(hide.text).startswith("Error: Your choices")


def test_a_right_code_after_a_link_change_says_the_records_changed_not_that_the_code_is_wrong(
        ics: Ics, db: Database) -> None:
    """Matching moves a record of his between the two sign-in steps: his right code was answered "The code is
    not right", and he would type it again. Someone who types a wrong code is told nothing more."""
    code = _start(ics.client)
    assert code is not None
    _left_apart(db, _community_record(db))
    wrong = ics.client.post("/patient/code", data={"code": "000000" if code != "000000" else "111111"})
    assert wrong.status_code == 401 and WRONG_CODE in wrong.text and CHANGED_SINCE_CODE not in _text(wrong.text)
    done = ics.client.post("/patient/code", data={"code": code}, follow_redirects=False)
    assert done.status_code == 401 and WRONG_CODE not in done.text
    assert CHANGED_SINCE_CODE in _text(done.text) and _title(done.text).startswith("Error: ")
    assert ics.client.cookies.get(SESSION_COOKIE) is None
    assert _logins(ics)[-1][-1] == "details-now-lead-elsewhere"


def _readable(cookie: str) -> str:
    """What anyone holding a JWT cookie can read of it without the key: its parts, base64-decoded."""
    parts = [base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in cookie.split(".")[:2]]
    return " ".join(p.decode("utf-8", "replace") for p in parts)


def test_the_cookies_do_not_carry_his_nhs_number_or_date_of_birth_readable(ics: Ics) -> None:
    """A JWT is signed, not encrypted: the sign-in cookie and the session cookie carried his NHS number and date
    of birth readable by base64, to anyone seeing the cookie on a shared computer, after sign-out too."""
    step = ics.client.post("/patient/sign-in", data={"nhs_number": OKAFOR_NHS, "birth_day": "2", "birth_month": "3",
                                                     "birth_year": "1945"})
    challenge = ics.client.cookies["sc_challenge"]
    (set_cookie,) = [c.lower() for c in step.headers.get_list("set-cookie") if c.startswith("sc_challenge=")]
    assert "max-age" not in set_cookie and "expires" not in set_cookie  # it goes when the browser is closed
    code = re.search(r'id="demo-code">(\d{6})<', step.text)
    assert code is not None
    assert ics.client.post("/patient/code", data={"code": code.group(1)}, follow_redirects=False).status_code == 303
    session = str(ics.client.cookies.get(SESSION_COOKIE))
    for cookie in (challenge, session):
        readable = _readable(cookie)
        assert OKAFOR_NHS not in readable and "1945-03-02" not in readable and "nhs_number" not in readable
    assert DIABETES in _text(ics.client.get("/patient/record").text)  # the sealed details still sign him in


def test_parallel_requests_of_a_session_just_ended_are_each_refused_401_not_500(ics: Ics, db: Database) -> None:
    """An app's parallel requests (or a patient's tabs) with a session whose details no longer lead to one
    person each end it: final review of 2026-12-07, the second INSERT of its revocation was a 500 (UNIQUE
    constraint on revoked_tokens.jti) for about half of eight parallel requests, on both stores."""
    _sign_in(ics.client)
    bearer = _bearer(ics)
    _held_apart(db, _community_record(db))
    clients = [TestClient(ics.client.app, raise_server_exceptions=False) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(
            lambda client: client.get(f"/fhir/Consent?patient={ics.okafor}", headers=bearer).status_code, clients))
    assert statuses == [401] * 8, statuses
