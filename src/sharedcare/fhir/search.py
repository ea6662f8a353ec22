"""FHIR search parameters applied to resources governance has already released.

Searching after the decision (never before) is what keeps `_include` and friends from returning
anything a direct read would refuse (TRUST AC4). The parameters are the ones the CapabilityStatement
lists; anything else is refused with a clear message rather than silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sharedcare.clock import utcnow
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
                 "_sort", "_include", "_cursor"}
REFUSED = {
    "_total": "totals are not given: a count could reveal records withheld from you",
    "_summary": "summaries are not given: a count could reveal records withheld from you",
}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


class SearchError(SharedcareError):
    """A search the server will not run as asked (unknown or refused parameter, bad value)."""


def only_these(params: list[tuple[str, str]], takes: Collection[str], what: str) -> None:
    """Refuse a parameter `what` does not take, or one given more than once, naming it: a parameter ignored
    (or all but one of its values) could answer other than what was asked."""
    names = [name for name, _ in params]
    unknown = sorted(set(names) - set(takes))
    if unknown:
        raise SearchError(f"{what} does not take {', '.join(unknown)} "
                          f"({'it takes ' + ', '.join(sorted(takes)) if takes else 'it takes no parameters'})")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SearchError(f"{what} takes {', '.join(repeated)} once, not more than once")


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
            raise SearchError(f"{name}: {exc.message}") from exc

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
    codes: tuple[str, ...] = ()  # each given `code` must match (FHIR: repeated parameters are AND-ed)
    categories: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
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
        people = values.get("patient", []) + values.get("subject", [])
        if len(people) > 1:
            raise SearchError("give patient=<id> once: searches are per patient (patient and subject name the "
                              "same, and two patients are never searched together)")
        patient = (people or [""])[0].removeprefix("Patient/")
        if not patient:
            raise SearchError("give patient=<id>: searches are per patient")
        for name in ("_count", "_offset", "_sort", "_cursor"):
            if len(values.get(name, [])) > 1:
                raise SearchError(f"{name}: give it once, not more than once")
        query = cls(patient=patient, cursor_key=cursor_key or _PROCESS_CURSOR_KEY)
        query.codes = tuple(values.get("code", []))
        query.categories = tuple(values.get("category", []))
        query.statuses = tuple(values.get("status", []))
        query.dates = tuple(DateFilter.parse("date", v) for v in values.get("date", []))
        query.last_updated = tuple(DateFilter.parse("_lastUpdated", v) for v in values.get("_lastUpdated", []))
        query.count = _integer(values, "_count", 50, 1, 500)
        query.offset = _integer(values, "_offset", 0, 0, 10_000_000)
        sort = _first(values, "_sort")
        if sort not in (None, "date", "-date"):
            raise SearchError("_sort: only 'date' and '-date' are supported")
        query.sort_descending = None if sort is None else sort.startswith("-")
        query.sealed_for = f"{resource_type}|{patient}|{sort}"
        cursor = _first(values, "_cursor")
        if cursor is not None:
            if query.offset:
                raise SearchError("_cursor: give it or _offset, not both (a next link carries _cursor alone)")
            query.after = _position_of(query.cursor_key, query.sealed_for, cursor, 2 if sort is None else 3)
        include = values.get("_include", [])
        if any(i not in (f"{resource_type}:patient", f"{resource_type}:subject") for i in include):
            raise SearchError(f"_include: only {resource_type}:patient is supported")
        query.include_patient = bool(include)
        return query

    def matches(self, resource: dict[str, Any]) -> bool:
        if not all(_token_matches(resource, CODE_ELEMENTS, code) for code in self.codes):
            return False
        if not all(_token_matches(resource, ("category", "class", "serviceType"), c) for c in self.categories):
            return False
        clinical = {c.get("code") for c in (resource.get("clinicalStatus") or {}).get("coding", [])}
        statuses = clinical | {str(resource.get("status", ""))}
        if not all(statuses & set(status.split(",")) for status in self.statuses):
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
    return hmac.digest(secret.encode(), b"sharedcare page cursor key", "sha256")


def _cursor_of(key: bytes, sealed_for: str, position: tuple[Any, ...]) -> str:
    """A page position as a token sealed (AES-GCM) for one search: its times (when recorded, a clinical
    date) are not readable in a URL, which proxies and logs keep, and a token changed or moved to another
    patient, type or order does not open."""
    words = [v.isoformat() if isinstance(v, datetime) else v for v in position]
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(key).encrypt(nonce, json.dumps(words).encode(), sealed_for.encode())
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def _position_of(key: bytes, sealed_for: str, cursor: str, size: int) -> tuple[datetime | str, ...]:
    """The position `_cursor_of` sealed for this search, checked: `size` parts, times then an id."""
    try:
        sealed = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        words = json.loads(AESGCM(key).decrypt(sealed[:12], sealed[12:], sealed_for.encode()))
        if not isinstance(words, list) or len(words) != size or not all(isinstance(w, str) for w in words):
            raise ValueError(cursor)
        times = [datetime.fromisoformat(w) for w in words[:-1]]
        if any(t.tzinfo is None for t in times):
            raise ValueError(cursor)
    except (ValueError, binascii.Error, InvalidTag) as exc:
        raise SearchError("_cursor: not a page position this server gave; follow the Bundle's next link "
                          "unchanged, with the same _sort") from exc
    return (*(t.astimezone(UTC) for t in times), words[-1])


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
