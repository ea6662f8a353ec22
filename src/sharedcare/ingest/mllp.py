"""HL7 v2 over MLLP: a listener that stores each message through the one pipeline and answers it.

MLLP frames a message as <VT> message <FS><CR>. Each message is handled in order per connection and
answered with an ACK: AA when stored (or unchanged), AE when it was understood but could not be
accepted (it waits in quarantine; ERR and MSA say which segment and field and why), AR when it could
not be read as an HL7 message at all (also kept in quarantine). python-hl7 has an MLLP client but no
server we can put the pipeline behind, so the framing (a few lines) is written here. With TLS settings,
each connection handshakes first (sharedcare/tls.py), its messages name the certificate's subject, and
MSH-4 must name an organisation the framework lists that certificate for (`feed_certificates`): a care
home's engine cannot write as the hospital. Every message handled is audited (TRUST AU1): a write by the
feed (`ORG:application`) with the patient and the resources it wrote, or a refusal by the listener.

Anyone who reaches a plain-TCP port (and any certified feed over TLS) could otherwise hold the listener's
memory and sockets: connections over the caps (`MllpLimits`) are closed as they are accepted, a connection
idle between messages is closed, and one that begins a frame without finishing it in time is closed with
no ACK; refusals of both kinds are audited within the limits of other refusals at the door. One address has
one message in hand at a time, whatever its connections: sixteen connections of one sender flooding 1.5 MB
messages held another sender's ACK 3.2 s (median, against 4.3 ms alone) while its messages queued behind
theirs for the worker threads (fifth security review, 2026-12-06).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.config import Settings
from sharedcare.governance.audit import AuditAction, AuditRecord, network_of, record_audit, record_refusal
from sharedcare.ingest.hl7v2 import VERSIONS
from sharedcare.ingest.hl7v2_syntax import Encoding, SyntaxProblem, encoding_of
from sharedcare.ingest.messages import (
    KEPT_OF_TOO_LARGE,
    MLLP_PREFIX,
    CertifiedSender,
    Condition,
    MessageError,
    RawMessage,
    StagedMessage,
    cut,
    too_large,
)
from sharedcare.ingest.pipeline import ADAPTERS, IngestReport, Pipeline
from sharedcare.store.database import STORE_BUSY, busy, unreachable, unreachable_reason
from sharedcare.tls import TlsSettings, guarded, peer_subject

log = logging.getLogger("sharedcare.mllp")
START, END = b"\x0b", b"\x1c\x0d"
# The most one frame may hold (a connection buffers up to twice this before it stops reading). The ADT and
# ORU messages handled are a few kilobytes (the synthetic feeds' largest 1.2 KB); a cumulative results report
# with long NTE text runs to tens of kilobytes. No embedded document (ED) is handled.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A start block before the previous frame's end block: the sender lost or never sent that end (an engine restarted
# mid-message, say). The part before it is refused with this; the message after it is a message of its own.
NO_END_BLOCK = "a start block (VT) inside a frame: the previous message's end block (FS CR) is missing"
UK = ZoneInfo("Europe/London")
_LOCATION = re.compile(r"([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?-(\d+)\s*$")


@dataclass(frozen=True)
class Header:
    """The MSH fields an ACK echoes back (and the audit names), each cut to `ECHOED_CHARACTERS`."""

    sending_app: str
    sending_facility: str
    trigger: str
    control_id: str
    version: str


def read_header(payload: bytes) -> Header | None:
    text = payload.decode("latin-1")
    first = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return None
    fields = first.split(first[3])
    try:
        encoding: Encoding | None = encoding_of(first)
    except SyntaxProblem:
        encoding = None
    # MSH-1 is the separator itself, so MSH-n is fields[n - 1].
    def field(n: int) -> str:
        return _echoed(cut(fields[n - 1]), encoding) if len(fields) >= n else ""
    components = field(9).split("^")
    # a version not read is not echoed: the ACK is in 2.4, as the sender was told (AR 203)
    version = field(12) if field(12).split("^")[0] in VERSIONS else "2.4"
    return Header(sending_app=field(3), sending_facility=field(4),
                  trigger=components[1] if len(components) > 1 else "", control_id=field(10), version=version)


def _echoed(value: str, encoding: Encoding | None) -> str:
    """A header field as the ACK (`|^~\\&`) sends it back: the message's own separators become the ACK's, a
    character that is text in the message but a separator in the ACK is escaped (a sender that declared `#`
    its field separator could otherwise send `|` in MSH-10 and add fields to the ACK's MSA), and control
    characters (a frame's VT or FS) are dropped."""
    ours = (dict(zip((encoding.component, encoding.repetition, encoding.esc, encoding.subcomponent), "^~\\&",
                     strict=True)) if encoding else {})
    return "".join(ours.get(ch) or _ESCAPES.get(ch) or ch for ch in value if ch.isprintable())


_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def _escape(text: str) -> str:
    for raw, escaped in _ESCAPES.items():
        text = text.replace(raw, escaped)
    return " ".join(text.split())


def ack(header: Header | None, code: str, text: str = "", where: str = "", now: datetime | None = None,
        error: Condition = Condition.APPLICATION) -> bytes:
    """An ACK (AA, AE or AR), with an ERR segment naming the segment and field when there is one and the
    condition (`error`, ERR-3: table 0357's code and name, as the refusal carries it: `MessageError.condition`)."""
    now = now or utcnow()
    stamp = now.astimezone(UK).strftime("%Y%m%d%H%M%S")
    h = header or Header("", "", "", "", "2.4")
    segments = [
        f"MSH|^~\\&|SHAREDCARE|QRD|{h.sending_app}|{h.sending_facility}|{stamp}||ACK^{h.trigger}^ACK|"
        f"ACK{now.strftime('%Y%m%d%H%M%S%f')}|P|{h.version}",
        f"MSA|{code}|{h.control_id}" + (f"|{_escape(text)[:200]}" if text else ""),
    ]
    if code != "AA":
        found = _LOCATION.search(where)
        location = f"{found.group(1)}^{found.group(2) or 1}^{found.group(3)}" if found else ""
        segments.append(f"ERR|{location}|{location}|{error}^HL70357|E||||{_escape(text)[:500]}")
    return "\r".join(segments).encode("latin-1", errors="replace") + b"\r"


async def _rest_of_frame(reader: asyncio.StreamReader) -> tuple[bytes, int, int]:
    """A frame over the limit, read to its end block and dropped but for its start (what quarantine keeps of it):
    its start, its size, and how many bytes the last read took past its end block (a message sent after it,
    which goes with the connection; none if they are only the line end some engines put after FS CR, as
    `_outside_frames` reads them). Reading it to its end, rather than closing at the limit, lets the sender
    hear the ACK: closed with its bytes unread, the connection is reset and the ACK may be lost with it."""
    head = await reader.read(KEPT_OF_TOO_LARGE)
    size, data = 0, head
    while (end := data.find(END)) < 0:
        size += len(data) - 1  # its last byte may be the end block's first
        chunk = await reader.read(1 << 16)
        if not chunk:
            raise asyncio.IncompleteReadError(head, size + len(data))
        data = data[-1:] + chunk
    after = data[end + len(END):]
    return head[: size + end], size + end, len(after) if after.strip() else 0


@dataclass
class _Outside:
    """A connection's bytes outside frames, dropped: how many in all, and how many times."""

    bytes: int = 0
    times: int = 0


@dataclass(frozen=True)
class MllpLimits:
    """What one listener allows (Settings: SHAREDCARE_MLLP_*). Interface engines hold a connection open
    between bursts and open a new one when it has been closed, resending what was not acknowledged; so an
    idle connection can be let go without losing a message."""

    idle_seconds: float = 300  # between messages
    frame_seconds: float = 60  # from a frame's start to its end (and to send its ACK)
    max_connections: int = 64  # open at once, TLS handshakes included
    max_per_address: int = 16  # from one address (IPv6: one /64): an engine opens one per outbound channel

    @classmethod
    def of(cls, settings: Settings) -> MllpLimits:
        return cls(settings.mllp_idle_seconds, settings.mllp_frame_seconds, settings.mllp_max_connections,
                   settings.mllp_max_per_address)


class _Admission(asyncio.Protocol):
    """Every connection's first protocol: over a cap it is closed at once; else it is handed, at once, to the
    listener's own protocol (its TLS handshake first, on a TLS listener)."""

    def __init__(self, server: MllpServer, inner: Callable[[], asyncio.Protocol]) -> None:
        self.server, self.inner = server, inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        refused = self.server.admit(address, transport)
        if refused:
            cast(asyncio.Transport, transport).abort()  # a listener's connections are stream transports
            self.server.refuse(address, refused, {})
            return
        protocol = self.inner()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class MllpServer:
    """One listener; each connection's messages are stored in order, in a worker thread."""

    def __init__(self, pipeline: Pipeline, tls: TlsSettings | None = None, limits: MllpLimits = MllpLimits()) -> None:
        self.pipeline = pipeline
        self.tls = tls
        self.limits = limits
        self.received = 0
        self.open: list[tuple[str, asyncio.BaseTransport]] = []  # connections admitted: network_of, transport
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}  # per address: its lock, the connections wanting it
        self._refusing: set[asyncio.Future[None]] = set()  # refusals being audited (kept until written)
        self._connections: set[asyncio.Task[None]] = set()  # connections being served, which a stop waits for
        self._in_hand = 0  # messages being handled or answered, which a stop waits for

    def admit(self, address: str, transport: asyncio.BaseTransport) -> str | None:
        """Why a new connection is refused (over a cap), or None when it is counted in. An IPv6 address counts
        by its /64 (`network_of`), which one client holds whole: each of its addresses had a share of its own."""
        self.open = [(n, t) for n, t in self.open if not t.is_closing()]
        if len(self.open) >= self.limits.max_connections:
            return f"more than {self.limits.max_connections} connections open"
        network = network_of(address) or ""
        if sum(1 for n, _ in self.open if n == network) >= self.limits.max_per_address:
            return f"more than {self.limits.max_per_address} connections open from one address"
        self.open.append((network, transport))
        return None

    def refuse(self, address: str, reason: str, detail: dict[str, str]) -> None:
        """Audit a connection closed by the listener (a cap, a frame not finished) in a worker thread, within
        the limits of other refusals at the door; the event loop goes on."""
        def audit() -> None:
            try:
                record_refusal(self.pipeline.db, AuditRecord(AuditAction.RECORD_WRITE, "deny", "mllp", reason=reason,
                                                             source_address=address, detail=detail))
            except Exception:  # the connection is closed either way
                log.exception("mllp: a refused connection from %s could not be audited", address)

        future = asyncio.ensure_future(asyncio.to_thread(audit))
        self._refusing.add(future)
        future.add_done_callback(self._refusing.discard)

    def handle(self, payload: bytes, peer: str, subject: str | None = None, *, size: int | None = None,
               framing: str | None = None) -> bytes:
        """Store one message through the pipeline, audit it and build its ACK (blocking: run it in a thread).
        `peer`: the connection's address and port; `subject`: its certificate, on a TLS listener. A frame the
        listener cannot take is held unread, audited and answered AR as any refusal is: `size`, the bytes of a
        frame over the limit (`payload` is then its start, as much as quarantine keeps), or `framing`, what is
        wrong with its frame."""
        self.received += 1
        header = read_header(payload)
        location = f"message {self.received}" + (f" (MSH-10 {header.control_id})" if header else "")
        filename = MLLP_PREFIX + (f"{subject}@" if subject else "") + peer
        raw = RawMessage(filename, location, payload, "hl7v2")
        unread: MessageError | None = None  # the refusal of a frame not read, held as the sender MSH-4 names
        if size is not None:  # as file ingest holds a message too large to read
            raw = too_large(filename, location, "hl7v2", payload, size, "send it as smaller messages (a report or "
                            "a visit each)", limit=MAX_MESSAGE_BYTES)
            unread = MessageError(str(raw.refused), raw.where, condition=Condition.DATA_TYPE, rejected=True)
        elif framing is not None:
            unread = MessageError(framing, raw.where, condition=Condition.SEGMENT_SEQUENCE, rejected=True)
        if unread is not None and header and header.sending_facility in self.pipeline.framework.organisations:
            unread.source_org = header.sending_facility
        report = IngestReport()
        # deny by default: over TLS, a certificate no organisation lists sends for none
        certified = CertifiedSender.of(self.pipeline.framework, subject or "no certificate") if self.tls else None
        detail = {"message": header.control_id if header else ""} | ({"certificate": subject} if subject else {})
        address = peer.rsplit(":", 1)[0]

        def audit_stored(session: Session, staged: StagedMessage) -> None:
            self._audit_stored(session, staged, address, detail)

        # agreements None: read in the message's own transaction, so a message costs one transaction, its
        # audit entry included
        staged = self.pipeline.ingest_message(ADAPTERS["hl7v2"], raw, None, report, None, staged=unread,
                                              certified=certified, then=audit_stored)
        if staged is None:
            self._audit_refused(header, address, detail, report)
        if size is not None:  # no patient data: the sender's address, the sizes and the item
            log.warning("mllp: %s sent a frame of %d bytes, over the limit of %d; answered AR, its first %d bytes "
                        "held (quarantine #%s)", peer, size, MAX_MESSAGE_BYTES, len(raw.payload),
                        report.quarantine[0]["id"])
        if not report.quarantined:  # stored; a merge it asked for may wait for a reviewer (MSA-3 says so)
            return ack(header, "AA", "; ".join(f"MRG-1: {held['reason']}" for held in report.merges_held))
        problem, refusal = report.quarantine[0], report.errors[0]
        code = "AR" if header is None or refusal.rejected else "AE"
        return ack(header, code, f"{problem['reason']} (quarantine #{problem['id']})", str(problem["where"]),
                   error=refusal.condition)

    def _audit_stored(self, session: Session, staged: StagedMessage, address: str, detail: dict[str, str]) -> None:
        """A stored (or unchanged) message's entry (TRUST AU1), in the message's own transaction: a write by the feed
        (`ORG:application`, its organisation checked against its certificate over TLS), naming the patient
        and the resources created or updated."""
        counts = Counter(r.outcome for r in staged.resources)
        persons = sorted(set(staged.persons.values()))  # nearly always one
        outcome = {"accepted": str(counts["created"] + counts["updated"]), "unchanged": str(counts["unchanged"]),
                   "stale": str(counts["stale"])} | ({"patients": " ".join(persons)} if len(persons) > 1 else {})
        record_audit(session, AuditRecord(
            AuditAction.RECORD_WRITE, "permit", f"{staged.source_org}:{staged.source_system}",
            organisation=staged.source_org, purpose="direct-care", patient_id=persons[0] if persons else None,
            source_address=address, fhir_action="U" if counts["updated"] else "C",
            released=[f"{r.resource_type}/{r.server_id}" for r in staged.resources
                      if r.outcome in ("created", "updated")], detail=detail | outcome))

    def _audit_refused(self, header: Header | None, address: str, detail: dict[str, str], report: IngestReport) -> None:
        """A refused message's entry: a deny by the listener (`mllp`), naming what the message claimed but not
        its reason, which can quote the message's values (the quarantine item keeps it), and limited per
        address like other refusals at the door: anyone who reaches the port can send junk."""
        claimed = f"{header.sending_facility.split('^')[0]}:{header.sending_app.split('^')[0]}" if header else ""
        record_refusal(self.pipeline.db, AuditRecord(
            AuditAction.RECORD_WRITE, "deny", "mllp", source_address=address,
            detail=detail | {"claimed": claimed, "quarantine": str(report.quarantine[0]["id"])}))

    @staticmethod
    def _failed(payload: bytes, peer: str, exc: Exception) -> bytes:
        """The ACK of a message whose handling failed (the store not reachable, above all: restarting, refusing
        connections): AE with ERR-3 207, application internal error, which interface engines treat as ours and
        retry, rather than a connection closed with no answer. Nothing can be audited or quarantined without the
        store; the failure is logged. A message stored before the failure is answered "unchanged" when resent. So
        is a store busy past a writer's wait (`busy`: an MPI relink on SQLite): its transaction rolled back whole."""
        if unreachable(exc):
            log.error("mllp: %s: the record store is not reachable (%s); answered AE", peer, unreachable_reason(exc))
            text = "the record store is not reachable: the message was not stored; send it again shortly"
        elif busy(exc):
            log.error("mllp: %s: %s; answered AE", peer, STORE_BUSY)
            text = "the record store is busy: the message was not stored; send it again shortly"
        else:
            log.exception("mllp: a message from %s could not be handled; answered AE", peer)
            text = "the message could not be handled (an internal error, logged): send it again"
        return ack(read_header(payload), "AE", text, error=Condition.APPLICATION)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "{}:{}".format(*writer.get_extra_info("peername")[:2])
        # the feed's certificate names it: its messages (and quarantine items) say who sent them
        subject = peer_subject(writer.transport) if self.tls else None
        limits = self.limits
        outside = _Outside()
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                try:
                    async with asyncio.timeout(limits.idle_seconds):
                        before = await reader.readuntil(START)
                except TimeoutError:
                    break  # idle: the engine reconnects for its next message
                except asyncio.IncompleteReadError as exc:  # closed by the peer, perhaps after bytes outside a frame
                    self._outside_frames(exc.partial, outside, peer, subject)
                    break
                except asyncio.LimitOverrunError as exc:  # megabytes and no start block: let go
                    self._outside_frames(exc.consumed, outside, peer, subject)
                    break
                self._outside_frames(before[: -len(START)], outside, peer, subject)
                try:
                    async with asyncio.timeout(limits.frame_seconds):
                        try:
                            framed, size, after = await reader.readuntil(END), None, 0
                        except asyncio.LimitOverrunError as over:
                            try:
                                framed, size, after = await _rest_of_frame(reader)
                            # nothing to answer: say it was lost, whether its sender closed the connection or reset
                            # it (a reset is raised before the bytes still buffered are read: counted by the overrun)
                            except (asyncio.IncompleteReadError, ConnectionError) as closed:
                                sent = closed.expected if isinstance(closed, asyncio.IncompleteReadError) else None
                                self.refuse(peer.rsplit(":", 1)[0], f"a frame of at least {sent or over.consumed} "
                                            f"bytes, over the {MAX_MESSAGE_BYTES}-byte limit, closed by its sender "
                                            "before its end block", {"certificate": subject} if subject else {})
                                raise
                except TimeoutError:
                    self.refuse(peer.rsplit(":", 1)[0], f"no whole frame within {limits.frame_seconds:g} s",
                                {"certificate": subject} if subject else {})
                    break
                if size is not None:  # answered; what followed its end block was read with it, so the connection goes
                    await self._answer(writer, framed, peer, subject, size=size)
                    if after:  # unanswered, so the engine resends it; said, so a timed-out sender can be explained
                        self.refuse(peer.rsplit(":", 1)[0], f"{after} bytes sent after a frame over the limit, "
                                    "dropped unanswered with the connection",
                                    {"certificate": subject} if subject else {})
                    break
                *cut_short, payload = framed[: -len(END)].split(START)
                for part in cut_short:  # each part before a start block lost its end block: refused, not joined
                    if part.strip():
                        await self._answer(writer, part, peer, subject, framing=NO_END_BLOCK)
                await self._answer(writer, payload, peer, subject)
        except (asyncio.IncompleteReadError, ConnectionResetError, TimeoutError):
            pass
        finally:
            if outside.times > 1:
                log.warning("mllp: %s sent %d bytes in all outside frames, %d times; dropped unanswered", peer,
                            outside.bytes, outside.times)
            writer.close()
            self._connections.discard(task)

    async def _answer(self, writer: asyncio.StreamWriter, payload: bytes, peer: str, subject: str | None,
                      size: int | None = None, framing: str | None = None) -> None:
        """Handle one message in a worker thread, in its address's turn, and send its ACK. A peer that reads no
        ACK within the frame timeout is let go (TimeoutError): the message is stored, and resent it is answered
        "unchanged"."""
        self._in_hand += 1
        try:
            async with self._turn(peer.rsplit(":", 1)[0]):
                try:
                    response = await asyncio.to_thread(self.handle, payload, peer, subject, size=size,
                                                       framing=framing)
                except Exception as exc:  # answered, not dropped: an engine resends on AE 207
                    response = self._failed(payload, peer, exc)
            writer.write(START + response + END)
            try:
                async with asyncio.timeout(self.limits.frame_seconds):  # a peer that reads no ACKs is let go
                    await writer.drain()
            except TimeoutError:
                log.warning("MLLP: %s read no ACK within %g s; connection closed", peer, self.limits.frame_seconds)
                raise
        finally:
            self._in_hand -= 1

    def _outside_frames(self, dropped: bytes | int, outside: _Outside, peer: str, subject: str | None) -> None:
        """Bytes before a start block (a message sent without one, say), or how many, are dropped unanswered:
        logged and audited (within the limits of refusals at the door) the first time on a connection, counted
        after; their count only, never what they were, which may be a patient's message. Line ends and spaces
        alone are not counted (an engine that ends a frame FS CR LF)."""
        count = dropped if isinstance(dropped, int) else len(dropped) if dropped.strip() else 0
        if not count:
            return
        outside.bytes += count
        outside.times += 1
        if outside.times == 1:
            log.warning("mllp: %s sent %d bytes outside a frame (before a start block, VT); dropped unanswered",
                        peer, count)
            self.refuse(peer.rsplit(":", 1)[0], f"{count} bytes outside a frame (before a start block, VT) dropped "
                        "unanswered", {"certificate": subject} if subject else {})

    @contextlib.asynccontextmanager
    async def _turn(self, address: str) -> AsyncIterator[None]:
        """The address's turn to have a message handled: one at a time per address, so a sender's many
        connections queue behind each other and not in front of other senders' messages."""
        lock, wanting = self._turns.get(address, (asyncio.Lock(), 0))
        self._turns[address] = (lock, wanting + 1)
        try:
            async with lock:
                yield
        finally:
            lock, wanting = self._turns[address]
            if wanting == 1:
                del self._turns[address]
            else:
                self._turns[address] = (lock, wanting - 1)

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None,
                    stop: asyncio.Event | None = None) -> None:
        """Listen until cancelled, or until `stop` is set (`sharedcare mllp` on SIGINT or SIGTERM): then no new
        connection is taken, the messages in hand are answered (within the frame timeout), the connections are
        closed and the refusals being audited are written, so that a sender hears the answer of each message
        stored and resends only those not."""
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.Protocol:  # as asyncio.start_server makes them
            reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self.serve_connection, loop=loop)

        inner = connection if self.tls is None else guarded(connection, self.tls, "mllp", self.pipeline.db)
        server = await loop.create_server(lambda: _Admission(self, inner), host, port)
        async with server:
            if ready is not None:
                ready.set()
            if stop is None:
                await server.serve_forever()
                return
            await stop.wait()
            server.close()
            deadline = loop.time() + self.limits.frame_seconds
            while self._in_hand and loop.time() < deadline:
                await asyncio.sleep(0.05)
            for _, transport in self.open:  # a frame half received is lost: not answered, its sender resends it
                transport.close()
            if pending := [*self._connections, *self._refusing]:
                await asyncio.wait(pending, timeout=self.limits.frame_seconds)

