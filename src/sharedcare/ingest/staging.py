"""Staging (parse, map, shape, validate) of a file's messages, in this process or in worker processes.

Validation with fhir.resources is most of what ingest costs, and staging one message needs nothing from
the store, so large files are staged by a pool of worker processes while the ingesting process stores
the results one message at a time, in file order. Storing stays single-writer and in order, so atomicity
per message, ordering by event time, idempotence and quarantine are the same as staging inline.

The pool is bounded: at most a few batches per worker are in flight, so a file of any size streams
through in bounded memory. Staging outcomes cross the process boundary as a StagedMessage or as
(message, where) of the MessageError, rebuilt here (an exception's own pickling would lose `where`).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from typing import TypeVar

from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.governance.classify import classify
from sharedcare.governance.framework import Framework
from sharedcare.ingest.messages import (
    Adapter,
    Condition,
    DateReading,
    MessageError,
    RawMessage,
    StagedMessage,
    around_meta,
    content_hash,
)

log = logging.getLogger("sharedcare.ingest")

Outcome = StagedMessage | MessageError
F = TypeVar("F")  # what the caller knows a file by
# a MessageError as a worker hands it back: message, where, sender, its table 0357 condition, rejected (AR),
# its OperationOutcome issue type, a CSV row's date readings
Refused = tuple[str, str | None, str | None, Condition, bool, str, tuple[DateReading, ...]]
BATCH = 32  # messages a worker stages per task: enough to make the hand-over cheap, few enough to stay small
IN_FLIGHT_PER_WORKER = 3
# The collector's youngest generation is collected after this many new container objects while an ingest
# runs, in the writer and the workers (Python's default is 700): an ingest makes and drops millions of them
# (the staged messages, their rows), nearly all freed by their reference counts, and collecting every 700
# was about 7% of the writer's CPU at 100,000 people, each pass promoting the batches in flight for the
# older generations to walk again.
INGEST_GC_THRESHOLD = 20_000
WORKER_NICENESS = 5  # how much lower the workers' scheduling priority is than the writer's


def stage(adapter: Adapter, raw: RawMessage, framework: Framework, source: str | None) -> StagedMessage:
    """Stage one message or raise MessageError.

    Input so malformed that an adapter fails in a way nobody foresaw is still the message's fault, not
    the feed's: it becomes a MessageError (quarantined, logged with its traceback) so the rest goes on."""
    if raw.refused:
        raise MessageError(raw.refused, raw.where)
    try:
        staged = adapter.stage(raw, framework, source)
        org = framework.organisation(staged.source_org)  # classified here, in a worker for large files,
        kind = org.kind if org else "unknown"  # not in the writer (its meta, stamped there, is not read)
        for item in staged.resources:
            item.content_hash = content_hash(item.content)
            item.category = classify(item.content, kind, framework)
            item.around_meta = around_meta(item.content)  # the writer then has only the meta to encode
        return staged
    except MessageError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring: never let one message stop a feed
        log.exception("unexpected failure on %s", raw.where)
        raise MessageError(f"could not be read ({type(exc).__name__}: {str(exc)[:200]})", raw.where) from exc


_worker_framework: Framework | None = None


def _start_worker(framework: Framework) -> None:
    global _worker_framework  # noqa: PLW0603 - one framework per worker process, set once at its start
    _worker_framework = framework
    # The single writer is the run's critical path and the workers keep ahead of it with time to spare:
    # where they share a core, the scheduler should give it to the writer first.
    os.nice(WORKER_NICENESS)
    gc.freeze()  # the models and modules the forkserver preloaded: out of the collector's passes, as the
    gc.set_threshold(INGEST_GC_THRESHOLD, *gc.get_threshold()[1:])  # writer keeps its own (pipeline.py)


def _stage_batch(adapter: Adapter, batch: list[RawMessage],
                 source: str | None) -> list[StagedMessage | Refused]:
    assert _worker_framework is not None  # noqa: S101 - set by the pool's initializer
    out: list[StagedMessage | Refused] = []
    for raw in batch:
        try:
            out.append(stage(adapter, raw, _worker_framework, source))
        except MessageError as exc:
            out.append((exc.message, exc.where, exc.source_org, exc.condition, exc.rejected, exc.issue,
                        exc.date_readings))
    return out


class Stager:
    """Stages the messages of a run's files, inline or with `workers` processes (started on first use,
    stopped by `close`). Both yield (file, raw, outcome) for each message in the order read, then
    (file, None, None) when a file's messages are done."""

    def __init__(self, framework: Framework, workers: int) -> None:
        self.framework = framework
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def inline(self, files: Iterable[tuple[F, Adapter, Iterable[RawMessage]]],
               source: str | None) -> Iterator[tuple[F, RawMessage | None, Outcome | None]]:
        for file, adapter, raws in files:
            for raw in raws:
                try:
                    yield file, raw, stage(adapter, raw, self.framework, source)
                except MessageError as exc:
                    yield file, raw, exc
            yield file, None, None

    def parallel(self, files: Iterable[tuple[F, Adapter, Iterable[RawMessage]]],
                 source: str | None) -> Iterator[tuple[F, RawMessage | None, Outcome | None]]:
        """As `inline`, staged by the worker processes. The workers read on into the next file while the
        caller stores the end of one (a feed is many files: waiting at each end kept a core idle)."""
        if self.workers < 1:
            yield from self.inline(files, source)
            return
        pool = self._start()
        pending: deque[tuple[F, list[RawMessage], Future[list[StagedMessage | Refused]] | None]] = (
            deque())
        for file, adapter, raws in files:
            messages = iter(raws)
            while True:
                batch = list(islice(messages, BATCH))
                pending.append((file, batch, pool.submit(_stage_batch, adapter, batch, source) if batch else None))
                if len(pending) >= self.workers * IN_FLIGHT_PER_WORKER:  # (a file's end counts: memory stays bounded)
                    yield from _outcomes(*pending.popleft())
                if not batch:  # the file's end
                    break
        while pending:
            yield from _outcomes(*pending.popleft())

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: workers fork from a clean server process, never from this one (which may hold
            # database connections and threads such as the progress bar's).
            context = multiprocessing.get_context("forkserver")
            # imported once in the server, so each worker starts with the models it validates against
            context.set_forkserver_preload(["sharedcare.ingest.pipeline",
                                            *(f"fhir.resources.R4B.{name.lower()}" for name in sorted(RECORD_TYPES))])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker,
                                             initargs=(self.framework,))
        return self._pool

    def close(self, stopping: bool = False) -> None:
        """Stop the workers once their work is done or, when the run is stopping (SIGTERM), at once: a worker
        the signal missed (one forked just after it) would otherwise be waited for without end."""
        if self._pool is not None:
            if stopping:  # ProcessPoolExecutor has no public way to end its workers before their work is done
                for process in list(self._pool._processes.values()):
                    process.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _outcomes(file: F, batch: list[RawMessage], future: Future[list[StagedMessage | Refused]] | None,
              ) -> Iterator[tuple[F, RawMessage | None, Outcome | None]]:
    if future is None:
        yield file, None, None
        return
    for raw, result in zip(batch, future.result(), strict=True):
        yield file, raw, result if isinstance(result, StagedMessage) else MessageError(*result)
