"""Mutual TLS for system feeds (TRUST OP2; IHE ATNA's Secure Node authenticates its peers by certificate).

Python's ssl module (OpenSSL) does every check: the feed's certificate must chain to the configured client
CA, be within its validity dates and, given the CA's revocation list, not be revoked, or the handshake
fails. What is written here is the plumbing, the checks at start that the revocation list is one, and the
re-reading of the files when one changes (`server_context`):
asyncio performs a listener's handshake before telling the listener of the connection and drops a failed
one without a word (it logs only in debug mode), and uvicorn has no hook either. So the listeners (`mllp`,
`serve`) accept plain TCP, and `HandshakeFirst` upgrades each connection with `loop.start_tls` before the
listener's own protocol sees it: a refusal comes back to us with the address it came from, and is logged
and audited (`auth:tls:refused`) with OpenSSL's reason, never a byte of what was sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import cast

from cryptography import x509

from sharedcare.clock import utcnow
from sharedcare.config import Settings
from sharedcare.errors import ConfigError
from sharedcare.governance.audit import AuditAction, AuditRecord, record_refusal
from sharedcare.store.database import Database

log = logging.getLogger("sharedcare.tls")
HANDSHAKE_SECONDS = 10.0  # a feed's interface engine handshakes at once; a silent connection is let go


@dataclass(frozen=True)
class TlsSettings:
    """What a listener presents and whom it trusts (from Settings: SHAREDCARE_TLS_*)."""

    cert: Path
    key: Path
    client_ca: Path | None
    client_certs: str  # required | optional (only with a client CA)
    client_crl: Path | None = None  # the client CAs' revocation lists (only with a client CA)

    def describe(self) -> str:
        if self.client_ca is None:
            return "TLS (no client certificates asked for)"
        revoked = f", revoked ones refused (CRL {self.client_crl})" if self.client_crl else ", no revocation list"
        return f"mutual TLS (client certificates {self.client_certs}, trusted CA {self.client_ca}{revoked})"


def tls_settings(settings: Settings) -> TlsSettings | None:
    """The TLS a listener must speak, or None for plain TCP; a half-made configuration is refused by name."""
    if settings.tls_client_crl is not None and settings.tls_client_ca is None:
        raise ConfigError("SHAREDCARE_TLS_CLIENT_CRL needs SHAREDCARE_TLS_CLIENT_CA: it lists the certificates "
                          "that CA revoked")
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ConfigError("SHAREDCARE_TLS_CLIENT_CA needs SHAREDCARE_TLS_CERT and SHAREDCARE_TLS_KEY too")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("SHAREDCARE_TLS_CERT and SHAREDCARE_TLS_KEY go together: set both, or neither")
    tls = TlsSettings(settings.tls_cert, settings.tls_key, settings.tls_client_ca, settings.tls_client_certs,
                      settings.tls_client_crl)
    server_context(tls)  # unreadable files are refused at start-up, not at the first connection
    return tls


CERTIFICATE_WARNING_DAYS = 30  # a listener starting with its certificate this close to its end says so


def certificate_warning(tls: TlsSettings) -> str | None:
    """At start: refuse a listener whose own certificate has ended (ConfigError), since every client would refuse
    the handshake and an interface engine retries without end, its messages waiting, with nothing in our log to
    say why; say so when it ends within CERTIFICATE_WARNING_DAYS (a renewed one is read without a restart)."""
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())  # the first in the file: the listener's own
    ends, now = cert.not_valid_after_utc, utcnow()
    if ends <= now:
        raise ConfigError(f"the server's certificate SHAREDCARE_TLS_CERT {tls.cert} expired on {ends:%Y-%m-%d %H:%M} "
                          "UTC: every client would refuse it; install a renewed certificate and key")
    if ends - now <= timedelta(days=CERTIFICATE_WARNING_DAYS):
        return (f"the server's certificate SHAREDCARE_TLS_CERT {tls.cert} expires on {ends:%Y-%m-%d %H:%M} UTC, in "
                f"{(ends - now).days} days: renew it (the renewed certificate and key are read without a restart)")
    return None


class ServerContext(ssl.SSLContext):
    """A listener's context, knowing which client CAs have no revocation list (`unlisted`): OpenSSL refuses
    every certificate they issue ("unable to get certificate CRL"), and the refusal's audit names them."""

    unlisted: tuple[str, ...] = ()


Stamp = tuple[tuple[int, int, int] | None, ...]  # each file's inode, size and modification time
_contexts: dict[TlsSettings, tuple[Stamp, ServerContext | ConfigError]] = {}
_contexts_lock = threading.Lock()


def _stamp(tls: TlsSettings) -> Stamp:
    """Every file a context is made from: a change to any one makes it again (a context that could not be
    made, say from a half-rotated key, is tried again when the key is put right, not only the list)."""
    return tuple(_file_stamp(path) for path in (tls.cert, tls.key, tls.client_ca, tls.client_crl))


def _file_stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        found = path.stat()
    except OSError:
        return (-1, -1, -1)  # gone: `_context` says so
    return found.st_ino, found.st_size, found.st_mtime_ns


