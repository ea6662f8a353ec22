"""Finding a patient by name as a clinician types it (a paramedic on a phone, journey 1): the portal's Find a
patient and the FHIR Patient search compare the surname, and the given name from its start, as the MPI reads a
name (case and accents folded, apostrophes, hyphens and spaces aside), on both stores, and still need the date
of birth."""

from __future__ import annotations

import re
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from tests.builders import bundle, downgrade_store, patient, write_ndjson
from tests.ingest.test_csv_extract import _extract, _lrc, _row
from tests.ingest.test_hl7v2 import admission, adt, pid, write_hl7
from tests.small_ics import Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.models import PatientRecord

# (surname as the source sent it, given, born, [surnames as a clinician types them])
PEOPLE = [
    ("O'Brien", "Sam", "1950-01-01", ["O’Brien", "OBrien", "o'brien", "O Brien"]),  # ’: a phone's apostrophe
    ("ÖZDEMIR", "Ayse", "1951-02-02", ["Özdemir", "ÖZDEMIR", "Ozdemir"]),  # a hospital PAS sends upper case
    ("SMITH-JONES", "Kim", "1952-03-03", ["Smith Jones", "smith-jones", "SmithJones", "Smith - Jones"]),
    ("De Souza", "Ana", "1953-04-04", ["De  Souza", " de souza ", "DeSouza"]),
    ("Öztürk", "Çağla", "1970-01-02", ["Öztürk", "öztürk", "ÖZTÜRK", "O\u0308zturk", "Ozturk"]),  # NFD: macOS
]


def _ingest(ics: Ics, framework: Framework, tmp_path: Path) -> dict[str, str]:
    """The people, each from the hospital's feed; their person ids by the surname sent."""
    feed = bundle("RXR", "epr", [patient(f"MRN-{n}", None, family, given, born)
                                 for n, (family, given, born, _) in enumerate(PEOPLE)])
    report = Pipeline(ics.database, framework).ingest_paths([write_ndjson(tmp_path / "p.ndjson", [feed])])
    assert report.quarantined == 0
    with ics.database.session() as s:
        records = s.scalars(select(PatientRecord).where(PatientRecord.source_org == "RXR"))
        return {r.family or "": r.person_id for r in records}


def _portal_found(ics: Ics, family: str, born: str) -> str:
    year, month, day = born.split("-")
    page = ics.client.post("/search", data={"family": family, "birth_day": day, "birth_month": month,
                                            "birth_year": year})
    assert page.status_code == 200, page.text
    found = re.search(r"(\d+) (?:person|people) found", page.text)
    assert found is not None
    return found[1]


def _fhir_found(ics: Ics, family: str, born: str) -> list[str]:
    response = ics.client.post("/fhir/Patient/_search", headers=ics.token("para.evans"),
                               data={"family": family, "birthdate": born})
    assert response.status_code == 200, response.text
    return [e["resource"]["id"] for e in response.json().get("entry", [])]


