"""FHIR R4 REST at /fhir: what the foundation serves, all through the governed repository.

Implemented: metadata; the withheld-reason CodeSystem; Patient read (the combined record's Patient);
read of each clinical type; search of each clinical type by `patient`; `Patient/{id}/$everything` (with
`_type` and `_revinclude=Provenance:target`). The CapabilityStatement lists exactly these.

A Bundle of a patient's data says when the reader's view of the record leaves something out, as the
portal does (`withheld_notice`), and so does the combined Patient read (`_labelled`); docs/api.md says
what a client gets and why those shapes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from sharedcare import __version__
from sharedcare.api.deps import (
    FrameworkDep,
    Interaction,
    MemberDep,
    RecordsDep,
    SearchRecordsDep,
    governed_records,
    public_base,
    public_link,
)
from sharedcare.api.history import versioned
from sharedcare.api.outcomes import ERROR_RESPONSES, FHIR_JSON, FHIR_RESOURCE_RESPONSE
from sharedcare.api.smart import smart_security
from sharedcare.clock import utcnow
from sharedcare.fhir.search import (
    REFUSED,
    ClinicalQuery,
    DateFilter,
    SearchError,
    only_these,
    page_cursor_key,
    parse_instant,
    search_params,
    span,
)
from sharedcare.fhir.uk_core import ODS_SYSTEM, RECORD_TYPES
from sharedcare.governance.explain import (
    not_shown,
    patient_not_shown,
    services,
    withheld_labels,
    withheld_reasons,
)
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import (
    GovernedRecords,
    NotFound,
    PatientMatch,
    PatientRead,
    RecordView,
    ServedResource,
)
from sharedcare.identity.nhs_number import NHS_NUMBER_SYSTEM, normalise


class FhirJSONResponse(JSONResponse):
    """FHIR JSON encoded with orjson: a large `$everything` spent more time in the standard library's
    encoder than in everything else. The store only keeps what orjson encodes exactly (64-bit numbers)."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


router = APIRouter(prefix="/fhir", default_response_class=FhirJSONResponse,
                   responses={**FHIR_RESOURCE_RESPONSE, **ERROR_RESPONSES})
T = TypeVar("T")
CLINICAL_TYPES = sorted(RECORD_TYPES - {"Patient"})
PATIENT_SEARCH_PARAMS = {"identifier", "family", "given", "birthdate", "address-postalcode"}
# Why something was left out: the decision's rule ids, as each read's AuditEvent counts them (`withheld:<id>`),
# published as a CodeSystem at CodeSystem/withheld-reason (`withheld_reason_codesystem`).
WITHHELD_REASON_SYSTEM = "https://sharedcare.example/fhir/CodeSystem/withheld-reason"
WITHHELD_REASON_ID = WITHHELD_REASON_SYSTEM.rsplit("/", 1)[1]
REDACTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED",
            "display": "redacted"}


async def _governed(request: Request, interaction: Interaction, work: Callable[[GovernedRecords], T],
                    respond: Callable[[T], Response]) -> Response:
    """`work` on the caller's governed records, then `respond` with what it released, all in one worker
    thread: a sync route with the records as a generator dependency took three thread hops (open, route,
    close), about a tenth of a resource read's server CPU. The response is encoded after the commit, so
    the audit append's write lock (SQLite's one writer, shared by every server process) is not held
    while a large Bundle is written; nothing is sent unless the audit was committed."""
    def in_thread() -> Response:
        with governed_records(request, interaction) as records:
            released = work(records)
        return respond(released)

    return await run_in_threadpool(in_thread)


def fhir_response(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return FhirJSONResponse(body, status_code=status)


def provenance_of(served: ServedResource) -> dict[str, Any]:
    """A FHIR Provenance saying which organisation and system a served resource came from, and when (for a
    service the reader's role may not know of, only that a specialist service did: `UNNAMED_SERVICE`)."""
    target = f"{served.resource_type}/{served.content['id']}"
    named = bool(served.source_org)
    return {
        "resourceType": "Provenance",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"provenance:{target}:{served.received_at.isoformat()}")),
        "target": [{"reference": target}],
        "occurredDateTime": served.recorded_at.isoformat(),
        "recorded": served.received_at.isoformat(),
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                 "code": "author"}]},
            "who": ({"identifier": {"system": ODS_SYSTEM, "value": served.source_org}, "display": served.source_name}
                    if named else {"display": served.source_name}),
        }],
        **({"entity": [{"role": "source", "what": {"display": f"{served.source_org}#{served.source_system}"}}]}
           if named else {}),
    }


