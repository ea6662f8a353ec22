"""Event times order a source's versions of a resource: what an integration engineer sees when a feed's clock
is ahead, and what a clinician sees when a source's later update meets one (secrev F2)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from tests.builders import bundle, condition, patient, write_ndjson
from tests.fhir_bundles import entries
from tests.small_ics import OKAFOR_NHS, Ics, resend_diabetes

from sharedcare.clock import utcnow
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import Quarantine, Resource


def _instant(minutes_from_now: float) -> str:
    return (utcnow() + timedelta(minutes=minutes_from_now)).isoformat(timespec="seconds").replace("+00:00", "Z")


def _gp_bundle(timestamp: str, last_updated: str | None = None) -> dict:
    meta = {"meta": {"lastUpdated": last_updated}} if last_updated else {}
    return bundle("P81001", "emis", [patient("gp-1", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
                                     condition("gp-1-c1", "Patient/gp-1", "44054006", "Type 2 diabetes", **meta)],
                  timestamp=timestamp)


@pytest.mark.parametrize("element", ["Bundle.timestamp", "entry[1] Condition/gp-1-c1, meta.lastUpdated"])
def test_an_event_time_in_the_future_is_quarantined_naming_the_element_and_the_rule(
        db: Database, framework: Framework, tmp_path: Path, element: str) -> None:
    message = (_gp_bundle(timestamp=_instant(60)) if element == "Bundle.timestamp"
               else _gp_bundle(_instant(-60), last_updated=_instant(60)))
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "gp.ndjson", [message])])
    assert (report.accepted, report.quarantined) == (0, 1)
    (held,) = report.quarantine
    assert held["where"].endswith(f"line 1, {element}")
    assert "more than 300 seconds after the message was received" in held["reason"]
    with db.session() as s:
        assert s.scalars(select(Resource.id)).all() == []
        assert s.scalars(select(Quarantine.source_org)).all() == ["P81001"]


def test_a_clock_a_little_ahead_is_allowed_up_to_the_configured_skew(
        db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ahead = _gp_bundle(timestamp=_instant(2))
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "a.ndjson", [ahead])]).accepted == 2
    monkeypatch.setenv("SHAREDCARE_EVENT_SKEW_SECONDS", "60")
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "b.ndjson", [_gp_bundle(_instant(2))])])
    assert report.quarantined == 1 and "more than 60 seconds after" in report.quarantine[0]["reason"]


def _onsets(ics: Ics) -> list[str]:
    everything = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything?_type=Condition",
                                headers=ics.open_record("dr.patel")).json()
    return [e["resource"].get("onsetDateTime") for e in entries(everything)
            if e["resource"]["code"]["coding"][0]["code"] == "44054006"]


def test_a_resource_pinned_in_the_future_before_times_were_bounded_takes_its_sources_next_update(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """A version stored by an earlier release with an event time of 9999 (what secrev F2 showed a client could
    send) counts as no later than it arrived, plus the skew: the practice's correction is applied."""
    with db.session() as s:
        s.execute(update(Resource).where(Resource.source_id == "gp-c1")
                  .values(recorded_at=utcnow().replace(year=9999), received_at=utcnow() - timedelta(days=1)))
    resend_diabetes(db, framework, tmp_path, "fix", _instant(-1), onsetDateTime="2019-04-01")
    assert _onsets(ics) == ["2019-04-01"]