def server_context(tls: TlsSettings) -> ServerContext:
    """The server side's context for a new connection: made once, and again when one of its files changes
    (a CA publishes a new revocation list every few days; new connections are checked against it, no
    restart; a renewed certificate and key, or client CA, are read the same way). A changed file that
    cannot be used refuses every connection until one of them changes again, put right (fail closed: the
    list before it may not name a certificate revoked since), raising ConfigError saying why. Up to four
    `stat`s a connection."""
    stamp = _stamp(tls)
    with _contexts_lock:
        made = _contexts.get(tls)
        if made is None or made[0] != stamp:
            try:
                made = (stamp, _context(tls))
            except ConfigError as exc:
                if made is None:  # at start: refused there
                    raise
                log.error("%s; every client is refused until it is put right", exc)
                made = (stamp, exc)
            _contexts[tls] = made
    if isinstance(made[1], ConfigError):
        raise made[1]
    return made[1]


def _context(tls: TlsSettings) -> ServerContext:
    """A new server context from the files as they are now."""
    try:
        context = ServerContext(ssl.PROTOCOL_TLS_SERVER)  # as ssl.create_default_context(CLIENT_AUTH) makes it
        context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca is not None:
            context.load_verify_locations(cafile=tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED if tls.client_certs == "required" else ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"the TLS certificate, key or client CA could not be loaded: {exc}") from exc
    if tls.client_ca is not None and tls.client_crl is not None:
        context.unlisted = check_revocation_list(tls.client_crl, tls.client_ca)
        if context.unlisted:
            log.warning("SHAREDCARE_TLS_CLIENT_CRL %s has no list from %s: a client certificate issued by it is "
                        "refused at the handshake", tls.client_crl, " or ".join(context.unlisted))
        try:
            context.load_verify_locations(cafile=tls.client_crl)
        except (OSError, ssl.SSLError) as exc:  # checked above: only a file changed since would reach here
            raise ConfigError(f"SHAREDCARE_TLS_CLIENT_CRL {tls.client_crl}: could not be loaded: {exc}") from exc
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF  # a client certificate its CA revoked is refused
    return context


def check_revocation_list(crl_path: Path, ca_path: Path) -> tuple[str, ...]:
    """Refuse at start, by name, a revocation list that would check nothing or refuse every feed: unreadable,
    not PEM CRLs (a certificate in it would be trusted as a CA), a CRL no client CA signed, an issuing CA
    without one (OpenSSL then refuses every certificate it issued: "unable to get certificate CRL"), or
    one past its next update (OpenSSL refuses every certificate: "CRL has expired").

    OpenSSL checks the client certificate alone (VERIFY_CRL_CHECK_LEAF), so only its issuer's list is
    needed: an issuing CA is one that signed no other CA of the file (a root above an intermediate needs
    none). Returns the CAs of the file without a list (such a root): a certificate one of them issued
    directly is still refused at the handshake, for want of its list (fail closed)."""
    where = f"SHAREDCARE_TLS_CLIENT_CRL {crl_path}"
    try:
        text = crl_path.read_bytes()
        cas = x509.load_pem_x509_certificates(ca_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: could not be read: {exc}") from exc
    if re.search(rb"-----BEGIN [A-Z0-9 ]*CERTIFICATE-----", text):  # (OpenSSL reads X509 and TRUSTED ones too)
        raise ConfigError(f"{where} holds a certificate: it must hold only revocation lists (PEM 'X509 CRL' "
                          "blocks), or that certificate would be trusted as a client CA")
    marker = b"-----BEGIN X509 CRL-----"
    blocks = [marker + part for part in text.split(marker)[1:]]
    try:
        crls = [x509.load_pem_x509_crl(block) for block in blocks]
    except ValueError as exc:
        raise ConfigError(f"{where}: not a PEM certificate revocation list: {exc}") from exc
    if not crls:
        raise ConfigError(f"{where} holds no PEM certificate revocation list ('-----BEGIN X509 CRL-----'); convert "
                          "a DER one with `openssl crl -inform DER -in list.crl -out list.pem`")
    now = utcnow()
    for crl in crls:
        issuer = crl.issuer.rfc4514_string()
        if not any(ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
                   for ca in cas):
            raise ConfigError(f"{where}: the list issued by {issuer} is not signed by a CA in "
                              f"SHAREDCARE_TLS_CLIENT_CA ({ca_path})")
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            raise ConfigError(f"{where}: the list issued by {issuer} was due to be replaced on "
                              f"{crl.next_update_utc:%Y-%m-%d %H:%M} UTC; fetch the CA's current one (every feed "
                              "certificate it issued would be refused until then)")
    unlisted = [ca for ca in cas if not any(crl.issuer == ca.subject for crl in crls)]
    for ca in unlisted:
        if not any(other is not ca and other.issuer == ca.subject for other in cas):  # it issues client certificates
            raise ConfigError(f"{where} has no revocation list from the client CA {ca.subject.rfc4514_string()}: "
                              "every certificate it issued would be refused; add its CRL")
    return tuple(ca.subject.rfc4514_string() for ca in unlisted)


def peer_subject(transport: asyncio.BaseTransport) -> str | None:
    """The verified client certificate's subject (RFC 4514, `CN=...,O=...`), or None when none was sent."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else None


UNABLE_TO_GET_CRL = 3  # X509_V_ERR_UNABLE_TO_GET_CRL


def refusal_reason(exc: BaseException, unlisted: tuple[str, ...] = ()) -> str:
    """Why a handshake failed, in OpenSSL's words (a reason code, never the peer's bytes); for a certificate
    refused for want of its issuer's revocation list, which client CAs have none (`unlisted`)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        missing = (f" (SHAREDCARE_TLS_CLIENT_CRL has no list from {' or '.join(unlisted)}: add it to accept "
                   "the certificates it issues)" if exc.verify_code == UNABLE_TO_GET_CRL and unlisted else "")
        return f"{exc.reason}: {exc.verify_message}{missing}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__)
    if isinstance(exc, ConnectionAbortedError):  # asyncio's handshake timeout
        return f"no handshake within {HANDSHAKE_SECONDS:g} s"
    return "the connection closed during the handshake"


