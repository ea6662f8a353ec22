"""When something breaks, the API fails closed and says nothing it should not (TRUST AU4, DP3)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tests.small_ics import Ics

from sharedcare.governance import gateway


@pytest.mark.parametrize("fails", ["append", "commit"])
def test_if_the_audit_cannot_be_written_the_read_fails_and_no_patient_data_leaves(
        ics: Ics, monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    headers = ics.open_record("dr.patel")

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("audit store unavailable: disk full at /var/lib/sharedcare")

    if fails == "append":
        monkeypatch.setattr(gateway, "record_audit", broken)
    else:  # the event appended, its transaction not committed: no answer goes out
        monkeypatch.setattr(Session, "commit", broken)
    client = TestClient(ics.client.app, raise_server_exceptions=False)
    response = client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers)
    assert response.status_code == 500 and response.headers["cache-control"] == "no-store"
    body = response.text
    assert "Okafor" not in body and "Metformin" not in body and "9434765919" not in body
    assert "disk full" not in body and "Traceback" not in body  # no internals either
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    reference = response.headers["x-request-id"]
    assert reference in outcome["issue"][0]["diagnostics"]


def test_every_response_says_do_not_store(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    for url in ("/", "/fhir/metadata", f"/fhir/Patient/{ics.okafor}/$everything", "/fhir/Nope/1"):
        assert ics.client.get(url, headers=headers).headers["cache-control"] == "no-store"


@pytest.mark.parametrize("where", ["reason", "path"])
def test_a_nul_character_in_what_a_user_sends_is_a_400_naming_it_not_a_server_error(ics: Ics, where: str) -> None:
    """PostgreSQL refuses NUL in text; the request is refused before anything is stored, in words."""
    client = TestClient(ics.client.app, raise_server_exceptions=False)
    headers = ics.token("dr.patel")
    patient = f"{ics.okafor}%00" if where == "path" else ics.okafor
    reason = "Reviewing\x00 before the clinic appointment" if where == "reason" else "Reviewing before clinic"
    response = client.post(f"/api/access/{patient}", json={"basis": "implied-consent", "reason": reason},
                           headers=headers)
    assert response.status_code == 400, response.text
    assert "NUL" in response.json()["issue"][0]["diagnostics"]


def test_a_nul_character_in_a_portal_form_is_a_400_page(ics: Ics) -> None:
    client = TestClient(ics.client.app, raise_server_exceptions=False)
    response = client.post("/login", data={"username": "dr.\x00patel", "password": "x"})
    assert response.status_code == 400 and "NUL character" in response.text
    assert response.headers["content-type"].startswith("text/html")


def test_what_the_framework_refuses_itself_is_answered_in_the_services_own_shapes(ics: Ics) -> None:
    """An unknown path or method, or a body too deeply nested to parse, is an OperationOutcome on the API
    (TRUST DP3) and a page on the portals, never FastAPI's `{"detail": ...}`."""
    client = TestClient(ics.client.app, raise_server_exceptions=False)
    deep = client.post("/api/access/x", content="[" * 60_000, headers={"Content-Type": "application/json"})
    unknown = client.get("/fhir/Patient/x/y/z", headers=ics.token("dr.patel"))
    method = client.delete("/api/access/x")
    for response, status in ((deep, 400), (unknown, 404), (method, 405)):
        assert response.status_code == status, response.text
        assert response.json()["resourceType"] == "OperationOutcome" and "detail" not in response.json()
    assert "POST" in method.headers["allow"]
    page = client.get("/no-such-page")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")


def test_a_server_error_carries_the_security_headers_every_other_answer_does(
        ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unhandled error is answered outside the middleware that sets them (sixth security review,
    2026-12-06): its page or OperationOutcome went out without nosniff, no-referrer and DENY framing."""
    headers = ics.open_record("dr.patel")
    ok = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers)

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("record store unavailable")

    monkeypatch.setattr(gateway.GovernedRecords, "everything", broken)
    client = TestClient(ics.client.app, raise_server_exceptions=False)
    for url in (f"/fhir/Patient/{ics.okafor}/$everything", f"/record/{ics.okafor}"):
        failed = client.get(url, headers=headers)
        assert failed.status_code == 500, failed.text
        for name in ("x-content-type-options", "referrer-policy", "x-frame-options", "cache-control"):
            assert failed.headers.get(name) == ok.headers[name], (url, name)
