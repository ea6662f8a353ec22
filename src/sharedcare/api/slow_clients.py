"""`sharedcare serve`'s HTTP connections: a request that does not arrive in time is not waited for.

uvicorn closes a connection left idle after a response (keep-alive, 5 s) but has no timeout for one still
sending its request: a client that sends a header byte every few seconds holds its connection, and a file
descriptor, for ever. Measured (fifth security review, 2026-12-06, docs/architecture.md): 1,100 such
connections from one client, at the 1,024 descriptors a systemd service gets by default, stopped every
clinician's read (20 of 20 timed out at 30 s) and asyncio logged each refused accept, 1.4 GB of log in ten
minutes. So, as Apache's mod_reqtimeout does (`header=20-40,MinRate=500 body=20,MinRate=500`), the
request line and headers must arrive within `SHAREDCARE_HTTP_REQUEST_SECONDS` (R, 20) of the connection
opening or of the previous response, a second more for every `MIN_BYTES_PER_SECOND` received, but never
past `HEADER_MOST` x R whatever the rate; then the body within R of the headers, a second more per 500 bytes
(a large FHIR write over a slow link), never past `BODY_MOST` x R (review, 2026-12-06: without the
ceilings a client sending 500 bytes a second held its connection until the 32 MB body limit, 18 hours).
Else the connection is closed unanswered. A request that has arrived takes as long as its answer takes.

An answer the client does not read is not held for ever either: while its connection's buffer is full
(asyncio has paused writing), the client must take `MIN_BYTES_PER_SECOND` of it in each R seconds, or the
connection is reset, the rest unsent (review, 2026-12-07: 200 pipelined requests never read held a
connection, and 2.9 MB queued, past every deadline).

Deadlines alone still let one address hold every descriptor with connections renewed within them: each
process serves at most `SHAREDCARE_HTTP_CONNECTIONS_PER_ADDRESS` (64) connections from one address at once,
as the MLLP listener caps its own (`SHAREDCARE_MLLP_MAX_PER_ADDRESS`); the next is answered 503 saying why
and closed. An IPv6 address counts by its /64, as refusals at the door are limited (a host is usually given
a whole /64). Over TLS a connection is counted as it opens, before its handshake (`served_tls.py`). Per
process: with `--workers N` one address may hold up to N times as many. Refusals are logged (logger
`sharedcare.http`, WARNING) the first time and then at most once a minute per address, with how many were
refused since: an operator sees which address met the cap without a line per refused connection (asyncio's
own line per refused accept once wrote 1.4 GB in ten minutes, above).

A request line and headers longer than h11 buffers (16 KB) arriving over more than one read are answered as
the app answers an over-long FHIR query: 414 with an OperationOutcome (431 when the headers are what is too
long), not uvicorn's plain-text 400 (review, 2026-12-07: a 200 KB URL got "Invalid HTTP request received.").
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
import uuid
from collections import Counter
from functools import cache
from http import HTTPStatus

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from sharedcare.api.bodies import FHIR_QUERY_MAX, in_words
from sharedcare.api.outcomes import FHIR_JSON, operation_outcome
from sharedcare.config import load_settings
from sharedcare.governance.audit import network_of

log = logging.getLogger("sharedcare.http")

MIN_BYTES_PER_SECOND = 500  # mod_reqtimeout's MinRate (and the least a client must read of its answers)
HEADER_MOST = 2  # x R: the request line and headers' ceiling (mod_reqtimeout's header=20-40)
BODY_MOST = 10  # x R: the body's ceiling (200 s at R = 20: a 32 MB Bundle needs 160 KB/s, 1 MB 5 KB/s)


@cache
def request_seconds() -> float:
    """This process's SHAREDCARE_HTTP_REQUEST_SECONDS (read once: a protocol is made per connection)."""
    return float(load_settings().http_request_seconds)


@cache
def connections_per_address() -> int:
    """This process's SHAREDCARE_HTTP_CONNECTIONS_PER_ADDRESS (read once, as `request_seconds`)."""
    return load_settings().http_connections_per_address


_OPEN: Counter[str] = Counter()  # this process's connections by address, an IPv6 one's /64 (one event loop: no lock)
_WHY = b"too many connections from your address at once (SHAREDCARE_HTTP_CONNECTIONS_PER_ADDRESS)\n"
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n"
            + f"Content-Length: {len(_WHY)}\r\n\r\n".encode() + _WHY)


REFUSALS_LOGGED_EVERY = 60.0  # seconds between an address's lines about its refused connections


