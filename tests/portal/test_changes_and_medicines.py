"""Journeys 2 and 6 over HTTP: the GP's "what changed" since she last saw Mr Okafor (hospital changes
grouped by organisation beside her own list and results), and the pharmacist's medicines reconciliation
(every source's say in one table, discrepancies flagged). Both are reads of the record through the
decision point: a basis first, audited, and an organisation whose agreement is suspended disappears."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.builders import bundle, medication, patient, write_ndjson
from tests.discharge_feed import FOLLOW_UP, ingest_discharge
from tests.results_feed import ingest_results
from tests.small_ics import Ics

from sharedcare.governance.agreements import set_agreement
from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.portal.medicines import Statement, dose_key, medicine_name
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

HOSPITAL = "Riverside University Hospitals NHS Trust"


def _db(ics: Ics) -> Database:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    return database


@pytest.fixture
def stay(ics: Ics, framework: Framework, tmp_path: Path) -> Ics:
    ingest_results(_db(ics), framework, tmp_path)
    ingest_discharge(_db(ics), framework, tmp_path)
    return ics


def _open(ics: Ics, username: str) -> None:
    ics.client.post("/login", data={"username": username, "password": "demo"})
    ics.client.post(f"/record/{ics.okafor}/basis", data={"basis": "explicit-consent"})


def _text(html: str) -> str:
    """The page's main content as a reader sees it: tags gone, whitespace collapsed."""
    main = html.split('id="maincontent"', 1)[1]
    return " ".join(re.sub(r"<[^>]+>", " ", main).split())


