"""A small ICS in the store: Mr Okafor known to his GP, the hospital, the community trust and the
mental health trust; plus a stranger. Built by hand so each test knows exactly what is there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from tests.builders import SCT, bundle, condition, document, medication, patient, write_ndjson
from tests.portal_client import PortalClient

from sharedcare.api.app import create_app
from sharedcare.api.auth import mint_citizen_token, mint_token
from sharedcare.config import load_settings
from sharedcare.governance.agreements import note_file_agreements
from sharedcare.governance.consent_fhir import consent_id, consent_id_key
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord

OKAFOR_NHS = "9434765919"


def consent_id_of(nhs_number: str) -> str:
    """The id the service names the Consent held against `nhs_number` by (under the tests' secret)."""
    return consent_id(consent_id_key(load_settings().secret), nhs_number)


@dataclass
class Ics:
    okafor: str
    stranger: str
    client: TestClient

    @property
    def database(self) -> Database:
        """The store the portal and API under test serve from."""
        database: Database = self.client.app.state.database  # type: ignore[attr-defined]
        return database

    def token(self, username: str, scope: str | None = None) -> dict[str, str]:
        """A bearer header for a framework user (the default read scopes, or `scope`)."""
        fw: Framework = self.client.app.state.framework  # type: ignore[attr-defined]
        extra = {"scope": scope} if scope else {}
        return {"Authorization": f"Bearer {mint_token(load_settings(), fw, username, **extra)}"}

    def citizen_token(self, person: str | None = None) -> str:
        """A patient portal session for the person (Mr Okafor unless named), as their signing in would begin."""
        return citizen_token(self.database, person or self.okafor)

    def restarted(self, framework: Framework) -> PortalClient:
        """The server started again, on the same store, with this framework (as after its file was edited):
        `sharedcare serve` notes the file's agreements, then builds the app."""
        state = self.client.app.state  # type: ignore[attr-defined]
        note_file_agreements(state.database, framework, str(state.settings.framework_path))
        return PortalClient(create_app(state.settings, framework=framework, database=state.database))

    def find(self, username: str, person: str | None = None) -> None:
        """Search for the person as a clinician does before opening their record (FHIR Patient search, by an
        NHS number their records carry, else by family name and date of birth)."""
        with self.database.session() as s:
            record = s.scalars(select(PatientRecord).where(PatientRecord.person_id == (person or self.okafor))
                               .order_by(PatientRecord.nhs_number.is_(None), PatientRecord.id)).first()
        assert record is not None, person
        criteria = ({"identifier": record.nhs_number} if record.nhs_number
                    else {"family": record.family or "", "birthdate": str(record.birth_date)})
        response = self.client.post("/fhir/Patient/_search", data=criteria, headers=self.token(username))
        assert response.status_code == 200, response.text

    def open_record(self, username: str, person: str | None = None, basis: str = "explicit-consent",
                    reason: str = "", *, found: bool = True) -> dict[str, str]:
        """Record a basis, after finding the person by a search (`found`), or by the record's id alone (which
        queues an "opened-by-id" review item)."""
        if found:
            self.find(username, person)
        headers = self.token(username)
        response = self.client.post(f"/api/access/{person or self.okafor}", json={"basis": basis, "reason": reason},
                                    headers=headers)
        assert response.status_code == 201, response.text
        return headers


def citizen_token(db: Database, person_id: str) -> str:
    """A patient portal session for the person, as signing in with the NHS number and date of birth of their
    first record that has one would begin (`mint_citizen_token`)."""
    with db.session() as s:
        found = s.execute(select(PatientRecord.nhs_number, PatientRecord.birth_date).where(
            PatientRecord.person_id == person_id, PatientRecord.nhs_number.is_not(None),
            PatientRecord.birth_date.is_not(None)).order_by(PatientRecord.id)).first()
    assert found is not None, f"no record of {person_id} has an NHS number and date of birth to sign in with"
    nhs_number, born = found
    return mint_citizen_token(load_settings(), person_id, nhs_number, born)


def file_says(framework: Framework, org: str, status: str) -> Framework:
    """The framework with one organisation's agreement status edited, as an operator would edit its file."""
    organisation = framework.organisations[org]
    agreement = organisation.agreement.model_copy(update={"status": status})
    organisations = {**framework.organisations, org: organisation.model_copy(update={"agreement": agreement})}
    return framework.model_copy(update={"organisations": organisations})


def _feeds(tmp: Path) -> list[Path]:
    gp = bundle("P81001", "emis", [
        patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02",
                contact=[{"relationship": [{"text": "Daughter"}], "name": {"family": "Okafor", "given": ["Ada"]},
                          "telecom": [{"system": "phone", "value": "07700 900123"}]}]),
        condition("gp-c1", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus"),
        medication("gp-m1", "Patient/gp-okafor", "Metformin 500mg tablets", note="Takes with breakfast"),
        condition("gp-sh", "Patient/gp-okafor", "105629000", "Chlamydial infection"),
    ])
    acute = bundle("RXR", "epr", [
        patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"),
        document("rx-d1", "Patient/MRN1", "Discharged after a fall. GP to review bloods in 2 weeks."),
        document("rx-d2", "Patient/MRN1", "Restricted letter", restricted=True),
    ])
    community = bundle("RYC", "rio", [
        patient("RYC-9", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        {"resourceType": "CarePlan", "id": "ryc-cp1", "status": "active", "intent": "plan",
         "subject": {"reference": "Patient/RYC-9"}, "title": "District nursing",
         "activity": [{"detail": {"status": "in-progress", "description": "Visits on Tuesdays",
                                  "code": {"coding": [{"system": SCT, "code": "439708006", "display": "Home visit"}],
                                           "text": "District nurse visit"},
                                  "scheduledTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk",
                                                                 "dayOfWeek": ["tue"]}}}}]},
    ])
    mental = bundle("RXM", "rio", [
        patient("RXM-4", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        condition("rxm-c1", "Patient/RXM-4", "35489007", "Depressive disorder"),
    ])
    stranger = bundle("P81002", "systmone", [
        patient("gp-other", "9990000018", "Hughes", "Margaret", "1952-06-11", gender="female"),
        {"resourceType": "AllergyIntolerance", "id": "al-1", "patient": {"reference": "Patient/gp-other"},
         "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]}},
    ])
    return [write_ndjson(tmp / "feeds" / f"{name}.ndjson", [b])
            for name, b in (("gp", gp), ("acute", acute), ("community", community), ("mental", mental),
                            ("stranger", stranger))]


def ingest_small_ics(db: Database, framework: Framework, folder: Path) -> None:
    """Ingest the small ICS's feeds (written to `folder`) into `db`: the store conftest's `database_url`
    copies for each test that takes `ics`, made once a session."""
    report = Pipeline(db, framework).ingest_paths(_feeds(folder))
    assert report.quarantined == 0, report.quarantine


@pytest.fixture
def ics(db: Database, client: TestClient) -> Ics:
    """The small ICS, in the test's own store (a copy of the store `ingest_small_ics` filled)."""
    with db.session() as s:
        okafor = s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id == "gp-okafor")).one()
        stranger = s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id == "gp-other")).one()
    return Ics(okafor=okafor, stranger=stranger, client=client)


