"""Structural validation of FHIR R4 resources with the `fhir.resources` models.

fhir.resources 8 ships R5 by default plus R4B; R4B is the nearest to R4 and identical for the resource
types the record keeps, so it is what we validate against. Problems come back located, as
`entry[3] Condition.code.coding[0].code: Input should be a valid string`.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_problems(resource: dict[str, Any]) -> list[str]:
    """Return every structural problem in the resource (empty when it is valid FHIR)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return ["resourceType: missing"]
    try:
        model = get_fhir_model_class(resource_type)
    except ValueError:
        return [f"resourceType: '{resource_type}' is not a FHIR R4 resource type"]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [f"{resource_type}.{_path(tuple(err['loc']))}: {err['msg']}" for err in exc.errors()]
    return []
