"""A FHIR searchset Bundle as a client reads it: the resources the search matched or included, apart from
the OperationOutcome (search mode `outcome`) that says what the reader's view of the record leaves out
(docs/api.md, "What was not shown")."""

from __future__ import annotations

from typing import Any

WITHHELD_REASON_SYSTEM = "https://sharedcare.example/fhir/CodeSystem/withheld-reason"


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries holding the record's resources (every one but the notice of what was withheld)."""
    return [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") != "outcome"]


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in entries(bundle)]


def withheld(bundle: dict[str, Any]) -> dict[str, str]:
    """Why the reader's view leaves something out, as the Bundle says it: each reason's code and its text
    ({} when the Bundle says nothing was)."""
    notices = [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "outcome"]
    return {coding["code"]: issue["details"]["text"] for notice in notices for issue in notice["issue"]
            for coding in issue["details"]["coding"] if coding["system"] == WITHHELD_REASON_SYSTEM}
