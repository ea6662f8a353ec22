"""HL7 v2 ingest: what an interface analyst checks when a trust's PAS and lab feeds are switched on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from tests.fhir_bundles import resources
from tests.small_ics import Ics

from sharedcare.fhir.uk_core import server_id
from sharedcare.governance.classify import classification_key, classify
from sharedcare.governance.framework import Framework
from sharedcare.ingest import hl7v2
from sharedcare.ingest.hl7v2_map import TREATMENT_FUNCTION
from sharedcare.ingest.messages import MessageError
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Quarantine, Resource
from sharedcare.synth import generate

GOOD_NHS = "9434765919"
OTHER_NHS = "9990000018"
UCUM = "http://unitsofmeasure.org"


def msh(kind: str, control: str, when: str = "20260110090000", app: str = "PAS", facility: str = "RXR",
        charset: str = "8859/1", processing: str = "P") -> str:
    return (f"MSH|^~\\&|{app}|{facility}|SHAREDCARE|QRD|{when}||{kind}|{control}|{processing}|2.4|||AL|NE|GBR|"
            f"{charset}")


def pid(mrn: str = "H100", nhs: str | None = GOOD_NHS, name: str = "OKAFOR^Emeka^Chukwudi^^Mr",
        born: str = "19450302", sex: str = "M", address: str = "14 Mill Lane^^Riverside^^RV3 7QT^GBR^H") -> str:
    ids = f"{mrn}^^^RXR^MR" + (f"~{nhs}^^^NHS^NH" if nhs else "")
    return f"PID|1||{ids}||{name}||{born}|{sex}|||{address}||01632 960457^PRN^PH~07700 900123^PRN^CP"


def pv1(visit: str = "V100", kind: str = "I", admitted: str = "", discharged: str = "",
        ward: str = "Ward 3 (Respiratory)^^^RXR", service: str = "") -> str:
    fields = ["PV1", "1", kind, ward] + [""] * 42
    fields[7], fields[10] = "^KENT^Laura^^^Dr", service
    fields[19], fields[44], fields[45] = visit, admitted, discharged
    return "|".join(fields)


def adt(event: str, control: str, when: str, *segments: str) -> str:
    return message(msh(f"ADT^{event}^ADT_A01", control, when), f"EVN|{event}|{when}", *segments)


def message(*segments: str) -> str:
    return "\r".join(segments) + "\r"


def write_hl7(path: Path, messages: list[str], encoding: str = "latin-1") -> Path:
    """Segments end with CR and each message with LF, as file-drop interfaces write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(m + "\n" for m in messages).encode(encoding))
    return path


def admission(control: str = "PAS1", when: str = "20260110090000", visit: str = "V100", **patient: Any) -> str:
    return adt("A01", control, when, pid(**patient), "PD1|||Riverside Medical Centre^^P81001",
               "NK1|1|ADEYEMI^Ngozi^^^Mrs|CHD^Daughter^HL70063||07700 900461||N^Next-of-Kin^HL70131",
               pv1(visit, admitted=when))


def discharge(control: str = "PAS2", when: str = "20260115160000", admitted: str = "20260110090000") -> str:
    return adt("A03", control, when, pid(), "PD1|||Riverside Medical Centre^^P81001",
               "NK1|1|ADEYEMI^Ngozi^^^Mrs|CHD^Daughter^HL70063||07700 900461||N^Next-of-Kin^HL70131",
               pv1(admitted=admitted, discharged=when))


def results(control: str = "LAB1", mrn: str = "H100") -> str:
    return message(
        msh("ORU^R01^ORU_R01", control, "20260110114000", app="LAB"),
        pid(mrn),
        pv1(),
        "ORC|RE|P1|F1||CM",
        "OBR|1|P1|F1|UE^Urea and electrolytes^L|||20260110094000|||||||||^KENT^Laura^^^Dr||||||20260110114000|||C",
        "NTE|1|L|Sample haemolysed \\T\\ delayed in transit",
        "OBX|1|NM|1000651000000109^Serum potassium level^SCT||5.9|mmol/L|3.5-5.3|H|||C|||20260110094000",
        "NTE|1|L|Repeat in 2\\X2D\\3 days",
        "OBX|2|NM|1001371000000100^Serum C reactive protein level^SCT||<5|mg/L|<5|N|||F",
        "OBX|3|NM|1011481000000105^eGFR^SCT||72|mL/min/1.73m2|>60|N|||F",
        "ZLB|1|local lab extension",
        "OBX|4|TX|FILM^Blood film comment^L||Target cells \\F\\ occasional\\.br\\No blasts seen||||||F",
    )


def _contents(db: Database, resource_type: str) -> dict[str, dict[str, Any]]:
    with db.session() as s:
        rows = s.scalars(select(Resource).where(Resource.resource_type == resource_type))
        return {r.source_id: r.content for r in rows}


def _count(db: Database, model: type) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_an_admission_becomes_a_uk_core_patient_and_encounter(db: Database, framework: Framework,
                                                              tmp_path: Path) -> None:
    a01 = admission(when="20260928074000", address="Smith \\T\\ Sons Yard^^Riverside^^RV3 7QT^GBR^H")
    a01 = a01.replace("\rPD1", "\rZPI|1|local PAS extension|ignored\rPD1")
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [a01])])
    assert (report.accepted, report.quarantined) == (2, 0), report.quarantine

    patient = _contents(db, "Patient")["H100"]
    assert patient["id"] == server_id("RXR", "Patient", "H100")
    assert patient["meta"]["source"] == "https://fhir.nhs.uk/Id/ods-organization-code|RXR#pas"
    assert {(i["system"], i["value"]) for i in patient["identifier"]} == {
        ("https://fhir.nhs.uk/Id/nhs-number", GOOD_NHS), ("https://fhir.rxr.nhs.uk/Id/mrn", "H100")}
    assert patient["name"] == [{"use": "official", "family": "OKAFOR", "given": ["Emeka", "Chukwudi"],
                                "prefix": ["Mr"]}]
    assert (patient["gender"], patient["birthDate"]) == ("male", "1945-03-02")
    assert patient["address"][0]["line"] == ["Smith & Sons Yard"] and patient["address"][0]["postalCode"] == "RV3 7QT"
    assert {(t["value"], t["use"]) for t in patient["telecom"]} == {("01632 960457", "home"),
                                                                    ("07700 900123", "mobile")}
    assert patient["generalPractitioner"][0]["identifier"] == {
        "system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "P81001"}
    (kin,) = patient["contact"]
    assert kin["name"]["family"] == "ADEYEMI" and "Daughter" in json.dumps(kin["relationship"])

    encounter = _contents(db, "Encounter")["V100"]
    assert encounter["status"] == "in-progress"
    assert encounter["class"]["code"] == "IMP"
    assert encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert encounter["period"] == {"start": "2026-09-28T06:40:00+00:00"}  # 07:40 BST is 06:40 UTC
    assert encounter["location"][0]["location"]["display"] == "Ward 3 (Respiratory)"
    assert encounter["serviceProvider"]["identifier"]["value"] == "RXR"
    with db.session() as s:
        record = s.scalars(select(PatientRecord)).one()
        recorded = s.scalars(select(Resource.recorded_at).where(Resource.source_id == "V100")).one()
    assert (record.source_org, record.source_id, record.nhs_number) == ("RXR", "H100", GOOD_NHS)
    assert recorded.isoformat().startswith("2026-09-28T06:40:00")


def test_an_attendance_without_pd1_nk1_or_evn_is_still_stored(db: Database, framework: Framework,
                                                               tmp_path: Path) -> None:
    a04 = message(msh("ADT^A04^ADT_A01", "PAS9", "20260201223000"), pid(nhs=None),
                  pv1("V900", kind="E", admitted="20260201221500", ward="ED Majors^^^RXR"))
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [a04])])
    assert (report.accepted, report.quarantined) == (2, 0), report.quarantine
    encounter = _contents(db, "Encounter")["V900"]
    assert (encounter["class"]["code"], encounter["status"]) == ("EMER", "in-progress")
    patient = _contents(db, "Patient")["H100"]
    assert "generalPractitioner" not in patient and "contact" not in patient
    assert [i["system"] for i in patient["identifier"]] == ["https://fhir.rxr.nhs.uk/Id/mrn"]


