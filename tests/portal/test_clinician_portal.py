"""The clinician portal over HTTP: sign in, find Mr Okafor, record a basis, read his combined record in its tabs,
say whether it helped."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import select
from tests.builders import SCT, bundle, patient, write_ndjson
from tests.results_feed import ingest_results
from tests.small_ics import OKAFOR_NHS, Ics
from tests.social_care_feed import ingest_social_care

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.models import AuditEntry, Feedback, ReviewItem


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
    results = ics.client.post("/search", data={"family": "okafor", "birth_day": "2", "birth_month": "3",
                                               "birth_year": "1945"})
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
    # community is tier 2 for paramedics: the visit's code and schedule, not what the nurse typed beside them
    assert "Home visit, every week on Tuesday" in page and "District nurse visit" not in page
    assert "Visits on Tuesdays" not in page and "Riverside Community Healthcare NHS Trust" in page
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


def test_a_pharmacist_sees_that_a_typed_result_is_not_shown_rather_than_what_was_typed(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    wound = {"resourceType": "Observation", "id": "rx-ob2", "status": "final", "subject": {"reference": "Patient/MRN1"},
             "code": {"coding": [{"system": SCT, "code": "225552003", "display": "Wound finding"}]},
             "valueString": "Disclosed partner hit her; refuge address 4 Mill Lane"}
    feed = bundle("RXR", "epr", [patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"), wound])
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "o.ndjson", [feed])]).quarantined == 0
    _sign_in(ics, "pharm.khan")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    assert "Wound finding" in page and "Mill Lane" not in page
    assert 'aria-hidden="true">Detail </span>Not shown at your access level</td>' in page  # the result's row


TYPED = "Told me her partner hits her; staying at refuge, 4 Mill Lane"


def _typed_not_coded(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """A hospital result whose code is only what the nurse typed, and a community care plan whose title and
    category are typed (its visit is coded)."""
    obs = {"resourceType": "Observation", "id": "rx-free", "status": "final", "subject": {"reference": "Patient/MRN1"},
           "code": {"text": TYPED}, "effectiveDateTime": "2026-11-01T10:00:00Z",
           "valueQuantity": {"value": 7, "unit": "{score}"}}
    plan = {"resourceType": "CarePlan", "id": "ryc-cp2", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/RYC-9"}, "title": "Visits agreed away from her husband",
            "category": [{"text": "Refuge outreach"}],
            "activity": [{"detail": {
                "status": "scheduled",
                "code": {"coding": [{"system": SCT, "code": "439708006", "display": "Home visit"}]},
                "scheduledTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk",
                                               "dayOfWeek": ["fri"]}}}}]}
    feeds = [bundle("RXR", "epr", [patient("MRN1", OKAFOR_NHS, "OKAFOR", "Emeka", "1945-03-02"), obs],
                    timestamp="2026-11-02T06:00:00Z"),
             bundle("RYC", "rio", [patient("RYC-9", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), plan],
                    timestamp="2026-11-02T06:00:00Z")]
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "t.ndjson", feeds)]).quarantined == 0


def test_what_was_typed_rather_than_coded_is_not_shown_at_tier_2_and_the_row_says_so(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """Tier 2 is coded data: the pharmacist (diagnostics 2) is shown the result's value with its name said to be
    not shown and whom to ask, never an empty row or what was typed; the paramedic (community 2) the coded
    visit on Fridays without the plan's typed title or category. The GP (tier 3 in both) reads them."""
    _typed_not_coded(ics, framework, tmp_path)
    _sign_in(ics, "pharm.khan")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    assert "Mill Lane" not in page and "partner" not in page
    results = page.split('id="results"', 1)[1]
    assert re.search(r'aria-hidden="true">What </span><span class="sc-cell">Not shown at your access level\s*'
                     r'<span class="sc-source__time">What this is was typed rather than coded, so it is not shared '
                     r'with your role. Ask Riverside University Hospitals NHS Trust: 01632 960100.</span>', results)
    assert 'aria-hidden="true">Detail </span>7</td>' in results  # the value is coded data: shown
    assert "Some information is not shown" in page

    _sign_in(ics, "para.evans")
    page = ics.client.post(f"/record/{ics.okafor}/basis",
                           data={"basis": "implied-consent", "reason": "confused, daughter not present"}).text
    assert "Home visit, every week on Friday" in page
    assert "her husband" not in page and "Refuge outreach" not in page

    _sign_in(ics, "dr.patel")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    assert TYPED in page and "Refuge outreach" in page and "What this is was typed" not in page


