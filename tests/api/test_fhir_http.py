"""FHIR R4 HTTP as a client sees it: a read's ETag and conditional read, format negotiation, and a URL too
long for the server to read.

Review (FHIR API, 2026-12-07): the CapabilityStatement said `versioning: versioned` but a read sent no ETag;
`_format=xml` and `Accept: application/fhir+xml` were answered in JSON (and `_format=json` refused); a URL
over about 200 KB got uvicorn's plain-text 400 instead of the 414 OperationOutcome the app gives above 8 KB.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from select import select as readable

import httpx2 as httpx
import pytest
from sqlalchemy import select
from tests.api.test_record_api import TRUST
from tests.api.test_slow_clients import _serving
from tests.builders import bundle, medication, patient, write_ndjson
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.fhir.uk_core import server_id
from sharedcare.governance.consent import hide_category, set_choice
from sharedcare.governance.framework import Framework
from sharedcare.governance.policy import UNNAMED_SERVICE
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

DIABETES = server_id("P81001", "Condition", "gp-c1")
METFORMIN = server_id("P81001", "MedicationStatement", "gp-m1")


def _events(ics: Ics, request_id: str) -> list[tuple[str, str]]:
    database: Database = ics.client.app.state.database  # type: ignore[attr-defined]
    with database.session() as s:
        return [(e.action, e.outcome) for e in s.scalars(
            select(AuditEntry).where(AuditEntry.event["source"]["site"].as_string() == request_id))]


def test_a_read_gives_its_versions_etag_and_a_conditional_read_of_it_is_answered_304_and_audited(ics: Ics) -> None:
    headers = ics.open_record("dr.patel")
    url = f"/fhir/Condition/{DIABETES}"
    read = ics.client.get(url, headers=headers)
    meta = read.json()["meta"]
    assert read.headers["ETag"] == f'W/"{meta["versionId"]}"' == 'W/"1"'
    assert read.headers["Last-Modified"] == format_datetime(
        datetime.fromisoformat(meta["lastUpdated"]), usegmt=True)

    same = ics.client.get(url, headers={**headers, "If-None-Match": read.headers["ETag"], "X-Request-ID": "inm-1"})
    assert same.status_code == 304 and same.content == b"" and same.headers["ETag"] == 'W/"1"'
    assert _events(ics, "inm-1") == [("clinical:resource:read", "permit")]  # a look that the copy is current
    since = ics.client.get(url, headers={**headers, "If-Modified-Since": read.headers["Last-Modified"]})
    assert since.status_code == 304
    assert ics.client.get(url, headers={**headers, "If-None-Match": 'W/"7"'}).json()["id"] == DIABETES

    gp = ics.token("dr.patel", "user/*.read user/*.write") | {"Content-Type": "application/fhir+json"}
    changed = {**read.json(), "onsetDateTime": "2018-07-01"}
    changed.pop("meta")
    changed["id"], changed["subject"] = "gp-c1", {"reference": "Patient/gp-okafor"}
    assert ics.client.put("/fhir/Condition/gp-c1", headers=gp, content=json.dumps(changed)).status_code == 200
    newer = ics.client.get(url, headers={**headers, "If-None-Match": 'W/"1"'})
    assert newer.status_code == 200 and newer.headers["ETag"] == 'W/"2"' == f'W/"{newer.json()["meta"]["versionId"]}"'
    assert newer.json()["onsetDateTime"] == "2018-07-01"
    vread = ics.client.get(f"{url}/_history/1", headers={**headers, "If-None-Match": 'W/"1"'})
    assert vread.status_code == 304 and vread.headers["ETag"] == 'W/"1"'


def test_a_conditional_read_the_reader_may_not_make_is_the_same_404_as_without_the_header(ics: Ics) -> None:
    etag = ics.client.get(f"/fhir/Condition/{DIABETES}", headers=ics.open_record("dr.patel")).headers["ETag"]
    stranger = ics.token("dr.oconnor")  # no basis recorded for Mr Okafor: refused as missing
    plain = ics.client.get(f"/fhir/Condition/{DIABETES}", headers=stranger)
    for condition in ({"If-None-Match": etag}, {"If-None-Match": "*"}):
        probe = ics.client.get(f"/fhir/Condition/{DIABETES}",
                               headers={**stranger, **condition, "X-Request-ID": "probe-1"})
        assert probe.status_code == plain.status_code == 404
        assert probe.json()["issue"][0]["diagnostics"] == plain.json()["issue"][0]["diagnostics"]
        assert "ETag" not in probe.headers
    assert ("clinical:resource:read", "deny") in _events(ics, "probe-1")


def test_a_version_shown_reduced_has_an_etag_of_its_own(ics: Ics) -> None:
    """The social worker sees the medicine as a coded summary (no note): a 304 to the GP's tag would tell
    a reader holding the summary that it is what they may now see, or one holding the whole that it is."""
    whole = ics.client.get(f"/fhir/MedicationStatement/{METFORMIN}", headers=ics.open_record("dr.patel"))
    social = ics.open_record("sw.brown")
    summary = ics.client.get(f"/fhir/MedicationStatement/{METFORMIN}", headers=social)
    assert "note" in whole.json() and "note" not in summary.json()
    assert whole.headers["ETag"] == 'W/"1"' and summary.headers["ETag"].startswith('W/"1-')
    assert summary.json()["meta"]["versionId"] == "1"
    assert ics.client.get(f"/fhir/MedicationStatement/{METFORMIN}",
                          headers={**social, "If-None-Match": 'W/"1"'}).status_code == 200
    assert ics.client.get(f"/fhir/MedicationStatement/{METFORMIN}",
                          headers={**social, "If-Modified-Since": whole.headers["Last-Modified"]}).status_code == 200
    assert ics.client.get(f"/fhir/MedicationStatement/{METFORMIN}",
                          headers={**social, "If-None-Match": summary.headers["ETag"]}).status_code == 304



def test_a_copy_naming_a_service_the_patient_has_since_hidden_is_not_answered_304(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """The hospital reads the GP's depot injection, which names the mental health trust as its source of
    information, and keeps its ETag. Mr Okafor then hides mental health from everyone: the same version is
    now served with the trust unnamed, so neither its old ETag nor its date may be answered 304 (review of
    2026-12-07: they were, telling the hospital its copy naming the trust was current)."""
    depot = {**medication("gp-depot", "Patient/gp-okafor-2", "Paliperidone 100mg injection"),
             "informationSource": {"reference": "Organization/RXM", "display": TRUST}}
    feeds = [bundle("P81001", "emis", [patient("gp-okafor-2", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), depot])]
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "depot.ndjson", feeds)]).quarantined == 0
    hospital = ics.open_record("dr.oconnor")
    url = f"/fhir/MedicationStatement/{server_id('P81001', 'MedicationStatement', 'gp-depot')}"
    before = ics.client.get(url, headers=hospital)
    assert before.json()["informationSource"]["display"] == TRUST and before.headers["ETag"] == 'W/"1"'
    assert ics.client.get(url, headers={**hospital, "If-None-Match": 'W/"1"'}).status_code == 304

    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by=f"patient:{ics.okafor}", person_id=ics.okafor,
                   provision=hide_category("mental_health"))
        s.commit()
    now = ics.client.get(url, headers=hospital)
    assert now.json()["informationSource"] == {"display": UNNAMED_SERVICE} and TRUST not in now.text
    assert now.json()["meta"]["versionId"] == "1" and now.headers["ETag"].startswith('W/"1-')
    for held in ({"If-None-Match": before.headers["ETag"]}, {"If-Modified-Since": before.headers["Last-Modified"]}):
        again = ics.client.get(url, headers={**hospital, **held})
        assert again.status_code == 200 and TRUST not in again.text, held
    assert ics.client.get(url, headers={**hospital, "If-None-Match": now.headers["ETag"]}).status_code == 304


def test_a_copy_shown_altered_has_no_date_to_be_asked_by_once_it_is_shown_whole_again(
        ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> None:
    """The reverse: the hospital holds the depot with the trust unnamed (Mr Okafor hides mental health), then
    he withdraws the hide. Its copy must not be answered 304 by date: final review of 2026-12-07, the altered
    copy came with a Last-Modified, and asked by it once the copy was whole again the answer was 304."""
    depot = {**medication("gp-depot", "Patient/gp-okafor-2", "Paliperidone 100mg injection"),
             "informationSource": {"reference": "Organization/RXM", "display": TRUST}}
    feeds = [bundle("P81001", "emis", [patient("gp-okafor-2", OKAFOR_NHS, "Okafor", "Emeka", "1945-03-02"), depot])]
    assert Pipeline(db, framework).ingest_paths([write_ndjson(tmp_path / "depot.ndjson", feeds)]).quarantined == 0
    hide = hide_category("mental_health")
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by=f"patient:{ics.okafor}", person_id=ics.okafor, provision=hide)
        s.commit()
    hospital = ics.open_record("dr.oconnor")
    url = f"/fhir/MedicationStatement/{server_id('P81001', 'MedicationStatement', 'gp-depot')}"
    held = ics.client.get(url, headers=hospital)
    assert held.json()["informationSource"] == {"display": UNNAMED_SERVICE}
    assert "Last-Modified" not in held.headers and held.headers["ETag"].startswith('W/"1-')
    with db.session() as s:
        set_choice(s, OKAFOR_NHS, by=f"patient:{ics.okafor}", person_id=ics.okafor, withdraw=hide)
        s.commit()
    whole = ics.client.get(url, headers=hospital)
    assert whole.json()["informationSource"]["display"] == TRUST and "Last-Modified" in whole.headers
    again = ics.client.get(url, headers={**hospital, "If-None-Match": held.headers["ETag"]})
    assert again.status_code == 200 and TRUST in again.text


@pytest.mark.parametrize(("query", "accept", "named"), [
    ("_format=xml", None, "_format"),
    ("_format=application/fhir%2Bxml", None, "_format"),
    ("_format=application/fhir+xml", "application/fhir+json", "_format"),  # _format overrides Accept
    ("", "application/fhir+xml", "Accept"),
    ("", "application/xml, text/html;q=0.9, application/json;q=0", "Accept"),
])
@pytest.mark.parametrize("path", ["/fhir/Condition/{diabetes}", "/fhir/Condition?patient={okafor}",
                                  "/fhir/Patient/{okafor}/$everything", "/fhir/metadata"])
def test_asked_for_xml_only_the_answer_is_406_naming_why_before_anything_is_read_or_audited(
        ics: Ics, path: str, query: str, accept: str | None, named: str) -> None:
    headers = ics.open_record("dr.patel") | {"X-Request-ID": "fmt-1"} | ({"Accept": accept} if accept else {})
    url = path.format(diabetes=DIABETES, okafor=ics.okafor)
    response = ics.client.get(f"{url}{'&' if '?' in url else '?'}{query}", headers=headers)
    assert response.status_code == 406, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    issue = response.json()["issue"][0]
    assert issue["code"] == "not-supported" and issue["diagnostics"].startswith(named)
    assert "application/fhir+json" in issue["diagnostics"]
    assert _events(ics, "fmt-1") == []


@pytest.mark.parametrize(("query", "accept"), [
    ("_format=json", None), ("_format=application/fhir+json", None), ("_format=application/json", None),
    ("_format=application/fhir%2Bjson", "application/fhir+xml"), ("", "application/fhir+json"),
    ("", "application/json"), ("", "*/*"), ("", "application/fhir+xml;q=1, application/fhir+json;q=0.5"),
])
@pytest.mark.parametrize("path", ["/fhir/Condition/{diabetes}", "/fhir/Condition/{diabetes}/_history/1",
                                  "/fhir/Condition?patient={okafor}"])
def test_json_asked_for_any_way_fhir_allows_is_answered(
        ics: Ics, path: str, query: str, accept: str | None) -> None:
    headers = ics.open_record("dr.patel") | ({"Accept": accept} if accept else {})
    url = path.format(diabetes=DIABETES, okafor=ics.okafor)
    response = ics.client.get(f"{url}{'&' if '?' in url else '?'}{query}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert "44054006" in response.text


@pytest.mark.parametrize(("wanted", "status"), [("json", 200), ("application/fhir+json", 200), ("xml", 406)])
def test_a_format_among_a_posted_searchs_form_fields_is_read_as_in_the_query(
        ics: Ics, wanted: str, status: int) -> None:
    """FHIR puts a search's parameters in the form body of a POST: `_format=json` there was refused 400 as an
    unknown search parameter, and `_format=xml` too (review of 2026-12-07)."""
    response = ics.client.post("/fhir/Patient/_search", data={"identifier": OKAFOR_NHS, "_format": wanted},
                               headers=ics.token("dr.oconnor"))
    assert response.status_code == status, response.text
    if status == 200:
        assert [e["resource"]["id"] for e in response.json()["entry"]] == [ics.okafor]
    else:
        assert response.json()["issue"][0]["diagnostics"].startswith("_format")


def test_the_capability_statement_claims_what_is_served(ics: Ics) -> None:
    capability = ics.client.get("/fhir/metadata").json()
    assert capability["format"] == ["application/fhir+json"]
    condition = next(r for r in capability["rest"][0]["resource"] if r["type"] == "Condition")
    assert (condition["versioning"], condition["conditionalRead"], condition["updateCreate"]) == \
        ("versioned-update", "full-support", True)
    assert not any(r.get(name) for r in capability["rest"][0]["resource"]
                   for name in ("conditionalCreate", "conditionalUpdate", "conditionalDelete"))


@pytest.mark.usefixtures("deployment_keys")
def test_a_url_too_long_for_the_server_to_read_is_refused_414_with_an_operation_outcome(
        db: Database, tmp_path: Path) -> None:
    """Sent in pieces, as any client sends 300 KB: h11 stops buffering at 16 KB, and uvicorn said 400 in plain
    text; a URL the app reads whole (under the query limit) is still answered by the app."""
    with _serving(db, tmp_path) as (port, _):
        status, head, body = _sent_in_pieces(port, f"/fhir/Condition?patient=x&code={'1' * 300_000}", "")
        assert status == 414, head
        assert b"content-type: application/fhir+json" in head.lower() and b"connection: close" in head.lower()
        outcome = json.loads(body)
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "too-long"
        assert "address is longer" in outcome["issue"][0]["diagnostics"]
        status, _, body = _sent_in_pieces(port, "/fhir/metadata", f"X-Big: {'a' * 40_000}\r\n")
        assert status == 431 and "headers are longer" in json.loads(body)["issue"][0]["diagnostics"]
        status, _, body = _sent_in_pieces(port, f"/portal?q={'1' * 40_000}", "")
        assert status == 414 and body.startswith(b"the request's address is longer")
        in_reach = httpx.get(f"http://127.0.0.1:{port}/fhir/Condition?code={'1' * 9000}")
        assert in_reach.status_code == 414 and in_reach.json()["issue"][0]["code"] == "too-long"


def _sent_in_pieces(port: int, target: str, headers: str) -> tuple[int, bytes, bytes]:
    """A GET sent 8 KB at a time, as a client on a real network sends a long one (so the server reads it in
    pieces), until the server answers: its status, head and body."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()
        for start in range(0, len(request), 8192):
            if readable([sock], [], [], 0.01)[0]:  # answered before the rest was sent: read it
                break
            sock.sendall(request[start:start + 8192])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body
