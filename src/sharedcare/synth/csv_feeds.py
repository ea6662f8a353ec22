"""The council's adult social care extract (Mosaic), one CSV row per assessment.

Dates are UK style (DD/MM/YYYY) except `last_updated`, which is ISO 8601 in UTC. `third_party_notes`
holds what others (carers, neighbours) said: information the framework always withholds.
"""

from __future__ import annotations

from collections import Counter

from sharedcare.synth.clinical import Assessment
from sharedcare.synth.noise import Demographics
from sharedcare.synth.people import Person

HEADER = ("client_id", "nhs_number", "family_name", "given_name", "date_of_birth", "sex", "address_line1", "town",
          "postcode", "phone", "assessment_id", "assessment_type", "assessment_date", "status", "outcome_summary",
          "third_party_notes", "worker_name", "team", "last_updated")


def rows(person: Person, view: Demographics, client_id: str, assessments: list[Assessment], org: str,
         counts: dict[str, Counter[str]]) -> list[tuple[str, ...]]:
    """The extract's rows for one client, with the address the council held at each assessment."""
    out: list[tuple[str, ...]] = []
    for a in assessments:
        address = person.address_on(a.on)
        out.append((
            client_id, view.nhs_number or "", view.family, view.given, view.birth_date.strftime("%d/%m/%Y"),
            view.sex.capitalize(), address.line, address.town, address.postcode,
            person.mobile or person.home_phone or "", a.id, a.type, a.on.strftime("%d/%m/%Y"), a.status,
            a.outcome, a.third_party, a.worker, a.team, a.updated.strftime("%Y-%m-%dT%H:%M:%SZ"),
        ))
        counts.setdefault(org, Counter())["assessment"] += 1
    return out