def test_a_gum_clinic_attendance_is_sexual_health_by_its_hospital_service(db: Database, framework: Framework,
                                                                         ics: Ics, tmp_path: Path) -> None:
    """PV1-10 is the visit's treatment function: 360, genitourinary medicine, is a code the framework lists
    as sexual health, so a paramedic (sexual health 0) does not see the attendance; a local code is not one."""
    visits = [adt("A04", f"PAS{n}", "20261101100000", pid(), pv1(visit, kind="O", admitted="20261101100000",
                                                                  ward="Clinic 4^^^RXR", service=service))
              for n, (visit, service) in enumerate((("V360", "360"), ("VMED", "MED")))]
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", visits)])
    assert report.quarantined == 0, report.quarantine
    gum = _contents(db, "Encounter")["V360"]
    assert gum["serviceType"] == {"coding": [{"system": TREATMENT_FUNCTION, "code": "360"}]}
    headers = ics.open_record("para.evans")
    seen = ics.client.get(f"/fhir/Encounter?patient={ics.okafor}", headers=headers).json()
    assert [i["value"] for e in resources(seen) for i in e.get("identifier", [])] == ["VMED"]


def _clinic_visits(*codes: str) -> list[str]:
    return [adt("A04", f"PAS{n}", "20261101100000", pid(), pv1(f"V{code}", kind="O", admitted="20261101100000",
                                                                 ward="Clinic 4^^^RXR", service=code))
            for n, code in enumerate(codes)]


def test_a_local_gum_code_from_a_pas_the_framework_maps_is_sexual_health(db: Database, framework: Framework,
                                                                         ics: Ics, tmp_path: Path) -> None:
    """RXR's PAS sends its own codes in PV1-10 ("GUM", "SHC"), not treatment functions: the framework lists
    them (organisations.RXR.service_codes.pas), so a GUM clinic attendance is sexual health, withheld from the
    paramedic (sexual health 0) as the national 360 is; "MED", mapped to general medicine (300), stays an
    ordinary encounter. Before, a local code was dropped: the attendance was an encounter the paramedic read."""
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7",
                                                             _clinic_visits("GUM", "SHC", "MED"))])
    assert report.quarantined == 0, report.quarantine
    gum = _contents(db, "Encounter")["VGUM"]
    assert gum["serviceType"] == {"coding": [{"system": "https://fhir.rxr.nhs.uk/CodeSystem/pas-hospital-service",
                                              "code": "GUM"}]}
    with db.session() as s:
        categories = {source_id: category for source_id, category in s.execute(
            select(Resource.source_id, Resource.category).where(Resource.resource_type == "Encounter"))}
    assert categories == {"VGUM": "sexual_health", "VSHC": "sexual_health", "VMED": "encounters"}
    seen = ics.client.get(f"/fhir/Encounter?patient={ics.okafor}", headers=ics.open_record("para.evans")).json()
    assert [i["value"] for e in resources(seen) for i in e.get("identifier", [])] == ["VMED"]


def test_a_local_code_the_framework_does_not_list_for_a_mapped_pas_is_held(db: Database, framework: Framework,
                                                                           tmp_path: Path) -> None:
    """Deny by default: a system whose local codes the framework lists sends no others. An unlisted one
    ("STI", a new clinic) might be a sensitive service: the message is held naming PV1-10, the code and the
    framework key to list it under, and nothing of it is stored; a national three-digit code still passes."""
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7",
                                                             _clinic_visits("STI", "360"))])
    (held,) = report.quarantine
    assert "PV1-10" in held["where"] and "'STI'" in held["reason"]
    assert "organisations.RXR.service_codes.pas" in held["reason"]
    assert set(_contents(db, "Encounter")) == {"V360"}


def test_a_local_code_from_a_system_without_a_table_is_kept_and_reported(db: Database, framework: Framework,
                                                                         tmp_path: Path) -> None:
    """A system the framework lists no codes for keeps today's flow (the visit is filed by its type) but the
    local code is stored in the system's own code system, and the report counts it, so that the operator
    lists the codes: a table added later moves what is stored (the classification key holds the tables)."""
    without = framework.organisations["RXR"].model_copy(update={"service_codes": {}})
    bare = framework.model_copy(update={"organisations": {**framework.organisations, "RXR": without}})
    report = Pipeline(db, bare).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", _clinic_visits("GUM"))])
    assert report.quarantined == 0, report.quarantine
    assert report.notes == {hl7v2.UNMAPPED_SERVICE: 1}
    with db.session() as s:
        row = s.scalars(select(Resource).where(Resource.resource_type == "Encounter")).one()
        assert (row.content["serviceType"]["coding"][0]["code"], row.category) == ("GUM", "encounters")
        assert classify(row.content, "acute", framework) == "sexual_health"
        assert classification_key(bare) != classification_key(framework)


def test_a_file_message_from_a_system_the_framework_does_not_declare_is_held_naming_msh_3(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Operations review of 2026-12-07 (HIGH): files read MSH-3 as the listener does (`hl7v2._source_of`), and a
    GUM clinic visit under a system the framework does not declare missed that system's service_codes and was
    filed as an ordinary encounter. It is held naming MSH-3 and what the framework declares; a blank MSH-3 names
    the organisation's HL7 v2 system only when it has one (RXR has two: the PAS and the lab)."""
    def gum_visit(control: str, app: str) -> str:
        return message(msh("ADT^A04^ADT_A01", control, "20261101100000", app=app), "EVN|A04|20261101100000", pid(),
                       pv1(f"V{control}", kind="O", admitted="20261101100000", ward="Clinic 4^^^RXR", service="GUM"))

    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7",
                                                             [gum_visit("PAS1", "PAS-LIVE"), gum_visit("PAS2", "")])])
    live, blank = report.quarantine
    assert live["where"].endswith("(MSH-10 PAS1), MSH-3") and blank["where"].endswith("(MSH-10 PAS2), MSH-3")
    assert live["reason"].startswith("sending application 'PAS-LIVE' (MSH-3) is not an HL7 v2 system of RXR in the "
                                     "framework (organisations.RXR.systems lists lab, pas)")
    assert blank["reason"] == ("no sending application (MSH-3) to say which HL7 v2 system of RXR sent it "
                               "(organisations.RXR.systems lists lab, pas)")
    assert _contents(db, "Encounter") == {}
    only_pas = framework.organisations["RXR"].model_copy(update={"systems": {"pas": "hl7v2", "epr": "fhir"}})
    one = framework.model_copy(update={"organisations": {**framework.organisations, "RXR": only_pas}})
    report = Pipeline(db, one).ingest_paths([write_hl7(tmp_path / "RXR" / "blank.hl7", [gum_visit("PAS3", "")])])
    assert report.quarantined == 0, report.quarantine
    with db.session() as s:
        assert s.execute(select(Resource.source_id, Resource.category)
                         .where(Resource.resource_type == "Encounter")).all() == [("VPAS3", "sexual_health")]


