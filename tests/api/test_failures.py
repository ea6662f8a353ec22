"""When something breaks, the API fails closed and says nothing it should not (TRUST AU4, DP3)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from sqlalchemy.orm import Session
from tests.portal_client import PortalClient
from tests.small_ics import Ics

from sharedcare.governance import gateway
from sharedcare.store.database import Database


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


class StoreAdmin:
    """A connection of the test's own to the PostgreSQL server (its `postgres` database), beside the service's
    to the test's store, to end theirs as a restart does and to have the store refuse new ones."""

    def __init__(self, connection: psycopg.Connection[tuple[object, ...]], database: str) -> None:
        self.connection, self.database = connection, database

    def allow(self, allowed: bool) -> None:
        self.connection.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(self.database), sql.SQL("true" if allowed else "false")))

    def drop_connections(self, refuse: bool = False) -> None:
        """End every connection to the store (the test role's own: it may end those) and, with `refuse`, take no
        more (as a server that is down); wait until they are gone."""
        if refuse:
            self.allow(False)
        others = sql.SQL("FROM pg_stat_activity WHERE datname = {} AND usename = current_user").format(
            sql.Literal(self.database))
        self.connection.execute(sql.SQL("SELECT pg_terminate_backend(pid) {}").format(others))
        deadline = time.monotonic() + 10
        while self.connection.execute(sql.SQL("SELECT count(*) {}").format(others)).fetchone() != (0,):
            assert time.monotonic() < deadline, "the store's connections were not ended"
            time.sleep(0.05)


@contextmanager
def store_admin(db: Database) -> Iterator[StoreAdmin]:
    if db.backend != "postgresql":
        pytest.skip("a server's connections: PostgreSQL")
    server = db.url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(server, autocommit=True) as connection:
        admin = StoreAdmin(connection, str(db.url.database))
        try:
            yield admin
        finally:
            admin.allow(True)


def test_after_the_store_drops_its_connections_the_next_request_succeeds_and_while_it_refuses_them_503(
        ics: Ics, db: Database) -> None:
    """Without pool_pre_ping the first request on each pooled connection failed (500) after PostgreSQL
    restarted; while it refused connections, reads answered a generic 500 rather than "try again"."""
    headers = ics.open_record("dr.patel")
    client = TestClient(ics.client.app, raise_server_exceptions=False)
    everything = f"/fhir/Patient/{ics.okafor}/$everything"
    portal = PortalClient(ics.client.app, raise_server_exceptions=False)
    portal.csrf_token()  # the sign-in form's token, fetched while the store is there
    with store_admin(db) as admin:
        assert client.get(everything, headers=headers).status_code == 200
        admin.drop_connections()
        for _ in range(3):  # each pooled connection, each ended
            assert client.get(everything, headers=headers).status_code == 200
        admin.drop_connections(refuse=True)
        refused = client.get(everything, headers=headers)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "10" and refused.headers["cache-control"] == "no-store"
        issue = refused.json()["issue"][0]
        assert issue["code"] == "transient"
        assert issue["diagnostics"] == "the record store is not reachable; try again shortly"
        assert "Okafor" not in refused.text and "psycopg" not in refused.text
        page = portal.post("/login", data={"username": "dr.patel", "password": "demo"})  # audited: the store
        assert page.status_code == 503 and "not reachable" in page.text, page.text  # a page, not a 500
        assert page.headers["content-type"].startswith("text/html")
        admin.allow(True)
        assert client.get(everything, headers=headers).status_code == 200
