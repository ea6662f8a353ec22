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

Bounded by the stored JSON's size (`CAPACITY_BYTES`), least recently used first out. One cache per
engine: two stores in one process (tests) never share documents. Cached documents are shared between
requests and threads and must never be changed in place: the gateway and everything after it copy
before they rewrite (`GovernedRecords._serve`, `classify.at_tier`, `combined_patient`); the test suite
checks every cached document against the store after each test (tests/conftest.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

Stamp = tuple[int, str, datetime]  # version, content hash, received at
# Stored JSON bytes held per store. Decoded, a FHIR document takes about 6 times its JSON size in Python
# objects (tracemalloc over the synthetic ICS's documents: 5.9x for its FHIR feeds, 5.5x for resources
# mapped from HL7 v2), so this is at most about 190 MB per server process: some 30,000 typical
# documents, or a few dozen large records.
CAPACITY_BYTES = 32 * 1024 * 1024


class ContentCache:
    """A least-recently-used map of resource id to (stamp, decoded content), bounded by the total size of
    the stored JSON it was decoded from."""

    def __init__(self, capacity_bytes: int = CAPACITY_BYTES) -> None:
        self.capacity_bytes = capacity_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[str, tuple[Stamp, dict[str, Any], int]] = OrderedDict()
        self._lock = threading.Lock()  # sync routes run in worker threads

    def get_many(self, wanted: Iterable[tuple[str, Stamp]]) -> dict[str, dict[str, Any]]:
        """The documents held with exactly the stamp asked for; any other stamp is a miss."""
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            entries = self._entries
            for resource_id, stamp in wanted:
                entry = entries.get(resource_id)
                if entry is not None and entry[0] == stamp:
                    entries.move_to_end(resource_id)
                    found[resource_id] = entry[1]
        return found

    def put_many(self, documents: Iterable[tuple[str, Stamp, dict[str, Any], int]]) -> None:
        """Hold each (id, stamp, content, size of its stored JSON), replacing what the id held; a document
        larger than the whole capacity is not held."""
        with self._lock:
            for resource_id, stamp, content, size in documents:
                old = self._entries.pop(resource_id, None)
                if old is not None:
                    self.size_bytes -= old[2]
                if size <= self.capacity_bytes:
                    self._entries[resource_id] = (stamp, content, size)
                    self.size_bytes += size
            while self.size_bytes > self.capacity_bytes:
                _, (_, _, size) = self._entries.popitem(last=False)
                self.size_bytes -= size

    def entries(self) -> Iterator[tuple[str, Stamp, dict[str, Any]]]:
        """What is held now (a copy of the list), for checks."""
        with self._lock:
            held = [(rid, stamp, content) for rid, (stamp, content, _) in self._entries.items()]
        return iter(held)

    def __len__(self) -> int:
        return len(self._entries)


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
