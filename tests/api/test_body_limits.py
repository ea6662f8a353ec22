"""A request body over its route's limit is refused 413 after reading no more than the limit (by its
Content-Length, before reading any of it), with or without credentials: one large POST cannot hold a
server process's memory. A FHIR query string over its limit is refused 414 at the same door: it would go
whole into the audit log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from tests.small_ics import Ics

from sharedcare.api import bodies
from sharedcare.api.auth import mint_token
from sharedcare.config import load_settings
from sharedcare.store.models import AuditEntry

CHUNK = 1024 * 1024


def _send(app: FastAPI, path: str, content_type: str, megabytes: int,
          headers: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[int, int, dict[str, str], bytes]:
    """POST `megabytes` of body in 1 MB chunks with no Content-Length (as a chunked upload arrives); the
    bytes the app pulled, and its answer's status, headers and body."""
    pulled = 0
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled < megabytes * CHUNK:
            pulled += CHUNK
            return {"type": "http.request", "body": b"a" * CHUNK, "more_body": pulled < megabytes * CHUNK}
        await asyncio.sleep(3600)  # the sender waits for the answer
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            answer["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", content_type.encode()), (b"host", b"testserver"), *headers],
             "client": ("203.0.113.9", 5000), "server": ("testserver", 80)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 60))
    return pulled, answer["status"], answer["headers"], answer["body"]


@pytest.mark.parametrize(("path", "content_type", "page"), [
    ("/login", "application/x-www-form-urlencoded", True),
    ("/patient/sign-in", "application/x-www-form-urlencoded", True),
    ("/oauth/token", "application/x-www-form-urlencoded", True),  # a page, as its other errors outside OAuth
    ("/api/access/x", "application/json", False),
    ("/api/access/x", "text/plain", False),  # not a form or JSON: still not read past the limit
    ("/nowhere", "multipart/form-data; boundary=x", True)])
def test_an_unauthenticated_body_stops_being_read_at_64_kb(ics: Ics, path: str, content_type: str,
                                                             page: bool) -> None:
    pulled, status, headers, body = _send(ics.client.app, path, content_type, 200)  # type: ignore[arg-type]
    assert status == 413 and pulled <= bodies.SMALL_BODY_MAX + CHUNK
    assert headers["connection"] == "close"
    if page:
        assert headers["content-type"].startswith("text/html") and b"larger than 64 KB" in body
    else:
        outcome = json.loads(body)
        assert outcome["resourceType"] == "OperationOutcome"
        assert "larger than 64 KB" in outcome["issue"][0]["diagnostics"]


def test_a_fhir_body_stops_being_read_at_the_fhir_write_limit(ics: Ics) -> None:
    app = ics.client.app
    for content_type in ("application/fhir+json", "application/json"):  # a FHIR write's body, either type,
        pulled, status, _, _ = _send(app, "/fhir/Consent", content_type, 200)  # type: ignore[arg-type]
        assert status == 401 and pulled <= CHUNK  # is read by its route, after the credentials
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    writer = f"Bearer {mint_token(load_settings(), fw, 'dr.patel', 'user/*.read user/*.write')}"
    pulled, status, _, body = _send(ics.client.app, "/fhir", "application/fhir+json", 200,  # type: ignore[arg-type]
                                    ((b"authorization", writer.encode()),))
    assert status == 413 and pulled <= bodies.FHIR_WRITE_MAX + CHUNK
    diagnostics = json.loads(body)["issue"][0]["diagnostics"]
    assert "larger than 32 MB" in diagnostics and "send it as a file feed" in diagnostics


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "APPLICATION/X-WWW-FORM-URLENCODED",
                                          "text/plain"])
def test_a_patient_search_form_stops_being_read_at_64_kb_whatever_its_type_is_written(ics: Ics,
                                                                                   content_type: str) -> None:
    """The search route parses its form itself (Starlette reads a form type in any case): its body is held
    to the small limit before the route runs, not to a FHIR write's."""
    fw = ics.client.app.state.framework  # type: ignore[attr-defined]
    reader = f"Bearer {mint_token(load_settings(), fw, 'dr.patel')}"
    pulled, status, _, _ = _send(ics.client.app, "/fhir/Patient/_search", content_type, 200,  # type: ignore[arg-type]
                                 ((b"authorization", reader.encode()),))
    assert status == 413 and pulled <= bodies.SMALL_BODY_MAX + CHUNK


