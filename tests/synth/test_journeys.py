"""The people of JOURNEYS.md are in every run of 20 or more, with what their journeys need."""

from __future__ import annotations

import base64
from datetime import date, datetime, timedelta

from synth_helpers import SynthRun, patient, resources, segments

AS_OF = date(2026, 11, 1)
OKAFOR, HUGHES, OLIVER, HARRY, DAVID_SNR, DAVID_JNR, PRIYA, _, CLARKE, JADE = (
    f"P{n:07d}" for n in (1, 2, 3, 4, 6, 7, 8, 9, 10, 11))


def day(value: str) -> date:
    return datetime.fromisoformat(value).date()


def codes_of(bundles: list[dict], kind: str) -> set[str]:
    out = set()
    for bundle in bundles:
        for resource in resources(bundle, kind):
            concept = resource.get("code") or resource.get("medicationCodeableConcept")
            out.add(concept["coding"][0]["code"])
    return out


def test_the_manifest_names_the_journey_people(run: SynthRun) -> None:
    journeys = {j["person_key"]: j for j in run.manifest()["journeys"]}
    assert journeys[OKAFOR]["name"] == "Mr Emeka Okafor" and journeys[OKAFOR]["practice"] == "P81001"
    assert journeys[HUGHES]["name"] == "Mrs Margaret Hughes" and journeys[HUGHES]["practice"] == "P81002"
    assert len(journeys) == 11


def test_okafor_has_records_from_gp_hospital_community_ambulance_and_social_care(run: SynthRun) -> None:
    assert {org for org, _ in run.records_of(OKAFOR)} == {"P81001", "RXR", "RYC", "RYA", "LRC"}


def test_okafor_is_81_allergic_to_penicillin_and_his_repeats_show_when_last_issued(run: SynthRun) -> None:
    [gp] = run.bundles_of(OKAFOR, "P81001")
    person = patient(gp)
    born = date.fromisoformat(person["birthDate"])
    assert (person["name"][0]["family"], person["name"][0]["given"][0]) == ("Okafor", "Emeka")
    assert AS_OF.year - born.year - ((AS_OF.month, AS_OF.day) < (born.month, born.day)) == 81
    assert "91936005" in codes_of([gp], "AllergyIntolerance")
    repeats = [m for m in resources(gp, "MedicationStatement") if m["status"] == "active"]
    assert len(repeats) == 5
    assert all(date.fromisoformat(m["extension"][0]["valueDateTime"]) > AS_OF - timedelta(days=60)
               for m in repeats)


def test_okafors_daughter_is_his_next_of_kin_at_the_gp_and_in_the_pas(run: SynthRun) -> None:
    [gp] = run.bundles_of(OKAFOR, "P81001")
    contact = patient(gp)["contact"][0]
    assert contact["name"]["given"] == ["Ngozi"] and contact["relationship"][1]["text"] == "Daughter"
    mrn = next(sid for org, sid in run.records_of(OKAFOR) if org == "RXR")
    his = [m for m in run.messages("pas") if segments(m, "PID")[0][3].startswith(mrn)]
    assert {segments(m, "EVN")[0][1] for m in his} == {"A01", "A03"}
    assert all(segments(m, "NK1")[0][2] == "ADEYEMI^Ngozi^^^Mrs" for m in his)


def test_okafors_discharge_summary_from_last_month_shows_new_and_stopped_medicines(run: SynthRun) -> None:
    [summary] = run.bundles_of(OKAFOR, "RXR")
    encounter = resources(summary, "Encounter")[0]
    assert (AS_OF - day(encounter["period"]["end"])).days == 29
    statements = {m["medicationCodeableConcept"]["text"]: m for m in resources(summary, "MedicationStatement")}
    assert statements["Amlodipine 5mg tablets"]["status"] == "stopped"
    assert "postural hypotension" in statements["Amlodipine 5mg tablets"]["statusReason"][0]["text"]
    assert statements["Temazepam 10mg tablets"]["status"] == "stopped"
    assert statements["Paracetamol 500mg tablets"]["status"] == "active"
    plan = resources(summary, "CarePlan")[0]
    assert plan["activity"][0]["detail"]["performer"][0]["identifier"]["value"] == "P81001"
    letter = resources(summary, "DocumentReference")[0]["content"][0]["attachment"]["data"]
    assert "STOPPED: Amlodipine 5mg tablets" in base64.b64decode(letter).decode()


