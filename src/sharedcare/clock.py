"""The one clock: timezone-aware UTC everywhere (TRUST DP5), and one place for tests to freeze time."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
