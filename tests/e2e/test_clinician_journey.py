"""Journeys 1, 2 and 6 in a real browser: a paramedic finds Mr Okafor by name and date of birth, records
implied consent with a reason, reads every tab of his combined record and says it helped; a GP walks
the same journey with the keyboard alone; after his hospital stay the GP sees what changed and a
pharmacist reconciles his medicines. The journeys photograph each page for docs/screenshots."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import update
from tests.allergy_feed import ingest_allergies
from tests.discharge_feed import ingest_discharge
from tests.e2e.conftest import PHONE, Pages
from tests.portal.test_session_renewal import Clock
from tests.results_feed import ingest_results
from tests.small_ics import OKAFOR_NHS, Ics
from tests.social_care_feed import ingest_social_care
from tests.stay_feeds import ingest_stay

from sharedcare.governance.framework import Framework
from sharedcare.store.models import AccessBasis

TABS = ["Summary", "Care team", "Care plans", "Documents", "Encounters", "Results", "Social care"]


def sign_in(pages: Pages, page: Page, url: str, username: str, shot: str | None = None) -> None:
    page.goto(url + "/")
    pages.check(page)
    if shot:
        pages.shoot(page, shot)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill("demo")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Find a patient")).to_be_visible()
    pages.check(page)


def search_okafor(pages: Pages, page: Page, by_name: bool = False) -> None:
    """Search "Find a patient" for Mr Okafor, by NHS number or by name and date of birth: he alone is found."""
    if by_name:
        page.get_by_label("Family name").fill("Okafor")
        page.get_by_label("Day").fill("2")
        page.get_by_label("Month").fill("3")
        page.get_by_label("Year").fill("1945")
    else:
        page.get_by_label("NHS number").fill("943 476 5919")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("1 person found")).to_be_visible()
    pages.check(page)


def find_okafor(pages: Pages, page: Page, url: str, username: str) -> None:
    """Sign in, find Mr Okafor by NHS number and open his record as far as the form asking why."""
    sign_in(pages, page, url, username)
    search_okafor(pages, page)
    page.get_by_role("link", name="Open record of OKAFOR, Emeka").click()
    expect(page.get_by_role("heading", name="Why are you opening this record?")).to_be_visible()
    pages.check(page)


def open_okafor(pages: Pages, page: Page, url: str, username: str) -> None:
    """Sign in, find Mr Okafor by NHS number and open his record on his explicit consent."""
    find_okafor(pages, page, url, username)
    page.get_by_role("radio", name="Explicit consent").check()
    page.get_by_role("button", name="Open record").click()
    expect(page.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()


def test_paramedic_finds_mr_okafor_and_reads_every_tab_of_his_record(live: tuple[Ics, str], pages: Pages,
                                                                      framework: Framework, tmp_path: Path) -> None:
    ics, url = live
    ingest_results(ics.client.app.state.database, framework, tmp_path)  # type: ignore[attr-defined]
    ingest_discharge(ics.client.app.state.database, framework, tmp_path)  # type: ignore[attr-defined]
    page = pages.open()
    sign_in(pages, page, url, "para.evans", shot="clinician-sign-in")

    search_okafor(pages, page, by_name=True)
    pages.shoot(page, "clinician-find-patient")
    page.get_by_role("link", name="Open record of OKAFOR, Emeka").click()

    expect(page.get_by_role("heading", name="Why are you opening this record?")).to_be_visible()
    # whose record: the person the paramedic chose, before she says why she is opening it
    expect(page.get_by_role("heading", name="Why are you opening this record?")).to_contain_text("OKAFOR, Emeka")
    expect(page.locator("#patient-identity")).to_contain_text("943 476 5919")
    pages.check(page)
    page.get_by_role("radio", name="Implied consent").check()
    page.get_by_label("Reason", exact=True).fill("confused, daughter not present")
    pages.shoot(page, "clinician-basis", at="#patient-identity")
    page.get_by_role("button", name="Open record").click()

    expect(page.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()
    expect(page.locator(".sc-banner")).to_contain_text("Ada Okafor (Daughter)")
    expect(page.get_by_text("Some information is not shown.")).to_be_visible()
    pages.check(page)
    for title in TABS:
        page.get_by_role("link", name=re.compile(f"^{title}")).click()
        panel = page.locator(f"#{title.lower().replace(' ', '-')}")
        expect(panel).to_be_visible()
        expect(page.locator(".nhsuk-tabs__panel:visible")).to_have_count(1)  # one tab at a time
        pages.check(page)
        if title != "Social care":  # the paramedic sees social care only as 'a service is involved': the GP's below
            pages.shoot(page, f"clinician-{title.lower().replace(' ', '-')}", at=".sc-banner" if title == "Summary"
                        else ".nhsuk-tabs")
        if title == "Summary":
            expect(page.locator("#medications")).to_contain_text("Metformin 500mg tablets")
            expect(page.locator("#medications")).to_contain_text("Riverside Medical Centre")
        elif title == "Results":
            for chart in ("HbA1c trend", "eGFR trend", "Blood pressure trend"):
                expect(panel.get_by_role("img", name=chart)).to_be_visible()
            expect(panel).to_contain_text("Riverside University Hospitals NHS Trust")
        elif title == "Care team":
            expect(panel).to_contain_text("holds mental health information")
            expect(panel).to_contain_text("01632 960300")
        elif title == "Care plans":
            expect(panel).to_contain_text("Home visit, every week on Tuesday")  # tier 2: the visit's code
        elif title == "Documents":
            panel.get_by_text("Read document").click()
            expect(panel).to_contain_text("Discharged after a fall")
    assert page.url.endswith("#social-care")

    page.get_by_role("button", name="Yes, it helped").click()
    expect(page.get_by_text("Thank you for your feedback")).to_be_visible()
    pages.check(page)
    assert OKAFOR_NHS not in page.url


def tab_to(page: Page, selector: str, limit: int = 80) -> None:
    """Press Tab until the element matching `selector` has the focus."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


