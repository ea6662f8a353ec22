"""Reads under a SMART patient-level scope (`patient/*.read`): only the launch patient's record.

A token an app obtained from an EHR launch names one patient; whatever the user's role would allow, the
app reads that record and no other. Every read path (the record, a resource, its history, the basis
form) asks `_out_of_scope` before the decision point, so other records are refused (audited) and a
resource read of another patient answers like a missing one; the launch patient's record is still
decided by the policy as for any read.
"""

from __future__ import annotations

from typing import Any

from sharedcare.governance.gateway import GovernedRecords, PatientMatch, _Criteria
from sharedcare.governance.policy import Decision

RULE = "deny-patient-scope"


class PatientScopedRecords(GovernedRecords):
    def __init__(self, *args: Any, launch_patient: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.launch_patient = launch_patient

    def _out_of_scope(self, person_id: str) -> Decision | None:
        if person_id == self.launch_patient:
            return None
        return Decision("deny", RULE, "this access token's patient/ scope covers only the patient the app was "
                                      "launched for")

    def _visible_match(self, person_id: str, wanted: _Criteria) -> PatientMatch | None:
        return super()._visible_match(person_id, wanted) if person_id == self.launch_patient else None
