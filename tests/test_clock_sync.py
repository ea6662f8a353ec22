"""The clock is checked at start-up (TRUST OP2): audit times are evidence. The decision is tested on the
shapes adjtimex(2) really returns (this machine's, ntpd's, chronyd's without `rtcsync`, a daemon gone quiet),
one real call is made here, and `serve` and `mllp` warn, audit, and refuse to start only when told to."""

from __future__ import annotations

import ctypes
import errno
import json
import sys

import pytest
from sqlalchemy import select
from tests.conftest import DEPLOYMENT_KEYS, FRAMEWORK_PATH
from typer.testing import CliRunner

from sharedcare import clock_sync
from sharedcare.cli import app
from sharedcare.clock_sync import KernelClock, check_clock, judge, read_kernel_clock
from sharedcare.errors import ConfigError
from sharedcare.governance.audit import AuditAction, verify
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

# Readings as adjtimex(2) gives them: (return value, status bits, maxerror us, esterror us).
NEVER_SYNCED = KernelClock(5, 0x0040, 16_000_000, 16_000_000)  # this build machine: no NTP client at all
NTPD_SYNCED = KernelClock(0, 0x2001, 48_512, 1_204)  # STA_PLL | STA_NANO, TIME_OK
CHRONYD_WITHOUT_RTCSYNC = KernelClock(5, 0x2041, 152_300, 310)  # STA_UNSYNC kept set on a synchronised clock
LEAP_SECOND_TONIGHT = KernelClock(1, 0x2011, 9_800, 150)  # STA_INS, TIME_INS
DAEMON_GONE_QUIET = KernelClock(5, 0x2041, 16_000_000, 310)  # no update for ~9 hours: the kernel gave up


def _unreadable() -> KernelClock:
    raise OSError(errno.ENOSYS, "Function not implemented")


@pytest.mark.parametrize(("reading", "synchronised"), [
    (NEVER_SYNCED, False), (NTPD_SYNCED, True), (CHRONYD_WITHOUT_RTCSYNC, True), (LEAP_SECOND_TONIGHT, True),
    (DAEMON_GONE_QUIET, False),
])
def test_the_clock_is_synchronised_when_the_kernels_maximum_error_is_under_16_seconds(
        reading: KernelClock, synchronised: bool) -> None:
    check = judge(lambda: reading)
    assert check.synchronised is synchronised
    if synchronised:
        assert check.summary.startswith("the system clock is synchronised (maximum error ")
    else:
        assert "not synchronised" in check.summary and "16 s" in check.summary and "NTP client" in check.summary


def test_a_kernel_that_cannot_be_asked_is_not_called_synchronised() -> None:
    check = judge(_unreadable)
    assert check.synchronised is None and "could not be read" in check.summary


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux's")
def test_one_real_reading_of_this_machines_kernel_clock() -> None:
    assert ctypes.sizeof(clock_sync._Timex) == (208 if ctypes.sizeof(ctypes.c_long) == 8 else 128)
    clock = read_kernel_clock()
    assert clock.state in clock_sync.TIME_STATES
    assert 0 <= clock.esterror_us <= clock_sync.NTP_PHASE_LIMIT_US
    assert 0 <= clock.maxerror_us <= clock_sync.NTP_PHASE_LIMIT_US  # the kernel clamps it there
    assert (clock.maxerror_us == clock_sync.NTP_PHASE_LIMIT_US) == (not judge(lambda: clock).synchronised)
    if clock.maxerror_us == clock_sync.NTP_PHASE_LIMIT_US:
        assert clock.status & clock_sync.STA_UNSYNC  # the kernel sets it on reaching the limit


def _clock_checks(db: Database) -> list[AuditEntry]:
    with db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.CLOCK_CHECK.value)))


def test_the_start_up_check_is_audited_and_refuses_only_when_required(db: Database) -> None:
    assert check_clock(db, "mllp", required=False, read=lambda: NEVER_SYNCED).synchronised is False
    assert check_clock(db, "serve", required=True, read=lambda: CHRONYD_WITHOUT_RTCSYNC).synchronised
    with pytest.raises(ConfigError, match="not synchronised.*SHAREDCARE_REQUIRE_CLOCK_SYNC=1"):
        check_clock(db, "serve", required=True, read=lambda: NEVER_SYNCED)
    with pytest.raises(ConfigError, match="could not be read"):
        check_clock(db, "serve", required=True, read=_unreadable)
    entries = _clock_checks(db)
    assert [(e.outcome, e.username, e.patient_id) for e in entries] == [
        ("error", "system", None), ("permit", "system", None), ("error", "system", None), ("error", "system", None)]
    details = [{d["type"]: d["valueString"] for d in e.event["entity"][-1]["detail"]} for e in entries]
    assert [d["service"] for d in details] == ["mllp", "serve", "serve", "serve"]
    assert "maximum error has reached 16 s" in details[0]["reason"] and "152.3 ms" in details[1]["reason"]
    with db.session() as s:
        assert verify(s).ok


runner = CliRunner()


@pytest.mark.parametrize("command", ["serve", "mllp"])
def test_serve_and_mllp_refuse_to_start_on_an_unsynchronised_clock_when_required(
        db: Database, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    for name, value in DEPLOYMENT_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SHAREDCARE_REQUIRE_CLOCK_SYNC", "1")
    monkeypatch.setattr(clock_sync, "read_kernel_clock", lambda: NEVER_SYNCED)  # the reader, not the check
    result = runner.invoke(app, [command, "--port", "1"])  # it must stop before it listens
    assert result.exit_code == 2
    assert "not synchronised" in result.stderr and "SHAREDCARE_REQUIRE_CLOCK_SYNC=1" in result.stderr
    (entry,) = _clock_checks(db)
    assert entry.outcome == "error" and json.dumps(entry.event).count(command) >= 1