def test_a_gp_walks_the_journey_with_the_keyboard_alone(live: tuple[Ics, str], pages: Pages) -> None:
    """Tab, Enter and Space only (and typing into the fields): no mouse, no arrow keys."""
    ics, url = live
    page = pages.open()
    page.goto(url + "/")
    pages.check(page)
    tab_to(page, "#username")
    page.keyboard.type("dr.patel")
    tab_to(page, "#password")
    page.keyboard.type("demo")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Find a patient")).to_be_visible()
    pages.check(page)

    tab_to(page, "#nhs_number")
    page.keyboard.type("943 476 5919")
    page.keyboard.press("Enter")
    expect(page.get_by_text("1 person found")).to_be_visible()
    pages.check(page)
    tab_to(page, "a[href^='/record/']")
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", name="Why are you opening this record?")).to_be_visible()
    pages.check(page)
    tab_to(page, "#basis-explicit-consent")
    page.keyboard.press("Space")
    expect(page.get_by_role("radio", name="Explicit consent")).to_be_checked()
    tab_to(page, "button[type=submit]")
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()
    pages.check(page)
    tab_to(page, ".nhsuk-tabs__tab[href='#documents']")
    page.keyboard.press("Enter")
    expect(page.locator("#documents")).to_be_visible()
    expect(page.locator("#summary")).to_be_hidden()
    tab_to(page, "#documents summary")
    page.keyboard.press("Space")
    expect(page.locator("#documents")).to_contain_text("Discharged after a fall")
    pages.check(page)

    tab_to(page, "button[value=yes]")
    page.keyboard.press("Enter")
    expect(page.get_by_text("Thank you for your feedback")).to_be_visible()
    pages.check(page)


