"""The comparisons the MPI scores a pair of person records on, written once for both ways of scoring.

Each comparison is a list of levels, most specific first; each level has a Splink SQL condition (the
batch relink runs it on DuckDB) and the same test in Python (real-time matching of one incoming record
scores its few candidates without a database round trip). `tests/identity/test_compare.py` checks
that both give the same level on every case, so the two can never drift apart.

Names, postcodes, phone numbers and emails are normalised here into *match features* (sets of name
keys with nicknames resolved, postcode sector and district, the address history) so that SQL and
Python only ever compare prepared values.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import jellyfish

from sharedcare.identity.nhs_number import is_valid

Features = dict[str, Any]

# UK postcode shape (outward code, space, inward code); anything else is not used for matching.
_POSTCODE = re.compile(r"^([A-Z]{1,2}[0-9][A-Z0-9]?) ?([0-9][A-Z]{2})$")
# The NHS pseudo-postcodes (ZZ99 3WZ address not known, ZZ99 3VZ no fixed abode, ZZ99 xxZ a country abroad)
# say where no one lives: people who share one share no address.
PSEUDO_POSTCODE_DISTRICT = "ZZ99"


@cache
def _nickname_groups() -> dict[str, frozenset[str]]:
    """name -> the formal names it may stand for, from the `nicknames` package's hand-curated list
    (names.csv: formal name, relationship, nickname; e.g. margaret has_nickname peggy)."""
    groups: dict[str, set[str]] = {}
    text = resources.files("nicknames").joinpath("names.csv").read_text(encoding="utf-8")
    for row in csv.DictReader(text.splitlines()):
        formal, nickname = row["name1"].strip().lower(), row["name2"].strip().lower()
        groups.setdefault(nickname, set()).add(formal)
    return {name: frozenset(formals) for name, formals in groups.items()}


# Letters NFKD does not decompose into a base letter and marks, written as a keyboard without them writes them;
# apostrophes written as modifier letters ("ʼ", "ʻ") go, as "'" does.
_UNDECOMPOSED = str.maketrans({"æ": "ae", "œ": "oe", "ø": "o", "đ": "d", "ð": "d", "þ": "th", "ł": "l", "ŀ": "l",
                               "ı": "i", "ħ": "h", "ŧ": "t", "ŋ": "n", "ƒ": "f", "ʒ": "z", "ɨ": "i",
                               "ʼ": "", "ʻ": "", "ʽ": "", "ʹ": ""})
# The combining diacritical marks (accents, the breve of Cyrillic "й"): not the vowel signs and viramas of
# Indic and other scripts, which are part of the letters they write (किरण Kiran and करण Karan)
_ACCENTS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_NOT_NAME = re.compile(r"[^a-z\- ]")


def _folded(value: str) -> str:
    """Case and accents folded, as a clerk without the letters types it ("Nguyễn Hằng" -> "nguyễn hằng" ->
    "nguyen hang", "Straße" -> "strasse", "Søren" -> "soren"); other scripts stay, lower-cased ("Μαρία" ->
    "μαρια"). An ASCII value is only lower-cased, as names were before accents were folded."""
    if value.isascii():
        return value.lower()
    # NFKD on both sides of casefold: it may leave a letter NFKD then decomposes ("ℌ" -> "H") or write one composed
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", value).casefold())
    return _ACCENTS.sub("", text).translate(_UNDECOMPOSED)


def name_text(value: str | None) -> str | None:
    """Folded (`_folded`): letters of any script with their marks, hyphens and single spaces only ("O'Brien "
    -> "obrien"); a name written in letters is never read as nothing."""
    if not value:
        return None
    text = _folded(value).replace("'", "")
    letters = _NOT_NAME.sub("", text) if text.isascii() else "".join(
        ch for ch in text if ch in "- " or unicodedata.category(ch)[0] in "LM")
    return " ".join(letters.split()) or None


# What a record carries in place of a name before the patient is named or while unknown ("Baby", "Baby of
# <mother>", "Twin 1", "Unknown Male", "UNKNOWN"), read from `placeholders.csv`: a list, one form a line, so
# a form found in a feed is added there, not in code. None of it says who the patient is, so matching reads
# it as no name: "Twin 1" and "Twin 2" are not an exact match.
_TOKEN = re.compile(r"[^\W_]+(?:/[^\W_]+)*")  # words of letters and digits, in any script


@cache
def _placeholder_forms() -> dict[tuple[str, ...], set[str]]:
    """Each form's words -> its kinds (lead, word, qualifier, surname)."""
    text = resources.files("sharedcare.identity").joinpath("placeholders.csv").read_text(encoding="utf-8")
    forms: dict[tuple[str, ...], set[str]] = {}
    for row in csv.DictReader(line for line in text.splitlines() if not line.startswith("#")):
        forms.setdefault(tuple(row["form"].split()), set()).add(row["kind"])
    return forms


