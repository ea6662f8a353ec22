"""MLLP over mutual TLS (TRUST OP2): a feed with a certificate from the trusted CA gets its ACK and its
messages name it; no certificate, an untrusted or expired one, or plain TCP is refused at the handshake,
nothing is stored, and the refusal is audited with its reason and address but nothing that was sent."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.ingest.test_mllp import A01, _segment, _wait_listening, serving, sharedcare_mllp
from tests.tls_certs import FEED_SUBJECT, Pki, make_chain, make_pki, revocation_list, server_certificate

from sharedcare.config import load_settings
from sharedcare.governance.audit import AuditAction, verify
from sharedcare.governance.framework import Framework
from sharedcare.ingest.mllp import END, START, MllpServer
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, PatientRecord, Quarantine
from sharedcare.tls import TlsSettings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _listing(framework: Framework, org: str, subject: str) -> Framework:
    """The framework with `subject` among the certificates that may send feeds for `org`."""
    listed = framework.organisations[org].model_copy(update={"feed_certificates": [subject]})
    return framework.model_copy(update={"organisations": {**framework.organisations, org: listed}})


@pytest.fixture
def tls_listener(db: Database, framework: Framework, pki: Pki) -> Iterator[int]:
    tls = TlsSettings(pki.server_cert, pki.server_key, pki.ca, "required")
    with serving(MllpServer(Pipeline(db, _listing(framework, "RXR", FEED_SUBJECT)), tls)) as port:
        yield port


def _send_over_tls(port: int, context: ssl.SSLContext, message: bytes) -> str:
    """Send one framed message and read its ACK, as an interface engine does over TLS."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(START + message + END)
        data = b""
        while not data.endswith(END):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the listener closed the connection without an ACK")
            data += chunk
    return data[1:-2].decode("latin-1")


def _send_with_the_handshakes_end(port: int, context: ssl.SSLContext, message: bytes) -> str:
    """TLS by hand (memory BIOs) so that the client's last handshake flight and the framed message leave in
    one write: the listener gets the message in the same read that completes its handshake."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(START + message + END)
        sock.sendall(outgoing.read())
        data = b""
        while not data.endswith(END):
            try:
                data += tls.read(65536)
            except ssl.SSLWantReadError:
                chunk = sock.recv(65536)
                assert chunk, "the listener closed the connection without an ACK"
                incoming.write(chunk)
    return data[1:-2].decode("latin-1")


def _refusals(db: Database) -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.TLS_REFUSED.value)))


def _await_refusals(db: Database, count: int) -> list[AuditEntry]:
    """The refusal is audited from a thread after the handshake fails: wait for it (at most 10 s)."""
    for _ in range(200):
        found = _refusals(db)
        if len(found) >= count:
            return found
        threading.Event().wait(0.05)
    return _refusals(db)


def test_a_feed_with_a_trusted_certificate_gets_aa_and_its_quarantined_messages_name_it(
        tls_listener: int, db: Database, pki: Pki) -> None:
    good = A01.format(dob="19450302").encode("latin-1")
    ack = _send_over_tls(tls_listener, pki.client_context(pki.client), good)
    assert _segment(ack, "MSA")[1:3] == ["AA", "MSG001"]
    bad = A01.format(dob="19451302").replace("MSG001", "MSG002").encode("latin-1")
    assert _segment(_send_over_tls(tls_listener, pki.client_context(pki.client), bad), "MSA")[1] == "AE"
    with db.session() as s:
        assert s.scalars(select(PatientRecord.source_id)).all() == ["H900"]
        held = s.scalars(select(Quarantine)).one()
    assert held.filename.startswith(f"mllp://{FEED_SUBJECT}@127.0.0.1:")
    assert _refusals(db) == []


@pytest.mark.parametrize("listed_for", ["RYC", None])
def test_a_certificate_sends_only_for_the_organisations_the_framework_lists_it_for(
        db: Database, framework: Framework, pki: Pki, listed_for: str | None) -> None:
    """A community trust's engine (or one no organisation lists) sending MSH-4 RXR is refused: AE naming
    MSH-4, the message held in quarantine, nothing stored, the refusal audited as the feed's write."""
    tls = TlsSettings(pki.server_cert, pki.server_key, pki.ca, "required")
    fw = _listing(framework, listed_for, FEED_SUBJECT) if listed_for else framework
    with serving(MllpServer(Pipeline(db, fw), tls)) as port:
        ack = _send_over_tls(port, pki.client_context(pki.client), A01.format(dob="19450302").encode("latin-1"))
    assert _segment(ack, "MSA")[1] == "AE" and _segment(ack, "ERR")[1] == "MSH^1^4"
    assert f"the sending certificate ({FEED_SUBJECT}) may not send for RXR" in ack
    assert f"lists it for {listed_for or 'none'}" in ack
    with db.session() as s:
        assert s.scalars(select(PatientRecord)).all() == []
        (held,) = s.scalars(select(Quarantine)).all()
        (write,) = s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.RECORD_WRITE.value)).all()
    assert (write.outcome, write.username, write.organisation, write.patient_id) == ("deny", "mllp", None, None)
    assert FEED_SUBJECT in json.dumps(write.event) and "RXR:PAS" in json.dumps(write.event)
    # a replay is held to the same certificate, whoever runs it, until the framework lists it for RXR
    assert Pipeline(db, fw).replay(held.id).quarantined == 1
    assert Pipeline(db, fw).replay(held.id, source="RXR").quarantined == 1
    assert Pipeline(db, _listing(framework, "RXR", FEED_SUBJECT)).replay(held.id).accepted > 0
    with db.session() as s:
        assert s.scalars(select(PatientRecord.source_org)).all() == ["RXR"]


