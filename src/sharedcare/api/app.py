"""The web application: FHIR API, access API and portals, with the cross-cutting rules in one place.

Every response carries `Cache-Control: no-store` (TRUST DP2) and a request id, except the portals'
static files (stylesheets, scripts, icons: no patient data), which browsers may keep for an hour;
every error becomes an OperationOutcome (API) or a plain page (portal) without internals (TRUST DP3).
"""

from __future__ import annotations

import gc
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sharedcare import __version__
from sharedcare.api import (
    access,
    bodies,
    bulk,
    consent,
    deps,
    fhir,
    fhir_write,
    formats,
    history,
    oauth,
    smart,
    transparency,
)
from sharedcare.api.auth import AuthError
from sharedcare.api.outcomes import operation_outcome
from sharedcare.config import Settings, load_settings
from sharedcare.errors import SharedcareError
from sharedcare.fhir.search import SearchError
from sharedcare.governance.audit import record_refused_credentials
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.governance.gateway import AccessDenied, NotFound
from sharedcare.portal import citizen, csrf, ig, pages
from sharedcare.portal import routes as clinician
from sharedcare.store.database import STORE_BUSY, Database, busy, unreachable, unreachable_reason

log = logging.getLogger("sharedcare.api")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
STORE_RETRY_SECONDS = 10  # Retry-After of a 503 while the record store cannot be reached
STORE_UNREACHABLE = "the record store is not reachable; try again shortly"
STORE_BUSY_TRY_AGAIN = "the record store is busy; nothing was stored: try again shortly"
STATIC_PREFIXES = ("/static/", "/assets/")


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "unknown")


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(("/fhir", "/api", "/audit/"))


# Bodies whose fields go into text columns; FHIR bodies go through ingest, which quarantines what it cannot store.
_FIELD_BODIES = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")


def _nul_in(path: str, query: str, body: bytes | None) -> str | None:
    """Where a request holds a NUL character (path, query or body), if it does. No field may hold one, and
    PostgreSQL refuses it in text: refused here, in words, rather than as a server error later."""
    if "\x00" in path:
        return "path"
    if "%00" in query:
        return "query"
    if body is not None and (b"\x00" in body or b"%00" in body or b"\\u0000" in body):
        return "body"
    return None


_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
# Outside demo mode browsers are told to use HTTPS only, for a year (a browser ignores it over plain HTTP; the
# deployment's other hosts are not named: includeSubDomains is theirs to choose).
HSTS = "max-age=31536000"


def _security_headers(hsts: bool) -> dict[str, str]:
    """The headers every answer carries, Strict-Transport-Security outside demo mode."""
    return _SECURITY_HEADERS | ({"Strict-Transport-Security": HSTS} if hsts else {})


def _too_large(request: Request, exc: bodies.BodyTooLarge) -> Response:
    """413, and the connection closed: the rest of the body is not read."""
    response = (operation_outcome(413, "too-long", exc.message, _request_id(request)) if _is_api(request)
                else pages.error_page(request, 413, exc.message, heading="What was sent is too large"))
    response.headers["Connection"] = "close"
    return response


