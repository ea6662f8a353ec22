"""An app launched from the record in a real browser (SMART EHR launch): the clinician opens the app from
Mr Okafor's record, the app sends the browser back to sign in and approve, and then reads his record
with the token it gets. The app is a second small server, reached as `localhost` so that it is another
site than the shared care record at 127.0.0.1 (as a real app would be)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2 as httpx  # the dev dependency starlette's TestClient uses
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from playwright.sync_api import expect
from tests.e2e.conftest import Pages
from tests.e2e.live_server import LiveServer
from tests.e2e.test_clinician_journey import sign_in
from tests.fhir_bundles import entries
from tests.small_ics import Ics

from sharedcare.governance.clients import add_client


def _page(body: str) -> HTMLResponse:
    return HTMLResponse('<!doctype html><html lang="en"><head><title>Ward tasks</title>'
                        '<link rel="icon" href="data:,"></head>'  # no /favicon.ico asked for (a console error)
                        f"<body><main><h1>Ward tasks</h1>{body}</main></body></html>")


def _ward_tasks(record_url: str, challenge: str) -> tuple[FastAPI, list[str]]:
    """The app: at launch, a link back to the authorisation server; at its callback, the code it got."""
    app, seen = FastAPI(), []

    @app.get("/launch")
    def launch(request: Request, iss: str, launch: str) -> HTMLResponse:
        authorize = f"{record_url}/oauth/authorize?" + urlencode({
            "response_type": "code", "client_id": "ward-tasks", "redirect_uri": f"{request.base_url}callback",
            "scope": "launch patient/*.read", "state": "s1", "aud": iss, "launch": launch,
            "code_challenge": challenge, "code_challenge_method": "S256"})
        return _page(f'<p><a href="{authorize}">Continue to the shared care record</a></p>')

    @app.get("/callback")
    def callback(request: Request) -> HTMLResponse:
        seen.append(str(request.url))
        return _page("<p>Signed in.</p>")

    return app, seen


def test_a_gp_opens_an_app_from_the_record_and_it_reads_that_record(live: tuple[Ics, str], pages: Pages) -> None:
    ics, url = live
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    app, callbacks = _ward_tasks(url, challenge)
    with LiveServer(app) as tasks:
        site = f"http://localhost:{tasks.port}"
        database, fw = ics.client.app.state.database, ics.client.app.state.framework  # type: ignore[attr-defined]
        with database.session() as session:
            add_client(session, fw, "ward-tasks", "Ward tasks", "public", by="cli", redirect_uris=[f"{site}/callback"],
                       launch_uri=f"{site}/launch")

        page = pages.open()
        sign_in(pages, page, url, "dr.patel")
        ics.open_record("dr.patel")  # the basis, recorded as the record page would
        page.goto(f"{url}/record/{ics.okafor}")
        pages.check(page)
        page.get_by_role("link", name="Open an app for this patient").click()
        expect(page.get_by_role("heading", name="Open an app for this patient")).to_be_visible()
        pages.check(page)
        page.get_by_role("button", name="Open Ward tasks").click()
        expect(page.get_by_role("heading", name="Ward tasks")).to_be_visible()
        pages.check(page)
        assert page.url.startswith(f"{site}/launch?") and parse_qs(urlsplit(page.url).query)["iss"] == [f"{url}/fhir"]

        # Arriving from the app's site, the SameSite=Strict session cookie is not sent: sign in again.
        page.get_by_role("link", name="Continue to the shared care record").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        pages.check(page)
        page.get_by_label("Username").fill("dr.patel")
        page.get_by_label("Password").fill("demo")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Allow Ward tasks to read records?")).to_be_visible()
        expect(page.get_by_text("It will see only the record of the patient you opened it from.")).to_be_visible()
        pages.check(page)
        page.get_by_role("button", name="Allow", exact=True).click()
        expect(page.get_by_text("Signed in.")).to_be_visible()
        pages.check(page)

    callback = parse_qs(urlsplit(callbacks[-1]).query)
    assert callback["state"] == ["s1"]
    token = httpx.post(f"{url}/oauth/token", data={
        "grant_type": "authorization_code", "code": callback["code"][0], "redirect_uri": f"{site}/callback",
        "client_id": "ward-tasks", "code_verifier": verifier}).json()
    assert token["patient"] == ics.okafor
    record = httpx.get(f"{url}/fhir/Patient/{token['patient']}/$everything",
                       headers={"Authorization": f"Bearer {token['access_token']}"})
    assert record.status_code == 200
    assert entries(record.json())[0]["resource"]["id"] == ics.okafor
