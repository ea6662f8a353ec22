"""The CSV mapping language: how one source's extract columns become a patient and their care record.

A mapping is a YAML file per source system, `{ORG}-{system}.yaml` in the mappings folder
(SHAREDCARE_MAPPINGS, default `config/mappings`). It is data an integration engineer writes and a
reviewer reads, so it has only four kinds of value, and no expressions:

- a column reference: the column's name (`family: family_name`); a blank cell means "not recorded";
- a date: `{column: date_of_birth, format: "%d/%m/%Y"}` (Python strptime codes; a date and time
  without an offset is UK local time);
- a code map: `{column: sex, codes: {Male: male, Female: female}}`; a value the map lacks is refused;
  a concept (`assessment.type`) lists every value the column may hold, under `codes` (a coding with the
  text) or `local` (the source system's own list, coded in its local code system), matched ignoring case and
  spacing; any other value is refused, as a code map's is;
- a constant: a fixed coding such as `assessment.class`.

Sections: `organisation` and `system` (whose extract it is), `columns` (the header the extract must
have), `updated` (when the row last changed: its event time, which orders updates), `patient`,
`assessment` (one per row), and optionally `outcome` and `third_party`. `LRC-mosaic.yaml` is the worked
example. A mapping is checked when it is loaded; every problem is reported with its line and key.

Which mapping reads a file: the organisation is `--source`, else the nearest folder in the file's path
named after an organisation (`LRC/csv/mosaic-0001.csv` is LRC's). Of that organisation's mappings, the
files `{ORG}-*.yaml`, the one whose columns are all in the file's header is used. A file from no named
organisation is read by the one mapping, of all, whose columns are all in its header; a mapping that does not
load is passed over there (with a warning) when its columns are known and not the header's, so one
organisation's stale mapping does not hold every organisation's unlabelled files. `folder_problems` lists every
mapping that does not load, for `framework check` and the start of `serve` and `mllp`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Collection, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from sharedcare.errors import SharedcareError
from sharedcare.fhir.value_sets import REQUIRED
from sharedcare.yaml_lines import YamlProblem, read_yaml
from sharedcare.yaml_lines import where as where_in

T = TypeVar("T")
log = logging.getLogger("sharedcare.ingest")

UK_TIME = ZoneInfo("Europe/London")  # extract times without an offset are the source's local time
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def _code_of(element: str) -> AfterValidator:
    """A mapping's target code must be one of the element's required value set (fhir/value_sets.py, the table
    ingest refuses by): a wrong one is named when the mapping is loaded, not on each row it maps."""
    value_set = REQUIRED[element]

    def check(code: str) -> str:
        if code not in value_set:
            raise ValueError(f"'{code}' is not a code of {element}'s value set {value_set.name} "
                             f"({', '.join(sorted(value_set.codes))})")
        return code
    return AfterValidator(check)


Gender = Annotated[str, _code_of("Patient.gender")]
EncounterStatus = Annotated[str, _code_of("Encounter.status")]
CarePlanStatus = Annotated[str, _code_of("CarePlan.status")]


class _ColumnRef:
    """Marks the string fields that name a column, so every reference can be checked against `columns`."""


Column = Annotated[str, _ColumnRef()]
OptionalColumn = Annotated[str | None, _ColumnRef()]

_FORMAT_WORDS = {"%d": "DD", "%m": "MM", "%Y": "YYYY", "%y": "YY", "%b": "Mon", "%B": "Month", "%H": "hh",
                 "%M": "mm", "%S": "ss", "%f": "ffffff", "%z": "Z", "%%": "%"}


class MappingError(SharedcareError):
    """A mapping file is invalid; `problems` each name a line and key. `columns` are those it lists, when they
    can be read: whether it might be the mapping of a file (`find_mapping`); None when not known."""

    def __init__(self, problems: list[str], path: str, columns: list[str] | None = None) -> None:
        self.problems = problems
        self.columns = columns
        super().__init__("; ".join(problems), where=path)


class NoMapping(SharedcareError):
    """No mapping reads this file: none found, none fits its header, or several do."""


class ValueProblem(Exception):
    """A cell the mapping cannot read: which column, and the rule it breaks."""

    def __init__(self, column: str | None, rule: str) -> None:
        self.column = column
        self.rule = rule
        super().__init__(f"column {column}: {rule}" if column else rule)


def describe_format(fmt: str) -> str:
    """A strptime format as people write it: `%d/%m/%Y` -> `DD/MM/YYYY`."""
    return re.sub(r"%.", lambda m: _FORMAT_WORDS.get(m.group(), m.group()), fmt)


def text(values: dict[str, str], column: str | None) -> str | None:
    """A column's value, trimmed; None when the mapping does not use it or the cell is blank."""
    value = values.get(column, "").strip() if column else ""
    return value or None


