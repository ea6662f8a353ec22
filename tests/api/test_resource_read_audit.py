"""Reading one resource is audited as a read of that resource, naming it (IHE BALP), not as a read of the
whole record; refusals are audited the same way; the citizen's access log and the IG officer's audit
search say what was looked at."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from tests.fhir_bundles import entries
from tests.portal.test_patient_portal import _sign_in as citizen_sign_in
from tests.portal.test_patient_portal import events_listed, visit_rows
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

SCT = "http://snomed.info/sct"


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


def _events_of(ics: Ics, request_id: str) -> list[AuditEntry]:
    with _db(ics).session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.event["source"]["site"].as_string() == request_id)
                              .order_by(AuditEntry.seq)))


def _condition_id(ics: Ics, headers: dict[str, str], code: str) -> str:
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition", headers=headers).json()
    return next(e["resource"]["id"] for e in entries(bundle)
                if e["resource"]["code"]["coding"][0]["code"] == code)


def _entities(event: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(e["what"]["reference"], (e.get("role") or {}).get("code")) for e in event["entity"] if "what" in e]


def _detail(event: dict[str, Any], name: str) -> str | None:
    decision = next(e for e in event["entity"] if e.get("name") == "decision")
    return next((d["valueString"] for d in decision["detail"] if d["type"] == name), None)


def test_a_resource_read_is_one_event_naming_that_resource_and_the_patient(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    diabetes = _condition_id(ics, headers, "44054006")
    response = ics.client.get(f"/fhir/Condition/{diabetes}", headers={**headers, "X-Request-ID": "read-1"})
    assert response.status_code == 200 and response.json()["id"] == diabetes
    (event,) = _events_of(ics, "read-1")  # one event, and not a whole-record read
    assert (event.action, event.outcome, event.patient_id) == ("clinical:resource:read", "permit", ics.okafor)
    assert _entities(event.event) == [(f"Patient/{ics.okafor}", "1"), (f"Condition/{diabetes}", "4")]
    assert _detail(event.event, "basis") == "explicit-consent"


def test_a_refused_resource_read_is_audited_naming_what_was_asked_for(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    diabetes = _condition_id(ics, headers, "44054006")
    refused = ics.client.get(f"/fhir/Condition/{diabetes}", headers={**ics.token("nurse.lee"), "X-Request-ID": "r-2"})
    assert refused.status_code == 404  # no basis: looks like a missing resource
    (event,) = _events_of(ics, "r-2")
    assert (event.action, event.outcome, event.username) == ("clinical:resource:read", "deny", "nurse.lee")
    assert (f"Condition/{diabetes}", "4") in _entities(event.event)
    assert _detail(event.event, "rule") == "deny-no-basis"


def test_a_resource_the_role_may_not_see_is_refused_and_audited_with_the_rule(ics: Ics) -> None:
    gp = ics.open_record("dr.patel")
    sexual_health = _condition_id(ics, gp, "105629000")  # the GP's own record, shown to the GP
    paramedic = ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    response = ics.client.get(f"/fhir/Condition/{sexual_health}", headers={**paramedic, "X-Request-ID": "r-3"})
    assert response.status_code == 404
    (event,) = _events_of(ics, "r-3")
    assert event.outcome == "deny" and _detail(event.event, "rule") == "withheld-tier"
    assert (f"Condition/{sexual_health}", "4") in _entities(event.event)


def test_a_patient_read_is_a_read_of_the_patient_resource_alone(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    response = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers={**headers, "X-Request-ID": "p-1"})
    assert response.status_code == 200 and response.json()["name"][0]["family"] == "Okafor"
    (event,) = _events_of(ics, "p-1")
    assert event.action == "clinical:resource:read"
    assert [ref for ref, role in _entities(event.event) if role != "1"] == [f"Patient/{ics.okafor}"]
    no_basis = ics.client.get(f"/fhir/Patient/{ics.okafor}", headers={**ics.token("nurse.lee"), "X-Request-ID": "p-2"})
    missing = ics.client.get("/fhir/Patient/00000000-0000-0000-0000-000000000000", headers=ics.token("nurse.lee"))
    assert no_basis.status_code == missing.status_code == 404  # refused looks like missing (TRUST AC3)
    assert no_basis.json()["resourceType"] == missing.json()["resourceType"] == "OperationOutcome"
    assert no_basis.json()["issue"][0]["code"] == missing.json()["issue"][0]["code"] == "not-found"
    assert "record why" not in no_basis.text
    (refusal,) = _events_of(ics, "p-2")  # and is still audited, with the rule
    assert (refusal.action, refusal.outcome, refusal.username) == ("clinical:resource:read", "deny", "nurse.lee")
    assert _detail(refusal.event, "rule") == "deny-no-basis"
    assert [ref for ref, role in _entities(refusal.event) if role != "1"] == [f"Patient/{ics.okafor}"]


def test_the_citizen_sees_which_kind_of_item_was_looked_at(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    diabetes = _condition_id(ics, headers, "44054006")
    ics.client.get(f"/fhir/Condition/{diabetes}", headers=headers)
    ics.client.get(f"/fhir/Condition/{diabetes}", headers=ics.token("nurse.lee"))  # refused
    citizen_sign_in(ics.client)
    page = ics.client.get("/patient/accesses").text
    reads = [r for r in visit_rows(page) if "viewed a problem or diagnosis in your record" in r]
    assert len(reads) == 2  # two people: two visits
    assert "Dr Amara Patel" in reads[1] and "Refused" not in reads[1]  # newest first: the refusal is on top
    assert "Refused" in reads[0]
    assert diabetes not in page  # ids mean nothing to a citizen


def test_the_ig_officer_sees_the_resource_named_and_whether_it_was_shown(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    diabetes = _condition_id(ics, headers, "44054006")
    ics.client.get(f"/fhir/Condition/{diabetes}", headers=headers)
    ics.client.get(f"/fhir/Condition/{diabetes}", headers=ics.token("nurse.lee"))
    done = ics.client.post("/login", data={"username": "ig.morgan", "password": "demo", "target": "/ig"},
                           follow_redirects=False)
    assert done.status_code == 303
    rows = ics.client.post("/ig/audit", data={"patient": ics.okafor}).text.split('<tr class="nhsuk-table__row">')
    reads = [r for r in rows if "clinical:resource:read" in r]
    assert len(reads) == 2 and all(f"Condition/{diabetes}" in r for r in reads)
    refused, allowed = reads  # newest first
    assert "Refused" in refused and "What was seen" not in refused
    assert "Allowed" in allowed and "What was seen: 1 item: problems and diagnoses 1" in allowed
    assert all("Opened one item of the record: a problem or diagnosis" in r for r in reads)


def test_the_ig_officer_sees_a_history_counted_by_its_versions_and_naming_the_resource(ics: Ics) -> None:
    """A released history names the resource asked for as a read does (so that "who has looked" can hold it
    back, review of 2026-12-07), and the versions it released; what was seen counts the versions alone."""
    headers = ics.open_record("dr.patel")
    diabetes = _condition_id(ics, headers, "44054006")
    assert ics.client.get(f"/fhir/Condition/{diabetes}/_history", headers=headers).json()["total"] == 1
    done = ics.client.post("/login", data={"username": "ig.morgan", "password": "demo", "target": "/ig"},
                           follow_redirects=False)
    assert done.status_code == 303
    rows = ics.client.post("/ig/audit", data={"patient": ics.okafor}).text.split('<tr class="nhsuk-table__row">')
    (history,) = [r for r in rows if "clinical:resource:history" in r]
    assert f"Condition/{diabetes}" in history and "Allowed" in history
    assert "What was seen: 1 item: problems and diagnoses 1" in history


def _detail(event: dict[str, Any], key: str) -> str | None:
    decision = next(e for e in event["entity"] if e.get("name") == "decision")
    return next((d["valueString"] for d in decision["detail"] if d["type"] == key), None)


def _looks_missing_as_objected(ics: Ics, headers: dict[str, str], request: str) -> None:
    """`$everything` and a search of Okafor answer as for an id that is stored nowhere, saying nothing of a
    basis or an objection, and each is audited as the objection's refusal."""
    missing = "00000000-0000-0000-0000-000000000000"
    for n, url in enumerate(("/fhir/Patient/{}/$everything", "/fhir/Condition?patient={}")):
        absent = ics.client.get(url.format(missing), headers=headers)
        refused = ics.client.get(url.format(ics.okafor), headers={**headers, "X-Request-ID": f"{request}-{n}"})
        assert (absent.status_code, refused.status_code) == (404, 404), (url, refused.text)
        assert "basis" not in refused.text and "objected" not in refused.text
        assert refused.json()["issue"][0]["diagnostics"] == absent.json()["issue"][0]["diagnostics"].replace(
            missing, ics.okafor)
        events = [(e.outcome, _detail(e.event, "rule"), e.patient_id) for e in _events_of(ics, f"{request}-{n}")]
        assert events == [("deny", "deny-objection-org", ics.okafor)]


