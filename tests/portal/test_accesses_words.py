""""Who has looked" names who looked in words a citizen knows: never a service account's name, a registered
system's client id or a source's record id (patient portal review, 2026-12-07: after his GP corrected his NHS
number the list read "P81001:nhs-number-correction, unknown role ... Why: ... the NHS number on P81001's record 1
changed", as if his GP had overridden his objection; a hospital system's read read "client:rxr-epr, unknown role")."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from tests.api.test_smart import _assertion, _backend_token, _bearer, registered, rsa_key  # noqa: F401 - fixtures
from tests.governance.test_choices_follow_number import NEW_NHS, SOURCES, _corrects
from tests.portal.test_patient_portal import _sign_in, visit_rows
from tests.small_ics import Ics

from sharedcare.api.deps import SESSION_COOKIE
from sharedcare.governance.framework import Framework
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord


def test_a_number_correction_carrying_choices_reads_as_what_it_did(ics: Ics, db: Database, framework: Framework,
                                                                   tmp_path: Path) -> None:
    _sign_in(ics.client)
    assert ics.client.post("/patient/choices", data={"change": "object-all"}, follow_redirects=False).status_code == 303
    ics.client.post("/logout", data={})
    _corrects(db, framework, tmp_path, SOURCES, NEW_NHS)
    with db.session() as s:
        (person,) = set(s.scalars(select(PatientRecord.person_id).where(PatientRecord.nhs_number == NEW_NHS)))
    ics.client.cookies.set(SESSION_COOKIE, ics.citizen_token(person))
    rows = visit_rows(ics.client.get("/patient/accesses").text)
    carried = [row for row in rows if "Your NHS number was corrected" in row]
    assert carried, rows
    assert "your choices were carried to your corrected NHS number; none was removed" in carried[0]
    page = " ".join(rows)
    assert "nhs-number-correction" not in page and "record 1" not in page and "unknown role" not in page


def test_a_registered_system_is_named_by_its_registered_name_not_its_client_id(
        registered: Ics, rsa_key, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 - fixtures
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # TestClient talks http://testserver, as test_smart's do
    ics = registered
    token = _backend_token(ics, _assertion(rsa_key))
    assert token.status_code == 200, token.text
    headers = _bearer(token.json()["access_token"])
    assert ics.client.post("/fhir/Patient/_search", data={"identifier": "9434765919"},
                           headers=headers).status_code == 200
    ics.client.cookies.clear()
    _sign_in(ics.client)
    rows = visit_rows(ics.client.get("/patient/accesses").text)
    found = [row for row in rows if "Riverside Hospital EPR" in row]
    assert found and "a computer system" in found[0], rows
    page = " ".join(rows)
    assert "client:" not in page and "rxr-epr" not in page and "unknown role" not in page
