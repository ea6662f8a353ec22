"""A hospital stay sent by the PAS and by the EPR is one stay on the clinician's timeline, naming both
systems; another organisation's stay is never folded into it; over FHIR both source resources stay."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.fhir_bundles import resources
from tests.small_ics import Ics
from tests.stay_feeds import IMP, WARD, ingest_stay

from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import ServedResource
from sharedcare.portal.stays import same_stay
from sharedcare.store.database import Database

ONCE = "sent by EPR and PAS, shown once"


def _timeline(ics: Ics, username: str = "dr.oconnor") -> list[str]:
    ics.client.post("/login", data={"username": username, "password": "demo"})
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    encounters = page.split('id="encounters"', 1)[1].split("</ol>", 1)[0]
    return encounters.split('<li class="sc-timeline__item">')[1:]


def test_a_stay_the_pas_and_the_epr_both_sent_is_shown_once_naming_both(ics: Ics, db: Database,
                                                                       framework: Framework, tmp_path: Path) -> None:
    ingest_stay(db, framework, tmp_path)
    (stay,) = _timeline(ics)
    assert WARD in stay and "2 Nov 2026" in stay and "until 7 Nov 2026" in stay
    assert "Riverside University Hospitals NHS Trust" in stay and ONCE in stay


def test_another_organisations_stay_at_the_same_time_is_another_stay(ics: Ics, db: Database, framework: Framework,
                                                                     tmp_path: Path) -> None:
    ingest_stay(db, framework, tmp_path, hospice=True)
    stays = _timeline(ics)
    assert len(stays) == 2
    assert [("St Brigid" in s, ONCE in s) for s in stays] == [(False, True), (True, False)]


def test_over_fhir_each_system_s_encounter_is_still_served_with_its_own_source(ics: Ics, db: Database,
                                                                            framework: Framework,
                                                                            tmp_path: Path) -> None:
    ingest_stay(db, framework, tmp_path)
    headers = ics.open_record("dr.oconnor")
    found = resources(ics.client.get(f"/fhir/Encounter?patient={ics.okafor}", headers=headers).json())
    assert sorted(e["meta"]["source"].rsplit("#", 1)[1] for e in found) == ["epr", "pas"]


def _served(org: str, system: str, start: str, identifier: str | None = None, cls: str = "IMP",
            status: str = "in-progress", end: str | None = None) -> ServedResource:
    content = {"resourceType": "Encounter", "id": f"{org}-{system}-{start}", "class": {**IMP, "code": cls},
               "status": status, "period": {"start": start} | ({"end": end} if end else {})}
    if identifier:
        content["identifier"] = [{"system": "https://fhir.rxr.nhs.uk/Id/visit-number", "value": identifier}]
    at = datetime(2026, 11, 7, tzinfo=UTC)
    return ServedResource(content, "Encounter", "encounters", 3, org, org, system, at, at)


@pytest.mark.parametrize(("a", "b", "one"), [
    (_served("RXR", "pas", "2026-11-02T10:00:00Z"), _served("RXR", "epr", "2026-11-02T10:14:00+00:00"), True),
    (_served("RXR", "pas", "2026-11-02T10:00:00Z"), _served("RXR", "epr", "2026-11-02T10:20:00Z"), False),
    (_served("RXR", "pas", "2026-11-02T10:00:00Z", "V1"), _served("RXR", "epr", "2026-11-02T10:00:00Z", "V2"), False),
    (_served("RXR", "pas", "2026-11-02T10:00:00Z", "V1"), _served("RXR", "epr", "2026-11-02T13:00:00Z", "V1"), True),
    (_served("RXR", "pas", "2026-11-02T10:00:00Z"), _served("NHR", "crosscare", "2026-11-02T10:00:00Z"), False),
    (_served("RXR", "pas", "2026-11-02T10:00:00Z"), _served("RXR", "pas", "2026-11-02T10:00:00Z"), False),
    (_served("RXR", "pas", "2026-11-02T10:00:00Z"), _served("RXR", "epr", "2026-11-02T10:00:00Z", cls="EMER"), False),
    (_served("RXR", "pas", "2026-11-02"), _served("RXR", "epr", "2026-11-02"), False),  # no time: cannot tell
    # the PAS has discharged the patient, the EPR still says in progress: neither may hide the other
    (_served("RXR", "pas", "2026-11-02T10:00:00Z", "V1", status="finished", end="2026-11-05T12:00:00Z"),
     _served("RXR", "epr", "2026-11-02T10:00:00Z", "V1"), False),
    (_served("RXR", "pas", "2026-11-02T10:00:00Z", "V1", status="cancelled"),
     _served("RXR", "epr", "2026-11-02T10:00:00Z", "V1"), False),
    (_served("RXR", "pas", "2026-11-02T10:00:00Z", status="finished", end="2026-11-05T12:00:00Z"),
     _served("RXR", "epr", "2026-11-02T10:05:00Z", status="finished", end="2026-11-05T12:00:00+00:00"), True),
])
def test_what_makes_two_encounters_one_stay(a: ServedResource, b: ServedResource, one: bool) -> None:
    assert same_stay(a, b) is one and same_stay(b, a) is one
