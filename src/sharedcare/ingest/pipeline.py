"""The one ingest pipeline: read, stage, link, store; quarantine what cannot be accepted; report.

Every format's adapter produces StagedMessages; this module does what all formats share. Each message
is stored in its own transaction (atomic per message), so a bad message never takes good ones with it,
and a message already stored is never half-overwritten. Storing is idempotent: a resource whose
content is unchanged is reported as unchanged, and an update older than what is stored (by event
time, not arrival) does not overwrite the newer one.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from threading import Event
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from sharedcare.clock import utcnow
from sharedcare.config import event_skew, load_settings
from sharedcare.fhir.lifecycle import entered_in_error
from sharedcare.fhir.uk_core import claims_registration
from sharedcare.governance.agreements import effective_agreements
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.classify import classification_key, classify
from sharedcare.governance.framework import Agreement, Framework
from sharedcare.governance.review import flag_registration_conflict
from sharedcare.identity.links import LinkError, merge_source_records
from sharedcare.identity.mpi import block_for, hold_matching, link_found_record, source_record
from sharedcare.identity.realtime import Block
from sharedcare.ingest import csv_extract, fhir_bundle, hl7v2
from sharedcare.ingest.messages import (
    Adapter,
    CertifiedSender,
    MessageError,
    RawMessage,
    StagedMessage,
    StagedResource,
    WriteRefused,
    certificate_in,
    content_hash,
    cut,
    mllp_sender,
    sent_by,
)
from sharedcare.ingest.resent import identity
from sharedcare.ingest.staging import INGEST_GC_THRESHOLD, Outcome, Stager, stage
from sharedcare.store.database import Database, Encoded, Prepared, PreparedObjects, json_dumps, json_loads
from sharedcare.store.models import IS_PATIENT, MatchReview, PatientRecord, Quarantine, Resource, ResourceVersion

log = logging.getLogger("sharedcare.ingest")

FORMAT_BY_SUFFIX = {".json": "fhir", ".ndjson": "fhir", ".xml": "fhir", ".hl7": "hl7v2", ".csv": "csv"}
# Each format's adapter: how a file splits into messages, and how one message is staged.
ADAPTERS: dict[str, Adapter] = {"fhir": Adapter(fhir_bundle.read_messages, fhir_bundle.stage_fhir),
                                "hl7v2": Adapter(hl7v2.read_messages, hl7v2.stage_hl7),
                                "csv": Adapter(csv_extract.read_messages, csv_extract.stage_csv)}
# Runs whose files add up to this size are staged by worker processes (see staging.py), every file of them (a
# feed comes as many files of 1,000 people each); for less, starting the workers costs more than they save.
PARALLEL_FROM_BYTES = 1024 * 1024
# What a source is told of its merge held for review (`links.source_merge`): its own two records and the
# item's number, never why (which would tell it of other organisations' records, or of a number it never sent)
MERGE_HELD = ("the merge of patient '{retired}' into '{surviving}' is held for review (MPI review #{review}): a "
              "source's merge moves only its own record, and this one waits for a reviewer; nothing was merged")
STORE_BATCH = 64  # messages of a file stored per transaction (see Pipeline._store_batch)
REPORT_LISTS = 1000  # held messages a report lists, and reasons it counts them by (IngestReport.hold)
_ATTEMPTS = 3  # times a message is stored while other writers change or create its resources under it
# A prepared INSERT of every column (each new row names them all): `Session.execute` of the Core statement
# cost about as much again as the driver's work.
_INSERT_RESOURCES = Prepared(insert(Resource.__table__).values(  # type: ignore[arg-type]
    {column.key: bindparam(column.key) for column in Resource.__table__.columns}))
# The stored resources among up to 2**k ids, one look-up for each k (a message names a few ids; a run up to
# `_CHUNK`), a chunk's ids padded to the next size with its last: ten prepared statements, not one for every
# number of ids. Prepared: the ORM's query cost several times the database's work for the one a message makes.
_SIZES = 10
_CHUNK = 2 ** (_SIZES - 1)  # ids a look-up names at most: below every database's parameter limit
_RESOURCES = [PreparedObjects(Resource, Resource.id.in_([bindparam(f"id{i}") for i in range(2 ** k)]))
              for k in range(_SIZES)]
# The look-ups every run makes, built once: building a statement costs about as much again as running it.
_RECORDS = select(PatientRecord).where(PatientRecord.source_org == bindparam("org"),
                                       PatientRecord.source_id.in_(bindparam("ids", expanding=True))
                                       ).execution_options(populate_existing=True)  # read again: as now
# The Patients other organisations hold of a person, looked up for each new registration claim (most GP
# Patients): prepared, so the practices among them are picked here rather than by an IN list in the query.
_OTHER_ORGS_PATIENTS = Prepared(
    select(Resource.source_org, Resource.content).join(PatientRecord, Resource.patient_record_id == PatientRecord.id)
    .where(PatientRecord.person_id == bindparam("person_id"), IS_PATIENT, Resource.source_org != bindparam("org")))


# A replaced version's copy to history, and a stored resource's new values: prepared statements, not the
# ORM's flush of the objects (several times the statements' own cost, for about one HL7 message in eight).
_INSERT_VERSION = Prepared(insert(ResourceVersion.__table__).values(  # type: ignore[arg-type]
    {column.key: bindparam(column.key) for column in ResourceVersion.__table__.columns}))
_RESOURCE_UPDATES: dict[frozenset[str], Prepared] = {}  # per set of columns written
# The held quarantine items of a sender and format that name their message (Pipeline._supersede): prepared, as
# every message a listener stores runs it
_HELD_KEYS = Prepared(select(Quarantine.id, Quarantine.message_key).where(
    Quarantine.source_org == bindparam("org"), Quarantine.format == bindparam("format"),
    Quarantine.message_key.is_not(None), Quarantine.status == "held"))


def identity_desk(fw: Framework) -> str:
    """Whom a source asks about a merge refused across an MPI reviewer's separation: the identity team at the
    ICS's integrated care board as the framework names it, with its telephone number; a desk, never a person."""
    icb = next((org for org in fw.organisations.values() if org.kind == "icb"), None)
    if icb is None:
        return "the shared care record's identity team"
    return f"the shared care record's identity team at {icb.name}" + (f" ({icb.phone})" if icb.phone else "")