def _section(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def test_the_gp_sees_what_the_hospital_changed_since_she_last_saw_him(stay: Ics) -> None:
    _open(stay, "dr.patel")
    page = stay.client.get(f"/record/{stay.okafor}/changes")
    assert page.status_code == 200
    text = _text(page.text)
    assert "What changed since 1 Sep 2026" in text
    assert "last encounter with this person (GP consultation, 1 Sep 2026)" in text
    hospital = _section(text, f"{HOSPITAL} Hospital Medicines", "Whole record About this service")
    # medicines: each change beside the GP's own list
    assert ("Gliclazide Change Started " + HOSPITAL + " says Gliclazide 40mg tablets, One tablet each morning: "
            "taking since 19 Oct 2026") in hospital
    assert "Your list Not on your list" in hospital
    assert ("Metformin Change Stopped " + HOSPITAL + " says Metformin 500mg tablets, One tablet twice a day with "
            "meals: stopped on 16 Oct 2026 (Acute kidney injury, eGFR 47)") in hospital
    assert "Your list Metformin 500mg tablets, One tablet daily: taking" in hospital
    assert "Ramipril Change Dose or product changed" in hospital
    assert "Your list Ramipril 5mg capsules, One capsule once a day: taking, last issued 20 Sep 2026" in hospital
    assert ("Amoxicillin Change Course finished " + HOSPITAL + " says Amoxicillin 500mg capsules, One capsule "
            "three times a day: finished on 20 Oct 2026") in hospital
    assert "1 other medicine recorded by " + HOSPITAL + " since then matches your list" in hospital  # atorvastatin
    # results beside the GP's own last value of the same test
    assert "Result 62 mmol/mol Your last result 58 mmol/mol on 14 May 2026" in hospital
    assert "Result 47 mL/min Your last result 55 mL/min on 14 May 2026" in hospital
    # the rest of the stay: new problem, discharge summary, follow-up asked of the GP, the admission
    assert "Acute kidney injury Date 15 Oct 2026" in hospital
    assert "Discharge summary Read document Discharged after a fall" in hospital
    assert FOLLOW_UP.replace("&", "&amp;") in hospital
    assert "Admission to ward 7 Date 15 Oct 2026" in hospital
    # nothing from before the date, and nothing of the GP's own as a change
    assert "Depressive disorder" not in text and "Type 2 diabetes" not in text
    assert not re.search(r"Riverside Medical Centre (GP practice )?Medicines", text)


def test_a_chosen_date_narrows_the_view_and_a_wrong_one_says_what_is_wrong(stay: Ics) -> None:
    _open(stay, "dr.patel")
    url = f"/record/{stay.okafor}/changes"
    later = _text(stay.client.post(url, data={"since_day": "19", "since_month": "10", "since_year": "2026"}).text)
    assert "What changed since 19 Oct 2026" in later and "the date you chose" in later
    assert "Gliclazide" in later and "Discharge summary" in later
    assert "Acute kidney injury Date" not in later and "Admission to ward 7" not in later  # both from the 15th
    wrong = stay.client.post(url, data={"since_day": "31", "since_month": "2", "since_year": "2026"})
    assert wrong.status_code == 400
    assert "There is a problem" in wrong.text and "The date must be a real date" in wrong.text
    assert stay.client.post(url, data={"since_day": "1", "since_month": "9", "since_year": "2026"},
                            csrf=False).status_code == 403  # type: ignore[call-arg]


def test_both_views_need_a_basis_first_and_return_to_where_the_user_was_going(stay: Ics) -> None:
    stay.client.post("/login", data={"username": "pharm.khan", "password": "demo"})
    for view in ("changes", "medicines"):
        gate = stay.client.get(f"/record/{stay.okafor}/{view}")
        assert "Why are you opening this record?" in gate.text and "Metformin" not in gate.text
        assert f'name="then" value="{view}"' in gate.text
    done = stay.client.post(f"/record/{stay.okafor}/basis", data={"basis": "explicit-consent", "then": "medicines"},
                            follow_redirects=False)
    assert done.headers["location"] == f"/record/{stay.okafor}/medicines"
    odd = stay.client.post(f"/record/{stay.okafor}/basis", data={"basis": "explicit-consent",
                                                                 "then": "//elsewhere.example"},
                           follow_redirects=False)
    assert odd.headers["location"] == f"/record/{stay.okafor}"


def test_the_pharmacist_sees_every_source_in_one_table_with_discrepancies_flagged_first(stay: Ics) -> None:
    _open(stay, "pharm.khan")
    page = stay.client.get(f"/record/{stay.okafor}/medicines")
    assert page.status_code == 200
    text = _text(page.text)
    assert "5 medicines recorded by 2 organisations. 3 need checking" in text
    names = [m.strip() for m in re.findall(r'scope="rowgroup" colspan="5"><span class="sc-cell">([A-Za-z ]+)',
                                           page.text)]
    assert names == ["Gliclazide", "Metformin", "Ramipril", "Amoxicillin", "Atorvastatin"]  # discrepancies first
    metformin = _section(text, "Metformin Discrepancy", "Ramipril Discrepancy")
    assert (f"Stopped by {HOSPITAL} on 16 Oct 2026 (Acute kidney injury, eGFR 47), but still current at "
            "Riverside Medical Centre.") in metformin
    assert ("Source Riverside Medical Centre GP practice As recorded Metformin 500mg tablets "
            "One tablet daily") in metformin
    assert f"Source {HOSPITAL} Hospital As recorded Metformin 500mg tablets" in metformin
    ramipril = _section(text, "Ramipril Discrepancy", "Atorvastatin")
    assert ("Different product or dose: Riverside Medical Centre says Ramipril 5mg capsules, One capsule once a day; "
            f"{HOSPITAL} says Ramipril 2.5mg capsules, One capsule once a day.") in ramipril
    assert "Last issued 20 Sep 2026" in ramipril
    gliclazide = _section(text, "Gliclazide Discrepancy", "Metformin")
    assert f"Only {HOSPITAL} lists this as current; not on the list from Riverside Medical Centre." in gliclazide
    amoxicillin = _section(text, "Amoxicillin", "Atorvastatin")  # a finished course: nothing to reconcile
    assert "Discrepancy" not in amoxicillin and "finished until 20 Oct 2026" in amoxicillin
    atorvastatin = text.split("Atorvastatin", 1)[1]
    assert "Discrepancy" not in atorvastatin and atorvastatin.count("taking since 10 Jan 2020") == 2


def test_both_views_are_audited_reads_and_follow_the_agreements(stay: Ics, framework: Framework) -> None:
    _open(stay, "dr.patel")  # (the basis form leads on to the record: one read)
    stay.client.get(f"/record/{stay.okafor}/changes")
    stay.client.get(f"/record/{stay.okafor}/medicines")
    with _db(stay).session() as s:
        reads = s.scalars(select(AuditEntry).where(AuditEntry.action == "clinical:record:read",
                                                   AuditEntry.username == "dr.patel")).all()
        assert len(reads) == 3 and all(r.patient_id == stay.okafor and r.outcome == "permit" for r in reads)
        set_agreement(s, framework, "RXR", "suspended", by="ig.morgan", reason="a breach reported")
        s.commit()
    changes = _text(stay.client.get(f"/record/{stay.okafor}/changes").text)
    medicines = _text(stay.client.get(f"/record/{stay.okafor}/medicines").text)
    for text in (changes, medicines):
        assert HOSPITAL not in text and "Gliclazide" not in text
        assert "information from organisations whose sharing agreement is not in force" in text
    assert "Nothing new from other organisations" not in changes  # the community trust's care plan remains


def test_a_medicine_name_carrying_markup_is_escaped(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    from tests.builders import bundle, write_ndjson
    from tests.discharge_feed import _medicine

    from sharedcare.ingest.pipeline import Pipeline

    script = "<i>alert(1)</i>"  # markup ingest lets through (a script itself is refused there)
    feed = bundle("RXR", "epr", [_medicine("rx-x", "Patient/MRN1", f"Ramipril 5mg {script}", script, "active",
                                           "2026-10-17", asserted="2026-10-20T15:00:00Z")])
    report = Pipeline(_db(ics), framework).ingest_paths([write_ndjson(tmp_path / "x.ndjson", [feed])])
    assert report.quarantined == 0, report.quarantine
    _open(ics, "dr.patel")
    for view in ("changes", "medicines"):
        page = ics.client.get(f"/record/{ics.okafor}/{view}").text
        assert script not in page and "&lt;i&gt;alert(1)&lt;/i&gt;" in page, view


def test_a_medicine_is_its_name_before_the_strength_and_common_dose_wordings_agree() -> None:
    assert medicine_name("Ramipril 2.5mg capsules") == medicine_name("ramipril 5mg capsules") == "Ramipril"
    assert medicine_name("Co-codamol 30mg/500mg tablets") == "Co-codamol"

    def said(product: str, dose: str) -> Statement:
        from datetime import date
        return Statement(product, "", dose, "active", "", "", "", "", "", "GP", "P81001", "", "", date(2026, 1, 1))

    assert dose_key(said("Metformin 500mg tablets", "One tablet daily")) == \
        dose_key(said("Metformin 500mg tablets", "One tablet once a day"))
    assert dose_key(said("Metformin 500mg tablets", "One tablet daily")) != \
        dose_key(said("Metformin 500mg tablets", "One tablet twice daily"))


def test_a_medicine_issued_after_another_source_stopped_it_says_so(stay: Ics, framework: Framework,
                                                                   tmp_path: Path) -> None:
    """The hospital stopped metformin on 16 October; the practice issued it again on 2 November. That is
    what a pharmacist most needs to see, not only that the lists disagree."""
    gp = bundle("P81001", "emis", [
        patient("gp-okafor", "9434765919", "Okafor", "Emeka", "1945-03-02"),
        {**medication("gp-m1", "Patient/gp-okafor", "Metformin 500mg tablets"),
         "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-"
                               "MedicationStatementLastIssueDate", "valueDateTime": "2026-11-02"}]},
    ], timestamp="2026-11-02T10:00:00Z")
    report = Pipeline(_db(stay), framework).ingest_paths([write_ndjson(tmp_path / "reissue.ndjson", [gp])])
    assert report.quarantined == 0, report.quarantine
    _open(stay, "pharm.khan")
    text = _text(stay.client.get(f"/record/{stay.okafor}/medicines").text)
    assert (f"Stopped by {HOSPITAL} on 16 Oct 2026 (Acute kidney injury, eGFR 47), but still current at "
            "Riverside Medical Centre, and issued since by Riverside Medical Centre on 2 Nov 2026.") in text