def test_an_allergy_a_specialist_service_typed_rather_than_coded_is_still_listed_with_whom_to_ask(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """Hazard HAZ-02: the paramedic sees the mental health trust's allergies at tier 2 (alerts), coded. One whose
    substance the trust typed is still in the allergies, with its coded reaction, saying what it is is not
    shared and whom to ask, never dropped and never the typed words."""
    allergy = {"resourceType": "AllergyIntolerance", "id": "rxm-al2", "patient": {"reference": "Patient/RXM-4"},
               "code": {"text": "Penicillin, per his sister (estranged)"},
               "reaction": [{"manifestation": [{"coding": [{"system": SCT, "code": "39579001",
                                                            "display": "Anaphylaxis"}]}]}]}
    feed = bundle("RXM", "rio", [patient("RXM-4", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), allergy])
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "a.ndjson", [feed])]).quarantined == 0
    _sign_in(ics, "para.evans")
    page = ics.client.post(f"/record/{ics.okafor}/basis",
                           data={"basis": "implied-consent", "reason": "confused, daughter not present"}).text
    allergies = page.split('id="allergies"', 1)[1].split('id="medications"', 1)[0]
    assert "Not shown at your access level" in allergies and "Anaphylaxis" in allergies
    assert ("What this is was typed rather than coded, so it is not shared with your role. Ask Riverside and "
            "Dales Mental Health NHS Foundation Trust: 01632 960300.") in allergies
    assert "sister" not in page


def test_a_pharmacist_is_shown_a_mental_health_trusts_allergy_as_from_a_specialist_service(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """The pharmacist sees nothing of mental health: the allergy is shown, its source and the care team do
    not name the trust or give its phone number."""
    allergy = {"resourceType": "AllergyIntolerance", "id": "rxm-al", "patient": {"reference": "Patient/RXM-4"},
               "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]}}
    feed = bundle("RXM", "rio", [patient("RXM-4", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), allergy])
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "a.ndjson", [feed])]).quarantined == 0
    _sign_in(ics, "pharm.khan")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    assert "Allergy to penicillin" in page and "A specialist service" in page
    assert "Mental Health" not in page and "Mental health service" not in page and "01632 960300" not in page


def test_searching_by_nhs_number_keeps_it_out_of_the_url(ics: Ics) -> None:
    _sign_in(ics, "dr.patel")
    results = ics.client.post("/search", data={"nhs_number": "943 476 5919"})
    assert "OKAFOR, Emeka" in results.text
    assert "</span>943 476 5919</td>" in results.text  # spaced as on the record's banner, easy to check aloud
    assert OKAFOR_NHS not in str(results.url)


def test_emergency_access_tells_the_clinician_it_is_recorded(ics: Ics) -> None:
    _sign_in(ics, "dr.oconnor")
    page = ics.client.post(f"/record/{ics.okafor}/basis",
                           data={"basis": "emergency", "reason": "unconscious in resus, no history available"})
    assert "Emergency access" in page.text and "will be reviewed" in page.text


def test_breaking_glass_from_the_medicines_page_says_so_on_every_page_of_the_record(ics: Ics) -> None:
    """The basis form sends the doctor back to the page she asked for: Medicines and What changed showed no
    notice, so she was never told her emergency access would be reviewed (journey 3)."""
    _sign_in(ics, "dr.oconnor")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={
        "basis": "emergency", "reason": "unconscious in resus, no history available", "then": "medicines"})
    assert page.url.path == f"/record/{ics.okafor}/medicines"
    for shown in (page, ics.client.get(f"/record/{ics.okafor}/changes")):
        assert "Emergency access" in shown.text and "will be reviewed" in shown.text, shown.url


def test_a_short_reason_is_sent_back_with_the_problem_in_the_forms_own_words(ics: Ics) -> None:
    _sign_in(ics)
    for reason in ("help", "\u200b" * 10):  # ten zero-width spaces say no more than "help"
        page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "emergency", "reason": reason})
        assert page.status_code == 400
        assert "Enter a reason of at least 10 characters for emergency (break glass)." in page.text
    assert "basis" not in page.text.split('class="nhsuk-error-summary"', 1)[1].split("</div>", 1)[0]


def test_an_unsearchable_query_says_what_is_needed(ics: Ics) -> None:
    _sign_in(ics)
    page = ics.client.post("/search", data={"family": "Okafor"})
    assert page.status_code == 400 and "family name and date of birth" in page.text


def test_signing_out_clears_the_session(ics: Ics) -> None:
    _sign_in(ics)
    response = ics.client.post("/logout", follow_redirects=False)
    assert "Clear-Site-Data" in response.headers
    assert ics.client.get("/search").status_code == 401


