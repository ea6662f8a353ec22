"""Journey 7: an unusual pattern is already flagged. A user whose patient searches name more people in an hour
than the framework's `review.people_found_per_hour` enters the IG review queue, once in the hour, however they
searched (the portal's form or a FHIR Patient search), with what shows what they looked up."""

from __future__ import annotations

import html
import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from tests.builders import bundle, different_people, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.clock import utcnow
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.governance.policy import Actor
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, ReviewItem

KIND = "unusual-search-volume"


def _people(ics: Ics, framework: Framework, tmp_path: Path, count: int) -> list[dict]:
    """`count` people the hospital knows, none of them with an NHS number: found by name and date of birth."""
    people = different_people(count)
    feed = write_ndjson(tmp_path / "people.ndjson", [bundle("RXR", "epr", people)])
    assert Pipeline(ics.database, framework).ingest_paths([feed]).quarantined == 0
    return people


def _by_name(person: dict) -> dict[str, str]:
    year, month, day = person["birthDate"].split("-")
    return {"family": person["name"][0]["family"], "birth_day": day, "birth_month": month, "birth_year": year}


def _items(db: Database) -> list[ReviewItem]:
    with db.session() as s:
        return list(s.scalars(select(ReviewItem).where(ReviewItem.kind == KIND)))


def test_a_paramedic_looking_up_40_people_in_minutes_is_in_the_ig_queue_once_with_everyone_looked_up(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    people = _people(ics, framework, tmp_path, 40)
    ics.client.post("/login", data={"username": "para.evans", "password": "demo"})
    for person in people:
        assert "1 person found" in ics.client.post("/search", data=_by_name(person)).text
    (item,) = _items(ics.database)
    with ics.database.session() as s:
        crossing = s.get_one(AuditEntry, item.audit_seq)
        assert (crossing.action, crossing.username, crossing.patient_id) == (
            "clinical:patient:search", "para.evans", item.person_id)  # the search that found the 31st person

    ics.client.post("/login", data={"username": "ig.morgan", "password": "demo", "target": "/ig"})
    queue = html.unescape(ics.client.get("/ig").text)
    assert "Unusually many people looked up: Carys Evans" in queue
    assert ("31 different people found by patient searches in an hour (more than 30), each result naming them "
            "(name, date of birth, NHS number, postcode)") in queue
    assert "Why it was flagged" in queue and "Last person found" in queue
    forms = [f.split("</form>")[0] for f in queue.split("<form")[1:]]
    form = next(f for f in forms if "See everyone looked up" in f)
    fields = dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', form))
    assert fields["user"] == "para.evans" and "patient" not in fields
    found = ics.client.post("/ig/audit", data=fields).text
    assert found.count("Searched for a patient") == 40  # every search of the hour, not only the one that crossed


def test_portal_and_fhir_searches_count_together_and_a_user_below_the_line_is_not_queued(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    strict = framework.model_copy(update={"review": framework.review.model_copy(update={"people_found_per_hour": 2})})
    people = _people(ics, strict, tmp_path, 1)
    client = ics.restarted(strict)
    headers = ics.token("dr.oconnor")
    assert client.post("/fhir/Patient/_search", data={"identifier": OKAFOR_NHS}, headers=headers).status_code == 200
    client.post("/login", data={"username": "dr.oconnor", "password": "demo"})
    assert "1 person found" in client.post("/search", data={"family": "Hughes", "birth_day": "11", "birth_month": "6",
                                                            "birth_year": "1952"}).text
    assert "1 person found" in client.post("/search", data={"nhs_number": OKAFOR_NHS}).text  # the same person again
    assert _items(ics.database) == []  # two people: not more than two
    third = {"family": people[0]["name"][0]["family"], "birthdate": people[0]["birthDate"]}
    found = client.post("/fhir/Patient/_search", data=third, headers=headers)  # the FHIR search crosses the line
    assert found.status_code == 200 and [e["resource"]["resourceType"] for e in found.json()["entry"]] == ["Patient"]
    (item,) = _items(ics.database)
    assert item.username == "dr.oconnor" and item.reason.startswith("3 different people found")


def test_queued_once_an_hour_and_a_backend_systems_look_ups_are_not_counted(
        ics: Ics, framework: Framework, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    strict = framework.model_copy(update={"review": framework.review.model_copy(update={"people_found_per_hour": 1})})
    people = _people(ics, strict, tmp_path, 5)

    def search(actor: Actor, person: dict) -> None:
        with db.session() as s:
            found = GovernedRecords(s, strict, actor).search_patients(
                family=person["name"][0]["family"], birth_date=date.fromisoformat(person["birthDate"]))
            assert len(found) == 1

    paramedic = actor_for(strict, "para.evans")
    for person in people[:3]:  # a partner system's own look-ups: its users' searches are audited in it
        search(Actor("client:ambulance-epr", paramedic.role, paramedic.organisation), person)
    assert _items(db) == []
    for person in people[:3]:
        search(paramedic, person)
    assert [i.reason[:27] for i in _items(db)] == ["2 different people found by"]  # the second crossed the line
    later = utcnow() + timedelta(minutes=61)
    for module in ("sharedcare.governance.gateway", "sharedcare.governance.audit"):
        monkeypatch.setattr(f"{module}.utcnow", lambda: later)
    search(paramedic, people[3])
    assert len(_items(db)) == 1  # an hour on: one person found in this hour
    search(paramedic, people[4])
    assert [i.reason[:27] for i in _items(db)] == ["2 different people found by"] * 2


def test_the_hours_count_reads_the_users_hour_not_every_entry_they_ever_made(db: Database) -> None:
    """The count after each search read every entry the user had ever made by the user's index alone (57 ms a
    search at 200,000 of them, growing for good); it reads by user and time."""
    from sharedcare.governance.review import people_found

    statement = people_found("para.evans", utcnow() - timedelta(hours=1))
    with db.session() as s:
        if db.engine.dialect.name == "sqlite":
            compiled = statement.compile(db.engine, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(row) for row in s.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
        else:
            s.execute(text("SET enable_seqscan = off"))  # an empty table: the planner would rather scan it
            compiled = statement.compile(db.engine, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(row) for row in s.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_audit_events_user_time" in plan, plan