def _warfarin(mid: str, subject: str, mg: float, text: str = "") -> dict[str, object]:
    """Warfarin as a GP system or an EPR sends it: the dose coded (doseAndRate, timing, route), the
    words (`dosage.text`) only sometimes."""
    dosage: dict[str, object] = {
        "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["EVE"]}},
        "route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006", "display": "Oral"}]},
        "doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg"}}]}
    if text:
        dosage["text"] = text
    return {"resourceType": "MedicationStatement", "id": mid, "status": "active", "subject": {"reference": subject},
            "effectivePeriod": {"start": "2026-10-20"},
            "medicationCodeableConcept": {"coding": [{"system": "https://dmd.nhs.uk", "code": "319733000",
                                                      "display": "Warfarin 1mg tablets"}]},
            "dosage": [dosage]}


def _send_warfarin(ics: Ics, framework: Framework, tmp_path: Path, gp_mg: float, hospital_mg: float,
                   gp_text: str = "", hospital_text: str = "") -> None:
    feeds = [bundle("P81001", "emis", [_warfarin("gp-w", "Patient/gp-okafor", gp_mg, gp_text)],
                    timestamp="2026-11-20T10:00:00Z"),
             bundle("RXR", "epr", [_warfarin("rx-w", "Patient/MRN1", hospital_mg, hospital_text)],
                    timestamp="2026-11-20T10:00:00Z")]
    paths = [write_ndjson(tmp_path / f"warfarin-{i}.ndjson", [feed]) for i, feed in enumerate(feeds)]
    report = Pipeline(_db(ics), framework).ingest_paths(paths)
    assert report.quarantined == 0, report.quarantine


