"""What a reviewer walking the clinician's journeys in a browser found (2026-12-07), as the user meets it:
the summary's medicines without the hospital's stop, dates that were the GP extract's day, a basis form
that did not say whose record, a receptionist told "nothing shared" of allergies, a letter whose text was
removed without a word, and search errors only in the summary."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.builders import bundle, patient, write_ndjson
from tests.discharge_feed import ingest_discharge
from tests.small_ics import Ics

from sharedcare.clock import utcnow
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.models import AuditEntry, PatientRecord, ReviewItem

HOSPITAL = "Riverside University Hospitals NHS Trust"


@pytest.fixture
def stay(ics: Ics, framework: Framework, tmp_path: Path) -> Ics:
    ingest_discharge(ics.database, framework, tmp_path)
    return ics


def _sign_in(ics: Ics, username: str) -> None:
    ics.client.post("/logout")
    response = ics.client.post("/login", data={"username": username, "password": "demo"}, follow_redirects=False)
    assert response.status_code == 303


def _open(ics: Ics, username: str, person: str | None = None) -> str:
    _sign_in(ics, username)
    page = ics.client.post(f"/record/{person or ics.okafor}/basis", data={"basis": "explicit-consent"})
    assert page.status_code == 200
    return page.text


def _text(html: str) -> str:
    """The page's main content as a reader sees it: tags gone, whitespace collapsed."""
    main = html.split('id="maincontent"', 1)[1]
    return " ".join(re.sub(r"<[^>]+>", " ", main).split())


def _section(html: str, section: str) -> str:
    """One section of the summary tab, as text."""
    part = html.split(f'id="{section}"', 1)[1].split("</section>", 1)[0]
    return " ".join(re.sub(r"<[^>]+>", " ", part).split())


def _rows(html: str, section: str) -> list[str]:
    part = html.split(f'id="{section}"', 1)[1].split("</section>", 1)[0]
    rows = [" ".join(re.sub(r"<[^>]+>", " ", row).split())
            for row in re.findall(r'<tr class="nhsuk-table__row">(.*?)</tr>', part, re.S)][1:]
    return [row.removeprefix("What ") for row in rows]  # each cell's heading, for narrow screens


# -- H1: the summary's medicines say where the sources disagree ------------------------------------------------

def test_the_summary_warns_when_the_hospital_stopped_a_medicine_the_gp_lists_as_current(stay: Ics) -> None:
    """The paramedic reads the summary, not the reconciliation page: the GP's metformin read "active" with
    the hospital's stop a separate line further down, and nothing said the two disagree."""
    page = _open(stay, "para.evans")
    medications = _section(page, "medications")
    assert "Sources disagree" in medications
    warning = medications.split("Sources disagree", 1)[1].split("What", 1)[0]
    assert "Metformin" in warning
    assert (f"Stopped by {HOSPITAL} on 16 Oct 2026 (Acute kidney injury, eGFR 47), but still current at "
            "Riverside Medical Centre") in warning
    assert "Medicines from every source" in warning
    assert f'href="/record/{stay.okafor}/medicines"' in page.split('id="medications"', 1)[1].split("</section>")[0]
    # each row of a medicine the sources disagree about carries the tag, in words; the others do not
    for row in _rows(page, "medications"):
        if row.startswith("Metformin") or row.startswith("Ramipril"):
            assert "Sources disagree" in row, row
        if row.startswith("Atorvastatin"):
            assert "Sources disagree" not in row, row
    # listed first, each medicine's statements together: the hospital's stop beside the practice's "active"
    rows = _rows(page, "medications")
    tagged = ["Sources disagree" in row for row in rows]
    assert tagged == sorted(tagged, reverse=True), rows
    names = [row.split()[0] for row in rows if "Sources disagree" in row]
    assert all(n == names[i - 1] or n not in names[:i] for i, n in enumerate(names) if i), names


def test_the_summary_says_nothing_of_disagreement_when_the_sources_agree(ics: Ics) -> None:
    medications = _section(_open(ics, "para.evans"), "medications")
    assert "Metformin 500mg tablets" in medications and "Sources disagree" not in medications


# -- H2: a medicine's date is when it started, and a time the source sent is not called "recorded" ------------

def test_a_medicines_date_is_when_it_started_not_the_day_the_gp_system_sent_it(stay: Ics) -> None:
    page = _open(stay, "dr.patel")
    ramipril = next(r for r in _rows(page, "medications") if r.startswith("Ramipril 5mg capsules"))
    assert "started 1 Apr 2021" in ramipril, ramipril  # effectivePeriod.start, not dateAsserted (1 Sep 2026)
    assert "1 Sep 2026" not in ramipril.split("From", 1)[0]
    metformin = next(r for r in _rows(page, "medications") if r.startswith("Metformin 500mg tablets")
                     and "stopped" in r)
    assert "started 1 Jan 2019, until 16 Oct 2026" in metformin, metformin


