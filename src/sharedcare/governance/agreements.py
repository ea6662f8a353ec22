"""Agreement lifecycle: the framework file holds each agreement as signed; changes since (suspend,
end, re-sign) are recorded in the store, audited with the reason given, and take effect on the next
request. Suspending or ending one locks out an organisation's users and hides its data from every
partner, so it is never done without a reason (kept in the audit entry, shown on the IG board's history)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast, get_args

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from sharedcare.clock import utcnow
from sharedcare.errors import SharedcareError
from sharedcare.governance.access_log import details
from sharedcare.governance.audit import AuditAction, AuditRecord, chain_key, entry_is_genuine, record_audit
from sharedcare.governance.framework import Agreement, AgreementStatus, Framework
from sharedcare.store.database import Database, Prepared
from sharedcare.store.models import AgreementChange, AuditEntry

# Any change away from signed (suspended, ended, or back to draft) is a stop: it ends every session and token
# issued under the organisation and withdraws its finished exports; signing again brings none of them back.
STOPPED: tuple[AgreementStatus, ...] = tuple(s for s in get_args(AgreementStatus) if s != "signed")
_STOPPED_WORDS = {"suspended": "suspended", "ended": "ended", "draft": "set back to draft (no longer signed)"}

# `changed_by` of a status read from the framework file (`note_file_agreements`): such a row ends sessions,
# tokens and exports as any stop does, and, as the most recent deliberate change, decides as recorded until
# an operator's next change (`agreements set`) or the next start that finds the file changed
FRAMEWORK_FILE = "framework file"
# The date of a status the file had when first read, whose start is not known: it ends nothing issued before
# and decides nothing (an operator's change made before the first read still stands)
_NOT_KNOWN = datetime(1970, 1, 1, tzinfo=UTC)

_CHANGES = cast(Table, AgreementChange.__table__)
BY_FILE = _CHANGES.c.changed_by == FRAMEWORK_FILE
# Read on every request and every MLLP message: prepared (through `run` its execution cost several times the query)
_ALL_CHANGES = Prepared(select(_CHANGES.c.org_code, _CHANGES.c.status, BY_FILE, _CHANGES.c.changed_at)
                        .order_by(_CHANGES.c.id))
_FILE_SAID = select(_CHANGES.c.org_code, _CHANGES.c.status).where(BY_FILE).order_by(_CHANGES.c.id)

# (organisation, status, read from the file, when): an `agreement_changes` row, in the order made
Change = tuple[str, str, bool, datetime]


def effective_agreements(session: Session, fw: Framework) -> dict[str, Agreement]:
    """Each organisation's agreement as it stands now (`agreements_after`)."""
    return agreements_after(fw, _ALL_CHANGES(session))


def stopped_words(status: str) -> str:
    """A stop in words, after "the agreement was" ("set back to draft", not "draft")."""
    return _STOPPED_WORDS.get(status, status)


def agreements_after(fw: Framework, changes: Iterable[Change], *, new_file_stops: bool = True) -> dict[str, Agreement]:
    """The file's agreements overridden by the latest deciding change, which decides as recorded (a file's
    own too: a file edited back to signed lifts a stop only once a start of `serve` or `mllp` has recorded
    it, audited, never in a process that merely loads the file). A stop written in the file since a start
    last recorded what it said acts at once, whoever made the latest change (`new_file_stops`; False: what
    the store's changes alone decide, which a start compares the file with). Every governed read asks this
    of the changes it has just read (nearly always the same ones), so the last answer is kept with the
    organisations and changes it came from, as `Framework.local_service_codes` is, and given as a copy."""
    global _last_after
    changes = tuple(changes)
    last = _last_after
    if last[0] is fw.organisations and last[1] == new_file_stops and last[2] == changes:
        return dict(last[3])
    current = {code: org.agreement for code, org in fw.organisations.items()}
    decided: dict[str, str] = {}
    file_said: dict[str, str] = {}  # what the file said when a start last recorded it (a first read's too)
    for code, status, by_file, at in changes:
        if at > _NOT_KNOWN:
            decided[code] = status
        if by_file:
            file_said[code] = status
    for code, agreement in list(current.items()):
        if new_file_stops and agreement.status in STOPPED and agreement.status != file_said.get(code):
            continue
        latest = decided.get(code)
        if latest is not None and latest != agreement.status:
            current[code] = agreement.model_copy(update={"status": latest})
    _last_after = (fw.organisations, new_file_stops, changes, current)
    return dict(current)


