"""Paging a search as a partner EPR does, by following `next` links: every match exactly once even when the
record changes between pages, and every link at the service's public address (behind a proxy too)."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.builders import bundle, condition, patient, write_ndjson
from tests.fhir_bundles import entries
from tests.small_ics import OKAFOR_NHS, WITHDRAWN, Ics

from sharedcare.governance.framework import Framework
from sharedcare.ingest.pipeline import Pipeline

GP_PATIENT = patient("gp-okafor", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02")
SIX = {"gp-c1": ("38341003", "Hypertension"), "gp-c2": ("195967001", "Asthma"), "gp-c3": ("13645005", "COPD"),
       "gp-c4": ("73211009", "Diabetes"), "gp-c5": ("399211009", "Old MI"), "gp-c6": ("49436004", "AF")}
PUBLIC = "https://scr.example.nhs.uk"


def _send(ics: Ics, framework: Framework, folder: Path, name: str, resources: list[dict[str, Any]],
          timestamp: str) -> None:
    """One GP feed; each resource of one bundle recorded at the same instant, so the order has ties."""
    feed = write_ndjson(folder / f"{name}.ndjson", [bundle("P81001", "emis", [GP_PATIENT, *resources],
                                                           timestamp=timestamp)])
    report = Pipeline(ics.database, framework).ingest_paths([feed])
    assert report.quarantined == 0, report.quarantine


ONSET = {"gp-c1": "1960-05-01", "gp-c2": "2026-11-01"}  # the rest have none: they sort together, first by date


def _six_conditions(ics: Ics, framework: Framework, folder: Path) -> None:
    _send(ics, framework, folder, "six", [condition(sid, "Patient/gp-okafor", code, shown,
                                                    **({"onsetDateTime": ONSET[sid]} if sid in ONSET else {}))
                                          for sid, (code, shown) in SIX.items()], "2026-11-03T09:00:00Z")


def _shown(body: dict[str, Any]) -> list[str]:
    return [e["resource"]["code"]["coding"][0]["display"] for e in entries(body) if e["search"]["mode"] == "match"]


def _next(body: dict[str, Any]) -> str | None:
    return next((link["url"] for link in body["link"] if link["relation"] == "next"), None)


def _pages(ics: Ics, headers: dict[str, str], url: str | None, base: str = "http://testserver"
           ) -> list[list[str]]:
    pages = []
    while url:
        response = ics.client.get(url.removeprefix(base), headers=headers)
        assert response.status_code == 200, response.text
        pages.append(_shown(response.json()))
        url = _next(response.json())
    return pages


def _all_now(ics: Ics, headers: dict[str, str]) -> list[str]:
    return _shown(ics.client.get(f"/fhir/Condition?patient={ics.okafor}&_count=500", headers=headers).json())


def test_a_resource_withdrawn_between_pages_makes_no_other_one_missed(
        ics: Ics, framework: Framework, tmp_path: Path) -> None:
    _six_conditions(ics, framework, tmp_path)
    headers = ics.open_record("dr.patel")
    for sort in ("", "&_sort=date", "&_sort=-date"):
        first = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&_count=2{sort}", headers=headers).json()
        sid, gone = next((s, shown) for s, (_, shown) in SIX.items() if shown in _shown(first))
        _send(ics, framework, tmp_path, f"withdraw-{sid}", [condition(sid, "Patient/gp-okafor", SIX[sid][0], gone,
                                                                      verificationStatus=WITHDRAWN)],
              "2026-11-04T09:00:00Z")
        seen = _shown(first) + [c for page in _pages(ics, headers, _next(first)) for c in page]
        assert len(seen) == len(set(seen)) and set(seen) == set(_all_now(ics, headers)) | {gone}, sort


def test_a_resource_arriving_between_pages_repeats_none(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    _six_conditions(ics, framework, tmp_path)
    headers = ics.open_record("dr.patel")
    first = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&_count=2", headers=headers).json()
    _send(ics, framework, tmp_path, "new", [condition("gp-c7", "Patient/gp-okafor", "44054006", "New")],
          "2026-11-05T09:00:00Z")  # the newest: it sorts first, before the page already read
    seen = _shown(first) + [c for page in _pages(ics, headers, _next(first)) for c in page]
    assert len(seen) == len(set(seen)) and set(seen) == set(_all_now(ics, headers)) - {"New"}


def test_a_page_position_says_nothing_and_one_the_server_did_not_give_is_refused(ics: Ics) -> None:
    """The position is sealed: no time of the record (when recorded, a clinical date) is readable in a URL
    that proxies log, and a position changed, or taken to another search, does not open."""
    headers = ics.open_record("dr.patel")
    first = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&_count=1&_sort=date", headers=headers).json()
    following = _next(first)
    assert following is not None and "_offset" not in following
    (cursor,) = parse_qs(urlsplit(following).query)["_cursor"]
    opened = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert not re.search(rb"\d{4}-\d\d-\d\d", opened) and entries(first)[0]["resource"]["id"].encode() not in opened
    tampered = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    for changed in (following.replace("_sort=date", "_sort=-date"),  # another order: the position means nothing
                    following.replace("/Condition?", "/AllergyIntolerance?"),  # another search
                    following.replace(cursor, tampered),
                    f"/fhir/Condition?patient={ics.okafor}&_cursor=not-a-position",
                    following + "&_offset=3"):
        response = ics.client.get(changed.removeprefix("http://testserver"), headers=headers)
        assert response.status_code == 400 and "_cursor" in response.json()["issue"][0]["diagnostics"]
        assert response.json()["issue"][0]["expression"] == ["_cursor"], changed


def test_self_and_next_links_use_the_public_address(ics: Ics, framework: Framework, tmp_path: Path) -> None:
    """Behind a proxy the request's own address is the proxy's hop (http://127.0.0.1:port): a client following
    it would miss the proxy or send its token over plain HTTP."""
    _six_conditions(ics, framework, tmp_path)
    state = ics.client.app.state  # type: ignore[attr-defined]
    state.settings = replace(state.settings, public_url=PUBLIC)
    headers = ics.open_record("dr.patel")
    first = ics.client.get(f"/fhir/Condition?patient={ics.okafor}&_count=4", headers=headers).json()
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert links["self"] == f"{PUBLIC}/fhir/Condition?patient={ics.okafor}&_count=4"
    assert links["next"].startswith(f"{PUBLIC}/fhir/Condition?patient={ics.okafor}&_count=4&_cursor=")
    assert len(_pages(ics, headers, links["next"], PUBLIC)[0]) > 0
    condition_id = entries(first)[0]["resource"]["id"]
    history = ics.client.get(f"/fhir/Condition/{condition_id}/_history", headers=headers).json()
    assert history["link"] == [{"relation": "self", "url": f"{PUBLIC}/fhir/Condition/{condition_id}/_history"}]
