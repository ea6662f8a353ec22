"""Code lists and code systems the synthetic feeds use, in one place so feeds and tests agree.

SNOMED CT concepts are used for conditions, findings, procedures, allergies and results; dm+d VMP
codes for medicines. Codes were checked against published code lists where we could (see the note
on medicines); a concept we could not confirm is left out rather than invented.
"""

from __future__ import annotations

from dataclasses import dataclass

SNOMED = "http://snomed.info/sct"
DMD = "https://dmd.nhs.uk"
UCUM = "http://unitsofmeasure.org"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
LOCAL_PATIENT_ID = "https://fhir.nhs.uk/Id/local-patient-identifier"  # + "/{ODS}"

UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"
UK_CORE_EXT = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-"
NHS_NUMBER_VERIFICATION = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
ETHNIC_CATEGORY = "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland"

CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
CONTACT_ROLE = "http://terminology.hl7.org/CodeSystem/v2-0131"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


@dataclass(frozen=True)
class Code:
    """A SNOMED CT concept (or, for medicines, a dm+d VMP)."""

    code: str
    display: str


@dataclass(frozen=True)
class Drug:
    """A dm+d VMP with the dosage a prescriber would usually write for it."""

    code: str
    display: str
    dose: str
    system: str = DMD


@dataclass(frozen=True)
class Test:
    """A numeric result: SNOMED code, UCUM unit, reference range and a plausible spread."""

    code: str
    display: str
    unit: str
    low: float | None
    high: float | None
    mean: float
    sd: float
    decimals: int = 0


# --- Long-term conditions (SNOMED CT, as named in the brief) ---------------------------------
DIABETES = Code("44054006", "Type 2 diabetes mellitus")
COPD = Code("13645005", "Chronic obstructive lung disease")
HEART_FAILURE = Code("84114007", "Heart failure")
ASTHMA = Code("195967001", "Asthma")
DEMENTIA = Code("52448006", "Dementia")
DEPRESSION = Code("35489007", "Depressive disorder")
CKD = Code("709044004", "Chronic kidney disease")
HYPERTENSION = Code("38341003", "Hypertensive disorder")
AF = Code("49436004", "Atrial fibrillation")
SCHIZOPHRENIA = Code("58214004", "Schizophrenia")
BIPOLAR = Code("13746004", "Bipolar disorder")

CHLAMYDIA = Code("105629000", "Chlamydial infection")
COC_PILL = Code("169470007", "Combined oral contraceptive pill")
# Vulnerable adult (finding): a concept NHS care records use for adult safeguarding (870384001, used before, is no
# SCTID: its Verhoeff check digit fails, and ingest refuses it)
SAFEGUARDING_CONCERN = Code("417430008", "Vulnerable adult")

# Reasons for admission, ambulance impressions and community problems.
FALL = Code("217082002", "Accidental fall")
PNEUMONIA = Code("233604007", "Pneumonia")
UTI = Code("68566005", "Urinary tract infectious disease")
CELLULITIS = Code("128045006", "Cellulitis")
CHEST_PAIN = Code("29857009", "Chest pain")
DYSPNOEA = Code("267036007", "Dyspnoea")
SYNCOPE = Code("271594007", "Syncope")
APPENDICITIS = Code("74400008", "Appendicitis")
FRACTURED_NECK_OF_FEMUR = Code("5913000", "Fracture of neck of femur")
LEG_ULCER = Code("95344007", "Ulcer of lower extremity")
PRESSURE_ULCER = Code("399912005", "Pressure ulcer")

ADMISSION_REASONS_OLDER = (FALL, PNEUMONIA, UTI, CELLULITIS, CHEST_PAIN, FRACTURED_NECK_OF_FEMUR)
ADMISSION_REASONS_YOUNGER = (APPENDICITIS, CHEST_PAIN, CELLULITIS, PNEUMONIA)
AMBULANCE_IMPRESSIONS = (FALL, CHEST_PAIN, DYSPNOEA, SYNCOPE)

