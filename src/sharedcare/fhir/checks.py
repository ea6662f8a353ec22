"""The checks every resource from a source passes before it is stored, whatever the format it came in.

FHIR bundles and API writes, HL7 v2 messages and CSV rows (once mapped to FHIR) are refused by the same
checks in the same order, so a sender reads the same reason for the same fault; the first check that finds
problems decides, and says which OperationOutcome issue type they are.
"""

from __future__ import annotations

from typing import Any

from sharedcare.fhir.invariants import invariant_problems
from sharedcare.fhir.uk_core_rules import uk_core_problems
from sharedcare.fhir.validate import json_problems, walked_problems
from sharedcare.fhir.value_sets import value_set_problems

CODE_INVALID = "code-invalid"  # FHIR's issue type for a code outside its value set
PROCESSING = "processing"


def resource_problems(resource: dict[str, Any]) -> tuple[list[str], str]:
    """The problems found (empty when the resource may be stored) and their issue type: structure
    (fhir.resources), FHIR JSON's types and string limit (which the model does not hold to), the core
    invariants, UK Core's rules, then the required value sets (`code-invalid`)."""
    problems = (walked_problems(resource) or json_problems(resource) or invariant_problems(resource)
                or uk_core_problems(resource))
    if problems:
        return problems, PROCESSING
    return value_set_problems(resource), CODE_INVALID
