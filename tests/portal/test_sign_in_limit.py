"""A citizen's one-time codes are limited per person per hour, so a guesser cannot reset the tries on a
code at will; the refusal looks exactly like details that match no one, and is audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.portal.test_patient_portal import _logins, _start
from tests.small_ics import Ics

from sharedcare.clock import utcnow
from sharedcare.governance import workspace
from sharedcare.governance.one_time_codes import MAX_CODES_PER_HOUR

STRANGER = {"birth_day": "11", "birth_month": "6", "birth_year": "1952"}


def test_codes_are_limited_per_person_per_hour(ics: Ics, monkeypatch: pytest.MonkeyPatch) -> None:
    codes = [_start(ics.client) for _ in range(MAX_CODES_PER_HOUR)]
    assert all(code is not None for code in codes)
    limited = ics.client.post("/patient/sign-in", data={"nhs_number": "9434765919", "birth_day": "2",
                                                         "birth_month": "3", "birth_year": "1945"})
    nobody = ics.client.post("/patient/sign-in", data={"nhs_number": "9434765919", "birth_day": "3",
                                                        "birth_month": "3", "birth_year": "1945"})
    assert limited.status_code == nobody.status_code == 200
    assert 'id="demo-code"' not in limited.text and 'id="demo-code"' not in nobody.text
    assert ("deny", "anonymous", ics.okafor, "too-many-codes") in _logins(ics)
    assert _start(ics.client, nhs="9990000018", born=STRANGER) is not None  # someone else is not held up
    later = utcnow() + timedelta(hours=1, seconds=1)
    monkeypatch.setattr(workspace, "utcnow", lambda: later)
    assert _start(ics.client) is not None  # an hour on, codes are issued again
