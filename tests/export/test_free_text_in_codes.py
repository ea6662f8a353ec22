"""What staff type into coded elements (a local code, a coding's version) never leaves in a pseudonymised
extract, and neither does an event's time of day: analysts get the codes of national terminologies and
the day. The codings left out are counted in the export's summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.builders import SCT, bundle, condition, patient, write_ndjson
from tests.export.conftest import exact_counts, export
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.models import AuditEntry, Resource

NAME, PHONE = "Jane Smith", "07700 900456"
LOCAL = "http://emis.example/local-codes"


def test_local_codes_versions_and_times_of_day_stay_behind(ics: Ics, tmp_path: Path, framework: Framework) -> None:
    obs = {"resourceType": "Observation", "id": "gp-free1", "status": "final",
           "code": {"coding": [{"system": LOCAL, "code": f"Seen with {NAME} {PHONE}", "version": f"by {NAME}"},
                               {"system": SCT, "code": "271649006", "version": f"entered by {NAME}"}]},
           "subject": {"reference": "Patient/gp-okafor"}, "effectiveDateTime": "2026-03-04T10:22:31+00:00",
           "valueCodeableConcept": {"coding": [{"system": LOCAL, "code": "lives-with-daughter-1-High-Street"}]}}
    local_only = {"resourceType": "Observation", "id": "gp-free2", "status": "final",
                  "code": {"coding": [{"system": LOCAL, "code": "JSMITH"}]},
                  "subject": {"reference": "Patient/gp-okafor"}, "effectiveDateTime": "2026-03-04"}
    enc = {"resourceType": "Encounter", "id": "gp-enc-x", "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "subject": {"reference": "Patient/gp-okafor"},
           "period": {"start": "2026-03-04T10:15:00+00:00", "end": "2026-03-04T10:40:00+00:00"}}
    gp = bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
                                   obs, local_only, enc])
    db = ics.client.app.state.database
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "free.ndjson", [gp])]).quarantined == 0

    manifest, files = export(ics.client, ics.token("analyst.chen"))
    text = json.dumps(files)
    for typed in ("Smith", "07700", "High-Street", "JSMITH", "entered by", LOCAL, "10:22", "10:15", "10:40"):
        assert typed not in text, typed
    observation, = (o for o in files["Observation"] if o["code"]["coding"][0]["code"] == "271649006")
    assert observation["code"] == {"coding": [{"system": SCT, "code": "271649006"}]}
    day = observation["effectiveDateTime"]  # the day, moved by the person's date shift: no time of day
    assert len(day) == 10 and "valueCodeableConcept" not in observation
    encounter, = (e for e in files["Encounter"] if e.get("period", {}).get("start") == day)  # the same day
    assert encounter["period"] == {"start": day, "end": day}
    # the observation coded only locally says nothing that may leave: withheld, as invalid FHIR without a code
    summary = manifest["extension"]["https://sharedcare.example/bulk/summary"]
    assert summary["resources_withheld"].get("required-element-uncoded")
    assert "codings_withheld" in summary  # small numbers suppressed for the recipient; exact for IG:
    with db.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:complete")).one()
    details = {d["type"]: d["valueString"] for d in entry.event["entity"][-1]["detail"]}
    assert details["codings_withheld"] == "2"  # of what left: the local code and the local value


@pytest.mark.usefixtures("patients_as_pseudonymised")  # the source, as the pseudonymiser gives it
def test_text_typed_into_a_status_a_media_type_or_the_source_system_stays_behind(ics: Ics) -> None:
    """FHIR's validation takes any text in a `code` element ("seen by Jane Smith" passes it), so a store
    written before ingest checked the required value sets (2026-12-06) may hold it: only a code of the
    element's value set leaves. Ingest now refuses such a code (tests/ingest/test_value_sets.py), so the
    typed codes are put in the stored rows as that store held them."""
    gp = {**ics.token("dr.patel", "user/*.read user/*.write"), "Content-Type": "application/fhir+json"}
    subject = {"reference": "Patient/gp-okafor"}
    sent = [
        {"resourceType": "Encounter", "id": "gp-enc-typed", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": subject, "period": {"start": "2026-03-05"}},
        {"resourceType": "AllergyIntolerance", "id": "gp-allergy-typed",
         "code": {"coding": [{"system": SCT, "code": "91936005"}]}, "patient": subject,
         "reaction": [{"manifestation": [{"coding": [{"system": SCT, "code": "271807003"}]}]}]},
        {"resourceType": "DocumentReference", "id": "gp-doc-typed", "status": "current",
         "type": {"coding": [{"system": SCT, "code": "373942005"}]}, "subject": subject,
         "content": [{"attachment": {"contentType": f"Text/RTF; name={NAME} letter.rtf", "data": "aGVsbG8="}}]},
        {"resourceType": "Condition", "id": "gp-cond-typed",
         "meta": {"source": f"https://fhir.nhs.uk/Id/ods-organization-code|P81001#laptop of {NAME}"},
         "code": {"coding": [{"system": SCT, "code": "38341003"}]}, "subject": subject,
         "onsetAge": {"value": 50, "system": "http://unitsofmeasure.org", "code": "a"}},
    ]
    typed = {"gp-enc-typed": {"status": f"seen by {NAME}"},
             "gp-allergy-typed": {"criticality": f"high, says {NAME}",
                                  "reaction": [{**sent[1]["reaction"][0], "severity": f"phoned {PHONE}"}]},
             "gp-cond-typed": {"onsetAge": {**sent[3]["onsetAge"], "comparator": f"about, per {NAME}"}}}
    export(ics.client, ics.token("analyst.chen"))
    db = ics.client.app.state.database
    uncoded_before = exact_counts(db)["withheld"].get("required-element-uncoded", 0)
    for resource in sent:
        written = ics.client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", headers=gp,
                                 content=json.dumps(resource))
        assert written.status_code == 201, written.text
    with db.session() as session:
        for row in session.scalars(select(Resource).where(Resource.source_id.in_(typed))):
            row.content = {**row.content, **typed[row.source_id]}
            row.content_hash = f"stored before the value set check: {row.content_hash}"[:64]

    _, files = export(ics.client, ics.token("analyst.chen"))
    text = json.dumps(files)
    for typed in ("Smith", "07700", "laptop", "letter.rtf", "seen by"):
        assert typed not in text, typed
    allergy, = (a for a in files["AllergyIntolerance"] if "reaction" in a)
    assert "criticality" not in allergy and allergy["reaction"] == [
        {"manifestation": [{"coding": [{"system": SCT, "code": "271807003"}]}]}]
    document, = (d for d in files["DocumentReference"] if d["type"]["coding"][0]["code"] == "373942005"
                 and d["content"][0]["attachment"]["contentType"] == "text/rtf")
    condition, = (c for c in files["Condition"] if c["code"]["coding"][0]["code"] == "38341003")
    assert condition["meta"]["source"] == "https://fhir.nhs.uk/Id/ods-organization-code|P81001"
    assert condition["onsetAge"] == {"value": 50, "system": "http://unitsofmeasure.org", "code": "a", "unit": "a"}
    # an encounter with no status of FHIR's set is not valid FHIR without one: withheld, and counted
    assert not any(e.get("period", {}).get("start") == "2026-03-05" for e in files.get("Encounter", []))
    withheld = exact_counts(ics.client.app.state.database)["withheld"]
    assert withheld["required-element-uncoded"] == uncoded_before + 1


def test_a_system_typed_without_a_code_stays_behind(ics: Ics, tmp_path: Path, framework: Framework) -> None:
    """A coding's `system` is a URI anyone can type ("urn:seen-by:Jane.Smith:07700900456"): it leaves only
    from the allow-list, code or no code; a coding with a system alone off it is left out and counted."""
    typed = f"urn:seen-by:{NAME.replace(' ', '.')}:{PHONE.replace(' ', '')}"
    clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    condition = {"resourceType": "Condition", "id": "gp-cond-system",
                 "clinicalStatus": {"coding": [{"system": clinical, "code": "active"}, {"system": typed}]},
                 "category": [{"coding": [{"system": typed}]}],
                 "code": {"coding": [{"system": SCT, "code": "195967001"}]},
                 "subject": {"reference": "Patient/gp-okafor"}, "onsetDateTime": "2020-05-01"}
    gp = bundle("P81001", "emis", [patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), condition])
    db = ics.client.app.state.database
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "system.ndjson", [gp])]).quarantined == 0

    _, files = export(ics.client, ics.token("analyst.chen"))
    assert "seen-by" not in json.dumps(files)
    exported, = (c for c in files["Condition"] if c["code"]["coding"][0]["code"] == "195967001")
    assert exported["clinicalStatus"] == {"coding": [{"system": clinical, "code": "active"}]}
    assert "category" not in exported
    with db.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:complete")).one()
    details = {d["type"]: d["valueString"] for d in entry.event["entity"][-1]["detail"]}
    assert details["codings_withheld"] == "2"  # the typed system in the status and in the category


TYPED = "SeenByJane.Smith-mob07700900456"  # a name and a mobile number, typed where a code goes


def test_text_typed_as_a_code_of_loinc_icd_10_or_an_hl7_code_system_stays_behind(
        ics: Ics, tmp_path: Path, framework: Framework) -> None:
    """LOINC, ICD-10, OPCS-4 and HL7's code systems are on the allow-list, but a source's staff can type
    anything in their codes: a code leaves only shaped as its system's codes are (a LOINC code with its
    mod-10 check digit, an ICD-10 or OPCS-4 code, a code of an HL7 value set shipped or a short one), the
    rest is left out and counted. Codes of the right shape leave as they are."""
    category = "http://terminology.hl7.org/CodeSystem/condition-category"
    gp = bundle("P81001", "emis", [
        patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"),
        condition("gp-c9", "Patient/gp-okafor", "44054006", "Type 2 diabetes mellitus", category=[
            {"coding": [{"system": category, "code": TYPED}]},
            {"coding": [{"system": category, "code": "problem-list-item"}]}]),
        {"resourceType": "Observation", "id": "gp-o9", "status": "final", "subject": {"reference": "Patient/gp-okafor"},
         "code": {"coding": [{"system": "http://loinc.org", "code": TYPED + "-L"},
                             {"system": "http://loinc.org", "code": "2345-8"}]},  # not 2345-7: the check digit fails
         "valueCodeableConcept": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": TYPED + "-I"}]},
         "effectiveDateTime": "2026-10-01"},
        {"resourceType": "Observation", "id": "gp-o10", "status": "final",
         "subject": {"reference": "Patient/gp-okafor"},
         "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},  # glucose: a LOINC code
         "valueCodeableConcept": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9"},
                                             {"system": "http://hl7.org/fhir/sid/icd-10", "code": "07700900456"}]},
         "effectiveDateTime": "2026-10-01"},
    ], timestamp="2026-11-02T09:00:00Z")
    db = ics.client.app.state.database
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "typed.ndjson", [gp])]).quarantined == 0

    _, files = export(ics.client, ics.token("analyst.chen"))
    text = json.dumps(files)
    for typed in ("SeenBy", "Smith", "07700", "2345-8"):
        assert typed not in text, typed
    assert [c["category"] for c in files["Condition"] if "category" in c] == [
        [{"coding": [{"system": category, "code": "problem-list-item"}]}]]
    glucose, = (o for o in files["Observation"] if o["code"]["coding"][0]["code"] == "2345-7")
    assert glucose["valueCodeableConcept"] == {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                                           "code": "E11.9"}]}
    with db.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "secondary:export:complete")).one()
    details = {d["type"]: d["valueString"] for d in entry.event["entity"][-1]["detail"]}
    # of what left: the typed category and the glucose's ICD-10 value "07700900456"; the observation coded only
    # with typed LOINC codes says nothing that may leave, and is withheld (invalid FHIR without a code)
    assert details["codings_withheld"] == "2"
    assert details["withheld:required-element-uncoded"] == "1"


@pytest.mark.parametrize(("system", "code", "kept"), [
    ("http://loinc.org", "2345-7", True), ("http://loinc.org", "8480-6", True), ("http://loinc.org", "2345-8", False),
    ("http://loinc.org", "12345678-9", False), ("http://loinc.org", "LA6576-8", False),
    ("http://hl7.org/fhir/sid/icd-10", "E11.9", True), ("http://hl7.org/fhir/sid/icd-10-uk", "I219", True),
    ("http://hl7.org/fhir/sid/icd-10", "E11.-Smith", False), ("http://hl7.org/fhir/sid/icd-10", "e11.9", False),
    ("http://fhir.nhs.uk/CodeSystem/opcs-4", "K40.1", True), ("http://fhir.nhs.uk/CodeSystem/opcs-4", "K401", True),
    ("http://fhir.nhs.uk/CodeSystem/opcs-4", "K40.12", False),
    ("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", True),
    ("http://terminology.hl7.org/CodeSystem/condition-clinical", "Jane", False),  # a shipped value set's: not in it
    ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", True),
    ("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", True),
    ("https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategory", "A", True),
    ("http://terminology.hl7.org/CodeSystem/v2-0203", "mob07700900456", False),
    ("http://terminology.hl7.org/CodeSystem/v2-0203", "SeenByJane.Smith-Ward7", False),  # over 20
    ("http://terminology.hl7.org/CodeSystem/v2-0203", "Jane_Smith", False),
])
def test_a_code_leaves_only_shaped_as_its_system_s_codes(system: str, code: str, kept: bool) -> None:
    from sharedcare.governance.pseudonymise import kept_code
    assert kept_code(system, code) is kept
