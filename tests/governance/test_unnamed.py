"""What a record says of a service the reader's role may not know of: "A specialist service", wherever."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from tests.builders import bundle, patient, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.fhir.uk_core import ODS_SYSTEM, server_id
from sharedcare.governance.framework import Framework, hospital_service_system
from sharedcare.governance.gateway import GovernedRecords, actor_for
from sharedcare.governance.unnamed import Unknown, unknown_services, unnamed
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database

TRUST = "Riverside and Dales Mental Health NHS Foundation Trust"
UNNAMED = {"display": "A specialist service"}
SCT = "http://snomed.info/sct"


@pytest.fixture
def unknown(framework: Framework) -> Unknown:
    found = unknown_services(framework, framework.roles["pharmacist"], "FRP01")
    assert found is not None
    return found


def test_whom_each_role_may_not_know_of(framework: Framework) -> None:
    """By `may_know_of_service`: the services with a category of their own the role sees nothing of."""
    def codes(role: str, org: str = "QRD") -> set[str]:
        found = unknown_services(framework, framework.roles[role], org)
        return set(found.codes) if found else set()
    assert codes("pharmacist") == {"RXM", "LRC"}
    assert codes("care_home_staff") == {"RXM"}
    assert codes("paramedic") == codes("gp") == codes("patient") == set()
    assert codes("admin_staff", "RXM") == {"LRC", "RYC", "NHR"}  # never their own organisation


def test_the_service_s_own_record_names_no_one_who_recorded_or_did_anything(unknown: Unknown) -> None:
    encounter = {
        "resourceType": "Encounter", "id": "e", "status": "finished", "class": {"code": "AMB"},
        "identifier": [{"system": "https://fhir.rxm.nhs.uk/Id/visit", "value": "V1"}],
        "subject": {"reference": "Patient/p"},
        "serviceType": {"coding": [{"system": hospital_service_system("RXM", "rio"), "code": "CMHT"}]},
        "participant": [{"individual": {"reference": "Practitioner/x"}}, {"individual": {"display": "Dr Ade"}}],
        "serviceProvider": {"identifier": {"system": ODS_SYSTEM, "value": "RXM"}},
        "location": [{"location": {"reference": "Location/ward-4"}}],
        "reasonReference": [{"reference": "Condition/c1"}],
        "extension": [{"url": "https://fhir.rxm.nhs.uk/StructureDefinition/team", "valueCode": "north"}],
    }
    before = copy.deepcopy(encounter)
    shown = unnamed(encounter, unknown, whole=True)
    assert encounter == before  # never changed in place (it may be a cached document)
    assert "identifier" not in shown and "extension" not in shown
    assert shown["serviceType"] == {"text": "Not shown at your access level"}
    assert shown["participant"] == [{"individual": UNNAMED}, {"individual": UNNAMED}]
    assert shown["serviceProvider"] == UNNAMED and shown["location"] == [{"location": UNNAMED}]
    assert shown["subject"] == {"reference": "Patient/p"}
    assert shown["reasonReference"] == [{"reference": "Condition/c1"}]


@pytest.mark.parametrize("reference", [
    {"identifier": {"system": ODS_SYSTEM, "value": "RXM"}},
    {"display": f"Dr Ade, {TRUST.upper()}"},
    {"reference": f"Organization/{server_id('P81001', 'Organization', 'RXM')}"},
    {"reference": "https://fhir.rxm.nhs.uk/fhir/Practitioner/77"},
    {"reference": "Practitioner/p", "identifier": {"system": "https://fhir.rxm.nhs.uk/Id/staff", "value": "77"}},
], ids=["ods-code", "name", "organization-by-code", "absolute", "staff-identifier"])
def test_another_source_s_reference_naming_the_service_is_unnamed(unknown: Unknown, reference: dict) -> None:
    """A GP's record of a depot the trust gives, its informationSource the trust: the pharmacist reads the
    drug, not who gives it. Another organisation's record is otherwise as it was."""
    depot = {"resourceType": "MedicationStatement", "id": "m", "status": "active",
             "medicationCodeableConcept": {"text": "Paliperidone"}, "subject": {"reference": "Patient/p"},
             "informationSource": reference, "note": [{"authorReference": reference, "text": "given monthly"}],
             "derivedFrom": [{"reference": "Practitioner/p"}]}
    shown = unnamed(depot, unknown, whole=False)
    assert shown["informationSource"] == UNNAMED and shown["note"][0]["authorReference"] == UNNAMED
    assert shown["derivedFrom"] == [{"reference": "Practitioner/p"}]  # the GP's own: not the trust's


