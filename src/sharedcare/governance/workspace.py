"""Governance functions for the IG officer and for citizens, each bound to one actor.

The IG officer's workspace (review queue, audit search, agreements, recorded choices) needs the
permissions the framework grants the role; nothing checks roles in a route. A citizen's workspace
reads only that citizen's record, their access log and their choices. `CitizenSignIn` is how a citizen
becomes one: found by NHS number and date of birth, then a one-time code, every attempt audited.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.governance import access_log, one_time_codes, review
from sharedcare.governance.agreements import AgreementEvent, agreement_history, effective_agreements, set_agreement
from sharedcare.governance.audit import CITIZEN_PREFIX, AuditAction, AuditRecord, record_audit, record_refusal_in
from sharedcare.governance.consent import (
    Choices,
    Provision,
    VersionConflict,
    choices_for,
    numbers_of_person,
    own_numbers,
    replace_choices,
    set_choice,
    shared_numbers,
)
from sharedcare.governance.consent_fhir import ConsentRefused, choices_from_consent, consent_id, consent_resource
from sharedcare.governance.framework import Agreement, AgreementStatus, Framework, Organisation
from sharedcare.governance.gateway import (
    AccessDenied,
    GovernedRecords,
    InvalidRequest,
    NotFound,
    RecordView,
    citizen_actor,
)
from sharedcare.governance.policy import Actor
from sharedcare.identity import links, review_list
from sharedcare.identity.links import Decision
from sharedcare.store.models import AuditEntry, MatchReview, PatientRecord, Preference, ReviewItem

# A matching decision says why: the next reviewer, and the patient's "who looked", need it.
DECISION_NEEDS_A_REASON = "Enter why: what in the records shows they are (or are not) the same person"
# An investigation is opened with a note saying what to look into (the portal says so at the field).
INVESTIGATION_NEEDS_A_NOTE = ("Enter a note saying what to investigate: it is kept with the review item and in "
                              "the audit log")


class IgWorkspace:
    """What an information governance officer can do, each step checked and audited."""

    def __init__(self, session: Session, fw: Framework, actor: Actor, minted_by: str | None = None,
                 token_id: str | None = None) -> None:
        """`minted_by`/`token_id`: the operator account and token id of a `sharedcare token` the officer's
        request came with; every audit made here is marked with them, as `GovernedRecords`' are."""
        self.session, self.fw, self.actor = session, fw, actor
        self.minted_by, self.token_id = minted_by, token_id

    def _require(self, permission: str) -> None:
        role = self.actor.role
        if role is None or permission not in role.permissions:
            record_audit(self.session, AuditRecord(AuditAction.GOVERNANCE_DENIED, "deny", self.actor.username,
                                                   role=role.name if role else None,
                                                   organisation=self.actor.organisation or None,
                                                   purpose="governance", rule_id="deny-permission",
                                                   detail={"permission": permission}, minted_by=self.minted_by,
                                                   token_id=self.token_id))
            self.session.commit()
            raise AccessDenied("deny-permission", f"your role may not use this function ({permission})")

    def queue(self, after: int | None = None, limit: int = 25, now: datetime | None = None) -> review.QueuePage:
        """A page of the open queue, oldest first (`review.queue_page`)."""
        self._require("governance:review:work")
        return review.queue_page(self.session, self.fw, now or utcnow(), after=after, limit=limit)

    def whose(self, person_ids: list[str], permission: str = "governance:review:work",
              ) -> dict[str, dict[str, Any] | None]:
        """The people the queue's accesses were to (or an audit search's patient was: `permission` is then
        the search's), as the decision point lets the IG role see them (name, date of birth, NHS number;
        each look-up audited); None for anyone it withholds."""
        self._require(permission)
        records = GovernedRecords(self.session, self.fw, self.actor, purpose="governance",
                                  minted_by=self.minted_by, token_id=self.token_id)
        found: dict[str, dict[str, Any] | None] = {}
        for person_id in sorted(set(person_ids)):
            try:
                found[person_id] = records.demographics(person_id)
            except (AccessDenied, NotFound):
                found[person_id] = None
        return found

    def record_outcome(self, item_id: int, outcome: review.Outcome, note: str = "") -> ReviewItem:
        """An investigation is opened only with a note saying what to look into (the next officer, and the
        audit, need it); "appropriate" may be recorded without one."""
        self._require("governance:review:work")
        if outcome == "investigate" and not note.strip():
            raise SharedcareError(INVESTIGATION_NEEDS_A_NOTE, where="review")
        return review.record_outcome(self.session, item_id, outcome, by=self.actor.username, note=note)

    def review_item(self, item_id: int) -> tuple[ReviewItem, str | None] | None:
        """One review item as it stands, and who recorded its latest outcome (the audit log's entry for it,
        about the person the item is about now): for the page that says what was just recorded on it."""
        self._require("governance:review:work")
        item = self.session.get(ReviewItem, item_id)
        if item is None:
            return None
        about = review._persons_now(self.session, item)[0]
        recorded = self.session.scalars(select(AuditEntry).where(
            AuditEntry.patient_id == about, AuditEntry.action == AuditAction.REVIEW_OUTCOME.value)
            .order_by(AuditEntry.seq.desc()).limit(50))
        by = next((e.username for e in recorded if access_log.details(e).get("review_item") == str(item_id)), None)
        return item, by

    def search(self, limit: int, nhs_number: str | None = None, **criteria: object) -> access_log.Found:
        """Audit search, up to `limit` entries; the search itself is audited (who searched for what, and
        what they were shown). An NHS number (valid: the caller checks) is resolved to every person holding
        it through the MPI's links; the search is then audited about each of them (`_looked_up`), keeping
        the persons and the number's last four digits, as a choices look-up does, not the number. A search
        by person id (`patient_id`: the review queue's "see this patient's events") is audited about that
        person too, or, for an id a merge has since emptied, about the person it is now (`Found.now`), keeping
        the id searched: either way, the citizen's "who looked" says who looked at the list of who saw them."""
        self._require("governance:audit:search")
        recorded = dict(criteria)
        persons: list[str] = []
        if nhs_number is not None:
            persons = access_log.persons_with(self.session, nhs_number)
            criteria["persons"] = persons
            recorded |= {"nhs_number_suffix": nhs_number[-4:], "persons": " ".join(persons) or "none"}
        found = access_log.search_page(self.session, limit, **criteria)
        about = sorted({*persons, *found.now})
        self._looked_up(AuditAction.AUDIT_SEARCH, about, found.audit_detail(recorded))
        return replace(found, persons=tuple(persons))

    def _looked_up(self, action: AuditAction, persons: list[str], detail: dict[str, str]) -> None:
        """Audit a look-up once per person it was about (found by NHS number, named by id, or shown), as a
        patient search is (IHE BALP), so that an IG search by any of them, and their own "who looked",
        finds it; once, naming no one, if it found no one (or was not about a patient)."""
        about: list[str | None] = [*persons] or [None]
        for person_id in about:
            record_audit(self.session, AuditRecord(
                action, "permit", self.actor.username, role=self.actor.role.name if self.actor.role else None,
                organisation=self.actor.organisation or None, purpose="governance", patient_id=person_id,
                detail=detail, minted_by=self.minted_by, token_id=self.token_id))

    def agreements(self) -> dict[str, Agreement]:
        self._require("governance:agreement:set")
        return effective_agreements(self.session, self.fw)

    def agreement_history(self) -> dict[str, list[AgreementEvent]]:
        self._require("governance:agreement:set")
        return agreement_history(self.session)

    def may_change_agreement(self, org: str, status: AgreementStatus) -> None:
        """Refuse suspending or ending the officer's own organisation's agreement here: it would stop every
        user of it opening a record, the officer among them (the queue's patients could no longer be seen),
        from a page she might then not put right. The CLI, run by the server's operator, still can."""
        self._require("governance:agreement:set")
        if status != "signed" and org == self.actor.organisation:
            change = {"suspended": "suspend your own organisation's agreement",
                      "ended": "end your own organisation's agreement"}.get(
                status, "set your own organisation's agreement back to draft")
            raise SharedcareError(
                f"you cannot {change} ({org}) from this workspace: it would stop "
                "every one of its users, you among them, opening any record. If it must be done, the server's "
                f"operator runs `sharedcare agreements set {org} --status {status} --reason \"...\"`",
                where="agreements")

    def set_agreement(self, org: str, status: AgreementStatus, reason: str) -> Agreement:
        self.may_change_agreement(org, status)
        return set_agreement(self.session, self.fw, org, status, by=self.actor.username, reason=reason)

    def identity_review(self, limit: int) -> tuple[review_list.ReviewList, int]:
        """The first `limit` pairs of the MPI's review list, oldest first, and how many wait in all
        (`identity/review_list.py`), for the data quality page. What the reviewer decides on is the records'
        demographics as each source sent them, whatever the person's sharing choices (matching serves the
        record's integrity, as `sharedcare mpi review` does): the permission is the decision, and the look-up
        is audited about each person shown, so the IG search and the citizen's "who looked" find it."""
        self._require("identity:review:work")
        shown = review_list.pending(self.session, limit=limit)
        self._looked_up(AuditAction.MPI_REVIEW_VIEW, persons_shown(shown), review_detail(shown))
        waiting = review_list.waiting(self.session)
        self.session.commit()
        return shown, waiting

    def decide_pair(self, review_id: int, decision: Decision, reason: str, was: str) -> MatchReview:
        """A reviewer's decision on a pair, in their own name, with why (`links.decide`: audited, and later
        relinks keep it); `was` is the status the page showed, so a pair another reviewer decided meanwhile
        is refused rather than decided again over them."""
        self._require("identity:review:work")
        if not reason.strip():
            raise SharedcareError(DECISION_NEEDS_A_REASON, where="identity review")
        try:
            item = links.decide(self.session, review_id, decision, by=self.actor.username, reason=reason, was=was)
        except links.LinkError:
            self.session.rollback()
            raise
        self.session.commit()
        return item

    def check(self, permission: str) -> None:
        """Refuse (audited) unless the role has this permission: for pages that show a form before any data."""
        self._require(permission)

    def choices(self, nhs_number: str) -> ChoicesLookUp:
        """A patient's recorded choices: those held against every NHS number of the person this one is (as the
        decision point applies them together), each with the number it is held against; the look-up is
        audited (a patient's choices are about them)."""
        self._require("governance:preference:view")
        persons = access_log.persons_with(self.session, nhs_number)
        self._looked_up(AuditAction.PREFERENCE_VIEW, persons, {"nhs_number_suffix": nhs_number[-4:]})
        numbers = sorted(numbers_of_person(self.session, nhs_number)[1], key=lambda number: number != nhs_number)
        return ChoicesLookUp(choices_for(self.session, numbers),
                             tuple((number, choices_for(self.session, [number])) for number in numbers),
                             len(persons))


