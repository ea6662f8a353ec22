"""What SMART on FHIR costs per request: the revocation check every request now makes, and the token
endpoint a backend calls every five minutes.

In one process, on SQLite (or --database):
- token check: `read_token` (signature, expiry) alone is the baseline; with the `revoked_tokens` lookup,
  against a table of --revoked rows; the ratio is what revocation adds to every request;
- client credentials: a full `POST /oauth/token` with an RS384 assertion (verify, replay check, agreement,
  audit), through FastAPI's TestClient, against `GET /.well-known/smart-configuration` as the baseline
  of an HTTP round trip in the same client.

Usage: python benchmarks/smart.py [--revoked 10000] [--runs 300] [--database URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet, RSAKey
from rich.console import Console
from rich.table import Table

from sharedcare.api.app import create_app
from sharedcare.api.auth import mint_token, read_token
from sharedcare.clock import utcnow
from sharedcare.config import load_settings
from sharedcare.governance.clients import add_client
from sharedcare.governance.framework import load_framework
from sharedcare.governance.tokens import refusal
from sharedcare.store.database import Database
from sharedcare.store.models import RevokedToken

RESULTS = Path(__file__).parent / "results"


def _median_ms(runs: int, step: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revoked", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--database")
    args = parser.parse_args()
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # the in-process test server speaks plain HTTP
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{Path(tmp) / 'smart.db'}"
        db = Database(url)
        db.migrate()
        fw = load_framework()
        settings = replace(load_settings(), database_url=url, demo=True)
        key = RSAKey.generate_key(2048, parameters={"kid": "bench"})
        expires = utcnow() + timedelta(hours=1)
        with db.session() as session:
            session.add_all(RevokedToken(jti=str(uuid.uuid4()), revoked_at=utcnow(), expires_at=expires)
                            for _ in range(args.revoked))
            add_client(session, fw, "bench", "Bench", "backend", by="bench", organisation="RXR", role="acute_clinician",
                       jwks=dict(KeySet([key]).as_dict(private=False)))
        token = mint_token(settings, fw, "dr.patel")

        def checked() -> None:
            claims = read_token(settings, token)
            with db.session() as session:
                assert refusal(session, claims, fw) is None

        baseline_check = _median_ms(args.runs, lambda: read_token(settings, token))
        with_revocation = _median_ms(args.runs, checked)

        client = TestClient(create_app(settings, framework=fw, database=db))

        def assertion() -> str:
            now = int(time.time())
            claims = {"iss": "bench", "sub": "bench", "aud": "http://testserver/oauth/token", "exp": now + 120,
                      "jti": str(uuid.uuid4())}
            return jose_jwt.encode({"alg": "RS384", "kid": "bench"}, claims, key, algorithms=["RS384"])

        def token_request() -> None:
            response = client.post("/oauth/token", data={
                "grant_type": "client_credentials", "scope": "system/*.read", "client_assertion": assertion(),
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
            assert response.status_code == 200, response.text

        baseline_http = _median_ms(args.runs, lambda: client.get("/.well-known/smart-configuration"))
        token_endpoint = _median_ms(args.runs, token_request)
        db.dispose()

    figures = {
        "database": url.split(":")[0], "revoked_rows": args.revoked, "runs": args.runs,
        "token_check_ms": round(baseline_check, 4), "token_check_with_revocation_ms": round(with_revocation, 4),
        "revocation_ratio": round(with_revocation / baseline_check, 2),
        "http_round_trip_ms": round(baseline_http, 3), "client_credentials_token_ms": round(token_endpoint, 3),
        "token_endpoint_ratio": round(token_endpoint / baseline_http, 2),
    }
    table = Table(title="SMART on FHIR: medians per request")
    for column in ("what", "median ms", "baseline ms", "ratio"):
        table.add_column(column)
    table.add_row(f"token check + revocation lookup ({args.revoked} revoked)", f"{with_revocation:.3f}",
                  f"{baseline_check:.3f}", f"{figures['revocation_ratio']}")
    table.add_row("client credentials token (RS384 assertion)", f"{token_endpoint:.2f}", f"{baseline_http:.2f}",
                  f"{figures['token_endpoint_ratio']}")
    Console(stderr=True).print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "smart.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
