"""Suspending an organisation's agreement locks its users out at once (DESIGN: "hides its data and locks its
users out at once"): a member of staff signed in is signed out on their next page, audited, and cannot sign in
again; its IG officer loses the audit log, the agreements and the choices too (and cannot sign her own
organisation's agreement again); a system of it writing over FHIR is refused, nothing stored. Signed again,
all is as before."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from tests.api.test_fhir_write import _diabetes, _token
from tests.portal_client import PortalClient
from tests.small_ics import Ics, file_says

from sharedcare.api.app import create_app
from sharedcare.errors import SharedcareError
from sharedcare.governance.access_log import details
from sharedcare.governance.agreements import FRAMEWORK_FILE, effective_agreements, set_agreement
from sharedcare.governance.audit import AuditAction
from sharedcare.governance.framework import Framework
from sharedcare.portal.pages import SESSION_COOKIE
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, Resource

SIGNED_OUT = "information-sharing agreement is suspended, so its staff cannot use the shared care record"


def _sign_in(ics: Ics, username: str, target: str = "/search") -> int:
    return int(ics.client.post("/login", data={"username": username, "password": "demo", "target": target},
                               follow_redirects=False).status_code)


def _set(db: Database, framework: Framework, org: str, status: str) -> None:
    with db.session() as s:
        set_agreement(s, framework, org, status, by="operator", reason="" if status == "signed" else "a breach")


def _events(db: Database, action: AuditAction, username: str) -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action.value,
                                                      AuditEntry.username == username).order_by(AuditEntry.seq)))


def test_a_clinician_signed_in_when_their_organisation_is_suspended_is_signed_out_and_cannot_sign_in(
        ics: Ics, db: Database, framework: Framework) -> None:
    assert _sign_in(ics, "dr.oconnor") == 303
    assert ics.client.get("/search").status_code == 200
    _set(db, framework, "RXR", "suspended")
    page = ics.client.get("/search")
    assert page.status_code == 401 and SIGNED_OUT in page.text and "RXR" in page.text
    assert SESSION_COOKIE not in ics.client.cookies  # the session cookie is cleared
    refused = _events(db, AuditAction.CREDENTIALS_REFUSED, "dr.oconnor")
    assert [e.outcome for e in refused] == ["deny"] and SIGNED_OUT in json.dumps(refused[0].event)
    again = ics.client.post("/login", data={"username": "dr.oconnor", "password": "demo"}, follow_redirects=False)
    assert again.status_code == 403 and "You cannot sign in" in again.text and SIGNED_OUT in again.text
    assert SESSION_COOKIE not in again.cookies
    assert [e.outcome for e in _events(db, AuditAction.LOGIN, "dr.oconnor")] == ["permit", "deny"]
    assert _sign_in(ics, "dr.patel") == 303  # another organisation's users are not touched
    assert ics.client.get("/search").status_code == 200
    _set(db, framework, "RXR", "signed")
    assert _sign_in(ics, "dr.oconnor") == 303 and ics.client.get("/search").status_code == 200


def test_an_ig_officer_of_a_suspended_organisation_loses_the_workspace_and_cannot_sign_it_again(
        ics: Ics, db: Database, framework: Framework) -> None:
    """The operator suspends QRD (the CLI can; the workspace refuses an officer her own): its IG officer no
    longer reads the audit log, the agreements or anyone's choices, and cannot sign QRD's agreement again
    from a session she still holds."""
    assert _sign_in(ics, "ig.morgan", "/ig") == 303
    assert ics.client.get("/ig/audit").status_code == 200
    _set(db, framework, "QRD", "suspended")
    session = ics.client.cookies[SESSION_COOKIE]
    for path in ("/ig", "/ig/audit", "/ig/agreements", "/ig/choices"):  # the session kept, as a copy of it would be
        ics.client.cookies.set(SESSION_COOKIE, session)
        page = ics.client.get(path)
        assert page.status_code == 401 and SIGNED_OUT in page.text, path
    ics.client.cookies.set(SESSION_COOKIE, session)
    signed = ics.client.post("/ig/agreements/QRD", data={"status": "signed"})
    assert signed.status_code == 401 and SIGNED_OUT in signed.text
    ics.client.cookies.clear()
    assert _sign_in(ics, "ig.morgan", "/ig") == 403  # refused at the door too
    with db.session() as s:
        assert effective_agreements(s, framework)["QRD"].status == "suspended"
    _set(db, framework, "QRD", "signed")
    assert _sign_in(ics, "ig.morgan", "/ig") == 303 and ics.client.get("/ig/agreements").status_code == 200


def test_a_system_of_a_suspended_organisation_writing_over_fhir_is_refused_and_nothing_is_stored(
        ics: Ics, db: Database, framework: Framework) -> None:
    """A token issued before the suspension is cut off by it (401); one minted during it (the operator's command
    line: no app is issued one, tests/api/test_smart.py) writes nothing either. Refused 403, audited, rather than
    held: the sender is told at once and keeps what it sent; an HL7 v2 feed, which has no token to refuse, is
    held in quarantine instead (tests/ingest/test_mllp.py)."""
    before_suspension = _token(ics, "dr.patel")
    _set(db, framework, "P81001", "suspended")
    with db.session() as s:
        before = s.scalar(select(func.count()).select_from(Resource))
    body = json.dumps(_diabetes(onsetDateTime="2001-01-01"))
    cut_off = ics.client.put("/fhir/Condition/gp-c1", headers=before_suspension, content=body)
    assert cut_off.status_code == 401 and "(P81001)" in cut_off.json()["issue"][0]["diagnostics"]
    refused = ics.client.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel"), content=body)
    assert refused.status_code == 403 and "P81001" in refused.json()["issue"][0]["diagnostics"]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Resource)) == before
        write = s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.RECORD_WRITE.value)).one()
    assert write.outcome == "deny" and "deny-write-agreement" in json.dumps(write.event)


def test_a_session_kept_through_a_suspension_is_ended_for_good_when_the_agreement_is_signed_again(
        ics: Ics, db: Database, framework: Framework) -> None:
    """A copy of the session cookie (a second browser) and a command-line token of the same user, both
    issued before the suspension, do not work again once the agreement is signed again: the person is told
    when and why they were signed out, the suspension's audit entry names whose sessions it ended, and a
    fresh sign-in works. Another organisation's users keep theirs."""
    assert _sign_in(ics, "dr.oconnor") == 303
    kept = ics.client.cookies[SESSION_COOKIE]
    bearer = ics.token("dr.oconnor")
    other = ics.token("dr.patel")
    _set(db, framework, "RXR", "suspended")
    _set(db, framework, "RXR", "signed")
    assert ics.client.cookies[SESSION_COOKIE] == kept  # this browser never came back during the suspension
    page = ics.client.get("/search")
    assert page.status_code == 401 and "You were signed out on" in page.text
    assert "RXR" in page.text and "agreement was suspended" in page.text and 'name="password"' in page.text
    assert SESSION_COOKIE not in ics.client.cookies
    read = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=bearer)
    assert read.status_code == 401 and "agreement was suspended" in read.json()["issue"][0]["diagnostics"]
    opened = ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}, headers=other)
    assert opened.status_code == 201 and ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=other).status_code == 200
    suspension = _events(db, AuditAction.AGREEMENT_SET, "operator")[0]  # says whose sessions it ended
    assert details(suspension)["sessions_ended"] == "dr.oconnor"
    assert _sign_in(ics, "dr.oconnor") == 303 and ics.client.get("/search").status_code == 200


