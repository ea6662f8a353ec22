"""Ingest classifies each resource once and stores its category; a read trusts it only under the framework
it was computed for, so a framework that makes a code sensitive protects it at once, before and after
the stored categories are brought up to date."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update
from tests.builders import SCT, bundle, condition, document, patient, write_ndjson
from tests.conftest import FRAMEWORK_PATH
from tests.ingest.test_csv_extract import _extract, _lrc, _row
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.classify import classification_key, classify, reclassify
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.ingest.pipeline import Pipeline
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


def test_a_category_stored_under_earlier_rules_is_worked_out_again(ics: Ics, db: Database, framework: Framework,
                                                                  tmp_path: Path) -> None:
    """Rules r2 read eight top-level elements and filed a report coded chlamydia in its conclusion as
    diagnostics: a paramedic (sexual health 0) must not see a row stored so, before or after reclassifying."""
    report = {"resourceType": "DiagnosticReport", "id": "rx-dr1", "status": "final",
              "subject": {"reference": "Patient/MRN1"}, "code": {"text": "C trachomatis DNA"},
              "conclusionCode": [{"coding": [{"system": SCT, "code": "105629000"}]}]}
    feed = bundle("RXR", "epr", [patient("MRN1", "9434765919", "OKAFOR", "Emeka", "1945-03-02"), report])
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "r.ndjson", [feed])]).quarantined == 0
    with db.session() as session:
        session.execute(update(Resource).where(Resource.resource_type == "DiagnosticReport").values(
            category="diagnostics", category_key=f"r2-{framework.classification_digest}"))
    with db.session() as session:
        records = GovernedRecords(session, framework, actor_for(framework, "para.evans"))
        records.record_basis(ics.okafor, "implied-consent", "collapsed at home, daughter present")
        assert not records.everything(ics.okafor).of_type("DiagnosticReport")
        reclassify(session, framework)
        stored = session.scalars(select(Resource.category).where(Resource.resource_type == "DiagnosticReport")).one()
    assert stored == "sexual_health"


def _one_of_each_category(tmp: Path) -> tuple[list[Path], dict[tuple[str, str], str]]:
    """Feeds holding a resource of every category in the framework, and the category each must be stored
    under, written from the framework's rules (config/framework.yaml, classify.py's docstring), not by
    calling `classify`."""
    nhs, born = "9434765919", "1945-03-02"
    encounter = {"resourceType": "Encounter", "id": "gp-e1", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "subject": {"reference": "Patient/gp"}, "period": {"start": "2026-10-01T09:00:00Z"}}
    pressure = {"resourceType": "Observation", "id": "gp-o1", "status": "final",
                "code": {"coding": [{"system": SCT, "code": "271649006", "display": "Systolic blood pressure"}]},
                "subject": {"reference": "Patient/gp"}, "effectiveDateTime": "2026-10-01T09:00:00Z",
                "valueQuantity": {"value": 140, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                  "code": "mm[Hg]"}}
    allergy = {"resourceType": "AllergyIntolerance", "id": "rxm-a1", "patient": {"reference": "Patient/rxm"},
               "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]}}
    bundles = [
        bundle("P81001", "emis", [
            patient("gp", nhs, "Okafor", "Emeka", born),  # demographics
            condition("gp-c1", "Patient/gp", "44054006", "Type 2 diabetes mellitus"),  # summary
            encounter, pressure,  # encounters, diagnostics
            condition("gp-sg", "Patient/gp", "417430008", "Vulnerable adult"),  # safeguarding, a listed code
            condition("gp-sh", "Patient/gp", "105629000", "Chlamydial infection"),  # sexual health, a listed code
        ]),
        bundle("RXR", "epr", [patient("rxr", nhs, "Okafor", "Emeka", born),
                              document("rxr-d1", "Patient/rxr", "Discharged after a fall.")]),  # hospital detail
        bundle("RYC", "rio", [patient("ryc", nhs, "Okafor", "Emeka", born),
                              condition("ryc-c1", "Patient/ryc", "44054006", "Diabetes")]),  # community's service
        bundle("RXM", "rio", [patient("rxm", nhs, "Okafor", "Emeka", born),
                              condition("rxm-c1", "Patient/rxm", "35489007", "Depressive disorder"),  # mental health
                              allergy]),  # a safety-critical type a mental health trust sent: alerts
    ]
    feeds = [write_ndjson(tmp / "feeds" / f"{n}.ndjson", [b]) for n, b in enumerate(bundles)]
    feeds.append(_extract(_lrc(tmp / "feeds"), [_row()]))  # a council's assessment: social care
    expected = {("P81001", "gp"): "demographics", ("P81001", "gp-c1"): "summary", ("P81001", "gp-e1"): "encounters",
                ("P81001", "gp-o1"): "diagnostics", ("P81001", "gp-sg"): "safeguarding",
                ("P81001", "gp-sh"): "sexual_health", ("RXR", "rxr"): "demographics",
                ("RXR", "rxr-d1"): "hospital_detail", ("RYC", "ryc"): "demographics", ("RYC", "ryc-c1"): "community",
                ("RXM", "rxm"): "demographics", ("RXM", "rxm-c1"): "mental_health", ("RXM", "rxm-a1"): "alerts",
                ("LRC", "C1"): "demographics", ("LRC", "A1"): "social_care"}
    return feeds, expected


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "workers"])
def test_every_category_is_stored_as_the_framework_says_whether_staged_in_a_worker_or_in_process(
        db: Database, framework: Framework, tmp_path: Path, workers: int) -> None:
    """Staging classifies each resource (in a worker process for large runs) before the writer stores it: a
    worker's category must be exactly the one the framework gives, as in process, or the data is released
    at the wrong tier (HAZ-02, HAZ-05)."""
    feeds, expected = _one_of_each_category(tmp_path)
    assert set(expected.values()) == set(framework.categories)
    report = Pipeline(db, framework, workers=workers, parallel_from_bytes=0).ingest_paths(feeds)
    assert report.quarantined == 0, report.quarantine
    with db.session() as session:
        rows = session.scalars(select(Resource)).all()
    assert {(row.source_org, row.source_id): row.category for row in rows} == expected
    for row in rows:  # and what the read path would make of it, classifying afresh in this process
        org = framework.organisation(row.source_org)
        assert org is not None
        assert (row.category, row.category_key) == (classify(row.content, org.kind, framework),
                                                    classification_key(framework))


HYPERTENSION = "http://snomed.info/sct|38341003"


def test_a_correction_committed_while_reclassify_works_keeps_the_category_its_writer_gave_it(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """Concurrency review of 2026-12-07 (HIGH): reclassify read a batch, then wrote each category worked out
    from what it had read. A practice's correction committed in between (its diabetes entry corrected to a
    code the new framework makes sensitive) was overwritten with the old content's category under the
    current key, which every read trusts: the paramedic read it. The correction is made here from inside
    reclassify's first write, as a feed committing at that moment would."""
    from sqlalchemy import event

    changed = framework.model_copy(update={"sensitive_codes": {
        **framework.sensitive_codes, "sexual_health": [*framework.sensitive_codes["sexual_health"], HYPERTENSION]}})
    corrected: list[bool] = []

    def correct_first(conn: object, cursor: object, statement: str, *args: object) -> None:
        if not corrected and statement.lstrip().upper().startswith("UPDATE RESOURCES SET CATEGORY"):
            corrected.append(True)
            gp = bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
                                           condition("gp-c1", "Patient/gp-okafor", "38341003", "Hypertension")],
                        timestamp="2026-11-30T09:00:00Z")
            report = Pipeline(db, changed).ingest_paths([write_ndjson(tmp_path / "corrected.ndjson", [gp])])
            assert report.quarantined == 0, report.quarantine

    event.listen(db.engine, "before_cursor_execute", correct_first)
    try:
        with db.session() as session:
            reclassify(session, changed)
    finally:
        event.remove(db.engine, "before_cursor_execute", correct_first)
    assert corrected
    with db.session() as session:
        row = session.scalars(select(Resource).where(Resource.source_id == "gp-c1")).one()
        assert row.content["code"]["coding"][0]["code"] == "38341003"
        assert (row.category, row.category_key) == ("sexual_health", classification_key(changed))
    assert HYPERTENSION not in _conditions_seen(db, changed, "para.evans", ics.okafor)
