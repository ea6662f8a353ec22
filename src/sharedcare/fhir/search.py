"""FHIR search parameters applied to resources governance has already released.

Searching after the decision (never before) is what keeps `_include` and friends from returning
anything a direct read would refuse (TRUST AC4). The parameters are the ones the CapabilityStatement
lists; anything else is refused with a clear message rather than silently ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sharedcare import sealing
from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError

# The clinically meaningful date of each type: what `date` searches and `_sort=date` orders by (an
# allergy's is when it was recorded, as R4's AllergyIntolerance `date` is).
DATE_ELEMENTS = {
    "Condition": ("onsetDateTime", "recordedDate"),
    "MedicationStatement": ("effectiveDateTime", "effectivePeriod", "dateAsserted"),
    "AllergyIntolerance": ("recordedDate",),
    "Encounter": ("period",),
    "Observation": ("effectiveDateTime", "effectivePeriod", "issued"),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "Immunization": ("occurrenceDateTime", "recorded"),
    "CarePlan": ("period", "created"),
    "DocumentReference": ("date",),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod", "issued"),
}
# Where each token parameter looks on each type: the elements FHIR R4 defines the parameter on, or, where
# R4 has no such parameter on the type, the one this server has always searched in its place (an
# Immunization's vaccineCode as its `code`, an Encounter's class and serviceType as its `category`, a
# Condition's or an allergy's clinicalStatus as its `status`). A type does not take a parameter it has no
# entry for: the CapabilityStatement does not list it there, and a search with it is refused.
TOKEN_ELEMENTS: dict[str, dict[str, tuple[str, ...]]] = {
    "Condition": {"code": ("code",), "category": ("category",), "status": ("clinicalStatus",)},
    "AllergyIntolerance": {"code": ("code", "reaction.substance"), "category": ("category",),
                           "status": ("clinicalStatus",)},
    "Observation": {"code": ("code",), "category": ("category",), "status": ("status",)},
    "Procedure": {"code": ("code",), "category": ("category",), "status": ("status",)},
    "MedicationStatement": {"code": ("medicationCodeableConcept", "medicationReference"),
                            "category": ("category",), "status": ("status",)},
    "Immunization": {"code": ("vaccineCode",), "status": ("status",)},
    "Encounter": {"code": ("type",), "category": ("class", "serviceType"), "status": ("status",)},
    "CarePlan": {"category": ("category",), "status": ("status",)},
    "DocumentReference": {"code": ("type",), "category": ("category",), "status": ("status",)},
    "DiagnosticReport": {"code": ("code",), "category": ("category",), "status": ("status",)},
}
# The code system of each searched element that is a plain `code` (R4 binds each to one, and a token's
# `system|code` names it), as the R4 CodeSystems' URLs are.
IMPLIED_SYSTEMS = {
    "AllergyIntolerance.category": "http://hl7.org/fhir/allergy-intolerance-category",
    "Observation.status": "http://hl7.org/fhir/observation-status",
    "Procedure.status": "http://hl7.org/fhir/event-status",
    "MedicationStatement.status": "http://hl7.org/fhir/CodeSystem/medication-statement-status",
    "Immunization.status": "http://hl7.org/fhir/event-status",
    "Encounter.status": "http://hl7.org/fhir/encounter-status",
    "CarePlan.status": "http://hl7.org/fhir/request-status",
    "DocumentReference.status": "http://hl7.org/fhir/document-reference-status",
    "DiagnosticReport.status": "http://hl7.org/fhir/diagnostic-report-status",
}
COMMON_PARAMS = {"patient", "subject", "date", "_lastUpdated", "_count", "_offset", "_sort", "_include", "_cursor"}
REFUSED = {
    "_total": "totals are not given: a count could reveal records withheld from you",
    "_summary": "summaries are not given: a count could reveal records withheld from you",
}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def search_params(resource_type: str) -> list[tuple[str, str, str]]:
    """Each search parameter the type takes besides the paging and include ones: its name, FHIR type and
    the elements it searches (the CapabilityStatement lists exactly these)."""
    tokens = [(name, "token", " | ".join(f"{resource_type}.{e}" for e in elements))
              for name, elements in TOKEN_ELEMENTS[resource_type].items()]
    dates = " | ".join(f"{resource_type}.{e}" for e in DATE_ELEMENTS[resource_type])
    return [("patient", "reference", "the patient's id"), *tokens, ("date", "date", dates),
            ("_lastUpdated", "date", f"{resource_type}.meta.lastUpdated")]


class SearchError(SharedcareError):
    """A search the server will not run as asked: `parameter` names the one at fault (the OperationOutcome's
    `expression`), `issue` is `not-supported` for what the server does not do (an unknown parameter, a
    modifier, a type or include it does not serve) and `invalid` for a value it cannot read."""

    def __init__(self, message: str, parameter: str | None = None, issue: str = "invalid") -> None:
        super().__init__(message)
        self.parameter = parameter
        self.issue = issue


def only_these(params: list[tuple[str, str]], takes: Collection[str], what: str) -> None:
    """Refuse a parameter `what` does not take, or one given more than once, naming it: a parameter ignored
    (or all but one of its values) could answer other than what was asked."""
    names = [name for name, _ in params]
    unknown = sorted(set(names) - set(takes))
    if unknown:
        raise SearchError(f"{what} does not take {', '.join(unknown)} "
                          f"({'it takes ' + ', '.join(sorted(takes)) if takes else 'it takes no parameters'})",
                          unknown[0], "not-supported")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SearchError(f"{what} takes {', '.join(repeated)} once, not more than once", repeated[0])


@dataclass(frozen=True)
class Span:
    """The instants a FHIR date, dateTime or Period covers, [start, end): FHIR search compares ranges, so that
    `2019` is the whole year and an onset of "2019-03" the whole of March (R4 search, date parameters)."""

    start: datetime
    end: datetime


FAR_PAST, FAR_FUTURE = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
_PRECISION = {5: timedelta(minutes=1), 8: timedelta(seconds=1)}  # hh:mm, hh:mm:ss (a fraction: its microsecond)
_DATE = re.compile(r"(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
                   r"(T(?P<clock>\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)(Z|[+-]\d{2}:\d{2})?)?)?)?")


def span(value: str) -> Span:
    """A FHIR date, dateTime or instant as the range it covers, in UTC (one without a zone is taken as UTC, as
    the store keeps every time)."""
    found = _DATE.fullmatch(value)
    try:
        if not found:
            raise ValueError(value)
        year, month, day, clock = found.group("year", "month", "day", "clock")
        if month is None:
            return Span(datetime(int(year), 1, 1, tzinfo=UTC), _year_after(int(year)))
        if day is None:
            start = datetime(int(year), int(month), 1, tzinfo=UTC)
            return Span(start, _year_after(int(year)) if start.month == 12 else start.replace(month=start.month + 1))
        if clock is None:
            start = datetime(int(year), int(month), int(day), tzinfo=UTC)
            return Span(start, start + timedelta(days=1))
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        start = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
        return Span(start, start + _PRECISION.get(len(clock), timedelta(microseconds=1)))
    except (ValueError, OverflowError) as exc:
        raise SearchError(f"'{value}' is not a FHIR date or dateTime") from exc


def _year_after(year: int) -> datetime:
    return datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else FAR_FUTURE


def clinical_span(resource: dict[str, Any]) -> Span | None:
    """The range of time the resource's clinically meaningful date covers: a date of a year covers the year,
    a Period from its start to the end of its end (open where either is missing)."""
    for name in DATE_ELEMENTS.get(resource.get("resourceType", ""), ()):
        value = resource.get(name)
        if isinstance(value, dict):
            low = span(str(value["start"])).start if value.get("start") else FAR_PAST
            high = span(str(value["end"])).end if value.get("end") else FAR_FUTURE
            if value.get("start") or value.get("end"):
                return Span(low, high)
        elif value:
            return span(str(value))
    return None


def clinical_date(resource: dict[str, Any]) -> datetime | None:
    """Where the resource's date begins: what `_sort=date` orders by."""
    found = clinical_span(resource)
    return None if found is None or found.start == FAR_PAST else found.start


