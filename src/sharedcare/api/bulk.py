"""FHIR Bulk Data Access (v2) `$export` for secondary use: kick-off, status, cancel, files.

- Kick-off: `GET /fhir/$export` (everyone), `GET /fhir/Patient/$export` (everyone: every type kept here
  belongs to a patient's compartment), `GET /fhir/Group/{ods}/$export` (the registered population of
  one GP practice). Needs `Prefer: respond-async`; takes `_type`, `_since`, `_outputFormat`
  (application/fhir+ndjson), each at most once (a repeat is a 400 naming it). Answers 202 with
  `Content-Location` naming the status URL.
- Status: `GET /fhir/bulk/{job}`: 202 with `X-Progress` while running, 200 with the manifest when done,
  500 with an OperationOutcome if it failed, 404 saying so once its files expired
  (`SHAREDCARE_EXPORT_RETENTION_DAYS` after it finished), 410 saying so once they were deleted because
  its organisation's agreement was suspended or ended (403 while it still is); `DELETE` cancels (202) and
  deletes the files.
- Files: `GET /fhir/bulk/{job}/{Type}.ndjson` (the manifest says `requiresAccessToken: true`).

Only an actor whose role has a non-identifiable purpose may export; the data is decided, pseudonymised
and audited by `governance.secondary`. Routes see no database session.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from sharedcare.api.deps import ActorDep, FrameworkDep, SettingsDep, get_database, public_base, scoped_types
from sharedcare.api.outcomes import operation_outcome
from sharedcare.export.jobs import EXPIRED, WITHDRAWN, ExportJobs, Minted, TooManyExports, Withdrawn
from sharedcare.fhir.search import SearchError, parse_instant
from sharedcare.fhir.uk_core import RECORD_TYPES
from sharedcare.governance.scopes import patient_level_only
from sharedcare.governance.secondary import ExportScope
from sharedcare.store.database import Database

router = APIRouter(prefix="/fhir")
NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = {NDJSON, "application/ndjson", "ndjson"}
KICK_OFF_PARAMS = {"_type", "_since", "_outputFormat"}


def get_jobs(settings: SettingsDep, fw: FrameworkDep, db: Annotated[Database, Depends(get_database)]) -> ExportJobs:
    return ExportJobs(db, fw, settings)


JobsDep = Annotated[ExportJobs, Depends(get_jobs)]


def _base(request: Request) -> str:
    return public_base(request) + "/fhir"


def _scope(request: Request, kind: str, group: str | None) -> ExportScope:
    """The export asked for, checked: every problem is a 400 OperationOutcome naming the parameter."""
    if "respond-async" not in request.headers.get("prefer", "").lower():
        raise SearchError("$export runs asynchronously: send the header 'Prefer: respond-async'")
    params = request.query_params
    unknown = sorted(set(params) - KICK_OFF_PARAMS)
    if unknown:
        raise SearchError(f"$export does not take {', '.join(unknown)} (it takes {', '.join(sorted(KICK_OFF_PARAMS))})")
    # each is 0..1 in the Bulk Data OperationDefinition (`_type` takes a comma-separated list): a repeat was
    # cut to its last value without a word, and the analyst could take the extract for what they asked
    repeated = sorted(name for name in KICK_OFF_PARAMS if len(params.getlist(name)) > 1)
    if repeated:
        raise SearchError(f"$export takes {', '.join(repeated)} once, not more than once (give several types as one "
                          "comma-separated _type: _type=Condition,Patient)")
    output_format = params.get("_outputFormat")
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise SearchError(f"_outputFormat: only {NDJSON} is produced, not '{output_format}'")
    types = None
    if params.get("_type"):
        types = frozenset(t.strip() for t in params["_type"].split(",") if t.strip())
        wrong = sorted(types - RECORD_TYPES)
        if wrong:
            raise SearchError(f"_type: {', '.join(wrong)} not exported (types: {', '.join(sorted(RECORD_TYPES))})")
    scopes = getattr(request.state, "scopes", "")
    if patient_level_only(scopes):  # it reads its launch patient alone, never a population
        raise SearchError("a token with only patient/ scopes cannot export: $export needs a user/ or system/ scope")
    allowed = scoped_types(scopes)
    if allowed is not None:  # the token's scopes narrow the types, never widen them
        types = (types or RECORD_TYPES) & allowed
        if not types:
            raise SearchError("the access token's scopes allow none of the types asked for")
    try:
        since = parse_instant(params["_since"]) if params.get("_since") else None
    except SearchError as exc:
        raise SearchError(f"_since: {exc.message}") from exc
    return ExportScope(kind, group, types, since)


def _readable(request: Request) -> frozenset[str] | None:
    """The types the token's scopes read of a population (None: any; none for patient/ scopes alone), which
    polling, downloading and cancelling are held to as the kick-off is."""
    scopes = getattr(request.state, "scopes", "")
    return frozenset() if patient_level_only(scopes) else scoped_types(scopes)


def _minted(request: Request) -> Minted:
    """The operator and token id of a `sharedcare token` the caller's token is (`caller` reads them), so that
    the export's audits are marked as made with it."""
    minter, token_id = getattr(request.state, "minted_by", None), getattr(request.state, "token_id", None)
    return (minter, token_id) if minter and token_id else None