def test_okafors_hospital_blood_results_came_through_the_lab_feed(run: SynthRun) -> None:
    mrn = next(sid for org, sid in run.records_of(OKAFOR) if org == "RXR")
    his = [m for m in run.messages("lab") if segments(m, "PID")[0][3].startswith(mrn)]
    assert any(obx[3].startswith("1011481000000105^") for m in his for obx in segments(m, "OBX"))


def test_a_district_nurse_visits_okafor_on_tuesdays(run: SynthRun) -> None:
    bundles = run.bundles_of(OKAFOR, "RYC")
    plan = next(p for b in bundles for p in resources(b, "CarePlan"))
    assert "visits on Tuesdays" in plan["description"] and "01632 9602" in plan["description"]
    assert plan["activity"][0]["detail"]["scheduledTiming"]["repeat"]["dayOfWeek"] == ["tue"]
    visits = [e for b in bundles for e in resources(b, "Encounter")]
    assert visits and all(datetime.fromisoformat(v["period"]["start"]).weekday() == 1 for v in visits)


def test_okafors_ambulance_record_has_no_nhs_number_only_his_name_and_birth_date(run: SynthRun) -> None:
    [call] = run.bundles_of(OKAFOR, "RYA")
    person = patient(call)
    assert not [i for i in person["identifier"] if i["system"] == "https://fhir.nhs.uk/Id/nhs-number"]
    assert person["name"][0]["family"] == "Okafor" and person["birthDate"]


def test_mrs_hughes_had_a_recent_stay_and_is_peggy_at_the_hospice_she_no_longer_uses(run: SynthRun) -> None:
    [stay] = run.bundles_of(HUGHES, "RXR")
    assert (AS_OF - day(resources(stay, "Encounter")[0]["period"]["end"])).days < 20
    hospice = run.bundles_of(HUGHES, "NHR")
    assert {patient(b)["name"][0]["given"][0] for b in hospice} == {"Peggy"}
    assert resources(hospice[0], "CarePlan")[0]["status"] == "completed"


def test_twins_share_surname_birth_date_and_address_but_not_given_name(run: SynthRun) -> None:
    oliver, harry = (patient(run.bundles_of(key, "P81003")[0]) for key in (OLIVER, HARRY))
    assert oliver["name"][0]["family"] == harry["name"][0]["family"] == "Bennett"
    assert oliver["birthDate"] == harry["birthDate"] and oliver["address"] == harry["address"]
    assert oliver["name"][0]["given"] != harry["name"][0]["given"]


def test_father_and_son_share_a_name_and_address_and_are_both_known_to_the_hospital(run: SynthRun) -> None:
    father, son = (patient(run.bundles_of(key, "RXR")[0]) for key in (DAVID_SNR, DAVID_JNR))
    assert father["name"][0]["given"] == son["name"][0]["given"] == ["David", "John"]
    assert father["address"][0]["line"] == son["address"][0]["line"]
    assert father["birthDate"] != son["birthDate"]


def test_mrs_sharma_is_still_miss_kapoor_at_the_hospital(run: SynthRun) -> None:
    gp = patient(run.bundles_of(PRIYA, "P81001")[0])
    hospital = patient(run.bundles_of(PRIYA, "RXR")[0])
    assert gp["name"][0]["family"] == "Sharma"
    assert {"use": "maiden", "family": "Kapoor"}.items() <= gp["name"][1].items()
    assert hospital["name"][0]["family"] == "Kapoor"


def test_mr_clarkes_social_care_notes_name_a_neighbour_and_he_is_under_mental_health_care(run: SynthRun) -> None:
    client = next(sid for org, sid in run.records_of(CLARKE) if org == "LRC")
    [row] = [r for r in run.rows() if r["client_id"] == client]
    assert row["third_party_notes"].startswith("Neighbour Mrs Ruth Allen reports")
    plan = next(p for b in run.bundles_of(CLARKE, "RXM") for p in resources(b, "CarePlan"))
    assert "Care coordinator" in plan["description"] and "01632 9603" in plan["description"]


def test_a_young_adult_was_seen_at_the_sexual_health_clinic(run: SynthRun) -> None:
    [visit] = run.bundles_of(JADE, "RYC")
    assert resources(visit, "Encounter")[0]["serviceType"]["text"] == "Sexual health clinic"
    assert codes_of([visit], "Condition") == {"105629000"}
    assert "169470007" in codes_of(run.bundles_of(JADE, "P81004"), "MedicationStatement")