def test_names_arrive_intact_in_the_character_set_msh_18_declares(db: Database, framework: Framework,
                                                                  tmp_path: Path) -> None:
    latin = admission("PAS1", mrn="H1", nhs=None, name="JONES^Siân")
    undeclared = admission("PAS2", mrn="H2", nhs=None, name="O'BRIEN^Zoë", visit="V2").replace("|8859/1\r", "|\r")
    utf8 = admission("PAS3", mrn="H3", nhs=None, name="MÜLLER^Renée", visit="V3").replace("|8859/1\r",
                                                                                          "|UNICODE UTF-8\r")
    path = tmp_path / "RXR" / "pas.hl7"
    path.parent.mkdir()
    path.write_bytes(latin.encode("latin-1") + b"\n" + undeclared.encode("latin-1") + b"\n" + utf8.encode() + b"\n")
    report = Pipeline(db, framework).ingest_paths([path])
    assert report.quarantined == 0, report.quarantine
    names = {sid: (p["name"][0]["family"], p["name"][0]["given"][0]) for sid, p in _contents(db, "Patient").items()}
    assert names == {"H1": ("JONES", "Siân"), "H2": ("O'BRIEN", "Zoë"), "H3": ("MÜLLER", "Renée")}



def test_a_message_declaring_8859_1_whose_bytes_are_utf8_is_held_naming_the_field(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Read as declared, 'Siobhán' was stored as 'SiobhÃ¡n', answered AA: a name no search finds and a banner
    that misnames her (clinical fidelity review, 2026-12-07). The C1 check caught Ë but not á, é, í, ó, ú."""
    wrong = admission("PAS1", mrn="H1", nhs=None, name="KELLY^Siobhán")  # declares 8859/1
    path = tmp_path / "RXR" / "pas.hl7"
    path.parent.mkdir()
    path.write_bytes(wrong.encode("utf-8") + b"\n")
    report = Pipeline(db, framework).ingest_paths([path])
    assert (report.accepted, report.quarantined) == (0, 1)
    (held,) = report.quarantine
    assert held["where"].endswith("message 1 (MSH-10 PAS1), PID-5")
    assert "declares 8859/1 in MSH-18, but its bytes are UTF-8" in held["reason"]


def test_a_hex_escape_is_read_in_the_messages_character_set(db: Database, framework: Framework,
                                                            tmp_path: Path) -> None:
    """\\XC3A1\\ in a UTF-8 message is 'á': python-hl7 made each byte a character, 'Siobhán' stored as
    'SiobhÃ¡n' (clinical fidelity review, 2026-12-07). In ISO 8859-1 \\XE1\\ is 'á' as before; bytes that are
    no text in the declared set are held naming the segment."""
    utf8 = admission("PAS1", mrn="H1", nhs=None, name="KELLY^Siobh\\XC3A1\\n").replace("|8859/1\r", "|UNICODE UTF-8\r")
    latin = admission("PAS2", mrn="H2", nhs=None, name="BRADY^Siobh\\XE1\\n", visit="V2")
    broken = admission("PAS3", mrn="H3", nhs=None, name="NOLAN^Siobh\\XC3\\n", visit="V3").replace(
        "|8859/1\r", "|UNICODE UTF-8\r")
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [utf8, latin, broken])])
    names = {sid: p["name"][0]["given"][0] for sid, p in _contents(db, "Patient").items()}
    assert names == {"H1": "Siobhán", "H2": "Siobhán"}
    (held,) = report.quarantine
    assert held["where"].endswith("message 3 (MSH-10 PAS3), PID")
    assert "is not text in the message's character set (utf-8)" in held["reason"]

def test_utf8_without_msh_18_is_read_as_utf8_and_noted(db: Database, framework: Framework, tmp_path: Path) -> None:
    """A message without MSH-18 whose bytes are UTF-8 beyond ASCII is read as UTF-8, not ISO 8859-1: an update
    so sent stored "ZOÃ" and a control character over the name its admission had stored right."""
    first = admission(name="ZOË^Zoë")  # declared 8859/1, and so encoded
    update = adt("A08", "PAS2", "20260111090000", pid(name="ZOË^Zoë", address="1 Quay Street^^Riverside^^RV1 1AA"),
                 "PD1|||Riverside Medical Centre^^P81001").replace("|8859/1\r", "|\r")
    path = tmp_path / "RXR" / "pas.hl7"
    path.parent.mkdir()
    path.write_bytes(first.encode("latin-1") + b"\n" + update.encode("utf-8") + b"\n")
    report = Pipeline(db, framework).ingest_paths([path])
    assert (report.accepted, report.quarantined) == (3, 0), report.quarantine
    patient = _contents(db, "Patient")["H100"]
    assert (patient["name"][0]["family"], patient["name"][0]["given"][0]) == ("ZOË", "Zoë")
    assert patient["address"][0]["line"] == ["1 Quay Street"]  # the update was stored
    assert report.to_json()["notes"] == {hl7v2.READ_AS_UTF8: 1}


def _late_update_feed(tmp_path: Path) -> Path:
    """An A01, its A03, then an A08 sent late: its event time (EVN-2) is before the discharge."""
    late_a08 = adt("A08", "PAS3", "20260112120000", pid(address="9 New Road^^Riverside^^RV9 9ZZ^GBR^H"),
                   pv1(admitted="20260110090000"))
    return write_hl7(tmp_path / "RXR" / "pas.hl7", [admission(), discharge(), late_a08])


def test_a_late_update_older_than_the_discharge_is_stale_and_does_not_reopen_the_stay(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    report = Pipeline(db, framework).ingest_paths([_late_update_feed(tmp_path)])
    assert report.quarantined == 0 and report.stale >= 1
    encounter = _contents(db, "Encounter")["V100"]
    assert encounter["status"] == "finished"
    assert encounter["period"] == {"start": "2026-01-10T09:00:00+00:00", "end": "2026-01-15T16:00:00+00:00"}
    with db.session() as s:
        assert s.scalars(select(Resource.version).where(Resource.source_id == "V100")).one() == 2



def test_a_discharge_in_the_hour_the_clocks_go_back_is_ordered_by_arrival_not_dropped(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """An A08 at 01:50 BST (00:50 UTC), then the A03 at 01:30 GMT (01:30 UTC, really later), both without an
    offset: read alike as BST, the discharge looked older and was dropped as stale, the stay left open
    (clinical fidelity review, 2026-12-07). A time in the repeated hour may be either: a version stored
    within the hour is ordered by arrival, and the report says so. One more than the hour older is stale."""
    admitted = "20261024220000"
    update = adt("A08", "PAS2", "20261025015000", pid(), pv1("V700", admitted=admitted))
    discharged = adt("A03", "PAS3", "20261025013000", pid(), pv1("V700", admitted=admitted,
                                                                 discharged="20261025013000"))
    late = adt("A08", "PAS4", "20261025003000", pid(), pv1("V700", admitted=admitted))  # 00:30 BST: before both
    pipeline = Pipeline(db, framework)
    pipeline.ingest_paths([write_hl7(tmp_path / "RXR" / "a.hl7", [admission(visit="V700", when=admitted), update])])
    report = pipeline.ingest_paths([write_hl7(tmp_path / "RXR" / "b.hl7", [discharged])])
    assert (report.accepted, report.stale) == (1, 0) and report.notes == {hl7v2.AMBIGUOUS_TIME: 1}  # the stay
    assert _contents(db, "Encounter")["V700"]["status"] == "finished"
    assert pipeline.ingest_paths([write_hl7(tmp_path / "RXR" / "c.hl7", [late])]).stale == 1
    assert _contents(db, "Encounter")["V700"]["status"] == "finished"

def test_a_late_update_older_than_the_discharge_does_not_overwrite_the_patient(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    path = _late_update_feed(tmp_path)
    report = Pipeline(db, framework).ingest_paths([path])
    assert report.stale == 2
    assert _contents(db, "Patient")["H100"]["address"][0]["postalCode"] == "RV3 7QT"
    with db.session() as s:  # the MPI keeps the newer address too, not the late message's
        assert s.scalars(select(PatientRecord.postcode).where(PatientRecord.source_id == "H100")).one() == "RV3 7QT"
    assert Pipeline(db, framework).ingest_paths([path]).accepted == 0


def test_newer_updates_in_one_file_each_change_the_patient_record_and_the_last_one_stays(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """A move, then a change of surname, sent after the admission in the same file (so stored in one
    transaction): the MPI record holds both, read back from the store, and matching later in the same
    run meets the record as changed (a second registration under a new MRN, without an NHS number,
    joins the same person by the new surname and address)."""
    address = "9 New Road^^Riverside^^RV9 9ZZ^GBR^H"
    moved = adt("A08", "PAS2", "20260111090000", pid(address=address), pv1(admitted="20260110090000"))
    renamed = adt("A08", "PAS3", "20260112090000", pid(name="ADEBAYO^Emeka^Chukwudi^^Mr", address=address),
                  pv1(admitted="20260110090000"))
    again = admission("PAS4", "20260113090000", visit="V9", mrn="K7", nhs=None, name="ADEBAYO^Emeka^Chukwudi^^Mr",
                      address=address)
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7",
                                                             [admission(), moved, renamed, again])])
    assert (report.quarantined, report.stale) == (0, 0), report.quarantine
    with db.session() as s:
        records = {r.source_id: r for r in s.scalars(select(PatientRecord))}
    assert (records["H100"].postcode, records["H100"].family) == ("RV9 9ZZ", "ADEBAYO")
    assert (records["K7"].person_id, records["K7"].link_method) == (records["H100"].person_id, "probabilistic")


def test_a11_marks_the_admission_entered_in_error_and_a13_reopens_a_discharge(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    cancel = adt("A11", "PAS2", "20260110110000", pid(), pv1(admitted="20260110090000"))
    pipeline = Pipeline(db, framework)
    pipeline.ingest_paths([write_hl7(tmp_path / "RXR" / "a.hl7", [admission(), cancel])])
    assert _contents(db, "Encounter")["V100"]["status"] == "entered-in-error"

    reopen = adt("A13", "PAS5", "20260116090000", pid(),
                 pv1("V200", admitted="20260110090000", discharged="20260115160000"))
    pipeline.ingest_paths([write_hl7(tmp_path / "RXR" / "b.hl7", [
        admission("PAS3", visit="V200"), discharge("PAS4").replace("|V100|", "|V200|"), reopen])])
    encounter = _contents(db, "Encounter")["V200"]
    assert encounter["status"] == "in-progress" and "end" not in encounter["period"]


def test_lab_results_keep_units_ranges_flags_and_notes(db: Database, framework: Framework, tmp_path: Path) -> None:
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "lab.hl7", [results()])])
    assert (report.accepted, report.quarantined) == (5, 0), report.quarantine
    observations = _contents(db, "Observation")
    potassium = observations["F1-1"]
    assert potassium["meta"]["source"].endswith("RXR#lab")
    assert potassium["valueQuantity"] == {"value": 5.9, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}
    assert potassium["referenceRange"] == [{"low": {"value": 3.5, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
                                            "high": {"value": 5.3, "unit": "mmol/L", "system": UCUM,
                                                     "code": "mmol/L"}}]
    assert potassium["interpretation"][0]["coding"][0]["code"] == "H"
    assert potassium["note"] == [{"text": "Repeat in 2-3 days"}]
    assert potassium["status"] == "amended"
    assert potassium["code"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert potassium["effectiveDateTime"] == "2026-01-10T09:40:00+00:00"
    crp = observations["F1-2"]
    assert crp["valueQuantity"]["comparator"] == "<" and crp["referenceRange"][0]["high"]["value"] == 5
    egfr = observations["F1-3"]
    assert egfr["valueQuantity"] == {"value": 72, "unit": "mL/min/1.73m2"}  # not UCUM, so not coded as UCUM
    assert egfr["referenceRange"][0]["low"]["value"] == 60
    assert observations["F1-4"]["valueString"] == "Target cells | occasional\nNo blasts seen"

    (lab_report,) = _contents(db, "DiagnosticReport").values()
    assert lab_report["status"] == "amended"
    assert lab_report["conclusion"] == "Sample haemolysed & delayed in transit"
    assert lab_report["issued"] == "2026-01-10T11:40:00+00:00"
    assert lab_report["result"] == [{"reference": f"Observation/{server_id('RXR', 'Observation', f'F1-{n}')}"}
                                    for n in range(1, 5)]
    assert lab_report["encounter"] == {"reference": f"Encounter/{server_id('RXR', 'Encounter', 'V100')}"}
    assert lab_report["category"][0]["coding"][0]["code"] == "laboratory"
    # the lab's PID links the patient but does not replace the PAS's Patient
    assert _contents(db, "Patient") == {}
    assert _count(db, PatientRecord) == 1


def test_an_invalid_date_is_quarantined_naming_pid_7_and_the_next_message_is_stored(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    broken = admission("PAS1", mrn="H1", born="19451302")
    path = write_hl7(tmp_path / "RXR" / "pas.hl7", [broken, admission("PAS2", mrn="H2", visit="V2")])
    report = Pipeline(db, framework).ingest_paths([path])
    assert (report.accepted, report.quarantined) == (2, 1)
    (held,) = report.quarantine
    assert held["location"] == "message 1 (MSH-10 PAS1)"
    assert held["where"].endswith("message 1 (MSH-10 PAS1), PID-7")
    assert held["reason"] == "the date of birth is not an HL7 date (YYYYMMDD[HHMM[SS]])"  # not quoted
    with db.session() as s:
        assert s.scalars(select(Quarantine.payload)).one() == broken.encode("latin-1").rstrip(b"\r")
    assert set(_contents(db, "Patient")) == {"H2"}


def test_an_invalid_nhs_number_is_quarantined_naming_pid_3(db: Database, framework: Framework,
                                                           tmp_path: Path) -> None:
    path = write_hl7(tmp_path / "RXR" / "pas.hl7", [admission(nhs="9434765918"), admission("PAS2", nhs=OTHER_NHS)])
    report = Pipeline(db, framework).ingest_paths([path])
    assert (report.accepted, report.quarantined) == (2, 1)
    assert report.quarantine[0]["where"].endswith("PID-3")
    assert "the NHS number fails the modulus 11 check" in report.quarantine[0]["reason"]
    assert "9434765918" not in report.quarantine[0]["reason"]  # described by rule: reasons go back in ACKs


def test_the_same_file_twice_changes_nothing(db: Database, framework: Framework, tmp_path: Path) -> None:
    path = write_hl7(tmp_path / "RXR" / "feed.hl7", [
        admission(), results(),
        message(msh("ADT^A28^ADT_A05", "PAS7"), "EVN|A28|20260110090000", pid("H200", OTHER_NHS, "HUGHES^Margaret",
                                                                                  "19520611", "F"))])
    first = Pipeline(db, framework).ingest_paths([path])
    with db.session() as s:
        before = {r.id: (r.version, r.content_hash) for r in s.scalars(select(Resource))}
    again = Pipeline(db, framework).ingest_paths([path])
    assert (again.accepted, again.stale, again.quarantined) == (0, 0, 0)
    assert again.unchanged == first.accepted == len(before)
    with db.session() as s:
        assert {r.id: (r.version, r.content_hash) for r in s.scalars(select(Resource))} == before



def test_the_same_file_twice_changes_nothing_where_two_messages_share_an_event_time(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """An admission and an update of the patient in the same second (the PAS corrects the address at once):
    the later message wins, and sending the file again used to apply the first again, then the second,
    adding two versions to the patient's history each time (and making a re-run after a crash differ
    from one clean run). Sent again, a message already applied changes nothing."""
    path = write_hl7(tmp_path / "RXR" / "feed.hl7", [
        admission(), adt("A08", "PAS2", "20260110090000",
                         pid(address="2 New Road^^Riverside^^RV1 2AB^GBR^H"), pv1())])
    first = Pipeline(db, framework).ingest_paths([path])
    with db.session() as s:
        before = {r.id: (r.version, r.content_hash) for r in s.scalars(select(Resource))}
        patient = s.scalars(select(Resource).where(Resource.resource_type == "Patient")).one()
        assert (patient.version, patient.content["address"][0]["postalCode"]) == (2, "RV1 2AB")
    again = Pipeline(db, framework).ingest_paths([path])
    assert (again.accepted, again.quarantined) == (0, 0) and again.unchanged == first.accepted
    with db.session() as s:
        assert {r.id: (r.version, r.content_hash) for r in s.scalars(select(Resource))} == before

def test_a_registration_sent_again_after_its_correction_in_the_same_second_moves_nothing(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """An unknown patient registered (A01) and identified in the same second (A08): the record joins the
    person. Sent again (a re-run after a crash), the A01 must not put back the details its A08 corrected,
    nor match the record again on them: it stays with the person it was corrected to."""
    Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "known.hl7", [admission()])])
    unknown = pid("H200", None, "UNKNOWN^Male", "19000101", "M", "^^^^^GBR^H")
    registration = adt("A01", "PAS5", "20260111090000", unknown, pv1("V200"))
    identified = adt("A08", "PAS6", "20260111090000", pid("H200"), pv1("V200"))
    Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "ed.hl7", [registration, identified])])

    def h200() -> tuple[str, str | None, str | None]:
        with db.session() as s:
            known = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "H100")).one()
            record = s.scalars(select(PatientRecord).where(PatientRecord.source_id == "H200")).one()
            assert record.person_id == known.person_id
            return record.person_id, record.family, record.nhs_number

    corrected = h200()
    again = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "ed-again.hl7", [registration])])
    assert (again.accepted, again.quarantined) == (0, 0)
    assert h200() == corrected == (corrected[0], "OKAFOR", GOOD_NHS)


_BROKEN = {
    "no message type": (message(msh("", "X1"), pid(), pv1()), "MSH-9", "no message type"),
    "no control id": (admission(control=""), "MSH-10", "no message control id (MSH-10)"),
    "merge of an unknown record": (adt("A40", "X2", "20260110090000", pid(), "MRG|H099^^^RXR^MR"), "MRG-1",
                                   "has sent no patient 'H099'"),
    "unhandled event": (adt("A17", "X3", "20260110090000", pid(), pv1()), "MSH-9", "ADT^A17 is not handled"),
    "training message": (admission().replace("|P|2.4|", "|T|2.4|"), "MSH-11", "processing id 'T'"),
    "no hospital number": (admission().replace("H100^^^RXR^MR~", ""), "PID-3", "no MR identifier"),
    "unknown patient class": (admission().replace("PV1|1|I|", "PV1|1|X|"), "PV1-2", "patient class 'X'"),
    "no filler order number": (results().replace("|P1|F1|UE", "|P1||UE"), "OBR[1]-3", "filler order number"),
    "not a number": (results().replace("||5.9|", "||five|"), "OBX[1]-5", "'five' is not a number"),
    "bad result time": (results().replace("|||20260110094000\r", "|||20261345\r"), "OBX[1]-14",
                        "'20261345' is not an HL7 timestamp"),
    "result time beyond the calendar once made UTC": (
        results().replace("|||20260110094000\r", "|||99991231235959-0100\r"), "OBX[1]-14",
        "'99991231235959-0100' is not an HL7 timestamp"),
    "wrong character set": (admission(name="JONES^Siân").replace("|8859/1\r", "|UNICODE UTF-8\r"), "MSH-18",
                            "declares UNICODE UTF-8 but byte"),
}


@pytest.mark.parametrize("case", list(_BROKEN))
def test_a_message_that_cannot_be_mapped_is_held_with_the_field_at_fault(
        db: Database, framework: Framework, tmp_path: Path, case: str) -> None:
    text, field, reason = _BROKEN[case]
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "feed.hl7", [text])])
    assert report.quarantined == 1 and report.accepted == 0
    assert report.quarantine[0]["where"].endswith(f", {field}"), report.quarantine[0]
    assert reason in report.quarantine[0]["reason"]
    assert _count(db, Quarantine) == 1 and _count(db, Resource) == 0


@pytest.mark.parametrize("layout", ["cr, newline between", "crlf, blank line between", "lf, nothing between"])
def test_files_split_into_messages_whatever_the_line_endings(framework: Framework, tmp_path: Path,
                                                             layout: str) -> None:
    messages = [admission("PAS1"), discharge("PAS2")]
    text = {
        "cr, newline between": "\n".join(messages),
        "crlf, blank line between": "\r\n\r\n".join(m.replace("\r", "\r\n") for m in messages),
        "lf, nothing between": "".join(m.replace("\r", "\n") for m in messages),
    }[layout]
    path = tmp_path / "RXR" / "pas.hl7"
    path.parent.mkdir()
    path.write_bytes(text.encode("latin-1"))
    raws = list(hl7v2.read_messages(path))
    assert [r.location for r in raws] == ["message 1 (MSH-10 PAS1)", "message 2 (MSH-10 PAS2)"]
    staged = [hl7v2.stage_hl7(raw, framework, None) for raw in raws]
    assert [s.resources[1].content["status"] for s in staged] == ["in-progress", "finished"]


def _blank_line_before(text: str, segment: str) -> str:
    """`text` with a blank line (CRLF CRLF) before its first segment that starts with `segment`."""
    segments = text.split("\r")
    at = next(i for i, s in enumerate(segments) if s.startswith(segment))
    return "\r".join(segments[:at]) + "\r\n\r\n" + "\r".join(segments[at:])


def test_a_blank_line_inside_a_message_does_not_split_it(db: Database, framework: Framework, tmp_path: Path) -> None:
    """A message starts only at an MSH. A blank line after a report's first result stored one result of four
    and held the rest as a message starting with NTE; one before an update's PD1 stored the Patient without
    its GP and next of kin, erasing what the admission had stored."""
    update = adt("A08", "PAS2", "20260111090000", pid(), "PD1|||Riverside Medical Centre^^P81001",
                 "NK1|1|ADEYEMI^Ngozi^^^Mrs|CHD^Daughter^HL70063||07700 900461||N^Next-of-Kin^HL70131", "PV1|1|N")
    path = write_hl7(tmp_path / "RXR" / "feed.hl7", [admission(), _blank_line_before(update, "PD1"),
                                                     _blank_line_before(results(), "NTE|1|L|Repeat")])
    report = Pipeline(db, framework).ingest_paths([path])
    assert (report.messages, report.quarantined) == (3, 0), report.quarantine
    patient = _contents(db, "Patient")["H100"]
    assert patient["generalPractitioner"][0]["identifier"]["value"] == "P81001"
    assert patient["contact"][0]["name"]["family"] == "ADEYEMI"
    observations = _contents(db, "Observation")
    assert sorted(observations) == ["F1-1", "F1-2", "F1-3", "F1-4"]
    assert observations["F1-1"]["note"] == [{"text": "Repeat in 2-3 days"}]
    (lab_report,) = _contents(db, "DiagnosticReport").values()
    assert len(lab_report["result"]) == 4


@pytest.mark.parametrize(("patient", "start"), [({"name": "OKAFOR^Em\reka"}, "eka"),
                                                ({"address": "14 Mill\nLane^^Riverside^^RV3 7QT^GBR^H"}, "Lane^^Rive")],
                         ids=["cr-in-name", "lf-in-address"])
def test_a_line_end_inside_a_field_holds_the_message_naming_the_segment_it_cut(
        db: Database, framework: Framework, tmp_path: Path, patient: dict[str, str], start: str) -> None:
    """An unescaped CR or LF cuts its segment, and what follows is no segment at all: read on, the name was
    stored as 'Em' with no birth date and the rest dropped. The whole message is held, naming the line."""
    cut = admission(**patient)
    path = write_hl7(tmp_path / "RXR" / "pas.hl7", [cut, admission("PAS2", mrn="H2", visit="V2")])
    report = Pipeline(db, framework).ingest_paths([path])
    assert (report.messages, report.quarantined) == (2, 1)
    (held,) = report.quarantine
    assert held["where"].endswith("message 1 (MSH-10 PAS1), segment 4")
    assert f"segment 4 (after PID) starts '{start}', which is not a segment ID" in held["reason"]
    assert set(_contents(db, "Patient")) == {"H2"}
    with db.session() as s:
        assert s.scalars(select(Quarantine.payload)).one() == cut.encode("latin-1").rstrip(b"\r")


def test_the_source_is_msh_4_else_the_folder_else_the_override(framework: Framework, tmp_path: Path) -> None:
    unknown_facility = admission().replace("|PAS|RXR|", "|PAS|RXR-MAIN|")
    path = write_hl7(tmp_path / "RXR" / "pas.hl7", [admission(), unknown_facility])
    first, second = (hl7v2.stage_hl7(raw, framework, None) for raw in hl7v2.read_messages(path))
    assert (first.source_org, first.source_system, first.message_id) == ("RXR", "pas", "PAS1")
    assert second.source_org == "RXR"
    elsewhere = write_hl7(tmp_path / "drop" / "pas.hl7", [unknown_facility])
    (raw,) = hl7v2.read_messages(elsewhere)
    assert hl7v2.stage_hl7(raw, framework, "RXR").source_org == "RXR"
    with pytest.raises(MessageError, match="unknown source organisation"):
        hl7v2.stage_hl7(raw, framework, None)


def test_a_synthetic_trusts_hl7_feeds_are_accepted_whole(db: Database, framework: Framework, tmp_path: Path) -> None:
    generate(tmp_path, people=40, seed=3, framework=framework)
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    report = Pipeline(db, framework).ingest_paths([tmp_path / "RXR" / "hl7v2"])
    sent = {kind: n for kind, n in manifest["organisations"]["RXR"]["counts"].items() if "^" in kind}
    assert report.messages == sum(sent.values()) > 0
    # The generator breaks no HL7 message on purpose (its injected errors are demographic), so none is held.
    assert report.quarantine == [], report.quarantine[:3]
    assert len(_contents(db, "Encounter")) == sent["ADT^A01"]
    assert len(_contents(db, "DiagnosticReport")) == sent["ORU^R01"]
    assert {e["status"] for e in _contents(db, "Encounter").values()} == {"finished"}
    with (tmp_path / "ground_truth.csv").open(encoding="utf-8") as handle:
        # its hospital numbers (H...): the trust's maternity records of births come by FHIR, not HL7
        hospital_numbers = {line.split(",")[1] for line in handle if line.startswith("RXR,H")}
    assert set(_contents(db, "Patient")) == hospital_numbers


def test_a_file_is_read_in_blocks_whatever_its_line_endings(tmp_path: Path) -> None:
    from sharedcare.ingest.hl7v2 import _segments

    path = tmp_path / "mixed.hl7"
    path.write_bytes(b"MSH|a\rPID|b\r\nPV1|c\nMSH|d\r\r\nPID|e")
    for chunk in (1, 2, 3, 5, 1 << 20):  # block edges inside lines and between CR and LF
        assert [line for line in _segments(path, chunk) if line.strip(b"\r\n")] == [
            b"MSH|a\r", b"PID|b\r\n", b"PV1|c\n", b"MSH|d\r", b"PID|e"]


def test_a_header_the_parser_chokes_on_is_held_and_the_file_goes_on(db: Database, framework: Framework,
                                                                      tmp_path: Path) -> None:
    broken = admission("BAD1").replace("MSH|^~\\&|", "MSH|^^~\\&|", 1)
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [broken, admission()])])
    assert report.quarantined == 1 and report.accepted > 0


def test_a_sender_s_own_separators_and_escapes_read_as_the_usual_ones(framework: Framework) -> None:
    """MSH-1 and MSH-2 declare the separators; a message written with others maps to the same resources,
    except that \\F\\ and \\T\\ stand for that sender's field and subcomponent separators."""
    usual = results()
    own = usual.translate(str.maketrans("|^~\\&", "!@#%$"))
    assert own.startswith("MSH!@#%$!LAB!RXR!")

    def staged(text: str) -> str:
        done = hl7v2.stage_hl7(hl7v2.RawMessage("RXR/lab.hl7", "message 1", text.encode("latin-1"), "hl7v2"),
                               framework)
        return json.dumps([item.content for item in done.resources], sort_keys=True)

    expected = staged(usual)
    assert "haemolysed & delayed" in expected and "cells | occasional" in expected
    assert staged(own) == (expected.replace("haemolysed & delayed", "haemolysed $ delayed")
                           .replace("cells | occasional", "cells ! occasional"))


