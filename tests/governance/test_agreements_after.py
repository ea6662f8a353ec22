"""The agreements a read decides under, worked out from the changes it has just read (`agreements_after`)."""

from __future__ import annotations

from datetime import UTC, datetime

from sharedcare.governance.agreements import agreements_after
from sharedcare.governance.consent import NO_CHOICES, Choices, combined_choices
from sharedcare.governance.framework import Framework

SUSPENDED = ("RXR", "suspended", False, datetime(2026, 12, 7, 9, 0, tzinfo=UTC))
SIGNED_AGAIN = ("RXR", "signed", False, datetime(2026, 12, 7, 10, 0, tzinfo=UTC))


def test_the_same_changes_give_the_answer_kept_and_a_new_change_applies_at_once(framework: Framework) -> None:
    """Every governed read works the agreements out from the changes it read; the same changes give the answer
    kept from the read before, as a copy of its own, and a change read since is applied on the next read."""
    suspended = agreements_after(framework, [SUSPENDED])
    assert suspended["RXR"].status == "suspended"
    again = agreements_after(framework, [SUSPENDED])
    assert again == suspended and again["RXR"] is suspended["RXR"]  # kept (made again, a new copy each read)
    again["RXR"] = framework.organisations["RXR"].agreement  # a reader changing its copy changes no one else's
    assert agreements_after(framework, [SUSPENDED])["RXR"].status == "suspended"
    assert agreements_after(framework, [SUSPENDED, SIGNED_AGAIN])["RXR"].status == "signed"
    assert agreements_after(framework, [SUSPENDED])["RXR"].status == "suspended"
    assert agreements_after(framework, [])["RXR"].status == "signed"
    stopped_in_file = framework.model_copy(update={"organisations": {
        **framework.organisations, "RXR": framework.organisations["RXR"].model_copy(update={
            "agreement": framework.organisations["RXR"].agreement.model_copy(update={"status": "suspended"})})}})
    # another framework's organisations, or the other reading of the file: worked out again
    assert agreements_after(stopped_in_file, [SIGNED_AGAIN])["RXR"].status == "suspended"  # a new stop in the file
    assert agreements_after(stopped_in_file, [SIGNED_AGAIN], new_file_stops=False)["RXR"].status == "signed"
    assert agreements_after(stopped_in_file, [SIGNED_AGAIN])["RXR"].status == "suspended"
    assert agreements_after(framework, [])["RXR"].status == "signed"


def test_a_person_with_no_choices_held_has_the_one_empty_choices() -> None:
    assert combined_choices([]) is NO_CHOICES == Choices()
    assert combined_choices([(True, [], False, None)]).object_all