def _read(value: str) -> list[tuple[tuple[str, ...], set[str]]]:
    """The text's forms left to right with their kinds, two-word forms first ("not known"); a digit is a
    qualifier, any other word a name ({"name"})."""
    forms = _placeholder_forms()
    words = _TOKEN.findall(_folded(value).replace("'", ""))
    read: list[tuple[tuple[str, ...], set[str]]] = []
    i = 0
    while i < len(words):
        form = tuple(words[i:i + 2])
        if len(form) < 2 or form not in forms:
            form = (words[i],)
        read.append((form, forms.get(form, {"qualifier"} if words[i].isdigit() else {"name"})))
        i += len(form)
    return read


@lru_cache(maxsize=1 << 16)  # a relink reads each of a million records' names: most names recur
def is_placeholder_given(value: str) -> bool:
    """A given name that names no one: it starts with a lead form ("Baby Jones", "Twin 2"), is only
    placeholder words and qualifiers ("Female Twin 1", "NK"), or they come before "of" ("BB of Sarah")."""
    read = _read(value)
    if not read or "lead" in read[0][1]:
        return True
    seen = False
    for form, kinds in read:
        if form == ("of",) and seen:
            return True
        if "name" in kinds:
            return False
        seen = seen or bool(kinds & {"lead", "word", "surname"})
    return seen


def given_text(value: str | None) -> str | None:
    """A given name as matching compares it (`name_text`), or None when it is missing or a placeholder
    ("Baby", "Twin 2", "Baby of Sarah", "Unknown", "Not known"); an initial alone is a given name."""
    text = name_text(value)
    if text is None or not text.replace("-", " ").split() or is_placeholder_given(value or ""):
        return None  # "-" or "--" typed for a name not known, or a placeholder
    return text


def family_text(value: str | None) -> str | None:
    """A surname as matching compares it (`name_text`), or None when it is missing or a placeholder
    ("UNKNOWN", "Not known": `placeholders.csv`, kind surname)."""
    text = name_text(value)
    if text is None or all("surname" in kinds for _, kinds in _read(value or "")):
        return None
    return text


def given_keys(names: Iterable[str | None]) -> list[str]:
    """Every key a set of given names answers to: each name and the formal names it is short for, so
    that Bob meets Robert and Peggy meets Margaret through the same key (placeholders answer to none)."""
    keys: set[str] = set()
    groups = _nickname_groups()
    for raw in names:
        for name in (given_text(raw) or "").replace("-", " ").split():
            keys.add(name)
            keys.update(groups.get(name, ()))
    return sorted(keys)


def given_names(names: Iterable[str | None]) -> list[str]:
    """Each given name a record carries, one word each, in order and once: first, middle and any other name
    it holds ("Thị Hằng" or "Thị", "Hằng" -> thi, hang; "Mary-Ann" -> mary, ann; placeholders none). What
    the given-name rule compares element by element (`given_names_conflict`)."""
    found: dict[str, None] = {}
    for raw in names:
        found.update(dict.fromkeys((given_text(raw) or "").replace("-", " ").split()))
    return list(found)