def record_refused_handshake(database: Database, listener: str, address: str | None, reason: str) -> None:
    """A connection refused at the handshake, audited like refused credentials (TRUST AU3): no one is named
    (no trusted certificate was shown), only where it came from and why."""
    record_refusal(database, AuditRecord(AuditAction.TLS_REFUSED, "deny", username=None, reason=reason,
                                         source_address=address, detail={"listener": listener}))


class HandshakeFirst(asyncio.Protocol):
    """Stands in front of a listener's protocol: holds the connection's bytes, performs the TLS handshake,
    and only then hands the connection (now the TLS transport) to `inner`. A failed handshake is logged and
    audited in `database` (in a thread: the event loop goes on), and the connection is closed."""

    def __init__(self, inner: asyncio.Protocol, tls: TlsSettings, listener: str, database: Database) -> None:
        self.inner, self.tls, self.listener, self.database = inner, tls, listener, database
        self.task: asyncio.Task[None] | None = None
        self.tls_begun = False  # from here on the TLS layer owns the connection's end, and reports it
        self.handed_over = False
        self.held: list[bytes] = []  # what TLS decrypted before `inner` was given the connection
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # a listener's connections are stream transports
        transport.pause_reading()  # the client's hello is for the TLS layer, which start_tls puts in place
        self.task = asyncio.get_running_loop().create_task(self.handshake(transport))

    async def handshake(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else None
        loop = asyncio.get_running_loop()
        self.tls_begun = True
        try:
            context = server_context(self.tls)
        except ConfigError as exc:  # the revocation list changed and cannot be used: refused, audited
            transport.close()
            await self.refused(address, f"not checked: {exc.message}")
            return
        try:
            secured = await loop.start_tls(transport, self, context, server_side=True,
                                           ssl_handshake_timeout=HANDSHAKE_SECONDS)
        except (ssl.SSLError, OSError) as exc:
            reason = refusal_reason(exc, context.unlisted)
            if not isinstance(exc, ssl.SSLError):  # no TLS attempted (a probe, a silent peer): not audited
                log.info("%s: a connection from %s ended without a TLS handshake: %s", self.listener, address, reason)
                return
            await self.refused(address, reason)
            return
        if secured is None:  # the peer went away as the handshake finished
            return
        self.handed_over = True
        secured.set_protocol(self.inner)
        self.inner.connection_made(secured)
        for data in self.held:
            self.inner.data_received(data)
        if self.eof and not self.inner.eof_received():
            secured.close()

    async def refused(self, address: str | None, reason: str) -> None:
        """Log and audit a refused handshake (in a thread: the event loop goes on)."""
        log.warning("%s: TLS handshake from %s refused: %s", self.listener, address, reason)
        try:
            await asyncio.to_thread(record_refused_handshake, self.database, self.listener, address, reason)
        except Exception:  # the connection is refused either way
            log.exception("%s: the refused TLS handshake from %s could not be audited", self.listener, address)

    # Between the handshake and the hand-over (one turn of the event loop), TLS may already deliver data
    # or an end; after it, calls scheduled earlier still arrive here and are passed on.
    def data_received(self, data: bytes) -> None:
        if self.handed_over:
            self.inner.data_received(data)
        else:
            self.held.append(data)

    def eof_received(self) -> bool | None:
        if self.handed_over:
            return self.inner.eof_received()
        self.eof = True
        return True  # keep the transport open until `inner` has it and says

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handed_over:
            self.inner.connection_lost(exc)
        elif not self.tls_begun and self.task is not None:  # gone before the handshake began: nothing to do
            self.task.cancel()


def guarded(factory: Callable[[], asyncio.Protocol], tls: TlsSettings, listener: str,
            database: Database) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for `loop.create_server` whose connections handshake first (see HandshakeFirst)."""
    server_context(tls)  # refused now, not at the first connection
    return lambda: HandshakeFirst(factory(), tls, listener, database)