def test_setting_an_agreement_back_to_draft_is_a_stop_too(ics: Ics, db: Database, framework: Framework) -> None:
    """Draft is not signed: set back to draft (and then signed), an organisation's sessions and tokens from
    before are ended for good, as a suspension ends them, and the person is told in words what happened;
    the change, like a suspension, needs a reason."""
    assert _sign_in(ics, "dr.oconnor") == 303
    bearer = ics.token("dr.oconnor")
    with db.session() as s, pytest.raises(SharedcareError, match="give a reason"):
        set_agreement(s, framework, "RXR", "draft", by="operator", reason="")
    _set(db, framework, "RXR", "draft")
    _set(db, framework, "RXR", "signed")
    page = ics.client.get("/search")
    assert page.status_code == 401 and "agreement was set back to draft (no longer signed)" in page.text
    read = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=bearer)
    assert read.status_code == 401 and "set back to draft" in read.json()["issue"][0]["diagnostics"]
    assert details(_events(db, AuditAction.AGREEMENT_SET, "operator")[0])["sessions_ended"] == "dr.oconnor"
    assert _sign_in(ics, "dr.oconnor") == 303 and ics.client.get("/search").status_code == 200


def test_a_suspension_written_in_the_framework_file_ends_sessions_and_tokens_for_good(
        ics: Ics, db: Database, framework: Framework) -> None:
    """The operator suspends RXR by editing the framework file and restarting the server, then signs it again
    the same way: a session and a token of its user from before the suspension stay refused, as after
    `agreements set`, and the person is told why; both edits are audited, by the framework file. Another
    organisation's users keep theirs."""
    assert _sign_in(ics, "dr.oconnor") == 303
    kept, bearer, other = ics.client.cookies[SESSION_COOKIE], ics.token("dr.oconnor"), ics.token("dr.patel")
    with ics.restarted(file_says(framework, "RXR", "suspended")) as suspended:
        read = suspended.get(f"/fhir/Patient/{ics.okafor}", headers=bearer)
        assert read.status_code == 401 and "(RXR)" in read.json()["issue"][0]["diagnostics"]
    with ics.restarted(framework) as signed_again:
        signed_again.cookies.set(SESSION_COOKIE, kept)
        page = signed_again.get("/search")
        assert page.status_code == 401 and "agreement was suspended" in page.text and "RXR" in page.text
        read = signed_again.get(f"/fhir/Patient/{ics.okafor}", headers=bearer)
        assert read.status_code == 401 and "agreement was suspended" in read.json()["issue"][0]["diagnostics"]
        opened = signed_again.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}, headers=other)
        assert opened.status_code == 201
        assert signed_again.get(f"/fhir/Patient/{ics.okafor}", headers=other).status_code == 200
        fresh = signed_again.post("/login", data={"username": "dr.oconnor", "password": "demo", "target": "/search"},
                                  follow_redirects=False)
        assert fresh.status_code == 303 and signed_again.get("/search").status_code == 200
    changes = [details(e) for e in _events(db, AuditAction.AGREEMENT_SET, FRAMEWORK_FILE)]
    assert [(c["organisation"], c["status"]) for c in changes] == [("RXR", "suspended"), ("RXR", "signed")]
    assert changes[0]["sessions_ended"] == "dr.oconnor" and "framework file" in changes[0]["reason"]