def test_everything_and_search_of_a_patient_who_objected_look_like_a_missing_one_and_are_audited(ics: Ics) -> None:
    """An app must not confirm by id that a person is stored, nor learn that they objected (TRUST AC3)."""
    from sharedcare.governance.consent import set_choice

    headers = ics.open_record("dr.patel")
    with _db(ics).session() as session:
        set_choice(session, OKAFOR_NHS, by="test", object_org="P81001")
        session.commit()
    _looks_missing_as_objected(ics, headers, "refused")


def test_a_caller_without_a_basis_is_not_told_to_record_one_for_a_patient_who_objected_to_them(ics: Ics) -> None:
    """Without a basis, `$everything` answers 403 "record why you are opening this record": that tells a
    clinician what to do, and tells them the person is stored. For a patient who objected to their
    organisation (whom patient search does not find, and whose basis would be refused as missing) it must
    look missing instead, or the 403 then the basis's 404 tell the caller both that the person is stored and
    that they objected (TRUST AC3)."""
    from sharedcare.governance.consent import set_choice

    headers = ics.token("dr.patel")  # no basis recorded
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).status_code == 403
    with _db(ics).session() as session:
        set_choice(session, OKAFOR_NHS, by="test", object_org="P81001")
        session.commit()
    _looks_missing_as_objected(ics, headers, "unbased")
    others = ics.token("para.evans")  # another organisation, no basis either: still told what to do
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=others).status_code == 403


