"""Staff feedback on the shared record: "Did this information help this person's care?".

Kept apart from the audit log on purpose: an answer is about the record's usefulness, so it stores the
role and organisation that gave it and nothing about the patient, and writes no audit event.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.governance.agreements import effective_agreements
from sharedcare.governance.framework import Framework
from sharedcare.governance.gateway import AccessDenied
from sharedcare.governance.policy import Actor
from sharedcare.store.models import Feedback

MAX_COMMENT = 1000


class StaffFeedback:
    """One member of staff's feedback box."""

    def __init__(self, session: Session, fw: Framework, actor: Actor) -> None:
        self.session, self.fw, self.actor = session, fw, actor

    def give(self, helped: bool, comment: str = "") -> None:
        role = self.actor.role
        if role is None or role.citizen or not self.actor.organisation:
            raise AccessDenied("deny-feedback", "only staff of a partner organisation can give feedback here")
        agreement = effective_agreements(self.session, self.fw).get(self.actor.organisation)
        if agreement is None or not agreement.in_force(utcnow().date()):  # as every other act of its users
            raise AccessDenied("deny-actor-agreement", f"your organisation ({self.actor.organisation}) has no "
                                                       "signed information-sharing agreement in force")
        self.session.add(Feedback(created_at=utcnow(), role=role.name, organisation=self.actor.organisation,
                                  helped=helped, comment=comment.strip()[:MAX_COMMENT] or None))
        self.session.flush()
