"""Journey 8 in a real browser: Mr Okafor signs in with his NHS number, date of birth and a one-time
code, sees the paramedic's look at his record, objects to the community trust after reading what that
means, and the GP's next view of his record no longer shows the trust's information."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from tests.e2e.conftest import DESKTOP, PHONE, Pages
from tests.e2e.test_clinician_journey import sign_in
from tests.fhir_bundles import entries
from tests.small_ics import Ics

COMMUNITY = "Riverside Community Healthcare NHS Trust"


def _okafor_signed_in(pages: Pages, url: str, shoot: bool = False) -> Page:
    """Mr Okafor signs in as a citizen does: NHS number and date of birth, then the one-time code."""
    patient = pages.open()
    patient.goto(url + "/patient")
    pages.check(patient)
    if shoot:
        pages.shoot(patient, "patient-sign-in")
    patient.get_by_label("Your NHS number").fill("943 476 5919")
    patient.get_by_label("Day").fill("2")
    patient.get_by_label("Month").fill("3")
    patient.get_by_label("Year").fill("1945")
    patient.get_by_role("button", name="Continue").click()
    expect(patient.get_by_role("heading", name="Enter your security code")).to_be_visible()
    pages.check(patient)
    patient.get_by_label("Security code").fill(patient.locator("#demo-code").inner_text())
    patient.get_by_role("button", name="Sign in").click()
    return patient


def test_a_patient_sees_who_looked_and_stops_one_organisation_seeing_the_record(live: tuple[Ics, str],
                                                                                pages: Pages) -> None:
    ics, url = live
    paramedic = ics.open_record("para.evans", basis="implied-consent", reason="confused, daughter not present")
    assert ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=paramedic).status_code == 200
    ics.open_record("dr.patel")

    patient = _okafor_signed_in(pages, url, shoot=True)
    expect(patient.get_by_role("heading", name="Your shared care record")).to_be_visible()
    expect(patient.get_by_role("cell", name=COMMUNITY)).to_be_visible()
    pages.check(patient)
    pages.shoot(patient, "patient-what-is-shared")
    patient.set_viewport_size(PHONE)
    pages.shoot(patient, "phone-patient-what-is-shared")
    patient.set_viewport_size(DESKTOP)

    patient.get_by_role("link", name="Your record", exact=True).click()
    expect(patient.locator("#medications")).to_contain_text("Metformin 500mg tablets")
    pages.check(patient)
    pages.shoot(patient, "patient-record", at=".nhsuk-tabs")

    patient.get_by_role("link", name="Who has looked", exact=True).click()
    row = patient.locator("tr", has_text="viewed your record")
    expect(row).to_contain_text("Carys Evans")
    expect(row).to_contain_text("Paramedic")
    expect(row).to_contain_text("North Region Ambulance Service NHS Trust")
    expect(row).to_contain_text("confused, daughter not present")
    expect(row).to_contain_text("found you in a search, recorded why they needed your record, then viewed your "
                                "record")  # one visit
    expect(patient.locator("tr", has_text="Carys Evans")).to_have_count(1)
    row.get_by_text("See each recorded event (3)").click()  # every entry still there, inside the visit
    expect(row.locator("li.sc-access")).to_have_count(3)
    pages.check(patient)
    pages.shoot(patient, "patient-who-looked")

    ics.open_record("dn.williams")  # the trust's district nurse has his record open as he decides
    nurse = pages.open()
    sign_in(pages, nurse, url, "dn.williams")
    nurse.goto(f"{url}/record/{ics.okafor}")
    expect(nurse.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()
    pages.check(nurse)

    patient.get_by_role("link", name="Your choices", exact=True).click()
    pages.check(patient)
    pages.shoot(patient, "patient-choices")
    patient.get_by_role("radio", name=COMMUNITY).check()
    patient.get_by_role("button", name="Continue to stop one organisation seeing your record").click()
    expect(patient.get_by_role("heading", name=f"Stop {COMMUNITY} seeing your record")).to_be_visible()
    expect(patient.get_by_text("This applies straight away")).to_be_visible()
    pages.check(patient)
    pages.shoot(patient, "patient-choice-explained")
    patient.get_by_role("button", name="Confirm").click()
    expect(patient.get_by_text("Your choice is saved")).to_be_visible()
    pages.check(patient)

    nurse.reload()  # review L5: said plainly, with what to do next, and no internal id
    expect(nurse.get_by_role("heading", name="This record is not available to you")).to_be_visible()
    expect(nurse.get_by_role("link", name="Search for the patient again")).to_be_visible()
    expect(nurse.locator("main")).not_to_contain_text(ics.okafor)
    pages.check(nurse)

    gp = pages.open()
    sign_in(pages, gp, url, "dr.patel")
    gp.goto(f"{url}/record/{ics.okafor}")
    expect(gp.get_by_role("heading", name="OKAFOR, Emeka")).to_be_visible()
    expect(gp.get_by_text("information from an organisation the patient has objected to")).to_be_visible()
    expect(gp.locator("main")).not_to_contain_text(COMMUNITY)
    expect(gp.locator("main")).not_to_contain_text("Visits on Tuesdays")
    pages.check(gp)


def test_a_patient_hides_mental_health_from_everyone_but_the_gp_after_reading_what_it_means(
        live: tuple[Ics, str], pages: Pages) -> None:
    ics, url = live
    hospital = ics.open_record("dr.oconnor")

    def depression_shown() -> bool:
        body = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=hospital).json()
        return any(e["resource"].get("code", {}).get("text") == "Depressive disorder"
                   or "Depressive disorder" in str(e["resource"].get("code")) for e in entries(body))

    assert depression_shown()
    patient = _okafor_signed_in(pages, url)
    expect(patient.get_by_role("heading", name="Your shared care record")).to_be_visible()
    pages.check(patient)
    patient.get_by_role("link", name="Your choices", exact=True).click()
    pages.check(patient)

    patient.get_by_label("What kind of information?").select_option(label="Mental health")
    patient.get_by_label("Hide it from").select_option(label="Everyone")
    patient.get_by_label("Except (when hiding it from everyone)").select_option(label="Riverside Medical Centre")
    patient.get_by_role("button", name="Continue to hide one kind of information").click()
    expect(patient.get_by_role("heading", name="Hide mental health from everyone; except: show it to "
                                                "Riverside Medical Centre")).to_be_visible()
    expect(patient.get_by_text("staff at Riverside Medical Centre will still see it")).to_be_visible()
    pages.check(patient)
    pages.shoot(patient, "patient-hide-explained")
    assert depression_shown()  # nothing applied before the patient confirms
    patient.get_by_role("button", name="Confirm").click()
    expect(patient.get_by_text("Your choice is saved")).to_be_visible()
    expect(patient.locator(".further-choice")).to_contain_text("Hide mental health from everyone")
    pages.check(patient)
    pages.shoot(patient, "patient-other-choices", at=".nhsuk-summary-list")
    assert not depression_shown()


def test_on_a_phone_a_patient_stops_one_organisation_sees_it_said_and_lets_it_back(live: tuple[Ics, str],
                                                                                  pages: Pages) -> None:
    """Journey 8 at a phone's size (390 by 844): the page that says who shares stops saying the organisation
    she objected to is sharing, and she undoes that one choice without losing her research opt-out."""
    ics, url = live
    patient = _okafor_signed_in(pages, url)
    patient.set_viewport_size({"width": 390, "height": 844})
    expect(patient.get_by_role("heading", name="Your shared care record")).to_be_visible()
    pages.check(patient)
    patient.get_by_role("link", name="Change your choices").click()
    pages.check(patient)
    patient.get_by_role("radio", name=COMMUNITY).check()
    patient.get_by_role("button", name="Continue to stop one organisation seeing your record").click()
    pages.check(patient)
    patient.get_by_role("button", name="Confirm").click()
    pages.check(patient)
    patient.get_by_role("button", name="Continue to opt out of planning and research").click()
    expect(patient.get_by_text("This applies straight away")).to_be_visible()
    pages.check(patient)
    patient.get_by_role("button", name="Confirm").click()
    pages.check(patient)

    patient.get_by_role("link", name="What is shared").click()
    row = patient.locator("tr", has_text=COMMUNITY)
    expect(row).to_contain_text("not shared: you stopped this organisation seeing your record")
    expect(row).not_to_contain_text("sharing under a signed agreement")
    assert patient.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
    pages.check(patient)

    patient.get_by_role("link", name="Change your choices").click()
    pages.check(patient)
    patient.get_by_role("button", name=f"Let it see your record again ({COMMUNITY})").click()
    expect(patient.get_by_role("heading", name=f"Let {COMMUNITY} see your record again")).to_be_visible()
    pages.check(patient)
    patient.get_by_role("button", name="Confirm").click()
    expect(patient.get_by_text("Your choice is saved")).to_be_visible()
    expect(patient.get_by_role("button", name="Opt back in to planning and research")).to_be_visible()
    pages.check(patient)
    patient.get_by_role("link", name="What is shared").click()
    expect(patient.locator("tr", has_text=COMMUNITY)).to_contain_text("sharing under a signed agreement")
    pages.check(patient)