def test_a_gp_sees_what_changed_in_hospital_with_the_keyboard_and_a_pharmacist_reconciles_the_medicines(
        live: tuple[Ics, str], pages: Pages, framework: Framework, tmp_path: Path) -> None:
    """Journeys 2 and 6: the GP reaches 'what changed' and picks another date with the keyboard alone; the
    pharmacist opens the medicines table straight from its address, through the basis form."""
    ics, url = live
    db = ics.client.app.state.database  # type: ignore[attr-defined]
    ingest_results(db, framework, tmp_path)
    ingest_discharge(db, framework, tmp_path)
    ingest_social_care(db, framework, tmp_path)
    gp = pages.open()
    open_okafor(pages, gp, url, "dr.patel")
    pages.check(gp)
    gp.get_by_role("link", name=re.compile("^Social care")).click()
    # social care is tier 2 (coded) for a GP: the council's assessment types are its system's own list (its
    # mapping's `local`), coded, so the GP reads which assessment it was; what the social worker wrote is not shown
    social = gp.locator("#social-care")
    expect(social).to_contain_text("Care Act Assessment")
    expect(social).to_contain_text("Carer's Assessment")
    expect(social).not_to_contain_text("typed rather than coded")
    expect(social).not_to_contain_text("Home care package agreed")
    pages.check(gp)
    pages.shoot(gp, "clinician-social-care", at=".nhsuk-tabs")

    tab_to(gp, "a[href$='/changes']")
    gp.keyboard.press("Enter")
    expect(gp.get_by_role("heading", name="What changed since 1 Sep 2026")).to_be_visible()
    hospital = gp.locator("section", has_text="Riverside University Hospitals NHS Trust")
    medicines = hospital.locator("table").first
    expect(medicines.locator("tr", has_text="Metformin")).to_contain_text("Stopped")
    expect(medicines.locator("tr", has_text="Metformin")).to_contain_text("One tablet daily: taking")  # the GP's own
    expect(medicines.locator("tr", has_text="Gliclazide")).to_contain_text("Not on your list")
    expect(hospital).to_contain_text("58 mmol/mol on 14 May 2026")
    expect(hospital).to_contain_text("Please check U&E in 2 weeks")
    pages.check(gp)
    pages.shoot(gp, "clinician-what-changed", at="#org-RXR")
    tab_to(gp, "details:has(#since-day) summary")
    gp.keyboard.press("Space")
    tab_to(gp, "#since-day")
    gp.keyboard.type("19")
    tab_to(gp, "#since-month")
    gp.keyboard.type("10")
    tab_to(gp, "#since-year")
    gp.keyboard.type("2026")
    gp.keyboard.press("Enter")
    expect(gp.get_by_role("heading", name="What changed since 19 Oct 2026")).to_be_visible()
    expect(gp.locator("main")).not_to_contain_text("Admission to ward 7")
    pages.check(gp)
    tab_to(gp, "a[href$='/medicines']")
    gp.keyboard.press("Enter")
    expect(gp.get_by_role("heading", name="Medicines from every source")).to_be_visible()
    pages.check(gp)

    pharmacist = pages.open()
    sign_in(pages, pharmacist, url, "pharm.khan")
    pharmacist.goto(f"{url}/record/{ics.okafor}/medicines")
    expect(pharmacist.get_by_role("heading", name="Why are you opening this record?")).to_be_visible()
    pages.check(pharmacist)
    pharmacist.get_by_role("radio", name="Explicit consent").check()
    pharmacist.get_by_role("button", name="Open record").click()
    expect(pharmacist.get_by_role("heading", name="Medicines from every source")).to_be_visible()
    expect(pharmacist.get_by_text("3 need checking")).to_be_visible()
    metformin = pharmacist.locator("tbody", has_text="Metformin")
    expect(metformin).to_contain_text("Discrepancy")
    expect(metformin).to_contain_text("but still current at Riverside Medical Centre")
    expect(pharmacist.locator("tbody", has_text="Atorvastatin")).not_to_contain_text("Discrepancy")
    pages.check(pharmacist)
    pages.shoot(pharmacist, "clinician-medicines", at="h2:has-text('Medicines from every source')")
    pharmacist.set_viewport_size(PHONE)
    pages.shoot(pharmacist, "phone-clinician-medicines", at="h2:has-text('Medicines from every source')")


