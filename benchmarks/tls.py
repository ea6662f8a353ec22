"""What mutual TLS costs `sharedcare serve`: server CPU per request, plain HTTP against mutual TLS with a new
connection (a full handshake) per request and with one kept-alive connection.

Two servers on one fresh SQLite store, one plain and one with SHAREDCARE_TLS_* (client certificates
required, throwaway certificates from tests/tls_certs.py), each in its own process. Rounds alternate between
them; each round sends `--requests` GETs of /fhir/metadata (a cheap route, so the connection's cost shows)
and reads the server process's CPU time (user + system, /proc) before and after. Figures are medians over
rounds, in server CPU milliseconds per request; the ratio is against plain HTTP with a new connection.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/tls.py --rounds 7 --requests 200
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.tls_certs
from tests.tls_certs import make_pki  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(env: dict[str, str], verify: object, scheme: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", "from sharedcare.cli import app; app()", "serve",  # noqa: S603
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"{scheme}://localhost:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/fhir/metadata", verify=verify, timeout=2).status_code == 200:  # type: ignore[arg-type]
                return server, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sharedcare-tls-bench-"))
    pki = make_pki(folder)
    base = {**os.environ, "SHAREDCARE_DB": f"sqlite:///{folder / 'store.db'}", "PYTHONPATH": str(ROOT / "src"),
            # outside demo mode, which `serve` refuses beside TLS
            "SHAREDCARE_SECRET": secrets.token_hex(32), "SHAREDCARE_PSEUDONYM_KEY": secrets.token_hex(32)}
    tls_env = {**base, "SHAREDCARE_TLS_CERT": str(pki.server_cert), "SHAREDCARE_TLS_KEY": str(pki.server_key),
               "SHAREDCARE_TLS_CLIENT_CA": str(pki.ca)}
    trusted = pki.client_context(pki.client)
    plain_server, plain_url = _start(base, True, "http")
    tls_server, tls_url = _start(tls_env, trusted, "https")

    def new_connections(url: str, verify: object) -> None:
        for _ in range(args.requests):
            with httpx.Client(verify=verify) as client:  # type: ignore[arg-type]
                client.get(f"{url}/fhir/metadata").raise_for_status()

    def kept_alive(url: str, verify: object) -> None:
        with httpx.Client(verify=verify) as client:  # type: ignore[arg-type]
            for _ in range(args.requests):
                client.get(f"{url}/fhir/metadata").raise_for_status()

    cases: dict[str, tuple[subprocess.Popen[bytes], Callable[[], None]]] = {
        "plain, new connection": (plain_server, lambda: new_connections(plain_url, True)),
        "mutual TLS, new connection": (tls_server, lambda: new_connections(tls_url, trusted)),
        "plain, kept alive": (plain_server, lambda: kept_alive(plain_url, True)),
        "mutual TLS, kept alive": (tls_server, lambda: kept_alive(tls_url, trusted)),
    }
    per_request: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for _ in range(args.rounds):
            for name, (server, run) in cases.items():
                before = _cpu_seconds(server.pid)
                run()
                per_request[name].append(1000 * (_cpu_seconds(server.pid) - before) / args.requests)
    finally:
        for server in (plain_server, tls_server):
            server.terminate()
            server.wait(timeout=30)
    baseline = statistics.median(per_request["plain, new connection"])
    result = {name: {"server_cpu_ms_per_request": round(statistics.median(values), 3),
                     "ratio": round(statistics.median(values) / baseline, 2)} for name, values in per_request.items()}
    result["load_average"] = os.getloadavg()  # type: ignore[assignment]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
