"""`sharedcare serve` over TLS: uvicorn's HTTP protocol behind our own handshake (sharedcare/tls.py), so a
connection refused at the handshake is logged and audited with its address, which uvicorn's own ssl_*
options cannot do (asyncio drops a failed handshake silently); then HTTP as without TLS, a late request
not waited for (`slow_clients.py`). A connection counts in its address's share as it opens, not once its
handshake is done: else silent connections, each waited for up to `HANDSHAKE_SECONDS`, went uncounted and
one address could hold every file descriptor (review, 2026-12-07). uvicorn takes the protocol class as its
`http` setting and makes one per connection in each worker process, which reads the environment's
settings (SHAREDCARE_TLS_*) once.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.server import ServerState

from sharedcare.api.slow_clients import Place, TimedHttpProtocol, admit
from sharedcare.config import load_settings
from sharedcare.errors import ConfigError
from sharedcare.store.database import Database
from sharedcare.tls import HandshakeFirst, TlsSettings, tls_settings


@cache
def _process_setup() -> tuple[TlsSettings, Database]:
    """This process's TLS settings and the store refusals are audited in."""
    settings = load_settings()
    tls = tls_settings(settings)
    if tls is None:
        raise ConfigError("TlsHttpProtocol serves TLS: SHAREDCARE_TLS_CERT and SHAREDCARE_TLS_KEY must be set")
    return tls, Database(settings.database_url, settings.audit_chain_key, settings.audit_chain_keys_retired)


class TlsHttpProtocol(HandshakeFirst):
    """One HTTP connection: the handshake first, then uvicorn's h11 protocol with a deadline for each request."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        tls, database = _process_setup()
        self.http = TimedHttpProtocol(config=config, server_state=server_state, app_state=app_state, _loop=_loop)
        super().__init__(self.http, tls, "http", database)
        self.place: Place | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Over its address's share the connection is dropped unanswered: no handshake, so no HTTP 503."""
        self.place = self.http.place = admit(transport)
        if self.place is None:
            cast(asyncio.Transport, transport).abort()  # a listener's connections are stream transports
            return
        super().connection_made(transport)

    async def handshake(self, transport: asyncio.Transport) -> None:
        try:
            await super().handshake(transport)
        finally:
            self._ended_before_http()

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended_before_http()
        super().connection_lost(exc)

    def _ended_before_http(self) -> None:
        """A connection HTTP never had (a failed or abandoned handshake) gives back its place; after the
        hand-over HTTP gives it back when the connection ends."""
        if not self.handed_over and self.place is not None:
            self.place.give_back()
