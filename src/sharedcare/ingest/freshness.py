"""How current each feed is: for every source system the framework declares, when it last sent new or
changed data, how much in the last day, and whether it has gone quiet for longer than the operator
allows. An operator watches this (journey 12); a source that stops sending leaves the shared record
silently out of date, which no error would show."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sharedcare.governance.framework import Framework
from sharedcare.store.models import Resource


@dataclass(frozen=True)
class FeedStatus:
    organisation: str
    name: str
    system: str
    format: str
    last_received: datetime | None  # the last new or changed resource it sent (re-sends change nothing)
    hours_quiet: float | None  # since then
    last_day: int  # resources new or changed in the 24 hours before now
    stale: bool  # nothing ever, or nothing for longer than allowed


def feed_status(session: Session, fw: Framework, now: datetime, stale_after: timedelta) -> list[FeedStatus]:
    """One row per declared source system, in the framework's order (two index look-ups each:
    `ix_resources_source_received`)."""
    rows = []
    for code, org in fw.organisations.items():
        for system, source_format in org.systems.items():
            where = (Resource.source_org == code, Resource.source_system == system)
            last = session.scalar(select(func.max(Resource.received_at)).where(*where))
            last_day = session.scalar(select(func.count()).select_from(Resource).where(
                *where, Resource.received_at >= now - timedelta(days=1))) or 0
            quiet = None if last is None else now - last
            rows.append(FeedStatus(code, org.name, system, source_format, last,
                                   None if quiet is None else round(quiet.total_seconds() / 3600, 1), last_day,
                                   stale=quiet is None or quiet > stale_after))
    return rows