def family_keys(names: Iterable[str | None]) -> list[str]:
    """Each whole surname and each part of a hyphenated or double-barrelled one (Smith-Jones -> smith,
    jones, smith-jones), over current and previous surnames."""
    keys: set[str] = set()
    for raw in names:
        name = family_text(raw)
        if name:
            keys.add(name)
            keys.update(part for part in re.split(r"[- ]", name) if len(part) > 1)
    return sorted(keys)


SEARCH_KEY_LENGTH = 200  # the stored keys' columns (`PatientRecord.family_key`, `given_key`); folding may lengthen one


def search_key(value: str | None) -> str | None:
    """A surname or given name as a patient search compares it: read as matching reads it (`name_text`: case
    and accents folded, apostrophes of any kind gone), then without its hyphens and spaces, so what a clinician
    types ("O’Brien" on a phone, "OBrien", "Smith Jones", "Ozturk"; "cagla", "Mary Jane") finds what a source
    sent ("O'Brien", "SMITH-JONES", "ÖZTÜRK"; "ÇAĞLA", "Mary-Jane"). Stored with each record
    (`mpi._demographic_columns`); None for a name with no letter."""
    text = (name_text(value) or "").replace("-", "").replace(" ", "")
    return text[:SEARCH_KEY_LENGTH] or None


def postcode_parts(value: str | None) -> tuple[str, str, str] | None:
    """(full, sector, district) of a UK postcode, or None when it is not one or is a pseudo-postcode
    ("LS1 4AP" -> "LS1 4AP", "LS1 4", "LS1"; "ZZ99 3WZ" -> None)."""
    if not value:
        return None
    match = _POSTCODE.match(" ".join(value.upper().split()))
    if not match or match[1] == PSEUDO_POSTCODE_DISTRICT:
        return None
    outward, inward = match.groups()
    return f"{outward} {inward}", f"{outward} {inward[0]}", outward


def phone_key(value: str | None) -> str | None:
    """A UK phone number as its national digits ("+44 7700 900123" -> "07700900123"); None if it is not one."""
    if not value:
        return None
    digits = re.sub(r"\D", "", value)
    if digits.startswith("44"):
        digits = "0" + digits[2:]
    return digits if len(digits) in (10, 11) and digits.startswith("0") else None


def email_key(value: str | None) -> str | None:
    if not value:
        return None
    text = value.strip().lower()
    # `[^@\s]+@[^@\s]+\.[^@\s]+` as one regex backtracks over a run of dots (seconds on kilobytes): the
    # same test is a local part and a domain with a dot inside it, not at either end
    address = re.fullmatch(r"[^@\s]+@([^@\s]+)", text)
    return text if address and "." in address[1][1:-1] else None


def transposed(dob: str | None) -> str | None:
    """The date with day and month swapped, when that is still a date ("1960-03-07" -> "1960-07-03")."""
    if not dob or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", dob):
        return None
    year, month, day = dob[:4], dob[5:7], dob[8:10]
    return f"{year}-{day}-{month}" if day != month and int(day) <= 12 else None


@dataclass(frozen=True)
class MatchRecord:
    """What matching knows of one source patient record."""

    record_id: int
    source_org: str = ""
    nhs_number: str | None = None
    given: str | None = None
    family: str | None = None
    birth_date: str | None = None  # ISO date
    sex: str | None = None
    postcode: str | None = None
    other_given: tuple[str, ...] = ()  # middle names, the name they go by
    other_family: tuple[str, ...] = ()  # previous surnames (maiden name)
    postcodes: tuple[str, ...] = ()  # every postcode known for them, current and previous
    phones: tuple[str, ...] = ()
    email: str | None = None