@pytest.mark.parametrize("header", ["MSH|^^\\&|", "MSH|^~\\^|", "MSH|~~\\&|", "MSH|^~\\&", "MSH"])
def test_a_header_whose_separators_clash_or_stop_short_is_held_at_msh_2(framework: Framework, header: str) -> None:
    text = admission().replace("MSH|^~\\&|", header, 1) if header.endswith("|") else header
    with pytest.raises(MessageError) as caught:
        hl7v2.stage_hl7(hl7v2.RawMessage("RXR/pas.hl7", "message 1", text.encode("latin-1"), "hl7v2"), framework)
    assert caught.value.where == "RXR/pas.hl7, message 1, MSH-2"


def test_a_result_sent_twice_in_one_message_is_held_naming_it(db: Database, framework: Framework,
                                                              tmp_path: Path) -> None:
    twice = results().replace("OBX|3|NM|1011481000000105", "OBX|1|NM|1011481000000105")  # set ID 1 again
    path = write_hl7(tmp_path / "RXR" / "lab.hl7", [twice, results("LAB2", mrn="H2")])
    report = Pipeline(db, framework).ingest_paths([path])
    assert report.quarantined == 1 and "is sent twice in this message" in report.quarantine[0]["reason"]
    assert report.quarantine[0]["location"] == "message 1 (MSH-10 LAB1)"