def test_the_basis_must_be_chosen_not_assumed(ics: Ics) -> None:
    _sign_in(ics)
    gate = ics.client.get(f"/record/{ics.okafor}").text
    assert "checked" not in gate  # no basis is pre-selected: the clinician says which applies
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"reason": ""})
    assert page.status_code == 400 and "Select why you are opening this record" in page.text


def test_the_form_says_how_long_a_basis_lasts_and_it_does_outlast_signing_out(ics: Ics) -> None:
    """The form said a basis lasts "for your shift", but signing out does not end it: it lasts the
    framework's hours for that user and patient, in every session."""
    _sign_in(ics)
    gate = ics.client.get(f"/record/{ics.okafor}").text
    assert "lasts for your shift" not in gate
    hint = "Give a reason. Lasts 8 hours, even if you sign out."
    assert hint in gate and "review it. Lasts 4 hours, even if you sign out." in gate  # implied; break glass
    ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "implied-consent", "reason": "fall at home"})
    ics.client.post("/logout")
    _sign_in(ics)
    again = ics.client.get(f"/record/{ics.okafor}")
    assert again.status_code == 200 and "Why are you opening this record?" not in again.text


def test_break_glass_is_offered_only_to_roles_that_may_use_it(ics: Ics) -> None:
    _sign_in(ics, "para.evans")
    assert 'value="emergency"' in ics.client.get(f"/record/{ics.okafor}").text
    ics.client.post("/logout")
    _sign_in(ics, "pharm.khan")
    gate = ics.client.get(f"/record/{ics.okafor}").text
    assert "Why are you opening this record?" in gate and 'value="implied-consent"' in gate
    assert 'value="emergency"' not in gate


def test_an_invalid_nhs_number_is_sent_back(ics: Ics) -> None:
    _sign_in(ics)
    page = ics.client.post("/search", data={"nhs_number": "943 476 5918"})
    assert page.status_code == 400 and "valid check digit" in page.text


def test_the_record_has_the_tabs_a_clinician_expects_with_trend_charts(ics: Ics, framework: Framework,
                                                                      tmp_path: Path) -> None:
    ingest_results(ics.client.app.state.database, framework, tmp_path)  # type: ignore[attr-defined]
    _sign_in(ics, "dr.patel")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    tabs = re.findall(r'class="nhsuk-tabs__tab" href="#([a-z-]+)"', page)
    assert tabs == ["summary", "care-team", "care-plans", "documents", "encounters", "results", "social-care"]
    charts = re.findall(r'<title id="chart-([a-z0-9]+)-title">([^<]+)</title>', page)
    assert charts == [("hba1c", "HbA1c trend"), ("egfr", "eGFR trend"), ("bp", "Blood pressure trend")]
    assert "HbA1c: 4 results from 10 May 2024 to 18 Oct 2026, lowest 52, highest 62, latest 62 mmol/mol " \
           "(Riverside University Hospitals NHS Trust)" in page
    assert 'id="medications"' in page and "Contact: 01632 960200" in page  # care team with contacts


def test_the_social_care_tab_is_only_for_roles_that_see_social_care(ics: Ics) -> None:
    for username, shown in (("sw.brown", True), ("pharm.khan", False)):
        _sign_in(ics, username)
        page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
        assert ('href="#social-care"' in page) is shown, username


def test_feedback_is_stored_with_role_and_organisation_and_nothing_about_the_patient(ics: Ics) -> None:
    _sign_in(ics)
    ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "implied-consent", "reason": "confused at home"})
    thanks = ics.client.post(f"/record/{ics.okafor}/feedback", data={"helped": "yes", "comment": "found his meds"})
    assert thanks.status_code == 200 and "Thank you for your feedback" in thanks.text
    ics.client.post(f"/record/{ics.okafor}/feedback", data={"helped": "no"})
    assert ics.client.post(f"/record/{ics.okafor}/feedback", data={"helped": "perhaps"}).status_code == 400
    with ics.client.app.state.database.session() as s:  # type: ignore[attr-defined]
        rows = [(f.role, f.organisation, f.helped, f.comment)
                for f in s.scalars(select(Feedback).order_by(Feedback.id))]
        audited = s.scalars(select(AuditEntry.action).where(AuditEntry.action.like("%feedback%"))).all()
    assert rows == [("paramedic", "RYA", True, "found his meds"), ("paramedic", "RYA", False, None)]
    assert audited == []


def test_pages_allow_only_this_servers_own_resources_and_static_files_may_be_cached(ics: Ics) -> None:
    page = ics.client.get("/")
    assert page.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for url in ("/static/nhsuk/nhsuk-frontend.min.css", "/static/sharedcare.js", "/assets/images/nhsuk-icon-cross.svg"):
        asset = ics.client.get(url)
        assert asset.status_code == 200 and asset.headers["cache-control"] == "public, max-age=3600", url
    assert ics.client.get("/static/missing.css").headers["cache-control"] == "no-store"