def features(r: MatchRecord) -> Features:
    """The prepared values both the SQL and the Python levels compare."""
    phones = {p for p in (phone_key(x) for x in r.phones) if p}
    return {
        "unique_id": r.record_id,
        "nhs_number": r.nhs_number or None,
        "given": given_text(r.given), "family": family_text(r.family),
        "given_keys": given_keys([r.given, *r.other_given]) or None,
        "given_names": given_names([r.given, *r.other_given]) or None,
        "family_keys": family_keys([r.family, *r.other_family]) or None,
        **birth_and_address(r.birth_date, r.postcode, r.postcodes),
        "sex": r.sex if r.sex in ("male", "female") else None,
        "phones": sorted(phones) or None,
        "email": email_key(r.email),
    }


def birth_and_address(birth_date: str | None, current: str | None, postcodes: Iterable[str]) -> Features:
    """The features of the birth date and address comparisons alone: cheap to prepare, so real-time
    matching compares these first and prepares the rest only for a candidate they leave in the running."""
    postcode = postcode_parts(current)
    history = {p[0] for p in (postcode_parts(x) for x in (current, *postcodes)) if p}
    return {
        "dob": birth_date or None, "dob_transposed": transposed(birth_date),
        "postcode": postcode[0] if postcode else None,
        "sector": postcode[1] if postcode else None,
        "district": postcode[2] if postcode else None,
        "postcodes": sorted(history) or None,
    }


# Column types of the feature table (DuckDB / Arrow): lists for the multi-valued keys.
LIST_COLUMNS = ("given_keys", "family_keys", "postcodes", "phones", "given_names")
INT_COLUMNS = ("unique_id",)
# Features only the safety rules read, in Python: no comparison level, so not in the table Splink reads.
RULE_COLUMNS = ("given_names",)


Pair = tuple[Features, Features]


@dataclass(frozen=True)
class Level:
    label: str
    sql: str
    test: Callable[[Features, Features], bool]
    null: bool = False


@dataclass(frozen=True)
class Comparison:
    name: str
    description: str
    levels: tuple[Level, ...]
    # A pair at one of these levels is never linked automatically, whatever the other evidence: at
    # most it goes to review (twins and siblings share surname, birthday and address).
    never_link: frozenset[str] = frozenset()

    def level(self, a: Features, b: Features) -> int:
        """Index of the first level the pair meets (the last level, 'else', always does)."""
        for index, level in enumerate(self.levels):
            if level.test(a, b):
                return index
        return len(self.levels) - 1

    def splink(self) -> dict[str, Any]:
        return {"output_column_name": self.name, "comparison_description": self.description,
                "comparison_levels": [{"sql_condition": lv.sql, "label_for_charts": lv.label,
                                       **({"is_null_level": True} if lv.null else {})} for lv in self.levels]}


def _either_null(*columns: str) -> Level:
    sql = " OR ".join(f"{c}_l IS NULL OR {c}_r IS NULL" for c in columns)
    return Level("missing", sql, lambda a, b: any(a[c] is None or b[c] is None for c in columns), null=True)


def _exact(column: str, label: str = "exact") -> Level:
    return Level(label, f"{column}_l = {column}_r", lambda a, b: a[column] == b[column])


def _overlap(a: list[str] | None, b: list[str] | None) -> bool:
    return bool(a and b and not set(a).isdisjoint(b))


def _jw(a: str | None, b: str | None) -> float:
    return jellyfish.jaro_winkler_similarity(a, b) if a and b else 0.0


ELSE = Level("different", "ELSE", lambda a, b: True)
FUZZY = 0.9  # Jaro-Winkler similarity taken as a keying error (Smith/Smtih 0.96, Dixon/Dickson 0.81)

def _same(a: str | None, b: str | None) -> bool:
    """Equal and present, as SQL's `=` reads it: two missing surnames agree on nothing (NULL = NULL is not
    true), so the Python scorer reaches the level the trained SQL one does."""
    return a is not None and a == b


