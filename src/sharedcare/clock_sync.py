"""Is the system clock synchronised? Checked when `serve` and `mllp` start (TRUST OP2; IHE ATNA asks for
consistent time): every audit entry's time is evidence, and a clock nobody disciplines drifts.

On Linux the kernel knows: adjtimex(2) with `modes` 0 only reads its NTP state, and needs no privilege.
No well-kept library exposes it (PyPI has none; ntplib asks an NTP server over the network, which says how
far off we are but not whether a daemon keeps the clock right, and may be unreachable from a server), so
it is called here through ctypes, read-only.

Synchronised means the kernel's maximum error is under 16 s (NTP_PHASE_LIMIT), as `timedatectl` decides
(systemd commit bca5a0e): a daemon (chronyd, ntpd, systemd-timesyncd) keeps it small at each update; with
no updates the kernel adds 500 ppm a second and, reaching 16 s, sets STA_UNSYNC. STA_UNSYNC itself, and so
adjtimex's TIME_ERROR return, is not the test: chronyd without `rtcsync` sets it on a synchronised clock to
keep the kernel from writing the hardware clock.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass

from sharedcare.errors import ConfigError
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.store.database import Database

NTP_PHASE_LIMIT_US = 16_000_000  # the kernel's ceiling on maxerror; reaching it sets STA_UNSYNC
STA_UNSYNC = 0x0040
TIME_STATES = {0: "TIME_OK", 1: "TIME_INS", 2: "TIME_DEL", 3: "TIME_OOP", 4: "TIME_WAIT", 5: "TIME_ERROR"}


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """glibc's `struct timex` (<sys/timex.h>), as adjtimex(2) documents it, with its reserved tail."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("_reserved", ctypes.c_int * 11)]


@dataclass(frozen=True)
class KernelClock:
    """What adjtimex(2) said: its return value (the clock state), the STA_* status bits, and the kernel's
    maximum and estimated error in microseconds."""

    state: int
    status: int
    maxerror_us: int
    esterror_us: int


def read_kernel_clock() -> KernelClock:
    """Ask the kernel (Linux, through the C library's adjtimex); OSError where it cannot be asked."""
    try:
        adjtimex = ctypes.CDLL(None, use_errno=True).adjtimex
    except AttributeError as exc:
        raise OSError("this system's C library has no adjtimex") from exc
    timex = _Timex()  # modes 0: read only
    state = adjtimex(ctypes.byref(timex))
    if state == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return KernelClock(state, timex.status, timex.maxerror, timex.esterror)


@dataclass(frozen=True)
class ClockCheck:
    synchronised: bool | None  # None: the kernel could not be asked
    summary: str  # one line for the server log and the audit entry


def judge(read: Callable[[], KernelClock]) -> ClockCheck:
    """Whether the clock is synchronised, from one kernel reading, in words an operator can act on."""
    try:
        clock = read()
    except OSError as exc:
        return ClockCheck(None, f"whether the system clock is synchronised could not be read ({exc})")
    flags = f"{TIME_STATES.get(clock.state, clock.state)}, status 0x{clock.status:04x}"
    if clock.maxerror_us < NTP_PHASE_LIMIT_US:
        return ClockCheck(True, f"the system clock is synchronised (maximum error {clock.maxerror_us / 1000:g} ms, "
                                f"estimated {clock.esterror_us / 1000:g} ms; {flags})")
    return ClockCheck(False, f"the system clock is not synchronised (the kernel's maximum error has reached "
                             f"{clock.maxerror_us / 1e6:g} s; {flags}): audit times may be wrong; run an NTP "
                             f"client (chronyd, ntpd or systemd-timesyncd)")


def check_clock(database: Database, service: str, required: bool,
                read: Callable[[], KernelClock] | None = None) -> ClockCheck:
    """Judge the clock at `service`'s start-up and audit the result (`system:clock:check`, no patient data).
    With `required` (SHAREDCARE_REQUIRE_CLOCK_SYNC=1) a clock not known to be synchronised is a ConfigError:
    the service does not start."""
    check = judge(read or read_kernel_clock)
    outcome = "permit" if check.synchronised else "error"
    with database.session() as session:
        record_audit(session, AuditRecord(AuditAction.CLOCK_CHECK, outcome, username="system", purpose="governance",
                                          reason=check.summary, detail={"service": service}))
        session.commit()
    if required and not check.synchronised:
        raise ConfigError(f"{check.summary}; SHAREDCARE_REQUIRE_CLOCK_SYNC=1 refuses to start")
    return check
