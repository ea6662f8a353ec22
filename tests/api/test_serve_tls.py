"""`sharedcare serve` over mutual TLS (TRUST OP2), started as an operator starts it: a system with a trusted
client certificate writes FHIR; no certificate, an untrusted or expired one, or plain HTTP is refused at the
handshake and audited; with client certificates optional, a browser without one still reaches the portal."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx2 as httpx  # the dev dependency starlette's TestClient uses
import pytest
from sqlalchemy import select
from tests.api.test_fhir_write import _diabetes, _token
from tests.conftest import FRAMEWORK_PATH
from tests.small_ics import Ics
from tests.tls_certs import Pki, make_pki

from sharedcare.governance.audit import AuditAction, verify
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

Serve = Callable[..., str]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


pytestmark = pytest.mark.usefixtures("deployment_keys")  # `serve` refuses demo mode beside PostgreSQL or TLS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve(db: Database, pki: Pki, tmp_path: Path) -> Iterator[Serve]:
    """Start `sharedcare serve` with TLS options (and `settings`, SHAREDCARE_* variables) on the test store;
    returns its https base URL."""
    servers: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(*options: str, settings: dict[str, str] | None = None) -> str:
        port = _free_port()
        env = {**os.environ, "SHAREDCARE_DB": db.url.render_as_string(hide_password=False),
               "SHAREDCARE_FRAMEWORK": str(FRAMEWORK_PATH), "SHAREDCARE_TLS_CERT": str(pki.server_cert),
               "SHAREDCARE_TLS_KEY": str(pki.server_key), **(settings or {})}
        log_path = tmp_path / f"server-{port}.log"
        log = log_path.open("wb")
        command = [sys.executable, "-c", "from sharedcare.cli import app; app()", "serve", "--port", str(port),
                   *options]
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        servers.append((server, log))
        url = f"https://localhost:{port}"
        trusted = pki.client_context(pki.client)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/fhir/metadata", verify=trusted, timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.2)
        pytest.fail(f"the server did not start: {log_path.read_text()[-3000:]}")

    yield start
    for server, log in servers:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _refusals(db: Database, count: int) -> list[AuditEntry]:
    """The `auth:tls:refused` entries, once there are `count` (each is written from a thread after its handshake)."""
    deadline = time.monotonic() + 10
    while True:
        with db.session() as s:
            found = list(s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.TLS_REFUSED.value)
                                   .order_by(AuditEntry.seq)))
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_system_with_a_trusted_certificate_writes_fhir_over_mutual_tls(
        ics: Ics, db: Database, pki: Pki, serve: Serve) -> None:
    url = serve("--tls-client-ca", str(pki.ca), "--workers", "2")  # the options reach every server process
    resolved = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]}
    with httpx.Client(base_url=url, verify=pki.client_context(pki.client), timeout=30) as system:
        response = system.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel"),
                              content=json.dumps(_diabetes(clinicalStatus=resolved)))
    assert response.status_code in (200, 201), response.text
    assert _refusals(db, 0) == []
    with db.session() as s:  # the clock was checked once, at start-up, before the workers were started
        checks = s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.CLOCK_CHECK.value)).all()
    assert len(checks) == 1 and {"type": "service", "valueString": "serve"} in checks[0].event["entity"][-1]["detail"]


def test_no_certificate_an_untrusted_or_expired_one_or_plain_http_is_refused_at_the_handshake_and_audited(
        ics: Ics, db: Database, pki: Pki, serve: Serve) -> None:
    url = serve("--tls-client-ca", str(pki.ca), "--client-certs", "required")
    for cert in (None, pki.stranger, pki.expired):
        with pytest.raises(httpx.TransportError):  # the handshake's alert, or the connection closed under it
            httpx.get(f"{url}/fhir/metadata", verify=pki.client_context(cert), timeout=10)
    with pytest.raises(httpx.TransportError):
        httpx.get(url.replace("https://", "http://") + "/fhir/metadata", timeout=10)
    refusals = _refusals(db, 4)
    reasons = [entry.event["entity"][-1]["detail"] for entry in refusals]
    assert sorted(next(d["valueString"] for d in detail if d["type"] == "reason") for detail in reasons) == [
        "CERTIFICATE_VERIFY_FAILED: certificate has expired",  # each audited from a thread: in any order
        "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate", "HTTP_REQUEST",
        "PEER_DID_NOT_RETURN_A_CERTIFICATE"]
    assert all({"type": "listener", "valueString": "http"} in detail for detail in reasons)
    assert all(entry.outcome == "deny" and entry.username is None and entry.patient_id is None for entry in refusals)
    assert all(e.event["agent"][0]["network"]["address"] == "127.0.0.1" for e in refusals)
    with db.session() as s:
        assert verify(s).ok


def test_with_client_certificates_optional_a_browser_reaches_the_portal_but_an_untrusted_certificate_is_refused(
        db: Database, pki: Pki, serve: Serve) -> None:
    url = serve("--tls-client-ca", str(pki.ca), "--client-certs", "optional")
    assert httpx.get(f"{url}/", verify=pki.client_context(None), timeout=10).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/", verify=pki.client_context(pki.expired), timeout=10)
    (refusal,) = _refusals(db, 1)
    assert "certificate has expired" in json.dumps(refusal.event)


def test_a_client_certificate_its_ca_revoked_is_refused_at_the_handshake_and_audited(
        ics: Ics, db: Database, pki: Pki, serve: Serve) -> None:
    """`serve --tls-client-crl`: a system whose certificate the CA revoked is refused at the handshake in every
    server process, audited as revoked; a system in good standing still writes."""
    url = serve("--tls-client-ca", str(pki.ca), "--tls-client-crl", str(pki.crl), "--workers", "2")
    for _ in range(2):  # (each connection may reach either process)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/fhir/metadata", verify=pki.client_context(pki.revoked), timeout=10)
    refusals = _refusals(db, 2)
    assert len(refusals) == 2 and all("CERTIFICATE_VERIFY_FAILED: certificate revoked" in json.dumps(e.event)
                                      for e in refusals)
    with httpx.Client(base_url=url, verify=pki.client_context(pki.client), timeout=30) as system:
        response = system.put("/fhir/Condition/gp-c1", headers=_token(ics, "dr.patel"),
                              content=json.dumps(_diabetes(onsetDateTime="2001-01-01")))
    assert response.status_code == 200, response.text


def test_serve_refuses_to_start_with_a_revocation_list_it_cannot_use(db: Database, pki: Pki, tmp_path: Path) -> None:
    """An overdue list would refuse every feed: `serve` says so at start and exits, rather than later."""
    env = {**os.environ, "SHAREDCARE_DB": db.url.render_as_string(hide_password=False),
           "SHAREDCARE_FRAMEWORK": str(FRAMEWORK_PATH), "SHAREDCARE_TLS_CERT": str(pki.server_cert),
           "SHAREDCARE_TLS_KEY": str(pki.server_key), "SHAREDCARE_TLS_CLIENT_CA": str(pki.ca),
           "SHAREDCARE_TLS_CLIENT_CRL": str(pki.crl_overdue)}
    ended = subprocess.run([sys.executable, "-c", "from sharedcare.cli import app; app()", "serve",  # noqa: S603
                            "--port", "1"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert ended.returncode == 2, ended.stdout + ended.stderr
    assert "SHAREDCARE_TLS_CLIENT_CRL" in ended.stderr and "was due to be replaced" in ended.stderr


def _dropped(sock: socket.socket) -> bool:
    """Whether the server closes `sock` within a second (it has sent nothing)."""
    sock.settimeout(1)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_past_an_addresss_share_a_connection_is_dropped_before_its_tls_handshake(pki: Pki, serve: Serve) -> None:
    """Counted only once its handshake was done, a connection that sent no TLS hello was held for up to 10 s
    outside its address's share: 40 from one address all stayed open, and a flood of them used up the
    server's file descriptors until another address's clinician could not connect (review, 2026-12-07).
    Share 4: a fifth silent connection is dropped at once; a connection in use over TLS counts once."""
    url = serve(settings={"SHAREDCARE_HTTP_CONNECTIONS_PER_ADDRESS": "4"})
    address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
    silent = [socket.create_connection(address) for _ in range(4)]
    with socket.create_connection(address) as fifth:
        assert _dropped(fifth)
    assert not any(_dropped(sock) for sock in silent[:1])  # those within the share wait for their handshake
    for sock in silent:
        sock.close()
    time.sleep(0.2)
    with contextlib.ExitStack() as stack:  # four kept-alive TLS connections, each answered, fill the share
        clients = [stack.enter_context(httpx.Client(base_url=url, verify=pki.client_context(None), timeout=10))
                   for _ in range(4)]
        assert [client.get("/fhir/metadata").status_code for client in clients] == [200] * 4
        with socket.create_connection(address) as fifth:
            assert _dropped(fifth)
    time.sleep(0.2)
    assert httpx.get(f"{url}/fhir/metadata", verify=pki.client_context(None), timeout=10).status_code == 200
