"""Where a resource is in its life as its source sees it: withdrawn (entered in error) or current.

FHIR marks a withdrawal in two ways: `status = entered-in-error` on most resources, and
`verificationStatus = entered-in-error` on Condition and AllergyIntolerance (whose `clinicalStatus`
says something else). A withdrawn resource is kept, with its history, but no longer shown as part of
the record.
"""

from __future__ import annotations

from collections.abc import Mapping

ENTERED_IN_ERROR = "entered-in-error"


def entered_in_error(resource: Mapping[str, object]) -> bool:
    """Whether the source withdrew this resource as recorded in error."""
    if resource.get("status") == ENTERED_IN_ERROR:
        return True
    verification = resource.get("verificationStatus")
    codings = verification.get("coding") if isinstance(verification, dict) else None
    return isinstance(codings, list) and any(isinstance(c, dict) and c.get("code") == ENTERED_IN_ERROR
                                             for c in codings)