def parse_instant(value: str) -> datetime:
    """A FHIR date, dateTime or instant as an aware UTC datetime: where it begins (a date is its midnight UTC,
    a year its first day)."""
    return span(value).start


@dataclass(frozen=True)
class DateFilter:
    """A date parameter's prefix and value, matched as FHIR R4 defines each prefix on ranges: `eq` the value's
    range contains the resource's, `ne` it does not, `gt`/`lt` the resource's range reaches after/before it,
    `ge`/`le` either of those or `eq`, `sa`/`eb` the resource's range lies wholly after/before it, `ap` it
    overlaps the value widened by a tenth of the time between now and the value (the spec's suggestion)."""

    prefix: str
    when: Span

    @classmethod
    def parse(cls, name: str, value: str) -> DateFilter:
        prefix = value[:2] if value[:2] in PREFIXES else "eq"
        raw = value[2:] if value[:2] in PREFIXES else value
        try:
            return cls(prefix, span(raw))
        except SearchError as exc:
            raise SearchError(f"{name}: {exc.message}", name) from exc

    def matches(self, value: Span | None) -> bool:
        if value is None:
            return False
        low, high = self.when.start, self.when.end
        within = low <= value.start and value.end <= high
        if self.prefix == "ap":
            slack = abs(utcnow() - low) / 10
            return value.start < high + min(slack, FAR_FUTURE - high) and value.end > low - min(slack, low - FAR_PAST)
        return {"eq": within, "ne": not within, "gt": value.end > high, "lt": value.start < low,
                "ge": value.end > high or within, "le": value.start < low or within,
                "sa": value.start >= high, "eb": value.end <= low}[self.prefix]