# The name comparison is 'missing' only when a given name is: the given name is what tells twins and
# siblings apart (the rule below), so a pair whose given names are both known is judged on them even when
# a surname is not. A missing surname then reads as a changed one: the given names agree, or they differ
# and the pair is never linked automatically. Until 2026-12-06 either name missing made the whole
# comparison 'missing', so twin Zoe's record without a surname linked to Amy's on birth date and address.
NAME = Comparison("name", "given and family name: exact, swapped, nickname, changed or hyphenated surname, typo", (
    _either_null("given"),
    Level("exact", "given_l = given_r AND family_l = family_r",
          lambda a, b: a["given"] == b["given"] and _same(a["family"], b["family"])),
    Level("first and last swapped",  # exactly or but for a typing error (a clerk's swap, then a slip)
          f"jaro_winkler_similarity(given_l, family_r) >= {FUZZY} "
          f"AND jaro_winkler_similarity(family_l, given_r) >= {FUZZY}",
          lambda a, b: _jw(a["given"], b["family"]) >= FUZZY and _jw(a["family"], b["given"]) >= FUZZY),
    Level("nickname or middle name, same surname",
          "list_has_any(given_keys_l, given_keys_r) AND family_l = family_r",
          lambda a, b: _overlap(a["given_keys"], b["given_keys"]) and _same(a["family"], b["family"])),
    Level("given agrees, surname shares a part (hyphenated or previous)",
          "list_has_any(given_keys_l, given_keys_r) AND list_has_any(family_keys_l, family_keys_r)",
          lambda a, b: _overlap(a["given_keys"], b["given_keys"]) and _overlap(a["family_keys"], b["family_keys"])),
    Level("typing error in the names",
          f"jaro_winkler_similarity(given_l, given_r) >= {FUZZY} "
          f"AND jaro_winkler_similarity(family_l, family_r) >= {FUZZY}",
          lambda a, b: _jw(a["given"], b["given"]) >= FUZZY and _jw(a["family"], b["family"]) >= FUZZY),
    Level("given agrees, surname changed or missing",
          f"list_has_any(given_keys_l, given_keys_r) OR jaro_winkler_similarity(given_l, given_r) >= {FUZZY}",
          lambda a, b: _overlap(a["given_keys"], b["given_keys"]) or _jw(a["given"], b["given"]) >= FUZZY),
    Level("surname agrees, given name different", "list_has_any(family_keys_l, family_keys_r)",
          lambda a, b: _overlap(a["family_keys"], b["family_keys"])),
    ELSE,
), never_link=frozenset({"surname agrees, given name different", "different"}))

DOB = Comparison("dob", "date of birth: exact, day and month transposed, one keying error", (
    _either_null("dob"),
    _exact("dob"),
    Level("day and month transposed", "dob_transposed_l = dob_r",
          lambda a, b: a["dob_transposed"] is not None and a["dob_transposed"] == b["dob"]),
    Level("one keying error", "damerau_levenshtein(dob_l, dob_r) <= 1",
          lambda a, b: jellyfish.damerau_levenshtein_distance(a["dob"], b["dob"]) <= 1),
    ELSE,
))


def birth_dates_far_apart(a: str, b: str) -> bool:
    """Whether two ISO birth dates are further apart than the date of birth comparison reads as one date
    written twice (day and month transposed, one keying error): its level 'different'."""
    x, y = ({"dob": d, "dob_transposed": transposed(d)} for d in (a, b))
    return DOB.levels[DOB.level(x, y)].label == "different"


ADDRESS = Comparison("address", "postcode now and in the address history: full, moved, sector, district", (
    _either_null("postcode"),
    _exact("postcode", "same postcode"),
    Level("postcode in the other's address history", "list_has_any(postcodes_l, postcodes_r)",
          lambda a, b: _overlap(a["postcodes"], b["postcodes"])),
    _exact("sector", "same postcode sector"),
    _exact("district", "same postcode district"),
    ELSE,
))