def persons_shown(shown: review_list.ReviewList) -> list[str]:
    """The persons whose records the MPI's review list shows (in a pair, or held on their own): a look at it
    is audited about each of them, on the data quality page and by `sharedcare mpi review`."""
    return sorted({r.person_id for p in shown.pairs for r in (p.a, p.b) if r.person_id}
                  | {r.person_id for r in shown.held if r.person_id})


def review_detail(shown: review_list.ReviewList) -> dict[str, str]:
    """What a look at the review list records: how many pairs and held records, and which records."""
    return {"pairs": str(len(shown.pairs)), "held": str(len(shown.held)),
            "records": " ".join(str(r) for r in shown.record_ids)}


@dataclass(frozen=True)
class ChoicesLookUp:
    """What the IG officer's look-up by NHS number finds: the person's choices as every read applies them
    (`combined`), those held against each of their NHS numbers (the number looked up first), and how many
    persons' records carry the number looked up (more than one: the MPI keeps them apart for review, and the
    number's own choices are shown alone, applying to each of them)."""

    combined: Choices
    by_number: tuple[tuple[str, Choices], ...]
    persons: int

    @property
    def object_all(self) -> bool:
        return self.combined.object_all


class ChoicesUnavailable(ValueError):
    """The citizen holds no NHS number of their own by which to record a choice (nothing was changed)."""