def test_a_nul_in_a_json_body_is_refused_whatever_case_its_type_is_written_in(ics: Ics) -> None:
    for content_type in ("application/json", "Application/JSON"):
        response = ics.client.post(f"/api/access/{ics.okafor}", content=b'{"basis": "explicit\\u0000"}',
                                   headers={"content-type": content_type})
        assert response.status_code == 400 and "NUL" in response.json()["issue"][0]["diagnostics"]


def test_a_declared_length_over_the_limit_is_refused_unread(ics: Ics) -> None:
    too_long = str(bodies.SMALL_BODY_MAX + 1).encode()
    pulled, status, _, _ = _send(ics.client.app, "/login", "application/x-www-form-urlencoded", 1,  # type: ignore[arg-type]
                                 ((b"content-length", too_long),))
    assert (status, pulled) == (413, 0)
    pulled, status, _, _ = _send(ics.client.app, "/fhir", "application/fhir+json", 1,  # type: ignore[arg-type]
                                 ((b"content-length", str(bodies.FHIR_WRITE_MAX + 1).encode()),))
    assert (status, pulled) == (413, 0)


def test_a_form_within_the_limit_is_still_answered(ics: Ics) -> None:
    response = ics.client.post("/login", data={"username": "nobody", "password": "x" * 60_000})
    assert response.status_code == 401  # read and judged, not refused for its size


def test_a_fhir_query_string_over_8_kb_is_refused_414_before_any_read_is_audited(ics: Ics) -> None:
    """A search's query is audited whole with every read it makes, allowed or refused: without a limit any
    token holder could append entries of any size to the permanent audit log."""
    headers = ics.open_record("dr.patel")

    def audited() -> int:
        with ics.database.session() as session:
            return int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)

    before = audited()
    for person in (ics.okafor, ics.stranger):  # her record open, or no basis (a refusal is audited too)
        response = ics.client.get(f"/fhir/Condition?patient={person}&code={'9' * 9_000}", headers=headers)
        assert response.status_code == 414 and response.headers["content-type"].startswith("application/fhir+json")
        assert "longer than 8 KB" in response.json()["issue"][0]["diagnostics"]
    everything = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type={'Condition,' * 1_000}",
                                headers=headers)
    assert everything.status_code == 414
    assert audited() == before
    within = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&code={'9' * 7_000}", headers=headers)
    assert within.status_code == 200 and audited() == before + 1  # read, and audited, as before


def test_a_patient_search_criterion_longer_than_anything_stored_is_refused_before_it_is_audited(ics: Ics) -> None:
    """A form body is not a query string: "Okafor" padded with 60,000 spaces folded to his search key, found
    him and wrote an 81 kB audit entry. A criterion longer than anything stored is refused, naming it."""
    headers = ics.token("dr.patel")

    def audited() -> int:
        with ics.database.session() as session:
            return int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)

    ics.client.post("/login", data={"username": "dr.patel", "password": "demo"})  # (its sign-in is audited)
    before = audited()
    padded = {"family": "Okafor" + " " * 60_000, "birthdate": "1945-03-02"}
    refused = ics.client.post("/fhir/Patient/_search", data=padded, headers=headers)
    assert refused.status_code == 400 and refused.json()["issue"][0]["diagnostics"].startswith(
        "family: at most 100 characters")
    page = ics.client.post("/search", data={"family": padded["family"], "birth_date": "1945-03-02"})
    assert page.status_code == 400 and "family: at most 100 characters" in page.text and "OKAFOR" not in page.text
    assert audited() == before
    found = ics.client.post("/fhir/Patient/_search", data={"family": "Okafor  ", "birthdate": "1945-03-02"},
                            headers=headers)
    assert found.status_code == 200 and [e["resource"]["id"] for e in found.json()["entry"]] == [ics.okafor]


@pytest.mark.parametrize(("sent", "named"), [
    ({"identifier": "https://fhir.nhs.uk/Id/nhs-number|" + "9" * 21}, "identifier"),
    ({"family": "Okafor", "birthdate": "1945-03-02", "address-postalcode": "A" * 21}, "address-postalcode"),
])
def test_a_fhir_search_criterion_too_long_is_refused_naming_the_parameter_sent(
        ics: Ics, sent: dict[str, str], named: str) -> None:
    """Final review of 2026-12-07: the refusal named the gateway's own field (`nhs_number`, `postcode`), a
    parameter the FHIR client never sent."""
    refused = ics.client.post("/fhir/Patient/_search", data=sent, headers=ics.token("dr.patel"))
    diagnostics = refused.json()["issue"][0]["diagnostics"]
    assert refused.status_code == 400 and diagnostics.startswith(f"{named}: at most 20 characters"), diagnostics