def test_the_record_reads_without_javascript_and_on_a_phone(live: tuple[Ics, str], pages: Pages,
                                                           framework: Framework, tmp_path: Path) -> None:
    """No script: every tab's panel is on the page, one after another, under a list of links to them. The
    allergies say how dangerous each is, the high-risk one first, within the phone's width."""
    ics, url = live
    ingest_allergies(ics.client.app.state.database, framework, tmp_path)  # type: ignore[attr-defined]
    ics.open_record("dn.williams")
    page = pages.open(scripts=False)
    page.set_viewport_size(PHONE)
    sign_in(pages, page, url, "dn.williams")
    page.goto(f"{url}/record/{ics.okafor}")
    assert page.evaluate("() => !document.body.classList.contains('js-enabled')")
    for title in TABS:
        expect(page.locator(f"#{title.lower().replace(' ', '-')}")).to_be_visible()
    expect(page.locator("#care-plans")).to_contain_text("Visits on Tuesdays")
    allergies = page.locator("#allergies tbody tr")
    expect(allergies.first).to_contain_text("Allergy to penicillin High risk")
    expect(allergies.first).to_contain_text("Anaphylaxis (severe)")
    expect(allergies.filter(has_text="Codeine")).to_contain_text("Intolerance")
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
    pages.check(page)
    pages.shoot(page, "phone-clinician-record")


def test_a_hospital_stay_sent_by_the_pas_and_the_epr_is_one_stay_on_the_timeline(
        live: tuple[Ics, str], pages: Pages, framework: Framework, tmp_path: Path) -> None:
    """The hospital's PAS and EPR both tell of his November stay: the A&E doctor's timeline shows it once,
    saying both systems sent it, with the dates as she reads them."""
    ics, url = live
    ingest_stay(ics.client.app.state.database, framework, tmp_path)  # type: ignore[attr-defined]
    page = pages.open()
    open_okafor(pages, page, url, "dr.oconnor")
    page.get_by_role("link", name=re.compile("^Encounters")).click()
    stays = page.locator("#encounters .sc-timeline__item")
    expect(stays).to_have_count(1)
    expect(stays.first).to_contain_text("2 Nov 2026")
    expect(stays.first).to_contain_text("Ward 3 (Respiratory) (inpatient encounter, until 7 Nov 2026)")
    expect(stays.first).to_contain_text("sent by EPR and PAS, shown once")
    pages.check(page)