# --- Procedures ---------------------------------------------------------------------------------
APPENDICECTOMY = Code("80146002", "Appendicectomy")
PALLIATIVE_CARE = Code("103735009", "Palliative care")
DISTRICT_NURSE_VISIT = Code("439708006", "Home visit")
GP_CONSULTATION = Code("11429006", "Consultation")

# --- Allergies and reactions ---------------------------------------------------------------------
PENICILLIN_ALLERGY = Code("91936005", "Allergy to penicillin")
PEANUT_ALLERGY = Code("91935009", "Allergy to peanut")
LATEX_ALLERGY = Code("300916003", "Latex allergy")
ASPIRIN_ALLERGY = Code("293586001", "Allergy to aspirin")
NO_KNOWN_ALLERGY = Code("716186003", "No known allergy")
RASH = Code("271807003", "Eruption of skin")
URTICARIA = Code("126485001", "Urticaria")
ANAPHYLAXIS = Code("39579001", "Anaphylaxis")
WHEEZE = Code("56018004", "Wheezing")

# --- Medicines (dm+d VMPs) -----------------------------------------------------------------------
# These VMP ids are the SNOMED CT clinical-drug concepts dm+d shares with the international release,
# checked against published code lists (not against a dm+d release file). Medicines whose VMP id we
# could not confirm (statins, anticoagulants, inhalers, antidepressants) are left out rather than
# given invented codes; the COC pill is coded with the SNOMED CT concept governance classifies on.
METFORMIN = Drug("325278007", "Metformin 500mg tablets", "One tablet twice a day with meals")
EMPAGLIFLOZIN = Drug("703896005", "Empagliflozin 10mg tablets", "One tablet each morning")
AMLODIPINE = Drug("319283006", "Amlodipine 5mg tablets", "One tablet once a day")
RAMIPRIL = Drug("318902004", "Ramipril 5mg capsules", "One capsule once a day")
LISINOPRIL = Drug("318859000", "Lisinopril 10mg tablets", "One tablet once a day")
LOSARTAN = Drug("318956006", "Losartan 50mg tablets", "One tablet once a day")
BISOPROLOL = Drug("318590006", "Bisoprolol 5mg tablets", "One tablet each morning")
FUROSEMIDE = Drug("317972000", "Furosemide 40mg tablets", "One tablet each morning")
SPIRONOLACTONE = Drug("318056008", "Spironolactone 25mg tablets", "One tablet once a day")
PARACETAMOL = Drug("322236009", "Paracetamol 500mg tablets", "Two tablets up to four times a day when required")
AMITRIPTYLINE = Drug("321746008", "Amitriptyline 25mg tablets", "One tablet at night")
TEMAZEPAM = Drug("321152004", "Temazepam 10mg tablets", "One tablet at night")
MORPHINE_MR = Drug("36126511000001106", "Morphine 10mg modified-release tablets", "One tablet twice a day")
COC = Drug(COC_PILL.code, COC_PILL.display, "One tablet daily for 21 days, then 7 pill-free days", SNOMED)

LTC_DRUGS: dict[str, tuple[tuple[Drug, float], ...]] = {
    # condition code -> (drug, chance the person is on it)
    DIABETES.code: ((METFORMIN, 0.85), (EMPAGLIFLOZIN, 0.3)),
    HYPERTENSION.code: ((AMLODIPINE, 0.6), (RAMIPRIL, 0.3), (LOSARTAN, 0.15), (LISINOPRIL, 0.1)),
    HEART_FAILURE.code: ((BISOPROLOL, 0.8), (FUROSEMIDE, 0.8), (RAMIPRIL, 0.6), (SPIRONOLACTONE, 0.3)),
    AF.code: ((BISOPROLOL, 0.7),),
    DEPRESSION.code: ((AMITRIPTYLINE, 0.15),),
    DEMENTIA.code: ((TEMAZEPAM, 0.05),),
}
LTC_DRUG_NOTES = (
    "Dispensed weekly in a blister pack by Riverside Community Pharmacy",
    "Patient reports taking this only once a day",
    "Review at next annual long-term condition review",
    "Do not issue early - see consultation notes",
)