def test_a_script_may_send_the_date_of_birth_as_one_iso_date(ics: Ics) -> None:
    _sign_in(ics)
    page = ics.client.post("/search", data={"family": "Okafor", "birth_date": "1945-03-02"})
    assert page.status_code == 200 and "OKAFOR, Emeka" in page.text
    assert ics.client.post("/search", data={"family": "Okafor", "birth_date": "1945-02-30"}).status_code == 400


def test_a_role_that_sees_nothing_of_mental_health_is_not_told_a_mental_health_trust_knows_the_patient(
        ics: Ics) -> None:
    """The framework gives a community pharmacist nothing of mental health, not even that a service is
    involved; the trust's own record of who he is must not name it on the care team either."""
    _sign_in(ics, "pharm.khan")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    assert "Metformin 500mg tablets" in page  # the record opened
    assert "Riverside and Dales Mental Health NHS Foundation Trust" not in page
    assert "Mental health service" not in page and "01632 960300" not in page
    ics.client.post("/logout")
    _sign_in(ics, "sw.brown")  # a social worker sees that the trust is involved, and how to reach it
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    assert "Riverside and Dales Mental Health NHS Foundation Trust" in page and "01632 960300" in page


def test_an_empty_tab_does_not_pass_for_nothing_held_when_services_are_shown_only_as_involved(ics: Ics) -> None:
    """A social worker sees the mental health trust only as involved: its tab-by-tab gaps say where to look."""
    _sign_in(ics, "sw.brown")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    results = page.split('id="results"', 1)[1].split('id="care-team"', 1)[0]
    assert "Nothing shared with you here. Some services hold information you see only as involved" in results
    assert "Nothing shared.<" not in results
def test_a_receptionist_opening_her_own_practices_patient_sees_demographics_and_is_told_the_rest_is_not_shown(
        ics: Ics) -> None:
    """Tier 0 is never, whoever recorded it (issue 5): admin staff read no clinical record of their own
    practice's, and the decision is audited with what was withheld; the practice's GP still reads it all."""
    from sharedcare.governance.access_log import details
    from sharedcare.governance.explain import WITHHELD_LABELS

    _sign_in(ics, "admin.taylor")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    assert "OKAFOR, Emeka" in page and "Ada Okafor (Daughter)" in page  # her own practice's demographics
    assert "Some information is not shown" in page and WITHHELD_LABELS["tier"] in page
    for clinical in ("Type 2 diabetes mellitus", "Metformin 500mg tablets", "Takes with breakfast",
                     "Chlamydial infection"):
        assert clinical not in page
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    with db.session() as s:
        (read,) = s.scalars(select(AuditEntry).where(AuditEntry.username == "admin.taylor",
                                                     AuditEntry.action == "clinical:record:read")).all()
    # the restricted letter too: her role sees nothing of its kind (sixth security review)
    assert read.outcome == "permit" and details(read)["withheld:tier"] == "9"
    assert WITHHELD_LABELS["confidential"] not in page

    _sign_in(ics, "dr.patel")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    # sexual health is a headline for a GP from elsewhere, and in full from her own practice
    for clinical in ("Type 2 diabetes mellitus", "Metformin 500mg tablets", "Chlamydial infection"):
        assert clinical in page


def test_a_gp_reads_which_social_care_assessment_it_was_but_not_what_the_council_wrote(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """Social care is tier 2 (coded) for a GP. The council's assessment types are its Mosaic system's own list (the
    mapping's `local` values), coded in the council's local code system, so the GP reads "Care Act Assessment" in
    the portal and over FHIR; the outcome the social worker wrote stays at tier 3. Before, the types were kept as
    text, and the GP read "Not shown at your access level" for each assessment."""
    ingest_social_care(ics.database, framework, tmp_path)
    _sign_in(ics, "dr.patel")
    page = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"}).text
    social = page.split('id="social-care"', 1)[1]
    assert "Care Act Assessment" in social and "Carer&#39;s Assessment" in social
    assert "typed rather than coded" not in social
    assert "Home care package" not in page and "respite" not in page  # the outcomes: free text

    record = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=ics.open_record("dr.patel")).json()
    types = [entry["resource"].get("type") for entry in record["entry"]
             if entry["resource"]["resourceType"] == "Encounter"]
    mosaic = "https://fhir.lrc.nhs.uk/CodeSystem/mosaic-assessment-type"
    for kind in ("Care Act Assessment", "Carer's Assessment"):
        assert [{"coding": [{"system": mosaic, "code": kind, "display": kind}]}] in types
    assert "Home care package" not in json.dumps(record) and "respite" not in json.dumps(record)
