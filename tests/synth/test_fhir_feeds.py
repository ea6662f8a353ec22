"""What a FHIR interface engineer notices about the bundles: valid R4, UK Core shaped, one patient each."""

from __future__ import annotations

import base64
from collections import Counter

import nhs_number
from fhir.resources.R4B.bundle import Bundle
from synth_helpers import SynthRun, patient, resources

UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def nhs_numbers(bundle: dict) -> list[str]:
    return [i["value"] for i in patient(bundle)["identifier"] if i["system"] == NHS]


def test_every_bundle_validates_as_fhir(run: SynthRun) -> None:
    bundles = run.bundles()
    assert len(bundles) > 400
    for bundle in bundles:
        Bundle.model_validate(bundle)


def test_every_bundle_is_a_collection_with_one_patient_that_all_other_resources_reference(run: SynthRun) -> None:
    for bundle in run.bundles():
        assert bundle["type"] == "collection" and bundle["timestamp"]
        assert len(resources(bundle, "Patient")) == 1
        subject = {"reference": f"urn:uuid:{patient(bundle)['id']}"}
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
            assert resource["meta"]["profile"] == [UK_CORE + resource["resourceType"]]
            assert resource["meta"]["lastUpdated"]
            if resource["resourceType"] != "Patient":
                assert resource.get("subject", resource.get("patient")) == subject


def test_meta_source_names_the_organisation_and_system_the_file_belongs_to(run: SynthRun) -> None:
    for path in run.files("*/fhir/*.ndjson"):
        org, system = path.parts[-3], path.name.rsplit("-", 1)[0]
        for line in path.read_text(encoding="utf-8").splitlines()[:5]:
            assert f'"source":"https://fhir.nhs.uk/Id/ods-organization-code|{org}#{system}"' in line


def test_resource_ids_are_unique_within_each_organisation(run: SynthRun) -> None:
    seen: Counter[tuple[str, str]] = Counter()
    for bundle in run.bundles():
        org = bundle["meta"]["source"].split("|")[1].split("#")[0]
        for entry in bundle["entry"]:
            if entry["resource"]["resourceType"] != "Patient":
                seen[(org, entry["resource"]["id"])] += 1
    assert max(seen.values()) == 1


def test_nhs_numbers_pass_modulus_11_except_the_mistyped_ones_the_manifest_counts(run: SynthRun) -> None:
    invalid = [n for b in run.bundles() for n in nhs_numbers(b) if not nhs_number.is_valid(n)]
    assert len(invalid) == run.summary.injected_errors.get("invalid_nhs_number", 0)
    assert all(n.startswith("9") and len(n) == 10 for b in run.bundles() for n in nhs_numbers(b))


def test_nhs_numbers_are_unique_to_a_person(run: SynthRun) -> None:
    people_by_number: dict[str, set[str]] = {}
    key_of = {(r["source_org"], r["source_id"]): r["person_key"] for r in run.truth()}
    for bundle in run.bundles("P8100*"):
        org = bundle["meta"]["source"].split("|")[1].split("#")[0]
        for number in nhs_numbers(bundle):
            if nhs_number.is_valid(number):
                people_by_number.setdefault(number, set()).add(key_of[(org, patient(bundle)["id"])])
    assert all(len(keys) == 1 for keys in people_by_number.values())


def test_some_hospital_and_community_records_have_no_nhs_number_but_gp_records_all_do(run: SynthRun) -> None:
    gp = run.bundles("P8100*")
    assert all(nhs_numbers(b) for b in gp)
    others = [b for org in ("RXR", "RYA", "RYC", "RXM", "NHR") for b in run.bundles(org)]
    missing = sum(1 for b in others if not nhs_numbers(b))
    assert 0 < missing < len(others) * 0.3


def test_gp_records_hold_coded_problems_medicines_allergies_and_results(run: SynthRun) -> None:
    kinds: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for bundle in run.bundles("P8100*"):
        for entry in bundle["entry"]:
            resource = entry["resource"]
            kinds[resource["resourceType"]] += 1
            for key in ("code", "medicationCodeableConcept", "vaccineCode"):
                for c in resource.get(key, {}).get("coding", []):
                    codes[f"{c['system']}|{c['code']}"] += 1
    assert {"Condition", "MedicationStatement", "AllergyIntolerance", "Observation", "Immunization"} <= set(kinds)
    for expected in ("http://snomed.info/sct|38341003", "http://snomed.info/sct|44054006",
                     "http://snomed.info/sct|999791000000106", "http://snomed.info/sct|1011481000000105",
                     "http://snomed.info/sct|75367002", "http://snomed.info/sct|91936005",
                     "https://dmd.nhs.uk|325278007"):
        assert codes[expected] > 0, expected