WITHDRAWN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                         "code": "entered-in-error"}]}


def resend_diabetes(db: Database, framework: Framework, tmp_path: Path, name: str, timestamp: str,
                    **changes: object) -> None:
    """The GP system sends Mr Okafor's diabetes (`gp-c1`) again, changed (or, with no changes, as first sent)."""
    gp = bundle("P81001", "emis", [
        patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        condition("gp-c1", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus", **changes),
    ], timestamp=timestamp)
    report = Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / f"{name}.ndjson", [gp])])
    assert report.quarantined == 0, report.quarantine


def without_nhs_number(session: Session, person: str) -> None:
    """Clear the NHS number of a person's source records, as if their sources had sent none: for tests that
    merge two of the small ICS's people, each with a valid number, to see what follows a merge (a merge of
    two different valid NHS numbers is refused, HAZ-01)."""
    session.execute(update(PatientRecord).where(PatientRecord.person_id == person).values(nhs_number=None))


def his_number_on_another_record(db: Database, framework: Framework, folder: Path) -> str:
    """A hospital record carrying Mr Okafor's NHS number under another name and date of birth (a baby's record
    sent with a parent's number), which the MPI keeps apart as another person, held for review; that
    person's id."""
    baby = bundle("RXR", "epr", [patient("MRN-BABY", OKAFOR_NHS, "Okafor", "Chidi", "2026-11-30")])
    Pipeline(db, framework).ingest_paths([write_ndjson(folder / "baby.ndjson", [baby])])
    with db.session() as s:
        person: str = s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id == "MRN-BABY")).one()
    return person


OKAFOR_SECOND_NHS = "9434765927"  # valid (modulus 11): another NHS number for Mr Okafor


def okafor_second_number(db: Database) -> None:
    """The mental health trust knows Mr Okafor by a second NHS number (its record stays linked to him)."""
    with db.session() as s:
        s.execute(update(PatientRecord).where(PatientRecord.source_id == "RXM-4").values(nhs_number=OKAFOR_SECOND_NHS))
        s.commit()
