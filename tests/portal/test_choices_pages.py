"""The choices pages as a patient and an IG officer see them when an NHS number is not one person's alone
(review of 2026-12-07): a number two persons' records carry signs no one in, on the same page as details
that match no one (F1); a patient whose number reached another record is told to contact their GP practice,
and nothing changes (F1); the IG officer's look-up says which of the person's numbers each choice is held
against (F4)."""

from __future__ import annotations

import html
import re
from pathlib import Path

from tests.portal.test_ig_workspace import _sign_in as _ig_sign_in
from tests.portal.test_patient_portal import BORN, _start
from tests.portal.test_patient_portal import _sign_in as _patient_sign_in
from tests.small_ics import OKAFOR_NHS, OKAFOR_SECOND_NHS, Ics, his_number_on_another_record, okafor_second_number

from sharedcare.governance.consent import set_choice
from sharedcare.governance.framework import Framework
from sharedcare.store.database import Database
from sharedcare.store.models import Preference

NO_ONE = "9990000026"  # a valid NHS number no record carries


def _fw(ics: Ics) -> Framework:
    framework: Framework = ics.client.app.state.framework  # type: ignore[attr-defined]
    return framework


def _words(page: str) -> str:
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", page).split()))


def _code_page(ics: Ics, nhs: str, born: dict[str, str]) -> str:
    page = ics.client.post("/patient/sign-in", data={"nhs_number": nhs, **born})
    assert page.status_code == 200
    return re.sub(r'name="csrf_token" value="[^"]*"', "", page.text)


def test_signing_in_with_a_number_two_peoples_records_carry_looks_like_details_that_match_no_one(
        ics: Ics, db: Database, tmp_path: Path) -> None:
    """Mr Okafor's number with the baby's date of birth signed the holder in as the baby's person, with his
    choices (F1). Now no code is sent for it, nor for his own date of birth while the two are kept apart, and
    the page is the one details matching no one get, which says to contact the GP practice."""
    his_number_on_another_record(db, _fw(ics), tmp_path)
    baby = {"birth_day": "30", "birth_month": "11", "birth_year": "2026"}
    assert _start(ics.client, OKAFOR_NHS, baby) is None and _start(ics.client, OKAFOR_NHS, BORN) is None
    no_match = _code_page(ics, NO_ONE, BORN)
    assert _code_page(ics, OKAFOR_NHS, baby) == no_match == _code_page(ics, OKAFOR_NHS, BORN)
    assert "please contact your GP practice" in _words(no_match)


def test_a_patient_whose_number_reached_another_record_is_told_to_contact_their_gp_practice(
        ics: Ics, db: Database, tmp_path: Path) -> None:
    """Signed in with the mental health trust's number for him before a baby's record arrived carrying his
    GP's: his home and choices pages say some choices may be held that they cannot show (his objection, held
    against that number, still applies), and a change is held against his own number alone. (A session signed
    in with the GP's number ends: that number now leads to no one person, test_citizen_session_identity; and
    one with no number of its own, whose change would be refused in words, can no longer be signed in.)"""
    okafor_second_number(db)
    code = _start(ics.client, OKAFOR_SECOND_NHS)
    assert code is not None and ics.client.post("/patient/code", data={"code": code}).status_code == 200
    his_number_on_another_record(db, _fw(ics), tmp_path)
    home = ics.client.get("/patient/home")
    assert home.status_code == 200 and 'id="choices-elsewhere"' in home.text
    page = ics.client.get("/patient/choices")
    assert page.status_code == 200 and 'id="choices-elsewhere"' in page.text
    assert "Please contact your GP practice to check them" in _words(page.text)
    changed = ics.client.post("/patient/choices", data={"change": "object-all"}, follow_redirects=False)
    assert changed.status_code == 303
    with db.session() as s:
        assert s.get(Preference, OKAFOR_NHS) is None
        held = s.get(Preference, OKAFOR_SECOND_NHS)
        assert held is not None and held.object_all


def test_a_patient_with_one_number_of_their_own_is_not_told_of_choices_held_elsewhere(ics: Ics) -> None:
    _patient_sign_in(ics.client)
    assert 'id="choices-elsewhere"' not in ics.client.get("/patient/choices").text
    assert 'id="choices-elsewhere"' not in ics.client.get("/patient/home").text


def test_the_ig_choices_page_says_which_of_the_patients_nhs_numbers_each_choice_is_held_against(
        ics: Ics, db: Database) -> None:
    """An objection held against the mental health trust's number applies to every read of Mr Okafor's
    record, yet the look-up by his GP's number said "Objects to all sharing: No" (F4)."""
    okafor_second_number(db)
    with db.session() as s:
        set_choice(s, OKAFOR_SECOND_NHS, by="cli", object_all=True)
        set_choice(s, OKAFOR_NHS, by="cli", object_org="NHR")
        s.commit()
    _ig_sign_in(ics)
    said = _words(ics.client.post("/ig/choices", data={"nhs_number": OKAFOR_NHS}).text)
    ending = OKAFOR_SECOND_NHS[-4:]
    assert f"Objects to all sharing Yes Yes (held against their other NHS number ending {ending})" in said
    assert "St Brigid's Hospice (held against the number you entered)" in said
    assert OKAFOR_SECOND_NHS not in said  # the other number by its last four digits, as the audit keeps it