def _ordered_at(row: Resource, item: StagedResource) -> datetime:
    """The stored version's event time, as `item` is ordered against it. Never later than that version arrived
    plus the allowed skew (a time beyond, stored before event times were bounded, pins the resource), and for
    a withdrawal never later than its arrival: a withdrawal sent after the version arrived is applied,
    whatever future time that version claims (a source's clock a little ahead)."""
    limit = row.received_at if entered_in_error(item.sent_content()) else row.received_at + event_skew()
    return min(row.recorded_at, limit)


class ChangedMeanwhile(Exception):
    """A stored resource was changed by another writer between this transaction's read of it and its write
    (two servers updating one resource at once): the message is stored again from a fresh read."""


def _update_resource(session: Session, row: Resource, values: dict[str, Any], text: Encoded | None = None) -> None:
    """Write these values of a stored resource (its content as `text`, encoded already, when given) and give
    the object the same values as stored ones, so no flush writes them again. Only if it is still the version
    read (else ChangedMeanwhile): a writer that read the same version waits on the first one's row lock, then
    finds the version moved on, so neither's update is lost and If-Match is checked against the version it
    replaced (PostgreSQL's READ COMMITTED re-checks the condition; SQLite writers take turns)."""
    columns = frozenset(values)
    statement = _RESOURCE_UPDATES.get(columns)
    if statement is None:
        table = Resource.__table__
        statement = _RESOURCE_UPDATES[columns] = Prepared(
            update(table).where(table.c.id == bindparam("row_id"), table.c.version == bindparam("read_version"))  # type: ignore[arg-type]
            .values({name: bindparam(f"new_{name}") for name in sorted(columns)}).returning(table.c.id))
    written = values | ({"content": text} if text is not None else {})
    if not statement(session, {"row_id": row.id, "read_version": row.version}
                     | {f"new_{name}": value for name, value in written.items()}):
        raise ChangedMeanwhile(row.id)
    for name, value in values.items():
        set_committed_value(row, name, value)


@dataclass
class IngestReport:
    """Counts a person can read and a machine can parse: resources accepted or unchanged, messages
    quarantined with their reasons, resource types set aside, files skipped."""

    files: int = 0
    messages: int = 0
    accepted: int = 0
    unchanged: int = 0
    stale: int = 0
    quarantined: int = 0
    set_aside: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)  # messages stored that an adapter noted, by note
    quarantine: list[dict[str, Any]] = field(default_factory=list)  # the first REPORT_LISTS held
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    errors: list[MessageError] = field(default_factory=list)  # their refusals (an ACK's codes), without tracebacks
    merges_held: list[dict[str, Any]] = field(default_factory=list)  # sources' merges held for review (MERGE_HELD)
    held_by_reason: Counter[str] = field(default_factory=Counter)  # every held message, by reason
    file_notes: list[dict[str, str]] = field(default_factory=list)  # said once of a file (csv_extract.DateOrders)
    stopped: bool = False  # asked to stop (`ingest_paths`' stop), the run ended early
    stopped_after: str = ""  # then the last message it stored or held, or file it finished; "" for none

    def hold(self, item: dict[str, Any], error: MessageError) -> None:
        """Count a held message; list it (and keep its refusal, without the traceback and the frames that keeps
        alive) among the first REPORT_LISTS only. A 500,000-row extract whose every row failed would have kept
        about 3 GB: 6.4 KB a row (CSV review, 2026-12-07). The quarantine table keeps every one."""
        self.quarantined += 1
        if len(self.quarantine) < REPORT_LISTS:
            self.quarantine.append(item)
            self.errors.append(MessageError(error.message, error.where, error.source_org, error.condition,
                                            error.rejected, error.issue))
        reason = error.message if len(self.held_by_reason) < REPORT_LISTS or error.message in self.held_by_reason \
            else "(other reasons)"
        self.held_by_reason[reason] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files, "messages": self.messages, "accepted": self.accepted,
            "unchanged": self.unchanged, "stale": self.stale, "quarantined": self.quarantined,
            "set_aside": dict(sorted(self.set_aside.items())), "notes": dict(sorted(self.notes.items())),
            "quarantine": self.quarantine, "quarantine_unlisted": self.quarantined - len(self.quarantine),
            "held_by_reason": dict(self.held_by_reason.most_common()),
            "skipped_files": self.skipped_files, "file_notes": self.file_notes,
            "merges_held": [{k: held[k] for k in ("review", "where", "reason")} for held in self.merges_held],
            "stopped": self.stopped, "stopped_after": self.stopped_after,
        }


def detect_format(path: Path) -> str | None:
    return FORMAT_BY_SUFFIX.get(path.suffix.lower())


