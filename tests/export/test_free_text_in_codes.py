"""What staff type into coded elements (a local code, a coding's version) never leaves in a pseudonymised
extract, and neither does an event's time of day: analysts get the codes of national terminologies and
the day. The codings left out are counted in the export's summary."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from tests.builders import SCT, bundle, patient, write_ndjson
from tests.export.conftest import export
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.models import AuditEntry

NAME, PHONE = "Jane Smith", "07700 900456"
LOCAL = "http://emis.example/local-codes"


def test_local_codes_versions_and_times_of_day_stay_behind(ics: Ics, tmp_path: Path, framework: Framework) -> None:
    obs = {"resourceType": "Observation", "id": "gp-free1", "status": "final",
           "code": {"coding": [{"system": LOCAL, "code": f"Seen with {NAME} {PHONE}", "version": f"by {NAME}"},
                               {"system": SCT, "code": "271649006", "version": f"entered by {NAME}"}]},
           "subject": {"reference": "Patient/gp-okafor"}, "effectiveDateTime": "2026-03-04T10:22:31+00:00",
           "valueCodeableConcept": {"coding": [{"system": LOCAL, "code": "lives-with-daughter-1-High-Street"}]}}
    local_only = {"resourceType": "Observation", "id": "gp-free2", "status": "final",
                  "code": {"coding": [{"system": LOCAL, "code": "JSMITH"}]},
                  "subject": {"reference": "Patient/gp-okafor"}, "effectiveDateTime": "2026-03-04"}
    enc = {"resourceType": "Encounter", "id": "gp-enc-x", "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "subject": {"reference": "Patient/gp-okafor"},
           "period": {"start": "2026-03-04T10:15:00+00:00", "end": "2026-03-04T10:40:00+00:00"}}
    gp = bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
                                   obs, local_only, enc])
    db = ics.client.app.state.database
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "free.ndjson", [gp])]).quarantined == 0

    manifest, files = export(ics.client, ics.token("analyst.chen"))
    text = json.dumps(files)
    for typed in ("Smith", "07700", "High-Street", "JSMITH", "entered by", LOCAL, "10:22", "10:15", "10:40"):
        assert typed not in text, typed
    observation, = (o for o in files["Observation"] if o["code"]["coding"][0]["code"] == "271649006")
    assert observation["code"] == {"coding": [{"system": SCT, "code": "271649006"}]}
    assert observation["effectiveDateTime"] == "2026-03-04" and "valueCodeableConcept" not in observation
    encounter, = (e for e in files["Encounter"] if e.get("period", {}).get("start") == "2026-03-04")
    assert encounter["period"] == {"start": "2026-03-04", "end": "2026-03-04"}
    # the observation coded only locally says nothing that may leave: withheld, as invalid FHIR without a code
    summary = manifest["extension"]["https://sharedcare.example/bulk/summary"]
    assert summary["resources_withheld"].get("required-element-uncoded")
    assert "codings_withheld" in summary  # small numbers suppressed for the recipient; exact for IG:
    with db.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:complete")).one()
    details = {d["type"]: d["valueString"] for d in entry.event["entity"][-1]["detail"]}
    assert details["codings_withheld"] == "2"  # of what left: the local code and the local value
