"""Journey 1 in a real browser: a paramedic at a kitchen table finds Mr Okafor by name and date of
birth, records implied consent with a reason, and reads his medications, discharge letter, district
nursing plan and next of kin, each with its source."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from tests.small_ics import Ics


def test_paramedic_finds_mr_okafor_and_reads_his_combined_record(live: tuple[Ics, str], page: Page) -> None:
    ics, url = live
    page.goto(url + "/")
    page.get_by_label("Username").fill("para.evans")
    page.get_by_label("Password").fill("demo")
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("heading", name="Find a patient")).to_be_visible()
    page.get_by_label("Family name").fill("Okafor")
    page.get_by_label("Date of birth").fill("1945-03-02")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("1 person found")).to_be_visible()
    page.get_by_role("link", name="Open record of OKAFOR, Emeka").click()

    expect(page.get_by_role("heading", name="Why are you opening this record?")).to_be_visible()
    page.get_by_role("radio", name="Implied consent").check()
    page.get_by_label("Reason", exact=True).fill("confused, daughter not present")
    page.get_by_role("button", name="Open record").click()

    expect(page.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()
    expect(page.locator("#medications")).to_contain_text("Metformin 500mg tablets")
    expect(page.locator("#medications")).to_contain_text("Riverside Medical Centre")
    expect(page.locator("#care-plans")).to_contain_text("Visits on Tuesdays")
    expect(page.locator(".banner")).to_contain_text("Ada Okafor (Daughter)")
    page.get_by_text("Read document").first.click()
    expect(page.locator("#documents")).to_contain_text("Discharged after a fall")
    expect(page.get_by_text("Some information is not shown.")).to_be_visible()
    assert "9434765919" not in page.url and "Okafor" not in page.url
