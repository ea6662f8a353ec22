"""Pseudonyms must not change between releases: an analyst joins this year's extract to last year's by
them. They are HMAC-SHA256 of "Type/server id" under the purpose's key, cut to 128 bits, however the
code computes them."""

from __future__ import annotations

import hashlib
import hmac
import json

from sharedcare.governance.pseudonymise import Pseudonymiser, purpose_key

SECRET = "a-test-secret-of-some-length"


def _expected(purpose: str, reference: str) -> str:
    return hmac.new(purpose_key(SECRET, purpose), reference.encode(), hashlib.sha256).hexdigest()[:32]


def test_pseudonyms_are_the_keyed_hmac_of_type_and_id() -> None:
    for purpose in ("secondary-use", "research"):
        pseudonymiser = Pseudonymiser(SECRET, purpose)
        for resource_type, server_id in [("Patient", "p-1"), ("Observation", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
                                         ("Encounter", "é-ünïcode")]:
            assert pseudonymiser.pseudonym(resource_type, server_id) == \
                _expected(purpose, f"{resource_type}/{server_id}")


def test_exported_ids_and_references_use_the_same_pseudonyms() -> None:
    pseudonymiser = Pseudonymiser(SECRET, "secondary-use")
    pseudonymiser.for_person("person-1", None)
    condition = {"resourceType": "Condition", "id": "c-1", "code": {"coding": [{"code": "x"}]},
                 "subject": {"reference": "Patient/source-1"}, "encounter": {"reference": "Encounter/e-1"}}
    out = json.loads(pseudonymiser.encode(pseudonymiser.decode("Condition", json.dumps(condition)), "c-1",
                                          {"Encounter/e-1"}))
    assert out["id"] == _expected("secondary-use", "Condition/c-1")
    assert out["subject"] == {"reference": f"Patient/{_expected('secondary-use', 'Patient/person-1')}"}
    assert out["encounter"] == {"reference": f"Encounter/{_expected('secondary-use', 'Encounter/e-1')}"}
    patient = json.loads(pseudonymiser.patient({"resourceType": "Patient"}, "person-1"))
    assert patient["id"] == _expected("secondary-use", "Patient/person-1")
