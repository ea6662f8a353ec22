"""Ingest classifies each resource once and stores its category; a read trusts it only under the framework
it was computed for, so a framework that makes a code sensitive protects it at once, before and after
the stored categories are brought up to date."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update
from tests.conftest import FRAMEWORK_PATH
from tests.small_ics import Ics

from sharedcare.governance.classify import classification_key, classify, reclassify
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.store.database import Database
from sharedcare.store.models import Resource

DIABETES = "http://snomed.info/sct|44054006"


def _conditions_seen(db: Database, fw: Framework, username: str, person: str) -> set[str]:
    with db.session() as session:
        records = GovernedRecords(session, fw, actor_for(fw, username))
        if records.active_basis(person) is None:
            records.record_basis(person, "implied-consent", "confused, daughter not present")
        view = records.everything(person)
    return {f"{c['system']}|{c['code']}" for s in view.of_type("Condition") for c in s.content["code"]["coding"]}


def _diabetes_is_sexual_health(fw: Framework) -> Framework:
    codes = {**fw.sensitive_codes, "sexual_health": [*fw.sensitive_codes["sexual_health"], DIABETES]}
    return fw.model_copy(update={"sensitive_codes": codes})


def test_ingest_stores_every_resources_category_under_the_frameworks_key(ics: Ics, db: Database,
                                                                          framework: Framework) -> None:
    with db.session() as session:
        rows = session.scalars(select(Resource)).all()
    assert len(rows) == 13
    for row in rows:
        org = framework.organisation(row.source_org)
        assert org is not None
        assert row.category == classify(row.content, org.kind, framework)
        assert row.category_key == classification_key(framework)


def test_the_key_changes_with_the_sensitive_codes_an_organisations_kind_and_nothing_else(framework: Framework) -> None:
    gp = framework.organisations["P81001"]
    moved = framework.model_copy(update={"organisations": {**framework.organisations,
                                                           "P81001": gp.model_copy(update={"kind": "mental_health"})}})
    renamed = framework.model_copy(update={"name": "Another name", "min_reason_chars": 3})
    key = classification_key(framework)
    assert classification_key(_diabetes_is_sexual_health(framework)) != key
    assert classification_key(moved) != key
    assert classification_key(renamed) == key


def test_a_code_made_sensitive_is_withheld_at_once_and_after_reclassifying(ics: Ics, db: Database,
                                                                            framework: Framework) -> None:
    assert DIABETES in _conditions_seen(db, framework, "para.evans", ics.okafor)
    changed = _diabetes_is_sexual_health(framework)  # a paramedic sees no sexual health (tier 0)
    assert DIABETES not in _conditions_seen(db, changed, "para.evans", ics.okafor)  # stored category is stale
    with db.session() as session:
        assert reclassify(session, changed) == 13
        assert reclassify(session, changed) == 0
        stored = session.scalars(select(Resource.category).where(Resource.resource_type == "Condition")).all()
    assert stored.count("sexual_health") == 2
    assert DIABETES not in _conditions_seen(db, changed, "para.evans", ics.okafor)
    assert DIABETES in _conditions_seen(db, framework, "para.evans", ics.okafor)  # and back, with the old framework


def test_rows_stored_before_categories_are_classified_by_the_reclassify_command(
        ics: Ics, db: Database, framework: Framework, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from sharedcare.cli import app

    with db.session() as session:  # as rows ingested before migration 0006 are
        session.execute(update(Resource).values(category=None, category_key=None))
    assert DIABETES in _conditions_seen(db, framework, "para.evans", ics.okafor)  # classified on read meanwhile
    monkeypatch.setenv("SHAREDCARE_DB", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("SHAREDCARE_FRAMEWORK", str(FRAMEWORK_PATH))
    result = CliRunner().invoke(app, ["framework", "reclassify"])
    assert result.exit_code == 0 and "reclassified 13 resources" in result.output
    with db.session() as session:
        assert session.scalars(select(Resource).where(Resource.category.is_(None))).first() is None
    assert "reclassified 0 resources" in CliRunner().invoke(app, ["framework", "reclassify"]).output