def _manifest_feeds(folder: Path) -> list[Path] | None:
    """The feed files a folder's manifest.json lists (a synthetic ICS writes one beside its feeds,
    with ground truth and users that are not feeds); None when the folder has no such manifest."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8")).get("files")
    except (ValueError, OSError, AttributeError):
        return None
    return [folder / name for name in listed] if isinstance(listed, list) else None


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files named, and every regular file under folders named (or the feeds a folder's manifest lists), in a
    stable order. A file of no known format is passed on too, to be read in the --format given or reported
    as skipped: a feed named `ADT_0001.txt` was passed over unseen."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            listed = _manifest_feeds(path)
            out.extend(listed if listed is not None else sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            out.append(path)
    return out


@dataclass
class _Run:
    """What one transaction of a file's messages knows of the store: the resources its messages name, looked
    up in one query for the run rather than one per message, and the rows it has inserted since (Core rows,
    not in the session; they wait in `pending` and go in one INSERT for the run, or before a later message
    of the run names one of them, which then takes the row into the session as it was inserted, with no
    query: `adopt`); and the
    patient records of every patient its messages send, found or linked so far (ORM objects, kept current);
    and the stored records its new patients may match, in one query for the run (`Block`; dropped after
    a source's merge moves records between persons, when matching goes back to its own queries)."""

    stored: dict[str, Resource]
    records: dict[tuple[str, str], PatientRecord]
    block: Block | None = None
    inserted: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[tuple[str, str], dict[int, str]] = field(default_factory=dict)  # keyed held items (see _supersede)
    pending: list[dict[str, Any]] = field(default_factory=list)

    def insert_pending(self, session: Session) -> None:
        if self.pending:
            _INSERT_RESOURCES.many(session, self.pending)
            self.pending = []

    def adopt(self, session: Session, ids: list[str]) -> None:
        """Rows of this run's INSERT, now needed as stored rows (a later message of the run names them): in
        the session as persistent objects holding exactly the values inserted, rather than read back."""
        self.insert_pending(session)
        for row_id in ids:
            inserted = self.inserted.pop(row_id)  # its content as the text inserted: read back as a read would
            row = Resource(**{**inserted, "content": json_loads(inserted["content"])})
            make_transient_to_detached(row)
            session.add(row)
            self.stored[row_id] = row


@dataclass
class _File:
    """A file being ingested: what reads it, how much of it is done, and why reading it stopped early."""

    path: Path
    format: str
    adapter: Adapter
    size: int
    done: int = 0
    error: OSError | None = None
    dates: csv_extract.DateOrders = field(default_factory=csv_extract.DateOrders)  # its CSV rows' dates

    def messages(self) -> Iterator[RawMessage]:
        try:
            yield from self.adapter.read(self.path)
        except OSError as exc:  # what was read before is still stored; the file is quarantined as unreadable
            self.error = exc


def _patient_records(session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], PatientRecord]:
    """The stored patient records of these (source organisation, source id) pairs, a few queries for all."""
    by_org: dict[str, list[str]] = {}
    for org, source_id in sorted(keys):
        by_org.setdefault(org, []).append(source_id)
    found: dict[tuple[str, str], PatientRecord] = {}
    for org, ids in by_org.items():
        for start in range(0, len(ids), 500):
            found.update(((org, r.source_id), r) for r in session.scalars(
                _RECORDS, {"org": org, "ids": ids[start:start + 500]}))
    return found


@contextmanager
def _earlier_objects_frozen() -> Iterator[None]:
    """Keep what was alive before an ingest (modules, fhir.resources' models, the framework: about 130,000
    objects) out of the collector's full passes while it runs, as `sharedcare serve` does for its life
    (`api.app.freeze_start_up`): an ingest's garbage brings a full collection every few transactions,
    and walking those objects each time was about a tenth of the writer's CPU at 100,000 people. Given back
    at the end; left alone when a server froze its own already (the count is not ours to undo). The
    youngest generation is collected less often meanwhile (`INGEST_GC_THRESHOLD`), and set back after."""
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], INGEST_GC_THRESHOLD), *thresholds[1:])
    try:
        if gc.get_freeze_count():
            yield
            return
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
    finally:
        gc.set_threshold(*thresholds)