def test_a_medicine_with_no_start_says_its_date_is_when_it_was_listed() -> None:
    from sharedcare.portal.present import date_label

    statement = {"resourceType": "MedicationStatement", "dateAsserted": "2026-12-06T02:00:00Z"}
    assert date_label(statement) == "listed"
    assert date_label({**statement, "effectivePeriod": {"start": "2023-02-01"}}) == "started"
    assert date_label({"resourceType": "MedicationRequest", "authoredOn": "2023-02-01"}) == "prescribed"
    assert date_label({"resourceType": "Condition", "onsetDateTime": "2023-02-01"}) == ""


def test_the_time_a_source_sent_an_item_is_not_called_the_time_it_was_recorded(stay: Ics) -> None:
    """The time beside each item is the source system's message or update time (Bundle.timestamp,
    meta.lastUpdated, MSH-7): for a GP extract, the night it ran, not when the GP recorded anything."""
    page = _text(_open(stay, "dr.patel"))
    assert "recorded 1 Sep 2026" not in page and "sent 1 Sep 2026, 11:00 · received" in page


# -- H3: the basis form says whose record it opens --------------------------------------------------------------

def _twins(ics: Ics, framework: Framework, tmp_path: Path) -> tuple[str, str]:
    gp = bundle("P81001", "emis", [
        patient("tw-1", "9990000026", "Nowak", "Anna", "2019-05-04", gender="female", postcode="RV3 1AA"),
        patient("tw-2", "9990000034", "Nowak", "Zofia", "2019-05-04", gender="female", postcode="RV3 1AA"),
    ])
    report = Pipeline(ics.database, framework).ingest_paths([write_ndjson(tmp_path / "twins.ndjson", [gp])])
    assert report.quarantined == 0, report.quarantine
    _sign_in(ics, "para.evans")
    results = ics.client.post("/search", data={"family": "Nowak", "birth_day": "4", "birth_month": "5",
                                               "birth_year": "2019"}).text
    assert "2 people found" in results
    links = re.findall(r'href="/record/([^"]+)">Open record<span class="nhsuk-u-visually-hidden"> of ([^<]+)<',
                       results)
    return next(pid for pid, name in links if "Anna" in name), next(pid for pid, name in links if "Zofia" in name)


def test_the_basis_form_names_the_patient_it_is_for(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    anna, zofia = _twins(ics, framework, tmp_path)
    for person, name, other, number in ((anna, "NOWAK, Anna", "Zofia", "999 000 0026"),
                                        (zofia, "NOWAK, Zofia", "Anna", "999 000 0034")):
        page = ics.client.get(f"/record/{person}")
        assert "Why are you opening this record?" in page.text
        form = page.text.split('action="/record/', 1)[1]
        heading = form.split("</h1>", 1)[0]
        assert name in heading  # the heading itself says whose record
        text = _text(page.text)
        assert f"{name} Born 4 May 2019 NHS number {number} Postcode RV3 1AA" in text, text
        assert other not in text
        assert "<title>Why are you opening this record?" in page.text  # the title stays generic
    with ics.database.session() as s:
        looked = s.execute(select(AuditEntry.patient_id, AuditEntry.action).where(
            AuditEntry.username == "para.evans", AuditEntry.action.startswith("clinical:patient:"))).all()
    for person in (anna, zofia):  # found in the search, and named on the form (not a search: review D3)
        assert sorted(action for who, action in looked if who == person) == [
            "clinical:patient:identify", "clinical:patient:search"]


def test_a_record_id_alone_does_not_tell_a_user_who_the_person_is(ics: Ics) -> None:
    """The form names only someone this user found (or whose record they read): an id from a URL, a browser's
    history or a log is no way to learn who someone is without their name and date of birth or NHS number."""
    _sign_in(ics, "para.evans")
    edited = _text(ics.client.get(f"/record/{ics.okafor}").text)
    assert "OKAFOR" not in edited and "943 476 5919" not in edited
    assert "We cannot show you who this record belongs to" in edited
    ics.client.post("/search", data={"nhs_number": "9434765919"})
    found = _text(ics.client.get(f"/record/{ics.okafor}").text)
    assert "OKAFOR, Emeka Born 2 Mar 1945 NHS number 943 476 5919 Postcode RV1 2AB" in found


def test_the_basis_form_says_so_when_it_cannot_say_whose_record_it_is(ics: Ics, framework: Framework,
                                                                        tmp_path: Path) -> None:
    """A person known only to the mental health trust, opened by id by a pharmacist (whose role may not know
    of that trust): no one is named, and the form says it could not confirm who."""
    mental = bundle("RXM", "rio", [patient("RXM-77", "9990000042", "Quill", "Ruth", "1960-01-01")])
    Pipeline(ics.database, framework).ingest_paths([write_ndjson(tmp_path / "mh.ndjson", [mental])])
    with ics.database.session() as s:
        person = s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id == "RXM-77")).one()
    _sign_in(ics, "pharm.khan")
    page = ics.client.get(f"/record/{person}")
    assert "Why are you opening this record?" in page.text
    text = _text(page.text)
    assert "Quill" not in text and "We cannot show you who this record belongs to" in text


