"""`sharedcare serve`'s HTTP connections: a request that does not arrive in time is not waited for.

uvicorn closes a connection left idle after a response (keep-alive, 5 s) but has no timeout for one still
sending its request: a client that sends a header byte every few seconds holds its connection, and a file
descriptor, for ever. Measured (fifth security review, 2026-12-06, docs/architecture.md): 1,100 such
connections from one client, at the 1,024 descriptors a systemd service gets by default, stopped every
clinician's read (20 of 20 timed out at 30 s) and asyncio logged each refused accept, 1.4 GB of log in ten
minutes. So, as Apache's mod_reqtimeout does, each request must arrive whole (head and body) within
`SHAREDCARE_HTTP_REQUEST_SECONDS` (20) of the connection opening or of the previous response, a second
more for every `MIN_BYTES_PER_SECOND` received (a large FHIR write over a slow link); else the connection
is closed unanswered. A request that has arrived takes as long as its answer takes.
"""

from __future__ import annotations

import asyncio
from functools import cache

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from sharedcare.config import load_settings

MIN_BYTES_PER_SECOND = 500  # mod_reqtimeout's MinRate


@cache
def request_seconds() -> float:
    """This process's SHAREDCARE_HTTP_REQUEST_SECONDS (read once: a protocol is made per connection)."""
    return float(load_settings().http_request_seconds)


class TimedHttpProtocol(H11Protocol):
    """uvicorn's h11 protocol (the `auto` one without httptools), closing a connection whose request is late."""

    _timer: asyncio.TimerHandle | None = None
    _due = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start()

    def data_received(self, data: bytes) -> None:
        self._due += len(data) / MIN_BYTES_PER_SECOND
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._start()  # the next request's time starts now (an idle keep-alive is closed sooner, by uvicorn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._due = self.loop.time() + request_seconds()
        self._timer = self.loop.call_at(self._due, self._check)

    def _check(self) -> None:
        if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            return  # gone, or the request is in and being answered
        if self.loop.time() < self._due:  # bytes arrived meanwhile, and with them more time
            self._timer = self.loop.call_at(self._due, self._check)
            return
        self.transport.close()
