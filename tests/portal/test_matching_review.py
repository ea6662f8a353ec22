"""The data quality page of the IG workspace (/ig/identity, issue 4): the MPI's uncertain pairs with their
evidence, decided in the reviewer's own name with a reason, where before only `sharedcare mpi review` and
`mpi decide --by <any name>` could. Twins the matching held apart are the case: a wrong link would show one
twin's record to the other's clinicians."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select, update
from tests.builders import bundle, patient, write_ndjson
from tests.ingest.test_hl7v2 import admission, write_hl7
from tests.portal.test_patient_portal import visit_rows
from tests.small_ics import Ics

from sharedcare.api.deps import SESSION_COOKIE
from sharedcare.governance.access_log import details
from sharedcare.governance.audit import AuditAction
from sharedcare.governance.framework import Framework
from sharedcare.identity.mpi import relink
from sharedcare.ingest.pipeline import Pipeline
from sharedcare.store.database import Database
from sharedcare.store.models import AuditEntry, MatchReview, PatientRecord


@pytest.fixture
def twins(ics: Ics, db: Database, framework: Framework, tmp_path: Path) -> Ics:
    """Trần Thị Hằng at the practice, her twin Trần Thị Hương admitted to hospital: same surname, birth date
    and address, no NHS number at the hospital. The matching holds them for review."""
    gp = patient("gp-hang", None, "Trần", "Thị", "2001-04-09", "female", "RV3 7QT",
                 name=[{"use": "official", "family": "Trần", "given": ["Thị", "Hằng"]}])
    feeds = [write_ndjson(tmp_path / "P81001" / "gp.ndjson", [bundle("P81001", "emis", [gp])]),
             write_hl7(tmp_path / "RXR" / "pas.hl7",
                       [admission("PAS1", mrn="H1", nhs=None, name="TRẦN^Thị^Hương", born="20010409", sex="F",
                                  address="14 Mill Lane^^Riverside^^RV3 7QT^GBR^H")
                        .replace("|8859/1\r", "|UNICODE UTF-8\r")], encoding="utf-8")]
    for feed in feeds:
        assert Pipeline(db, framework).ingest_paths([feed]).quarantined == 0
    with db.session() as s:
        assert s.scalars(select(MatchReview.status)).all() == ["open"]
    return ics


def _sign_in(ics: Ics, username: str = "ig.morgan") -> None:
    done = ics.client.post("/login", data={"username": username, "password": "demo", "target": "/ig"},
                           follow_redirects=False)
    assert done.status_code == 303


def _text(page: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", page.split('id="maincontent"', 1)[1]).split())


def _pair_id(db: Database) -> int:
    with db.session() as s:
        return s.scalars(select(MatchReview.id)).one()


def test_the_reviewer_sees_both_twins_side_by_side_with_why_the_matching_was_unsure(
        twins: Ics, db: Database) -> None:
    _sign_in(twins)
    page = twins.client.get("/ig/identity")
    assert page.status_code == 200
    text = _text(page.text)
    assert "Matching review" in text and "1 waiting" in text
    assert "Name TRẦN, Thị TRẦN, Thị Other given names Hằng Hương" in text
    assert "Born 9 Apr 2001 9 Apr 2001" in text
    assert "never linked automatically" in text  # the waterfall says why it was held
    # audited as a look-up about each person shown, in the reviewer's name
    with db.session() as s:
        looks = s.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.MPI_REVIEW_VIEW.value)).all()
        persons = set(s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id.in_(("gp-hang", "H1")))))
    assert {e.username for e in looks} == {"ig.morgan"} and {e.patient_id for e in looks} == persons
    assert details(looks[0])["pairs"] == "1"


def test_each_twin_is_told_the_reviewer_looked_at_her_details(twins: Ics, db: Database) -> None:
    """TRUST AU8: the matching page showed each twin's name, birth date and address to the IG officer, a
    look at her as much as any read; her "Who has looked" says so in words, in the officer's name."""
    _sign_in(twins)
    assert twins.client.get("/ig/identity").status_code == 200
    twins.client.cookies.clear()
    with db.session() as s:
        twin_ids = sorted(s.scalars(select(PatientRecord.person_id).where(
            PatientRecord.source_id.in_(("gp-hang", "H1")))))
    with db.session() as s:  # their NHS numbers, with which each signs in (neither record had one)
        for source_id, nhs_number in (("gp-hang", "9990000026"), ("H1", "9990000034")):
            s.execute(update(PatientRecord).where(PatientRecord.source_id == source_id).values(nhs_number=nhs_number))
    for person_id in twin_ids:
        twins.client.cookies.set(SESSION_COOKIE, twins.citizen_token(person_id))
        [row] = visit_rows(twins.client.get("/patient/accesses").text)
        assert "Rhian Morgan Information governance officer" in row, row
        assert "looked at your details to check whether two records are the same person" in row, row