def test_a_coded_dose_is_shown_and_3mg_at_the_gp_beside_5mg_at_the_hospital_is_flagged(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """Both lists coded warfarin's dose and neither wrote it in words: the page said "taking" twice, with no
    dose and no discrepancy."""
    _send_warfarin(ics, framework, tmp_path, 3, 5.0)
    _open(ics, "pharm.khan")
    text = _text(ics.client.get(f"/record/{ics.okafor}/medicines").text)
    warfarin = _section(text, "Warfarin Discrepancy", "Metformin")
    assert ("Different product or dose: Riverside Medical Centre says Warfarin 1mg tablets, 3 mg, once a day "
            f"in the evening, oral; {HOSPITAL} says Warfarin 1mg tablets, 5 mg, once a day in the evening, "
            "oral.") in warfarin
    assert "As recorded Warfarin 1mg tablets 3 mg, once a day in the evening, oral Status taking" in warfarin
    # the whole record's medication rows say the dose too
    record = _text(ics.client.get(f"/record/{ics.okafor}").text)
    assert "Detail 5 mg, once a day in the evening, oral" in record


def test_the_same_coded_dose_written_in_different_words_is_not_flagged(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    _send_warfarin(ics, framework, tmp_path, 3, 3.0, gp_text="3mg each evening", hospital_text="Three mg at 6pm")
    _open(ics, "pharm.khan")
    text = _text(ics.client.get(f"/record/{ics.okafor}/medicines").text)
    assert "Warfarin Discrepancy" not in text
    assert "Warfarin 1mg tablets 3mg each evening" in text and "Warfarin 1mg tablets Three mg at 6pm" in text


def test_the_same_words_over_different_coded_doses_are_flagged_naming_both_doses(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """The words are shown, as the prescriber wrote them; the coded doses are what is compared when both
    sources send one, and the flag says what each coded."""
    _send_warfarin(ics, framework, tmp_path, 3, 5, gp_text="As directed by the anticoagulation clinic",
                   hospital_text="As directed by the anticoagulation clinic")
    _open(ics, "pharm.khan")
    text = _text(ics.client.get(f"/record/{ics.okafor}/medicines").text)
    assert ("Different product or dose: Riverside Medical Centre says Warfarin 1mg tablets, As directed by the "
            "anticoagulation clinic (coded dose: 3 mg, once a day in the evening, oral); ") in text
    assert "As recorded Warfarin 1mg tablets As directed by the anticoagulation clinic Status" in text
    _open(ics, "dr.patel")
    changes = _text(ics.client.get(f"/record/{ics.okafor}/changes").text)
    assert "Warfarin Change Dose or product changed" in changes


def test_a_dose_in_words_is_its_schedule_route_and_limits() -> None:
    from sharedcare.portal.present import dosage_text
    assert dosage_text({"doseAndRate": [{"doseRange": {"low": {"value": 1, "unit": "tablet"},
                                                       "high": {"value": 2, "unit": "tablet"}}}],
                        "timing": {"repeat": {"frequency": 1, "period": 6, "periodUnit": "h"}},
                        "asNeededCodeableConcept": {"text": "pain"},
                        "maxDosePerPeriod": {"numerator": {"value": 8, "unit": "tablet"},
                                             "denominator": {"value": 24, "unit": "h"}}}) == \
        "1 to 2 tablet, every 6 hours, when needed for pain, at most 8 tablet in 24 hours"
    assert dosage_text({"doseAndRate": [{"doseQuantity": {"value": 2.50, "unit": "mg"}}],
                        "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                        "asNeededBoolean": True}) == "2.5 mg, twice a day, when needed"
    assert dosage_text({"doseAndRate": [{"doseQuantity": {"value": 70, "unit": "mg"}}],
                        "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk",
                                              "dayOfWeek": ["mon"]}}}) == "70 mg, once a week on Monday"
    assert dosage_text({"text": "One tablet daily", "doseAndRate": [{"doseQuantity": {"value": 1}}]}) == \
        "One tablet daily"


def _hba1c(oid: str, subject: str, day: str, value: int) -> dict[str, object]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "999791000000106",
                                 "display": "Haemoglobin A1c level"}]},
            "effectiveDateTime": day, "valueQuantity": {"value": value, "unit": "mmol/mol"}}


