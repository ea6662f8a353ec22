"""The `sharedcare` command. Each subcommand is a thin wrapper over the package's modules.

Exit codes: 0 done; 1 the command ran and found a problem (quarantined input, a broken audit chain);
2 the command could not run as asked (bad arguments, invalid framework, unknown user, a SHAREDCARE_DB that is no
database URL, a schema this release cannot use as it stands: `sharedcare init` first); 3 the store could not be
reached, or was lost mid-command (try again; an ingest run again resumes).
"""

from __future__ import annotations

import csv
import faulthandler
import getpass
import json
import os
import signal
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime
from pathlib import Path
from threading import Event
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from typer.core import TyperGroup

from sharedcare.config import DEMO_PASSWORD, MIN_SECRET_BYTES, Settings, load_settings
from sharedcare.errors import ConfigError, FrameworkError, SharedcareError
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.store.database import STORE_BUSY, Database, busy, unreachable, unreachable_reason

if TYPE_CHECKING:
    from sharedcare.governance.access_log import IngestRun
    from sharedcare.ingest.pipeline import IngestReport, Pipeline
    from sharedcare.tls import TlsSettings

UNREACHABLE = 3  # the exit code of a store that cannot be reached (as `audit witness` exits 3 for "not now")


class _Commands(TyperGroup):
    """Every command, with a store that cannot be reached or is lost part-way (a restart, a dropped connection),
    or busy past a writer's wait (`database.busy`), said in one line, exit 3, rather than a traceback and exit 1,
    which each command gives a meaning of its own (a broken chain, a quarantined message)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except DBAPIError as exc:
            if busy(exc):  # its transaction rolled back: what it committed before stands
                raise _fail(f"{STORE_BUSY} of the work under way: run the command again (what it committed before "
                            "stands; `ingest` stores each message once)", UNREACHABLE) from exc
            if not unreachable(exc):
                raise
            raise _fail(f"cannot reach the store named by SHAREDCARE_DB ({_store_named()}): {unreachable_reason(exc)}",
                        UNREACHABLE) from exc


app = typer.Typer(help="sharedcare: an open shared care record for an integrated care system.",
                  no_args_is_help=True, pretty_exceptions_enable=False, cls=_Commands)
users_app = typer.Typer(help="The framework's configured users.", no_args_is_help=True)
agreements_app = typer.Typer(help="Organisations' information-sharing agreements.", no_args_is_help=True)
preferences_app = typer.Typer(help="Patients' choices about sharing.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
framework_app = typer.Typer(help="The information-sharing framework file.", no_args_is_help=True)
clients_app = typer.Typer(help="Apps and partner systems registered for SMART on FHIR.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(agreements_app, name="agreements")
app.add_typer(preferences_app, name="preferences")
app.add_typer(audit_app, name="audit")
app.add_typer(framework_app, name="framework")
app.add_typer(clients_app, name="clients")

console = Console(stderr=True)
OPERATOR = "cli"  # access_log.OPERATOR too: a citizen reads its looks at their choices in words
STOPPED_BY_SIGTERM = 128 + signal.SIGTERM  # 143, the status a shell gives a process the signal ended


def _literal(value: object) -> str:
    """A stored or received value as the operator's console prints it: literally. Rich would read `[/]` or
    `[black on black]` in a sender's value as markup (and fail, or hide a line), and a terminal would obey
    an escape sequence: markup is escaped and control characters are encoded, as the audit log does."""
    text = str(value)
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return escape(text)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print the error on one line (no wrapping at the console's width: a file's path and line stay whole
    for the reader and for grep), and the exit to raise."""
    console.print(f"[red]error:[/red] {_literal(message)}", soft_wrap=True)
    return typer.Exit(code)


def _framework() -> Framework:
    """The framework, or every problem of its file on a line of its own (`serve` and `mllp` then do not start)."""
    try:
        return load_framework()
    except FrameworkError as exc:
        count = len(exc.problems)
        invalid = _fail(f"{exc.where} is invalid ({count} problem{'s' * (count != 1)}):")
        for problem in exc.problems:
            console.print(f"  {_literal(problem)}", soft_wrap=True)
        raise invalid from exc


def _mapping_problems(warn: bool) -> bool:
    """Each CSV mapping that does not load, its problems one a line, as `_framework` says the framework's; whether
    there were any. A warning at the start of `serve` and `mllp`, which read no CSV (a stale mapping holds files,
    which replay; it does not stop the record or the HL7 feeds): found at go-live, not in a day's quarantine."""
    from sharedcare.ingest.csv_mapping import folder_problems

    problems = folder_problems(_settings().mappings_path)
    for exc in problems:
        count = len(exc.problems)
        said = f"{exc.where} is invalid ({count} problem{'s' * (count != 1)}):"
        if warn:
            console.print(f"[yellow]warning:[/yellow] {_literal(said)} its files, and any file in a folder naming no "
                          "organisation whose header it might read, are held until it is fixed", soft_wrap=True)
        else:
            console.print(f"[red]error:[/red] {_literal(said)}", soft_wrap=True)
        for problem in exc.problems:
            console.print(f"  {_literal(problem)}", soft_wrap=True)
    return bool(problems)


def _settings() -> Settings:
    """The settings, or a clear error naming the one that is wrong (not a traceback)."""
    try:
        return load_settings()
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc


def _keyed_settings() -> Settings:
    """The settings of a command that signs or keys anything (tokens, checkpoints, pseudonyms), refused as
    `serve` refuses them: outside demo mode, the published demo key or a key short enough to guess (TRUST DP4)."""
    settings = _settings()
    try:
        settings.require_safe_secret()
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc
    return settings


def _warn_unkeyed_pseudonyms(settings: Settings) -> None:
    """Say when extracts' pseudonyms fall back to the signing secret (`Settings.pseudonym_secret`): allowed, so
    that pseudonyms already issued stay the same, but the operator should know."""
    if settings.pseudonym_key is None and not settings.demo:
        console.print("[yellow]warning:[/yellow] SHAREDCARE_PSEUDONYM_KEY is unset: extracts' pseudonyms are keyed "
                      "by SHAREDCARE_SECRET, so rotating it re-keys them all and whoever holds it can recompute them")


def _store_named() -> str:
    """The store SHAREDCARE_DB names, as an error may show it: its password hidden."""
    try:
        return make_url(_settings().database_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "not a database URL"


def _database(writes: bool = True, migrate: bool = False) -> Database:
    """The store, its schema at this release's migration. Only `init` (`migrate`) changes the schema: any other
    command finds it current or stops, exit 2, saying to run `init` as the schema owner (the service's role owns
    nothing and cannot), except that a new SQLite store (no schema at all) is made on first use, so that the demo
    and a developer's store need no step. A store that cannot be reached stops the command, exit 3 (`_Commands`).
    A command that `writes` (nearly all do: each audits what it did) is refused, exit 2, when its audit key is too
    short or not the log's: else its entries would fail `audit verify` ever after. The checks of the log (verify,
    checkpoint, forward) write nothing and must report what they find, so they are not."""
    from sharedcare.governance.audit import check_key

    settings = _settings()
    try:
        db = Database(settings.database_url, settings.audit_chain_key, settings.audit_chain_keys_retired)
    except (NoSuchModuleError, ImportError) as exc:
        raise _fail(f"SHAREDCARE_DB ({_store_named()}) names a database or driver sharedcare cannot use: write "
                    "postgresql+psycopg://... or sqlite:///...") from exc
    except ArgumentError as exc:  # the value itself is not shown: it may hold a password
        raise _fail("SHAREDCARE_DB is not a database URL (such as postgresql+psycopg://user:password@host:5432/"
                    "sharedcare, or sqlite:///var/sharedcare.db)") from exc
    except OSError as exc:  # an SQLite store's folder or file that cannot be made
        raise _fail(f"cannot reach the store named by SHAREDCARE_DB ({_store_named()}): "
                    f"{(exc.strerror or str(exc)).lower()}", UNREACHABLE) from exc
    if migrate:
        _migrate(db)
    else:
        _check_schema(db)
    if writes:
        if not settings.demo and settings.audit_key is not None and len(settings.audit_key.encode()) < MIN_SECRET_BYTES:
            # said before `key_problem`, which would call a short key the wrong one
            raise _fail(f"SHAREDCARE_AUDIT_KEY is {len(settings.audit_key.encode())} bytes; it must be at least "
                        f"{MIN_SECRET_BYTES} (for example `openssl rand -hex 32`)")
        with db.session() as session:
            checked = check_key(session)
        if checked.problem:
            raise _fail(checked.problem)
        if checked.warning:
            _warn_unverified_end(db, checked.warning, checked.unverified)
    return db


def _warn_unverified_end(db: Database, warning: str, span: tuple[int, int] | None) -> None:
    """Entries at the end of the log that do not verify under this process's key (`audit.check_key`): said on
    the console (the service's log) and in the log itself, for the IG officer's audit page, and the command
    goes on. The entry this writes verifies, so the next command started says nothing more of them."""
    import click

    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit

    console.print(f"[red]warning: the audit log may have been tampered with:[/red] {_literal(warning)}",
                  soft_wrap=True)
    first, last = span or (0, 0)
    context = click.get_current_context(silent=True)
    with db.session() as session:
        record_audit(session, AuditRecord(AuditAction.UNVERIFIED_END, "error", username="system", purpose="governance",
                                          reason=warning, detail={
                                              "first_unverified": str(first), "last_unverified": str(last),
                                              "command": context.command_path if context else "sharedcare"}))


def _migrate(db: Database) -> None:
    """`init`: bring the schema to this release's migration; refused in words (exit 2) for a role that may not."""
    try:
        db.migrate()
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42501":  # only PostgreSQL's insufficient_privilege is the role's
            raise
        reason = " ".join(str(exc.orig).split())
        raise _fail(f"the schema could not be brought to {db.head_revision()} as this role: {reason}: run "
                    "`sharedcare init` as the schema's owner") from exc


def _check_schema(db: Database) -> None:
    """Stop, exit 2, unless the store's schema is at this release's migration (a new SQLite store is made)."""
    current, head = db.schema_revision(), db.head_revision()
    if current == head:
        return
    if current is None and db.backend == "sqlite":
        db.migrate()  # a new SQLite store, made on first use (the demo, a developer's store)
        return
    if current is None:
        raise _fail(f"the store has no schema yet (this release needs {head}): run `sharedcare init` as the "
                    "schema's owner")
    if db.known_revision(current):
        raise _fail(f"the store's schema is at {current}, this release needs {head}: run `sharedcare init` as the "
                    "schema owner")
    raise _fail(f"the store's schema is at {current}, which this release does not know (it needs {head}): a later "
                "release migrated it; run that release")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# README's grants to the service's own role (PostgreSQL), run by `init --grant-to ROLE` after each upgrade
SERVICE_GRANTS = (
    "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
    "REVOKE UPDATE, DELETE ON audit_events FROM {role}",  # SELECT, INSERT: appends only
    "REVOKE INSERT, DELETE ON audit_head FROM {role}",  # SELECT, UPDATE: the append's lock and step
    "REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {role}",
    # no temp tables: nothing needs one, and a trigger on one runs as the audit chain's own did (migration 0034)
    "REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC",
)
# the roles the schema's owner granted anything on the audit log (README's service role), and the tables one lacks
_GRANTEES = ("SELECT DISTINCT pg_get_userbyid(a.grantee) FROM pg_class c, aclexplode(c.relacl) a "
             "WHERE c.oid = 'public.audit_events'::regclass AND a.grantee <> c.relowner AND a.grantee <> 0 ORDER BY 1")
_NOT_GRANTED = ("SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
                "AND c.relkind IN ('r', 'p') AND NOT has_table_privilege(%(role)s, c.oid, 'SELECT') ORDER BY 1")


@app.command()
def init(
    grant_to: Annotated[str | None, typer.Option(
        "--grant-to", metavar="ROLE", help="PostgreSQL: give the service's role README's grants on every table "
                                           "(again after each upgrade that adds one).")] = None,
) -> None:
    """Create or upgrade the database schema (Alembic migrations) and check the framework. On PostgreSQL, name
    each role granted the audit log (the service's) that lacks privileges on a table, or grant them (--grant-to)."""
    _framework()
    if grant_to is not None and not _store_named().startswith("postgresql"):  # before anything is changed
        raise _fail("--grant-to is for a PostgreSQL store: an SQLite store has no roles")
    db = _database(migrate=True)
    if db.backend == "postgresql":
        _service_grants(db, grant_to)
    console.print(f"database ready: {db.url.render_as_string(hide_password=True)}")


def _service_grants(db: Database, grant_to: str | None) -> None:
    """`init` on PostgreSQL: run README's grants for `grant_to`; then warn of each service role (one granted
    anything on the audit log, or `grant_to`) lacking privileges on a table, as a new migration's table is: the
    service would otherwise find out at run time, as a permission denied."""
    from sqlalchemy.exc import ProgrammingError

    with db.engine.begin() as connection:
        if grant_to is not None:
            quote = connection.dialect.identifier_preparer.quote
            names = {"role": quote(grant_to), "database": quote(connection.exec_driver_sql(
                "SELECT current_database()").scalar_one())}
            try:
                for grant in SERVICE_GRANTS:
                    connection.exec_driver_sql(grant.format(**names))
            except ProgrammingError as exc:
                raise _fail(f"the grants to {grant_to} could not be made: {' '.join(str(exc.orig).split())}") from exc
            console.print(f"granted {grant_to} the service's privileges (README, PostgreSQL)")
        roles = [grant_to] if grant_to is not None else []
        roles += [role for (role,) in connection.exec_driver_sql(_GRANTEES) if role not in roles]
        for role in roles:
            missing = [table for (table,) in connection.exec_driver_sql(_NOT_GRANTED, {"role": role})]
            if missing:
                console.print(f"[yellow]warning:[/yellow] role {_literal(role)} has no privileges on "
                              f"{', '.join(missing)}: run `sharedcare init --grant-to {_literal(role)}` "
                              "(README's grants)", soft_wrap=True)


@app.command()
def synth(
    people: Annotated[int, typer.Option(min=1, help="How many people live in the area.")] = 1000,
    out: Annotated[Path, typer.Option(help="Folder to write the feeds into.")] = Path("var/synth"),
    seed: Annotated[int, typer.Option(help="Same seed, same output.")] = 1,
    as_of: Annotated[str | None, typer.Option(help="Date the data is generated as of (YYYY-MM-DD).")] = None,
) -> None:
    """Write a synthetic ICS: every organisation's feed in its own format, plus ground truth and users."""
    from sharedcare.synth import DEFAULT_AS_OF, generate

    when = date.fromisoformat(as_of) if as_of else DEFAULT_AS_OF
    with _progress() as progress:
        task = progress.add_task("people", total=people)
        summary = generate(out, people=people, seed=seed, as_of=when, framework=_framework(),
                           progress=lambda n: progress.advance(task, n))
    console.print(f"wrote {summary.people} people as of {when} to {out} ({len(summary.files)} files)")


def _progress(transfer: bool = False) -> Progress:
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
    if transfer:
        columns.append(TransferSpeedColumn())
    columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, transient=False)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raised as SystemExit (status 143, as the signal gives) for the while: by default it ends the
    process at once, so clean-up that `except BaseException` and `finally` do never happens."""
    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


STOP_GRACE_S = 60  # after SIGTERM, the longest a stopping run may take (systemd's SIGKILL comes at 90 s)


def _end_if_stuck() -> None:
    """A stop that has not ended the process within STOP_GRACE_S: every thread's stack to stderr, then exit 143.
    Once in several CI runs a run that SIGTERM stopped with all its processes (staging workers and the
    forkserver too) did not exit; where it waits is not known yet, so the process says it and ends."""
    print(f"stopping took over {STOP_GRACE_S} s: ended; where each thread was:", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(STOPPED_BY_SIGTERM)


@contextmanager
def _sigterm_stops() -> Iterator[Event]:
    """An event SIGTERM sets for the while, in place of ending the process at once: what systemd or Kubernetes
    sends to stop a service, for an ingest to finish the message in hand and write its end (`ingest`). From the
    signal to the end of the block, the process ends within STOP_GRACE_S whatever it waits for
    (`_end_if_stuck`)."""
    stop = Event()
    watchdogs: list[threading.Timer] = []

    def stopping(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            watchdogs.append(threading.Timer(STOP_GRACE_S, _end_if_stuck))
            watchdogs[0].daemon = True
            watchdogs[0].start()
        stop.set()

    previous = signal.signal(signal.SIGTERM, stopping)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)
        for watchdog in watchdogs:  # stopped in time: what follows (the report) is the caller's
            watchdog.cancel()


def _figures_table(title: str, figures: dict[str, object]) -> Table:
    """A report's figures as a table a person reads, one row a figure (its `--json` is the same dict)."""
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key.replace("_", " "), str(value))
    return table