def withheld_notice(records: GovernedRecords, view: RecordView, whole: bool = False) -> dict[str, Any] | None:
    """What the portal's "Some information is not shown" says, as FHIR R4 has a search say it: an
    OperationOutcome with one `suppressed` issue per reason, the reasons and words the portal's
    (explain.not_shown); None when there is none. Reasons only (and, for tier 1, which service to ask, as
    the portal's list of services names it), never which resources or how many, and of the whole record
    whatever the request's `_type` or criteria: a signal per type would let a reader find out, type by type,
    what kind of record was kept from them (docs/api.md). A token whose scopes leave out some type is told
    `scope` when it asked for the `whole` record ($everything without `_type`), and is not told which
    services are involved: an allergy app has no need to learn that a mental health service is.
    Made from the decision already taken: no statement."""
    reasons = not_shown(view.withheld, records.actor.role, records.fw)
    narrowed = records.resource_types is not None and not RECORD_TYPES <= records.resource_types
    if narrowed and whole:
        reasons["scope"] = withheld_labels(records.actor.role)["scope"]
    if not reasons:
        return None
    issues: list[dict[str, Any]] = [
        {"severity": "information", "code": "suppressed",
         "details": {"coding": [{"system": WITHHELD_REASON_SYSTEM, "code": why, "display": words}],
                     "text": f"Some information is not shown: this record leaves out {words}."}}
        for why, words in sorted(reasons.items())]
    if view.headlines and not narrowed:  # tier 1: which service to ask, as the portal's list of services says it
        headline = next(i for i in issues if i["details"]["coding"][0]["code"] == "tier-1-headline")
        headline["diagnostics"] = "Involved, details not shown: " + "; ".join(
            ", ".join(part for part in (", ".join(s.involved_only), s.name, s.phone) if part)
            for s in services(view, records.fw, records.actor.role) if s.involved_only)
    return {"resourceType": "OperationOutcome", "id": str(uuid.uuid4()), "issue": issues}


def withheld_reason_codesystem(fw: Framework) -> dict[str, Any]:
    """The codes a notice's issues carry, as a FHIR R4 CodeSystem: made from `explain.withheld_reasons`, which
    `not_shown` words the notices from, so the two cannot differ. Each concept's display is what staff read,
    with what a patient reads about their own record as a designation where it differs."""
    concepts = []
    for reason in withheld_reasons(fw):
        concept: dict[str, Any] = {"code": reason.code, "display": reason.words, "definition": reason.definition}
        if reason.patient_words != reason.words:
            concept["designation"] = [{"use": {"code": "patient",
                                               "display": "as a patient reads it about their own record"},
                                       "value": reason.patient_words}]
        concepts.append(concept)
    return {
        "resourceType": "CodeSystem", "id": WITHHELD_REASON_ID, "url": WITHHELD_REASON_SYSTEM,
        "version": __version__, "name": "WithheldReason", "title": "Why some information is not shown",
        "status": "active", "experimental": False, "publisher": "sharedcare",
        "description": "Why a reader's view of a patient's record leaves something out: the rule of the sharing "
                       "framework's decision that withheld it. The codes of the 'suppressed' issues in the "
                       "OperationOutcome that ends a Bundle of a patient's data; never what was withheld.",
        "caseSensitive": True, "content": "complete", "count": len(concepts), "concept": concepts,
    }