@dataclass(frozen=True)
class Token:
    """One value of a token parameter, in R4's forms: `code` (in any system), `system|code`, `|code` (a
    code of no system) and `system|` (any code of the system)."""

    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code

    @classmethod
    def parse(cls, name: str, value: str) -> tuple[Token, ...]:
        """The comma-separated alternatives of one value (any of them matches)."""
        options = []
        for option in value.split(","):
            if option in ("", "|"):
                raise SearchError(f"{name}: an empty value is not a token (give code, system|code, |code or "
                                  "system|): it would match nothing, or everything", name)
            system, bar, code = option.partition("|")
            options.append(cls(system, code or None) if bar else cls(None, option))
        return tuple(options)

    def matches(self, system: str | None, code: str | None) -> bool:
        return (self.system is None or (system or "") == self.system) and (self.code is None or code == self.code)


def _at(resource: dict[str, Any], path: str) -> list[Any]:
    """The values at a dotted element path, each list walked through."""
    values: list[Any] = [resource]
    for name in path.split("."):
        values = [v for item in values if isinstance(item, dict)
                  for v in (item[name] if isinstance(item.get(name), list) else [item.get(name)])]
    return [v for v in values if v is not None]


def _codings(resource: dict[str, Any], path: str) -> list[tuple[str | None, str | None]]:
    """The (system, code) pairs a token parameter matches at `path`: each Coding of a CodeableConcept, a bare
    Coding (an Encounter's class), a plain code (with the system R4 binds the element to) and, for a
    medicationReference to a contained Medication, that Medication's code."""
    found: list[tuple[str | None, str | None]] = []
    for value in _at(resource, path):
        if isinstance(value, str):
            found.append((IMPLIED_SYSTEMS.get(f"{resource.get('resourceType')}.{path}"), value))
            continue
        if path == "medicationReference":
            value = _contained(resource, value).get("code")
        if isinstance(value, dict):
            found += [(c.get("system"), c.get("code")) for c in value.get("coding") or [value]
                      if isinstance(c, dict) and ("code" in c or "system" in c)]
    return found