def test_recording_a_basis_or_opening_the_page_of_a_patient_who_objected_looks_like_a_missing_one(ics: Ics) -> None:
    """Recording why you need a record, over the API or the portal, must not tell you either that the
    person is stored or that they objected to your organisation (TRUST AC3); it used to answer 403 "the
    patient has objected to your organisation seeing their record". Still audited as the refusal it is."""
    from sharedcare.governance.consent import set_choice

    with _db(ics).session() as session:
        set_choice(session, OKAFOR_NHS, by="test", object_org="P81001")
        session.commit()
    missing = "00000000-0000-0000-0000-000000000000"
    headers = ics.token("dr.patel")
    for n, person in enumerate((missing, ics.okafor)):
        answer = ics.client.post(f"/api/access/{person}", json={"basis": "explicit-consent"},
                                 headers={**headers, "X-Request-ID": f"basis-{n}"})
        assert answer.status_code == 404 and "objected" not in answer.text
        assert answer.json()["issue"][0]["diagnostics"].startswith(f"no patient {person}")
    events = [(e.outcome, _detail(e.event, "rule"), e.patient_id) for e in _events_of(ics, "basis-1")]
    assert events == [("deny", "deny-objection-org", ics.okafor)]

    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    for person in (missing, ics.okafor):
        page = ics.client.get(f"/record/{person}")
        assert page.status_code == 404 and "objected" not in page.text
        basis = ics.client.post(f"/record/{person}/basis", data={"basis": "explicit-consent"})
        assert basis.status_code == 404 and "objected" not in basis.text


MADE_UP = "00000000-0000-0000-0000-000000000000"


def _log_size(ics: Ics) -> int:
    """The audit log's size as anyone can read it, with no token (`/audit/checkpoint`)."""
    return int(ics.client.get("/audit/checkpoint").json()["seq"])


def _probe(ics: Ics, method: str, url: str, headers: dict[str, str], request: str) -> tuple[int, int, list[str]]:
    """What a caller sees of one request: its status, how much the public log grew, and (for the test) the
    actions of the entries it wrote."""
    before = _log_size(ics)
    body = {"json": {"basis": "explicit-consent", "reason": "seen in clinic"}} if method == "POST" else {}
    status = ics.client.request(method, url, headers={**headers, "X-Request-ID": request}, **body).status_code
    return status, _log_size(ics) - before, [e.action for e in _events_of(ics, request)]