def _loaded_only(ics: Ics, framework: Framework) -> PortalClient:
    """An app built on this framework without a start's recording of the file (a process that only loads
    it: a server worker, an export, an ingest)."""
    state = ics.client.app.state  # type: ignore[attr-defined]
    return PortalClient(create_app(state.settings, framework=framework, database=state.database))


def _sources_read(ics: Ics, app: PortalClient) -> set[str]:
    """The organisations whose records a GP reads in Mr Okafor's $everything (by `meta.source`)."""
    headers = ics.token("dr.patel")
    assert app.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}, headers=headers).status_code == 201
    everything = app.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers)
    assert everything.status_code == 200, everything.text
    return {(entry["resource"].get("meta") or {}).get("source", "").split("|")[-1].split("#")[0]
            for entry in everything.json()["entry"]} - {""}


def test_a_file_edited_back_to_signed_lifts_nothing_until_a_start_records_it(
        ics: Ics, db: Database, framework: Framework) -> None:
    """RXR suspended in the framework file and the server restarted; then the file is edited back to signed.
    A process that only loads the file must still refuse RXR's staff: the signing counts once a start of the
    server records it, audited, and not before. A stop written in the file acts at once, before a start."""
    suspended = file_says(framework, "RXR", "suspended")
    with ics.restarted(suspended):
        pass
    refused = _loaded_only(ics, framework).post("/login", data={"username": "dr.oconnor", "password": "demo",
                                                                "target": "/search"}, follow_redirects=False)
    assert refused.status_code == 403 and "You cannot sign in" in refused.text and "suspended" in refused.text
    assert "RXR" not in _sources_read(ics, _loaded_only(ics, framework))  # RXR's records still hidden
    with db.session() as s:
        assert effective_agreements(s, framework)["RXR"].status == "suspended"
        assert effective_agreements(s, file_says(framework, "RXR", "ended"))["RXR"].status == "ended"
    with ics.restarted(framework) as signed_again:
        assert "RXR" in _sources_read(ics, signed_again)
    with db.session() as s:
        assert effective_agreements(s, framework)["RXR"].status == "signed"
        assert effective_agreements(s, suspended)["RXR"].status == "suspended"


