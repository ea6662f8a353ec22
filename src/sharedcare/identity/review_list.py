"""The MPI's review list: pairs of source records the matcher was unsure about (or linked with a discrepancy),
and records held for review on their own, each with the evidence a reviewer decides on.

One reading for both places a reviewer works: `sharedcare mpi review` (a table, or JSON) and the data
quality page of the IG workspace (`governance/workspace.py`, which checks the reviewer's permission and
audits what was shown). The records' demographics are patients' details: whoever calls `pending` audits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sharedcare.store.models import MatchReview, PatientRecord

WAITING = ("open", "deferred")  # the statuses a reviewer still has to decide


@dataclass(frozen=True)
class Pair:
    id: int
    status: str
    probability: float
    linked: bool  # whether the two records are one person now
    discrepancy: str | None  # linked on the NHS number though the given names differ (what differs)
    decided_by: str | None
    decided_at: datetime | None
    a: PatientRecord
    b: PatientRecord
    held: dict[str, str]  # "a"/"b": why that record is held for review itself (a re-match's note)
    evidence: dict[str, Any]

    def steps(self, history: bool = False) -> list[str]:
        """The waterfall in words: the prior, each comparison's level and match weight, the total, then why it
        is here; with `history`, what relinks and reviewers did to it."""
        evidence = self.evidence
        steps = [f"prior {evidence.get('prior_weight', '')}"] + [
            f"{step['comparison']}: {step['level']} {step['match_weight']:+}"
            for step in evidence.get("comparisons", [])]
        steps.append(f"= {evidence.get('match_weight', '')}")
        if self.discrepancy:
            steps.append(f"{'LINKED' if self.linked else 'linked, since moved apart'}: {self.discrepancy}")
        elif evidence.get("never_link"):
            steps.append(f"never linked automatically: {', '.join(evidence['never_link'])} disagree")
        elif evidence.get("held"):
            steps.append(f"never linked automatically: {evidence['held']}")
        steps += [f"record {side} held: {note}" for side, note in self.held.items()]
        steps += [f"{what.replace('_', ' ')}: {evidence[what]}" for what in ("source_merge", "reopened", "rescored")
                  if evidence.get(what)]
        if history:
            steps += [relink_step(step) for step in evidence.get("relinks", ())]
            steps += [f"{d['at'][:16].replace('T', ' ')} UTC, {d['by']}: decided {d['status']} (was {d['was']})"
                      + (f": {d['reason']}" if d["reason"] else "") for d in evidence.get("decisions", ())]
            if self.decided_by and not evidence.get("decisions"):  # decided before decisions were kept
                when = self.decided_at.isoformat()[:16].replace("T", " ") if self.decided_at else ""
                steps.append(f"{when} UTC, {self.decided_by}: decided {self.status}")
        return steps


@dataclass(frozen=True)
class ReviewList:
    pairs: list[Pair]
    held: list[PatientRecord]  # records held for review on their own (no pair): why is their `link_note`

    @property
    def record_ids(self) -> list[int]:
        """Every record shown, for the audit."""
        return sorted({r.id for p in self.pairs for r in (p.a, p.b)} | {r.id for r in self.held})


def pending(session: Session, every: bool = False, limit: int | None = None) -> ReviewList:
    """Open and deferred pairs, oldest first (with `every`, decided and settled ones too), and the records held
    for review on their own; with `limit`, the first `limit` of each (a page reads no more than it shows)."""
    shown = select(MatchReview) if every else select(MatchReview).where(MatchReview.status.in_(WAITING))
    items = list(session.scalars(shown.order_by(MatchReview.id).limit(limit)))
    records = {r.id: r for r in session.scalars(select(PatientRecord).where(PatientRecord.id.in_(
        [i.record_a for i in items] + [i.record_b for i in items])))}
    pairs = [Pair(i.id, i.status, round(i.probability, 4),
                  records[i.record_a].person_id == records[i.record_b].person_id,
                  (i.evidence or {}).get("discrepancy"), i.decided_by, i.decided_at,
                  records[i.record_a], records[i.record_b],
                  {side: r.link_note or r.link_method or "" for side, r in (
                      ("a", records[i.record_a]), ("b", records[i.record_b])) if r.link_status == "review"},
                  i.evidence or {}) for i in items]
    alone = [r for r in session.scalars(select(PatientRecord).where(PatientRecord.link_status == "review",
                                                                    PatientRecord.id.not_in(records))
                                        .order_by(PatientRecord.id).limit(limit))]
    return ReviewList(pairs, alone)


def waiting(session: Session) -> int:
    """How many pairs wait for a reviewer (open or deferred)."""
    return session.scalar(select(func.count()).select_from(MatchReview).where(MatchReview.status.in_(WAITING))) or 0


def describe(record: PatientRecord) -> str:
    """A source record as a reviewer compares it: where from, name, born, postcode, NHS number."""
    return (f"{record.source_org}/{record.source_id}: {(record.family or '').upper()}, {record.given or ''} "
            f"{record.birth_date or ''} {record.postcode or ''} {record.nhs_number or 'no NHS number'}")


def relink_step(step: dict[str, Any]) -> str:
    """One relink's change to a review item, in words: when, by whom, why and, for a link, what linked."""
    links = "; ".join(f"record {link['record']} linked with record {link['with_record']} "
                      f"({link['match_weight']:+})" if link.get("with_record") is not None and
                      link.get("match_weight") is not None else f"record {link['record']} linked"
                      for link in step.get("links", ()))
    return f"{step['at'][:16].replace('T', ' ')} UTC, {step['by']}: {step['reason']}" + (f" ({links})" if links else "")