def test_a_message_whose_sending_application_is_longer_than_the_store_keeps_is_held_naming_it(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """An application name (MSH-3) past the store's 40 characters was a database error on PostgreSQL (AE 207,
    naming nothing the sender could fix); it is held naming the field and the limit, on every store."""
    long_name = admission().replace("|PAS|", f"|{'P' * 41}|", 1)
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [long_name, results()])])
    (held,) = report.quarantine
    assert "sending application (MSH-3) of 41 characters: the store keeps at most 40" in held["reason"]
    assert _count(db, PatientRecord) == 1 and report.accepted > 0


def test_a_file_message_with_a_control_id_longer_than_the_store_keeps_is_held_naming_it_by_its_start(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Network review of 2026-12-07 (MEDIUM): MSH-10 is the sender's to fill. One longer than each resource keeps (100
    characters; HL7 allows 199) is held naming the field and the limit, and the held item's place names the
    message by the start of it, saying it was cut; the file's other messages are stored."""
    long_id = "Z" * 300_000
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7",
                                                             [admission(control=long_id), results()])])
    (held,) = report.quarantine
    assert "message control id (MSH-10) of 300000 characters: the store keeps at most 100" in held["reason"]
    assert held["location"] == f"message 1 (MSH-10 {'Z' * 200}... (cut from 300000 characters))"
    assert _count(db, PatientRecord) == 1 and report.accepted > 0


