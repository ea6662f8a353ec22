"""Every level of every comparison, on the pair that should reach it, in Python (real-time matching)
and in Splink's SQL on DuckDB (batch relink): the two scorers must give the same level."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pytest

from sharedcare.identity import compare
from sharedcare.identity.compare import (
    COMPARISONS,
    LIST_COLUMNS,
    NAME,
    Comparison,
    MatchRecord,
    family_text,
    features,
    given_text,
    names_keep_apart,
    numbers_keep_apart,
)
from sharedcare.identity.model import default_model
from sharedcare.identity.nhs_number import is_valid, normalise

BASE = MatchRecord(1, given="Robert", family="Smith", birth_date="1960-03-07", sex="male", postcode="RV1 2AB")


def pair(a: dict[str, Any], b: dict[str, Any]) -> tuple[MatchRecord, MatchRecord]:
    return replace(BASE, **a), replace(BASE, record_id=2, **b)


CASES: list[tuple[str, str, tuple[MatchRecord, MatchRecord]]] = [
    ("name", "missing", pair({"given": None}, {})),
    ("name", "exact", pair({"given": "ROBERT", "family": "Smith "}, {})),
    ("name", "first and last swapped", pair({"given": "Smith", "family": "Robert"}, {})),
    ("name", "first and last swapped", pair({"given": "Smtih", "family": "Robert"}, {})),
    ("name", "nickname or middle name, same surname", pair({"given": "Bob"}, {})),
    ("name", "nickname or middle name, same surname",
     pair({"given": "Peggy", "family": "Hughes"}, {"given": "Margaret", "family": "Hughes"})),
    ("name", "nickname or middle name, same surname", pair({"given": "John", "other_given": ("Robert",)}, {})),
    ("name", "given agrees, surname shares a part (hyphenated or previous)",
     pair({"given": "Anna", "family": "Smith-Jones"}, {"given": "Anna", "family": "Jones"})),
    ("name", "given agrees, surname shares a part (hyphenated or previous)",
     pair({"given": "Priya", "family": "Sharma", "other_family": ("Kapoor",)}, {"given": "Priya", "family": "Kapoor"})),
    ("name", "typing error in the names", pair({"given": "Jonathan", "family": "Smith"},
                                               {"given": "Jonathon", "family": "Smtih"})),
    ("name", "given agrees, surname changed or missing", pair({"given": "Priya", "family": "Sharma"},
                                                              {"given": "Priya", "family": "Kapoor"})),
    ("name", "given agrees, surname changed or missing", pair({"family": None}, {})),
    ("name", "given agrees, surname changed or missing", pair({"family": None}, {"family": None})),  # NULL = NULL
    ("name", "missing", pair({"given": None, "family": None}, {"family": None})),
    ("name", "surname agrees, given name different", pair({"given": "Amy", "family": "Jones"},
                                                          {"given": "Zoe", "family": "Jones"})),
    ("name", "different", pair({"given": "Amy", "family": "Jones"}, {"given": "Tariq", "family": "Malik"})),
    ("name", "different", pair({"given": "Zoe", "family": None}, {"given": "Amy", "family": "Jones"})),  # a twin
    # accents folded, other scripts kept: the SQL (DuckDB) reads the prepared values as Python does
    ("name", "exact", pair({"given": "Zoe\u0308", "family": "Nguyễn"}, {"given": "Zoë", "family": "Nguyen"})),
    ("name", "surname agrees, given name different", pair({"given": "Hằng", "family": "Nguyễn"},
                                                          {"given": "Hương", "family": "Nguyễn"})),
    ("name", "typing error in the names", pair({"given": "Μαρία", "family": "Παπαδόπουλος"},
                                               {"given": "Μαρια", "family": "Παπαδόπολος"})),
    ("name", "different", pair({"given": "Иван", "family": "Петров"}, {"given": "Ольга", "family": "Смирнова"})),
    ("dob", "missing", pair({"birth_date": None}, {})),
    ("dob", "exact", pair({}, {})),
    ("dob", "day and month transposed", pair({"birth_date": "1960-07-03"}, {})),
    ("dob", "one keying error", pair({"birth_date": "1960-03-08"}, {})),
    ("dob", "different", pair({"birth_date": "1986-03-07"}, {})),
    ("address", "missing", pair({"postcode": None}, {})),
    ("address", "missing", pair({"postcode": "not known"}, {})),  # not a postcode: not used
    ("address", "same postcode", pair({"postcode": "rv1  2ab"}, {})),
    ("address", "postcode in the other's address history",
     pair({"postcode": "LS6 1AA", "postcodes": ("RV1 2AB",)}, {})),
    ("address", "same postcode sector", pair({"postcode": "RV1 2XY"}, {})),
    ("address", "same postcode district", pair({"postcode": "RV1 9AA"}, {})),
    ("address", "different", pair({"postcode": "LS6 1AA"}, {})),
    ("sex", "missing", pair({"sex": "unknown"}, {})),
    ("sex", "exact", pair({}, {})),
    ("sex", "different", pair({"sex": "female"}, {})),
    ("phone", "missing", pair({"phones": ("07700 900123",)}, {})),
    ("phone", "a number in common",
     pair({"phones": ("+44 7700 900123", "01632 960457")}, {"phones": ("07700900123",)})),
    ("phone", "different", pair({"phones": ("07700 900123",)}, {"phones": ("07700 900999",)})),
    ("phone", "missing", pair({"phones": ("12",)}, {"phones": ("07700 900999",)})),  # not a phone number
    ("email", "missing", pair({"email": "a@example.org"}, {})),
    ("email", "exact", pair({"email": "A@Example.org"}, {"email": "a@example.org "})),
    ("email", "different", pair({"email": "a@example.org"}, {"email": "b@example.org"})),
    ("nhs_number", "missing", pair({"nhs_number": "9434765919"}, {})),
    ("nhs_number", "exact", pair({"nhs_number": "9434765919"}, {"nhs_number": "9434765919"})),
    ("nhs_number", "one keying error", pair({"nhs_number": "4652817"}, {"nhs_number": "4658217"})),  # no check digit
    ("nhs_number", "different", pair({"nhs_number": "9434765919"}, {"nhs_number": "9990000018"})),
]

BY_NAME = {c.name: c for c in COMPARISONS}


def _sql_level(comparison: Comparison, a: dict[str, Any], b: dict[str, Any]) -> int:
    """Run the comparison's Splink SQL conditions, in order, on DuckDB."""
    columns = []
    for side, values in (("l", a), ("r", b)):
        for name, value in values.items():
            if name in LIST_COLUMNS:
                items = ", ".join(f"'{v}'" for v in value or ())
                literal = "NULL::VARCHAR[]" if value is None else f"[{items}]::VARCHAR[]"
            else:
                literal = "NULL::VARCHAR" if value is None else f"'{value}'"
            columns.append(f"{literal} AS {name}_{side}")
    cases = " ".join(f"WHEN {lv.sql} THEN {i}" for i, lv in enumerate(comparison.levels) if lv.sql != "ELSE")
    sql = f"SELECT CASE {cases} ELSE {len(comparison.levels) - 1} END FROM (SELECT {', '.join(columns)})"  # noqa: S608 (test values)
    return int(duckdb.sql(sql).fetchall()[0][0])


