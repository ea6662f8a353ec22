"""The decoded-content cache behind `$everything` never shows what the store no longer says: a
correction, a withdrawal, a merge or an unmerge shows on the very next read of a record already cached."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from tests.fhir_bundles import entries
from tests.small_ics import WITHDRAWN, Ics, resend_diabetes, without_nhs_number

from sharedcare.governance import content_cache as content_cache_module
from sharedcare.governance import gateway
from sharedcare.governance.content_cache import ContentCache, content_cache
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.identity.links import merge_persons, unmerge
from sharedcare.store.database import Database
from sharedcare.store.models import Resource


def _record(ics: Ics, person: str, headers: dict[str, str]) -> dict[str, dict]:
    response = ics.client.get(f"/fhir/Patient/{person}/$everything", headers=headers)
    assert response.status_code == 200, response.text
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in entries(response.json())}


def _cached(db: Database) -> int:
    with db.session() as s:
        return len(content_cache(s))


def test_a_cached_record_shows_a_correction_then_a_withdrawal_on_the_next_read(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    with db.session() as s:
        diabetes = "Condition/" + s.scalars(select(Resource.id).where(Resource.source_id == "gp-c1")).one()
    headers = ics.open_record("dr.patel")
    first = _record(ics, ics.okafor, headers)
    assert first[diabetes]["onsetDateTime"] == "2019-03-01" and _cached(db) >= len(first) - 1
    assert _record(ics, ics.okafor, headers)[diabetes]["onsetDateTime"] == "2019-03-01"  # served from the cache

    resend_diabetes(db, framework, tmp_path, "fix", "2026-11-05T09:00:00Z", onsetDateTime="2018-07-01")
    corrected = _record(ics, ics.okafor, headers)[diabetes]
    assert corrected["onsetDateTime"] == "2018-07-01" and corrected["meta"]["versionId"] == "2"

    resend_diabetes(db, framework, tmp_path, "withdraw", "2026-11-06T09:00:00Z", verificationStatus=WITHDRAWN)
    assert diabetes not in _record(ics, ics.okafor, headers)


def test_a_merge_and_its_unmerge_move_cached_resources_between_records_on_the_next_read(
        ics: Ics, db: Database) -> None:
    headers = ics.open_record("dr.patel")
    ics.open_record("dr.patel", person=ics.stranger)
    okafor, stranger = _record(ics, ics.okafor, headers), _record(ics, ics.stranger, headers)
    allergy = next(ref for ref in stranger if ref.startswith("AllergyIntolerance/"))
    assert allergy not in okafor and _cached(db) > 0

    with db.session() as s:
        without_nhs_number(s, ics.stranger)
        event = merge_persons(s, ics.okafor, ics.stranger, by="mpi.reviewer", reason="same person after review")
    ics.open_record("dr.patel")  # the merge ended the bases on both persons (`links.end_bases`)
    assert allergy in _record(ics, ics.okafor, headers)
    after_merge = ics.client.get(f"/fhir/Patient/{ics.stranger}/$everything", headers=headers)
    assert after_merge.status_code != 200 or allergy not in str(after_merge.json())

    with db.session() as s:
        unmerge(s, event.id, by="mpi.reviewer", reason="different people after all")
    ics.open_record("dr.patel")
    ics.open_record("dr.patel", person=ics.stranger)
    assert allergy not in _record(ics, ics.okafor, headers)
    assert allergy in _record(ics, ics.stranger, headers)


def test_content_sent_back_to_an_earlier_state_is_served_as_the_new_version(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """The cache still holds version 1 when version 3 arrives with version 1's content (the same hash):
    the version and received time in the stamp tell them apart, so meta is the new version's."""
    with db.session() as s:
        diabetes = "Condition/" + s.scalars(select(Resource.id).where(Resource.source_id == "gp-c1")).one()
    headers = ics.open_record("dr.patel")
    first = _record(ics, ics.okafor, headers)[diabetes]
    resend_diabetes(db, framework, tmp_path, "fix", "2026-11-05T09:00:00Z", onsetDateTime="2018-07-01")
    resend_diabetes(db, framework, tmp_path, "undo", "2026-11-06T09:00:00Z")  # unread between the two
    again = _record(ics, ics.okafor, headers)[diabetes]
    assert again["onsetDateTime"] == "2019-03-01" and again["meta"]["versionId"] == "3"
    assert again["meta"]["lastUpdated"] != first["meta"]["lastUpdated"]