def test_what_changed_opens_when_another_organisation_dates_a_problem_by_its_year_alone(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """FHIR allows "2019" for an onset; the page answered 500. A year reads as its first day, as pages show it."""
    feed = bundle("RXR", "epr", [
        {"resourceType": "Condition", "id": "rx-htn", "subject": {"reference": "Patient/MRN1"},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active"}]},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertension"}]},
         "onsetDateTime": "2019"},
        {"resourceType": "Condition", "id": "rx-ckd", "subject": {"reference": "Patient/MRN1"},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "431855005",
                              "display": "Chronic kidney disease stage 1"}]},
         "onsetDateTime": "2026-11"},
        _hba1c("rx-a1c", "Patient/MRN1", "2026-11", 61)], timestamp="2026-11-20T10:00:00Z")
    gp = bundle("P81001", "emis", [_hba1c("gp-a1c", "Patient/gp-okafor", "2025", 57)],
                timestamp="2026-11-20T10:00:00Z")
    report = Pipeline(_db(ics), framework).ingest_paths([write_ndjson(tmp_path / "partial.ndjson", [feed]),
                                                         write_ndjson(tmp_path / "partial-gp.ndjson", [gp])])
    assert report.quarantined == 0, report.quarantine
    _open(ics, "dr.patel")
    page = ics.client.get(f"/record/{ics.okafor}/changes")
    assert page.status_code == 200
    text = _text(page.text)
    assert "Chronic kidney disease stage 1 Date Nov 2026" in text  # since 1 Nov 2026 or earlier: counts
    assert "Hypertension" not in text  # 2019: before the date
    assert "Result 61 mmol/mol Your last result 57 mmol/mol on 2025" in text  # each dated as sent
    # a month alone may be its last day: since 15 Nov, "2026-11" may be new, and is shown
    later = _text(ics.client.post(f"/record/{ics.okafor}/changes",
                                  data={"since_day": "15", "since_month": "11", "since_year": "2026"}).text)
    assert "Chronic kidney disease stage 1 Date Nov 2026" in later and "Hypertension" not in later


