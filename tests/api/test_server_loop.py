"""The server processes' event loop (`api/server_loop.py`) leaves a burst of new connections to be
shared: one a turn, then a pause in which another process may take the next; none is left waiting."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sharedcare.api import server_loop


def test_a_burst_of_connections_is_taken_one_at_a_time_and_all_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_loop, "PAUSE_S", 0.3)  # long enough that no slow test machine blurs the turns
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]  # queued before serving
    made: list[float] = []

    class Counted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(loop.time())

    async def serve() -> tuple[int, int]:
        server = await loop.create_server(Counted, sock=listener)
        await asyncio.sleep(0.1)
        first_turn = len(made)
        await asyncio.sleep(1.2)
        server.close()
        await server.wait_closed()
        return first_turn, len(made)

    loop = server_loop.SharingLoop()
    try:
        first_turn, in_all = loop.run_until_complete(serve())
    finally:
        loop.close()
        for client in clients:
            client.close()
    assert (first_turn, in_all) == (1, 3)
    assert made[2] - made[1] >= 0.29