@pytest.mark.parametrize(("comparison", "label", "records"), CASES, ids=[f"{c}:{lab}" for c, lab, _ in CASES])
def test_each_level_is_reached_by_its_pair_in_python_and_in_splink_sql(
        comparison: str, label: str, records: tuple[MatchRecord, MatchRecord]) -> None:
    found = BY_NAME[comparison]
    a, b = (features(r) for r in records)
    python_level = found.level(a, b)
    assert found.levels[python_level].label == label
    assert found.level(b, a) == python_level, "a comparison does not depend on which record comes first"
    assert _sql_level(found, a, b) == python_level


def test_every_level_of_every_comparison_has_a_case() -> None:
    covered = {(c, label) for c, label, _ in CASES}
    assert covered == {(c.name, lv.label) for c in COMPARISONS for lv in c.levels}


def test_malformed_identifiers_are_not_used_and_do_not_raise() -> None:
    odd = MatchRecord(9, given="'; DROP TABLE x;--", family="O'Brien-Smith", birth_date="not a date",
                      postcode="ZZZZZZZZZZZZ", phones=("call me", "+44"), email="no-at-sign")
    f = features(odd)
    assert (f["postcode"], f["phones"], f["email"], f["dob_transposed"]) == (None, None, None, None)
    assert f["family_keys"] == ["obrien", "obrien-smith", "smith"]