def test_a_made_up_id_and_a_refused_one_grow_the_public_log_alike(ics: Ics) -> None:
    """Both answer 404 (TRUST AC3), and the log's size is public: were only the refusal written, a caller
    could tell "stored, but refused" (here: the patient objected to the caller's organisation) from
    "missing" by the size before and after (third security review, F4). Each writes one entry of the same
    action; the made-up id's is a refusal with rule `not-found`, naming what was asked for and no patient."""
    from sharedcare.governance.consent import set_choice

    diabetes = _condition_id(ics, ics.open_record("dr.patel"), "44054006")
    unbased = ics.token("nurse.lee")  # no basis: a read by id of a stored Condition is refused as missing
    assert (_probe(ics, "GET", f"/fhir/Condition/{MADE_UP}", unbased, "nb-0")
            == _probe(ics, "GET", f"/fhir/Condition/{diabetes}", unbased, "nb-1")
            == (404, 1, ["clinical:resource:read"]))
    with _db(ics).session() as session:
        set_choice(session, OKAFOR_NHS, by="test", object_org="P81001")
        session.commit()
    headers = ics.token("dr.patel")
    for n, (method, url, stored, action) in enumerate((
            ("GET", "/fhir/Patient/{}/$everything", ics.okafor, "clinical:record:read"),
            ("GET", "/fhir/Condition?patient={}", ics.okafor, "clinical:record:read"),
            ("GET", "/fhir/Patient/{}", ics.okafor, "clinical:resource:read"),
            ("GET", "/fhir/Condition/{}", diabetes, "clinical:resource:read"),
            ("GET", "/fhir/Condition/{}/_history", diabetes, "clinical:resource:history"),
            ("POST", "/api/access/{}", ics.okafor, "access:basis:record"))):
        made_up = _probe(ics, method, url.format(MADE_UP), headers, f"probe-{n}-made-up")
        refused = _probe(ics, method, url.format(stored), headers, f"probe-{n}-refused")
        assert made_up == refused == (404, 1, [action]), url
        (entry,) = _events_of(ics, f"probe-{n}-made-up")
        assert (entry.outcome, _detail(entry.event, "rule"), entry.patient_id) == ("deny", "not-found", None)
        asked = "Condition" if stored == diabetes else "Patient"
        assert _entities(entry.event) == [(f"{asked}/{MADE_UP}", "4")]
    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})  # the portal's record page
    assert (_probe(ics, "GET", f"/record/{MADE_UP}", {}, "page-made-up")
            == _probe(ics, "GET", f"/record/{ics.okafor}", {}, "page-refused") == (404, 1, ["clinical:record:read"]))


def test_probes_of_made_up_ids_are_on_record_for_the_ig_officer_and_in_no_ones_who_looked(ics: Ics) -> None:
    """A citizen's "who looked" lists looks at their record only; a probe of ids stored nowhere is about no
    one, so it is not there, but the IG officer's search by user shows each one, refused (TRUST AU3)."""
    headers = ics.open_record("dr.patel")
    citizen_sign_in(ics.client)
    before = events_listed(ics.client.get("/patient/accesses").text)
    for url in ("/fhir/Patient/{}/$everything", "/fhir/Patient/{}", "/fhir/Condition/{}"):
        assert ics.client.get(url.format(MADE_UP), headers=headers).status_code == 404
    assert events_listed(ics.client.get("/patient/accesses").text) == before > 0
    done = ics.client.post("/login", data={"username": "ig.morgan", "password": "demo", "target": "/ig"},
                           follow_redirects=False)
    assert done.status_code == 303
    rows = ics.client.post("/ig/audit", data={"user": "dr.patel"}).text.split('<tr class="nhsuk-table__row">')
    probes = [r for r in rows if MADE_UP in r]
    assert len(probes) == 3 and all("Refused" in r for r in probes)
    patient_rows = ics.client.post("/ig/audit", data={"patient": ics.okafor}).text
    assert MADE_UP not in patient_rows
