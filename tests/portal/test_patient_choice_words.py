"""What the citizen's home and choices pages say of their choices and of each organisation's sharing: worked out
from what the decision point does with them, never from the choice's name alone (patient portal review,
2026-12-07: after "Stop sharing your record, except in an emergency" every organisation still read "sharing under a
signed agreement" and research "Pseudonymised data may be used", which the extract did not do)."""

from __future__ import annotations

import datetime as dt
import html
import re

from tests.portal.test_patient_portal import _sign_in, _withdraw_forms
from tests.small_ics import Ics

from sharedcare.governance.framework import Framework

COMMUNITY = "Riverside Community Healthcare NHS Trust"


def _text(page: str) -> str:
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", page).split()))


def _row(text: str, organisation: str) -> str:
    """The home page's line of one organisation: its name to the next phone number."""
    start = text.index(organisation)
    return text[start:start + 160]


def test_stop_sharing_except_in_an_emergency_reads_as_what_it_does(ics: Ics) -> None:
    _sign_in(ics.client)
    assert ics.client.post("/patient/choices", data={"change": "object-all-except-emergency"},
                           follow_redirects=False).status_code == 303
    home = _text(ics.client.get("/patient/home").text)
    assert "shared only in an emergency, as you asked" in _row(home, COMMUNITY)
    assert "sharing under a signed agreement" not in home
    assert "Sharing with other organisations Shared only in an emergency, as you asked" in home
    assert "Planning and research Not used: your choices keep it back from planning and research" in home
    choices = _text(ics.client.get("/patient/choices").text)
    assert "Sharing with other organisations Shared only in an emergency, as you asked" in choices
    assert "Not opted out" not in choices and "Pseudonymised data may be used" not in choices


def test_an_objection_to_all_sharing_says_the_record_is_not_used_for_research(ics: Ics) -> None:
    _sign_in(ics.client)
    ics.client.post("/patient/choices", data={"change": "object-all"})
    home = _text(ics.client.get("/patient/home").text)
    assert "Planning and research Not used: you asked for your record not to be shared" in home
    assert "Pseudonymised data may be used" not in _text(ics.client.get("/patient/choices").text)


def test_hiding_one_kind_of_information_still_reads_as_shared_with_that_kept_back(ics: Ics) -> None:
    _sign_in(ics.client)
    ics.client.post("/patient/choices/hide", data={"category": "mental_health", "hide_from": "everyone"})
    home = _text(ics.client.get("/patient/home").text)
    assert "Shared under the rules below, except what your other choices keep back" in home
    assert "sharing under a signed agreement" in _row(home, COMMUNITY)
    assert "Planning and research Pseudonymised data may be used" in home


def test_an_agreement_past_its_end_date_is_not_called_sharing(ics: Ics, framework: Framework) -> None:
    """Its status still reads "signed" in the framework, but the decision point withholds its data."""
    org = framework.organisations["RYC"]
    ended = org.agreement.model_copy(update={"ends": dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)})
    fw = framework.model_copy(update={"organisations": {**framework.organisations,
                                                        "RYC": org.model_copy(update={"agreement": ended})}})
    client = ics.restarted(fw)
    _sign_in(client)
    row = _row(_text(client.get("/patient/home").text), COMMUNITY)
    assert "no longer sharing (agreement ended" in row and "sharing under a signed agreement" not in row


def test_an_error_about_no_one_field_is_linked_to_the_choices_not_the_hide_form(ics: Ics) -> None:
    _sign_in(ics.client)
    for category in ("mental_health", "sexual_health"):
        ics.client.post("/patient/choices/hide", data={"category": category, "hide_from": "everyone"})
    stale = _withdraw_forms(ics.client.get("/patient/choices").text)
    ics.client.post("/patient/choices/withdraw", data=_withdraw_forms(ics.client.get("/patient/choices").text)[0])
    refused = ics.client.post("/patient/choices/withdraw", data=stale[1])
    assert refused.status_code == 409 and "already changed" in refused.text
    assert 'href="#your-choices"' in refused.text and 'id="your-choices"' in refused.text
    assert 'href="#category"' not in refused.text and "nhsuk-form-group--error" not in refused.text
