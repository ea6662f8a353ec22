"""A real server on loopback and Debian's Chromium driven by Playwright (headless).

Playwright's own browser download does not work here, so the browser is the system's `chromium`;
`make test` and `.ci/run` install it when it is missing.

Tests open browser tabs through the `pages` fixture. Every document a tab loads must be checked with
axe-core (vendored in `vendor/`) before the test ends, for WCAG 2.1 A and AA: a serious or critical
violation fails the test, and so does a page the test forgot to check. Every URL the browser asks for
is kept too, and none may carry an NHS number, a name or a date of birth (TRUST DP1); the server
keeps an access log as a proxy in front of it would (every method, path and query it was sent), and
that log is scanned for the same after each test. Any error in a tab's console (a resource the
Content-Security-Policy refused, a script that threw, a file not found) fails the test too.

The journeys also photograph each main page (`Pages.shoot`). The pictures are always taken; with
`SHAREDCARE_SCREENSHOTS=DIR` (`make screenshots` sets docs/screenshots) they are written there for the
README. They show the tests' own synthetic people only.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright
from tests.e2e.live_server import ACCESS_LOG, LiveServer
from tests.small_ics import OKAFOR_NHS, Ics

AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text(encoding="utf-8")
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
BLOCKING = {"serious", "critical"}
# What must never appear in a URL: Mr Okafor's NHS number (with or without spaces), name and birth year, the
# year not inside a hex id (his person id, a random UUID, held "791945d7" in one run).
NOT_IN_URLS = (OKAFOR_NHS, "943%20476", "943+476", "okafor")
BIRTH_YEAR = re.compile(r"(?<![0-9a-f])1945(?![0-9a-f])")


def names_okafor(text: str) -> bool:
    lowered = text.lower()
    return any(secret in lowered for secret in NOT_IN_URLS) or BIRTH_YEAR.search(lowered) is not None

SCREENSHOTS = os.environ.get("SHAREDCARE_SCREENSHOTS")
PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 720}  # Playwright's default window

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One Chromium for the browser tests, closed when they end: Playwright's sync API keeps its event loop
    running on the main thread while it is open, so a later test's `asyncio.run` would otherwise fail."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Chromium is needed for the browser tests: apt-get install chromium (make test does this)"
    with sync_playwright() as playwright:
        # with the back/forward cache a clinician's Chrome has (Playwright turns it off by default)
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                                              ignore_default_args=["--disable-back-forward-cache"])
        yield launched
        launched.close()


@pytest.fixture
def live(ics: Ics, request: pytest.FixtureRequest) -> Iterator[tuple[Ics, str]]:
    ACCESS_LOG.lines.clear()
    with LiveServer(ics.client.app) as server:  # type: ignore[arg-type]
        yield ics, server.url
    if not _failed(request):
        assert ACCESS_LOG.lines, "the server's access log recorded nothing"
        logged = [line for line in ACCESS_LOG.lines if names_okafor(line)]
        assert logged == [], f"patient details in the server's access log: {logged}"


BLANK_PNG = 5000  # bytes: a window-sized PNG of a blank page is about 2 KB, of any real page far more


class Pages:
    """The browser tabs of one test: each document they load is checked with axe, each URL recorded."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.loads: dict[Page, list[list[Any]]] = {}  # page -> [[url, checked], ...] per document loaded
        self.urls: list[str] = []
        self.minor: list[str] = []
        self.console: list[str] = []  # errors the browser reported: a refused font, a failed script
        self.documents: set[str] = set()  # pages the tabs opened (their own status is the page's answer)

    def open(self, scripts: bool = True) -> Page:
        """A new tab in its own browser context (its own cookies: another person at another computer).

        `scripts=False` refuses the pages' script files, so they render as in a browser without
        JavaScript while axe (which needs JavaScript) can still run."""
        context = self.browser.new_context()
        if not scripts:
            context.route("**/*.js", lambda route: route.abort())
        self.contexts.append(context)
        page = context.new_page()
        self.loads[page] = []
        page.on("load", lambda loaded: self.loads[loaded].append([loaded.url, False]))
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("request", lambda request: self.documents.add(request.url) if request.is_navigation_request() else None)
        page.on("console", lambda message: self._console(message, scripts))
        page.on("pageerror", lambda error: self.console.append(f"{page.url}: {error}"))
        return page

    def _console(self, message: ConsoleMessage, scripts: bool) -> None:
        """Keep an error the browser reports (a resource the Content-Security-Policy refused, a script that
        threw, a stylesheet or image not found), except the script files this tab refuses on purpose
        (`scripts=False`) and a page's own status (a sign-in page answered 401, a refused form 400: the
        page is the answer, and the tests check it)."""
        where = message.location.get("url", "")
        own_status = where in self.documents and message.text.startswith("Failed to load resource: the server")
        if message.type == "error" and (scripts or not where.endswith(".js")) and not own_status:
            self.console.append(f"{where}: {message.text}")

    def check(self, page: Page) -> None:
        """Run axe on what the page shows now; fail on any serious or critical WCAG 2.1 AA violation."""
        page.wait_for_load_state("load")
        if not page.evaluate("() => typeof window.axe === 'object'"):
            page.evaluate(AXE)  # evaluated, not injected as a <script>: the pages' CSP allows no inline script
        violations = page.evaluate("""async (tags) => {
            const result = await axe.run(document, {runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]});
            return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                                 targets: v.nodes.slice(0, 3).map(n => n.target.join(" "))}));
        }""", WCAG_21_AA)
        blocking = [v for v in violations if v["impact"] in BLOCKING]
        self.minor += [f"{page.url}: {v['id']} ({v['impact']})" for v in violations if v["impact"] not in BLOCKING]
        assert not blocking, "axe: " + "; ".join(f"{v['id']} ({v['impact']}): {v['help']} at {v['targets']}"
                                                 for v in blocking)
        if self.loads[page]:
            self.loads[page][-1][1] = True

    def shoot(self, page: Page, name: str, at: str | None = None) -> None:
        """Photograph what the window shows (not the whole page: the pictures stay small), first
        scrolling `at` (a selector) to the top of the window when given."""
        if at:
            page.locator(at).first.evaluate("(element) => element.scrollIntoView({block: 'start'})")
        png = self._painted(page)
        assert png.startswith(b"\x89PNG") and len(png) > BLANK_PNG, f"screenshot {name} is empty"
        if SCREENSHOTS:
            folder = Path(SCREENSHOTS)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.png").write_bytes(png)
        if at:
            page.evaluate("() => window.scrollTo(0, 0)")

    @staticmethod
    def _painted(page: Page) -> bytes:
        """A screenshot once the page has painted: just after a resize (the phone-sized shots) headless
        Chromium can hand back a blank frame, so wait two animation frames, and shoot once more after a
        short wait if the picture is still blank. A page that really is blank stays blank, and fails."""
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        png = page.screenshot(animations="disabled", caret="hide")
        if len(png) <= BLANK_PNG:
            page.wait_for_timeout(500)
            png = page.screenshot(animations="disabled", caret="hide")
        return png

    def unchecked(self) -> list[str]:
        return [url for loads in self.loads.values() for url, checked in loads if not checked]

    def stored(self) -> dict[str, Any]:
        """What the portals left in each open tab's browser storage (TRUST DP2: none may hold PHI, and they
        have no reason to store anything at all): web storage, IndexedDB, Cache Storage, service workers."""
        found: dict[str, Any] = {}
        for page in self.loads:
            if page.is_closed() or not page.url.startswith("http"):
                continue
            held = page.evaluate("""async () => ({
                local: Object.keys(localStorage), session: Object.keys(sessionStorage),
                indexedDB: (await indexedDB.databases()).map(d => d.name),
                caches: self.caches ? await caches.keys() : [],
                serviceWorkers: (await navigator.serviceWorker.getRegistrations()).map(r => r.scope)})""")
            if any(held.values()):
                found[page.url] = held
        return found


@pytest.fixture
def pages(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Pages]:
    tabs = Pages(browser)
    yield tabs
    stored = tabs.stored()
    for context in tabs.contexts:
        context.close()
    if tabs.minor:
        print("axe, minor and moderate:", *sorted(set(tabs.minor)), sep="\n  ")
    if not _failed(request):
        assert tabs.unchecked() == [], "pages loaded but never checked with axe"
        assert stored == {}, f"the portals left data in the browser: {stored}"
        assert tabs.console == [], "errors in the browser's console:\n  " + "\n  ".join(tabs.console)
        leaked = [url for url in tabs.urls if names_okafor(url)]
        assert leaked == [], "patient details in a URL"


def _failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test itself failed (its fixtures then report nothing of their own)."""
    return getattr(request.node, "rep_call", None) is not None and bool(request.node.rep_call.failed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test, so `pages` knows whether the test itself failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