class RefusalLog:
    """Logs connections refused at an address's cap: an address's first refusal at once, then one line a
    minute at most saying how many more there were. Holds one entry per address refused within the minute."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[float, int]] = {}  # address -> (when last logged, refused since then)

    def refused(self, key: str) -> None:
        now = time.monotonic()
        logged, unlogged = self._since.get(key, (float("-inf"), 0))
        if now - logged < REFUSALS_LOGGED_EVERY:
            self._since[key] = (logged, unlogged + 1)
            return
        if len(self._since) > 10_000:  # addresses refused over a minute ago need no entry: forget them
            self._since = {k: v for k, v in self._since.items() if now - v[0] < REFUSALS_LOGGED_EVERY}
        self._since[key] = (now, 0)
        more = f"; {unlogged} more refused since the last line" if unlogged else ""
        log.warning("HTTP: a connection from %s refused: %d open from that address, the most allowed "
                    "(SHAREDCARE_HTTP_CONNECTIONS_PER_ADDRESS)%s", key, connections_per_address(), more)


_REFUSALS = RefusalLog()  # this process's (one event loop: no lock)


class Place:
    """One connection counted in its address's share; given back once, by whichever protocol sees the
    connection end first (over TLS the handshake's, or HTTP's after it)."""

    def __init__(self, key: str | None) -> None:
        self.key = key  # what it is counted under in _OPEN; None: not counted (not IP), or given back

    def give_back(self) -> None:
        if self.key is not None:
            _OPEN[self.key] -= 1
            if not _OPEN[self.key]:
                del _OPEN[self.key]
            self.key = None


def admit(transport: asyncio.BaseTransport) -> Place | None:
    """A new connection's place in its address's share, or None when that share is taken (refuse it)."""
    peer = transport.get_extra_info("peername")
    key = network_of(str(peer[0])) if isinstance(peer, tuple) and peer else None
    if key is None:
        return Place(None)
    if _OPEN[key] >= connections_per_address():
        _REFUSALS.refused(key)
        return None
    _OPEN[key] += 1
    return Place(key)


class TimedHttpProtocol(H11Protocol):
    """uvicorn's h11 protocol (the `auto` one without httptools), closing a connection whose request is late."""

    _timer: asyncio.TimerHandle | None = None
    _due = 0.0
    _ceiling = 0.0  # the phase's due time never passes this, however many bytes arrive
    _phase: type[h11.IDLE] | type[h11.SEND_BODY] = h11.IDLE  # awaiting the headers, or the body

    _stalled: asyncio.TimerHandle | None = None  # while writing is paused: checks that the client still reads
    _unsent = 0  # bytes waiting to be sent at the last check

    place: Place | None = None  # counted in its address's share; over TLS, by TlsHttpProtocol before the handshake

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.place is None:
            self.place = admit(transport)
        if self.place is None:
            transport.write(_REFUSED)
            transport.close()
            return
        self._begin(h11.IDLE)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_sending()

    def _watch_sending(self) -> None:
        self._unsent = self.transport.get_write_buffer_size()
        self._stalled = self.loop.call_later(request_seconds(), self._check_sending)

    def _check_sending(self) -> None:
        """Still paused R seconds on (nothing more is written meanwhile: uvicorn waits to send): a client that
        took the minimum rate keeps its connection, one that did not is dropped (`abort`, as `close` would
        wait to send what it does not read)."""
        if self._unsent - self.transport.get_write_buffer_size() >= MIN_BYTES_PER_SECOND * request_seconds():
            self._watch_sending()
        else:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:  # reset: else the kernel goes on sending what it holds (megabytes)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    def resume_writing(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
        super().resume_writing()

    def data_received(self, data: bytes) -> None:
        self._due = min(self._due + len(data) / MIN_BYTES_PER_SECOND, self._ceiling)
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        if self.conn.their_state is not h11.SEND_BODY:  # else answered early: the rest of the body keeps its time
            self._begin(h11.IDLE)  # the next request's time starts now (an idle keep-alive is closed sooner)
        super().on_response_complete()
        self._follow()  # a pipelined request, read by uvicorn now

    def _follow(self) -> None:
        """The headers are in (the body's time begins), or a body answered early has ended (the next request's)."""
        state = self.conn.their_state
        if state is not self._phase and (state is h11.IDLE or state is h11.SEND_BODY):
            self._begin(state)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._stalled):
            if timer is not None:
                timer.cancel()
        if self.place is not None:
            self.place.give_back()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 could not read: for one whose line and headers outgrew h11's
        buffer, 414 (the request line is past FHIR_QUERY_MAX, or not ended) or 431 (the headers), saying
        so, an OperationOutcome to an API path; any other unreadable request keeps uvicorn's 400."""
        head = self.conn.trailing_data[0]
        most = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        if len(head) <= most:
            super().send_400_response(msg)
            return
        line = head.find(b"\r\n")
        status = 414 if line < 0 or line > FHIR_QUERY_MAX else 431
        text = (f"the request's address is longer than the server reads ({in_words(most)} with the headers): "
                "a search needs only a patient, a few criteria and a page position" if status == 414 else
                f"the request's headers are longer than the server reads ({in_words(most)} together)")
        target = head.split(b" ", 2)[1] if head.count(b" ", 0, 32) else b""
        request_id = str(uuid.uuid4())
        if target.startswith((b"/fhir", b"/api", b"/audit/")):
            kind, body = FHIR_JSON.encode(), operation_outcome(status, "too-long", text, request_id).body
        else:
            kind, body = b"text/plain; charset=utf-8", text.encode()
        headers = [(b"content-type", kind), (b"connection", b"close"), (b"cache-control", b"no-store"),
                   (b"x-request-id", request_id.encode()), (b"x-content-type-options", b"nosniff")]
        for event in (h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase),
                      h11.Data(data=bytes(body)), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def _begin(self, phase: type[h11.IDLE] | type[h11.SEND_BODY]) -> None:
        """A phase begins now: due in R, at the latest in HEADER_MOST or BODY_MOST x R."""
        self._phase = phase
        most = BODY_MOST if phase is h11.SEND_BODY else HEADER_MOST
        if self._timer is not None:
            self._timer.cancel()
        now = self.loop.time()
        self._due, self._ceiling = now + request_seconds(), now + most * request_seconds()
        self._timer = self.loop.call_at(self._due, self._check)

    def _check(self) -> None:
        if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            return  # gone, or the request is in and being answered
        if self.loop.time() < self._due:  # bytes arrived meanwhile, and with them more time
            self._timer = self.loop.call_at(self._due, self._check)
            return
        self.transport.close()
