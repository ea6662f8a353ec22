"""When something breaks, the API fails closed and says nothing it should not (TRUST AU4, DP3)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from tests.small_ics import Ics

from sharedcare.governance import gateway


def test_if_the_audit_cannot_be_written_the_read_fails_and_no_patient_data_leaves(
        ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    headers = ics.open_record("dr.patel")

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("audit store unavailable: disk full at /var/lib/sharedcare")

    monkeypatch.setattr(gateway, "record_audit", broken)
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