def test_what_changed_opens_when_the_viewers_own_last_encounter_is_dated_by_month(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    feed = bundle("P81001", "emis", [
        {"resourceType": "Encounter", "id": "gp-e-month", "status": "finished",
         "subject": {"reference": "Patient/gp-okafor"},
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                   "display": "ambulatory"},
         "type": [{"text": "GP home visit"}], "period": {"start": "2026-11"}}], timestamp="2026-11-20T10:00:00Z")
    report = Pipeline(_db(ics), framework).ingest_paths([write_ndjson(tmp_path / "month.ndjson", [feed])])
    assert report.quarantined == 0, report.quarantine
    _open(ics, "dr.patel")
    page = ics.client.get(f"/record/{ics.okafor}/changes")
    assert page.status_code == 200
    assert "What changed since 1 Nov 2026" in _text(page.text)
    assert "(GP home visit, Nov 2026)" in _text(page.text)


def test_what_changed_shows_an_old_problem_its_source_recorded_since_the_date_and_says_when_it_was_recorded(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """A hospital writes at this admission that he has had epilepsy since 2015: news to the GP, but the page
    counted a problem from its onset only and left it out (HAZ-14's open item until 2026-12-07). One the
    hospital recorded before the date is still left out, however recently it reached the shared record."""
    def problem(cid: str, code: str, display: str, onset: str, recorded: str) -> dict[str, object]:
        return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/MRN1"},
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "active"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
                "onsetDateTime": onset, "recordedDate": recorded}

    feed = bundle("RXR", "epr", [problem("rx-epilepsy", "84757009", "Epilepsy", "2015-03-01", "2026-11-20"),
                                 problem("rx-gout", "90560007", "Gout", "2012-05-01", "2020-01-10")],
                  timestamp="2026-11-20T10:00:00Z")
    report = Pipeline(_db(ics), framework).ingest_paths([write_ndjson(tmp_path / "old.ndjson", [feed])])
    assert report.quarantined == 0, report.quarantine
    _open(ics, "dr.patel")
    text = _text(ics.client.post(f"/record/{ics.okafor}/changes",
                                 data={"since_day": "1", "since_month": "11", "since_year": "2026"}).text)
    assert "What changed since 1 Nov 2026" in text
    assert "Epilepsy Date 1 Mar 2015 recorded by its source 20 Nov 2026" in text
    assert "Gout" not in text  # recorded in 2020: not new since November, though it arrived today



def test_what_changed_counts_an_undated_item_by_the_uk_day_it_reached_the_record(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """An allergy sent with no date of its own counts from when its source recorded it: at 23:30 UTC on 31 July
    that is 1 August in the UK (summer time), so since 1 August it is new. The page compared the UTC day and
    left it out; one recorded an hour earlier (31 July, UK time) stays out."""
    def allergy(aid: str, code: str, display: str) -> dict[str, object]:
        return {"resourceType": "AllergyIntolerance", "id": aid, "patient": {"reference": "Patient/MRN1"},
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                               "allergyintolerance-clinical", "code": "active"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]}}

    late = bundle("RXR", "epr", [allergy("rx-latex", "300916003", "Latex allergy")],
                  timestamp="2026-07-31T23:30:00Z")
    before = bundle("RXR", "epr", [allergy("rx-nuts", "91935009", "Allergy to peanuts")],
                    timestamp="2026-07-31T22:30:00Z")
    report = Pipeline(_db(ics), framework).ingest_paths([write_ndjson(tmp_path / "late.ndjson", [late]),
                                                         write_ndjson(tmp_path / "before.ndjson", [before])])
    assert report.quarantined == 0, report.quarantine
    _open(ics, "dr.patel")
    text = _text(ics.client.post(f"/record/{ics.okafor}/changes",
                                 data={"since_day": "1", "since_month": "8", "since_year": "2026"}).text)
    assert "What changed since 1 Aug 2026" in text
    assert "Latex allergy" in text  # reached the record at 00:30 on 1 August, UK time
    assert "Allergy to peanuts" not in text  # 23:30 on 31 July, UK time: before the date