UNAVAILABLE_WORDS = ("Your choices cannot be changed online at the moment. Please contact your GP practice: "
                     "they can record them for you.")


class CitizenWorkspace:
    """A citizen's own record, who looked at it, and their choices; nothing about anyone else."""

    def __init__(self, session: Session, fw: Framework, person_id: str, request_id: str | None = None) -> None:
        self.session, self.fw, self.person_id = session, fw, person_id
        self.actor = citizen_actor(fw, person_id)
        self.request_id = request_id

    def nhs_numbers(self) -> list[str]:
        """Each NHS number the citizen's source records carry and no other person's do, once (several sources
        send the same one): the numbers their choices are read and changed by (`consent.own_numbers`). A number
        another person's records also carry (kept apart by the MPI for review) is left out, so neither holder
        reads or withdraws the choices held against it; the decision point still applies them."""
        return own_numbers(self.session, self.person_id)

    def choices_elsewhere(self) -> bool:
        """Whether some choices may apply to the citizen that their pages cannot show or change: a number their
        records carry is also another person's (`nhs_numbers`), or they have no number of their own."""
        return not self.nhs_numbers() or bool(shared_numbers(self.session, self.person_id))

    def _numbers_to_change(self) -> list[str]:
        numbers = self.nhs_numbers()
        if not numbers:
            raise ChoicesUnavailable(UNAVAILABLE_WORDS)
        return numbers

    def record(self) -> RecordView:
        return GovernedRecords(self.session, self.fw, self.actor, purpose="self-access",
                               request_id=self.request_id).everything(self.person_id)

    def accesses(self, before: int | None = None) -> access_log.AccessPage:
        """Everyone else's looks at the record, a page at a time, newest first (the citizen's own reads are
        left out)."""
        return access_log.accesses_of(self.session, self.fw, self.person_id, before=before)

    def choices(self) -> Choices:
        return choices_for(self.session, self.nhs_numbers())

    def sharing(self) -> list[tuple[Organisation, Agreement]]:
        """The organisations that hold information about the citizen, with their agreements as they stand."""
        holders = set(self.session.scalars(select(PatientRecord.source_org)
                                           .where(PatientRecord.person_id == self.person_id)))
        agreements = effective_agreements(self.session, self.fw)
        return [(org, agreements[code]) for code, org in self.fw.organisations.items() if code in holders]

    def add_provision(self, provision: Provision) -> Choices:
        """Add one deny provision (with its exceptions) to the Consent held against each of the citizen's
        NHS numbers; takes effect at once."""
        for number in self._numbers_to_change():
            set_choice(self.session, number, by=self.actor.username, person_id=self.person_id, provision=provision)
        return self.choices()

    def drawn_from(self) -> str:
        """What the citizen's choices page is drawn from: the version of the choices held against each of
        their NHS numbers (every change increments one), to send back with a change made on that page."""
        return ".".join(str(self._version(number)) for number in self.nhs_numbers())

    def withdraw_provision(self, key: str, drawn: str) -> Choices:
        """Withdraw the further provision the page showed as `key` (`provision_key`), from every NHS number
        holding it; ValueError (in words, nothing changed) if it is no longer held or the choices have
        changed since the page was drawn (`drawn`, `drawn_from`)."""
        held = next((p for p in self.choices().provisions if provision_key(p) == key), None)
        if held is None:
            raise ValueError("That choice was already withdrawn.")
        changed = "Your choices have already changed since that page was shown: check them below and try again."
        numbers = self.nhs_numbers()
        drawn_versions = drawn.split(".")
        if len(drawn_versions) != len(numbers) or not all(v.isascii() and v.isdigit() for v in drawn_versions):
            raise ValueError(changed)  # isdigit alone passes "²", which int() refuses
        versions = [int(v) for v in drawn_versions]  # all read before any number is changed
        try:
            for number, version in zip(numbers, versions, strict=True):
                set_choice(self.session, number, by=self.actor.username, person_id=self.person_id, withdraw=held,
                           expected_version=version)
        except VersionConflict as conflict:
            self.session.rollback()  # nothing withdrawn from any number
            raise ValueError(changed) from conflict
        return self.choices()

    def _version(self, nhs_number: str) -> int:
        pref = self.session.get(Preference, nhs_number)
        return pref.version if pref else 0

    def audit_refusal(self, action: AuditAction, rule_id: str, where: str | None) -> None:
        """Audit a refused request about the citizen's choices, durably: whatever the request had begun is
        rolled back, the refusal is committed before the error leaves."""
        self.session.rollback()
        record_audit(self.session, AuditRecord(action, "deny", self.actor.username,
                                               role=self.actor.role.name if self.actor.role else None,
                                               purpose="self-access", patient_id=self.person_id, rule_id=rule_id,
                                               request_id=self.request_id,
                                               detail={"where": where} if where else {}))
        self.session.commit()

    def set_choice(self, change: Literal["object-all", "share-again", "object-org", "allow-org", "opt-out-secondary",
                                         "opt-in-secondary", "clear"],
                   organisation: str | None = None) -> Choices:
        """Apply one choice, or undo one, to every NHS number the citizen's record carries; takes effect at
        once. Each can be undone on its own: "clear" would also undo the choices the citizen meant to keep."""
        if change in ("object-org", "allow-org") and organisation not in self.fw.organisations:
            raise ValueError(f"unknown organisation '{organisation}'")
        switch = {"object-all": True, "share-again": False, "opt-out-secondary": True, "opt-in-secondary": False}
        for number in self._numbers_to_change():
            set_choice(self.session, number, by=self.actor.username, person_id=self.person_id,
                       object_all=switch[change] if change in ("object-all", "share-again") else None,
                       object_org=organisation if change == "object-org" else None,
                       allow_org=organisation if change == "allow-org" else None,
                       opt_out_secondary=switch[change] if change.endswith("-secondary") else None,
                       clear=change == "clear")
        return self.choices()