SEX = Comparison("sex", "administrative sex", (_either_null("sex"), _exact("sex"), ELSE))
# Two valid NHS numbers are never one keying error apart (modulus 11), so the middle level is reached
# only by an identifier without a check digit (see `numbers_keep_apart`); on UK feeds it is never used.
NHS_NUMBER = Comparison("nhs_number", "NHS number (valid ones; one keying error only without a check digit)", (
    _either_null("nhs_number"),
    _exact("nhs_number"),
    Level("one keying error", "damerau_levenshtein(nhs_number_l, nhs_number_r) <= 1",
          lambda a, b: jellyfish.damerau_levenshtein_distance(a["nhs_number"], b["nhs_number"]) <= 1),
    ELSE,
))
PHONE = Comparison("phone", "any phone number in common", (
    _either_null("phones"),
    Level("a number in common", "list_has_any(phones_l, phones_r)", lambda a, b: _overlap(a["phones"], b["phones"])),
    ELSE,
))
EMAIL = Comparison("email", "email address", (_either_null("email"), _exact("email"), ELSE))

COMPARISONS: tuple[Comparison, ...] = (NHS_NUMBER, NAME, DOB, ADDRESS, SEX, PHONE, EMAIL)


# The one exception to the given-name safety rule: a valid NHS number and the date of birth agree exactly
# and the surname agrees (exactly or but for a typing error, the name comparison's FUZZY), so the number
# settles who this is (a first name mis-keyed, or one the patient goes by that no nickname list knows).
# Ingest links on a matching NHS number and so does a relink; the link is kept on the review list with
# this reason, for a person to confirm or separate. Twins carry different numbers, and a keying error
# never turns one valid number into another; a mother's number on her baby's record comes with another
# birth date. An identifier without a check digit is not enough: twins registered one after the other
# get neighbouring local numbers, one keying error apart, so one twin's number on the other's record
# agrees with her surname and birth date too (docs/architecture.md, the identity safety decisions).
NHS_NUMBER_OUTWEIGHS_GIVEN_NAME = ("given names differ: linked because the NHS number, surname and date of birth "
                                   "agree (the surname exactly or but for a typing error)")


def nhs_number_outweighs_given_name(a: Features, b: Features) -> bool:
    """Whether this pair's valid NHS number and date of birth agree exactly, its surname agrees but for a
    typing error at most, and its given names do not agree (`given_names_differ`)."""
    if not (a["nhs_number"] and a["nhs_number"] == b["nhs_number"] and is_valid(a["nhs_number"])
            and a["dob"] and a["dob"] == b["dob"] and _jw(a["family"], b["family"]) >= FUZZY):
        return False
    return given_names_differ(a, b)


# The given-name rule over every given name a record carries. The name comparison reads the given-name
# field and the set of name keys: twins "Thị Hằng" and "Thị Hương" (a middle name most Vietnamese women
# share, as men share Văn), "Mohammed Ali" and "Mohammed Omar", "Mary Ann" and "Mary Jane" agree there on
# the element they share ("exact" when a feed sends it first and the other as a middle name, else "nickname
# or middle name", or a typing error on the whole field), so until 2026-12-07 the rule held nothing and
# they were linked. Each element is judged as the rule judges a given name: it agrees with an element of
# the other record that is the same, shares a nickname key, is within a typing error (Jaro-Winkler 0.9,
# FUZZY) or is its initial, or with the other record's surname (names swapped between the fields). When
# both records carry two given names or more and each has one that agrees with nothing in the other, the
# given names differ: held as the rule holds "surname agrees, given name different". One record whose
# given names all agree with the other's is not held: a middle name missing, names in another order, a
# nickname, a typing error, or the middle name the person goes by.
GIVEN_NAMES_CONFLICT = ("given names differ: each record has a given name the other lacks, beside one they "
                        "share (twins named alike: Thị Hằng and Thị Hương, Mary Ann and Mary Jane)")


