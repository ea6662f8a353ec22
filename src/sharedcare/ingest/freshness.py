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
    declared: bool  # in the framework; a system a source names that the framework does not is listed too


def feed_status(session: Session, fw: Framework, now: datetime, stale_after: timedelta) -> list[FeedStatus]:
    """One row per source system: those the framework declares, in its order, then any other a source
    has named (an HL7 feed's MSH-3, a FHIR bundle's `meta.source`), which would otherwise go unwatched.
    Each is two look-ups of `ix_resources_source_received`; finding the undeclared ones reads that index."""
    declared = [(code, system, source_format) for code, org in fw.organisations.items()
                for system, source_format in org.systems.items()]
    known = {(code, system) for code, system, _ in declared}
    seen = session.execute(select(Resource.source_org, Resource.source_system).distinct()).all()
    others = sorted((code, system, "undeclared") for code, system in seen if (code, system) not in known)
    rows = []
    for code, system, source_format in declared + others:
        where = (Resource.source_org == code, Resource.source_system == system)
        last = session.scalar(select(func.max(Resource.received_at)).where(*where))
        last_day = session.scalar(select(func.count()).select_from(Resource).where(
            *where, Resource.received_at >= now - timedelta(days=1))) or 0
        quiet = None if last is None else now - last
        org = fw.organisation(code)
        rows.append(FeedStatus(code, org.name if org else "", system, source_format, last,
                               None if quiet is None else round(quiet.total_seconds() / 3600, 1), last_day,
                               stale=quiet is None or quiet > stale_after, declared=(code, system) in known))
    return rows