class Pipeline:
    """Ingest into one store under one framework."""

    def __init__(self, db: Database, framework: Framework, workers: int | None = None,
                 parallel_from_bytes: int = PARALLEL_FROM_BYTES, sender: str | None = None) -> None:
        """`sender`: who sends what this pipeline stores (the user of a FHIR write), named on any IG review
        item it queues; None for a source's feed (named `ORG:system`)."""
        self.db = db
        self.framework = framework
        self.sender = sender
        self._gp_orgs = framework.gp_practices
        self.workers = load_settings().ingest_workers if workers is None else workers
        self.parallel_from_bytes = parallel_from_bytes

    def ingest_paths(self, paths: Iterable[Path], fmt: str = "auto", source: str | None = None,
                     progress: Callable[[int], None] | None = None, stop: Event | None = None) -> IngestReport:
        """Ingest files and folders; `progress` is called with the bytes of each message handled, and
        with whatever else of the file was read (blank lines, envelopes) when the file is done.

        Once `stop` is set (the CLI sets it on SIGTERM) the run stores the messages it has in hand, the one
        just read included, and returns `stopped`, naming the last it stored or held in `stopped_after`: what
        it accepted is committed and counted, nothing is half-stored, and the same input run again finishes it."""
        report = IngestReport()
        with self.db.session() as session:
            agreements = effective_agreements(session, self.framework)
        stager = Stager(self.framework, self.workers)
        files = expand_paths(paths)
        total = sum(path.stat().st_size for path in files if path.is_file())
        staging = stager.parallel if total >= self.parallel_from_bytes else stager.inline
        batch: list[tuple[RawMessage, Outcome]] = []
        handled = ""  # how far the run got: the last message stored or held, or file finished
        workers_stopped = False

        def staged() -> Iterator[tuple[_File, RawMessage | None, Outcome | None]]:
            """The staged messages, ending where the workers did once the run is stopping: systemd signals every
            process of a service, the workers (and the server they are started from) too."""
            nonlocal workers_stopped
            try:
                yield from staging(self._readable(files, fmt, progress, report), source)
            except (BrokenProcessPool, EOFError, OSError):
                if stop is None or not stop.is_set():
                    raise
                log.warning("ingest stopping: its staging workers were stopped too", exc_info=True)
                workers_stopped = True

        with _earlier_objects_frozen(), closing(stager):
            # every file's messages as one stream, stored file by file, STORE_BATCH messages a transaction
            for file, raw, outcome in staged():
                if raw is not None and outcome is not None:
                    batch.append((raw, outcome))
                    file.dates.add(outcome.date_readings)
                stopping = stop is not None and stop.is_set()
                if len(batch) == STORE_BATCH or ((raw is None or stopping) and batch):
                    self._store_batch(file.adapter, batch, source, report, agreements)
                    file.done = self._advance(progress, batch, file.size, file.done)
                    handled, batch = batch[-1][0].where, []
                if raw is None:
                    self._end_file(file, source, progress, report)
                    handled = f"{file.path}, the end of the file"
                if stopping:
                    report.stopped, report.stopped_after = True, handled
                    break
            if workers_stopped:  # what was staged before them is stored; what they had in hand is not
                if batch:
                    self._store_batch(file.adapter, batch, source, report, agreements)
                    handled = batch[-1][0].where
                report.stopped, report.stopped_after = True, handled
            if report.stopped:
                stager.close(stopping=True)
        return report

    def _readable(self, paths: list[Path], fmt: str, progress: Callable[[int], None] | None,
                  report: IngestReport) -> Iterator[tuple[_File, Adapter, Iterator[RawMessage]]]:
        """Each file of a format ingested, with its messages; the others reported as skipped."""
        for path in paths:
            file_format = detect_format(path) if fmt == "auto" else fmt
            adapter = ADAPTERS.get(file_format or "")
            size = path.stat().st_size if path.is_file() else 0
            if adapter is None:
                why = (f"format '{file_format}' is not ingested yet" if file_format
                       else "unknown format: name it .json, .ndjson, .xml, .hl7 or .csv, or pass --format")
                report.skipped_files.append({"file": str(path), "reason": why})
                if progress:
                    progress(size)
                continue
            report.files += 1
            file = _File(path, file_format or "unknown", adapter, size)
            yield file, adapter, file.messages()

    def _end_file(self, file: _File, source: str | None, progress: Callable[[int], None] | None,
                  report: IngestReport) -> None:
        """A file's messages are stored: note a read that failed part way, and finish its progress."""
        if file.error is not None:
            self._quarantine(RawMessage(str(file.path), "whole file", b"", file.format), source,
                             MessageError(f"cannot read file ({file.error.strerror})", str(file.path)), report)
        report.file_notes.extend({"file": str(file.path), "note": note} for note in file.dates.notes())
        if progress and file.size > file.done:
            progress(file.size - file.done)

    @staticmethod
    def _advance(progress: Callable[[int], None] | None, batch: list[tuple[RawMessage, Outcome]], size: int,
                 done: int) -> int:
        for raw, _ in batch:
            step = min(raw.size, size - done)
            done += step
            if progress:
                progress(step)
        return done

    def _store_batch(self, adapter: Adapter, batch: list[tuple[RawMessage, Outcome]], source: str | None,
                     report: IngestReport, agreements: dict[str, Agreement]) -> None:
        """Store a run of a file's messages in one transaction (one commit, not one per message).

        The messages refused are held after the run commits, in order; a message stored after one of its
        sender's was held is then checked against it (`_supersede`, in a transaction of its own), so a corrected
        copy supersedes its original in the same run as it does across runs.

        Each message is still all or nothing: if any message fails while being stored, the whole run is
        rolled back and stored again one message per transaction, so only the failing one is quarantined.
        A process killed mid-run loses only uncommitted work, which ingesting the same input again redoes."""
        stored: list[tuple[RawMessage, StagedMessage | MessageError, tuple[int, int, int]]] = []
        try:
            with self.db.session() as session:
                messages = [staged for _, staged in batch if isinstance(staged, StagedMessage)]
                ids = [item.server_id for staged in messages for item in staged.resources]
                patients = {(staged.source_org, source_id) for staged in messages for source_id in staged.patients}
                records = _patient_records(session, patients)
                new = [demo for staged in messages for source_id, demo in staged.patients.items()
                       if (staged.source_org, source_id) not in records]
                known = [demo for staged in messages for source_id, demo in staged.patients.items()
                         if (staged.source_org, source_id) in records]
                block = block_for(session, new, known)
                if records:  # as committed once the keys are held: a relink or a reviewer may have moved one since
                    _patient_records(session, set(records))
                run = _Run(self._existing(session, ids), records, block)
                for raw, staged in batch:
                    if isinstance(staged, MessageError):
                        stored.append((raw, staged, (0, 0, 0)))
                        continue
                    try:
                        self._check_agreement(staged, raw, agreements)
                    except MessageError as exc:
                        stored.append((raw, exc, (0, 0, 0)))
                        continue
                    stored.append((raw, staged, self._store(session, staged, raw, run)))
                    self._supersede(session, staged, raw, run)
                run.insert_pending(session)
        except (OperationalError, InterfaceError):
            raise
        except Exception:  # noqa: BLE001 - nothing of the run was kept: store it again message by message
            for raw, staged in batch:
                self.ingest_message(adapter, raw, source, report, agreements, staged)
            return
        held_here: set[tuple[str | None, str]] = set()  # (sender, format) of the messages this run held
        for raw, outcome, (accepted, unchanged, stale) in stored:
            report.messages += 1
            if isinstance(outcome, MessageError):
                self._quarantine(raw, source, outcome, report)
                held_here.add((outcome.source_org or source, raw.format))  # as `_quarantine` holds it
                continue
            if (outcome.source_org, raw.format) in held_here:  # perhaps a corrected copy of one held above
                with self.db.session() as session:
                    self._supersede(session, outcome, raw)
            report.accepted += accepted
            report.unchanged += unchanged
            report.stale += stale
            report.set_aside.update(outcome.set_aside)
            report.notes.update(outcome.notes)
            report.merges_held += outcome.merges_held

    def ingest_message(self, adapter: Adapter, raw: RawMessage, source: str | None, report: IngestReport,
                       agreements: dict[str, Agreement] | None, staged: Outcome | None = None,
                       certified: CertifiedSender | None = None,
                       then: Callable[[Session, StagedMessage], None] | None = None) -> StagedMessage | None:
        """Store one message (staged here unless `staged` holds its staging outcome already); the staged
        message, each resource's `outcome` set, or None if it was quarantined. `agreements` None: read them
        in the message's own transaction (a listener's message on its own: one transaction, not two).
        `certified`: who sent it over TLS and the organisations it may send for (`ingest/mllp.py`); `then`
        runs in the message's own transaction once it is stored (the listener's audit entry: no second
        transaction a message); a WriteRefused it raises undoes the message and reaches the caller (a FHIR
        write's check of its scopes and If-Match against what the write turned out to do)."""
        report.messages += 1
        try:
            stored, (accepted, unchanged, stale) = self._accept(adapter, raw, source, agreements, staged=staged,
                                                                certified=certified, then=then)
        except MessageError as exc:
            self._quarantine(raw, source, exc, report)
            return None
        report.accepted += accepted
        report.unchanged += unchanged
        report.stale += stale
        report.set_aside.update(stored.set_aside)
        report.notes.update(stored.notes)
        report.merges_held += stored.merges_held
        return stored

    def replay(self, quarantine_id: int, source: str | None = None) -> IngestReport:
        """Try a quarantined message again (after a mapping or agreement was fixed). On success it is
        marked replayed; on failure it stays held with the new reason, and no second copy is kept."""
        with self.db.session() as session:
            held = session.get(Quarantine, quarantine_id)
            if held is not None and held.status == "superseded":
                raise MessageError(f"#{quarantine_id} was superseded by {held.superseded_by} at "
                                   f"{held.superseded_at:%Y-%m-%d %H:%M} UTC: its source's corrected copy is stored, "
                                   "and these older bytes are kept but not replayed", where="quarantine replay")
            if held is not None and held.erased_at is not None:
                raise MessageError(f"#{quarantine_id}'s body was erased at {held.erased_at:%Y-%m-%d %H:%M} UTC after "
                                   f"the retention period (SHA-256 {held.payload_sha256}): nothing is left to replay; "
                                   "its source must send it again", where="quarantine replay")
            if held is None or held.status != "held":
                raise MessageError(f"no held quarantine item #{quarantine_id}", where="quarantine replay")
            # dated when it was first received, not now: ordered by when its source sent it, a message held for
            # days is stale against what the source sent since (its own event time, if any, is bounded by it)
            raw = RawMessage(held.filename, held.location, held.payload, held.format, received_at=held.received_at)
            agreements = effective_agreements(session, self.framework)
        adapter = ADAPTERS.get(raw.format)
        if adapter is None:
            raise MessageError(f"format '{raw.format}' is not ingested yet", where=raw.where)
        if source is not None:
            self._check_replay_source(adapter, raw, source, held.source_org)
        report = IngestReport(files=0)
        report.messages += 1
        subject = certificate_in(raw.filename)  # sent over TLS: still only for what its certificate may send
        certified = CertifiedSender.of(self.framework, subject) if subject is not None else None
        try:
            replayed, (accepted, unchanged, stale) = self._accept(adapter, raw, source or held.source_org,
                                                                  agreements, replaying=quarantine_id,
                                                                  certified=certified)
        except MessageError as exc:
            with self.db.session() as session:
                session.get_one(Quarantine, quarantine_id).reason = str(exc)
            report.hold({"id": quarantine_id, "file": raw.filename, "location": raw.location,
                         "reason": exc.message, "where": exc.where or raw.where, "issue": exc.issue}, exc)
            return report
        report.accepted, report.unchanged, report.stale = accepted, unchanged, stale
        report.merges_held = replayed.merges_held
        return report

    def _check_replay_source(self, adapter: Adapter, raw: RawMessage, source: str, held_by: str | None) -> None:
        """`replay --source` may name the sender of a message that never named one it could be stored under
        (an HL7 MSH-4 the framework does not know, a file outside its organisation's folder), as `ingest
        --source` does; never another organisation than the one the item or the message itself names: its
        data would be stored, shared and audited as that organisation's (a false provenance). Such a message
        is the source's to send again with the right sender."""
        named = held_by
        if named is None:  # what the message declares, read as if no --source had been given
            try:
                named = stage(adapter, raw, self.framework, None).source_org
            except MessageError as exc:
                named = exc.source_org
        if named is not None and named != source:
            raise MessageError(f"this item was sent by {named}: a replay cannot store it as {source}'s (its records "
                               f"would carry a false provenance); replay it without --source, or have {named} send "
                               "it again", where="quarantine replay --source")

    def _accept(self, adapter: Adapter, raw: RawMessage, source: str | None,
                agreements: dict[str, Agreement] | None, replaying: int | None = None, staged: Outcome | None = None,
                certified: CertifiedSender | None = None, then: Callable[[Session, StagedMessage], None] | None = None,
                ) -> tuple[StagedMessage, tuple[int, int, int]]:
        """Stage (unless staged already) and store one message in one transaction, or raise MessageError.

        A store failure nobody foresaw is still the message's fault, not the feed's: it becomes a
        MessageError (quarantined, logged with its traceback) so the rest of the file and the feed go on.
        A database that is down is not: that stops the run."""
        if isinstance(staged, MessageError):
            raise staged
        staged = staged or stage(adapter, raw, self.framework, source)
        if certified is not None and staged.source_org not in certified.organisations:
            raise MessageError(f"the sending certificate ({certified.subject}) may not send for {staged.source_org}: "
                               f"the framework lists it for {', '.join(sorted(certified.organisations)) or 'none'} "
                               "(organisations.*.feed_certificates)", f"{raw.where}, MSH-4")
        with sent_by(staged.source_org):  # whatever fails from here is counted against its sender
            try:
                if agreements is not None:
                    self._check_agreement(staged, raw, agreements)
                attempt = 0
                while True:
                    attempt += 1
                    try:
                        with self.db.session() as session:
                            if agreements is None:
                                self._check_agreement(staged, raw, effective_agreements(session, self.framework))
                            counts = self._store(session, staged, raw)
                            self._supersede(session, staged, raw, replaying=replaying)
                            if replaying is not None:
                                session.get_one(Quarantine, replaying).status = "replayed"
                            if then is not None:
                                then(session, staged)
                        return staged, counts
                    except (ChangedMeanwhile, IntegrityError) as exc:
                        # another writer changed, or created, one of its resources meanwhile (two processes; a
                        # PUT retried to another while the first was storing it): stored again from a fresh
                        # read, its If-Match checked on what is held then; an integrity error that persists is
                        # the message's own (below)
                        if attempt < _ATTEMPTS:
                            continue
                        if isinstance(exc, IntegrityError):
                            raise
                        raise MessageError(f"{exc.args[0]} was changed by other writers each of the {_ATTEMPTS} "
                                           "times this message was stored", raw.where) from exc
            except (MessageError, WriteRefused, OperationalError, InterfaceError):
                raise
            except Exception as exc:  # noqa: BLE001 - see the docstring: never let one message stop a feed
                log.exception("unexpected failure on %s", raw.where)
                # the sender reads this (a FHIR write's answer, an ACK): the exception's own text may quote SQL
                # or stored values (TRUST DP3), so it names the kind of failure and where the log has the rest
                raise MessageError(f"could not be stored: an unexpected {type(exc).__name__}; the server log "
                                   f"has the details under {raw.where}", raw.where) from exc

    @staticmethod
    def _check_agreement(staged: StagedMessage, raw: RawMessage, agreements: dict[str, Agreement]) -> None:
        """Only organisations with a signed agreement in force contribute data."""
        status = agreements.get(staged.source_org)
        if status is None or not status.in_force(utcnow().date()):
            state = status.status if status else "none"
            raise MessageError(f"organisation {staged.source_org} has no signed agreement in force "
                               f"(status {state}); held until it has", raw.where)

    @staticmethod
    def _existing(session: Session, ids: list[str]) -> dict[str, Resource]:
        """The stored resources among `ids`, in chunks that stay below every database's parameter limit."""
        found: dict[str, Resource] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            k = (len(chunk) - 1).bit_length()  # the smallest 2**k ids that hold the chunk
            padded = chunk + chunk[-1:] * (2 ** k - len(chunk))
            rows = _RESOURCES[k](session, {f"id{i}": id_ for i, id_ in enumerate(padded)})
            found.update((row.id, row) for row in rows)
        return found

    def _store(self, session: Session, staged: StagedMessage, raw: RawMessage,
               run: _Run | None = None) -> tuple[int, int, int]:
        ids = [r.server_id for r in staged.resources]
        if run is None:
            existing = self._existing(session, ids)
        else:  # looked up for the whole run; what an earlier message of it inserted is taken from the run
            again = [i for i in ids if i in run.inserted]
            if again:
                run.adopt(session, again)
            existing = {i: run.stored[i] for i in ids if i in run.stored}
        records: dict[str, PatientRecord] = {}
        if run is None:  # (a run holds its patients' keys from its start: `block_for`; a known patient's, as
            # a change to their record matches it again)
            hold_matching(session, list(staged.patients.values()))
            found = _patient_records(session, {(staged.source_org, source_id) for source_id in staged.patients})
        for source_id, demo in staged.patients.items():
            current = self._demographics_are_current(session, staged, source_id, existing)
            known = (staged.source_org, source_id)
            if run is None:
                records[source_id] = link_found_record(session, found.get(known), staged.source_org, source_id, demo,
                                                       update=current)
            else:
                records[source_id] = run.records[known] = link_found_record(
                    session, run.records.get(known), staged.source_org, source_id, demo, update=current,
                    block=run.block)
        accepted = unchanged = stale = 0
        received = utcnow()
        new_rows: list[dict[str, Any]] = []
        # Classified once here, not on every read; reads check the key (governance/classify.py).
        org = self.framework.organisation(staged.source_org)
        kind, key = (org.kind if org else "unknown"), classification_key(self.framework)
        claiming: list[PatientRecord] = []  # records whose Patient starts to claim the person's registration here
        for item in staged.resources:
            record = records.get(item.patient_source_id) or source_record(session, staged.source_org,
                                                                          item.patient_source_id)
            if record is None:
                raise MessageError(f"{item.resource_type}/{item.source_id} belongs to patient "
                                   f"'{item.patient_source_id}', whom {staged.source_org} has not sent",
                                   raw.where)
            digest = item.content_hash or content_hash(item.sent_content())
            row = existing.get(item.server_id)
            if row is None and item.withdraws:  # nothing held to withdraw
                continue
            item.held_version = row.version if row is not None else None
            if row is not None and row.content_hash == digest:
                if item.recorded_at > row.recorded_at:  # the same content, confirmed by a newer event
                    _update_resource(session, row, {"recorded_at": item.recorded_at, "message_id": staged.message_id})
                item.outcome = "unchanged"
                unchanged += 1
                continue
            if (row is not None and item.recorded_at <= row.recorded_at
                    and self._applied_before(session, row, staged.message_id, item.sent_content())):
                item.outcome = "unchanged"  # sent again after a later message replaced it: nothing changes,
                unchanged += 1  # even where both share an event time (an A01 and its A08 in one second)
                continue
            if row is not None and item.recorded_at < (ordered := _ordered_at(row, item)):  # (<= its recorded_at)
                if item.recorded_at + item.recorded_doubt < ordered:
                    item.outcome = "stale"
                    stale += 1
                    continue
                item.recorded_at = ordered  # perhaps later than the stored version: it arrived later, so it is
            version = row.version + 1 if row else 1
            stamp = {"versionId": str(version), "lastUpdated": received.isoformat()}
            text = item.stamped_text(stamp) if row is None else None  # a new resource: from staging's text
            if text is None:
                content = dict(item.sent_content())
                content["meta"] = {**content["meta"], **stamp}
                try:
                    text = json_dumps(content)  # what the store will write: refused here, the resource named
                except ValueError as exc:
                    raise MessageError(f"{item.resource_type}/{item.source_id}: {exc}", raw.where) from exc
            category = item.category or classify(item.sent_content(), kind, self.framework)
            if (item.resource_type == "Patient" and staged.source_org in self._gp_orgs
                    and claims_registration(item.sent_content(), staged.source_org)
                    and (row is None or not claims_registration(row.content, staged.source_org))):
                claiming.append(record)
            if row is None:  # inserted as the text made above, not encoded again
                new_rows.append(dict(
                    id=item.server_id, resource_type=item.resource_type, source_org=staged.source_org,
                    source_system=staged.source_system, source_id=item.source_id, patient_record_id=record.id,
                    version=version, content=Encoded(text), content_hash=digest, recorded_at=item.recorded_at,
                    received_at=received, message_id=staged.message_id, category=category, category_key=key,
                ))
            else:  # the version it replaces goes to history (once it is known to be the one replaced)
                replaced = {"resource_id": row.id, "version": row.version, "content": row.content,
                            "patient_record_id": row.patient_record_id,  # whose it was then
                            "source_system": row.source_system, "recorded_at": row.recorded_at,
                            "received_at": row.received_at, "message_id": row.message_id}
                _update_resource(session, row, {
                    "version": version, "content": content, "content_hash": digest, "recorded_at": item.recorded_at,
                    "received_at": received, "message_id": staged.message_id, "source_system": staged.source_system,
                    "patient_record_id": record.id, "category": category, "category_key": key}, Encoded(text))
                _INSERT_VERSION(session, replaced)
            item.outcome = "created" if row is None else "updated"
            accepted += 1
        if run is not None:  # inserted with the rest of the run's
            run.pending += new_rows
            run.inserted.update((row["id"], row) for row in new_rows)
        else:  # one INSERT for all, not one ORM object each: most of a message is new rows
            _INSERT_RESOURCES.many(session, new_rows)
        if claiming and run is not None and any(r["source_org"] != staged.source_org for r in run.pending):
            run.insert_pending(session)  # the check below reads other practices' stored Patients
        for record in claiming:
            self._competing_registration(session, staged, record)
        # a FHIR Patient sent again unchanged (or older) with its replaced-by link states a merge made before:
        # not made again (nor one a reviewer has undone since)
        restated = {item.source_id for item in staged.resources
                    if item.resource_type == "Patient" and item.outcome in ("unchanged", "stale")}
        staged.merges_held = []  # (stored again after a run rolled back: only this storing's)
        for retired, surviving, named_at in staged.merges:
            if retired in restated:
                continue
            try:
                merged = merge_source_records(session, staged.source_org, retired, surviving,
                                              by=f"{staged.source_org}:{staged.source_system}",
                                              reason=f"merged by the source (message {staged.message_id})",
                                              ask=identity_desk(self.framework))
            except LinkError as exc:
                raise MessageError(exc.message, named_at) from exc
            if isinstance(merged, MatchReview):
                staged.merges_held.append({"review": merged.id, "retired": retired, "where": named_at,
                                           "reason": MERGE_HELD.format(retired=retired, surviving=surviving,
                                                                       review=merged.id)})
            elif run is not None:
                run.block = None
        staged.persons = {source_id: record.person_id for source_id, record in records.items()}  # (merged: moved)
        return accepted, unchanged, stale

    def _competing_registration(self, session: Session, staged: StagedMessage, record: PatientRecord) -> None:
        """A practice's Patient has started to claim the person's registration: if other practices' records
        of the person claim it already, queue the new claim for IG review (governance/review.py), which
        keeps it from the shared demographics until reviewed. Stored in the same transaction."""
        others = sorted({org for org, content in _OTHER_ORGS_PATIENTS(session, {
            "person_id": record.person_id, "org": record.source_org})
            if org in self._gp_orgs and claims_registration(content, org) and not entered_in_error(content)})
        if others:
            flag_registration_conflict(session, self.framework, record,
                                       self.sender or f"{staged.source_org}:{staged.source_system}", others, utcnow())

    @staticmethod
    def _applied_before(session: Session, row: Resource, message_id: str, content: dict[str, Any]) -> bool:
        """Whether this message, with this content, already gave the resource a version now in its history.
        Event time alone cannot tell a message sent again from a new one when two messages share it; the
        message id and the content together can (a client may reuse a Bundle id for a real correction)."""
        for stored in session.scalars(select(ResourceVersion.content).where(
                ResourceVersion.resource_id == row.id, ResourceVersion.message_id == message_id)):
            stamped = (stored.get("meta") or {})  # the store's own stamp is not the sender's content
            sent = {**content, "meta": {**content.get("meta", {}), "versionId": stamped.get("versionId"),
                                        "lastUpdated": stamped.get("lastUpdated")}}
            if content_hash(sent) == content_hash(stored):
                return True
        return False

    @classmethod
    def _demographics_are_current(cls, session: Session, staged: StagedMessage, source_id: str,
                                  existing: dict[str, Resource]) -> bool:
        """A message may change who the MPI thinks a patient is only if its Patient is the newest we have:
        a late, older message (or one that carries no Patient of its own, such as a lab result) must not,
        nor may a message sent again after its correction in the same second (an A01 resent after its A08:
        re-applying it would re-match the record on details already corrected)."""
        patient = next((r for r in staged.resources if r.resource_type == "Patient" and r.source_id == source_id),
                       None)
        if patient is None:
            return False
        stored = existing.get(patient.server_id)
        if stored is None or patient.recorded_at > stored.recorded_at:
            return True
        if patient.recorded_at < stored.recorded_at:
            return False
        sent = patient.sent_content()  # the same content as stored (a file ingested again): nothing to look up
        return (stored.content_hash == (patient.content_hash or content_hash(sent))
                or not cls._applied_before(session, stored, staged.message_id, sent))

    @staticmethod
    def _supersede(session: Session, staged: StagedMessage, raw: RawMessage, run: _Run | None = None,
                   replaying: int | None = None) -> None:
        """Mark superseded, in the stored message's own transaction, each held item it is a corrected copy of
        (`ingest/resent.py` says what counts as the same message): kept byte for byte, naming what superseded
        it and when, no longer waiting and never replayed. The held items' keys are looked up once a run (or
        a message); the stored message's own identity is read only when some held item of its sender might match.
        Each item superseded is an audit event of its own (`governance:quarantine:superseded`), in the same
        transaction: its id, what superseded it, and the key; never the message's content."""
        scope = (staged.source_org, raw.format)
        held = run.held.get(scope) if run is not None else None
        if held is None:
            held = dict(_HELD_KEYS(session, {"org": staged.source_org, "format": raw.format}))
            if run is not None:
                run.held[scope] = held
        if not held:
            return
        mine = identity(raw, staged.source_org)
        if mine is None:
            return
        now = utcnow()
        for item_id in [i for i, key in held.items() if key == mine.key and i != replaying]:
            item = session.get_one(Quarantine, item_id)
            theirs = identity(RawMessage(item.filename, item.location, item.payload, item.format,
                                         received_at=item.received_at), item.source_org)
            if theirs is not None and mine.supersedes(theirs):
                item.status, item.superseded_at = "superseded", now
                item.superseded_by = f"{raw.where} (message {staged.message_id})"
                del held[item_id]
                record_audit(session, AuditRecord(  # who reads the audit sees it was not lost: which, by what
                    AuditAction.QUARANTINE_SUPERSEDED, "permit", f"{staged.source_org}:{staged.source_system}",
                    organisation=staged.source_org, purpose="governance", fhir_action="U", detail={
                        "quarantine item": str(item_id), "superseded by": item.superseded_by,
                        "message key": cut(mine.key), "held since": item.received_at.isoformat()}))

    def _quarantine(self, raw: RawMessage, source: str | None, error: MessageError, report: IngestReport) -> None:
        """Keep the original bytes with the reason and its location; never drop input. The same message
        from the same place, still held, is kept once (with the newest reason): ingesting a file again,
        say after a crash, does not pile up copies; nor does one its source has since superseded (it stays so),
        even once retention erased its body (`ingest/retention.py`): matched then by the SHA-256 kept of it. One
        erased while still held is not matched: no longer waiting, it waits again when its source sends it again."""
        sender = mllp_sender(raw.filename)
        # A listener's message has no place of its own (its connection and count are new each time it is sent):
        # one its engine sends again after an AE is the same bytes from the same sender, on any connection.
        place = (Quarantine.filename.startswith(f"{sender}:", autoescape=True),) if sender else (
            Quarantine.filename == raw.filename, Quarantine.location == raw.location)
        with self.db.session() as session:
            sha256 = hashlib.sha256(raw.payload).hexdigest()
            item = next((held for held in session.scalars(select(Quarantine).where(
                Quarantine.status.in_(("held", "superseded")), *place, Quarantine.format == raw.format))
                if (held.payload == raw.payload if held.erased_at is None else held.payload_sha256 == sha256)
                and mllp_sender(held.filename) == sender), None)
            if item is None:
                org = error.source_org or source  # the sender a message names over --source (sender_conflict)
                named = identity(raw, org)
                item = Quarantine(source_org=org, format=raw.format, filename=raw.filename, location=raw.location,
                                  reason=str(error), payload=raw.payload, received_at=utcnow(),
                                  message_key=named.key if named else None)
                session.add(item)
            elif item.status == "held":
                item.reason, item.source_org = str(error), item.source_org or source or error.source_org
            session.flush()
            report.hold({"id": item.id, "file": raw.filename, "location": raw.location, "reason": error.message,
                         "where": error.where or raw.where, "issue": error.issue}, error)
