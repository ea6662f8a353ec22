"""The one check both formats' walk tests make: staging with the walk and with the model alone gives the
same outcome, and the walk vouched for no resource the model refuses."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar
from unittest.mock import patch

from sharedcare.fhir import checks
from sharedcare.fhir.validate import surely_valid, validation_problems

T = TypeVar("T")


def same_as_the_model(outcome: Callable[[], T]) -> tuple[T, list[dict[str, Any]]]:
    """`outcome()` staged as it is and again with the walk (`fhir.checks.walked_problems`, which every format's
    staging calls) replaced by the model alone:
    both must be equal, and each resource the model then judged must be one the walk does not vouch for
    unless the model accepts it. Returns the outcome and those resources."""
    validated: list[dict[str, Any]] = []

    def model_only(resource: dict[str, Any]) -> list[str]:
        validated.append(copy.deepcopy(resource))
        return validation_problems(resource)

    walked = outcome()
    with patch.object(checks, "walked_problems", model_only):
        modelled = outcome()
    assert walked == modelled
    for resource in validated:
        assert not surely_valid(resource) or validation_problems(resource) == [], resource
    return walked, validated