def _bundle(request: Request, resources: list[dict[str, Any]], notice: dict[str, Any] | None = None,
            included: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A searchset of `resources`, then what `_include` brought (search mode `include`); with `notice`
    (`withheld_notice`) labelled REDACTED, the notice last (a client taking the first entry of
    `$everything` as the Patient still does)."""
    base = public_base(request) + "/fhir"
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        **({"meta": {"security": [REDACTED]}} if notice else {}),
        "type": "searchset",
        "timestamp": utcnow().isoformat(),
        "link": [{"relation": "self", "url": public_link(request)}],
        "entry": [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                   "search": {"mode": "match" if r["resourceType"] != "Provenance" else "include"}}
                  for r in resources]
                 + [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "include"}}
                    for r in included or []]
                 + ([{"fullUrl": f"urn:uuid:{notice['id']}", "resource": notice, "search": {"mode": "outcome"}}]
                    if notice else []),
    }


@router.get("/metadata")
def capability_statement(request: Request) -> JSONResponse:
    interactions = [{"code": "read"}, {"code": "search-type"}, {"code": "create"}, {"code": "update"}]
    resources: list[dict[str, Any]] = [{
        "type": "Patient", "interaction": interactions,
        "searchParam": [{"name": "identifier", "type": "token"}, {"name": "family", "type": "string"},
                        {"name": "given", "type": "string"}, {"name": "birthdate", "type": "date"},
                        {"name": "address-postalcode", "type": "string"}],
        "operation": [{"name": "everything",
                       "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}],
        "documentation": "Patient search is by POST only (`POST [base]/Patient/_search`, the criteria in a "
                         "form body): a GET with criteria is refused, so no NHS number or name is in a URL.",
    }]
    clinical_interactions = interactions + [{"code": "vread"}, {"code": "history-instance"}]
    # a read and a vread give ETag and Last-Modified and take If-None-Match and If-Modified-Since (api/history.py);
    # a PUT takes If-Match and creates what is not held yet (ingest/contributions.py); nothing else conditional
    resources += [{"type": t, "interaction": clinical_interactions, "searchInclude": [f"{t}:patient"],
                   "versioning": "versioned-update", "readHistory": True, "updateCreate": True,
                   "conditionalRead": "full-support",
                   "searchParam": [{"name": name, "type": kind, "documentation": f"searches {where}"}
                                   for name, kind, where in search_params(t)]} for t in CLINICAL_TYPES]
    resources.append({"type": "CodeSystem", "interaction": [{"code": "read"}],
                      "documentation": f"CodeSystem/{WITHHELD_REASON_ID} only: the codes of what a Bundle or a "
                                       "Patient read says was not shown (docs/api.md)."})
    resources.append({"type": "Consent", "interaction": [{"code": "read"}, {"code": "search-type"}, {"code": "update"}],
                      "searchParam": [{"name": "patient", "type": "reference"}],
                      "documentation": "A patient's choices, for the patient's own token only (api/consent.py)."})
    return fhir_response({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": utcnow().date().isoformat(),
        "kind": "instance",
        "software": {"name": "sharedcare", "version": __version__},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{"mode": "server", "security": smart_security(public_base(request)),
                  "documentation": "A $everything or search-by-patient Bundle that leaves out whole resources "
                                   "the reader may not see ends with an OperationOutcome (search mode outcome), "
                                   "one issue 'suppressed' per reason, and is labelled REDACTED: read it as "
                                   "incomplete. A Patient read (the person's combined Patient) that leaves "
                                   "something out is labelled REDACTED, each reason a meta.tag of the same "
                                   "codes (CodeSystem/withheld-reason). Not signalled: free text removed inside "
                                   "a resource shown as a coded summary, versions left out of _history or "
                                   "vread. A search for a type "
                                   "the token's scopes do not include is refused (403).",
                  "resource": resources, "interaction": [{"code": "batch"}, {"code": "transaction"}],
                  "operation": [  # Bulk Data $export (api/bulk.py): secondary use only, pseudonymised
                      {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                      {"name": "patient-export",
                       "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
                      {"name": "group-export",
                       "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"},
                  ]}],
    })


def _everything_resources(view: RecordView, types: set[str] | None,
                          provenance: bool) -> list[tuple[dict[str, Any], bytes | None]]:
    """What `$everything` returns, in order, each with its JSON when the read kept it."""
    out: list[tuple[dict[str, Any], bytes | None]] = []
    if view.patient and (types is None or "Patient" in types):
        out.append((view.patient, None))
    chosen = [s for s in view.resources if types is None or s.resource_type in types]
    out += [(s.content, s.encoded) for s in chosen]
    if provenance:
        out += [(provenance_of(s), None) for s in chosen]
    return out


def _encoded_bundle(request: Request, resources: list[tuple[dict[str, Any], bytes | None]],
                    notice: dict[str, Any] | None) -> Response:
    """`_bundle` of these resources, written from each resource's JSON where it is given: the same bytes
    `fhir_response(_bundle(...))` writes (tests/api/test_withheld_signal.py), without encoding a
    large record's resources again on every request."""
    empty = _bundle(request, [], notice)
    head = orjson.dumps({**empty, "entry": []})  # ..."entry":[]} : the entries go between the brackets
    base = public_base(request) + "/fhir"
    entries = [b'{"fullUrl":' + orjson.dumps(f"{base}/{r['resourceType']}/{r['id']}") + b',"resource":'
               + (encoded or orjson.dumps(r))
               + (b',"search":{"mode":"match"}}' if r["resourceType"] != "Provenance" else
                  b',"search":{"mode":"include"}}')
               for r, encoded in resources]
    entries += [orjson.dumps(entry) for entry in empty["entry"]]  # the notice, if any
    return Response(head[:-2] + b",".join(entries) + b"]}", media_type=FHIR_JSON)


@router.get("/Patient/{patient_id}/$everything")
async def patient_everything(patient_id: str, request: Request) -> Response:
    return await _governed(request, "search", lambda records: _everything(patient_id, request, records),
                           lambda released: _encoded_bundle(request, *released))


def _everything(patient_id: str, request: Request, records: GovernedRecords
                ) -> tuple[list[tuple[dict[str, Any], bytes | None]], dict[str, Any] | None]:
    params = request.query_params
    only_these(list(params.multi_items()), ("_type", "_since", "_revinclude"), "$everything")
    types = _record_types(params["_type"]) if "_type" in params else None
    since = DateFilter.parse("_since", "ge" + params["_since"]) if "_since" in params else None
    if params.get("_revinclude", "Provenance:target") != "Provenance:target":
        raise SearchError(f"_revinclude: '{params['_revinclude'][:60]}' is not served (only Provenance:target)",
                          "_revinclude", "not-supported")
    provenance = "_revinclude" in params
    view = records.everything(patient_id, asked=types or ())
    if since:
        view.resources = [s for s in view.resources
                          if since.matches(span(s.content.get("meta", {}).get("lastUpdated", "1900")))]
    return _everything_resources(view, types, provenance), withheld_notice(records, view, whole=types is None)


def _record_types(value: str) -> set[str]:
    """`$everything`'s `_type`: record types only, each named as FHIR spells it. One it does not hold is
    refused, not dropped: an answer without it would read as the patient having none."""
    types = [t.strip() for t in value.split(",")]
    unknown = [t[:60] for t in types if t not in RECORD_TYPES]
    if unknown:
        raise SearchError(f"_type: {', '.join(repr(t) for t in unknown)} is not a type of the record "
                          f"(types: {', '.join(sorted(RECORD_TYPES))})", "_type", "not-supported")
    return set(types)


def _patient_summary(match: PatientMatch) -> dict[str, Any]:
    """What a patient search returns before any basis is recorded: who the person is, nothing clinical."""
    resource: dict[str, Any] = {"resourceType": "Patient", "id": match.person_id,
                                "name": [{"text": match.name}]}
    if match.nhs_number:
        resource["identifier"] = [{"system": NHS_NUMBER_SYSTEM, "value": match.nhs_number}]
    if match.birth_date:
        resource["birthDate"] = match.birth_date.isoformat()
    if match.gender:
        resource["gender"] = match.gender
    if match.postcode:
        resource["address"] = [{"postalCode": match.postcode}]
    return resource


POST_ONLY = ("search for a patient with POST [base]/Patient/_search, the criteria in a form body: an NHS "
             "number, name or birth date in a URL is kept by proxies and server logs")


def _search_patients(request: Request, records: GovernedRecords, params: list[tuple[str, str]]) -> JSONResponse:
    values = dict(params)
    unknown = sorted(set(values) - PATIENT_SEARCH_PARAMS)
    if unknown:
        raise SearchError(f"search parameter(s) {', '.join(unknown)} not supported on Patient "
                          f"(supported: {', '.join(sorted(PATIENT_SEARCH_PARAMS))})", unknown[0], "not-supported")
    only_these(params, PATIENT_SEARCH_PARAMS, "a Patient search")  # each once: the last would win unsaid
    refused = [name for name in values if name in REFUSED]
    if refused:
        raise SearchError(f"{refused[0]}: {REFUSED[refused[0]]}")
    nhs = None
    if values.get("identifier"):
        system, _, value = values["identifier"].rpartition("|")
        if system and system != NHS_NUMBER_SYSTEM:
            raise SearchError(f"identifier: only the NHS number system ({NHS_NUMBER_SYSTEM}) is searchable")
        nhs = normalise(value)
    if values.get("birthdate") and len(values["birthdate"]) != len("1945-03-02"):
        raise SearchError("birthdate: give the whole date of birth (YYYY-MM-DD): a year or month would find "
                          "everyone born in it, and a prefix is not taken here")
    born = parse_instant(values["birthdate"]).date() if values.get("birthdate") else None
    matches = records.search_patients(nhs_number=nhs, family=values.get("family"), given=values.get("given"),
                                      birth_date=born, postcode=values.get("address-postalcode"),
                                      named={"nhs_number": "identifier", "postcode": "address-postalcode"})
    return fhir_response(_bundle(request, [_patient_summary(m) for m in matches]))


@router.get("/Patient")
def search_patients(_records: RecordsDep) -> JSONResponse:
    """Refused, token checked first: every Patient search criterion identifies a person, and criteria
    in a URL are kept by proxies and access logs (TRUST DP1). FHIR lets a server take searches by POST
    only; the CapabilityStatement says so."""
    raise SearchError(POST_ONLY)


@router.post("/Patient/_search")
async def search_patients_by_post(request: Request, records: SearchRecordsDep) -> JSONResponse:
    """Patient search with the criteria in a form body, so no NHS number or name reaches a URL or log.
    Criteria in the URL as well (FHIR allows both) are refused, not silently dropped."""
    if request.url.query:
        raise SearchError(POST_ONLY)
    form = await request.form()
    # the search and its audit append in a worker thread: in the loop, a wait for the store's write lock
    # held up every other request of the process
    return await run_in_threadpool(_search_patients, request, records, [(k, str(v)) for k, v in form.multi_items()])


@router.get("/Patient/{patient_id}")
async def read_patient(patient_id: str, request: Request) -> Response:
    def read(records: GovernedRecords) -> dict[str, Any]:
        only_these(list(request.query_params.multi_items()), (), "a read by id")
        return _labelled(records.patient(patient_id), records)

    return await _governed(request, "read", read, fhir_response)


def _labelled(read: PatientRead, records: GovernedRecords) -> dict[str, Any]:
    """The combined Patient, labelled when it leaves something out (`explain.patient_not_shown`): `REDACTED`
    in `meta.security`, as a Bundle of the record is, and each reason as a `meta.tag` coded as the notice's
    issues are. A read answers the resource alone, so there is no OperationOutcome to carry (docs/api.md
    says why this shape). Unchanged, byte for byte, when nothing is left out."""
    reasons = patient_not_shown(read.withheld, read.masked, records.actor.role, records.fw)
    if not reasons:
        return read.patient
    meta = read.patient.get("meta") or {}
    security = [label for label in meta.get("security", []) if label != REDACTED] + [REDACTED]
    tags = [*meta.get("tag", []), *({"system": WITHHELD_REASON_SYSTEM, "code": why, "display": words}
                                    for why, words in reasons.items())]
    return {**read.patient, "meta": {**meta, "security": security, "tag": tags}}


@router.get("/CodeSystem/{code_system_id}")
def read_code_system(code_system_id: str, _member: MemberDep, fw: FrameworkDep) -> JSONResponse:
    """The withheld-reason CodeSystem, to any signed-in member (no patient's data: not audited)."""
    if code_system_id != WITHHELD_REASON_ID:
        raise NotFound(f"no CodeSystem {code_system_id}")
    return fhir_response(withheld_reason_codesystem(fw))


def _served_type(resource_type: str) -> None:
    """Checked after the token (as the records dependency did), so an unknown caller learns nothing."""
    if resource_type not in CLINICAL_TYPES:
        raise NotFound(f"resource type '{resource_type}' is not served here")


@router.get("/{resource_type}/{resource_id}")
async def read_resource(resource_type: str, resource_id: str, request: Request) -> Response:
    """The resource with its version's ETag; 304 to a conditional read whose copy is current, decided and
    audited as any read (api/history.py `versioned`)."""
    def read(records: GovernedRecords) -> ServedResource:
        _served_type(resource_type)
        only_these(list(request.query_params.multi_items()), (), "a read by id")
        return records.read(resource_type, resource_id)

    return await _governed(request, "read", read, lambda served: versioned(request, served))


@router.get("/{resource_type}")
async def search(resource_type: str, request: Request) -> Response:
    return await _governed(request, "search", lambda records: _search(resource_type, request, records),
                           fhir_response)


def _search(resource_type: str, request: Request, records: GovernedRecords) -> dict[str, Any]:
    _served_type(resource_type)
    params = list(request.query_params.multi_items())
    query = ClinicalQuery.parse(resource_type, params, page_cursor_key(request.app.state.settings.secret))
    # an included Patient is asked for too: a token whose scopes leave it out is refused, not answered without it
    view = records.everything(query.patient, query=request.url.query,
                              asked=[resource_type] + (["Patient"] if query.include_patient else []))
    page, cursor = query.select([(s.content, s.recorded_at) for s in view.of_type(resource_type)])
    included = [view.patient] if query.include_patient and view.patient and page else []
    bundle = _bundle(request, page, withheld_notice(records, view), included)
    if cursor:  # the next page starts after this one's last match (fhir/search.py), wherever it now is
        following = [(k, v) for k, v in params if k not in ("_offset", "_cursor")] + [("_cursor", cursor)]
        bundle["link"].append({"relation": "next", "url": public_link(request, urlencode(following))})
    return bundle