def test_a_keying_error_never_turns_one_valid_nhs_number_into_another() -> None:
    """Why different valid NHS numbers may keep a pair apart by rule: modulus 11 fails every single wrong
    digit and every swap of neighbouring digits, so a keyed number is set aside at ingest, not compared."""
    for number in ("9434765919", "9434765870", "9990000018"):
        keyed = {number[:i] + d + number[i + 1:] for i in range(10) for d in "0123456789"} | {
            number[:i] + number[i + 1] + number[i] + number[i + 2:] for i in range(9)}
        assert [k for k in keyed - {number} if is_valid(k)] == []


def test_an_nhs_number_in_full_width_or_other_script_digits_is_read_as_its_ascii_digits() -> None:
    assert normalise("９４３４７６５９１９") == normalise("943 476 ５９１９") == "9434765919"
    assert is_valid("９４３４７６５９１９") and is_valid("٩٤٣٤٧٦٥٩١٩")  # full-width, Arabic-Indic
    assert not is_valid("943476591\u00b9") and normalise("943476591\u00b9") != "9434765919"  # superscript one


def test_only_two_different_valid_nhs_numbers_keep_a_pair_apart_by_rule() -> None:
    assert numbers_keep_apart("9434765919", "9434765870")
    assert not numbers_keep_apart("9434765919", "9434765919")
    assert not numbers_keep_apart("9434765919", None)
    assert not numbers_keep_apart("4652817", "4658217")  # no check digit: a difference the model weighs


@pytest.mark.parametrize("placeholder", ["Baby", "BABY BOY", "Baby Girl", "Twin 1", "twin-2", "Twin A", "Infant",
                                         "Baby of Sarah Jones", "Unknown", "Unknown Male", "Not Known", "NK", "  ",
                                         "-", "--", " - ", "'-'"])
def test_a_placeholder_given_name_is_no_given_name(placeholder: str) -> None:
    """What a newborn's record carries before naming, or an unknown patient's, says nothing of who it is:
    "Twin 1" and "Twin 2" must not meet as an exact name (both would read "twin")."""
    assert given_text(placeholder) is None
    twin1, twin2 = pair({"given": placeholder}, {"given": "Twin 2"})
    a, b = features(twin1), features(twin2)
    assert (a["given"], a["given_keys"]) == (None, None)
    assert NAME.levels[NAME.level(a, b)].label == "missing"
    assert names_keep_apart(a, b)  # neither has a given name and no NHS number agrees


@pytest.mark.parametrize("name", ["Amy", "A", "Boyd", "Twinkle", "Babette", "Abby-Gail"])
def test_a_real_given_name_is_kept(name: str) -> None:
    assert given_text(name) == name.lower()


# The placeholders NHS systems write (HAZ-01, 2026-12-06 idt2): each must read as no given name. "UNK",
# "XX", "B/O Sarah", "Baby Jones" and "Not Stated" read as given names before placeholders.csv.
@pytest.mark.parametrize("placeholder", [
    "Baby", "Baby Boy", "Baby Girl", "BB", "BG", "Infant", "Newborn of Sarah", "Infant of Sarah Jones",
    "Baby Jones", "Baby Girl Jones", "B/O Sarah", "BB of Sarah", "Stillborn", "New Born", "Neonate",
    "Unknown", "UNK", "Unk Male", "NK", "N/K", "Not Known", "NOTKNOWN", "Not Stated", "Not Given", "No Name",
    "Male", "Female", "Unknown Male", "Unknown Female", "Unknown Male Alpha", "Unidentified", "Anon",
    "Twin 1", "Twin 2", "Twin A", "Twin B", "Twin II", "Female Twin 1", "Triplet 3", "XX", "XXX", "ZZ"])