def _element_agrees(name: str, other: str) -> bool:
    if name == other:
        return True
    if len(name) == 1 or len(other) == 1:
        return name[0] == other[0]  # an initial
    groups = _nickname_groups()
    keys, other_keys = groups.get(name, frozenset()) | {name}, groups.get(other, frozenset()) | {other}
    return not keys.isdisjoint(other_keys) or _jw(name, other) >= FUZZY  # as `given_keys` meet, or a typing error


def _lacks(names: list[str], other: list[str], other_family: list[str] | None) -> bool:
    """Whether one of `names` agrees with none of `other` nor with the other record's surname keys."""
    return any(not any(_element_agrees(name, o) for o in other)
               and not any(_jw(name, f) >= FUZZY for f in other_family or ()) for name in names)


def given_names_conflict(a: Features, b: Features) -> bool:
    """Whether both records carry two given names or more and each has one that agrees with none of the other's
    (see above): "Thị Hằng" and "Thị Hương", never "Thị Hằng" and "Hằng" or "Hằng Thị"."""
    x, y = a.get("given_names"), b.get("given_names")
    if not x or not y or len(x) < 2 or len(y) < 2:
        return False
    return _lacks(x, y, b["family_keys"]) and _lacks(y, x, a["family_keys"])


def given_names_differ(a: Features, b: Features) -> bool:
    """The given-name rule: both given names present and clearly different, by the name comparison's level
    (`NAME.never_link`) or element by element (`given_names_conflict`)."""
    return NAME.levels[NAME.level(a, b)].label in NAME.never_link or given_names_conflict(a, b)


# The given-name rule cannot hold what neither record says: two records without a given name (newborn
# twins before naming, "Baby Jones" and "Baby Jones"; two unknown patients) agree on surname, birth date and
# address as twins do. Such a pair is reviewed, never linked automatically, unless a valid NHS number agrees
# (a newborn is given one at birth, and a keying error never makes one valid number into another).
NEITHER_NAMED = ("neither record has a given name (a newborn's before naming, an unknown patient's; 'Baby', "
                 "'Twin 1' count as none) and no NHS number agrees: twins would match as well")


def neither_named(a: Features, b: Features) -> bool:
    """Whether neither record of the pair has a given name (`given_text`) and they share no valid NHS number."""
    return a["given"] is None and b["given"] is None and not (
        a["nhs_number"] and a["nhs_number"] == b["nhs_number"] and is_valid(a["nhs_number"]))


def names_keep_apart(a: Features, b: Features) -> bool:
    """Whether the given-name rules keep this pair from an automatic link whatever else agrees: given names
    that differ (twins, siblings), but for the NHS-number exception above, or no given name on either."""
    if neither_named(a, b):
        return True
    return given_names_differ(a, b) and not nhs_number_outweighs_given_name(a, b)


def numbers_keep_apart(a: str | None, b: str | None) -> bool:
    """Whether two identifiers make a pair two people by rule: both are valid NHS numbers and they differ.

    The rule rests on the check digit. Modulus 11 catches every single mistyped digit and every swap of
    two neighbouring digits, so a keying error never yields another valid number: ingest sets the
    mistyped number aside (noted) and the record is matched on its demographics. Two valid numbers that
    differ were issued to two people, or one was typed into the wrong record, which the demographics
    then contradict. An identifier without a check digit (a local or foreign number; FEBRL's soc_sec_id
    in `benchmarks/identity.py`) may differ by a keying error, so a difference there is evidence the
    model weighs (the level 'different' carries its own weight), never a rule. The NHS number field
    only ever holds valid numbers from ingest, so on UK feeds the rule applies to every difference."""
    return bool(a and b and a != b and is_valid(a) and is_valid(b))


def levels(a: Features, b: Features) -> dict[str, int]:
    """The level index each comparison gives this pair."""
    return {c.name: c.level(a, b) for c in COMPARISONS}
