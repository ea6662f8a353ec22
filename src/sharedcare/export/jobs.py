"""Bulk Data export jobs: kick-off, a background run, status, cancel and file downloads.

State lives in the `export_jobs` table (so any worker can answer a poll) and files under the data
folder (`{data}/exports/{job id}/{Type}.ndjson`). The data itself comes only from
`governance.secondary.SecondaryUse`, which decides, pseudonymises and audits. Only the user who started
a job, in the role and organisation it was started under, may see it: anyone else is told it does not
exist (404), and every poll and download checks again that the user may still export (a suspended
organisation's users are refused at once; a run that ends while it is suspended keeps none; a finished
export's files are deleted at the suspension, `withdraw`, and the job then says "withdrawn"; so are those of
any export started before the agreement of an organisation whose data it holds stopped or the choices of a
person it included came to restrict, `_Changes`, and such a change during a run keeps its files from being
published). A run goes under the role and organisation its kick-off was decided under (a backend client's
are its registration's), and is refused, audited, if the user or client no longer holds them. A finished
export's files are deleted `settings.export_retention_days` after it finished (`expire`, on each kick-off,
poll, download and cancel and at server start), and the job then says "expired". A user keeps at most
KEPT_PER_USER finished exports in the service's folder: a new one deletes the oldest beyond that
(`_supersede`), so one analyst's run after run of the whole population cannot fill the volume the store
(and its audit) lives on before retention catches up.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import multiprocessing
import re
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

import orjson
from sqlalchemy import Table, delete, exists, func, insert, or_, select, union, update
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.config import Settings
from sharedcare.errors import SharedcareError
from sharedcare.fhir.uk_core import ODS_SYSTEM, RECORD_TYPES
from sharedcare.governance.agreements import STOPPED, stopped_words
from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
from sharedcare.governance.clients import current_actor
from sharedcare.governance.disclosure import published_summary
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import AccessDenied, NotFound
from sharedcare.governance.policy import Actor, Decision
from sharedcare.governance.secondary import (
    UNPUBLISHED_PATIENT,
    ExportCounts,
    ExportScope,
    SecondaryUse,
    export_purpose,
    pairs_on_review,
)
from sharedcare.governance.small_cells import (
    DEFAULT_K,
    SmallCells,
    screen,  # streams: the file is never held
)
from sharedcare.private_files import private_folder, private_opener
from sharedcare.store.database import Database
from sharedcare.store.models import (
    AgreementChange,
    ExportJob,
    ExportJobPerson,
    LinkEvent,
    LinkMove,
    PatientRecord,
    Preference,
)

log = logging.getLogger(__name__)

RUNNING = ("accepted", "running")
EXPIRED = "expired"
WITHDRAWN = "withdrawn"  # deleted at an agreement stopped or a choice made after it started (`_Changes`)
STALE_AFTER = timedelta(minutes=10)  # a running job not heard from for this long has died with its process
HEARTBEAT = timedelta(minutes=1)  # how often a running job's own process says it lives (`_heard_from`)
KEPT_PER_USER = 3  # finished exports a user keeps in the service's folder, the one starting included
STOPPED_RUN = "the export stopped (the server restarted); start a new one"  # a run whose process died


class TooManyExports(SharedcareError):
    """The user already has an export running (one at a time keeps the store responsive)."""


class Withdrawn(SharedcareError):
    """The export's files were deleted at a change after it started (`ExportJobs.withdraw`, `_Changes`)."""


class ExportCancelled(Exception):
    """Raised inside a run when its job was cancelled, to stop the stream."""


@dataclass(frozen=True)
class JobView:
    """What a poll needs to know about a job."""

    id: str
    status: str
    request_url: str
    transaction_time: str
    people_total: int
    people_done: int
    output: list[dict[str, Any]]
    summary: dict[str, Any]  # as its recipient may see it: small numbers suppressed (TRUST SU2)
    error: str | None


def _file_name(resource_type: str, part: int | None) -> str:
    return f"{resource_type}.ndjson" if part is None else f"{resource_type}.part{part}.ndjson"


def _partial(folder: Path, job_id: str) -> Path:
    """Where a run writes until its files are checked: a file under its final name is a finished export's."""
    return folder / f".partial-{job_id}"


def _lock(folder: Path, job_id: str) -> Path:
    """The file a run holds locked while it lives (`_alive`), beside its partial folder: made before that
    folder and deleted after it, so the folder is never there without the lock of a run that may be alive."""
    return folder / f".partial-{job_id}.lock"


@contextmanager
def _alive(folder: Path, job_id: str) -> Iterator[None]:
    """Hold the run's lock while it runs. The kernel releases it when the process ends however it ends
    (SIGKILL, the machine losing power), so a later export to the folder tells the partial folder of a run
    that died from a running one's (`remove_abandoned`)."""
    with open(_lock(folder, job_id), "wb", opener=private_opener) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            _lock(folder, job_id).unlink(missing_ok=True)


# What runs leave in their folder: a partial folder and its lock (a job id is a UUID; any other name is the
# operator's)
_LEFT_BY_A_RUN = re.compile(r"\.partial-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:\.lock)?")


def remove_abandoned(folder: Path) -> list[Path]:
    """Delete the partial folders in `folder` of runs that died without cleaning up (killed, or their machine
    lost power), holding pseudonymised Patients never small-cell checked; the paths deleted. A running one
    holds its lock, so its folder is left alone; a lock left without its folder goes too."""
    removed = []
    for job_id in sorted({found[1] for path in folder.glob(".partial-*")
                          if (found := _LEFT_BY_A_RUN.fullmatch(path.name))}):
        with open(_lock(folder, job_id), "ab", opener=private_opener) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its run is alive
                continue
            if _partial(folder, job_id).is_dir():
                shutil.rmtree(_partial(folder, job_id))
                removed.append(_partial(folder, job_id))
            _lock(folder, job_id).unlink()
    return removed


