"""A page of another site under the same domain (a trust's intranet beside the shared record, say, both
under ics.nhs.uk) cannot make a signed-in clinician's browser read or search the record: SameSite=Strict
sends the session cookie with same-site requests, so an image or a self-submitting form there would read a
record, or find a patient, in the clinician's name (the patient would see it, the IG officer flag it).
Browsers say where a request came from (Fetch Metadata, `Sec-Fetch-Site`): the session cookie is honoured
only for requests from the service's own pages, or typed and followed links; a bearer token is unaffected."""

from __future__ import annotations

from sqlalchemy import func, select
from tests.small_ics import OKAFOR_NHS, Ics

from sharedcare.governance.access_log import details
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry

IMAGE_FROM_SIBLING = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
FORM_FROM_SIBLING = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
OWN_PAGE = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
LINK_FROM_SIBLING = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}


def _reads(db: Database, action: str) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == action, AuditEntry.username == "para.evans", AuditEntry.outcome == "permit")) or 0


def test_a_sibling_sites_image_or_form_does_not_read_or_search_in_the_clinicians_name(ics: Ics, db: Database) -> None:
    client = ics.client
    assert client.post("/login", data={"username": "para.evans", "password": "demo"},
                       follow_redirects=False).status_code == 303
    assert client.post(f"/record/{ics.okafor}/basis", data={"basis": "implied-consent",
                                                            "reason": "confused, daughter not present"},
                       follow_redirects=False).status_code == 303
    reads, searches = _reads(db, "clinical:record:read"), _reads(db, "clinical:patient:search")
    for path in (f"/fhir/Patient/{ics.okafor}/$everything", f"/record/{ics.okafor}"):
        refused = client.get(path, headers=IMAGE_FROM_SIBLING)
        assert refused.status_code == 401, (path, refused.status_code)
        assert "Okafor" not in refused.text and "OKAFOR" not in refused.text
    refused = client.post("/fhir/Patient/_search", data={"identifier": OKAFOR_NHS}, headers=FORM_FROM_SIBLING)
    assert refused.status_code == 401
    assert (_reads(db, "clinical:record:read"), _reads(db, "clinical:patient:search")) == (reads, searches)
    with db.session() as s:  # each refusal is on record for the IG officer, naming whose session it was
        refusals = s.scalars(select(AuditEntry).where(AuditEntry.action == "auth:token:refused",
                                                      AuditEntry.username == "para.evans")).all()
    assert len(refusals) == 3 and all("another site" in details(r)["reason"] for r in refusals)

    # the service's own pages, a link followed from elsewhere, a typed address and a script's token still work
    assert client.get(f"/record/{ics.okafor}", headers=OWN_PAGE).status_code == 200
    assert client.get(f"/record/{ics.okafor}", headers=LINK_FROM_SIBLING).status_code == 200
    assert client.get(f"/record/{ics.okafor}", headers={"Sec-Fetch-Site": "none"}).status_code == 200
    assert client.get(f"/fhir/Patient/{ics.okafor}/$everything",
                      headers={**ics.open_record("para.evans"), **IMAGE_FROM_SIBLING}).status_code == 200
    assert _reads(db, "clinical:record:read") == reads + 4
