"""The clinician portal over HTTP: sign in, find Mr Okafor, record a basis, read his combined record."""

from __future__ import annotations

import re

from sqlalchemy import select
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.store.models import AuditEntry, ReviewItem


def _sign_in(ics: Ics, username: str = "para.evans") -> None:
    response = ics.client.post("/login", data={"username": username, "password": "demo"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/search"


def test_the_portal_starts_with_a_sign_in_form(ics: Ics) -> None:
    page = ics.client.get("/")
    assert page.status_code == 200
    assert 'action="/login"' in page.text and 'name="password"' in page.text


def test_a_wrong_password_is_refused_and_audited(ics: Ics) -> None:
    page = ics.client.post("/login", data={"username": "para.evans", "password": "guess"})
    assert page.status_code == 401 and "Sign-in failed" in page.text
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    with db.session() as s:
        outcomes = s.scalars(select(AuditEntry.outcome).where(AuditEntry.action == "auth:session:login")).all()
    assert outcomes == ["deny"]


def test_pages_need_a_signed_in_user(ics: Ics) -> None:
    page = ics.client.get(f"/record/{ics.okafor}")
    assert page.status_code == 401 and 'action="/login"' in page.text


def test_a_paramedic_finds_a_patient_by_name_and_date_of_birth_and_opens_the_record(ics: Ics) -> None:
    _sign_in(ics)
    results = ics.client.post("/search", data={"family": "okafor", "birth_date": "1945-03-02"})
    assert results.status_code == 200
    assert "1 person found" in results.text and "OKAFOR, Emeka" in results.text
    link = re.search(r'href="(/record/[^"]+)"', results.text)
    assert link and link.group(1) == f"/record/{ics.okafor}"

    gate = ics.client.get(link.group(1))
    assert "Why are you opening this record?" in gate.text

    opened = ics.client.post(f"/record/{ics.okafor}/basis",
                             data={"basis": "implied-consent", "reason": "confused, daughter not present"})
    assert opened.status_code == 200
    page = opened.text
    assert "Metformin 500mg tablets" in page and "Riverside Medical Centre" in page
    assert "Visits on Tuesdays" in page and "Riverside Community Healthcare NHS Trust" in page
    assert "Discharged after a fall" in page and "Riverside University Hospitals NHS Trust" in page
    assert "Ada Okafor (Daughter)" in page
    assert "Some information is not shown" in page
    assert "holds mental health information" in page  # tier 1 headline, with the service's contact
    assert "Depressive disorder" not in page
    assert "recorded" in page and "received" in page
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    with db.session() as s:
        review = s.scalars(select(ReviewItem)).one()
    assert (review.kind, review.username, review.person_id) == ("implied-consent", "para.evans", ics.okafor)


def test_searching_by_nhs_number_keeps_it_out_of_the_url(ics: Ics) -> None:
    _sign_in(ics, "dr.patel")
    results = ics.client.post("/search", data={"nhs_number": "943 476 5919"})
    assert "OKAFOR, Emeka" in results.text
    assert OKAFOR_NHS not in str(results.url)


def test_emergency_access_tells_the_clinician_it_is_recorded(ics: Ics) -> None:
    _sign_in(ics, "dr.oconnor")
    page = ics.client.post(f"/record/{ics.okafor}/basis",
                           data={"basis": "emergency", "reason": "unconscious in resus, no history available"})
    assert "Emergency access." in page.text and "will be reviewed" in page.text


def test_a_short_reason_is_sent_back_with_the_problem(ics: Ics) -> None:
    _sign_in(ics)
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "emergency", "reason": "help"})
    assert page.status_code == 400 and "at least 10 characters" in page.text


def test_an_unsearchable_query_says_what_is_needed(ics: Ics) -> None:
    _sign_in(ics)
    page = ics.client.post("/search", data={"family": "Okafor"})
    assert page.status_code == 400 and "family name and date of birth" in page.text


def test_signing_out_clears_the_session(ics: Ics) -> None:
    _sign_in(ics)
    response = ics.client.post("/logout", follow_redirects=False)
    assert "Clear-Site-Data" in response.headers
    assert ics.client.get("/search").status_code == 401