def _report_table(report: dict[str, Any]) -> Table:
    table = Table(title="Ingest summary")
    table.add_column("measure")
    table.add_column("count", justify="right")
    for key in ("files", "messages", "accepted", "unchanged", "stale", "quarantined"):
        table.add_row(key, str(report[key]))
    for rtype, n in report["set_aside"].items():
        table.add_row(f"set aside: {rtype}", str(n))
    for note, n in report["notes"].items():
        table.add_row(f"note: {note}", str(n))
    if report["merges_held"]:
        table.add_row("merges held for review", str(len(report["merges_held"])))
    return table


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of feeds.")],
    source: Annotated[str | None, typer.Option(help="ODS code of the sending organisation.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, fhir, hl7v2 or csv.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Ingest feeds: accepted, unchanged and quarantined counts, with every quarantine reason."""
    from sharedcare.ingest.csv_mapping import organisation_of
    from sharedcare.ingest.pipeline import Pipeline, expand_paths

    if fmt not in {"auto", "fhir", "hl7v2", "csv"}:
        raise _fail(f"--format must be auto, fhir, hl7v2 or csv, not '{fmt}'")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise _fail(f"no such file or folder: {', '.join(missing)}")
    fw = _framework()
    pipeline = Pipeline(_database(), fw)
    files = expand_paths(paths)
    total = sum(p.stat().st_size for p in files)
    # whose data it is, as far as can be told before reading: --source, else the organisations' folders it is in
    organisations = {source} if source else {organisation_of(str(p), fw.organisations) for p in files}
    with _sigterm_stops() as stop:  # stopped, the run ends after the message in hand and says so (exit 143)
        with _audited_run(pipeline, organisations, paths=" ".join(str(p) for p in paths), files=str(len(files)),
                          source=source or "") as run, _progress(transfer=True) as progress:
            task = progress.add_task("ingesting", total=total)
            report = pipeline.ingest_paths(paths, fmt=fmt, source=source,
                                           progress=lambda n: progress.advance(task, n), stop=stop)
        stopped = {"stopped": "SIGTERM", "stopped_after": report.stopped_after} if report.stopped else {}
        _audit_ingest(pipeline, report, **run, **stopped)
    data = report.to_json()
    if as_json:
        _print_json(data)
    else:
        console.print(_report_table(data))
        for item in data["file_notes"]:  # said once of a file, before its rows' refusals
            console.print(f"[yellow]note[/yellow] {_literal(item['file'])}: {_literal(item['note'])}", soft_wrap=True)
        for item in data["quarantine"][:20]:
            console.print(f"[yellow]quarantined[/yellow] #{item['id']} {_literal(item['where'])}: "
                          f"{_literal(item['reason'])}")
        if report.quarantined > 20:  # the rest, counted by reason (`quarantine list` names each)
            console.print(f"{report.quarantined - 20:,} more quarantined (sharedcare quarantine list); all "
                          f"{report.quarantined:,} by reason:")
            for reason, n in list(data["held_by_reason"].items())[:20]:
                console.print(f"  {n:,} x {_literal(reason)}")
        for item in data["skipped_files"][:20]:
            console.print(f"[yellow]skipped[/yellow] {_literal(item['file'])}: {_literal(item['reason'])}")
        for item in data["merges_held"][:20]:
            console.print(f"[yellow]held for review[/yellow] {_literal(item['where'])}: {_literal(item['reason'])}")
    if report.stopped:
        after = f"after {_literal(report.stopped_after)}" if report.stopped_after else "before its first message"
        console.print(f"[red]stopped[/red] by SIGTERM {after}: what it handled is stored ({report.messages:,} "
                      f"messages: {report.accepted:,} resources accepted, {report.unchanged:,} unchanged, "
                      f"{report.quarantined:,} quarantined) and nothing after it was. Run the same input again "
                      "to finish (what is stored is answered unchanged).", soft_wrap=True)
        raise typer.Exit(STOPPED_BY_SIGTERM)
    if report.skipped_files and not report.files:  # a script must notice a feed it named was not read
        skipped = [item["file"] for item in report.skipped_files]
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise _fail(f"nothing was read: {', '.join(skipped[:3])}{more} skipped, of no format ingested (name them "
                    ".json, .ndjson, .xml, .hl7 or .csv, or pass --format)")
    if report.quarantined:
        raise typer.Exit(1)


@contextmanager
def _audited_run(pipeline: Pipeline, organisations: Iterable[str | None], **given: str) -> Iterator[dict[str, str]]:
    """A file ingest or a replay is audited as the operator's write (TRUST AU1) in two events naming one run id:
    its start, committed before it writes anything, since each batch it stores is committed as it goes and a
    run killed part-way (kill -9, the machine lost) writes no end; and its end (`_audit_ingest`), the caller's
    to write with the report, or written here, as an error naming what stopped it, when the run raises. Both
    name the operating-system account and the organisations whose data it is (the framework's of
    `organisations`; the entry's organisation when there is one). Yields the details both events carry."""
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit

    known = sorted(org for org in organisations if org in pipeline.framework.organisations)
    run = {"run": uuid.uuid4().hex, "operator_account": _account(), "organisations": " ".join(known), **given}
    with pipeline.db.session() as session:
        record_audit(session, AuditRecord(
            AuditAction.INGEST_START, "permit", OPERATOR, organisation=_sole(run["organisations"]),
            purpose="direct-care", detail={k: v for k, v in run.items() if v}))
    try:
        yield run
    except BaseException as stopped:  # a run stopped part-way has stored what it committed: audit that it ended
        _audit_ingest(pipeline, None, stopped=type(stopped).__name__, **run)
        raise


def _sole(organisations: str) -> str | None:
    """The organisation a run's events are on behalf of: the one whose data it is, if only one."""
    return organisations if organisations and " " not in organisations else None


def _audit_ingest(pipeline: Pipeline, report: IngestReport | None, **detail: str) -> None:
    """The end of a run begun by `_audited_run`, naming its run id: what was given, and the counts. Each stored
    resource names its message and source in its provenance, so the events and the resources lead to each
    other; a listener's messages are audited one by one, each in its own transaction (mllp.py). A run stopped
    part-way (`report` None: interrupted, the database gone; or `stopped` given with the report of how far a
    run SIGTERM stopped got) is audited as an error with what stopped it, when the log can still be written;
    the error itself is the caller's to raise."""
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit

    counts = {} if report is None else {name: str(getattr(report, name)) for name in (
        "messages", "accepted", "unchanged", "stale", "quarantined")}
    finished = report is not None and not detail.get("stopped")
    try:
        with pipeline.db.session() as session:
            record_audit(session, AuditRecord(
                AuditAction.RECORD_WRITE, "permit" if finished else "error", OPERATOR,
                organisation=_sole(detail.get("organisations", "")), purpose="direct-care",
                fhir_action="C" if report is None or report.accepted else "E",
                detail={k: v for k, v in detail.items() if v} | counts))  # E: it ran and wrote nothing
    except Exception:
        if finished:
            raise
        console.print("[yellow]warning:[/yellow] the stopped run could not be written to the audit log")


@app.command()
def feeds(
    stale_after: Annotated[float, typer.Option(min=0, help="Hours a source may stay quiet: exit 1 when any "
                                                           "declared source has sent nothing for longer.")] = 24,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """How current each feed is: every source system the framework declares, when it last sent new or
    changed data and how much in the last day; for a monitor on a timer, exit 1 when one has gone quiet."""
    from dataclasses import asdict
    from datetime import timedelta

    from sharedcare.clock import utcnow
    from sharedcare.ingest.freshness import feed_status

    fw = _framework()
    with _database().session() as session:
        rows = feed_status(session, fw, utcnow(), timedelta(hours=stale_after))
    if as_json:
        _print_json([{**asdict(r), "last_received": r.last_received.isoformat() if r.last_received else None}
                     for r in rows])
    else:
        table = Table(title=f"Feeds (quiet for more than {stale_after:g} h is stale)")
        for column in ("organisation", "system", "format", "status"):
            table.add_column(column)
        table.add_column("last new or changed data", overflow="fold")
        for column in ("hours quiet", "last 24 h"):
            table.add_column(column, justify="right")
        for r in rows:  # stale in words too: a monitor's log or a colour-blind reader sees no red
            table.add_row(_literal(f"{r.organisation} {r.name}"), _literal(r.system), _literal(r.format),
                          "STALE" if r.stale else "ok",
                          r.last_received.strftime("%Y-%m-%d %H:%M UTC") if r.last_received else "never",
                          "" if r.hours_quiet is None else f"{r.hours_quiet:g}", f"{r.last_day:,}",
                          style="red" if r.stale else None)
        Console().print(table)
    if any(r.stale for r in rows):
        raise typer.Exit(1)


quarantine_app = typer.Typer(help="Input that could not be accepted, kept with its reason.", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(as_json: Annotated[bool, typer.Option("--json")] = False,
                    every: Annotated[bool, typer.Option("--all", help="Include replayed, superseded and erased "
                                                                      "items.")]
                    = False) -> None:
    """What is waiting in quarantine, with where and why; with --all, also what was replayed, and what its
    source superseded by sending it again corrected (kept, with what superseded it and when)."""
    from sqlalchemy import func

    from sharedcare.store.models import Quarantine

    with _database().session() as session:
        stmt = select(Quarantine).order_by(Quarantine.id)
        if not every:
            stmt = stmt.where(Quarantine.status == "held")
        rows = [{"id": q.id, "status": q.status, "format": q.format, "file": q.filename, "location": q.location,
                 "reason": q.reason, "received_at": q.received_at.isoformat(), "bytes": len(q.payload),
                 "superseded_by": q.superseded_by,
                 "superseded_at": q.superseded_at.isoformat() if q.superseded_at else None,
                 "erased_at": q.erased_at.isoformat() if q.erased_at else None, "sha256": q.payload_sha256}
                for q in session.scalars(stmt)]
        superseded = 0 if every else session.scalar(
            select(func.count()).select_from(Quarantine).where(Quarantine.status == "superseded"))
    if as_json:
        _print_json(rows)
        return
    table = Table(title="Quarantine")
    for column in ("id", "status", "format", "location", "reason"):
        table.add_column(column)
    for r in rows:
        where = f"{r['file']}, {r['location']}"  # which the reason repeats: said once, in its own column
        reason = str(r["reason"]).removeprefix(where).removeprefix(", ").removeprefix(": ")
        if r["superseded_by"]:
            when = str(r["superseded_at"])[:16].replace("T", " ")
            reason = f"superseded {when} UTC by {r['superseded_by']}; was: {reason}"
        if r["erased_at"]:
            reason = f"body erased {str(r['erased_at'])[:16].replace('T', ' ')} UTC (retention); {reason}"
        table.add_row(str(r["id"]), _literal(r["status"]), _literal(r["format"]), _literal(where), _literal(reason))
    Console().print(table)
    if superseded:
        console.print(f"{superseded} superseded by a corrected copy its source sent (kept, not waiting): "
                      "--all lists them")


@quarantine_app.command("check")
def quarantine_check(
    older_than: Annotated[float, typer.Option(min=0, help="The service level in hours: exit 1 if any held "
                                                          "item has waited longer.")] = 24,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Held items by sending organisation and format, with the oldest's age, and no reasons or content, so
    a monitor or dashboard can run it on a timer: exit 1 when something has waited past the service level
    (a message nobody clears is a message the record never shows: hazard HAZ-13)."""
    from sqlalchemy import func

    from sharedcare.clock import utcnow
    from sharedcare.store.models import Quarantine

    now = utcnow()
    with _database().session() as session:
        groups = session.execute(
            select(Quarantine.source_org, Quarantine.format, func.count(), func.min(Quarantine.received_at))
            .where(Quarantine.status == "held").group_by(Quarantine.source_org, Quarantine.format)
            .order_by(Quarantine.source_org, Quarantine.format)).all()
    # compared unrounded (an item 24.04 h old is past a 24 h service level, though shown as 24), rounded to show
    ages = [(now - oldest).total_seconds() / 3600 for _, _, _, oldest in groups]
    rows: list[dict[str, Any]] = [
        {"source": org or "unknown", "format": fmt, "held": count, "oldest_hours": round(age, 1)}
        for (org, fmt, count, _), age in zip(groups, ages, strict=True)]
    late = [r for r, age in zip(rows, ages, strict=True) if age > older_than]
    if as_json:
        _print_json({"held": sum(r["held"] for r in rows), "older_than_hours": older_than,
                     "late_groups": len(late), "groups": rows})
    else:
        table = Table(title=f"Quarantine: held items (service level {older_than:g} h)")
        for column in ("source", "format", "held", "oldest (hours)"):
            table.add_column(column, justify="right" if column != "source" else "left")
        for r in rows:
            style = "red" if r in late else None
            table.add_row(_literal(r["source"]), _literal(r["format"]), str(r["held"]), f"{r['oldest_hours']:g}",
                          style=style)
        Console().print(table if rows else "Nothing held in quarantine.")
    if late:
        raise typer.Exit(1)


@quarantine_app.command("purge")
def quarantine_purge(
    apply: Annotated[bool, typer.Option("--apply", help="Erase the bodies (without it: only list them).")] = False,
    include_unresolved: Annotated[bool, typer.Option(
        "--include-unresolved", help="Also erase items still held: they will never be replayed.")] = False,
    days: Annotated[int | None, typer.Option(min=1, help="Retention in days from receipt (default: "
                                                        "SHAREDCARE_QUARANTINE_RETENTION_DAYS, 90).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Erase the bodies of quarantine items kept past the retention period (UK GDPR storage limitation),
    keeping each item's sender, place, reason, status and the body's SHA-256; resolved items only (replayed,
    superseded) unless --include-unresolved. A dry run unless --apply; an erasure is audited."""
    from sharedcare.clock import utcnow
    from sharedcare.ingest.retention import due, erase

    retention = days or _settings().quarantine_retention_days
    now = utcnow()
    with _database().session() as session:
        items = due(session, now, retention, include_unresolved)
        rows: list[dict[str, Any]] = [
            {"id": i.id, "status": i.status, "source": i.source_org or "unknown", "format": i.format,
             "file": i.filename, "location": i.location, "received_at": i.received_at.isoformat(),
             "bytes": len(i.payload)} for i in items]
        if apply:  # the bytes each had; the status each has now (a held one is `erased`)
            erase(session, items, now, OPERATOR, retention)
            for row, item in zip(rows, items, strict=True):
                row["status"] = item.status
    if as_json:
        _print_json({"retention_days": retention, "applied": apply, "include_unresolved": include_unresolved,
                     "items": rows, "bytes": sum(r["bytes"] for r in rows)})
        return
    table = Table(title=f"Quarantine bodies {'erased' if apply else 'to erase (dry run: --apply erases)'}: "
                        f"received more than {retention} days ago"
                        + ("" if include_unresolved else ", resolved (replayed or superseded)"))
    for column in ("id", "status", "source", "format", "location", "received", "bytes"):
        table.add_column(column, justify="right" if column in ("id", "bytes") else "left")
    for r in rows:
        table.add_row(str(r["id"]), _literal(r["status"]), _literal(r["source"]), _literal(r["format"]),
                      _literal(f"{r['file']}, {r['location']}"), r["received_at"][:16].replace("T", " "),
                      f"{r['bytes']:,}")
    Console().print(table if rows else f"No quarantine body kept past {retention} day{'s' * (retention != 1)}"
                    + ("." if include_unresolved else " among resolved items."))


@quarantine_app.command("replay")
def quarantine_replay(
    item_id: Annotated[int, typer.Argument(help="The quarantine id (see `sharedcare quarantine list`).")],
    source: Annotated[str | None, typer.Option(help="ODS code of the sending organisation.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Ingest a quarantined message again; exit 1 if it still cannot be accepted."""
    from sharedcare.ingest.messages import MessageError
    from sharedcare.ingest.pipeline import IngestReport, Pipeline

    pipeline = Pipeline(_database(), _framework())
    # SIGTERM ended the process where it stood, its run in the log as never finished: now the item in hand is
    # replayed whole (one transaction) or, signalled before it began, left as it was; the end says so (exit 143)
    with _sigterm_stops() as stop:
        try:
            with _audited_run(pipeline, {source}, replayed=str(item_id), source=source or "") as run:
                report = IngestReport(files=0) if stop.is_set() else pipeline.replay(item_id, source)
        except MessageError as exc:
            raise _fail(str(exc)) from exc
        if stop.is_set():
            report.stopped, report.stopped_after = True, f"#{item_id}" if report.messages else ""
        stopped = {"stopped": "SIGTERM", "stopped_after": report.stopped_after} if report.stopped else {}
        _audit_ingest(pipeline, report, **run, **stopped)
    if as_json:
        _print_json(report.to_json())
    elif report.stopped:
        console.print("[red]stopped[/red] by SIGTERM " + (
            f"after replaying #{item_id}: {report.accepted} accepted, {report.unchanged} unchanged, "
            f"{report.quarantined} still quarantined" if report.messages else
            f"before replaying #{item_id}: it is held as it was"), soft_wrap=True)
    elif report.quarantined:
        console.print(f"[yellow]still quarantined[/yellow] #{item_id}: {_literal(report.quarantine[0]['reason'])}")
    else:
        console.print(f"#{item_id} replayed: {report.accepted} accepted, {report.unchanged} unchanged"
                      + (f", [yellow]{report.stale} stale[/yellow] (not applied: the source has sent a newer version "
                         "since this message was received)" if report.stale else ""))
    if report.stopped:
        raise typer.Exit(STOPPED_BY_SIGTERM)
    if report.quarantined:
        raise typer.Exit(1)


mapping_app = typer.Typer(help="CSV mappings: how a source's extract becomes FHIR.", no_args_is_help=True)
app.add_typer(mapping_app, name="mapping")


@mapping_app.command("check")
def mapping_check(
    mapping: Annotated[Path, typer.Argument(help="The mapping file (config/mappings/ORG-system.yaml).")],
    csv_file: Annotated[Path, typer.Argument(metavar="CSVFILE", help="A sample extract to read with it.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Read a sample extract with a mapping, storing nothing; exit 1 naming each failing row's line, column and
    rule, 2 when the mapping itself is invalid."""
    from sharedcare.ingest.csv_extract import check_file
    from sharedcare.ingest.csv_mapping import MappingError, load_mapping

    if not csv_file.is_file():
        raise _fail(f"no such file: {csv_file}")
    fw = _framework()
    try:
        spec = load_mapping(mapping)
    except MappingError as exc:
        invalid = _fail(f"{mapping} is invalid:")  # each problem on a line of its own, printed literally
        for problem in exc.problems:
            console.print(f"  {_literal(problem)}")
        raise invalid from exc
    if fw.organisation(spec.organisation) is None:
        raise _fail(f"{mapping}: organisation '{spec.organisation}' is not in the framework")
    report = check_file(spec, csv_file, fw)
    if as_json:
        _print_json(report.to_json())
    else:
        if report.failed:
            table = Table(title=f"{csv_file}: rows {spec.name} cannot read")
            for column in ("line", "column", "rule"):
                table.add_column(column)
            for fault in report.failed:
                table.add_row(str(fault["line"]), fault["column"] or "", fault["rule"])
            Console().print(table)
        for note in report.dates.notes():
            console.print(f"[yellow]note:[/yellow] {_literal(note)}", soft_wrap=True)
        console.print(f"{spec.name}: {report.accepted} of {report.rows} rows would be accepted")
    if report.failed:
        raise typer.Exit(1)


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option(help="Folder for the NDJSON files, one per resource type.")],
    user: Annotated[str, typer.Option(help="The configured user exporting (a role with a secondary-use purpose).")],
    types: Annotated[str | None, typer.Option("--type", help="Comma-separated resource types (default all).")] = None,
    since: Annotated[str | None, typer.Option(help="Only resources received at or after this instant.")] = None,
    group: Annotated[str | None, typer.Option(help="A GP practice's ODS code: its registered population.")] = None,
    purpose: Annotated[str | None, typer.Option(help="The secondary purpose (default: the role's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """A pseudonymised Bulk Data export for secondary use, the same way `$export` makes it (audited)."""
    from sharedcare.export.jobs import ExportJobs, remove_abandoned
    from sharedcare.fhir.search import parse_instant
    from sharedcare.fhir.uk_core import RECORD_TYPES
    from sharedcare.governance.gateway import AccessDenied, NotFound, actor_for
    from sharedcare.governance.secondary import ExportScope

    settings = _keyed_settings()
    fw = _framework()
    if user not in fw.users:
        raise _fail(f"no user '{user}' in the framework (see `sharedcare users list`)")
    _warn_unkeyed_pseudonyms(settings)
    chosen = frozenset(t.strip() for t in types.split(",") if t.strip()) if types else None
    if chosen and chosen - RECORD_TYPES:
        raise _fail(f"--type: {', '.join(sorted(chosen - RECORD_TYPES))} not exported "
                    f"(types: {', '.join(sorted(RECORD_TYPES))})")
    try:
        scope = ExportScope("group" if group else "system", group, chosen, parse_instant(since) if since else None)
        jobs = ExportJobs(_database(), fw, settings)
        job_id = jobs.start(actor_for(fw, user), scope, f"sharedcare export --out {out}", out_dir=out.resolve(),
                            purpose=purpose, background=False)
        for abandoned in remove_abandoned(out):
            console.print(f"removed {abandoned}: the unchecked files of an export to this folder that was killed "
                          "before it finished", soft_wrap=True)
        with _progress() as progress, _sigterm_as_exit():  # stopped, the run deletes what it wrote
            task = progress.add_task("exporting (people)", total=None)
            try:
                view = jobs.run(job_id, on_progress=lambda done, total: progress.update(task, completed=done,
                                                                                        total=total))
            except (KeyboardInterrupt, SystemExit):
                console.print(f"[red]stopped:[/red] export {job_id} was interrupted; none of its files was kept",
                              soft_wrap=True)
                raise
    except (AccessDenied, NotFound) as exc:
        raise _fail(str(exc), 1) from exc
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc
    if view.status != "completed":  # refused at its last agreement check, or cancelled: no files
        raise _fail(f"export {job_id} {view.status}: {view.error or 'none of its files was kept'}", 1)
    summary = {"job": job_id, "out": str(out), "files": view.output, **view.summary}
    if as_json:
        _print_json(summary)
        return
    table = Table(title=f"Export {job_id} (pseudonymised, purpose {purpose or 'of the role'})")
    table.add_column("file")
    table.add_column("resources", justify="right")
    for entry in view.output:
        table.add_row(entry["file"], str(entry["count"]))
    table.add_row("people included", str(view.summary.get("people_included", 0)))
    for rule, n in view.summary.get("people_excluded", {}).items():
        table.add_row(f"people excluded: {rule}", str(n))
    for rule, n in view.summary.get("resources_withheld", {}).items():
        table.add_row(f"resources withheld: {rule}", str(n))
    for rule, n in view.summary.get("codings_withheld", {}).items():
        table.add_row(f"codings withheld: {rule}", str(n))
    small = view.summary.get("small_cells")
    if small:
        table.add_row("small cells: smallest group published (k)", str(small["k"]))
        for step, n in small["generalised"].items():
            table.add_row(f"people generalised: {step}", str(n))
        table.add_row("people suppressed (Patient without quasi-identifiers)", str(small["suppressed"]))
    Console().print(table)
    Console().print(f"small numbers: {view.summary.get('small_numbers', '')}")


TlsCert = Annotated[Path | None, typer.Option(help="PEM certificate to serve TLS with (SHAREDCARE_TLS_CERT).")]
TlsKey = Annotated[Path | None, typer.Option(help="Its PEM private key (SHAREDCARE_TLS_KEY).")]
TlsClientCa = Annotated[Path | None, typer.Option(help="PEM CA that signs feeds' client certificates: mutual TLS "
                                                       "(SHAREDCARE_TLS_CLIENT_CA).")]
TlsClientCrl = Annotated[Path | None, typer.Option(help="PEM revocation list(s) of the client CA(s): a revoked "
                                                        "feed certificate is refused (SHAREDCARE_TLS_CLIENT_CRL).")]
ClientCerts = Annotated[str | None, typer.Option(help="required, or optional (a certificate sent must be "
                                                      "trusted; browsers without one connect) "
                                                      "(SHAREDCARE_TLS_CLIENT_CERTS).")]


def _tls_options(cert: Path | None, key: Path | None, client_ca: Path | None, client_certs: str | None,
                 client_crl: Path | None) -> None:
    """`serve`'s and `mllp`'s TLS options override the environment, and are put in it, so that every server
    process (and every check) reads the same."""
    import os

    for name, value in (("SHAREDCARE_TLS_CERT", cert), ("SHAREDCARE_TLS_KEY", key),
                        ("SHAREDCARE_TLS_CLIENT_CA", client_ca), ("SHAREDCARE_TLS_CLIENT_CERTS", client_certs),
                        ("SHAREDCARE_TLS_CLIENT_CRL", client_crl)):
        if value is not None:
            os.environ[name] = str(value)


def _start_up_checks(service: str, database: Database, host: str) -> TlsSettings | None:
    """What `serve` and `mllp` check before they listen: the TLS settings and the clock (TRUST OP2), and
    settings that expose patients' data (warned: `config.insecure_choices`)."""
    from sharedcare.clock_sync import check_clock
    from sharedcare.config import insecure_choices
    from sharedcare.tls import certificate_warning, tls_settings

    try:
        settings = _settings()
        tls = tls_settings(settings)
        if service == "mllp" and tls is not None and (tls.client_ca is None or tls.client_certs != "required"):
            # MLLP has no other credential: without a required certificate anyone on the network could send
            # feeds, and the framework binds organisations to certificates (`feed_certificates`)
            raise ConfigError("mllp over TLS: client certificates must be required (SHAREDCARE_TLS_CLIENT_CA and "
                              "SHAREDCARE_TLS_CLIENT_CERTS=required); 'optional' is for a serve that browsers reach")
        ending = certificate_warning(tls) if tls is not None else None
        clock = check_clock(database, service, settings.require_clock_sync)
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc
    if ending:
        console.print(f"[yellow]warning:[/yellow] {_literal(ending)}", soft_wrap=True)
    if service == "serve":
        _warn_unkeyed_pseudonyms(settings)
        if settings.demo:
            _audit_demo_start(database, service)
    if clock.synchronised:
        console.print(clock.summary)
    else:
        console.print(f"[yellow]warning:[/yellow] {clock.summary} (SHAREDCARE_REQUIRE_CLOCK_SYNC=1 refuses to start)")
    for warning in insecure_choices(settings, service, host):
        console.print(f"[yellow]warning:[/yellow] {_literal(warning)}")
    console.print(f"{service}: {tls.describe() if tls else 'plain TCP, no TLS'}")
    return tls


def _audit_demo_start(database: Database, service: str) -> None:
    """Say, on the console and in the audit log, that `service` started in demo mode: an IG officer reading
    the log should not have to guess why anyone signed in with the demo password."""
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit

    what = (f"demo mode (SHAREDCARE_DEMO=1): every framework user signs in with the password '{DEMO_PASSWORD}' "
            "and the patient portal shows one-time codes on the page; for synthetic data only")
    console.print(f"[yellow]warning:[/yellow] {what}")
    with database.session() as session:
        record_audit(session, AuditRecord(AuditAction.DEMO_START, "permit", username="system", purpose="governance",
                                          reason=what, detail={"service": service}))


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Server processes (one per core: each runs Python on "
                                                     "one core at a time).")] = 1,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_client_ca: TlsClientCa = None,
    client_certs: ClientCerts = None,
    tls_client_crl: TlsClientCrl = None,
) -> None:
    """Serve the FHIR API and the portals."""
    import uvicorn

    from sharedcare.api.app import create_app, freeze_start_up
    from sharedcare.api.served_tls import TlsHttpProtocol
    from sharedcare.api.server_loop import LOOP
    from sharedcare.api.slow_clients import TimedHttpProtocol
    from sharedcare.export.jobs import ExportJobs

    _tls_options(tls_cert, tls_key, tls_client_ca, client_certs, tls_client_crl)
    settings = _settings()
    try:
        settings.require_demo_alone()  # before the store is touched
        application = create_app(settings, framework=_framework(), database=_database())
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc
    tls = _start_up_checks("serve", application.state.database, host)
    _mapping_problems(warn=True)
    _note_file_agreements(application.state.database, application.state.framework)
    expired = ExportJobs(application.state.database, application.state.framework, settings).expire()
    if expired:
        console.print(f"deleted the files of {expired} finished exports past their retention "
                      f"({settings.export_retention_days} days, SHAREDCARE_EXPORT_RETENTION_DAYS)")
    http = TlsHttpProtocol if tls else TimedHttpProtocol
    _open_files_to_the_hard_limit()
    # No access log: URLs can carry search terms, and patient identifiers must not reach log files
    # (TRUST DP1). Requests are traced by the audit log and the X-Request-ID header instead.
    if workers > 1:
        # Each process builds its own app from the same environment (settings, framework, store), checked
        # and migrated once above; everything they share lives in the store (audit chain, bases, jobs).
        application.state.database.dispose()
        uvicorn.run("sharedcare.api.app:served_app", factory=True, workers=workers, host=host, port=port,
                    log_level="info", access_log=False, http=http, loop=LOOP)
        return
    freeze_start_up()
    uvicorn.run(application, host=host, port=port, log_level="info", access_log=False, http=http, loop=LOOP)


def _note_file_agreements(database: Database, fw: Framework) -> None:
    """At a start of `serve` or `mllp` (before `serve`'s workers): a suspension written in the framework file
    since it was last read acts as one made by `agreements set` (`agreements.note_file_agreements`)."""
    from sharedcare.governance.agreements import note_file_agreements

    changed = note_file_agreements(database, fw, str(_settings().framework_path))
    if changed:
        console.print(f"agreements changed in the framework file since it was last read: {' '.join(changed)}")


def _open_files_to_the_hard_limit() -> None:
    """Raise this process's limit of open files (sockets) to the most the system allows it: a systemd service
    starts at 1,024, which a thousand connections from one client used up (api/slow_clients.py)."""
    import contextlib
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # a hard limit the kernel will not grant: the soft one stands
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@app.command()
def demo(
    people: Annotated[int, typer.Option(min=20)] = 2000,
    seed: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    out: Path = Path("var/demo"),
) -> None:
    """Synthesise an ICS (as of today), ingest it, and serve the portals with the demo sign-ins."""
    import os

    from sharedcare.clock import utcnow

    os.environ.setdefault("SHAREDCARE_DEMO", "1")
    os.environ.setdefault("SHAREDCARE_DB", f"sqlite:///{(out / 'sharedcare.db').resolve()}")
    try:  # before the synthetic people are written into the store it names
        _settings().require_demo_alone()
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc
    db_file = Path(os.environ["SHAREDCARE_DB"].removeprefix("sqlite:///"))
    if db_file.exists():
        db_file.unlink()
    synth(people=people, out=out / "feeds", seed=seed, as_of=utcnow().date().isoformat())
    fw = _framework()
    try:
        ingest([out / "feeds"], source=None, fmt="auto", as_json=False)
    except typer.Exit:
        pass  # a few synthetic bundles carry invalid NHS numbers on purpose: they wait in quarantine
    table = Table(title=f"Demo sign-ins (password: {DEMO_PASSWORD})")
    for column in ("username", "role", "organisation"):
        table.add_column(column)
    for user in fw.users.values():
        org = fw.organisation(user.organisation)
        table.add_row(user.username, fw.roles[user.role].label, org.name if org else user.organisation)
    console.print(table)
    journeys = Table(title="People to look up (JOURNEYS.md)")
    for column in ("name", "born", "NHS number", "journey"):
        journeys.add_column(column)
    for person in json.loads((out / "feeds" / "manifest.json").read_text())["journeys"]:
        journeys.add_row(person["name"], person["birth_date"], person["nhs_number"], person["journey"])
    console.print(journeys)
    base = f"http://{host}:{port}"
    console.print(f"Clinician portal: {base}/   IG workspace: {base}/ig (ig.morgan)   Patient portal: {base}/patient "
                  f"(NHS number and date of birth from the table above; the one-time code appears in this console)")
    console.print(f"FHIR API: {base}/fhir/metadata")
    console.print("Try: sign in as para.evans, find Mr Okafor by family name and date of birth, record implied "
                  "consent with a reason, and read his combined record.")
    serve(host=host, port=port)


@app.command()
def token(
    user: Annotated[str, typer.Option(help="A configured username (see `sharedcare users list`).")],
    scope: Annotated[str, typer.Option(help="Space-separated scopes.")] = "user/*.read",
    minutes: Annotated[int, typer.Option(min=1, max=24 * 60)] = 60,
) -> None:
    """Mint an access token for a configured user (for integration and testing). Audited as that user's
    sign-in, naming the account that minted it, and everything read with the token is audited under the
    user's name marked as read with this token (its id) minted by that account: without both the log would
    say the user signed in and looked themselves. No entry, no token."""
    from sharedcare.api.auth import mint_token, read_token
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit

    settings = _keyed_settings()
    fw = _framework()
    try:
        minter = f"{OPERATOR}:{_account()}"
        minted = mint_token(settings, fw, user, scope, minutes, minted_by=minter)
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc
    claims, named = read_token(settings, minted), fw.users[user]
    with _database().session() as session:
        record_audit(session, AuditRecord(
            AuditAction.LOGIN, "permit", user, role=named.role, organisation=named.organisation,
            detail={"step": "command-line token", "minted_by": minter, "token_id": claims["jti"],
                    "scope": scope, "expires": datetime.fromtimestamp(claims["exp"], UTC).isoformat()}))
    sys.stdout.write(minted + "\n")


def _account() -> str:
    """The operating-system account running this command (as the shell names it), or "unknown"."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER or LOGNAME, and no passwd entry (a bare container)
        return "unknown"


@clients_app.command("add")
def clients_add(
    client_id: Annotated[str, typer.Argument(help="The client_id the app or system will send.")],
    name: Annotated[str, typer.Option(help="Shown to users when the app asks for approval.")],
    kind: Annotated[str, typer.Option(help="public (a user-facing app, PKCE) or backend (a system, signed JWT).")],
    redirect_uri: Annotated[list[str] | None, typer.Option(help="A public app's redirect URI (repeatable).")] = None,
    launch_uri: Annotated[str | None, typer.Option(help="Where the portal sends an EHR launch.")] = None,
    organisation: Annotated[str | None, typer.Option(help="A backend's organisation (ODS code).")] = None,
    role: Annotated[str | None, typer.Option(help="The framework role a backend acts as.")] = None,
    jwks: Annotated[Path | None, typer.Option(help="A backend's public keys: a JWKS JSON file.")] = None,
    scope: Annotated[str | None, typer.Option(help="Scopes it may be granted (default by kind).")] = None,
) -> None:
    """Register an app (public) or a partner system (backend) to use the FHIR API."""
    from sharedcare.governance.clients import add_client

    try:
        keys = json.loads(jwks.read_text(encoding="utf-8")) if jwks else None
    except (OSError, ValueError) as exc:
        raise _fail(f"--jwks {jwks}: cannot read a JSON file ({exc})") from exc
    fw = _framework()
    try:
        with _database().session() as session:
            client = add_client(session, fw, client_id, name, kind, by=OPERATOR, redirect_uris=redirect_uri,
                                launch_uri=launch_uri, organisation=organisation, role=role, jwks=keys, scope=scope)
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"{client.client_id}: registered ({client.kind}, scopes {client.scope})")


@clients_app.command("remove")
def clients_remove(client_id: Annotated[str, typer.Argument(help="The client to cut off.")]) -> None:
    """Remove an app or partner system: it gets no new tokens, and every token it holds is refused from its
    next request (audited)."""
    from sharedcare.governance.clients import remove_client

    try:
        with _database().session() as session:
            removed = remove_client(session, client_id, by=OPERATOR)
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"{removed.client_id}: removed ({removed.kind}); its tokens are refused from their next request")


@clients_app.command("list")
def clients_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The registered clients: id, name, kind, scopes, redirect URIs, organisation and role."""
    from sharedcare.governance.clients import list_clients

    with _database().session() as session:
        rows: list[dict[str, Any]] = [{"client_id": c.client_id, "name": c.name, "kind": c.kind, "scope": c.scope,
                 "redirect_uris": list(c.redirect_uris), "launch_uri": c.launch_uri,
                 "organisation": c.organisation, "role": c.role} for c in list_clients(session)]
    if as_json:
        _print_json(rows)
        return
    table = Table(title="Registered clients")
    for column in ("client_id", "name", "kind", "scope", "redirect_uris", "organisation", "role"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["client_id"], r["name"], r["kind"], r["scope"], " ".join(r["redirect_uris"]),
                      r["organisation"] or "", r["role"] or "")
    Console().print(table)


@users_app.command("list")
def users_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the configured users: username, role, organisation."""
    fw = _framework()
    rows = [{"username": u.username, "name": u.name, "role": u.role, "organisation": u.organisation}
            for u in fw.users.values()]
    if as_json:
        _print_json(rows)
        return
    table = Table(title="Users")
    for column in ("username", "name", "role", "organisation"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["username"], r["name"], r["role"], r["organisation"])
    Console().print(table)


@agreements_app.command("set")
def agreements_set(
    org: Annotated[str, typer.Argument(help="ODS code of the organisation.")],
    status: Annotated[str, typer.Option(help="draft, signed, suspended or ended.")],
    reason: Annotated[str, typer.Option(help="Why (required for any status but signed): kept in the audit log "
                                             "and shown on the IG agreements board.")] = "",
) -> None:
    """Change an organisation's agreement status; takes effect on the next request (audited with the reason).
    Suspending or ending one, or setting it back to draft, hides its data from every partner, refuses its users
    every record, ends every session and token issued to them for good, and deletes their finished exports'
    files."""
    from sharedcare.export.jobs import ExportJobs
    from sharedcare.governance.agreements import set_agreement

    if status not in {"draft", "signed", "suspended", "ended"}:
        raise _fail(f"--status must be draft, signed, suspended or ended, not '{status}'")
    fw, db = _framework(), _database()
    try:
        with db.session() as session:
            agreement = set_agreement(session, fw, org, status, by=OPERATOR,  # type: ignore[arg-type]
                                      reason=reason)
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"{org}: agreement now {agreement.status}")
    withdrawn = ExportJobs(db, fw, _settings()).withdraw()
    if withdrawn:
        console.print(f"deleted the files of {withdrawn} finished exports of {org}'s users or holding its data")


@agreements_app.command("list")
def agreements_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every organisation's agreement as it stands now."""
    from sharedcare.governance.agreements import effective_agreements

    fw = _framework()
    with _database().session() as session:
        current = effective_agreements(session, fw)
    rows = [{"organisation": code, "name": fw.organisations[code].name, "status": a.status,
             "starts": a.starts, "ends": a.ends} for code, a in current.items()]
    if as_json:
        _print_json(rows)
        return
    table = Table(title="Agreements")
    for column in ("organisation", "name", "status", "starts", "ends"):
        table.add_column(column)
    for r in rows:
        table.add_row(*(str(r[c] or "") for c in ("organisation", "name", "status", "starts", "ends")))
    Console().print(table)


@preferences_app.command("set")
def preferences_set(
    nhs_number: Annotated[str, typer.Argument(help="The patient's NHS number.")],
    object_all: Annotated[bool, typer.Option("--object-all", help="Object to all sharing.")] = False,
    object_org: Annotated[str | None, typer.Option("--object-org", help="Object to this organisation.")] = None,
    allow_org: Annotated[str | None, typer.Option(
        "--allow-org", help="Withdraw the objection to this organisation, keeping every other choice.")] = None,
    opt_out_secondary: Annotated[bool, typer.Option("--opt-out-secondary", help="National data opt-out.")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every choice.")] = False,
    consent: Annotated[Path | None, typer.Option(
        "--consent", help="A FHIR R4 Consent (JSON; - for standard input) whose provisions replace every choice "
                          "held for the patient, under all their NHS numbers, as PUT /fhir/Consent does.")] = None,
) -> None:
    """Record a patient's choice about sharing; takes effect on the next request (audited)."""
    from sharedcare.governance.access_log import persons_with
    from sharedcare.governance.consent import numbers_of_person, replace_choices, set_choice
    from sharedcare.governance.consent_fhir import choices_from_consent
    from sharedcare.identity.nhs_number import is_valid, normalise

    number = normalise(nhs_number)
    if not is_valid(number):
        raise _fail(f"'{nhs_number}' is not a valid NHS number (modulus 11 check)")
    if consent is not None and (object_all or object_org or allow_org or opt_out_secondary or clear):
        raise _fail("--consent replaces every choice: give it alone")
    if not (object_all or object_org or allow_org or opt_out_secondary or clear or consent):
        raise _fail("give one of --object-all, --object-org ORG, --allow-org ORG, --opt-out-secondary, --clear or "
                    "--consent FILE")
    fw = _framework()
    for option, org in (("--object-org", object_org), ("--allow-org", allow_org)):
        if org and org not in fw.organisations:
            raise _fail(f"{option}: organisation '{org}' is not in the framework")
    with _database().session() as session:
        # The person the number is, and every number that is theirs: the change is made against each (as the
        # patient's own pages make it) and audited about the person, so that the IG officer's search by
        # patient and the patient's "Who has looked" find it. A number two persons' records carry (kept apart
        # for review) is changed alone, about no one; the operator is told.
        person_id, numbers = numbers_of_person(session, number)
        if person_id is None and len(persons_with(session, number)) > 1:
            console.print(f"warning: {number} is on the records of more than one person, kept apart for review "
                              "(`sharedcare mpi review`): the change is held against this number alone, applies "
                              "to each of them, and is audited about neither")
        if consent is None:
            for each in numbers:
                pref = set_choice(session, each, by=OPERATOR, person_id=person_id, object_all=object_all or None,
                                  object_org=object_org, allow_org=allow_org,
                                  opt_out_secondary=opt_out_secondary or None, clear=clear)
                console.print(f"choices for {each}: object_all={pref.object_all} object_orgs={pref.object_orgs} "
                              f"opt_out_secondary={pref.opt_out_secondary}")
            return
        body = _read_json(consent)
        try:
            choices = choices_from_consent(body, number, fw)
        except SharedcareError as refused:
            raise _fail(f"{consent}: {refused}") from refused
        replace_choices(session, numbers, number, choices, by=OPERATOR, person_id=person_id)
        console.print(f"choices replaced for {', '.join(numbers)}: {len(choices.provisions)} provision(s), "
                      f"object_all={choices.object_all} object_orgs={sorted(choices.object_orgs)} "
                      f"opt_out_secondary={choices.opt_out_secondary}")


def _read_json(path: Path) -> Any:
    """A JSON document from a file, or standard input for `-`; a clear error naming the file otherwise."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"{path}: cannot read it ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise _fail(f"{path}: line {exc.lineno}, column {exc.colno}: not JSON ({exc.msg})") from exc


@preferences_app.command("show")
def preferences_show(
    nhs_number: Annotated[str, typer.Argument(help="The patient's NHS number.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the FHIR R4 Consent.")] = False,
) -> None:
    """A patient's choices held against one NHS number, as a table or a FHIR R4 Consent (audited: the
    choices are about the patient)."""
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
    from sharedcare.governance.consent import choices_for, numbers_of_person
    from sharedcare.governance.consent_fhir import UK_TIME, as_provisions, consent_id, consent_id_key, consent_resource
    from sharedcare.identity.nhs_number import is_valid, normalise
    from sharedcare.store.models import Preference

    number = normalise(nhs_number)
    if not is_valid(number):
        raise _fail(f"'{nhs_number}' is not a valid NHS number (modulus 11 check)")
    fw = _framework()
    with _database().session() as session:
        person_id, _ = numbers_of_person(session, number)
        record_audit(session, AuditRecord(AuditAction.PREFERENCE_VIEW, "permit", OPERATOR, purpose="governance",
                                          patient_id=person_id, detail={"nhs_number_suffix": number[-4:]}))
        pref = session.get(Preference, number)
        choices = choices_for(session, [number])
        consent = consent_resource(consent_id(consent_id_key(_settings().secret), number), number, choices,
                                   pref.version if pref else 0, pref.updated_at if pref else None, fw)
    if as_json:
        _print_json(consent)
        return
    table = Table(title=f"Choices held against {number} (version {consent['meta']['versionId']}): "
                        "each row hides what it matches")
    for column in ("from readers at", "data held by", "purposes", "resource types", "categories", "period",
                   "exceptions"):
        table.add_column(column, overflow="fold")
    for p in as_provisions(choices):
        period = " to ".join(t.astimezone(UK_TIME).date().isoformat() if t else "..." for t in (p.start, p.end))
        table.add_row(*(", ".join(sorted(v)) or "any" for v in (p.recipients, p.sources, p.purposes, p.classes,
                                                               p.codes)),
                      period if p.start or p.end else "", str(len(p.provisions)) if p.provisions else "")
    if not table.rows:
        console.print(f"no choices held against {number}: sharing for care as the framework allows")
        return
    Console().print(table)


@audit_app.command("verify")
def audit_verify(
    checkpoints: Annotated[list[Path] | None, typer.Option(
        "--checkpoints", help="A witness's file of signed checkpoints (`audit checkpoint`); repeat it.")] = None,
) -> None:
    """Check the audit hash chain end to end, and that it still passes through every checkpoint a witness
    kept; exit 1 naming the first broken entry or each checkpoint that disagrees."""
    from sharedcare.governance.audit import verify
    from sharedcare.governance.checkpoints import (
        CheckpointError,
        check_against_chain,
        public_key_text,
        read_checkpoints,
        signing_key,
    )

    # a checkpoint is only evidence if no one else can sign one: not with the published demo key. Those signed
    # before a rotation of the audit key (`audit rekey`) are signed by a retired key's
    keyed = _keyed_settings() if checkpoints else None
    keys = [public_key_text(signing_key(secret)) for secret in (keyed.audit_secret, *keyed.audit_keys_retired)
            ] if keyed else []
    kept = []
    for path in checkpoints or []:
        try:
            kept += read_checkpoints(path.read_text(encoding="utf-8").splitlines(), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(f"{path}: cannot read the checkpoints ({exc})") from exc
        except SharedcareError as exc:
            raise _fail(str(exc)) from exc
    problems: list[str] = []
    with _database(writes=False).session() as session:
        result = verify(session)
        unchecked = [words for first, _, words in result.unchecked if first != result.broken_seq]
        if not result.ok and result.unchecked and result.broken_seq == result.unchecked[0][0]:
            console.print(f"[red]audit chain not checked[/red]: {result.problem}")
        elif not result.ok:
            console.print(f"[red]audit chain broken at entry {result.broken_seq}[/red]: {result.problem} "
                          f"({result.checked} entries verified before it)")
        for words in unchecked:
            console.print(f"[red]audit chain not checked[/red]: {words}")
        try:
            problems = [f"[red]checkpoint at entry {found.checkpoint.seq}[/red] ({found.checkpoint.at}): "
                        f"{found.problem}" for found in check_against_chain(session, kept, keys)]
        except CheckpointError as exc:  # the tree cannot be built over a log with an entry missing
            problems = [f"[red]checkpoints not checked[/red]: {exc}"]
    for problem in problems:
        console.print(problem)
    if not result.ok or problems:
        raise typer.Exit(1)
    console.print(f"audit chain whole: {result.checked} {'entry' if result.checked == 1 else 'entries'} verified"
                  + (f", through {len(kept)} checkpoints" if kept else ""))
    rekeyed = [epoch for epoch in result.epochs if epoch.marker is not None]
    if rekeyed:
        console.print(f"the chain's key was rotated {len(rekeyed)} {'time' if len(rekeyed) == 1 else 'times'} "
                      f"(at {', '.join(f'entry {epoch.marker}' for epoch in rekeyed)}): each epoch checked under "
                      "its key")
    if result.unkeyed_through > 1:  # a store upgraded with entries in it (migration 0024)
        console.print(f"entries 1-{result.unkeyed_through} were written before the chain had a key: a plain hash fixes "
                      "them, and only the checkpoints witnesses took of them show they were not rewritten since")
    if not kept:
        console.print("[yellow]no checkpoints given[/yellow]: the chain alone cannot show entries cut from its end "
                      "(with the head set back to match); give a witness's file with --checkpoints")


@audit_app.command("rekey")
def audit_rekey(
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log): a scheduled rotation, a suspected "
                                             "leak...")] = "scheduled rotation of the audit key",
) -> None:
    """Rotate the audit chain's key: append a marker, written under the current key (SHAREDCARE_AUDIT_KEY), that
    names the new one, read from SHAREDCARE_AUDIT_KEY_NEW (never from the command line); every entry after it is
    keyed by the new key, and the checkpoint key is handed over to the new one's. Then restart every process with
    SHAREDCARE_AUDIT_KEY set to the new key and SHAREDCARE_AUDIT_KEYS_RETIRED holding the old: until then each
    refuses to write (a running service's next append fails). Exit 2 when a key is missing or unsafe."""
    import os

    from sharedcare.config import chain_key_of, require_safe_key
    from sharedcare.governance.audit import AuditKeyProblem, key_fingerprint, rekey
    from sharedcare.governance.checkpoints import handover_signature, public_key_text, signing_key

    settings = _keyed_settings()
    new_secret = os.environ.get("SHAREDCARE_AUDIT_KEY_NEW") or ""
    try:
        if not new_secret:
            raise ConfigError("SHAREDCARE_AUDIT_KEY_NEW is unset: set it to the new audit key (for example `openssl "
                              "rand -hex 32`); it is read from the environment alone, never from the command line")
        require_safe_key("SHAREDCARE_AUDIT_KEY_NEW", new_secret)
        if "," in new_secret:  # it could not be given in SHAREDCARE_AUDIT_KEYS_RETIRED when it is retired in turn
            raise ConfigError("SHAREDCARE_AUDIT_KEY_NEW holds a comma, which SHAREDCARE_AUDIT_KEYS_RETIRED separates "
                              "keys by: choose a key without one (for example `openssl rand -hex 32`)")
        if new_secret in (settings.audit_secret, settings.secret, *settings.audit_keys_retired):
            raise ConfigError("SHAREDCARE_AUDIT_KEY_NEW is the current audit key, SHAREDCARE_SECRET or a retired "
                              "audit key: a rotation needs a key of its own")
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc
    database = _database()  # refused unless this process's key is the log's current one
    old_signer, new_public = signing_key(settings.audit_secret), public_key_text(signing_key(new_secret))
    new_key = chain_key_of(new_secret)
    try:
        with database.session() as session:
            mark = rekey(session, new_key, reason, lambda seq: {
                "next-checkpoint-key": new_public, "handover": handover_signature(old_signer, seq, new_public)})
    except AuditKeyProblem as exc:
        raise _fail(str(exc)) from exc
    old_print, new_print = key_fingerprint(settings.audit_chain_key)[:16], key_fingerprint(new_key)[:16]
    console.print(f"the audit log is rekeyed: entry {mark} names the new key (fingerprint {new_print}; the retired "
                  f"one's {old_print}); every entry after it is keyed by the new key")
    console.print("now restart every process (serve, mllp, cron jobs, the forwarder) with SHAREDCARE_AUDIT_KEY set to "
                  "the new key and the old one added to SHAREDCARE_AUDIT_KEYS_RETIRED (comma separated): until then "
                  "each refuses to write to the log")
    console.print(f"checkpoints are signed from now on by {new_public}: witnesses follow the handover "
                  "(`/audit/handovers`); after a leak, give them the new key out of band")


@audit_app.command("checkpoint")
def audit_checkpoint(
    public_key: Annotated[bool, typer.Option("--public-key", help="Print the key witnesses check with.")] = False,
) -> None:
    """Print a signed checkpoint of the audit chain's head (one JSON line) for a witness to keep where this
    service cannot write; `audit verify --checkpoints` checks the chain against what witnesses kept."""
    from sharedcare.governance.checkpoints import make_checkpoint, public_key_text, signing_key

    key = signing_key(_keyed_settings().audit_secret)
    if public_key:
        print(public_key_text(key))
        return
    with _database(writes=False).session() as session:
        print(make_checkpoint(session, key).to_json())


@audit_app.command("witness")
def audit_witness(
    url: Annotated[str, typer.Argument(help="The service's base URL (it serves /audit/checkpoint).")],
    store: Annotated[Path, typer.Option(help="The witness's own file of checkpoints (JSON lines), appended to.")],
    public_key: Annotated[str, typer.Option(
        help="The deployment's checkpoint key (`audit checkpoint --public-key`), obtained from it out of band.")],
) -> None:
    """Run by a witness outside the service (say every 5 minutes): fetch its signed checkpoint, check with a
    consistency proof that the log extends the last checkpoint kept in --store, and keep it; exit 1 naming
    what is wrong (a forged checkpoint, a log cut back or rewritten, a split view, or an entry in it that the
    service will not sign over: HTTP 409, an entry it did not write) and keep nothing, 2 if
    the service cannot be reached or answers with an error, 3 if it refuses for now (HTTP 429: too many
    proofs asked of it) once more after waiting as long as it said (Retry-After, at most 5 minutes)."""
    import json
    import time
    import urllib.error
    import urllib.parse
    import urllib.request
    from dataclasses import asdict

    from sharedcare.governance.checkpoints import followed_key, read_checkpoints, witness_problems

    def said(exc: urllib.error.HTTPError) -> str:
        """The service's own words for its error (its OperationOutcome's diagnostics), if it gave any."""
        try:
            return f": {json.load(exc)['issue'][0]['diagnostics']}"
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return ""

    def fetch(path: str, waited: bool = False) -> Any:
        address = url.rstrip("/") + path
        try:
            with urllib.request.urlopen(address, timeout=30) as response:  # noqa: S310 (an operator's URL)
                found = json.load(response)
                return found
        except urllib.error.HTTPError as exc:
            if exc.code != 429:
                raise _fail(f"{address}: {exc}{said(exc)}", code=1 if exc.code == 409 else 2) from exc
            if waited:
                raise _fail(f"{address}: refused again after waiting ({exc}): the service is answering too many "
                            "proofs; nothing kept, run again later", code=3) from exc
            after = exc.headers.get("Retry-After", "")
            wait = min(int(after), 300) if after.isdigit() else 60
            console.print(f"{address}: refused for now ({exc}); asking again in {wait} s, as the service said",
                          soft_wrap=True)
            time.sleep(wait)
            return fetch(path, waited=True)
        except (OSError, ValueError) as exc:
            raise _fail(f"{address}: {exc}") from exc

    try:
        lines = store.read_text(encoding="utf-8").splitlines() if store.exists() else []
        kept_all = read_checkpoints(lines, str(store))
        (new,) = read_checkpoints([json.dumps(fetch("/audit/checkpoint"))], f"{url} /audit/checkpoint")
    except (OSError, UnicodeDecodeError, SharedcareError) as exc:
        raise _fail(str(exc)) from exc
    kept = kept_all[-1] if kept_all else None
    proof = None
    if kept is not None and 0 < kept.seq < new.seq:
        proof = fetch("/audit/consistency?" + urllib.parse.urlencode({"first": kept.seq, "second": new.seq}))
    trusted = public_key
    if new.key != public_key:  # the audit key was rotated since: follow the old checkpoint key's handovers
        found = fetch("/audit/handovers")
        trusted = followed_key(public_key, found if isinstance(found, list) else [])
        if trusted != public_key and new.key == trusted:
            console.print(f"the checkpoint key was handed over (by `audit rekey`) to {trusted}: following it")
    problems = witness_problems(kept, new, proof, trusted)
    for problem in problems:
        console.print(f"[red]checkpoint at entry {new.seq}[/red] ({new.at}): {problem}")
    if problems:
        raise typer.Exit(1)
    if kept is not None and (kept.seq, kept.root, kept.hash) == (new.seq, new.root, new.hash):
        console.print(f"the log is still at entry {new.seq}: nothing new to keep")
        return
    with store.open("a", encoding="utf-8") as out:
        out.write(json.dumps(asdict(new), sort_keys=True) + "\n")
    console.print(f"kept the checkpoint at entry {new.seq}"
                  + (f": the log extends the last kept, at entry {kept.seq}" if kept else ": the first kept"))


@audit_app.command("forward")
def audit_forward(
    repository: Annotated[str, typer.Argument(help="The Audit Record Repository's FHIR base URL (it takes "
                                                   "transaction Bundles of AuditEvents).")],
    state: Annotated[Path, typer.Option(help="File keeping the last entry the repository accepted.")],
    follow: Annotated[bool, typer.Option("--follow", help="Keep going: send new entries as they are written.")] = False,
    every: Annotated[float, typer.Option(min=0.1, help="With --follow, seconds between looks for new entries.")] = 5.0,
    batch: Annotated[int, typer.Option(min=1, max=5000, help="Entries per transaction Bundle.")] = 500,
) -> None:
    """Copy the audit log, in chain order, to a separate Audit Record Repository (IHE RESTful ATNA) and
    remember how far it got. Exit 1 if an entry does not follow the chain or what was copied has since
    changed (nothing from it on is sent), 2 if the repository refuses or cannot be reached (run again:
    nothing is sent twice, nothing skipped). SHAREDCARE_AUDIT_REPOSITORY_TOKEN is sent as a bearer token."""
    import time

    from sharedcare.governance.audit_forward import ChainBroken, ForwardError, forward, http_sender, read_position

    send = http_sender(repository, _settings().audit_repository_token)
    database = _database(writes=False)
    try:
        started_at = read_position(state).seq
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc

    def once() -> None:
        try:
            forward(database, state, send, batch, on_batch=lambda at: console.print(
                f"the repository holds up to entry {at.seq}"))
        except ChainBroken as exc:
            console.print(f"[red]audit chain broken:[/red] {_literal(exc)}")
            raise typer.Exit(1) from exc

    try:
        while True:
            try:
                once()
            except ForwardError as exc:
                if not follow:
                    raise
                console.print(f"[yellow]{_literal(exc)}[/yellow]: trying again in {every:g} s")  # what was sent is kept
            if not follow:
                break
            time.sleep(every)
    except SharedcareError as exc:  # the repository refused or is down, or the state file is unreadable
        raise _fail(str(exc)) from exc
    except KeyboardInterrupt:
        pass
    # counted from the position kept, so a stop in the middle of a batch still tells what the repository holds
    console.print(f"forwarded {read_position(state).seq - started_at} audit entries")


@audit_app.command("review")
def audit_review(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    every: Annotated[bool, typer.Option("--all", help="Include items already concluded.")] = False,
) -> None:
    """The IG review queue: break glass, implied consent and unusual access, oldest first."""
    from dataclasses import asdict

    from sharedcare.clock import utcnow
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
    from sharedcare.governance.review import queue

    fw = _framework()
    with _database().session() as session:
        items = queue(session, fw, utcnow(), include_closed=every)
        # the queue names patients and holds clinicians' reasons: showing it is audited, naming the items shown
        record_audit(session, AuditRecord(AuditAction.REVIEW_VIEW, "permit", OPERATOR, purpose="governance", detail={
            "items": str(len(items)), "review_items": " ".join(str(i.id) for i in items),
            **({"closed_included": "true"} if every else {})}))
    rows = [asdict(i) for i in items]
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"IG review queue ({sum(i.overdue for i in items)} overdue)")
    for column in ("id", "kind", "user", "patient", "reason", "created", "due", "status"):
        table.add_column(column)
    for i in items:
        people = " ".join((i.patient_id, *i.also_now))  # also_now: others holding the opened record now
        table.add_row(str(i.id), i.kind, _literal(i.username), people, _literal(i.reason),
                      f"{i.created_at:%Y-%m-%d %H:%M}",
                      f"{i.due_at:%Y-%m-%d %H:%M}" + (" OVERDUE" if i.overdue else "")
                      + (f", escalated {i.escalated_at:%Y-%m-%d %H:%M}" if i.escalated_at else ""), i.status)
    Console().print(table)


@audit_app.command("runs")
def audit_runs(
    unfinished: Annotated[bool, typer.Option("--unfinished", help="Only runs that started and never finished.")]
    = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Ingest and replay runs, newest first, from their audit entries: who ran each, on what, whose data, and
    how it ended. A run that started and never finished was killed part-way (or is still running): what it
    committed before is stored, and only its start names it."""
    from sharedcare.governance.access_log import details, ingest_runs

    with _database().session() as session:
        rows = [_run_row(run, details(run.start), details(run.end) if run.end else {})
                for run in ingest_runs(session) if not (unfinished and run.end)]
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"Ingest runs{' not finished' if unfinished else ''}: {len(rows)} "
                        f"({sum(not row['finished'] for row in rows)} started and never finished)")
    for column in ("run", "started", "operator", "organisations", "given", "ended", "accepted", "verified"):
        table.add_column(column, overflow="fold")
    for row in rows:  # never finished in words too, as `feeds` says STALE: a log or a colour-blind reader
        ended = ("NOT FINISHED (killed, or still running)" if not row["finished"] else
                 f"{_utc(row['finished'])} " + (f"stopped ({row['stopped']})" if row["stopped"] else "finished")
                 + (f" after {_literal(row['stopped_after'])}" if row["stopped_after"] else ""))
        table.add_row(row["run"], _utc(row["started"]), _literal(row["operator_account"]), row["organisations"],
                      _literal(row["paths"] or f"quarantine #{row['replayed']}"), ended, row["accepted"],
                      row["verified"], style="yellow" if not row["finished"] else None)
    Console().print(table)


def _utc(recorded: str) -> str:
    return f"{recorded[:19].replace('T', ' ')} UTC"


def _run_row(run: IngestRun, started: dict[str, str], ended: dict[str, str]) -> dict[str, str]:
    """One run of `audit runs`: what its start names, and how it ended (its end's counts), as text."""
    given = ("operator_account", "organisations", "source", "paths", "files", "replayed")
    counts = ("stopped", "stopped_after", "messages", "accepted", "unchanged", "quarantined")
    return {"run": run.run, "started": run.start.recorded_at.isoformat(), "start_seq": str(run.start.seq),
            **{key: started.get(key, "") for key in given},
            "finished": run.end.recorded_at.isoformat() if run.end else "",
            "end_seq": str(run.end.seq) if run.end else "", "outcome": run.end.outcome if run.end else "unfinished",
            **{key: ended.get(key, "") for key in counts}, "verified": "no" if run.unverified else "yes"}


@audit_app.command("escalate")
def audit_escalate(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Escalate review items still open past their due time (run it from a timer, every 15 minutes say):
    each is escalated once, as a high-priority audit event, and marked in the queue. Exit 3 when any
    item was escalated by this run, so the timer's job can raise the alarm; 0 when none."""
    from dataclasses import asdict

    from sharedcare.clock import utcnow
    from sharedcare.governance.review import escalate

    fw = _framework()
    with _database().session() as session:
        items = escalate(session, fw, utcnow())
    if as_json:
        _print_json([asdict(i) for i in items])
    else:
        table = Table(title=f"Escalated now: {len(items)} review items overdue (due within "
                            f"{fw.review.due_hours:g} hours)")
        for column in ("id", "kind", "user", "patient", "created", "due"):
            table.add_column(column)
        for i in items:
            table.add_row(str(i.id), i.kind, i.username, i.patient_id, f"{i.created_at:%Y-%m-%d %H:%M}",
                          f"{i.due_at:%Y-%m-%d %H:%M}")
        Console().print(table)
    if items:
        raise typer.Exit(3)


@audit_app.command("outcome")
def audit_outcome(
    item_id: Annotated[int, typer.Argument(help="Review item id (see `sharedcare audit review`).")],
    outcome: Annotated[str, typer.Option(help="appropriate or investigate.")],
    by: Annotated[str, typer.Option(help="The IG officer recording it: a framework user whose role may work "
                                         "the review queue, not the user the item is about.")],
    note: Annotated[str, typer.Option(help="What was found.")] = "",
) -> None:
    """Record the IG officer's conclusion on a review item (audited under --by, naming the operating-system
    account that ran this command, as `token` does: the name typed is not proof of who typed it)."""
    from sharedcare.governance.gateway import actor_for
    from sharedcare.governance.review import record_outcome

    if outcome not in {"appropriate", "investigate"}:
        raise _fail(f"--outcome must be appropriate or investigate, not '{outcome}'")
    role = actor_for(_framework(), by).role  # the portal's IG pages require the same permission
    if role is None or "governance:review:work" not in role.permissions:
        raise _fail(f"--by {by}: not a framework user whose role may work the review queue "
                    "(governance:review:work); name the IG officer recording the outcome")
    try:
        with _database().session() as session:
            item = record_outcome(session, item_id, outcome, by=by, note=note,  # type: ignore[arg-type]
                                  operator=f"{OPERATOR}:{_account()}")
            console.print(f"review item #{item.id}: {item.status} ({_literal(item.outcome)})")
    except SharedcareError as exc:
        raise _fail(str(exc)) from exc


@audit_app.command("search")
def audit_search(
    patient: Annotated[str | None, typer.Option(help="Patient (person) id.")] = None,
    user: Annotated[str | None, typer.Option(help="Username.")] = None,
    org: Annotated[str | None, typer.Option(help="ODS code of the user's organisation.")] = None,
    since: Annotated[str | None, typer.Option(help="From this date (YYYY-MM-DD, UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this date (YYYY-MM-DD, UTC).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 200,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search the audit log by patient, user, organisation and date, newest first (audited, about the patient
    if one is given, whose "who looked" then lists it: the entries name patients and carry clinicians'
    reasons). A patient id a merge has since emptied is the person it is now: their entries are found too,
    and the search is audited about them. An entry that does not verify under the chain's key is shown from
    its columns alone, marked as could not be verified, as the IG portal shows it."""
    from datetime import UTC, datetime

    from sharedcare.governance.access_log import search_page
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit

    def day(value: str | None, name: str) -> datetime | None:
        try:
            return datetime.fromisoformat(value).replace(tzinfo=UTC) if value else None
        except ValueError as exc:
            raise _fail(f"--{name} must be a date like 2026-11-22, not '{value}'") from exc

    with _database().session() as session:
        start, end = day(since, "since"), day(until, "until")
        criteria = {"patient_id": patient, "username": user, "organisation": org, "since": start, "until": end}
        found = search_page(session, limit, **criteria)
        for person in found.now or [None]:  # an emptied id: about the person it is now, keeping the id searched
            record_audit(session, AuditRecord(AuditAction.AUDIT_SEARCH, "permit", OPERATOR, purpose="governance",
                                              patient_id=person, detail=found.audit_detail(criteria)))
        rows = [_audit_search_row(e, e.seq in found.unverified) for e in found.entries]
    now = [person for person in found.now if person != patient]
    if now:
        console.print(f"person {_literal(patient)} holds no records now: a merge or relink moved them to "
                      f"{_literal(', '.join(now))}, whose entries are shown too")
    if as_json:
        _print_json(rows)
        return
    more = f"; more match than --limit {limit}, newest shown" if found.more else ""
    table = Table(title=f"Audit: {len(rows)} entries{more}")
    columns = ("seq", "recorded", "action", "outcome", "user", "organisation", "patient_id", "basis", "reason",
               "verified")
    for column in columns:
        table.add_column(column)
    for r in rows:
        shown = r | {"reason": r["warning"]} if "warning" in r else r  # the mark where a reason would be
        table.add_row(*(_literal(shown.get(c) or "") for c in columns), style="red" if "warning" in r else None)
    out = Console()
    out.print(table)
    if found.unverified:
        out.print(f"[red]{len(found.unverified)} of these entries could not be verified[/red] (entries "
                  f"{_spans(sorted(found.unverified))}): their hash is not the service's, so they were written or "
                  "changed in the database by someone without the audit log's key, and what they say (who, what, "
                  "which patient) may not have happened. Run `sharedcare audit verify` and treat them as a "
                  "security incident.")


# Beside an entry that does not verify: in `audit search`'s table (where its reason would be) and JSON (`warning`).
UNVERIFIED_ROW = ("COULD NOT BE VERIFIED: not written by the service; who, what and which patient this entry "
                  "names may not be true")


def _audit_search_row(entry: Any, unverified: bool) -> dict[str, Any]:
    """One entry as `audit search` shows it: its columns, then its event's decision details (basis, reason...),
    except for an entry that does not verify, which is told from its columns alone and marked (its event may
    hold anything, and is not shown as fact, as the IG portal and `audit export` tell it). A detail named as a
    column (a search's own criteria: `patient_id`, `organisation`) is shown as `detail <name>`: it never
    stands in for the column."""
    from sharedcare.governance.access_log import details

    row: dict[str, Any] = {"seq": entry.seq, "recorded": entry.recorded_at.isoformat(), "action": entry.action,
                           "outcome": entry.outcome, "user": entry.username, "organisation": entry.organisation,
                           "patient_id": entry.patient_id}
    if unverified:
        return row | {"verified": "no", "warning": UNVERIFIED_ROW}
    return row | {(f"detail {name}" if name in row or name == "verified" else name): value
                  for name, value in details(entry).items()} | {"verified": "yes"}


def _spans(seqs: list[int]) -> str:
    """Entry numbers, in order, as runs ("3-7, 9"): rows forged at the end come in hundreds."""
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


@audit_app.command("export")
def audit_export(out: Annotated[Path | None, typer.Option(help="File to write (default stdout).")] = None) -> None:
    """The whole audit log as FHIR AuditEvent NDJSON, in chain order (a new file owner-only: it names patients).
    Each event carries its place in the chain (seq, hash, previous) and whether it verified under the chain's key;
    one that did not is told from its columns alone. The export is itself audited first, with the span of entries
    it holds: the log leaving in bulk leaves a trace (TRUST AU1)."""
    from sqlalchemy import func, select

    from sharedcare.governance.access_log import export_ndjson
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
    from sharedcare.private_files import private_opener
    from sharedcare.store.models import AuditEntry, AuditHead

    with _database().session() as session:
        head = session.get(AuditHead, 1)
        through = head.seq if head else 0
        count = session.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.seq <= through)) or 0
        record_audit(session, AuditRecord(AuditAction.AUDIT_EXPORT, "permit", OPERATOR, purpose="governance", detail={
            "entries": str(count), "first_seq": "1" if count else "", "last_seq": str(through) if count else "",
            "to": str(out) if out else "standard output", "account": _account()}))
        session.commit()  # audited before anything is written out
        handle = open(out, "w", encoding="utf-8", opener=private_opener) if out else sys.stdout  # noqa: SIM115
        unverified: list[int] = []
        for line in export_ndjson(session, through, unverified):
            handle.write(line + "\n")
        if out:
            handle.close()
    console.print(f"exported {count} audit events (entries 1-{through})" if count else "exported 0 audit events")
    if unverified:
        console.print(f"[red]{len(unverified)} of them could not be verified[/red] (entries {_spans(unverified)}): "
                      "each is marked verified false and told from its columns alone; run `sharedcare audit verify`")


@framework_app.command("explain")
def framework_explain(
    role: Annotated[str | None, typer.Option(help="One role (see the framework's roles).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Who can see what, and why, in plain words."""
    from dataclasses import asdict

    from sharedcare.clock import utcnow
    from sharedcare.governance.explain import (
        KIND_LABELS,
        agreement_in_words,
        in_force_in_words,
        other_roles_in_words,
        role_rows,
        roles_seeing_nothing,
        rules_in_words,
    )

    fw = _framework()
    if role and role not in fw.roles:
        raise _fail(f"no role '{role}'; roles are: {', '.join(fw.roles)}")
    today = utcnow().date()  # as the decision point asks `in_force`
    rows, others, nothing = role_rows(fw, role), other_roles_in_words(fw, role), roles_seeing_nothing(fw, today, role)
    partners = [{"code": o.code, "name": o.name, "kind": KIND_LABELS.get(o.kind, o.kind),
                 "agreement": o.agreement.status, "signed": o.agreement.signed, "starts": o.agreement.starts,
                 "ends": o.agreement.ends, "in_force": o.agreement.in_force(today),
                 "signatories": o.agreement.signatories}
                for o in fw.organisations.values()]
    if as_json:
        _print_json({"framework": fw.name, "version": fw.version, "partners": partners, "rules": rules_in_words(fw),
                     "roles": [asdict(r) for r in rows], "other_roles": others, "currently_see_nothing": nothing})
        return
    out = Console()
    out.print(f"[bold]{fw.name}[/bold] (framework {fw.version})")
    table = Table(title="Partners and their agreements, as this file records them")
    for column in ("organisation", "kind", "agreement", "in force today", "signatories"):
        table.add_column(column)
    for o in fw.organisations.values():
        table.add_row(_literal(f"{o.code} {o.name}"), _literal(KIND_LABELS.get(o.kind, o.kind)),
                      _literal(agreement_in_words(o.agreement)), in_force_in_words(o.agreement, today),
                      _literal("; ".join(o.agreement.signatories) or "none"))
    out.print(table)
    for line in rules_in_words(fw):
        out.print(f"- {line}")
    for name in dict.fromkeys(r.role for r in rows):
        # a role whose organisations have no agreement in force is told so before the tiers it does not have today
        title = f"{_literal(fw.roles[name].label)}: what they can see"
        table = Table(title=title + (f"\n{_literal(nothing[name])}" if name in nothing else ""), show_lines=False)
        table.add_column("information")
        table.add_column("what they see")
        for r in rows:
            if r.role == name:
                table.add_row(r.category_label, r.sees)
        out.print(table)
    for line in others:
        out.print(f"- {line}")
    for name, line in nothing.items():  # said under a table of what the role sees; here, of the roles without one
        if name not in {r.role for r in rows}:
            out.print(f"- {_literal(line)}")


@framework_app.command("check")
def framework_check() -> None:
    """Validate the framework file and every CSV mapping (SHAREDCARE_MAPPINGS); every problem is named with its
    file, line and key."""
    fw = _framework()
    console.print(f"{fw.name} {fw.version}: {len(fw.organisations)} organisations, {len(fw.roles)} roles, "
                  f"{len(fw.users)} users: valid")
    if _mapping_problems(warn=False):
        raise typer.Exit(2)


@framework_app.command("reclassify")
def framework_reclassify() -> None:
    """Store the current data category of every resource classified under an older framework or rules.

    Reads are correct without it (a stale category is never trusted); run it after changing the
    framework's sensitive codes or an organisation's kind so that reads are fast again."""
    from sharedcare.governance.classify import reclassify

    fw = _framework()
    with _database().session() as session:
        count = reclassify(session, fw)
    console.print(f"reclassified {count} resources under framework {fw.version}")


mpi_app = typer.Typer(help="The master patient index.", no_args_is_help=True)
app.add_typer(mpi_app, name="mpi")


@mpi_app.command("export")
def mpi_export() -> None:
    """CSV of every source patient record and the person it is linked to (a cell that a spreadsheet would read as
    a formula starts with a quote)."""
    from sharedcare.csv_out import CsvWriter
    from sharedcare.store.models import PatientRecord

    writer = CsvWriter(sys.stdout, lineterminator="\n")  # a source id is the feed's: not a formula
    writer.writerow(["source_org", "source_id", "person_id", "match_probability", "status"])
    with _database().session() as session:
        for r in session.scalars(select(PatientRecord).order_by(PatientRecord.source_org, PatientRecord.source_id)):
            writer.writerow([r.source_org, r.source_id, r.person_id, f"{r.match_probability:.4f}", r.link_status])


@mpi_app.command("relink")
def mpi_relink(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    model_out: Annotated[Path, typer.Option(help="Where to save the trained model (Splink JSON).")] = Path(
        "var/mpi/model.json"),
    writers_stopped: Annotated[bool, typer.Option(
        "--writers-stopped", help="SQLite: ingest and the portal are stopped, so relink a store of any size (its "
                                  "other writers would wait for the whole relink).")] = False,
) -> None:
    """Re-match every source patient record with the probabilistic model; report what changed (audited). On SQLite
    a store of more than 20,000 records is refused unless --writers-stopped (every writer waits for a relink)."""
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
    from sharedcare.identity.mpi import RelinkRefused, relink

    with _database().session() as session:
        try:
            report, model = relink(session, by=OPERATOR, writers_stopped=writers_stopped)
        except RelinkRefused as exc:
            raise _fail(str(exc)) from exc
        record_audit(session, AuditRecord(AuditAction.MPI_RELINK, "permit", username=OPERATOR, purpose="governance",
                                          detail={k: str(v) for k, v in report.to_json().items()}))
    model_out.parent.mkdir(parents=True, exist_ok=True)
    model_out.write_text(json.dumps(model, indent=2, default=str))
    if as_json:
        _print_json(report.to_json())
        return
    Console().print(_figures_table("MPI relink", report.to_json()))
    console.print(f"model saved to {model_out}")


@mpi_app.command("reprepare")
def mpi_reprepare(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Prepare every stored record's values for matching as this release does, and match again each record they
    change (run once after upgrading from a release before 2026-12-07; a migration cannot: it needs this code).
    Records stored before keep a name's old blocking key and an NHS number typed in full-width digits, and a Greek
    or Cyrillic name's record stays held as too little to match, until their source sends them again."""
    from sqlalchemy import func

    from sharedcare.identity.mpi import reprepare
    from sharedcare.store.models import PatientRecord

    db = _database()
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(PatientRecord)) or 0
    with _progress() as progress:
        task = progress.add_task("records", total=total)
        report = reprepare(db, lambda n: progress.advance(task, n))
    if as_json:
        _print_json(report.to_json())
        return
    Console().print(_figures_table("MPI reprepare", report.to_json()))


@mpi_app.command("evaluate")
def mpi_evaluate(
    truth: Annotated[Path, typer.Option(help="ground_truth.csv: source_org,source_id,person_key")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Pairwise precision, recall and F1 against ground truth, false merges, missed links, worst errors."""
    from sharedcare.identity.evaluate import evaluate
    from sharedcare.store.models import PatientRecord

    if not truth.is_file():
        raise _fail(f"no such file: {truth}")
    with truth.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"source_org", "source_id", "person_key"} - set(reader.fieldnames or [])
        if missing:
            raise _fail(f"{truth}: header lacks {', '.join(sorted(missing))}")
        known = {(r["source_org"], r["source_id"]): r["person_key"] for r in reader}
    with _database().session() as session:
        rows = session.execute(select(PatientRecord.source_org, PatientRecord.source_id, PatientRecord.person_id,
                                      PatientRecord.link_method)).all()
    predicted = {(org, sid): person for org, sid, person, _ in rows}
    result = evaluate(predicted, known)
    # Records with too little to say who they are (no name, no date of birth) are held and never matched,
    # as the identity rules require, so their pairs can only be missed: the figure without them says how
    # well the index links what it may link.
    held = {(org, sid) for org, sid, _, method in rows if method == "insufficient-data"}
    matchable = evaluate({key: person for key, person in predicted.items() if key not in held},
                         {key: person for key, person in known.items() if key not in held})
    if as_json:
        _print_json({**result.to_json(), "held_too_little": len(held & known.keys()),
                     "recall_without_held": matchable.recall, "f1_without_held": matchable.f1})
        return
    out = Console()
    table = Table(title=f"MPI against {truth.name} ({result.records} source records)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, value in (("precision", f"{result.precision:.5f}"), ("recall", f"{result.recall:.5f}"),
                         ("F1", f"{result.f1:.5f}"), ("falsely merged persons", str(result.falsely_merged_persons)),
                         ("missed links (pairs)", str(result.missed_link_pairs)),
                         ("records not in the truth", str(result.not_in_truth)),
                         ("records held: too little to match on", str(len(held & known.keys()))),
                         ("recall without them", f"{matchable.recall:.5f}"),
                         ("F1 without them", f"{matchable.f1:.5f}")):
        table.add_row(label, value)
    out.print(table)
    worst = Table(title="Worst errors")
    for column in ("kind", "who", "records"):
        worst.add_column(column)
    for merge in result.worst_merges:
        worst.add_row("false merge", ", ".join(merge["true_people"]), ", ".join(merge["records"]))
    for split in result.worst_splits:
        worst.add_row("missed link", split["person_key"], ", ".join(split["records"]))
    out.print(worst)


@app.command()
def mllp(host: str = "127.0.0.1", port: int = 2575, tls_cert: TlsCert = None, tls_key: TlsKey = None,
         tls_client_ca: TlsClientCa = None, client_certs: ClientCerts = None, tls_client_crl: TlsClientCrl = None,
         idle_timeout: Annotated[int | None, typer.Option(
             min=1, help="Seconds a connection may be idle between messages (SHAREDCARE_MLLP_IDLE_SECONDS, "
                         "300).")] = None,
         frame_timeout: Annotated[int | None, typer.Option(
             min=1, help="Seconds from a frame's start to its end (SHAREDCARE_MLLP_FRAME_SECONDS, 60).")] = None,
         max_connections: Annotated[int | None, typer.Option(
             min=1, help="Connections open at once (SHAREDCARE_MLLP_MAX_CONNECTIONS, 64).")] = None,
         max_per_address: Annotated[int | None, typer.Option(
             min=1, help="Connections open at once from one address or IPv6 /64 "
                         "(SHAREDCARE_MLLP_MAX_PER_ADDRESS, 16).")
         ] = None) -> None:
    """Listen for HL7 v2 over MLLP; store each message and answer it with an ACK (AA, AE or AR)."""
    import asyncio
    from dataclasses import replace

    from sharedcare.ingest.mllp import MllpLimits, MllpServer
    from sharedcare.ingest.pipeline import Pipeline

    _tls_options(tls_cert, tls_key, tls_client_ca, client_certs, tls_client_crl)
    database = _database()
    tls = _start_up_checks("mllp", database, host)
    fw = _framework()
    _note_file_agreements(database, fw)
    _mapping_problems(warn=True)
    listed = sum(len(org.feed_certificates) for org in fw.organisations.values())
    if tls is not None and not listed:
        console.print("[yellow]warning:[/yellow] no organisation in the framework lists a feed certificate "
                      "(organisations.*.feed_certificates): every message will be refused until one does")
    elif tls is not None:
        console.print(f"mllp: {listed} feed certificate(s) bound to organisations in the framework")
    limits = MllpLimits.of(_settings())
    limits = replace(limits, idle_seconds=idle_timeout or limits.idle_seconds,
                     frame_seconds=frame_timeout or limits.frame_seconds,
                     max_connections=max_connections or limits.max_connections,
                     max_per_address=max_per_address or limits.max_per_address)
    server = MllpServer(Pipeline(database, fw), tls, limits)
    console.print(f"listening for HL7 v2 over MLLP on {host}:{port} (idle connections closed after "
                  f"{limits.idle_seconds:g} s, unfinished frames after {limits.frame_seconds:g} s; at most "
                  f"{limits.max_connections} connections, {limits.max_per_address} from one address)")
    async def listen() -> None:
        """Until SIGINT (Ctrl-C) or SIGTERM: each stops it cleanly, the messages in hand answered (a Ctrl-C
        cancelled them, with a traceback, and SIGTERM ended the process where it stood)."""
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await server.serve(host, port, stop=stop)

    with suppress(KeyboardInterrupt):  # a Ctrl-C before the loop listens for it
        asyncio.run(listen())
    console.print(f"stopped after {server.received} messages")


@mpi_app.command("review")
def mpi_review(as_json: Annotated[bool, typer.Option("--json")] = False,
               every: Annotated[bool, typer.Option(
                   "--all", help="Every item with its history: also those a reviewer decided (linked, separate) "
                                 "and those a relink closed (relink-same: one person now; relink-apart: "
                                 "different valid NHS numbers).")] = False) -> None:
    """Pairs the model was unsure about and pairs linked with a discrepancy (the NHS number, surname and
    birth date agree, the given names do not), each with its waterfall (the prior, then every comparison's
    level and match weight) and why either record is held (a re-match's note, a decision reopened), and
    records held for review on their own with the reason; oldest first
    (audited about each person shown, as the data quality page is: their demographics are patients'
    details, and their "who looked" lists it). Open and deferred items
    only, unless --all: a pair a relink has put in one person is closed by it, and reopened if a later
    relink parts them."""
    from sharedcare.governance.audit import AuditAction, AuditRecord, record_audit
    from sharedcare.governance.workspace import persons_shown, review_detail
    from sharedcare.identity.review_list import describe, pending

    with _database().session() as session:
        found = pending(session, every)
        rows: list[dict[str, Any]] = [{"id": p.id, "status": p.status, "probability": p.probability,
                                       "linked": p.linked, "discrepancy": p.discrepancy, "decided_by": p.decided_by,
                                       "decided_at": p.decided_at.isoformat() if p.decided_at else None,
                                       "a": describe(p.a), "b": describe(p.b), "held": p.held,
                                       "evidence": p.evidence} for p in found.pairs]
        held = [{"record": describe(r), "reason": r.link_note or r.link_method} for r in found.held]
        about: list[str | None] = [*persons_shown(found)] or [None]
        for person_id in about:
            record_audit(session, AuditRecord(AuditAction.MPI_REVIEW_VIEW, "permit", OPERATOR, purpose="governance",
                                              patient_id=person_id, detail=review_detail(found)))
    if as_json:
        _print_json(rows + [{"held_for_review": h["record"], "reason": h["reason"]} for h in held] if held else rows)
        return
    out = Console()
    waiting = [r for r in rows if r["status"] in ("open", "deferred")]
    flagged = sum(bool(r["discrepancy"]) for r in waiting)
    title = f"MPI review: {len(waiting) - flagged} uncertain pairs, {flagged} linked with a discrepancy"
    if every:
        title += ", " + ", ".join(f"{n} {status}" for status, n in sorted(Counter(
            r["status"] for r in rows if r["status"] not in ("open", "deferred")).items()))
    table = Table(title=title, show_lines=True)
    for column in ("id", *(["status"] if every else []), "probability", "record a", "record b", "why (match weight)"):
        table.add_column(column)
    for pair, r in zip(found.pairs, rows, strict=True):
        table.add_row(str(r["id"]), *([r["status"]] if every else []), str(r["probability"]), _literal(r["a"]),
                      _literal(r["b"]), "\n".join(_literal(step) for step in pair.steps(history=every)))
    out.print(table)
    if held:
        alone_table = Table(title=f"{len(held)} records held for review on their own")
        alone_table.add_column("record")
        alone_table.add_column("reason")
        for h in held:
            alone_table.add_row(_literal(h["record"]), _literal(h["reason"]))
        out.print(alone_table)


@mpi_app.command("decide")
def mpi_decide(
    review_id: Annotated[int, typer.Argument(help="The review item (see `sharedcare mpi review`).")],
    decision: Annotated[str, typer.Option(help="link, separate or defer.")],
    reason: Annotated[str, typer.Option(help="Why (needed to link, to separate and to change a decision); kept "
                                             "with the item and audited.")] = "",
    change: Annotated[str | None, typer.Option(
        "--change", help="Change a reviewer's decision: the status the item has as you read it (linked or "
                         "separate); refused if it has changed since.")] = None,
    by: Annotated[str, typer.Option(help="Who decided.")] = OPERATOR,
) -> None:
    """Decide an uncertain pair; later relinks respect the decision (audited). A pair a reviewer linked or
    separated is decided again only with --change and a --reason."""
    from sharedcare.identity.links import REVIEWED, LinkError, decide

    if decision not in {"link", "separate", "defer"}:
        raise _fail(f"--decision must be link, separate or defer, not '{decision}'")
    if change is not None and change not in REVIEWED:
        raise _fail(f"--change must be linked or separate (the decision changed), not '{change}'")
    try:
        with _database().session() as session:
            review = decide(session, review_id, decision, by=by, reason=reason,  # type: ignore[arg-type]
                            was=change)
            console.print(f"review #{review.id}: {review.status}")
    except LinkError as exc:
        raise _fail(str(exc)) from exc


@mpi_app.command("merge")
def mpi_merge(
    keep: Annotated[str, typer.Argument(help="Person id that stays.")],
    absorb: Annotated[str, typer.Argument(help="Person id whose records join it.")],
    reason: Annotated[str, typer.Option(help="Why they are one person.")],
    by: Annotated[str, typer.Option(help="Who decided.")] = OPERATOR,
) -> None:
    """Merge two persons (reversible with `mpi unmerge`, audited)."""
    from sharedcare.identity.links import LinkError, merge_persons

    try:
        with _database().session() as session:
            event = merge_persons(session, keep, absorb, by=by, reason=reason)
            console.print(f"merge #{event.id}: {len(event.moves)} source records moved to {keep}")
    except LinkError as exc:
        raise _fail(str(exc)) from exc


@mpi_app.command("unmerge")
def mpi_unmerge(
    event_id: Annotated[int, typer.Argument(help="The merge to undo.")],
    reason: Annotated[str, typer.Option(help="Why they are not one person (kept with each reviewer's link "
                                             "the unmerge marks separate).")],
    by: Annotated[str, typer.Option(help="Who decided.")] = OPERATOR,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Undo a merge exactly: each source record returns to the person it came from, and each record that came
    to the kept person during the merge is matched again; lists where every one went (audited). A reviewer's
    link the unmerge parts is marked separate, by --by for --reason, so a relink does not join it again."""
    from sharedcare.identity.links import LinkError, unmerge
    from sharedcare.store.models import PatientRecord

    try:
        with _database().session() as session:
            done = unmerge(session, event_id, by=by, reason=reason)
            restored = [{"record": f"{r.source_org}/{r.source_id}", "from_person": move.from_person,
                         "to_person": move.to_person} for move in done.event.moves
                        for r in [session.get_one(PatientRecord, move.patient_record_id)]]
            again = [{"record": f"{r.source_org}/{r.source_id}", "from_person": done.kept, "to_person": r.person_id,
                      "status": r.link_status, "note": r.link_note} for r in done.matched_again]
            separated = [item.id for item in done.separated]
            undo_id = done.event.id
    except LinkError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        _print_json({"unmerge": undo_id, "undoes": event_id, "restored": restored, "matched_again": again,
                     "reviews_marked_separate": separated})
        return
    table = Table(title=f"unmerge #{undo_id} of merge #{event_id}: {len(restored)} source records restored, "
                        f"{len(again)} that arrived during the merge matched again", show_lines=True)
    for column in ("record", "from person", "to person", "how"):
        table.add_column(column)
    for row in restored:
        table.add_row(row["record"], row["from_person"], row["to_person"], "restored: the merge moved it")
    for came in again:
        how = f"matched again: {came['status']}" + (f" ({came['note']})" if came["note"] else "")
        table.add_row(came["record"], came["from_person"], came["to_person"], how)
    Console().print(table)
    for item_id in separated:
        console.print(f"review #{item_id}: a reviewer's link this unmerge parts, now marked separate")