def test_a_stop_written_in_the_file_acts_at_once_after_an_operator_signed_again(
        ics: Ics, db: Database, framework: Framework) -> None:
    """An operator suspended RXR and signed it again with `agreements set`; then RXR's agreement is ended in
    the framework file. Every process that loads the file refuses RXR's staff at once, before any start
    records it: the latest change was the operator's, but the file's stop is newer than what it last said."""
    with ics.restarted(framework):
        pass
    _set(db, framework, "RXR", "suspended")
    _set(db, framework, "RXR", "signed")
    ended = file_says(framework, "RXR", "ended")
    assert _sign_in(ics, "dr.patel") == 303
    refused = _loaded_only(ics, ended).post("/login", data={"username": "dr.oconnor", "password": "demo",
                                                            "target": "/search"}, follow_redirects=False)
    assert refused.status_code == 403 and "ended" in refused.text
    with db.session() as s:
        assert effective_agreements(s, ended)["RXR"].status == "ended"
        assert effective_agreements(s, framework)["RXR"].status == "signed"


def test_a_suspension_written_in_the_file_after_an_operator_signed_again_takes_effect(
        ics: Ics, db: Database, framework: Framework) -> None:
    """The most recent deliberate change decides: RXR suspended and signed again by `agreements set`, then
    suspended in the framework file and the server restarted: its staff cannot sign in, as the file says."""
    with ics.restarted(framework):
        pass
    _set(db, framework, "RXR", "suspended")
    _set(db, framework, "RXR", "signed")
    suspended = file_says(framework, "RXR", "suspended")
    with ics.restarted(suspended) as restarted:
        assert _sign_in(ics, "dr.patel") == 303  # another organisation's staff are not touched
        refused = restarted.post("/login", data={"username": "dr.oconnor", "password": "demo", "target": "/search"},
                                 follow_redirects=False)
        assert refused.status_code == 403 and "You cannot sign in" in refused.text and "suspended" in refused.text
    with db.session() as s:
        assert effective_agreements(s, suspended)["RXR"].status == "suspended"


def test_a_stale_suspension_in_the_file_at_the_first_start_does_not_undo_an_operator_signing(
        ics: Ics, db: Database, framework: Framework) -> None:
    """The file still says RXR is suspended, but an operator signed it by `agreements set` before the server
    first started: the signing stands, and nothing of RXR's is ended (its token keeps working, its staff
    can sign in); no stop is audited."""
    stale = file_says(framework, "RXR", "suspended")
    _set(db, stale, "RXR", "signed")
    bearer = ics.token("dr.oconnor")
    with ics.restarted(stale) as started:
        opened = started.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}, headers=bearer)
        assert opened.status_code == 201, opened.text
        assert started.get(f"/fhir/Patient/{ics.okafor}", headers=bearer).status_code == 200
        signed_in = started.post("/login", data={"username": "dr.oconnor", "password": "demo", "target": "/search"},
                                 follow_redirects=False)
        assert signed_in.status_code == 303 and started.get("/search").status_code == 200
    assert _events(db, AuditAction.AGREEMENT_SET, FRAMEWORK_FILE) == []
    with db.session() as s:
        assert effective_agreements(s, stale)["RXR"].status == "signed"