# --- Results ---------------------------------------------------------------------------------------
HBA1C = Test("999791000000106", "Haemoglobin A1c level - IFCC standardised", "mmol/mol", 20, 41, 58, 10)
EGFR = Test("1011481000000105", "eGFR (estimated glomerular filtration rate) using creatinine CKD-EPI "
            "equation per 1.73 square metres", "mL/min/{1.73_m2}", 60, None, 72, 18)
CREATININE = Test("1000731000000107", "Serum creatinine level", "umol/L", 59, 104, 95, 30)
SODIUM = Test("1000661000000107", "Serum sodium level", "mmol/L", 133, 146, 138, 3)
POTASSIUM = Test("1000651000000109", "Serum potassium level", "mmol/L", 3.5, 5.3, 4.3, 0.5, 1)
HAEMOGLOBIN = Test("1022431000000105", "Haemoglobin estimation", "g/L", 115, 165, 128, 16)
WHITE_CELLS = Test("1022541000000102", "Total white blood count", "10*9/L", 4.0, 11.0, 9.5, 3.5, 1)
CRP = Test("1001371000000100", "Serum C reactive protein level", "mg/L", None, 5, 40, 45)

BLOOD_PRESSURE = Code("75367002", "Blood pressure")
SYSTOLIC = Code("72313002", "Systolic arterial pressure")
DIASTOLIC = Code("1091811000000102", "Diastolic arterial pressure")
HEART_RATE = Test("364075005", "Heart rate", "/min", 60, 100, 88, 16)
RESPIRATORY_RATE = Test("86290005", "Respiratory rate", "/min", 12, 20, 19, 4)
OXYGEN_SATURATION = Test("431314004", "Peripheral oxygen saturation", "%", 94, 100, 95, 3)
TEMPERATURE = Test("386725007", "Body temperature", "Cel", 36.0, 37.8, 37.1, 0.7, 1)
GCS = Test("248241002", "Glasgow coma score", "{score}", 15, 15, 14.6, 0.8)
WOUND_FINDING = Code("225552003", "Wound finding")
WOUND_LENGTH = Test("401238003", "Length of wound", "cm", None, None, 4.0, 1.5, 1)
WOUND_WIDTH = Test("401239006", "Width of wound", "cm", None, None, 2.5, 1.0, 1)

RENAL_PANEL = (SODIUM, POTASSIUM, CREATININE, EGFR)
BLOOD_COUNT = (HAEMOGLOBIN, WHITE_CELLS)

# --- Immunisations (SNOMED CT vaccine products) ------------------------------------------------------
INFLUENZA_VACCINE = Code("46233009", "Influenza virus vaccine")
PNEUMOCOCCAL_VACCINE = Code("333598008", "Pneumococcal vaccine")
COVID_VACCINE = Code("1119349007", "SARS-CoV-2 mRNA vaccine")
MMR_VACCINE = Code("61153008", "Measles, mumps and rubella vaccine")

# --- Documents -------------------------------------------------------------------------------------
DISCHARGE_SUMMARY = Code("373942005", "Discharge summary")
CLINICAL_LETTER = Code("371531000", "Report of clinical encounter")

# UK Core ethnic category (England 2001 census codes), with the share of England's population.
ETHNIC_CATEGORIES: tuple[tuple[str, str, float], ...] = (
    ("A", "British, Mixed British", 0.74),
    ("B", "Irish", 0.01),
    ("C", "Any other White background", 0.06),
    ("H", "Indian or British Indian", 0.033),
    ("J", "Pakistani or British Pakistani", 0.027),
    ("K", "Bangladeshi or British Bangladeshi", 0.011),
    ("R", "Chinese", 0.008),
    ("N", "African", 0.025),
    ("M", "Caribbean", 0.011),
    ("G", "Any other mixed background", 0.03),
    ("S", "Any other ethnic group", 0.025),
)
