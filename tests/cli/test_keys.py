"""Every command that signs or keys anything refuses, outside demo mode, the published demo key and keys short
enough to guess, as `serve` does (TRUST DP4): an extract keyed by the demo key is re-identified by anyone with
the source code, and a token or checkpoint signed with it can be forged by anyone."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import DEPLOYMENT_KEYS
from typer.testing import CliRunner

from sharedcare.cli import app
from sharedcare.config import DEMO_SECRET
from sharedcare.governance.checkpoints import make_checkpoint, signing_key
from sharedcare.store.database import Database
from sharedcare.store.models import AuditHead

runner = CliRunner(env={"COLUMNS": "400"})  # one line a message
SECRET, PSEUDONYM_KEY = DEPLOYMENT_KEYS["SHAREDCARE_SECRET"], DEPLOYMENT_KEYS["SHAREDCARE_PSEUDONYM_KEY"]

# what each command is given, and what it must not have done when refused
COMMANDS = {
    "export": ["export", "--out", "{tmp}/extract", "--user", "analyst.chen"],
    "token": ["token", "--user", "dr.patel"],
    "audit checkpoint": ["audit", "checkpoint"],
    "audit verify --checkpoints": ["audit", "verify", "--checkpoints", "{tmp}/witness.jsonl"],
}
UNSAFE = {  # SHAREDCARE_SECRET, SHAREDCARE_PSEUDONYM_KEY, SHAREDCARE_AUDIT_KEY; the refusal says
    "no secret": (None, None, None, "SHAREDCARE_SECRET is unset or the demo key"),
    "a short secret": ("x" * 31, None, None, "SHAREDCARE_SECRET is 31 bytes; it must be at least 32"),
    "a short pseudonym key": (SECRET, "p" * 31, None,
                              "SHAREDCARE_PSEUDONYM_KEY is 31 bytes; it must be at least 32"),
    "the demo key as pseudonym key": (SECRET, DEMO_SECRET, None, "SHAREDCARE_PSEUDONYM_KEY is the published demo key"),
    "a short audit key": (SECRET, None, "a" * 31, "SHAREDCARE_AUDIT_KEY is 31 bytes; it must be at least 32"),
    "the demo key as audit key": (SECRET, None, DEMO_SECRET, "SHAREDCARE_AUDIT_KEY is the published demo key"),
    # one key doing two jobs: whoever holds the secret (or the audit key) could recompute every pseudonym
    "the secret as pseudonym key": (SECRET, SECRET, None,
                                    "SHAREDCARE_PSEUDONYM_KEY is the same as SHAREDCARE_SECRET"),
    "the audit key as pseudonym key": (SECRET, PSEUDONYM_KEY, PSEUDONYM_KEY,
                                       "SHAREDCARE_PSEUDONYM_KEY is the same as SHAREDCARE_AUDIT_KEY"),
}


def _keys(monkeypatch: pytest.MonkeyPatch, secret: str | None, pseudonym_key: str | None,
          audit_key: str | None = None, demo: bool = False) -> None:
    for name, value in (("SHAREDCARE_SECRET", secret), ("SHAREDCARE_PSEUDONYM_KEY", pseudonym_key),
                        ("SHAREDCARE_AUDIT_KEY", audit_key), ("SHAREDCARE_DEMO", "1" if demo else None)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def _run(command: str, tmp_path: Path) -> list[str]:
    return [arg.replace("{tmp}", str(tmp_path)) for arg in COMMANDS[command]]


@pytest.mark.parametrize("unsafe", UNSAFE)
@pytest.mark.parametrize("command", COMMANDS)
def test_outside_demo_mode_a_command_that_signs_or_keys_refuses_the_demo_key_and_short_keys(
        env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, unsafe: str) -> None:  # noqa: F811
    secret, pseudonym_key, audit_key, says = UNSAFE[unsafe]
    with env.session() as session:  # what a forger holding the published key gives `audit verify`
        (tmp_path / "witness.jsonl").write_text(make_checkpoint(session, signing_key(DEMO_SECRET)).to_json() + "\n")
    _keys(monkeypatch, secret, pseudonym_key, audit_key)
    refused = runner.invoke(app, _run(command, tmp_path))
    assert refused.exit_code == 2 and says in refused.stderr, refused.output
    assert refused.stdout == ""  # no token, no checkpoint
    assert not (tmp_path / "extract").exists() and "audit chain whole" not in refused.stderr


@pytest.mark.parametrize(("secret", "pseudonym_key", "demo"), [(SECRET, PSEUDONYM_KEY, False), (None, None, True)])
def test_with_keys_of_their_own_or_in_demo_mode_every_such_command_runs(
        env: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        secret: str | None, pseudonym_key: str | None, demo: bool) -> None:
    _keys(monkeypatch, secret, pseudonym_key, demo=demo)
    checkpoint = runner.invoke(app, ["audit", "checkpoint"])
    (tmp_path / "witness.jsonl").write_text(checkpoint.stdout)
    for command in COMMANDS:
        result = runner.invoke(app, _run(command, tmp_path))
        assert result.exit_code == 0, (command, result.output)
    assert (tmp_path / "extract").is_dir() and "through 1 checkpoints" in result.stderr


def test_an_export_keyed_by_the_signing_secret_says_so(env: Database, tmp_path: Path,  # noqa: F811
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _keys(monkeypatch, SECRET, None)
    result = runner.invoke(app, _run("export", tmp_path))
    assert result.exit_code == 0 and "SHAREDCARE_PSEUDONYM_KEY is unset" in result.stderr


@pytest.mark.parametrize(("retired", "says"), [
    ("r" * 31, "SHAREDCARE_AUDIT_KEYS_RETIRED (key 1) is 31 bytes; it must be at least 32"),
    (f"{'r' * 40},{DEMO_SECRET}", "SHAREDCARE_AUDIT_KEYS_RETIRED (key 2) is the published demo key"),
])
def test_a_retired_audit_key_short_enough_to_guess_is_refused(env: Database, tmp_path: Path,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch, retired: str,
                                                              says: str) -> None:
    _keys(monkeypatch, SECRET, PSEUDONYM_KEY, "a" * 40)
    monkeypatch.setenv("SHAREDCARE_AUDIT_KEYS_RETIRED", retired)
    refused = runner.invoke(app, ["audit", "checkpoint"])
    assert refused.exit_code == 2 and says in refused.stderr and refused.stdout == ""


@pytest.mark.parametrize(("new", "says"), [
    (None, "SHAREDCARE_AUDIT_KEY_NEW is unset"),
    ("n" * 31, "SHAREDCARE_AUDIT_KEY_NEW is 31 bytes; it must be at least 32"),
    (DEMO_SECRET, "SHAREDCARE_AUDIT_KEY_NEW is the published demo key"),
    ("{current}", "SHAREDCARE_AUDIT_KEY_NEW is the current audit key"),
    ("a new key, with a comma, of at least thirty-two bytes", "SHAREDCARE_AUDIT_KEY_NEW holds a comma"),
])
def test_audit_rekey_refuses_a_new_key_missing_unsafe_or_not_new(env: Database, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                                 new: str | None, says: str) -> None:
    """The new key comes from the environment alone; one that is missing, guessable or not new rekeys nothing."""
    from tests.conftest import AUDIT_KEY

    _keys(monkeypatch, SECRET, PSEUDONYM_KEY, AUDIT_KEY)
    if new is not None:
        monkeypatch.setenv("SHAREDCARE_AUDIT_KEY_NEW", new.replace("{current}", AUDIT_KEY))
    with env.session() as session:
        head = session.get_one(AuditHead, 1).seq
    refused = runner.invoke(app, ["audit", "rekey"])
    assert refused.exit_code == 2 and says in " ".join(refused.stderr.split()), refused.output
    with env.session() as session:
        assert session.get_one(AuditHead, 1).seq == head