class ConsentWorkspace(CitizenWorkspace):
    """A citizen's own choices as FHIR Consents, one per NHS number, each named by `consent_id` under the
    service's key: never by the number, which a URL would leave in every proxy's log."""

    def __init__(self, session: Session, fw: Framework, person_id: str, consent_key: bytes,
                 request_id: str | None = None) -> None:
        super().__init__(session, fw, person_id, request_id=request_id)
        self.consent_key = consent_key

    @classmethod
    def for_consent(cls, session: Session, fw: Framework, actor: Actor, action: AuditAction, consent_key: bytes,
                    request_id: str | None = None, client_id: str | None = None) -> ConsentWorkspace:
        """The workspace of the patient `actor` is, to read or change their Consent; anyone else (a
        clinician, another organisation's system) is refused, audited: no one changes a patient's choices
        for them."""
        if actor.person_id is None:
            record_audit(session, AuditRecord(action, "deny", actor.username,
                                              role=actor.role.name if actor.role else None,
                                              organisation=actor.organisation or None, purpose="governance",
                                              rule_id="deny-not-own-consent", request_id=request_id,
                                              client_id=client_id))
            session.commit()
            raise AccessDenied("deny-not-own-consent", "only the patient may read or change their own Consent")
        return cls(session, fw, actor.person_id, consent_key, request_id=request_id)

    def consents(self, patient: str | None) -> list[dict[str, Any]]:
        """The citizen's choices as FHIR Consents, one per NHS number their record carries (audited);
        `patient` (a search's) must be the citizen, or the search is refused, audited."""
        if patient is None:
            self.audit_refusal(AuditAction.PREFERENCE_VIEW, "deny-invalid-request", "patient")
            raise InvalidRequest("name the patient: GET /fhir/Consent?patient=<your record's id>")
        if patient.removeprefix("Patient/") != self.person_id:
            self.audit_refusal(AuditAction.PREFERENCE_VIEW, "deny-not-own-consent", "patient")
            raise NotFound("you can see only your own Consent")
        self._audit_view()
        return [self._consent(number) for number in self.nhs_numbers()]

    def consent(self, resource_id: str) -> dict[str, Any]:
        number = self._own(AuditAction.PREFERENCE_VIEW, resource_id)
        self._audit_view()
        return self._consent(number)

    def replace_consent(self, resource_id: str, body: Any, expected_version: int | None = None) -> dict[str, Any]:
        """Hold the Consent the citizen sent for one of their NHS numbers (the one `resource_id` names) in
        place of their choices, against every NHS number they have (the choices held against all of them
        apply together, so replacing one number's alone would leave the others' in force); refused, naming
        the element, if the decision point could not honour it exactly; VersionConflict if
        `expected_version` is given and is no longer the version held against that number, or another
        number holds other choices than it (the sender saw only that number's). Each refusal audited."""
        number = self._own(AuditAction.PREFERENCE_SET, resource_id)
        try:
            choices = choices_from_consent(body, number, self.fw)
            replace_choices(self.session, self.nhs_numbers(), number, choices, by=self.actor.username,
                            person_id=self.person_id, expected_version=expected_version)
        except ConsentRefused as refused:
            self.audit_refusal(AuditAction.PREFERENCE_SET, "deny-consent-not-honoured", refused.where)
            raise
        except VersionConflict:
            self.audit_refusal(AuditAction.PREFERENCE_SET, "deny-consent-version-changed", "If-Match")
            raise
        return self._consent(number)

    def _own(self, action: AuditAction, resource_id: str) -> str:
        """The citizen's NHS number whose Consent `resource_id` names, found among their own few numbers
        (compared in constant time, so no table of ids is kept); any other id, an NHS number too, is refused
        (audited, as not found)."""
        sent = resource_id.encode()
        found = [n for n in self.nhs_numbers() if hmac.compare_digest(consent_id(self.consent_key, n).encode(), sent)]
        if not found:
            self.audit_refusal(action, "deny-not-own-consent", "Consent.id")
            raise NotFound(f"no Consent '{resource_id}' of yours")
        return found[0]

    def _consent(self, nhs_number: str) -> dict[str, Any]:
        pref = self.session.get(Preference, nhs_number)
        return consent_resource(consent_id(self.consent_key, nhs_number), nhs_number,
                                choices_for(self.session, [nhs_number]), self._version(nhs_number),
                                pref.updated_at if pref else None, self.fw)

    def _audit_view(self) -> None:
        record_audit(self.session, AuditRecord(AuditAction.PREFERENCE_VIEW, "permit", self.actor.username,
                                               role=self.actor.role.name if self.actor.role else None,
                                               purpose="self-access", patient_id=self.person_id,
                                               request_id=self.request_id, detail={"as": "FHIR Consent"}))