def test_keeping_the_twins_apart_needs_a_reason_is_in_the_reviewers_name_and_survives_a_relink(
        twins: Ics, db: Database) -> None:
    _sign_in(twins)
    pair = _pair_id(db)
    refused = twins.client.post(f"/ig/identity/{pair}", data={"decision": "separate", "reason": "  ", "was": "open"})
    assert refused.status_code == 400 and "Enter why" in refused.text
    with db.session() as s:
        assert s.get(MatchReview, pair).status == "open"  # type: ignore[union-attr]  # nothing decided

    twins_confirmed = {"decision": "separate", "reason": "The practice confirms these are twins", "was": "open"}
    done = twins.client.post(f"/ig/identity/{pair}", data=twins_confirmed, follow_redirects=False)
    assert done.status_code == 303
    page = twins.client.get(done.headers["location"])
    assert "Kept apart as different people (pair" in _text(page.text) and "No pairs are waiting" in page.text
    with db.session() as s:
        item = s.get(MatchReview, pair)
        assert item is not None and (item.status, item.decided_by) == ("separate", "ig.morgan")
        relink(s)
    with db.session() as s:
        people = set(s.scalars(select(PatientRecord.person_id).where(PatientRecord.source_id.in_(("gp-hang", "H1")))))
    assert len(people) == 2  # still two people after a relink


def test_a_link_the_mpi_refuses_is_shown_at_the_pair_and_nothing_changes(
        twins: Ics, db: Database) -> None:
    """Linking records that carry different valid NHS numbers is refused: the page says why, at the pair."""
    with db.session() as s:
        for record, number in zip(s.scalars(select(PatientRecord).where(
                PatientRecord.source_id.in_(("gp-hang", "H1"))).order_by(PatientRecord.id)),
                ("9434765919", "9434765870"), strict=True):
            record.nhs_number = number
        s.commit()
    _sign_in(twins)
    pair = _pair_id(db)
    page = twins.client.post(f"/ig/identity/{pair}",
                             data={"decision": "link", "reason": "looks the same", "was": "open"})
    assert page.status_code == 409 and "different NHS numbers" in page.text
    with db.session() as s:
        assert s.get(MatchReview, pair).status == "open"  # type: ignore[union-attr]


def test_the_matching_page_is_refused_to_a_gp_and_the_refusal_is_audited(twins: Ics, db: Database) -> None:
    twins.client.post("/login", data={"username": "dr.patel", "password": "demo"})
    pair = _pair_id(db)
    for method, url, data in [("get", "/ig/identity", None),
                              ("post", f"/ig/identity/{pair}", {"decision": "link", "reason": "same", "was": "open"}),
                              ("post", f"/ig/identity/{pair}", {"decision": "link", "reason": "", "was": "open"})]:
        page = twins.client.request(method, url, data=data)
        assert page.status_code == 403 and "You cannot use this page" in page.text, url
    with db.session() as s:
        denied = s.scalars(select(AuditEntry.username).where(
            AuditEntry.action == AuditAction.GOVERNANCE_DENIED.value)).all()
        assert denied == ["dr.patel"] * 3
        assert s.get(MatchReview, pair).status == "open"  # type: ignore[union-attr]


def test_a_pair_another_reviewer_decided_since_the_page_was_shown_is_not_decided_again(
        twins: Ics, db: Database) -> None:
    """Two reviewers with the page open: the second's "Same person" comes back saying the pair was decided,
    and the first's "Different people" stands."""
    _sign_in(twins)
    pair = _pair_id(db)
    first = twins.client.post(f"/ig/identity/{pair}", follow_redirects=False,
                              data={"decision": "separate", "reason": "twins, the practice says", "was": "open"})
    assert first.status_code == 303
    second = twins.client.post(f"/ig/identity/{pair}",
                               data={"decision": "link", "reason": "look the same to me", "was": "open"})
    assert second.status_code == 409
    with db.session() as s:
        item = s.get(MatchReview, pair)
        assert item is not None and (item.status, item.decided_by) == ("separate", "ig.morgan")