def required(values: dict[str, str], column: str) -> str:
    value = text(values, column)
    if value is None:
        raise ValueProblem(column, "is empty; a value is required")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(_Strict):
    system: str
    code: str
    display: str | None = None


class DateColumn(_Strict):
    column: Column
    format: str

    @field_validator("format")
    @classmethod
    def _round_trips(cls, fmt: str) -> str:
        if "%y" in fmt.replace("%%", ""):  # strptime reads 00-68 as 20xx: a resident born 02/03/25 became born in 2025
            raise ValueError(f"'{fmt}' reads a two-digit year (%y), which cannot tell 1925 from 2025: use %Y")
        try:
            datetime.strptime(datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC).strftime(fmt), fmt)  # noqa: DTZ007
        except ValueError as exc:
            raise ValueError(f"'{fmt}' is not a strptime format that reads back what it writes") from exc
        return fmt

    def read(self, values: dict[str, str]) -> date | None:
        value = text(values, self.column)
        if value is None:
            return None
        try:
            return datetime.strptime(value, self.format).date()  # noqa: DTZ007 - a calendar date has no zone
        except ValueError:
            raise ValueProblem(self.column,
                               f"'{value}' is not a date in the form {describe_format(self.format)}") from None

    def reading(self, values: dict[str, str]) -> tuple[str, str, str, bool] | None:
        """The cell as a `DateReading` (messages.py) when it reads in only one order of day and month, the
        mapping's (25/12/2025 under %d/%m/%Y) or the other (12/25/2025); None for a blank, a date that reads
        either way (03/04/2025) or neither, or a format without both. Only for the file's note
        (csv_extract.DateOrders): `read` alone gives the date, in the mapping's order."""
        value, swapped = text(values, self.column), day_month_swapped(self.format)
        if value is None or swapped is None:
            return None
        as_mapped, as_swapped = _reads(value, self.format), _reads(value, swapped)
        return None if as_mapped == as_swapped else (self.column, self.format, value, as_swapped)

    def require(self, values: dict[str, str]) -> date:
        found = self.read(values)
        if found is None:
            raise ValueProblem(self.column, "is empty; a date is required")
        return found

    def instant(self, values: dict[str, str]) -> datetime:
        """A required date and time; without an offset it is UK local time."""
        value = required(values, self.column)
        try:
            parsed = datetime.strptime(value, self.format)  # noqa: DTZ007 - zone added below when absent
        except ValueError:
            raise ValueProblem(self.column, f"'{value}' is not a date and time in the form "
                                            f"{describe_format(self.format)}") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UK_TIME)).astimezone(UTC)


def day_month_swapped(fmt: str) -> str | None:
    """The format with day and month exchanged (`%m/%d/%Y` for `%d/%m/%Y`); None unless it has both."""
    if "%d" not in fmt or "%m" not in fmt:
        return None
    return fmt.replace("%d", "\0").replace("%m", "%d").replace("\0", "%m")


def _reads(value: str, fmt: str) -> bool:
    try:
        datetime.strptime(value, fmt)  # noqa: DTZ007 - only whether it reads
    except ValueError:
        return False
    return True


