"""`$export` kicked off by a SMART backend client (client credentials, system/ scopes): the run must go
under the identity the kick-off was decided under, the client's registered role and organisation, and
not under an unknown user (which the decision point refuses person by person: an empty extract)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import select, update
from tests.api.test_smart import _assertion, _backend_token, _bearer
from tests.export.conftest import export
from tests.small_ics import Ics

from sharedcare.config import load_settings
from sharedcare.export.jobs import ExportJobs
from sharedcare.governance.clients import add_client
from sharedcare.governance.framework import Framework
from sharedcare.governance.policy import Actor
from sharedcare.governance.secondary import ExportScope
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, OAuthClient

WAREHOUSE = "ph-warehouse"
SUMMARY = "https://sharedcare.example/bulk/summary"


@pytest.fixture
def warehouse(ics: Ics, db: Database, framework: Framework, monkeypatch: pytest.MonkeyPatch) -> Iterator[RSAKey]:
    """A population health warehouse registered as a backend client of the analysts' organisation."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # TestClient talks plain http://testserver
    key = RSAKey.generate_key(2048, parameters={"kid": "warehouse-1"})
    with db.session() as session:
        add_client(session, framework, WAREHOUSE, "Population health warehouse", "backend", by="cli",
                   organisation="QRD", role="analyst", jwks=KeySet([key]).as_dict(private=False))
    yield key


def _headers(ics: Ics, key: RSAKey) -> dict[str, str]:
    response = _backend_token(ics, _assertion(key, client_id=WAREHOUSE))
    assert response.status_code == 200, response.text
    return _bearer(response.json()["access_token"])


def test_a_backend_clients_export_holds_what_an_analyst_of_its_organisation_gets(
        ics: Ics, db: Database, warehouse: RSAKey) -> None:
    manifest, files = export(ics.client, _headers(ics, warehouse))
    summary = manifest["extension"][SUMMARY]
    assert summary["people_excluded"] == {} and summary["people_included"] == 2
    _, analysts = export(ics.client, ics.token("analyst.chen"))
    assert {t: sorted(r["id"] for r in rs) for t, rs in files.items()} == \
        {t: sorted(r["id"] for r in rs) for t, rs in analysts.items()}
    with db.session() as s:
        complete = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:complete")
                             .order_by(AuditEntry.seq)).first()
    assert complete is not None and complete.username == f"client:{WAREHOUSE}" and complete.organisation == "QRD"
    assert complete.outcome == "permit"
    assert complete.event["agent"][0]["role"] == [{"text": "analyst"}]


def test_a_backend_whose_registration_changed_before_the_run_gets_no_export_under_the_new_identity(
        db: Database, framework: Framework, tmp_path: Path, warehouse: RSAKey) -> None:
    jobs = ExportJobs(db, framework, replace(load_settings(), data_path=tmp_path / "data", export_workers=1))
    actor = Actor(username=f"client:{WAREHOUSE}", role=framework.roles["analyst"], organisation="QRD")
    moved = jobs.start(actor, ExportScope("system"), "test", background=False)
    with db.session() as s:  # re-registered for another organisation between the kick-off and the run
        s.execute(update(OAuthClient).where(OAuthClient.client_id == WAREHOUSE).values(organisation="RXR"))
    view = jobs.run(moved)
    assert view.status == "failed" and view.output == [] and "start a new one" in (view.error or "")
    assert not (tmp_path / "data" / "exports" / moved).exists()
    with db.session() as s:
        s.execute(update(OAuthClient).where(OAuthClient.client_id == WAREHOUSE).values(organisation="QRD"))
        s.delete(s.get_one(OAuthClient, WAREHOUSE))  # removed altogether
    removed = jobs.start(actor, ExportScope("system"), "test", background=False)
    assert jobs.run(removed).status == "failed"
    with db.session() as s:
        ends = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:complete")
                         .order_by(AuditEntry.seq)).all()
    assert [e.outcome for e in ends] == ["deny", "deny"]
    assert all("deny-identity-changed" in json.dumps(e.event) for e in ends)


def test_a_finished_export_is_gone_for_its_client_once_registered_for_another_organisation(
        ics: Ics, db: Database, warehouse: RSAKey) -> None:
    headers = _headers(ics, warehouse)
    manifest, _ = export(ics.client, headers)
    file_url = manifest["output"][0]["url"]
    status_url = file_url.rsplit("/", 1)[0]
    with db.session() as s:  # the client id now belongs to another partner, another organisation
        s.execute(update(OAuthClient).where(OAuthClient.client_id == WAREHOUSE).values(organisation="RXR"))
    again = _headers(ics, warehouse)
    assert ics.client.get(file_url, headers=again).status_code == 404  # as if there were no such export
    assert ics.client.get(status_url, headers=again).status_code == 404
    assert ics.client.delete(status_url, headers=again).status_code == 404
    with db.session() as s:  # registered as it was: the export is its own again
        s.execute(update(OAuthClient).where(OAuthClient.client_id == WAREHOUSE).values(organisation="QRD"))
    assert ics.client.get(file_url, headers=headers).status_code == 200


def test_a_finished_export_is_gone_for_a_user_moved_to_another_organisation(
        ics: Ics, framework: Framework, monkeypatch: pytest.MonkeyPatch) -> None:
    headers = ics.token("analyst.chen")
    manifest, _ = export(ics.client, headers)
    file_url = manifest["output"][0]["url"]
    moved = framework.users["analyst.chen"].model_copy(update={"organisation": "RXR"})
    monkeypatch.setitem(framework.users, "analyst.chen", moved)  # the framework moves her to the hospital
    assert ics.client.get(file_url, headers=headers).status_code == 404
    assert ics.client.get(file_url.rsplit("/", 1)[0], headers=headers).status_code == 404
