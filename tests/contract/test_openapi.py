"""Contract tests (schemathesis) against the app's own OpenAPI description, on a small store: whatever
requests the description allows, the app never answers with a server error, and every response has the
media type and schema the description gives for its status.

Bounded (a few examples per operation, no shrinking) so that it runs in the normal suite in well under
a minute; schemathesis's CLI can run the same description far longer."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from tests.small_ics import Ics

CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]
EXAMPLES = 6


@pytest.mark.parametrize("caller", ["dr.patel", None])
def test_no_request_the_description_allows_gets_a_server_error_or_a_response_it_does_not_describe(
        ics: Ics, caller: str | None) -> None:
    headers = ics.open_record(caller) if caller else {}  # with a basis for Mr Okafor, and with no token at all
    schema = schemathesis.openapi.from_asgi("/openapi.json", ics.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    failures: dict[str, str] = {}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            call()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - each operation's failures are reported
            failures[operation.label] = str(exc)[:1500]
    assert not failures, "\n\n".join(f"{label}:\n{problem}" for label, problem in failures.items())