def _kick_off(request: Request, actor: ActorDep, jobs: ExportJobs, kind: str, group: str | None = None) -> Response:
    scope = _scope(request, kind, group)
    try:
        job_id = jobs.start(actor, scope, str(request.url), request_id=request.state.request_id,
                            source_address=request.client.host if request.client else None,
                            minted=_minted(request))
    except TooManyExports as exc:
        response = operation_outcome(429, "throttled", exc.message, request.state.request_id)
        response.headers["Retry-After"] = "60"
        return response
    return Response(status_code=202, headers={"Content-Location": f"{_base(request)}/bulk/{job_id}"})


@router.get("/$export")
def export_system(request: Request, actor: ActorDep, jobs: JobsDep) -> Response:
    return _kick_off(request, actor, jobs, "system")


@router.get("/Patient/$export")
def export_patients(request: Request, actor: ActorDep, jobs: JobsDep) -> Response:
    return _kick_off(request, actor, jobs, "patient")


@router.get("/Group/{group_id}/$export")
def export_group(group_id: str, request: Request, actor: ActorDep, jobs: JobsDep) -> Response:
    return _kick_off(request, actor, jobs, "group", group_id)


@router.get("/bulk/{job_id}")
def export_status(job_id: str, request: Request, actor: ActorDep, jobs: JobsDep) -> Response:
    view = jobs.status(actor, job_id, request.state.request_id, _minted(request), _readable(request))
    if view.status in ("accepted", "running"):
        # tens of percent, no counts: the people in scope less the people in the files would be the exact
        # number who opted out or objected (TRUST SU2)
        tens = 10 * (10 * view.people_done // view.people_total) if view.people_total else 0
        return Response(status_code=202, headers={"X-Progress": f"{tens}% done", "Retry-After": "2"})
    if view.status == "failed":
        return operation_outcome(500, "exception", view.error or "the export failed", request.state.request_id)
    if view.status == EXPIRED:
        return operation_outcome(404, "not-found", f"export {job_id} expired: its files are deleted "
                                 f"{jobs.settings.export_retention_days} days after it finished; start a new one",
                                 request.state.request_id)
    if view.status == WITHDRAWN:
        return operation_outcome(410, "deleted", f"export {job_id}: {view.error}", request.state.request_id)
    base = f"{_base(request)}/bulk/{job_id}"
    return JSONResponse({
        "transactionTime": view.transaction_time,
        "request": view.request_url,
        "requiresAccessToken": True,
        "output": [{"type": o["type"], "url": f"{base}/{o['file']}", "count": o["count"]} for o in view.output],
        "error": [],
        "extension": {"https://sharedcare.example/bulk/pseudonymised": True,
                      "https://sharedcare.example/bulk/summary": view.summary},
    })


@router.delete("/bulk/{job_id}")
def export_cancel(job_id: str, request: Request, actor: ActorDep, jobs: JobsDep) -> Response:
    jobs.cancel(actor, job_id, request.state.request_id, request.client.host if request.client else None,
                _minted(request), _readable(request))
    return Response(status_code=202)


@router.get("/bulk/{job_id}/{file_name}")
def export_file(job_id: str, file_name: str, request: Request, actor: ActorDep, jobs: JobsDep) -> Response:
    try:
        path = jobs.file(actor, job_id, file_name, request.state.request_id,
                         request.client.host if request.client else None, _minted(request), _readable(request))
    except Withdrawn as gone:
        return operation_outcome(410, "deleted", gone.message, request.state.request_id)
    return FileResponse(path, media_type=NDJSON, filename=file_name)
