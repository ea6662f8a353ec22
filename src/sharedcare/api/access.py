"""Point-of-care access basis: `POST /api/access/{patient_id}` before a record opens."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from sharedcare.api.deps import RecordsDep
from sharedcare.api.outcomes import ERROR_RESPONSES

router = APIRouter(prefix="/api", responses=ERROR_RESPONSES)


class BasisIn(BaseModel):
    basis: Literal["explicit-consent", "implied-consent", "emergency"]
    reason: str = Field(default="", max_length=2000)


class BasisOut(BaseModel):
    patient_id: str
    basis: str
    expires_at: str
    review: bool
    message: str


@router.post("/access/{patient_id}", status_code=201, response_model=BasisOut)
def record_access(patient_id: str, body: BasisIn, records: RecordsDep) -> BasisOut:
    row = records.record_basis(patient_id, body.basis, body.reason)
    rule = records.fw.basis[body.basis]
    message = ("Your access is being recorded and will be reviewed by the information governance team."
               if rule.review else "Access recorded.")
    return BasisOut(patient_id=patient_id, basis=row.basis, expires_at=row.expires_at.isoformat(),
                    review=rule.review, message=message)
