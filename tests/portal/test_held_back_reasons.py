"""The reason given with a look at safeguarding (an S42 enquiry, naming who is suspected) is held back from
the patient's "Who has looked" wherever the same user gave it, on every page: review of 2026-12-07, it was held
back only on the page holding the safeguarding read, so once 100 later entries pushed that read to the next page
the patient's first page showed it with each of the social worker's later reads."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from tests.builders import bundle, condition, patient, write_ndjson
from tests.portal.test_patient_portal import _sign_in
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import Resource


def test_the_reason_given_with_a_look_at_safeguarding_stays_held_back_once_the_look_is_on_an_older_page(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    gp = bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
                                   condition("gp-sg", "Patient/gp-okafor", "417430008", "Vulnerable adult")],
                timestamp="2026-11-02T09:00:00Z")
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "sg.ndjson", [gp])]).quarantined == 0
    with db.session() as s:
        safeguarding = s.scalars(select(Resource.id).where(Resource.source_id == "gp-sg")).one()
    why = "S42 enquiry: concern his son is taking his pension"
    social_worker = ics.open_record("sw.brown", basis="implied-consent", reason=why)
    assert ics.client.get(f"/fhir/Condition/{safeguarding}", headers=social_worker).status_code == 200
    _sign_in(ics.client)
    assert "pension" not in ics.client.get("/patient/accesses").text  # held back while on the same page
    for _ in range(100):  # she goes on reading his details under the same basis
        assert ics.client.get(f"/fhir/Patient/{ics.okafor}", headers=social_worker).status_code == 200
    page = ics.client.get("/patient/accesses").text
    assert "pension" not in page, "the S42 reason is on the patient's first page of Who has looked"
    assert page.count("not shown here: the organisation named can tell you") >= 100  # her later reads, listed