def test_an_admissions_allergies_are_stored_with_severity_reactions_and_category(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """AL1 was read and dropped, the A01 answered AA: a penicillin anaphylaxis the ward recorded never reached
    the record (clinical fidelity review, 2026-12-07)."""
    a01 = admission().rstrip("\r") + "\r" + "\r".join([
        "AL1|1|DA|764146007^Penicillin^SCT|SV|Anaphylaxis~Urticaria|20100101",
        "AL1|2|FA|^Peanuts|MO|Swollen lips",
        "AL1|3|EA|LATEX^Latex^L",
        "DG1|1||J18.9^Pneumonia^I10|||A",
    ]) + "\r"
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [a01])])
    assert (report.accepted, report.quarantined) == (6, 0), report.quarantine  # the DG1 is a Condition now
    assert not report.set_aside
    patient = _contents(db, "Patient")["H100"]
    allergies = {a["code"].get("text") or a["code"]["coding"][0]["display"]: a
                 for a in _contents(db, "AllergyIntolerance").values()}
    assert set(allergies) == {"Penicillin", "Peanuts", "Latex"}
    penicillin = allergies["Penicillin"]
    assert penicillin["patient"] == {"reference": f"Patient/{patient['id']}"}
    assert penicillin["code"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "764146007",
                                               "display": "Penicillin"}
    assert (penicillin["category"], penicillin["criticality"], penicillin["onsetDateTime"]) == (
        ["medication"], "high", "2010-01-01")
    assert [(r["manifestation"][0]["text"], r["severity"]) for r in penicillin["reaction"]] == [
        ("Anaphylaxis", "severe"), ("Urticaria", "severe")]
    assert penicillin["clinicalStatus"]["coding"][0]["code"] == "active"
    assert (allergies["Peanuts"]["category"], allergies["Peanuts"]["criticality"]) == (["food"], "low")
    assert "criticality" not in allergies["Latex"] and "reaction" not in allergies["Latex"]