def test_back_to_a_record_whose_basis_has_ended_asks_the_server_again(live: tuple[Ics, str], pages: Pages) -> None:
    """Chrome's back/forward cache keeps a page served no-store while no cookie changes: Back restored Mr
    Okafor's whole record after the clinician's basis had ended, without asking the server (nothing
    audited). A page restored from that cache now loads afresh, so the server decides again."""
    ics, url = live
    page = pages.open()
    open_okafor(pages, page, url, "dr.oconnor")
    expect(page.get_by_text("Metformin 500mg tablets").first).to_be_visible()
    pages.check(page)
    page.get_by_role("link", name="Find another patient").click()
    expect(page.get_by_role("heading", name="Find a patient")).to_be_visible()
    pages.check(page)
    with ics.database.session() as s:  # the basis's 8 hours are over
        s.execute(update(AccessBasis).values(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
        s.commit()
    page.go_back(wait_until="commit")  # a page restored from the cache fires no load event
    expect(page.get_by_text("Why are you opening this record?")).to_be_visible()
    expect(page.get_by_text("Metformin 500mg tablets")).to_have_count(0)
    pages.check(page)


def test_back_from_a_record_to_the_search_results_shows_them_without_sending_the_form_again(
        live: tuple[Ics, str], pages: Pages) -> None:
    """Searches are POSTed (no NHS number, name or date of birth in a URL), and the results were the POST's
    answer: Back from the record opened from them showed Chrome's "Confirm Form Resubmission"
    (ERR_CACHE_MISS). Now the POST leads to a results page of its own, which Back shows again, searched
    afresh (audited as a search each time it is shown)."""
    ics, url = live
    page = pages.open()
    sign_in(pages, page, url, "dr.oconnor")
    search_okafor(pages, page, by_name=True)
    results = page.url
    page.get_by_role("link", name="Open record of OKAFOR, Emeka").click()
    pages.check(page)
    page.get_by_role("radio", name="Explicit consent").check()
    page.get_by_role("button", name="Open record").click()
    expect(page.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()
    pages.check(page)
    page.go_back(wait_until="commit")  # the basis form's address, which shows the record now
    expect(page.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()
    pages.check(page)
    page.go_back(wait_until="commit")
    expect(page.get_by_text("1 person found")).to_be_visible()
    expect(page.get_by_role("link", name="Open record of OKAFOR, Emeka")).to_be_visible()
    assert page.url == results and "/search/results/" in results
    pages.check(page)
    page.get_by_role("link", name="Open record of OKAFOR, Emeka").click()  # and on to the record again
    expect(page.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()
    pages.check(page)


def test_a_clinician_typing_a_long_reason_stays_signed_in_and_keeps_it(
        live: tuple[Ics, str], pages: Pages, monkeypatch: pytest.MonkeyPatch) -> None:
    """Typing renews no session: two minutes before its idle end the page says so, "Stay signed in" renews it
    without leaving the page, and the reason she typed is still there and is sent (not lost to the sign-in
    page). The server's clock and the page's are moved on together."""
    ics, url = live
    clock = Clock(monkeypatch)
    page = pages.open()
    page.clock.install()
    find_okafor(pages, page, url, "para.evans")
    said = page.locator("#session-ends").inner_text()
    page.get_by_role("radio", name="Emergency (break glass)").check()
    reason = page.get_by_label("Reason", exact=True)
    reason.fill("Unconscious in ED, brought in by ambulance; need medicines and allergies before sedation")

    clock.at(28)
    page.clock.run_for("28:10")
    notice = page.get_by_role("alertdialog", name="Your session will end in 2 minutes")
    expect(notice).to_be_visible()
    stay = notice.get_by_role("button", name="Stay signed in")
    expect(stay).to_be_focused()  # the keyboard is on it
    pages.check(page)
    page.keyboard.press("Enter")
    expect(notice).to_be_hidden()
    expect(page.locator("#session-ends")).not_to_have_text(said)  # the later end the server set
    expect(page.locator("#session-ends")).to_contain_text("at the latest")
    expect(reason).to_be_focused()  # back where she was typing, what she typed kept
    expect(reason).to_have_value(re.compile("^Unconscious in ED"))

    clock.at(45)  # past the end the page first said: the session was renewed
    page.clock.run_for("16:50")
    page.get_by_role("button", name="Open record").click()
    expect(page.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()
    pages.check(page)


def test_at_the_cap_the_notice_says_to_sign_in_again_with_nothing_to_renew(
        live: tuple[Ics, str], pages: Pages, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose idle end is its cap (here an idle window as long as the shift): the notice says she
    will need to sign in again, and offers no Stay signed in, which could not keep it going."""
    ics, url = live
    app = ics.client.app
    settings = app.state.settings  # type: ignore[attr-defined]
    monkeypatch.setattr(app.state, "settings", replace(settings, session_idle_minutes=settings.session_hours * 60))  # type: ignore[attr-defined]
    page = pages.open()
    page.clock.install()
    sign_in(pages, page, url, "para.evans")
    expect(page.locator("#session-ends")).to_contain_text("sign in again then")
    page.clock.run_for((settings.session_hours * 3600 - 110) * 1000)  # 1 minute 50 before the cap
    notice = page.get_by_role("alertdialog", name="Your session will end in 2 minutes")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("you will need to sign in again")
    expect(notice).to_be_focused()
    expect(notice.get_by_role("button", name="Stay signed in")).to_have_count(0)
    pages.check(page)
    page.keyboard.press("Escape")
    expect(notice).to_be_hidden()
