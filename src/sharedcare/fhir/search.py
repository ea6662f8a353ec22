"""FHIR search parameters applied to resources governance has already released.

Searching after the decision (never before) is what keeps `_include` and friends from returning
anything a direct read would refuse (TRUST AC4). The parameters are the ones the CapabilityStatement
lists; anything else is refused with a clear message rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sharedcare.errors import SharedcareError

# The clinically meaningful date of each type: what `date` searches and `_sort=date` orders by.
DATE_ELEMENTS = {
    "Condition": ("onsetDateTime", "recordedDate"),
    "MedicationStatement": ("effectiveDateTime", "effectivePeriod", "dateAsserted"),
    "AllergyIntolerance": ("onsetDateTime", "recordedDate"),
    "Encounter": ("period",),
    "Observation": ("effectiveDateTime", "effectivePeriod", "issued"),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "Immunization": ("occurrenceDateTime", "recorded"),
    "CarePlan": ("period", "created"),
    "DocumentReference": ("date",),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod", "issued"),
}
CODE_ELEMENTS = ("code", "medicationCodeableConcept", "vaccineCode", "type")
SEARCH_PARAMS = {"patient", "subject", "code", "date", "category", "status", "_lastUpdated", "_count", "_offset",
                 "_sort", "_include"}
REFUSED = {
    "_total": "totals are not given: a count could reveal records withheld from you",
    "_summary": "summaries are not given: a count could reveal records withheld from you",
}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


class SearchError(SharedcareError):
    """A search the server will not run as asked (unknown or refused parameter, bad value)."""


def clinical_date(resource: dict[str, Any]) -> datetime | None:
    for name in DATE_ELEMENTS.get(resource.get("resourceType", ""), ()):
        value = resource.get(name)
        if isinstance(value, dict):
            value = value.get("start")
        if value:
            return parse_instant(str(value))
    return None


def parse_instant(value: str) -> datetime:
    """A FHIR date, dateTime or instant as an aware UTC datetime (a date is its midnight UTC)."""
    try:
        if len(value) == 4:
            return datetime(int(value), 1, 1, tzinfo=UTC)
        if len(value) == 7:
            return datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SearchError(f"'{value}' is not a FHIR date or dateTime") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DateFilter:
    prefix: str
    when: datetime

    @classmethod
    def parse(cls, name: str, value: str) -> DateFilter:
        prefix = value[:2] if value[:2] in PREFIXES else "eq"
        raw = value[2:] if value[:2] in PREFIXES else value
        try:
            return cls(prefix, parse_instant(raw))
        except SearchError as exc:
            raise SearchError(f"{name}: {exc.message}") from exc

    def matches(self, value: datetime | None) -> bool:
        if value is None:
            return False
        compare = {"eq": value == self.when, "ne": value != self.when, "gt": value > self.when,
                   "sa": value > self.when, "lt": value < self.when, "eb": value < self.when,
                   "ge": value >= self.when, "le": value <= self.when}
        if self.prefix == "eq" and self.when.time() == datetime.min.time():
            return value.date() == self.when.date()  # a date means the whole day
        return compare[self.prefix]


def _codes(resource: dict[str, Any], elements: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    for name in elements:
        value = resource.get(name)
        for concept in value if isinstance(value, list) else [value]:
            if isinstance(concept, dict):
                for coding in concept.get("coding") or []:
                    found.add(f"{coding.get('system')}|{coding.get('code')}")
                    found.add(str(coding.get("code")))
    return found


def _token_matches(resource: dict[str, Any], elements: tuple[str, ...], wanted: str) -> bool:
    """A token parameter: `code`, `system|code`, comma-separated alternatives."""
    have = _codes(resource, elements)
    return any(option in have for option in wanted.split(","))


@dataclass
class ClinicalQuery:
    """A parsed search on one clinical type, for one patient."""

    patient: str
    code: str | None = None
    category: str | None = None
    status: str | None = None
    dates: tuple[DateFilter, ...] = ()
    last_updated: tuple[DateFilter, ...] = ()
    count: int = 50
    offset: int = 0
    sort_descending: bool | None = None
    include_patient: bool = False

    @classmethod
    def parse(cls, resource_type: str, params: list[tuple[str, str]]) -> ClinicalQuery:
        for name, _ in params:
            if name in REFUSED:
                raise SearchError(f"{name}: {REFUSED[name]}")
            if ":" in name:
                raise SearchError(f"search modifier '{name}' is not supported: a modifier ignored could "
                                  "return the opposite of what was asked")
            if name not in SEARCH_PARAMS:
                raise SearchError(f"search parameter '{name}' is not supported on {resource_type} "
                                  f"(supported: {', '.join(sorted(SEARCH_PARAMS))})")
        values: dict[str, list[str]] = {}
        for name, value in params:
            values.setdefault(name, []).append(value)
        patient = (values.get("patient") or values.get("subject") or [""])[0].removeprefix("Patient/")
        if not patient:
            raise SearchError("give patient=<id>: searches are per patient")
        query = cls(patient=patient)
        query.code = _first(values, "code")
        query.category = _first(values, "category")
        query.status = _first(values, "status")
        query.dates = tuple(DateFilter.parse("date", v) for v in values.get("date", []))
        query.last_updated = tuple(DateFilter.parse("_lastUpdated", v) for v in values.get("_lastUpdated", []))
        query.count = _integer(values, "_count", 50, 1, 500)
        query.offset = _integer(values, "_offset", 0, 0, 10_000_000)
        sort = _first(values, "_sort")
        if sort not in (None, "date", "-date"):
            raise SearchError("_sort: only 'date' and '-date' are supported")
        query.sort_descending = None if sort is None else sort.startswith("-")
        include = values.get("_include", [])
        if any(i not in (f"{resource_type}:patient", f"{resource_type}:subject") for i in include):
            raise SearchError(f"_include: only {resource_type}:patient is supported")
        query.include_patient = bool(include)
        return query

    def matches(self, resource: dict[str, Any]) -> bool:
        if self.code and not _token_matches(resource, CODE_ELEMENTS, self.code):
            return False
        if self.category and not _token_matches(resource, ("category", "class", "serviceType"), self.category):
            return False
        if self.status and str(resource.get("status", "")) not in self.status.split(","):
            clinical = resource.get("clinicalStatus") or {}
            if not {c.get("code") for c in clinical.get("coding", [])} & set(self.status.split(",")):
                return False
        if any(not f.matches(clinical_date(resource)) for f in self.dates):
            return False
        updated = (resource.get("meta") or {}).get("lastUpdated")
        return all(f.matches(parse_instant(updated) if updated else None) for f in self.last_updated)

    def select(self, resources: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
        """The page of matching resources, and whether there is a next page."""
        found = [r for r in resources if self.matches(r)]
        if self.sort_descending is not None:
            floor = datetime.min.replace(tzinfo=UTC)
            found.sort(key=lambda r: clinical_date(r) or floor, reverse=self.sort_descending)
        page = found[self.offset:self.offset + self.count]
        return page, self.offset + self.count < len(found)


def _integer(values: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = _first(values, name)
    if raw is None:
        return default
    try:
        number = int(raw)
    except ValueError as exc:
        raise SearchError(f"{name}: '{raw}' is not a whole number") from exc
    if not low <= number <= high:
        raise SearchError(f"{name}: must be between {low} and {high}")
    return number


def _first(values: dict[str, list[str]], name: str) -> str | None:
    given = values.get(name)
    return given[0] if given else None