class NdjsonFiles:
    """One NDJSON file per resource type (or part of one), opened as the first resource of that type arrives."""

    def __init__(self, folder: Path, part: int | None = None) -> None:
        self.folder = folder
        self.part = part
        private_folder(folder)
        self._handles: dict[str, IO[bytes]] = {}
        self.counts: Counter[str] = Counter()

    def write(self, resource_type: str, line: bytes) -> None:
        handle = self._handles.get(resource_type)
        if handle is None:
            handle = self._handles[resource_type] = open(  # noqa: SIM115 (closed by `close`)
                self.folder / _file_name(resource_type, self.part), "wb", buffering=1 << 20,  # a system call per MiB
                opener=private_opener)
        handle.write(line + b"\n")
        self.counts[resource_type] += 1

    def close(self) -> list[dict[str, Any]]:
        for handle in self._handles.values():
            handle.close()
        return [{"type": t, "file": _file_name(t, self.part), "count": self.counts[t]} for t in sorted(self._handles)]


@dataclass(frozen=True)
class _Shard:
    """One process's part of an export (everything it needs, picklable)."""

    db_url: str
    audit_key: bytes
    retired_audit_keys: tuple[bytes, ...]
    fw: Framework
    secret: str
    actor: Actor
    purpose: str
    scope: ExportScope
    folder: str
    index: int
    count: int
    job_id: str