def test_a_cached_record_shows_a_change_of_category_on_the_next_read(ics: Ics, db: Database) -> None:
    """The decision's view of a record is kept between reads only while its rows are the same: a row whose
    stored category changes (a reclassification) is decided under its new category on the very next read,
    and under the old one again when it changes back."""
    with db.session() as s:
        diabetes = "Condition/" + s.scalars(select(Resource.id).where(Resource.source_id == "gp-c1")).one()
    headers = ics.open_record("dr.oconnor")  # a hospital clinician: the GP practice's diabetes is not theirs
    assert diabetes in _record(ics, ics.okafor, headers)
    assert diabetes in _record(ics, ics.okafor, headers)  # the kept view

    def set_category(category: str) -> None:
        with db.session() as s:
            s.execute(update(Resource).where(Resource.id == diabetes.split("/")[1]).values(category=category))
            s.commit()

    set_category("sexual_health")  # their tier 1: a headline, not the resource
    assert diabetes not in _record(ics, ics.okafor, headers)
    set_category("summary")
    assert diabetes in _record(ics, ics.okafor, headers)


def test_a_kept_view_is_given_only_for_equal_rows_and_views_are_bounded_by_their_documents_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(content_cache_module, "VIEW_BYTES", 500)
    cache = ContentCache()
    a, b = {"id": "a"}, {"id": "b"}
    cache.put_many([("a", (1, "h", "t"), a, 100), ("b", (1, "h", "t"), b, 100)])
    rows = [("a", "Condition", a, "summary"), ("b", "Condition", b, "summary")]

    def keep(key: str, kept: list[tuple[str, str, dict, str]], made: str) -> None:
        cache.keep_view(key, kept, made, ((row[0], row[2]) for row in kept))

    keep("alice", rows, "alice's view")  # 200 bytes
    assert cache.view("alice", list(rows)) == "alice's view"
    assert cache.view("alice", [*rows[:1], ("b", "Condition", b, "sexual_health")]) is None
    assert cache.view("alice", rows[:1]) is None and cache.view("bob", rows) is None
    keep("bob", rows, "bob's view")  # 400 bytes with alice's
    keep("carol", rows, "carol's view")  # 600: alice's, least recently used, goes
    assert cache.view("alice", rows) is None and cache.view("bob", rows) == "bob's view"
    assert cache.view_bytes == 400
    keep("dave", rows * 3, "too large")  # 600 bytes on its own: not kept
    assert cache.view("dave", rows * 3) is None and cache.view("carol", rows) == "carol's view"
    keep("erin", [("c", "Condition", {"id": "c"}, "summary")], "a document the cache does not hold")
    keep("nobody", [], "a person with no rows")  # asking for people who do not exist keeps nothing
    assert cache.view("erin", [("c", "Condition", {"id": "c"}, "summary")]) is None
    assert cache.view("nobody", []) is None and cache.view_bytes == 400

    again = [("a", "Condition", {"id": "a"}, "summary"), ("b", "Condition", {"id": "b"}, "summary")]
    assert cache.view("bob", again) == "bob's view"  # equal, not the same objects: these are kept from now
    assert cache._views["bob"][0] is again