# (the organisations, new_file_stops, the changes, the agreements after them): `agreements_after`'s last answer
_last_after: tuple[object, bool, tuple[Change, ...], dict[str, Agreement]] = (None, True, (), {})


def set_agreement(session: Session, fw: Framework, org_code: str, status: AgreementStatus, by: str,
                  reason: str) -> Agreement:
    """Change an organisation's agreement status, audited with `reason` (required to suspend or end one);
    returns the agreement now in effect."""
    organisation = fw.organisation(org_code)
    if organisation is None:
        raise SharedcareError(f"organisation '{org_code}' is not in the framework", where="agreements set")
    if status == "signed" and not organisation.agreement.signatories:
        raise SharedcareError(f"{org_code} has no signatories in the framework; it cannot be signed here",
                              where="agreements set")
    reason = " ".join(reason.split())
    if status in STOPPED and not reason:
        raise SharedcareError(f"give a reason for setting {org_code}'s agreement to {status} (a breach reported, "
                              "the contract ended...): it is kept in the audit log and shown on the agreements "
                              "board", where="agreements set")
    _record(session, fw, org_code, status, by, reason)
    session.flush()
    return effective_agreements(session, fw)[org_code]


def _record(session: Session, fw: Framework, org_code: str, status: str, by: str, reason: str,
            when: datetime | None = None) -> None:
    """One change, and its audit entry (a stop's names whose sessions and tokens it ended)."""
    now = utcnow()
    session.add(AgreementChange(org_code=org_code, status=status, changed_at=when or now, changed_by=by))
    if when is not None:  # the file's status as first read: no change to audit
        return
    detail = {"organisation": org_code, "status": status}
    if status in STOPPED:  # `tokens.refusal` refuses them from now on: the entry says whose it cut off
        users = sorted(name for name, user in fw.users.items() if user.organisation == org_code)
        detail |= {"sessions_ended": " ".join(users) or "(no users configured)", "issued_before": now.isoformat(),
                   "tokens_ended": "portal sessions, app and command-line tokens of these users, and the "
                                   "organisation's systems' tokens"}
    record_audit(session, AuditRecord(AuditAction.AGREEMENT_SET, "permit", username=by, purpose="governance",
                                      reason=reason or None, detail=detail))


def note_file_agreements(db: Database, fw: Framework, source: str) -> list[str]:
    """Record each agreement whose status in the framework file differs from what the file said when last
    loaded (at every start of the server and the MLLP listener), so that a suspension written in the file
    acts as one made by `agreements set`: the sessions and tokens issued before it stay refused after the
    file says signed again, and its finished exports are withdrawn (`ExportJobs.withdraw`). Audited, by
    "framework file". A file read for the first time is taken as it is: a suspension or end in it dates from
    now; a draft or signed agreement's start is not known and ends nothing, nor does a status unlike the one
    in effect (an operator changed it since, by `agreements set`): that change stands. The organisations changed."""
    changed = []
    with db.session() as session:
        said: dict[str, str] = {org: status for org, status in session.execute(_FILE_SAID)}
        in_effect = agreements_after(fw, _ALL_CHANGES(session), new_file_stops=False)
        for code, organisation in fw.organisations.items():
            status, before = organisation.agreement.status, said.get(code)
            if status == before:
                continue
            known = before is not None or (status in ("suspended", "ended") and status == in_effect[code].status)
            _record(session, fw, code, status, FRAMEWORK_FILE, f"changed in the framework file ({source})"
                    if before is not None else f"{status} in the framework file ({source}) when first read",
                    None if known else _NOT_KNOWN)
            if known:
                changed.append(code)
    return changed


@dataclass(frozen=True)
class AgreementEvent:
    """One change of an agreement, as its audit entry records it."""

    when: datetime
    by: str
    status: str
    reason: str
    unverified: bool  # the entry's hash is not the service's: written by someone without the chain's key


def agreement_history(session: Session) -> dict[str, list[AgreementEvent]]:
    """Each organisation's agreement changes, newest first, with the reasons given (from the audit log,
    which holds the reason: the change table does not). An entry the service did not write is marked, not
    taken as a change someone made."""
    history: dict[str, list[AgreementEvent]] = {}
    key = chain_key(session)
    for entry in session.scalars(select(AuditEntry).where(AuditEntry.action == AuditAction.AGREEMENT_SET.value)
                                 .order_by(AuditEntry.seq.desc())):
        info = details(entry)
        history.setdefault(info.get("organisation", ""), []).append(
            AgreementEvent(entry.recorded_at, entry.username or "", info.get("status", ""), info.get("reason", ""),
                           not entry_is_genuine(entry, key)))
    return history
