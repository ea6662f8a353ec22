"""Reads under a SMART patient-level scope (`patient/*.read`): only the launch patient's record.

A token an app obtained from an EHR launch names one patient; whatever the user's role would allow, the
app reads that record and no other. Other records are refused (audited) before the decision point is
asked; the launch patient's record is still decided by it as for any read.
"""

from __future__ import annotations

from typing import Any

from sharedcare.governance.audit import AuditAction
from sharedcare.governance.gateway import AccessBasis, GovernedRecords, PatientMatch, RecordView, _Criteria
from sharedcare.governance.policy import Decision

RULE = "deny-patient-scope"


class PatientScopedRecords(GovernedRecords):
    def __init__(self, *args: Any, launch_patient: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.launch_patient = launch_patient

    def _only_launch_patient(self, action: AuditAction, person_id: str) -> None:
        if person_id != self.launch_patient:
            raise self._refuse(action, person_id, Decision(
                "deny", RULE, "this access token's patient/ scope covers only the patient the app was launched for"))

    def needs_basis(self, person_id: str) -> bool:
        self._only_launch_patient(AuditAction.RECORD_READ, person_id)
        return super().needs_basis(person_id)

    def record_basis(self, person_id: str, basis: str, reason: str) -> AccessBasis:
        self._only_launch_patient(AuditAction.BASIS_RECORD, person_id)
        return super().record_basis(person_id, basis, reason)

    def everything(self, person_id: str) -> RecordView:
        self._only_launch_patient(AuditAction.RECORD_READ, person_id)
        return super().everything(person_id)

    def _visible_match(self, person_id: str, wanted: _Criteria) -> PatientMatch | None:
        return super()._visible_match(person_id, wanted) if person_id == self.launch_patient else None
