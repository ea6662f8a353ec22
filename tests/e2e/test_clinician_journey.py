"""Journeys 1 and 2 in a real browser: a paramedic finds Mr Okafor by name and date of birth, records
implied consent with a reason, reads every tab of his combined record and says it helped; and a GP
walks the same journey with the keyboard alone."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect
from tests.e2e.conftest import Pages
from tests.results_feed import ingest_results
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework

TABS = ["Summary", "Encounters", "Results", "Care team", "Care plans", "Documents", "Social care"]


def sign_in(pages: Pages, page: Page, url: str, username: str) -> None:
    page.goto(url + "/")
    pages.check(page)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill("demo")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Find a patient")).to_be_visible()
    pages.check(page)


def test_paramedic_finds_mr_okafor_and_reads_every_tab_of_his_record(live: tuple[Ics, str], pages: Pages,
                                                                      framework: Framework, tmp_path: Path) -> None:
    ics, url = live
    ingest_results(ics.client.app.state.database, framework, tmp_path)  # type: ignore[attr-defined]
    page = pages.open()
    sign_in(pages, page, url, "para.evans")

    page.get_by_label("Family name").fill("Okafor")
    page.get_by_label("Day").fill("2")
    page.get_by_label("Month").fill("3")
    page.get_by_label("Year").fill("1945")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("1 person found")).to_be_visible()
    pages.check(page)
    page.get_by_role("link", name="Open record of OKAFOR, Emeka").click()

    expect(page.get_by_role("heading", name="Why are you opening this record?")).to_be_visible()
    pages.check(page)
    page.get_by_role("radio", name="Implied consent").check()
    page.get_by_label("Reason", exact=True).fill("confused, daughter not present")
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
            expect(panel).to_contain_text("District nurse visit, every week on Tuesday")  # tier 2: coded
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


def test_the_record_reads_without_javascript_and_on_a_phone(live: tuple[Ics, str], pages: Pages) -> None:
    """No script: every tab's panel is on the page, one after another, under a list of links to them."""
    ics, url = live
    ics.open_record("dn.williams")
    page = pages.open(scripts=False)
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(pages, page, url, "dn.williams")
    page.goto(f"{url}/record/{ics.okafor}")
    assert page.evaluate("() => !document.body.classList.contains('js-enabled')")
    for title in TABS:
        expect(page.locator(f"#{title.lower().replace(' ', '-')}")).to_be_visible()
    expect(page.locator("#care-plans")).to_contain_text("Visits on Tuesdays")
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
    pages.check(page)
