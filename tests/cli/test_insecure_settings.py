"""Settings that expose patients' data are said at start (fifth security review, 2026-12-06): `serve` or `mllp`
on a network address without TLS, a TLS private key or a SQLite store other accounts can read. Each was
taken without a word; plain MLLP lets anyone who reaches the port write in any organisation's name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.cli.starts import deployment_that_starts_and_stops
from tests.conftest import FRAMEWORK_PATH
from tests.tls_certs import Pki, make_pki
from typer.testing import CliRunner

from sharedcare.cli import app

runner = CliRunner(env={"COLUMNS": "400"})  # one line a message


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A deployment's keys and a SQLite store in tmp_path; `serve` and `mllp` start but do not stay."""
    return deployment_that_starts_and_stops(monkeypatch, tmp_path, FRAMEWORK_PATH)


def test_serve_on_a_network_address_without_tls_says_so(store: Path) -> None:
    started = runner.invoke(app, ["serve", "--host", "0.0.0.0"])  # noqa: S104
    assert started.exit_code == 0, started.output
    assert "serve listens on 0.0.0.0 without TLS" in started.output and "cookies, tokens and records" in started.output
    quiet = runner.invoke(app, ["serve", "--host", "127.0.0.1"])
    assert quiet.exit_code == 0 and "without TLS" not in quiet.output


def test_mllp_on_a_network_address_without_tls_says_anyone_can_write_as_any_organisation(store: Path) -> None:
    started = runner.invoke(app, ["mllp", "--host", "10.1.2.3"])
    assert started.exit_code == 0, started.output
    assert "mllp listens on 10.1.2.3 without TLS" in started.output and "any organisation's name" in started.output
    assert "without TLS" not in runner.invoke(app, ["mllp", "--host", "::1"]).output


def test_a_key_or_store_other_accounts_can_read_is_named_with_its_remedy(store: Path, pki: Pki) -> None:
    assert runner.invoke(app, ["serve"]).exit_code == 0  # the store is made owner-only
    key = store.parent / "server.key"
    key.write_bytes(pki.server_key.read_bytes())
    for path in (key, store):
        os.chmod(path, 0o644)  # noqa: S103 - as a copy under umask 022 leaves it
    started = runner.invoke(app, ["serve", "--tls-cert", str(pki.server_cert), "--tls-key", str(key)])
    assert started.exit_code == 0, started.output
    assert f"the TLS private key {key} can be read or changed by other accounts" in started.output
    assert f"the SQLite store {store} can be read or changed by other accounts" in started.output
    assert f"chmod 600 {key}" in started.output
    for path in (key, store):
        os.chmod(path, 0o600)
    again = runner.invoke(app, ["serve", "--tls-cert", str(pki.server_cert), "--tls-key", str(key)])
    assert again.exit_code == 0 and "by other accounts" not in again.output


def test_serve_without_a_public_url_says_the_host_header_decides_the_audience(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = runner.invoke(app, ["serve"])
    assert started.exit_code == 0, started.output
    assert "SHAREDCARE_PUBLIC_URL is not set" in started.output and "Host header" in started.output
    monkeypatch.setenv("SHAREDCARE_PUBLIC_URL", "https://scr.example.nhs.uk/")
    assert "SHAREDCARE_PUBLIC_URL" not in runner.invoke(app, ["serve"]).output
    monkeypatch.setenv("SHAREDCARE_PUBLIC_URL", "scr.example.nhs.uk")
    refused = runner.invoke(app, ["serve"])
    assert refused.exit_code != 0 and "SHAREDCARE_PUBLIC_URL must be the service's address" in refused.output
