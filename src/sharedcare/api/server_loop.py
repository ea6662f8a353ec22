"""The event loop each process of `sharedcare serve --workers N` runs: asyncio's, sharing new connections.

The processes share one listening socket. asyncio accepts every connection waiting on it each time it
becomes readable, so the first process to wake took a whole burst: the eight keep-alive connections a
load generator opens at once were often all served by one process, on one core, while the other stood
idle, and a large `$everything`'s latency under load doubled (benchmarks/api.py, docs/architecture.md).
This loop accepts one connection a turn and then leaves the socket to the other processes for a
millisecond, so a burst is shared out; connections that arrive further apart are accepted at once, and a
process still takes up to a thousand new connections a second (far more than it serves requests).
uvicorn takes a loop by import string but has no setting for this, and asyncio none but this method's
`backlog` argument, which `create_server` also gives the socket's listen queue, where a small value would
refuse bursts of new connections outright: hence the override.

One process runs it too (fifth security review, 2026-12-06): out of file descriptors, asyncio's own loop
logged a traceback for every connection it could not accept, up to `backlog` (uvicorn's 2,048) a turn, and
wrote 1.4 GB of log in ten minutes of a connection flood; accepting one a turn, it logs once a second.
"""

from __future__ import annotations

import asyncio
from typing import Any

LOOP = "sharedcare.api.server_loop:SharingLoop"  # as uvicorn takes it
PAUSE_S = 0.001


class SharingLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop (uvicorn's default on Linux), accepting one connection, then pausing."""

    def _accept_connection(self, protocol_factory: Any, sock: Any, sslcontext: Any = None, server: Any = None,
                           backlog: int = 100, *args: Any) -> None:
        super()._accept_connection(protocol_factory, sock, sslcontext, server, 1, *args)  # type: ignore[misc]
        if server is None or not server.is_serving():
            return
        try:
            self._selector.get_key(sock.fileno())  # type: ignore[attr-defined]
        except KeyError:  # asyncio stopped listening itself (out of file descriptors): its own 1 s retry stands
            return
        self._remove_reader(sock.fileno())  # type: ignore[attr-defined]
        self.call_later(PAUSE_S, self._resume, protocol_factory, sock, sslcontext, server, backlog, *args)

    def _resume(self, protocol_factory: Any, sock: Any, sslcontext: Any, server: Any, backlog: int,
                *args: Any) -> None:
        if server.is_serving():  # not closed meanwhile
            self._add_reader(sock.fileno(), self._accept_connection, protocol_factory,  # type: ignore[attr-defined]
                             sock, sslcontext, server, backlog, *args)