def test_a_record_naming_no_such_service_is_served_as_it_is(unknown: Unknown) -> None:
    condition = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                 "code": {"coding": [{"system": SCT, "code": "44054006"}]},
                 "recorder": {"reference": "Practitioner/gp1", "display": "Dr Patel"},
                 "asserter": {"identifier": {"system": ODS_SYSTEM, "value": "RXR"}}}
    assert unnamed(condition, unknown, whole=False) is condition


def test_contained_staff_of_the_service_go(unknown: Unknown) -> None:
    allergy = {"resourceType": "AllergyIntolerance", "id": "a", "patient": {"reference": "Patient/p"},
               "contained": [{"resourceType": "Practitioner", "id": "dr", "name": [{"text": "Dr Ade"}]},
                             {"resourceType": "Medication", "id": "med", "code": {"text": "Clozapine"}}],
               "recorder": {"reference": "#dr"}, "reaction": [{"substance": {"text": "Clozapine"}}]}
    shown = unnamed(allergy, unknown, whole=True)
    assert shown["recorder"] == UNNAMED
    assert [c["id"] for c in shown["contained"]] == ["med"]
    gp_allergy = {**allergy, "contained": [{"resourceType": "Organization", "id": "dr", "name": TRUST}]}
    shown = unnamed(gp_allergy, unknown, whole=False)
    assert "contained" not in shown and shown["recorder"] == UNNAMED
    assert "Mental Health" not in json.dumps(shown)


def test_a_role_given_full_detail_of_alerts_reads_the_service_s_allergy_without_its_free_text(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """A framework may give the pharmacist alerts at tier 3; the trust's allergy is still served to it at
    tier 2 at most: a note or narrative may name the trust ("reaction on Ward 4 at the mental health unit")."""
    pharmacist = framework.roles["pharmacist"]
    tiers = {**pharmacist.tiers, "alerts": 3}
    fw = framework.model_copy(update={"roles": {**framework.roles,
                                                "pharmacist": pharmacist.model_copy(update={"tiers": tiers})}})
    allergy = {"resourceType": "AllergyIntolerance", "id": "rxm-al", "patient": {"reference": "Patient/RXM-4"},
               "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]},
               "note": [{"text": f"reaction on Ward 4, {TRUST}"}]}
    path = write_ndjson(tmp_path / "mh.ndjson", [bundle("RXM", "rio", [
        patient("RXM-4", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), allergy])])
    assert Pipeline(db, fw).ingest_paths([path]).quarantined == 0
    with db.session() as s:
        records = GovernedRecords(s, fw, actor_for(fw, "pharm.khan"))
        records.record_basis(ics.okafor, "explicit-consent", "")
        (served,) = records.everything(ics.okafor).of_type("AllergyIntolerance")
    assert (served.source_name, served.tier) == ("A specialist service", 2)
    assert "note" not in served.content and "Mental Health" not in json.dumps(served.content)


def test_the_service_s_ods_code_goes_from_codings_identifiers_tags_and_displays(unknown: Unknown) -> None:
    """Privacy review of 2026-12-07 (HIGH D1): ODS codes are public, so "RXM" in a Coding or Identifier (an
    extension's value, meta.tag) tells the reader a mental health trust holds a record, as its name would."""
    allergy = {"resourceType": "AllergyIntolerance", "id": "a", "patient": {"reference": "Patient/p"},
               "meta": {"tag": [{"system": ODS_SYSTEM, "code": "rxm"}, {"system": SCT, "code": "1"}],
                        "security": [{"system": ODS_SYSTEM, "code": "RXM"}]},
               "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-Source",
                              "valueIdentifier": {"system": ODS_SYSTEM, "value": "RXM"}}]}
    shown = unnamed(allergy, unknown, whole=True)
    assert "rxm" not in json.dumps(shown).lower(), shown
    assert shown["meta"] == {"tag": [{"system": SCT, "code": "1"}]}
    depot = {"resourceType": "MedicationStatement", "id": "m", "status": "active",
             "medicationCodeableConcept": {"text": "Paliperidone"}, "subject": {"reference": "Patient/p"},
             "informationSource": {"display": "Given by RXM"},
             "note": [{"authorReference": {"display": "Dr Ade (rxm)"}, "text": "monthly"}],
             "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-MedicationSource",
                            "valueCoding": {"system": ODS_SYSTEM, "code": "RXM"}}]}
    shown = unnamed(depot, unknown, whole=False)
    assert shown["informationSource"] == UNNAMED and shown["note"][0]["authorReference"] == UNNAMED
    assert "extension" not in shown and "rxm" not in json.dumps(shown).lower(), shown
    tagged = unnamed({**depot, "meta": {"tag": [{"system": ODS_SYSTEM, "code": "RXM"}]}}, unknown, whole=False)
    assert "meta" not in tagged  # nothing left of it
    # another organisation's code, or a word that only holds the letters, is not the service's
    kept = {**depot, "informationSource": {"display": "Given by RXMA pharmacy"},
            "extension": [{"url": "https://example.org/source", "valueCoding": {"system": ODS_SYSTEM, "code": "RXR"}}],
            "note": []}
    assert unnamed(kept, unknown, whole=False) == kept