def test_a_write_between_the_stamps_and_the_contents_is_read_whole(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each statement sees what is committed when it runs: if a resource is written after its stamp (and
    its category, times and person) was read and before its content is, the rows are read again in one
    statement, never one version's content decided with another's columns."""
    with db.session() as s:
        diabetes = s.scalars(select(Resource.id).where(Resource.source_id == "gp-c1")).one()
    ics.open_record("dr.patel")
    real_run, written = gateway.run, []

    def run_with_a_write_in_between(session: Session, statement: Any, params: Any = None) -> Any:
        if statement is gateway._CONTENTS and not written:
            written.append(True)
            resend_diabetes(db, framework, tmp_path, "fix", "2026-11-05T09:00:00Z", onsetDateTime="2018-07-01")
        return real_run(session, statement, params)

    monkeypatch.setattr(gateway, "run", run_with_a_write_in_between)
    with db.session() as s:
        view = GovernedRecords(s, framework, actor_for(framework, "dr.patel")).everything(ics.okafor)
    served = next(r for r in view.resources if r.content["id"] == diabetes)
    assert written and served.content["onsetDateTime"] == "2018-07-01" and served.content["meta"]["versionId"] == "2"
    assert served.content["meta"]["lastUpdated"] == served.received_at.isoformat()  # one version's


def test_a_version_read_but_never_committed_is_not_served_for_the_version_that_was(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read in a transaction that is then rolled back (here: its audit append fails) may cache a version
    the store never kept; the version committed later under the same number has another hash and
    received time, so it is read."""
    with db.session() as s:
        diabetes = s.scalars(select(Resource.id).where(Resource.source_id == "gp-c1")).one()
    ics.open_record("dr.patel")
    actor = actor_for(framework, "dr.patel")

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("audit store unavailable")

    session = Session(db.engine)
    try:
        row = session.get(Resource, diabetes)
        assert row is not None
        row.version, row.content_hash = 2, "never-committed"
        row.content = {**row.content, "onsetDateTime": "1999-01-01", "meta": {**row.content["meta"], "versionId": "2"}}
        with monkeypatch.context() as patched, pytest.raises(RuntimeError):
            patched.setattr(gateway, "record_audit", broken)
            GovernedRecords(session, framework, actor).everything(ics.okafor)
        assert any(content.get("onsetDateTime") == "1999-01-01" for rid, _, content in content_cache(session).entries()
                   if rid == diabetes)  # the version never committed was read, and is held
    finally:
        session.rollback()
        session.close()
    resend_diabetes(db, framework, tmp_path, "fix", "2026-11-05T09:00:00Z", onsetDateTime="2018-07-01")
    with db.session() as s:
        view = GovernedRecords(s, framework, actor).everything(ics.okafor)
    served = next(r for r in view.resources if r.content["id"] == diabetes)
    assert served.content["onsetDateTime"] == "2018-07-01" and served.content["meta"]["versionId"] == "2"


def test_the_cache_is_bounded_by_the_size_of_what_it_holds() -> None:
    cache = ContentCache(capacity_bytes=100)
    stamp = (1, "hash", datetime(2026, 1, 1, tzinfo=UTC))
    cache.put_many([("a", stamp, {"id": "a"}, 40), ("b", stamp, {"id": "b"}, 40)])
    assert cache.get_many([("a", stamp)]) == {"a": {"id": "a"}}  # a is now the most recently used
    cache.put_many([("c", stamp, {"id": "c"}, 40)])
    assert len(cache) == 2 and cache.size_bytes == 80 and cache.get_many([("b", stamp)]) == {}
    cache.put_many([("a", stamp, {"id": "a2"}, 10), ("huge", stamp, {"id": "huge"}, 101)])
    assert cache.size_bytes == 50 and cache.get_many([("huge", stamp)]) == {}
    assert cache.get_many([("a", (2, "hash", stamp[2]))]) == {}  # another stamp is a miss


def _metformin(ics: Ics, person: str, headers: dict[str, str], **params: str) -> tuple[str, dict[str, Any]]:
    response = ics.client.get(f"/fhir/Patient/{person}/$everything", headers=headers, params=params)
    assert response.status_code == 200, response.text
    assert response.content == orjson.dumps(response.json())  # one JSON document, as orjson writes it whole
    return next((e["fullUrl"], e["resource"]) for e in entries(response.json())
                if e["resource"]["resourceType"] == "MedicationStatement")


def test_a_shape_served_from_a_cached_document_is_served_only_to_the_tier_and_record_it_was_made_for(
        ics: Ics, db: Database) -> None:
    """What was served from a cached document (redacted to a tier, in one person's record) is kept with it:
    another role's tier, or the same resource in another person's record after a merge, gets its own."""
    gp, social_worker = ics.open_record("dr.patel"), ics.open_record("sw.brown")  # tier 3 / tier 2 summary
    url, full = _metformin(ics, ics.okafor, gp)
    assert full["note"] and url.endswith(f"/MedicationStatement/{full['id']}")
    assert "note" not in _metformin(ics, ics.okafor, social_worker)[1]
    assert _metformin(ics, ics.okafor, gp)[1] == full  # the tier 3 shape again, note and all

    with db.session() as s:
        without_nhs_number(s, ics.okafor)
        merge_persons(s, ics.stranger, ics.okafor, by="mpi.reviewer", reason="same person after review")
    ics.open_record("dr.patel", person=ics.stranger)
    moved = _metformin(ics, ics.stranger, gp)[1]
    assert moved["subject"]["reference"] == f"Patient/{ics.stranger}" and moved["note"] == full["note"]


def test_everything_with_provenance_names_each_included_resource(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    bundle = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers,
                            params={"_revinclude": "Provenance:target"}).json()
    modes = {e["resource"]["resourceType"]: e["search"]["mode"] for e in entries(bundle)}
    assert modes["Provenance"] == "include" and modes["MedicationStatement"] == "match"
    targets = {e["resource"]["target"][0]["reference"] for e in entries(bundle)
               if e["resource"]["resourceType"] == "Provenance"}
    assert targets == {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries(bundle)
                       if e["resource"]["resourceType"] not in ("Provenance", "Patient")}
