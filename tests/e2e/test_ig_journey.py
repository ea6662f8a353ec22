"""Journeys 3 and 7 in a real browser: an A&E doctor breaks glass and the IG officer marks it
appropriate; a breach is reported and the IG officer's suspension locks the organisation's users out
on their very next request. Each person has their own browser context (their own session)."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from tests.e2e.conftest import Pages
from tests.e2e.test_clinician_journey import find_okafor, sign_in
from tests.small_ics import Ics

from sharedcare.clock import utcnow
from sharedcare.store.database import Database
from sharedcare.store.models import ReviewItem

REASON = "unconscious in resus, no history available"


def sign_in_to_ig(pages: Pages, page: Page, url: str, shot: bool = False) -> None:
    page.goto(url + "/ig")
    expect(page.get_by_role("heading", name="Sign in to the information governance workspace")).to_be_visible()
    pages.check(page)
    if shot:
        pages.shoot(page, "ig-sign-in")
    page.get_by_label("Username").fill("ig.morgan")
    page.get_by_label("Password").fill("demo")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
    pages.check(page)


def test_break_glass_reaches_the_ig_queue_and_is_marked_appropriate(live: tuple[Ics, str], pages: Pages) -> None:
    ics, url = live
    doctor = pages.open()
    find_okafor(pages, doctor, url, "dr.oconnor")
    doctor.get_by_role("radio", name="Emergency (break glass)").check()
    doctor.get_by_label("Reason", exact=True).fill(REASON)
    doctor.get_by_role("button", name="Open record").click()
    callout = doctor.locator(".nhsuk-card--warning")
    expect(callout).to_contain_text("Emergency access")
    expect(callout).to_contain_text("This access is being recorded and will be reviewed")
    pages.check(doctor)

    officer = pages.open()
    sign_in_to_ig(pages, officer, url, shot=True)
    card = officer.locator(".nhsuk-card", has_text=REASON)
    expect(card).to_contain_text("Break glass")
    expect(card).to_contain_text("OKAFOR, Emeka, born 2 Mar 1945, NHS number 943 476 5919")  # whose record it was
    pages.shoot(officer, "ig-review-queue")
    expect(card).to_contain_text("Dr Niamh O'Connor")
    expect(card).to_contain_text("Hospital clinician")
    expect(card).to_contain_text("Riverside University Hospitals NHS Trust")
    card.get_by_role("button", name="See what was seen").click()  # what he did and saw, in words, and whose
    expect(officer.get_by_role("heading", name="Audit search")).to_be_visible()
    seen = officer.locator("tbody tr", has_text="Opened the record in an emergency")
    expect(seen).to_contain_text("What was seen: ")
    expect(seen).to_contain_text("medicines 1")
    expect(seen).to_contain_text("OKAFOR, Emeka, born 2 Mar 1945, NHS number 943 476 5919")
    expect(officer.locator("tbody tr", has_text="Recorded why they opened the record")).to_contain_text(REASON)
    pages.check(officer)
    pages.shoot(officer, "ig-what-was-seen", at="h2")
    officer.get_by_role("link", name="Review queue").click()
    expect(officer.get_by_role("heading", name="Review queue")).to_be_visible()
    pages.check(officer)
    card = officer.locator(".nhsuk-card", has_text=REASON)
    card.get_by_role("button", name="Open an investigation").click()  # no note: nothing recorded, said at the field
    expect(officer.get_by_role("link", name="Enter a note saying what to investigate")).to_be_visible()
    pages.check(officer)
    card = officer.locator(".nhsuk-card", has_text=REASON)
    card.get_by_label("Note", exact=True).fill("Resus notes agree; appropriate.")
    card.get_by_role("button", name="Appropriate").click()
    expect(officer.get_by_text("Recorded as appropriate: Break glass by Dr Niamh O'Connor")).to_be_visible()
    expect(officer.get_by_text("Recorded by Rhian Morgan.")).to_be_visible()
    expect(officer.get_by_text(REASON)).to_have_count(0)
    pages.check(officer)

    officer.get_by_role("link", name="Audit search").click()
    expect(officer.get_by_role("heading", name="Audit search")).to_be_visible()
    pages.check(officer)
    officer.get_by_label("Username").fill("dr.oconnor")
    officer.get_by_role("button", name="Search the audit log").click()
    expect(officer.get_by_text("Opened the record in an emergency")).to_be_visible()
    pages.check(officer)
    pages.shoot(officer, "ig-audit-search", at="h2")

    officer.get_by_role("link", name="Patient choices").click()
    pages.check(officer)
    officer.get_by_label("NHS number").fill("943 476 5919")
    officer.get_by_role("button", name="Look up choices").click()
    expect(officer.get_by_role("heading", name="Choices recorded")).to_be_visible()
    pages.check(officer)
    pages.shoot(officer, "ig-patient-choices")


def test_suspending_an_organisation_locks_its_users_out_on_their_next_request(live: tuple[Ics, str],
                                                                              pages: Pages) -> None:
    ics, url = live
    nurse = pages.open()
    sign_in(pages, nurse, url, "dn.williams")
    nurse.goto(f"{url}/record/{ics.okafor}")
    pages.check(nurse)
    nurse.get_by_role("radio", name="Explicit consent").check()
    nurse.get_by_role("button", name="Open record").click()
    expect(nurse.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()
    pages.check(nurse)

    officer = pages.open()
    sign_in_to_ig(pages, officer, url)
    officer.get_by_role("link", name="Agreements").click()
    expect(officer.get_by_role("heading", name="Agreements", exact=True)).to_be_visible()
    expect(officer.locator(".nhsuk-card", has_text="Riverside Community Healthcare NHS Trust")
           .get_by_role("definition").nth(2)).to_have_text("12 Jan 2026")  # signed: a UK date, as "Runs" is
    pages.check(officer)
    pages.shoot(officer, "ig-agreements")
    officer.get_by_role("link", name="Suspend Riverside Community Healthcare NHS Trust").click()
    expect(officer.get_by_text("hides its information from every partner and stops its")).to_be_visible()
    pages.check(officer)
    officer.get_by_role("button", name="Suspend Riverside Community Healthcare NHS Trust's agreement now").click()
    expect(officer.get_by_text("Say why").first).to_be_visible()  # no reason: nothing changed yet
    pages.check(officer)
    officer.get_by_label("Reason").fill("The trust reported a data breach this morning")
    pages.shoot(officer, "ig-agreement-suspend")
    officer.get_by_role("button", name="Suspend Riverside Community Healthcare NHS Trust's agreement now").click()
    expect(officer.get_by_text("Riverside Community Healthcare NHS Trust: agreement now suspended.")).to_be_visible()
    officer.get_by_text("History of Riverside Community Healthcare NHS Trust's agreement").click()
    expect(officer.get_by_text("Reason: The trust reported a data breach this morning")).to_be_visible()
    pages.check(officer)

    nurse.reload()  # signed out, saying why
    expect(nurse.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(nurse.get_by_text("You have been signed out. Riverside Community Healthcare NHS Trust's (RYC) "
                             "information-sharing agreement is suspended")).to_be_visible()
    expect(nurse.locator(".nhsuk-error-summary")).to_contain_text("To ask about it, contact")
    expect(nurse.get_by_role("heading", name="OKAFOR, Emeka")).not_to_be_visible()
    pages.check(nurse)


def test_an_unusual_volume_leads_the_officer_to_every_record_the_user_opened(live: tuple[Ics, str],
                                                                           pages: Pages) -> None:
    """Journey 7: the receptionist's 31st record in an hour is flagged; one click shows all of them."""
    ics, url = live
    ics.open_record("admin.taylor", ics.stranger)
    ics.open_record("admin.taylor")
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    with database.session() as s:
        s.add(ReviewItem(kind="unusual-volume", username="admin.taylor", person_id=ics.okafor,
                         reason="more than 30 patients' records opened in an hour", created_at=utcnow(),
                         status="open"))
        s.commit()
    officer = pages.open()
    sign_in_to_ig(pages, officer, url)
    card = officer.locator(".nhsuk-card", has_text="Unusual volume")
    expect(card).to_contain_text("Why it was flagged")
    expect(card).to_contain_text("Last record opened")
    card.get_by_role("button", name="See every record opened by Chris Taylor that day").click()
    expect(officer.get_by_role("heading", name="Audit search")).to_be_visible()
    results = officer.locator("table")
    expect(results).to_contain_text(ics.stranger)
    expect(results).to_contain_text(ics.okafor)
    expect(results).to_contain_text("Administrative staff")
    pages.check(officer)