def test_the_same_allergy_in_the_next_adt_updates_it_and_no_known_allergies_is_said_as_such(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    first = admission().rstrip("\r") + "\rAL1|1|DA|764146007^Penicillin^SCT|MO|Rash\r"
    update = adt("A08", "PAS9", "20260111090000", pid(), pv1(),
                 "AL1|1|DA|764146007^Penicillin^SCT|SV|Anaphylaxis")
    Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [first, update])])
    (penicillin,) = _contents(db, "AllergyIntolerance").values()
    assert (penicillin["criticality"], penicillin["reaction"][0]["manifestation"][0]["text"]) == ("high", "Anaphylaxis")

    other = admission(control="PAS3", visit="V200", mrn="H200", nhs=OTHER_NHS).rstrip("\r") \
        + "\rAL1|1||^No known drug allergies\r"
    Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas2.hl7", [other])])
    nkda = next(a for key, a in _contents(db, "AllergyIntolerance").items() if key.startswith("H200"))
    assert nkda["code"]["coding"][0]["code"] == "409137002" and "criticality" not in nkda


def test_an_allergy_without_an_allergen_or_with_an_unknown_severity_is_held_naming_the_field(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    missing = admission(control="PAS4").rstrip("\r") + "\rAL1|1|DA||SV|Rash\r"
    unknown = admission(control="PAS5").rstrip("\r") + "\rAL1|1|DA|764146007^Penicillin^SCT|XX|Rash\r"
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [missing, unknown])])
    reasons = sorted((q["where"].split("pas.hl7, ")[1], q["reason"]) for q in report.quarantine)
    assert reasons == [
        ("message 1 (MSH-10 PAS4), AL1-3", "no allergen (AL1-3): an allergy must say what to"),
        ("message 2 (MSH-10 PAS5), AL1-4", "allergy severity 'XX' is not one of SV, MO, MI, U (table 0128)"),
    ], reasons


def test_an_admissions_diagnoses_and_procedures_are_stored_with_the_visit_and_a_working_diagnosis_is_provisional(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """DG1 and PR1 were counted as set aside and dropped: the ward's diagnosis of pneumonia and the hip
    replacement never reached the record (known gap since the clinical fidelity review of 2026-12-07). A
    working or admitting diagnosis (DG1-6 W, A) is provisional, a final one confirmed (HAZ-14)."""
    a01 = admission().rstrip("\r") + "\r" + "\r".join([
        "DG1|1||J18.9^Pneumonia, unspecified^I10|||W",
        "DG1|2||I10X^Essential (primary) hypertension^I10|||F",
        "PR1|1||W37.1^Primary total prosthetic replacement of hip joint using cement^OPCS4||20260110143000",
    ]) + "\r"
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [a01])])
    assert report.quarantined == 0 and not report.set_aside, report.quarantine
    patient = _contents(db, "Patient")["H100"]
    (encounter,) = _contents(db, "Encounter").values()
    conditions = {c["code"]["coding"][0]["code"]: c for c in _contents(db, "Condition").values()}
    assert set(conditions) == {"J18.9", "I10X"}
    pneumonia = conditions["J18.9"]
    assert pneumonia["code"]["coding"][0] == {"system": "http://hl7.org/fhir/sid/icd-10", "code": "J18.9",
                                              "display": "Pneumonia, unspecified"}
    assert pneumonia["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert pneumonia["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert pneumonia["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert pneumonia["verificationStatus"]["coding"][0]["code"] == "provisional"
    assert conditions["I10X"]["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert "clinicalStatus" not in pneumonia  # DG1 does not say whether it is still active
    (hip,) = _contents(db, "Procedure").values()
    assert hip["code"]["coding"][0]["code"] == "W37.1" and hip["code"]["coding"][0]["system"].endswith("opcs-4")
    assert (hip["status"], hip["performedDateTime"]) == ("completed", "2026-01-10T14:30:00+00:00")
    assert hip["encounter"] == {"reference": f"Encounter/{encounter['id']}"}


def test_the_next_adt_confirms_a_diagnosis_and_its_action_code_d_withdraws_it(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    first = admission().rstrip("\r") + "\rDG1|1||J18.9^Pneumonia^I10|||W\rDG1|2||R07.4^Chest pain^I10|||A\r"
    withdrawn = "DG1|2||R07.4^Chest pain^I10|||A" + "|" * 15 + "D"  # DG1-21, the action code
    update = adt("A08", "PAS9", "20260111090000", pid(), pv1(), "DG1|1||J18.9^Pneumonia^I10|||F", withdrawn)
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [first, update])])
    assert report.quarantined == 0, report.quarantine
    conditions = {c["code"]["coding"][0]["code"]: c for c in _contents(db, "Condition").values()}
    assert set(conditions) == {"J18.9", "R07.4"}  # updated in place, not added again
    assert conditions["J18.9"]["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert conditions["R07.4"]["verificationStatus"]["coding"][0]["code"] == "entered-in-error"


def test_a_diagnosis_without_a_code_or_with_an_unknown_type_is_held_naming_the_field(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    missing = admission(control="PAS4").rstrip("\r") + "\rDG1|1||||||F\r"
    unknown = admission(control="PAS5").rstrip("\r") + "\rDG1|1||J18.9^Pneumonia^I10|||Q\r"
    no_procedure = admission(control="PAS6").rstrip("\r") + "\rPR1|1||||20260110\r"
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7",
                                                             [missing, unknown, no_procedure])])
    reasons = sorted((q["where"].split("pas.hl7, ")[1], q["reason"]) for q in report.quarantine)
    assert reasons == [
        ("message 1 (MSH-10 PAS4), DG1-3", "no diagnosis (DG1-3): a diagnosis must say what it is"),
        ("message 2 (MSH-10 PAS5), DG1-6", "diagnosis type 'Q' is not one of A, W, F (table 0052)"),
        ("message 3 (MSH-10 PAS6), PR1-3", "no procedure code (PR1-3): a procedure must say what was done"),
    ], reasons


