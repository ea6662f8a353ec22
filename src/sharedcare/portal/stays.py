"""One hospital stay, sent twice, shown once.

A hospital's PAS (ADT A01/A03, mapped to an Encounter) and its EPR (a FHIR Encounter) both tell us of the
same admission; the store keeps both, as sent, each with its own provenance, and the FHIR API serves both
(each is a resource a client can read by id, and others refer to it). A clinician reading the timeline
needs the stay once, saying who sent it. Two encounters are one stay when they come from the same
organisation (never across organisations: two trusts' stays are two stays) but from different systems of
it, are of the same class (inpatient, emergency...), and either share an identifier (the visit number) or,
when neither names one the other contradicts, began within `SAME_START` of each other; and they agree on
where the stay is (status, and when it ended): a PAS that has discharged the patient while the EPR still says
in progress, or a cancelled admission, is two rows, each naming its source, so neither hides the other. The one
that says what the stay was is shown; the others are named in its provenance.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sharedcare.governance.gateway import ServedResource

SAME_START = timedelta(minutes=15)  # the PAS and the EPR each stamp the admission, a few minutes apart at most


def _when(content: dict[str, Any], end: str = "start") -> datetime | None:
    text = (content.get("period") or {}).get(end)
    try:
        start = datetime.fromisoformat(str(text)) if text else None
    except ValueError:
        return None
    return start if start is None or start.tzinfo else None  # a start without an offset cannot be compared


def _ended(content: dict[str, Any]) -> tuple[bool, datetime | None]:
    """Whether the stay is said to have ended, and when."""
    return (content.get("period") or {}).get("end") is not None, _when(content, "end")


def _identifiers(content: dict[str, Any]) -> dict[str, str]:
    return {str(i.get("system")): str(i.get("value")) for i in content.get("identifier") or []
            if isinstance(i, dict) and i.get("system") and i.get("value")}


def _class(content: dict[str, Any]) -> str | None:
    return (content.get("class") or {}).get("code")


def same_stay(a: ServedResource, b: ServedResource) -> bool:
    """Whether two encounters are one stay told by two systems of one organisation."""
    if a.source_org != b.source_org or a.source_system == b.source_system:
        return False
    if _class(a.content) != _class(b.content) or a.content.get("status") != b.content.get("status"):
        return False
    if _ended(a.content) != _ended(b.content):
        return False  # one has ended the stay (or ended it at another time) and the other has not
    ids_a, ids_b = _identifiers(a.content), _identifiers(b.content)
    shared = ids_a.keys() & ids_b.keys()
    if shared:  # both name the visit in one system: that decides it
        return all(ids_a[system] == ids_b[system] for system in shared)
    start_a, start_b = _when(a.content), _when(b.content)
    return start_a is not None and start_b is not None and abs(start_a - start_b) <= SAME_START


def _richness(served: ServedResource) -> tuple[bool, int, float]:
    """What the stay was (a type, service or reason: the PAS's ADT names none) first, then more elements,
    then the first received."""
    named = any(served.content.get(name) for name in ("type", "serviceType", "reasonCode"))
    return (not named, -len(served.content), served.received_at.timestamp())


def one_per_stay(encounters: list[ServedResource]) -> list[tuple[ServedResource, list[ServedResource]]]:
    """Each stay once: the encounter shown, and the others that told of the same stay (often none)."""
    stays: list[list[ServedResource]] = []
    for served in encounters:
        group = next((g for g in stays if all(same_stay(served, other) for other in g)), None)
        if group is None:
            stays.append([served])
        else:
            group.append(served)
    out = []
    for group in stays:
        shown, *others = sorted(group, key=_richness)
        out.append((shown, others))
    return out