def test_each_placeholder_form_nhs_systems_use_is_no_given_name(placeholder: str) -> None:
    assert given_text(placeholder) is None
    a, b = pair({"given": placeholder}, {"given": "Twin 2"})
    assert NAME.levels[NAME.level(features(a), features(b))].label == "missing"


@pytest.mark.parametrize("name", ["Una", "Kay", "Bo", "BO Sarah", "Mary Kay", "Boyd", "Babette", "Maleek",
                                  "Girlie", "Twinkle", "Xavier", "Nik", "A", "B", "Of", "One", "Noname"])
def test_a_real_name_that_looks_like_a_placeholder_is_kept(name: str) -> None:
    """Una and Kay are UK given names; an initial ("A", "B") or a single qualifier is one too; "Bo" is a
    name and only "B/O" (with its slash) reads "baby of"."""
    assert given_text(name) == name.lower()


@pytest.mark.parametrize(("written", "read"), [
    ("Nguyễn", "nguyen"), ("Hằng", "hang"), ("Hương", "huong"), ("Zoe\u0308", "zoe"), ("ZOË", "zoe"),
    ("Straße", "strasse"), ("Søren", "soren"), ("Łukasz", "lukasz"), ("Đặng", "dang"), ("Æthelred", "aethelred"),
    ("Zo\u200be", "zoe"), ("O'Brien", "obrien"), ("Oʼbrien", "obrien"), ("Μαρία", "μαρια"), ("Иван", "иван"),
    ("Андрей", "андреи"), ("李", "李"), ("किरण", "किरण"), ("करण", "करण")])  # Indic vowel signs are letters' parts
def test_a_name_is_read_with_its_accents_folded_and_its_letters_kept_in_any_script(written: str, read: str) -> None:
    """Hằng and Hương (twins) read "hng" alike when every letter outside a-z was deleted, and a Greek or
    Cyrillic name read as no name at all."""
    assert given_text(written) == read
    assert family_text(written) == read