def fields(name: str, **numbered: str) -> str:
    """A segment from its numbered fields (`f6="D"` is field 6), the rest empty."""
    values = {int(key[1:]): value for key, value in numbered.items()}
    return "|".join([name] + [values.get(n, "") for n in range(1, max(values) + 1)])


def test_an_a60_updates_the_allergy_list_and_iam_says_whether_an_allergy_is_confirmed(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """IAM (ADT^A60, the allergy list's update) was counted as set aside and dropped: a confirmed penicillin
    anaphylaxis and a suspected latex allergy never reached the record. The allergy an AL1 sent is the one an
    IAM updates (one allergy, whichever segment); IAM-6 "D" withdraws one; IAM-17 says whether it is
    confirmed, and a suspected one stays on the list as unconfirmed."""
    a01 = (admission().rstrip("\r") + "\rAL1|1|DA|764146007^Penicillin^SCT|MO|Rash"
           + "\rAL1|2|DA|CODEINE^Codeine^L|MI|Nausea\r")
    a60 = adt("A60", "PAS9", "20260111090000", pid(),
              fields("IAM", f1="1", f2="DA", f3="764146007^Penicillin^SCT", f4="SV", f5="Anaphylaxis~Urticaria",
                     f6="U", f7="ALG-77", f9="AL", f11="20100101", f13="20260111083000", f17="C"),
              fields("IAM", f1="2", f2="EA", f3="LATEX^Latex^L", f5="Itching", f6="A", f9="AL", f17="S"),
              fields("IAM", f1="3", f2="DA", f3="CODEINE^Codeine^L", f6="D"))
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [a01, a60])])
    assert report.quarantined == 0 and not report.set_aside, (report.quarantine, report.set_aside)
    allergies = {a["code"]["coding"][0]["code"]: a for a in _contents(db, "AllergyIntolerance").values()}
    assert set(allergies) == {"764146007", "LATEX", "CODEINE"}  # the penicillin AL1 sent is updated, not doubled
    penicillin = allergies["764146007"]
    assert (penicillin["criticality"], penicillin["type"], penicillin["onsetDateTime"]) == ("high", "allergy",
                                                                                           "2010-01-01")
    assert [r["manifestation"][0]["text"] for r in penicillin["reaction"]] == ["Anaphylaxis", "Urticaria"]
    assert penicillin["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert penicillin["clinicalStatus"]["coding"][0]["code"] == "active"
    assert penicillin["identifier"] == [{"value": "ALG-77"}]
    assert penicillin["recordedDate"] == "2026-01-11T08:30:00+00:00"
    latex = allergies["LATEX"]
    assert (latex["verificationStatus"]["coding"][0]["code"], latex["category"]) == ("unconfirmed", ["environment"])
    codeine = allergies["CODEINE"]
    assert codeine["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "clinicalStatus" not in codeine  # FHIR ait-2: none on an allergy recorded in error


def test_an_allergy_update_with_an_unknown_action_or_status_is_held_naming_the_field(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    def a60(control: str, **numbered: str) -> str:
        return adt("A60", control, "20260111090000", pid(), fields("IAM", f1="1", **numbered))

    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [
        a60("PAS4", f2="DA", f6="A"),
        a60("PAS5", f2="DA", f3="764146007^Penicillin^SCT", f6="Z"),
        a60("PAS6", f2="DA", f3="764146007^Penicillin^SCT", f17="Q"),
    ])])
    reasons = sorted((q["where"].split("pas.hl7, ")[1], q["reason"]) for q in report.quarantine)
    assert reasons == [
        ("message 1 (MSH-10 PAS4), IAM-3", "no allergen (IAM-3): an allergy must say what to"),
        ("message 2 (MSH-10 PAS5), IAM-6", "allergy action code 'Z' is not one of A, D, U, X (table 0323)"),
        ("message 3 (MSH-10 PAS6), IAM-17",
         "allergy clinical status 'Q' is not one of U, P, S, D, C, I, E (table 0438)"),
    ], reasons
    assert _count(db, PatientRecord) == 0


def test_an_admissions_height_and_weight_are_stored_as_observations_of_the_visit(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """An ADT's OBX (a height or weight taken at admission: a drug dose is worked out from the weight) was
    counted as set aside and dropped. It is an Observation of the visit, not a laboratory result, and the
    next ADT's value for the same code updates it."""
    def weight(kg: str, taken: str) -> str:
        return fields("OBX", f1="2", f2="NM", f3="27113001^Body weight^SCT", f5=kg, f6="kg^kilogram^UCUM",
                      f11="F", f14=taken)

    height = fields("OBX", f1="1", f2="NM", f3="50373000^Body height^SCT", f5="1.72", f6="m^metre^UCUM", f11="F",
                    f14="20260110093000")
    a01 = admission().rstrip("\r") + "\r" + height + "\r" + weight("81.5", "20260110093000") + "\r"
    a08 = adt("A08", "PAS9", "20260112090000", pid(), pv1(), weight("79.0", "20260112080000"))
    report = Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [a01, a08])])
    assert report.quarantined == 0 and not report.set_aside, (report.quarantine, report.set_aside)
    (encounter,) = _contents(db, "Encounter").values()
    observations = {o["code"]["coding"][0]["display"]: o for o in _contents(db, "Observation").values()}
    assert set(observations) == {"Body height", "Body weight"}
    kg = observations["Body weight"]
    assert kg["valueQuantity"]["value"] == 79.0 and kg["valueQuantity"]["code"] == "kg"
    assert (kg["status"], kg["effectiveDateTime"]) == ("final", "2026-01-12T08:00:00+00:00")
    assert kg["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert "category" not in kg  # taken on the ward, not a laboratory result
    assert observations["Body height"]["valueQuantity"]["value"] == 1.72


def test_a_hospitals_icd10_hiv_diagnosis_sent_in_dg1_is_sexual_health(
        db: Database, framework: Framework, tmp_path: Path) -> None:
    """Stored, a DG1 is classified by its ICD-10 code (framework 2026.12-5): the paramedic and the pharmacist
    (sexual health 0) are not shown it."""
    a01 = admission().rstrip("\r") + "\rDG1|1||B20.9^HIV disease resulting in unspecified disease^I10|||F\r"
    assert Pipeline(db, framework).ingest_paths([write_hl7(tmp_path / "RXR" / "pas.hl7", [a01])]).quarantined == 0
    with db.session() as s:
        (category,) = s.scalars(select(Resource.category).where(Resource.resource_type == "Condition")).all()
    assert category == "sexual_health"
