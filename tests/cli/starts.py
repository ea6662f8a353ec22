"""A deployment for the tests of what `serve` and `mllp` do as they start: its keys and a SQLite store in a
folder, and both commands made to return once started instead of listening."""

from __future__ import annotations

from pathlib import Path

import pytest
import uvicorn
from tests.conftest import DEPLOYMENT_KEYS

from sharedcare.ingest.mllp import MllpServer


def deployment_that_starts_and_stops(monkeypatch: pytest.MonkeyPatch, folder: Path, framework: Path) -> Path:
    """The deployment's environment (no TLS, no demo), with `framework` its framework file; its store."""
    store = folder / "sharedcare.db"
    monkeypatch.setenv("SHAREDCARE_DB", f"sqlite:///{store}")
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(framework))
    monkeypatch.setenv("SHAREDCARE_DATA", str(folder / "data"))
    for name, value in DEPLOYMENT_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SHAREDCARE_DEMO", raising=False)
    for name in ("SHAREDCARE_TLS_CERT", "SHAREDCARE_TLS_KEY", "SHAREDCARE_TLS_CLIENT_CA"):
        monkeypatch.setenv(name, "")  # empty is unset; `serve` puts its options here
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)

    async def listens(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(MllpServer, "serve", listens)
    return store