def _forms(kind: str) -> list[str]:
    text = Path(compare.__file__).with_name("placeholders.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return [row["form"] for row in rows if row["kind"] == kind]


@pytest.mark.parametrize("form", _forms("lead") + _forms("word"))
def test_every_listed_placeholder_form_is_no_given_name_alone_or_before_of(form: str) -> None:
    assert given_text(form) is None
    assert given_text(form.upper()) is None
    assert given_text(f"{form} of Sarah") is None


@pytest.mark.parametrize("form", _forms("lead"))
def test_a_lead_placeholder_is_no_given_name_whatever_follows(form: str) -> None:
    assert given_text(f"{form} Jones") is None


@pytest.mark.parametrize("form", _forms("qualifier"))
def test_a_qualifier_goes_with_a_placeholder_but_is_none_alone(form: str) -> None:
    assert given_text(form) == form
    assert given_text(f"Twin {form}") is None
    assert given_text(f"Amy {form}") is not None  # with a name it is part of the name


@pytest.mark.parametrize("form", _forms("surname"))
def test_a_placeholder_surname_is_no_surname(form: str) -> None:
    assert family_text(form) is None
    assert family_text(f"{form}-Smith") is not None


@pytest.mark.parametrize("surname", ["Smith", "Male", "Baby", "Twin", "Boy", "Known"])
def test_a_real_surname_is_kept(surname: str) -> None:
    """Male, Baby and Boy are English surnames, if rare: only the surname forms of the list are none."""
    assert family_text(surname) == surname.lower()


@pytest.mark.parametrize("pseudo", ["ZZ99 3WZ", "ZZ99 3VZ", "zz993cz"])
def test_two_records_at_an_nhs_pseudo_postcode_share_no_address(pseudo: str) -> None:
    """ZZ99 3WZ (address not known) and ZZ99 3VZ (no fixed abode) say where no one lives: two homeless
    men or two unknown patients there share no address (before: "same postcode", weight 9.9)."""
    address = next(c for c in COMPARISONS if c.name == "address")
    a, b = pair({"postcode": pseudo}, {"postcode": pseudo})
    assert address.levels[address.level(features(a), features(b))].label == "missing"


def test_two_records_without_a_given_name_are_kept_apart_unless_a_valid_nhs_number_agrees() -> None:
    a, b = pair({"given": "Baby"}, {"given": None})
    assert names_keep_apart(features(a), features(b))
    assert not names_keep_apart(features(replace(a, nhs_number="9434765919")),
                                features(replace(b, nhs_number="9434765919")))
    assert names_keep_apart(features(replace(a, nhs_number="4652817")), features(replace(b, nhs_number="4652817")))
    assert not names_keep_apart(features(a), features(replace(b, given="Amy")))  # one given name: the model weighs it


def _named(given: str, *other: str, family: str = "Tran") -> dict[str, Any]:
    return features(replace(BASE, given=given, other_given=other, family=family))


@pytest.mark.parametrize(("one", "other"), [
    (("Thị", "Hằng"), ("Thị", "Hương")), (("Thị Hằng",), ("Thị Hương",)), (("Thị", "Hằng"), ("Thi Huong",)),
    (("Hằng", "Thị"), ("Hương", "Thị")), (("Văn", "Minh"), ("Van Long",)), (("Mohammed", "Ali"), ("Mohammed Omar",)),
    (("Mary", "Ann"), ("Mary", "Jane")), (("Mary-Ann",), ("Mary-Jane",)), (("Mary", "Ava"), ("Mary", "Eva")),
    (("Robert", "James"), ("Bob", "Peter"))])
def test_given_names_that_share_one_element_and_differ_in_another_are_kept_apart(
        one: tuple[str, ...], other: tuple[str, ...]) -> None:
    """Twins named alike: the name comparison meets them on the element they share (exact, nickname or
    middle name, a typing error on the whole field), so the rule looks at every given name."""
    a, b = _named(*one), _named(*other)
    assert NAME.levels[NAME.level(a, b)].label not in NAME.never_link  # the levels alone would link them
    assert compare.given_names_conflict(a, b) and compare.given_names_conflict(b, a)
    assert names_keep_apart(a, b)
    assert default_model().score(a, b).never_link == ["name"]


@pytest.mark.parametrize(("one", "other"), [
    (("Thị", "Hằng"), ("Thị",)), (("Thị Hằng",), ("Hằng",)), (("Thị", "Hằng"), ("Hằng", "Thị")),
    (("Thị", "Hằng"), ("Thi Hang",)), (("John", "Robert"), ("Robert",)), (("Robert", "James"), ("Bob", "James")),
    (("Margaret", "Rose"), ("Peggy",)), (("Jonathan", "Paul"), ("Jonathon", "Paul")), (("Mary", "Ann"), ("Mary", "A")),
    (("Mary", "Ann"), ("Mary", "Ann", "Louise")), (("Mary", "Anne"), ("Mary", "Ann")), (("Amy",), ("Zoe",))])
def test_given_names_that_agree_element_by_element_are_no_conflict(one: tuple[str, ...],
                                                                   other: tuple[str, ...]) -> None:
    """A middle name missing, names in another order, a nickname, a typing error, an initial, the middle
    name the person goes by; one given name each is left to the name comparison (Amy and Zoe: its level)."""
    assert not compare.given_names_conflict(_named(*one), _named(*other))


def test_given_names_moved_into_the_surname_are_no_conflict() -> None:
    """Robert James Smith written Smith James Robert: the names swapped between the fields, as the level
    'first and last swapped' reads a pair."""
    assert not compare.given_names_conflict(_named("Robert", "James", family="Smith"),
                                            _named("Smith", "James", family="Robert"))


def test_the_given_names_are_read_by_the_rule_only_not_by_splink() -> None:
    """The comparisons, their SQL and the shipped model are unchanged: no level reads `given_names`."""
    from sharedcare.identity.matching import _feature_columns

    assert features(replace(BASE, given="Thị-Hằng", other_given=("Baby", "hằng", "Hằng Lan")))["given_names"] == [
        "thi", "hang", "lan"]
    assert "given_names" not in _feature_columns()
    assert not any("given_names" in level.sql for c in COMPARISONS for level in c.levels)