class _ResponseRules:
    """Every request gets an id; every response no-store (static files excepted) and the security headers;
    a body over its route's limit (api/bodies.py), a FHIR query string over its limit, a FHIR read asking
    for a format other than JSON (api/formats.py), or a NUL anywhere is refused. Plain ASGI, not
    `@app.middleware("http")`: that wrapper's streams and task group cost more than a whole governed
    resource read."""

    def __init__(self, app: ASGIApp, hsts: bool) -> None:
        self.app = app
        self.headers = _security_headers(hsts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        offered = request.headers.get("x-request-id", "")
        # A caller's id is kept only if it looks like one: it goes into audit events and responses.
        request_id = offered if _REQUEST_ID.fullmatch(offered) else str(uuid.uuid4())
        request.state.request_id = request_id
        fields = request.headers.get("content-type", "").lower().startswith(_FIELD_BODIES)  # media types: any case
        method, path = scope["method"], scope["path"]
        limit = bodies.limit_for(method, path)
        body = None
        refused: bodies.BodyTooLarge | None = None
        try:
            if bodies.declared_over(request, limit):
                raise bodies.BodyTooLarge(limit)
            # Read here (up to the limit) unless a FHIR write streams it itself, after the credentials.
            if not bodies.read_by_route(method, path):
                body = await bodies.read(request, limit)
        except bodies.BodyTooLarge as exc:
            refused = exc
        static = scope["path"].startswith(STATIC_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                ok_static = static and message["status"] == 200
                headers["Cache-Control"] = "public, max-age=3600" if ok_static else "no-store"
                headers["X-Request-ID"] = request_id
                for name, value in self.headers.items():
                    headers[name] = value
            await send(message)

        if refused is not None:
            await _too_large(request, refused)(scope, receive, send_with_headers)
            return
        if bodies.query_over(path, scope.get("query_string", b"")):  # refused at the door, as a large body is
            too_long = operation_outcome(414, "too-long", bodies.QUERY_TOO_LONG, request_id)
            await too_long(scope, receive, send_with_headers)
            return
        search_form = body if method == "POST" and path.endswith("/_search") and request.headers.get(
            "content-type", "").lower().startswith("application/x-www-form-urlencoded") else None
        scope["query_string"], search_form, unacceptable = formats.negotiated(
            method, path, scope.get("query_string", b""), request.headers.get("accept", ""), search_form)
        if body is not None:
            body = search_form if search_form is not None else body
            receive = _replay(body, receive)  # the route reads the same body again (a search's without `_format`)
        if unacceptable is not None:  # refused at the door too: JSON is all that is served
            where = "_format" if unacceptable.startswith("_format") else None
            refusal = operation_outcome(406, "not-supported", unacceptable, request_id, where=where)
            await refusal(scope, receive, send_with_headers)
            return
        where = _nul_in(scope["path"], request.url.query, body if fields else None)
        if where is None:
            await self.app(scope, receive, send_with_headers)
            return
        message = f"the request's {where} holds a NUL character, which no field may contain"
        response = (operation_outcome(400, "invalid", message, request_id) if _is_api(request)
                    else pages.error_page(request, 400, message))
        await response(scope, receive, send_with_headers)


def _replay(body: bytes, server: Receive) -> Receive:
    """A `receive` that gives the body already read, then hands over to the server's (a disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await server()

    return receive


def freeze_start_up() -> None:
    """Move everything alive now (modules, framework, engine), which lives as long as the server, out of
    the garbage collector's sight: a full collection walking it cost a large record's request 70 ms about
    one time in three (benchmarks/api.py; the mean fell from 57 to 36 ms of CPU)."""
    gc.collect()
    gc.freeze()


def served_app() -> FastAPI:
    """The app one process of `sharedcare serve --workers N` serves (uvicorn's factory), built from the
    environment the command was given."""
    app = create_app()
    freeze_start_up()
    return app


def create_app(settings: Settings | None = None, framework: Framework | None = None,
               database: Database | None = None) -> FastAPI:
    settings = settings or load_settings()
    settings.require_safe_secret()
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Request work (a governed read, decision, audit, commit: nearly all CPU) runs in worker threads.
        # With anyio's default of 40, eight requests in flight each hold one and contend for the GIL with
        # the event loop and each other: a large `$everything` under load had a p99 of 450-480 ms and a
        # typical mix 480-640 ms; with two threads a process the rest queue, and they fell to 116-130 ms
        # and 16-17 ms, with 40% more large requests a second (benchmarks/api.py, docs/architecture.md).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.server_threads
        yield

    app = FastAPI(title="sharedcare", version=__version__, lifespan=lifespan,
                  description="Shared care record: FHIR R4 API and portals under one sharing framework")
    app.state.settings = settings
    app.state.framework = framework or load_framework(settings.framework_path)
    app.state.database = database or Database(settings.database_url, settings.audit_chain_key,
                                                      settings.audit_chain_keys_retired)

    app.add_middleware(_ResponseRules, hsts=not settings.demo)

    @app.exception_handler(AuthError)
    async def unauthenticated(request: Request, exc: AuthError) -> Response:
        if exc.presented:
            try:
                await run_in_threadpool(record_refused_credentials, app.state.database, exc.message, exc.subject,
                                        _request_id(request), request.client.host if request.client else None)
            except Exception:  # the caller is refused either way: a failed audit write must not make it a 500
                log.exception("request %s: the refused credentials could not be audited", _request_id(request))
        if exc.ends_session:
            try:  # a copy of an expired session cookie kept in use elsewhere ends with it (`end_expired_session`)
                await run_in_threadpool(deps.end_expired_session, request)
            except Exception:  # refused either way: a failed write must not make it a 500
                log.exception("request %s: the expired session could not be revoked", _request_id(request))
        if not _is_api(request):
            return pages.sign_in_again(request, exc.for_people or exc.message, end_session=exc.ends_session)
        response = operation_outcome(401, "login", exc.message, _request_id(request))
        response.headers["WWW-Authenticate"] = 'Bearer realm="sharedcare"'
        return response

    @app.exception_handler(csrf.CsrfRefused)
    async def forged(request: Request, exc: csrf.CsrfRefused) -> Response:
        return pages.error_page(request, 403, "This form could not be accepted: it was not sent from a page of "
                                              "this service, or the page is out of date. Go back, reload the "
                                              "page and try again.", heading="This form could not be sent")

    @app.exception_handler(bodies.BodyTooLarge)
    async def too_large(request: Request, exc: bodies.BodyTooLarge) -> Response:
        return _too_large(request, exc)

    @app.exception_handler(AccessDenied)
    async def forbidden(request: Request, exc: AccessDenied) -> Response:
        if not _is_api(request):
            return pages.error_page(request, 403, exc.message)
        return operation_outcome(403, "forbidden", f"{exc.message} (rule {exc.rule_id})", _request_id(request))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        if not _is_api(request):  # the same page whatever governance's message (missing, or refused as missing)
            return pages.record_unavailable(request)
        return operation_outcome(404, "not-found", exc.message, _request_id(request))

    @app.exception_handler(DBAPIError)
    async def store_unreachable(request: Request, exc: DBAPIError) -> Response:
        """503 with Retry-After, not a 500, while the store cannot be reached (down, restarting, refusing
        connections; a pooled connection it dropped is replaced before use: `Database`). Not audited, since
        the audit log is in that store: logged, with the request id. What the request would have done was
        rolled back whole, its audit entry with it, so nothing was released unaudited. So is a store busy past a
        writer's wait (`busy`: an MPI relink on SQLite). Any other database error is the server's failure (500,
        below)."""
        if busy(exc):
            log.error("request %s: %s; answered 503", _request_id(request), STORE_BUSY)
            said = STORE_BUSY_TRY_AGAIN
        elif unreachable(exc):
            log.error("request %s: the record store is not reachable (%s); answered 503", _request_id(request),
                      unreachable_reason(exc))
            said = STORE_UNREACHABLE
        else:
            raise exc
        response = (operation_outcome(503, "transient", said, _request_id(request)) if _is_api(request)
                    else pages.error_page(request, 503, said, heading="The record is not available"))
        response.headers["Retry-After"] = str(STORE_RETRY_SECONDS)
        return response

    @app.exception_handler(SharedcareError)
    async def bad_request(request: Request, exc: SharedcareError) -> Response:
        if not _is_api(request):
            return pages.error_page(request, 400, str(exc))
        return operation_outcome(400, "invalid", str(exc), _request_id(request))

    @app.exception_handler(SearchError)
    async def refused_search(request: Request, exc: SearchError) -> Response:
        """As `bad_request`, the issue naming the parameter at fault and whether the server does not do what
        was asked (`not-supported`) or could not read it (`invalid`)."""
        if not _is_api(request):
            return pages.error_page(request, 400, str(exc))
        return operation_outcome(400, exc.issue, str(exc), _request_id(request), where=exc.parameter)

    @app.exception_handler(StarletteHTTPException)
    async def framework_refusal(request: Request, exc: StarletteHTTPException) -> Response:
        """What FastAPI and Starlette refuse themselves (an unknown path or method, a body that could not be
        parsed), in the service's own shapes rather than `{"detail": ...}`."""
        if not _is_api(request):
            response: Response = pages.error_page(request, exc.status_code, str(exc.detail))
        else:
            code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "invalid")
            response = operation_outcome(exc.status_code, code, str(exc.detail), _request_id(request))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        if not _is_api(request):
            return pages.error_page(request, 400, problems)
        return operation_outcome(400, "invalid", problems, _request_id(request))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("request %s failed", _request_id(request))
        text = f"the server could not complete the request; quote reference {_request_id(request)}"
        response = (pages.error_page(request, 500, text) if not _is_api(request)
                    else operation_outcome(500, "exception", text, _request_id(request)))
        # Unhandled errors are answered outside the middleware above, so its headers are set here too.
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Request-ID"] = _request_id(request)
        response.headers.update(_security_headers(hsts=not settings.demo))
        return response

    app.include_router(smart.router)  # before fhir's /{type}/{id}, which would take /fhir/.well-known/...
    app.include_router(history.router)
    app.include_router(bulk.router)  # before fhir: `Patient/$export` is not a Patient id
    app.include_router(consent.router)  # before fhir's /{type}/{id} and fhir_write's PUT /{type}/{id}
    app.include_router(fhir.router)
    app.include_router(fhir_write.router)
    app.include_router(access.router)
    app.include_router(transparency.router)
    app.include_router(oauth.router)
    app.include_router(clinician.router)
    app.include_router(ig.router)
    app.include_router(citizen.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    app.mount("/assets", StaticFiles(directory=pages.ASSETS), name="assets")  # nhsuk-frontend's CSS asks here
    return app
