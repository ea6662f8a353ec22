"""The live server the browser tests talk to: the app on a free loopback port in a thread, with uvicorn's
access log kept in memory (a module of its own, so that the conftest and a test importing it share one log)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AccessLog(logging.Handler):
    """uvicorn's access log lines (`client - "GET /path?query HTTP/1.1" 200`), kept in memory."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


ACCESS_LOG = AccessLog()  # one for every server of a test: each uvicorn Config sets its logger up afresh


class LiveServer:
    def __init__(self, app: FastAPI) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        access = logging.getLogger("uvicorn.access")
        access.handlers, access.level = [ACCESS_LOG], logging.INFO
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