class CodeMap(_Strict, Generic[T]):
    """A column whose values the mapping translates, one by one, to FHIR codes."""

    column: Column
    codes: dict[str, T] = Field(min_length=1)

    def read(self, values: dict[str, str]) -> T | None:
        value = text(values, self.column)
        if value is None:
            return None
        if value not in self.codes:
            raise ValueProblem(self.column, f"'{value}' is not in the mapping's codes ({', '.join(self.codes)})")
        return self.codes[value]

    def require(self, values: dict[str, str]) -> T:
        value = self.read(values)
        if value is None:
            raise ValueProblem(self.column, f"is empty; one of {', '.join(self.codes)} is required")
        return value


def alike(value: str) -> str:
    """A value as a concept matches it: case and runs of spaces ignored ("Safeguarding  enquiry (S42) ")."""
    return " ".join(value.split()).casefold()


class Concept(_Strict):
    """A column read as a CodeableConcept: its text, plus a coding. Every value is listed, and any other refused: a
    safeguarding enquiry typed "(S42)" where the mapping codes "(s42)" was stored uncoded, as ordinary social care
    its patient could read (CSV review, 2026-12-07). A value listed under `local` is one of the source system's
    own fixed list (Mosaic's assessment types), coded in the source's local code system with the listed spelling
    as code and display: it says what the item is, as a code does, where text alone is taken for words someone
    typed and withheld below tier 3 (a GP read "Not shown at your access level" for "Care Act Assessment")."""

    column: Column
    codes: dict[str, Coding] = Field(default_factory=dict)
    local: list[str] = Field(default_factory=list)
    _known: dict[str, Coding | str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "text_only" in data:
            raise ValueError("`text_only` is now `local`: its values are coded in the source's own code system, "
                             "so a role that sees coded data reads what they are")
        return data

    @model_validator(mode="after")
    def _each_value_once(self) -> Concept:
        if not self.codes and not self.local:
            raise ValueError("list the values the column holds, under `codes` (with a coding) or `local` (the "
                             "source system's own list): any other value is refused")
        seen: dict[str, str] = {}
        for value in [*self.codes, *self.local]:
            if alike(value) in seen:
                raise ValueError(f"'{value}' is listed twice (as '{seen[alike(value)]}' too; case and spacing are "
                                 "ignored)")
            seen[alike(value)] = value
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._known.update({alike(value): " ".join(value.split()) for value in self.local})
        self._known.update({alike(value): coding for value, coding in self.codes.items()})

    def read(self, values: dict[str, str], local_system: str) -> dict[str, Any]:
        """The cell's concept; a `local` value's coding is in `local_system` (`framework.local_code_system`)."""
        value = required(values, self.column)
        known = self._known.get(alike(value))
        if known is None:
            raise ValueProblem(self.column, f"'{value}' is not one of the mapping's values "
                                            f"({', '.join([*self.codes, *self.local])}): add it to its `codes` "
                                            "or `local`")
        coding = known if isinstance(known, Coding) else Coding(system=local_system, code=known, display=known)
        return {"coding": [coding.model_dump(exclude_none=True)], "text": value}


class PatientMap(_Strict):
    """The columns that make the UK Core Patient; `id` is the source's own identifier for the person."""

    id: Column
    nhs_number: OptionalColumn = None
    family: OptionalColumn = None
    given: OptionalColumn = None
    birth_date: DateColumn | None = None
    sex: CodeMap[Gender] | None = None
    address_line: OptionalColumn = None
    town: OptionalColumn = None
    postcode: OptionalColumn = None
    phone: OptionalColumn = None


class AssessmentMap(_Strict):
    """Each row's assessment, as an Encounter with the source's assessment id."""

    id: Column
    date: DateColumn
    type: Concept
    status: CodeMap[EncounterStatus]
    encounter_class: Coding = Field(alias="class",
                                    default=Coding(system=ACT_CODE, code="HH", display="home health"))
    worker: OptionalColumn = None
    team: OptionalColumn = None


class OutcomeMap(_Strict):
    """The assessment's outcome, as a CarePlan whose description is the summary text."""

    text: Column
    status: CodeMap[CarePlanStatus]


class ThirdPartyMap(_Strict):
    """A column of what others said (carers, neighbours): stored apart, labelled never to be shared."""

    text: Column


class Mapping(_Strict):
    organisation: str
    system: str
    columns: list[str] = Field(min_length=1)
    updated: DateColumn
    patient: PatientMap
    assessment: AssessmentMap
    outcome: OutcomeMap | None = None
    third_party: ThirdPartyMap | None = None

    @property
    def name(self) -> str:
        return f"{self.organisation}-{self.system}"

    def fits(self, header: list[str]) -> bool:
        return fits(self.columns, header)

    def header_problems(self, header: list[str]) -> list[ValueProblem]:
        """What stops this mapping reading a file with this header: each expected column it lacks or repeats."""
        have = Counter(name.strip() for name in header)
        return [ValueProblem(column, "is missing from the header" if not have[column] else
                             "appears more than once in the header")
                for column in self.columns if have[column] != 1]

    def header_fault(self, header: list[str]) -> str | None:
        """The same, said in one sentence; None when this mapping can read the file."""
        have = Counter(name.strip() for name in header)
        missing = [f"'{column}'" for column in self.columns if not have[column]]
        repeated = [f"'{column}'" for column in self.columns if have[column] > 1]
        parts = [f"{verb} column{'s' if len(names) > 1 else ''} {', '.join(names)}"
                 for verb, names in (("lacks", missing), ("repeats", repeated)) if names]
        return f"the header {' and '.join(parts)} (the {self.name} mapping expects each of its columns once)" \
            if parts else None


def fits(columns: list[str], header: list[str]) -> bool:
    """Whether a header has each of these columns once: a mapping listing them can read its file."""
    have = Counter(name.strip() for name in header)
    return all(have[column] == 1 for column in columns)


def _column_refs(model: BaseModel, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every column the mapping reads, with the key path that names it."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        key = (*path, info.alias or name)
        if isinstance(value, BaseModel):
            yield from _column_refs(value, key)
        elif isinstance(value, str) and any(isinstance(m, _ColumnRef) for m in info.metadata):
            yield key, value


def _cross_checks(mapping: Mapping) -> list[tuple[tuple[Any, ...], str]]:
    """What the schema cannot say: columns are listed once, and every column used is listed."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    seen: set[str] = set()
    for index, column in enumerate(mapping.columns):
        if column in seen:
            problems.append((("columns", index), f"column '{column}' is listed twice"))
        seen.add(column)
    for path, column in _column_refs(mapping):
        if column not in seen:
            problems.append((path, f"column '{column}' is not in `columns`"))
    return problems


def parse_mapping(source: str, where: str = "<mapping>") -> Mapping:
    """Parse and check a mapping document; raise MappingError listing every problem with its line."""
    try:
        raw, lines = read_yaml(source, "a mapping")
    except YamlProblem as exc:
        raise MappingError(exc.problems, where) from exc
    try:
        mapping = Mapping.model_validate(raw)
    except ValidationError as exc:
        columns = raw.get("columns")
        readable = isinstance(columns, list) and bool(columns) and all(isinstance(c, str) for c in columns)
        raise MappingError([f"{where_in(lines, tuple(err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
                            for err in exc.errors()],
                           where, columns if readable else None) from exc
    problems = _cross_checks(mapping)
    if problems:
        raise MappingError([f"{where_in(lines, path)}: {message}" for path, message in problems], where,
                           mapping.columns)
    return mapping


@functools.lru_cache(maxsize=64)
def _parse_file(path: Path, _mtime_ns: int, _size: int) -> Mapping | MappingError:
    """The mapping, or why it does not load: kept too, so a stale mapping is not parsed again for each row."""
    try:
        return parse_mapping(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        return MappingError([f"cannot read the mapping ({exc})"], str(path))
    except MappingError as exc:
        return exc


def load_mapping(path: Path) -> Mapping:
    """Load a mapping file, checked; parsed once per version of the file, so an edit is seen at once."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise MappingError([f"cannot read the mapping ({exc.strerror})"], str(path)) from exc
    found = _parse_file(path.resolve(), stat.st_mtime_ns, stat.st_size)
    if isinstance(found, MappingError):
        # a new one each time: each raise of the kept one would add to its traceback
        raise MappingError(found.problems, found.where or str(path), found.columns)
    return found


def organisation_of(filename: str, organisations: Collection[str]) -> str | None:
    """The nearest folder in a file's path that is named after an organisation."""
    return next((part for part in reversed(Path(filename).parts) if part in organisations), None)


def candidates(folder: Path, organisation: str | None) -> list[Path]:
    """The organisation's mapping files, or every mapping file when the organisation is not known."""
    return sorted(folder.glob(f"{organisation}-*.yaml" if organisation else "*.yaml"))


def _load_each(paths: list[Path]) -> tuple[list[Mapping], list[MappingError]]:
    """The mappings that load, and why each other does not."""
    mappings, broken = [], []
    for path in paths:
        try:
            mappings.append(load_mapping(path))
        except MappingError as exc:
            broken.append(exc)
    return mappings, broken


def folder_problems(folder: Path) -> list[MappingError]:
    """Why each mapping file in the folder does not load (none for a folder that does not exist): to be found
    before go-live, not in a day's quarantine."""
    return _load_each(candidates(folder, None))[1]


_warned: set[tuple[str | None, str]] = set()


def _pass_over(broken: list[MappingError], used: Mapping) -> None:
    """Warn, once a process for each problem of each file, of a mapping passed over because it does not load."""
    for exc in broken:
        if (exc.where, exc.message) not in _warned:
            _warned.add((exc.where, exc.message))
            log.warning("the mapping %s is invalid (%s): passed over for a file of no named organisation whose "
                        "header it does not fit, read by %s; fix it before its own files arrive", exc.where,
                        exc.message, used.name)


def find_mapping(folder: Path, organisation: str | None, header: list[str]) -> Mapping:
    """The one mapping (of the organisation's, or of all) whose columns this header has. An organisation's
    mapping that does not load holds its files. Of all, one is passed over only when its columns are known and
    the header lacks them: one whose file it may be (RXR's copy of LRC's Mosaic mapping) holds the file, else
    RXR's extract would be stored as LRC's."""
    paths = candidates(folder, organisation)
    if not paths:
        raise NoMapping(f"no mapping for {organisation} in {folder} (expected {organisation}-SYSTEM.yaml)"
                        if organisation else f"no mapping files in {folder}")
    broken: list[MappingError] = []
    if organisation:
        mappings = [load_mapping(path) for path in paths]
        for path, mapping in zip(paths, mappings, strict=True):
            if mapping.organisation != organisation:
                raise MappingError([f"organisation is '{mapping.organisation}', but the file is named for "
                                    f"{organisation}"], str(path))
    else:
        mappings, broken = _load_each(paths)
        maybe = [exc for exc in broken if exc.columns is None or fits(exc.columns, header)]
        if maybe:  # it may be this mapping's file: held naming its problem
            raise maybe[0]
    fitting = [m for m in mappings if m.fits(header)]
    if len(fitting) == 1:
        _pass_over(broken, fitting[0])
        return fitting[0]
    if fitting:
        raise NoMapping(f"the header fits several mappings ({', '.join(m.name for m in fitting)}); give --source "
                        "ORG or put the file in a folder named after its organisation")
    if len(mappings) == 1 and not broken:
        raise NoMapping(mappings[0].header_fault(header) or "")
    names = [m.name for m in mappings] + [f"{Path(exc.where or '').stem} (invalid)" for exc in broken]
    raise NoMapping(f"the header fits none of the mappings in {folder} ({', '.join(names)})"
                    + ("" if organisation else "; give --source ORG or put the file in a folder named after its "
                                               "organisation"))