def test_a_pharmacist_reads_the_trust_s_allergy_and_the_gp_s_depot_without_the_trust_s_ods_code(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """The reviewer's reproduction (D1): the trust's allergy is served from "A specialist service" with no
    meta.tag or extension naming RXM, and the GP's depot record keeps the drug, not who gives it."""
    allergy = {"resourceType": "AllergyIntolerance", "id": "rxm-al", "patient": {"reference": "Patient/RXM-4"},
               "meta": {"tag": [{"system": ODS_SYSTEM, "code": "RXM"}]},
               "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]},
               "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-Source",
                              "valueIdentifier": {"system": ODS_SYSTEM, "value": "RXM"}}]}
    depot = {"resourceType": "MedicationStatement", "id": "gp-depot", "status": "active",
             "subject": {"reference": "Patient/gp-okafor"}, "medicationCodeableConcept": {"text": "Paliperidone"},
             "informationSource": {"display": "Given by RXM"},
             "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-MedicationSource",
                            "valueCoding": {"system": ODS_SYSTEM, "code": "RXM"}}]}
    paths = [write_ndjson(tmp_path / "mh.ndjson", [bundle("RXM", "rio", [
                 patient("RXM-4", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), allergy])]),
             write_ndjson(tmp_path / "gp.ndjson", [bundle("P81001", "emis", [
                 patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), depot],
                 timestamp="2026-12-01T09:00:00Z")])]
    assert Pipeline(db, framework).ingest_paths(paths).quarantined == 0
    with db.session() as s:
        records = GovernedRecords(s, framework, actor_for(framework, "pharm.khan"))
        records.record_basis(ics.okafor, "explicit-consent", "")
        view = records.everything(ics.okafor)
    (mh,) = view.of_type("AllergyIntolerance")
    assert mh.source_name == "A specialist service"
    served = next(m for m in view.of_type("MedicationStatement") if "Paliperidone" in json.dumps(m.content))
    assert '"RXM"' not in json.dumps(mh.content), mh.content
    assert '"RXM"' not in json.dumps(served.content) and "RXM" not in json.dumps(served.content), served.content
    assert served.content["medicationCodeableConcept"] == {"text": "Paliperidone"}
