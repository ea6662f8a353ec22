"""A client that never finishes sending its request is not waited for (fifth security review, 2026-12-06):
uvicorn has no header-read timeout, and connections dripping a byte at a time held their sockets for ever,
until, at a service's usual limit of open files, a clinician's read could not connect at all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import pytest
from tests.conftest import FRAMEWORK_PATH

from sharedcare.api import slow_clients
from sharedcare.api.slow_clients import admit
from sharedcare.store.database import Database

pytestmark = pytest.mark.usefixtures("deployment_keys")  # `serve` refuses demo mode beside PostgreSQL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _serving(db: Database, tmp_path: Path, open_files: int | None = None,
             request_seconds: int = 2, per_address: int = 64) -> Iterator[tuple[int, Path]]:
    """`sharedcare serve` on the test's store, a request's deadline `request_seconds`, at most `per_address`
    connections from one address (and at most `open_files` open files, hard limit, if given); its port and log."""
    port = _free_port()
    env = {**os.environ, "SHAREDCARE_DB": db.url.render_as_string(hide_password=False),
           "SHAREDCARE_FRAMEWORK": str(FRAMEWORK_PATH), "SHAREDCARE_HTTP_REQUEST_SECONDS": str(request_seconds),
           "SHAREDCARE_HTTP_CONNECTIONS_PER_ADDRESS": str(per_address)}
    limited = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))) if open_files else None
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-c", "from sharedcare.cli import app; app()", "serve",  # noqa: S603
                                   "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  preexec_fn=limited)  # noqa: PLW1509
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            else:
                pytest.fail(f"the server did not start: {log_path.read_text()[-3000:]}")
            yield port, log_path
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture
def served(db: Database, tmp_path: Path) -> Iterator[int]:
    with _serving(db, tmp_path) as (port, _):
        yield port


def test_a_request_dripped_a_byte_at_a_time_is_closed_after_its_deadline(served: int) -> None:
    with socket.create_connection(("127.0.0.1", served)) as dripping, \
            socket.create_connection(("127.0.0.1", served)) as silent:
        taken = _held_for(dripping, b"GET /fhir/metadata HTTP/1.1\r\nX-Slow: " + b"a" * 64, 4, 8, sends=4)
        assert taken is not None and taken < 4  # 2 s, and 2 ms for each byte received
        silent.settimeout(1)
        assert silent.recv(1024) == b""  # one that sent nothing is closed as well
    # a client that sends its request in time is answered, before and after a slow one
    assert httpx.get(f"http://127.0.0.1:{served}/fhir/metadata", timeout=5).status_code == 200


def _held_for(sock: socket.socket, data: bytes, rate: int, seconds: float, sends: int = 20) -> float | None:
    """Send `data` at `rate` bytes a second, in `sends` pieces a second, until the server closes the
    connection; how long that took, or None if it was still open after `seconds` (or everything was sent)."""
    start = time.monotonic()
    sock.settimeout(1 / sends)
    step = max(rate // sends, 1)
    for at in range(0, min(len(data), int(seconds * rate)), step):
        try:
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except ConnectionResetError:  # closed with bytes of ours unread
            return time.monotonic() - start
        try:
            sock.send(data[at:at + step])
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start
    return None


def test_a_request_sent_at_twice_the_minimum_rate_is_still_closed_at_its_ceiling(
        db: Database, tmp_path: Path) -> None:
    """A second more per 500 bytes had no end: a client sending 1,000 bytes a second earned two seconds a
    second and kept its connection as long as it liked (review, 2026-12-06). The headers now have at most
    2 x SHAREDCARE_HTTP_REQUEST_SECONDS whatever the rate, the body 10 x (here 1 s: 2 s and 10 s)."""
    with _serving(db, tmp_path, request_seconds=1) as (port, _):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            taken = _held_for(sock, b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 12_000,
                              1000, 8)
            assert taken is not None and taken < 3.5  # the headers' ceiling, 2 s
        with socket.create_connection(("127.0.0.1", port)) as sock:
            body = b"q=" + b"a" * 59_998  # under the 64 KB limit: read whole before the route runs
            sock.sendall(b"POST /fhir/Patient/_search HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode())
            taken = _held_for(sock, body, 1000, 16)
            assert taken is not None and 9 < taken < 12.5  # the body's ceiling, 10 s after the headers
        assert httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=5).status_code == 200


def test_a_slow_but_steady_body_and_a_keep_alive_connection_are_still_answered(served: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{served}", timeout=10) as client:
        for _ in range(3):  # one connection, kept alive: each request has its own time
            assert client.get("/fhir/metadata").status_code == 200
            time.sleep(1.5)
    with socket.create_connection(("127.0.0.1", served)) as sock:
        body = b"x" * 3000  # 3 s at 1,000 bytes a second: past 2 s, but faster than 500 bytes a second
        sock.sendall(b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode())
        for at in range(0, len(body), 250):
            sock.sendall(body[at:at + 250])
            time.sleep(0.25)
        sock.settimeout(5)
        assert sock.recv(1024).startswith(b"HTTP/1.1 401")  # answered (no credentials), not cut off


def test_out_of_open_files_the_server_logs_a_refused_connection_once_a_second_not_thousands(
        db: Database, tmp_path: Path) -> None:
    """asyncio's own loop, out of file descriptors, logged a traceback for every accept it could not make, up to
    uvicorn's backlog (2,048) a turn: 1.4 GB of log in ten minutes of a connection flood. Held to 64 files
    here (a limit `serve` cannot raise), 100 connections for 3 s."""
    with _serving(db, tmp_path, open_files=64) as (port, log_path):
        held = []
        for _ in range(100):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        time.sleep(3)
        refused = log_path.read_text(errors="replace").count("out of system resource")
        for sock in held:
            sock.close()
    assert 1 <= refused <= 10


def test_connections_from_one_address_past_its_share_are_refused_at_once(db: Database, tmp_path: Path) -> None:
    """One address holding SHAREDCARE_HTTP_CONNECTIONS_PER_ADDRESS (here 4) connections, each within its
    deadline, gets no more: the next is answered 503 saying why and closed at once rather than held for its
    deadline (2 s) like the four; once one of them closes, that address is served again."""
    with _serving(db, tmp_path, per_address=4) as (port, _):
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        try:
            with socket.create_connection(("127.0.0.1", port)) as refused:
                refused.settimeout(1)
                answer = refused.recv(1024)
                assert answer.startswith(b"HTTP/1.1 503") and b"SHAREDCARE_HTTP_CONNECTIONS_PER_ADDRESS" in answer
            with socket.create_connection(("127.0.0.1", port)) as dripping:
                taken = _held_for(dripping, b"GET /fhir/metadata HTTP/1.1\r\nX-Slow: " + b"a" * 64, 4, 8, sends=4)
                assert taken is not None and taken < 0.6  # not the 2 s a connection within the share is held
        finally:
            held.pop().close()
        time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=5).status_code == 200
        for sock in held:
            sock.close()


def test_a_client_that_never_reads_its_answers_is_dropped_after_the_deadline(db: Database, tmp_path: Path) -> None:
    """Once its request had arrived a connection had no deadline: a client sending 200 requests at once and
    reading none of the answers held its connection, and megabytes of them, for as long as it liked (review,
    2026-12-07). Two such clients fill their address's share (2); once the server has waited the deadline
    (2 s) with answers they do not take, it drops them, the address is served again, and what its kernel
    still held for them (megabytes) is not sent after all."""
    with _serving(db, tmp_path, per_address=2) as (port, _):
        requests = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 200  # 12.7 MB of answers
        with contextlib.ExitStack() as stack:
            readers = [stack.enter_context(socket.socket()) for _ in range(2)]
            for reader in readers:
                reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                reader.connect(("127.0.0.1", port))
                reader.sendall(requests)
            assert httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=5).status_code == 503
            start = time.monotonic()
            # both dropped: with one still held, reading it below would take its answers at full speed
            while not _served_twice_at_once(port):
                assert time.monotonic() - start < 10, "connections that read nothing are still held"
                time.sleep(0.2)
            assert all(_left_to_read(reader) < 100_000 for reader in readers)


def _served_twice_at_once(port: int) -> bool:
    """Whether two connections open at once from this address are both answered: its share (2) is free."""
    with socket.create_connection(("127.0.0.1", port)) as one, socket.create_connection(("127.0.0.1", port)) as two:
        for sock in (one, two):
            sock.settimeout(5)
            sock.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return all(sock.recv(12) == b"HTTP/1.1 200" for sock in (one, two))


def _left_to_read(sock: socket.socket) -> int:
    """How many bytes `sock` still receives before its connection ends (reset or closed)."""
    sock.settimeout(5)
    received = 0
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(65536):
            received += len(data)
    return received



def test_the_addresses_of_one_ipv6_64_share_one_addresss_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host is usually given a whole IPv6 /64: counted by exact address, one client took the share again
    from each of its addresses (review, 2026-12-07). They count together, as refusals at the door are
    limited; another /64 has a share of its own."""
    monkeypatch.setattr(slow_clients, "connections_per_address", lambda: 1)

    def opened(address: str) -> asyncio.BaseTransport:
        return asyncio.BaseTransport({"peername": (address, 50_000, 0, 0)})

    first, other = admit(opened("2001:db8:1:2::1")), admit(opened("2001:db8:1:3::1"))
    assert first is not None and other is not None
    assert admit(opened("2001:db8:1:2:ffff::9")) is None
    first.give_back()
    again = admit(opened("2001:db8:1:2:ffff::9"))
    assert again is not None
    for place in (other, again):
        place.give_back()