def _queued(ics: Ics) -> list[tuple[str, str]]:
    with ics.database.session() as s:
        return [(i.kind, i.username) for i in s.scalars(select(ReviewItem).order_by(ReviewItem.id))]


def test_a_record_opened_by_its_id_alone_is_opened_and_queued_for_ig_once(ics: Ics) -> None:
    """The form names no one for an id alone, and a basis is still recorded and the record opened (care is
    not blocked); IG's queue gets one "opened-by-id" item, which neither opening the record again nor a
    second basis within the 24 hours adds to. Once a basis is recorded the record's banner names the patient:
    the user has said why they need the record, and IG now reviews it."""
    _sign_in(ics, "para.evans")
    form = _text(ics.client.get(f"/record/{ics.okafor}").text)
    assert "OKAFOR" not in form and "We cannot show you who this record belongs to" in form
    opened = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"})
    assert opened.status_code == 200 and "OKAFOR, Emeka" in opened.text and "Why are you opening" not in opened.text
    for page in ("", "/medicines", "/changes"):  # opened again, no new basis
        assert ics.client.get(f"/record/{ics.okafor}{page}").status_code == 200
    again = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"})
    assert again.status_code == 200
    assert _queued(ics) == [("opened-by-id", "para.evans")]

    _sign_in(ics, "ig.morgan")
    queue = _text(ics.client.get("/ig").text)
    assert ("Record opened by its id, without a search: Carys Evans Open Who Carys Evans (para.evans) Role Paramedic "
            "Organisation North Region Ambulance Service NHS Trust Patient OKAFOR, Emeka") in queue
    assert "Why it was flagged record opened by its id alone: no search by this user found the patient" in queue


def test_a_record_opened_from_a_search_in_the_portal_is_not_queued(ics: Ics) -> None:
    _sign_in(ics, "para.evans")
    ics.client.post("/search", data={"nhs_number": "9434765919"})
    assert "OKAFOR, Emeka" in ics.client.get(f"/record/{ics.okafor}").text  # the form names him
    opened = ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"})
    assert opened.status_code == 200 and "OKAFOR, Emeka" in opened.text
    assert _queued(ics) == []


def _searches(ics: Ics, person: str) -> list[str]:
    """The actions of the audit entries about `person` that name them (a search, or the form's look-up)."""
    with ics.database.session() as s:
        return list(s.scalars(select(AuditEntry.action).where(
            AuditEntry.patient_id == person, AuditEntry.action.startswith("clinical:patient:"))
            .order_by(AuditEntry.seq)))


def test_each_render_of_the_basis_form_is_not_another_search(ics: Ics) -> None:
    """Privacy review of 2026-12-07 (D3): a search, the form, the form sent without a choice, then a basis:
    one search in the audit (and "Who has looked"), the form's look-ups audited as what they are."""
    _sign_in(ics, "dr.patel")
    ics.client.post("/search", data={"nhs_number": "9434765919"})
    ics.client.get(f"/record/{ics.okafor}")
    ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": ""})
    ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"})
    assert _searches(ics, ics.okafor) == ["clinical:patient:search", "clinical:patient:identify",
                                          "clinical:patient:identify"]


def test_the_basis_form_s_own_look_up_does_not_keep_the_24_hours_open(ics: Ics, monkeypatch: pytest.MonkeyPatch
                                                                       ) -> None:
    """Privacy review of 2026-12-07 (D4): the form named the patient because the form itself had named them
    (its audit entry was a search), so one view a day named them for ever with no search again. Only a search
    or a read of the record in the last 24 hours counts."""
    _sign_in(ics, "dr.patel")
    ics.client.post("/search", data={"nhs_number": "9434765919"})
    start = utcnow()

    def at(hours: int) -> None:
        for module in ("sharedcare.governance.gateway", "sharedcare.governance.audit"):
            monkeypatch.setattr(f"{module}.utcnow", lambda: start + timedelta(hours=hours))
    at(23)
    assert "OKAFOR, Emeka" in ics.client.get(f"/record/{ics.okafor}").text  # 23 hours after the search
    at(46)
    later = ics.client.get(f"/record/{ics.okafor}").text  # 46 hours: the only look since was the form's own
    assert "OKAFOR, Emeka" not in later and "We cannot show you who this record belongs to" in later
    ics.client.post("/search", data={"nhs_number": "9434765919"})  # a search again names them again
    assert "OKAFOR, Emeka" in ics.client.get(f"/record/{ics.okafor}").text