def verified_person(session: Session, nhs_number: str, birth_date: date) -> tuple[str | None, str]:
    """The one person whose records carry this NHS number with this date of birth, and whom no other person's
    record shares the number with, and the result in a word ("found", "ambiguous", "number-of-several-persons",
    "no-match"). Asked at sign-in and again on each request of the session that sign-in began (`api.deps`):
    a merge, unmerge, separation, relink or NHS number correction since moves which records the details lead
    to, and the session follows them, or ends, rather than keep a person id whose records are now another's."""
    holders = session.execute(select(PatientRecord.person_id, PatientRecord.birth_date).where(
        PatientRecord.nhs_number == nhs_number)).all()
    persons = {person for person, born in holders if born == birth_date}
    shared = len({person for person, _ in holders}) > 1
    person_id = next(iter(persons)) if len(persons) == 1 and not shared else None
    return person_id, ("found" if person_id else "ambiguous" if len(persons) > 1
                       else "number-of-several-persons" if persons else "no-match")


@dataclass(frozen=True)
class Challenge:
    """A sign-in under way: the id the browser keeps, and the code to send (None if no one matched)."""

    id: str
    code: str | None


class CitizenSignIn:
    """Signing a citizen in to the patient portal; every attempt is audited (TRUST AU3).

    Whether or not the details match a record, the caller gets a challenge (made, and later answered, in
    the same time) and shows the same page, except that the demo shows a code it issued on the page: the
    demo's sign-in tells whoever tries whether an NHS number and date of birth go together."""

    def __init__(self, session: Session, fw: Framework, request_id: str | None = None,
                 source_address: str | None = None) -> None:
        self.session, self.fw = session, fw
        self.request_id, self.source_address = request_id, source_address

    def _audit(self, ok: bool, person_id: str | None, step: str, result: str, **detail: str) -> None:
        """One sign-in step; the citizen is named as the user only once the code has proven who they are. A
        failed step (anyone can cause one) within the limits of refusals at the door."""
        user = f"{CITIZEN_PREFIX}{person_id}" if ok and step == "code" else "anonymous"
        (record_audit if ok else record_refusal_in)(self.session, AuditRecord(
            AuditAction.LOGIN, "permit" if ok else "deny", user, role="patient", purpose="self-access",
            patient_id=person_id, request_id=self.request_id, source_address=self.source_address,
            detail={"step": step, "result": result, **detail}))

    def find(self, nhs_number: str, birth_date: date) -> str | None:
        """The one person whose record carries this NHS number with this date of birth, and whom no other
        person's record shares the number with (audited). A number two persons' records carry (the MPI keeps
        them apart for review: a mother's number on her baby's record) signs in neither: whoever gave it with
        the other record's date of birth would become that person and hold the number's choices. The caller
        is answered as for details that match no one; the audit says why."""
        person_id, result = verified_person(self.session, nhs_number, birth_date)
        self._audit(person_id is not None, person_id, "identify", result, nhs_number_suffix=nhs_number[-4:])
        return person_id

    def start(self, nhs_number: str, birth_date: date) -> Challenge:
        person_id = self.find(nhs_number, birth_date)
        if person_id is None:
            return Challenge(one_time_codes.unmatched_challenge(), None)
        now = utcnow()
        # `find` appended to the audit log, which holds the chain's write lock until commit: two sign-ins
        # cannot both count below the limit and both issue a code.
        if one_time_codes.issued_in_the_last_hour(self.session, person_id, now) >= one_time_codes.MAX_CODES_PER_HOUR:
            # The same page as details that match no one (no oracle for guessers); no code is sent.
            self._audit(False, person_id, "code-issue", "too-many-codes")
            return Challenge(one_time_codes.unmatched_challenge(), None)
        issued = one_time_codes.issue(self.session, person_id, now)
        return Challenge(issued.challenge, issued.code)

    def finish(self, challenge: str, code: str, nhs_number: str, birth_date: date | None) -> tuple[str | None, str]:
        """The person a correct, unexpired code signs in, or None (audited either way), and the result in a word
        (`details-now-lead-elsewhere` only for a right code: the page may say so): the person the NHS
        number and date of birth given at the first step still lead to, or a link change in between would
        begin the session as someone the code was not sent for. Committed here: the code is spent and the
        sign-in on record before the session is issued, and the portal then revokes the browser's earlier
        session in a unit of work of its own (SQLite has one writer at a time)."""
        redeemed = one_time_codes.redeem(self.session, challenge, code, utcnow())
        signed_in, result = redeemed.signed_in, redeemed.result
        if signed_in and (birth_date is None or verified_person(self.session, nhs_number, birth_date)[0]
                          != redeemed.person_id):
            signed_in, result = False, "details-now-lead-elsewhere"
        self._audit(signed_in, redeemed.person_id, "code", result)
        self.session.commit()
        return (redeemed.person_id if signed_in else None), result


def provision_key(provision: Provision) -> str:
    """A provision's name on a page: a digest of what is held, so a form names the provision itself, not
    its place in a list that may have changed since."""
    return hashlib.sha256(orjson.dumps(provision.to_json(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