def test_connections_refused_at_an_addresss_cap_are_logged_once_a_minute_with_a_count(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An operator sees which address met its cap and how often, without a line per refused connection:
    the first refusal is logged at once, the rest of the minute counted into the next line."""
    monkeypatch.setattr(slow_clients, "connections_per_address", lambda: 1)
    monkeypatch.setattr(slow_clients, "_REFUSALS", slow_clients.RefusalLog())
    now = [1_000.0]
    monkeypatch.setattr(slow_clients.time, "monotonic", lambda: now[0])
    opened = asyncio.BaseTransport({"peername": ("192.0.2.7", 50_000)})
    held = admit(opened)
    assert held is not None
    with caplog.at_level(logging.WARNING, logger="sharedcare.http"):
        for _ in range(5):
            assert admit(opened) is None
        now[0] += 61
        assert admit(opened) is None
    held.give_back()
    lines = [record.getMessage() for record in caplog.records if record.name == "sharedcare.http"]
    assert lines == [
        "HTTP: a connection from 192.0.2.7 refused: 1 open from that address, the most allowed "
        "(SHAREDCARE_HTTP_CONNECTIONS_PER_ADDRESS)",
        "HTTP: a connection from 192.0.2.7 refused: 1 open from that address, the most allowed "
        "(SHAREDCARE_HTTP_CONNECTIONS_PER_ADDRESS); 4 more refused since the last line",
    ]
