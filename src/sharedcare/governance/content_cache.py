"""Decoded stored documents, kept between requests so a large record is not decoded on every read.

Decoding 1,100 JSON documents was the largest part of a large `$everything`. This cache holds only
content: which resources belong to a person, their categories, provenance and times are read from the
store on every request, and a document is reused only while its stamp (version, content hash and
received time) is the one the store holds now. Every write of a resource's content goes through the
ingest pipeline (`Pipeline._store`: FHIR create, update and batch, feeds, entered-in-error), which gives
it a new version, the hash of what was sent and a new received time, and the stored document is built
from exactly those three (its `meta.versionId` and `meta.lastUpdated` too). So an update, a withdrawal or
a content sent back to an earlier state takes effect on the next read; a merge or an unmerge (which moves
source records between people) and a reclassification (which rewrites `category`) change columns read
afresh, not content. Nothing writes to the cache but a read, so another process's write (a second server,
an ingest run, on SQLite or PostgreSQL) is seen as soon as it is committed: its stamp no longer matches.

Each document also keeps what the gateway made from it (`kept`): the decision's view of it (labels,
withdrawn or not, category) and each shape it was served in (the tier applied, the person whose record
it was served in, with its provenance), with the shape's encoded JSON, so a large `$everything` is
assembled from bytes rather than redacted, copied and encoded again on every request. Each is a pure
function of the document and of the inputs its key names (those read afresh from the store, such as the
category or the recorded time, among them), so it lives and dies with the document: a new stamp is a new
document with nothing kept.

The gateway also keeps what it made of a whole person's rows (`view`, `keep_view`: the decision's view of
each, and the count of those alike), valid only while the rows read now equal, value for value, the rows
it was made from (each resource's id, type, source, category and classification key, times, person, and
its content: the cached document, or one equal to it). It is a pure function of those rows, so equal rows
give an equal view; anything else (an update, a withdrawal, a merge moving a row, a reclassification, a
row added or gone) is a miss, made afresh from the rows.

Bounded by the stored JSON's size plus what is kept (`CAPACITY_BYTES`), least recently used first out;
the views by the size of the documents they hold (`VIEW_BYTES`), counted the same way.
One cache per engine: two stores in one process (tests) never share documents. Cached documents and
shapes are shared between requests and threads and must never be changed in place: the gateway and
everything after it copy before they rewrite (`GovernedRecords._serve`, `classify.at_tier`,
`combined_patient`); the test suite checks every cached document against the store, and every served
shape against its JSON, after each test (tests/conftest.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar, cast
from weakref import WeakKeyDictionary

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

Stamp = tuple[int, str, datetime | str]  # version, content hash, received at as read raw (SQLite: its text)
T = TypeVar("T")
# Stored JSON bytes held per store. Decoded, a FHIR document takes about 6 times its JSON size in Python
# objects (tracemalloc over the synthetic ICS's documents: 5.9x for its FHIR feeds, 5.5x for resources
# mapped from HL7 v2), so this is at most about 190 MB per server process: some 30,000 typical
# documents, or a few dozen large records. What is kept with a document counts its own size (a served
# shape, its JSON's); a shape at tier 3 shares the document's elements, at tier 2 it is a copy.
CAPACITY_BYTES = 32 * 1024 * 1024
# The documents the kept views hold (`ContentCache.view`), counted as the cache counts them, least
# recently used first out. A view is kept only when the cache holds every one of its documents, but it
# keeps them alive after the cache lets them go: at most this much more than `CAPACITY_BYTES`.
VIEW_BYTES = 32 * 1024 * 1024


class _Entry:
    """One document: its stamp, content, the size counted for it, and what was made from it."""

    __slots__ = ("content", "kept", "size", "stamp")

    def __init__(self, stamp: Stamp, content: dict[str, Any], size: int) -> None:
        self.stamp, self.content, self.size = stamp, content, size
        self.kept: dict[Hashable, Any] = {}


class ContentCache:
    """A least-recently-used map of resource id to (stamp, decoded content, what was made from it),
    bounded by the total size of the stored JSON it was decoded from and of what was kept with it."""

    def __init__(self, capacity_bytes: int = CAPACITY_BYTES) -> None:
        self.capacity_bytes = capacity_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._views: OrderedDict[Hashable, tuple[Sequence[Any], Any, int]] = OrderedDict()  # rows, view, bytes
        self.view_bytes = 0
        self._lock = threading.Lock()  # sync routes run in worker threads

    def get_many(self, wanted: Iterable[tuple[str, Stamp]]) -> dict[str, dict[str, Any]]:
        """The documents held with exactly the stamp asked for; any other stamp is a miss."""
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            entries = self._entries
            for resource_id, stamp in wanted:
                entry = entries.get(resource_id)
                if entry is not None and entry.stamp == stamp:
                    entries.move_to_end(resource_id)
                    found[resource_id] = entry.content
        return found

    def put_many(self, documents: Iterable[tuple[str, Stamp, dict[str, Any], int]]) -> None:
        """Hold each (id, stamp, content, size of its stored JSON), replacing what the id held; a document
        larger than the whole capacity is not held."""
        with self._lock:
            for resource_id, stamp, content, size in documents:
                old = self._entries.pop(resource_id, None)
                if old is not None:
                    self.size_bytes -= old.size
                if size <= self.capacity_bytes:
                    self._entries[resource_id] = _Entry(stamp, content, size)
                    self.size_bytes += size
            self._evict()

    def kept(self, resource_id: str, content: dict[str, Any], key: Hashable, make: Callable[[], T],
             size: Callable[[T], int] | None = None) -> T:
        """What `make` makes from `content` and the inputs `key` names: kept with the document when
        `content` is the one held for `resource_id` (a document from `get_many`), made afresh otherwise.
        `make` must be a pure function of the document and the key; `size` says what to count for it."""
        entry = self._entries.get(resource_id)  # without the lock: what is kept is added, never changed
        if entry is None or entry.content is not content:
            return make()
        found = entry.kept.get(key, _MISSING)
        if found is not _MISSING:
            return cast(T, found)
        made = make()
        with self._lock:
            if self._entries.get(resource_id) is entry:  # not evicted or replaced meanwhile
                entry.kept[key] = made
                if size is not None:
                    counted = size(made)
                    entry.size += counted
                    self.size_bytes += counted
                    self._evict()
        return made

    def kept_each(self, wanted: list[tuple[str, dict[str, Any], Hashable]], make: Callable[[int], T]) -> list[T]:
        """`kept` for many documents at once (one call, not one per resource of a large record): for the
        i-th (resource id, content, key), what `make(i)` makes, kept as `kept` keeps it."""
        entries, out = self._entries, list[T]()
        for i, (resource_id, content, key) in enumerate(wanted):
            entry = entries.get(resource_id)  # without the lock, as in `kept`
            found = entry.kept.get(key, _MISSING) if entry is not None and entry.content is content else _MISSING
            out.append(self.kept(resource_id, content, key, partial(make, i)) if found is _MISSING else cast(T, found))
        return out

    def view(self, key: Hashable, rows: Sequence[Any]) -> Any:
        """What was kept under `key` (`keep_view`) from rows equal to `rows`, else None. Comparing a large
        record's rows costs a tenth of making its view again: the documents in them are nearly always the
        very objects held here, compared by identity. Rows equal but not the same objects (a document read
        again) replace the kept ones, so the next comparison is by identity again."""
        with self._lock:
            held = self._views.get(key)
            if held is not None:
                self._views.move_to_end(key)
        if held is None or held[0] != rows:
            return None
        if held[0] is not rows:
            with self._lock:
                if self._views.get(key) is held:
                    self._views[key] = (rows, held[1], held[2])
        return held[1]

    def keep_view(self, key: Hashable, rows: Sequence[Any], made: Any,
                  documents: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Keep `made`, a pure function of `rows` (and of what `key` names), under `key`, if the cache holds
        every one of `documents` (resource id, content: what the rows hold), counted at the cache's size for
        them. An empty view is not kept: asking for people who do not exist must not fill memory."""
        with self._lock:
            old = self._views.pop(key, None)
            if old is not None:
                self.view_bytes -= old[2]
            size = 0
            for resource_id, content in documents:
                entry = self._entries.get(resource_id)
                if entry is None or entry.content is not content:
                    return
                size += entry.size
            if not rows or size > VIEW_BYTES:
                return
            self._views[key] = (rows, made, size)
            self.view_bytes += size
            while self.view_bytes > VIEW_BYTES:
                self.view_bytes -= self._views.popitem(last=False)[1][2]

    def _evict(self) -> None:
        while self.size_bytes > self.capacity_bytes:
            _, entry = self._entries.popitem(last=False)
            self.size_bytes -= entry.size

    def entries(self) -> Iterator[tuple[str, Stamp, dict[str, Any]]]:
        """What is held now (a copy of the list), for checks."""
        with self._lock:
            held = [(rid, entry.stamp, entry.content) for rid, entry in self._entries.items()]
        return iter(held)

    def made(self) -> Iterator[tuple[str, Hashable, Any]]:
        """Everything kept with the documents now (a copy of the list), for checks."""
        with self._lock:
            held = [(rid, key, made) for rid, entry in self._entries.items() for key, made in entry.kept.items()]
        return iter(held)

    def __len__(self) -> int:
        return len(self._entries)


_MISSING = object()


_CACHES: WeakKeyDictionary[Engine, ContentCache] = WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_of(engine: Engine) -> ContentCache:
    """The cache of the store this engine reads."""
    with _CACHES_LOCK:
        cache = _CACHES.get(engine)
        if cache is None:
            cache = _CACHES[engine] = ContentCache()
        return cache


def content_cache(session: Session) -> ContentCache:
    """The cache of the store this session reads."""
    bind = session.get_bind()
    return cache_of(bind if isinstance(bind, Engine) else bind.engine)