def test_repeat_medicines_carry_their_last_issue_date(run: SynthRun) -> None:
    active = [m for b in run.bundles("P8100*") for m in resources(b, "MedicationStatement") if m["status"] == "active"]
    assert active
    for statement in active:
        assert statement["extension"][0]["url"].endswith("MedicationStatementLastIssueDate")
        assert statement["dosage"][0]["text"]


def test_blood_pressure_has_systolic_and_diastolic_components_in_mm_hg(run: SynthRun) -> None:
    pressures = [o for b in run.bundles() for o in resources(b, "Observation")
                 if o["code"]["coding"][0]["code"] == "75367002"]
    assert pressures
    for bp in pressures:
        assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["72313002", "1091811000000102"]
        assert {c["valueQuantity"]["unit"] for c in bp["component"]} == {"mm[Hg]"}


def test_some_gp_records_keep_a_maiden_name_and_an_old_address(run: SynthRun) -> None:
    uses = Counter(n["use"] for b in run.bundles("P8100*") for n in patient(b)["name"])
    address_uses = Counter(a["use"] for b in run.bundles("P8100*") for a in patient(b)["address"])
    assert uses["maiden"] > 0 and uses["usual"] > 0
    assert address_uses["old"] > 0


def test_a_few_people_also_have_an_older_record_at_a_previous_practice(run: SynthRun) -> None:
    old = [b for b in run.bundles("P8100*") if not patient(b)["active"]]
    assert 0 < len(old) < 0.06 * len(run.bundles("P8100*"))
    for bundle in old:
        assert all(a["use"] == "old" or "end" not in a["period"] for a in patient(bundle)["address"])


def test_discharge_summaries_carry_a_letter_medicines_changes_and_the_gps_follow_up(run: SynthRun) -> None:
    summaries = [b for b in run.bundles("RXR")  # the trust's maternity records of births are no summaries
                 if resources(b, "Encounter")[0].get("serviceType", {}).get("text") != "Maternity: birth"]
    assert summaries
    for bundle in summaries:
        assert resources(bundle, "Encounter")[0]["class"]["code"] == "IMP"
        letter = resources(bundle, "DocumentReference")[0]["content"][0]["attachment"]
        assert letter["contentType"] == "text/plain"
        assert "Discharge summary" in base64.b64decode(letter["data"]).decode("utf-8")
        plan = resources(bundle, "CarePlan")[0]
        assert plan["title"] == "Follow-up requested of the GP" and plan["activity"]


def test_some_mental_health_letters_are_marked_restricted(run: SynthRun) -> None:
    letters = [d for b in run.bundles("RXM") for d in resources(b, "DocumentReference")]
    restricted = [d for d in letters if d["meta"].get("security")]
    assert letters and restricted
    assert restricted[0]["meta"]["security"][0]["code"] == "R"
    assert restricted[0]["meta"]["profile"] == [UK_CORE + "DocumentReference"]


def test_ambulance_calls_record_vital_signs_and_a_clinical_impression(run: SynthRun) -> None:
    for bundle in run.bundles("RYA"):
        if len(bundle["entry"]) == 1:  # an identified unknown patient's record sent again (synth/unnamed.py)
            assert resources(bundle, "Patient")
            continue
        assert resources(bundle, "Encounter")[0]["class"]["code"] == "EMER"
        vitals = {o["code"]["coding"][0]["code"] for o in resources(bundle, "Observation")}
        assert {"364075005", "86290005", "431314004", "75367002"} <= vitals
        assert resources(bundle, "Condition")[0]["verificationStatus"]["coding"][0]["code"] == "provisional"


def test_mmr_is_given_only_since_the_uk_brought_it_in(run: SynthRun) -> None:
    """A man born in 1945 showed MMR doses in 1946 and 1949 (journeys review, 2026-12-07): MMR came to the UK
    schedule in October 1988, so a clinician reading the demo saw data no record could hold."""
    mmr = [entry["resource"]["occurrenceDateTime"] for bundle in run.bundles("P8100*") for entry in bundle["entry"]
           if entry["resource"]["resourceType"] == "Immunization"
           and entry["resource"]["vaccineCode"]["coding"][0]["code"] == "61153008"]
    assert mmr, "children still have their MMR"
    assert min(mmr) >= "1988-10-01", min(mmr)
