"""The citizen's and the IG officer's own functions, bound to who they are."""

from __future__ import annotations

import pytest
from tests.fhir_bundles import entries
from tests.small_ics import Ics

from sharedcare.governance.access_log import details, search
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import AccessDenied, GovernedRecords, NotFound, actor_for, citizen_actor
from sharedcare.governance.workspace import CitizenWorkspace, IgWorkspace
from sharedcare.store.database import Database


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


def test_a_citizen_reads_their_whole_record_even_where_they_objected_to_sharing(ics: Ics,
                                                                                 framework: Framework) -> None:
    with _db(ics).session() as s:
        me = CitizenWorkspace(s, framework, ics.okafor)
        me.set_choice("object-all")
        view = me.record()
    assert {r.source_org for r in view.resources} == {"P81001", "RXR", "RYC", "RXM"}
    assert view.withheld.get("confidential") == 1  # the restricted hospital letter stays withheld


def test_a_citizen_cannot_read_anyone_elses_record(ics: Ics, framework: Framework) -> None:
    """Refused as if missing (a 403 would tell a stored id from a made-up one), and audited as refused."""
    with _db(ics).session() as s, pytest.raises(NotFound):
        GovernedRecords(s, framework, citizen_actor(framework, ics.okafor), purpose="self-access").everything(
            ics.stranger)
    with _db(ics).session() as s:
        [refused] = search(s, patient_id=ics.stranger, username=f"patient:{ics.okafor}")
        assert (refused.outcome, details(refused)["rule"]) == ("deny", "deny-not-own-record")


def test_a_citizen_sees_others_looks_at_their_record_not_their_own(ics: Ics, framework: Framework) -> None:
    headers = ics.open_record("dn.williams")
    ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers)
    with _db(ics).session() as s:
        me = CitizenWorkspace(s, framework, ics.okafor)
        me.record()
        log = me.accesses().accesses
    assert {a.who for a in log} == {"Bethan Williams"}


def test_a_citizens_objection_to_one_organisation_takes_effect_for_clinicians_at_once(ics: Ics,
                                                                                       framework: Framework) -> None:
    headers = ics.open_record("dr.patel")
    before = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    assert any("RYC#" in e["resource"]["meta"]["source"] for e in entries(before))
    with _db(ics).session() as s:
        choices = CitizenWorkspace(s, framework, ics.okafor).set_choice("object-org", "RYC")
    assert choices.object_orgs == {"RYC"}
    after = ics.client.get(f"/fhir/Patient/{ics.okafor}/$everything", headers=headers).json()
    assert not any("RYC#" in e["resource"]["meta"]["source"] for e in entries(after))
    community = ics.token("dn.williams")
    refused = ics.client.post(f"/api/access/{ics.okafor}", json={"basis": "explicit-consent"}, headers=community)
    assert refused.status_code == 404 and "objected" not in refused.text  # as if absent (TRUST AC3)


def test_only_roles_granted_it_can_work_the_review_queue_and_the_refusal_is_audited(ics: Ics,
                                                                                    framework: Framework) -> None:
    with _db(ics).session() as s, pytest.raises(AccessDenied):
        IgWorkspace(s, framework, actor_for(framework, "dr.patel")).queue()
    with _db(ics).session() as s:
        assert [e.outcome for e in search(s, username="dr.patel")] == ["deny"]
        assert IgWorkspace(s, framework, actor_for(framework, "ig.morgan")).queue().items == []


def test_an_ig_officers_audit_search_is_itself_audited(ics: Ics, framework: Framework) -> None:
    ics.open_record("dr.patel", found=False)
    with _db(ics).session() as s:
        found = IgWorkspace(s, framework, actor_for(framework, "ig.morgan")).search(10, username="dr.patel")
        assert [e.action for e in found.entries] == ["access:basis:record"] and not found.more
    with _db(ics).session() as s:
        (entry,) = search(s, username="ig.morgan")
    assert entry.action == "governance:audit:search"
    seq = str(found.entries[0].seq)
    assert details(entry) == {"username": "dr.patel", "entries": "1", "newest_seq": seq, "oldest_seq": seq}