def test_a_message_arriving_with_the_end_of_the_handshake_is_not_lost(tls_listener: int, pki: Pki) -> None:
    """The listener is handed the connection a moment after the handshake; what TLS decrypted in between
    is held for it, not dropped."""
    ack = _send_with_the_handshakes_end(tls_listener, pki.client_context(pki.client),
                                        A01.format(dob="19450302").encode("latin-1"))
    assert _segment(ack, "MSA")[1:3] == ["AA", "MSG001"]


@pytest.mark.parametrize(("presented", "reason"), [
    (None, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    ("stranger", "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"),
    ("expired", "CERTIFICATE_VERIFY_FAILED: certificate has expired"),
])
def test_a_feed_without_a_trusted_certificate_is_refused_at_the_handshake_and_audited(
        tls_listener: int, db: Database, pki: Pki, presented: str | None, reason: str) -> None:
    cert = None if presented is None else getattr(pki, presented)
    message = A01.format(dob="19450302").encode("latin-1")
    with pytest.raises((ssl.SSLError, ConnectionError)):  # TLS 1.3: the client learns on its first read
        _send_over_tls(tls_listener, pki.client_context(cert), message)
    (refusal,) = _await_refusals(db, 1)
    assert refusal.outcome == "deny" and refusal.username is None and refusal.patient_id is None
    event = json.dumps(refusal.event)
    assert reason in event and '"address": "127.0.0.1"' in event and '"valueString": "mllp"' in event
    assert "OKAFOR" not in event and "9434765919" not in event
    with db.session() as s:
        assert s.scalars(select(PatientRecord)).all() == [] and s.scalars(select(Quarantine)).all() == []
        assert verify(s).ok


def test_plain_tcp_to_a_tls_listener_gets_no_ack_and_is_audited(tls_listener: int, db: Database) -> None:
    with socket.create_connection(("127.0.0.1", tls_listener), timeout=10) as sock:
        sock.sendall(START + A01.format(dob="19450302").encode("latin-1") + END)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert START not in answer and b"MSA" not in answer  # at most a TLS alert, never an ACK
    (refusal,) = _await_refusals(db, 1)
    assert "WRONG_VERSION_NUMBER" in json.dumps(refusal.event) and "OKAFOR" not in json.dumps(refusal.event)
    with db.session() as s:
        assert s.scalars(select(PatientRecord)).all() == []


def test_a_connection_that_sends_nothing_is_let_go_unaudited(
        tls_listener: int, db: Database, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """A port probe or a load balancer's TCP check attempts no sign-in (as a request with no credentials is
    not audited), and must not stop a real feed connecting after it."""
    caplog.set_level(logging.INFO, logger="sharedcare.tls")
    socket.create_connection(("127.0.0.1", tls_listener), timeout=10).close()
    ack = _send_over_tls(tls_listener, pki.client_context(pki.client), A01.format(dob="19450302").encode("latin-1"))
    assert _segment(ack, "MSA")[1] == "AA"
    for _ in range(200):
        if any("ended without a TLS handshake" in r.getMessage() for r in caplog.records):
            break
        threading.Event().wait(0.05)
    assert [r.getMessage() for r in caplog.records if r.name == "sharedcare.tls"] == [
        "mllp: a connection from 127.0.0.1 ended without a TLS handshake: the connection closed during the handshake"]
    assert _refusals(db) == []


def test_a_half_made_tls_configuration_is_refused_by_name(tmp_path: Path, pki: Pki) -> None:
    from dataclasses import replace

    from sharedcare.config import load_settings
    from sharedcare.errors import ConfigError
    from sharedcare.tls import tls_settings

    settings = load_settings()
    assert tls_settings(replace(settings, tls_cert=None, tls_key=None, tls_client_ca=None)) is None
    with pytest.raises(ConfigError, match="SHAREDCARE_TLS_KEY"):
        tls_settings(replace(settings, tls_cert=pki.server_cert, tls_key=None))
    with pytest.raises(ConfigError, match="SHAREDCARE_TLS_CERT"):
        tls_settings(replace(settings, tls_cert=None, tls_key=None, tls_client_ca=pki.ca))
    with pytest.raises(ConfigError, match="could not be loaded"):
        tls_settings(replace(settings, tls_cert=pki.server_cert, tls_key=tmp_path / "missing.key"))


def test_mllp_over_tls_will_not_start_without_a_required_client_certificate(
        db: Database, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """A feed's certificate is its only credential, and what the framework binds organisations to: TLS with
    no client CA (any client) would accept no message at all, or anyone's."""
    from tests.conftest import FRAMEWORK_PATH
    from typer.testing import CliRunner

    from sharedcare.cli import app

    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    monkeypatch.setenv("SHAREDCARE_TLS_CERT", str(pki.server_cert))  # the environment, restored after the test
    monkeypatch.setenv("SHAREDCARE_TLS_KEY", str(pki.server_key))
    for name in ("SHAREDCARE_TLS_CLIENT_CA", "SHAREDCARE_TLS_CLIENT_CERTS"):
        monkeypatch.setenv(name, "")  # so that the test's end restores whatever was there
        monkeypatch.delenv(name)
    result = CliRunner().invoke(app, ["mllp", "--port", "1"])
    assert result.exit_code == 2 and "client certificates must be required" in result.stderr


def test_mllp_will_not_start_with_its_certificate_expired_and_warns_when_it_ends_within_30_days(
        db: Database, pki: Pki, tmp_path: Path) -> None:
    """Operations review of 2026-12-07: with its own certificate expired the listener started, and every feed's
    handshake failed on the feed's side, its engine retrying without end, with nothing in our log to say why. It
    now refuses to start, naming the file and the date (exit 2, as any setting that cannot be used); one that ends
    within 30 days is warned of."""
    trusting = {"SHAREDCARE_TLS_CLIENT_CA": str(pki.ca), "SHAREDCARE_TLS_CLIENT_CERTS": "required"}
    expired, ending = server_certificate(tmp_path / "expired", (-60, -1)), server_certificate(tmp_path / "ending",
                                                                                               (-60, 10))
    with sharedcare_mllp(db, SHAREDCARE_TLS_CERT=str(expired[0]), SHAREDCARE_TLS_KEY=str(expired[1]),
                         **trusting) as (started, _):
        output, _ = started.communicate(timeout=30)
    assert started.returncode == 2, output
    assert f"error: the server's certificate SHAREDCARE_TLS_CERT {expired[0]} expired on " in output
    with sharedcare_mllp(db, SHAREDCARE_TLS_CERT=str(ending[0]), SHAREDCARE_TLS_KEY=str(ending[1]),
                         **trusting) as (started, port):
        _wait_listening(started, port)
        started.terminate()
        output, _ = started.communicate(timeout=30)
    assert f"warning: the server's certificate SHAREDCARE_TLS_CERT {ending[0]} expires on " in output
    assert "UTC, in 9 days: renew it" in output and "stopped after 0 messages" in output


def test_a_feed_certificate_its_ca_revoked_is_refused_at_the_handshake_and_audited(
        db: Database, framework: Framework, pki: Pki) -> None:
    """The region's CA revoked an interface engine's certificate (a lost laptop, a decommissioned engine):
    with the CA's revocation list configured its feed is refused at the handshake, audited as revoked, and
    nothing is stored; the engines still in good standing send as before."""
    tls = TlsSettings(pki.server_cert, pki.server_key, pki.ca, "required", pki.crl)
    fw = _listing(framework, "RXR", FEED_SUBJECT)
    message = A01.format(dob="19450302").encode("latin-1")
    with serving(MllpServer(Pipeline(db, fw), tls)) as port:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _send_over_tls(port, pki.client_context(pki.revoked), message)
        (refusal,) = _await_refusals(db, 1)
        assert "CERTIFICATE_VERIFY_FAILED: certificate revoked" in json.dumps(refusal.event)
        with db.session() as s:
            assert s.scalars(select(PatientRecord)).all() == [] and s.scalars(select(Quarantine)).all() == []
        assert _segment(_send_over_tls(port, pki.client_context(pki.client), message), "MSA")[1] == "AA"


def test_a_revocation_list_that_cannot_be_used_is_refused_at_start_by_name(tmp_path: Path, pki: Pki) -> None:
    """Unreadable, not a CRL (a certificate would be trusted as a CA), another CA's, one the client CA lacks
    (every feed would be refused), past its next update (likewise), or without a client CA: refused at start,
    naming the setting and what to do."""
    from dataclasses import replace

    from sharedcare.config import load_settings
    from sharedcare.errors import ConfigError
    from sharedcare.tls import tls_settings

    settings = replace(load_settings(), tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    assert tls_settings(replace(settings, tls_client_crl=pki.crl)) is not None
    both_cas = tmp_path / "both-cas.pem"
    both_cas.write_bytes(pki.ca.read_bytes() + (pki.ca.parent / "other-ca.pem").read_bytes())
    garbled = tmp_path / "garbled.pem"
    garbled.write_bytes(b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    for crl, ca, words in (
            (tmp_path / "missing.pem", pki.ca, "could not be read"),
            (pki.client[0], pki.ca, "holds a certificate"),
            (pki.server_key, pki.ca, "holds no PEM certificate revocation list"),
            (garbled, pki.ca, "not a PEM certificate revocation list"),
            (pki.crl_other_ca, pki.ca, "is not signed by a CA in SHAREDCARE_TLS_CLIENT_CA"),
            (pki.crl, both_cas, "no revocation list from the client CA CN=Someone else's CA"),
            (pki.crl_overdue, pki.ca, "was due to be replaced on")):
        with pytest.raises(ConfigError, match="SHAREDCARE_TLS_CLIENT_CRL") as refused:
            tls_settings(replace(settings, tls_client_ca=ca, tls_client_crl=crl))
        assert words in str(refused.value), (crl, str(refused.value))
    with pytest.raises(ConfigError, match="SHAREDCARE_TLS_CLIENT_CRL needs SHAREDCARE_TLS_CLIENT_CA"):
        tls_settings(replace(settings, tls_client_ca=None, tls_client_crl=pki.crl))


def test_only_the_issuing_cas_list_is_needed_and_a_certificate_of_a_ca_without_one_is_refused_naming_it(
        db: Database, framework: Framework, pki: Pki, tmp_path: Path) -> None:
    """The client CA file holds a root and the intermediate that issues the feeds' certificates; only the
    intermediate publishes a list. OpenSSL checks the client certificate's issuer's list alone, so the
    listener starts; a certificate the root issued directly has no list to be checked against and is refused
    at the handshake (fail closed), audited naming the CA whose list is missing."""
    from sharedcare.tls import tls_settings

    chain = make_chain(tmp_path)
    settings = replace(load_settings(), tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=chain.cas,
                       tls_client_crl=chain.crl)
    tls = tls_settings(settings)
    assert tls is not None
    fw = _listing(framework, "RXR", FEED_SUBJECT)
    message = A01.format(dob="19450302").encode("latin-1")

    def context(cert: tuple[Path, Path]) -> ssl.SSLContext:
        return pki.client_context(cert)  # (the server's certificate is still the feeds' CA's)
    with serving(MllpServer(Pipeline(db, fw), tls)) as port:
        assert _segment(_send_over_tls(port, context(chain.from_intermediate), message), "MSA")[1] == "AA"
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _send_over_tls(port, context(chain.from_root), message)
        (refusal,) = _await_refusals(db, 1)
    reason = json.dumps(refusal.event)
    assert "unable to get certificate CRL" in reason
    assert "SHAREDCARE_TLS_CLIENT_CRL has no list from CN=ICS root CA,O=Test ICS" in reason


def test_a_new_revocation_list_is_read_without_a_restart_and_one_that_cannot_be_used_refuses_every_feed(
        db: Database, framework: Framework, pki: Pki, tmp_path: Path) -> None:
    """The CA publishes a new list revoking another engine's certificate: the file is replaced under the
    running listener, and the next connection with that certificate is refused. A list replaced by one that
    cannot be used (a half-copied file) refuses every feed, audited saying why, until it is put right."""
    crl = tmp_path / "current-crl.pem"
    crl.write_bytes(pki.crl.read_bytes())  # revokes the lost laptop's certificate only
    tls = TlsSettings(pki.server_cert, pki.server_key, pki.ca, "required", crl)
    message = A01.format(dob="19450302").encode("latin-1")
    with serving(MllpServer(Pipeline(db, _listing(framework, "RXR", FEED_SUBJECT)), tls)) as port:
        assert _segment(_send_over_tls(port, pki.client_context(pki.client), message), "MSA")[1] == "AA"
        revocation_list(pki, tmp_path / "next.pem", [pki.revoked[0], pki.client[0]]).replace(crl)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _send_over_tls(port, pki.client_context(pki.client), message)
        (revoked,) = _await_refusals(db, 1)
        assert "certificate revoked" in json.dumps(revoked.event)
        crl.write_bytes(b"-----BEGIN X509 CRL-----\nMIIB")  # cut short
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _send_over_tls(port, pki.client_context(pki.client), message)
        unusable = _await_refusals(db, 2)[1]
        assert "not checked: SHAREDCARE_TLS_CLIENT_CRL" in json.dumps(unusable.event)
        crl.write_bytes(pki.crl.read_bytes())  # put right: the engine in good standing sends again
        assert _segment(_send_over_tls(port, pki.client_context(pki.client), message), "MSA")[1] == "AA"


def test_a_key_unreadable_when_the_list_changed_is_read_again_once_put_right(
        db: Database, framework: Framework, pki: Pki, tmp_path: Path) -> None:
    """The CA's new list arrives while the listener's key is half-rotated: every feed is refused, audited
    saying why. Putting the key right (the list unchanged since) lets the feeds in again, without a restart;
    the context was made again only when the list's file changed (review, 2026-12-06)."""
    key, crl = tmp_path / "server.key", tmp_path / "current-crl.pem"
    key.write_bytes(pki.server_key.read_bytes())
    crl.write_bytes(pki.crl.read_bytes())
    tls = TlsSettings(pki.server_cert, key, pki.ca, "required", crl)
    message = A01.format(dob="19450302").encode("latin-1")
    with serving(MllpServer(Pipeline(db, _listing(framework, "RXR", FEED_SUBJECT)), tls)) as port:
        assert _segment(_send_over_tls(port, pki.client_context(pki.client), message), "MSA")[1] == "AA"
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMIGH")  # half-copied
        revocation_list(pki, tmp_path / "next.pem", [pki.revoked[0]]).replace(crl)  # the CA's next list
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _send_over_tls(port, pki.client_context(pki.client), message)
        (refused,) = _await_refusals(db, 1)
        assert "the TLS certificate, key or client CA could not be loaded" in json.dumps(refused.event)
        key.write_bytes(pki.server_key.read_bytes())  # put right
        assert _segment(_send_over_tls(port, pki.client_context(pki.client), message), "MSA")[1] == "AA"
