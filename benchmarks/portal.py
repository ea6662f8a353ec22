"""How fast the clinician portal shows a large record: server render time and time to first meaningful
view in Chromium, with same-run baselines so the figures come as ratios.

One synthetic ICS in a SQLite file (or --database). The largest record of a Riverside Medical Centre
patient is grown past 500 resources by ingesting extra synthetic results, consultations, medicines and
problems for that one person through the normal ingest pipeline; the person with the median record size
at the same practice is the small record. A GP (dr.patel) reads both.

- Server render, in process (FastAPI TestClient, whole request: token, governed read, decision, audit,
  Jinja): the record page (one document holding the summary tab and the encounters timeline) and the
  "what changed" and medicines pages, for the large and the small record; median and p95 over --repeats.
  Baselines: the same page for the small record, and the large record page's own HTML saved to a file
  and served by the same app as a static file (the floor of sending those bytes).
- Time to first meaningful view in Chromium (Playwright, Debian's /usr/bin/chromium, headless): from
  `page.goto` to the summary panel's last section being visible, in a warm browser (styles and scripts
  cached, as for someone who has used the portal before); also first contentful paint. For the large
  record, the small record and the static copy of the large page served by the same server.

Nothing passes or fails on time. Medians are the figures to quote: the machine may be shared.

Usage: python benchmarks/portal.py [--people 300] [--extra 520] [--repeats 30] [--browser-repeats 15]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import func, select

from sharedcare.clock import utcnow
from sharedcare.fhir.uk_core import meta_source
from sharedcare.governance.framework import Framework, load_framework
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import PatientRecord, Resource
from sharedcare.synth import generate

RESULTS = Path(__file__).parent / "results"
PRACTICE, SYSTEM, USER = "P81001", "emis", "dr.patel"
SCT, DMD = "http://snomed.info/sct", "https://dmd.nhs.uk"
# The summary panel's last section: once it is visible, the whole summary has been laid out.
SUMMARY_SHOWN = "#summary h3 >> nth=-1"
TESTS = [("999791000000106", "Haemoglobin A1c level - IFCC standardised", "mmol/mol", 48, 70),
         ("1011481000000105", "eGFR (estimated glomerular filtration rate) using creatinine CKD-EPI", "mL/min",
          40, 75)]
DRUGS = [("325278007", "Metformin 500mg tablets", "One tablet twice a day with meals"),
         ("318902004", "Ramipril 5mg capsules", "One capsule once a day"),
         ("319283006", "Amlodipine 5mg tablets", "One tablet once a day"),
         ("322236009", "Paracetamol 500mg tablets", "Two tablets up to four times a day when required")]
PROBLEMS = [("44054006", "Type 2 diabetes mellitus"), ("38341003", "Hypertensive disorder"),
            ("709044004", "Chronic kidney disease"), ("69896004", "Rheumatoid arthritis")]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def extra_resources(subject: str, count: int, today: date) -> list[dict[str, Any]]:
    """`count` synthetic resources for one person, spread over ten years: mostly results (as a long
    record is), with consultations, medicine statements and problems."""
    out: list[dict[str, Any]] = []
    for i in range(count):
        day = (today - timedelta(days=7 * i + 3)).isoformat()
        ref = {"reference": subject}
        kind = i % 10
        if kind < 6:
            code, name, unit, low, high = TESTS[i % len(TESTS)]
            out.append({"resourceType": "Observation", "id": f"bench-o{i}", "status": "final", "subject": ref,
                        "code": {"coding": [{"system": SCT, "code": code, "display": name}]},
                        "effectiveDateTime": f"{day}T09:30:00Z",
                        "valueQuantity": {"value": low + (i * 7) % (high - low), "unit": unit}})
        elif kind < 8:
            out.append({"resourceType": "Encounter", "id": f"bench-e{i}", "status": "finished", "subject": ref,
                        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                                  "display": "ambulatory"},
                        "type": [{"coding": [{"system": SCT, "code": "11429006", "display": "Consultation"}]}],
                        "period": {"start": f"{day}T10:00:00Z", "end": f"{day}T10:10:00Z"}})
        elif kind == 8:
            code, name, dose = DRUGS[i % len(DRUGS)]
            out.append({"resourceType": "MedicationStatement", "id": f"bench-m{i}", "subject": ref,
                        "status": "completed" if i > 40 else "active",
                        "medicationCodeableConcept": {"coding": [{"system": DMD, "code": code, "display": name}]},
                        "effectivePeriod": {"start": day}, "dateAsserted": f"{day}T10:00:00Z",
                        "dosage": [{"text": dose}]})
        else:
            code, name = PROBLEMS[i % len(PROBLEMS)]
            out.append({"resourceType": "Condition", "id": f"bench-c{i}", "subject": ref,
                        "code": {"coding": [{"system": SCT, "code": code, "display": name}]},
                        "clinicalStatus": {"coding": [{
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active" if i < 100 else "resolved"}]},
                        "onsetDateTime": day})
    return out


def grow(db: Database, fw: Framework, folder: Path, source_id: str, count: int) -> None:
    """Ingest `count` extra resources for one practice patient, a bundle of 100 at a time."""
    resources = extra_resources(f"Patient/{source_id}", count, utcnow().date())
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for start in range(0, len(resources), 100):
        lines.append(json.dumps({
            "resourceType": "Bundle", "id": f"bench-{start}", "type": "collection",
            "timestamp": utcnow().isoformat(), "meta": {"source": meta_source(PRACTICE, SYSTEM)},
            "entry": [{"resource": r} for r in resources[start:start + 100]]}))
    path = folder / "bench.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = Pipeline(db, fw).ingest_paths([path])
    if report.quarantined:
        raise SystemExit(f"extra resources were quarantined: {report.quarantine}")


def record_sizes(db: Database) -> list[tuple[str, str, int]]:
    """(person, practice source id, resources in the person's whole record) for the practice's patients."""
    with db.session() as s:
        sizes = dict(s.execute(select(PatientRecord.person_id, func.count(Resource.id))
                               .join(Resource, Resource.patient_record_id == PatientRecord.id)
                               .group_by(PatientRecord.person_id)).all())
        practice = s.execute(select(PatientRecord.person_id, PatientRecord.source_id)
                             .where(PatientRecord.source_org == PRACTICE)).all()
    return sorted(((pid, sid, sizes.get(pid, 0)) for pid, sid in practice), key=lambda t: t[2])


class LiveServer:
    """The app on a loopback port in a thread (as the e2e tests run it)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def server_times(client: Any, headers: dict[str, str], urls: dict[str, str], repeats: int,
                 progress: Progress) -> dict[str, dict[str, float]]:
    out = {}
    task = progress.add_task("server render", total=repeats * len(urls))
    for name, url in urls.items():
        for _ in range(2):  # warm-up: templates compiled, caches filled
            client.get(url, headers=headers)
        times, size = [], 0
        for _ in range(repeats):
            start = time.perf_counter()
            response = client.get(url, headers=headers)
            times.append((time.perf_counter() - start) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{url}: {response.status_code}")
            size = len(response.content)
            progress.advance(task)
        out[name] = {"median_ms": statistics.median(times), "p95_ms": percentile(times, 95), "bytes": size}
    return out


def browser_times(base: str, token: str, urls: dict[str, str], repeats: int,
                  progress: Progress) -> dict[str, dict[str, float]]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("Chromium is needed: apt-get install chromium")
    out = {}
    task = progress.add_task("browser", total=repeats * len(urls))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--headless", "--no-sandbox",
                                                                               "--disable-gpu"])
        context = browser.new_context()
        context.add_cookies([{"name": "sc_session", "value": token, "url": base}])
        for name, url in urls.items():
            page = context.new_page()
            page.goto(base + url)  # warm: styles, scripts and fonts in the cache
            page.locator(SUMMARY_SHOWN).wait_for(state="visible")
            times, paints = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                page.goto(base + url, wait_until="commit")
                page.locator(SUMMARY_SHOWN).wait_for(state="visible")
                times.append((time.perf_counter() - start) * 1000)
                paint = page.evaluate("() => (performance.getEntriesByName('first-contentful-paint')[0] || {})"
                                      ".startTime || null")
                if paint:
                    paints.append(float(paint))
                progress.advance(task)
            page.close()
            out[name] = {"median_ms": statistics.median(times), "p95_ms": percentile(times, 95),
                         "fcp_median_ms": statistics.median(paints) if paints else float("nan")}
        browser.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--extra", type=int, default=520, help="resources added to the large record")
    parser.add_argument("--repeats", type=int, default=30, help="server renders per page")
    parser.add_argument("--browser-repeats", type=int, default=15, help="browser loads per page")
    parser.add_argument("--database", default=None)
    args = parser.parse_args()
    console = Console(stderr=True, width=max(120, Console(stderr=True).width))

    from fastapi.staticfiles import StaticFiles
    from fastapi.testclient import TestClient

    from sharedcare.api.app import create_app
    from sharedcare.api.auth import mint_token
    from sharedcare.config import load_settings

    fw = load_framework()
    with tempfile.TemporaryDirectory() as tmp_name, Progress(console=console, transient=True) as progress:
        tmp = Path(tmp_name)
        progress.console.print(f"synthesising and ingesting {args.people} people")
        generate(tmp / "feeds", people=args.people, seed=31, framework=fw)
        db = Database(args.database or f"sqlite:///{tmp / 'portal.db'}")
        db.migrate()
        Pipeline(db, fw).ingest_paths([tmp / "feeds"])
        sizes = record_sizes(db)
        large_id, large_source, _ = sizes[-1]
        small_id, _, small_size = sizes[len(sizes) // 2]
        grow(db, fw, tmp / "extra", large_source, args.extra)
        large_size = next(n for pid, _, n in record_sizes(db) if pid == large_id)

        settings = replace(load_settings(), database_url=str(db.url), demo=True)
        app = create_app(settings, framework=fw, database=db)
        (tmp / "static").mkdir()
        app.mount("/bench-static", StaticFiles(directory=tmp / "static"), name="bench-static")
        token = mint_token(settings, fw, USER)
        headers = {"Authorization": f"Bearer {token}"}
        with TestClient(app) as client:
            for pid in (large_id, small_id):
                done = client.post(f"/api/access/{pid}", json={"basis": "explicit-consent", "reason": ""},
                                   headers=headers)
                if done.status_code != 201:
                    raise SystemExit(done.text)
            (tmp / "static" / "record.html").write_bytes(client.get(f"/record/{large_id}", headers=headers).content)
            server = server_times(client, headers, {
                "record page, large": f"/record/{large_id}", "record page, small": f"/record/{small_id}",
                "what changed, large": f"/record/{large_id}/changes",
                "what changed, small": f"/record/{small_id}/changes",
                "medicines, large": f"/record/{large_id}/medicines",
                "medicines, small": f"/record/{small_id}/medicines",
                "static copy of the large record page": "/bench-static/record.html",
            }, args.repeats, progress)
        with LiveServer(app) as live:
            browser = browser_times(live.url, token, {
                "record page, large": f"/record/{large_id}", "record page, small": f"/record/{small_id}",
                "static copy of the large record page": "/bench-static/record.html",
            }, args.browser_repeats, progress)
        db.dispose()

    def ratio(table: dict[str, dict[str, float]], a: str, b: str) -> float:
        return table[a]["median_ms"] / table[b]["median_ms"]

    figures: dict[str, Any] = {
        "people": args.people, "database": args.database or "sqlite", "user": USER,
        "large_record_resources": large_size, "small_record_resources": small_size,
        "repeats": args.repeats, "browser_repeats": args.browser_repeats,
        "server": server, "browser": browser,
        "ratios": {
            "server_record_large_over_small": ratio(server, "record page, large", "record page, small"),
            "server_changes_large_over_small": ratio(server, "what changed, large", "what changed, small"),
            "server_medicines_large_over_small": ratio(server, "medicines, large", "medicines, small"),
            "server_record_large_over_static_same_bytes": ratio(server, "record page, large",
                                                                "static copy of the large record page"),
            "browser_large_over_small": ratio(browser, "record page, large", "record page, small"),
            "browser_large_over_static_same_bytes": ratio(browser, "record page, large",
                                                          "static copy of the large record page"),
        },
        "measured_at": utcnow().isoformat(),
    }
    table = Table(title=f"Portal speed: a {large_size}-resource record against a {small_size}-resource one "
                        f"({args.people} people, {USER})")
    for column in ("page", "server median ms", "server p95 ms", "KB", "browser median ms", "browser p95 ms",
                   "first paint ms"):
        table.add_column(column, justify="left" if column == "page" else "right")
    for name, s in server.items():
        b = browser.get(name)
        table.add_row(name, f"{s['median_ms']:.1f}", f"{s['p95_ms']:.1f}", f"{s['bytes'] / 1024:.0f}",
                      f"{b['median_ms']:.0f}" if b else "", f"{b['p95_ms']:.0f}" if b else "",
                      f"{b['fcp_median_ms']:.0f}" if b else "")
    console.print(table)
    ratios = Table(title="Ratios of medians")
    ratios.add_column("measure")
    ratios.add_column("ratio", justify="right")
    for name, value in figures["ratios"].items():
        ratios.add_row(name.replace("_", " "), f"{value:.2f}")
    console.print(ratios)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"portal-{int(time.time())}.json").write_text(json.dumps(figures, indent=2))
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