def test_a_surname_typed_otherwise_than_sent_finds_the_patient_in_the_portal_and_by_fhir(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    person = _ingest(ics, framework, tmp_path)
    ics.client.post("/login", data={"username": "para.evans", "password": "demo"})
    missed = []
    for family, _, born, typed in PEOPLE:
        for spelling in typed:
            portal, fhir = _portal_found(ics, spelling, born), _fhir_found(ics, spelling, born)
            if portal != "1" or fhir != [person[family]]:
                missed.append(f"{spelling!r} for {family!r}: portal {portal} found, FHIR {fhir}")
    assert not missed, "\n".join(missed)


def test_another_surname_or_birth_date_still_finds_no_one(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    _ingest(ics, framework, tmp_path)
    ics.client.post("/login", data={"username": "para.evans", "password": "demo"})
    for family, born in [("Brien", "1950-01-01"), ("O'Bryan", "1950-01-01"), ("Smith", "1952-03-03"),
                         ("Jones", "1952-03-03"), ("Ozdemirr", "1951-02-02"), ("Souza", "1953-04-04"),
                         ("O’Brien", "1950-01-02"), ("Ozturk", "1970-02-01"), ("'", "1950-01-01"),
                         ("--", "1952-03-03")]:
        assert (_portal_found(ics, family, born), _fhir_found(ics, family, born)) == ("0", []), (family, born)


FAMILY_KEY_REVISION = "0033"  # the migration that adds `family_key`


def test_records_stored_before_the_search_key_are_found_by_it_after_the_upgrade(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    person = _ingest(ics, framework, tmp_path)
    before = ScriptDirectory.from_config(ics.database.alembic_config()).get_revision(FAMILY_KEY_REVISION).down_revision
    downgrade_store(ics.database, str(before))
    columns = {c["name"] for c in inspect(ics.database.engine).get_columns("patient_records")}
    assert "family_key" not in columns and "family" in columns
    ics.database.migrate()
    assert [i["column_names"] for i in inspect(ics.database.engine).get_indexes("patient_records")
            if i["name"] == "ix_patient_records_family_key_dob"] == [["family_key", "birth_date"]]
    assert _fhir_found(ics, "O’Brien", "1950-01-01") == [person["O'Brien"]]
    assert _fhir_found(ics, "Ozturk", "1970-01-02") == [person["Öztürk"]]


# (given name as the source sent it, surname, born, [given names as a clinician types them]): from its start, as
# before, but folded as the surname is (case and accents, apostrophes, hyphens and spaces)
GIVEN = [
    ("ÇAĞLA", "Yilmaz", "1971-05-06", ["Çağla", "çağla", "ÇAĞLA", "cagla", "Cag", "C\u0327ag"]),
    ("Élodie", "Martin", "1972-06-07", ["ÉLODIE", "élodie", "Elodie", "él"]),
    ("Mary-Jane", "Walsh", "1973-07-08", ["Mary Jane", "MaryJane", "mary-jane", "Mary"]),
    ("D'Arcy", "Byrne", "1974-08-09", ["D’Arcy", "Darcy", "d'arcy", "D"]),
    ("Mohammed", "Khan", "1975-09-10", ["Moh", "MOHAMMED", "mohammed"]),
]


def _given_found(ics: Ics, family: str, given: str, born: str) -> tuple[str, list[str]]:
    """(the portal's count, FHIR's person ids) for one search by surname, given name and birth date."""
    year, month, day = born.split("-")
    page = ics.client.post("/search", data={"family": family, "given": given, "birth_day": day,
                                            "birth_month": month, "birth_year": year})
    assert page.status_code == 200, page.text
    count = re.search(r"(\d+) (?:person|people) found", page.text)
    assert count is not None
    response = ics.client.post("/fhir/Patient/_search", headers=ics.token("para.evans"),
                               data={"family": family, "given": given, "birthdate": born})
    assert response.status_code == 200, response.text
    return count[1], [e["resource"]["id"] for e in response.json().get("entry", [])]


def _ingest_given(ics: Ics, framework: Framework, tmp_path: Path) -> dict[str, str]:
    """The people, each from the hospital's FHIR feed; their person ids by the given name sent."""
    feed = bundle("RXR", "epr", [patient(f"MRN-G{n}", None, family, given, born)
                                 for n, (given, family, born, _) in enumerate(GIVEN)])
    report = Pipeline(ics.database, framework).ingest_paths([write_ndjson(tmp_path / "g.ndjson", [feed])])
    assert report.quarantined == 0
    with ics.database.session() as s:
        records = s.scalars(select(PatientRecord).where(PatientRecord.source_id.like("MRN-G%")))
        return {r.given or "": r.person_id for r in records}


def test_a_given_name_typed_otherwise_than_sent_finds_the_patient_in_the_portal_and_by_fhir(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    person = _ingest_given(ics, framework, tmp_path)
    ics.client.post("/login", data={"username": "para.evans", "password": "demo"})
    missed = []
    for given, family, born, typed in GIVEN:
        for spelling in typed:
            found = _given_found(ics, family, spelling, born)
            if found != ("1", [person[given]]):
                missed.append(f"{spelling!r} for {given!r}: portal {found[0]} found, FHIR {found[1]}")
    assert not missed, "\n".join(missed)


def test_another_given_name_or_one_with_no_letter_still_finds_no_one(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    _ingest_given(ics, framework, tmp_path)
    ics.client.post("/login", data={"username": "para.evans", "password": "demo"})
    for family, given, born in [("Yilmaz", "Çağlar", "1971-05-06"), ("Yilmaz", "Cagla", "1971-05-07"),
                                ("Walsh", "Jane", "1973-07-08"), ("Martin", "Elodie Ann", "1972-06-07"),
                                ("Khan", "%", "1975-09-10"), ("Khan", "'", "1975-09-10"), ("Khan", "-", "1975-09-10"),
                                ("Byrne", "Arcy", "1974-08-09")]:
        assert _given_found(ics, family, given, born) == ("0", []), (family, given, born)
    # a given name left blank, or only spaces, does not narrow the search
    assert _given_found(ics, "Khan", " ", "1975-09-10")[0] == "1"


def test_a_given_name_sent_by_hl7_v2_and_changed_by_an_update_is_found_as_typed(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """The PAS's A01 names her Elif, its A08 corrects her name to ŞÜKRAN (UTF-8): the search finds her by the
    name she has now, typed as a clinician types it, and not by the one corrected."""
    who = {"mrn": "H-G1", "nhs": None, "born": "19760101", "sex": "F"}
    sent = [admission("PAS-G1", **who, name="DEMIR^Elif^^^Mrs"),
            adt("A08", "PAS-G2", "20260111090000", pid(**who, name="DEMIR^ŞÜKRAN^^^Mrs"),
                "PD1|||Riverside Medical Centre^^P81001")]
    feed = write_hl7(tmp_path / "RXR" / "pas.hl7", [m.replace("|8859/1", "|UNICODE UTF-8") for m in sent], "utf-8")
    report = Pipeline(ics.database, framework).ingest_paths([feed])
    assert report.quarantined == 0, report.quarantine
    ics.client.post("/login", data={"username": "para.evans", "password": "demo"})
    for typed in ("Şükran", "sukran", "SUK"):
        assert _given_found(ics, "Demir", typed, "1976-01-01")[0] == "1", typed
    assert _given_found(ics, "Demir", "Elif", "1976-01-01") == ("0", [])


GIVEN_KEY_REVISION = "0036"  # the migration that adds `given_key`


def test_given_names_stored_before_their_search_key_are_found_by_it_after_the_upgrade(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    person = _ingest_given(ics, framework, tmp_path)
    before = ScriptDirectory.from_config(ics.database.alembic_config()).get_revision(GIVEN_KEY_REVISION).down_revision
    downgrade_store(ics.database, str(before))
    assert "given_key" not in {c["name"] for c in inspect(ics.database.engine).get_columns("patient_records")}
    ics.database.migrate()
    ics.client.post("/login", data={"username": "para.evans", "password": "demo"})
    assert _given_found(ics, "Yilmaz", "cagla", "1971-05-06") == ("1", [person["ÇAĞLA"]])
    assert _given_found(ics, "Walsh", "Mary Jane", "1973-07-08") == ("1", [person["Mary-Jane"]])


def test_a_given_name_sent_in_a_council_extract_is_found_as_typed(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """Mosaic's CSV extract names a client Zoë-Ann: the social worker finds her as "zoe ann" and "ZOË"."""
    row = _row(client_id="C-G1", nhs_number="", family_name="Quigley", given_name="Zoë-Ann",
               date_of_birth="04/05/1980")
    report = Pipeline(ics.database, framework).ingest_paths([_extract(_lrc(tmp_path), [row])])
    assert report.quarantined == 0, report.quarantine
    with ics.database.session() as s:
        person = s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id == "C-G1")).one()
    for typed in ("zoe ann", "ZOË", "Zoe-A"):
        response = ics.client.post("/fhir/Patient/_search", headers=ics.token("sw.brown"),
                                   data={"family": "quigley", "given": typed, "birthdate": "1980-05-04"})
        assert [e["resource"]["id"] for e in response.json().get("entry", [])] == [person], typed