def shard_count(people: int, workers: int, people_per_worker: int) -> int:
    """How many processes an export of `people` runs in: `workers` at most, and no more than have
    `people_per_worker` people each. A spawned worker imports the service and reads the framework before its
    first person (about a CPU-second), as much as exporting 2,000 people costs; an export of 2,000 people
    took 1.4 s in one process and 2.1-3.3 s in two (benchmarks/export.py --orders, docs/architecture.md)."""
    return max(1, min(workers, people // max(1, people_per_worker)))


def run_shard(task: _Shard, on_people: Callable[[int], None] | None = None) -> tuple[
        ExportCounts, list[dict[str, Any]]]:
    """Export one shard of the people into part files (or whole files when there is one shard) in the
    run's partial folder, adding to the job's progress and stopping if the job is cancelled. The Patient lines
    are written as they come too: whether a person's quasi-identifiers may leave as they are depends on
    everyone's, and the run rewrites the joined file once that is decided (`_patients`), so no process holds
    the extract; only then, and after the run's last agreement check, do the files take their final names."""
    db = Database(task.db_url, task.audit_key, task.retired_audit_keys)
    reported = 0

    def progress(done: int) -> None:
        nonlocal reported
        with db.session() as session:
            session.execute(update(ExportJob).where(ExportJob.id == task.job_id).values(
                people_done=ExportJob.people_done + (done - reported), updated_at=utcnow()))
            status = session.scalar(select(ExportJob.status).where(ExportJob.id == task.job_id))
        reported = done
        if status == "cancelled":
            raise ExportCancelled
        if on_people is not None:
            on_people(done)

    secondary = SecondaryUse(db, task.fw, task.secret, task.actor, task.purpose, request_id=task.job_id)
    counts = ExportCounts()
    files = NdjsonFiles(Path(task.folder), None if task.count == 1 else task.index)
    try:
        for resource_type, line in secondary.stream(task.scope, counts, progress, (task.index, task.count)):
            files.write(resource_type, line)
        return counts, files.close()
    except BaseException:
        files.close()
        raise
    finally:
        db.dispose()


def _join_parts(folder: Path, parts: list[list[dict[str, Any]]], shards: int) -> list[dict[str, Any]]:
    """One file per type from the shards' part files (in shard order), the parts deleted."""
    if shards == 1:
        return parts[0]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for files in parts:
        for entry in files:
            by_type.setdefault(entry["type"], []).append(entry)
    output = []
    for resource_type in sorted(by_type):
        first, *rest = by_type[resource_type]
        joined_path = folder / _file_name(resource_type, None)
        (folder / first["file"]).replace(joined_path)  # the first part becomes the file: one copy fewer
        with joined_path.open("ab") as joined:
            for entry in rest:
                with (folder / entry["file"]).open("rb") as part:
                    shutil.copyfileobj(part, joined, 1 << 20)
                (folder / entry["file"]).unlink()
        output.append({"type": resource_type, "file": _file_name(resource_type, None),
                       "count": sum(e["count"] for e in by_type[resource_type])})
    return output


@contextmanager
def _heard_from(db: Database, job_id: str) -> Iterator[None]:
    """Keep a running job's `updated_at` fresh every HEARTBEAT while its run works on it after the shards
    (which say so with their progress): joining the parts, the small-cell check and the clinical files'
    rewrite said nothing, and on a large extract they can take longer than STALE_AFTER, so a poll reported
    the export stopped and a second one could start beside it. A beat that fails (the database restarting,
    a lock held too long) is logged and the next one tried: one failure must not silence it for good."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT.total_seconds()):
            try:
                with db.session() as session:
                    session.execute(update(ExportJob).where(ExportJob.id == job_id, ExportJob.status.in_(RUNNING))
                                    .values(updated_at=utcnow()))
            except Exception:  # noqa: BLE001 - any failure: the next beat may succeed
                log.warning("export %s: its heartbeat could not be written; trying again", job_id, exc_info=True)

    heart = threading.Thread(target=beat, name=f"export {job_id}: alive", daemon=True)
    heart.start()
    try:
        yield
    finally:
        stop.set()
        heart.join()


def _patients(folder: Path, output: list[dict[str, Any]], k: int) -> SmallCells:
    """Rewrite the extract's Patient file so that no combination of quasi-identifiers in it is held by
    fewer than k people, and the clinical files of those whose practice it left out (`_unsource`). The
    files are read twice, as a stream: once to decide each person's step keeping only short digests of their
    combinations, once to rewrite the lines that step changes (`small_cells.screen`).

    The check decides on every included person's Patient, the published ones (`Patient`) and those the export
    was not asked for (`UNPUBLISHED_PATIENT`: `_type` or the token's scopes leave Patients out, or `_since`
    leaves out a Patient that did not change), so that the clinical lines lose the organisations the whole
    export's check would take from them, whatever was asked for: before, an extract without Patients was not
    checked at all, and a `_type=Condition` extract gave back, by pseudonym, the practices the whole extract
    left out. The unpublished Patients are then deleted, `output` left without them. When some Patients are
    published and others not (`_since`), the published ones are checked again among themselves, so that the
    file alone holds no group under k either; the clinical lines of anyone either check leaves without a
    practice lose their organisations."""
    published = next((entry for entry in output if entry["type"] == "Patient"), None)
    unpublished = next((entry for entry in output if entry["type"] == UNPUBLISHED_PATIENT), None)
    entries = [entry for entry in (published, unpublished) if entry is not None]
    if not entries:
        return SmallCells(k=k)
    clinical = [entry for entry in output if entry not in entries]
    protected, small = screen(_Lines(*(folder / entry["file"] for entry in entries)), k)
    _rewrite_each(folder, entries, protected)
    unsourced = small.unsourced
    if unpublished is not None:
        output.remove(unpublished)
        (folder / unpublished["file"]).unlink()
        if published is not None:  # checked again on its own: the file alone holds no group under k
            again, alone = screen(_Lines(folder / published["file"]), k)
            _rewrite(folder / published["file"], lambda _: (line + b"\n" for line in again))
            unsourced = unsourced | alone.unsourced
    _unsource(folder, clinical, unsourced)
    return small


def _rewrite_each(folder: Path, entries: list[dict[str, Any]], lines: Iterable[bytes]) -> None:
    """Replace each of these files, in turn, by as many of `lines` as it holds (its `count`)."""
    stream = iter(lines)

    def take(n: int) -> Callable[[IO[bytes]], Iterable[bytes]]:
        return lambda _: (line + b"\n" for line in itertools.islice(stream, n))

    for entry in entries:
        _rewrite(folder / entry["file"], take(entry["count"]))


class _Lines:
    """Files' lines, one file after the other, without their ends, read afresh each time they are iterated."""

    def __init__(self, *paths: Path) -> None:
        self.paths = paths

    def __iter__(self) -> Iterator[bytes]:
        for path in self.paths:
            with path.open("rb") as lines:
                for line in lines:
                    yield line.rstrip(b"\n")


def _rewrite(path: Path, lines: Callable[[IO[bytes]], Iterable[bytes]]) -> None:
    """Replace a file by the lines made from it, written beside it (deleted if that fails) and then moved."""
    rewritten = path.with_name(path.name + ".rewritten")
    try:
        with path.open("rb") as source, open(rewritten, "wb", buffering=1 << 20, opener=private_opener) as out:
            for line in lines(source):
                out.write(line)
    except BaseException:
        rewritten.unlink(missing_ok=True)
        raise
    rewritten.replace(path)


# The Patient a clinical line is about (every reference to a Patient in it is to its person's one)
_PATIENT_REFERENCE = re.compile(rb'"reference":"Patient/([^"]+)"')


def _unsource(folder: Path, output: list[dict[str, Any]], patient_ids: set[str]) -> None:
    """Rewrite the clinical files without organisations on the lines of these Patients
    (`without_organisations`); every other line stays byte for byte."""
    if not patient_ids:
        return
    def unsourced(lines: IO[bytes]) -> Iterator[bytes]:
        for line in lines:
            about = _PATIENT_REFERENCE.search(line)
            if about is not None and about.group(1).decode() in patient_ids:
                resource = orjson.loads(line)
                without_organisations(resource)
                line = orjson.dumps(resource) + b"\n"
            yield line

    for entry in output:
        _rewrite(folder / entry["file"], unsourced)


def without_organisations(resource: dict[str, Any]) -> None:
    """A clinical resource of a person in `SmallCells.unsourced`, without the organisations in it: its
    `meta.source`, and every reference by ODS code (one also to a resource keeps that; a performer whose
    actor it was goes with it, the actor being required)."""
    (resource.get("meta") or {}).pop("source", None)
    _drop_organisations(resource)


def _by_ods_code(value: dict[str, Any]) -> bool:
    """Whether this reference carries an ODS code as its identifier (a resource's own identifiers are a
    list, never an ODS reference's)."""
    identifier = value.get("identifier")
    return isinstance(identifier, dict) and identifier.get("system") == ODS_SYSTEM


def _organisation(value: Any) -> bool:
    """Whether this is a reference by ODS code alone (nothing else of a reference leaves then)."""
    return isinstance(value, dict) and "reference" not in value and _by_ods_code(value)


def _drop_organisations(value: Any) -> None:
    if isinstance(value, list):
        value[:] = [item for item in value if not _organisation(item)
                    and not (isinstance(item, dict) and _organisation(item.get("actor")))]
        for item in value:
            _drop_organisations(item)
    elif isinstance(value, dict):
        if _by_ods_code(value):  # a reference to a resource too
            value.pop("identifier")
        for key in [key for key, item in value.items() if _organisation(item)]:
            del value[key]
        for key, item in list(value.items()):
            _drop_organisations(item)
            if item == [] or item == {}:
                del value[key]


def _discard(folder: Path, job_id: str, published: Iterable[str] = ()) -> None:
    """Delete whatever a run that did not finish wrote: its partial folder and the files it had already
    moved to their final names (only its own: the folder may be a user's)."""
    shutil.rmtree(_partial(folder, job_id), ignore_errors=True)
    _lock(folder, job_id).unlink(missing_ok=True)
    remove_files(folder, list(published))


def _written_before_partial(folder: Path) -> list[str]:
    """The extract's files in a folder, by their names (a record type's): those a run wrote straight into its
    folder before runs wrote into a partial folder (2026-12-07), which one that died then left there, and
    those an earlier run into the same folder published (`_publish` deletes those it does not replace)."""
    return [path.name for path in folder.glob("*.ndjson*") if path.name.partition(".")[0] in RECORD_TYPES]


def _publish(folder: Path, job_id: str, output: list[dict[str, Any]], published: list[str]) -> None:
    """Move a checked run's files to their final names, each named in `published` once moved. An extract's
    files of an earlier run into the same folder (a command-line `--out` run again) that this run did not
    write are deleted first: the folder is this run's extract. Before, a type with no lines this time (its
    only person since opted out) left the earlier run's file, with that person in it, beside the new ones."""
    partial = _partial(folder, job_id)
    writing = {entry["file"] for entry in output}
    for earlier in _written_before_partial(folder):
        if earlier not in writing:
            (folder / earlier).unlink(missing_ok=True)
    for entry in output:
        (partial / entry["file"]).replace(folder / entry["file"])
        published.append(entry["file"])
    partial.rmdir()


def remove_files(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


Files = tuple[Path, list[str]]  # an export's folder and the files it wrote there
Minted = tuple[str, str] | None  # the operator account and token id of a `sharedcare token` a request came with


def _minted(job: ExportJob) -> Minted:
    """The `sharedcare token` a job was started with, if it was: its run's audit entries name it."""
    return (job.minted_by, job.token_id) if job.minted_by and job.token_id else None


def _mark_expired(jobs: list[ExportJob]) -> dict[str, Files]:
    """Mark these finished exports expired; their files, by job id, to delete once that is committed (a
    rollback after a deletion would offer downloads of files that are gone)."""
    now = utcnow()
    for job in jobs:
        job.status, job.updated_at = EXPIRED, now
    return {job.id: (Path(job.out_dir), [o["file"] for o in job.output or []]) for job in jobs}


def _remove(files: dict[str, Files]) -> None:
    for folder, names in files.values():
        remove_files(folder, names)


@dataclass(frozen=True)
class _Change:
    """Why an export started before a change is not kept: for its audit entry and for its owner."""

    rule_id: str
    reason: str
    says: str  # after "its files were deleted" (or "were not kept")


@dataclass(frozen=True)
class _Changes:
    """What changed since a time that an export started before it may not reflect: an agreement stopped
    (suspended, ended, set back to draft), and a person's choices changed so that they now opt out of
    planning and research or object (to all sharing, to an organisation, to a kind of information). An
    export reads the agreements and everybody's choices once, when its run starts
    (`secondary.SecondaryUse.stream`); a change after its kick-off may be missing from its files.

    A job records, as its run finishes, the persons it included (`export_job_persons`) and the organisations
    whose data its files hold (`source_orgs`). A stop withdraws it if it is its own organisation's or one of
    those; a choice, if it is held against an NHS number that a person it included carries (any person
    carrying it: a parent's number on a baby's record is both's, as the decision point applies it), or that
    a record since moved away from them carries (`link_moves`), or if it applied to them when it was made
    (`Preference.persons`: a source may have corrected the number on their record since) or to a person a
    record moved to or from them since, or to the person on the other side of a pair waiting on MPI review
    from them (an extract gives each the other's choices). The whole job is withdrawn, never that
    person's lines: dropping them would change the groups the small-cell check made (a group of k less one
    person is a group under k). A job finished before these were recorded (migration 0027), or a
    command-line export past retention, has none (`source_orgs` null): any organisation's stop and any
    person's choice withdraw it, as before. A change that lifts a choice withdraws nothing: the files then
    hold less than the person allows."""

    stops: list[tuple[str, str, datetime]]  # organisation, status, when; in the order they were made
    choices: list[datetime]  # when each choice that restricts was last changed (for jobs that recorded nothing)
    holding: dict[str, datetime]  # job id: the last such change of a person it recorded

    @staticmethod
    def since(session: Session, jobs: list[ExportJob]) -> _Changes:
        """The changes since the earliest of these jobs started."""
        when = min((job.created_at for job in jobs), default=None)
        if when is None:
            return _Changes([], [], {})
        stops = [(org, status, changed) for org, status, changed in session.execute(
            select(AgreementChange.org_code, AgreementChange.status, AgreementChange.changed_at)
            .where(AgreementChange.status.in_(STOPPED), AgreementChange.changed_at > when)
            .order_by(AgreementChange.id))]
        # a choice's time is stamped under the audit chain's lock (`consent._changed`), which a kick-off waits
        # on: one stamped before an export's kick-off was committed before its run read the choices
        restricting = [pref for pref in session.scalars(select(Preference).where(Preference.updated_at > when))
                       if pref.opt_out_secondary or pref.object_all or pref.object_orgs or pref.provisions]
        changed = {pref.nhs_number: pref.updated_at for pref in restricting}
        chosen: dict[str, datetime] = {}  # the persons a change applied to as it was made: its last change
        for pref in restricting:
            for person in pref.persons or []:
                chosen[person] = max(chosen.get(person, pref.updated_at), pref.updated_at)
        recorded = [job.id for job in jobs if job.source_orgs is not None]
        return _Changes(stops, list(changed.values()),
                        _holding(session, recorded, changed, chosen, when) if recorded else {})

    def after(self, job: ExportJob) -> _Change | None:
        """The first change after `job` started that it does not survive."""
        started, organisation, held = job.created_at, job.organisation, job.source_orgs
        for org, status, when in self.stops:
            if when <= started:
                continue
            words = stopped_words(status)
            if org == organisation:
                return _Change("deny-actor-agreement", f"{org}'s agreement {words}",
                               f"when {org}'s information-sharing agreement was {words} on {when:%d %B %Y at %H:%M} "
                               "UTC: an export is not kept once its organisation stops sharing; start a new one "
                               "when the agreement is signed again")
            if held is not None and org not in held:  # its files hold nothing of that organisation's
                continue
            return _Change("source-agreement", f"{org}'s agreement {words}, after the export started",
                           f"when {org}'s information-sharing agreement was {words} on {when:%d %B %Y at %H:%M} UTC: "
                           f"an export made while {org} shared its data is not kept once it stops; start a new one, "
                           f"which leaves {org}'s data out")
        if held is None:  # recorded nobody: anyone's choice may be in its files
            if any(when > started for when in self.choices):
                return _Change("choices-changed", "a person's choices changed after the export started",
                               "because a person's choices about the use of their data (an opt-out of planning and "
                               "research, or an objection) were recorded after this export started, and its files "
                               "may hold what they no longer allow; start a new one, which follows their choices")
        elif self.holding.get(job.id, started) > started:
            return _Change("choices-changed", "the choices of a person in the export changed after it started",
                           "because a person whose data it holds made choices about the use of their data (an "
                           "opt-out of planning and research, or an objection) after this export started, and "
                           "its files may hold what they no longer allow; start a new one, which follows their "
                           "choices")
        return None


_IN_ONE_STATEMENT = 500  # values bound in one IN list (SQLite allows 32,766 parameters a statement)


def _holding(session: Session, job_ids: list[str], changed: dict[str, datetime], chosen: dict[str, datetime],
             since: datetime) -> dict[str, datetime]:
    """For each of these jobs that recorded a person a change maps to, the latest such change. `changed`: the
    NHS number a choice is held against, and when it changed; a number maps to every person a record carrying
    it belongs to, and to every person such a record was moved away from (a merge, a relink): the job may have
    included it under them. `chosen`: the persons whose records carried the number when the change was made
    (`Preference.persons`), so that a number a source has since corrected on their record still maps to them,
    and each person a record moved to or from them after `since` (the earliest job's start), whom the job may
    have recorded instead. Each of these maps in turn to the person on the other side of a pair waiting on MPI
    review (`secondary.pairs_on_review`), whom an extract gives their choices."""
    latest: dict[str, datetime] = dict(chosen)  # person: the last change that applies or applied to them
    moved = sorted(chosen)
    for start in range(0, len(moved), _IN_ONE_STATEMENT):
        chunk = moved[start:start + _IN_ONE_STATEMENT]
        for one, other in session.execute(
                select(LinkMove.from_person, LinkMove.to_person).join(LinkEvent, LinkEvent.id == LinkMove.link_event_id)
                .where(LinkEvent.at > since, or_(LinkMove.from_person.in_(chunk), LinkMove.to_person.in_(chunk)))):
            when = max(chosen.get(one, since), chosen.get(other, since))
            for person in (one, other):
                latest[person] = max(latest.get(person, when), when)
    numbers = sorted(changed)
    for start in range(0, len(numbers), _IN_ONE_STATEMENT):
        chunk = numbers[start:start + _IN_ONE_STATEMENT]
        carrying = select(PatientRecord.nhs_number, PatientRecord.person_id).where(PatientRecord.nhs_number.in_(chunk))
        carried = (select(PatientRecord.nhs_number, LinkMove.from_person)
                   .join(LinkMove, LinkMove.patient_record_id == PatientRecord.id)
                   .where(PatientRecord.nhs_number.in_(chunk)))
        for number, person in session.execute(union(carrying, carried)):
            when = changed[cast(str, number)]  # (one of the chunk's: never None)
            latest[person] = max(latest.get(person, when), when)
    # an extract gives each side of a pair waiting on MPI review the other's choices (`SecondaryUse._choices`):
    # a change that applies to one applies to the other as much, while the pair waits (a reviewer who decides
    # them two people takes it back, as from the next extract)
    applied = dict(latest)
    persons = sorted(applied)
    for start in range(0, len(persons), _IN_ONE_STATEMENT):
        for one, other in pairs_on_review(session, persons[start:start + _IN_ONE_STATEMENT]):
            for person, them in ((one, other), (other, one)):
                if person in applied:
                    latest[them] = max(latest.get(them, applied[person]), applied[person])
    persons = sorted(latest)
    holding: dict[str, datetime] = {}
    for start in range(0, len(persons), _IN_ONE_STATEMENT):
        chunk = persons[start:start + _IN_ONE_STATEMENT]
        for job_id, person in session.execute(select(ExportJobPerson.job_id, ExportJobPerson.person_id).where(
                ExportJobPerson.job_id.in_(job_ids), ExportJobPerson.person_id.in_(chunk))):
            holding[job_id] = max(holding.get(job_id, latest[person]), latest[person])
    return holding


_PERSONS_PER_TRANSACTION = 20_000  # short transactions: on SQLite each holds the store's one writer lock
# inserted through Core: the ORM's bulk path took 28 s for 1,000,000 rows on SQLite, this 6 s (17 s on PostgreSQL)
_PERSONS = cast(Table, ExportJobPerson.__table__)


def _record_persons(db: Database, job_id: str, persons: list[str]) -> None:
    """Record the persons a run included (`ExportJobPerson`), before its files are published: a choice of
    theirs after its kick-off withdraws it. In sorted order (the rows' own), a few transactions at a time."""
    ordered = sorted(persons)
    for start in range(0, len(ordered), _PERSONS_PER_TRANSACTION):
        with db.session() as session:
            session.execute(insert(_PERSONS), [{"job_id": job_id, "person_id": person}
                                               for person in ordered[start:start + _PERSONS_PER_TRANSACTION]])


def _forget_persons(session: Session) -> None:
    """Delete the recorded persons of jobs that hold no files any more (expired, withdrawn, cancelled, failed)
    and of those whose record the rules no longer read (`source_orgs` null): only a running job's and a
    completed one's are needed."""
    jobs = session.scalars(select(ExportJob).where(
        ExportJob.status.not_in(RUNNING), exists().where(ExportJobPerson.job_id == ExportJob.id)))
    gone = [job.id for job in jobs if job.status != "completed" or job.source_orgs is None]
    if gone:
        session.execute(delete(ExportJobPerson).where(ExportJobPerson.job_id.in_(gone)))


class ExportJobs:
    """The export jobs of one store, for the API and the CLI alike."""

    def __init__(self, db: Database, fw: Framework, settings: Settings) -> None:
        self.db = db
        self.fw = fw
        self.settings = settings

    def _secondary(self, actor: Actor, request_id: str | None = None, source_address: str | None = None,
                   purpose: str | None = None, minted: Minted = None) -> SecondaryUse:
        minted_by, token_id = minted or (None, None)
        return SecondaryUse(self.db, self.fw, self.settings.pseudonym_secret, actor,
                            purpose or export_purpose(actor, self.fw), request_id=request_id,
                            source_address=source_address, minted_by=minted_by, token_id=token_id)

    # -- kick-off --------------------------------------------------------------------------------
    def start(self, actor: Actor, scope: ExportScope, request_url: str, *, request_id: str | None = None,
              source_address: str | None = None, out_dir: Path | None = None, purpose: str | None = None,
              background: bool = True, minted: Minted = None) -> str:
        """Check, record and audit a new export; run it in a background thread (or leave it to `run`).
        `minted`: the operator account and token id of a `sharedcare token` the request came with."""
        secondary = self._secondary(actor, request_id, source_address, purpose, minted)
        detail: dict[str, Any] = {"kind": scope.kind, "group": scope.group,
                                  "types": ",".join(sorted(scope.types)) if scope.types else None,
                                  "since": scope.since.isoformat() if scope.since else None}
        secondary.check(AuditAction.EXPORT_KICK_OFF, scope, **detail)
        self.expire()
        job_id = str(uuid.uuid4())
        now = utcnow()
        with self.db.session() as session:
            busy = session.scalar(select(func.count()).select_from(ExportJob).where(
                ExportJob.username == actor.username, ExportJob.status.in_(RUNNING),
                ExportJob.updated_at > now - STALE_AFTER))
            if busy and background:
                raise TooManyExports("you already have an export running: wait for it, or cancel it with DELETE "
                                     "on its status URL", where="$export")
            superseded = self._supersede(session, actor.username) if out_dir is None else {}
            session.add(ExportJob(
                id=job_id, username=actor.username, role=actor.role.name if actor.role else None,
                organisation=actor.organisation, purpose=secondary.purpose,
                kind=scope.kind, group_id=scope.group, types=sorted(scope.types) if scope.types else None,
                since=scope.since, request_url=request_url, status="accepted", created_at=now, updated_at=now,
                people_total=secondary.people_in_scope(scope), people_done=0, output=[], summary={},
                out_dir=str(out_dir or self.settings.data_path / "exports" / job_id),
                minted_by=secondary.minted_by, token_id=secondary.token_id))
            secondary.audit(session, AuditAction.EXPORT_KICK_OFF, "permit", rule_id="permit-secondary",
                            job=job_id, superseded=" ".join(superseded) or None, **detail)
        _remove(superseded)  # only once they are marked expired: a failed kick-off leaves them whole
        if background:
            threading.Thread(target=self.run, args=(job_id,), name=f"export-{job_id}", daemon=True).start()
        return job_id

    # -- the run ---------------------------------------------------------------------------------
    def run(self, job_id: str, on_progress: Callable[[int, int], None] | None = None) -> JobView:
        """Stream the export into its files, keeping the job row up to date; audit how it ended.

        With `settings.export_workers` above 1 the people are split into that many shards, each exported
        by its own process into part files that are joined into one file per type at the end; but only as many
        as have `settings.export_people_per_worker` people each (`shard_count`). The files are the same
        either way."""
        with self.db.session() as session:
            job = session.get_one(ExportJob, job_id)
            if job.status != "accepted":  # cancelled before it started (or already run): nothing to do
                return self._view(job_id)
            # the identity the kick-off was decided under; the run goes under it only if the user (or the
            # backend client, whose role and organisation are its registration's) still holds it
            actor = Actor(username=job.username, role=self.fw.roles.get(job.role or ""), organisation=job.organisation)
            holder = current_actor(session, self.fw, job.username)
            same = holder is not None and holder.role is not None and holder.role.name == job.role \
                and holder.organisation == job.organisation
            job.status, job.updated_at = ("running" if same else "failed"), utcnow()
            scope = ExportScope(job.kind, job.group_id, frozenset(job.types) if job.types else None, job.since)
            folder, total, purpose = Path(job.out_dir), job.people_total, job.purpose
            rule = self.fw.purposes.get(purpose)
            k = rule.k if rule is not None else DEFAULT_K
            secondary = self._secondary(actor, request_id=job_id, purpose=purpose, minted=_minted(job))
            if not same:
                job.error = ("the user or client that started this export no longer has the role and organisation "
                             "it was started under; start a new one")
                job.finished_at = job.updated_at
                secondary.audit(session, AuditAction.EXPORT_COMPLETE, "deny", rule_id="deny-identity-changed",
                                reason="the role or organisation the export was started under has changed",
                                job=job_id)
        if not same:
            return self._view(job_id)
        shards = shard_count(total, self.settings.export_workers, self.settings.export_people_per_worker)
        private_folder(folder)  # the operator's --out, made owner-only if made here
        tasks = [_Shard(self.db.url.render_as_string(hide_password=False), self.db.audit_key,
                        self.db.retired_audit_keys, self.fw,
                        self.settings.pseudonym_secret, actor, purpose, scope, str(_partial(folder, job_id)), index,
                        shards, job_id)
                 for index in range(shards)]

        def people(done: int) -> None:
            if on_progress:
                on_progress(done, total)

        counts = ExportCounts()
        published: list[str] = []  # files moved to their final names, deleted again if the run stops after all
        with _alive(folder, job_id):  # released however the run ends, even killed
            try:
                results = [run_shard(tasks[0], people)] if shards == 1 else self._in_processes(tasks, people)
                for shard_counts, _ in results:
                    counts.add(shard_counts)
                with _heard_from(self.db, job_id):  # the shards report progress; these steps do not
                    output = _join_parts(_partial(folder, job_id), [files for _, files in results], shards)
                    counts.small_cells = _patients(_partial(folder, job_id), output, k)
                    _record_persons(self.db, job_id, counts.persons)  # before publishing: see `_Changes`
                try:  # its organisation's agreement suspended (or its role's export withdrawn) while it ran: not kept
                    secondary.check(AuditAction.EXPORT_COMPLETE, ExportScope(scope.kind, scope.group), job=job_id)
                except (AccessDenied, NotFound) as refused:
                    _discard(folder, job_id)
                    with self.db.session() as session:
                        row = session.get_one(ExportJob, job_id)
                        if row.status != "cancelled":  # (cancelled after the last progress check: stays so)
                            row.status, row.finished_at = "failed", utcnow()
                            row.error, row.updated_at = f"not kept: {refused.message}", row.finished_at
                    return self._view(job_id)
                with self.db.session() as session:
                    row = session.get_one(ExportJob, job_id)
                    if row.status == "cancelled":  # cancelled after the last progress check
                        _discard(folder, job_id)
                        return self._view(job_id)
                    # a choice made or an agreement stopped since the kick-off may be missing from the run's
                    # snapshot: nothing is published if it is of a person it included or an organisation whose
                    # data it holds (one made after this check withdraws it at the next touch). A Group's
                    # practice is one: who is registered there is its data, whatever of it was released
                    row.source_orgs = sorted(counts.source_orgs | ({scope.group} if scope.group else set()))
                    change = _Changes.since(session, [row]).after(row)
                    if change is not None:
                        _discard(folder, job_id)
                        row.status, row.finished_at = WITHDRAWN, utcnow()
                        row.error, row.updated_at = f"its files were not kept {change.says}", row.finished_at
                        secondary.audit(session, AuditAction.EXPORT_COMPLETE, "deny", rule_id=change.rule_id,
                                        reason=change.reason, job=job_id)
                    else:
                        _publish(folder, job_id, output, published)  # checked: under their final names, then completed
                        row.status, row.output, row.summary = "completed", output, counts.as_dict()
                        row.people_done, row.finished_at = counts.people_seen, utcnow()
                        row.updated_at = row.finished_at
                        secondary.audit(session, AuditAction.EXPORT_COMPLETE, "permit", rule_id="permit-secondary",
                                        withheld=dict(counts.withheld), job=job_id, people_seen=str(counts.people_seen),
                                        codings_withheld=str(counts.codings_withheld),
                                        people_included=str(counts.people_included),
                                        people_excluded=dict(counts.excluded), resources=dict(counts.resources),
                                        small_cells=counts.small_cells.as_dict() if counts.small_cells else None)
            except ExportCancelled:
                _discard(folder, job_id)
                return self._view(job_id)
            except BaseException as exc:  # an error, or the run interrupted (Ctrl-C; the CLI makes SIGTERM one too)
                _discard(folder, job_id, published)
                with self.db.session() as session:
                    row = session.get_one(ExportJob, job_id)
                    row.status, row.finished_at = "failed", utcnow()
                    row.error = "the export failed; see the server log" if isinstance(exc, Exception) else \
                        "the export was interrupted before it finished; nothing was kept"
                    row.updated_at = row.finished_at
                    secondary.audit(session, AuditAction.EXPORT_COMPLETE, "error", job=job_id,
                                    error=type(exc).__name__)
                raise
        return self._view(job_id)

    def _in_processes(self, tasks: list[_Shard], on_people: Callable[[int], None]) -> list[
            tuple[ExportCounts, list[dict[str, Any]]]]:
        """Each shard in its own process (spawned: no state shared with this server), reporting progress
        through the job row, which this thread reads for the caller. Stopped (SIGTERM, Ctrl-C) or failing
        here, it ends its workers rather than waiting for them to finish their shares, work thrown away: a
        service manager stopping the run would reach its timeout and kill it before it cleaned up."""
        pool = ProcessPoolExecutor(len(tasks), mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = [pool.submit(run_shard, task) for task in tasks]
            while wait(futures, timeout=0.5).not_done:
                with self.db.session() as session:
                    on_people(session.get_one(ExportJob, tasks[0].job_id).people_done)
            return [future.result() for future in futures]
        except BaseException:
            for process in pool._processes.values():  # (`terminate_workers` from Python 3.14)
                process.terminate()
            raise
        finally:
            pool.shutdown(cancel_futures=True)  # waits for the ended workers, so nothing outlives the run

    # -- polling, cancelling, downloading ---------------------------------------------------------
    def expire(self) -> int:
        """Delete the files of the exports that finished more than the retention period ago, marking each
        expired, of those withdrawn (`withdraw`), and what runs whose process died wrote (`_stopped`); how
        many expired. Only the service's own folders (`{data}/exports/`): a command-line export wrote where
        its operator asked, and is theirs to keep."""
        now = utcnow()
        with self.db.session() as session:
            old = list(session.scalars(select(ExportJob).where(
                ExportJob.status == "completed",
                ExportJob.finished_at < now - timedelta(days=self.settings.export_retention_days))))
            expired = _mark_expired([job for job in old if self._ours(job.out_dir)])
            for job in old:
                if not self._ours(job.out_dir) and job.source_orgs is not None:
                    # a command-line export's files are its operator's, kept; its persons are not kept past
                    # retention, and any change withdraws it from then on, as before they were recorded
                    job.source_orgs = None
            withdrawn = self._withdraw(session)
            stopped = self._stopped(session)
            _forget_persons(session)
        _remove(expired | withdrawn)  # only once committed, as `_mark_expired` says
        for folder, job_id in stopped:
            _discard(folder, job_id, _written_before_partial(folder))
        return len(expired)

    def _stopped(self, session: Session) -> list[tuple[Path, str]]:
        """Mark failed the runs in the service's folder not heard from for STALE_AFTER (their process died:
        a poll already says so), whose unchecked files no retention period would otherwise reach; their
        folders and ids, for the caller to delete what they wrote once that is committed."""
        stale = session.scalars(select(ExportJob).where(ExportJob.status.in_(RUNNING),
                                                        ExportJob.updated_at < utcnow() - STALE_AFTER))
        stopped = [job for job in stale if self._ours(job.out_dir)]
        for job in stopped:
            job.status, job.updated_at = "failed", utcnow()
            job.error = STOPPED_RUN
        return [(Path(job.out_dir), job.id) for job in stopped]

    def withdraw(self) -> int:
        """Delete the files of every finished export that a change after it was started touches (`_Changes`:
        its organisation's agreement, or that of one whose data it holds, suspended or ended; the choices of
        a person it included restricted), marking each withdrawn, audited; how many. From its start, not its
        finish: a suspension between the run's last agreement check and its finish, or one while it ran that
        was signed again before that check, would otherwise leave an export made across a suspension kept.
        Run by whoever changes an agreement (`sharedcare agreements set`, the IG workspace), and by every
        kick-off, poll, download and cancel and at server start (`expire`), so that one changed by other means
        is caught at its first touch."""
        with self.db.session() as session:
            withdrawn = self._withdraw(session)
        _remove(withdrawn)
        return len(withdrawn)

    def _withdraw(self, session: Session) -> dict[str, Files]:
        """`withdraw`'s marking and audit; the files to delete once committed (a command-line export's
        are its operator's: the job is withdrawn, its files are left where they were asked for)."""
        finished = list(session.scalars(select(ExportJob).where(ExportJob.status == "completed")))
        changes = _Changes.since(session, finished)
        files: dict[str, Files] = {}
        for job in finished:
            change = changes.after(job)
            if change is None:
                continue
            names, ours = [o["file"] for o in job.output or []], self._ours(job.out_dir)
            job.status, job.updated_at = WITHDRAWN, utcnow()
            job.error = f"its files were deleted {change.says}"
            record_audit(session, AuditRecord(
                AuditAction.EXPORT_WITHDRAWN, "permit", username="system", purpose=job.purpose,
                rule_id=change.rule_id, reason=change.reason, minted_by=job.minted_by, token_id=job.token_id,
                detail={
                    "job": job.id, "owner": job.username, "organisation": job.organisation,
                    "files": " ".join(names) or "(none)",
                    "deleted": "yes" if ours else "no: written where its operator asked, theirs to keep"}))
            if ours:
                files[job.id] = (Path(job.out_dir), names)
        return files

    def _supersede(self, session: Session, username: str) -> dict[str, Files]:
        """Mark expired this user's finished exports in the service's folder beyond the newest
        KEPT_PER_USER - 1 (the one starting makes KEPT_PER_USER); their files, by id, for the caller to
        delete once that is committed."""
        finished = session.scalars(select(ExportJob).where(ExportJob.username == username,
                                                           ExportJob.status == "completed")
                                   .order_by(ExportJob.finished_at.desc()))
        return _mark_expired([job for job in finished if self._ours(job.out_dir)][KEPT_PER_USER - 1:])

    def _ours(self, out_dir: str) -> bool:
        """Whether an export's folder is the service's own (`{data}/exports/`): a command-line export wrote
        where its operator asked, and its files are theirs to keep, whatever happens to the job."""
        return Path(out_dir).resolve().is_relative_to((self.settings.data_path / "exports").resolve())

    def _own(self, actor: Actor, job_id: str) -> ExportJob:
        """The actor's job, only while they hold the role and organisation it was decided under: a client
        id registered again for another organisation, or a user moved, is not who asked for it."""
        with self.db.session() as session:
            job = session.get(ExportJob, job_id)
            if (job is None or job.status == "cancelled" or job.username != actor.username
                    or job.role != (actor.role.name if actor.role else None)
                    or job.organisation != actor.organisation):
                raise NotFound(f"no export {job_id}")
            return job

    def _view(self, job_id: str) -> JobView:
        with self.db.session() as session:
            job = session.get_one(ExportJob, job_id)
            status, error = job.status, job.error
            if status in RUNNING and utcnow() - job.updated_at > STALE_AFTER:
                status, error = "failed", STOPPED_RUN
            summary = published_summary(job.summary) if job.summary else {}
            return JobView(job.id, status, job.request_url, job.created_at.isoformat(), job.people_total,
                           job.people_done, list(job.output or []), summary, error)

    @staticmethod
    def _within_scopes(secondary: SecondaryUse, action: AuditAction, readable: frozenset[str] | None,
                       wanted: str | None = None, **detail: Any) -> None:
        """Refuse, audited, a token whose scopes read nothing of a population (`readable` empty: patient/ scopes
        only, or no read scope) or not the type of the file `wanted`: an app the export's owner authorised
        reaches only what its scopes name, as at the kick-off (None: any type)."""
        if readable is None or (readable and (wanted is None or wanted in readable)):
            return
        raise secondary.refuse(action, Decision("deny", "deny-scope", f"the access token's scopes do not allow "
                                                f"{wanted or 'a population export'}"), **detail)

    def status(self, actor: Actor, job_id: str, request_id: str | None = None, minted: Minted = None,
               readable: frozenset[str] | None = None) -> JobView:
        self.expire()
        job = self._own(actor, job_id)
        secondary = self._secondary(actor, request_id, purpose=job.purpose, minted=minted)
        self._within_scopes(secondary, AuditAction.EXPORT_DOWNLOAD, readable, job=job_id)
        secondary.check(AuditAction.EXPORT_DOWNLOAD, job=job_id)
        return self._view(job_id)

    def cancel(self, actor: Actor, job_id: str, request_id: str | None = None,
               source_address: str | None = None, minted: Minted = None,
               readable: frozenset[str] | None = None) -> None:
        """Stop a running export (its run deletes what it wrote) or delete a finished one's files, if they are in
        the service's folder (`_ours`)."""
        self.expire()
        job = self._own(actor, job_id)
        secondary = self._secondary(actor, request_id, source_address, job.purpose, minted)
        self._within_scopes(secondary, AuditAction.EXPORT_CANCEL, readable, job=job_id)
        with self.db.session() as session:
            row = session.get_one(ExportJob, job_id)
            was = row.status
            row.status, row.updated_at = "cancelled", utcnow()
            secondary.audit(session, AuditAction.EXPORT_CANCEL, "permit", job=job_id, was=was)
        if was not in RUNNING and self._ours(job.out_dir):
            remove_files(Path(job.out_dir), [o["file"] for o in job.output or []])

    def file(self, actor: Actor, job_id: str, name: str, request_id: str | None = None,
             source_address: str | None = None, minted: Minted = None,
             readable: frozenset[str] | None = None) -> Path:
        """The path of one output file of a completed job, after checking and auditing the download."""
        self.expire()
        job = self._own(actor, job_id)
        entry = next((o for o in job.output or [] if o["file"] == name), None)
        self._within_scopes(self._secondary(actor, request_id, source_address, job.purpose, minted),
                            AuditAction.EXPORT_DOWNLOAD, readable, entry["type"] if entry else None, job=job_id,
                            file=name)
        if job.status == WITHDRAWN:
            self._secondary(actor, request_id, source_address, job.purpose, minted).check(
                AuditAction.EXPORT_DOWNLOAD, job=job_id, file=name)  # still suspended: that is the answer
            raise Withdrawn(f"export {job_id}: {job.error}", where="$export")
        if job.status != "completed" or entry is None:
            raise NotFound(f"export {job_id} has no file {name}")
        secondary = self._secondary(actor, request_id, source_address, job.purpose, minted)
        secondary.check(AuditAction.EXPORT_DOWNLOAD, job=job_id, file=name)
        with self.db.session() as session:
            secondary.audit(session, AuditAction.EXPORT_DOWNLOAD, "permit", rule_id="permit-secondary", job=job_id,
                            file=name, resources=str(entry["count"]))
        return Path(job.out_dir) / entry["file"]
