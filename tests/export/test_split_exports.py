"""An analyst who asks for an export's types one at a time (`_type`), whose token reads only some of them
(`user/Condition.read`), or who asks only for what arrived since a date (`_since`), gets back no
organisation that the whole export's small-cell check left out for the same people: extracts of one
purpose join up by pseudonym, so a practice given back on a Condition is given back on the person.

The small ICS has two people, both under the purpose's smallest group (8): the whole export suppresses
both Patients and leaves their clinical resources without organisations (`small_cells.py`, `unsourced`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from tests.export.conftest import export
from tests.small_ics import Ics

from sharedcare.store.database import Database
from sharedcare.store.models import Resource


def _sources(files: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """Each clinical resource that still names where it came from: (type, meta.source)."""
    return [(resource_type, resource["meta"]["source"]) for resource_type, lines in files.items()
            if resource_type != "Patient" for resource in lines if "source" in (resource.get("meta") or {})]


def test_a_condition_only_export_gives_back_no_practice_the_whole_export_left_out(ics: Ics) -> None:
    headers = ics.token("analyst.chen")
    _, whole = export(ics.client, headers)
    assert all(set(p) == {"resourceType", "id", "meta"} for p in whole["Patient"])  # both suppressed
    assert _sources(whole) == []
    _, only = export(ics.client, headers, params={"_type": "Condition"})
    assert set(only) == {"Condition"}  # no Patient file: it was not asked for
    assert {c["id"] for c in only["Condition"]} == {c["id"] for c in whole["Condition"]}
    assert _sources(only) == [], "the practice left out of the whole export came back on its Conditions"


def test_a_token_that_reads_only_conditions_gets_no_practice_back(ics: Ics) -> None:
    _, only = export(ics.client, ics.token("analyst.chen", scope="user/Condition.read"))
    assert set(only) == {"Condition"}
    assert _sources(only) == []


def test_a_since_export_that_leaves_his_patient_out_gives_back_no_practice(ics: Ics, db: Database) -> None:
    with db.session() as s:  # every Patient arrived long ago; the clinical records since
        s.execute(update(Resource).where(Resource.resource_type == "Patient")
                  .values(received_at=datetime.fromisoformat("2020-01-01T00:00:00+00:00")))
    _, since = export(ics.client, ics.token("analyst.chen"), params={"_since": "2025-01-01T00:00:00Z"})
    assert "Patient" not in since and since
    assert _sources(since) == [], "a _since export without the Patients kept the practices"


def test_a_since_export_publishes_its_patients_in_groups_of_k_within_the_file(ics: Ics, db: Database) -> None:
    """The Patients of a `_since` export are decided with everyone's (so that the clinical lines lose what the
    whole export's lose) and then again among themselves: the file alone holds no group under k either."""
    with db.session() as s:
        s.execute(update(Resource).where(Resource.resource_type == "Patient", Resource.source_id != "gp-okafor")
                  .values(received_at=datetime.fromisoformat("2020-01-01T00:00:00+00:00")))
    _, since = export(ics.client, ics.token("analyst.chen"), params={"_since": "2025-01-01T00:00:00Z"})
    assert len(since["Patient"]) == 1  # only Mr Okafor's GP record arrived since
    assert set(since["Patient"][0]) == {"resourceType", "id", "meta"}
    assert _sources(since) == []
