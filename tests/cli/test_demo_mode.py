"""Demo mode (every framework user signs in with the password "demo", a patient's one-time code is shown on the
page) runs only where it belongs: refused beside a server database or TLS, and otherwise said at start and
audited, so that an IG officer reading the log knows (TRUST DP4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import select
from tests.conftest import DEPLOYMENT_KEYS, FRAMEWORK_PATH
from tests.tls_certs import Pki, make_pki
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.governance.access_log import details
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

runner = CliRunner(env={"COLUMNS": "400"})  # one line a message
SERVER_DATABASE = "postgresql+psycopg://sharedcare:sharedcare@127.0.0.1:1/production"  # nothing listens: never used


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SQLite store in tmp_path, and `serve` returning where it would listen (it starts, it does not stay)."""
    monkeypatch.setenv("SHAREDCARE_DB", f"sqlite:///{tmp_path / 'sharedcare.db'}")
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    monkeypatch.setenv("SHAREDCARE_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    for name in ("SHAREDCARE_SECRET", "SHAREDCARE_PSEUDONYM_KEY", "SHAREDCARE_DEMO"):
        monkeypatch.delenv(name, raising=False)
    for name in ("SHAREDCARE_TLS_CERT", "SHAREDCARE_TLS_KEY"):  # empty is unset; `serve` puts its options here
        monkeypatch.setenv(name, "")  # and they are taken out again after the test
    return tmp_path / "sharedcare.db"


@pytest.mark.parametrize("beside", ["a server database", "TLS in the environment", "TLS options"])
def test_serve_refuses_demo_mode_beside_a_server_database_or_tls(
        started: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch, beside: str) -> None:
    monkeypatch.setenv("SHAREDCARE_DEMO", "1")
    options: list[str] = []
    if beside == "a server database":
        monkeypatch.setenv("SHAREDCARE_DB", SERVER_DATABASE)
    elif beside == "TLS in the environment":
        monkeypatch.setenv("SHAREDCARE_TLS_CERT", str(pki.server_cert))
        monkeypatch.setenv("SHAREDCARE_TLS_KEY", str(pki.server_key))
    else:
        options = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    refused = runner.invoke(app, ["serve", *options])
    assert refused.exit_code == 2, refused.output
    says = "SHAREDCARE_DB names a server database" if beside == "a server database" else "TLS is configured"
    assert "SHAREDCARE_DEMO=1 beside a deployment's settings" in refused.stderr and says in refused.stderr
    assert "unset SHAREDCARE_DEMO" in refused.stderr
    assert not started.exists()  # refused before any store was opened


def test_make_demo_refuses_a_server_database_before_writing_anyone_into_it(
        started: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_DEMO", "1")
    monkeypatch.setenv("SHAREDCARE_DB", SERVER_DATABASE)
    refused = runner.invoke(app, ["demo", "--people", "20", "--out", str(tmp_path / "demo")])
    assert refused.exit_code == 2 and "SHAREDCARE_DB names a server database" in refused.stderr, refused.output
    assert not (tmp_path / "demo").exists()


def test_serve_in_demo_mode_warns_and_audits_that_it_started_so(started: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DEPLOYMENT_KEYS.items():
        monkeypatch.setenv(name, value)
    assert runner.invoke(app, ["serve"]).exit_code == 0  # not in demo mode: nothing said, nothing audited
    monkeypatch.setenv("SHAREDCARE_DEMO", "1")
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    assert "demo mode (SHAREDCARE_DEMO=1): every framework user signs in with the password 'demo'" in result.stderr
    db = Database(f"sqlite:///{started}")
    with db.session() as s:
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "system:demo:start")).all()
        assert (entry.username, entry.outcome) == ("system", "permit")
        assert details(entry)["service"] == "serve" and "password 'demo'" in details(entry)["reason"]
    db.dispose()