# -- M1: a role that sees no clinical information is told so, not "nothing shared" ------------------------------

def test_a_receptionist_is_told_her_role_does_not_see_allergies_not_that_there_are_none(
        ics: Ics) -> None:
    page = _open(ics, "admin.taylor")
    allergies = _section(page, "allergies")
    assert "Your role does not see allergies" in allergies and "Nothing shared" not in allergies
    assert "does not mean there are none" in allergies
    assert "Your role does not see medications" in _section(page, "medications")
    # a GP sees the same empty section as "none recorded", not as her role's limit
    gp = _section(_open(ics, "dr.patel"), "allergies")
    assert "Your role does not see" not in gp and "None recorded by the organisations sharing" in gp


# -- M2: a letter whose text the role's tier removed says so, and whom to ask -----------------------------------

def test_a_district_nurse_is_told_a_letters_text_is_not_shared_with_her_role_and_whom_to_ask(ics: Ics) -> None:
    page = _open(ics, "dn.williams")
    documents = page.split('id="documents"', 1)[1]
    row = next(" ".join(re.sub(r"<[^>]+>", " ", r).split())
               for r in re.findall(r'<tr class="nhsuk-table__row">(.*?)</tr>', documents, re.S)
               if "Discharge summary" in r)
    assert "Read document" not in row
    assert f"Full text not shared with your role. Ask {HOSPITAL}: 01632 960100" in row, row
    # the paramedic's tier shows the letter, and no such note
    paramedic = _open(ics, "para.evans").split('id="documents"', 1)[1]
    assert "Read document" in paramedic and "Full text not shared" not in paramedic


# -- M3: search errors are shown at the field ------------------------------------------------------------------

def test_an_invalid_nhs_number_is_shown_at_the_field(ics: Ics) -> None:
    _sign_in(ics, "para.evans")
    page = ics.client.post("/search", data={"nhs_number": "943 476 5918"}).text
    assert 'id="nhs_number-error"' in page and "nhsuk-input--error" in page
    assert re.search(r'id="nhs_number"[^>]*aria-describedby="nhs_number-hint nhs_number-error"', page)


def test_a_two_digit_year_is_shown_at_the_date_with_the_gov_uk_words(ics: Ics) -> None:
    _sign_in(ics, "para.evans")
    page = ics.client.post("/search", data={"family": "Okafor", "birth_day": "2", "birth_month": "3",
                                            "birth_year": "45"}).text
    assert 'id="birth-error"' in page and "Year must include 4 numbers" in page
    assert "must be a real date" not in page
    assert 'aria-describedby="birth-hint birth-error"' in page
    assert 'href="#birth-year"' in page  # the summary leads to the part that is wrong, and only it is marked
    assert re.findall(r'nhsuk-input--error" id="birth-([a-z]+)"', page) == ["year"]


def test_a_missing_family_name_is_shown_at_the_field(ics: Ics) -> None:
    _sign_in(ics, "para.evans")
    page = ics.client.post("/search", data={"birth_day": "2", "birth_month": "3", "birth_year": "1945"}).text
    assert 'id="family-error"' in page and 'aria-describedby=" family-error"' not in page
    assert re.search(r'id="family"[^>]*aria-describedby="family-error"', page)


# -- L1: on a phone every panel is stacked: what a crew needs before the long results table ----------------------

def test_care_team_care_plans_and_documents_come_before_encounters_and_results(ics: Ics) -> None:
    """Without script (and on a phone, where the panels stack), the district nurse's Tuesday visits and last
    month's discharge letter came after a 57-row results table, 31,000 px down a 390 px wide screen."""
    page = _open(ics, "para.evans")
    tabs = re.findall(r'class="nhsuk-tabs__tab" href="#([a-z-]+)"', page)
    assert tabs[:4] == ["summary", "care-team", "care-plans", "documents"]
    assert tabs.index("results") > tabs.index("documents") and tabs.index("encounters") > tabs.index("documents")
    panels = [page.index(f'class="nhsuk-tabs__panel{extra}" id="{tab}"')
              for tab, extra in (("summary", ""), ("care-team", " nhsuk-tabs__panel--hidden"),
                                 ("results", " nhsuk-tabs__panel--hidden"))]
    assert panels == sorted(panels)