def _contained(resource: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The contained resource a `#id` reference names (empty if it names none)."""
    local = str(reference.get("reference", ""))
    return next((r for r in resource.get("contained") or []
                 if local.startswith("#") and isinstance(r, dict) and r.get("id") == local[1:]), {})


@dataclass
class ClinicalQuery:
    """A parsed search on one clinical type, for one patient."""

    resource_type: str
    patient: str
    # each token parameter given (FHIR AND-s repeated parameters), each value its alternatives (OR)
    tokens: tuple[tuple[str, tuple[Token, ...]], ...] = ()
    dates: tuple[DateFilter, ...] = ()
    last_updated: tuple[DateFilter, ...] = ()
    count: int = 50
    offset: int = 0
    after: tuple[datetime | str, ...] | None = None  # `_cursor`: the position of the previous page's last match
    cursor_key: bytes = field(default=b"", repr=False)  # what `_cursor` is sealed with (`page_cursor_key`)
    sealed_for: str = ""  # the search a `_cursor` is sealed for: its type, patient and order
    sort_descending: bool | None = None
    include_patient: bool = False

    @classmethod
    def parse(cls, resource_type: str, params: list[tuple[str, str]], cursor_key: bytes = b"") -> ClinicalQuery:
        """`cursor_key`: what `_cursor` is sealed with; without one (a search not served over HTTP) a key of
        this process's own."""
        takes = COMMON_PARAMS | set(TOKEN_ELEMENTS[resource_type])
        for name, _ in params:
            if name in REFUSED:
                raise SearchError(f"{name}: {REFUSED[name]}", name, "not-supported")
            if ":" in name:
                raise SearchError(f"search modifier '{name}' is not supported: a modifier ignored could "
                                  "return the opposite of what was asked", name, "not-supported")
            if name not in takes:
                raise SearchError(f"search parameter '{name}' is not supported on {resource_type} "
                                  f"(supported: {', '.join(sorted(takes))})", name, "not-supported")
        values: dict[str, list[str]] = {}
        for name, value in params:
            values.setdefault(name, []).append(value)
        people = values.get("patient", []) + values.get("subject", [])
        if len(people) > 1:
            raise SearchError("give patient=<id> once: searches are per patient (patient and subject name the "
                              "same, and two patients are never searched together)", "patient")
        patient = (people or [""])[0].removeprefix("Patient/")
        if not patient:
            raise SearchError("give patient=<id>: searches are per patient", "patient")
        for name in ("_count", "_offset", "_sort", "_cursor"):
            if len(values.get(name, [])) > 1:
                raise SearchError(f"{name}: give it once, not more than once", name)
        query = cls(resource_type=resource_type, patient=patient, cursor_key=cursor_key or _PROCESS_CURSOR_KEY)
        query.tokens = tuple((name, Token.parse(name, value)) for name, value in params
                             if name in TOKEN_ELEMENTS[resource_type])
        query.dates = tuple(DateFilter.parse("date", v) for v in values.get("date", []))
        query.last_updated = tuple(DateFilter.parse("_lastUpdated", v) for v in values.get("_lastUpdated", []))
        query.count = _integer(values, "_count", 50, 1, 500)
        query.offset = _integer(values, "_offset", 0, 0, 10_000_000)
        sort = _first(values, "_sort")
        if sort not in (None, "date", "-date"):
            raise SearchError("_sort: only 'date' and '-date' are supported", "_sort", "not-supported")
        query.sort_descending = None if sort is None else sort.startswith("-")
        query.sealed_for = f"{resource_type}|{patient}|{sort}"
        cursor = _first(values, "_cursor")
        if cursor is not None:
            if query.offset:
                raise SearchError("_cursor: give it or _offset, not both (a next link carries _cursor alone)",
                                  "_cursor")
            query.after = _position_of(query.cursor_key, query.sealed_for, cursor, 2 if sort is None else 3)
        include = values.get("_include", [])
        if any(i not in (f"{resource_type}:patient", f"{resource_type}:subject") for i in include):
            raise SearchError(f"_include: only {resource_type}:patient is supported", "_include", "not-supported")
        query.include_patient = bool(include)
        return query

    def matches(self, resource: dict[str, Any]) -> bool:
        elements = TOKEN_ELEMENTS[self.resource_type]
        for name, options in self.tokens:
            have = [pair for path in elements[name] for pair in _codings(resource, path)]
            if not any(option.matches(*pair) for option in options for pair in have):
                return False
        if self.dates:
            when = clinical_span(resource)
            if not all(f.matches(when) for f in self.dates):
                return False
        updated = (resource.get("meta") or {}).get("lastUpdated")
        return all(f.matches(span(updated) if updated else None) for f in self.last_updated)

    def select(self, resources: list[tuple[dict[str, Any], datetime]]) -> tuple[list[dict[str, Any]], str | None]:
        """The page of matching resources (each with when it was recorded), and the `_cursor` of the next page
        if there is one. The order is total (newest recorded first, or by date; ties by when recorded, then
        id) and a page starts after the previous page's last match, wherever it now is: a resource withdrawn
        or arriving between pages shifts no later page (an offset would skip or repeat one)."""
        descending = self.sort_descending is not False
        keyed = sorted(((self._position(r, at), r) for r, at in resources if self.matches(r)),
                       key=lambda pair: pair[0], reverse=descending)
        if self.after is not None:
            after = self.after
            keyed = [(key, r) for key, r in keyed if (key < after if descending else key > after)]
        page = keyed[self.offset:self.offset + self.count]
        more = self.offset + self.count < len(keyed)
        cursor = _cursor_of(self.cursor_key, self.sealed_for, page[-1][0]) if more and page else None
        return [r for _, r in page], cursor

    def _position(self, resource: dict[str, Any], recorded_at: datetime) -> tuple[Any, ...]:
        """Where a resource sorts: (recorded, id), after its date first with `_sort`."""
        key = (recorded_at.astimezone(UTC), str(resource.get("id", "")))
        return key if self.sort_descending is None else (clinical_date(resource) or _FLOOR, *key)


_FLOOR = datetime.min.replace(tzinfo=UTC)
_PROCESS_CURSOR_KEY = os.urandom(32)


def page_cursor_key(secret: str) -> bytes:
    """What `_cursor` is sealed with: the service's secret under a label of its own (as `consent_id_key`)."""
    return sealing.key(secret, "sharedcare page cursor key")


def _cursor_of(key: bytes, sealed_for: str, position: tuple[Any, ...]) -> str:
    """A page position as a token sealed (AES-GCM) for one search: its times (when recorded, a clinical
    date) are not readable in a URL, which proxies and logs keep, and a token changed or moved to another
    patient, type or order does not open."""
    return sealing.seal(key, sealed_for, [v.isoformat() if isinstance(v, datetime) else v for v in position])


def _position_of(key: bytes, sealed_for: str, cursor: str, size: int) -> tuple[datetime | str, ...]:
    """The position `_cursor_of` sealed for this search, checked: `size` parts, times then an id."""
    try:
        words = sealing.unseal(key, sealed_for, cursor)
        if not isinstance(words, list) or len(words) != size or not all(isinstance(w, str) for w in words):
            raise ValueError(cursor)
        times = [datetime.fromisoformat(w) for w in words[:-1]]
        if any(t.tzinfo is None for t in times):
            raise ValueError(cursor)
    except ValueError as exc:
        raise SearchError("_cursor: not a page position this server gave; follow the Bundle's next link "
                          "unchanged, with the same _sort", "_cursor") from exc
    return (*(t.astimezone(UTC) for t in times), words[-1])


def _integer(values: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    """A whole number in the digits 0-9 (int() also takes "1_0", " 2 " and other scripts' digits)."""
    raw = _first(values, name)
    if raw is None:
        return default
    if not re.fullmatch(r"-?[0-9]+", raw):
        raise SearchError(f"{name}: '{raw[:20]}' is not a whole number in the digits 0-9", name)
    if len(raw.lstrip("-0")) > len(str(high)) or not low <= int(raw) <= high:
        raise SearchError(f"{name}: must be between {low} and {high}", name)
    return int(raw)


def _first(values: dict[str, list[str]], name: str) -> str | None:
    given = values.get(name)
    return given[0] if given else None
